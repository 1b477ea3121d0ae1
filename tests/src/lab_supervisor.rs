//! The lab behind `cargo xtask lab`: a control plane, a namespace LAN of nodes, the Node objects, the demo
//! pool and Service, and our components run like a kubelet would run them (restarted ~2 s after they exit).
//! Its state is published in `lab.json` for people and scripts, rewritten whenever a pid changes.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use serde::Serialize;

use crate::control_plane::ControlPlane;
use crate::error::{Error, IoContext, Result};
use crate::kubelet_lab::{Images, KubeletNodes};
use crate::netlab::{Lab, LabHost, LabSpec};
use crate::objects::{Backend, NodeSpec, apply_endpoint_slice, apply_node};
use crate::process::ManagedProcess;
use crate::toolchain::K8sBinary;

pub const DEMO_SERVICE: &str = "webapp1-loadbalancer-svc";
pub const DEMO_NAMESPACE: &str = "default";
pub const DEMO_POOL: &str = "demo-pool";
pub const DEMO_POOL_ADDRESSES: [&str; 2] = ["192.0.2.200-192.0.2.250", "2001:db8::200-2001:db8::250"];
/// BGP mode's pool (`tests/lab/bgp.yaml`), off the node LAN.
pub const BGP_POOL: &str = "bgp-pool";
pub const BGP_POOL_ADDRESSES: [&str; 2] = ["203.0.113.200-203.0.113.250", "2001:db8:b::200-2001:db8:b::250"];
pub const CONTROLLER_BINARY: &str = "ferrolb-controller";
/// Where the lab's components keep their Lease and announcements, as the chart's install namespace would.
pub const INSTALL_NAMESPACE: &str = "ferrolb-system";
/// Loopback only: the lab's host is the developer's machine.
pub const CONTROLLER_METRICS_ADDRESS: &str = "127.0.0.1:7472";
pub const SPEAKER_BINARY: &str = "ferrolb-speaker";
/// How long a kubelet-like restart waits after a component exits.
const RESTART_DELAY: Duration = Duration::from_secs(2);
const SUPERVISE_INTERVAL: Duration = Duration::from_millis(200);
/// Kubelet mode: how often the pods' container pids are read again for lab.json.
const POD_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Kubelet mode: where ferrolb's containers run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct PodPids {
    /// The Lease holder first.
    controllers: Vec<u32>,
    speakers: std::collections::BTreeMap<String, u32>,
}

/// Where the lab's inputs are and where its state goes.
#[derive(Debug, Clone)]
pub struct LabConfig {
    pub state_dir: PathBuf,
    /// Where `ferrolb-controller` and `ferrolb-speaker` are (the workspace's target dir).
    pub bin_dir: PathBuf,
    /// The repository, for the generated CRDs and the demo manifests.
    pub repo: PathBuf,
    pub prefix: String,
    pub nodes: usize,
    /// The controller's /metrics address on the host ([`CONTROLLER_METRICS_ADDRESS`] for the developer's lab;
    /// port 0 where several labs run at once).
    pub controller_metrics_address: String,
    /// Speakers in keepalived mode (each with its own keepalived under the state dir) instead of native.
    pub keepalived: bool,
    /// BGP mode: a router (BIRD) with the client behind it, an FRR per node, the speakers in bgp mode and
    /// the BGP pool (`tests/lab/bgp.yaml`) instead of the L2 demo pool.
    pub bgp: bool,
    /// With `bgp`: the speakers run native L2 beside BGP (`--mode native+bgp`) and the L2 demo pool
    /// (`tests/lab/demo-pool.yaml`) is applied too.
    pub bgp_with_native: bool,
    /// Extra arguments for every speaker (timers, ...).
    pub speaker_args: Vec<String>,
    /// Real nodes (containerd, kubelet, kube-proxy) running these images, ferrolb installed by its chart;
    /// `None`: our binaries run as processes beside fake Nodes (`--processes`).
    pub kubelet: Option<Images>,
}

impl LabConfig {
    /// The speakers' `--mode` (the chart's `speaker.mode`).
    pub fn speaker_mode(&self) -> &'static str {
        match (self.bgp, self.bgp_with_native, self.keepalived) {
            (true, true, _) => "native+bgp",
            (true, false, _) => "bgp",
            (false, _, true) => "keepalived",
            (false, _, false) => "native",
        }
    }

    /// What the tests and benches start: 3 nodes of processes (no kubelet), native mode, the controller's
    /// metrics on any free port, a unique prefix.
    pub fn processes(state_dir: PathBuf, bin_dir: PathBuf, repo: PathBuf) -> Self {
        LabConfig {
            state_dir,
            bin_dir,
            repo,
            prefix: crate::names::unique_lab_prefix(),
            nodes: 3,
            controller_metrics_address: "127.0.0.1:0".into(),
            keepalived: false,
            bgp: false,
            bgp_with_native: false,
            speaker_args: Vec::new(),
            kubelet: None,
        }
    }

    pub fn lab_json(&self) -> PathBuf {
        self.state_dir.join("lab.json")
    }

    pub fn pid_file(&self) -> PathBuf {
        self.state_dir.join("supervisor.pid")
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.state_dir.join("kubeconfig")
    }
}

