//! `ferrolb status`: what ferrolb did with a Service, or with the whole cluster, and for whatever is not
//! working, why and what to change. Pure: the objects come in (see [`Snapshot`]), a report goes out, as text or
//! JSON; `main.rs` reads them from the API.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use ferrolb_crds::service::{ALLOCATED_CONDITION, condition, ingress_ips, origin_pool};
use ferrolb_crds::{BGPAdvertisement, IPAddressPool, L2Advertisement, L2Announcement, SpeakerStatus, reason};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use serde::Serialize;

/// The objects a report is made of.
#[derive(Default)]
pub struct Snapshot {
    pub pools: Vec<IPAddressPool>,
    pub advertisements: Vec<L2Advertisement>,
    pub bgp_advertisements: Vec<BGPAdvertisement>,
    pub announcements: Vec<L2Announcement>,
    /// For a Service's report: its BGPAnnouncements (one per node announcing it). Unused for the cluster's.
    pub bgp_announcements: Vec<ferrolb_crds::BGPAnnouncement>,
    pub speakers: Vec<SpeakerStatus>,
    pub speaker_pods: Vec<Pod>,
    /// For a Service's report: its EndpointSlices. Unused for the cluster's.
    pub endpoint_slices: Vec<EndpointSlice>,
    /// For a Service's report: the Events about it; for the cluster's: the IPConflict Events.
    pub events: Vec<Event>,
    /// The class ferrolb handles, and whether it leaves Services without a class alone.
    pub class: String,
    pub ignore_unset_class: bool,
    /// What could not be read (forbidden to these credentials, or not installed), and why.
    pub unreadable: Vec<String>,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceReport {
    pub namespace: String,
    pub name: String,
    pub ips: Vec<String>,
    pub pool: Option<String>,
    pub condition: Option<ConditionSummary>,
    pub announced_by: Vec<Announcer>,
    /// BGP mode: the Established sessions its BGPAnnouncements say it is sent on (`node -> peer (address)`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bgp_sessions: Vec<String>,
    /// Set when the Service has no address, or nobody announces it: what is wrong and what to change.
    pub problem: Option<Problem>,
    pub events: Vec<EventSummary>,
    /// What the report could not read: it may be incomplete.
    pub unreadable: Vec<String>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct ConditionSummary {
    pub status: String,
    pub reason: String,
    pub message: String,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Announcer {
    pub node: String,
    pub ips: Vec<String>,
    pub interfaces: Vec<String>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Problem {
    pub reason: String,
    pub detail: String,
    pub fix: String,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EventSummary {
    #[serde(rename = "type")]
    pub type_: String,
    pub reason: String,
    pub note: String,
    pub reporter: String,
}

/// The report on one Service.
pub fn service_report(service: &Service, snapshot: &Snapshot) -> ServiceReport {
    let namespace = service.metadata.namespace.clone().unwrap_or_default();
    let name = service.metadata.name.clone().unwrap_or_default();
    let ips: Vec<String> = ingress_ips(service).iter().map(ToString::to_string).collect();
    let pool = origin_pool(service);
    let allocated = condition(service, ALLOCATED_CONDITION).map(|c| ConditionSummary {
        status: c.status.clone(),
        reason: c.reason.clone(),
        message: c.message.clone(),
    });
    let announced_by: Vec<Announcer> = snapshot
        .announcements
        .iter()
        .filter(|a| a.spec.service.namespace == namespace && a.spec.service.name == name)
        .map(|a| Announcer {
            node: a.spec.node.clone(),
            ips: a.spec.ips.clone(),
            interfaces: a.spec.interfaces.clone(),
        })
        .collect();
    let mut events: Vec<&Event> = snapshot.events.iter().collect();
    events.sort_by_key(|e| event_time(e));
    let events: Vec<EventSummary> = events.iter().rev().take(8).map(|e| summarize(e)).collect();
    let by_bgp = selected(service, pool.as_deref(), snapshot).1;
    let bgp_sessions: Vec<String> = if by_bgp { bgp_sessions(&namespace, &name, snapshot) } else { Vec::new() };
    let problem = if ips.is_empty() {
        Some(why_no_address(service, allocated.as_ref(), snapshot))
    } else if announced_by.is_empty() && bgp_sessions.is_empty() {
        Some(why_not_announced(service, pool.as_deref(), snapshot))
    } else if by_bgp && !has_ready_endpoint(snapshot) {
        Some(no_ready_endpoint())
    } else {
        None
    };
    let unreadable = snapshot.unreadable.clone();
    ServiceReport {
        namespace,
        name,
        ips,
        pool,
        condition: allocated,
        announced_by,
        bgp_sessions,
        problem,
        events,
        unreadable,
    }
}

/// The sessions a Service is sent on: for each node's BGPAnnouncement of it, the peers it names whose
/// session that node's SpeakerStatus reports Established.
fn bgp_sessions(namespace: &str, name: &str, snapshot: &Snapshot) -> Vec<String> {
    let mut sessions = Vec::new();
    for announcement in &snapshot.bgp_announcements {
        let spec = &announcement.spec;
        if spec.service.namespace != namespace || spec.service.name != name {
            continue;
        }
        let Some(speaker) = snapshot.speakers.iter().find(|s| s.spec.node == spec.node) else { continue };
        for peer in speaker.spec.bgp_peers.iter().filter(|p| p.session == "Established" && spec.peers.contains(&p.name))
        {
            sessions.push(format!("{} -> {} ({})", spec.node, peer.name, peer.address));
        }
    }
    sessions.sort();
    sessions
}

fn why_no_address(service: &Service, allocated: Option<&ConditionSummary>, snapshot: &Snapshot) -> Problem {
    let spec = service.spec.clone().unwrap_or_default();
    if spec.type_.as_deref() != Some("LoadBalancer") {
        return Problem {
            reason: "NotLoadBalancer".into(),
            detail: format!("spec.type is {}", spec.type_.as_deref().unwrap_or("ClusterIP")),
            fix: "set spec.type: LoadBalancer".into(),
        };
    }
    match spec.load_balancer_class.as_deref() {
        Some(class) if class != snapshot.class => {
            return Problem {
                reason: "OtherClass".into(),
                detail: format!(
                    "spec.loadBalancerClass is {class:?}: another load balancer's, not ferrolb's {:?}",
                    snapshot.class
                ),
                fix: format!(
                    "create the Service with spec.loadBalancerClass: {} (the field cannot be changed)",
                    snapshot.class
                ),
            };
        }
        None if snapshot.ignore_unset_class => {
            return Problem {
                reason: "OtherClass".into(),
                detail: "the Service sets no loadBalancerClass, and this ferrolb is installed with ignoreUnsetClass"
                    .into(),
                fix: format!("create the Service with spec.loadBalancerClass: {}", snapshot.class),
            };
        }
        _ => {}
    }
    match allocated {
        Some(condition) if condition.status == "False" => Problem {
            reason: condition.reason.clone(),
            detail: condition.message.clone(),
            fix: fix_for(&condition.reason).into(),
        },
        _ => Problem {
            reason: "NotHandled".into(),
            detail: "ferrolb's controller has written nothing on this Service".into(),
            fix: "check that a controller runs and leads (kubectl -n <install namespace> get pods,leases) and that its --pool-selector selects a pool".into(),
        },
    }
}

/// What to change for each refusal (the condition's message says which pool, address or field).
fn fix_for(refusal: &str) -> &'static str {
    match refusal {
        reason::NO_POOLS => "create an IPAddressPool (ferrolb.io/v1alpha1) with addresses",
        reason::NO_ELIGIBLE_POOL => {
            "name a pool in the ferrolb.io/address-pool annotation, or widen a pool's serviceAllocation, or set autoAssign: true on one"
        }
        reason::POOL_NOT_FOUND => "fix the ferrolb.io/address-pool annotation, or create the pool it names",
        reason::POOL_DISABLED => "pick another pool, or set disabled: false on this one",
        reason::POOL_NOT_ALLOWED => {
            "the pool's serviceAllocation does not select this Service: change its namespaces/selectors, or pick another pool"
        }
        reason::POOL_EXHAUSTED => {
            "add addresses to the pool (or another pool), or delete Services that hold its addresses"
        }
        reason::FAMILY_UNAVAILABLE => {
            "add addresses of the missing family to a pool, or change spec.ipFamilyPolicy / ipFamilies"
        }
        reason::REQUESTED_IP_NOT_IN_POOL => "request an address inside an eligible pool, or add it to one",
        reason::REQUESTED_IP_RESERVED => {
            "request another address: this one is reserved (network/broadcast with avoidBuggyIPs, a node's, a ClusterIP range's)"
        }
        reason::REQUESTED_IP_IN_USE => {
            "request a free address, or share it (same ferrolb.io/allow-shared-ip key on both, different ports)"
        }
        reason::REQUESTED_IPS_SPLIT => "request addresses of a single pool",
        reason::REQUESTED_IPS_NOT_DUAL_STACK => "request one address of each family for a dual-stack Service",
        reason::INVALID_REQUEST => "fix the annotation or field the message names",
        _ => "see the message, and the Service's Events",
    }
}

/// Whether an L2Advertisement, and whether a BGPAdvertisement, announces the Service's pool for it (the same
/// test the controller and the speakers make).
fn selected(service: &Service, pool: Option<&str>, snapshot: &Snapshot) -> (bool, bool) {
    let labels = service.metadata.labels.clone().unwrap_or_default();
    let pool_labels = pool
        .and_then(|p| snapshot.pools.iter().find(|candidate| candidate.metadata.name.as_deref() == Some(p)))
        .and_then(|p| p.metadata.labels.clone())
        .unwrap_or_default();
    let pool = pool.unwrap_or_default();
    let l2 = snapshot
        .advertisements
        .iter()
        .any(|a| a.spec.selects_pool(pool, &pool_labels) && a.spec.selects_service(&labels));
    let bgp = snapshot
        .bgp_advertisements
        .iter()
        .any(|a| a.spec.selects_pool(pool, &pool_labels) && a.spec.selects_service(&labels));
    (l2, bgp)
}

fn has_ready_endpoint(snapshot: &Snapshot) -> bool {
    snapshot
        .endpoint_slices
        .iter()
        .flat_map(|s| s.endpoints.iter().flatten())
        .any(|endpoint| endpoint.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
}

fn no_ready_endpoint() -> Problem {
    Problem {
        reason: "NoReadyEndpoint".into(),
        detail: "the Service has no ready endpoint: speakers announce only Services something answers for".into(),
        fix: "check the Service's selector and its pods' readiness (kubectl get endpointslices -l kubernetes.io/service-name=NAME)".into(),
    }
}

fn why_not_announced(service: &Service, pool: Option<&str>, snapshot: &Snapshot) -> Problem {
    let (l2, bgp) = selected(service, pool, snapshot);
    if !l2 && !bgp {
        return Problem {
            reason: "NotAdvertised".into(),
            detail: format!(
                "no L2Advertisement or BGPAdvertisement selects pool {} for this Service: the address is held, nothing answers for it",
                pool.unwrap_or("(unknown)")
            ),
            fix: "create an L2Advertisement (or, in BGP mode, a BGPAdvertisement) naming the pool (spec.ipAddressPools), or widen an existing one's selectors"
                .into(),
        };
    }
    if !has_ready_endpoint(snapshot) {
        return no_ready_endpoint();
    }
    if bgp && !l2 {
        return Problem {
            reason: "NoBgpSession".into(),
            detail: "a BGPAdvertisement announces the Service, but no node has an Established BGP session".into(),
            fix: "see the sessions and their messages: kubectl get speakerstatuses -n ferrolb-system -o yaml (spec.bgpPeers)".into(),
        };
    }
    let speaker_warning = snapshot
        .events
        .iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .filter(|e| [reason::NOT_ANNOUNCED, reason::NODE_ADDRESS].contains(&e.reason.as_deref().unwrap_or_default()))
        .max_by_key(|e| event_time(e));
    match speaker_warning {
        Some(event) => Problem {
            reason: event.reason.clone().unwrap_or_default(),
            detail: event.note.clone().unwrap_or_default(),
            fix: "see the detail: name the interface in the L2Advertisement (spec.interfaces), or give the Service an address no node has".into(),
        },
        None => Problem {
            reason: "NoSpeaker".into(),
            detail: "no speaker announces the Service and none said why".into(),
            fix: "check the speaker pods (Ready, on the nodes the L2Advertisement's nodeSelectors allow) and their logs".into(),
        },
    }
}

#[derive(Debug, Serialize, PartialEq)]
pub struct ClusterReport {
    pub pools: Vec<PoolSummary>,
    pub speakers: Vec<SpeakerSummary>,
    pub conflicts: Vec<String>,
    pub unreadable: Vec<String>,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PoolSummary {
    pub name: String,
    /// `in use/total` per family that the pool has.
    pub usage: BTreeMap<String, String>,
    pub ready: bool,
    /// Conditions that are not as they should be (not Ready, conflicting, overlapping the cluster).
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SpeakerSummary {
    pub node: String,
    pub pod: Option<String>,
    pub pod_ready: bool,
    pub mode: Option<String>,
    pub alive: Vec<String>,
    /// Speakers that run (a Ready pod) but that this one does not hear (native mode).
    pub missing: Vec<String>,
    /// BGP mode: its sessions.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bgp_peers: Vec<ferrolb_crds::BgpPeerStatus>,
}

/// The report on the cluster: pools with usage, speakers and whom each hears, conflicts.
pub fn cluster_report(snapshot: &Snapshot) -> ClusterReport {
    let pools = snapshot
        .pools
        .iter()
        .map(|pool| {
            let status = pool.status.clone().unwrap_or_default();
            let mut usage = BTreeMap::new();
            for (family, counted) in [("IPv4", &status.ipv4), ("IPv6", &status.ipv6)] {
                if let Some(counted) = counted {
                    usage.insert(family.to_string(), format!("{}/{}", counted.assigned, counted.total));
                }
            }
            let ready = status.conditions.iter().any(|c| c.type_ == reason::READY && c.status == "True");
            let warnings = status
                .conditions
                .iter()
                .filter(|c| (c.type_ == reason::READY) != (c.status == "True"))
                .map(|c| format!("{}={} ({}): {}", c.type_, c.status, c.reason, c.message))
                .collect();
            PoolSummary { name: pool.metadata.name.clone().unwrap_or_default(), usage, ready, warnings }
        })
        .collect();

    // Every node with a speaker pod or a SpeakerStatus.
    let mut nodes: BTreeMap<String, SpeakerSummary> = BTreeMap::new();
    for pod in &snapshot.speaker_pods {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else { continue };
        let ready = pod_ready(pod) && pod.metadata.deletion_timestamp.is_none();
        let entry = nodes.entry(node.clone()).or_insert_with(|| empty_speaker(&node));
        if ready || entry.pod.is_none() {
            entry.pod = pod.metadata.name.clone();
            entry.pod_ready = ready;
        }
    }
    for status in &snapshot.speakers {
        let node = status.spec.node.clone();
        let entry = nodes.entry(node.clone()).or_insert_with(|| empty_speaker(&node));
        entry.mode = Some(status.spec.mode.clone());
        entry.alive = status.spec.alive.clone();
        entry.bgp_peers = status.spec.bgp_peers.clone();
    }
    let running: BTreeSet<String> = nodes.values().filter(|s| s.pod_ready).map(|s| s.node.clone()).collect();
    for speaker in nodes.values_mut() {
        if matches!(speaker.mode.as_deref(), Some("native" | "native+bgp")) && speaker.pod_ready {
            let alive: BTreeSet<&String> = speaker.alive.iter().collect();
            speaker.missing = running.iter().filter(|n| !alive.contains(n)).cloned().collect();
        }
    }

    let mut conflicts: Vec<String> = snapshot
        .events
        .iter()
        .filter(|e| e.reason.as_deref() == Some(reason::IP_CONFLICT))
        .map(|e| {
            let regarding = e.regarding.as_ref();
            let object = regarding
                .map(|r| format!("{}/{}", r.namespace.clone().unwrap_or_default(), r.name.clone().unwrap_or_default()))
                .unwrap_or_default();
            format!("{object}: {}", e.note.clone().unwrap_or_default())
        })
        .collect();
    conflicts.sort();
    conflicts.dedup();
    ClusterReport { pools, speakers: nodes.into_values().collect(), conflicts, unreadable: snapshot.unreadable.clone() }
}

fn empty_speaker(node: &str) -> SpeakerSummary {
    SpeakerSummary {
        node: node.into(),
        pod: None,
        pod_ready: false,
        mode: None,
        bgp_peers: Vec::new(),
        alive: Vec::new(),
        missing: Vec::new(),
    }
}

fn pod_ready(pod: &Pod) -> bool {
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.into_iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True")
}

fn event_time(event: &Event) -> Option<jiff::Timestamp> {
    let series = event.series.as_ref().map(|s| s.last_observed_time.0);
    let at = event.event_time.as_ref().map(|t| t.0);
    series.or(at).or_else(|| event.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

fn summarize(event: &Event) -> EventSummary {
    EventSummary {
        type_: event.type_.clone().unwrap_or_default(),
        reason: event.reason.clone().unwrap_or_default(),
        note: event.note.clone().unwrap_or_default(),
        reporter: event.reporting_instance.clone().or_else(|| event.reporting_controller.clone()).unwrap_or_default(),
    }
}

impl ServiceReport {
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "Service {}/{}", self.namespace, self.name);
        let ips = if self.ips.is_empty() { "none (pending)".to_string() } else { self.ips.join(", ") };
        let _ = writeln!(out, "  IPs:        {ips}");
        let _ = writeln!(out, "  Pool:       {}", self.pool.as_deref().unwrap_or("-"));
        match &self.condition {
            Some(c) => {
                let _ = writeln!(out, "  Condition:  {ALLOCATED_CONDITION}={} ({}): {}", c.status, c.reason, c.message);
            }
            None => {
                let _ = writeln!(out, "  Condition:  none");
            }
        }
        if self.announced_by.is_empty() && self.bgp_sessions.is_empty() {
            let _ = writeln!(out, "  Announced:  by no node");
        }
        for session in &self.bgp_sessions {
            let _ = writeln!(out, "  Announced:  by BGP: {session}");
        }
        for announcer in &self.announced_by {
            let _ = writeln!(
                out,
                "  Announced:  {} from node {} on {}",
                announcer.ips.join(", "),
                announcer.node,
                announcer.interfaces.join(", ")
            );
        }
        if let Some(problem) = &self.problem {
            let _ = writeln!(out, "  Problem:    {}: {}", problem.reason, problem.detail);
            let _ = writeln!(out, "  To fix:     {}", problem.fix);
        }
        if !self.events.is_empty() {
            let _ = writeln!(out, "  Events (newest first):");
            for event in &self.events {
                let _ = writeln!(out, "    {} {} ({}): {}", event.type_, event.reason, event.reporter, event.note);
            }
        }
        unreadable_text(&mut out, &self.unreadable);
        out
    }
}

impl ClusterReport {
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "Pools:");
        if self.pools.is_empty() {
            let _ = writeln!(out, "  none: create an IPAddressPool");
        }
        for pool in &self.pools {
            let usage: Vec<String> = pool.usage.iter().map(|(family, used)| format!("{family} {used}")).collect();
            let state = if pool.ready { "Ready" } else { "NOT READY" };
            let _ = writeln!(out, "  {:<24} {:<10} {}", pool.name, state, usage.join(", "));
            for warning in &pool.warnings {
                let _ = writeln!(out, "      {warning}");
            }
        }
        let _ = writeln!(out, "Speakers:");
        if self.speakers.is_empty() {
            let _ = writeln!(out, "  none found");
        }
        for speaker in &self.speakers {
            let pod = match (&speaker.pod, speaker.pod_ready) {
                (Some(pod), true) => format!("{pod} Ready"),
                (Some(pod), false) => format!("{pod} NOT READY"),
                (None, _) => "no pod".into(),
            };
            let mut sees = match speaker.mode.as_deref() {
                Some("native") => format!("hears {}", speaker.alive.join(", ")),
                Some("native+bgp") => format!("native+bgp mode; hears {}", speaker.alive.join(", ")),
                Some(mode) => format!("{mode} mode"),
                None => "has not reported".into(),
            };
            if !speaker.bgp_peers.is_empty() {
                let peers: Vec<String> = speaker
                    .bgp_peers
                    .iter()
                    .map(|p| match &p.bfd {
                        Some(bfd) => format!("{} {} (BFD {bfd})", p.name, p.session),
                        None => format!("{} {}", p.name, p.session),
                    })
                    .collect();
                sees.push_str(&format!("; BGP: {}", peers.join(", ")));
            }
            let _ = writeln!(out, "  {:<16} {pod}; {sees}", speaker.node);
            if !speaker.missing.is_empty() {
                let _ = writeln!(
                    out,
                    "      does not hear {} (check UDP gossip between the nodes and the gossip key)",
                    speaker.missing.join(", ")
                );
            }
        }
        let _ = writeln!(out, "Conflicts:");
        if self.conflicts.is_empty() {
            let _ = writeln!(out, "  none reported");
        }
        for conflict in &self.conflicts {
            let _ = writeln!(out, "  {conflict}");
        }
        unreadable_text(&mut out, &self.unreadable);
        out
    }
}

fn unreadable_text(out: &mut String, unreadable: &[String]) {
    if !unreadable.is_empty() {
        let _ = writeln!(out, "Not read (this report may be incomplete):");
        for what in unreadable {
            let _ = writeln!(out, "  {what}");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn service(status: serde_json::Value, class: Option<&str>) -> Service {
        serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": "web", "labels": {"app": "web"}},
            "spec": {"type": "LoadBalancer", "loadBalancerClass": class},
            "status": status,
        }))
        .unwrap()
    }

    fn allocated() -> serde_json::Value {
        json!({
            "loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]},
            "conditions": [
                {"type": ALLOCATED_CONDITION, "status": "True", "reason": reason::ALLOCATED, "message": "192.0.2.10 from pool blue", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                {"type": "ferrolb.io/AddressPool", "status": "True", "reason": "AllocatedFrom", "message": "blue", "lastTransitionTime": "2026-01-01T00:00:00Z"},
            ],
        })
    }

    fn snapshot() -> Snapshot {
        Snapshot { class: ferrolb_crds::DEFAULT_LOAD_BALANCER_CLASS.into(), ..Default::default() }
    }

    fn advertisement(pools: &[&str]) -> L2Advertisement {
        serde_json::from_value(json!({"metadata": {"name": "l2"}, "spec": {"ipAddressPools": pools}})).unwrap()
    }

    fn ready_slice(ready: bool) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": "web-1"}, "addressType": "IPv4",
            "endpoints": [{"addresses": ["203.0.113.5"], "conditions": {"ready": ready}}],
        }))
        .unwrap()
    }

    #[test]
    fn a_pending_service_says_the_refusal_and_what_to_change() {
        let pending = service(
            json!({"conditions": [{"type": ALLOCATED_CONDITION, "status": "False", "reason": reason::POOL_EXHAUSTED, "message": "pool blue has no free IPv4 address", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}),
            None,
        );
        let report = service_report(&pending, &snapshot());
        let problem = report.problem.as_ref().unwrap();
        assert_eq!(problem.reason, reason::POOL_EXHAUSTED);
        assert_eq!(problem.detail, "pool blue has no free IPv4 address");
        assert!(problem.fix.contains("add addresses"), "{}", problem.fix);
        let text = report.to_text();
        assert!(text.contains("none (pending)") && text.contains("To fix:"), "{text}");

        let untouched = service_report(&service(json!({}), None), &snapshot());
        assert_eq!(untouched.problem.unwrap().reason, "NotHandled");
    }

    #[test]
    fn another_implementations_service_is_named_as_such() {
        let other = service_report(&service(json!({}), Some("example.com/lb")), &snapshot());
        assert_eq!(other.problem.unwrap().reason, "OtherClass");
        let unset = Snapshot { ignore_unset_class: true, ..snapshot() };
        assert_eq!(service_report(&service(json!({}), None), &unset).problem.unwrap().reason, "OtherClass");
    }

    #[test]
    fn a_bgp_service_is_announced_by_the_established_sessions_or_says_why_not() {
        let held = service(allocated(), None);
        let mut snapshot = snapshot();
        snapshot.bgp_advertisements = vec![
            serde_json::from_value(json!({"metadata": {"name": "bgp"}, "spec": {"ipAddressPools": ["blue"]}})).unwrap(),
        ];
        snapshot.endpoint_slices = vec![ready_slice(true)];
        let speaker = |session: &str| -> SpeakerStatus {
            serde_json::from_value(json!({
                "metadata": {"name": "node-1"},
                "spec": {"node": "node-1", "mode": "bgp", "bgpPeers": [
                    {"name": "router", "address": "192.0.2.1", "session": session, "routes": 1}
                ]}
            }))
            .unwrap()
        };
        snapshot.speakers = vec![speaker("Active")];
        assert_eq!(service_report(&held, &snapshot).problem.unwrap().reason, "NoBgpSession");
        snapshot.speakers = vec![speaker("Established")];
        assert_eq!(
            service_report(&held, &snapshot).problem.unwrap().reason,
            "NoBgpSession",
            "an Established session that the node does not send the Service on"
        );
        snapshot.bgp_announcements = vec![
            serde_json::from_value(json!({
                "metadata": {"name": "shop.web.node-1", "namespace": "ferrolb-system"},
                "spec": {"service": {"namespace": "shop", "name": "web"}, "node": "node-1",
                         "prefixes": ["192.0.2.10/32"], "peers": ["router"]},
            }))
            .unwrap(),
        ];
        let report = service_report(&held, &snapshot);
        assert_eq!(report.problem, None);
        assert_eq!(report.bgp_sessions, ["node-1 -> router (192.0.2.1)"]);
        assert!(report.to_text().contains("Announced:  by BGP: node-1 -> router"), "{}", report.to_text());
        snapshot.endpoint_slices = vec![ready_slice(false)];
        assert_eq!(service_report(&held, &snapshot).problem.unwrap().reason, "NoReadyEndpoint");
    }

    #[test]
    fn an_unannounced_address_is_explained_step_by_step() {
        let held = service(allocated(), None);
        let mut snapshot = snapshot();
        assert_eq!(service_report(&held, &snapshot).problem.unwrap().reason, "NotAdvertised");
        snapshot.advertisements = vec![advertisement(&["red"])];
        assert_eq!(service_report(&held, &snapshot).problem.unwrap().reason, "NotAdvertised", "another pool's");
        snapshot.advertisements = vec![advertisement(&["blue"])];
        snapshot.endpoint_slices = vec![ready_slice(false)];
        assert_eq!(service_report(&held, &snapshot).problem.unwrap().reason, "NoReadyEndpoint");
        snapshot.endpoint_slices = vec![ready_slice(true)];
        assert_eq!(service_report(&held, &snapshot).problem.unwrap().reason, "NoSpeaker");
        snapshot.events = vec![
            serde_json::from_value(json!({"metadata": {"name": "e"}, "eventTime": "2026-01-01T00:00:00.000000Z", "type": "Warning", "reason": reason::NOT_ANNOUNCED, "note": "node-2 owns 192.0.2.10 but eth1: down"})).unwrap(),
        ];
        let problem = service_report(&held, &snapshot).problem.unwrap();
        assert_eq!(
            (problem.reason.as_str(), problem.detail.as_str()),
            (reason::NOT_ANNOUNCED, "node-2 owns 192.0.2.10 but eth1: down")
        );

        snapshot.announcements = vec![serde_json::from_value(json!({
            "metadata": {"name": "shop.web", "namespace": "ferrolb-system"},
            "spec": {"service": {"namespace": "shop", "name": "web"}, "ips": ["192.0.2.10"], "node": "node-2", "interfaces": ["eth0"]},
        }))
        .unwrap()];
        let report = service_report(&held, &snapshot);
        assert_eq!(report.problem, None);
        assert_eq!(report.pool.as_deref(), Some("blue"));
        assert!(report.to_text().contains("192.0.2.10 from node node-2 on eth0"), "{}", report.to_text());
    }

    #[test]
    fn the_cluster_report_shows_usage_and_a_speaker_that_does_not_hear_another() {
        let mut snapshot = snapshot();
        snapshot.pools = vec![serde_json::from_value(json!({
            "metadata": {"name": "blue"}, "spec": {"addresses": ["192.0.2.0/28"]},
            "status": {"ipv4": {"total": "16", "assigned": 3, "available": "13"}, "conditions": [
                {"type": reason::READY, "status": "True", "reason": reason::READY, "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                {"type": reason::CONFLICTING, "status": "True", "reason": reason::OVERLAPS, "message": "overlaps red", "lastTransitionTime": "2026-01-01T00:00:00Z"},
            ]},
        }))
        .unwrap()];
        let pod = |node: &str| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": format!("speaker-{node}")}, "spec": {"nodeName": node, "containers": []},
                "status": {"conditions": [{"type": "Ready", "status": "True"}]},
            }))
            .unwrap()
        };
        snapshot.speaker_pods = vec![pod("node-1"), pod("node-2")];
        let status = |node: &str, alive: &[&str]| -> SpeakerStatus {
            serde_json::from_value(
                json!({"metadata": {"name": node}, "spec": {"node": node, "mode": "native", "alive": alive}}),
            )
            .unwrap()
        };
        snapshot.speakers = vec![status("node-1", &["node-1", "node-2"]), status("node-2", &["node-2"])];
        let report = cluster_report(&snapshot);
        assert_eq!(report.pools[0].usage["IPv4"], "3/16");
        assert_eq!(report.pools[0].warnings.len(), 1, "{:?}", report.pools[0].warnings);
        assert!(report.speakers[0].missing.is_empty());
        assert_eq!(report.speakers[1].missing, ["node-1"]);
        let text = report.to_text();
        assert!(text.contains("does not hear node-1") && text.contains("Conflicting=True"), "{text}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["speakers"][1]["missing"][0], "node-1");

        // Both modes: it hears the others, and its BGP sessions are on its line.
        snapshot.speakers = vec![serde_json::from_value(json!({"metadata": {"name": "node-1"}, "spec": {
            "node": "node-1", "mode": "native+bgp", "alive": ["node-1"],
            "bgpPeers": [{"name": "router", "address": "192.0.2.1", "session": "Established", "bfd": "up", "routes": 2}],
        }}))
        .unwrap()];
        let report = cluster_report(&snapshot);
        assert_eq!(report.speakers[0].missing, ["node-2"], "native+bgp has a gossip membership too");
        let text = report.to_text();
        assert!(text.contains("native+bgp mode; hears node-1; BGP: router Established (BFD up)"), "{text}");
    }
}
