//! BGP mode end to end: three nodes, each with its FRR driven by its speaker, peering over IPv4 and IPv6
//! with BFD to a router running BIRD 2 (a different implementation), and the client behind the router, so
//! every claim is judged by BIRD's routes and the client's own kernel.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed step should stop the test, loudly

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ferrolb_crds::SpeakerStatus;
use ferrolb_e2e::lab_supervisor::{DEMO_NAMESPACE, DEMO_SERVICE, INSTALL_NAMESPACE, LabConfig, RunningLab};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, Patch, PatchParams};

const VIP4: &str = "203.0.113.200";
const VIP6: &str = "2001:db8:b::200";
const NODES_V4: [&str; 3] = ["192.0.2.11", "192.0.2.12", "192.0.2.13"];
/// Generous: these are correctness tests (`cargo xtask bench failover --mode bgp` measures).
const SETTLE: Duration = Duration::from_secs(60);

struct BgpLab {
    running: RunningLab,
    runtime: tokio::runtime::Runtime,
    client: kube::Client,
    _state: tempfile::TempDir,
}

impl BgpLab {
    fn up() -> Self {
        Self::up_with(false)
    }

    /// `with_native`: the speakers run native L2 beside BGP, and the L2 demo pool is there too.
    fn up_with(with_native: bool) -> Self {
        let state = tempfile::tempdir().unwrap();
        let speaker = ferrolb_e2e::process::workspace_binary("ferrolb-speaker").unwrap();
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
        let config = LabConfig {
            bgp: true,
            bgp_with_native: with_native,
            ..LabConfig::processes(state.path().to_path_buf(), speaker.parent().unwrap().to_path_buf(), repo)
        };
        let running = RunningLab::start(config).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let client = runtime.block_on(running.plane().admin_client()).unwrap();
        BgpLab { running, runtime, client, _state: state }
    }

