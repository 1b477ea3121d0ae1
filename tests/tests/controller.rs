//! The controller against a real API server: Services of its class get addresses from its pools, written
//! to status with a condition and Events; bad input is explained on the object; restarts and a second
//! replica never move or duplicate an address.
//!
//! Each test runs its own controller with its own load-balancer class and pool label, so tests sharing the
//! API server never touch each other's Services or pools.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed step should stop the test, loudly

use ferrolb_crds::reason;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;

use ferrolb_crds::{IPAddressPool, IPAddressPoolSpec, L2Advertisement, L2AdvertisementSpec};
use ferrolb_e2e::objects::{NodeSpec, apply_node, create_namespace, install_ferrolb_crds};
use ferrolb_e2e::process::workspace_binary;
use ferrolb_e2e::{ControlPlane, ManagedProcess, names};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use nix::sys::signal::Signal;

const WAIT: Duration = Duration::from_secs(60);

struct Setup {
    plane: &'static ControlPlane,
    client: kube::Client,
    namespace: String,
    class: String,
    tag: String,
    logs: tempfile::TempDir,
    controllers: Vec<ManagedProcess>,
    /// Each started controller's /metrics port.
    metrics_ports: Vec<u16>,
}

impl Setup {
    async fn new() -> Self {
        let plane = ControlPlane::shared();
        let client = plane.admin_client().await.unwrap();
        install_ferrolb_crds(&client).await.unwrap();
        let namespace = names::unique("ctl");
        create_namespace(&client, &namespace).await.unwrap();
        let tag = namespace.clone();
        Self {
            plane,
            client,
            class: format!("{tag}.test/lb"),
            namespace,
            tag,
            logs: tempfile::tempdir().unwrap(),
            controllers: Vec::new(),
            metrics_ports: Vec::new(),
        }
    }

    fn start_controller(&mut self) -> usize {
        self.start_controller_with(&[])
    }

    fn start_controller_with(&mut self, extra_args: &[&str]) -> usize {
        let index = self.controllers.len();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        self.metrics_ports.push(port);
        let metrics_address = format!("127.0.0.1:{port}");
        let mut command = Command::new(workspace_binary("ferrolb-controller").unwrap());
        command
            .args(["--load-balancer-class", &self.class, "--ignore-unset-class"])
            .args(["--pool-selector", &format!("ferrolb-test={}", self.tag)])
            .args(["--namespace", &self.namespace, "--identity", &format!("replica-{index}")])
            .args([
                "--metrics-address",
                &metrics_address,
                "--lease-duration-seconds",
                "4",
                "--lease-grace-seconds",
                "1",
            ])
            .args(extra_args)
            .env("KUBECONFIG", self.plane.kubeconfig_path())
            .env("RUST_LOG", "info,ferrolb_controller=debug");
        let log = self.logs.path().join(format!("controller-{index}.log"));
        self.controllers.push(ManagedProcess::spawn(&format!("controller-{index}"), command, &log).unwrap());
        index
    }

    fn logs(&self) -> String {
        self.controllers.iter().map(|c| format!("--- {}:\n{}", c.name(), c.log_tail(40))).collect::<Vec<_>>().join("\n")
    }

    async fn pool(&self, name: &str, addresses: &[&str], edit: impl FnOnce(&mut IPAddressPoolSpec)) -> String {
        let name = format!("{}-{name}", self.tag);
        let mut spec = IPAddressPoolSpec::with_addresses(addresses);
        edit(&mut spec);
        let mut pool = IPAddressPool::new(&name, spec);
        pool.metadata.labels = Some(BTreeMap::from([("ferrolb-test".to_string(), self.tag.clone())]));
        Api::<IPAddressPool>::all(self.client.clone())
            .patch(&name, &PatchParams::apply("test").force(), &Patch::Apply(&pool))
            .await
            .unwrap();
        name
    }

