//! The test platform itself works: a real API server with RBAC, tokens for ServiceAccounts, a LAN of node
//! namespaces where pool addresses stay unreachable until something announces them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed step should stop the test, loudly

use ferrolb_e2e::control_plane::client_from_kubeconfig;
use ferrolb_e2e::netlab::{DEFAULT_POOL_V4, LabSpec};
use ferrolb_e2e::objects::{Backend, NodeSpec, apply_endpoint_slice, apply_node, create_namespace};
use ferrolb_e2e::{ControlPlane, Lab, names, netns};
use k8s_openapi::api::core::v1::{Node, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};

/// An address inside the lab's locally routed pool prefix that nothing announces.
const UNANNOUNCED_V4: &str = "192.0.2.200";
const UNANNOUNCED_V6: &str = "2001:db8::200";

#[tokio::test]
async fn service_and_node_are_stored_and_read_back_with_rbac_on() {
    let plane = ControlPlane::shared();
    let client = plane.admin_client().await.unwrap();
    let namespace = names::unique("platform");
    create_namespace(&client, &namespace).await.unwrap();

    let node_name = names::unique("node");
    apply_node(&client, &NodeSpec::new(&node_name, &["192.0.2.11", "2001:db8::11"]).label("zone", "a")).await.unwrap();
    let node = Api::<Node>::all(client.clone()).get(&node_name).await.unwrap();
    let addresses: Vec<String> = node.status.unwrap().addresses.unwrap().into_iter().map(|a| a.address).collect();
    assert_eq!(addresses, ["192.0.2.11", "2001:db8::11"]);
    assert_eq!(node.metadata.labels.unwrap()["zone"], "a");

    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    let service = Service {
        metadata: ObjectMeta { name: Some("web".into()), ..Default::default() },
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            ip_family_policy: Some("PreferDualStack".into()),
            ports: Some(vec![ServicePort { port: 80, ..Default::default() }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    services.create(&PostParams::default(), &service).await.unwrap();
    let stored = services.get("web").await.unwrap().spec.unwrap();
    assert_eq!(stored.type_.as_deref(), Some("LoadBalancer"));
    // Both families are configured, so a PreferDualStack Service gets a ClusterIP of each.
    assert_eq!(stored.ip_families.unwrap(), ["IPv4", "IPv6"]);

    apply_endpoint_slice(
        &client,
        &namespace,
        "web",
        "IPv4",
        80,
        &[Backend { node: node_name.clone(), address: "203.0.113.5".into(), ready: true }],
    )
    .await
    .unwrap();
    let slices = Api::<EndpointSlice>::namespaced(client, &namespace)
        .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
        .await
        .unwrap();
    assert_eq!(slices.items.len(), 1);
    assert_eq!(slices.items[0].endpoints.as_ref().unwrap()[0].node_name.as_deref(), Some(node_name.as_str()));
}

#[tokio::test]
async fn service_account_without_rights_is_authenticated_but_refused() {
    let plane = ControlPlane::shared();
    let admin = plane.admin_client().await.unwrap();
    let namespace = names::unique("rbac");
    create_namespace(&admin, &namespace).await.unwrap();

    let kubeconfig = plane.service_account_kubeconfig(&namespace, "nobody").await.unwrap();
    let nobody = client_from_kubeconfig(&kubeconfig).await.unwrap();
    match Api::<Service>::namespaced(nobody.clone(), &namespace).list(&ListParams::default()).await {
        // 403, not 401: the token is valid and names the ServiceAccount; RBAC gives it nothing.
        Err(kube::Error::Api(status)) => {
            assert!(status.is_forbidden(), "expected 403 Forbidden, got {status:?}");
            assert!(
                status.message.contains(&format!("system:serviceaccount:{namespace}:nobody")),
                "{}",
                status.message
            );
        }
        other => panic!("a ServiceAccount without rights listed Services: {other:?}"),
    }
    // A garbage token is not even authenticated.
    let bogus = plane.dir().join(format!("{namespace}-bogus.kubeconfig"));
    plane.write_kubeconfig(&bogus, "bogus", "not-a-token").unwrap();
    let bogus = client_from_kubeconfig(&bogus).await.unwrap();
    match Api::<Service>::namespaced(bogus, &namespace).list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 401, "{status:?}"),
        other => panic!("an unknown token was accepted: {other:?}"),
    }
}

#[tokio::test]
async fn client_reaches_each_node_http_server_by_node_ip_on_both_families() {
    let plane = ControlPlane::shared();
    let lab = Lab::start(LabSpec::for_test(2, plane.port())).unwrap();
    for node in lab.nodes() {
        let v4 = lab.client_curl(&format!("http://{}/", node.ipv4), 5).unwrap();
        assert_eq!(v4.as_deref(), Some(node.name.as_str()), "IPv4 {}", node.ipv4);
        let v6 = lab.client_curl(&format!("http://[{}]/", node.ipv6), 5).unwrap();
        assert_eq!(v6.as_deref(), Some(node.name.as_str()), "IPv6 {}", node.ipv6);
    }
}

#[tokio::test]
async fn pool_addresses_are_served_locally_but_never_answered_by_the_kernel() {
    let plane = ControlPlane::shared();
    let lab = Lab::start(LabSpec::for_test(2, plane.port())).unwrap();
    let node = &lab.nodes()[0];
    let client = lab.client();

    // Inside the node, the pool is local: its HTTP server answers on a pool address (as with kube-proxy).
    let local =
        netns::exec(&node.netns, "curl", &["-sS", "-g", "--max-time", "5", &format!("http://{UNANNOUNCED_V4}/")])
            .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&local.stdout).trim(),
        node.name,
        "pool address not routed locally in {}",
        node.netns
    );
    let local6 =
        netns::exec(&node.netns, "curl", &["-sS", "-g", "--max-time", "5", &format!("http://[{UNANNOUNCED_V6}]/")])
            .unwrap();
    assert_eq!(String::from_utf8_lossy(&local6.stdout).trim(), node.name);

    // The node's own address is answered (so silence below means "not announced", not "broken LAN")...
    let arping =
        |target: &str| lab.client_exec("arping", &["-c", "2", "-w", "2", "-i", &client.interface, target]).unwrap();
    let answered = arping(&node.ipv4);
    assert!(
        answered.status.success(),
        "no ARP reply from node {}: {}",
        node.ipv4,
        String::from_utf8_lossy(&answered.stdout)
    );
    assert!(
        String::from_utf8_lossy(&answered.stdout).to_lowercase().contains(&node.mac),
        "reply not from {}",
        node.mac
    );
    // ...and a pool address is not.
    let silent = arping(UNANNOUNCED_V4);
    assert!(
        !silent.status.success(),
        "the kernel answered ARP for pool address {UNANNOUNCED_V4}: {}",
        String::from_utf8_lossy(&silent.stdout)
    );

    let ndisc =
        |target: &str| lab.client_exec("ndisc6", &["-1", "-r", "2", "-w", "500", target, &client.interface]).unwrap();
    let answered6 = ndisc(&node.ipv6);
    assert!(
        answered6.status.success(),
        "no NA from node {}: {}",
        node.ipv6,
        String::from_utf8_lossy(&answered6.stdout)
    );
    assert!(String::from_utf8_lossy(&answered6.stdout).to_lowercase().contains(&node.mac));
    let silent6 = ndisc(UNANNOUNCED_V6);
    assert!(!silent6.status.success(), "the kernel answered NDP for pool address {UNANNOUNCED_V6}");

    // And so the client cannot reach it.
    assert_eq!(lab.client_curl(&format!("http://{UNANNOUNCED_V4}/"), 2).unwrap(), None);
    assert!(DEFAULT_POOL_V4.starts_with("192.0.2."));
}

