#![allow(clippy::unwrap_used)]

use super::*;
use proptest::prelude::*;

const MS: Duration = Duration::from_millis(1);

fn vip() -> IpAddr {
    "192.0.2.200".parse().unwrap()
}

fn timing() -> Timing {
    Timing::with_join_grace(Duration::from_secs(2))
}

fn want(holder_live: bool) -> BTreeMap<IpAddr, Want> {
    BTreeMap::from([(vip(), Want { interfaces: Arc::new(["eth0".to_string()].into()), holder_live })])
}

fn none() -> BTreeMap<IpAddr, Want> {
    BTreeMap::new()
}

fn handed() -> BTreeSet<IpAddr> {
    BTreeSet::from([vip()])
}

fn probe() -> Vec<(IpAddr, String)> {
    vec![(vip(), "eth0".to_string())]
}

fn answered(c: &Claims) -> bool {
    c.answered().contains_key(&vip())
}

#[test]
fn an_orphaned_vip_is_probed_twice_then_taken_over_after_the_window() {
    let t0 = Instant::now();
    let mut c = Claims::new("node-2", timing());
    assert_eq!(c.update(&want(false), &BTreeSet::new(), false, t0).probes, probe());
    assert!(!answered(&c) && c.watched().contains_key(&vip()), "not answered while probing, but listened for");
    assert_eq!(c.next_due(), Some(t0 + PROBE_INTERVAL));
    assert_eq!(c.tick(false, t0 + PROBE_INTERVAL).probes, probe());
    assert!(c.tick(false, t0 + PROBE_INTERVAL + MS).probes.is_empty());
    assert!(!answered(&c));
    c.tick(false, t0 + 2 * PROBE_INTERVAL);
    assert!(answered(&c));
    assert_eq!(c.claim(vip()), Some(&Claim::Held { stand_in: true }), "taken with an incomplete view");
    assert!(timing().probe_window() <= Duration::from_millis(200), "the probe must fit the 1 s failover budget");
}

#[test]
fn an_answer_to_the_probe_defers_the_takeover_and_it_is_retried_later() {
    let t0 = Instant::now();
    let mut c = Claims::new("node-2", timing());
    c.update(&want(false), &BTreeSet::new(), false, t0);
    assert_eq!(c.heard(vip(), t0 + 3 * MS), Heard::Deferred);
    c.tick(false, t0 + 200 * MS);
    assert!(!answered(&c), "the owner answered: never taken over");
    // The holder still answers at every retry: still not taken.
    let retry = c.next_due().unwrap();
    assert!(retry >= t0 + DEFER_RETRY && retry <= t0 + 2 * DEFER_RETRY + 3 * MS);
    assert_eq!(c.tick(false, retry).probes, probe());
    assert_eq!(c.heard(vip(), retry + MS), Heard::Deferred);
    // The holder died while the gossip is still broken: the next retry finds silence and takes over.
    let retry = c.next_due().unwrap();
    c.tick(false, retry);
    c.tick(false, retry + PROBE_INTERVAL);
    c.tick(false, retry + 2 * PROBE_INTERVAL);
    assert!(answered(&c));
}

#[test]
fn a_live_previous_holder_hands_over_so_no_probe_is_needed() {
    let t0 = Instant::now();
    let mut c = Claims::new("node-1", timing());
    assert!(c.update(&want(true), &BTreeSet::new(), true, t0).probes.is_empty());
    assert_eq!(c.claim(vip()), Some(&Claim::Held { stand_in: false }));
    // Held by right: another MAC claiming it is a conflict, and it keeps answering.
    assert_eq!(c.heard(vip(), t0 + MS), Heard::Conflict);
    assert!(answered(&c));
}

#[test]
fn a_stand_in_stops_answering_when_it_hears_the_owner() {
    let t0 = Instant::now();
    let mut c = Claims::new("node-2", timing());
    c.update(&want(false), &BTreeSet::new(), false, t0);
    c.tick(false, t0 + PROBE_INTERVAL);
    c.tick(false, t0 + 2 * PROBE_INTERVAL);
    assert!(answered(&c));
    // Gossip still broken, the owner's gratuitous ARP is heard: stand down at once.
    assert_eq!(c.heard(vip(), t0 + 500 * MS), Heard::StoodDown);
    assert!(!answered(&c));
    assert!(matches!(c.claim(vip()), Some(Claim::Deferred { .. })));
    // Once the view is complete, a held VIP is held by right.
    let mut c = Claims::new("node-2", timing());
    c.update(&want(false), &BTreeSet::new(), false, t0);
    c.tick(false, t0 + 2 * PROBE_INTERVAL);
    c.update(&want(false), &BTreeSet::new(), true, t0 + 300 * MS);
    assert_eq!(c.heard(vip(), t0 + 400 * MS), Heard::Conflict);
}