/// `lab.json`: what is running where.
#[derive(Debug, Serialize)]
pub struct LabState {
    pub ready: bool,
    /// Real kubelets run the pods; the pids are those of the containers' main processes.
    pub kubelet: bool,
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
    pub supervisor: Pid,
    pub apiserver: ApiServerState,
    pub client: ClientState,
    pub controller: Option<Pid>,
    pub nodes: Vec<NodeState>,
    pub pool: PoolState,
    pub service: ServiceRef,
    /// BGP mode: the upstream router the client is behind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub router: Option<RouterState>,
    /// Parts of the lab that do not exist yet, and what that means for the demo.
    pub missing: Vec<String>,
}

#[derive(Debug, Serialize, Clone, Copy, PartialEq, Eq)]
pub struct Pid {
    pub pid: u32,
}

#[derive(Debug, Serialize)]
pub struct ApiServerState {
    pub url: String,
    pub pid: u32,
}

#[derive(Debug, Serialize)]
pub struct ClientState {
    pub netns: String,
    pub ipv4: String,
    pub ipv6: String,
}

#[derive(Debug, Serialize)]
pub struct NodeState {
    #[serde(flatten)]
    pub host: LabHost,
    pub speaker: Option<Pid>,
}

#[derive(Debug, Serialize)]
pub struct PoolState {
    pub name: String,
    pub addresses: Vec<String>,
    pub applied: bool,
}

#[derive(Debug, Serialize)]
pub struct RouterState {
    pub netns: String,
    pub asn: u32,
    pub bird_socket: PathBuf,
}

#[derive(Debug, Serialize)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
}

/// Where the FRR of `node` keeps its configuration and vty sockets.
fn frr_dir(config: &LabConfig, node: &str) -> PathBuf {
    config.state_dir.join(format!("frr-{node}"))
}

/// The component names the lab finds its processes by.
const CONTROLLER_COMPONENT: &str = "controller";
fn speaker_component(node: &str) -> String {
    format!("speaker on {node}")
}

/// A component run like a kubelet runs a container: restarted after it exits.
struct Supervised {
    name: String,
    command: Box<dyn Fn() -> Result<ManagedProcess> + Send>,
    process: Option<ManagedProcess>,
    exited_at: Option<std::time::Instant>,
}

impl Supervised {
    /// Not started yet: the first [`Supervised::tick`] starts it.
    fn new(name: String, command: impl Fn() -> Result<ManagedProcess> + Send + 'static) -> Self {
        Self { name, command: Box::new(command), process: None, exited_at: None }
    }

    fn pid(&self) -> Option<Pid> {
        self.process.as_ref().map(|p| Pid { pid: p.pid() })
    }

    /// Restarts the component if it exited more than [`RESTART_DELAY`] ago; true if its pid changed.
    fn tick(&mut self) -> bool {
        if let Some(process) = self.process.as_mut()
            && let Some(status) = process.try_wait()
        {
            tracing::warn!(component = %self.name, %status, log = %process.log_path().display(), "component exited; restarting in 2 s");
            self.process = None;
            self.exited_at = Some(std::time::Instant::now());
            return true;
        }
        if self.process.is_none() && self.exited_at.is_none_or(|t| t.elapsed() >= RESTART_DELAY) {
            match (self.command)() {
                Ok(process) => {
                    tracing::info!(component = %self.name, pid = process.pid(), "started");
                    self.process = Some(process);
                    self.exited_at = None;
                    return true;
                }
                Err(e) => {
                    tracing::error!(component = %self.name, error = %e, "could not start; retrying in 2 s");
                    self.exited_at = Some(std::time::Instant::now());
                }
            }
        }
        false
    }
}

/// Who the components run as, when not as the admin.
#[derive(Debug, Clone)]
pub struct Identities {
    pub controller_kubeconfig: PathBuf,
    pub speaker_kubeconfig: PathBuf,
    pub gossip_key: PathBuf,
}

/// Everything the running lab owns. Dropping it tears the lab down: components, namespaces, control plane.
pub struct RunningLab {
    config: LabConfig,
    components: Vec<Supervised>,
    /// Kubelet mode: the controller pods' (leader first) and the speakers' (by node) container pids.
    pod_pids: PodPids,
    has_controller: bool,
    missing: Vec<String>,
    pool_applied: bool,
    // Drop order: components (above) first, then the real nodes, the router, the LAN, the control plane.
    kubelet_nodes: Option<KubeletNodes>,
    router: Option<crate::bgp_net::Router>,
    lab: Lab,
    plane: ControlPlane,
}

