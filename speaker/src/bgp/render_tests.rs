#![allow(clippy::unwrap_used)]
use super::*;
use crate::bgp::frr_config::{commands, parse};
use ferrolb_crds::l2announcement::ServiceReference;

fn peer(address: &str) -> BGPPeerSpec {
    BGPPeerSpec { my_asn: 64512, peer_asn: 64500, peer_address: address.into(), ..Default::default() }
}

fn session(name: &str, spec: BGPPeerSpec) -> Session {
    Session { name: name.into(), spec, password: None }
}

fn attributes(local_pref: Option<u32>, communities: &[&str]) -> Attributes {
    Attributes {
        local_pref,
        communities: communities.iter().map(|c| c.to_string()).collect(),
        large_communities: Vec::new(),
    }
}

fn routes(entries: &[(&str, &str, Attributes)]) -> Routes {
    let mut routes = Routes::default();
    for (peer, prefix, attributes) in entries {
        routes.by_peer.entry(peer.to_string()).or_default().insert(prefix.parse().unwrap(), attributes.clone());
        let web = routes.by_service.entry(ServiceReference { namespace: "default".into(), name: "web".into() });
        let announced = web.or_default();
        announced.prefixes.insert(prefix.parse().unwrap());
        announced.peers.insert(peer.to_string());
    }
    routes
}

fn lab_inputs() -> (Vec<Session>, BTreeMap<String, BFDProfileSpec>, Routes) {
    let sessions = vec![
        Session {
            password: Some("s3cret".into()),
            ..session(
                "router-v4",
                BGPPeerSpec {
                    hold_time: Some("9s".into()),
                    keepalive_time: Some("3s".into()),
                    connect_time: Some("5s".into()),
                    bfd_profile: Some("fast".into()),
                    peer_port: Some(179),
                    ..peer("192.0.2.1")
                },
            )
        },
        session(
            "router-v6",
            BGPPeerSpec {
                hold_time: Some("9s".into()),
                bfd_profile: Some("fast".into()),
                enable_graceful_restart: true,
                source_address: Some("2001:db8::11".into()),
                ebgp_multi_hop: true,
                ..peer("2001:db8::1")
            },
        ),
    ];
    let profiles = BTreeMap::from([
        (
            "fast".to_string(),
            BFDProfileSpec {
                receive_interval: Some(100),
                transmit_interval: Some(100),
                detect_multiplier: Some(3),
                ..Default::default()
            },
        ),
        ("unused".to_string(), BFDProfileSpec::default()),
    ]);
    let routes = routes(&[
        ("router-v4", "203.0.113.10/32", attributes(None, &[])),
        ("router-v4", "203.0.113.11/32", attributes(Some(200), &["64500:100", "no-export"])),
        ("router-v4", "2001:db8:b::10/128", attributes(None, &[])),
        ("router-v6", "2001:db8:b::10/128", attributes(None, &[])),
    ]);
    (sessions, profiles, routes)
}

#[test]
fn the_lab_configuration_is_rendered_as_frr_prints_it() {
    let (sessions, profiles, routes) = lab_inputs();
    let inputs =
        Inputs { router_id: "192.0.2.11".parse().unwrap(), sessions: &sessions, profiles: &profiles, routes: &routes };
    let rendered = render(&inputs);
    assert!(rendered.refused.is_empty(), "{:?}", rendered.refused);
    assert_eq!(rendered.bgpd.to_string(), include_str!("golden/bgpd.conf"));
    assert_eq!(rendered.bfdd.to_string(), include_str!("golden/bfdd.conf"));
    assert_eq!(rendered.sessions, BTreeSet::from(["router-v4".to_string(), "router-v6".to_string()]));
    // What is rendered reads back as itself: once FRR runs it, nothing is left to change.
    let running = parse(&rendered.bgpd.to_string(), bgpd_owns);
    assert!(commands(&running, &rendered.bgpd).is_empty());
}

