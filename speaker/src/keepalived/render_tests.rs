#![allow(clippy::unwrap_used)]

use super::*;
use proptest::prelude::*;

fn service(name: &str) -> ServiceReference {
    ServiceReference { namespace: "default".into(), name: name.into() }
}

fn decision(name: &str, vips: &[&str], ranking: &[&str]) -> Decision {
    Decision {
        service: std::sync::Arc::new(service(name)),
        vips: vips.iter().map(|v| v.parse().unwrap()).collect(),
        owner: ranking.first().map(|n| (*n).into()),
        named_interfaces: Default::default(),
        any_interface: true,
        ranking: ranking.iter().map(|n| (*n).into()).collect(),
    }
}

fn addresses() -> BTreeMap<String, NodeAddresses> {
    (1..=3)
        .map(|i| {
            (
                format!("node-{i}"),
                NodeAddresses {
                    ipv4: Some(format!("192.0.2.{}", 10 + i).parse().unwrap()),
                    ipv6: Some(format!("2001:db8::{}", 10 + i).parse().unwrap()),
                },
            )
        })
        .collect()
}

fn settings() -> Settings {
    Settings { notify_fifo: "/run/ferrolb/keepalived/notify.fifo".into(), ..Settings::default() }
}

fn lab_decisions() -> Vec<Decision> {
    vec![
        decision("web", &["192.0.2.200", "2001:db8::200"], &["node-2", "node-3", "node-1"]),
        decision("api", &["192.0.2.201"], &["node-2", "node-3", "node-1"]),
        decision("db", &["192.0.2.202"], &["node-1", "node-2", "node-3"]),
        decision("no-endpoints", &["192.0.2.203"], &[]),
    ]
}

#[test]
fn vips_with_the_same_ranking_and_family_share_an_instance() {
    let groups = groups(&lab_decisions(), &settings()).unwrap();
    assert_eq!(groups.len(), 3, "{groups:#?}");
    let shared = groups.iter().find(|g| g.key.ipv4 && g.key.ranking[0] == "node-2").unwrap();
    assert_eq!(shared.vips.len(), 2);
    assert_eq!(shared.services.len(), 2);
    assert!(groups.iter().all(|g| !g.vips.contains(&"192.0.2.203".parse().unwrap())), "no candidate, no instance");
}

#[test]
fn the_rendered_config_matches_the_golden_file() {
    let groups = groups(&lab_decisions(), &settings()).unwrap();
    let (config, skipped) = render("node-3", &groups, &addresses(), |_| Some("eth0".into()), &settings());
    assert!(skipped.is_empty());
    let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/keepalived-node-3.conf");
    if std::env::var_os("FERROLB_UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &config).unwrap();
    }
    assert_eq!(
        config,
        std::fs::read_to_string(&golden).unwrap(),
        "FERROLB_UPDATE_GOLDEN=1 rewrites {}",
        golden.display()
    );
}

#[test]
fn priorities_follow_the_rendezvous_rank() {
    assert_eq!(priority(0, 3), 255, "only the owner's priority makes a fresh instance master without waiting");
    assert!(priority(0, 3) > priority(1, 3) && priority(1, 3) > priority(2, 3) && priority(2, 3) >= 1);
    assert!(priority(299, 300) >= 1 && priority(0, 300) == 255);
    let groups = groups(&lab_decisions(), &settings()).unwrap();
    let (config, _) = render("node-1", &groups, &addresses(), |_| Some("eth0".into()), &settings());
    // node-1 is first for db and last for the others.
    assert!(config.contains("priority 255") && config.contains("priority 84"), "{config}");
}

#[test]
fn a_node_without_an_address_of_the_family_or_an_interface_skips_the_group() {
    let groups = groups(&lab_decisions(), &settings()).unwrap();
    let mut partial = addresses();
    partial.get_mut("node-3").unwrap().ipv6 = None;
    let (config, skipped) = render("node-3", &groups, &partial, |_| Some("eth0".into()), &settings());
    assert_eq!(skipped.len(), 1);
    assert!(!config.contains("2001:db8::200"));
    let (_, skipped) = render("node-3", &groups, &addresses(), |_| None, &settings());
    assert_eq!(skipped.len(), 3);
}

