//! The chart's pods under real kubelets (containerd, kube-proxy, controller-manager, scheduler): the lab as
//! `cargo xtask lab` runs it, with ferrolb installed by `helm install` from the images `cargo xtask image`
//! built. Every claim is read from the kernel or the API server, never from ferrolb's own logs.
//!
//! One lab per test, and the tests take turns (each lab is three nodes' worth of runtimes on two cores).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed step should stop the test, loudly

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrolb_crds::l2announcement::L2Announcement;
use ferrolb_e2e::kubelet_lab::{self, Images, RELEASE};
use ferrolb_e2e::lab_supervisor::{DEMO_NAMESPACE, DEMO_SERVICE, INSTALL_NAMESPACE, LabConfig, RunningLab};
use ferrolb_e2e::netns;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams};

/// One lab at a time.
static TURN: Mutex<()> = Mutex::new(());
const CAP_NET_ADMIN: u64 = 1 << 12;
const CAP_NET_RAW: u64 = 1 << 13;
const CAP_NET_BIND_SERVICE: u64 = 1 << 10;
const CAP_SYS_ADMIN: u64 = 1 << 21;
const NONROOT: u32 = 65532;
const TIMEOUT: Duration = Duration::from_secs(90);

fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

struct KubeletLab {
    running: RunningLab,
    runtime: tokio::runtime::Runtime,
    client: kube::Client,
    images: Images,
    _dir: tempfile::TempDir,
}

impl KubeletLab {
    /// `mode`: the chart's `speaker.mode` (`native`, `keepalived` or `bgp`).
    fn up(nodes: usize, mode: &str) -> Self {
        let dir = tempfile::Builder::new().prefix(&ferrolb_e2e::sweep::control_plane_dir_prefix()).tempdir().unwrap();
        ferrolb_e2e::sweep::sweep_leftovers();
        let images = Images::built_by_xtask(&repo()).unwrap();
        let config = LabConfig {
            state_dir: dir.path().to_path_buf(),
            bin_dir: std::path::PathBuf::new(),
            repo: repo(),
            prefix: ferrolb_e2e::names::unique_lab_prefix(),
            nodes,
            controller_metrics_address: "127.0.0.1:0".into(),
            keepalived: mode == "keepalived",
            bgp: mode == "bgp",
            bgp_with_native: false,
            speaker_args: Vec::new(),
            kubelet: Some(images.clone()),
        };
        let running = RunningLab::start(config).unwrap_or_else(|e| panic!("the kubelet lab did not come up: {e}"));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let client = runtime.block_on(running.plane().admin_client()).unwrap();
        Self { running, runtime, client, images, _dir: dir }
    }

    fn pods(&self, component: &str) -> Vec<Pod> {
        let pods = self.runtime.block_on(kubelet_lab::ferrolb_pods(&self.client, INSTALL_NAMESPACE)).unwrap();
        pods.get(component).cloned().unwrap_or_default()
    }

    fn ready_pods(&self, component: &str) -> Vec<Pod> {
        self.pods(component)
            .into_iter()
            .filter(|p| kubelet_lab::pod_ready(p) && p.metadata.deletion_timestamp.is_none())
            .collect()
    }