impl RunningLab {
    /// Brings the whole lab up, the components running with the admin's kubeconfig. Blocking; call it
    /// outside any async runtime.
    pub fn start(config: LabConfig) -> Result<Self> {
        if let Some(images) = config.kubelet.clone() {
            return Self::start_on_kubelets(config, &images);
        }
        let mut lab = Self::prepare(config)?;
        lab.start_components(None)?;
        Ok(lab)
    }

    /// The lab on real nodes: control plane with controller-manager and scheduler, a containerd, kubelet and
    /// kube-proxy per node, ferrolb installed by `helm install`, the demo pool, Service and Deployment.
    fn start_on_kubelets(config: LabConfig, images: &Images) -> Result<Self> {
        std::fs::create_dir_all(&config.state_dir).context(|| format!("creating {}", config.state_dir.display()))?;
        crate::sweep::remove_with_prefix(&format!("{}-", config.prefix));
        let nodes_dir = config.state_dir.join("nodes");
        let plane_dir = config.state_dir.join("control-plane");
        for dir in [&nodes_dir, &plane_dir] {
            crate::node_runtime::unmount_under(dir);
            let _ = std::fs::remove_dir_all(dir);
        }
        let names: Vec<String> = (1..=config.nodes).map(|i| format!("node-{i}")).collect();
        tracing::info!("starting etcd, kube-apiserver, kube-controller-manager and kube-scheduler");
        let node_proxy = config.state_dir.join("node-proxy.sock");
        let mut plane = ControlPlane::start_for_nodes(&plane_dir, &names, &node_proxy)?;
        plane.start_controllers()?;
        std::fs::copy(plane.kubeconfig_path(), config.kubeconfig()).context(|| "copying the kubeconfig".into())?;
        tracing::info!(nodes = config.nodes, "building the node LAN");
        let lab = Lab::start(LabSpec::for_lab(&config.prefix, config.nodes, plane.port(), true))?;
        lab.serve_node_proxy(&node_proxy)?;
        let router = if config.bgp {
            tracing::info!("starting the router (BIRD) and moving the client behind it");
            Some(crate::bgp_net::Router::start(&lab, &config.prefix, &config.state_dir.join("router"))?)
        } else {
            None
        };
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().context(|| "tokio runtime".into())?;
        tracing::info!("starting containerd, kubelet and kube-proxy on every node; importing the images");
        let kubelet_nodes = runtime.block_on(async {
            wait_for_default_namespace(&plane.admin_client().await?).await?;
            KubeletNodes::start(&plane, &lab, &nodes_dir, images).await
        })?;
        let mut this = Self {
            config,
            components: Vec::new(),
            pod_pids: PodPids::default(),
            has_controller: true,
            missing: Vec::new(),
            pool_applied: false,
            kubelet_nodes: Some(kubelet_nodes),
            router,
            lab,
            plane,
        };
        tracing::info!("helm install charts/ferrolb");
        let values = crate::kubelet_lab::chart_values(images, this.config.speaker_mode());
        crate::kubelet_lab::install_chart(
            &this.config.repo,
            &this.config.state_dir.join("helm"),
            &this.config.kubeconfig(),
            INSTALL_NAMESPACE,
            &values,
        )?;
        for file in demo_pool_files(&this.config) {
            let demo = this.config.repo.join("tests").join("lab").join(file);
            kubectl(&this.config, &["apply", "--server-side", "-f", &demo.to_string_lossy()])?;
        }
        this.pool_applied = true;
        tracing::info!("deploying the demo web app");
        runtime.block_on(async {
            let client = this.plane.admin_client().await?;
            apply_demo_service(&client).await?;
            crate::kubelet_lab::deploy_demo(&this.plane, DEMO_NAMESPACE, images, this.config.nodes).await?;
            let (key, value) = crate::kubelet_lab::DEMO_APP_LABEL;
            crate::kubelet_lab::wait_pods_ready(
                &this.plane,
                DEMO_NAMESPACE,
                &format!("{key}={value}"),
                this.config.nodes,
            )
            .await?;
            this.refresh_pod_pids(&client).await
        })?;
        this.write_state(true)?;
        Ok(this)
    }