#[tokio::test]
async fn api_server_is_reachable_from_inside_node_namespaces_with_the_same_kubeconfig() {
    let plane = ControlPlane::shared();
    let lab = Lab::start(LabSpec::for_test(1, plane.port())).unwrap();
    let node = &lab.nodes()[0];
    let kubeconfig = plane.kubeconfig_path();
    let kubectl = ferrolb_e2e::toolchain::K8sBinary::Kubectl.path();
    let output = netns::exec(
        &node.netns,
        &kubectl.to_string_lossy(),
        &["--kubeconfig", &kubeconfig.to_string_lossy(), "get", "--raw", "/readyz"],
    )
    .unwrap();
    assert!(output.status.success(), "kubectl in {} failed: {}", node.netns, String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "ok");
}

#[tokio::test]
async fn dropping_a_lab_removes_its_namespaces_and_processes() {
    let plane = ControlPlane::shared();
    let lab = Lab::start(LabSpec::for_test(2, plane.port())).unwrap();
    let namespaces = lab.namespaces();
    // A process left running inside a node, as a crashed test might leave a speaker.
    let sleeper =
        std::process::Command::new("ip").args(["netns", "exec", &namespaces[2], "sleep", "300"]).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    drop(lab);
    let remaining = netns::list();
    for ns in &namespaces {
        assert!(!remaining.contains(ns), "{ns} still exists after drop");
    }
    let mut sleeper = sleeper;
    let status = sleeper.wait().unwrap();
    assert!(!status.success(), "the process inside the lab was not killed");
}

#[test]
fn sweep_removes_namespaces_of_dead_test_processes_only() {
    let dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    let mut dead = dead;
    dead.wait().unwrap();
    let orphan = format!("{}{dead_pid}-0-node-1", ferrolb_e2e::sweep::TEST_PREFIX);
    let ours = format!("{}{}-999-node-1", ferrolb_e2e::sweep::TEST_PREFIX, std::process::id());
    netns::ip(&["netns", "add", &orphan]).unwrap();
    netns::ip(&["netns", "add", &ours]).unwrap();

    let removed = ferrolb_e2e::sweep::sweep_leftovers();
    let remaining = netns::list();
    netns::delete(&ours);
    assert!(removed.contains(&orphan), "orphan {orphan} not swept: {removed:?}");
    assert!(!remaining.contains(&orphan));
    assert!(remaining.contains(&ours), "a live test's namespace was swept");
}