    fn services(&self) -> Api<Service> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn service_object(&self, name: &str, policy: &str, annotations: &[(&str, &str)]) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: Some(annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("LoadBalancer".into()),
                load_balancer_class: Some(self.class.clone()),
                // Thousands of test Services must not exhaust the node-port range.
                allocate_load_balancer_node_ports: Some(false),
                ip_family_policy: Some(policy.into()),
                ports: Some(vec![ServicePort { port: 80, ..Default::default() }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    async fn service(&self, name: &str, policy: &str, annotations: &[(&str, &str)]) {
        self.services().create(&PostParams::default(), &self.service_object(name, policy, annotations)).await.unwrap();
    }

    /// Waits until the Service's status has addresses, and returns them.
    async fn ips(&self, name: &str) -> Vec<String> {
        eventually(
            &format!("an address for {name}"),
            || async {
                let ips = ingress(&self.services().get(name).await.ok()?);
                (!ips.is_empty()).then_some(ips)
            },
            self,
        )
        .await
    }

    /// Waits until ferrolb's condition on the Service has `reason`, and returns it.
    async fn condition(&self, name: &str, reason: &str) -> Condition {
        eventually(
            &format!("condition {reason} on {name}"),
            || async { our_condition(&self.services().get(name).await.ok()?).filter(|c| c.reason == reason) },
            self,
        )
        .await
    }

    /// Waits until an Event with `reason` about the Service exists, and returns its note.
    async fn event(&self, name: &str, reason: &str) -> String {
        let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(self.client.clone(), &self.namespace);
        eventually(
            &format!("event {reason} on {name}"),
            || async {
                let list = events.list(&Default::default()).await.ok()?;
                list.items.into_iter().find_map(|e| {
                    (e.regarding.as_ref()?.name.as_deref() == Some(name) && e.reason.as_deref() == Some(reason))
                        .then(|| e.note.unwrap_or_default())
                })
            },
            self,
        )
        .await
    }
}

fn ingress(service: &Service) -> Vec<String> {
    service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.clone())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| i.ip)
        .collect()
}

fn our_condition(service: &Service) -> Option<Condition> {
    service.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "ferrolb.io/IPAllocated").cloned()
}

async fn eventually<T, F, Fut>(what: &str, mut probe: F, setup: &Setup) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Some(value) = probe().await {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}\n{}", setup.logs());
}

#[tokio::test]
async fn services_get_addresses_with_ip_mode_vip_a_condition_an_event_and_pool_usage() {
    let mut s = Setup::new().await;
    let pool = s.pool("pool", &["192.0.2.16-192.0.2.23", "2001:db8::100-2001:db8::107"], |_| {}).await;
    s.start_controller();
    s.service("single", "SingleStack", &[]).await;
    // Until an L2Advertisement selects the pool, the Service says nobody announces its address.
    let unannounced = s.condition("single", reason::ALLOCATED).await;
    let notice = format!("no L2Advertisement or BGPAdvertisement selects pool \"{pool}\", so no node announces it");
    assert!(unannounced.message.ends_with(&notice), "{}", unannounced.message);
    let spec = L2AdvertisementSpec { ip_address_pools: vec![pool.clone()], ..Default::default() };
    let advertisement = L2Advertisement::new(&pool, spec);
    Api::<L2Advertisement>::all(s.client.clone()).create(&PostParams::default(), &advertisement).await.unwrap();
    s.service("dual", "PreferDualStack", &[]).await;
    assert_eq!(s.ips("single").await, ["192.0.2.16"]);
    assert_eq!(s.ips("dual").await, ["192.0.2.17", "2001:db8::100"]);
    let single = s.services().get("single").await.unwrap();
    let ingress = single
        .status
        .clone()
        .unwrap()
        .load_balancer
        .unwrap()
        .ingress
        .unwrap_or_else(|| panic!("{single:?}\n{}", s.logs()));
    assert_eq!(ingress[0].ip_mode.as_deref(), Some("VIP"));
    let expected = format!("192.0.2.16 from pool \"{pool}\"");
    let condition = eventually(
        "the notice to go",
        || async { our_condition(&s.services().get("single").await.ok()?).filter(|c| c.message == expected) },
        &s,
    )
    .await;
    assert_eq!((condition.status.as_str(), condition.reason.as_str()), ("True", reason::ALLOCATED));
    assert!(s.event("dual", reason::IP_ALLOCATED).await.contains("192.0.2.17, 2001:db8::100"));

    let pools: Api<IPAddressPool> = Api::all(s.client.clone());
    let status = eventually(
        "pool usage",
        || async { pools.get(&pool).await.ok()?.status.filter(|st| st.ipv4.as_ref().is_some_and(|v| v.assigned == 2)) },
        &s,
    )
    .await;
    assert_eq!(status.ipv4.unwrap().available, "6");
    assert_eq!(status.ipv6.unwrap().assigned, 1);
    assert!(status.conditions.iter().any(|c| c.type_ == reason::READY && c.status == "True"));
}

