//! The API server itself validates ferrolb's resources from the generated CRDs (OpenAPI + CEL): bad pools are
//! refused at `kubectl apply`, with a message that names the bad entry, and no webhook is involved.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed step should stop the test, loudly

use ferrolb_crds::{IPAddressPool, IPAddressPoolSpec, L2Advertisement, L2AdvertisementSpec};
use ferrolb_e2e::objects::install_ferrolb_crds;
use ferrolb_e2e::{ControlPlane, names};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};

async fn pools() -> Api<IPAddressPool> {
    let client = ControlPlane::shared().admin_client().await.unwrap();
    install_ferrolb_crds(&client).await.unwrap();
    Api::all(client)
}

fn pool(addresses: &[&str]) -> IPAddressPool {
    let mut pool = IPAddressPool::new(&names::unique("pool"), IPAddressPoolSpec::with_addresses(addresses));
    pool.metadata.labels = Some([("test".to_string(), "crds".to_string())].into());
    pool
}

/// Creates the pool and returns the API server's refusal message (panics if it was accepted).
async fn refusal(api: &Api<IPAddressPool>, addresses: &[&str]) -> String {
    match api.create(&PostParams::default(), &pool(addresses)).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "expected 422 Invalid for {addresses:?}: {status:?}");
            status.message
        }
        Ok(_) => panic!("the API server accepted the pool {addresses:?}"),
        Err(e) => panic!("unexpected error for {addresses:?}: {e}"),
    }
}

#[tokio::test]
async fn valid_pools_of_every_form_are_accepted_with_defaults() {
    let api = pools().await;
    let created = api
        .create(
            &PostParams::default(),
            &pool(&[
                "192.0.2.0/28",
                "198.51.100.10-198.51.100.20",
                "203.0.113.7",
                "2001:db8::/120",
                "2001:db8:1::10-2001:db8:1::20",
                "2001:db8:2::1",
            ]),
        )
        .await
        .unwrap();
    assert_eq!(created.spec.addresses.len(), 6);
    // Defaults come from the schema: a bare pool auto-assigns and is neither draining nor avoiding .0/.255.
    let raw = serde_json::json!({
        "apiVersion": "ferrolb.io/v1alpha1", "kind": "IPAddressPool",
        "metadata": {"name": names::unique("bare")},
        "spec": {"addresses": ["192.0.2.64/29"]}
    });
    let bare: IPAddressPool = serde_json::from_value(raw).unwrap();
    let stored = api.create(&PostParams::default(), &bare).await.unwrap();
    assert!(stored.spec.auto_assign);
    assert!(!stored.spec.disabled && !stored.spec.avoid_buggy_ips);
}

#[tokio::test]
async fn malformed_addresses_are_refused_naming_the_entry() {
    let api = pools().await;
    let message = refusal(&api, &["192.0.2.0/28", "192.0.2.300/24"]).await;
    assert!(
        message.contains("spec.addresses[1]") && message.contains("\"192.0.2.300/24\" is not an IP address"),
        "{message}"
    );
    let message = refusal(&api, &["not-an-address"]).await;
    assert!(message.contains("\"not-an-address\" is not an IP address"), "{message}");
    let message = refusal(&api, &["192.0.2.1-192.0.2"]).await;
    assert!(message.contains("\"192.0.2.1-192.0.2\""), "{message}");
}

#[tokio::test]
async fn cidrs_with_host_bits_are_refused() {
    let api = pools().await;
    let message = refusal(&api, &["192.0.2.1/24"]).await;
    assert!(message.contains("\"192.0.2.1/24\" has bits set after its prefix length"), "{message}");
    let message = refusal(&api, &["2001:db8::1/64"]).await;
    assert!(message.contains("\"2001:db8::1/64\""), "{message}");
}

#[tokio::test]
async fn reversed_and_mixed_family_ranges_are_refused() {
    let api = pools().await;
    let message = refusal(&api, &["10.0.0.9-10.0.0.1"]).await;
    assert!(message.contains("range \"10.0.0.9-10.0.0.1\" is reversed"), "{message}");
    let message = refusal(&api, &["192.0.2.10-192.0.2.9"]).await;
    assert!(message.contains("is reversed"), "{message}");
    let message = refusal(&api, &["192.0.2.1-2001:db8::1"]).await;
    assert!(message.contains("range \"192.0.2.1-2001:db8::1\" mixes IPv4 and IPv6"), "{message}");
    // A one-address range is fine.
    api.create(&PostParams::default(), &pool(&["192.0.2.9-192.0.2.9"])).await.unwrap();
}