    fn wait_for(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + SETTLE;
        while Instant::now() < deadline {
            if done() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("timed out waiting for {what}\n{}", self.logs());
    }

    fn logs(&self) -> String {
        let router = self.running.router().unwrap();
        let mut text = format!(
            "--- router route {VIP4}: {}--- router route {VIP6}: {}--- bird:\n{}\n",
            router.route(VIP4).unwrap_or_default(),
            router.route(VIP6).unwrap_or_default(),
            router.bird_log(15)
        );
        for node in ["node-1", "node-2", "node-3"] {
            text.push_str(&format!("--- speaker on {node}:\n{}\n", self.running.speaker_log(node, 20)));
        }
        for status in self.statuses() {
            text.push_str(&format!("--- SpeakerStatus {}: {:?}\n", status.spec.node, status.spec.bgp_peers));
        }
        text
    }

    fn next_hops(&self, vip: &str) -> Vec<String> {
        self.running.router().unwrap().next_hops(vip).unwrap()
    }

    /// What the VIP answers from the client (the node that served the request), over a new connection.
    fn curl(&self, vip: &str) -> Option<String> {
        let url = if vip.contains(':') { format!("http://[{vip}]/") } else { format!("http://{vip}/") };
        let output = self.running.lab().client_exec("curl", &["-s", "-g", "--max-time", "1", &url]).unwrap();
        output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    fn statuses(&self) -> Vec<SpeakerStatus> {
        let api: Api<SpeakerStatus> = Api::namespaced(self.client.clone(), INSTALL_NAMESPACE);
        self.runtime.block_on(api.list(&Default::default())).unwrap().items
    }

    /// The demo Service's endpoints (one per node and family, as the lab makes them), ready on `ready` only.
    fn set_ready_endpoints(&self, ready: &[&str]) {
        for (family, prefix) in [("IPv4", "203.0.113."), ("IPv6", "2001:db8:1::")] {
            let backends: Vec<ferrolb_e2e::objects::Backend> = ["node-1", "node-2", "node-3"]
                .iter()
                .enumerate()
                .map(|(i, node)| ferrolb_e2e::objects::Backend {
                    node: node.to_string(),
                    address: format!("{prefix}{}", 10 + i),
                    ready: ready.contains(node),
                })
                .collect();
            let slice = ferrolb_e2e::objects::apply_endpoint_slice(
                &self.client,
                DEMO_NAMESPACE,
                DEMO_SERVICE,
                family,
                80,
                &backends,
            );
            self.runtime.block_on(slice).unwrap();
        }
    }

    /// The BGPAnnouncements of Service `name` (of the demo namespace), by node.
    fn announcements(&self, name: &str) -> Vec<ferrolb_crds::BGPAnnouncementSpec> {
        let api: Api<ferrolb_crds::BGPAnnouncement> = Api::namespaced(self.client.clone(), INSTALL_NAMESPACE);
        let mut list: Vec<_> = self
            .runtime
            .block_on(api.list(&Default::default()))
            .unwrap()
            .items
            .into_iter()
            .map(|a| a.spec)
            .filter(|a| a.service.name == name && a.service.namespace == DEMO_NAMESPACE)
            .collect();
        list.sort_by(|a, b| a.node.cmp(&b.node));
        list
    }

    fn services(&self) -> Api<Service> {
        Api::namespaced(self.client.clone(), DEMO_NAMESPACE)
    }
}

#[test]
fn every_node_announces_the_vips_to_bird_which_spreads_the_client_over_them_and_a_deleted_service_is_withdrawn() {
    let lab = BgpLab::up();
    let all: Vec<String> = NODES_V4.iter().map(|s| s.to_string()).collect();
    lab.wait_for("an ECMP route to the IPv4 VIP through every node", || lab.next_hops(VIP4) == all);
    lab.wait_for("an ECMP route to the IPv6 VIP through every node", || lab.next_hops(VIP6).len() == 3);

    // Sessions and BFD, as each node's SpeakerStatus tells them.
    lab.wait_for("every node to report both sessions Established with BFD up", || {
        let statuses = lab.statuses();
        statuses.len() == 3
            && statuses.iter().all(|s| {
                s.spec.mode == "bgp"
                    && s.spec.bgp_peers.len() == 2
                    && s.spec.bgp_peers.iter().all(|p| p.session == "Established" && p.bfd.as_deref() == Some("up"))
            })
    });

    // New connections from the client land on more than one node (the router hashes on ports too).
    let mut served = BTreeSet::new();
    for _ in 0..30 {
        served.extend(lab.curl(VIP4));
    }
    assert!(served.len() > 1, "every connection went to {served:?}\n{}", lab.logs());
    assert!(lab.curl(VIP6).is_some(), "the IPv6 VIP answers\n{}", lab.logs());

    // Per Service, who announces it to whom: one BGPAnnouncement per announcing node.
    lab.wait_for("a BGPAnnouncement of the demo Service from every node, to both peers", || {
        let announcements = lab.announcements(DEMO_SERVICE);
        announcements.len() == 3
            && announcements.iter().all(|a| {
                a.peers == ["router-v4", "router-v6"] && a.prefixes == [format!("{VIP4}/32"), format!("{VIP6}/128")]
            })
    });

    // Deleting the Service withdraws its routes everywhere, and its BGPAnnouncements go.
    lab.runtime.block_on(lab.services().delete(DEMO_SERVICE, &DeleteParams::default())).unwrap();
    lab.wait_for("the routes to be withdrawn", || lab.next_hops(VIP4).is_empty() && lab.next_hops(VIP6).is_empty());
    lab.wait_for("the BGPAnnouncements to go", || lab.announcements(DEMO_SERVICE).is_empty());
}

#[test]
fn a_local_service_is_announced_only_by_the_nodes_with_a_ready_endpoint() {
    let lab = BgpLab::up();
    lab.wait_for("an ECMP route through every node", || lab.next_hops(VIP4).len() == 3);
    let patch = serde_json::json!({ "spec": { "externalTrafficPolicy": "Local" } });
    lab.runtime.block_on(lab.services().patch(DEMO_SERVICE, &PatchParams::default(), &Patch::Merge(&patch))).unwrap();
    // The lab's endpoints: one ready per node and family. Make node-2's the only ready ones.
    lab.set_ready_endpoints(&["node-2"]);
    lab.wait_for("the route to go through node-2 alone", || lab.next_hops(VIP4) == ["192.0.2.12"]);
    assert_eq!(lab.curl(VIP4).as_deref(), Some("node-2"));
    assert_eq!(lab.next_hops(VIP6), ["2001:db8::12"]);
    lab.wait_for("node-2's BGPAnnouncement alone", || {
        lab.announcements(DEMO_SERVICE).iter().map(|a| a.node.clone()).collect::<Vec<_>>() == ["node-2"]
    });

    // No ready endpoint anywhere: nobody announces it.
    lab.set_ready_endpoints(&[]);
    lab.wait_for("the routes to be withdrawn", || lab.next_hops(VIP4).is_empty() && lab.next_hops(VIP6).is_empty());
}

impl BgpLab {
    /// Every node's sessions are Established with BFD up.
    fn wait_for_sessions(&self) {
        self.wait_for("every node to report both sessions Established with BFD up", || {
            let statuses = self.statuses();
            statuses.len() == 3
                && statuses.iter().all(|s| {
                    s.spec.bgp_peers.len() == 2
                        && s.spec.bgp_peers.iter().all(|p| p.session == "Established" && p.bfd.as_deref() == Some("up"))
                })
        });
    }

    fn peer_status(&self, node: &str, peer: &str) -> Option<ferrolb_crds::BgpPeerStatus> {
        self.statuses().into_iter().find(|s| s.spec.node == node)?.spec.bgp_peers.into_iter().find(|p| p.name == peer)
    }

    /// Runs `during` while the client opens a new connection to `vip` every 20 ms; the failed ones, and how
    /// many were made.
    fn failed_requests_during(&self, vip: &str, during: impl FnOnce()) -> (usize, usize) {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ns, url, flag) = (self.running.lab().client().netns.clone(), format!("http://{vip}/"), stop.clone());
        let prober = std::thread::spawn(move || {
            let (mut failed, mut made) = (0, 0);
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let output = ferrolb_e2e::netns::exec(&ns, "curl", &["-s", "--max-time", "1", &url]).unwrap();
                made += 1;
                if !output.status.success() {
                    failed += 1;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (failed, made)
        });
        during();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        prober.join().unwrap()
    }

    fn cordon(&self, node: &str, cordoned: bool) {
        self.runtime.block_on(ferrolb_e2e::objects::cordon(&self.client, node, cordoned)).unwrap();
    }
}

#[test]
fn a_cut_link_loses_its_next_hop_by_bfd_and_the_client_keeps_working() {
    let lab = BgpLab::up();
    lab.wait_for("an ECMP route through every node", || lab.next_hops(VIP4).len() == 3);
    lab.wait_for_sessions();
    // The carrier is cut from the switch's side: node-1 stays up, but nothing reaches it any more.
    let switch = lab.running.lab().switch_netns().to_string();
    ferrolb_e2e::netns::ip(&["-n", &switch, "link", "set", "n1", "down"]).unwrap();
    let cut = Instant::now();
    lab.wait_for("node-1's next hop to go", || lab.next_hops(VIP4) == ["192.0.2.12", "192.0.2.13"]);
    // BFD (100 ms × 3), not the BGP hold time (9 s): well under the hold time even on a loaded machine.
    let detected = cut.elapsed();
    assert!(detected < Duration::from_secs(5), "next hop removed after {detected:?}, not by BFD\n{}", lab.logs());
    let (failed, made) = lab.failed_requests_during(VIP4, || std::thread::sleep(Duration::from_secs(2)));
    assert_eq!(failed, 0, "{failed} of {made} requests failed after the next hop went");
    lab.wait_for("node-1's BFD session to be reported down", || {
        lab.peer_status("node-1", "router-v4").is_some_and(|p| p.bfd.as_deref() != Some("up"))
            || lab.peer_status("node-2", "router-v4").is_some_and(|p| p.session == "Established")
    });

    ferrolb_e2e::netns::ip(&["-n", &switch, "link", "set", "n1", "up"]).unwrap();
    lab.wait_for("node-1's next hop to come back", || lab.next_hops(VIP4).len() == 3);
}

#[test]
fn a_restarted_speaker_withdraws_nothing_and_a_cordoned_node_drains_without_a_failed_request() {
    let lab = BgpLab::up();
    let all: Vec<String> = NODES_V4.iter().map(|s| s.to_string()).collect();
    lab.wait_for("an ECMP route through every node", || lab.next_hops(VIP4) == all);

    // A plain restart (SIGTERM of a node that stays): FRR keeps announcing throughout.
    let before = lab.running.speaker_pid("node-3").unwrap();
    let withdrawals = || lab.running.speaker_log("node-3", 200).matches("routes=0").count();
    let withdrawn_before = withdrawals();
    lab.running.signal_speaker("node-3", nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(6);
    while Instant::now() < deadline {
        assert_eq!(lab.next_hops(VIP4), all, "a speaker restart withdrew routes\n{}", lab.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut running = lab.running;
    assert!(running.wait_speaker_exit("node-3", Duration::from_secs(5)).is_some(), "the speaker stopped");
    running.start_stopped();
    let lab = BgpLab { running, ..lab };
    lab.wait_for("node-3's speaker to be back", || lab.running.speaker_pid("node-3").is_some_and(|p| p != before));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(lab.next_hops(VIP4), all, "the restarted speaker converged without withdrawing");
    let withdrawals = || lab.running.speaker_log("node-3", 200).matches("routes=0").count();
    assert_eq!(withdrawals(), withdrawn_before, "the restarted speaker withdrew for a moment\n{}", lab.logs());

    // A node going away: cordoned, then its speaker stopped. Not one new connection fails.
    let (failed, made) = lab.failed_requests_during(VIP4, || {
        lab.cordon("node-1", true);
        lab.wait_for("node-1's routes to be withdrawn", || lab.next_hops(VIP4) == ["192.0.2.12", "192.0.2.13"]);
        lab.running.signal_speaker("node-1", nix::sys::signal::Signal::SIGTERM).unwrap();
        std::thread::sleep(Duration::from_secs(2));
    });
    assert!(made > 20, "only {made} requests");
    assert_eq!(failed, 0, "{failed} of {made} requests failed while node-1 drained\n{}", lab.logs());
    assert_eq!(lab.next_hops(VIP4), ["192.0.2.12", "192.0.2.13"]);
}

#[test]
fn advertisements_choose_nodes_peers_and_communities_as_bird_sees_them() {
    let lab = BgpLab::up();
    lab.wait_for("an ECMP route through every node", || lab.next_hops(VIP4).len() == 3);
    let advertisements: Api<ferrolb_crds::BGPAdvertisement> = Api::all(lab.client.clone());
    let patch = serde_json::json!({ "spec": {
        "nodeSelectors": [{ "matchLabels": { "kubernetes.io/hostname": "node-2" } }],
        "peers": ["router-v4"],
        "communities": ["64500:100", "no-export"],
        "largeCommunities": ["64500:1:2"],
    }});
    lab.runtime.block_on(advertisements.patch("bgp", &PatchParams::default(), &Patch::Merge(&patch))).unwrap();
    lab.wait_for("node-2 alone to announce, to the IPv4 peer alone", || {
        lab.next_hops(VIP4) == ["192.0.2.12"] && lab.next_hops(VIP6).is_empty()
    });
    let router = lab.running.router().unwrap();
    lab.wait_for("the communities in BIRD's route", || {
        let route = router.birdc(&format!("show route all {VIP4}/32")).unwrap();
        route.contains("(64500,100)") && route.contains("(65535,65281)") && route.contains("(64500, 1, 2)")
    });
}

#[test]
fn a_password_the_router_does_not_share_and_a_missing_secret_are_reported_on_the_status() {
    let lab = BgpLab::up();
    lab.wait_for_sessions();
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(lab.client.clone(), INSTALL_NAMESPACE);
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "router-password" },
        "type": "kubernetes.io/basic-auth",
        "stringData": { "password": "s3cret" },
    }))
    .unwrap();
    lab.runtime.block_on(secrets.create(&Default::default(), &secret)).unwrap();
    let peers: Api<ferrolb_crds::BGPPeer> = Api::all(lab.client.clone());
    let with = |secret: &str| serde_json::json!({ "spec": { "passwordSecret": { "name": secret } } });
    lab.runtime
        .block_on(peers.patch("router-v4", &PatchParams::default(), &Patch::Merge(&with("router-password"))))
        .unwrap();
    lab.runtime.block_on(peers.patch("router-v6", &PatchParams::default(), &Patch::Merge(&with("missing")))).unwrap();
    lab.wait_for("the mismatched password on the IPv4 session to be reported", || {
        lab.peer_status("node-1", "router-v4")
            .is_some_and(|p| p.session != "Established" && p.message.is_some_and(|m| m.contains("TCP MD5 password")))
    });
    lab.wait_for("the missing Secret to be reported", || {
        lab.peer_status("node-1", "router-v6")
            .is_some_and(|p| p.session == "Refused" && p.message.is_some_and(|m| m.contains("\"missing\"")))
    });
    // The IPv4 routes are gone with the session (BIRD never hears this node with the wrong key).
    lab.wait_for("the IPv4 route to go", || lab.next_hops(VIP4).is_empty());
}

#[test]
fn a_restarted_frr_is_filled_again_by_the_speaker_and_bfd_comes_back() {
    let mut lab = BgpLab::up();
    let all: Vec<String> = NODES_V4.iter().map(|s| s.to_string()).collect();
    lab.wait_for("an ECMP route through every node", || lab.next_hops(VIP4) == all);
    lab.wait_for_sessions();
    // bgpd and bfdd killed: the router drops node-1 (its sessions close) until they are back, empty.
    for daemon in ["bgpd on node-1", "bfdd on node-1"] {
        lab.running.signal_component(daemon, nix::sys::signal::Signal::SIGKILL).unwrap();
        assert!(lab.running.wait_component_exit(daemon, Duration::from_secs(5)).is_some(), "{daemon} stopped");
    }
    lab.wait_for("node-1's next hop to go", || lab.next_hops(VIP4) == ["192.0.2.12", "192.0.2.13"]);
    lab.running.start_stopped();
    // The speaker finds them empty, configures them again, and the BFD sessions come back with them.
    lab.wait_for("node-1's next hop to come back", || lab.next_hops(VIP4) == all);
    lab.wait_for_sessions();
}

impl BgpLab {
    /// An IPv4 Service `name` from `pool` with a ready endpoint on every node; its VIP once it has one.
    fn service_from_pool(&self, name: &str, pool: &str) -> String {
        let service: Service = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "annotations": { "ferrolb.io/address-pool": pool } },
            "spec": { "type": "LoadBalancer", "ipFamilies": ["IPv4"], "ports": [{ "port": 80 }],
                      "allocateLoadBalancerNodePorts": false },
        }))
        .unwrap();
        self.runtime.block_on(self.services().create(&Default::default(), &service)).unwrap();
        let backends: Vec<ferrolb_e2e::objects::Backend> = ["node-1", "node-2", "node-3"]
            .iter()
            .enumerate()
            .map(|(i, node)| ferrolb_e2e::objects::Backend {
                node: node.to_string(),
                address: format!("203.0.113.{}", 20 + i),
                ready: true,
            })
            .collect();
        let slice =
            ferrolb_e2e::objects::apply_endpoint_slice(&self.client, DEMO_NAMESPACE, name, "IPv4", 80, &backends);
        self.runtime.block_on(slice).unwrap();
        let mut vip = None;
        self.wait_for(&format!("{name} to get a VIP from {pool}"), || {
            let ips =
                self.runtime.block_on(ferrolb_e2e::objects::load_balancer_ips(&self.client, DEMO_NAMESPACE, name));
            vip = ips.unwrap().into_iter().next();
            vip.is_some()
        });
        vip.unwrap()
    }

    /// The node of the L2Announcement of Service `name`, if one is written.
    fn l2_owner(&self, name: &str) -> Option<String> {
        let api: Api<ferrolb_crds::L2Announcement> = Api::namespaced(self.client.clone(), INSTALL_NAMESPACE);
        let announcements = self.runtime.block_on(api.list(&Default::default())).unwrap().items;
        announcements.into_iter().find(|a| a.spec.service.name == name).map(|a| a.spec.node)
    }
}