#[tokio::test]
async fn a_restart_keeps_every_address_and_new_services_get_fresh_ones() {
    let mut s = Setup::new().await;
    s.pool("pool", &["198.51.100.0-198.51.100.63"], |_| {}).await;
    s.start_controller();
    for i in 0..20 {
        s.service(&format!("svc-{i}"), "SingleStack", &[]).await;
    }
    let mut before = BTreeMap::new();
    for i in 0..20 {
        before.insert(format!("svc-{i}"), s.ips(&format!("svc-{i}")).await);
    }
    s.controllers.remove(0); // SIGKILL on drop: a crash, not a clean stop
    // While it is down, the pool is re-created with the addresses listed in another order.
    s.pool("pool", &["198.51.100.32-198.51.100.63", "198.51.100.0-198.51.100.31"], |_| {}).await;
    s.start_controller();
    s.service("late", "SingleStack", &[]).await;
    let late = s.ips("late").await;
    let mut after = BTreeMap::new();
    for i in 0..20 {
        after.insert(format!("svc-{i}"), s.ips(&format!("svc-{i}")).await);
    }
    assert_eq!(before, after, "an address moved across a restart\n{}", s.logs());
    assert!(!before.values().any(|ips| ips == &late), "the new Service got an address already in use");
}

#[tokio::test]
async fn two_replicas_never_double_allocate_and_the_standby_takes_over() {
    let mut s = Setup::new().await;
    s.pool("pool", &["203.0.113.0-203.0.113.127"], |_| {}).await;
    s.start_controller();
    s.start_controller();
    for i in 0..40 {
        s.service(&format!("a-{i}"), "SingleStack", &[]).await;
    }
    let mut all = BTreeSet::new();
    for i in 0..40 {
        all.extend(s.ips(&format!("a-{i}")).await);
    }
    assert_eq!(all.len(), 40, "two Services share an address");

    let leases: Api<Lease> = Api::namespaced(s.client.clone(), &s.namespace);
    let leader = leases.get("ferrolb-controller").await.unwrap().spec.unwrap().holder_identity.unwrap();
    let index: usize = leader.trim_start_matches("replica-").parse().unwrap();
    s.controllers[index].signal(Signal::SIGKILL).unwrap();
    for i in 0..20 {
        s.service(&format!("b-{i}"), "SingleStack", &[]).await;
    }
    for i in 0..20 {
        all.extend(s.ips(&format!("b-{i}")).await);
    }
    assert_eq!(all.len(), 60, "two Services share an address after the takeover");
    let new_leader = leases.get("ferrolb-controller").await.unwrap().spec.unwrap().holder_identity.unwrap();
    assert_ne!(new_leader, leader);
}

