//! What every ferrolb binary does the same way: Prometheus text on `/metrics`, `/healthz` and `/readyz`,
//! text or JSON logs, and a graceful stop on SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use prometheus_client::registry::Registry;

pub mod access;
pub mod events;
pub mod process;

pub use access::{MetricsAccess, MetricsAuth, Verdict};

/// Readiness, flipped by the binary when it is ready to do its job (`/readyz` answers 503 until then).
#[derive(Clone, Default)]
pub struct Health {
    pub ready: Arc<AtomicBool>,
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
}

/// What a binary has once [`connect_and_serve_metrics`] returns.
pub struct Started {
    pub client: kube::Client,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub bound: SocketAddr,
    /// The readiness flag `/readyz` reports.
    pub health: Health,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("connecting to the Kubernetes API (KUBECONFIG or in-cluster config)")]
    Connect(#[source] kube::Error),
    #[error("serving metrics on {address}")]
    Serve {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// How every binary starts: a client for the API (from KUBECONFIG or the in-cluster config), then `/metrics`
/// (what `register` puts in a fresh registry, readable as `auth` says, checked with that client), `/healthz`
/// and `/readyz`, served until the process ends.
pub async fn connect_and_serve_metrics(
    address: SocketAddr,
    auth: MetricsAuth,
    register: impl FnOnce(&mut Registry),
) -> Result<Started, StartError> {
    let client = kube::Client::try_default().await.map_err(StartError::Connect)?;
    let registry = registry_with(register);
    let health = Health::default();
    let access = MetricsAccess::new(auth, &client);
    let bound = serve(address, registry, access, health.clone())
        .await
        .map_err(|source| StartError::Serve { address, source })?;
    Ok(Started { client, bound, health })
}

/// A registry with `ferrolb_build_info{version}` (the one version of the release, see CHANGELOG.md) and what
/// `register` adds.
fn registry_with(register: impl FnOnce(&mut Registry)) -> Registry {
    let mut registry = Registry::default();
    let build = prometheus_client::metrics::info::Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]);
    registry.register("ferrolb_build", "The ferrolb release this binary is", build);
    registry.register_collector(Box::new(process::ProcessCollector));
    register(&mut registry);
    registry
}

/// Serves `/metrics`, `/healthz` and `/readyz` until the process ends. Returns the bound address.
pub async fn serve(
    address: SocketAddr,
    registry: Registry,
    access: MetricsAccess,
    health: Health,
) -> std::io::Result<SocketAddr> {
    let registry = Arc::new(registry);
    let app = Router::new()
        .route(
            "/metrics",
            get(move |headers: HeaderMap| {
                let (registry, access) = (registry.clone(), access.clone());
                async move {
                    if let MetricsAccess::Kubernetes(authorizer) = &access {
                        let authorization = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
                        match authorizer.check(authorization).await {
                            Ok(Verdict::Allowed) => {}
                            Ok(Verdict::Unauthenticated(why)) => return (StatusCode::UNAUTHORIZED, why),
                            Ok(Verdict::Forbidden(why)) => return (StatusCode::FORBIDDEN, why),
                            Err(e) => {
                                // The detail (RBAC messages, names) is for the log, not for whoever asked.
                                tracing::warn!(error = %e, "could not check a metrics scrape's token");
                                let why = "the token could not be checked with the API server; see the log";
                                return (StatusCode::SERVICE_UNAVAILABLE, why.to_string());
                            }
                        }
                    }
                    let mut text = String::new();
                    match prometheus_client::encoding::text::encode(&mut text, &registry) {
                        Ok(()) => (StatusCode::OK, text),
                        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                    }
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = health.ready.load(Ordering::Relaxed);
                async move { if ready { (StatusCode::OK, "ok") } else { (StatusCode::SERVICE_UNAVAILABLE, "syncing") } }
            }),
        );
    let listener = tokio::net::TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok(bound)
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logs to stderr; `RUST_LOG` filters (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Runs a binary's main future to completion on `runtime`, logging the error it ends with (the whole chain).
pub fn run_logged<T, E: std::fmt::Display>(
    component: &str,
    runtime: tokio::runtime::Runtime,
    main: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let result = runtime.block_on(main);
    if let Err(e) = &result {
        tracing::error!(error = format!("{e:#}"), "{component} stopped");
    }
    result
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            }
        }
        _ => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_binary_reports_its_release() {
        let registry = super::registry_with(|_| {});
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap_or_default();
        let expected = format!("ferrolb_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
        assert!(text.contains(&expected), "{text}");
        for process in ["process_resident_memory_bytes ", "process_cpu_seconds_total ", "process_open_fds "] {
            assert!(text.contains(process), "{process} missing: {text}");
        }
    }
}
