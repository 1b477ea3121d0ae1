//! The speaker end to end: the lab's three nodes each run `ferrolb-speaker`, the controller gives the demo
//! Service 192.0.2.200 and 2001:db8::200, and the client's own kernel, curl, arping and ndisc6 judge who
//! answers. Every test builds its own lab (control plane, namespaces, processes) and drops it at the end.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed step should stop the test, loudly

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ferrolb_crds::L2Announcement;
use ferrolb_e2e::lab_supervisor::{DEMO_NAMESPACE, DEMO_SERVICE, INSTALL_NAMESPACE, LabConfig, RunningLab};
use ferrolb_e2e::objects::{Backend, apply_endpoint_slice};
use ferrolb_e2e::{names, netns};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use nix::sys::signal::Signal;

const VIP4: &str = "192.0.2.200";
const VIP6: &str = "2001:db8::200";
const ANNOUNCEMENT: &str = "default.webapp1-loadbalancer-svc";
/// Generous: these are correctness tests, not benchmarks (`cargo xtask bench failover` measures).
const SETTLE: Duration = Duration::from_secs(20);

struct L2Lab {
    running: RunningLab,
    runtime: tokio::runtime::Runtime,
    client: kube::Client,
    _state: tempfile::TempDir,
}

impl L2Lab {
    fn up() -> Self {
        let state = tempfile::tempdir().unwrap();
        let speaker = ferrolb_e2e::process::workspace_binary("ferrolb-speaker").unwrap();
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
        let config = LabConfig {
            state_dir: state.path().to_path_buf(),
            bin_dir: speaker.parent().unwrap().to_path_buf(),
            repo,
            prefix: names::unique_lab_prefix(),
            nodes: 3,
            controller_metrics_address: "127.0.0.1:0".into(),
            keepalived: false,
            speaker_args: Vec::new(),
        };
        let running = RunningLab::start(config).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let client = runtime.block_on(running.plane().admin_client()).unwrap();
        let lab = Self { running, runtime, client, _state: state };
        lab.wait_for("the demo VIP to answer", || lab.curl(VIP4).is_some());
        lab
    }

    fn wait_for(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + SETTLE;
        while Instant::now() < deadline {
            if done() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("timed out waiting for {what}\n{}", self.logs());
    }

    fn logs(&self) -> String {
        ["node-1", "node-2", "node-3"]
            .iter()
            .map(|n| format!("--- speaker on {n}:\n{}", self.running.speaker_log(n, 25)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn mac(&self, node: &str) -> String {
        self.running.lab().node(node).unwrap().mac.clone()
    }

    fn netns(&self, node: &str) -> String {
        self.running.lab().node(node).unwrap().netns.clone()
    }

    /// The node named in the demo Service's L2Announcement.
    fn announced_owner(&self) -> Option<String> {
        let api: Api<L2Announcement> = Api::namespaced(self.client.clone(), INSTALL_NAMESPACE);
        self.runtime.block_on(api.get_opt(ANNOUNCEMENT)).unwrap().map(|a| a.spec.node)
    }

    /// What the VIP answers (the name of the node that got the request), if anything.
    fn curl(&self, ip: &str) -> Option<String> {
        let url = if ip.contains(':') { format!("http://[{ip}]/") } else { format!("http://{ip}/") };
        let output = self.running.lab().client_exec("curl", &["-s", "-g", "--max-time", "1", &url]).unwrap();
        output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    /// The MACs that answer `count` ARP requests for `ip` (empty if none does).
    fn arping_macs(&self, ip: &str, count: u32) -> BTreeSet<String> {
        let client = self.running.lab().client().interface.clone();
        let count = count.to_string();
        let output = self.running.lab().client_exec("arping", &["-c", &count, "-w", "3", "-i", &client, ip]).unwrap();
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.split("from ").nth(1)?.split_whitespace().next().map(str::to_lowercase))
            .collect()
    }

    /// The link-layer address a Neighbor Solicitation for `ip` gets, if any.
    fn ndisc_mac(&self, ip: &str) -> Option<String> {
        let client = self.running.lab().client().interface.clone();
        let output = self.running.lab().client_exec("ndisc6", &["-1", "-r", "2", "-w", "1000", ip, &client]).unwrap();
        let text = String::from_utf8_lossy(&output.stdout).to_lowercase();
        output
            .status
            .success()
            .then(|| text.split("link-layer address:").nth(1)?.split_whitespace().next().map(String::from))
            .flatten()
    }

    /// Waits until the VIP is answered by one node other than `not`, on both families; returns it.
    fn wait_for_new_owner(&self, not: &str) -> String {
        let mut owner = String::new();
        self.wait_for(&format!("a node other than {not} to answer"), || match (self.curl(VIP4), self.curl(VIP6)) {
            (Some(a), Some(b)) if a == b && a != not => {
                owner = a;
                true
            }
            _ => false,
        });
        owner
    }

    /// Exactly one MAC answers ARP (several probes) and NDP, and it is the node that answers HTTP and the
    /// L2Announcement names.
    fn assert_single_owner(&self, owner: &str) {
        let mac = self.mac(owner);
        let macs = self.arping_macs(VIP4, 3);
        assert_eq!(macs, BTreeSet::from([mac.clone()]), "ARP answers for {VIP4}\n{}", self.logs());
        assert_eq!(self.ndisc_mac(VIP6), Some(mac), "NDP answer for {VIP6}\n{}", self.logs());
        assert_eq!(self.curl(VIP4).as_deref(), Some(owner));
        assert_eq!(self.curl(VIP6).as_deref(), Some(owner));
        self.wait_for(&format!("the L2Announcement to name {owner}"), || {
            self.announced_owner().as_deref() == Some(owner)
        });
    }

    fn owner(&self) -> String {
        let owner = self.curl(VIP4).unwrap();
        self.assert_single_owner(&owner);
        owner
    }

    fn events(&self, reason: &str) -> Vec<Event> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), DEMO_NAMESPACE);
        let list = self.runtime.block_on(api.list(&ListParams::default())).unwrap();
        list.items
            .into_iter()
            .filter(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(DEMO_SERVICE)
            })
            .collect()
    }

