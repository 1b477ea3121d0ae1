//! A LAN of nodes in network namespaces: one switch namespace holding a bridge, N node namespaces and one
//! client namespace, each plugged into the bridge with a veth pair named `eth0` on the host side.
//!
//! Every node namespace:
//! - has `192.0.2.(10+i)/24` and `2001:db8::(10+i)/64` on eth0 (i from 1);
//! - routes the pool prefixes locally (`ip route add local ... dev lo table local`), as kube-proxy in IPVS mode
//!   does with the Service's external IPs, while `arp_ignore=1` keeps the kernel from answering ARP, and the
//!   IPv6 local route is not an interface address so NDP is not answered either: a VIP becomes reachable only
//!   when something (the speaker) announces it;
//! - runs an HTTP server on port 80 that answers every request, on any local address, with the node's name;
//! - optionally forwards 127.0.0.1:<api port> to the API server on the host's loopback, so processes in the
//!   namespace use the very same kubeconfig as the host.
//!
//! The lab owns the namespaces it made: dropping it kills every process inside them and deletes them.

use std::net::SocketAddr;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::error::{IoContext, Result};
use crate::netns;

/// What to build.
#[derive(Debug, Clone)]
pub struct LabSpec {
    /// Prefix of every namespace name; [`crate::names::unique_lab_prefix`] for tests.
    pub prefix: String,
    pub nodes: usize,
    /// Prefixes routed locally in every node namespace (the pool): IPv4 and IPv6 CIDRs.
    pub local_prefixes: Vec<String>,
    /// Forward 127.0.0.1:<port> in every node namespace to the API server at the host's 127.0.0.1:<port>.
    pub api_port: Option<u16>,
    /// Nodes for real kubelets: pods serve, not the lab (no HTTP server of its own), every node routes the
    /// others' pod networks, and the API server is also reachable at [`API_SERVICE_ADDRESS`]:<port> on every
    /// node (the `kubernetes` Service's endpoint).
    pub pod_network: bool,
}

impl LabSpec {
    /// A test lab with `nodes` nodes, the default pool prefixes and API forwarding to `api_port`.
    pub fn for_test(nodes: usize, api_port: u16) -> Self {
        Self {
            prefix: crate::names::unique_lab_prefix(),
            nodes,
            local_prefixes: vec![DEFAULT_POOL_V4.into(), DEFAULT_POOL_V6.into()],
            api_port: Some(api_port),
            pod_network: false,
        }
    }
}

impl LabSpec {
    /// The developer's lab (`cargo xtask lab`): `prefix`, the default pool prefixes, the API forwarded to
    /// `api_port`; `pod_network` for real kubelets.
    pub fn for_lab(prefix: &str, nodes: usize, api_port: u16, pod_network: bool) -> Self {
        Self {
            prefix: prefix.to_string(),
            nodes,
            local_prefixes: vec![DEFAULT_POOL_V4.into(), DEFAULT_POOL_V6.into()],
            api_port: Some(api_port),
            pod_network,
        }
    }
}

/// The pool prefixes a lab routes locally by default: they hold the demo pool 192.0.2.200-250 and
/// 2001:db8::200-250.
pub const DEFAULT_POOL_V4: &str = "192.0.2.192/26";
pub const DEFAULT_POOL_V6: &str = "2001:db8::200/120";
/// Where pods and kube-proxy reach the API server: this address is on every node's loopback, forwarded to
/// the host's API server, and is the endpoint of the `kubernetes` Service.
pub const API_SERVICE_ADDRESS: &str = "198.51.100.1";
/// The pod networks of real nodes: node `i` (from 1) has `203.0.113.<32(i-1)>/27` and `2001:db8:1:<i>::/64`.
pub const POD_NETWORK_V4: &str = "203.0.113.0/24";
pub const POD_NETWORK_V6: &str = "2001:db8:1::/48";
/// Eight /27s fit in the pod network.
pub const MAX_NODES_WITH_PODS: usize = 8;

/// The IPv4 and IPv6 pod CIDRs of node `index` (from 1).
pub fn pod_cidrs(index: usize) -> (String, String) {
    (format!("203.0.113.{}/27", 32 * (index - 1)), format!("2001:db8:1:{index:x}::/64"))
}

