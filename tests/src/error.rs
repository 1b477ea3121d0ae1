use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{binary} is not built at {path}: run `cargo xtask deps` for Kubernetes binaries, `cargo build --workspace --bins` for ours (`cargo xtask test` does both)"
    )]
    MissingBinary { binary: String, path: PathBuf },
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error("{what} did not become ready within {seconds} s: {detail}")]
    NotReady { what: String, seconds: u64, detail: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("generating test certificates: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("{0}")]
    Lab(String),
    #[error("this needs root (network namespaces, raw sockets): run the suite as root")]
    NotRoot,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds a human context to an I/O error.
pub trait IoContext<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io { context: context(), source })
    }
}