#[test]
fn one_speaker_serves_an_l2_pool_and_a_bgp_pool_and_a_pool_both_advertise_both_ways() {
    let lab = BgpLab::up_with(true);
    let bgp_vip = lab.service_from_pool("by-bgp", "bgp-pool");
    let l2_vip = lab.service_from_pool("by-l2", "demo-pool");
    assert!(bgp_vip.starts_with("203.0.113.") && l2_vip.starts_with("192.0.2."), "{bgp_vip} {l2_vip}");

    // The BGP pool: routed through every node; the L2 pool: no route, one node answers ARP for it.
    lab.wait_for("an ECMP route to the BGP pool's VIP", || lab.next_hops(&bgp_vip).len() == 3);
    lab.wait_for("every speaker to run both modes and hear the other two", || {
        let statuses = lab.statuses();
        statuses.len() == 3 && statuses.iter().all(|s| s.spec.mode == "native+bgp" && s.spec.alive.len() == 3)
    });
    let mut owner = None;
    lab.wait_for("one node to own the L2 pool's VIP", || {
        owner = lab.l2_owner("by-l2");
        owner.is_some()
    });
    let owner = owner.unwrap();
    assert!(lab.next_hops(&l2_vip).is_empty(), "the L2 pool is not advertised by BGP\n{}", lab.logs());
    lab.wait_for("the L2 VIP to answer", || lab.curl(&l2_vip).is_some());
    for _ in 0..10 {
        assert_eq!(lab.curl(&l2_vip).as_deref(), Some(owner.as_str()), "the L2 VIP is answered by its owner alone");
    }
    let mut served = BTreeSet::new();
    for _ in 0..30 {
        served.extend(lab.curl(&bgp_vip));
    }
    assert!(served.len() > 1, "every connection to the BGP VIP went to {served:?}\n{}", lab.logs());

    // The L2 pool advertised by BGP too: routed through every node, and its owner still holds it for ARP.
    let advertisements: Api<ferrolb_crds::BGPAdvertisement> = Api::all(lab.client.clone());
    let patch = serde_json::json!({ "spec": { "ipAddressPools": ["bgp-pool", "demo-pool"] } });
    lab.runtime.block_on(advertisements.patch("bgp", &PatchParams::default(), &Patch::Merge(&patch))).unwrap();
    lab.wait_for("an ECMP route to the L2 pool's VIP", || lab.next_hops(&l2_vip).len() == 3);
    assert_eq!(lab.l2_owner("by-l2").as_deref(), Some(owner.as_str()), "BGP took nothing from the L2 owner");
    let router = lab.running.router().unwrap();
    let arp =
        ferrolb_e2e::netns::exec(&router.netns, "arping", &["-c", "1", "-w", "2", "-I", "eth0", &l2_vip]).unwrap();
    assert!(arp.status.success(), "the owner still answers ARP for {l2_vip}: {}", String::from_utf8_lossy(&arp.stdout));

    // The BGP advertisement gives the pool up again: the route goes, the L2 owner keeps answering.
    let patch = serde_json::json!({ "spec": { "ipAddressPools": ["bgp-pool"] } });
    lab.runtime.block_on(advertisements.patch("bgp", &PatchParams::default(), &Patch::Merge(&patch))).unwrap();
    lab.wait_for("the L2 pool's route to go", || lab.next_hops(&l2_vip).is_empty());
    assert_eq!(lab.curl(&l2_vip).as_deref(), Some(owner.as_str()));
    assert_eq!(lab.next_hops(&bgp_vip).len(), 3, "the BGP pool is still routed");
}

