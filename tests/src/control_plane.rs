//! A real Kubernetes control plane for tests: etcd + kube-apiserver as child processes, with RBAC
//! authorization, service-account token signing, a self-made CA and an admin token.
//!
//! By default there is no kubelet, controller-manager or scheduler: no Pods run, no EndpointSlices appear by
//! themselves, nothing is garbage-collected and Namespaces are never finalized. Tests create what they need (see
//! [`crate::objects`]) and name it uniquely, since one control plane is shared by all tests of a binary.
//! [`ControlPlane::start_for_nodes`] prepares it for real kubelets instead (Node authorizer, a credential per
//! node, a kubelet client certificate) and [`ControlPlane::start_controllers`] adds kube-controller-manager and
//! kube-scheduler.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

use crate::error::{Error, IoContext, Result};
use crate::process::ManagedProcess;
use crate::toolchain::K8sBinary;

/// The admin's bearer token; the admin is in `system:masters`.
const ADMIN_USER: &str = "ferrolb-admin";
/// Service ClusterIPs are only ever stored, never routed, here; the ranges are the benchmarking block and the
/// documentation prefix so no real address appears in any object. /16 and /112 leave room for 10 000 Services.
pub const SERVICE_CLUSTER_IP_RANGE: &str = "198.18.0.0/16,2001:db8:ffff::/112";
/// The `kubernetes` Service's ClusterIP (the range's first address): pods reach the API server there.
pub const KUBERNETES_CLUSTER_IP: &str = "198.18.0.1";
const READY_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Debug)]
pub struct ControlPlane {
    dir: PathBuf,
    /// Removed on drop when the control plane made its own directory.
    _tempdir: Option<tempfile::TempDir>,
    port: u16,
    admin_token: String,
    /// Bearer tokens of the kubelets (`system:node:<name>`), by node name.
    node_tokens: Vec<(String, String)>,
    // Field order is drop order: the controllers stop before the API server, which stops before etcd.
    controllers: Vec<ManagedProcess>,
    apiserver: ManagedProcess,
    etcd: ManagedProcess,
}

