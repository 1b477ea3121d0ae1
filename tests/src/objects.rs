//! Creating the objects a kubelet or controller-manager would have created: Nodes with addresses, and
//! EndpointSlices for Services (there is no endpoint controller, so tests say which node has a ready endpoint).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Node, NodeAddress, NodeCondition, NodeStatus};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use kube::Client;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};

use crate::error::Result;

/// A Node as a kubelet would register it: Ready, with its InternalIPs.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    pub addresses: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

impl NodeSpec {
    pub fn new(name: impl Into<String>, addresses: &[&str]) -> Self {
        Self {
            name: name.into(),
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            labels: BTreeMap::new(),
        }
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }
}

/// Creates (or replaces the labels and status of) a Node.
pub async fn apply_node(client: &Client, spec: &NodeSpec) -> Result<Node> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut labels = spec.labels.clone();
    labels.insert("kubernetes.io/hostname".into(), spec.name.clone());
    let node = Node {
        metadata: ObjectMeta { name: Some(spec.name.clone()), labels: Some(labels), ..Default::default() },
        ..Default::default()
    };
    let params = PatchParams::apply("ferrolb-e2e").force();
    nodes.patch(&spec.name, &params, &Patch::Apply(&node)).await?;
    // Status is a subresource: a kubelet writes it separately, and so do we.
    let status = NodeStatus {
        addresses: Some(
            spec.addresses.iter().map(|a| NodeAddress { type_: "InternalIP".into(), address: a.clone() }).collect(),
        ),
        conditions: Some(vec![NodeCondition { type_: "Ready".into(), status: "True".into(), ..Default::default() }]),
        ..Default::default()
    };
    // A merge patch, not server-side apply: the schema keys `addresses` by type, yet a dual-stack kubelet
    // reports two InternalIPs.
    let patch = serde_json::json!({"status": status});
    Ok(nodes.patch_status(&spec.name, &PatchParams::default(), &Patch::Merge(&patch)).await?)
}

/// Creates a Namespace (never deleted: without a controller-manager, deletion never finishes).
pub async fn create_namespace(client: &Client, name: &str) -> Result<Namespace> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace =
        Namespace { metadata: ObjectMeta { name: Some(name.into()), ..Default::default() }, ..Default::default() };
    Ok(namespaces.create(&PostParams::default(), &namespace).await?)
}

/// One backend of a Service: a Pod IP on a node, ready or not.
#[derive(Debug, Clone)]
pub struct Backend {
    pub node: String,
    pub address: String,
    pub ready: bool,
}

/// Writes the EndpointSlice of `namespace/service` for one address family (`"IPv4"` or `"IPv6"`), as the
/// endpoint-slice controller would, replacing the previous one.
pub async fn apply_endpoint_slice(
    client: &Client,
    namespace: &str,
    service: &str,
    address_type: &str,
    port: i32,
    backends: &[Backend],
) -> Result<EndpointSlice> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    let name = format!("{service}-{}", address_type.to_lowercase());
    let slice = EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([
                ("kubernetes.io/service-name".to_string(), service.to_string()),
                ("endpointslice.kubernetes.io/managed-by".to_string(), "ferrolb-e2e".to_string()),
            ])),
            ..Default::default()
        },
        address_type: address_type.into(),
        endpoints: Some(
            backends
                .iter()
                .map(|b| Endpoint {
                    addresses: vec![b.address.clone()],
                    node_name: Some(b.node.clone()),
                    conditions: Some(EndpointConditions {
                        ready: Some(b.ready),
                        serving: Some(b.ready),
                        terminating: Some(false),
                    }),
                    ..Default::default()
                })
                .collect(),
        ),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(port),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    };
    Ok(slices.patch(&name, &PatchParams::apply("ferrolb-e2e").force(), &Patch::Apply(&slice)).await?)
}

/// The CRD YAML users apply: `charts/ferrolb/crds/*.yaml`, as committed.
pub fn chart_crd_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/ferrolb/crds")
}

/// Applies ferrolb's CRDs from the chart (server-side, so concurrent tests may all call it) and waits until
/// the API server serves them.
pub async fn install_ferrolb_crds(client: &Client) -> Result<()> {
    install_crds_from(client, &chart_crd_dir()).await.map(|_| ())
}

