//! Applies the engine's outputs to the API server: Service status (server-side apply on `/status`, owning
//! only ingress and ferrolb's condition), pool status, and Events. Writes for one object are coalesced — only
//! the newest is sent, never two at once — while different objects are written concurrently.
//!
//! A failed write is logged and counted; the engine's periodic resync computes it again, so nothing is lost.

use std::collections::{HashMap, HashSet, VecDeque};

use ferrolb_crds::IPAddressPool;
use ferrolb_crds::pool::IPAddressPoolStatus;
use ferrolb_telemetry::events::{EventSource, Notice};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, Patch, PatchParams};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::engine::{EventOut, EventType, Output, StatusOut};
use crate::ipam::ServiceKey;
use crate::metrics::Metrics;

/// The server-side-apply field manager of the instance handling `class`. Each class gets its own, so that
/// giving up our fields never removes what another ferrolb instance wrote; replicas of one instance share it.
pub fn field_manager(class: &str) -> String {
    if class == ferrolb_crds::DEFAULT_LOAD_BALANCER_CLASS {
        "ferrolb-controller".to_string()
    } else {
        format!("ferrolb-controller/{class}")
    }
}
/// The controller's Events' `reportingController` (its replica is the `reportingInstance`).
pub const REPORTING_CONTROLLER: &str = "ferrolb-controller";

/// Writes in flight at once: enough to keep a local API server busy, few enough not to trip its limits.
const CONCURRENT_WRITES: usize = 32;

#[derive(Debug, Clone)]
pub enum Write {
    Output(Output),
    PoolStatus(String, IPAddressPoolStatus),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Slot {
    Service(ServiceKey),
    Pool(String),
    Event(u64),
}

/// Runs until `writes` closes, then finishes what is in flight.
pub async fn run(
    client: kube::Client,
    events: EventSource,
    field_manager: String,
    metrics: Metrics,
    mut writes: mpsc::UnboundedReceiver<Write>,
) {
    let mut pending: HashMap<Slot, Write> = HashMap::new();
    let mut order: VecDeque<Slot> = VecDeque::new();
    let mut in_flight: HashSet<Slot> = HashSet::new();
    let mut tasks: JoinSet<Slot> = JoinSet::new();
    let mut event_counter = 0u64;
    let mut open = true;
    loop {
        // Start what may start: at most one write per object in flight, at most CONCURRENT_WRITES in all.
        let mut waiting = VecDeque::new();
        while tasks.len() < CONCURRENT_WRITES {
            let Some(slot) = order.pop_front() else { break };
            if in_flight.contains(&slot) {
                waiting.push_back(slot);
                continue;
            }
            let Some(write) = pending.remove(&slot) else { continue };
            in_flight.insert(slot.clone());
            let (client, events, metrics, manager) =
                (client.clone(), events.clone(), metrics.clone(), field_manager.clone());
            tasks.spawn(async move {
                apply(&client, &events, &manager, &metrics, write).await;
                slot
            });
        }
        order.extend(waiting);
        if !open && tasks.is_empty() && order.is_empty() {
            return;
        }
        tokio::select! {
            write = writes.recv(), if open => match write {
                Some(write) => {
                    let slot = match &write {
                        Write::Output(Output::Status(s)) => Slot::Service(s.key.clone()),
                        Write::Output(Output::Event(_)) => {
                            event_counter += 1;
                            Slot::Event(event_counter)
                        }
                        Write::PoolStatus(name, _) => Slot::Pool(name.clone()),
                    };
                    // A newer write for the same object replaces the queued one.
                    if pending.insert(slot.clone(), write).is_none() {
                        order.push_back(slot);
                    }
                }
                None => open = false,
            },
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Ok(slot) = done {
                    in_flight.remove(&slot);
                }
            }
        }
    }
}

async fn apply(client: &kube::Client, events: &EventSource, manager: &str, metrics: &Metrics, write: Write) {
    match write {
        Write::Output(Output::Status(status)) => {
            let key = status.key.clone();
            match write_service_status(client, manager, &status).await {
                Ok(()) => {
                    metrics.status_writes.inc();
                    tracing::debug!(service = %key, ingress = ?status.ingress, "status written");
                }
                Err(e) => {
                    metrics
                        .write_errors
                        .get_or_create(&crate::metrics::KindLabel { kind: crate::metrics::WRITE_SERVICE_STATUS.into() })
                        .inc();
                    tracing::warn!(service = %key, error = %e, "could not write Service status; the next resync retries");
                }
            }
        }
        Write::Output(Output::Event(event)) => publish(events, metrics, event).await,
        Write::PoolStatus(name, status) => {
            let pools: Api<IPAddressPool> = Api::all(client.clone());
            let patch =
                serde_json::json!({"apiVersion": ferrolb_crds::API_VERSION, "kind": "IPAddressPool", "status": status});
            if let Err(e) = pools.patch_status(&name, &PatchParams::apply(manager).force(), &Patch::Apply(&patch)).await
            {
                metrics
                    .write_errors
                    .get_or_create(&crate::metrics::KindLabel { kind: crate::metrics::WRITE_POOL_STATUS.into() })
                    .inc();
                tracing::warn!(pool = %name, error = %e, "could not write pool status");
            }
        }
    }
}

async fn write_service_status(client: &kube::Client, manager: &str, status: &StatusOut) -> Result<(), kube::Error> {
    let services: Api<Service> = Api::namespaced(client.clone(), &status.key.namespace);
    let body = match &status.condition {
        // Applying an empty status gives up ownership of what ferrolb wrote, which removes it.
        None if status.ingress.is_empty() => serde_json::json!({}),
        condition => {
            let ingress: Vec<serde_json::Value> =
                status.ingress.iter().map(|ip| serde_json::json!({"ip": ip.to_string(), "ipMode": "VIP"})).collect();
            let mut body = serde_json::json!({"loadBalancer": {"ingress": ingress}});
            // Conditions are a map keyed by type under server-side apply: a condition left out is given up.
            let conditions: Vec<&Condition> = condition.iter().chain(status.pool_condition.iter()).collect();
            if !conditions.is_empty() {
                body["conditions"] = serde_json::json!(conditions);
            }
            body
        }
    };
    let patch = serde_json::json!({"apiVersion": "v1", "kind": "Service", "status": body});
    services.patch_status(&status.key.name, &PatchParams::apply(manager).force(), &Patch::Apply(&patch)).await?;
    Ok(())
}

async fn publish(events: &EventSource, metrics: &Metrics, event: EventOut) {
    let notice = Notice {
        regarding: event.regarding,
        warning: event.type_ == EventType::Warning,
        reason: event.reason,
        action: "AllocateIP",
        note: event.note,
    };
    let object = notice.object();
    if notice.warning {
        tracing::warn!(object = %object, reason = notice.reason, "{}", notice.note);
    } else {
        tracing::info!(object = %object, reason = notice.reason, "{}", notice.note);
    }
    if let Err(e) = events.publish(notice).await {
        metrics
            .write_errors
            .get_or_create(&crate::metrics::KindLabel { kind: crate::metrics::WRITE_EVENT.into() })
            .inc();
        tracing::warn!(object = %object, error = %e, "could not publish Event");
    }
}
