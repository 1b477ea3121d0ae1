//! `ferrolb migrate` on manifests written from MetalLB's documented formats.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use ferrolb_cli::migrate::{MigrateError, migrate};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)).unwrap()
}

#[test]
fn documented_pools_and_advertisements_convert_field_for_field() {
    let migration = migrate(&fixture("metallb-documented.yaml")).unwrap();
    let names: Vec<_> = migration.pools.iter().map(|p| p.metadata.name.clone().unwrap()).collect();
    assert_eq!(names, ["first-pool", "expensive", "ns-specific"]);
    let first = &migration.pools[0];
    assert_eq!(first.metadata.namespace, None, "ferrolb pools are cluster-scoped");
    assert_eq!(first.metadata.labels.as_ref().unwrap()["zone"], "east", "labels kept for pool selectors");
    let entries: Vec<&str> = first.spec.addresses.iter().map(|a| a.as_str()).collect();
    assert_eq!(entries, ["192.168.10.0/24", "192.168.9.1-192.168.9.5", "fc00:f853:0ccd:e799::/124"]);
    assert!(first.spec.auto_assign && !first.spec.avoid_buggy_ips);
    let expensive = &migration.pools[1];
    assert!(!expensive.spec.auto_assign && expensive.spec.avoid_buggy_ips);
    let specific = &migration.pools[2];
    assert_eq!(specific.spec.addresses[0].as_str(), "192.168.20.0-192.168.20.20", "spaces around the dash removed");
    let allocation = specific.spec.service_allocation.as_ref().unwrap();
    assert_eq!(allocation.priority, Some(50));
    assert_eq!(allocation.namespaces, ["namespace-a", "namespace-b"]);
    assert_eq!(allocation.namespace_selectors.len(), 1);
    assert_eq!(allocation.service_selectors[0].match_expressions.as_ref().unwrap()[0].key, "app");

    assert_eq!(migration.advertisements.len(), 2);
    let example = &migration.advertisements[0].spec;
    assert_eq!(example.ip_address_pools, ["first-pool"]);
    assert_eq!(example.interfaces, ["eth3"]);
    assert_eq!(example.node_selectors[0].match_labels.as_ref().unwrap()["kubernetes.io/hostname"], "NodeA");
    assert_eq!(migration.advertisements[1].spec.ip_address_pool_selectors.len(), 1);

    assert!(migration.warnings.is_empty(), "{:?}", migration.warnings);
    // BGP: peers, profiles and advertisements field for field, Community aliases resolved; a password
    // written in the BGPPeer is the one thing left out, and said so.
    assert_eq!(migration.unconverted.len(), 1, "{:?}", migration.unconverted);
    assert!(
        migration.unconverted[0].starts_with("BGPPeer metallb-system/with-password: spec.password is not carried over")
    );
    assert_eq!(migration.bgp_peers.len(), 2);
    let with_password = &migration.bgp_peers[1].spec;
    assert_eq!((with_password.my_asn, with_password.peer_asn), (64500, 64500));
    assert_eq!(with_password.peer_address, "10.0.0.2");
    assert_eq!(with_password.bfd_profile.as_deref(), Some("fast"));
    assert_eq!(with_password.hold_time.as_deref(), Some("9s"));
    assert_eq!(migration.bfd_profiles[0].spec.receive_interval, Some(100));
    assert_eq!(migration.bgp_advertisements.len(), 2);
    let tagged = &migration.bgp_advertisements[1].spec;
    assert_eq!(tagged.peers, ["sample"]);
    assert_eq!(tagged.local_pref, Some(50));
    let communities: Vec<&str> = tagged.communities.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(communities, ["65535:65282", "64500:7"]);
    assert_eq!(tagged.large_communities[0].0, "64500:1:2");

    // The output reads back as ferrolb objects.
    let yaml = migration.to_yaml().unwrap();
    let documents: Vec<serde_json::Value> =
        serde_yaml_ng::Deserializer::from_str(&yaml).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect();
    assert_eq!(documents.len(), 10);
    assert!(documents.iter().all(|d| d["apiVersion"] == "ferrolb.io/v1alpha1"));
    let _: ferrolb_crds::IPAddressPool = serde_json::from_value(documents[0].clone()).unwrap();
    let _: ferrolb_crds::L2Advertisement = serde_json::from_value(documents[4].clone()).unwrap();
}

#[test]
fn the_legacy_configmap_becomes_pools_and_layer2_advertisements() {
    let migration = migrate(&fixture("metallb-legacy-configmap.yaml")).unwrap();
    assert_eq!(migration.pools.len(), 2);
    assert_eq!(migration.pools[0].spec.addresses[0].as_str(), "192.168.1.240-192.168.1.250");
    assert!(!migration.pools[1].spec.auto_assign);
    assert_eq!(migration.advertisements.len(), 1, "only the layer2 pool is announced");
    assert_eq!(migration.advertisements[0].spec.ip_address_pools, ["default"]);
    assert!(migration.unconverted[0].contains("metallb-system/bgp-pool"), "{:?}", migration.unconverted);
}

