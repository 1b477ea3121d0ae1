//! Locks shared between the speaker's tasks. A poisoned lock means a task panicked while holding it: that is
//! a bug to surface (an error in the log, every time), not a reason to read its data as empty, which would
//! make the speaker drop every VIP or see no Service. The data is used as the panicking task left it; every
//! writer here replaces or inserts whole values, so it is never half-written.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub fn read<'a, T>(lock: &'a RwLock<T>, what: &'static str) -> RwLockReadGuard<'a, T> {
    lock.read().unwrap_or_else(|poisoned| {
        tracing::error!(lock = what, "a task panicked while holding this lock (a bug): using its data as left");
        poisoned.into_inner()
    })
}

pub fn write<'a, T>(lock: &'a RwLock<T>, what: &'static str) -> RwLockWriteGuard<'a, T> {
    lock.write().unwrap_or_else(|poisoned| {
        tracing::error!(lock = what, "a task panicked while holding this lock (a bug): using its data as left");
        poisoned.into_inner()
    })
}

pub fn lock<'a, T>(lock: &'a Mutex<T>, what: &'static str) -> MutexGuard<'a, T> {
    lock.lock().unwrap_or_else(|poisoned| {
        tracing::error!(lock = what, "a task panicked while holding this lock (a bug): using its data as left");
        poisoned.into_inner()
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_poisoned_lock_keeps_its_data() {
        let shared = std::sync::Arc::new(RwLock::new(vec![1, 2, 3]));
        let poisoner = shared.clone();
        let _ = std::thread::spawn(move || {
            let _guard = poisoner.write().unwrap();
            panic!("poisoning the lock on purpose");
        })
        .join();
        assert!(shared.is_poisoned());
        assert_eq!(*read(&shared, "test"), [1, 2, 3], "not an empty world");
        write(&shared, "test").push(4);
        assert_eq!(read(&shared, "test").len(), 4);
    }
}