impl ControlPlane {
    /// The control plane shared by every test of this test binary, started on first use.
    ///
    /// Statics are never dropped, but its processes die with the test process (see [`crate::process`]).
    pub fn shared() -> &'static ControlPlane {
        static SHARED: OnceLock<ControlPlane> = OnceLock::new();
        SHARED.get_or_init(|| {
            crate::sweep::sweep_leftovers();
            // Started on a plain thread: the caller may be inside an async runtime, and start-up blocks.
            std::thread::spawn(ControlPlane::start_in_tempdir)
                .join()
                .unwrap_or_else(|_| panic!("control plane start-up panicked"))
                .unwrap_or_else(|e| panic!("cannot start the test control plane: {e}"))
        })
    }

    /// Starts a control plane whose files live in a temporary directory removed on drop.
    pub fn start_in_tempdir() -> Result<Self> {
        let tempdir = tempfile::Builder::new()
            .prefix(&crate::sweep::control_plane_dir_prefix())
            .tempdir()
            .context(|| "creating a temp dir".into())?;
        let dir = tempdir.path().to_path_buf();
        let mut plane = Self::start(&dir)?;
        plane._tempdir = Some(tempdir);
        Ok(plane)
    }

    /// Starts etcd and kube-apiserver with their state in `dir`, and waits until the API server is ready.
    pub fn start(dir: &Path) -> Result<Self> {
        Self::start_with(dir, &[], None)
    }

    /// Like [`ControlPlane::start`], ready for real kubelets on `nodes`: the Node authorizer and the
    /// NodeRestriction admission plugin (a kubelet may only touch its own Node and Pods), a bearer token per
    /// node, a client certificate for the API server's calls to kubelets (logs, exec), and the `kubernetes`
    /// ClusterIP in the serving certificate (pods reach the API there).
    ///
    /// The nodes' addresses are inside their namespaces, out of the host's reach: the API server dials kubelets
    /// through the HTTP CONNECT proxy on unix socket `node_proxy` (see [`crate::netlab::Lab::serve_node_proxy`]).
    pub fn start_for_nodes(dir: &Path, nodes: &[String], node_proxy: &Path) -> Result<Self> {
        Self::start_with(dir, nodes, Some(node_proxy))
    }

    fn start_with(dir: &Path, nodes: &[String], node_proxy: Option<&Path>) -> Result<Self> {
        let apiserver_bin = require(K8sBinary::KubeApiserver)?;
        let etcd_bin = require(K8sBinary::Etcd)?;
        std::fs::create_dir_all(dir).context(|| format!("creating {}", dir.display()))?;
        let pki = Pki::write(dir)?;
        let admin_token = random_token();
        let tokens = dir.join("tokens.csv");
        let node_tokens: Vec<(String, String)> = nodes.iter().map(|n| (n.clone(), random_token())).collect();
        let mut token_lines = format!("{admin_token},{ADMIN_USER},{ADMIN_USER},\"system:masters\"\n");
        for (node, token) in &node_tokens {
            token_lines.push_str(&format!("{token},system:node:{node},system:node:{node},\"system:nodes\"\n"));
        }
        std::fs::write(&tokens, token_lines).context(|| format!("writing {}", tokens.display()))?;

        let etcd_port = free_port()?;
        let peer_port = free_port()?;
        let mut etcd_cmd = Command::new(&etcd_bin);
        etcd_cmd.args([
            format!("--data-dir={}", dir.join("etcd").display()),
            format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
            format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-cluster=default=http://127.0.0.1:{peer_port}"),
            // Tests never need durability; fsync dominates etcd's latency on a shared disk.
            "--unsafe-no-fsync".into(),
            "--log-level=warn".into(),
        ]);
        let etcd = ManagedProcess::spawn("etcd", etcd_cmd, &dir.join("etcd.log"))?;

        let port = free_port()?;
        let mut apiserver_cmd = Command::new(&apiserver_bin);
        apiserver_cmd.args([
            format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={port}"),
            format!("--tls-cert-file={}", pki.serving_cert.display()),
            format!("--tls-private-key-file={}", pki.serving_key.display()),
            format!("--client-ca-file={}", pki.ca_cert.display()),
            format!("--token-auth-file={}", tokens.display()),
            if nodes.is_empty() { "--authorization-mode=RBAC".into() } else { "--authorization-mode=Node,RBAC".into() },
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", pki.service_account_public.display()),
            format!("--service-account-signing-key-file={}", pki.service_account_private.display()),
            format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"),
            // The `kubernetes` Service's endpoints would point at loopback, which Endpoints validation refuses.
            "--endpoint-reconciler-type=none".into(),
            "--profiling=false".into(),
            "--v=1".into(),
        ]);
        if !nodes.is_empty() {
            apiserver_cmd.args([
                "--enable-admission-plugins=NodeRestriction".to_string(),
                format!("--kubelet-client-certificate={}", pki.kubelet_client_cert.display()),
                format!("--kubelet-client-key={}", pki.kubelet_client_key.display()),
                "--kubelet-preferred-address-types=InternalIP".into(),
                // Pods are told the API is at the ClusterIP; without an address of its own the API server
                // would advertise loopback.
                format!("--advertise-address={}", crate::netlab::API_SERVICE_ADDRESS),
            ]);
        }
        if let Some(node_proxy) = node_proxy {
            let egress = dir.join("egress-selector.yaml");
            let config = serde_json::json!({
                "apiVersion": "apiserver.k8s.io/v1beta1",
                "kind": "EgressSelectorConfiguration",
                "egressSelections": [{
                    "name": "cluster",
                    "connection": {
                        "proxyProtocol": "HTTPConnect",
                        "transport": {"uds": {"udsName": node_proxy}},
                    },
                }],
            });
            std::fs::write(&egress, config.to_string()).context(|| format!("writing {}", egress.display()))?;
            apiserver_cmd.arg(format!("--egress-selector-config-file={}", egress.display()));
        }
        let apiserver = ManagedProcess::spawn("kube-apiserver", apiserver_cmd, &dir.join("kube-apiserver.log"))?;

        let plane = Self {
            dir: dir.to_path_buf(),
            _tempdir: None,
            port,
            admin_token,
            node_tokens,
            controllers: Vec::new(),
            apiserver,
            etcd,
        };
        plane.write_kubeconfig(&plane.kubeconfig_path(), "admin", &plane.admin_token)?;
        plane.wait_ready()?;
        Ok(plane)
    }

    /// Starts kube-controller-manager (Deployments, ReplicaSets, DaemonSets, EndpointSlices, garbage
    /// collection, the `kube-root-ca.crt` ConfigMap pods mount) and kube-scheduler, both as the admin.
    pub fn start_controllers(&mut self) -> Result<()> {
        let kubeconfig = self.kubeconfig_path();
        let mut manager = Command::new(require(K8sBinary::KubeControllerManager)?);
        manager.args([
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--root-ca-file={}", self.ca_path().display()),
            format!("--service-account-private-key-file={}", self.dir.join("pki").join("sa.key").display()),
            format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"),
            // Each ServiceAccount's token for its controller, as in a real cluster (RBAC per controller).
            "--use-service-account-credentials=true".into(),
            "--leader-elect=false".into(),
            // Loopback only, on a free port: several labs and test runs share the host.
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={}", free_port()?),
            // Node lifecycle: a kubelet that stops reporting is NotReady after 20 s, its pods evicted soon after.
            "--node-monitor-grace-period=20s".into(),
            "--v=1".into(),
        ]);
        let manager =
            ManagedProcess::spawn("kube-controller-manager", manager, &self.dir.join("kube-controller-manager.log"))?;
        let mut scheduler = Command::new(require(K8sBinary::KubeScheduler)?);
        scheduler.args([
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--authentication-kubeconfig={}", kubeconfig.display()),
            format!("--authorization-kubeconfig={}", kubeconfig.display()),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={}", free_port()?),
            "--v=1".into(),
        ]);
        let scheduler = ManagedProcess::spawn("kube-scheduler", scheduler, &self.dir.join("kube-scheduler.log"))?;
        self.controllers = vec![manager, scheduler];
        Ok(())
    }

    /// Writes the kubeconfig kubelet `node` uses (its own token; the API server at `server`).
    pub fn write_node_kubeconfig(&self, path: &Path, node: &str, server: &str) -> Result<()> {
        let token = self
            .node_tokens
            .iter()
            .find(|(name, _)| name == node)
            .map(|(_, token)| token.clone())
            .ok_or_else(|| Error::Kubeconfig(format!("the control plane has no credential for node {node}")))?;
        self.write_kubeconfig_for(path, &format!("system:node:{node}"), &token, server)
    }

    /// The port the API server listens on at 127.0.0.1 (the network lab forwards the same port inside every
    /// node namespace, so one kubeconfig works everywhere).
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The admin kubeconfig (user in `system:masters`).
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("pki").join("ca.crt")
    }

    pub fn apiserver_pid(&self) -> u32 {
        self.apiserver.pid()
    }

    pub fn etcd_pid(&self) -> u32 {
        self.etcd.pid()
    }

    /// A client with admin rights. Each call makes a new client: a client belongs to the async runtime that
    /// created it, and every test has its own runtime.
    pub async fn admin_client(&self) -> Result<kube::Client> {
        client_from_kubeconfig(&self.kubeconfig_path()).await
    }

    /// Writes a kubeconfig that authenticates with `token` (as `user`, a label only).
    pub fn write_kubeconfig(&self, path: &Path, user: &str, token: &str) -> Result<()> {
        self.write_kubeconfig_for(path, user, token, &self.server_url())
    }

    fn write_kubeconfig_for(&self, path: &Path, user: &str, token: &str, server: &str) -> Result<()> {
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "ferrolb", "cluster": {"server": server, "certificate-authority": self.ca_path()}}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "ferrolb", "context": {"cluster": "ferrolb", "user": user}}],
            "current-context": "ferrolb",
        });
        // JSON is YAML: kubectl and kube-rs both read it.
        std::fs::write(path, config.to_string()).context(|| format!("writing {}", path.display()))
    }

    /// Creates ServiceAccount `namespace/name` if needed and returns a token for it (via the TokenRequest API,
    /// as the kubelet would project one into a Pod).
    pub async fn service_account_token(&self, namespace: &str, name: &str) -> Result<String> {
        let client = self.admin_client().await?;
        let accounts: Api<ServiceAccount> = Api::namespaced(client, namespace);
        let account = ServiceAccount {
            metadata: kube::api::ObjectMeta { name: Some(name.to_string()), ..Default::default() },
            ..Default::default()
        };
        match accounts.create(&PostParams::default(), &account).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        let request = TokenRequest {
            spec: Some(TokenRequestSpec { expiration_seconds: Some(24 * 3600), ..Default::default() }),
            ..Default::default()
        };
        let response = accounts.create_token_request(name, &PostParams::default(), &request).await?;
        response.status.and_then(|s| s.token).ok_or_else(|| Error::Kubeconfig("TokenRequest returned no token".into()))
    }

    /// Writes a kubeconfig for ServiceAccount `namespace/name` (created if needed) and returns its path.
    pub async fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> Result<PathBuf> {
        let token = self.service_account_token(namespace, name).await?;
        let path = self.dir.join(format!("sa-{namespace}-{name}.kubeconfig"));
        self.write_kubeconfig(&path, &format!("system:serviceaccount:{namespace}:{name}"), &token)?;
        Ok(path)
    }

    fn wait_ready(&self) -> Result<()> {
        let started = Instant::now();
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().context(|| "tokio runtime".into())?;
        let mut last_error = String::from("no answer yet");
        while started.elapsed() < READY_TIMEOUT {
            if let Some(status) = self.process_exited() {
                return Err(Error::NotReady {
                    what: "kube-apiserver".into(),
                    seconds: started.elapsed().as_secs(),
                    detail: format!("{status}\n{}", self.logs_tail()),
                });
            }
            match runtime.block_on(self.readyz()) {
                Ok(()) => return Ok(()),
                Err(e) => last_error = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Err(Error::NotReady {
            what: "kube-apiserver".into(),
            seconds: READY_TIMEOUT.as_secs(),
            detail: format!("{last_error}\n{}", self.logs_tail()),
        })
    }

    async fn readyz(&self) -> Result<()> {
        let client = self.admin_client().await?;
        let request = http::Request::get("/readyz").body(Vec::new()).map_err(|e| Error::Kubeconfig(e.to_string()))?;
        let body = client.request_text(request).await?;
        if body.trim() == "ok" { Ok(()) } else { Err(Error::Kubeconfig(format!("/readyz said {body}"))) }
    }

    fn process_exited(&self) -> Option<String> {
        // `try_wait` needs `&mut`; poll through /proc instead so readiness can be checked through `&self`.
        for (name, pid) in [("etcd", self.etcd.pid()), ("kube-apiserver", self.apiserver.pid())] {
            if !crate::sweep::process_alive(pid) {
                return Some(format!("{name} exited"));
            }
        }
        None
    }

    fn logs_tail(&self) -> String {
        format!(
            "--- etcd log ({}):\n{}\n--- kube-apiserver log ({}):\n{}",
            self.etcd.log_path().display(),
            self.etcd.log_tail(20),
            self.apiserver.log_path().display(),
            self.apiserver.log_tail(40)
        )
    }
}

/// A client from a kubeconfig file.
pub async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client> {
    let kubeconfig = Kubeconfig::read_from(path).map_err(|e| Error::Kubeconfig(format!("{}: {e}", path.display())))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| Error::Kubeconfig(format!("{}: {e}", path.display())))?;
    Ok(kube::Client::try_from(config)?)
}

