//! Finds and removes what a killed run left behind. Test namespaces are named `flb<owner pid>-<n>-...`; once
//! the owner process is gone, its namespaces (and every process inside them) are removed. Processes outside
//! namespaces need no sweep: they were started with a parent-death signal (see [`crate::process`]).

use crate::netns;

/// Prefix of every network namespace the tests create.
pub const TEST_PREFIX: &str = "flb";

/// Removes namespaces left by test processes that no longer run. Returns the names removed.
pub fn sweep_leftovers() -> Vec<String> {
    let mut removed = Vec::new();
    for name in netns::list() {
        if let Some(owner) = owner_pid(&name)
            && !process_alive(owner)
        {
            netns::delete(&name);
            removed.push(name);
        }
    }
    removed
}

/// Removes every namespace whose name starts with `prefix` (the lab's), whoever made it.
pub fn remove_with_prefix(prefix: &str) -> Vec<String> {
    let mut removed = Vec::new();
    for name in netns::list().into_iter().filter(|n| n.starts_with(prefix)) {
        netns::delete(&name);
        removed.push(name);
    }
    removed
}

/// `flb1234-5-node-1` → 1234.
fn owner_pid(netns_name: &str) -> Option<u32> {
    let rest = netns_name.strip_prefix(TEST_PREFIX)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    if digits.is_empty() || !rest[digits.len()..].starts_with('-') {
        return None;
    }
    digits.parse().ok()
}

fn process_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_is_read_from_test_namespace_names_only() {
        assert_eq!(owner_pid("flb1234-5-node-1"), Some(1234));
        assert_eq!(owner_pid("flb77-0-sw"), Some(77));
        assert_eq!(owner_pid("ferrolb-lab-node-1"), None);
        assert_eq!(owner_pid("flbx-1"), None);
        assert_eq!(owner_pid("flb12"), None);
        assert_eq!(owner_pid("other"), None);
    }
}