#[test]
fn a_stand_in_probes_again_later_and_stands_down_if_the_holder_answers_then() {
    let t0 = Instant::now();
    let mut c = Claims::new("node-2", timing());
    c.update(&want(false), &BTreeSet::new(), false, t0);
    c.tick(false, t0 + PROBE_INTERVAL);
    let taken = t0 + 2 * PROBE_INTERVAL;
    c.tick(false, taken);
    assert_eq!(c.claim(vip()), Some(&Claim::Held { stand_in: true }));
    // The holder was too slow for the probe window; the re-check asks again, and it answers this time.
    assert_eq!(c.next_due(), Some(taken + STAND_IN_RECHECK));
    assert!(c.tick(false, taken + STAND_IN_RECHECK - MS).probes.is_empty());
    assert_eq!(c.tick(false, taken + STAND_IN_RECHECK).probes, probe());
    let next = c.next_due().unwrap();
    assert!(next > taken + 2 * STAND_IN_RECHECK, "the re-checks back off");
    assert_eq!(c.heard(vip(), taken + STAND_IN_RECHECK + MS), Heard::StoodDown);
    assert!(!answered(&c));
    // Held by right (full view): no re-check at all.
    let mut c = Claims::new("node-2", timing());
    c.update(&want(true), &BTreeSet::new(), true, t0);
    assert_eq!(c.next_due(), None);
}

#[test]
fn a_vip_handed_to_a_live_member_is_answered_until_its_announcement_is_heard() {
    let t0 = Instant::now();
    let mut c = Claims::new("node-2", timing());
    c.update(&want(false), &BTreeSet::new(), false, t0);
    c.tick(false, t0 + 2 * PROBE_INTERVAL);
    // The owner is back in the gossip, the plan gives it the VIP: keep answering...
    c.update(&none(), &handed(), true, t0 + 10_000 * MS);
    assert!(answered(&c), "no gap while the returning owner waits out its grace");
    c.tick(true, t0 + 11_000 * MS);
    assert!(answered(&c));
    // ...until its gratuitous ARP is heard, with no conflict reported.
    assert_eq!(c.heard(vip(), t0 + 12_000 * MS), Heard::Released);
    assert!(!answered(&c));
    assert_eq!(c.heard(vip(), t0 + 12_001 * MS), Heard::Ignored);
}

#[test]
fn a_hand_over_falls_back_after_a_bound_and_a_vip_with_no_successor_stops_at_once() {
    let t0 = Instant::now();
    let mut c = Claims::new("node-2", timing());
    c.update(&want(true), &BTreeSet::new(), true, t0);
    c.update(&none(), &handed(), true, t0 + MS);
    assert_eq!(c.next_due(), Some(t0 + MS + timing().release_fallback));
    c.tick(true, t0 + MS + timing().release_fallback - MS);
    assert!(answered(&c));
    c.tick(true, t0 + MS + timing().release_fallback);
    assert!(!answered(&c), "nobody announced it within the fallback: stop anyway");
    // Nobody gets it (Service deleted, no endpoint, link gone): stop at once.
    c.update(&want(true), &BTreeSet::new(), true, t0);
    c.update(&none(), &BTreeSet::new(), true, t0 + MS);
    assert!(!answered(&c));
    // Wanted again while releasing: simply ours, never stopped, and announced afresh (the member it was
    // going to may have pulled the LAN to itself meanwhile).
    c.update(&want(true), &BTreeSet::new(), true, t0);
    c.update(&none(), &handed(), true, t0 + MS);
    let step = c.update(&want(false), &BTreeSet::new(), true, t0 + 2 * MS);
    assert_eq!(c.claim(vip()), Some(&Claim::Held { stand_in: false }));
    assert_eq!(step.reannounce, [vip()]);
}