/// The path of a built Kubernetes binary, or an error that says how to build it.
pub(crate) fn require(binary: K8sBinary) -> Result<PathBuf> {
    let path = binary.path();
    if path.is_file() { Ok(path) } else { Err(Error::MissingBinary { binary: binary.file_name().into(), path }) }
}

/// A loopback port that was free a moment ago, for a server started right after (etcd, the API server).
///
/// Not one the kernel picks (port 0): those come from the ephemeral range, where every outgoing connection
/// of the machine (the tests' clients, curl, kubectl) also takes its source port, and one took etcd's
/// between the check and etcd's bind (`address already in use`). Below that range only servers bind, and
/// this process never hands out a port twice.
pub fn free_port() -> Result<u16> {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_start.max(10_001));
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..200 {
        let mut bytes = [0u8; 2];
        getrandom_fill(&mut bytes);
        let port = low + u16::from_le_bytes(bytes) % (high - low);
        if handed_out.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.push(port);
            return Ok(port);
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").context(|| "finding a free port".into())?;
    Ok(listener.local_addr().context(|| "finding a free port".into())?.port())
}

fn random_token() -> String {
    let mut bytes = [0u8; 24];
    getrandom_fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn getrandom_fill(buf: &mut [u8]) {
    use std::io::Read;
    if let Ok(mut urandom) = std::fs::File::open("/dev/urandom") {
        let _ = urandom.read_exact(buf);
    }
}

/// The CA, the API server's serving certificate and the service-account signing key, written under `dir/pki`.
struct Pki {
    ca_cert: PathBuf,
    serving_cert: PathBuf,
    serving_key: PathBuf,
    service_account_private: PathBuf,
    service_account_public: PathBuf,
    /// The API server's identity towards kubelets (in `system:masters`, so every kubelet API is allowed).
    kubelet_client_cert: PathBuf,
    kubelet_client_key: PathBuf,
}

impl Pki {
    fn write(dir: &Path) -> Result<Self> {
        let pki = dir.join("pki");
        std::fs::create_dir_all(&pki).context(|| format!("creating {}", pki.display()))?;

        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "ferrolb-test-ca");
        ca_params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let serving_key = KeyPair::generate()?;
        let mut serving_params = CertificateParams::new(vec![
            "127.0.0.1".to_string(),
            "::1".to_string(),
            "localhost".to_string(),
            "kubernetes".to_string(),
            "kubernetes.default.svc".to_string(),
            "kubernetes.default.svc.cluster.local".to_string(),
            KUBERNETES_CLUSTER_IP.to_string(),
            crate::netlab::API_SERVICE_ADDRESS.to_string(),
        ])?;
        serving_params.distinguished_name.push(DnType::CommonName, "kube-apiserver");
        serving_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_cert = serving_params.signed_by(&serving_key, &issuer)?;

        let kubelet_client_key = KeyPair::generate()?;
        let mut kubelet_client_params = CertificateParams::new(Vec::<String>::new())?;
        kubelet_client_params.distinguished_name.push(DnType::CommonName, "kube-apiserver-kubelet-client");
        kubelet_client_params.distinguished_name.push(DnType::OrganizationName, "system:masters");
        kubelet_client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let kubelet_client_cert = kubelet_client_params.signed_by(&kubelet_client_key, &issuer)?;

        let service_account_key = KeyPair::generate()?;

        let files = Self {
            ca_cert: pki.join("ca.crt"),
            serving_cert: pki.join("apiserver.crt"),
            serving_key: pki.join("apiserver.key"),
            service_account_private: pki.join("sa.key"),
            service_account_public: pki.join("sa.pub"),
            kubelet_client_cert: pki.join("kubelet-client.crt"),
            kubelet_client_key: pki.join("kubelet-client.key"),
        };
        for (path, pem) in [
            (&files.ca_cert, ca_cert.pem()),
            (&files.serving_cert, serving_cert.pem()),
            (&files.serving_key, serving_key.serialize_pem()),
            (&files.service_account_private, service_account_key.serialize_pem()),
            (&files.service_account_public, service_account_key.public_key_pem()),
            (&files.kubelet_client_cert, kubelet_client_cert.pem()),
            (&files.kubelet_client_key, kubelet_client_key.serialize_pem()),
        ] {
            std::fs::write(path, pem).context(|| format!("writing {}", path.display()))?;
        }
        Ok(files)
    }
}