    /// Kubelet mode: reads where ferrolb's containers run now; true if a pid changed.
    pub async fn refresh_pod_pids(&mut self, client: &kube::Client) -> Result<bool> {
        let Some(nodes) = &self.kubelet_nodes else { return Ok(false) };
        let pods = crate::kubelet_lab::ferrolb_pods(client, INSTALL_NAMESPACE).await?;
        let leader = crate::kubelet_lab::controller_leader(client, INSTALL_NAMESPACE).await?;
        let mut fresh = PodPids::default();
        let mut controllers: Vec<&k8s_openapi::api::core::v1::Pod> =
            pods.get("controller").map(|p| p.iter().collect()).unwrap_or_default();
        controllers.sort_by_key(|p| Some(crate::kubelet_lab::name_of(*p)) != leader);
        fresh.controllers = controllers.iter().filter_map(|p| nodes.container_pid(p, "controller")).collect();
        for pod in pods.get("speaker").into_iter().flatten() {
            if let Some(pid) = nodes.container_pid(pod, "speaker") {
                fresh.speakers.insert(crate::kubelet_lab::node_of(pod), pid);
            }
        }
        let changed = fresh != self.pod_pids;
        self.pod_pids = fresh;
        Ok(changed)
    }

    pub fn kubelet_nodes(&self) -> Option<&KubeletNodes> {
        self.kubelet_nodes.as_ref()
    }

    pub fn config(&self) -> &LabConfig {
        &self.config
    }

    /// Everything but the components: control plane, LAN, Nodes, CRDs, the demo pool and Service.
    pub fn prepare(config: LabConfig) -> Result<Self> {
        std::fs::create_dir_all(&config.state_dir).context(|| format!("creating {}", config.state_dir.display()))?;
        crate::sweep::remove_with_prefix(&format!("{}-", config.prefix));
        let plane_dir = config.state_dir.join("control-plane");
        let _ = std::fs::remove_dir_all(&plane_dir);
        tracing::info!("starting etcd and kube-apiserver");
        let plane = ControlPlane::start(&plane_dir)?;
        std::fs::copy(plane.kubeconfig_path(), config.kubeconfig()).context(|| "copying the kubeconfig".into())?;

        tracing::info!(nodes = config.nodes, "building the node LAN");
        let lab = Lab::start(LabSpec::for_lab(&config.prefix, config.nodes, plane.port(), false))?;
        let router = if config.bgp {
            tracing::info!("starting the router (BIRD) and moving the client behind it");
            Some(crate::bgp_net::Router::start(&lab, &config.prefix, &config.state_dir.join("router"))?)
        } else {
            None
        };

        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().context(|| "tokio runtime".into())?;
        runtime.block_on(create_cluster_objects(&plane, &lab))?;

        let mut missing = Vec::new();
        let crds = config.repo.join("charts").join("ferrolb").join("crds");
        let installed = if crds.is_dir() {
            runtime.block_on(async {
                let client = plane.admin_client().await?;
                crate::objects::install_crds_from(&client, &crds).await
            })?
        } else {
            0
        };
        let pool_applied = if installed > 0 {
            // The demo pool goes in as a user's YAML would: with kubectl.
            for file in demo_pool_files(&config) {
                let demo = config.repo.join("tests").join("lab").join(file);
                kubectl(&config, &["apply", "--server-side", "-f", &demo.to_string_lossy()])?;
            }
            true
        } else {
            missing.push(format!(
                "ferrolb's CRDs ({} has none yet): the demo pool and L2Advertisement are not applied",
                crds.display()
            ));
            false
        };

        Ok(Self {
            config,
            components: Vec::new(),
            pod_pids: PodPids::default(),
            has_controller: false,
            missing,
            pool_applied,
            kubelet_nodes: None,
            router,
            lab,
            plane,
        })
    }

    /// The same lab with MetalLB's controller and speakers in place of ferrolb's (see [`crate::metallb`]), run
    /// and restarted the same way, under the same component names and log files.
    pub fn start_metallb(config: LabConfig, build: &crate::metallb::MetallbBuild) -> Result<Self> {
        crate::metallb::check_build(build)?;
        let mut lab = Self::prepare(config)?;
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().context(|| "tokio runtime".into())?;
        runtime.block_on(async {
            let client = lab.plane.admin_client().await?;
            crate::metallb::prepare_cluster(&client, build, lab.lab.nodes()).await
        })?;
        let key_dir = lab.config.state_dir.join("metallb-memberlist");
        crate::metallb::write_memberlist_key(&key_dir)?;
        let kubeconfig = lab.config.kubeconfig();
        let metrics_port = crate::control_plane::free_port()?;
        let mut components = Vec::new();
        let (controller_build, controller_kubeconfig) = (build.clone(), kubeconfig.clone());
        let log = lab.config.state_dir.join("controller.log");
        components.push(Supervised::new(CONTROLLER_COMPONENT.into(), move || {
            let command = crate::metallb::controller_command(&controller_build, &controller_kubeconfig, metrics_port);
            ManagedProcess::spawn("metallb-controller", command, &log)
        }));
        for node in lab.lab.nodes() {
            let (build, kubeconfig, node, key_dir) = (build.clone(), kubeconfig.clone(), node.clone(), key_dir.clone());
            let log = lab.config.state_dir.join(format!("speaker-{}.log", node.name));
            components.push(Supervised::new(speaker_component(&node.name), move || {
                let command = crate::metallb::speaker_command(&build, &kubeconfig, &node, &key_dir);
                ManagedProcess::spawn_in_netns(&format!("metallb-speaker-{}", node.name), &node.netns, command, &log)
            }));
        }
        lab.run_components(components, true)?;
        Ok(lab)
    }

