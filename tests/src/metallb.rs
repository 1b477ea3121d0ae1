//! MetalLB in the lab, for `ferrolb-bench compare`: its controller and a speaker per node run as processes the
//! way ferrolb's do, against the same API server and namespace LAN, in native L2 mode with memberlist. What a
//! cluster would give them is provided by hand: its CRDs (the release's own, webhook off), the speaker Pods
//! memberlist discovers its peers from (never run: their status carries the node's address, as a hostNetwork
//! pod's would), the memberlist key, and the demo pool and L2Advertisement as MetalLB objects.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, ServiceAccount};
use kube::api::{Api, DynamicObject, ObjectMeta, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;

use crate::error::{Error, IoContext, Result};
use crate::lab_supervisor::DEMO_POOL_ADDRESSES;
use crate::netlab::LabHost;

pub const NAMESPACE: &str = "metallb-system";
/// The labels memberlist lists its peers' Pods by.
const SPEAKER_LABELS: [(&str, &str); 2] = [("app", "metallb"), ("component", "speaker")];
/// ferrolb's gossip port is 7946 too: MetalLB's moves aside, so both can share a node in other labs.
const MEMBERLIST_PORT: &str = "7947";
pub const POOL: &str = "demo-pool";

/// Where a MetalLB build is: `bin/controller`, `bin/speaker`, `crds/`.
#[derive(Debug, Clone)]
pub struct MetallbBuild {
    pub dir: PathBuf,
}

impl MetallbBuild {
    pub fn controller(&self) -> PathBuf {
        self.dir.join("bin").join("controller")
    }

    pub fn speaker(&self) -> PathBuf {
        self.dir.join("bin").join("speaker")
    }

    pub fn crds(&self) -> PathBuf {
        self.dir.join("crds")
    }
}

fn speaker_pod_name(node: &str) -> String {
    format!("speaker-{node}")
}

/// Installs MetalLB's CRDs, namespace, speaker Pods and demo configuration.
pub async fn prepare_cluster(client: &kube::Client, build: &MetallbBuild, nodes: &[LabHost]) -> Result<()> {
    crate::objects::install_crds_from(client, &build.crds()).await?;
    crate::objects::create_namespace(client, NAMESPACE).await?;
    // Without a controller-manager nobody makes a namespace's default ServiceAccount; Pods need one.
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), NAMESPACE);
    let account = ServiceAccount {
        metadata: ObjectMeta { name: Some("speaker".into()), ..Default::default() },
        ..Default::default()
    };
    accounts.create(&PostParams::default(), &account).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let labels: BTreeMap<String, String> = SPEAKER_LABELS.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    for node in nodes {
        let name = speaker_pod_name(&node.name);
        let pod = Pod {
            metadata: ObjectMeta { name: Some(name.clone()), labels: Some(labels.clone()), ..Default::default() },
            spec: Some(PodSpec {
                node_name: Some(node.name.clone()),
                host_network: Some(true),
                service_account_name: Some("speaker".into()),
                automount_service_account_token: Some(false),
                containers: vec![Container {
                    name: "speaker".into(),
                    image: Some(format!("quay.io/metallb/speaker:{}", crate::toolchain::METALLB_VERSION)),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        pods.create(&PostParams::default(), &pod).await?;
        // A hostNetwork pod's address is its node's: what memberlist joins.
        let status = serde_json::json!({"status": {
            "phase": "Running",
            "hostIP": node.ipv4, "hostIPs": [{"ip": node.ipv4}],
            "podIP": node.ipv4, "podIPs": [{"ip": node.ipv4}],
            "conditions": [{"type": "Ready", "status": "True"}],
        }});
        pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await?;
    }
    apply_pool(client, POOL, &DEMO_POOL_ADDRESSES, true).await
}

/// A MetalLB IPAddressPool and an L2Advertisement of it (every node, every interface).
pub async fn apply_pool(client: &kube::Client, name: &str, addresses: &[&str], auto_assign: bool) -> Result<()> {
    let params = PatchParams::apply("ferrolb-bench").force();
    for (kind, spec) in [
        ("IPAddressPool", serde_json::json!({"addresses": addresses, "autoAssign": auto_assign})),
        ("L2Advertisement", serde_json::json!({"ipAddressPools": [name]})),
    ] {
        let resource = ApiResource {
            group: "metallb.io".into(),
            version: "v1beta1".into(),
            api_version: "metallb.io/v1beta1".into(),
            kind: kind.into(),
            plural: format!("{}s", kind.to_lowercase()),
        };
        let object = DynamicObject::new(name, &resource).within(NAMESPACE).data(serde_json::json!({"spec": spec}));
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NAMESPACE, &resource);
        api.patch(name, &params, &Patch::Apply(&object)).await?;
    }
    Ok(())
}

/// A fresh memberlist key in `dir/secretkey`, where `METALLB_ML_SECRET_KEY_PATH` points.
pub fn write_memberlist_key(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).context(|| format!("creating {}", dir.display()))?;
    crate::objects::write_gossip_key(&dir.join("secretkey"))
}

/// The controller as its Deployment would run it, webhook off, metrics on `metrics_port`.
pub fn controller_command(build: &MetallbBuild, kubeconfig: &Path, metrics_port: u16) -> Command {
    let mut command = Command::new(build.controller());
    command
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args([&format!("--namespace={NAMESPACE}"), "--webhook-mode=disabled", "--disable-cert-rotation"])
        .arg(format!("--port={metrics_port}"))
        .arg("--log-level=info");
    command
}

/// A node's speaker as its DaemonSet would run it (hostNetwork), memberlist on the node's address.
pub fn speaker_command(build: &MetallbBuild, kubeconfig: &Path, node: &LabHost, key_dir: &Path) -> Command {
    let mut command = Command::new(build.speaker());
    command
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args([&format!("--namespace={NAMESPACE}"), "--port=7472", "--log-level=info"])
        .env("METALLB_NODE_NAME", &node.name)
        .env("METALLB_POD_NAME", speaker_pod_name(&node.name))
        .env("METALLB_HOST", &node.ipv4)
        .env("METALLB_ML_BIND_ADDR", &node.ipv4)
        .env("METALLB_ML_BIND_PORT", MEMBERLIST_PORT)
        .env("METALLB_ML_LABELS", SPEAKER_LABELS.map(|(k, v)| format!("{k}={v}")).join(","))
        .env("METALLB_ML_SECRET_KEY_PATH", key_dir);
    command
}

/// The build is complete, or what is missing.
pub fn check_build(build: &MetallbBuild) -> Result<()> {
    for path in [build.controller(), build.speaker(), build.crds()] {
        if !path.exists() {
            return Err(Error::Lab(format!(
                "{} is missing: `cargo xtask bench compare` builds MetalLB first",
                path.display()
            )));
        }
    }
    Ok(())
}
