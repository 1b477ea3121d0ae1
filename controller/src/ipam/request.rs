//! What a Service asks the allocator for, read from the Service object (pure): its families, the IPs or pool
//! it requests through annotations or `spec.loadBalancerIP`, and what decides whether it may share an IP.
//! Bad annotations are refused here with an error that names the annotation and the value.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ferrolb_crds::annotations;
use k8s_openapi::api::core::v1::Service;

use super::ranges::Family;

/// `namespace/name` of a Service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl ServiceKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), name: name.into() }
    }
}

impl std::fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// `spec.ipFamilyPolicy` with `spec.ipFamilies` (the API server fills both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FamilyPolicy {
    Single(Family),
    /// Both if a pool allows, else the first family that can be had (primary first).
    PreferDual {
        primary: Family,
    },
    RequireDual {
        primary: Family,
    },
}

impl FamilyPolicy {
    pub fn primary(self) -> Family {
        match self {
            Self::Single(f) | Self::PreferDual { primary: f } | Self::RequireDual { primary: f } => f,
        }
    }

    /// The families wanted, primary first.
    pub fn families(self) -> Vec<Family> {
        match self {
            Self::Single(f) => vec![f],
            Self::PreferDual { primary } | Self::RequireDual { primary } => vec![primary, primary.other()],
        }
    }
}