#[tokio::test]
async fn five_hundred_services_created_at_once_all_get_distinct_addresses() {
    let mut s = Setup::new().await;
    s.pool("pool", &["198.51.100.0-198.51.100.255", "203.0.113.0-203.0.113.255"], |_| {}).await;
    s.start_controller();
    let services = s.services();
    let creations = (0..500).map(|i| {
        let (services, object) = (services.clone(), s.service_object(&format!("bulk-{i}"), "SingleStack", &[]));
        async move { services.create(&PostParams::default(), &object).await.map(|_| ()) }
    });
    let results: Vec<_> = futures::stream::iter(creations).buffer_unordered(50).collect().await;
    assert!(results.iter().all(Result::is_ok));
    let mut seen = BTreeSet::new();
    for i in 0..500 {
        let ips = s.ips(&format!("bulk-{i}")).await;
        assert_eq!(ips.len(), 1);
        assert!(ips[0].starts_with("198.51.100.") || ips[0].starts_with("203.0.113."), "{ips:?} outside the pool");
        assert!(seen.insert(ips[0].clone()), "{} given twice", ips[0]);
    }
}

#[tokio::test]
async fn bad_input_is_explained_on_the_service_and_never_stops_the_controller() {
    let mut s = Setup::new().await;
    let tiny = s.pool("tiny", &["192.0.2.40"], |spec| spec.auto_assign = false).await;
    s.pool("v4", &["192.0.2.48-192.0.2.51"], |_| {}).await;
    s.start_controller();

    s.service("bad-annotation", "SingleStack", &[("ferrolb.io/loadBalancerIPs", "192.0.2.300")]).await;
    s.service("unknown-pool", "SingleStack", &[("ferrolb.io/address-pool", "nope")]).await;
    s.service("outside", "SingleStack", &[("ferrolb.io/loadBalancerIPs", "198.51.100.77")]).await;
    s.service("dual-required", "RequireDualStack", &[]).await;
    s.service("first", "SingleStack", &[("ferrolb.io/address-pool", &tiny)]).await;
    assert_eq!(s.ips("first").await, ["192.0.2.40"]);
    s.service("exhausted", "SingleStack", &[("metallb.io/address-pool", &tiny)]).await;

    let cases = [
        ("bad-annotation", reason::INVALID_REQUEST, "ferrolb.io/loadBalancerIPs"),
        ("unknown-pool", reason::POOL_NOT_FOUND, "pool \"nope\" does not exist"),
        ("outside", reason::REQUESTED_IP_NOT_IN_POOL, "198.51.100.77 is in no pool"),
        ("dual-required", reason::FAMILY_UNAVAILABLE, "IPv6"),
        ("exhausted", reason::POOL_EXHAUSTED, &tiny),
    ];
    for (service, reason, detail) in cases {
        let condition = s.condition(service, reason).await;
        assert_eq!(condition.status, "False");
        assert!(condition.message.contains(detail), "{service}: {}", condition.message);
        let note = s.event(service, reason::ALLOCATION_FAILED).await;
        assert!(note.contains(detail), "{service}: {note}");
    }
    assert!(s.controllers[0].try_wait().is_none(), "the controller exited:\n{}", s.logs());
    // Fixing the annotation fixes the Service.
    let fix = serde_json::json!({"metadata": {"annotations": {"ferrolb.io/loadBalancerIPs": "192.0.2.49"}}});
    s.services().patch("bad-annotation", &PatchParams::default(), &Patch::Merge(&fix)).await.unwrap();
    assert_eq!(s.ips("bad-annotation").await, ["192.0.2.49"]);
}

