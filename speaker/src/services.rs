//! The Services the plan reads, joined with the nodes of their ready endpoints as the watches deliver them,
//! each behind `Arc`.
//!
//! A plan step reads every Service; joining them with their EndpointSlices at every step, and cloning each
//! into the plan's world, cost a fifth of the speaker's CPU with thousands of Services and a copy of all of
//! them in memory. Here a Service is joined when it or one of its slices changes, and a step takes the whole
//! set by cloning pointers.
//!
//! Pure: fed by the Service and EndpointSlice watches ([`WatchIndex`]), no I/O.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ferrolb_watch::WatchIndex;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;

use crate::cluster::{ClassFilter, key_of, ready_nodes, service_info};
use crate::plan::{NodeName, NodeNames, NodeSet, ServiceInfo, Sharing};

/// The label naming an EndpointSlice's Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// An EndpointSlice as the index keeps it.
struct Slice {
    /// Its Service's key.
    service: Arc<str>,
    /// The nodes of its ready endpoints.
    ready_nodes: Box<[NodeName]>,
}

pub struct ServiceIndex {
    classes: ClassFilter,
    /// Services of ours with an address, by `namespace/name`: the plan's view (ready endpoints joined in)
    /// and the uid, for Events.
    services: HashMap<String, (Arc<ServiceInfo>, Option<String>)>,
    /// EndpointSlices by `namespace/name`: their Service's key and the nodes of their ready endpoints.
    /// Each key is held once, shared by both maps (a Service has a slice or two: thousands of each).
    slices: HashMap<Arc<str>, Slice>,
    /// The slices of each Service, by the Service's key (a few each: a Vec is a tenth of a set's size).
    slices_of: HashMap<Arc<str>, Vec<Arc<str>>>,
    /// Every node name seen in a slice, so that the slices and Services naming a node share its name.
    names: NodeNames,
    /// The sets of ready nodes handed to Services lately, shared by the Services that have the same.
    node_sets: Sharing<[NodeName]>,
}

impl ServiceIndex {
    pub fn new(classes: ClassFilter) -> Self {
        Self {
            classes,
            services: HashMap::new(),
            slices: HashMap::new(),
            slices_of: HashMap::new(),
            names: NodeNames::default(),
            node_sets: Sharing::default(),
        }
    }

    /// Every Service of ours with an address, as the plan reads it.
    pub fn infos(&self) -> Vec<Arc<ServiceInfo>> {
        self.services.values().map(|(info, _)| info.clone()).collect()
    }

    pub fn uid(&self, key: &str) -> Option<Option<String>> {
        self.services.get(key).map(|(_, uid)| uid.clone())
    }

    fn ready_nodes_of(&mut self, service: &str) -> NodeSet {
        let names: Vec<NodeName> = self
            .slices_of
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|slice| self.slices.get(slice))
            .flat_map(|slice| slice.ready_nodes.iter().cloned())
            .collect();
        NodeSet::shared(names, &mut self.node_sets)
    }

    /// Joins `service`'s info with its slices' ready nodes again; whether that changed it.
    fn rejoin(&mut self, service: &str) -> bool {
        let nodes = self.ready_nodes_of(service);
        let Some((info, _)) = self.services.get_mut(service) else { return false };
        if info.ready_endpoint_nodes == nodes {
            return false;
        }
        Arc::make_mut(info).ready_endpoint_nodes = nodes;
        true
    }

    fn set_slice(&mut self, key: &str, value: Option<(String, Box<[NodeName]>)>) -> bool {
        let unchanged = |(service, nodes): &(String, Box<[NodeName]>), have: &Slice| {
            *have.service == **service && have.ready_nodes == *nodes
        };
        let old = match value {
            Some(value) if self.slices.get(key).is_some_and(|have| unchanged(&value, have)) => return false,
            Some((service, nodes)) => {
                let key = self.slices.get_key_value(key).map_or_else(|| Arc::from(key), |(known, _)| known.clone());
                let service = self
                    .slices_of
                    .get_key_value(service.as_str())
                    .map_or_else(|| Arc::from(service), |(k, _)| k.clone());
                let old = self.slices.insert(key.clone(), Slice { service: service.clone(), ready_nodes: nodes });
                return self.moved(&key, old.map(|old| old.service), Some(service));
            }
            None => self.slices.remove_entry(key),
        };
        let Some((key, old)) = old else { return false };
        self.moved(&key, Some(old.service), None)
    }

    /// The slice `key` moved from Service `old` to Service `new` (either may be none): both are joined again.
    fn moved(&mut self, key: &Arc<str>, old: Option<Arc<str>>, new: Option<Arc<str>>) -> bool {
        let mut touched = Vec::new();
        if let Some(service) = old {
            if let Some(slices) = self.slices_of.get_mut(&service) {
                slices.retain(|slice| slice != key);
                if slices.is_empty() {
                    self.slices_of.remove(&service);
                }
            }
            touched.push(service);
        }
        if let Some(service) = new {
            let slices = self.slices_of.entry(service.clone()).or_default();
            if !slices.contains(key) {
                slices.push(key.clone());
            }
            touched.push(service);
        }
        touched.dedup();
        // Not short-circuited: every touched Service is joined again.
        touched.iter().fold(false, |changed, service| self.rejoin(service) | changed)
    }
}