#[tokio::test]
async fn a_pool_without_addresses_is_refused() {
    let api = pools().await;
    let message = refusal(&api, &[]).await;
    assert!(message.contains("spec.addresses"), "{message}");
}

#[tokio::test]
async fn l2_advertisements_are_served() {
    let client = ControlPlane::shared().admin_client().await.unwrap();
    install_ferrolb_crds(&client).await.unwrap();
    let api: Api<L2Advertisement> = Api::all(client);
    let name = names::unique("adv");
    let advertisement = L2Advertisement::new(
        &name,
        L2AdvertisementSpec {
            ip_address_pools: vec!["a".into()],
            interfaces: vec!["eth0".into()],
            ..Default::default()
        },
    );
    api.create(&PostParams::default(), &advertisement).await.unwrap();
    assert_eq!(api.get(&name).await.unwrap().spec.interfaces, ["eth0"]);
}

/// `ferrolb migrate`'s output, for MetalLB's documented examples and for what `kubectl get -A -o yaml`
/// prints, is accepted by the API server as it is.
#[tokio::test]
async fn migrated_metallb_configuration_is_accepted_by_the_api_server() {
    for (fixture, objects) in [("metallb-documented.yaml", 10), ("kubectl-get-list.yaml", 4)] {
        migrated_is_accepted(fixture, objects).await;
    }
}