pub const CLIENT_IPV4: &str = "192.0.2.2";
pub const CLIENT_IPV6: &str = "2001:db8::2";
const HTTP_PORT: u16 = 80;

#[derive(Debug, Clone, Serialize)]
pub struct LabHost {
    pub name: String,
    pub netns: String,
    pub ipv4: String,
    pub ipv6: String,
    pub mac: String,
    /// The host's interface on the LAN.
    pub interface: String,
}

#[derive(Debug)]
pub struct Lab {
    spec: LabSpec,
    switch: String,
    nodes: Vec<LabHost>,
    client: LabHost,
    /// Runs the HTTP servers and API forwarders; shut down first on drop.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Lab {
    pub fn start(spec: LabSpec) -> Result<Self> {
        if !nix::unistd::Uid::effective().is_root() {
            return Err(crate::Error::NotRoot);
        }
        if spec.pod_network && spec.nodes > MAX_NODES_WITH_PODS {
            return Err(crate::Error::Lab(format!("a lab with pods has at most {MAX_NODES_WITH_PODS} nodes")));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ferrolb-lab-io")
            .enable_all()
            .build()
            .context(|| "tokio runtime for the lab".into())?;
        let switch = format!("{}-sw", spec.prefix);
        let client = LabHost {
            name: "client".into(),
            netns: format!("{}-client", spec.prefix),
            ipv4: CLIENT_IPV4.into(),
            ipv6: CLIENT_IPV6.into(),
            mac: "02:f0:00:00:00:02".into(),
            interface: "eth0".into(),
        };
        let nodes = (1..=spec.nodes)
            .map(|i| LabHost {
                name: format!("node-{i}"),
                netns: format!("{}-node-{i}", spec.prefix),
                ipv4: format!("192.0.2.{}", 10 + i),
                ipv6: format!("2001:db8::{}", 10 + i),
                mac: format!("02:f0:00:00:00:{:02x}", 10 + i),
                interface: "eth0".into(),
            })
            .collect();
        // From here on, a failure drops `lab`, which removes whatever was already made.
        let lab = Self { spec, switch, nodes, client, runtime: Some(runtime) };
        lab.build()?;
        Ok(lab)
    }

    fn build(&self) -> Result<()> {
        netns::ip(&["netns", "add", &self.switch])?;
        // No IPv6 of its own on the switch: it must only forward frames, never send any.
        netns::sysctl(&self.switch, &["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"])?;
        // Snooping off: multicast (solicited-node NS, unsolicited NA) reaches every port, as on a plain switch.
        netns::ip(&["-n", &self.switch, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"])?;
        netns::ip(&["-n", &self.switch, "link", "set", "br0", "up"])?;
        self.plug(&self.client, "client")?;
        for (i, node) in self.nodes.iter().enumerate() {
            self.plug(node, &format!("n{}", i + 1))?;
            self.route_pool_locally(node)?;
            if self.spec.pod_network {
                self.route_pod_networks(i + 1)?;
            } else {
                self.serve_http(node)?;
            }
            if let Some(port) = self.spec.api_port {
                self.forward_api(node, "127.0.0.1", port)?;
                if self.spec.pod_network {
                    netns::ip(&["-n", &node.netns, "addr", "add", &format!("{API_SERVICE_ADDRESS}/32"), "dev", "lo"])?;
                    self.forward_api(node, API_SERVICE_ADDRESS, port)?;
                }
            }
        }
        Ok(())
    }

    /// Node `index` forwards packets (it routes for its pods) and reaches every other node's pods through that
    /// node, as a flat routed pod network does.
    fn route_pod_networks(&self, index: usize) -> Result<()> {
        let ns = self.nodes[index - 1].netns.as_str();
        netns::sysctl(ns, &["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"])?;
        for (other_index, other) in self.nodes.iter().enumerate().map(|(i, n)| (i + 1, n)) {
            if other_index == index {
                continue;
            }
            let (v4, v6) = pod_cidrs(other_index);
            netns::ip(&["-n", ns, "route", "add", &v4, "via", &other.ipv4])?;
            netns::ip(&["-n", ns, "-6", "route", "add", &v6, "via", &other.ipv6])?;
        }
        // Without a route, a host-network process's connect to a ClusterIP fails before kube-proxy's output
        // chain can rewrite it (the nodes have no default route).
        for range in crate::control_plane::SERVICE_CLUSTER_IP_RANGE.split(',') {
            netns::ip(&["-n", ns, "route", "add", range, "dev", "eth0"])?;
        }
        Ok(())
    }

    /// Creates the host's namespace and plugs its eth0 into the bridge through port `port`.
    pub(crate) fn plug(&self, host: &LabHost, port: &str) -> Result<()> {
        let ns = host.netns.as_str();
        netns::ip(&["netns", "add", ns])?;
        netns::ip(&[
            "link",
            "add",
            "eth0",
            "netns",
            ns,
            "address",
            &host.mac,
            "type",
            "veth",
            "peer",
            "name",
            port,
            "netns",
            &self.switch,
        ])?;
        netns::ip(&["-n", &self.switch, "link", "set", port, "master", "br0", "up"])?;
        // Addresses are usable at once: no duplicate address detection on a lab LAN.
        netns::sysctl(
            ns,
            &[
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
                "net.ipv6.conf.eth0.accept_dad=0",
                // As on a server: a link that goes down and up keeps its IPv6 addresses.
                "net.ipv6.conf.eth0.keep_addr_on_down=1",
            ],
        )?;
        netns::ip(&["-n", ns, "link", "set", "lo", "up"])?;
        netns::ip(&["-n", ns, "addr", "add", &format!("{}/24", host.ipv4), "dev", "eth0"])?;
        netns::ip(&["-n", ns, "addr", "add", &format!("{}/64", host.ipv6), "dev", "eth0", "nodad"])?;
        netns::ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        Ok(())
    }

    fn route_pool_locally(&self, node: &LabHost) -> Result<()> {
        let ns = node.netns.as_str();
        // Answer ARP only for addresses configured on the receiving interface, and source ARP from it: the
        // locally routed pool is then never announced by the kernel (kube-proxy IPVS with strictARP).
        netns::sysctl(
            ns,
            &[
                "net.ipv4.conf.all.arp_ignore=1",
                "net.ipv4.conf.eth0.arp_ignore=1",
                "net.ipv4.conf.all.arp_announce=2",
                "net.ipv4.conf.eth0.arp_announce=2",
            ],
        )?;
        for prefix in &self.spec.local_prefixes {
            let family = if prefix.contains(':') { "-6" } else { "-4" };
            netns::ip(&["-n", ns, family, "route", "add", "local", prefix, "dev", "lo", "table", "local"])?;
        }
        Ok(())
    }

    fn serve_http(&self, node: &LabHost) -> Result<()> {
        let listener = netns::in_netns(&node.netns, || {
            let socket = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)?;
            // One dual-stack socket on [::]:80 serves every local address of both families, the pool included.
            socket.set_only_v6(false)?;
            socket.set_reuse_address(true)?;
            socket.set_nonblocking(true)?;
            socket.bind(&SocketAddr::from(([0u16; 8], HTTP_PORT)).into())?;
            socket.listen(128)?;
            Ok(std::net::TcpListener::from(socket))
        })?;
        let name = node.name.clone();
        let runtime = self.runtime()?;
        let listener = {
            let _guard = runtime.enter();
            TcpListener::from_std(listener).context(|| format!("HTTP listener in {}", node.netns))?
        };
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                tokio::spawn(answer_with_name(stream, name.clone()));
            }
        });
        Ok(())
    }

    fn forward_api(&self, node: &LabHost, address: &'static str, port: u16) -> Result<()> {
        let listener = netns::in_netns(&node.netns, move || {
            let listener = std::net::TcpListener::bind((address, port))?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        })?;
        let runtime = self.runtime()?;
        let listener = {
            let _guard = runtime.enter();
            TcpListener::from_std(listener).context(|| format!("API forwarder in {}", node.netns))?
        };
        runtime.spawn(async move {
            loop {
                let Ok((mut inside, _)) = listener.accept().await else { continue };
                tokio::spawn(async move {
                    // This task runs on a runtime thread in the host namespace, so it reaches the host's loopback.
                    if let Ok(mut host) = TcpStream::connect(("127.0.0.1", port)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inside, &mut host).await;
                    }
                });
            }
        });
        Ok(())
    }

    /// Serves HTTP CONNECT on unix socket `path` (on the host): a tunnel to `<node address>:<port>` is dialled
    /// from inside that node's namespace. The API server reaches the kubelets this way (`kubectl logs`, `exec`).
    pub fn serve_node_proxy(&self, path: &std::path::Path) -> Result<()> {
        let _ = std::fs::remove_file(path);
        let runtime = self.runtime()?;
        let listener = {
            let _guard = runtime.enter();
            tokio::net::UnixListener::bind(path).context(|| format!("node proxy at {}", path.display()))?
        };
        let nodes: Vec<(Vec<String>, String)> =
            self.nodes.iter().map(|n| (vec![n.ipv4.clone(), n.ipv6.clone()], n.netns.clone())).collect();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                tokio::spawn(tunnel_to_node(stream, nodes.clone()));
            }
        });
        Ok(())
    }

    fn runtime(&self) -> Result<&tokio::runtime::Runtime> {
        self.runtime.as_ref().ok_or_else(|| crate::Error::Lab("lab runtime already shut down".into()))
    }

    pub fn nodes(&self) -> &[LabHost] {
        &self.nodes
    }

    pub fn node(&self, name: &str) -> Option<&LabHost> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn client(&self) -> &LabHost {
        &self.client
    }

    pub fn switch_netns(&self) -> &str {
        &self.switch
    }

    /// Every namespace this lab made.
    pub fn namespaces(&self) -> Vec<String> {
        let mut all = vec![self.switch.clone(), self.client.netns.clone()];
        all.extend(self.nodes.iter().map(|n| n.netns.clone()));
        all
    }

    /// Runs `program args` in the client namespace.
    pub fn client_exec(&self, program: &str, args: &[&str]) -> Result<std::process::Output> {
        netns::exec(&self.client.netns, program, args)
    }

    /// `curl` from the client: the body on success, `None` when the request fails (within `timeout_secs`).
    pub fn client_curl(&self, url: &str, timeout_secs: u32) -> Result<Option<String>> {
        let timeout = timeout_secs.to_string();
        let output = self.client_exec("curl", &["-sS", "-g", "--max-time", &timeout, url])?;
        Ok(output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_string()))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
        for ns in self.namespaces() {
            netns::delete(&ns);
        }
    }
}

