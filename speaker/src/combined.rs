//! Two modes from one speaker (native L2 and BGP, as MetalLB allows): each backend serves the pools its own
//! advertisements select (an L2Advertisement, a BGPAdvertisement, or both for the same pool), with its own
//! event sources, steps and drain. The driver sees one [`driver::Backend`].

use std::time::Duration;

use crate::cluster::Cluster;
use crate::driver::{self, Backend, Next};
use crate::inventory::Inventory;

/// `first` and `second` side by side; `first` steps first (native L2's takeovers are the time-critical ones).
pub struct Combined<A, B> {
    first: A,
    second: B,
    mode: &'static str,
    /// Which of them asked for a drain at SIGTERM (the other stops when the drain ends).
    draining: (bool, bool),
}

pub enum Either<A, B> {
    First(A),
    Second(B),
}

impl<A: Backend, B: Backend> Combined<A, B> {
    /// `mode`: what the SpeakerStatus says (the chart's `speaker.mode`, e.g. `native+bgp`).
    pub fn new(first: A, second: B, mode: &'static str) -> Self {
        Self { first, second, mode, draining: (false, false) }
    }
}

/// The longest of two drains; none when neither needs one.
fn longest(first: Option<Duration>, second: Option<Duration>) -> Option<Duration> {
    match (first, second) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

impl<A: Backend, B: Backend> Backend for Combined<A, B> {
    type Event = Either<A::Event, B::Event>;

    async fn next_event(&mut self) -> anyhow::Result<Self::Event> {
        // Both only wait (the trait's rule), so dropping the one that did not finish loses nothing.
        tokio::select! {
            event = self.first.next_event() => Ok(Either::First(event?)),
            event = self.second.next_event() => Ok(Either::Second(event?)),
        }
    }

    async fn handle(&mut self, event: Self::Event, shared: &mut driver::Shared<'_>) -> anyhow::Result<Next> {
        match event {
            Either::First(event) => self.first.handle(event, shared).await,
            Either::Second(event) => self.second.handle(event, shared).await,
        }
    }

    fn api_changed(&mut self, cluster: &Cluster) {
        self.first.api_changed(cluster);
        self.second.api_changed(cluster);
    }

    fn interfaces_changed(&mut self, before: &Inventory, shared: &mut driver::Shared<'_>) {
        self.first.interfaces_changed(before, shared);
        self.second.interfaces_changed(before, shared);
    }

    async fn step(&mut self, shared: &mut driver::Shared<'_>) -> anyhow::Result<()> {
        self.first.step(shared).await?;
        self.second.step(shared).await
    }

    fn begin_drain(&mut self) -> Option<Duration> {
        let (first, second) = (self.first.begin_drain(), self.second.begin_drain());
        self.draining = (first.is_some(), second.is_some());
        longest(first, second)
    }

    fn drained(&self) -> bool {
        (!self.draining.0 || self.first.drained()) && (!self.draining.1 || self.second.drained())
    }

    async fn stop(self, shared: &mut driver::Shared<'_>) {
        self.first.stop(shared).await;
        self.second.stop(shared).await;
    }

    fn mode(&self) -> &'static str {
        self.mode
    }

    fn alive(&self) -> Vec<String> {
        let mut alive = self.first.alive();
        alive.extend(self.second.alive());
        alive.sort();
        alive.dedup();
        alive
    }

    fn bgp_peers(&self) -> Vec<ferrolb_crds::BgpPeerStatus> {
        let mut peers = self.first.bgp_peers();
        peers.extend(self.second.bgp_peers());
        peers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend that only drains: whether it asks for a drain, and whether it has finished one.
    struct Draining {
        asks: Option<Duration>,
        done: bool,
    }

    impl Backend for Draining {
        type Event = ();
        async fn next_event(&mut self) -> anyhow::Result<()> {
            std::future::pending().await
        }
        async fn handle(&mut self, _: (), _: &mut driver::Shared<'_>) -> anyhow::Result<Next> {
            Ok(Next::Wait)
        }
        async fn step(&mut self, _: &mut driver::Shared<'_>) -> anyhow::Result<()> {
            Ok(())
        }
        fn begin_drain(&mut self) -> Option<Duration> {
            self.asks
        }
        fn drained(&self) -> bool {
            self.done
        }
        async fn stop(self, _: &mut driver::Shared<'_>) {}
        fn mode(&self) -> &'static str {
            "test"
        }
    }

    #[test]
    fn a_drain_ends_when_every_backend_that_asked_for_one_is_done() {
        let s = Duration::from_secs;
        let backend = |asks, done| Draining { asks, done };
        let mut both = Combined::new(backend(Some(s(3)), false), backend(None, false), "test");
        assert_eq!(both.begin_drain(), Some(s(3)));
        assert!(!both.drained(), "the first is still handing over");
        both.first.done = true;
        assert!(both.drained(), "the second asked for no drain: its not being done does not hold the stop");

        let mut both = Combined::new(backend(Some(s(3)), true), backend(Some(s(7)), false), "test");
        assert_eq!(both.begin_drain(), Some(s(7)));
        assert!(!both.drained(), "the second is still withdrawing");
        both.second.done = true;
        assert!(both.drained());

        let mut neither = Combined::new(backend(None, false), backend(None, false), "test");
        assert_eq!(neither.begin_drain(), None, "stop at once");
    }

    #[test]
    fn the_drain_lasts_as_long_as_the_longer_one_and_none_when_neither_asks() {
        let s = Duration::from_secs;
        assert_eq!(longest(None, None), None);
        assert_eq!(longest(Some(s(3)), None), Some(s(3)));
        assert_eq!(longest(None, Some(s(7))), Some(s(7)));
        assert_eq!(longest(Some(s(3)), Some(s(7))), Some(s(7)));
        assert_eq!(longest(Some(s(9)), Some(s(7))), Some(s(9)));
    }
}
