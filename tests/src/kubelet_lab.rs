//! The lab on real nodes: a containerd, kubelet and kube-proxy per node namespace ([`crate::node_runtime`]),
//! ferrolb's images imported into every node, ferrolb installed with `helm install charts/ferrolb` as a user
//! installs it, and the demo Service backed by a real Deployment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, Patch, PatchParams};

use crate::control_plane::ControlPlane;
use crate::error::{Error, IoContext, Result};
use crate::netlab::{self, Lab};
use crate::node_runtime::{NodeConfig, NodeRuntime};
use crate::toolchain::{self, K8sBinary};

/// The chart's release name in the lab (its objects are `ferrolb-controller`, `ferrolb-speaker`, ...).
pub const RELEASE: &str = "ferrolb";
/// The demo Deployment's pods (and the Service's selector).
pub const DEMO_APP_LABEL: (&str, &str) = ("app", "webapp1");
const NODES_READY_TIMEOUT: Duration = Duration::from_secs(120);
const HELM_TIMEOUT: &str = "180s";
const PODS_READY_TIMEOUT: Duration = Duration::from_secs(120);

/// The OCI archives `cargo xtask image` builds, and the tag they carry.
#[derive(Debug, Clone)]
pub struct Images {
    pub dir: PathBuf,
    pub tag: String,
}

impl Images {
    pub const FERROLB: &str = toolchain::FERROLB_IMAGE.repository;
    pub const KEEPALIVED: &str = toolchain::KEEPALIVED_IMAGE.repository;
    pub const FRR: &str = toolchain::FRR_IMAGE.repository;
    pub const PAUSE: &str = toolchain::PAUSE_IMAGE.repository;
    pub const DEMO_WEB: &str = toolchain::DEMO_WEB_IMAGE.repository;

    /// `<cache>/target/images`, tagged with the chart's appVersion: what `cargo xtask image` makes.
    pub fn built_by_xtask(repo: &Path) -> Result<Self> {
        let tag = toolchain::chart_app_version(repo).context(|| "reading the chart's appVersion".into())?;
        Ok(Self { dir: toolchain::images_dir(), tag })
    }

    pub fn reference(&self, repository: &str) -> String {
        format!("{repository}:{}", self.tag)
    }

    /// Every image a node imports: ferrolb's (every mode) and the lab's own.
    fn archives(&self) -> Result<Vec<PathBuf>> {
        [
            toolchain::FERROLB_IMAGE,
            toolchain::KEEPALIVED_IMAGE,
            toolchain::FRR_IMAGE,
            toolchain::PAUSE_IMAGE,
            toolchain::DEMO_WEB_IMAGE,
        ]
        .iter()
        .map(|image| {
            let path = self.dir.join(format!("{}.tar", image.archive));
            if path.is_file() {
                Ok(path)
            } else {
                Err(Error::Lab(format!("image archive {} is missing: run `cargo xtask image`", path.display())))
            }
        })
        .collect()
    }
}

/// The real nodes of a lab.
#[derive(Debug)]
pub struct KubeletNodes {
    pub nodes: Vec<NodeRuntime>,
}

