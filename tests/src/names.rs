//! Unique names: tests run in parallel against one API server and one machine, so every object and namespace
//! they create is named after the test process and a counter.

use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// `<base>-<pid>-<n>`: a valid Kubernetes name (DNS label) when `base` is one, unique on this machine.
pub fn unique(base: &str) -> String {
    format!("{base}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// A short unique tag for network namespace names, which end up in interface-name-length places.
pub fn unique_lab_prefix() -> String {
    format!("{}{}-{}", crate::sweep::TEST_PREFIX, std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}
