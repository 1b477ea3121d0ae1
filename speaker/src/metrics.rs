//! The speaker's Prometheus metrics (served with the health endpoints by `ferrolb-telemetry`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

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

/// One VIP of a Service this node announces, on one interface.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct AnnouncedLabels {
    pub namespace: String,
    pub service: String,
    pub ip: String,
    pub node: String,
    pub interface: String,
}

/// A VIP the election gives to `node` (exported by one speaker, the janitor).
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct ExpectedLabels {
    pub namespace: String,
    pub service: String,
    pub ip: String,
    pub node: String,
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