    fn metrics(&self, node: &str) -> String {
        let output =
            netns::exec(&self.netns(node), "curl", &["-s", "--max-time", "2", "http://127.0.0.1:7473/metrics"])
                .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn patch_service(&self, patch: serde_json::Value) {
        let api: Api<Service> = Api::namespaced(self.client.clone(), DEMO_NAMESPACE);
        self.runtime.block_on(api.patch(DEMO_SERVICE, &PatchParams::default(), &Patch::Merge(&patch))).unwrap();
    }

    fn label_node(&self, node: &str, key: &str, value: Option<&str>) {
        let api: Api<Node> = Api::all(self.client.clone());
        let patch = serde_json::json!({"metadata": {"labels": {key: value}}});
        self.runtime.block_on(api.patch(node, &PatchParams::default(), &Patch::Merge(&patch))).unwrap();
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn one_owner_answers_on_both_families_and_reports_itself() {
    let lab = L2Lab::up();
    let owner = lab.owner();
    assert_eq!(lab.events("NodeAssigned").len(), 1, "one NodeAssigned Event: {:?}", lab.events("NodeAssigned"));
    let metrics = lab.metrics(&owner);
    assert_eq!(metric(&metrics, "ferrolb_speaker_owned_vips"), 2.0, "{metrics}");
    assert_eq!(metric(&metrics, "ferrolb_speaker_members"), 3.0, "{metrics}");
    assert!(metric(&metrics, "ferrolb_speaker_requests_answered_total") >= 2.0, "{metrics}");
    assert!(metric(&metrics, "ferrolb_speaker_announcements_sent_total") >= 2.0, "{metrics}");
    for other in ["node-1", "node-2", "node-3"].into_iter().filter(|n| *n != owner) {
        assert_eq!(metric(&lab.metrics(other), "ferrolb_speaker_owned_vips"), 0.0);
    }

    // Another host claims the VIP: the owner sees a foreign MAC for it and says so on the Service.
    let client = lab.running.lab().client().interface.clone();
    lab.running.lab().client_exec("arping", &["-U", "-S", VIP4, "-c", "1", "-i", &client, VIP4]).unwrap();
    lab.wait_for("an IPConflict Event", || !lab.events("IPConflict").is_empty());
    let note = lab.events("IPConflict")[0].note.clone().unwrap_or_default();
    assert!(note.contains(&lab.running.lab().client().mac) && note.contains(VIP4), "{note}");
    assert!(metric(&lab.metrics(&owner), "ferrolb_speaker_ip_conflicts_total") >= 1.0);
}

#[test]
fn sigkill_of_the_owners_speaker_moves_the_vip() {
    let mut lab = L2Lab::up();
    let owner = lab.owner();
    lab.running.signal_speaker(&owner, Signal::SIGKILL).unwrap();
    lab.running.wait_speaker_exit(&owner, Duration::from_secs(5)).unwrap();
    let next = lab.wait_for_new_owner(&owner);
    lab.assert_single_owner(&next);
}

#[test]
fn sigterm_hands_the_vip_over_and_a_restart_takes_it_back() {
    let mut lab = L2Lab::up();
    let owner = lab.owner();
    lab.running.signal_speaker(&owner, Signal::SIGTERM).unwrap();
    let status = lab.running.wait_speaker_exit(&owner, Duration::from_secs(10)).unwrap();
    assert!(status.success(), "a graceful stop exits 0: {status}\n{}", lab.logs());
    let next = lab.wait_for_new_owner(&owner);
    lab.assert_single_owner(&next);
    // Back: the rendezvous hash gives it its VIP again, and there is still one owner.
    lab.running.start_stopped();
    lab.wait_for("the first owner to answer again", || lab.curl(VIP4).as_deref() == Some(owner.as_str()));
    lab.assert_single_owner(&owner);
}

#[test]
fn cutting_the_owners_link_moves_the_vip_and_one_owner_remains_when_it_returns() {
    let lab = L2Lab::up();
    let owner = lab.owner();
    let ns = lab.netns(&owner);
    netns::exec(&ns, "ip", &["link", "set", "eth0", "down"]).unwrap();
    let next = lab.wait_for_new_owner(&owner);
    lab.assert_single_owner(&next);
    netns::exec(&ns, "ip", &["link", "set", "eth0", "up"]).unwrap();
    // It rejoins and, being the rendezvous winner, takes its VIP back; never two owners at rest.
    lab.wait_for("the returning node to answer again", || lab.curl(VIP4).as_deref() == Some(owner.as_str()));
    std::thread::sleep(Duration::from_secs(2));
    lab.assert_single_owner(&owner);
}

#[test]
fn local_traffic_policy_moves_the_vip_to_a_node_with_a_ready_endpoint() {
    let lab = L2Lab::up();
    let owner = lab.owner();
    let target = ["node-1", "node-2", "node-3"].into_iter().find(|n| *n != owner).unwrap();
    lab.patch_service(serde_json::json!({"spec": {"externalTrafficPolicy": "Local"}}));
    for (family, address) in [("IPv4", "203.0.113.50"), ("IPv6", "2001:db8:1::50")] {
        let backends = [
            Backend { node: target.into(), address: address.into(), ready: true },
            Backend { node: owner.clone(), address: address.replace("50", "51"), ready: false },
        ];
        lab.runtime
            .block_on(apply_endpoint_slice(&lab.client, DEMO_NAMESPACE, DEMO_SERVICE, family, 80, &backends))
            .unwrap();
    }
    lab.wait_for(&format!("{target}, the node with the endpoint, to answer"), || {
        lab.curl(VIP4).as_deref() == Some(target)
    });
    lab.assert_single_owner(target);

    // No ready endpoint anywhere: nobody answers.
    for family in ["IPv4", "IPv6"] {
        let backends = [Backend {
            node: target.into(),
            address: if family == "IPv4" { "203.0.113.50".into() } else { "2001:db8:1::50".into() },
            ready: false,
        }];
        lab.runtime
            .block_on(apply_endpoint_slice(&lab.client, DEMO_NAMESPACE, DEMO_SERVICE, family, 80, &backends))
            .unwrap();
    }
    lab.wait_for("every answer to stop", || lab.arping_macs(VIP4, 1).is_empty());
    assert_eq!(lab.ndisc_mac(VIP6), None);
}

#[test]
fn the_exclude_label_and_node_selectors_are_honoured() {
    let lab = L2Lab::up();
    let owner = lab.owner();
    lab.label_node(&owner, "node.kubernetes.io/exclude-from-external-load-balancers", Some(""));
    let next = lab.wait_for_new_owner(&owner);
    lab.assert_single_owner(&next);

    let third = ["node-1", "node-2", "node-3"].into_iter().find(|n| *n != owner && *n != next).unwrap();
    let api: Api<ferrolb_crds::L2Advertisement> = Api::all(lab.client.clone());
    let patch = serde_json::json!({"spec": {"nodeSelectors": [{"matchLabels": {"kubernetes.io/hostname": third}}]}});
    lab.runtime.block_on(api.patch("demo", &PatchParams::default(), &Patch::Merge(&patch))).unwrap();
    lab.wait_for(&format!("{third}, the only selected node, to answer"), || lab.curl(VIP4).as_deref() == Some(third));
    lab.assert_single_owner(third);
}

#[test]
fn deleting_the_service_stops_every_answer_and_removes_its_announcement() {
    let lab = L2Lab::up();
    lab.owner();
    let api: Api<Service> = Api::namespaced(lab.client.clone(), DEMO_NAMESPACE);
    lab.runtime.block_on(api.delete(DEMO_SERVICE, &DeleteParams::default())).unwrap();
    lab.wait_for("the announcement to be deleted", || lab.announced_owner().is_none());
    lab.wait_for("ARP answers to stop", || lab.arping_macs(VIP4, 1).is_empty());
    assert_eq!(lab.ndisc_mac(VIP6), None);
    // The client forgets what it learnt: with nobody answering, the VIP is unreachable. (The nodes still
    // route the pool locally, as kube-proxy would until it catches up.)
    lab.running.lab().client_exec("ip", &["neigh", "flush", "dev", "eth0"]).unwrap();
    assert_eq!(lab.curl(VIP4), None);
}