    /// The pid of the controller process (not in kubelet mode).
    pub fn controller_pid(&self) -> Option<u32> {
        self.components.iter().find(|c| c.name == CONTROLLER_COMPONENT).and_then(Supervised::pid).map(|p| p.pid)
    }

    /// Starts the controller and a speaker per node: with the admin's kubeconfig and a fresh gossip key, or
    /// with the given identities (to prove what a ServiceAccount's RBAC allows).
    pub fn start_components(&mut self, identities: Option<Identities>) -> Result<()> {
        let config = &self.config;
        let lab = &self.lab;
        let missing = &mut self.missing;
        let mut components = Vec::new();
        let (controller_kubeconfig, speaker_kubeconfig, key) = match identities {
            Some(ids) => (ids.controller_kubeconfig, ids.speaker_kubeconfig, ids.gossip_key),
            None => {
                let key = config.state_dir.join("gossip.key");
                crate::objects::write_gossip_key(&key)?;
                (config.kubeconfig(), config.kubeconfig(), key)
            }
        };
        let controller_bin = config.bin_dir.join(CONTROLLER_BINARY);
        let has_controller = controller_bin.is_file();
        if has_controller {
            let kubeconfig = controller_kubeconfig;
            let metrics_address = config.controller_metrics_address.clone();
            let log = config.state_dir.join("controller.log");
            components.push(Supervised::new(CONTROLLER_COMPONENT.into(), move || {
                let mut command = Command::new(&controller_bin);
                command
                    .args(["--namespace", INSTALL_NAMESPACE, "--metrics-address", &metrics_address])
                    .env("KUBECONFIG", &kubeconfig)
                    .env("RUST_LOG", "info");
                ManagedProcess::spawn("controller", command, &log)
            }));
        } else {
            missing.push(format!(
                "the controller ({CONTROLLER_BINARY} is not built: the controller issue delivers it): the demo Service stays <pending>"
            ));
        }
        let speaker_bin = config.bin_dir.join(SPEAKER_BINARY);
        if speaker_bin.is_file() {
            for node in lab.nodes().iter().filter(|_| config.bgp) {
                let dir = crate::bgp_net::prepare_frr_dir(&frr_dir(config, &node.name))?;
                for daemon in crate::bgp_net::FRR_DAEMONS {
                    let (dir, netns, name) = (dir.clone(), node.netns.clone(), node.name.clone());
                    let log = config.state_dir.join(format!("{daemon}-{name}.log"));
                    components.push(Supervised::new(format!("{daemon} on {name}"), move || {
                        let command = crate::bgp_net::frr_daemon_command(daemon, &dir)?;
                        ManagedProcess::spawn_in_netns(&format!("{daemon}-{name}"), &netns, command, &log)
                    }));
                }
            }
            for node in lab.nodes() {
                let (bin, kubeconfig, netns, name, key) = (
                    speaker_bin.clone(),
                    speaker_kubeconfig.clone(),
                    node.netns.clone(),
                    node.name.clone(),
                    key.clone(),
                );
                let mut args = config.speaker_args.clone();
                if config.bgp {
                    let dir = frr_dir(config, &name);
                    args.extend([
                        "--mode".into(),
                        config.speaker_mode().into(),
                        "--frr-dir".into(),
                        dir.to_string_lossy().into_owned(),
                    ]);
                } else if config.keepalived {
                    let dir = config.state_dir.join(format!("keepalived-{name}"));
                    args.extend([
                        "--mode".into(),
                        "keepalived".into(),
                        "--keepalived-dir".into(),
                        dir.to_string_lossy().into_owned(),
                    ]);
                }
                let log = config.state_dir.join(format!("speaker-{name}.log"));
                components.push(Supervised::new(speaker_component(&name), move || {
                    let mut command = Command::new(&bin);
                    command
                        .args(&args)
                        .env("KUBECONFIG", &kubeconfig)
                        .env("NODE_NAME", &name)
                        .env("POD_NAMESPACE", INSTALL_NAMESPACE)
                        .env("FERROLB_GOSSIP_KEY_FILE", &key)
                        .env("RUST_LOG", "info");
                    ManagedProcess::spawn_in_netns(&format!("speaker-{name}"), &netns, command, &log)
                }));
            }
        } else {
            missing.push(format!(
                "the speaker ({SPEAKER_BINARY} is not built: the speaker issue delivers it): no node announces the VIP, so it does not answer"
            ));
        }
        for part in missing.iter() {
            tracing::warn!("missing: {part}");
        }
        self.run_components(components, has_controller)
    }

