//! The speaker's Prometheus metrics (served with the health endpoints by `ferrolb-telemetry`).

use std::net::IpAddr;
use std::sync::Arc;

use ferrolb_crds::l2announcement::ServiceReference;
use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, EncodeLabelValue, LabelSetEncoder, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::plan::NodeName;

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

/// One VIP of a Service this node announces, on one interface. A node holds one per announced VIP, twice
/// (in the family and in its [`SeriesSet`]): the Service's name and the node's are the plan's, shared.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct AnnouncedLabels {
    /// The VIP, its Service and this node.
    pub vip: ExpectedLabels,
    pub interface: Arc<str>,
}

impl EncodeLabelSet for AnnouncedLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        self.vip.encode(encoder)?;
        ("interface", &*self.interface).encode(encoder.encode_label())
    }
}

/// A VIP the election gives to `node` (exported by one speaker, the janitor).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct ExpectedLabels {
    pub service: Arc<ServiceReference>,
    pub ip: IpAddr,
    pub node: NodeName,
}

impl EncodeLabelSet for ExpectedLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        ("namespace", self.service.namespace.as_str()).encode(encoder.encode_label())?;
        ("service", self.service.name.as_str()).encode(encoder.encode_label())?;
        ("ip", IpLabel(self.ip)).encode(encoder.encode_label())?;
        ("node", &*self.node).encode(encoder.encode_label())
    }
}

/// An address as a label value, written when the metrics are scraped (not kept as text in every series).
struct IpLabel(IpAddr);

impl EncodeLabelValue for IpLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write as _;
        write!(encoder, "{}", self.0)
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
    /// 1 per (Service, VIP, interface) this node announces; gone when it stops.
    pub announced: Family<AnnouncedLabels, Gauge>,
    /// 1 per VIP that some node should announce (a ready endpoint, an elected owner), with that owner; set
    /// by the janitor only, so `unless` against `announced` finds VIPs nobody answers for.
    pub expected: Family<ExpectedLabels, Gauge>,
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
            "ferrolb_speaker_announced",
            "1 per VIP of a Service this node announces, with the interface it answers on",
            self.announced.clone(),
        );
        registry.register(
            "ferrolb_speaker_expected",
            "1 per VIP the election gives to a node (owner in `node`), exported by one speaker only (the live member with the smallest name)",
            self.expected.clone(),
        );
        registry.register(
            "ferrolb_speaker_keepalived_reload_failures",
            "Failed attempts to apply keepalived's configuration, by reason: invalid_config (refused by keepalived -t) or io; the previous configuration stays in force and the attempt is repeated at every step",
            self.keepalived_reload_failures.clone(),
        );
    }
}

/// The series of one gauge family that should be at 1, each kept under a digest of what names it.
///
/// A plan step lists every Service VIP again, thousands, and almost all were already there: building each
/// one's labels (five strings) only to find it unchanged cost a tenth of the speaker's CPU. Here the labels
/// of a series are built once, when it is new. Digests are 64-bit XXH3 of the length-prefixed parts: two
/// different series sharing one is a chance of about 10⁻¹¹ at 10 000 series.
#[derive(Debug)]
pub struct SeriesSet<L> {
    series: std::collections::HashMap<u64, L>,
}

impl<L> Default for SeriesSet<L> {
    fn default() -> Self {
        Self { series: std::collections::HashMap::new() }
    }
}

impl<L> SeriesSet<L>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug,
{
    /// Makes `family` hold exactly the series `wanted` lists (digest, and how to build its labels), at 1.
    pub fn sync<F: FnOnce() -> L>(&mut self, family: &Family<L, Gauge>, wanted: impl IntoIterator<Item = (u64, F)>) {
        let mut next = std::collections::HashMap::with_capacity(self.series.len());
        for (digest, labels) in wanted {
            if next.contains_key(&digest) {
                continue;
            }
            let labels = match self.series.remove(&digest) {
                Some(labels) => labels,
                None => {
                    let labels = labels();
                    family.get_or_create(&labels).set(1);
                    labels
                }
            };
            next.insert(digest, labels);
        }
        for gone in self.series.values() {
            family.remove(gone);
        }
        self.series = next;
    }

    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }
}

/// The digest [`SeriesSet`] keeps a series under: its naming parts (strings, an address) in order.
pub fn series_digest(texts: &[&str], ip: std::net::IpAddr) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for text in texts {
        hasher.update(&(text.len() as u64).to_le_bytes());
        hasher.update(text.as_bytes());
    }
    match ip {
        std::net::IpAddr::V4(v4) => {
            hasher.update(&[4]);
            hasher.update(&v4.octets());
        }
        std::net::IpAddr::V6(v6) => {
            hasher.update(&[6]);
            hasher.update(&v6.octets());
        }
    }
    hasher.digest()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn encoded(family: &Family<ExpectedLabels, Gauge>) -> String {
        let mut registry = Registry::default();
        registry.register("expected", "test", family.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    fn wanted<'a>(
        services: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = (u64, impl FnOnce() -> ExpectedLabels)> + 'a {
        services.iter().map(|(name, ip)| {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            (series_digest(&["shop", name, "node-1"], ip), move || ExpectedLabels {
                service: Arc::new(ServiceReference { namespace: "shop".into(), name: (*name).into() }),
                ip,
                node: "node-1".into(),
            })
        })
    }

    #[test]
    fn a_series_set_holds_exactly_what_was_last_wanted() {
        let family = Family::<ExpectedLabels, Gauge>::default();
        let mut set = SeriesSet::default();
        set.sync(&family, wanted(&[("web", "192.0.2.1"), ("api", "2001:db8::1"), ("web", "192.0.2.1")]));
        assert_eq!(set.len(), 2, "a series listed twice is one series");
        let text = encoded(&family);
        assert!(text.contains(r#"{namespace="shop",service="web",ip="192.0.2.1",node="node-1"} 1"#), "{text}");
        assert!(text.contains(r#"service="api",ip="2001:db8::1""#), "{text}");
        set.sync(&family, wanted(&[("api", "2001:db8::1"), ("db", "192.0.2.3")]));
        let text = encoded(&family);
        assert!(!text.contains(r#"service="web""#), "a series no longer wanted is removed: {text}");
        assert!(text.contains(r#"service="api""#) && text.contains(r#"service="db""#), "{text}");
        set.sync(&family, wanted(&[]));
        assert!(set.is_empty());
        assert!(!encoded(&family).contains("service="));
    }

    #[test]
    fn digests_tell_apart_what_only_concatenation_or_family_would_confuse() {
        let v4: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: std::net::IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_ne!(series_digest(&["ab", "c"], v4), series_digest(&["a", "bc"], v4));
        assert_ne!(series_digest(&["a"], v4), series_digest(&["a"], mapped));
    }
}
