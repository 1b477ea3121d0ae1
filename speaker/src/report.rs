//! What the speakers tell the API, off the failover path: one L2Announcement per announced Service in the
//! install namespace ("which node holds my VIP?"), a `NodeAssigned` Event when a node takes a Service over,
//! and an `IPConflict` Event when another host claims an owned VIP.
//!
//! Who writes what, with no coordination: the owner writes its Service's object (server-side apply, so a new
//! owner simply overwrites a dead one's); the owner that gives a Service up with no successor deletes it;
//! and the live member with the smallest name deletes objects of Services nobody owns any more (a Service
//! deleted while its owner was down).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrolb_crds::l2announcement::ServiceReference;
use ferrolb_crds::{BGPAnnouncement, BGPAnnouncementSpec, L2Announcement, L2AnnouncementSpec};
use ferrolb_crds::{SpeakerStatus, SpeakerStatusSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use tokio::sync::{Notify, mpsc};

use crate::cluster::Announced;
use crate::plan::Decision;

pub const FIELD_MANAGER: &str = "ferrolb-speaker";

/// Object name of a Service's L2Announcement: namespace and name cannot contain dots, so this is unique.
pub fn announcement_name(service: &ServiceReference) -> String {
    format!("{}.{}", service.namespace, service.name)
}

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Apply(String, L2AnnouncementSpec),
    Delete(String),
    /// BGP mode: this node's BGPAnnouncement of a Service.
    ApplyBgp(String, BGPAnnouncementSpec),
    DeleteBgp(String),
}

impl Op {
    pub fn name(&self) -> &str {
        match self {
            Op::Apply(name, _) | Op::Delete(name) | Op::ApplyBgp(name, _) | Op::DeleteBgp(name) => name,
        }
    }

    /// What a later op replaces while it waits: the same object of the same kind.
    fn key(&self) -> String {
        match self {
            Op::Apply(..) | Op::Delete(_) => self.name().to_string(),
            // A `/` is in no object name.
            Op::ApplyBgp(..) | Op::DeleteBgp(_) => format!("bgp/{}", self.name()),
        }
    }
}

/// The L2Announcement writes and deletions `me` owes, given the decisions, what this node announces
/// (VIP → interfaces), whether it is the janitor, and the objects that exist.
///
/// Runs at every plan step over every Service, and almost every object is already as it should be: each is
/// compared in place, and only one that must be written is built.
pub fn announcement_ops(
    decisions: &[Decision],
    me: &str,
    held: &crate::plan::Placement,
    janitor: bool,
    existing: &BTreeMap<String, Announced>,
) -> Vec<Op> {
    use std::fmt::Write as _;
    let mut ops = Vec::new();
    // By namespace and name.
    let mut owned_somewhere: HashSet<(&str, &str)> = HashSet::with_capacity(decisions.len());
    let mut name = String::new();
    for decision in decisions {
        if decision.owner.is_some() {
            owned_somewhere.insert((&decision.service.namespace, &decision.service.name));
        }
        if decision.owner.as_deref() != Some(me) {
            continue;
        }
        let interfaces: BTreeSet<&String> = crate::plan::interfaces_of(&decision.vips, held).collect();
        if interfaces.is_empty() {
            continue;
        }
        name.clear();
        let _ = write!(name, "{}.{}", decision.service.namespace, decision.service.name);
        // The object is looked up by the name of the decision's Service: naming its Service, it names this one.
        let current = existing.get(name.as_str()).is_some_and(|announced| {
            announced.names_its_service
                && !announced.malformed
                && *announced.node == *me
                && announced.interfaces.iter().eq(interfaces.iter().copied())
                && *announced.ips == *decision.vips
        });
        if !current {
            let spec = L2AnnouncementSpec {
                service: (*decision.service).clone(),
                ips: decision.vips.iter().map(IpAddr::to_string).collect(),
                node: me.to_string(),
                interfaces: interfaces.into_iter().cloned().collect(),
            };
            ops.push(Op::Apply(name.clone(), spec));
        }
    }
    // An object is its name's Service's: while that has an owner, the owner rewrites it, whatever it says.
    for (name, announced) in existing {
        let owned = name.split_once('.').is_some_and(|service| owned_somewhere.contains(&service));
        if !owned && (janitor || *announced.node == *me) {
            ops.push(Op::Delete(name.clone()));
        }
    }
    ops
}