#[tokio::test]
async fn overlapping_pools_are_flagged_and_a_deleted_pool_leaves_addresses_in_place() {
    let mut s = Setup::new().await;
    let a = s.pool("a", &["192.0.2.64-192.0.2.79"], |_| {}).await;
    let b = s.pool("b", &["192.0.2.72-192.0.2.79"], |_| {}).await;
    s.start_controller();
    let pools: Api<IPAddressPool> = Api::all(s.client.clone());
    let conflicting = eventually(
        "Conflicting on pool a",
        || async {
            pools
                .get(&a)
                .await
                .ok()?
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == reason::CONFLICTING && c.status == "True")
        },
        &s,
    )
    .await;
    assert!(conflicting.message.contains(&b), "{}", conflicting.message);
    // Pools are cluster-scoped: their Events land in the default namespace.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(s.client.clone(), "default");
    let note = eventually(
        "PoolOverlap Event on pool a",
        || async {
            events.list(&Default::default()).await.ok()?.items.into_iter().find_map(|e| {
                (e.regarding.as_ref()?.name.as_deref() == Some(a.as_str())
                    && e.reason.as_deref() == Some(reason::POOL_OVERLAP))
                .then(|| e.note.unwrap_or_default())
            })
        },
        &s,
    )
    .await;
    assert!(note.contains(&b), "{note}");

    s.service("web", "SingleStack", &[]).await;
    let ips = s.ips("web").await;
    pools.delete(&a, &DeleteParams::default()).await.unwrap();
    pools.delete(&b, &DeleteParams::default()).await.unwrap();
    // No L2Advertisement announces the deleted pool: the kept address cannot answer, and the Service says so.
    let condition = s.condition("web", reason::OUTSIDE_POOL_UNANNOUNCED).await;
    assert_eq!(condition.status, "False");
    assert!(condition.message.contains(&ips[0]) && condition.message.contains("unreachable"), "{}", condition.message);
    assert!(s.event("web", reason::OUTSIDE_POOL).await.contains(&ips[0]));
    assert_eq!(s.ips("web").await, ips, "a deleted pool must not re-IP its Services");
}

#[tokio::test]
async fn addresses_are_released_when_the_service_goes_or_stops_being_a_load_balancer() {
    let mut s = Setup::new().await;
    let pool = s.pool("pool", &["192.0.2.80/31"], |_| {}).await;
    s.start_controller();
    s.service("one", "SingleStack", &[]).await;
    s.service("two", "SingleStack", &[]).await;
    let one = s.ips("one").await;
    s.ips("two").await;
    s.services().delete("one", &DeleteParams::default()).await.unwrap();
    s.service("three", "SingleStack", &[]).await;
    assert_eq!(s.ips("three").await, one, "the freed address is given again");

    let to_cluster_ip = serde_json::json!({"spec": {"type": "ClusterIP", "loadBalancerClass": null, "allocateLoadBalancerNodePorts": null}});
    s.services().patch("two", &PatchParams::default(), &Patch::Merge(&to_cluster_ip)).await.unwrap();
    eventually(
        "status of two cleared",
        || async {
            let two = s.services().get("two").await.ok()?;
            (ingress(&two).is_empty() && our_condition(&two).is_none()).then_some(())
        },
        &s,
    )
    .await;
    let pools: Api<IPAddressPool> = Api::all(s.client.clone());
    eventually(
        "pool usage back to 1",
        || async { pools.get(&pool).await.ok()?.status?.ipv4.filter(|u| u.assigned == 1) },
        &s,
    )
    .await;
}

#[tokio::test]
async fn two_instances_of_different_classes_leave_each_others_services_alone() {
    let mut a = Setup::new().await;
    a.pool("pool", &["192.0.2.96-192.0.2.99"], |_| {}).await;
    a.start_controller();
    a.service("mine", "SingleStack", &[]).await;
    let mine = a.ips("mine").await;
    let condition = a.condition("mine", reason::ALLOCATED).await;

    // A second instance, for another class, starts while the first one's Service exists.
    let mut b = Setup::new().await;
    b.pool("pool", &["192.0.2.100-192.0.2.103"], |_| {}).await;
    b.start_controller();
    b.service("theirs", "SingleStack", &[]).await;
    assert_eq!(b.ips("theirs").await, ["192.0.2.100"]);
    // By now the second instance has listed and settled everything it sees: the first's Service is intact.
    let after = a.services().get("mine").await.unwrap();
    assert_eq!(ingress(&after), mine);
    assert_eq!(our_condition(&after).map(|c| c.message), Some(condition.message));
}