impl WatchIndex<Service> for ServiceIndex {
    type Key = String;
    /// Whether what the plan reads changed.
    type Output = bool;

    fn key(service: &Service) -> String {
        key_of(service)
    }

    fn apply(&mut self, service: Service) -> bool {
        let key = key_of(&service);
        let info =
            if self.classes.handles(&service) { service_info(&service, self.ready_nodes_of(&key)) } else { None };
        match info {
            Some(info) => {
                let uid = service.metadata.uid;
                if self.services.get(&key).is_some_and(|(have, have_uid)| **have == info && *have_uid == uid) {
                    return false;
                }
                self.services.insert(key, (Arc::new(info), uid));
                true
            }
            None => self.services.remove(&key).is_some(),
        }
    }

    fn delete(&mut self, service: Service) -> bool {
        self.services.remove(&key_of(&service)).is_some()
    }

    fn retain(&mut self, listed: &HashSet<String>) -> bool {
        let before = self.services.len();
        self.services.retain(|key, _| listed.contains(key));
        self.services.len() != before
    }
}

impl WatchIndex<EndpointSlice> for ServiceIndex {
    type Key = String;
    type Output = bool;

    fn key(slice: &EndpointSlice) -> String {
        key_of(slice)
    }

    fn apply(&mut self, slice: EndpointSlice) -> bool {
        let key = key_of(&slice);
        let value = slice.namespace().zip(slice.labels().get(SERVICE_NAME_LABEL)).map(|(namespace, service)| {
            let mut nodes: Vec<String> = ready_nodes(&slice).collect();
            nodes.sort();
            nodes.dedup();
            (format!("{namespace}/{service}"), nodes)
        });
        let value = value.map(|(service, nodes)| (service, nodes.iter().map(|n| self.names.name(n)).collect()));
        self.set_slice(&key, value)
    }

    fn delete(&mut self, slice: EndpointSlice) -> bool {
        self.set_slice(&key_of(&slice), None)
    }

