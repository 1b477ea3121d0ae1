//! The speaker's Prometheus metrics (served with the health endpoints by `ferrolb-telemetry`).

use std::net::IpAddr;
use std::sync::Arc;

use ferrolb_crds::l2announcement::ServiceReference;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabel, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelSetEncoder, LabelValueEncoder,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

use crate::plan::{Decision, NodeName, Placement};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FamilyLabel {
    pub family: &'static str,
}

impl FamilyLabel {
    pub const IPV4: Self = Self { family: "IPv4" };
    pub const IPV6: Self = Self { family: "IPv6" };

    pub fn of(ip: std::net::IpAddr) -> Self {
        if ip.is_ipv4() { Self::IPV4 } else { Self::IPV6 }
    }
}

/// Why a gossip datagram was dropped (see [`crate::l2::gossip_auth::AuthError::reason`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabel {
    pub reason: &'static str,
}

/// The labels of one VIP of a Service: the Service, the VIP, the node that owns it and, for an announced
/// VIP, the interface it is answered on.
struct VipLabels<'a> {
    service: &'a ServiceReference,
    ip: IpAddr,
    node: &'a str,
    interface: Option<&'a str>,
}

impl EncodeLabelSet for VipLabels<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        ("namespace", self.service.namespace.as_str()).encode(encoder.encode_label())?;
        ("service", self.service.name.as_str()).encode(encoder.encode_label())?;
        ("ip", IpLabel(self.ip)).encode(encoder.encode_label())?;
        ("node", self.node).encode(encoder.encode_label())?;
        match self.interface {
            Some(interface) => ("interface", interface).encode(encoder.encode_label()),
            None => Ok(()),
        }
    }
}

/// An address as a label value, written when the metrics are scraped.
struct IpLabel(IpAddr);

impl EncodeLabelValue for IpLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write as _;
        write!(encoder, "{}", self.0)
    }
}

/// What the last plan step reported: the plan, what this node answers for, and whether it is the janitor.
#[derive(Clone, Debug, Default)]
struct Reported {
    decisions: Arc<Vec<Decision>>,
    held: Arc<Placement>,
    me: NodeName,
    janitor: bool,
}

/// `ferrolb_speaker_announced` and `ferrolb_speaker_expected`, written from the last plan step when scraped.
///
/// They hold one series per Service VIP, thousands: kept as series (a family and the set naming its
/// members, with their labels) they cost the node announcing them all about 5 MiB at 10 000 VIPs, and a
/// comparison of every series at every step. The plan and the answered set they are written from are
/// held anyway, so a step now hands them over by pointer and the series exist only in the scraped text.
#[derive(Clone, Debug, Default)]
pub struct PlanSeries {
    reported: Arc<std::sync::Mutex<Reported>>,
}

impl PlanSeries {
    /// What the series say from now on: `held` is what `me` answers for after the step that made
    /// `decisions`; the janitor also exports what every node is expected to announce.
    pub fn set(&self, decisions: Arc<Vec<Decision>>, held: Arc<Placement>, me: NodeName, janitor: bool) {
        *crate::locks::lock(&self.reported, "reported plan") = Reported { decisions, held, me, janitor };
    }
}