#[tokio::test]
async fn pool_edits_overlaps_and_restarts_never_move_an_address_nor_reuse_a_released_one_at_once() {
    let mut s = Setup::new().await;
    let p = s.pool("p", &["192.0.2.160-192.0.2.175"], |_| {}).await;
    // "a-wide" sorts first and covers all of "p": restoring by containment would attribute p's addresses to it.
    s.pool("a-wide", &["192.0.2.128-192.0.2.191"], |_| {}).await;
    let spec = L2AdvertisementSpec { ip_address_pools: vec![p.clone()], ..Default::default() };
    Api::<L2Advertisement>::all(s.client.clone())
        .create(&PostParams::default(), &L2Advertisement::new(&p, spec))
        .await
        .unwrap();
    s.start_controller();
    for name in ["kept", "second", "released"] {
        s.service(name, "SingleStack", &[("ferrolb.io/address-pool", &p)]).await;
        s.ips(name).await;
    }
    let kept = s.ips("kept").await;
    let second = s.ips("second").await;
    assert_eq!(kept, ["192.0.2.160"]);
    let released = s.ips("released").await;
    s.services().delete("released", &DeleteParams::default()).await.unwrap();
    // Give the pool status (and its next-fit cursor) its half-second flush.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Shrink p past the first address, then crash and restart the controller.
    s.pool("p", &["192.0.2.161-192.0.2.175"], |_| {}).await;
    let condition = s.condition("kept", reason::OUTSIDE_POOL).await;
    assert!(condition.message.contains(&format!("L2Advertisement {p}")), "{}", condition.message);
    s.controllers.remove(0);
    s.start_controller();
    s.service("late", "SingleStack", &[("ferrolb.io/address-pool", &p)]).await;
    let late = s.ips("late").await;
    assert_eq!(s.ips("kept").await, kept, "a restart after a pool shrink moved the address\n{}", s.logs());
    assert_eq!(s.ips("second").await, second, "a restart with overlapping pools moved the address\n{}", s.logs());
    assert_ne!(late, released, "a just-released address was handed out again after the restart");
    assert_eq!(s.condition("kept", reason::OUTSIDE_POOL).await.status, "True");
    // Restarted again, with nothing changed: still nothing moves, and nothing says it did.
    s.controllers.remove(0);
    s.start_controller();
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (name, ips) in [("kept", &kept), ("second", &second), ("late", &late)] {
        assert_eq!(&s.ips(name).await, ips, "{name} moved\n{}", s.logs());
    }
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(s.client.clone(), &s.namespace);
    let moved: Vec<String> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.note.filter(|n| n.starts_with("moved from")))
        .collect();
    assert!(moved.is_empty(), "{moved:?}");
}