    /// Makes `components` the lab's and starts them.
    fn run_components(&mut self, components: Vec<Supervised>, has_controller: bool) -> Result<()> {
        self.components = components;
        self.has_controller = has_controller;
        for component in &mut self.components {
            component.tick();
        }
        self.write_state(true)
    }

    /// Supervises the components until `stop` resolves.
    pub async fn supervise(&mut self, stop: impl std::future::Future<Output = ()>) -> Result<()> {
        tokio::pin!(stop);
        let mut last_pod_check = std::time::Instant::now();
        // One client for the whole supervision (a client belongs to the runtime that made it: this one).
        let pods_client = match self.kubelet_nodes {
            Some(_) => Some(self.plane.admin_client().await?),
            None => None,
        };
        loop {
            tokio::select! {
                _ = &mut stop => return Ok(()),
                _ = tokio::time::sleep(SUPERVISE_INTERVAL) => {}
            }
            if let Some(client) = &pods_client
                && last_pod_check.elapsed() >= POD_CHECK_INTERVAL
            {
                last_pod_check = std::time::Instant::now();
                for node in self.kubelet_nodes.iter_mut().flat_map(|n| n.nodes.iter_mut()) {
                    if let Some(daemon) = node.exited_daemon() {
                        tracing::error!(node = node.name(), daemon, log = %node.log_tail(daemon, 5), "a node daemon exited");
                    }
                }
                match self.refresh_pod_pids(client).await {
                    Ok(true) => self.write_state(true)?,
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "could not read ferrolb's pods"),
                }
            }
            let mut changed = false;
            for component in &mut self.components {
                changed |= component.tick();
            }
            if changed {
                self.write_state(true)?;
            }
        }
    }

    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    pub fn plane(&self) -> &ControlPlane {
        &self.plane
    }

    /// BGP mode's router.
    pub fn router(&self) -> Option<&crate::bgp_net::Router> {
        self.router.as_ref()
    }

    /// The component named `name` (`bgpd on node-1`, ...), to signal it.
    pub fn signal_component(&self, name: &str, signal: nix::sys::signal::Signal) -> Result<()> {
        let process = self
            .components
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| c.process.as_ref())
            .ok_or_else(|| Error::Lab(format!("no {name} runs")))?;
        process.signal(signal)
    }

    fn speaker(&self, node: &str) -> Option<&Supervised> {
        self.components.iter().find(|c| c.name == speaker_component(node))
    }

    pub fn speaker_pid(&self, node: &str) -> Option<u32> {
        self.speaker(node).and_then(Supervised::pid).map(|p| p.pid)
    }

    /// Sends `signal` to the speaker of `node`.
    pub fn signal_speaker(&self, node: &str, signal: nix::sys::signal::Signal) -> Result<()> {
        let process = self
            .speaker(node)
            .and_then(|c| c.process.as_ref())
            .ok_or_else(|| Error::Lab(format!("no speaker runs on {node}")))?;
        process.signal(signal)
    }

    /// Waits up to `timeout` for the component `name` to exit, and reaps it (restarted by the next
    /// [`RunningLab::start_stopped`] or supervision tick).
    pub fn wait_component_exit(&mut self, name: &str, timeout: Duration) -> Option<std::process::ExitStatus> {
        let component = self.components.iter_mut().find(|c| c.name == name)?;
        let status = component.process.as_mut()?.wait_timeout(timeout)?;
        component.process = None;
        component.exited_at = Some(std::time::Instant::now());
        Some(status)
    }

    /// Waits up to `timeout` for the speaker of `node` to exit, and reaps it.
    pub fn wait_speaker_exit(&mut self, node: &str, timeout: Duration) -> Option<std::process::ExitStatus> {
        let component = self.components.iter_mut().find(|c| c.name == speaker_component(node))?;
        let status = component.process.as_mut()?.wait_timeout(timeout)?;
        component.process = None;
        component.exited_at = Some(std::time::Instant::now());
        Some(status)
    }

    /// Stops the controller (SIGTERM, then SIGKILL after `timeout`) and starts it again at once.
    pub fn restart_controller(&mut self, timeout: Duration) -> Result<()> {
        let component = self.stop_controller_process(timeout)?;
        component.exited_at = None;
        component.tick();
        Ok(())
    }

    /// Stops the controller (SIGTERM, then SIGKILL after `timeout`) and keeps it stopped until
    /// [`RunningLab::start_stopped`]: for tests that write a Service's status themselves.
    pub fn stop_controller(&mut self, timeout: Duration) -> Result<()> {
        let component = self.stop_controller_process(timeout)?;
        component.exited_at = Some(std::time::Instant::now());
        Ok(())
    }

    /// SIGTERM to the controller, SIGKILL if it is still there after `timeout`.
    fn stop_controller_process(&mut self, timeout: Duration) -> Result<&mut Supervised> {
        let component = self
            .components
            .iter_mut()
            .find(|c| c.name == CONTROLLER_COMPONENT)
            .ok_or_else(|| Error::Lab("no controller in this lab".into()))?;
        if let Some(mut process) = component.process.take() {
            process.signal(nix::sys::signal::Signal::SIGTERM)?;
            if process.wait_timeout(timeout).is_none() {
                process.signal(nix::sys::signal::Signal::SIGKILL)?;
                let _ = process.wait_timeout(timeout);
            }
        }
        Ok(component)
    }

    /// Starts, at once, every component that is not running (the supervisor would wait 2 s).
    pub fn start_stopped(&mut self) {
        for component in &mut self.components {
            if component.process.is_none() {
                component.exited_at = None;
                component.tick();
            }
        }
    }

    /// The last `lines` of the speaker log of `node`.
    pub fn speaker_log(&self, node: &str, lines: usize) -> String {
        self.speaker(node)
            .and_then(|c| c.process.as_ref())
            .map(|p| p.log_tail(lines))
            .unwrap_or_else(|| crate::process::tail(&self.config.state_dir.join(format!("speaker-{node}.log")), lines))
    }

    pub fn state(&self, ready: bool) -> LabState {
        let kubelet = self.kubelet_nodes.is_some();
        let speaker_pid = |node: &str| {
            if kubelet {
                return self.pod_pids.speakers.get(node).map(|&pid| Pid { pid });
            }
            self.speaker(node).and_then(Supervised::pid)
        };
        let controller = if kubelet {
            self.pod_pids.controllers.first().map(|&pid| Pid { pid })
        } else if self.has_controller {
            self.components.first().and_then(Supervised::pid)
        } else {
            None
        };
        LabState {
            ready,
            kubelet,
            kubeconfig: self.config.kubeconfig(),
            kubectl: K8sBinary::Kubectl.path(),
            supervisor: Pid { pid: std::process::id() },
            apiserver: ApiServerState { url: self.plane.server_url(), pid: self.plane.apiserver_pid() },
            client: match &self.router {
                Some(_) => ClientState {
                    netns: self.lab.client().netns.clone(),
                    ipv4: crate::bgp_net::BGP_CLIENT_IPV4.into(),
                    ipv6: crate::bgp_net::BGP_CLIENT_IPV6.into(),
                },
                None => ClientState {
                    netns: self.lab.client().netns.clone(),
                    ipv4: self.lab.client().ipv4.clone(),
                    ipv6: self.lab.client().ipv6.clone(),
                },
            },
            controller,
            nodes: self
                .lab
                .nodes()
                .iter()
                .map(|n| NodeState { host: n.clone(), speaker: speaker_pid(&n.name) })
                .collect(),
            pool: match &self.router {
                Some(_) => PoolState {
                    name: BGP_POOL.into(),
                    addresses: BGP_POOL_ADDRESSES.iter().map(|a| a.to_string()).collect(),
                    applied: self.pool_applied,
                },
                None => PoolState {
                    name: DEMO_POOL.into(),
                    addresses: DEMO_POOL_ADDRESSES.iter().map(|a| a.to_string()).collect(),
                    applied: self.pool_applied,
                },
            },
            service: ServiceRef { namespace: DEMO_NAMESPACE.into(), name: DEMO_SERVICE.into() },
            router: self.router.as_ref().map(|r| RouterState {
                netns: r.netns.clone(),
                asn: crate::bgp_net::ROUTER_ASN,
                bird_socket: r.bird_socket.clone(),
            }),
            missing: self.missing.clone(),
        }
    }

    /// Writes `lab.json` atomically (readers never see half a file).
    fn write_state(&self, ready: bool) -> Result<()> {
        let path = self.config.lab_json();
        let partial = path.with_extension("json.partial");
        let json = serde_json::to_string_pretty(&self.state(ready)).map_err(|e| Error::Lab(e.to_string()))?;
        std::fs::write(&partial, json).context(|| format!("writing {}", partial.display()))?;
        std::fs::rename(&partial, &path).context(|| format!("writing {}", path.display()))
    }
}

