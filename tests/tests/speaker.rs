//! The speaker end to end: the lab's three nodes each run `ferrolb-speaker`, the controller gives the demo
//! Service 192.0.2.200 and 2001:db8::200, and the client's own kernel, curl, arping and ndisc6 judge who
//! answers. Every test builds its own lab (control plane, namespaces, processes) and drops it at the end.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed step should stop the test, loudly

use std::time::Duration;

use ferrolb_crds::reason;

use ferrolb_e2e::l2lab::{L2Lab, VIP4, VIP6, macs_in, metric};
use ferrolb_e2e::lab_supervisor::{DEMO_NAMESPACE, DEMO_SERVICE};
use ferrolb_e2e::netns;
use ferrolb_e2e::objects::{Backend, apply_endpoint_slice};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use nix::sys::signal::Signal;

#[test]
fn one_owner_answers_on_both_families_and_reports_itself() {
    let lab = L2Lab::up();
    let owner = lab.owner();
    assert_eq!(
        lab.events(reason::NODE_ASSIGNED).len(),
        1,
        "one NodeAssigned Event: {:?}",
        lab.events(reason::NODE_ASSIGNED)
    );
    let metrics = lab.metrics(&owner);
    assert_eq!(metric(&metrics, "ferrolb_speaker_owned_vips"), 2.0, "{metrics}");
    assert_eq!(metric(&metrics, "ferrolb_speaker_members"), 3.0, "{metrics}");
    assert!(metric(&metrics, "ferrolb_speaker_requests_answered_total") >= 2.0, "{metrics}");
    assert!(metric(&metrics, "ferrolb_speaker_announcements_sent_total") >= 2.0, "{metrics}");
    for vip in [VIP4, VIP6] {
        let series = format!(
            r#"ferrolb_speaker_announced{{namespace="{DEMO_NAMESPACE}",service="{DEMO_SERVICE}",ip="{vip}",node="{owner}",interface="eth0"}} 1"#
        );
        assert!(metrics.lines().any(|l| l == series), "{series} in\n{metrics}");
    }
    for other in ["node-1", "node-2", "node-3"].into_iter().filter(|n| *n != owner) {
        let metrics = lab.metrics(other);
        assert_eq!(metric(&metrics, "ferrolb_speaker_owned_vips"), 0.0);
        assert_eq!(metric(&metrics, "ferrolb_speaker_announced"), 0.0, "{metrics}");
    }
    // One speaker, the live member with the smallest name, says what the election expects to be announced.
    let janitor = lab.metrics("node-1");
    for vip in [VIP4, VIP6] {
        let series = format!(
            r#"ferrolb_speaker_expected{{namespace="{DEMO_NAMESPACE}",service="{DEMO_SERVICE}",ip="{vip}",node="{owner}"}} 1"#
        );
        assert!(janitor.lines().any(|l| l == series), "{series} in\n{janitor}");
    }
    for other in ["node-2", "node-3"] {
        assert_eq!(metric(&lab.metrics(other), "ferrolb_speaker_expected"), 0.0);
    }

    // Another host claims the VIP: the owner sees a foreign MAC for it and says so on the Service.
    let client = lab.running.lab().client().interface.clone();
    lab.running.lab().client_exec("arping", &["-U", "-S", VIP4, "-c", "1", "-i", &client, VIP4]).unwrap();
    lab.wait_for("an IPConflict Event", || !lab.events(reason::IP_CONFLICT).is_empty());
    let note = lab.events(reason::IP_CONFLICT)[0].note.clone().unwrap_or_default();
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
    // It drained: it told the others it was handing over (so they took over without probing the wire) and
    // stopped once the new owner had announced the VIPs, not at the hand-over deadline.
    let log = lab.running.speaker_log(&owner, 40);
    assert!(log.contains("handing the VIPs over") && !log.contains("did not finish in time"), "{log}");
    // Back: the rendezvous hash gives it its VIP again, and there is still one owner.
    lab.running.start_stopped();
    lab.wait_for("the first owner to answer again", || lab.curl(VIP4).as_deref() == Some(owner.as_str()));
    lab.assert_single_owner(&owner);
    // The stand-in's per-Service series go with the VIPs (a stale 1 would hide a VIP nobody announces).
    lab.wait_for("the stand-in to drop its announcement series", || {
        metric(&lab.metrics(&next), "ferrolb_speaker_announced") == 0.0
    });
    assert_eq!(metric(&lab.metrics(&owner), "ferrolb_speaker_announced"), 2.0);
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
    // A node that sees the selector change a moment after the new owner took over hands over; it does not
    // defend the VIP nor call the new owner a conflicting host.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        lab.events(reason::IP_CONFLICT).is_empty(),
        "no IPConflict for a hand-over: {:?}",
        lab.events(reason::IP_CONFLICT)
    );
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

