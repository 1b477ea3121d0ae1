//! Which VIPs this node answers for, over time, as a pure state machine: the plan says which VIPs this node
//! should own; this decides when it really starts and stops answering, so that a VIP is answered by one
//! MAC at a time even when the gossip is wrong, and by at least one while it moves between live nodes.
//!
//! - **Take over only what is proven orphaned.** When the node that held a VIP is not a live member (it
//!   crashed, its link was cut, or only the gossip between us broke), the VIP is first probed on the wire
//!   (ARP probe / DAD-style Neighbor Solicitation, sent by the I/O side on [`Step::probes`]). Any foreign
//!   MAC claiming or answering for it defers the takeover ([`Claim::Deferred`]), retried later; silence
//!   for [`Timing::probe_window`] means nobody holds it. When the previous holder is a live member, the
//!   plan is shared and it hands over itself: no probe.
//! - **Stand down on hearing the owner.** A VIP taken over while the view was incomplete (some node the
//!   API lists is not a live member) is held as a *stand-in*: a foreign MAC claiming it then is most
//!   likely the owner we cannot gossip with, and the stand-in stops answering at once.
//! - **Hand over without a gap.** A VIP the plan gives to another live member keeps being answered
//!   ([`Claim::Releasing`]) until the new owner's own announcement is heard, or a bounded fallback.
//!
//! This module never sends, receives or reads a clock: the caller passes `now` and carries out the probes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::plan::{Interfaces, Placement};

/// Probes sent before a takeover. Two, so one lost frame cannot make a held VIP look orphaned.
pub const PROBES: u32 = 2;
/// Gap between probes, and the wait after the last one. A live speaker answers from a task reading its
/// packet socket: well under 1 ms on an idle LAN, a few ms on a loaded node, so 30 ms is ten times the
/// worst of that; in all the takeover waits 2 × 30 = 60 ms, which keeps a hard crash's failover (failure
/// detection ≤ 2 probe periods + a probe period + suspicion = 500 ms by default, plus this) under the 1 s budget. An
/// answer later than that is not lost for good: a stand-in probes again ([`STAND_IN_RECHECK`]).
pub const PROBE_INTERVAL: Duration = Duration::from_millis(30);
/// A stand-in probes its VIP again this long after taking it over, then at doubling intervals up to
/// 2^[`MAX_RECHECK_DOUBLINGS`] times this (32 s): a holder that answered too late for the takeover's
/// probe window (overloaded, or both probes lost) answers this one and the stand-in stands down within
/// 2 s; a long outage of the owner costs one probe per VIP every 32 s.
pub const STAND_IN_RECHECK: Duration = Duration::from_secs(2);
pub const MAX_RECHECK_DOUBLINGS: u32 = 4;
/// A deferred takeover is probed again after this (plus up to as much again, different per node and
/// VIP, so two nodes that both defer do not probe in lock step): if the holder dies while the gossip is
/// still broken, the VIP moves within about this long.
pub const DEFER_RETRY: Duration = Duration::from_secs(1);
/// Each further deferral of the same VIP doubles the wait, up to this many times (8 s): a gossip
/// partition lasting minutes then costs every other node two probes per VIP every 8–16 s rather than
/// every 1–2 s (a LAN with thousands of VIPs would otherwise carry thousands of probes a second), and a
/// holder that dies during the partition, a double fault, is still replaced within about that long.
pub const MAX_BACKOFF_DOUBLINGS: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub probes: u32,
    pub probe_interval: Duration,
    pub retry: Duration,
    /// How long a VIP given to another live member is still answered without hearing that member
    /// announce it: longer than the time the new owner may hold back (its join grace), with a margin.
    pub release_fallback: Duration,
}

impl Timing {
    /// The defaults, for a speaker whose join grace is `join_grace`.
    pub fn with_join_grace(join_grace: Duration) -> Self {
        // One second beyond the new owner's grace covers its gossip catching up and its first burst.
        Self {
            probes: PROBES,
            probe_interval: PROBE_INTERVAL,
            retry: DEFER_RETRY,
            release_fallback: join_grace + Duration::from_secs(1),
        }
    }

    /// From the first probe to the takeover when nobody answers.
    pub fn probe_window(&self) -> Duration {
        self.probe_interval * self.probes.max(1)
    }
}

/// Where one VIP stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Wanted, not answered yet: probing the wire.
    Probing { sent: u32, next_probe: Instant, take_at: Instant },
    /// Wanted, but another MAC holds it; probed again at `retry`.
    Deferred { retry: Instant },
    /// Answered. `stand_in`: taken over while some node the API lists was not a live member.
    Held { stand_in: bool },
    /// Given to another live member by the plan; answered until it announces the VIP, or `until`.
    Releasing { until: Instant },
}

/// What the plan wants for one VIP this node should own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    pub interfaces: Interfaces,
    /// The node that held it last is a live member (other than this one): it hands over by itself.
    pub holder_live: bool,
}

