//! What ferrolb reads back from a Service it handles.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;

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
}