impl Drop for RunningLab {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.config.lab_json());
        self.components.clear();
    }
}

/// The lab's objects in `tests/lab/`: the L2 demo pool, or BGP mode's pool, peers and advertisement (with
/// the L2 demo pool too when the speakers run both).
fn demo_pool_files(config: &LabConfig) -> Vec<&'static str> {
    match (config.bgp, config.bgp_with_native) {
        (true, true) => vec!["bgp.yaml", "demo-pool.yaml"],
        (true, false) => vec!["bgp.yaml"],
        (false, _) => vec!["demo-pool.yaml"],
    }
}

/// Nodes `node-1..N` as a kubelet would register them, and the demo Service with a ready endpoint per node.
async fn create_cluster_objects(plane: &ControlPlane, lab: &Lab) -> Result<()> {
    let client = plane.admin_client().await?;
    for node in lab.nodes() {
        apply_node(&client, &NodeSpec::new(&node.name, &[&node.ipv4, &node.ipv6])).await?;
    }
    wait_for_default_namespace(&client).await?;
    crate::objects::create_namespace(&client, INSTALL_NAMESPACE).await?;
    apply_demo_service(&client).await?;
    for (family, backends) in [
        ("IPv4", lab.nodes().iter().enumerate().map(|(i, n)| (n, format!("203.0.113.{}", 10 + i))).collect::<Vec<_>>()),
        ("IPv6", lab.nodes().iter().enumerate().map(|(i, n)| (n, format!("2001:db8:1::{}", 10 + i))).collect()),
    ] {
        let backends: Vec<Backend> = backends
            .into_iter()
            .map(|(node, address)| Backend { node: node.name.clone(), address, ready: true })
            .collect();
        apply_endpoint_slice(&client, DEMO_NAMESPACE, DEMO_SERVICE, family, 80, &backends).await?;
    }
    Ok(())
}