#[test]
fn a_kept_address_outside_every_pool_stays_reachable_through_its_pool_of_origin() {
    let mut lab = L2Lab::up();
    lab.owner();
    // The test writes the Service's status itself, as the controller does: its address and the pool it came
    // from.
    lab.running.stop_controller(Duration::from_secs(5)).unwrap();
    let kept = "192.0.2.240";
    lab.service_with_status("kept", &[kept], Some("demo-pool"));
    lab.wait_for("the kept address to answer", || lab.curl(kept).is_some());

    // The pool shrinks: the address is outside every pool, and the Service still holds it.
    lab.patch_pool(
        "demo-pool",
        serde_json::json!({"spec": {"addresses": ["192.0.2.200-192.0.2.230", "2001:db8::200-2001:db8::250"]}}),
    );
    std::thread::sleep(Duration::from_secs(2));
    let client = lab.running.lab().client().interface.clone();
    lab.running.lab().client_exec("ip", &["neigh", "flush", "dev", &client]).unwrap();
    assert!(lab.curl(kept).is_some(), "the kept address stopped answering when its pool shrank\n{}", lab.logs());
    assert_eq!(lab.arping_macs(kept, 3).len(), 1, "one MAC answers for {kept}");

    // The pool is deleted: matched by its name, the address is still announced.
    let api: Api<ferrolb_crds::IPAddressPool> = Api::all(lab.client.clone());
    lab.runtime.block_on(api.delete("demo-pool", &DeleteParams::default())).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    lab.running.lab().client_exec("ip", &["neigh", "flush", "dev", &client]).unwrap();
    assert!(lab.curl(kept).is_some(), "the kept address stopped answering when its pool was deleted\n{}", lab.logs());
}

#[test]
fn a_service_asking_for_a_nodes_address_is_refused_and_the_node_stays_reachable() {
    let mut lab = L2Lab::up();
    lab.owner();
    lab.running.stop_controller(Duration::from_secs(5)).unwrap();
    // node-2's own InternalIP, inside an advertised pool, in a Service's status.
    let node2 = lab.running.lab().node("node-2").unwrap().ipv4.clone();
    lab.patch_pool(
        "demo-pool",
        serde_json::json!({"spec": {"addresses": ["192.0.2.200-192.0.2.250", "2001:db8::200-2001:db8::250", format!("{node2}/32")]}}),
    );
    lab.service_with_status("node-address", &[&node2], None);
    lab.wait_for("a NodeAddress Warning on the Service", || {
        !lab.events_about("node-address", reason::NODE_ADDRESS).is_empty()
    });
    let event = &lab.events_about("node-address", reason::NODE_ADDRESS)[0];
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert!(event.note.as_deref().unwrap_or_default().contains(&node2), "{event:?}");

    // Nobody announced it: only the demo VIPs are owned anywhere, and only node-2 itself answers for its
    // address, which still reaches node-2.
    std::thread::sleep(Duration::from_secs(1));
    let owned: f64 =
        ["node-1", "node-2", "node-3"].iter().map(|n| metric(&lab.metrics(n), "ferrolb_speaker_owned_vips")).sum();
    assert_eq!(owned, 2.0, "only the demo Service's two VIPs are announced\n{}", lab.logs());
    let client = lab.running.lab().client().interface.clone();
    lab.running.lab().client_exec("ip", &["neigh", "flush", "dev", &client]).unwrap();
    assert_eq!(lab.arping_macs(&node2, 3), std::collections::BTreeSet::from([lab.mac("node-2")]));
    assert_eq!(lab.curl(&node2).as_deref(), Some("node-2"));
}

