//! Finds and removes what a killed run left behind. Test namespaces are named `flb<owner pid>-<n>-...`; once
//! the owner process is gone, its namespaces (and every process inside them) are removed. Processes outside
//! namespaces need no sweep: they were started with a parent-death signal (see [`crate::process`]).

use crate::netns;

/// Prefix of every network namespace the tests create.
pub const TEST_PREFIX: &str = "flb";

/// Prefix of the temporary directories of control planes started by this process (`ferrolb-cp-<pid>-...`).
/// The shared control plane lives in a static, which is never dropped, so its directory is swept instead.
pub fn control_plane_dir_prefix() -> String {
    format!("{CONTROL_PLANE_DIR_PREFIX}{}-", std::process::id())
}

const CONTROL_PLANE_DIR_PREFIX: &str = "ferrolb-cp-";

/// Removes namespaces and control-plane directories left by test processes that no longer run. Returns the
/// names removed.
pub fn sweep_leftovers() -> Vec<String> {
    let mut removed = Vec::new();
    // Real nodes first: their processes (in the node's cgroups) hold mounts under the control plane's dir.
    for cgroup in crate::node_runtime::node_cgroups() {
        if let Some(owner) = owner_pid(&cgroup)
            && !process_alive(owner)
        {
            crate::node_runtime::remove_node_leftovers(&cgroup, None);
            removed.push(format!("cgroup {cgroup}"));
        }
    }
    removed.extend(sweep_control_plane_dirs());
    for name in netns::list() {
        if let Some(owner) = owner_pid(&name)
            && !process_alive(owner)
        {
            netns::delete(&name);
            removed.push(name);
        }
    }
    if !removed.is_empty() {
        removed.extend(crate::node_runtime::sweep_shared_host_paths());
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

fn sweep_control_plane_dirs() -> Vec<String> {
    let temp = std::env::temp_dir();
    let Ok(entries) = std::fs::read_dir(&temp) else { return Vec::new() };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(CONTROL_PLANE_DIR_PREFIX) else { continue };
        let Some(Ok(owner)) = rest.split('-').next().map(str::parse::<u32>) else { continue };
        if process_alive(owner) {
            continue;
        }
        // A real node's kubelet and containerd mount secrets and root filesystems under it.
        crate::node_runtime::unmount_under(&entry.path());
        if std::fs::remove_dir_all(entry.path()).is_ok() {
            removed.push(name);
        }
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

/// Whether `pid` is a running process (a zombie has finished: it only waits to be reaped).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself contain ") ".
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
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