    fn retain(&mut self, listed: &HashSet<String>) -> bool {
        let gone: Vec<Arc<str>> = self.slices.keys().filter(|key| !listed.contains(&***key)).cloned().collect();
        gone.into_iter().fold(false, |changed, key| self.set_slice(&key, None) | changed)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use proptest::prelude::*;

    use super::*;

    fn classes() -> ClassFilter {
        ClassFilter { load_balancer_class: "ferrolb.io/l2".into(), handle_unset_class: true }
    }

    fn service(name: &str, ip: Option<&str>) -> Service {
        let status = ip.map(|ip| serde_json::json!({"loadBalancer": {"ingress": [{"ip": ip}]}}));
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}")},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local"},
            "status": status,
        }))
        .unwrap()
    }

    fn slice(name: &str, service: &str, nodes: &[(&str, bool)]) -> EndpointSlice {
        let endpoints: Vec<serde_json::Value> = nodes
            .iter()
            .map(|(node, ready)| serde_json::json!({"addresses": ["10.0.0.1"], "nodeName": node, "conditions": {"ready": ready}}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "shop", "labels": {SERVICE_NAME_LABEL: service}},
            "addressType": "IPv4",
            "endpoints": endpoints,
        }))
        .unwrap()
    }

    fn ready(index: &ServiceIndex, name: &str) -> Vec<String> {
        let infos = index.infos();
        let info = infos.iter().find(|i| i.service.name == name).unwrap();
        info.ready_endpoint_nodes.iter().map(|n| n.to_string()).collect()
    }

    fn apply_service(index: &mut ServiceIndex, service: Service) -> bool {
        WatchIndex::<Service>::apply(index, service)
    }

    fn apply_slice(index: &mut ServiceIndex, slice: EndpointSlice) -> bool {
        WatchIndex::<EndpointSlice>::apply(index, slice)
    }

    #[test]
    fn a_service_is_joined_with_its_slices_whichever_comes_first() {
        let mut index = ServiceIndex::new(classes());
        assert!(
            !apply_slice(&mut index, slice("web-a", "web", &[("node-1", true), ("node-2", false)])),
            "no Service yet"
        );
        assert!(apply_service(&mut index, service("web", Some("192.0.2.10"))));
        assert_eq!(ready(&index, "web"), ["node-1"]);
        assert!(apply_slice(&mut index, slice("web-b", "web", &[("node-3", true)])));
        assert_eq!(ready(&index, "web"), ["node-1", "node-3"]);
        assert!(!apply_slice(&mut index, slice("web-b", "web", &[("node-3", true)])), "the same slice again");
        assert!(WatchIndex::<EndpointSlice>::delete(&mut index, slice("web-a", "web", &[])));
        assert_eq!(ready(&index, "web"), ["node-3"]);
        assert_eq!(index.uid("shop/web"), Some(Some("uid-web".into())));
    }

    #[test]
    fn a_change_is_reported_only_when_the_plan_reads_it() {
        let mut index = ServiceIndex::new(classes());
        assert!(!apply_service(&mut index, service("web", None)), "no address yet");
        assert!(apply_service(&mut index, service("web", Some("192.0.2.10"))));
        let mut same = service("web", Some("192.0.2.10"));
        same.metadata.resource_version = Some("7".into());
        assert!(!apply_service(&mut index, same), "nothing the plan reads");
        assert!(!apply_slice(&mut index, slice("other-a", "other", &[("node-1", true)])), "another Service's slice");
        assert!(!apply_slice(&mut index, slice("web-a", "web", &[("node-1", false)])), "no ready endpoint");
        assert!(apply_slice(&mut index, slice("web-a", "web", &[("node-1", true)])));
        assert!(apply_service(&mut index, service("web", None)), "the address gone");
        assert!(index.infos().is_empty());
    }

    #[test]
    fn a_relist_forgets_what_it_no_longer_lists() {
        let mut index = ServiceIndex::new(classes());
        apply_service(&mut index, service("web", Some("192.0.2.10")));
        apply_slice(&mut index, slice("web-a", "web", &[("node-1", true)]));
        assert!(WatchIndex::<EndpointSlice>::retain(&mut index, &HashSet::new()));
        assert!(ready(&index, "web").is_empty());
        assert!(index.slices_of.is_empty() && index.slices.is_empty());
        assert!(!WatchIndex::<Service>::retain(&mut index, &HashSet::from(["shop/web".to_string()])));
        assert!(WatchIndex::<Service>::retain(&mut index, &HashSet::new()));
        assert!(index.infos().is_empty());
    }

    /// What the index holds after any sequence of events is what joining the final objects gives.
    fn joined_from_scratch(
        services: &HashMap<String, Service>,
        slices: &HashMap<String, EndpointSlice>,
    ) -> Vec<ServiceInfo> {
        let mut out: Vec<ServiceInfo> = services
            .values()
            .filter_map(|s| {
                let nodes = slices
                    .values()
                    .filter(|slice| slice.labels().get(SERVICE_NAME_LABEL) == s.metadata.name.as_ref())
                    .flat_map(|slice| ready_nodes(slice).collect::<Vec<_>>())
                    .collect();
                service_info(s, nodes)
            })
            .collect();
        out.sort_by(|a, b| a.service.name.cmp(&b.service.name));
        out
    }

    proptest! {
        #[test]
        fn any_sequence_of_events_ends_joined_as_from_scratch(
            events in proptest::collection::vec((0u8..4, 0usize..3, 0usize..3, proptest::collection::vec((0usize..3, any::<bool>()), 0..3)), 0..40)
        ) {
            let mut index = ServiceIndex::new(classes());
            let (mut services, mut slices) = (HashMap::new(), HashMap::new());
            for (kind, s, n, endpoints) in events {
                let name = format!("svc-{s}");
                match kind {
                    0 => {
                        let object = service(&name, (n > 0).then_some("192.0.2.10"));
                        services.insert(name.clone(), object.clone());
                        apply_service(&mut index, object);
                    }
                    1 => {
                        if let Some(object) = services.remove(&name) {
                            WatchIndex::<Service>::delete(&mut index, object);
                        }
                    }
                    2 => {
                        let nodes: Vec<(String, bool)> = endpoints.iter().map(|(i, r)| (format!("node-{i}"), *r)).collect();
                        let nodes: Vec<(&str, bool)> = nodes.iter().map(|(n, r)| (n.as_str(), *r)).collect();
                        let object = slice(&format!("{name}-{n}"), &name, &nodes);
                        slices.insert(format!("{name}-{n}"), object.clone());
                        apply_slice(&mut index, object);
                    }
                    _ => {
                        if let Some(object) = slices.remove(&format!("{name}-{n}")) {
                            WatchIndex::<EndpointSlice>::delete(&mut index, object);
                        }
                    }
                }
            }
            let mut held: Vec<ServiceInfo> = index.infos().iter().map(|i| (**i).clone()).collect();
            held.sort_by(|a, b| a.service.name.cmp(&b.service.name));
            prop_assert_eq!(held, joined_from_scratch(&services, &slices));
        }
    }
}