/// What to send now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Step {
    /// Probes: VIP and interface.
    pub probes: Vec<(IpAddr, String)>,
    /// VIPs being handed over that are this node's again: announce them afresh, since the member they
    /// were going to may have announced them meanwhile.
    pub reannounce: Vec<IpAddr>,
    /// The answered set changed (a takeover, a hand-over that ended). Set by [`Claims::tick`] only: a tick
    /// that only probes changes nothing the rest of the node must act on.
    pub answered_changed: bool,
}

/// What hearing another MAC claim or answer for a VIP meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// Not a VIP this node has anything to do with.
    Ignored,
    /// A takeover was being probed: someone holds it; deferred.
    Deferred,
    /// Held as a stand-in: the owner (or someone) is back; stopped answering, deferred.
    StoodDown,
    /// The new owner announced a VIP being handed over: stopped answering.
    Released,
    /// Held by right (full view): a real conflict, to be reported and defended.
    Conflict,
}

#[derive(Debug, Clone)]
struct Entry {
    claim: Claim,
    interfaces: Interfaces,
    /// Deferrals in a row, for the backoff; back to 0 once held.
    deferrals: u32,
    /// While held as a stand-in: when to probe again, and how many re-checks were done.
    recheck: Option<(Instant, u32)>,
}

impl Entry {
    /// Sends the first probe (on every interface) and starts the probe window.
    fn start_probing(&mut self, vip: IpAddr, timing: &Timing, now: Instant, step: &mut Step) {
        self.claim =
            Claim::Probing { sent: 1, next_probe: now + timing.probe_interval, take_at: now + timing.probe_window() };
        step.probes.extend(self.interfaces.iter().map(|i| (vip, i.clone())));
    }
}

#[derive(Debug, Clone)]
pub struct Claims {
    me: String,
    timing: Timing,
    vips: BTreeMap<IpAddr, Entry>,
}

impl Claims {
    pub fn new(me: impl Into<String>, timing: Timing) -> Self {
        Self { me: me.into(), timing, vips: BTreeMap::new() }
    }

    pub fn claim(&self, vip: IpAddr) -> Option<&Claim> {
        self.vips.get(&vip).map(|e| &e.claim)
    }

    /// Brings the claims to the plan. `wanted`: what this node should own; `handed_over`: the VIPs the plan
    /// gives to another live member; `complete`: every node the API lists is a live member.
    pub fn update(
        &mut self,
        wanted: &BTreeMap<IpAddr, Want>,
        handed_over: &BTreeSet<IpAddr>,
        complete: bool,
        now: Instant,
    ) -> Step {
        let mut step = Step::default();
        let timing = self.timing;
        self.vips.retain(|vip, entry| {
            if wanted.contains_key(vip) {
                return true;
            }
            match entry.claim {
                Claim::Held { .. } if handed_over.contains(vip) => {
                    entry.claim = Claim::Releasing { until: now + timing.release_fallback };
                    true
                }
                Claim::Releasing { .. } => handed_over.contains(vip),
                _ => false,
            }
        });
        for (vip, want) in wanted {
            let entry = self.vips.entry(*vip).or_insert_with(|| Entry {
                claim: Claim::Deferred { retry: now },
                interfaces: want.interfaces.clone(),
                deferrals: 0,
                recheck: None,
            });
            if !Arc::ptr_eq(&entry.interfaces, &want.interfaces) {
                entry.interfaces = want.interfaces.clone();
            }
            match entry.claim {
                Claim::Held { stand_in } => entry.claim = Claim::Held { stand_in: stand_in && !complete },
                // Never stopped answering: it is simply ours again.
                Claim::Releasing { .. } => {
                    entry.claim = Claim::Held { stand_in: false };
                    step.reannounce.push(*vip);
                }
                // The holder is live: the plan is shared and it hands over; nothing to prove.
                Claim::Probing { .. } | Claim::Deferred { .. } if want.holder_live => {
                    entry.claim = Claim::Held { stand_in: !complete }
                }
                Claim::Deferred { retry } if retry <= now => entry.start_probing(*vip, &timing, now, &mut step),
                Claim::Probing { .. } | Claim::Deferred { .. } => {}
            }
        }
        self.settle(now);
        step
    }

    /// A VIP being handed over is answered only while an interface it was answered on is usable: a node
    /// whose link went down cannot bridge the hand-over, and answering again when the link returns,
    /// silently, would leave the LAN with the new owner's MAC.
    pub fn keep_usable(&mut self, usable: &BTreeSet<String>) {
        self.vips.retain(|_, entry| {
            if matches!(entry.claim, Claim::Releasing { .. }) {
                if !entry.interfaces.is_subset(usable) {
                    entry.interfaces = Arc::new(entry.interfaces.intersection(usable).cloned().collect());
                }
                return !entry.interfaces.is_empty();
            }
            true
        });
    }