impl KubeletNodes {
    /// Starts containerd on every node (in parallel), imports the images, starts the kubelets and kube-proxies
    /// and waits until every Node is Ready.
    pub async fn start(plane: &ControlPlane, lab: &Lab, dir: &Path, images: &Images) -> Result<Self> {
        let archives = images.archives()?;
        let sandbox_image = images.reference(Images::PAUSE);
        let started: Vec<Result<NodeRuntime>> = std::thread::scope(|scope| {
            let handles: Vec<_> = lab
                .nodes()
                .iter()
                .enumerate()
                .map(|(i, host)| {
                    let config = NodeConfig {
                        host,
                        index: i + 1,
                        dir: dir.join(&host.name),
                        sandbox_image: sandbox_image.clone(),
                    };
                    let archives = &archives;
                    scope.spawn(move || -> Result<NodeRuntime> {
                        let mut node = NodeRuntime::start_runtime(&config)?;
                        for archive in archives {
                            node.import_image(archive)?;
                        }
                        node.start_kubelet(plane, host)?;
                        Ok(node)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(Error::Lab("a node's start-up panicked".into()))))
                .collect()
        });
        let nodes = started.into_iter().collect::<Result<Vec<_>>>()?;
        let mut this = Self { nodes };
        apply_kubernetes_endpoints(plane).await?;
        this.wait_ready(plane).await?;
        Ok(this)
    }

    pub fn node(&self, name: &str) -> Option<&NodeRuntime> {
        self.nodes.iter().find(|n| n.name() == name)
    }

    async fn wait_ready(&mut self, plane: &ControlPlane) -> Result<()> {
        let client = plane.admin_client().await?;
        let api: Api<Node> = Api::all(client);
        let started = Instant::now();
        let mut not_ready = Vec::new();
        while started.elapsed() < NODES_READY_TIMEOUT {
            for node in &mut self.nodes {
                if let Some(daemon) = node.exited_daemon() {
                    return Err(Error::NotReady {
                        what: format!("node {}", node.name()),
                        seconds: started.elapsed().as_secs(),
                        detail: format!("its {daemon} exited:\n{}", node.log_tail(daemon, 30)),
                    });
                }
            }
            let ready: Vec<String> =
                api.list(&ListParams::default()).await?.items.iter().filter(|n| node_ready(n)).map(name_of).collect();
            not_ready = self.nodes.iter().map(|n| n.name().to_string()).filter(|n| !ready.contains(n)).collect();
            if not_ready.is_empty() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let logs: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| not_ready.iter().any(|name| name == n.name()))
            .map(|n| format!("--- kubelet on {}:\n{}", n.name(), n.log_tail("kubelet", 20)))
            .collect();
        Err(Error::NotReady {
            what: format!("nodes {}", not_ready.join(", ")),
            seconds: NODES_READY_TIMEOUT.as_secs(),
            detail: logs.join("\n"),
        })
    }

    /// The host pid of the main process of container `container` of a pod, from its status.
    pub fn container_pid(&self, pod: &Pod, container: &str) -> Option<u32> {
        let node = pod.spec.as_ref()?.node_name.as_deref()?;
        let status = pod.status.as_ref()?.container_statuses.as_ref()?.iter().find(|c| c.name == container)?;
        status.state.as_ref()?.running.as_ref()?;
        let id = status.container_id.as_deref()?.strip_prefix("containerd://")?;
        self.node(node)?.container_pid(id)
    }
}

impl Drop for KubeletNodes {
    fn drop(&mut self) {
        self.nodes.clear();
        crate::node_runtime::sweep_shared_host_paths();
    }
}

/// With the endpoint reconciler off, nothing says where the `kubernetes` Service's endpoints are: on every
/// node, [`netlab::API_SERVICE_ADDRESS`] (forwarded to the API server).
async fn apply_kubernetes_endpoints(plane: &ControlPlane) -> Result<()> {
    let client = plane.admin_client().await?;
    let slices: Api<EndpointSlice> = Api::namespaced(client, "default");
    let slice = serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [netlab::API_SERVICE_ADDRESS], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": plane.port(), "protocol": "TCP"}],
    });
    slices.patch("kubernetes", &PatchParams::apply("ferrolb-lab").force(), &Patch::Apply(&slice)).await?;
    Ok(())
}