#[test]
fn local_pref_wins_at_an_ibgp_router_and_a_node_that_changes_its_asn_is_converged_without_a_restart() {
    let lab = BgpLab::up();
    lab.wait_for("an ECMP route through every node", || lab.next_hops(VIP4).len() == 3);
    lab.wait_for_sessions();
    // node-2 leaves the eBGP peers for an iBGP one in the router's own AS (64500): its FRR's BGP instance
    // changes AS, which the speaker converges over the vty (no FRR restart). BIRD peers with it as iBGP.
    let router = lab.running.router().unwrap();
    router
        .reconfigure(|config| {
            config.replace(
                "protocol bgp node_2_v4 from node4 { neighbor 192.0.2.12 as 64512; }",
                // `direct`: on the LAN (BIRD takes an iBGP neighbour for multihop otherwise).
                "protocol bgp node_2_v4 { local 192.0.2.1 as 64500; neighbor 192.0.2.12 as 64500; direct; \
                 hold time 9; keepalive time 3; bfd on; error wait time 1, 10; ipv4 { import all; export none; }; }",
            )
        })
        .unwrap();
    let peers: Api<ferrolb_crds::BGPPeer> = Api::all(lab.client.clone());
    let not_node_2 = serde_json::json!({ "spec": { "nodeSelectors": [{ "matchExpressions": [
        { "key": "kubernetes.io/hostname", "operator": "NotIn", "values": ["node-2"] }
    ] }] } });
    for peer in ["router-v4", "router-v6"] {
        lab.runtime.block_on(peers.patch(peer, &PatchParams::default(), &Patch::Merge(&not_node_2))).unwrap();
    }
    let ibgp: ferrolb_crds::BGPPeer = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "router-ibgp" },
        "spec": { "myASN": 64500, "peerASN": 64500, "peerAddress": "192.0.2.1", "holdTime": "9s",
                  "keepaliveTime": "3s", "bfdProfile": "fast",
                  "nodeSelectors": [{ "matchLabels": { "kubernetes.io/hostname": "node-2" } }] },
    }))
    .unwrap();
    lab.runtime.block_on(peers.create(&Default::default(), &ibgp)).unwrap();
    let advertisements: Api<ferrolb_crds::BGPAdvertisement> = Api::all(lab.client.clone());
    let local_pref = serde_json::json!({ "spec": { "localPref": 250 } });
    lab.runtime.block_on(advertisements.patch("bgp", &PatchParams::default(), &Patch::Merge(&local_pref))).unwrap();

    lab.wait_for("node-2's iBGP session to be Established", || {
        lab.peer_status("node-2", "router-ibgp").is_some_and(|p| p.session == "Established")
            && lab.peer_status("node-2", "router-v4").is_none()
    });
    // LOCAL_PREF travels on iBGP only (an eBGP route gets BIRD's default, 100): node-2's route carries 250
    // and wins, so the router sends everything there, the eBGP routes of node-1 and node-3 standing by.
    lab.wait_for("the router to prefer node-2's iBGP route", || lab.next_hops(VIP4) == ["192.0.2.12"]);
    let routes = router.birdc(&format!("show route all {VIP4}/32")).unwrap();
    assert!(routes.contains("BGP.local_pref: 250"), "node-2's iBGP route carries the advertisement's:\n{routes}");
    assert!(routes.contains("BGP.as_path: 64512"), "node-1 and node-3 still announce by eBGP:\n{routes}");
    assert_eq!(lab.next_hops(VIP6), ["2001:db8::11", "2001:db8::13"], "node-2 has no IPv6 peer any more");
    assert_eq!(lab.curl(VIP4).as_deref(), Some("node-2"));
}