async fn migrated_is_accepted(fixture: &str, objects: usize) {
    let _ = pools().await; // the CRDs
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../cli/tests/fixtures").join(fixture);
    let migrated = ferrolb_cli::migrate::migrate(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    let plane = ControlPlane::shared();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ferrolb.yaml");
    // Unique names: the shared API server serves other tests too.
    let yaml = migrated.to_yaml().unwrap().replace("name: ", &format!("name: {}-", names::unique("mig")));
    std::fs::write(&file, yaml).unwrap();
    let output = std::process::Command::new(ferrolb_e2e::toolchain::K8sBinary::Kubectl.path())
        .arg("--kubeconfig")
        .arg(plane.kubeconfig_path())
        .args(["apply", "--dry-run=server", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(stdout.matches("(server dry run)").count(), objects, "{stdout}");
}

/// The short names and the `ferrolb` category resolve on a real API server (kubectl's discovery).
#[tokio::test]
async fn short_names_and_the_ferrolb_category_work_with_kubectl() {
    let _ = pools().await; // the CRDs
    let plane = ControlPlane::shared();
    for what in
        ["flbpool", "flbl2adv", "flbl2ann", "flbpeer", "flbbfd", "flbbgpadv", "ferrolb", "ipaddresspools.ferrolb.io"]
    {
        let output = std::process::Command::new(ferrolb_e2e::toolchain::K8sBinary::Kubectl.path())
            .arg("--kubeconfig")
            .arg(plane.kubeconfig_path())
            .args(["get", what, "-A"])
            .output()
            .unwrap();
        assert!(output.status.success(), "kubectl get {what}: {}", String::from_utf8_lossy(&output.stderr));
    }
}

/// The CRD upgrade path (`helm upgrade` leaves `crds/` alone): `ferrolb crds`, server-side applied, brings a
/// CRD an older chart installed up to date.
#[tokio::test]
async fn ferrolb_crds_server_side_applied_upgrades_an_older_crd() {
    let _ = pools().await; // the CRDs
    let plane = ControlPlane::shared();
    let client = plane.admin_client().await.unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    let name = "l2advertisements.ferrolb.io";
    // "An older version": one printer column fewer (harmless to the tests sharing this API server).
    let mut older = crds.get(name).await.unwrap();
    older.metadata.managed_fields = None;
    older.spec.versions[0].additional_printer_columns.as_mut().unwrap().pop();
    let shortened = older.spec.versions[0].additional_printer_columns.as_ref().unwrap().len();
    crds.replace(name, &PostParams::default(), &older).await.unwrap();

    let output =
        ferrolb_e2e::objects::apply_printed_crds(&plane.kubeconfig_path(), &["--field-manager", "ferrolb-crds"])
            .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let every_crd = ferrolb_crds::all_crds().len();
    assert_eq!(String::from_utf8_lossy(&output.stdout).matches("serverside-applied").count(), every_crd);
    let now = crds.get(name).await.unwrap();
    assert_eq!(now.spec.versions[0].additional_printer_columns.as_ref().unwrap().len(), shortened + 1);
}

/// Creates `object` (JSON) of the cluster-scoped `plural` and returns the refusal message, or `None` when
/// the API server accepted it.
async fn created(plural: &str, kind: &str, spec: serde_json::Value) -> Option<String> {
    let client = ControlPlane::shared().admin_client().await.unwrap();
    install_ferrolb_crds(&client).await.unwrap();
    let resource = kube::core::ApiResource {
        group: "ferrolb.io".into(),
        version: "v1alpha1".into(),
        api_version: "ferrolb.io/v1alpha1".into(),
        kind: kind.into(),
        plural: plural.into(),
    };
    let api: Api<kube::core::DynamicObject> = Api::all_with(client, &resource);
    let mut object = kube::core::DynamicObject::new(&names::unique("bgp"), &resource);
    object.data = serde_json::json!({ "spec": spec });
    match api.create(&PostParams::default(), &object).await {
        Ok(_) => None,
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "expected 422 Invalid for {spec}: {status:?}");
            Some(status.message)
        }
        Err(e) => panic!("unexpected error for {spec}: {e}"),
    }
}

#[tokio::test]
async fn bgp_peers_profiles_and_advertisements_are_checked_by_the_api_server() {
    let peer = |extra: serde_json::Value| {
        let mut spec = serde_json::json!({ "myASN": 64512, "peerASN": 64500, "peerAddress": "192.0.2.1" });
        spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        spec
    };
    let full = peer(serde_json::json!({
        "peerPort": 1179, "sourceAddress": "192.0.2.10", "holdTime": "9s", "keepaliveTime": "3s",
        "connectTime": "5s", "ebgpMultiHop": true, "bfdProfile": "fast", "enableGracefulRestart": true,
        "passwordSecret": { "name": "bgp-password" },
        "nodeSelectors": [{ "matchLabels": { "rack": "a" } }],
    }));
    assert_eq!(created("bgppeers", "BGPPeer", full).await, None);
    let refused = [
        (peer(serde_json::json!({ "peerAddress": "router.example" })), "peerAddress must be an IP address"),
        (peer(serde_json::json!({ "holdTime": "2s" })), "holdTime must be 0s or at least 3s"),
        (peer(serde_json::json!({ "holdTime": "ninety" })), "spec.holdTime"),
        (peer(serde_json::json!({ "holdTime": "9s", "keepaliveTime": "9s" })), "keepaliveTime must be shorter"),
        (peer(serde_json::json!({ "sourceAddress": "2001:db8::1" })), "same family"),
        (peer(serde_json::json!({ "myASN": 0 })), "spec.myASN"),
        (peer(serde_json::json!({ "connectTime": "0s" })), "connectTime must be between"),
    ];
    for (spec, expected) in refused {
        let message = created("bgppeers", "BGPPeer", spec.clone()).await.unwrap_or_else(|| panic!("accepted {spec}"));
        assert!(message.contains(expected), "{spec}: {message}");
    }

    let profile = serde_json::json!({ "receiveInterval": 100, "transmitInterval": 100, "detectMultiplier": 3 });
    assert_eq!(created("bfdprofiles", "BFDProfile", profile).await, None);
    let message = created("bfdprofiles", "BFDProfile", serde_json::json!({ "receiveInterval": 5 })).await.unwrap();
    assert!(message.contains("spec.receiveInterval"), "{message}");

    let advertisement = serde_json::json!({
        "ipAddressPools": ["bgp"], "peers": ["router"], "aggregationLength": 32, "aggregationLengthV6": 128,
        "localPref": 100, "communities": ["64500:100", "no-export"], "largeCommunities": ["64500:1:2"],
    });
    assert_eq!(created("bgpadvertisements", "BGPAdvertisement", advertisement).await, None);
    for (spec, expected) in [
        (serde_json::json!({ "communities": ["65536:1"] }), "a community is ASN:VALUE"),
        (serde_json::json!({ "communities": ["friends"] }), "a community is ASN:VALUE"),
        (serde_json::json!({ "largeCommunities": ["1:2"] }), "a large community is"),
        (serde_json::json!({ "aggregationLength": 33 }), "spec.aggregationLength"),
    ] {
        let message = created("bgpadvertisements", "BGPAdvertisement", spec.clone()).await.unwrap();
        assert!(message.contains(expected), "{spec}: {message}");
    }
}