/// One HTTP CONNECT tunnel into the namespace of the node that has the requested address.
async fn tunnel_to_node(
    mut stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    nodes: Vec<(Vec<String>, String)>,
) {
    let mut head = Vec::with_capacity(512);
    let mut byte = [0u8; 1];
    // Byte by byte up to the blank line: nothing of the tunnelled stream may be read here.
    while !head.ends_with(b"\r\n\r\n") && head.len() < 8 * 1024 {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head);
    let target = head.lines().next().and_then(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some("CONNECT")).then(|| words.next()).flatten().map(str::to_string)
    });
    let Some(address) = target.and_then(|t| t.parse::<SocketAddr>().ok()) else {
        let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        return;
    };
    let ip = address.ip().to_string();
    let Some((_, netns)) = nodes.iter().find(|(ips, _)| ips.contains(&ip)) else {
        let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\n\r\n").await;
        return;
    };
    let dialled = netns::in_netns(netns, move || {
        let socket = std::net::TcpStream::connect_timeout(&address, std::time::Duration::from_secs(5))?;
        socket.set_nonblocking(true)?;
        Ok(socket)
    });
    let Ok(Ok(mut upstream)) = dialled.map(TcpStream::from_std) else {
        let _ = stream.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
        return;
    };
    if stream.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await.is_ok() {
        let _ = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await;
    }
}

/// A minimal HTTP/1.1 answer: the node's name, whatever was asked.
async fn answer_with_name(mut stream: TcpStream, name: String) {
    let mut request = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    // Read the request head (bounded), so the client is not reset while still sending.
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let body = format!("{name}\n");
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}
