//! The lab as the speaker tests use it: three nodes with speakers (native or keepalived mode), the controller,
//! the demo Service, and the client's tools (curl, arping, ndisc6) as judges of who answers.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fixture: a failed step should stop the test, loudly

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ferrolb_crds::L2Announcement;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams};

use crate::lab_supervisor::{DEMO_NAMESPACE, DEMO_SERVICE, INSTALL_NAMESPACE, LabConfig, RunningLab};
use crate::netns;

pub const VIP4: &str = "192.0.2.200";
pub const VIP6: &str = "2001:db8::200";
pub const ANNOUNCEMENT: &str = "default.webapp1-loadbalancer-svc";
/// Generous: these are correctness tests, not benchmarks (`cargo xtask bench failover` measures).
pub const SETTLE: Duration = Duration::from_secs(20);

pub struct L2Lab {
    pub running: RunningLab,
    pub runtime: tokio::runtime::Runtime,
    pub client: kube::Client,
    pub state: tempfile::TempDir,
}

impl L2Lab {
    /// A native-mode lab with default speaker settings.
    pub fn up() -> Self {
        Self::up_with(false, &[])
    }

    /// A lab whose speakers run in keepalived mode or not, with extra speaker arguments.
    pub fn up_with(keepalived: bool, speaker_args: &[&str]) -> Self {
        let state = tempfile::tempdir().unwrap();
        let speaker = crate::process::workspace_binary("ferrolb-speaker").unwrap();
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
        let config = LabConfig {
            keepalived,
            speaker_args: speaker_args.iter().map(|a| a.to_string()).collect(),
            ..LabConfig::processes(state.path().to_path_buf(), speaker.parent().unwrap().to_path_buf(), repo)
        };
        let running = RunningLab::start(config).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let client = runtime.block_on(running.plane().admin_client()).unwrap();
        let lab = Self { running, runtime, client, state };
        lab.wait_for("the demo VIP to answer", || lab.curl(VIP4).is_some());
        lab
    }