#[tokio::test]
async fn node_addresses_and_the_service_cidr_are_never_handed_out() {
    let mut s = Setup::new().await;
    // Unique per test run: other tests' controllers see this Node too, and must not care.
    let node = format!("{}-node", s.tag);
    apply_node(&s.client, &NodeSpec::new(&node, &["203.0.113.50"])).await.unwrap();
    // 198.18.0.0/16 is the test API server's Service CIDR; the kubernetes Service has 198.18.0.1.
    let lan = s.pool("lan", &["203.0.113.50-203.0.113.51", "198.18.0.1"], |_| {}).await;
    s.start_controller();
    s.service("auto", "SingleStack", &[]).await;
    assert_eq!(s.ips("auto").await, ["203.0.113.51"]);
    s.service("node-ip", "SingleStack", &[("ferrolb.io/loadBalancerIPs", "203.0.113.50")]).await;
    let refused = s.condition("node-ip", reason::REQUESTED_IP_RESERVED).await;
    assert!(refused.message.contains(&format!("the address of Node {node}")), "{}", refused.message);
    s.service("cluster-ip", "SingleStack", &[("ferrolb.io/loadBalancerIPs", "198.18.0.1")]).await;
    let refused = s.condition("cluster-ip", reason::REQUESTED_IP_RESERVED).await;
    assert!(
        refused.message.contains("Service CIDR 198.18.0.0/16") || refused.message.contains("default/kubernetes"),
        "{}",
        refused.message
    );
    let pools: Api<IPAddressPool> = Api::all(s.client.clone());
    let overlap = eventually(
        "OverlapsCluster on the pool",
        || async {
            pools
                .get(&lan)
                .await
                .ok()?
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == reason::OVERLAPS_CLUSTER && c.status == "True")
        },
        &s,
    )
    .await;
    assert!(overlap.message.contains(&node), "{}", overlap.message);
    Api::<k8s_openapi::api::core::v1::Node>::all(s.client.clone())
        .delete(&node, &DeleteParams::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_pool_with_an_invalid_selector_is_not_ready_and_says_why() {
    let mut s = Setup::new().await;
    let picky = s
        .pool("picky", &["192.0.2.120-192.0.2.121"], |spec| {
            spec.service_allocation = Some(
                serde_json::from_value(serde_json::json!({
                    "serviceSelectors": [{"matchExpressions": [{"key": "tier", "operator": "Equals", "values": ["web"]}]}]
                }))
                .unwrap(),
            );
        })
        .await;
    s.start_controller();
    let pools: Api<IPAddressPool> = Api::all(s.client.clone());
    let ready = eventually(
        "Ready=False on the pool",
        || async {
            pools
                .get(&picky)
                .await
                .ok()?
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == reason::READY && c.status == "False")
        },
        &s,
    )
    .await;
    assert_eq!(ready.reason, reason::INVALID_SELECTOR);
    s.service("web", "SingleStack", &[]).await;
    let condition = s.condition("web", reason::NO_POOLS).await;
    assert!(
        condition.message.contains(&format!("not used because invalid: pool \"{picky}\"")),
        "{}",
        condition.message
    );
}

/// The text of a controller's /metrics.
async fn scrape(port: u16) -> Option<String> {
    get(port, "/metrics", None).await
}

