//! keepalived mode end to end: real keepalived (Debian's) in the three node namespaces, driven by the
//! speakers. The client reaches every VIP; killing the owner's keepalived or its speaker moves the VIP, and so
//! does cutting the owner's link; hundreds of VIPs need few VRRP instances, and adding and removing Services
//! while traffic flows drops nothing for the others.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed step should stop the test, loudly

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use ferrolb_crds::{IPAddressPool, IPAddressPoolSpec, L2Advertisement, L2AdvertisementSpec};
use ferrolb_e2e::l2lab::{L2Lab, VIP4, metric};
use ferrolb_e2e::netns;
use ferrolb_e2e::objects::{Backend, apply_endpoint_slice, create_namespace};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, PostParams};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Faster adverts than the 1 s default keep the test short; failover takes about three of them.
const FAST: &[&str] = &["--advert-interval-ms", "200"];

fn keepalived_pid(lab: &L2Lab, node: &str) -> Option<i32> {
    let path = lab.state.path().join(format!("keepalived-{node}")).join("keepalived.pid");
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn keepalived_check(config: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keepalived.conf");
    std::fs::write(&file, config).unwrap();
    std::process::Command::new("keepalived").arg("-t").arg("-f").arg(&file).output().unwrap()
}

#[test]
fn rendered_configurations_pass_keepalived_own_check() {
    let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../speaker/testdata/keepalived-node-3.conf");
    let output = keepalived_check(&std::fs::read_to_string(golden).unwrap());
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    // The check is real: a broken file fails it.
    assert!(!keepalived_check("vrrp_instance broken {\n    virtual_router_id 999\n").status.success());
}

#[test]
fn keepalived_holds_the_vips_and_moves_them_when_the_owner_fails() {
    let mut lab = L2Lab::up_with(true, FAST);
    let owner = lab.owner();
    // The master's speaker reports what it announces, per Service VIP and interface; the backups nothing.
    lab.wait_for("the master's announcement series", || {
        metric(&lab.metrics(&owner), "ferrolb_speaker_announced") == 2.0
    });
    for other in ["node-1", "node-2", "node-3"].into_iter().filter(|n| *n != owner) {
        assert_eq!(metric(&lab.metrics(other), "ferrolb_speaker_announced"), 0.0);
    }

    // keepalived killed: its VRRP process leaves, a backup takes over; the speaker restarts keepalived and
    // the owner, first by rank, takes its VIPs back.
    let pid = keepalived_pid(&lab, &owner).expect("keepalived's pid file");
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let next = lab.wait_for_new_owner(&owner);
    assert_ne!(next, owner);
    lab.wait_for("the restarted keepalived to take the VIPs back", || {
        lab.curl(VIP4).as_deref() == Some(owner.as_str())
    });
    lab.assert_single_owner(&owner);

    // The speaker killed: keepalived goes with it.
    lab.running.signal_speaker(&owner, Signal::SIGKILL).unwrap();
    lab.running.wait_speaker_exit(&owner, Duration::from_secs(5)).unwrap();
    let next = lab.wait_for_new_owner(&owner);
    lab.assert_single_owner(&next);
    lab.running.start_stopped();
    lab.wait_for("the owner back", || lab.curl(VIP4).as_deref() == Some(owner.as_str()));

    // The speaker stopped (SIGTERM): it stops keepalived, which releases the VIPs and tells its peers.
    lab.running.signal_speaker(&owner, Signal::SIGTERM).unwrap();
    let status = lab.running.wait_speaker_exit(&owner, Duration::from_secs(10)).unwrap();
    assert!(status.success(), "a graceful stop exits 0: {status}");
    let next = lab.wait_for_new_owner(&owner);
    lab.assert_single_owner(&next);
    let ns = lab.netns(&owner);
    let addresses = netns::exec(&ns, "ip", &["-br", "addr", "show", "eth0"]).unwrap();
    assert!(!String::from_utf8_lossy(&addresses.stdout).contains(VIP4), "the stopped node released the VIP");
    lab.running.start_stopped();
    lab.wait_for("the owner back", || lab.curl(VIP4).as_deref() == Some(owner.as_str()));

    // The owner's link cut (a hard failure, as keepalived's peers see it), then back.
    netns::exec(&ns, "ip", &["link", "set", "eth0", "down"]).unwrap();
    let next = lab.wait_for_new_owner(&owner);
    lab.assert_single_owner(&next);
    netns::exec(&ns, "ip", &["link", "set", "eth0", "up"]).unwrap();
    lab.wait_for("the owner back after its link returned", || lab.curl(VIP4).as_deref() == Some(owner.as_str()));
    std::thread::sleep(Duration::from_secs(1));
    lab.assert_single_owner(&owner);
}

/// Pool `many` (IPv6, not auto-assigned: only the Services of namespace `many` ask for it), announced.
async fn create_many_pool(client: &kube::Client) {
    let pool = IPAddressPool::new(
        "many",
        IPAddressPoolSpec { auto_assign: false, ..IPAddressPoolSpec::with_addresses(&["2001:db8::1:0/112"]) },
    );
    Api::<IPAddressPool>::all(client.clone()).create(&PostParams::default(), &pool).await.unwrap();
    let advertisement = L2Advertisement::new(
        "many",
        L2AdvertisementSpec { ip_address_pools: vec!["many".into()], ..Default::default() },
    );
    Api::<L2Advertisement>::all(client.clone()).create(&PostParams::default(), &advertisement).await.unwrap();
    create_namespace(client, "many").await.unwrap();
}

#[test]
fn a_configuration_keepalived_refuses_is_counted_keeps_the_running_one_and_is_retried() {
    // keepalived itself, except that its check (`-t`) refuses every configuration while the marker exists.
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("refuse");
    let wrapper = dir.path().join("keepalived");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ \"$1\" = -t ] && [ -e {} ]; then echo 'refused by the test' >&2; exit 1; fi\nexec keepalived \"$@\"\n",
            marker.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let wrapper_arg = wrapper.to_string_lossy().into_owned();
    let lab = L2Lab::up_with(true, &["--advert-interval-ms", "200", "--keepalived-binary", &wrapper_arg]);
    let owner = lab.owner();
    let failures = |node: &str| metric(&lab.metrics(node), "ferrolb_speaker_keepalived_reload_failures_total");
    assert_eq!(failures(&owner), 0.0);

    std::fs::write(&marker, "").unwrap();
    let client = lab.client.clone();
    lab.runtime.block_on(async {
        create_many_pool(&client).await;
        create_services(&client, vec!["refused".into()]).await;
    });
    lab.wait_for("every speaker to count the refused configuration", || {
        ["node-1", "node-2", "node-3"].iter().all(|n| failures(n) >= 1.0)
    });
    let refused = lab.metrics(&owner);
    assert!(
        refused.contains(r#"ferrolb_speaker_keepalived_reload_failures_total{reason="invalid_config"}"#),
        "{refused}"
    );
    // The running configuration stays: the demo VIP still answers from its owner; the new one is not up.
    assert_eq!(lab.curl(VIP4).as_deref(), Some(owner.as_str()));
    let new_vip = vip_of(&lab, "refused").expect("the controller gave the Service its address");
    assert!(lab.curl(&new_vip).is_none(), "{new_vip} answers although no configuration holds it");

    // Fixed: the next resync applies it.
    std::fs::remove_file(&marker).unwrap();
    lab.wait_for("the new VIP to answer once keepalived accepts the configuration", || lab.curl(&new_vip).is_some());
    assert_eq!(lab.curl(VIP4).as_deref(), Some(owner.as_str()));
}

async fn create_services(client: &kube::Client, names: Vec<String>) {
    let services: Api<Service> = Api::namespaced(client.clone(), "many");
    futures::stream::iter(names)
        .for_each_concurrent(20, |name| {
            let (services, client) = (services.clone(), client.clone());
            async move {
                let service = ferrolb_e2e::objects::ipv6_load_balancer(&name, Some("many"));
                services.create(&PostParams::default(), &service).await.unwrap();
                let backends: Vec<Backend> = (1..=3)
                    .map(|i| Backend { node: format!("node-{i}"), address: format!("2001:db8:2::{i}"), ready: true })
                    .collect();
                apply_endpoint_slice(&client, "many", &name, "IPv6", 80, &backends).await.unwrap();
            }
        })
        .await;
}

/// keepalived's state changes and complaints, from every node's full speaker log.
fn vrrp_events(lab: &L2Lab) -> String {
    let mut out = String::new();
    for node in ["node-1", "node-2", "node-3"] {
        let log = std::fs::read_to_string(lab.state.path().join(format!("speaker-{node}.log"))).unwrap_or_default();
        for line in log.lines().filter(|l| {
            ["Entering", "removing", "mismatch", "rror", "reload", "Reload", "VRRP state", "advert"]
                .iter()
                .any(|k| l.contains(k))
        }) {
            out.push_str(&format!("{node}: {}\n", line.chars().take(220).collect::<String>()));
        }
    }
    out
}

fn vip_of(lab: &L2Lab, name: &str) -> Option<String> {
    let services: Api<Service> = Api::namespaced(lab.client.clone(), "many");
    let service = lab.runtime.block_on(services.get_opt(name)).unwrap()?;
    service.status?.load_balancer?.ingress?.first()?.ip.clone()
}

#[test]
fn hundreds_of_vips_use_few_instances_and_changes_drop_nothing() {
    // The default advert interval: keepalived pauses adverts while it reloads (about a second with hundreds
    // of VIPs on these 2 cores), which 200 ms adverts would read as a dead master.
    let lab = L2Lab::up_with(true, &[]);
    lab.owner();
    let client = lab.client.clone();
    lab.runtime.block_on(async {
        create_many_pool(&client).await;
        create_services(&client, (0..300).map(|i| format!("svc-{i}")).collect()).await;
    });
    lab.wait_for("the first and the last of 300 VIPs to answer", || {
        ["svc-0", "svc-299"].iter().all(|name| vip_of(&lab, name).is_some_and(|vip| lab.curl(&vip).is_some()))
    });
    for node in ["node-1", "node-2", "node-3"] {
        let config =
            std::fs::read_to_string(lab.state.path().join(format!("keepalived-{node}/keepalived.conf"))).unwrap();
        let instances = config.matches("vrrp_instance ").count();
        assert!(instances <= 14, "{node}: {instances} VRRP instances for 301 Services");
        assert!(config.matches("/128 dev").count() >= 300 / 3, "{node} holds its share of VIPs in its config");
        assert!(keepalived_check(&config).status.success(), "{node}'s live configuration passes keepalived -t");
    }

    // Traffic to existing VIPs while Services come and go (each change is a SIGHUP reload on every node).
    let watched: Vec<String> = vec![VIP4.to_string(), vip_of(&lab, "svc-0").unwrap(), vip_of(&lab, "svc-150").unwrap()];
    let (stop, failures, requests) =
        (Arc::new(AtomicBool::new(false)), Arc::new(std::sync::Mutex::new(Vec::new())), Arc::new(AtomicUsize::new(0)));
    let client_ns = lab.running.lab().client().netns.clone();
    let prober = {
        let (stop, failures, requests) = (stop.clone(), failures.clone(), requests.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for vip in &watched {
                    let url = if vip.contains(':') { format!("http://[{vip}]/") } else { format!("http://{vip}/") };
                    // A request gets one quick retry: on 2 busy cores a lone slow answer is not a dropped VIP
                    // (a dropped VIP stays unanswered for several VRRP adverts).
                    let attempt = || netns::exec(&client_ns, "curl", &["-s", "-g", "--max-time", "1", &url]);
                    requests.fetch_add(1, Ordering::Relaxed);
                    let first = attempt().ok().and_then(|o| o.status.code());
                    if first != Some(0) {
                        let second = attempt().ok().and_then(|o| o.status.code());
                        if second != Some(0) {
                            failures.lock().unwrap().push(format!("{vip}: curl exit {first:?} then {second:?}"));
                        }
                    }
                }
            }
        })
    };
    lab.runtime.block_on(create_services(&client, (300..310).map(|i| format!("svc-{i}")).collect()));
    let services: Api<Service> = Api::namespaced(client.clone(), "many");
    for i in 200..210 {
        lab.runtime.block_on(services.delete(&format!("svc-{i}"), &DeleteParams::default())).unwrap();
    }
    lab.wait_for("the new Services to answer", || vip_of(&lab, "svc-309").is_some_and(|vip| lab.curl(&vip).is_some()));
    std::thread::sleep(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    prober.join().unwrap();
    assert!(requests.load(Ordering::Relaxed) >= 15, "the prober ran: {} requests", requests.load(Ordering::Relaxed));
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "requests to existing VIPs failed during the changes: {failures:?}\n{}",
        vrrp_events(&lab)
    );
}
