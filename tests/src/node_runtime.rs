//! Real nodes: in every node namespace a containerd, a kubelet and a kube-proxy, as a kubeadm node runs them,
//! with images imported from OCI archives (no registry) and pods on a bridge (CNI `bridge` + `host-local`).
//!
//! The recipe and its traps are in `shared/REFERENCE.md` ("A real kubelet"). What matters here:
//! - the daemons are started with `nsenter --net` (not `ip netns exec`, whose private /sys hides the cgroup
//!   mounts from the kubelet), inside a cgroup of their own under the node's cgroup root, so everything a node
//!   ever ran (containerd, its shims, every container, in whatever namespace) is found again by cgroup and
//!   killed on teardown, even after a crash of this process;
//! - every path a runtime writes is under the node's directory, except the few the runtimes hard-code
//!   (swept by [`sweep_shared_host_paths`]);
//! - the kubelet mounts secrets and the containerd rootfs overlays: they are unmounted before the directory
//!   is removed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::control_plane::{ControlPlane, require};
use crate::error::{Error, IoContext, Result};
use crate::netlab::{self, LabHost};
use crate::process::ManagedProcess;
use crate::toolchain::K8sBinary;

/// Where Debian's containernetworking-plugins are.
const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// The cgroup v1 hierarchies a node's cgroup root is made in (runc and the kubelet use every mounted one).
const CGROUP_HIERARCHIES: &[&str] =
    &["cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids", "systemd"];
const CGROUP_MOUNT: &str = "/sys/fs/cgroup";
/// The containerd namespace the CRI plugin (and so the kubelet) uses.
pub const CRI_NAMESPACE: &str = "k8s.io";
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// One node's container runtime, kubelet and kube-proxy. Dropping it stops them and removes every process,
/// mount, cgroup and file the node made.
#[derive(Debug)]
pub struct NodeRuntime {
    name: String,
    netns: String,
    /// The node's cgroup root (also the CNI network name): `<lab prefix>-<node>`, unique on the machine.
    cgroup: String,
    dir: PathBuf,
    // Drop order: kube-proxy and the kubelet before containerd.
    kube_proxy: Option<ManagedProcess>,
    kubelet: Option<ManagedProcess>,
    containerd: Option<ManagedProcess>,
}

/// What a node needs to know about its cluster.
#[derive(Debug, Clone)]
pub struct NodeConfig<'a> {
    pub host: &'a LabHost,
    /// From 1: picks the node's pod CIDRs ([`netlab::pod_cidrs`]).
    pub index: usize,
    /// The node's files; removed on drop.
    pub dir: PathBuf,
    /// The image every pod sandbox runs (imported, never pulled).
    pub sandbox_image: String,
}

