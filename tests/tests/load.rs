//! Failure detection under a saturated CPU. A test binary of its own: cargo runs test binaries one after
//! another, so its load disturbs no other test and no other test's work disturbs its count.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed step should stop the test, loudly

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferrolb_e2e::l2lab::{L2Lab, VIP4, metric};

const NODES: [&str; 3] = ["node-1", "node-2", "node-3"];
const DECLARED_DOWN: &str = "ferrolb_speaker_members_declared_down_total";

/// Spins two threads per core at normal priority until `stop`: every core busy, and each speaker thread
/// competing with more runnable threads than there are cores.
fn saturate_cpu(stop: Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<u64>> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (0..2 * cores)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut spins = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    spins = std::hint::black_box(spins.wrapping_add(1));
                }
                spins
            })
        })
        .collect()
}

#[test]
fn a_minute_of_saturated_cpu_declares_no_live_speaker_down_and_moves_no_vip() {
    let lab = L2Lab::up();
    let owner = lab.owner();
    let declared_down = || NODES.map(|node| metric(&lab.metrics(node), DECLARED_DOWN));
    let before = declared_down();

    let stop = Arc::new(AtomicBool::new(false));
    let hogs = saturate_cpu(stop.clone());
    let (started, mut answers, mut moved) = (Instant::now(), 0, Vec::new());
    while started.elapsed() < Duration::from_secs(60) {
        match lab.curl(VIP4) {
            Some(node) if node == owner => answers += 1,
            other => moved.push(other),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, Ordering::Relaxed);
    let spins: u64 = hogs.into_iter().map(|h| h.join().unwrap()).sum();
    assert!(spins > 0);

    let after = declared_down();
    assert_eq!(after, before, "live speakers were declared down under load (before, after per node)\n{}", lab.logs());
    assert!(moved.is_empty(), "the VIP did not stay with {owner}: {moved:?} ({answers} answers from it)");
    lab.assert_single_owner(&owner);
}