/// Every node but `owner`.
fn others(owner: &str) -> Vec<&'static str> {
    ["node-1", "node-2", "node-3"].into_iter().filter(|n| *n != owner).collect()
}

/// For `span`, one ARP request for VIP4 every 50 ms from the client, and every second the other nodes'
/// owned-VIP count (both families): returns every MAC that answered and the most VIPs another node held.
fn answers_during(lab: &L2Lab, owner: &str, span: Duration) -> (std::collections::BTreeSet<String>, f64) {
    let interval = Duration::from_millis(50);
    let count = u32::try_from(span.as_millis() / interval.as_millis()).unwrap();
    let arping = lab.arping_in_background(VIP4, interval, count, false);
    let until = std::time::Instant::now() + span;
    let mut most = 0.0f64;
    while std::time::Instant::now() < until {
        for other in others(owner) {
            most = most.max(metric(&lab.metrics(other), "ferrolb_speaker_owned_vips"));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    (macs_in(&arping.join().unwrap()), most)
}

#[test]
fn cutting_only_the_gossip_leaves_one_mac_answering_each_vip() {
    let lab = L2Lab::up();
    let owner = lab.owner();
    // The LAN stays up; only UDP 7946 is dropped on every node: each believes the others dead.
    for node in ["node-1", "node-2", "node-3"] {
        lab.cut_gossip(node);
    }
    std::thread::sleep(Duration::from_secs(1));
    let (macs, most) = answers_during(&lab, &owner, Duration::from_secs(19));
    assert_eq!(
        macs,
        std::collections::BTreeSet::from([lab.mac(&owner)]),
        "ARP answers during the partition\n{}",
        lab.logs()
    );
    assert_eq!(most, 0.0, "another node claimed a VIP during the partition\n{}", lab.logs());
    assert!(metric(&lab.metrics(others(&owner)[0]), "ferrolb_speaker_takeovers_deferred_total") >= 1.0);
    for node in ["node-1", "node-2", "node-3"] {
        lab.restore_gossip(node);
    }
    lab.wait_for("every speaker to see the others again", || {
        ["node-1", "node-2", "node-3"].iter().all(|n| metric(&lab.metrics(n), "ferrolb_speaker_members") == 3.0)
    });
    lab.assert_single_owner(&owner);
}

#[test]
fn a_speaker_restarted_with_another_gossip_key_takes_nothing_that_is_answered() {
    let mut lab = L2Lab::up();
    let owner = lab.owner();
    let stranger = others(&owner)[0];
    // Only the restarted speaker reads the new key: it cannot gossip with anyone, and nobody with it.
    lab.running.signal_speaker(stranger, Signal::SIGKILL).unwrap();
    lab.running.wait_speaker_exit(stranger, Duration::from_secs(5)).unwrap();
    ferrolb_e2e::objects::write_gossip_key(&lab.state.path().join("gossip.key")).unwrap();
    lab.running.start_stopped();
    // Its join grace (2 s) passes alone, then it would claim every VIP.
    std::thread::sleep(Duration::from_secs(3));
    let (macs, most) = answers_during(&lab, &owner, Duration::from_secs(10));
    assert_eq!(macs, std::collections::BTreeSet::from([lab.mac(&owner)]), "ARP answers\n{}", lab.logs());
    assert_eq!(most, 0.0, "a node other than the owner claimed a VIP\n{}", lab.logs());
    let stranger_metrics = lab.metrics(stranger);
    assert_eq!(metric(&stranger_metrics, "ferrolb_speaker_members"), 1.0, "{stranger_metrics}");
    assert!(metric(&stranger_metrics, "ferrolb_speaker_takeovers_deferred_total") >= 1.0, "{stranger_metrics}");
    assert_eq!(lab.curl(VIP4).as_deref(), Some(owner.as_str()));
}

#[test]
fn a_returning_owner_takes_its_vip_back_with_no_gap_in_arp_answers() {
    let lab = L2Lab::up();
    let owner = lab.owner();
    let ns = lab.netns(&owner);
    let cut = std::time::Instant::now();
    netns::exec(&ns, "ip", &["link", "set", "eth0", "down"]).unwrap();
    let next = lab.wait_for_new_owner(&owner);
    // From the stand-in's takeover until well after the return: an ARP request every 20 ms.
    let interval = Duration::from_millis(20);
    let watched = Duration::from_secs(20).saturating_sub(cut.elapsed()) + Duration::from_secs(6);
    let count = u32::try_from(watched.as_millis() / interval.as_millis()).unwrap();
    let arping = lab.arping_in_background(VIP4, interval, count, true);
    std::thread::sleep(Duration::from_secs(20).saturating_sub(cut.elapsed()));
    netns::exec(&ns, "ip", &["link", "set", "eth0", "up"]).unwrap();
    let dots = arping.join().unwrap();
    // 5 requests (100 ms) without an answer would be a gap; none is expected (the stand-in answers until
    // the owner's announcement is heard), the margin is for a loaded test machine's scheduling.
    let gap = ferrolb_e2e::l2lab::longest_unanswered_run(&dots);
    assert!(gap < 5, "{gap} requests in a row unanswered (from {next} back to {owner}): {dots}\n{}", lab.logs());
    assert!(dots.matches('!').count() > 1000, "{dots}");
    lab.wait_for("the returning node to answer again", || lab.curl(VIP4).as_deref() == Some(owner.as_str()));
    lab.assert_single_owner(&owner);
}

#[test]
fn a_frozen_and_resumed_owner_reports_no_conflict_and_takes_its_vip_back() {
    let lab = L2Lab::up();
    let owner = lab.owner();
    let stopped = std::time::Instant::now();
    lab.running.signal_speaker(&owner, Signal::SIGSTOP).unwrap();
    let next = lab.wait_for_new_owner(&owner);
    std::thread::sleep(Duration::from_secs(10).saturating_sub(stopped.elapsed()));
    lab.running.signal_speaker(&owner, Signal::SIGCONT).unwrap();
    lab.wait_for(&format!("{owner} to answer again after {next} stood in"), || {
        lab.curl(VIP4).as_deref() == Some(owner.as_str())
    });
    std::thread::sleep(Duration::from_secs(3));
    lab.assert_single_owner(&owner);
    assert_eq!(lab.events(reason::IP_CONFLICT).len(), 0, "{:?}\n{}", lab.events(reason::IP_CONFLICT), lab.logs());
    assert!(
        metric(&lab.metrics(&owner), "ferrolb_speaker_stale_frames_total") >= 1.0,
        "frames queued while frozen were dropped"
    );
}

#[test]
fn a_link_that_comes_back_at_once_hands_the_vip_back_with_no_false_conflict() {
    let lab = L2Lab::up();
    let owner = lab.owner();
    let ns = lab.netns(&owner);
    netns::exec(&ns, "ip", &["link", "set", "eth0", "down"]).unwrap();
    let next = lab.wait_for_new_owner(&owner);
    // Back within the hand-over window of the VIP it had: it held nothing while the link was down, so it
    // takes the VIP back from the stand-in like any returning owner, announcing it.
    netns::exec(&ns, "ip", &["link", "set", "eth0", "up"]).unwrap();
    lab.wait_for(&format!("{owner} to answer again after {next} stood in"), || {
        lab.curl(VIP4).as_deref() == Some(owner.as_str())
    });
    std::thread::sleep(Duration::from_secs(4));
    lab.assert_single_owner(&owner);
    assert_eq!(lab.events(reason::IP_CONFLICT).len(), 0, "{:?}\n{}", lab.events(reason::IP_CONFLICT), lab.logs());
}

/// The controller and the speakers together: the demo Service's pool shrinks past its address; the controller
/// keeps the address (saying it is still announced), and the speakers keep announcing it through the pool it
/// came from, so the EXTERNAL-IP never stops answering.
#[test]
fn a_pool_shrunk_past_a_services_address_leaves_it_kept_and_answering() {
    let lab = L2Lab::up();
    lab.owner();
    lab.patch_pool(
        ferrolb_e2e::lab_supervisor::DEMO_POOL,
        serde_json::json!({"spec": {"addresses": ["192.0.2.201-192.0.2.250", "2001:db8::201-2001:db8::250"]}}),
    );
    let services: Api<Service> = Api::namespaced(lab.client.clone(), DEMO_NAMESPACE);
    lab.wait_for("the demo Service to say it keeps its address outside its pool", || {
        let service = lab.runtime.block_on(services.get(DEMO_SERVICE)).unwrap();
        ferrolb_crds::service::condition(&service, ferrolb_crds::service::ALLOCATED_CONDITION).is_some_and(|c| {
            c.status == "True" && c.reason == reason::OUTSIDE_POOL && c.message.contains("still announced")
        })
    });
    let service = lab.runtime.block_on(services.get(DEMO_SERVICE)).unwrap();
    let kept: Vec<String> = ferrolb_crds::service::ingress_ips(&service).iter().map(|ip| ip.to_string()).collect();
    assert_eq!(kept, [VIP4, VIP6], "the controller moved the address");
    std::thread::sleep(Duration::from_secs(2));
    let client = lab.running.lab().client().interface.clone();
    lab.running.lab().client_exec("ip", &["neigh", "flush", "dev", &client]).unwrap();
    assert!(lab.curl(VIP4).is_some(), "the kept IPv4 address stopped answering\n{}", lab.logs());
    assert!(lab.curl(VIP6).is_some(), "the kept IPv6 address stopped answering\n{}", lab.logs());
}

#[test]
fn a_node_whose_address_is_on_a_bridge_announces_its_vip_from_the_bridge() {
    let lab = L2Lab::up();
    let owner = lab.owner();
    let host = lab.running.lab().node(&owner).unwrap().clone();
    let ns = lab.netns(&owner);
    // As on a KVM/Proxmox host: eth0 becomes a port of br0, which takes over the node's MAC and addresses.
    let ipv4 = format!("{}/24", host.ipv4);
    let ipv6 = format!("{}/64", host.ipv6);
    for args in [
        vec!["link", "add", "br0", "address", host.mac.as_str(), "type", "bridge"],
        vec!["link", "set", "eth0", "master", "br0"],
        vec!["addr", "flush", "dev", "eth0", "scope", "global"],
        vec!["addr", "add", ipv4.as_str(), "dev", "br0"],
        vec!["addr", "add", ipv6.as_str(), "dev", "br0", "nodad"],
        vec!["link", "set", "br0", "up"],
    ] {
        let out = netns::exec(&ns, "ip", &args).unwrap();
        assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    let announcements: Api<ferrolb_crds::L2Announcement> =
        Api::namespaced(lab.client.clone(), ferrolb_e2e::lab_supervisor::INSTALL_NAMESPACE);
    lab.wait_for(&format!("{owner} to announce the VIP on br0"), || {
        lab.runtime
            .block_on(announcements.get_opt(ferrolb_e2e::l2lab::ANNOUNCEMENT))
            .unwrap()
            .is_some_and(|a| a.spec.node == owner && a.spec.interfaces == ["br0"])
    });
    lab.assert_single_owner(&owner);
}