/// Applies every CRD in `dir/*.yaml` and waits until each is Established. Returns how many there were.
pub async fn install_crds_from(client: &Client, dir: &std::path::Path) -> Result<usize> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| crate::Error::Lab(format!("{}: {e}", dir.display())))?;
    for entry in entries.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "yaml")) {
        let text = std::fs::read_to_string(entry.path()).map_err(|e| crate::Error::Lab(e.to_string()))?;
        let crd: CustomResourceDefinition = serde_yaml_ng::from_str(&text)
            .map_err(|e| crate::Error::Lab(format!("{}: {e}", entry.path().display())))?;
        let name = crd.metadata.name.clone().unwrap_or_default();
        crds.patch(&name, &PatchParams::apply("ferrolb-e2e").force(), &Patch::Apply(&crd)).await?;
        names.push(name);
    }
    for name in &names {
        let established = kube::runtime::wait::await_condition(
            crds.clone(),
            name,
            kube::runtime::wait::conditions::is_crd_established(),
        );
        tokio::time::timeout(std::time::Duration::from_secs(30), established)
            .await
            .map_err(|_| crate::Error::NotReady {
                what: format!("CRD {name}"),
                seconds: 30,
                detail: "not Established".into(),
            })?
            .map_err(|e| crate::Error::Lab(e.to_string()))?;
    }
    Ok(names.len())
}

/// Writes a fresh random gossip key (as the chart's Secret would hold) to `path`, readable by root only.
pub fn write_gossip_key(path: &std::path::Path) -> Result<()> {
    use crate::error::IoContext;
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context(|| "reading /dev/urandom".into())?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(path, hex).context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600))
        .context(|| format!("restricting {}", path.display()))
}

/// A single-stack IPv6 LoadBalancer Service on port 80 (no node ports), optionally asking for `pool`: what
/// the benchmarks and scale tests create by the hundred.
pub fn ipv6_load_balancer(name: &str, pool: Option<&str>) -> k8s_openapi::api::core::v1::Service {
    use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
    Service {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            annotations: pool.map(|p| BTreeMap::from([("ferrolb.io/address-pool".to_string(), p.to_string())])),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            ip_families: Some(vec!["IPv6".into()]),
            allocate_load_balancer_node_ports: Some(false),
            ports: Some(vec![ServicePort { port: 80, ..Default::default() }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates an IPv6 `service` (port 80, as [`ipv6_load_balancer`] makes) in `namespace` and its EndpointSlice
/// with one ready backend on `node` at `2001:db8:2::<n>` (hex), as the EndpointSlice controller would for a
/// pod behind it: the benchmarks' Services, by the thousand.
pub async fn create_ipv6_service_with_backend(
    client: &Client,
    namespace: &str,
    service: &k8s_openapi::api::core::v1::Service,
    node: &str,
    n: usize,
) -> Result<()> {
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), namespace);
    services.create(&PostParams::default(), service).await?;
    let name = service.metadata.name.as_deref().unwrap_or_default();
    let backend = Backend { node: node.to_string(), address: format!("2001:db8:2::{n:x}"), ready: true };
    apply_endpoint_slice(client, namespace, name, "IPv6", 80, &[backend]).await?;
    Ok(())
}

/// The addresses in a Service's `status.loadBalancer.ingress`, in order.
pub async fn load_balancer_ips(client: &Client, namespace: &str, name: &str) -> Result<Vec<String>> {
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), namespace);
    let service = services.get(name).await?;
    Ok(service
        .status
        .and_then(|s| s.load_balancer)
        .and_then(|lb| lb.ingress)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| i.ip)
        .collect())
}

/// `ferrolb crds | kubectl apply --server-side --force-conflicts [extra_args] -f -`, the CRD upgrade that
/// docs/install.md prescribes, against `kubeconfig`: kubectl's output (checked for success by the caller).
pub fn apply_printed_crds(kubeconfig: &std::path::Path, extra_args: &[&str]) -> Result<std::process::Output> {
    use std::io::Write;
    use std::process::{Command, Stdio};

    use crate::error::{Error, IoContext};
    let printed = Command::new(crate::process::workspace_binary("ferrolb")?)
        .arg("crds")
        .output()
        .context(|| "running ferrolb crds".into())?;
    if !printed.status.success() {
        return Err(Error::Lab(format!("ferrolb crds failed: {}", String::from_utf8_lossy(&printed.stderr))));
    }
    let mut apply = Command::new(crate::toolchain::K8sBinary::Kubectl.path())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["apply", "--server-side", "--force-conflicts"])
        .args(extra_args)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context(|| "starting kubectl apply".into())?;
    if let Some(mut stdin) = apply.stdin.take() {
        stdin.write_all(&printed.stdout).context(|| "writing the CRDs to kubectl".into())?;
    }
    apply.wait_with_output().context(|| "running kubectl apply".into())
}

/// Cordons the Node `node` (`spec.unschedulable`), or uncordons it, as `kubectl cordon` does.
pub async fn cordon(client: &Client, node: &str, cordoned: bool) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let patch = serde_json::json!({ "spec": { "unschedulable": cordoned } });
    nodes.patch(node, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}
