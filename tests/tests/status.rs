//! `ferrolb status` (and `kubectl ferrolb status`, the same binary as a kubectl plugin) against the lab: a
//! real API server, the controller, three speakers in node namespaces and the demo Service.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed step should stop the test, loudly

use std::path::Path;
use std::process::Command;

use ferrolb_crds::reason;
use ferrolb_e2e::l2lab::{L2Lab, VIP4, VIP6};
use ferrolb_e2e::lab_supervisor::{DEMO_NAMESPACE, DEMO_POOL, DEMO_SERVICE, INSTALL_NAMESPACE};
use ferrolb_e2e::toolchain::K8sBinary;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};

fn ferrolb(kubeconfig: &Path, args: &[&str]) -> String {
    let binary = ferrolb_e2e::process::workspace_binary("ferrolb").unwrap();
    // KUBECONFIG, as kubectl reads it; the install namespace is the chart's default.
    let output = Command::new(binary).args(args).env("KUBECONFIG", kubeconfig).output().unwrap();
    assert!(output.status.success(), "ferrolb {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn status_explains_the_demo_service_a_pending_one_and_the_cluster() {
    let lab = L2Lab::up();
    let owner = lab.owner();
    let kubeconfig = lab.running.config().kubeconfig();
    assert_eq!(INSTALL_NAMESPACE, "ferrolb-system", "the CLI's default install namespace");

    // The demo Service: its IPs, pool, condition, and who announces it on which interface.
    let target = format!("{DEMO_NAMESPACE}/{DEMO_SERVICE}");
    let text = ferrolb(&kubeconfig, &["status", &target]);
    assert!(text.contains(&format!("IPs:        {VIP4}, {VIP6}")), "{text}");
    assert!(text.contains(&format!("Pool:       {DEMO_POOL}")), "{text}");
    assert!(text.contains("ferrolb.io/IPAllocated=True"), "{text}");
    assert!(text.contains(&format!("{VIP4}, {VIP6} from node {owner} on eth0")), "{text}");
    assert!(!text.contains("Problem:"), "{text}");
    let json: serde_json::Value =
        serde_json::from_str(&ferrolb(&kubeconfig, &["status", &target, "-o", "json"])).unwrap();
    assert_eq!(json["announcedBy"][0]["node"], owner.as_str());
    assert_eq!(json["ips"], serde_json::json!([VIP4, VIP6]));
    assert!(json["problem"].is_null());

    // A Service asking for a pool that does not exist: the precise reason and what to change.
    let services: Api<Service> = Api::namespaced(lab.client.clone(), DEMO_NAMESPACE);
    let pending = ferrolb_e2e::objects::ipv6_load_balancer("wants-missing-pool", Some("no-such-pool"));
    lab.runtime.block_on(services.create(&PostParams::default(), &pending)).unwrap();
    lab.wait_for("the controller to refuse the Service", || {
        ferrolb(&kubeconfig, &["status", "default/wants-missing-pool"]).contains(reason::POOL_NOT_FOUND)
    });
    let text = ferrolb(&kubeconfig, &["status", "default/wants-missing-pool"]);
    assert!(text.contains("IPs:        none (pending)"), "{text}");
    assert!(
        text.contains(&format!("Problem:    {}", reason::POOL_NOT_FOUND)) && text.contains("no-such-pool"),
        "{text}"
    );
    assert!(text.contains("To fix:     fix the ferrolb.io/address-pool annotation"), "{text}");
    assert!(text.contains(reason::ALLOCATION_FAILED), "its Events are listed: {text}");

    // The cluster: the pool's usage, every speaker and whom it hears (each reports its SpeakerStatus).
    lab.wait_for("every speaker to report whom it hears", || {
        let json: serde_json::Value = serde_json::from_str(&ferrolb(&kubeconfig, &["status", "-o", "json"])).unwrap();
        let speakers = json["speakers"].as_array().cloned().unwrap_or_default();
        speakers.len() == 3 && speakers.iter().all(|s| s["alive"].as_array().is_some_and(|a| a.len() == 3))
    });
    let text = ferrolb(&kubeconfig, &["status"]);
    assert!(text.contains(DEMO_POOL) && text.contains("IPv4 1/51") && text.contains("IPv6 1/81"), "{text}");
    for node in ["node-1", "node-2", "node-3"] {
        assert!(text.contains(&format!("{node:<16} no pod; hears node-1, node-2, node-3")), "{text}");
    }
    assert!(text.contains("Conflicts:\n  none reported"), "{text}");

    // The same binary as a kubectl plugin.
    let plugins = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        ferrolb_e2e::process::workspace_binary("ferrolb").unwrap(),
        plugins.path().join("kubectl-ferrolb"),
    )
    .unwrap();
    let path = format!("{}:{}", plugins.path().display(), std::env::var("PATH").unwrap_or_default());
    let output = Command::new(K8sBinary::Kubectl.path())
        .args(["ferrolb", "status", &target])
        .env("PATH", path)
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .unwrap();
    let plugin_text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(plugin_text.contains(&format!("from node {owner} on eth0")), "{plugin_text}");
}
