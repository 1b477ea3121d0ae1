//! BGP mode end to end: three nodes, each with its FRR driven by its speaker, peering over IPv4 and IPv6
//! with BFD to a router running BIRD 2 (a different implementation), and the client behind the router, so
//! every claim is judged by BIRD's routes and the client's own kernel.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed step should stop the test, loudly

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ferrolb_crds::SpeakerStatus;
use ferrolb_e2e::lab_supervisor::{DEMO_NAMESPACE, DEMO_SERVICE, INSTALL_NAMESPACE, LabConfig, RunningLab};
use ferrolb_e2e::names;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, Patch, PatchParams};

const VIP4: &str = "203.0.113.200";
const VIP6: &str = "2001:db8:b::200";
const NODES_V4: [&str; 3] = ["192.0.2.11", "192.0.2.12", "192.0.2.13"];
/// Generous: these are correctness tests (`cargo xtask bench failover --mode bgp` measures).
const SETTLE: Duration = Duration::from_secs(40);

struct BgpLab {
    running: RunningLab,
    runtime: tokio::runtime::Runtime,
    client: kube::Client,
    _state: tempfile::TempDir,
}

impl BgpLab {
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
            bgp: true,
            speaker_args: Vec::new(),
            kubelet: None,
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

    // Deleting the Service withdraws its routes everywhere.
    lab.runtime.block_on(lab.services().delete(DEMO_SERVICE, &DeleteParams::default())).unwrap();
    lab.wait_for("the routes to be withdrawn", || lab.next_hops(VIP4).is_empty() && lab.next_hops(VIP6).is_empty());
}

#[test]
fn a_local_service_is_announced_only_by_the_nodes_with_a_ready_endpoint() {
    let lab = BgpLab::up();
    lab.wait_for("an ECMP route through every node", || lab.next_hops(VIP4).len() == 3);
    let patch = serde_json::json!({ "spec": { "externalTrafficPolicy": "Local" } });
    lab.runtime.block_on(lab.services().patch(DEMO_SERVICE, &PatchParams::default(), &Patch::Merge(&patch))).unwrap();
    // The lab's endpoints: one ready per node and family. Make node-2's the only ready ones.
    for (family, prefix) in [("IPv4", "203.0.113."), ("IPv6", "2001:db8:1::")] {
        let backends: Vec<ferrolb_e2e::objects::Backend> = ["node-1", "node-2", "node-3"]
            .iter()
            .enumerate()
            .map(|(i, node)| ferrolb_e2e::objects::Backend {
                node: node.to_string(),
                address: format!("{prefix}{}", 10 + i),
                ready: *node == "node-2",
            })
            .collect();
        lab.runtime
            .block_on(ferrolb_e2e::objects::apply_endpoint_slice(
                &lab.client,
                DEMO_NAMESPACE,
                DEMO_SERVICE,
                family,
                80,
                &backends,
            ))
            .unwrap();
    }
    lab.wait_for("the route to go through node-2 alone", || lab.next_hops(VIP4) == ["192.0.2.12"]);
    assert_eq!(lab.curl(VIP4).as_deref(), Some("node-2"));
    assert_eq!(lab.next_hops(VIP6), ["2001:db8::12"]);

    // No ready endpoint anywhere: nobody announces it.
    for family in ["IPv4", "IPv6"] {
        lab.runtime
            .block_on(ferrolb_e2e::objects::apply_endpoint_slice(
                &lab.client,
                DEMO_NAMESPACE,
                DEMO_SERVICE,
                family,
                80,
                &[],
            ))
            .unwrap();
    }
    lab.wait_for("the routes to be withdrawn", || lab.next_hops(VIP4).is_empty() && lab.next_hops(VIP6).is_empty());
}
