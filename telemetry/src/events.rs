//! Events (`events.k8s.io/v1`), created directly rather than through kube's `Recorder`.
//!
//! The `Recorder` keeps every Event it published for six minutes, to count repeats into a series: with
//! thousands of Services that is tens of megabytes (a whole Event each, 2 kB and more). Its series are keyed
//! without the note, so a repeat with a new note would only bump the count of the first. ferrolb's
//! components publish an Event only when what they report changed, so there is nothing to count: each is
//! created as it is, and nothing is kept.

use std::sync::atomic::{AtomicU32, Ordering};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};

/// The API server refuses a note longer than 1 kB.
pub const MAX_NOTE_BYTES: usize = 1024;

/// Who reports the Events: the component (`reportingController`) and which of its replicas or nodes
/// (`reportingInstance`).
#[derive(Clone)]
pub struct EventSource {
    pub client: kube::Client,
    pub controller: &'static str,
    pub instance: String,
}

/// One Event about one object.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub regarding: ObjectReference,
    pub warning: bool,
    pub reason: &'static str,
    /// What the component did (`action`), in CamelCase.
    pub action: &'static str,
    pub note: String,
}

impl Notice {
    /// `namespace/name` of the object (`name` when it is cluster-scoped), as logs name it.
    pub fn object(&self) -> String {
        let name = self.regarding.name.as_deref().unwrap_or_default();
        match self.regarding.namespace.as_deref() {
            Some(namespace) => format!("{namespace}/{name}"),
            None => name.to_string(),
        }
    }
}

impl EventSource {
    /// Creates the Event in the namespace of the object it is about.
    pub async fn publish(&self, notice: Notice) -> Result<(), kube::Error> {
        let event = self.event(notice, Timestamp::now());
        let namespace = event.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        Api::<Event>::namespaced(self.client.clone(), &namespace).create(&PostParams::default(), &event).await?;
        Ok(())
    }

    fn event(&self, notice: Notice, now: Timestamp) -> Event {
        event(self.controller, &self.instance, notice, now)
    }
}

/// Names are unique within the process (a counter) and across processes in practice (the clock in ns);
/// Kubernetes names Events the same way: the object's name, a dot, a unique suffix.
static SEQUENCE: AtomicU32 = AtomicU32::new(0);

fn event(controller: &str, instance: &str, notice: Notice, now: Timestamp) -> Event {
    let name = notice.regarding.name.as_deref().unwrap_or(controller);
    let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed) & 0xffff;
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{name}.{:x}{sequence:04x}", now.as_nanosecond())),
            namespace: Some(notice.regarding.namespace.clone().unwrap_or_else(|| "default".into())),
            ..Default::default()
        },
        event_time: Some(MicroTime(now)),
        type_: Some(if notice.warning { "Warning" } else { "Normal" }.into()),
        reason: Some(notice.reason.into()),
        note: Some(truncate(&notice.note, MAX_NOTE_BYTES)),
        action: Some(notice.action.into()),
        regarding: Some(notice.regarding),
        reporting_controller: Some(controller.into()),
        reporting_instance: Some(instance.into()),
        ..Default::default()
    }
}

/// At most `max` bytes, cut at a character boundary and marked with an ellipsis when cut.
pub fn truncate(text: &str, max: usize) -> String {
    const ELLIPSIS: &str = "…";
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub(ELLIPSIS.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ELLIPSIS}", &text[..end])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use proptest::prelude::*;

    use super::*;

    fn notice(note: &str) -> Notice {
        Notice {
            regarding: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Service".into()),
                namespace: Some("shop".into()),
                name: Some("web".into()),
                uid: Some("u-1".into()),
                ..Default::default()
            },
            warning: true,
            reason: "IPConflict",
            action: "Announce",
            note: note.into(),
        }
    }

    #[test]
    fn an_event_is_about_its_object_in_its_namespace_and_says_who_reported_it() {
        let now: Timestamp = "2026-12-01T10:00:00Z".parse().unwrap();
        let event = event("ferrolb.io/speaker", "node-1", notice("claimed by 02:00:00:00:00:01"), now);
        assert_eq!(event.metadata.namespace.as_deref(), Some("shop"));
        assert!(event.metadata.name.as_deref().unwrap().starts_with("web."), "{:?}", event.metadata.name);
        assert_eq!(event.type_.as_deref(), Some("Warning"));
        assert_eq!(event.reason.as_deref(), Some("IPConflict"));
        assert_eq!(event.action.as_deref(), Some("Announce"));
        assert_eq!(event.note.as_deref(), Some("claimed by 02:00:00:00:00:01"));
        assert_eq!(event.reporting_controller.as_deref(), Some("ferrolb.io/speaker"));
        assert_eq!(event.reporting_instance.as_deref(), Some("node-1"));
        assert_eq!(event.event_time, Some(MicroTime(now)));
        assert_eq!(event.regarding.and_then(|r| r.uid).as_deref(), Some("u-1"));
    }

    #[test]
    fn two_events_at_the_same_instant_have_different_names() {
        let now = Timestamp::now();
        let first = event("c", "i", notice("a"), now).metadata.name;
        let second = event("c", "i", notice("a"), now).metadata.name;
        assert_ne!(first, second);
    }

    #[test]
    fn a_long_note_is_cut_under_the_api_limit() {
        let note = "é".repeat(1000);
        let cut = event("c", "i", notice(&note), Timestamp::now()).note.unwrap();
        assert!(cut.len() <= MAX_NOTE_BYTES, "{} bytes", cut.len());
        assert!(cut.ends_with('…'));
        assert_eq!(truncate("short", MAX_NOTE_BYTES), "short");
    }

    proptest! {
        #[test]
        fn truncation_never_exceeds_the_limit_and_keeps_a_prefix(text in ".{0,600}", max in 3usize..700) {
            let cut = truncate(&text, max);
            prop_assert!(cut.len() <= max);
            let kept = cut.strip_suffix('…').unwrap_or(&cut);
            prop_assert!(text.starts_with(kept));
        }
    }
}