#[test]
fn more_groups_than_vrids_is_an_error_and_many_vips_are_few_groups() {
    let narrow = Settings { vrid_first: 10, vrid_last: 11, ..settings() };
    let rankings = [["node-1", "node-2"], ["node-2", "node-1"], ["node-2", "node-3"]];
    let many: Vec<Decision> = rankings
        .iter()
        .enumerate()
        .map(|(i, r)| decision(&format!("s{i}"), &[&format!("192.0.2.{}", 200 + i)], r))
        .collect();
    assert!(matches!(groups(&many, &narrow), Err(RenderError::TooManyGroups { groups: 3, .. })));
    // 1000 VIPs over three nodes: at most 6 rankings per family.
    let nodes = ["node-1", "node-2", "node-3"];
    let thousand: Vec<Decision> = (0..1000u32)
        .map(|i| {
            let mut ranking = nodes.to_vec();
            ranking.rotate_left((i % 3) as usize);
            if i % 2 == 0 {
                ranking.swap(1, 2);
            }
            decision(&format!("s{i}"), &[&format!("2001:db8::{:x}", 0x1000 + i)], &ranking)
        })
        .collect();
    let grouped = groups(&thousand, &settings()).unwrap();
    assert!(grouped.len() <= 6, "{}", grouped.len());
    assert_eq!(grouped.iter().map(|g| g.vips.len()).sum::<usize>(), 1000);
}

#[test]
fn notify_lines_are_parsed_and_anything_else_ignored() {
    assert_eq!(
        parse_notify(r#"INSTANCE "ferrolb_v4_00ff" MASTER 250"#),
        Some(("ferrolb_v4_00ff".into(), InstanceState::Master))
    );
    assert_eq!(parse_notify(r#"INSTANCE "x" BACKUP 84"#), Some(("x".into(), InstanceState::Backup)));
    assert_eq!(parse_notify(r#"INSTANCE "x" FAULT 0"#).map(|p| p.1), Some(InstanceState::Fault));
    assert_eq!(parse_notify(r#"GROUP "g" MASTER"#), None);
    assert_eq!(parse_notify("INSTANCE \"unterminated MASTER"), None);
    assert_eq!(parse_notify(""), None);
}

proptest! {
    /// Every node computes the same VRIDs, whatever the order of the decisions; VRIDs are unique per family
    /// and in range.
    #[test]
    fn vrids_are_unique_in_range_and_independent_of_input_order(
        count in 1usize..40,
        first in 1u8..100,
        seed in any::<u64>(),
    ) {
        let nodes = ["a", "b", "c", "d"];
        let mut decisions: Vec<Decision> = (0..count)
            .map(|i| {
                let mut ranking = nodes.to_vec();
                ranking.rotate_left((seed as usize + i) % 4);
                ranking.truncate(1 + (i % 4));
                decision(&format!("s{i}"), &[&format!("192.0.2.{}", i + 1), &format!("2001:db8::{:x}", i + 1)], &ranking)
            })
            .collect();
        let settings = Settings { vrid_first: first, vrid_last: first + 60, ..settings() };
        let a = groups(&decisions, &settings).unwrap();
        decisions.reverse();
        let b = groups(&decisions, &settings).unwrap();
        prop_assert_eq!(&a, &b);
        for ipv4 in [true, false] {
            let vrids: Vec<u8> = a.iter().filter(|g| g.key.ipv4 == ipv4).map(|g| g.vrid).collect();
            let unique: BTreeSet<u8> = vrids.iter().copied().collect();
            prop_assert_eq!(unique.len(), vrids.len());
            prop_assert!(vrids.iter().all(|v| *v >= first && *v <= first + 60));
        }
    }

    #[test]
    fn notify_parsing_never_panics(line in "\\PC{0,80}") {
        let _ = parse_notify(&line);
    }
}
