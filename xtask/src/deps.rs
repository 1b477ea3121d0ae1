//! Installs everything the suite and the lab need on a fresh machine: Debian packages and the Kubernetes
//! binaries. Each part is skipped when already present, so a warm run costs nothing.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{k8s_bins, run};

/// Commands the suite uses (or, as an absolute path, a file), and the Debian package that provides each.
const DEBIAN_TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("sysctl", "procps"),
    ("curl", "curl"),
    ("arping", "arping"),
    ("ndisc6", "ndisc6"),
    ("tcpdump", "tcpdump"),
    ("nft", "nftables"),
    ("keepalived", "keepalived"),
    // BGP mode: the routing engine beside each node's speaker, and the lab's upstream router.
    ("/usr/lib/frr/bgpd", "frr"),
    ("bird", "bird2"),
    // The real-node lab: the OCI runtime under containerd, the CNI plugins (kube-proxy's nftables mode uses
    // nft too), and the tool that builds OCI images without Docker.
    ("runc", "runc"),
    ("/usr/lib/cni/bridge", "containernetworking-plugins"),
    ("umoci", "umoci"),
];

pub fn install_all() -> Result<()> {
    install_debian_packages()?;
    k8s_bins::ensure_all()
}

fn install_debian_packages() -> Result<()> {
    // Debian keeps several of these in /usr/sbin, which a non-login PATH may lack.
    let sbin_aware = |tool: &str| {
        if tool.starts_with('/') {
            return std::path::Path::new(tool).exists();
        }
        run::on_path(tool)
            || ["/usr/sbin", "/sbin", "/usr/bin"].iter().any(|d| std::path::Path::new(d).join(tool).exists())
    };
    let missing: Vec<&str> = DEBIAN_TOOLS.iter().filter(|(tool, _)| !sbin_aware(tool)).map(|(_, pkg)| *pkg).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !run::on_path("apt-get") {
        bail!("these Debian packages are needed and apt-get is not available: {}", missing.join(" "));
    }
    if !nix::unistd::Uid::effective().is_root() {
        bail!("these Debian packages are needed; install them as root: apt-get install {}", missing.join(" "));
    }
    let mut update = Command::new("apt-get");
    update.args(["update", "-qq"]);
    run::step("apt-get update", update)?;
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive");
    run::step(&format!("apt-get install {}", missing.join(" ")), install)
}