    /// The Ready pods of `component`, once there are `count` (and no more): `helm --wait` finishes a
    /// DaemonSet's rollout with up to its `maxUnavailable` (one) pod not Ready yet.
    fn wait_ready(&self, component: &str, count: usize) -> Vec<Pod> {
        let selector = format!("app.kubernetes.io/name=ferrolb,app.kubernetes.io/component={component}");
        let ready = self
            .runtime
            .block_on(kubelet_lab::wait_pods_ready(self.running.plane(), INSTALL_NAMESPACE, &selector, count))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ready.len(), count, "Ready {component} pods");
        ready
    }

    fn pid(&self, pod: &Pod, container: &str) -> u32 {
        self.running
            .kubelet_nodes()
            .unwrap()
            .container_pid(pod, container)
            .unwrap_or_else(|| panic!("no running container {container} in pod {}", kubelet_lab::name_of(pod)))
    }

    fn service_ips(&self) -> Vec<String> {
        let ips = ferrolb_e2e::objects::load_balancer_ips(&self.client, DEMO_NAMESPACE, DEMO_SERVICE);
        self.runtime.block_on(ips).unwrap()
    }

    /// The node announcing the demo Service, per its L2Announcement.
    fn owner(&self) -> Option<String> {
        let announcements: Api<L2Announcement> = Api::namespaced(self.client.clone(), INSTALL_NAMESPACE);
        let list = self.runtime.block_on(announcements.list(&ListParams::default())).ok()?;
        list.items.into_iter().find(|a| a.spec.service.name == DEMO_SERVICE).map(|a| a.spec.node)
    }

    fn wait_for(&self, what: &str, mut done: impl FnMut() -> bool) {
        let started = Instant::now();
        while !done() {
            assert!(started.elapsed() < TIMEOUT, "timed out after {} s waiting for {what}", TIMEOUT.as_secs());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn demo_pod_names(&self) -> BTreeSet<String> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), DEMO_NAMESPACE);
        let (key, value) = kubelet_lab::DEMO_APP_LABEL;
        let list = self.runtime.block_on(pods.list(&ListParams::default().labels(&format!("{key}={value}")))).unwrap();
        list.items.iter().map(kubelet_lab::name_of).collect()
    }

    fn helm(&self, args: &[&str]) -> String {
        let home = self.running.config().state_dir.join("helm");
        kubelet_lab::helm(&home, &self.running.config().kubeconfig(), args).unwrap_or_else(|e| panic!("{e}"))
    }

    fn kubectl(&self, args: &[&str]) -> String {
        let output = std::process::Command::new(ferrolb_e2e::toolchain::K8sBinary::Kubectl.path())
            .arg("--kubeconfig")
            .arg(self.running.config().kubeconfig())
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "kubectl {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Requests from the client to `url`s VIP, counted until stopped.
    fn load(&self, vip: &str) -> Load {
        Load::start(self.running.lab().client().netns.clone(), vip.parse().unwrap())
    }
}

fn url(ip: &str) -> String {
    if ip.contains(':') { format!("http://[{ip}]/") } else { format!("http://{ip}/") }
}

/// A request every 20 ms from the client namespace to a VIP, each on a new connection; failures counted.
struct Load {
    stop: Arc<AtomicBool>,
    worker: Option<std::thread::JoinHandle<Outcome>>,
}

/// What the client saw. A VIP that moves takes no connection state along: a connection in flight at the
/// instant of a move is reset by the node it lands on next (as with every ARP/NDP failover, and every change
/// of a router's ECMP set), so resets are counted apart from outages (no connection at all: nobody answered
/// for the VIP).
#[derive(Debug, Default)]
struct Outcome {
    answered: u32,
    /// Connects refused or timed out, or no answer: the VIP was unreachable.
    outages: u32,
    /// Established connections reset. A connect that fails with ECONNRESET counts here too: Linux reports a
    /// reset during the handshake as ECONNREFUSED, so ECONNRESET means the handshake was answered and the
    /// connection then reset, its first segments having reached another node than its SYN.
    resets: u32,
    errors: Vec<String>,
}