#[test]
fn a_new_vip_is_one_network_and_one_prefix_list_line() {
    let (sessions, profiles, mut routes) = lab_inputs();
    let router_id = "192.0.2.11".parse().unwrap();
    let before = render(&Inputs { router_id, sessions: &sessions, profiles: &profiles, routes: &routes }).bgpd;
    routes.by_peer.get_mut("router-v4").unwrap().insert("203.0.113.12/32".parse().unwrap(), attributes(None, &[]));
    let after = render(&Inputs { router_id, sessions: &sessions, profiles: &profiles, routes: &routes }).bgpd;
    assert_eq!(
        commands(&before, &after),
        [
            "ip prefix-list flb-router-v4-0-v4 permit 203.0.113.12/32",
            "router bgp 64512",
            "address-family ipv4 unicast",
            "network 203.0.113.12/32",
            "exit-address-family",
            "exit",
        ]
    );
}

#[test]
fn sessions_that_cannot_be_configured_are_refused_with_a_reason() {
    let bad_password = Session { password: Some("two words".into()), ..session("b-password", peer("192.0.2.2")) };
    let sessions = vec![
        session("a-first", peer("192.0.2.1")),
        bad_password,
        session("c-same-address", peer("192.0.2.1")),
        session("d-other-asn", BGPPeerSpec { my_asn: 65000, ..peer("192.0.2.4") }),
        session("e-not-an-ip", peer("router.example")),
        session("f-bad-hold", BGPPeerSpec { hold_time: Some("soon".into()), ..peer("192.0.2.6") }),
        session("G_bad_name", peer("192.0.2.7")),
    ];
    let profiles = BTreeMap::new();
    let routes = Routes::default();
    let rendered = render(&Inputs {
        router_id: "192.0.2.11".parse().unwrap(),
        sessions: &sessions,
        profiles: &profiles,
        routes: &routes,
    });
    assert_eq!(rendered.sessions, BTreeSet::from(["a-first".to_string()]));
    let reasons: BTreeMap<&str, &str> = rendered.refused.iter().map(|r| (r.peer.as_str(), r.reason.as_str())).collect();
    assert!(reasons["b-password"].contains("printable ASCII"));
    assert!(reasons["c-same-address"].contains("already peers with 192.0.2.1"));
    assert!(reasons["d-other-asn"].contains("myASN 65000 differs from 64512"));
    assert!(reasons["e-not-an-ip"].contains("not an IP address"));
    assert!(reasons["f-bad-hold"].contains("holdTime"));
    assert!(reasons["G_bad_name"].contains("cannot be used"));
    assert_eq!(rendered.refused.len(), 6);
}

#[test]
fn no_session_renders_nothing_to_run() {
    let profiles = BTreeMap::new();
    let routes = Routes::default();
    let rendered = render(&Inputs {
        router_id: "192.0.2.11".parse().unwrap(),
        sessions: &[],
        profiles: &profiles,
        routes: &routes,
    });
    assert_eq!(rendered, Rendered::default());
}

proptest::proptest! {
    #[test]
    fn no_password_or_community_reaches_frr_as_more_than_one_command(
        password in "\\PC{0,90}",
        community in "\\PC{0,30}",
    ) {
        let sessions = vec![Session { password: Some(password), ..session("router", peer("192.0.2.1")) }];
        let routes = routes(&[("router", "203.0.113.1/32", attributes(None, &[community.as_str()]))]);
        let profiles = BTreeMap::new();
        let rendered = render(&Inputs { router_id: "192.0.2.11".parse().unwrap(), sessions: &sessions, profiles: &profiles, routes: &routes });
        let text = rendered.bgpd.to_string();
        let reread = parse(&text, bgpd_owns);
        proptest::prop_assert_eq!(reread, rendered.bgpd.clone());
        for line in text.lines() {
            proptest::prop_assert!(!line.contains('\r') && !line.contains('\0'));
        }
    }
}