    pub fn wait_for(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + SETTLE;
        while Instant::now() < deadline {
            if done() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("timed out waiting for {what}\n{}", self.logs());
    }

    pub fn logs(&self) -> String {
        ["node-1", "node-2", "node-3"]
            .iter()
            .map(|n| format!("--- speaker on {n}:\n{}", self.running.speaker_log(n, 25)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn mac(&self, node: &str) -> String {
        self.running.lab().node(node).unwrap().mac.clone()
    }

    pub fn netns(&self, node: &str) -> String {
        self.running.lab().node(node).unwrap().netns.clone()
    }

    /// The node named in the demo Service's L2Announcement.
    pub fn announced_owner(&self) -> Option<String> {
        let api: Api<L2Announcement> = Api::namespaced(self.client.clone(), INSTALL_NAMESPACE);
        self.runtime.block_on(api.get_opt(ANNOUNCEMENT)).unwrap().map(|a| a.spec.node)
    }

    /// What the VIP answers (the name of the node that got the request), if anything.
    pub fn curl(&self, ip: &str) -> Option<String> {
        let url = if ip.contains(':') { format!("http://[{ip}]/") } else { format!("http://{ip}/") };
        let output = self.running.lab().client_exec("curl", &["-s", "-g", "--max-time", "1", &url]).unwrap();
        output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    /// The MACs that answer `count` ARP requests for `ip` (empty if none does).
    pub fn arping_macs(&self, ip: &str, count: u32) -> BTreeSet<String> {
        let client = self.running.lab().client().interface.clone();
        let count = count.to_string();
        let output = self.running.lab().client_exec("arping", &["-c", &count, "-w", "3", "-i", &client, ip]).unwrap();
        macs_in(&String::from_utf8_lossy(&output.stdout))
    }

    /// Starts `arping` from the client: `count` requests for `ip`, one every `interval`; its output (with
    /// `dots`, one `!` per answered request and `.` per unanswered one) once it is done.
    pub fn arping_in_background(
        &self,
        ip: &str,
        interval: Duration,
        count: u32,
        dots: bool,
    ) -> std::thread::JoinHandle<String> {
        let (ns, interface, ip) =
            (self.running.lab().client().netns.clone(), self.running.lab().client().interface.clone(), ip.to_string());
        std::thread::spawn(move || {
            let (wait, count) = (format!("{:.3}", interval.as_secs_f64()), count.to_string());
            let mut args = vec!["-W", &wait, "-c", &count, "-i", &interface];
            if dots {
                args.push("-D");
            }
            args.push(&ip);
            let output = netns::exec(&ns, "arping", &args).unwrap();
            String::from_utf8_lossy(&output.stdout).into_owned()
        })
    }

    /// The link-layer address a Neighbor Solicitation for `ip` gets, if any.
    pub fn ndisc_mac(&self, ip: &str) -> Option<String> {
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
    pub fn wait_for_new_owner(&self, not: &str) -> String {
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
    pub fn assert_single_owner(&self, owner: &str) {
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

    /// The owner once things have settled: the node that answers HTTP is the one the L2Announcement names
    /// and the only one answering ARP (right after start-up the client may still hold a MAC from a takeover
    /// that was undone, and in keepalived mode two VRRP instances may both be master until they hear each
    /// other's adverts).
    pub fn owner(&self) -> String {
        let mut owner = String::new();
        // Settled on both families: in keepalived mode each family is its own VRRP instance, and the two
        // elections end a moment apart.
        self.wait_for("a settled owner", || match (self.curl(VIP4), self.announced_owner()) {
            (Some(answer), Some(announced))
                if answer == announced
                    && self.arping_macs(VIP4, 2).len() == 1
                    && self.ndisc_mac(VIP6) == Some(self.mac(&answer)) =>
            {
                owner = answer;
                true
            }
            _ => false,
        });
        self.assert_single_owner(&owner);
        owner
    }

    pub fn events(&self, reason: &str) -> Vec<Event> {
        self.events_about(DEMO_SERVICE, reason)
    }

    /// Events with `reason` about the Service `service` of the demo namespace.
    pub fn events_about(&self, service: &str, reason: &str) -> Vec<Event> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), DEMO_NAMESPACE);
        let list = self.runtime.block_on(api.list(&ListParams::default())).unwrap();
        list.items
            .into_iter()
            .filter(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(service)
            })
            .collect()
    }

    /// The controller's /metrics text (its port is the one it logged: the lab binds port 0).
    pub fn controller_metrics(&self) -> String {
        let log = std::fs::read_to_string(self.state.path().join("controller.log")).unwrap_or_default();
        let address = log
            .lines()
            .filter(|l| l.contains("serving /metrics"))
            .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("address=")))
            .next_back()
            .expect("the controller logs where it serves /metrics")
            .to_string();
        let output = std::process::Command::new("curl")
            .args(["-s", "--max-time", "2", &format!("http://{address}/metrics")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    pub fn metrics(&self, node: &str) -> String {
        let output =
            netns::exec(&self.netns(node), "curl", &["-s", "--max-time", "2", "http://127.0.0.1:7473/metrics"])
                .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// A `type: LoadBalancer` Service `name` in the demo namespace whose status the test writes itself
    /// (stop the controller first, or it rewrites it): ingress `ips` and, if given, the pool-of-origin
    /// condition naming `origin_pool`. It gets a ready endpoint on every node (without one nobody
    /// announces a Service).
    pub fn service_with_status(&self, name: &str, ips: &[&str], origin_pool: Option<&str>) {
        let api: Api<Service> = Api::namespaced(self.client.clone(), DEMO_NAMESPACE);
        let service = serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": DEMO_NAMESPACE},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]}
        });
        let params = PatchParams::apply("ferrolb-e2e").force();
        self.runtime.block_on(api.patch(name, &params, &Patch::Apply(&service))).unwrap();
        let ingress: Vec<serde_json::Value> =
            ips.iter().map(|ip| serde_json::json!({"ip": ip, "ipMode": "VIP"})).collect();
        let mut status = serde_json::json!({"loadBalancer": {"ingress": ingress}});
        if let Some(pool) = origin_pool {
            status["conditions"] = serde_json::json!([{
                "type": ferrolb_crds::service::POOL_CONDITION,
                "status": "True",
                "reason": ferrolb_crds::service::POOL_CONDITION_REASON,
                "message": pool,
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }]);
        }
        let patch = serde_json::json!({"status": status});
        self.runtime.block_on(api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))).unwrap();
        let backends: Vec<crate::objects::Backend> = ["node-1", "node-2", "node-3"]
            .iter()
            .enumerate()
            .map(|(i, node)| crate::objects::Backend {
                node: node.to_string(),
                address: format!("203.0.113.{}", 60 + i),
                ready: true,
            })
            .collect();
        self.runtime
            .block_on(crate::objects::apply_endpoint_slice(&self.client, DEMO_NAMESPACE, name, "IPv4", 80, &backends))
            .unwrap();
    }

    /// Merges `patch` into the spec of the IPAddressPool `name`.
    pub fn patch_pool(&self, name: &str, patch: serde_json::Value) {
        let api: Api<ferrolb_crds::IPAddressPool> = Api::all(self.client.clone());
        self.runtime.block_on(api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))).unwrap();
    }

