//! Where the Kubernetes binaries the tests run against live, and at which versions.
//!
//! This file has no dependencies beyond `std` on purpose: `xtask` (which builds the binaries) includes it with
//! `#[path]`, so the versions and cache layout are written down exactly once and `xtask` stays quick to compile.

use std::path::{Path, PathBuf};

/// The Kubernetes release the suite runs against: the newest minor k8s-openapi 0.29 supports (feature `v1_37`).
pub const KUBERNETES_VERSION: &str = "v1.37.2";
/// The staging modules (`k8s.io/api`, `k8s.io/client-go`, ...) are tagged `v0.<minor>.<patch>`.
pub const KUBERNETES_STAGING_VERSION: &str = "v0.37.2";
/// etcd release matching the one Kubernetes 1.37 is tested with (its go.mod requires the 3.7 line).
pub const ETCD_VERSION: &str = "v3.7.3";
pub const HELM_VERSION: &str = "v3.22.0";
/// containerd for the lab's real nodes: the 2.x line kubelet 1.37 is tested with (2.4 ships CRI config v3).
pub const CONTAINERD_VERSION: &str = "v2.4.2";

/// A binary the suite needs, built from the Go module proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum K8sBinary {
    KubeApiserver,
    Kubectl,
    Etcd,
    Helm,
    /// The node components of a real-kubelet lab, and the control-plane controllers it needs.
    Kubelet,
    KubeControllerManager,
    KubeScheduler,
    KubeProxy,
    Containerd,
    ContainerdShim,
    Ctr,
}

impl K8sBinary {
    pub const ALL: [K8sBinary; 11] = [
        Self::Etcd,
        Self::KubeApiserver,
        Self::Kubectl,
        Self::Helm,
        Self::Kubelet,
        Self::KubeControllerManager,
        Self::KubeScheduler,
        Self::KubeProxy,
        Self::Containerd,
        Self::ContainerdShim,
        Self::Ctr,
    ];

    pub fn file_name(self) -> &'static str {
        match self {
            Self::KubeApiserver => "kube-apiserver",
            Self::Kubectl => "kubectl",
            Self::Etcd => "etcd",
            Self::Helm => "helm",
            Self::Kubelet => "kubelet",
            Self::KubeControllerManager => "kube-controller-manager",
            Self::KubeScheduler => "kube-scheduler",
            Self::KubeProxy => "kube-proxy",
            Self::Containerd => "containerd",
            Self::ContainerdShim => "containerd-shim-runc-v2",
            Self::Ctr => "ctr",
        }
    }

    /// The version the binary is built at; it is part of the cache path so a version bump rebuilds.
    pub fn version(self) -> &'static str {
        match self {
            Self::KubeApiserver
            | Self::Kubectl
            | Self::Kubelet
            | Self::KubeControllerManager
            | Self::KubeScheduler
            | Self::KubeProxy => KUBERNETES_VERSION,
            Self::Etcd => ETCD_VERSION,
            Self::Helm => HELM_VERSION,
            Self::Containerd | Self::ContainerdShim | Self::Ctr => CONTAINERD_VERSION,
        }
    }

    /// The Go package the binary is built from.
    pub fn package(self) -> &'static str {
        match self {
            Self::KubeApiserver => "k8s.io/kubernetes/cmd/kube-apiserver",
            Self::Kubectl => "k8s.io/kubernetes/cmd/kubectl",
            Self::Kubelet => "k8s.io/kubernetes/cmd/kubelet",
            Self::KubeControllerManager => "k8s.io/kubernetes/cmd/kube-controller-manager",
            Self::KubeScheduler => "k8s.io/kubernetes/cmd/kube-scheduler",
            Self::KubeProxy => "k8s.io/kubernetes/cmd/kube-proxy",
            Self::Etcd => "go.etcd.io/etcd/server/v3/etcdmain",
            Self::Helm => "helm.sh/helm/v3/cmd/helm",
            Self::Containerd => "github.com/containerd/containerd/v2/cmd/containerd",
            Self::ContainerdShim => "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2",
            Self::Ctr => "github.com/containerd/containerd/v2/cmd/ctr",
        }
    }

    pub fn path(self) -> PathBuf {
        cache_root().join("k8s").join(format!("{}-{}", self.file_name(), self.version())).join(self.file_name())
    }
}

/// `$FERROLB_CACHE`, else `$XDG_CACHE_HOME/ferrolb`, else `~/.cache/ferrolb`: outside the clone, so a fresh
/// clone (as CI makes) reuses binaries and compiled dependencies.
pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("FERROLB_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("ferrolb");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache").join("ferrolb")
}

/// Cargo's target directory for the suite, shared by every clone on the machine.
pub fn cargo_target_dir() -> PathBuf {
    cache_root().join("target")
}

/// An image `cargo xtask image` builds: `<images dir>/<archive>.tar`, named `<repository>:<tag>` inside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageName {
    pub archive: &'static str,
    pub repository: &'static str,
}

impl ImageName {
    pub fn reference(self, tag: &str) -> String {
        format!("{}:{tag}", self.repository)
    }
}

/// Controller, speaker and CLI (the Dockerfile's default target).
pub const FERROLB_IMAGE: ImageName = ImageName { archive: "ferrolb", repository: "ghcr.io/ferrolb/ferrolb" };
/// The speaker with keepalived (the Dockerfile's `keepalived` target).
pub const KEEPALIVED_IMAGE: ImageName =
    ImageName { archive: "ferrolb-keepalived", repository: "ghcr.io/ferrolb/ferrolb-keepalived" };
/// BGP mode's FRR container: `ferrolb-frr` and FRR's daemons (the Dockerfile's `frr` target).
pub const FRR_IMAGE: ImageName = ImageName { archive: "ferrolb-frr", repository: "ghcr.io/ferrolb/ferrolb-frr" };
/// The lab's pod sandbox.
pub const PAUSE_IMAGE: ImageName = ImageName { archive: "pause", repository: "ferrolb.local/lab/pause" };
/// The lab's demo web server.
pub const DEMO_WEB_IMAGE: ImageName = ImageName { archive: "demo-web", repository: "ferrolb.local/lab/demo-web" };

/// Where `cargo xtask image` puts the archives.
pub fn images_dir() -> PathBuf {
    cargo_target_dir().join("images")
}

/// The chart's appVersion: the default tag of its images.
pub fn chart_app_version(repo: &Path) -> std::io::Result<String> {
    let path = repo.join("charts").join("ferrolb").join("Chart.yaml");
    std::fs::read_to_string(&path)?
        .lines()
        .find_map(|line| line.strip_prefix("appVersion:"))
        .map(|v| v.trim().trim_matches('"').to_string())
        .ok_or_else(|| std::io::Error::other(format!("{} has no appVersion", path.display())))
}

/// The MetalLB release `bench compare` runs against, built from its Go module (`cargo xtask bench compare`).
pub const METALLB_MODULE: &str = "go.universe.tf/metallb";
pub const METALLB_VERSION: &str = "v0.15.3";

/// MetalLB's build: `bin/controller`, `bin/speaker`, and `crds/` (its module's `config/crd/bases`, which
/// carry no conversion webhook: the benchmark runs MetalLB with its webhook off).
pub fn metallb_dir() -> PathBuf {
    cache_root().join(format!("metallb-{METALLB_VERSION}"))
}