    /// Timers: further probes, takeovers after a silent probe window, retries, release fallbacks.
    pub fn tick(&mut self, complete: bool, now: Instant) -> Step {
        let mut step = Step::default();
        let timing = self.timing;
        let before = self.vips.len();
        self.vips.retain(|_, entry| match entry.claim {
            Claim::Releasing { until } => until > now,
            _ => true,
        });
        step.answered_changed = self.vips.len() != before;
        for (vip, entry) in &mut self.vips {
            match entry.claim {
                Claim::Probing { take_at, .. } if take_at <= now => {
                    entry.claim = Claim::Held { stand_in: !complete };
                    step.answered_changed = true;
                }
                Claim::Probing { sent, next_probe, take_at } if next_probe <= now && sent < timing.probes => {
                    entry.claim = Claim::Probing { sent: sent + 1, next_probe: now + timing.probe_interval, take_at };
                    step.probes.extend(entry.interfaces.iter().map(|i| (*vip, i.clone())));
                }
                Claim::Deferred { retry } if retry <= now => entry.start_probing(*vip, &timing, now, &mut step),
                Claim::Held { stand_in: true } => {
                    if let Some((due, done)) = entry.recheck
                        && due <= now
                    {
                        let next = done.saturating_add(1);
                        entry.recheck = Some((now + STAND_IN_RECHECK * (1 << next.min(MAX_RECHECK_DOUBLINGS)), next));
                        step.probes.extend(entry.interfaces.iter().map(|i| (*vip, i.clone())));
                    }
                }
                _ => {}
            }
        }
        self.settle(now);
        step
    }

    /// Another MAC claimed `vip` (gratuitous ARP, ARP reply, Neighbor Advertisement) or answered our probe.
    pub fn heard(&mut self, vip: IpAddr, now: Instant) -> Heard {
        let base = self.retry_after(vip);
        let Some(entry) = self.vips.get_mut(&vip) else { return Heard::Ignored };
        let retry = now + base * (1 << entry.deferrals.min(MAX_BACKOFF_DOUBLINGS));
        if matches!(entry.claim, Claim::Probing { .. } | Claim::Held { stand_in: true }) {
            entry.deferrals = entry.deferrals.saturating_add(1);
        }
        match entry.claim {
            Claim::Probing { .. } => {
                entry.claim = Claim::Deferred { retry };
                Heard::Deferred
            }
            Claim::Deferred { .. } => Heard::Ignored,
            Claim::Held { stand_in: true } => {
                entry.claim = Claim::Deferred { retry };
                Heard::StoodDown
            }
            Claim::Held { stand_in: false } => Heard::Conflict,
            Claim::Releasing { .. } => {
                self.vips.remove(&vip);
                Heard::Released
            }
        }
    }

    /// Book-keeping after transitions: the deferral backoff restarts once held, and a stand-in gets its
    /// re-check scheduled (a VIP held by right needs none).
    fn settle(&mut self, now: Instant) {
        for entry in self.vips.values_mut() {
            if matches!(entry.claim, Claim::Held { .. }) {
                entry.deferrals = 0;
            }
            if matches!(entry.claim, Claim::Held { stand_in: true }) {
                entry.recheck.get_or_insert((now + STAND_IN_RECHECK, 0));
            } else {
                entry.recheck = None;
            }
        }
    }

    /// What is answered now: held and releasing VIPs, with their interfaces.
    pub fn answered(&self) -> Placement {
        self.vips
            .iter()
            .filter(|(_, e)| matches!(e.claim, Claim::Held { .. } | Claim::Releasing { .. }))
            .map(|(vip, e)| (*vip, e.interfaces.clone()))
            .collect()
    }

    /// VIPs being probed or deferred, with the interfaces they are wanted on: claims for them from other
    /// MACs must be heard too.
    pub fn watched(&self) -> Placement {
        self.vips
            .iter()
            .filter(|(_, e)| matches!(e.claim, Claim::Probing { .. } | Claim::Deferred { .. }))
            .map(|(vip, e)| (*vip, e.interfaces.clone()))
            .collect()
    }

    /// When [`Claims::tick`] next has something to do.
    pub fn next_due(&self) -> Option<Instant> {
        self.vips
            .values()
            .filter_map(|e| match e.claim {
                Claim::Probing { next_probe, take_at, sent } => {
                    Some(if sent < self.timing.probes { next_probe.min(take_at) } else { take_at })
                }
                Claim::Deferred { retry } => Some(retry),
                Claim::Releasing { until } => Some(until),
                Claim::Held { .. } => e.recheck.map(|(due, _)| due),
            })
            .min()
    }

    /// `retry` plus a share of it fixed per node and VIP, so deferring nodes spread their probes.
    fn retry_after(&self, vip: IpAddr) -> Duration {
        const SHARES: u64 = 1000;
        let share = crate::election::score(&self.me, vip) % SHARES;
        self.timing.retry + self.timing.retry.mul_f64(share as f64 / SHARES as f64)
    }
}

#[cfg(test)]
#[path = "claims_tests.rs"]
mod tests;