    /// Drops every gossip datagram (UDP 7946, both ways) in `node`'s namespace while the LAN stays up: the
    /// rule goes with the namespace when the lab is dropped.
    pub fn cut_gossip(&self, node: &str) {
        let ns = self.netns(node);
        let rules = "table inet ferrolb-e2e {\n chain input { type filter hook input priority 0; udp dport 7946 drop; udp sport 7946 drop; }\n chain output { type filter hook output priority 0; udp dport 7946 drop; udp sport 7946 drop; }\n}\n";
        let file = self.state.path().join(format!("cut-gossip-{node}.nft"));
        std::fs::write(&file, rules).unwrap();
        let output = netns::exec(&ns, "nft", &["-f", &file.to_string_lossy()]).unwrap();
        assert!(output.status.success(), "nft: {}", String::from_utf8_lossy(&output.stderr));
    }

    /// Undoes [`L2Lab::cut_gossip`].
    pub fn restore_gossip(&self, node: &str) {
        let output = netns::exec(&self.netns(node), "nft", &["delete", "table", "inet", "ferrolb-e2e"]).unwrap();
        assert!(output.status.success(), "nft: {}", String::from_utf8_lossy(&output.stderr));
    }

    pub fn patch_service(&self, patch: serde_json::Value) {
        let api: Api<Service> = Api::namespaced(self.client.clone(), DEMO_NAMESPACE);
        self.runtime.block_on(api.patch(DEMO_SERVICE, &PatchParams::default(), &Patch::Merge(&patch))).unwrap();
    }

    pub fn label_node(&self, node: &str, key: &str, value: Option<&str>) {
        let api: Api<Node> = Api::all(self.client.clone());
        let patch = serde_json::json!({"metadata": {"labels": {key: value}}});
        self.runtime.block_on(api.patch(node, &PatchParams::default(), &Patch::Merge(&patch))).unwrap();
    }
}

/// The MACs in `arping` output.
pub fn macs_in(arping_output: &str) -> BTreeSet<String> {
    arping_output
        .lines()
        .filter_map(|line| line.split("from ").nth(1)?.split_whitespace().next().map(str::to_lowercase))
        .collect()
}

/// The longest run of unanswered requests in `arping -D` output.
pub fn longest_unanswered_run(dots: &str) -> usize {
    dots.split('!').map(|run| run.chars().filter(|c| *c == '.').count()).max().unwrap_or(0)
}

pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
