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

/// Whether `pid` is a running process. A zombie has finished (it only waits to be reaped), but only once all
/// its threads have: the leader of a multi-threaded process shows `Z` while its other threads are still
/// exiting, and until they are, its parent cannot reap it.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself contain ") ".
        Ok(stat) => {
            let zombie = stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z'));
            !zombie || other_threads_remain(pid)
        }
        Err(_) => false,
    }
}

fn other_threads_remain(pid: u32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|tasks| tasks.flatten().count() > 1)
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

    #[test]
    fn a_zombie_leader_whose_threads_still_run_is_alive() {
        use std::io::Write;
        // The main thread ends (pthread_exit) while another thread waits for stdin to close.
        let program = "import ctypes, sys, threading\n\
                       threading.Thread(target=sys.stdin.read).start()\n\
                       ctypes.CDLL(None).pthread_exit(None)\n";
        let mut child = std::process::Command::new("/usr/bin/python3")
            .args(["-c", program])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let zombie_leader = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')))
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !zombie_leader() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(zombie_leader(), "the leader never exited");
        assert!(process_alive(pid), "a thread of it still runs");
        assert!(child.try_wait().unwrap().is_none(), "and its parent cannot reap it yet");

        let _ = child.stdin.take().unwrap().write_all(b"done");
        child.wait().unwrap();
        assert!(!process_alive(pid));
    }
}