/// The demo Service (dual-stack, port 80, selecting the demo app's pods).
async fn apply_demo_service(client: &kube::Client) -> Result<()> {
    let services: Api<Service> = Api::namespaced(client.clone(), DEMO_NAMESPACE);
    let service = Service {
        metadata: ObjectMeta { name: Some(DEMO_SERVICE.into()), ..Default::default() },
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            ip_family_policy: Some("PreferDualStack".into()),
            selector: Some([("app".to_string(), "webapp1".to_string())].into()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                // The demo web server's port (the processes lab's fake endpoints ignore it).
                target_port: Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(8080)),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    services.patch(DEMO_SERVICE, &PatchParams::apply("ferrolb-lab").force(), &Patch::Apply(&service)).await?;
    Ok(())
}

/// The API server creates `default` shortly after it reports ready.
async fn wait_for_default_namespace(client: &kube::Client) -> Result<()> {
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    for _ in 0..100 {
        if namespaces.get_opt(DEMO_NAMESPACE).await?.is_some() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(Error::NotReady {
        what: "namespace default".into(),
        seconds: 10,
        detail: "the API server did not create it".into(),
    })
}

fn kubectl(config: &LabConfig, args: &[&str]) -> Result<()> {
    let kubectl = K8sBinary::Kubectl.path();
    let output = Command::new(&kubectl)
        .arg("--kubeconfig")
        .arg(config.kubeconfig())
        .args(args)
        .output()
        .context(|| format!("running {}", kubectl.display()))?;
    if !output.status.success() {
        return Err(Error::Command {
            command: format!("kubectl {}", args.join(" ")),
            detail: String::from_utf8_lossy(&output.stderr).into(),
        });
    }
    Ok(())
}

/// Stops the lab whose state is in `config.state_dir` and removes whatever it left, even if its supervisor
/// was killed. Returns what it had to remove by hand.
pub fn down(config: &LabConfig) -> Vec<String> {
    let mut cleaned = Vec::new();
    if let Ok(text) = std::fs::read_to_string(config.pid_file())
        && let Ok(raw_pid) = text.trim().parse::<u32>()
        && let Ok(signed) = i32::try_from(raw_pid)
    {
        let pid = nix::unistd::Pid::from_raw(signed);
        if crate::sweep::process_alive(raw_pid)
            && nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_ok()
        {
            // Its own teardown kills the components and deletes the namespaces; give it time to.
            for _ in 0..150 {
                if !crate::sweep::process_alive(raw_pid) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if crate::sweep::process_alive(raw_pid)
                && nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).is_ok()
            {
                cleaned.push(format!("supervisor {raw_pid} (killed after 15 s)"));
            }
        }
    }
    let _ = std::fs::remove_file(config.pid_file());
    let _ = std::fs::remove_file(config.lab_json());
    // Real nodes: whatever a killed supervisor left in the nodes' cgroups, mounts and the shared host paths.
    let node_prefix = format!("{}-", config.prefix);
    for cgroup in crate::node_runtime::node_cgroups().into_iter().filter(|c| c.starts_with(&node_prefix)) {
        let node = cgroup.trim_start_matches(&node_prefix).to_string();
        crate::node_runtime::remove_node_leftovers(&cgroup, Some(&config.state_dir.join("nodes").join(&node)));
        cleaned.push(format!("node {node}: its processes, mounts and cgroups"));
    }
    crate::node_runtime::unmount_under(&config.state_dir);
    cleaned.extend(crate::node_runtime::sweep_shared_host_paths());
    cleaned.extend(crate::sweep::remove_with_prefix(&node_prefix));
    cleaned
}