/// A port a Service exposes, for the sharing rule (two Services on one IP must not both use it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortKey {
    pub protocol: String,
    pub port: i32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceRequest {
    pub key: ServiceKey,
    pub families: FamilyPolicy,
    /// Specific IPs asked for (at most one per family).
    pub requested_ips: Vec<IpAddr>,
    pub requested_pool: Option<String>,
    /// Services with the same non-empty key may share IPs.
    pub sharing_key: Option<String>,
    pub ports: Vec<PortKey>,
    /// The Service's selector, rendered; Services with `externalTrafficPolicy: Local` share an IP only
    /// with Services that select the same endpoints.
    pub selector: String,
    pub traffic_policy_local: bool,
    pub labels: BTreeMap<String, String>,
    pub namespace_labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("annotation {annotation} has {value:?}, which is not a comma-separated list of IP addresses")]
    InvalidIpList { annotation: &'static str, value: String },
    #[error("annotation {annotation} asks for {count} {family} addresses; a Service gets at most one per family")]
    TooManyIps { annotation: &'static str, family: Family, count: usize },
    #[error("both spec.loadBalancerIP ({spec}) and annotation {annotation} ({annotation_value}) request IPs: use one")]
    ConflictingRequests { spec: String, annotation: &'static str, annotation_value: String },
    #[error("spec.loadBalancerIP {value:?} is not an IP address")]
    InvalidSpecIp { value: String },
    #[error("annotation {annotation} is empty: name a pool or remove it")]
    EmptyPoolName { annotation: &'static str },
    #[error("requested IP {ip} is {family}, but the Service's families are {families}")]
    WrongFamily { ip: IpAddr, family: Family, families: String },
}

impl ServiceRequest {
    /// Reads a Service. `namespace_labels` are the labels of its namespace (for pool namespace selectors).
    pub fn from_service(service: &Service, namespace_labels: BTreeMap<String, String>) -> Result<Self, RequestError> {
        let metadata = &service.metadata;
        let key = ServiceKey::new(
            metadata.namespace.clone().unwrap_or_else(|| "default".into()),
            metadata.name.clone().unwrap_or_default(),
        );
        let empty = BTreeMap::new();
        let notes = metadata.annotations.as_ref().unwrap_or(&empty);
        let spec = service.spec.clone().unwrap_or_default();

        let families_listed: Vec<Family> = spec
            .ip_families
            .iter()
            .flatten()
            .filter_map(|f| match f.as_str() {
                "IPv4" => Some(Family::V4),
                "IPv6" => Some(Family::V6),
                _ => None,
            })
            .collect();
        let primary = families_listed.first().copied().unwrap_or(Family::V4);
        let families = match spec.ip_family_policy.as_deref() {
            Some("RequireDualStack") => FamilyPolicy::RequireDual { primary },
            Some("PreferDualStack") => FamilyPolicy::PreferDual { primary },
            _ => FamilyPolicy::Single(primary),
        };

        let mut requested_ips = Vec::new();
        if let Some((annotation, value)) =
            annotations::lookup(notes, annotations::LOAD_BALANCER_IPS, &annotations::LOAD_BALANCER_IPS_ALIASES)
        {
            for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let ip = part
                    .parse::<IpAddr>()
                    .map_err(|_| RequestError::InvalidIpList { annotation, value: value.to_string() })?;
                requested_ips.push(ip);
            }
            if requested_ips.is_empty() {
                return Err(RequestError::InvalidIpList { annotation, value: value.to_string() });
            }
            if let Some(spec_ip) = spec.load_balancer_ip.as_deref().filter(|s| !s.is_empty()) {
                return Err(RequestError::ConflictingRequests {
                    spec: spec_ip.to_string(),
                    annotation,
                    annotation_value: value.to_string(),
                });
            }
            for family in [Family::V4, Family::V6] {
                let count = requested_ips.iter().filter(|ip| Family::of(**ip) == family).count();
                if count > 1 {
                    return Err(RequestError::TooManyIps { annotation, family, count });
                }
            }
        } else if let Some(spec_ip) = spec.load_balancer_ip.as_deref().filter(|s| !s.is_empty()) {
            let ip = spec_ip.trim().parse().map_err(|_| RequestError::InvalidSpecIp { value: spec_ip.to_string() })?;
            requested_ips.push(ip);
        }
        requested_ips.sort_by_key(|ip| Family::of(*ip));
        for ip in &requested_ips {
            let family = Family::of(*ip);
            if !families.families().contains(&family) {
                let families = families.families().iter().map(|f| f.to_string()).collect::<Vec<_>>().join(", ");
                return Err(RequestError::WrongFamily { ip: *ip, family, families });
            }
        }

        let requested_pool =
            match annotations::lookup(notes, annotations::ADDRESS_POOL, &annotations::ADDRESS_POOL_ALIASES) {
                Some((annotation, value)) if value.trim().is_empty() => {
                    return Err(RequestError::EmptyPoolName { annotation });
                }
                Some((_, value)) => Some(value.trim().to_string()),
                None => None,
            };
        let sharing_key =
            annotations::lookup(notes, annotations::ALLOW_SHARED_IP, &annotations::ALLOW_SHARED_IP_ALIASES)
                .map(|(_, v)| v.trim().to_string())
                .filter(|v| !v.is_empty());

        let mut ports: Vec<PortKey> = spec
            .ports
            .iter()
            .flatten()
            .map(|p| PortKey { protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()), port: p.port })
            .collect();
        ports.sort();
        let selector = spec
            .selector
            .as_ref()
            .map(|s| s.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","))
            .unwrap_or_default();
        Ok(Self {
            key,
            families,
            requested_ips,
            requested_pool,
            sharing_key,
            ports,
            selector,
            traffic_policy_local: spec.external_traffic_policy.as_deref() == Some("Local"),
            labels: metadata.labels.clone().unwrap_or_default(),
            namespace_labels,
        })
    }

    /// A plain request for tests: `namespace/name`, one family, nothing requested.
    pub fn simple(namespace: &str, name: &str, families: FamilyPolicy) -> Self {
        Self {
            key: ServiceKey::new(namespace, name),
            families,
            requested_ips: Vec::new(),
            requested_pool: None,
            sharing_key: None,
            ports: vec![PortKey { protocol: "TCP".into(), port: 80 }],
            selector: format!("app={name}"),
            traffic_policy_local: false,
            labels: BTreeMap::new(),
            namespace_labels: BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use kube_like::service;

    mod kube_like {
        use super::*;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

        pub fn service(
            annotations: &[(&str, &str)],
            policy: &str,
            families: &[&str],
            spec_ip: Option<&str>,
        ) -> Service {
            Service {
                metadata: ObjectMeta {
                    name: Some("web".into()),
                    namespace: Some("shop".into()),
                    annotations: Some(annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
                    ..Default::default()
                },
                spec: Some(ServiceSpec {
                    type_: Some("LoadBalancer".into()),
                    ip_family_policy: Some(policy.into()),
                    ip_families: Some(families.iter().map(|f| f.to_string()).collect()),
                    load_balancer_ip: spec_ip.map(str::to_string),
                    ports: Some(vec![
                        ServicePort { port: 443, ..Default::default() },
                        ServicePort { port: 53, protocol: Some("UDP".into()), ..Default::default() },
                    ]),
                    selector: Some([("app".to_string(), "web".to_string())].into()),
                    ..Default::default()
                }),
                ..Default::default()
            }
        }
    }

    #[test]
    fn reads_families_requests_and_sharing() {
        let svc = service(
            &[
                ("ferrolb.io/loadBalancerIPs", "2001:db8::5, 192.0.2.5"),
                ("metallb.io/address-pool", "blue"),
                ("metallb.universe.tf/allow-shared-ip", "k1"),
            ],
            "PreferDualStack",
            &["IPv6", "IPv4"],
            None,
        );
        let request = ServiceRequest::from_service(&svc, BTreeMap::new()).unwrap();
        assert_eq!(request.key.to_string(), "shop/web");
        assert_eq!(request.families, FamilyPolicy::PreferDual { primary: Family::V6 });
        assert_eq!(request.requested_ips, ["192.0.2.5".parse::<IpAddr>().unwrap(), "2001:db8::5".parse().unwrap()]);
        assert_eq!(request.requested_pool.as_deref(), Some("blue"));
        assert_eq!(request.sharing_key.as_deref(), Some("k1"));
        assert_eq!(
            request.ports,
            [PortKey { protocol: "TCP".into(), port: 443 }, PortKey { protocol: "UDP".into(), port: 53 }]
        );
        assert_eq!(request.selector, "app=web");
    }

    #[test]
    fn spec_load_balancer_ip_is_honoured_alone_and_refused_with_the_annotation() {
        let only_spec = service(&[], "SingleStack", &["IPv4"], Some("192.0.2.9"));
        assert_eq!(
            ServiceRequest::from_service(&only_spec, BTreeMap::new()).unwrap().requested_ips,
            ["192.0.2.9".parse::<IpAddr>().unwrap()]
        );
        let both = service(&[("ferrolb.io/loadBalancerIPs", "192.0.2.5")], "SingleStack", &["IPv4"], Some("192.0.2.9"));
        assert!(matches!(
            ServiceRequest::from_service(&both, BTreeMap::new()),
            Err(RequestError::ConflictingRequests { .. })
        ));
    }

    #[test]
    fn bad_annotations_are_refused_with_their_name() {
        let cases: [(&[(&str, &str)], &str); 5] = [
            (&[("ferrolb.io/loadBalancerIPs", "192.0.2.300")], "ferrolb.io/loadBalancerIPs"),
            (&[("metallb.io/loadBalancerIPs", " , ")], "metallb.io/loadBalancerIPs"),
            (&[("ferrolb.io/loadBalancerIPs", "192.0.2.1,192.0.2.2")], "2 IPv4 addresses"),
            (&[("ferrolb.io/address-pool", " ")], "ferrolb.io/address-pool"),
            (&[("ferrolb.io/loadBalancerIPs", "2001:db8::1")], "IPv6"),
        ];
        for (annotations, expected) in cases {
            let svc = service(annotations, "SingleStack", &["IPv4"], None);
            let error = ServiceRequest::from_service(&svc, BTreeMap::new()).unwrap_err().to_string();
            assert!(error.contains(expected), "{annotations:?}: {error}");
        }
        let bad_spec = service(&[], "SingleStack", &["IPv4"], Some("nope"));
        assert!(matches!(
            ServiceRequest::from_service(&bad_spec, BTreeMap::new()),
            Err(RequestError::InvalidSpecIp { .. })
        ));
    }

    #[test]
    fn family_policies_map_to_wanted_families() {
        let single =
            ServiceRequest::from_service(&service(&[], "SingleStack", &["IPv6"], None), BTreeMap::new()).unwrap();
        assert_eq!(single.families.families(), [Family::V6]);
        let required =
            ServiceRequest::from_service(&service(&[], "RequireDualStack", &["IPv4", "IPv6"], None), BTreeMap::new())
                .unwrap();
        assert_eq!(required.families, FamilyPolicy::RequireDual { primary: Family::V4 });
        assert_eq!(required.families.families(), [Family::V4, Family::V6]);
    }
}