impl NodeRuntime {
    /// Starts containerd in the node's namespace and waits for its socket; the kubelet comes later
    /// ([`NodeRuntime::start_kubelet`]), once images are imported.
    pub fn start_runtime(config: &NodeConfig<'_>) -> Result<Self> {
        let containerd = require(K8sBinary::Containerd)?;
        let dir = config.dir.clone();
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["containerd", "cni/net.d", "cni/ipam", "kubelet", "pod-logs", "runc"] {
            std::fs::create_dir_all(dir.join(sub)).context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let mut node = Self {
            name: config.host.name.clone(),
            netns: config.host.netns.clone(),
            cgroup: config.host.netns.clone(),
            dir,
            kube_proxy: None,
            kubelet: None,
            containerd: None,
        };
        // From here a failure drops `node`, which removes what was made.
        node.make_cgroups()?;
        node.write_cni_config(config.index)?;
        let config_file = node.dir.join("containerd.toml");
        std::fs::write(&config_file, node.containerd_config(&config.sandbox_image))
            .context(|| format!("writing {}", config_file.display()))?;
        let mut command = Command::new(containerd);
        command.arg("--config").arg(&config_file).arg("--log-level").arg("warn");
        node.containerd = Some(node.spawn_in_node("containerd", command)?);
        node.wait_for_containerd()?;
        Ok(node)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// `ctr images import` of an OCI archive into the node's CRI namespace.
    pub fn import_image(&self, archive: &Path) -> Result<()> {
        let output = self.ctr(&["images", "import", "--no-unpack=false", &archive.to_string_lossy()])?;
        if !output.status.success() {
            return Err(Error::Command {
                command: format!("ctr images import {} on {}", archive.display(), self.name),
                detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        Ok(())
    }

    /// Gives image `from` the extra name `to` (as a push of a new tag would).
    pub fn tag_image(&self, from: &str, to: &str) -> Result<()> {
        let output = self.ctr(&["images", "tag", "--force", from, to])?;
        if !output.status.success() {
            return Err(Error::Command {
                command: format!("ctr images tag {from} {to} on {}", self.name),
                detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        Ok(())
    }

    /// Runs `ctr` against the node's containerd, in its CRI namespace.
    pub fn ctr(&self, args: &[&str]) -> Result<std::process::Output> {
        let ctr = require(K8sBinary::Ctr)?;
        Command::new(&ctr)
            .arg("--address")
            .arg(self.socket())
            .args(["--namespace", CRI_NAMESPACE])
            .args(args)
            .output()
            .context(|| format!("running {}", ctr.display()))
    }

    /// Starts the kubelet (registering Node `name` with the node's two addresses) and kube-proxy (nftables).
    pub fn start_kubelet(&mut self, plane: &ControlPlane, host: &LabHost) -> Result<()> {
        let kubelet = require(K8sBinary::Kubelet)?;
        let proxy = require(K8sBinary::KubeProxy)?;
        let kubeconfig = self.dir.join("kubelet.kubeconfig");
        plane.write_node_kubeconfig(&kubeconfig, &self.name, &plane.server_url())?;
        let config_file = self.dir.join("kubelet.yaml");
        std::fs::write(&config_file, self.kubelet_config(plane, host))
            .context(|| format!("writing {}", config_file.display()))?;
        let mut command = Command::new(kubelet);
        command
            .arg(format!("--config={}", config_file.display()))
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!("--root-dir={}", self.dir.join("kubelet").display()))
            .arg(format!("--cert-dir={}", self.dir.join("kubelet").join("pki").display()))
            .arg(format!("--hostname-override={}", self.name))
            .arg(format!("--node-ip={},{}", host.ipv4, host.ipv6))
            .arg("--v=1");
        self.kubelet = Some(self.spawn_in_node("kubelet", command)?);

        let proxy_config = self.dir.join("kube-proxy.yaml");
        std::fs::write(&proxy_config, self.kube_proxy_config(plane))
            .context(|| format!("writing {}", proxy_config.display()))?;
        let mut command = Command::new(proxy);
        command.arg(format!("--config={}", proxy_config.display())).arg("--v=1");
        self.kube_proxy = Some(self.spawn_in_node("kube-proxy", command)?);
        Ok(())
    }

    /// Whether the node's daemons still run: `Some(name)` of the first that exited.
    pub fn exited_daemon(&mut self) -> Option<&'static str> {
        for (name, process) in [
            ("containerd", self.containerd.as_mut()),
            ("kubelet", self.kubelet.as_mut()),
            ("kube-proxy", self.kube_proxy.as_mut()),
        ] {
            if process.and_then(ManagedProcess::try_wait).is_some() {
                return Some(name);
            }
        }
        None
    }

    /// The host pid of a container's main process, from the runc shim's `init.pid` in containerd's state.
    pub fn container_pid(&self, container_id: &str) -> Option<u32> {
        let path = self
            .dir
            .join("containerd")
            .join("state")
            .join("io.containerd.runtime.v2.task")
            .join(CRI_NAMESPACE)
            .join(container_id)
            .join("init.pid");
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }

    /// The last `lines` of a daemon's log (`containerd`, `kubelet`, `kube-proxy`).
    pub fn log_tail(&self, daemon: &str, lines: usize) -> String {
        crate::process::tail(&self.dir.join(format!("{daemon}.log")), lines)
    }

    /// Runs `command` in the node's network namespace and in the node's `system` cgroup.
    fn spawn_in_node(&self, name: &str, command: Command) -> Result<ManagedProcess> {
        // A shell joins the cgroups, then execs nsenter, which execs the daemon: every child it ever forks
        // (containerd's shims and the containers) starts inside the node's cgroup tree.
        let mut script = String::new();
        for hierarchy in CGROUP_HIERARCHIES {
            script.push_str(&format!("echo $$ > {CGROUP_MOUNT}/{hierarchy}/{}/system/cgroup.procs && ", self.cgroup));
        }
        script.push_str("exec \"$@\"");
        let mut wrapped = Command::new("sh");
        wrapped
            .arg("-c")
            .arg(script)
            .arg("sh")
            .arg("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg(command.get_program())
            .args(command.get_args());
        // containerd finds its shim and runc on PATH.
        let shim_dir = K8sBinary::ContainerdShim.path().parent().map(Path::to_path_buf).unwrap_or_default();
        let path = std::env::var("PATH").unwrap_or_default();
        wrapped.env("PATH", format!("{}:{path}:/usr/sbin:/sbin", shim_dir.display()));
        ManagedProcess::spawn(&format!("{name} on {}", self.name), wrapped, &self.dir.join(format!("{name}.log")))
    }

    fn make_cgroups(&self) -> Result<()> {
        for hierarchy in CGROUP_HIERARCHIES {
            let base = Path::new(CGROUP_MOUNT).join(hierarchy);
            if !base.is_dir() {
                continue;
            }
            for dir in [base.join(&self.cgroup), base.join(&self.cgroup).join("system")] {
                std::fs::create_dir_all(&dir).context(|| format!("creating cgroup {}", dir.display()))?;
                if *hierarchy == "cpuset" {
                    // A new cpuset has no CPUs or memory nodes: nothing could run in it.
                    for file in ["cpuset.cpus", "cpuset.mems"] {
                        let parent = dir.parent().map(|p| p.join(file)).unwrap_or_default();
                        let value =
                            std::fs::read_to_string(&parent).context(|| format!("reading {}", parent.display()))?;
                        std::fs::write(dir.join(file), value.trim())
                            .context(|| format!("writing {}", dir.join(file).display()))?;
                    }
                }
            }
        }
        Ok(())
    }

    fn write_cni_config(&self, index: usize) -> Result<()> {
        let (v4, v6) = netlab::pod_cidrs(index);
        let config = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": self.cgroup,
            "plugins": [{
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "dataDir": self.dir.join("cni").join("ipam"),
                    "ranges": [[{"subnet": v4}], [{"subnet": v6}]],
                    "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
                },
            }],
        });
        let path = self.dir.join("cni").join("net.d").join("10-ferrolb.conflist");
        std::fs::write(&path, config.to_string()).context(|| format!("writing {}", path.display()))
    }

    fn containerd_config(&self, sandbox_image: &str) -> String {
        let dir = self.dir.display();
        format!(
            r#"version = 3
root = "{dir}/containerd/root"
state = "{dir}/containerd/state"

[grpc]
  address = "{dir}/containerd.sock"

[ttrpc]
  address = "{dir}/containerd.sock.ttrpc"

# NRI's socket is a fixed host path: the nodes would fight over it.
[plugins."io.containerd.nri.v1.nri"]
  disable = true

[plugins."io.containerd.internal.v1.opt"]
  path = "{dir}/containerd/opt"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{sandbox_image}"

[plugins."io.containerd.cri.v1.runtime"]
  enable_selinux = false
  disable_apparmor = true
  # root here lacks CAP_SYS_RESOURCE: without this every sandbox fails to start.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{CNI_BIN_DIR}"]
    conf_dir = "{dir}/cni/net.d"
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        SystemdCgroup = false
        Root = "{dir}/runc"
"#
        )
    }

    fn kubelet_config(&self, plane: &ControlPlane, host: &LabHost) -> String {
        let config = serde_json::json!({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            // This host has cgroup v1; kubelet 1.35+ refuses it unless told.
            "failCgroupV1": false,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": format!("/{}", self.cgroup),
            "failSwapOn": false,
            "address": host.ipv4,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "containerRuntimeEndpoint": format!("unix://{}", self.socket().display()),
            "podLogsDir": self.dir.join("pod-logs"),
            "volumePluginDir": self.dir.join("volume-plugins"),
            "makeIPTablesUtilChains": false,
            "authentication": {
                "anonymous": {"enabled": false},
                "webhook": {"enabled": true},
                "x509": {"clientCAFile": plane.ca_path()},
            },
            "authorization": {"mode": "Webhook"},
            "clusterDomain": "cluster.local",
            // The images cannot be pulled again: never collect them, and never evict for a nearly full disk
            // of a developer's machine.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "serializeImagePulls": false,
            // Status changes reach the API server quickly (a test waits on them).
            "nodeStatusUpdateFrequency": "2s",
            "syncFrequency": "10s",
        });
        config.to_string()
    }

    fn kube_proxy_config(&self, plane: &ControlPlane) -> String {
        let config = serde_json::json!({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "nftables",
            "clientConnection": {"kubeconfig": plane.kubeconfig_path()},
            "hostnameOverride": self.name,
            "clusterCIDR": format!("{},{}", netlab::POD_NETWORK_V4, netlab::POD_NETWORK_V6),
            // The conntrack table is the host's business, not a namespace's.
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
            "metricsBindAddress": "127.0.0.1:10249",
            "healthzBindAddress": "127.0.0.1:10256",
        });
        config.to_string()
    }

    fn wait_for_containerd(&mut self) -> Result<()> {
        let started = Instant::now();
        while started.elapsed() < START_TIMEOUT {
            if let Some(name) = self.exited_daemon() {
                return Err(Error::NotReady {
                    what: format!("{name} on {}", self.name),
                    seconds: started.elapsed().as_secs(),
                    detail: format!("it exited:\n{}", self.log_tail(name, 30)),
                });
            }
            if self.socket().exists() && self.ctr(&["version"]).is_ok_and(|o| o.status.success()) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(Error::NotReady {
            what: format!("containerd on {}", self.name),
            seconds: START_TIMEOUT.as_secs(),
            detail: self.log_tail("containerd", 30),
        })
    }
}

impl Drop for NodeRuntime {
    fn drop(&mut self) {
        self.kube_proxy = None;
        self.kubelet = None;
        self.containerd = None;
        remove_node_leftovers(&self.cgroup, Some(&self.dir));
    }
}

/// Kills every process in cgroup root `cgroup` (containerd, shims, containers, wherever their namespaces
/// are), unmounts everything under `dir`, removes the cgroups and `dir`. Safe to call for a node that is
/// already gone.
pub fn remove_node_leftovers(cgroup: &str, dir: Option<&Path>) {
    kill_cgroup_tree(cgroup);
    let mut sandboxes = Vec::new();
    if let Some(dir) = dir {
        sandboxes = sandbox_ids(dir);
        unmount_under(dir);
        let _ = std::fs::remove_dir_all(dir);
    }
    remove_cgroup_tree(cgroup);
    remove_cni_results(cgroup, &sandboxes);
}

/// The pod sandboxes containerd's CRI plugin made on a node (directories named by sandbox id).
fn sandbox_ids(dir: &Path) -> Vec<String> {
    let mut ids = Vec::new();
    for base in ["root", "state"] {
        let sandboxes = dir.join("containerd").join(base).join("io.containerd.grpc.v1.cri").join("sandboxes");
        if let Ok(entries) = std::fs::read_dir(sandboxes) {
            ids.extend(entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()));
        }
    }
    ids
}

/// Node cgroup roots on this machine (in the `pids` hierarchy; made in all of them together).
pub fn node_cgroups() -> Vec<String> {
    std::fs::read_dir(Path::new(CGROUP_MOUNT).join("pids"))
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn kill_cgroup_tree(cgroup: &str) {
    let root = Path::new(CGROUP_MOUNT).join("pids").join(cgroup);
    if !root.is_dir() {
        return;
    }
    // Processes may fork while being killed: freeze would be cleaner, but a few passes are enough here.
    for _ in 0..50 {
        let pids = pids_under(&root);
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn pids_under(dir: &Path) -> Vec<i32> {
    let mut pids: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.path().is_dir() {
                pids.extend(pids_under(&entry.path()));
            }
        }
    }
    pids
}

fn remove_cgroup_tree(cgroup: &str) {
    for hierarchy in CGROUP_HIERARCHIES {
        remove_cgroup_dir(&Path::new(CGROUP_MOUNT).join(hierarchy).join(cgroup));
    }
}

/// A cgroup directory is removed with rmdir (its files are virtual), children first.
fn remove_cgroup_dir(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.path().is_dir() {
                remove_cgroup_dir(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Lazily unmounts every mount point under `dir`, deepest first.
pub fn unmount_under(dir: &Path) {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else { return };
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    for point in points {
        let _ = nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mount_path(field: &str) -> PathBuf {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            match u8::from_str_radix(&code, 8) {
                Ok(byte) => out.push(char::from(byte)),
                Err(_) => {
                    out.push('\\');
                    out.push_str(&code);
                }
            }
        } else {
            out.push(c);
        }
    }
    PathBuf::from(out)
}

/// libcni caches each attachment in `/var/lib/cni/results/<network>-<sandbox>-<interface>` whatever the
/// configuration says: the node's own network (named after its cgroup) and containerd's `cni-loopback`, whose
/// entries are found by the node's sandbox ids.
fn remove_cni_results(network: &str, sandboxes: &[String]) {
    let dir = Path::new("/var/lib/cni/results");
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = name.starts_with(&format!("{network}-"))
            || (name.starts_with("cni-loopback-") && sandboxes.iter().any(|id| name.contains(&format!("-{id}-"))));
        if ours {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// What every kubelet and containerd writes to fixed host paths whatever they are configured with: links to
/// pod logs in `/var/log/containers` (removed when they point nowhere), and unix sockets in
/// `/run/containerd/s` and `/var/lib/kubelet/device-plugins` nobody listens on any more. Returns what it
/// removed.
pub fn sweep_shared_host_paths() -> Vec<String> {
    let mut removed = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/var/log/containers") {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_symlink() && !path.exists() && std::fs::remove_file(&path).is_ok() {
                removed.push(path.display().to_string());
            }
        }
    }
    for dir in ["/run/containerd/s", "/var/lib/kubelet/device-plugins"] {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let is_socket = entry.file_type().is_ok_and(|t| std::os::unix::fs::FileTypeExt::is_socket(&t));
            if is_socket
                && std::os::unix::net::UnixStream::connect(&path).is_err()
                && std::fs::remove_file(&path).is_ok()
            {
                removed.push(path.display().to_string());
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_mount_path("/a\\040b/c"), PathBuf::from("/a b/c"));
        assert_eq!(unescape_mount_path("/plain"), PathBuf::from("/plain"));
        assert_eq!(unescape_mount_path("/bad\\9x"), PathBuf::from("/bad\\9x"));
    }
}
