//! The BGPAnnouncements this node owes, with no I/O: one per Service it announces (its prefixes and the peers
//! told), none for the others. Only this node writes its own, so what it wrote last (read back from the API
//! at start) is all it compares with.

use std::collections::BTreeMap;

use ferrolb_crds::BGPAnnouncementSpec;
use ferrolb_crds::bgp_announcement::object_name;
use ferrolb_crds::l2announcement::ServiceReference;

use super::announce::ServiceRoutes;
use crate::report::Op;

/// The writes and deletions that turn `written` (this node's objects, by name) into what `by_service` says.
pub fn ops(
    me: &str,
    by_service: &BTreeMap<ServiceReference, ServiceRoutes>,
    written: &BTreeMap<String, BGPAnnouncementSpec>,
) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut wanted = std::collections::BTreeSet::new();
    for (service, routes) in by_service {
        let name = object_name(service, me);
        let spec = BGPAnnouncementSpec {
            service: service.clone(),
            node: me.to_string(),
            prefixes: routes.prefixes.iter().map(ToString::to_string).collect(),
            peers: routes.peers.iter().cloned().collect(),
        };
        if written.get(&name) != Some(&spec) {
            ops.push(Op::ApplyBgp(name.clone(), spec));
        }
        wanted.insert(name);
    }
    ops.extend(written.keys().filter(|name| !wanted.contains(*name)).map(|name| Op::DeleteBgp(name.clone())));
    ops
}

/// `written` after `ops` (the writer retries a failed write; the periodic read-back catches what it lost).
pub fn apply(written: &mut BTreeMap<String, BGPAnnouncementSpec>, ops: &[Op]) {
    for op in ops {
        match op {
            Op::ApplyBgp(name, spec) => {
                written.insert(name.clone(), spec.clone());
            }
            Op::DeleteBgp(name) => {
                written.remove(name);
            }
            Op::Apply(..) | Op::Delete(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn service(name: &str) -> ServiceReference {
        ServiceReference { namespace: "default".into(), name: name.into() }
    }

    fn routes(prefixes: &[&str], peers: &[&str]) -> ServiceRoutes {
        ServiceRoutes {
            prefixes: prefixes.iter().map(|p| p.parse().unwrap()).collect(),
            peers: peers.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn a_service_is_written_once_changed_when_its_routes_change_and_deleted_when_no_longer_announced() {
        let mut written = BTreeMap::new();
        let mut announced = BTreeMap::from([(service("web"), routes(&["203.0.113.10/32"], &["router-v4"]))]);
        let first = ops("node-1", &announced, &written);
        assert_eq!(
            first,
            [Op::ApplyBgp(
                "default.web.node-1".into(),
                BGPAnnouncementSpec {
                    service: service("web"),
                    node: "node-1".into(),
                    prefixes: vec!["203.0.113.10/32".into()],
                    peers: vec!["router-v4".into()],
                }
            )]
        );
        apply(&mut written, &first);
        assert!(ops("node-1", &announced, &written).is_empty(), "nothing changed: nothing written");

        announced
            .insert(service("web"), routes(&["203.0.113.10/32", "2001:db8:b::10/128"], &["router-v4", "router-v6"]));
        let changed = ops("node-1", &announced, &written);
        assert!(matches!(&changed[..], [Op::ApplyBgp(_, spec)] if spec.peers == ["router-v4", "router-v6"]));
        apply(&mut written, &changed);

        announced.clear();
        let gone = ops("node-1", &announced, &written);
        assert_eq!(gone, [Op::DeleteBgp("default.web.node-1".into())]);
        apply(&mut written, &gone);
        assert!(written.is_empty());
    }

    proptest! {
        /// Whatever was written before, after the ops exactly the announced Services have an object, each
        /// as announced, and a second round has nothing to do.
        #[test]
        fn the_ops_always_reach_what_is_announced(
            before in proptest::collection::btree_set(0u8..20, 0..10),
            now in proptest::collection::btree_set(0u8..20, 0..10),
            peer in 0u8..3,
        ) {
            let announced = |set: &std::collections::BTreeSet<u8>, peer: u8| -> BTreeMap<ServiceReference, ServiceRoutes> {
                set.iter()
                    .map(|n| (service(&format!("s{n}")), routes(&[&format!("203.0.113.{n}/32")], &[&format!("router-{peer}")])))
                    .collect()
            };
            let mut written = BTreeMap::new();
            let first = ops("node-1", &announced(&before, 0), &written);
            apply(&mut written, &first);
            let now = announced(&now, peer);
            let second = ops("node-1", &now, &written);
            apply(&mut written, &second);
            prop_assert_eq!(written.len(), now.len());
            for (service, routes) in &now {
                let spec = &written[&object_name(service, "node-1")];
                prop_assert_eq!(&spec.peers, &routes.peers.iter().cloned().collect::<Vec<_>>());
            }
            prop_assert!(ops("node-1", &now, &written).is_empty());
        }
    }
}
