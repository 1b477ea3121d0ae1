//! ferrolb's test platform: a real kube-apiserver + etcd, network namespaces that behave like a LAN of nodes,
//! and our binaries run as processes against them. The e2e tests in `tests/` and the `ferrolb-lab` binary
//! behind `cargo xtask lab` are both built on it.
//!
//! Everything it creates carries a name it can find again (`flb-<owner pid>-...` or the lab's prefix), is removed
//! on drop, and is swept on the next start when a run was killed before it could clean up.

pub mod bgp_net;
pub mod control_plane;
pub mod error;
pub mod fuzz;
pub mod kubelet_lab;
pub mod l2lab;
pub mod lab_supervisor;
pub mod metallb;
pub mod names;
pub mod netlab;
pub mod netns;
pub mod node_runtime;
pub mod objects;
pub mod process;
pub mod sweep;
pub mod toolchain;

pub use control_plane::ControlPlane;
pub use error::{Error, Result};
pub use netlab::{Lab, LabSpec};
pub use process::ManagedProcess;
