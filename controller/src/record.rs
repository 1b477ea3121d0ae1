//! What the engine keeps of a Service for as long as it exists: the fields it reads, read once per change.
//!
//! A whole `Service` is some 3 kB in memory (every optional field of its metadata and spec, most of them
//! empty, plus what the API server fills in); at 10 000 Services, keeping them was a third of the
//! controller's memory. A record is a few hundred bytes.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ferrolb_crds::service::POOL_CONDITION;
use k8s_openapi::api::core::v1::{ObjectReference, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::engine::{CONDITION_TYPE, ingress_ips, key_of};
use crate::ipam::{RequestError, ServiceKey, ServiceRequest};

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceRecord {
    pub key: ServiceKey,
    uid: Option<String>,
    pub generation: Option<i64>,
    pub created: Option<jiff::Timestamp>,
    /// `spec.type` is `LoadBalancer`.
    pub load_balancer: bool,
    pub class: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// What the Service asks for, without its namespace's labels (they change on their own): see
    /// [`ServiceRecord::request`].
    request: Result<ServiceRequest, RequestError>,
    /// The addresses its status shows.
    pub ingress: Vec<IpAddr>,
    /// ferrolb's two conditions as its status shows them.
    pub allocated: Option<Condition>,
    pub pool_condition: Option<Condition>,
    /// Read for Service default/kubernetes only (its ClusterIPs are in the Service CIDR); empty for others.
    pub cluster_ips: Vec<IpAddr>,
}

impl ServiceRecord {
    pub fn of(service: &Service) -> Self {
        let key = key_of(service);
        let spec = service.spec.as_ref();
        let condition = |type_: &str| ferrolb_crds::service::condition(service, type_).cloned();
        let cluster_ips = if key.namespace == "default" && key.name == "kubernetes" {
            let listed = spec.and_then(|s| s.cluster_ips.as_ref()).into_iter().flatten();
            let single = spec.and_then(|s| s.cluster_ip.as_ref());
            listed.chain(single).filter_map(|ip| ip.parse().ok()).collect()
        } else {
            Vec::new()
        };
        let mut request = ServiceRequest::from_service(service, BTreeMap::new());
        if let Ok(request) = request.as_mut() {
            // Kept once, in the record: the request gets them back when it is used.
            request.labels = BTreeMap::new();
        }
        Self {
            key,
            uid: service.metadata.uid.clone(),
            generation: service.metadata.generation,
            created: service.metadata.creation_timestamp.as_ref().map(|t| t.0),
            load_balancer: spec.and_then(|s| s.type_.as_deref()) == Some("LoadBalancer"),
            class: spec.and_then(|s| s.load_balancer_class.clone()),
            labels: service.metadata.labels.clone().unwrap_or_default(),
            request,
            ingress: ingress_ips(service),
            allocated: condition(CONDITION_TYPE),
            pool_condition: condition(POOL_CONDITION),
            cluster_ips,
        }
    }

    /// What the Service asks for, with its namespace's labels (for the pools' namespace selectors).
    pub fn request(&self, namespace_labels: BTreeMap<String, String>) -> Result<ServiceRequest, RequestError> {
        let mut request = self.request.clone()?;
        request.labels = self.labels.clone();
        request.namespace_labels = namespace_labels;
        Ok(request)
    }

    /// The pool its status says its addresses came from.
    pub fn origin_pool(&self) -> Option<String> {
        ferrolb_crds::service::origin_pool_in(self.pool_condition.as_ref())
    }

    /// ferrolb's condition of this type, as the status shows it.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        match type_ {
            CONDITION_TYPE => self.allocated.as_ref(),
            POOL_CONDITION => self.pool_condition.as_ref(),
            _ => None,
        }
    }

    /// The Service, as Events name the object they are about.
    pub fn object_ref(&self) -> ObjectReference {
        ferrolb_crds::service::reference(&self.key.namespace, &self.key.name, self.uid.clone())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use kube::Resource;

    use super::*;

    fn service(value: serde_json::Value) -> Service {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_record_names_the_service_as_kube_does_and_reads_what_the_engine_reads() {
        let web = service(serde_json::json!({
            "metadata": {"namespace": "shop", "name": "web", "uid": "u-1", "resourceVersion": "42", "generation": 3,
                "creationTimestamp": "2026-01-01T00:00:00Z", "labels": {"tier": "front"},
                "annotations": {"ferrolb.io/address-pool": "gold", "kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "spec": {"type": "LoadBalancer", "loadBalancerClass": "ferrolb.io/l2", "ports": [{"port": 80}],
                "clusterIP": "10.96.0.9", "ipFamilies": ["IPv6"]},
            "status": {"loadBalancer": {"ingress": [{"ip": "2001:db8::9"}]}, "conditions": [
                {"type": POOL_CONDITION, "status": "True", "reason": "Allocated", "message": "gold", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
        }));
        let record = ServiceRecord::of(&web);
        assert_eq!(record.object_ref(), web.object_ref(&()));
        assert_eq!(record.key, ServiceKey::new("shop", "web"));
        assert_eq!((record.load_balancer, record.class.as_deref()), (true, Some("ferrolb.io/l2")));
        assert_eq!(record.generation, Some(3));
        assert_eq!(record.created, Some("2026-01-01T00:00:00Z".parse().unwrap()));
        assert_eq!(record.ingress, ["2001:db8::9".parse::<IpAddr>().unwrap()]);
        assert_eq!(record.origin_pool(), ferrolb_crds::service::origin_pool(&web));
        assert_eq!(record.origin_pool().as_deref(), Some("gold"));
        assert!(record.cluster_ips.is_empty(), "only default/kubernetes's ClusterIPs are kept");
        let labels = BTreeMap::from([("team".to_string(), "a".to_string())]);
        let request = record.request(labels.clone()).unwrap();
        assert_eq!(request, ServiceRequest::from_service(&web, labels).unwrap());
    }

    #[test]
    fn an_unreadable_request_is_kept_as_its_error() {
        let bad = service(serde_json::json!({
            "metadata": {"namespace": "shop", "name": "bad", "annotations": {"ferrolb.io/loadBalancerIPs": "nope"}},
            "spec": {"type": "LoadBalancer"}
        }));
        let record = ServiceRecord::of(&bad);
        assert_eq!(record.request(BTreeMap::new()), ServiceRequest::from_service(&bad, BTreeMap::new()));
        assert!(record.request(BTreeMap::new()).is_err());
    }

    #[test]
    fn the_api_servers_own_service_keeps_its_cluster_ips() {
        let kubernetes = service(serde_json::json!({
            "metadata": {"namespace": "default", "name": "kubernetes"},
            "spec": {"clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1", "fd00::1"]}
        }));
        let ips: Vec<IpAddr> = ServiceRecord::of(&kubernetes).cluster_ips;
        assert!(ips.contains(&"10.96.0.1".parse().unwrap()) && ips.contains(&"fd00::1".parse().unwrap()), "{ips:?}");
    }
}