/// Whether `name` is [`announcement_name`] of `service` (without building it).
pub(crate) fn names(name: &str, service: &ServiceReference) -> bool {
    name.strip_prefix(service.namespace.as_str()).and_then(|rest| rest.strip_prefix('.')) == Some(service.name.as_str())
}

/// An Event for the writer to publish.
pub use ferrolb_telemetry::events::Notice;

/// The `action` of the speaker's Events.
pub const ANNOUNCE: &str = "Announce";

pub enum Report {
    Ops(Vec<Op>),
    Notice(Notice),
    /// What this speaker sees now (its SpeakerStatus; written only when it changed).
    Speaker(SpeakerStatusSpec),
}

pub use ferrolb_telemetry::events::EventSource;

/// The speaker's Events' `reportingController` (its node is the `reportingInstance`).
pub const REPORTING_CONTROLLER: &str = "ferrolb.io/speaker";

/// Hands reports to the writer. L2Announcement ops wait in a map keyed by object (a newer op for an object
/// replaces an older one still waiting), so however often the plan repeats them, the backlog never exceeds
/// one op per object; Events queue in order.
#[derive(Clone)]
pub struct Reports {
    pending: Arc<Mutex<BTreeMap<String, Op>>>,
    speaker: Arc<Mutex<Option<SpeakerStatusSpec>>>,
    wake: Arc<Notify>,
    notices: mpsc::UnboundedSender<Notice>,
}

pub struct ReportsReceiver {
    pending: Arc<Mutex<BTreeMap<String, Op>>>,
    /// The latest SpeakerStatus not yet looked at (a newer one replaces it).
    speaker: Arc<Mutex<Option<SpeakerStatusSpec>>>,
    wake: Arc<Notify>,
    notices: mpsc::UnboundedReceiver<Notice>,
}

pub fn channel() -> (Reports, ReportsReceiver) {
    let (pending, wake) = (Arc::<Mutex<BTreeMap<String, Op>>>::default(), Arc::new(Notify::new()));
    let speaker = Arc::<Mutex<Option<SpeakerStatusSpec>>>::default();
    let (notices, notices_rx) = mpsc::unbounded_channel();
    (
        Reports { pending: pending.clone(), speaker: speaker.clone(), wake: wake.clone(), notices },
        ReportsReceiver { pending, speaker, wake, notices: notices_rx },
    )
}