/// The whole HTTP response (status line, headers, body) to a GET of `path`, with a bearer token if given.
async fn get(port: u16, path: &str, token: Option<&str>) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let authorization = token.map(|t| format!("authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n{authorization}connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await.ok()?;
    Some(text)
}

#[tokio::test]
async fn with_kubernetes_auth_only_a_token_allowed_to_get_metrics_reads_them() {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};

    let mut s = Setup::new().await;
    s.start_controller_with(&["--metrics-auth", "kubernetes"]);
    let port = s.metrics_ports[0];
    eventually("the controller to serve", || async { get(port, "/healthz", None).await }, &s).await;
    let status = |response: &str| response.split_whitespace().nth(1).unwrap_or_default().to_string();

    // Probes need no token; metrics do, and a made-up one is refused.
    assert_eq!(status(&get(port, "/healthz", None).await.unwrap()), "200");
    let anonymous = get(port, "/metrics", None).await.unwrap();
    assert_eq!(status(&anonymous), "401", "{anonymous}");
    assert!(!anonymous.contains("ferrolb_"), "{anonymous}");
    assert_eq!(status(&get(port, "/metrics", Some("not-a-token")).await.unwrap()), "401");

    // A real ServiceAccount token, not yet allowed: 403.
    let accounts: Api<ServiceAccount> = Api::namespaced(s.client.clone(), &s.namespace);
    let account = ServiceAccount {
        metadata: ObjectMeta { name: Some("scraper".into()), ..Default::default() },
        ..Default::default()
    };
    accounts.create(&PostParams::default(), &account).await.unwrap();
    let request = TokenRequest {
        spec: Some(TokenRequestSpec { expiration_seconds: Some(600), ..Default::default() }),
        ..Default::default()
    };
    let token = accounts.create_token_request("scraper", &PostParams::default(), &request).await.unwrap();
    let token = token.status.unwrap().token.unwrap();
    let forbidden = get(port, "/metrics", Some(&token)).await.unwrap();
    assert_eq!(status(&forbidden), "403", "{forbidden}");
    assert!(forbidden.contains("may not get /metrics"), "{forbidden}");

    // Granted `get` on /metrics (what the chart's metrics-reader ClusterRole holds): 200 with the series. The
    // refusal was remembered for at most 10 s.
    let name = format!("{}-metrics-reader", s.tag);
    let role = ClusterRole {
        metadata: ObjectMeta { name: Some(name.clone()), ..Default::default() },
        rules: Some(vec![PolicyRule {
            non_resource_urls: Some(vec!["/metrics".into()]),
            verbs: vec!["get".into()],
            ..Default::default()
        }]),
        ..Default::default()
    };
    Api::<ClusterRole>::all(s.client.clone()).create(&PostParams::default(), &role).await.unwrap();
    let binding = ClusterRoleBinding {
        metadata: ObjectMeta { name: Some(name.clone()), ..Default::default() },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: "scraper".into(),
            namespace: Some(s.namespace.clone()),
            ..Default::default()
        }]),
    };
    Api::<ClusterRoleBinding>::all(s.client.clone()).create(&PostParams::default(), &binding).await.unwrap();
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let response = get(port, "/metrics", Some(&token)).await.unwrap_or_default();
            if status(&response) == "200" {
                return response;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
    .await;
    let _ = Api::<ClusterRoleBinding>::all(s.client.clone()).delete(&name, &DeleteParams::default()).await;
    let _ = Api::<ClusterRole>::all(s.client.clone()).delete(&name, &DeleteParams::default()).await;
    let read = read.unwrap_or_else(|_| panic!("the granted token never read the metrics\n{}", s.logs()));
    assert!(read.contains("ferrolb_build_info"), "{read}");
}

#[tokio::test]
async fn metrics_show_every_address_its_pool_whether_it_is_announced_and_the_pending_services() {
    let mut s = Setup::new().await;
    let pool = s.pool("one", &["192.0.2.130"], |_| {}).await;
    s.start_controller();
    s.service("first", "SingleStack", &[]).await;
    assert_eq!(s.ips("first").await, ["192.0.2.130"]);
    s.service("second", "SingleStack", &[]).await;
    s.condition("second", reason::POOL_EXHAUSTED).await;
    let port = s.metrics_ports[0];
    let series = format!(
        "ferrolb_service_address{{namespace=\"{}\",service=\"first\",ip=\"192.0.2.130\",pool=\"{pool}\",advertised=\"false\"}} 1",
        s.namespace
    );
    eventually(
        "the address series and one pending Service",
        || async {
            let text = scrape(port).await?;
            (text.contains(&series) && text.contains("ferrolb_services_pending 1")).then_some(())
        },
        &s,
    )
    .await;
    let spec = L2AdvertisementSpec { ip_address_pools: vec![pool.clone()], ..Default::default() };
    Api::<L2Advertisement>::all(s.client.clone())
        .create(&PostParams::default(), &L2Advertisement::new(&pool, spec))
        .await
        .unwrap();
    let announced = series.replace("advertised=\"false\"", "advertised=\"true\"");
    eventually(
        "the address marked as announced",
        || async { scrape(port).await?.contains(&announced).then_some(()) },
        &s,
    )
    .await;
    s.services().delete("first", &DeleteParams::default()).await.unwrap();
    // The freed address goes to the waiting Service; the first one's series goes with it.
    eventually(
        "the series follow the move",
        || async {
            let text = scrape(port).await?;
            (text.contains("service=\"second\",ip=\"192.0.2.130\"")
                && !text.contains("service=\"first\"")
                && text.contains("ferrolb_services_pending 0"))
            .then_some(())
        },
        &s,
    )
    .await;
}