impl Collector for PlanSeries {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        // Pointers copied out, so a step is not held up while the text is written.
        let Reported { decisions, held, me, janitor } = crate::locks::lock(&self.reported, "reported plan").clone();
        let mut announced = encoder.encode_descriptor(
            "ferrolb_speaker_announced",
            "1 per VIP of a Service this node announces, with the interface it answers on",
            None,
            MetricType::Gauge,
        )?;
        for decision in decisions.iter().filter(|d| d.owner.as_deref() == Some(&*me)) {
            for &ip in decision.vips.iter() {
                for interface in held.get(&ip).into_iter().flat_map(|interfaces| interfaces.iter()) {
                    let labels =
                        VipLabels { service: &decision.service, ip, node: &me, interface: Some(interface.as_str()) };
                    ConstGauge::new(1i64).encode(announced.encode_family(&labels)?)?;
                }
            }
        }
        let mut expected = encoder.encode_descriptor(
            "ferrolb_speaker_expected",
            "1 per VIP the election gives to a node (owner in `node`), exported by one speaker only (the live member with the smallest name)",
            None,
            MetricType::Gauge,
        )?;
        for (decision, owner) in decisions.iter().filter(|_| janitor).filter_map(|d| Some((d, d.owner.as_deref()?))) {
            for &ip in decision.vips.iter() {
                let labels = VipLabels { service: &decision.service, ip, node: owner, interface: None };
                ConstGauge::new(1i64).encode(expected.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// Why keepalived's configuration could not be applied.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadFailureLabel {
    /// `invalid_config` (refused by `keepalived -t`) or `io` (not written, or keepalived not signalled/started).
    pub reason: &'static str,
}

/// Every metric the speaker exports. Cloning shares the same series.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub owned_vips: Gauge,
    pub members: Gauge,
    pub ownership_changes: Counter,
    /// Gratuitous ARPs (each a request and a reply) and unsolicited NAs sent.
    pub announcements_sent: Family<FamilyLabel, Counter>,
    /// ARP requests and Neighbor Solicitations answered.
    pub requests_answered: Family<FamilyLabel, Counter>,
    pub conflicts: Family<FamilyLabel, Counter>,
    pub send_errors: Counter,
    /// ARP probes and DAD-style Neighbor Solicitations sent before taking a VIP over.
    pub probes_sent: Family<FamilyLabel, Counter>,
    /// Takeovers put off (or stand-ins stood down) because another MAC holds the VIP.
    pub takeovers_deferred: Counter,
    /// Frames dropped unread because they were queued too long (the speaker was not running).
    pub stale_frames: Counter,
    pub rejected_gossip: Family<RejectLabel, Counter>,
    /// Other speakers this node's gossip declared down (a crash, a cut link, or a false suspicion of a
    /// member too slow to answer its probes).
    pub members_declared_down: Counter,
    /// `ferrolb_speaker_announced`: 1 per (Service, VIP, interface) this node announces, gone when it stops;
    /// `ferrolb_speaker_expected`: 1 per VIP that some node should announce (a ready endpoint, an elected
    /// owner), with that owner, from the janitor only, so `unless` against `announced` finds VIPs nobody
    /// answers for.
    pub plan: PlanSeries,
    /// keepalived mode: attempts to apply a configuration that failed (the previous one stays in force; a
    /// refused configuration is retried at every step, so the count grows while the cause lasts).
    pub keepalived_reload_failures: Family<ReloadFailureLabel, Counter>,
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        // Series of every known label value exist from the start, at 0: an alert on `increase()` sees the
        // first event (a series born at 1 has no increase), and a dashboard finds the series it names.
        for family in [FamilyLabel::IPV4, FamilyLabel::IPV6] {
            for counters in [&self.announcements_sent, &self.requests_answered, &self.conflicts, &self.probes_sent] {
                let _ = counters.get_or_create(&family);
            }
        }
        for reason in crate::l2::gossip_auth::AuthError::REASONS {
            let _ = self.rejected_gossip.get_or_create(&RejectLabel { reason });
        }
        for reason in crate::keepalived::supervise::SuperviseError::REASONS {
            let _ = self.keepalived_reload_failures.get_or_create(&ReloadFailureLabel { reason });
        }
        registry.register("ferrolb_speaker_owned_vips", "VIPs this node announces", self.owned_vips.clone());
        registry.register(
            "ferrolb_speaker_members",
            "Live speakers this node sees, itself included",
            self.members.clone(),
        );
        registry.register(
            "ferrolb_speaker_ownership_changes",
            "VIPs this node took over or gave up",
            self.ownership_changes.clone(),
        );
        registry.register(
            "ferrolb_speaker_announcements_sent",
            "Gratuitous ARPs and unsolicited Neighbor Advertisements sent",
            self.announcements_sent.clone(),
        );
        registry.register(
            "ferrolb_speaker_requests_answered",
            "ARP requests and Neighbor Solicitations answered",
            self.requests_answered.clone(),
        );
        registry.register(
            "ferrolb_speaker_ip_conflicts",
            "Frames from another MAC claiming a VIP this node owns",
            self.conflicts.clone(),
        );
        registry.register("ferrolb_speaker_send_errors", "Frames that could not be sent", self.send_errors.clone());
        registry.register(
            "ferrolb_speaker_probes_sent",
            "ARP probes and Neighbor Solicitations sent to check a VIP is orphaned before taking it over",
            self.probes_sent.clone(),
        );
        registry.register(
            "ferrolb_speaker_takeovers_deferred",
            "Takeovers put off, or stand-ins stood down, because another MAC answers for the VIP",
            self.takeovers_deferred.clone(),
        );
        registry.register(
            "ferrolb_speaker_stale_frames",
            "ARP and ND frames dropped unread because they were queued too long (the speaker was not running)",
            self.stale_frames.clone(),
        );
        registry.register(
            "ferrolb_speaker_rejected_gossip_datagrams",
            "Gossip datagrams dropped, by reason: bad_tag or truncated (no valid key), stale (sent outside the freshness window), replayed (seen before), version",
            self.rejected_gossip.clone(),
        );
        registry.register(
            "ferrolb_speaker_members_declared_down",
            "Other speakers this node's gossip declared down: crashed, cut off, or too slow to answer its probes",
            self.members_declared_down.clone(),
        );
        registry.register(
            "ferrolb_speaker_keepalived_reload_failures",
            "Failed attempts to apply keepalived's configuration, by reason: invalid_config (refused by keepalived -t) or io; the previous configuration stays in force and the attempt is repeated at every step",
            self.keepalived_reload_failures.clone(),
        );
        registry.register_collector(Box::new(self.plan.clone()));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    fn scraped(series: &PlanSeries) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(series.clone()));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    fn decision(name: &str, vips: &[&str], owner: Option<&str>) -> Decision {
        Decision {
            service: Arc::new(ServiceReference { namespace: "shop".into(), name: name.into() }),
            vips: vips.iter().map(|v| v.parse().unwrap()).collect(),
            owner: owner.map(Into::into),
            named_interfaces: Default::default(),
            any_interface: true,
            ranking: owner.into_iter().map(Into::into).collect(),
        }
    }

    fn held(vips: &[(&str, &[&str])]) -> Arc<Placement> {
        Arc::new(
            vips.iter()
                .map(|(vip, interfaces)| {
                    (vip.parse().unwrap(), Arc::new(interfaces.iter().map(|i| i.to_string()).collect::<BTreeSet<_>>()))
                })
                .collect(),
        )
    }

    #[test]
    fn announced_series_name_each_held_vip_of_this_nodes_services_on_each_interface() {
        let series = PlanSeries::default();
        let decisions = Arc::new(vec![
            decision("web", &["192.0.2.1", "2001:db8::1"], Some("node-1")),
            decision("db", &["192.0.2.3"], Some("node-2")),
            decision("idle", &["192.0.2.4"], None),
            // Owned, but not answered yet (still probing): not announced.
            decision("new", &["192.0.2.5"], Some("node-1")),
        ]);
        let answered = held(&[("192.0.2.1", &["eth0", "eth1"]), ("2001:db8::1", &["eth0"])]);
        series.set(decisions.clone(), answered, "node-1".into(), false);
        let text = scraped(&series);
        for line in [
            r#"ferrolb_speaker_announced{namespace="shop",service="web",ip="192.0.2.1",node="node-1",interface="eth0"} 1"#,
            r#"ferrolb_speaker_announced{namespace="shop",service="web",ip="192.0.2.1",node="node-1",interface="eth1"} 1"#,
            r#"ferrolb_speaker_announced{namespace="shop",service="web",ip="2001:db8::1",node="node-1",interface="eth0"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
        }
        assert_eq!(text.lines().filter(|l| l.starts_with("ferrolb_speaker_announced{")).count(), 3, "{text}");
        assert!(!text.contains("ferrolb_speaker_expected{"), "not the janitor: {text}");
        assert!(text.contains("# TYPE ferrolb_speaker_announced gauge"), "{text}");

        // The next step lost web's IPv6 VIP and took nothing new: its series are gone at once.
        series.set(decisions, held(&[("192.0.2.1", &["eth0"])]), "node-1".into(), false);
        let text = scraped(&series);
        assert_eq!(text.lines().filter(|l| l.starts_with("ferrolb_speaker_announced{")).count(), 1, "{text}");
        assert!(!text.contains("2001:db8::1"), "{text}");

        series.set(Arc::default(), Arc::default(), "node-1".into(), false);
        assert!(!scraped(&series).contains("service="));
    }

    #[test]
    fn the_janitor_exports_every_vip_with_an_owner_and_the_owner_it_was_given() {
        let series = PlanSeries::default();
        let decisions = Arc::new(vec![
            decision("web", &["192.0.2.1"], Some("node-2")),
            decision("api", &["2001:db8::1"], Some("node-1")),
            decision("idle", &["192.0.2.4"], None),
        ]);
        series.set(decisions.clone(), Arc::new(BTreeMap::new()), "node-1".into(), true);
        let text = scraped(&series);
        let expected: Vec<&str> = text.lines().filter(|l| l.starts_with("ferrolb_speaker_expected{")).collect();
        assert_eq!(
            expected,
            [
                r#"ferrolb_speaker_expected{namespace="shop",service="web",ip="192.0.2.1",node="node-2"} 1"#,
                r#"ferrolb_speaker_expected{namespace="shop",service="api",ip="2001:db8::1",node="node-1"} 1"#,
            ],
            "{text}"
        );
        assert!(!text.contains("ferrolb_speaker_announced{"), "node-1 answers for nothing yet: {text}");
        series.set(decisions, Arc::new(BTreeMap::new()), "node-1".into(), false);
        assert!(!scraped(&series).contains("ferrolb_speaker_expected{"), "no longer the janitor");
    }
}