/// `helm` with its caches and configuration under `home`, never the developer's own.
pub fn helm(home: &Path, kubeconfig: &Path, args: &[&str]) -> Result<String> {
    let helm = K8sBinary::Helm.path();
    let output = Command::new(&helm)
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .context(|| format!("running {}", helm.display()))?;
    if !output.status.success() {
        return Err(Error::Command {
            command: format!("helm {}", args.join(" ")),
            detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The `--set` values that point the chart at the imported images (never pulled) and pick the mode
/// (`speaker.mode`).
pub fn chart_values(images: &Images, mode: &str) -> Vec<String> {
    vec![
        format!("image.repository={}", Images::FERROLB),
        format!("image.tag={}", images.tag),
        "image.pullPolicy=Never".to_string(),
        format!("speaker.keepalived.image.repository={}", Images::KEEPALIVED),
        format!("speaker.keepalived.image.tag={}", images.tag),
        format!("speaker.frr.image.repository={}", Images::FRR),
        format!("speaker.frr.image.tag={}", images.tag),
        format!("speaker.mode={mode}"),
    ]
}

/// `helm install` of the repository's chart into `namespace`, waiting for every pod to be Ready.
pub fn install_chart(
    repo: &Path,
    helm_home: &Path,
    kubeconfig: &Path,
    namespace: &str,
    values: &[String],
) -> Result<String> {
    let chart = repo.join("charts").join("ferrolb");
    let chart = chart.to_string_lossy();
    let mut args =
        vec!["install", RELEASE, &chart, "-n", namespace, "--create-namespace", "--wait", "--timeout", HELM_TIMEOUT];
    for value in values {
        args.extend(["--set", value]);
    }
    helm(helm_home, kubeconfig, &args)
}

/// The demo web Deployment (a pod on every node, spread by hostname) behind the demo Service.
pub async fn deploy_demo(plane: &ControlPlane, namespace: &str, images: &Images, replicas: usize) -> Result<()> {
    let client = plane.admin_client().await?;
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client, namespace);
    let (key, value) = DEMO_APP_LABEL;
    let deployment = serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "webapp1"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {key: value}},
            "template": {
                "metadata": {"labels": {key: value}},
                "spec": {
                    "topologySpreadConstraints": [{
                        "maxSkew": 1,
                        "topologyKey": "kubernetes.io/hostname",
                        "whenUnsatisfiable": "DoNotSchedule",
                        "labelSelector": {"matchLabels": {key: value}},
                    }],
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": "web",
                        "image": images.reference(Images::DEMO_WEB),
                        "imagePullPolicy": "Never",
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "env": [
                            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                        ],
                        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 2},
                        "securityContext": {
                            "runAsNonRoot": true,
                            "runAsUser": 65532,
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"]},
                        },
                    }],
                },
            },
        },
    });
    deployments.patch("webapp1", &PatchParams::apply("ferrolb-lab").force(), &Patch::Apply(&deployment)).await?;
    Ok(())
}

/// Waits until `namespace` has `count` Ready pods matching `selector`; returns them.
pub async fn wait_pods_ready(plane: &ControlPlane, namespace: &str, selector: &str, count: usize) -> Result<Vec<Pod>> {
    let client = plane.admin_client().await?;
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    let started = Instant::now();
    let mut last = Vec::new();
    while started.elapsed() < PODS_READY_TIMEOUT {
        last = pods.list(&ListParams::default().labels(selector)).await?.items;
        let ready: Vec<Pod> =
            last.iter().filter(|p| pod_ready(p) && p.metadata.deletion_timestamp.is_none()).cloned().collect();
        if ready.len() >= count {
            return Ok(ready);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let phases: Vec<String> = last
        .iter()
        .map(|p| format!("{} {}", name_of(p), p.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default()))
        .collect();
    Err(Error::NotReady {
        what: format!("{count} pods {selector} in {namespace}"),
        seconds: PODS_READY_TIMEOUT.as_secs(),
        detail: format!("pods: {}", phases.join(", ")),
    })
}

/// Who holds the controller's Lease (a pod name), if anyone.
pub async fn controller_leader(client: &kube::Client, namespace: &str) -> Result<Option<String>> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    Ok(leases
        .get_opt(&format!("{RELEASE}-controller"))
        .await?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty()))
}

/// ferrolb's pods in `namespace` by component (`controller`, `speaker`), not being deleted.
pub async fn ferrolb_pods(client: &kube::Client, namespace: &str) -> Result<BTreeMap<String, Vec<Pod>>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut by_component: BTreeMap<String, Vec<Pod>> = BTreeMap::new();
    for pod in pods.list(&ListParams::default().labels("app.kubernetes.io/name=ferrolb")).await?.items {
        let component = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("app.kubernetes.io/component"))
            .cloned()
            .unwrap_or_default();
        by_component.entry(component).or_default().push(pod);
    }
    Ok(by_component)
}

pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub fn name_of<K: kube::Resource>(object: &K) -> String {
    object.meta().name.clone().unwrap_or_default()
}

pub fn node_of(pod: &Pod) -> String {
    pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default()
}
