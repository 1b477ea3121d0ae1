//! The plan's inputs as tests build them (shared by the plan's and BGP mode's tests).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use ferrolb_crds::l2announcement::ServiceReference;

use crate::inventory::Link;
use crate::plan::{NodeInfo, ServiceInfo};

pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A schedulable, reachable Node labelled with its hostname.
pub fn node(name: &str) -> NodeInfo {
    NodeInfo {
        name: name.into(),
        labels: labels(&[("kubernetes.io/hostname", name)]),
        network_unavailable: false,
        unschedulable: false,
    }
}

/// A Service of `default` labelled `app=NAME`, with these VIPs and ready endpoints on these nodes.
pub fn service(name: &str, vips: &[&str], endpoints: &[&str]) -> ServiceInfo {
    ServiceInfo {
        service: std::sync::Arc::new(ServiceReference { namespace: "default".into(), name: name.into() }),
        labels: labels(&[("app", name)]),
        vips: vips.iter().map(|v| v.parse().unwrap()).collect(),
        origin_pool: None,
        traffic_policy_local: false,
        ready_endpoint_nodes: endpoints.iter().collect(),
    }
}

/// An up veth interface with these addresses.
pub fn link(name: &str, addresses: &[&str]) -> Link {
    Link {
        name: name.into(),
        index: 2,
        mac: Some(crate::mac::Mac([2, 0, 0, 0, 0, 1])),
        up: true,
        broadcast: true,
        loopback: false,
        kind: Some("veth".into()),
        addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
    }
}
