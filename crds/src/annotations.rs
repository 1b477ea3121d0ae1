//! Service annotations ferrolb reads. MetalLB's names are honoured too, so a cluster migrates by swapping
//! the controller, not by editing every Service; ferrolb's own name wins when both are set.

/// Comma-separated IPs the Service asks for (one per family at most).
pub const LOAD_BALANCER_IPS: &str = "ferrolb.io/loadBalancerIPs";
/// The pool the Service's IPs must come from.
pub const ADDRESS_POOL: &str = "ferrolb.io/address-pool";
/// Services with the same non-empty key may share an IP.
pub const ALLOW_SHARED_IP: &str = "ferrolb.io/allow-shared-ip";

/// MetalLB's current and legacy names for each of ours, in order of precedence after ours.
pub const LOAD_BALANCER_IPS_ALIASES: [&str; 2] = ["metallb.io/loadBalancerIPs", "metallb.universe.tf/loadBalancerIPs"];
pub const ADDRESS_POOL_ALIASES: [&str; 2] = ["metallb.io/address-pool", "metallb.universe.tf/address-pool"];
pub const ALLOW_SHARED_IP_ALIASES: [&str; 2] = ["metallb.io/allow-shared-ip", "metallb.universe.tf/allow-shared-ip"];

/// The value of `key` (or of its first alias present) in `annotations`, with the name it was found under.
pub fn lookup<'a>(
    annotations: &'a std::collections::BTreeMap<String, String>,
    key: &'static str,
    aliases: &[&'static str],
) -> Option<(&'static str, &'a str)> {
    std::iter::once(key)
        .chain(aliases.iter().copied())
        .find_map(|name| annotations.get(name).map(|v| (name, v.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn ferrolb_annotation_wins_over_metallb_aliases() {
        let annotations = BTreeMap::from([
            ("metallb.universe.tf/address-pool".to_string(), "legacy".to_string()),
            ("metallb.io/address-pool".to_string(), "metallb".to_string()),
        ]);
        assert_eq!(
            lookup(&annotations, ADDRESS_POOL, &ADDRESS_POOL_ALIASES),
            Some(("metallb.io/address-pool", "metallb"))
        );
        let mut ours = annotations.clone();
        ours.insert(ADDRESS_POOL.into(), "ours".into());
        assert_eq!(lookup(&ours, ADDRESS_POOL, &ADDRESS_POOL_ALIASES), Some((ADDRESS_POOL, "ours")));
        assert_eq!(lookup(&BTreeMap::new(), ADDRESS_POOL, &ADDRESS_POOL_ALIASES), None);
    }
}