#[test]
fn a_vip_whose_interface_went_down_is_not_handed_over_but_dropped() {
    let t0 = Instant::now();
    let mut c = Claims::new("node-2", timing());
    c.update(&want(true), &BTreeSet::new(), true, t0);
    // The link dies: the plan moves the VIP to a live member, and nothing can be answered here any more.
    c.update(&none(), &handed(), true, t0 + MS);
    c.keep_usable(&BTreeSet::new());
    assert!(!answered(&c));
    assert_eq!(c.claim(vip()), None);
    // With the interface still usable, the hand-over goes on.
    c.update(&want(true), &BTreeSet::new(), true, t0);
    c.update(&none(), &handed(), true, t0 + MS);
    c.keep_usable(&["eth0".to_string()].into());
    assert!(answered(&c));
}

#[test]
fn a_long_partition_backs_off_and_a_takeover_resets_it() {
    let t0 = Instant::now();
    let mut c = Claims::new("node-2", timing());
    c.update(&want(false), &BTreeSet::new(), false, t0);
    let mut now = t0;
    let mut waits = Vec::new();
    for _ in 0..6 {
        c.heard(vip(), now);
        let retry = c.next_due().unwrap();
        waits.push(retry - now);
        now = retry;
        c.tick(false, now);
    }
    for pair in waits.windows(2).take(3) {
        assert!(pair[1] > pair[0], "each deferral waits longer: {waits:?}");
    }
    let cap = (DEFER_RETRY * 2) * (1 << MAX_BACKOFF_DOUBLINGS);
    assert!(waits.iter().all(|w| *w <= cap), "{waits:?}");
    assert_eq!(waits[4], waits[5], "capped");
    // Silence at last: taken over, and the next deferral starts from the base again.
    c.tick(false, now + 2 * PROBE_INTERVAL);
    assert!(answered(&c));
    c.heard(vip(), now + Duration::from_secs(1));
    let retry = c.next_due().unwrap();
    assert!(retry - (now + Duration::from_secs(1)) <= DEFER_RETRY * 2);
}

#[test]
fn two_nodes_that_both_defer_retry_at_different_times() {
    let t0 = Instant::now();
    let due = |me: &str| {
        let mut c = Claims::new(me, timing());
        c.update(&want(false), &BTreeSet::new(), false, t0);
        c.heard(vip(), t0);
        c.next_due().unwrap()
    };
    assert_ne!(due("node-2"), due("node-3"));
}

proptest! {
    /// Whatever happens, a VIP is never answered while it is being probed or deferred, a takeover without
    /// a live holder always waits the whole probe window, and a heard claim never leaves a stand-in
    /// answering.
    #[test]
    fn never_answered_before_the_probe_window_and_never_after_standing_down(
        events in proptest::collection::vec((0u8..5, 0u64..400), 1..60),
    ) {
        let t0 = Instant::now();
        let mut c = Claims::new("node-2", timing());
        let mut now = t0;
        let mut probing_since: Option<Instant> = None;
        for (kind, dt) in events {
            now += Duration::from_millis(dt);
            match kind {
                0 => { c.update(&want(false), &BTreeSet::new(), false, now); }
                1 => { c.update(&none(), &handed(), true, now); }
                2 => { c.tick(false, now); }
                3 => {
                    let before = c.claim(vip()).cloned();
                    let heard = c.heard(vip(), now);
                    if matches!(before, Some(Claim::Held { stand_in: true })) {
                        prop_assert_eq!(heard, Heard::StoodDown);
                        prop_assert!(!answered(&c));
                    }
                }
                _ => { c.update(&none(), &BTreeSet::new(), false, now); }
            }
            match c.claim(vip()) {
                Some(Claim::Probing { .. }) => {
                    probing_since.get_or_insert(now);
                    prop_assert!(!answered(&c));
                }
                Some(Claim::Deferred { .. }) | None => {
                    probing_since = None;
                    prop_assert!(!answered(&c));
                }
                Some(Claim::Held { .. }) => {
                    if let Some(since) = probing_since.take() {
                        prop_assert!(now >= since + timing().probe_window(), "taken over before the probe window");
                    }
                    prop_assert!(answered(&c));
                }
                Some(Claim::Releasing { .. }) => prop_assert!(answered(&c)),
            }
        }
    }
}