impl Load {
    fn start(netns: String, vip: std::net::IpAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let worker = std::thread::spawn(move || {
            ferrolb_e2e::netns::in_netns(&netns, move || {
                let mut outcome = Outcome::default();
                while !flag.load(Ordering::Relaxed) {
                    match request(SocketAddr::new(vip, 80)) {
                        Ok(()) => outcome.answered += 1,
                        Err(e) => {
                            if e.contains("reset") {
                                outcome.resets += 1;
                            } else {
                                outcome.outages += 1;
                            }
                            if outcome.errors.len() < 10 {
                                outcome.errors.push(e);
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(outcome)
            })
            .unwrap()
        });
        Self { stop, worker: Some(worker) }
    }

    /// Stops the load and checks it: answers came, no outage during `what`, and at most one reset connection
    /// per VIP move (`moves`).
    fn finish_without_outage(self, what: &str, moves: u32) {
        let outcome = self.finish();
        eprintln!("{what}: {outcome:?}");
        assert!(outcome.answered > 0, "{what}: no request was answered");
        assert_eq!(outcome.outages, 0, "{what}: the VIP answered throughout: {outcome:?}");
        assert!(
            outcome.resets <= moves,
            "{what}: at most the connection in flight at each of {moves} move(s) was reset: {outcome:?}"
        );
    }

    fn finish(mut self) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        self.worker.take().unwrap().join().unwrap()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn request(address: SocketAddr) -> Result<(), String> {
    let mut stream =
        TcpStream::connect_timeout(&address, Duration::from_secs(1)).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: demo\r\nconnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(|e| format!("read: {e}"))?;
    if answer.starts_with("HTTP/1.1 200") && answer.contains(" on node-") {
        Ok(())
    } else {
        Err(format!("unexpected answer {answer:?}"))
    }
}

/// The processes `pid` started (its main thread's children).
fn children(pid: u32) -> Vec<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    text.split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

/// The effective capability set of a process, from /proc.
fn cap_eff(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap().trim();
    u64::from_str_radix(hex, 16).unwrap()
}

fn uid(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Whether the process's root filesystem is mounted read-only, from its own mount table.
fn root_read_only(pid: u32) -> bool {
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root = mountinfo.lines().rfind(|l| l.split(' ').nth(4) == Some("/")).unwrap().to_string();
    root.split(' ').nth(5).unwrap().split(',').any(|o| o == "ro")
}

#[test]
fn the_charts_pods_run_under_real_kubelets_and_survive_what_operators_do() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let lab = KubeletLab::up(3, "native");

    // Every pod of the chart is Ready, through its own probes.
    let controllers = lab.wait_ready("controller", 2);
    let speakers = lab.wait_ready("speaker", 3);
    for pod in controllers.iter().chain(&speakers) {
        let container = &pod.spec.as_ref().unwrap().containers[0];
        assert!(
            container.readiness_probe.is_some()
                && container.liveness_probe.is_some()
                && container.startup_probe.is_some(),
            "{} has its probes",
            kubelet_lab::name_of(pod)
        );
    }

    // The EXTERNAL-IPs answer the client from real pods, on both families.
    let ips = lab.service_ips();
    assert_eq!(ips.len(), 2, "a VIP of each family: {ips:?}");
    let demo_pods = lab.demo_pod_names();
    for ip in &ips {
        // Right after the install: the demo pods' endpoints, then the election, come after `helm --wait`.
        let started = Instant::now();
        let mut answer = None;
        lab.wait_for(&format!("{ip} to answer"), || {
            answer = lab.running.lab().client_curl(&url(ip), 2).unwrap();
            answer.is_some()
        });
        eprintln!("{ip} answered {:?} after the install finished", started.elapsed());
        let answer = answer.unwrap();
        let pod = answer.split(" on ").next().unwrap();
        assert!(demo_pods.contains(pod), "{ip} was answered by demo pod {pod} ({answer})");
    }

    // The speaker holds exactly CAP_NET_RAW; the controller runs as non-root on a read-only root filesystem.
    for pod in &speakers {
        let pid = lab.pid(pod, "speaker");
        assert_eq!(cap_eff(pid), CAP_NET_RAW, "speaker {} (pid {pid}) has exactly NET_RAW", kubelet_lab::name_of(pod));
    }
    for pod in &controllers {
        let pid = lab.pid(pod, "controller");
        assert_eq!(uid(pid), NONROOT, "controller pid {pid} runs as {NONROOT}");
        assert_eq!(cap_eff(pid), 0, "controller pid {pid} has no capability");
        assert!(root_read_only(pid), "controller pid {pid} has a read-only root filesystem");
    }

    metrics_are_read_only_with_a_token_the_api_server_allows(&lab);
    deleting_the_leading_controller_hands_the_lease_over_and_changes_no_address(&lab);
    deleting_the_owners_speaker_pod_moves_the_vip_and_the_daemonset_brings_it_back(&lab);
    a_helm_upgrade_to_a_new_tag_rolls_the_speakers_with_the_vip_answering_throughout(&lab);
    draining_a_node_moves_its_vips_before_its_speaker_stops(&lab);
}

/// The chart's default: /metrics needs a bearer token the API server authorises (`get /metrics`), so a
/// process on a node's host network (where the speaker's port is open) reads nothing without one.
fn metrics_are_read_only_with_a_token_the_api_server_allows(lab: &KubeletLab) {
    let node_netns = lab.running.lab().node("node-1").unwrap().netns.clone();
    let controller_ip = lab.ready_pods("controller")[0].status.as_ref().unwrap().pod_ip.clone().unwrap();
    let targets = ["http://127.0.0.1:7473/metrics".to_string(), format!("http://{controller_ip}:7472/metrics")];
    let get = |url: &str, token: Option<&str>| {
        let header = token.map(|t| format!("Authorization: Bearer {t}"));
        let mut args = vec!["-s", "--max-time", "5", "-w", "\n%{http_code}", url];
        if let Some(header) = &header {
            args.extend(["-H", header.as_str()]);
        }
        let out = netns::exec(&node_netns, "curl", &args).unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
        (code.to_string(), body.to_string())
    };
    for url in &targets {
        let (code, body) = get(url, None);
        assert_eq!(code, "401", "{url} without a token: {body}");
    }
    lab.kubectl(&["create", "serviceaccount", "scraper", "-n", DEMO_NAMESPACE]);
    let token = lab.kubectl(&["create", "token", "scraper", "-n", DEMO_NAMESPACE]).trim().to_string();
    for url in &targets {
        let (code, body) = get(url, Some(&token));
        assert_eq!(code, "403", "{url} with a token not allowed to get /metrics: {body}");
    }
    let account = format!("--serviceaccount={DEMO_NAMESPACE}:scraper");
    lab.kubectl(&["create", "clusterrolebinding", "scraper", "--clusterrole=ferrolb-metrics-reader", &account]);
    for url in &targets {
        // A refusal is remembered for 10 s.
        lab.wait_for("the granted token to read the metrics", || get(url, Some(&token)).0 == "200");
        assert!(get(url, Some(&token)).1.contains("ferrolb_build_info"), "{url}");
    }
}

fn deleting_the_leading_controller_hands_the_lease_over_and_changes_no_address(lab: &KubeletLab) {
    let ips = lab.service_ips();
    let leader = lab.runtime.block_on(kubelet_lab::controller_leader(&lab.client, INSTALL_NAMESPACE)).unwrap();
    let leader = leader.expect("a controller leads");
    let pods: Api<Pod> = Api::namespaced(lab.client.clone(), INSTALL_NAMESPACE);
    lab.runtime.block_on(pods.delete(&leader, &DeleteParams::default())).unwrap();
    lab.wait_for("another controller to take the Lease", || {
        let holder = lab.runtime.block_on(kubelet_lab::controller_leader(&lab.client, INSTALL_NAMESPACE)).unwrap();
        holder.is_some_and(|h| h != leader)
    });
    lab.wait_for("the Deployment to bring back a second Ready controller", || {
        let ready = lab.ready_pods("controller");
        ready.len() == 2 && ready.iter().all(|p| kubelet_lab::name_of(p) != leader)
    });
    // The new leader has settled every Service: it restored, not re-allocated.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(lab.service_ips(), ips, "no address changed when the Lease moved");
}

fn deleting_the_owners_speaker_pod_moves_the_vip_and_the_daemonset_brings_it_back(lab: &KubeletLab) {
    let ips = lab.service_ips();
    let owner = lab.owner().expect("the demo Service is announced");
    let speaker = lab.ready_pods("speaker").into_iter().find(|p| kubelet_lab::node_of(p) == owner).unwrap();
    let old_uid = speaker.metadata.uid.clone();
    let load = lab.load(&ips[0]);
    let pods: Api<Pod> = Api::namespaced(lab.client.clone(), INSTALL_NAMESPACE);
    lab.runtime.block_on(pods.delete(&kubelet_lab::name_of(&speaker), &DeleteParams::default())).unwrap();
    let mut owners_seen = BTreeSet::new();
    lab.wait_for("another node to announce the VIP", || {
        owners_seen.extend(lab.owner());
        owners_seen.iter().any(|o| *o != owner)
    });
    lab.wait_for("the DaemonSet to bring a new Ready speaker back to the node", || {
        lab.ready_pods("speaker").iter().any(|p| kubelet_lab::node_of(p) == owner && p.metadata.uid != old_uid)
    });
    // The node's own speaker takes its VIP back once it has rejoined (rendezvous hashing).
    lab.wait_for("the VIP to return to its node", || lab.owner().as_deref() == Some(owner.as_str()));
    std::thread::sleep(Duration::from_secs(1));
    // Away and back: two moves.
    load.finish_without_outage(&format!("speaker pod deletion on {owner}"), 2);
    assert_eq!(lab.service_ips(), ips);
}

fn a_helm_upgrade_to_a_new_tag_rolls_the_speakers_with_the_vip_answering_throughout(lab: &KubeletLab) {
    let new_tag = format!("{}-rolled", lab.images.tag);
    for node in &lab.running.kubelet_nodes().unwrap().nodes {
        node.tag_image(&lab.images.reference(Images::FERROLB), &format!("{}:{new_tag}", Images::FERROLB)).unwrap();
    }
    let ips = lab.service_ips();
    let load = lab.load(&ips[0]);
    let chart = repo().join("charts").join("ferrolb");
    lab.helm(&[
        "upgrade",
        RELEASE,
        &chart.to_string_lossy(),
        "-n",
        INSTALL_NAMESPACE,
        "--reset-then-reuse-values",
        "--set",
        &format!("image.tag={new_tag}"),
        "--wait",
        "--timeout",
        "180s",
    ]);
    let daemonsets: Api<DaemonSet> = Api::namespaced(lab.client.clone(), INSTALL_NAMESPACE);
    lab.wait_for("every speaker to run the new image and be Ready", || {
        let status = lab.runtime.block_on(daemonsets.get(&format!("{RELEASE}-speaker"))).unwrap().status.unwrap();
        let speakers = lab.ready_pods("speaker");
        status.updated_number_scheduled == Some(3)
            && status.number_ready == 3
            && speakers.len() == 3
            && speakers
                .iter()
                .all(|p| p.spec.as_ref().unwrap().containers[0].image.as_deref().unwrap().ends_with(&new_tag))
    });
    std::thread::sleep(Duration::from_secs(2));
    // Only the owner's restart moves the VIP: away, and back once it has rejoined.
    load.finish_without_outage("helm upgrade (rolling speakers and controllers)", 2);
    assert_eq!(lab.service_ips(), ips, "no address changed");
}

fn draining_a_node_moves_its_vips_before_its_speaker_stops(lab: &KubeletLab) {
    let ips = lab.service_ips();
    let owner = lab.owner().expect("the demo Service is announced");
    let load = lab.load(&ips[0]);
    // kubectl drain: cordon, then evict every pod but the DaemonSet's.
    let nodes: Api<Node> = Api::all(lab.client.clone());
    let cordon = serde_json::json!({"spec": {"unschedulable": true}});
    lab.runtime.block_on(nodes.patch(&owner, &PatchParams::default(), &Patch::Merge(&cordon))).unwrap();
    for namespace in [DEMO_NAMESPACE, INSTALL_NAMESPACE] {
        let pods: Api<Pod> = Api::namespaced(lab.client.clone(), namespace);
        for pod in lab.runtime.block_on(pods.list(&ListParams::default())).unwrap().items {
            let from_daemonset =
                pod.metadata.owner_references.as_ref().is_some_and(|o| o.iter().any(|r| r.kind == "DaemonSet"));
            if kubelet_lab::node_of(&pod) == owner && !from_daemonset {
                lab.runtime.block_on(pods.evict(&kubelet_lab::name_of(&pod), &EvictParams::default())).unwrap();
            }
        }
    }
    lab.wait_for("the cordoned node's VIP to move", || lab.owner().is_some_and(|o| o != owner));
    // Its speaker now stops (the node is shut down): it holds nothing any more.
    let speaker = lab.ready_pods("speaker").into_iter().find(|p| kubelet_lab::node_of(p) == owner).unwrap();
    let pid = lab.pid(&speaker, "speaker");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    load.finish_without_outage(&format!("drain of {owner} and its speaker's stop"), 1);
    assert_ne!(lab.owner().as_deref(), Some(owner.as_str()));
    assert_eq!(lab.service_ips(), ips);
    lab.kubectl(&["uncordon", &owner]);
}

#[test]
fn keepalived_mode_installed_through_the_chart_works_with_net_admin_only_there() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let lab = KubeletLab::up(2, "keepalived");
    let speakers = lab.wait_ready("speaker", 2);
    for pod in &speakers {
        let pid = lab.pid(pod, "speaker");
        assert_eq!(cap_eff(pid), CAP_NET_RAW | CAP_NET_ADMIN, "the keepalived-mode speaker has NET_RAW and NET_ADMIN");
        assert!(
            pod.spec.as_ref().unwrap().containers[0].image.as_deref().unwrap().starts_with(Images::KEEPALIVED),
            "it runs the keepalived image"
        );
    }
    for pod in &lab.ready_pods("controller") {
        assert_eq!(cap_eff(lab.pid(pod, "controller")), 0, "the controller has no capability in keepalived mode");
    }
    let demo_pods = lab.demo_pod_names();
    for ip in lab.service_ips() {
        let mut answer = None;
        lab.wait_for(&format!("keepalived to bring up {ip}"), || {
            answer = lab.running.lab().client_curl(&url(&ip), 2).unwrap();
            answer.is_some()
        });
        let answer = answer.unwrap();
        let pod = answer.split(" on ").next().unwrap();
        assert!(demo_pods.contains(pod), "{ip} was answered by demo pod {pod} ({answer})");
    }
}

#[test]
fn bgp_mode_installed_through_the_chart_runs_frr_beside_each_speaker_and_a_deleted_pod_drains_first() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let lab = KubeletLab::up(3, "bgp");
    let router = lab.running.router().expect("BGP mode's lab has a router");
    let speakers = lab.wait_ready("speaker", 3);
    for pod in &speakers {
        let containers: Vec<&str> = pod.spec.as_ref().unwrap().containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(containers, ["speaker", "frr"], "FRR runs beside the speaker");
        assert_eq!(cap_eff(lab.pid(pod, "speaker")), 0, "the bgp-mode speaker holds no capability");
        assert_eq!(
            cap_eff(lab.pid(pod, "frr")),
            CAP_NET_ADMIN | CAP_NET_RAW | CAP_NET_BIND_SERVICE | CAP_SYS_ADMIN,
            "FRR's container holds what its daemons need and nothing else"
        );
        assert!(root_read_only(lab.pid(pod, "frr")), "FRR's container has a read-only root filesystem");
    }

    // The demo Service's VIPs reach BIRD from every node, and the client behind the router reaches the pods.
    let ips = lab.service_ips();
    assert_eq!(ips.len(), 2, "a VIP of each family: {ips:?}");
    let v4 = ips.iter().find(|ip| !ip.contains(':')).unwrap().clone();
    lab.wait_for("an ECMP route to the IPv4 VIP through every node", || {
        router.next_hops(&v4).unwrap() == ["192.0.2.11", "192.0.2.12", "192.0.2.13"]
    });
    let demo_pods = lab.demo_pod_names();
    for ip in &ips {
        lab.wait_for(&format!("a route to {ip} through every node"), || router.next_hops(ip).unwrap().len() == 3);
        let mut answer = None;
        lab.wait_for(&format!("{ip} to answer"), || {
            answer = lab.running.lab().client_curl(&url(ip), 2).unwrap();
            answer.is_some()
        });
        let answer = answer.unwrap();
        assert!(demo_pods.contains(answer.split(" on ").next().unwrap()), "{ip} was answered by a demo pod ({answer})");
    }
    let statuses: Api<ferrolb_crds::SpeakerStatus> = Api::namespaced(lab.client.clone(), INSTALL_NAMESPACE);
    lab.wait_for("every speaker to report its sessions Established with BFD up", || {
        let list = lab.runtime.block_on(statuses.list(&ListParams::default())).unwrap().items;
        list.len() == 3
            && list.iter().all(|s| {
                s.spec.bgp_peers.len() == 2
                    && s.spec.bgp_peers.iter().all(|p| p.session == "Established" && p.bfd.as_deref() == Some("up"))
            })
    });

    // bgpd killed inside node-1's FRR container: ferrolb-frr starts it again, and the speaker, finding it
    // empty, configures it again.
    let node1 = speakers.iter().find(|p| kubelet_lab::node_of(p) == "node-1").unwrap();
    let bgpd = children(lab.pid(node1, "frr"))
        .into_iter()
        .find(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "bgpd"))
        .expect("bgpd runs under ferrolb-frr");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(bgpd as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    lab.wait_for("node-1's next hop to go with its bgpd", || router.next_hops(&v4).unwrap().len() == 2);
    lab.wait_for("node-1's bgpd to be back and announcing", || router.next_hops(&v4).unwrap().len() == 3);
    // Its BGP and BFD sessions settle (BFD may come up a moment after BGP) before the next step, which
    // judges by them.
    let settled = || {
        router.birdc("show protocols node_1_v4").unwrap().contains("Established")
            && router
                .birdc("show bfd sessions")
                .unwrap()
                .lines()
                .any(|l| l.starts_with("192.0.2.11 ") && l.contains(" Up "))
    };
    lab.wait_for("node-1's sessions to settle", || {
        settled() && {
            std::thread::sleep(Duration::from_secs(3));
            settled()
        }
    });

    // Deleting node-1's speaker pod (what an upgrade or a drain does) stops its FRR too: the speaker
    // withdraws first and FRR waits for it, so no connection is refused or left unanswered; the DaemonSet's
    // new pod announces again. Each of the two changes of the router's ECMP set (withdrawn, back) may reset
    // the one connection whose segments it splits between two nodes.
    let pod = speakers.iter().find(|p| kubelet_lab::node_of(p) == "node-1").unwrap();
    let name = kubelet_lab::name_of(pod);
    let load = lab.load(&v4);
    let pods: Api<Pod> = Api::namespaced(lab.client.clone(), INSTALL_NAMESPACE);
    lab.runtime.block_on(pods.delete(&name, &DeleteParams::default())).unwrap();
    // Withdrawn first: the route goes while node-1's session is still up (FRR stopping would close it).
    let mut session_when_withdrawn = String::new();
    lab.wait_for("node-1's next hop to be withdrawn", || {
        let withdrawn = router.next_hops(&v4).unwrap() == ["192.0.2.12", "192.0.2.13"];
        if withdrawn {
            session_when_withdrawn = router.birdc("show protocols node_1_v4").unwrap();
        }
        withdrawn
    });
    assert!(
        session_when_withdrawn.contains("Established"),
        "node-1 withdrew before its FRR stopped:\n{session_when_withdrawn}"
    );
    lab.wait_for("the new speaker pod on node-1 to announce again", || router.next_hops(&v4).unwrap().len() == 3);
    load.finish_without_outage("deleting a speaker pod in BGP mode", 2);
}