#[test]
fn what_ferrolb_would_refuse_is_an_error_naming_it() {
    let bad = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: p}\nspec:\n  addresses: [192.168.1.1/24]\n";
    let error = migrate(bad).unwrap_err();
    assert!(matches!(error, MigrateError::Invalid { .. }));
    assert!(error.to_string().contains("192.168.1.1/24") && error.to_string().contains("\"p\""), "{error}");
    assert!(matches!(migrate("{not: [valid").unwrap_err(), MigrateError::Yaml { .. }));
    let other = migrate("apiVersion: v1\nkind: Service\nmetadata: {name: web}\n").unwrap();
    assert!(other.pools.is_empty() && other.warnings[0].contains("not MetalLB"));
}

fn names(objects: impl IntoIterator<Item = Option<String>>) -> Vec<String> {
    objects.into_iter().map(Option::unwrap).collect()
}

/// What `kubectl get ipaddresspools,l2advertisements -A -o yaml` (and `-o json`) prints: a `List` with
/// server-filled metadata and status, one pool name used in two namespaces.
#[test]
fn kubectl_get_output_converts_with_every_field_and_no_collision() {
    for fixture_name in ["kubectl-get-list.yaml", "kubectl-get-list.json"] {
        let migration = migrate(&fixture(fixture_name)).unwrap();
        assert!(migration.unconverted.is_empty(), "{fixture_name}: {:?}", migration.unconverted);
        assert_eq!(
            names(migration.pools.iter().map(|p| p.metadata.name.clone())),
            ["metallb-system-default", "metallb-lab-default"],
            "{fixture_name}"
        );
        let lab = &migration.pools[1];
        assert!(!lab.spec.auto_assign && lab.spec.avoid_buggy_ips);
        assert_eq!(lab.spec.service_allocation.as_ref().unwrap().priority, Some(10));
        assert_eq!(lab.metadata.labels.as_ref().unwrap()["tier"], "edge");
        assert_eq!(lab.metadata.namespace, None);
        assert!(lab.metadata.uid.is_none() && lab.metadata.resource_version.is_none(), "server fields dropped");
        assert!(lab.status.is_none());

        let [system, other] = &migration.advertisements[..] else { panic!("{:?}", migration.advertisements) };
        assert_eq!(system.metadata.name.as_deref(), Some("metallb-system-l2"));
        assert_eq!(system.spec.ip_address_pools, ["metallb-system-default"], "references follow the rename");
        assert_eq!(
            system.spec.service_selectors[0].match_labels.as_ref().unwrap()["exposure"],
            "lan",
            "serviceSelectors kept: dropping them would announce every Service"
        );
        assert_eq!(system.spec.interfaces, ["eth0"]);
        assert_eq!(system.spec.node_selectors.len(), 1);
        assert_eq!(other.spec.ip_address_pools, ["metallb-lab-default"]);
        assert_eq!(migration.warnings.len(), 4, "{:?}", migration.warnings);
        assert!(
            migration.warnings[0].contains("IPAddressPool metallb-system/default is named \"metallb-system-default\"")
        );
    }
}

#[test]
fn what_cannot_be_carried_over_is_named_by_object_and_field() {
    let input = "apiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: l2, namespace: metallb-system}\n\
                 spec: {ipAddressPools: [p], nodeSelectors: [], frobnicate: true}\n---\n\
                 apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: p, namespace: metallb-system}\n\
                 spec: {addresses: [192.0.2.1], serviceAllocation: {priority: 1, colour: red}}\n";
    let migration = migrate(input).unwrap();
    assert_eq!(
        migration.unconverted,
        [
            "L2Advertisement metallb-system/l2: spec.frobnicate has no ferrolb equivalent",
            "IPAddressPool metallb-system/p: spec.serviceAllocation.colour has no ferrolb equivalent",
        ]
    );
}

/// The command refuses a partial migration (exit 1, nothing on stdout) unless told `--allow-partial`.
#[test]
fn the_command_fails_on_what_it_cannot_carry_over_unless_allowed() {
    let run = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_ferrolb"))
            .args(["migrate", "-f"])
            .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/metallb-documented.yaml"))
            .args(args)
            .output()
            .unwrap();
        (output.status.success(), String::from_utf8(output.stdout).unwrap(), String::from_utf8(output.stderr).unwrap())
    };
    let (ok, stdout, stderr) = run(&[]);
    assert!(!ok && stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("error: BGPPeer metallb-system/with-password"), "{stderr}");
    let (ok, stdout, stderr) = run(&["--allow-partial"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("kind: IPAddressPool") && stderr.contains("not converted: BGPPeer"), "{stderr}");
}
