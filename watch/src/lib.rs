//! An index fed by a watch. kube-runtime's watcher delivers `Init`, `InitApply`…, `InitDone` on every
//! (re)list and `Apply` / `Delete` in between; an object deleted while the watch was down shows up only as
//! its absence from the next list. [`Feed`] keeps that bookkeeping once: it applies every object, and at the
//! end of a list tells the index to forget every key the list did not name. An index says what an object's
//! key is and what applying, deleting and forgetting do ([`WatchIndex`]); its outputs (say, the writes a
//! change causes) come back from [`Feed::feed`].
//!
//! Pure: no I/O, no clock.

use std::collections::HashSet;
use std::hash::Hash;

use kube::runtime::watcher::Event;

/// Something kept up to date from the objects of one watch.
pub trait WatchIndex<O> {
    type Key: Eq + Hash;
    /// What a change produces (`Default`: nothing, for the events that change nothing).
    type Output: Default;

    fn key(object: &O) -> Self::Key;
    /// The object was created or changed (or listed).
    fn apply(&mut self, object: O) -> Self::Output;
    /// The object was deleted.
    fn delete(&mut self, object: O) -> Self::Output;
    /// A list has ended: forget every object whose key is not in `listed`.
    fn retain(&mut self, listed: &HashSet<Self::Key>) -> Self::Output;
}

/// The relist bookkeeping of one watch.
#[derive(Debug)]
pub struct Feed<K> {
    /// The keys seen since the current list began.
    relisting: Option<HashSet<K>>,
    listed: bool,
}

impl<K> Default for Feed<K> {
    fn default() -> Self {
        Self { relisting: None, listed: false }
    }
}

impl<K: Eq + Hash> Feed<K> {
    /// Applies one watch event to `index`.
    pub fn feed<O, I: WatchIndex<O, Key = K>>(&mut self, index: &mut I, event: Event<O>) -> I::Output {
        match event {
            Event::Init => {
                self.relisting = Some(HashSet::new());
                I::Output::default()
            }
            Event::InitApply(object) | Event::Apply(object) => {
                if let Some(seen) = self.relisting.as_mut() {
                    seen.insert(I::key(&object));
                }
                index.apply(object)
            }
            Event::Delete(object) => index.delete(object),
            Event::InitDone => {
                self.listed = true;
                let listed = self.relisting.take().unwrap_or_default();
                index.retain(&listed)
            }
        }
    }

    /// The first list has ended: the index holds every object.
    pub fn listed(&self) -> bool {
        self.listed
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Objects are `(name, value)`; outputs record what happened.
    #[derive(Default)]
    struct Names(BTreeMap<&'static str, u32>);

    impl WatchIndex<(&'static str, u32)> for Names {
        type Key = &'static str;
        type Output = Vec<String>;

        fn key(object: &(&'static str, u32)) -> &'static str {
            object.0
        }

        fn apply(&mut self, (name, value): (&'static str, u32)) -> Vec<String> {
            self.0.insert(name, value);
            vec![format!("apply {name}")]
        }

        fn delete(&mut self, (name, _): (&'static str, u32)) -> Vec<String> {
            self.0.remove(name);
            vec![format!("delete {name}")]
        }

        fn retain(&mut self, listed: &HashSet<&'static str>) -> Vec<String> {
            let gone: Vec<String> =
                self.0.keys().filter(|k| !listed.contains(*k)).map(|k| format!("forget {k}")).collect();
            self.0.retain(|k, _| listed.contains(k));
            gone
        }
    }

    #[test]
    fn a_relist_forgets_what_it_no_longer_lists_and_keeps_the_rest() {
        let (mut feed, mut index) = (Feed::default(), Names::default());
        for event in [Event::Init, Event::InitApply(("a", 1)), Event::InitApply(("b", 1))] {
            feed.feed(&mut index, event);
        }
        assert!(!feed.listed(), "not listed before InitDone");
        assert!(feed.feed(&mut index, Event::InitDone).is_empty());
        assert!(feed.listed());
        feed.feed(&mut index, Event::Apply(("c", 1)));
        assert_eq!(feed.feed(&mut index, Event::Delete(("c", 1))), ["delete c"]);
        // The watch was down while "a" was deleted; the relist only lists "b" (changed).
        for event in [Event::Init, Event::InitApply(("b", 2))] {
            feed.feed(&mut index, event);
        }
        assert_eq!(index.0.get("a"), Some(&1), "nothing is forgotten before the list ends");
        assert_eq!(feed.feed(&mut index, Event::InitDone), ["forget a"]);
        assert_eq!(index.0, BTreeMap::from([("b", 2)]));
    }

    #[test]
    fn an_apply_between_lists_is_never_forgotten_by_the_next_list_end() {
        let (mut feed, mut index) = (Feed::default(), Names::default());
        feed.feed(&mut index, Event::Init);
        feed.feed(&mut index, Event::InitDone);
        feed.feed(&mut index, Event::Apply(("x", 1)));
        // A relist that lists it keeps it.
        feed.feed(&mut index, Event::Init);
        feed.feed(&mut index, Event::InitApply(("x", 1)));
        assert!(feed.feed(&mut index, Event::InitDone).is_empty());
        assert_eq!(index.0.len(), 1);
    }
}