impl Reports {
    pub fn send(&self, report: Report) -> Result<(), WriterStopped> {
        match report {
            Report::Ops(ops) => {
                {
                    let mut pending = crate::locks::lock(&self.pending, "pending reports");
                    for op in ops {
                        pending.insert(op.key(), op);
                    }
                }
                self.wake.notify_one();
                Ok(())
            }
            Report::Notice(notice) => self.notices.send(notice).map_err(|_| WriterStopped),
            Report::Speaker(spec) => {
                *crate::locks::lock(&self.speaker, "speaker status") = Some(spec);
                self.wake.notify_one();
                Ok(())
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the report writer stopped")]
pub struct WriterStopped;

/// An unchanged SpeakerStatus is written again this often.
const SPEAKER_STATUS_REWRITE: Duration = Duration::from_secs(300);
/// A SpeakerStatus is written once it has stayed the same this long.
const STATUS_SETTLE: Duration = Duration::from_secs(5);
/// The longest wait after refused SpeakerStatus writes.
const STATUS_RETRY_MAX: Duration = Duration::from_secs(60);

/// When this speaker's SpeakerStatus is written: once what it sees has stayed the same for a settling time,
/// and now and then anyway (it may have been deleted, e.g. with a Node re-registered under the same name).
///
/// Every speaker writes its own, so without the settling time one member going down and coming back (a
/// speaker restarted, a link flapping) cost two writes per node in the middle of a failover; now it costs none
/// if it is back within the settling time, and one per node after it otherwise. The status is for people:
/// the failover itself never waits for it.
#[derive(Debug)]
pub struct StatusSchedule {
    settle: Duration,
    rewrite: Duration,
    /// The spec last written, and when.
    written: Option<(SpeakerStatusSpec, std::time::Instant)>,
    /// The latest spec seen, and since when it has been the same.
    seen: Option<(SpeakerStatusSpec, std::time::Instant)>,
}

impl StatusSchedule {
    pub fn new(settle: Duration, rewrite: Duration) -> Self {
        StatusSchedule { settle, rewrite, written: None, seen: None }
    }

    pub fn observe(&mut self, spec: SpeakerStatusSpec, now: std::time::Instant) {
        if self.seen.as_ref().is_none_or(|(seen, _)| *seen != spec) {
            self.seen = Some((spec, now));
        }
    }

    /// When the latest spec seen is to be written (maybe already past), if ever.
    pub fn due_at(&self) -> Option<std::time::Instant> {
        let (spec, since) = self.seen.as_ref()?;
        let settled = *since + self.settle;
        match &self.written {
            Some((last, at)) if last == spec => Some((*at + self.rewrite).max(settled)),
            _ => Some(settled),
        }
    }

    /// The spec to write now, if one is due.
    pub fn due(&self, now: std::time::Instant) -> Option<&SpeakerStatusSpec> {
        self.due_at().filter(|at| *at <= now).and(self.seen.as_ref()).map(|(spec, _)| spec)
    }

    pub fn wrote(&mut self, spec: SpeakerStatusSpec, now: std::time::Instant) {
        self.written = Some((spec, now));
    }
}

/// An op applied this recently is not applied again: the watch has not shown it to the plan yet.
const APPLIED_RECENTLY: Duration = Duration::from_secs(3);

/// The ops written in the last [`APPLIED_RECENTLY`], by object.
#[derive(Default)]
struct RecentWrites(HashMap<String, (Op, tokio::time::Instant)>);

impl RecentWrites {
    fn contains(&self, key: &str, op: &Op, now: tokio::time::Instant) -> bool {
        self.0.get(key).is_some_and(|(last, at)| last == op && now.saturating_duration_since(*at) < APPLIED_RECENTLY)
    }

    fn insert(&mut self, key: String, op: Op, now: tokio::time::Instant) {
        self.0.insert(key, (op, now));
    }

    fn forget_old(&mut self, now: tokio::time::Instant) {
        self.0.retain(|_, (_, at)| now.saturating_duration_since(*at) < APPLIED_RECENTLY);
        // A storm of new Services fills it with thousands of objects for a few seconds; the table they grew
        // (1.5 MiB at 10 000) would otherwise stay for good.
        if self.0.capacity() > 4 * self.0.len().max(16) {
            self.0.shrink_to_fit();
        }
    }
}

/// Carries reports out until every `Reports` is dropped: Events in order, L2Announcement ops one object at a
/// time; a failed write is retried a few times (and the plan hands it over again later).
pub async fn run(
    client: kube::Client,
    namespace: String,
    node: OwnerReference,
    events: EventSource,
    mut reports: ReportsReceiver,
) {
    let statuses: Api<SpeakerStatus> = Api::namespaced(client.clone(), &namespace);
    let apis = Apis {
        l2: Api::namespaced(client.clone(), &namespace),
        bgp: Api::namespaced(client, &namespace),
        node: node.clone(),
    };
    let mut applied = RecentWrites::default();
    let mut status = StatusSchedule::new(STATUS_SETTLE, SPEAKER_STATUS_REWRITE);
    // The last SpeakerStatus write error, logged once (a cluster whose CRDs or RBAC predate the kind refuses
    // every write, and the writer retries on every step).
    let mut status_error: Option<String> = None;
    // After a refused write, the next waits (5 s, doubling up to a minute): a cluster without the kind is not
    // sent a failing request at every step.
    let mut status_retry: Option<(tokio::time::Instant, u32)> = None;
    let mut open = true;
    while open {
        tokio::select! {
            notice = reports.notices.recv() => match notice {
                Some(notice) => publish(&events, notice).await,
                None => open = false,
            },
            _ = reports.wake.notified() => {}
            _ = sleep_until_some(status.due_at().max(status_retry.map(|(at, _)| at.into_std()))) => {}
        }
        loop {
            let next = crate::locks::lock(&reports.pending, "pending reports").pop_first();
            let Some((key, op)) = next else { break };
            if applied.contains(&key, &op, tokio::time::Instant::now()) {
                continue;
            }
            if execute(&apis, &op).await {
                applied.insert(key, op, tokio::time::Instant::now());
            }
            while let Ok(notice) = reports.notices.try_recv() {
                publish(&events, notice).await;
            }
        }
        applied.forget_old(tokio::time::Instant::now());
        if let Some(latest) = crate::locks::lock(&reports.speaker, "speaker status").take() {
            status.observe(latest, std::time::Instant::now());
        }
        let backing_off = status_retry.is_some_and(|(at, _)| tokio::time::Instant::now() < at);
        if let Some(spec) = status.due(std::time::Instant::now()).filter(|_| !backing_off).cloned() {
            // Not remembered when the write fails: it stays due.
            match write_speaker_status(&statuses, &node, &spec).await {
                Ok(()) => {
                    if status_error.take().is_some() {
                        tracing::info!(node = %spec.node, "SpeakerStatus written again");
                    }
                    status_retry = None;
                    status.wrote(spec, std::time::Instant::now());
                }
                Err(e) => {
                    let failures = status_retry.map_or(0, |(_, n)| n.saturating_add(1));
                    let wait = (Duration::from_secs(5) * 2u32.saturating_pow(failures.min(4))).min(STATUS_RETRY_MAX);
                    status_retry = Some((tokio::time::Instant::now() + wait, failures));
                    let message = e.to_string();
                    if status_error.as_deref() != Some(message.as_str()) {
                        tracing::warn!(node = %spec.node, error = %message, "SpeakerStatus not written (are the CRDs and RBAC of this release applied?); retrying quietly");
                    }
                    status_error = Some(message);
                }
            }
        }
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_some(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Server-side applies this node's SpeakerStatus, owned by its Node (garbage-collected with it).
async fn write_speaker_status(
    api: &Api<SpeakerStatus>,
    node: &OwnerReference,
    spec: &SpeakerStatusSpec,
) -> Result<(), kube::Error> {
    let mut object = SpeakerStatus::new(&spec.node, spec.clone());
    object.metadata.owner_references = Some(vec![node.clone()]);
    apply(api, &object).await
}

/// Server-side applies `object` as the speaker (a server-side apply body must name its apiVersion and kind).
async fn apply<K>(api: &Api<K>, object: &K) -> Result<(), kube::Error>
where
    K: kube::Resource<DynamicType = ()> + serde::Serialize + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let mut value = serde_json::to_value(object).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".into(), K::api_version(&()).into());
        map.insert("kind".into(), K::kind(&()).into());
    }
    let name = object.meta().name.clone().unwrap_or_default();
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&value)).await.map(|_| ())
}

/// Where the ops go.
struct Apis {
    l2: Api<L2Announcement>,
    bgp: Api<BGPAnnouncement>,
    /// This node: it owns its BGPAnnouncements.
    node: OwnerReference,
}

/// Deletes `name`; an object already gone is fine.
async fn delete<K>(api: &Api<K>, name: &str) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    match api.delete(name, &DeleteParams::default()).await {
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        other => other.map(|_| ()),
    }
}

async fn execute(apis: &Apis, op: &Op) -> bool {
    let name = op.name();
    for attempt in 0..3u32 {
        let result = match op {
            Op::Apply(_, spec) => apply(&apis.l2, &L2Announcement::new(name, spec.clone())).await,
            Op::Delete(_) => delete(&apis.l2, name).await,
            Op::ApplyBgp(_, spec) => {
                let mut object = BGPAnnouncement::new(name, spec.clone());
                object.metadata.owner_references = Some(vec![apis.node.clone()]);
                object.metadata.labels = Some(ferrolb_crds::bgp_announcement::labels(spec));
                apply(&apis.bgp, &object).await
            }
            Op::DeleteBgp(_) => delete(&apis.bgp, name).await,
        };
        match result {
            Ok(()) => return true,
            Err(e) => {
                tracing::warn!(announcement = %name, attempt, error = %e, "announcement write failed");
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
        }
    }
    false
}

async fn publish(source: &EventSource, notice: Notice) {
    let object = notice.object();
    if notice.warning {
        tracing::warn!(object = %object, reason = notice.reason, "{}", notice.note);
    } else {
        tracing::info!(object = %object, reason = notice.reason, "{}", notice.note);
    }
    if let Err(e) = source.publish(notice).await {
        tracing::warn!(object = %object, error = %e, "could not publish Event");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn recent_writes_are_skipped_then_forgotten_and_a_storm_leaves_no_table_behind() {
        let start = tokio::time::Instant::now();
        let mut writes = RecentWrites::default();
        for i in 0..10_000 {
            writes.insert(format!("default.web-{i}"), Op::Delete(format!("default.web-{i}")), start);
        }
        let op = Op::Delete("default.web-7".into());
        assert!(writes.contains("default.web-7", &op, start + Duration::from_secs(2)), "written 2 s ago");
        assert!(!writes.contains("default.web-7", &Op::Delete("other".into()), start), "another op");
        assert!(!writes.contains("default.web-7", &op, start + APPLIED_RECENTLY), "written too long ago");
        writes.forget_old(start + Duration::from_secs(1));
        assert_eq!(writes.0.len(), 10_000, "nothing is old yet");
        writes.forget_old(start + APPLIED_RECENTLY);
        assert!(writes.0.is_empty());
        assert!(writes.0.capacity() < 100, "the storm's table is given back: {}", writes.0.capacity());
    }

    fn decision(name: &str, owner: Option<&str>) -> Decision {
        Decision {
            service: Arc::new(ServiceReference { namespace: "default".into(), name: name.into() }),
            vips: vec!["192.0.2.200".parse().unwrap()].into(),
            owner: owner.map(Into::into),
            named_interfaces: Default::default(),
            any_interface: true,
            ranking: owner.into_iter().map(Into::into).collect(),
        }
    }

    fn spec(name: &str, node: &str) -> L2AnnouncementSpec {
        L2AnnouncementSpec {
            service: ServiceReference { namespace: "default".into(), name: name.into() },
            ips: vec!["192.0.2.200".into()],
            node: node.into(),
            interfaces: vec!["eth0".into()],
        }
    }

    /// The objects as the speakers read them.
    fn read(objects: &[(&str, L2AnnouncementSpec)]) -> BTreeMap<String, Announced> {
        let mut shared = crate::cluster::AnnouncedParts::default();
        objects.iter().map(|(name, spec)| (name.to_string(), Announced::read(name, spec, &mut shared))).collect()
    }

    fn held() -> crate::plan::Placement {
        BTreeMap::from([("192.0.2.200".parse().unwrap(), std::sync::Arc::new(BTreeSet::from(["eth0".to_string()])))])
    }

    #[test]
    fn the_owner_writes_once_and_overwrites_a_dead_owners_object() {
        let decisions = [decision("web", Some("node-2"))];
        let none = BTreeMap::new();
        assert_eq!(
            announcement_ops(&decisions, "node-2", &held(), false, &none),
            [Op::Apply("default.web".into(), spec("web", "node-2"))]
        );
        let current = read(&[("default.web", spec("web", "node-2"))]);
        assert!(announcement_ops(&decisions, "node-2", &held(), false, &current).is_empty());
        let stale = read(&[("default.web", spec("web", "node-1"))]);
        assert_eq!(announcement_ops(&decisions, "node-2", &held(), false, &stale).len(), 1);
        // Others leave it alone, even the janitor, while it has an owner.
        assert!(announcement_ops(&decisions, "node-1", &BTreeMap::new(), true, &stale).is_empty());
    }

    #[test]
    fn objects_of_services_nobody_owns_are_deleted_by_their_writer_or_the_janitor() {
        let existing = read(&[("default.gone", spec("gone", "node-3"))]);
        let decisions = [decision("unowned", None)];
        assert!(announcement_ops(&decisions, "node-1", &BTreeMap::new(), false, &existing).is_empty());
        assert_eq!(
            announcement_ops(&decisions, "node-1", &BTreeMap::new(), true, &existing),
            [Op::Delete("default.gone".into())]
        );
        assert_eq!(
            announcement_ops(&decisions, "node-3", &BTreeMap::new(), false, &existing),
            [Op::Delete("default.gone".into())]
        );
    }

    #[test]
    fn an_object_naming_another_service_or_a_malformed_address_is_rewritten_by_its_names_owner() {
        let decisions = [decision("web", Some("node-2"))];
        // Named for web, yet naming api: web's owner rewrites it (and does not delete it).
        let mut other = spec("api", "node-2");
        other.service.name = "api".into();
        let existing = read(&[("default.web", other)]);
        assert!(!existing["default.web"].names_its_service);
        assert_eq!(
            announcement_ops(&decisions, "node-2", &held(), false, &existing),
            [Op::Apply("default.web".into(), spec("web", "node-2"))]
        );
        let mut garbled = spec("web", "node-2");
        garbled.ips.push("not an address".into());
        let existing = read(&[("default.web", garbled)]);
        assert!(existing["default.web"].malformed);
        assert_eq!(announcement_ops(&decisions, "node-2", &held(), false, &existing).len(), 1);
        // Nobody owns it any more: the janitor deletes it whatever it names.
        let mut stray = spec("web", "node-3");
        stray.service.name = "api".into();
        let existing = read(&[("default.web", stray)]);
        assert_eq!(
            announcement_ops(&[decision("api", Some("node-3"))], "node-1", &BTreeMap::new(), true, &existing),
            [Op::Delete("default.web".into())]
        );
    }

    /// What the ops are, built the plain way: every owned object's spec made and compared.
    fn reference_ops(
        decisions: &[Decision],
        me: &str,
        held: &crate::plan::Placement,
        janitor: bool,
        existing: &BTreeMap<String, L2AnnouncementSpec>,
    ) -> Vec<Op> {
        let mut ops = Vec::new();
        let mut owned_somewhere = BTreeSet::new();
        for decision in decisions {
            let name = announcement_name(&decision.service);
            if decision.owner.is_some() {
                owned_somewhere.insert(name.clone());
            }
            if decision.owner.as_deref() != Some(me) {
                continue;
            }
            let interfaces: BTreeSet<String> = crate::plan::interfaces_of(&decision.vips, held).cloned().collect();
            if interfaces.is_empty() {
                continue;
            }
            let spec = L2AnnouncementSpec {
                service: (*decision.service).clone(),
                ips: decision.vips.iter().map(IpAddr::to_string).collect(),
                node: me.to_string(),
                interfaces: interfaces.into_iter().collect(),
            };
            if existing.get(&name) != Some(&spec) {
                ops.push(Op::Apply(name, spec));
            }
        }
        for (name, spec) in existing {
            if !owned_somewhere.contains(name) && (janitor || spec.node == me) {
                ops.push(Op::Delete(name.clone()));
            }
        }
        ops
    }

    proptest::proptest! {
        #[test]
        fn the_ops_are_those_of_building_and_comparing_every_spec(
            owners in proptest::collection::vec(proptest::option::of(0usize..3), 0..6),
            stored in proptest::collection::vec((0usize..6, 0usize..3, 0usize..3, proptest::bool::ANY, proptest::bool::ANY), 0..6),
            held_vips in proptest::collection::btree_set(0u8..6, 0..6),
            janitor in proptest::bool::ANY,
        ) {
            let node = |i: usize| format!("node-{i}");
            let vip = |i: usize| -> IpAddr { format!("192.0.2.{}", 10 + i).parse().unwrap() };
            let decisions: Vec<Decision> = owners
                .iter()
                .enumerate()
                .map(|(i, owner)| Decision { vips: vec![vip(i)].into(), ..decision(&format!("s{i}"), owner.map(node).as_deref()) })
                .collect();
            let eth0 = std::sync::Arc::new(BTreeSet::from(["eth0".to_string()]));
            let held: crate::plan::Placement = held_vips.iter().map(|&i| (vip(i.into()), eth0.clone())).collect();
            let existing: BTreeMap<String, L2AnnouncementSpec> = stored
                .iter()
                .map(|&(service, on, ip, eth1, names_another)| {
                    let mut spec = spec(&format!("s{service}"), &node(on));
                    spec.ips = vec![vip(ip).to_string()];
                    if eth1 {
                        spec.interfaces = vec!["eth1".into()];
                    }
                    let name = announcement_name(&spec.service);
                    if names_another {
                        spec.service.name = "another".into();
                    }
                    (name, spec)
                })
                .collect();
            let objects: Vec<(&str, L2AnnouncementSpec)> =
                existing.iter().map(|(name, spec)| (name.as_str(), spec.clone())).collect();
            let read = read(&objects);
            for me in ["node-0", "node-1"] {
                proptest::prop_assert_eq!(
                    announcement_ops(&decisions, me, &held, janitor, &read),
                    reference_ops(&decisions, me, &held, janitor, &existing)
                );
            }
        }
    }

    fn status(alive: &[&str]) -> SpeakerStatusSpec {
        SpeakerStatusSpec {
            node: "node-1".into(),
            mode: "native".into(),
            alive: alive.iter().map(|s| s.to_string()).collect(),
            interfaces: vec!["eth0".into()],
            version: "1".into(),
            bgp_peers: Vec::new(),
        }
    }

    #[test]
    fn a_status_is_written_once_it_has_settled_and_a_member_back_in_time_costs_no_write() {
        let (settle, rewrite) = (Duration::from_secs(5), Duration::from_secs(300));
        let t0 = std::time::Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut schedule = StatusSchedule::new(settle, rewrite);
        assert_eq!(schedule.due(at(0)), None, "nothing seen yet");
        schedule.observe(status(&["node-1"]), at(0));
        // Still joining: the first view changes before it settles, and only the settled one is written.
        schedule.observe(status(&["node-1", "node-2", "node-3"]), at(800));
        assert_eq!(schedule.due(at(5_000)), None);
        assert_eq!(schedule.due_at(), Some(at(5_800)));
        let all = status(&["node-1", "node-2", "node-3"]);
        assert_eq!(schedule.due(at(5_800)), Some(&all));
        schedule.wrote(all.clone(), at(5_800));
        assert_eq!(schedule.due(at(6_000)), None);
        // A member gone and back within the settling time: nothing to write, and the next write is the
        // periodic one.
        schedule.observe(status(&["node-1", "node-3"]), at(10_000));
        schedule.observe(all.clone(), at(11_000));
        assert_eq!(schedule.due(at(20_000)), None);
        assert_eq!(schedule.due_at(), Some(at(305_800)));
        // Gone for longer: one write, once it has settled.
        let two = status(&["node-1", "node-3"]);
        schedule.observe(two.clone(), at(400_000));
        schedule.observe(two.clone(), at(401_000));
        assert_eq!(schedule.due(at(404_999)), None);
        assert_eq!(schedule.due(at(405_000)), Some(&two));
    }

    #[test]
    fn an_unwritten_status_stays_due() {
        let mut schedule = StatusSchedule::new(Duration::from_secs(5), Duration::from_secs(300));
        let t0 = std::time::Instant::now();
        schedule.observe(status(&["node-1"]), t0);
        let later = t0 + Duration::from_secs(60);
        assert_eq!(schedule.due(later), Some(&status(&["node-1"])), "a refused write is tried again");
    }

    #[test]
    fn an_owner_that_cannot_announce_writes_nothing() {
        let decisions = [decision("web", Some("node-2"))];
        assert!(announcement_ops(&decisions, "node-2", &BTreeMap::new(), false, &BTreeMap::new()).is_empty());
    }
}
