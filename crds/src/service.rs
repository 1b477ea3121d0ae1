//! What ferrolb reads back from a Service it handles.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{ObjectReference, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// The Service status condition the controller owns: where the Service's addresses came from, or why it has
/// none.
pub const ALLOCATED_CONDITION: &str = "ferrolb.io/IPAllocated";

/// The Service status condition that records which IPAddressPool the Service's addresses were allocated
/// from; its message is the pool's name, exactly. Written by the controller next to
/// [`ALLOCATED_CONDITION`], it outlives edits and deletion of the pool, so a restarted controller restores
/// each address to its own pool and the speakers keep announcing an address its pool no longer contains
/// through the advertisements of that pool.
pub const POOL_CONDITION: &str = "ferrolb.io/AddressPool";
/// The reason of [`POOL_CONDITION`].
pub const POOL_CONDITION_REASON: &str = "AllocatedFrom";

/// The IPs in a Service's `status.loadBalancer.ingress` (entries without an IP, or with an unparsable one,
/// are skipped), IPv4 first and then by address (`IpAddr` orders every IPv4 address before any IPv6 one).
pub fn ingress_ips(service: &Service) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect();
    ips.sort();
    ips
}

/// The pool the Service's addresses were allocated from, as its [`POOL_CONDITION`] records it.
pub fn origin_pool(service: &Service) -> Option<String> {
    origin_pool_in(condition(service, POOL_CONDITION))
}

/// The pool [`POOL_CONDITION`] names, if it is true and names one (for whoever keeps the condition apart
/// from its Service).
pub fn origin_pool_in(pool_condition: Option<&Condition>) -> Option<String> {
    pool_condition.filter(|c| c.status == "True" && !c.message.is_empty()).map(|c| c.message.clone())
}

/// A Service as an Event names the object it is about.
pub fn reference(namespace: &str, name: &str, uid: Option<String>) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Service".into()),
        namespace: Some(namespace.into()),
        name: Some(name.into()),
        uid,
        ..Default::default()
    }
}

/// The Service's status condition of this type, if any.
pub fn condition<'a>(service: &'a Service, type_: &str) -> Option<&'a Condition> {
    service.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ipv4_comes_first_and_hostnames_are_skipped() {
        let service: Service = serde_json::from_value(serde_json::json!({
            "status": {"loadBalancer": {"ingress": [{"ip": "2001:db8::200"}, {"hostname": "x"}, {"ip": "bad"}, {"ip": "192.0.2.200"}]}}
        }))
        .unwrap();
        let ips: Vec<IpAddr> = vec!["192.0.2.200".parse().unwrap(), "2001:db8::200".parse().unwrap()];
        assert_eq!(ingress_ips(&service), ips);
        assert!(ingress_ips(&Service::default()).is_empty());
    }

    #[test]
    fn origin_pool_is_the_pool_condition_message() {
        let with = |status: &str, message: &str| -> Service {
            serde_json::from_value(serde_json::json!({"status": {"conditions": [
                {"type": "ferrolb.io/IPAllocated", "status": "True", "reason": crate::reason::ALLOCATED, "message": "x", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                {"type": POOL_CONDITION, "status": status, "reason": POOL_CONDITION_REASON, "message": message, "lastTransitionTime": "2026-01-01T00:00:00Z"},
            ]}}))
            .unwrap()
        };
        assert_eq!(origin_pool(&with("True", "demo")).as_deref(), Some("demo"));
        assert_eq!(origin_pool(&with("False", "demo")), None);
        assert_eq!(origin_pool(&with("True", "")), None);
        assert_eq!(origin_pool(&Service::default()), None);
    }
}
