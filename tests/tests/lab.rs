//! `ferrolb-lab`, the program behind `cargo xtask lab`: it brings a whole lab up, describes it in lab.json,
//! restarts what dies, and `down` leaves nothing behind.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed step should stop the test, loudly

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use ferrolb_e2e::{netns, sweep};

const LAB_BIN: &str = env!("CARGO_BIN_EXE_ferrolb-lab");

struct LabRun {
    state_dir: tempfile::TempDir,
    prefix: String,
    supervisor: Child,
}

impl LabRun {
    /// The light lab: our binaries as processes beside fake Nodes.
    fn up(bin_dir: &Path, nodes: usize) -> Self {
        Self::up_with(bin_dir, nodes, true)
    }

    fn up_with(bin_dir: &Path, nodes: usize, processes: bool) -> Self {
        // Named so that a sweep after a crash of this test finds it (and unmounts what a kubelet mounted).
        let state_dir = tempfile::Builder::new().prefix(&sweep::control_plane_dir_prefix()).tempdir().unwrap();
        // A test-owned prefix, so a crashed run is swept and a developer's own lab is never touched.
        let prefix = ferrolb_e2e::names::unique_lab_prefix();
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let supervisor = ferrolb_e2e::process::spawn_tied_to_this_process({
            let mut command = Command::new(LAB_BIN);
            command
                .args(["--state-dir", &state_dir.path().to_string_lossy(), "--prefix", &prefix])
                .args(["--controller-metrics-address", "127.0.0.1:0"])
                .args(processes.then_some("--processes"))
                .arg("up")
                .args([
                    "--bin-dir",
                    &bin_dir.to_string_lossy(),
                    "--repo",
                    &repo.to_string_lossy(),
                    "--nodes",
                    &nodes.to_string(),
                ])
                .stdout(std::fs::File::create(state_dir.path().join("supervisor.log")).unwrap())
                .stderr(std::fs::File::create(state_dir.path().join("supervisor.err")).unwrap());
            command
        })
        .unwrap();
        let run = Self { state_dir, prefix, supervisor };
        run.wait_for_state(|state| state["ready"] == true);
        run
    }

    fn state(&self) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(self.state_dir.path().join("lab.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn wait_for_state(&self, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(240);
        while Instant::now() < deadline {
            if let Some(state) = self.state().filter(|s| done(s)) {
                return state;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "lab state never matched; supervisor log:\n{}",
            std::fs::read_to_string(self.state_dir.path().join("supervisor.err")).unwrap_or_default()
        );
    }

    fn down(&mut self) {
        let status = Command::new(LAB_BIN)
            .args(["--state-dir", &self.state_dir.path().to_string_lossy(), "--prefix", &self.prefix, "down"])
            .status()
            .unwrap();
        assert!(status.success());
        // `down` waited for the supervisor to finish its teardown (every thread of it gone); reap it. The kernel
        // makes the exited process waitable a moment after its last thread is released.
        let reaped = (0..50).any(|_| {
            let exited = self.supervisor.try_wait().unwrap().is_some();
            if !exited {
                std::thread::sleep(Duration::from_millis(20));
            }
            exited
        });
        assert!(reaped, "supervisor still running 1 s after `down` returned");
    }
}

impl Drop for LabRun {
    fn drop(&mut self) {
        let _ = self.supervisor.kill();
        let _ = self.supervisor.wait();
        sweep::remove_with_prefix(&self.prefix);
    }
}

#[test]
fn lab_comes_up_describes_itself_and_down_leaves_nothing_behind() {
    // No controller or speaker binaries in this directory: the lab must say so instead of failing.
    let empty_bins = tempfile::tempdir().unwrap();
    let mut run = LabRun::up(empty_bins.path(), 3);
    let state = run.state().unwrap();

    let nodes = state["nodes"].as_array().unwrap();
    assert_eq!(nodes.iter().map(|n| n["name"].as_str().unwrap()).collect::<Vec<_>>(), ["node-1", "node-2", "node-3"]);
    let existing = netns::list();
    for node in nodes {
        assert!(existing.contains(&node["netns"].as_str().unwrap().to_string()));
        assert!(node["mac"].as_str().unwrap().starts_with("02:"));
        assert!(node["speaker"].is_null());
    }
    let client_ns = state["client"]["netns"].as_str().unwrap().to_string();
    assert!(state["controller"].is_null());
    let missing: Vec<&str> = state["missing"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
    assert!(missing.iter().any(|m| m.contains("ferrolb-controller")), "{missing:?}");
    assert!(missing.iter().any(|m| m.contains("ferrolb-speaker")), "{missing:?}");

    // The kubeconfig works, and the cluster has the nodes and the demo Service.
    let kubectl = state["kubectl"].as_str().unwrap();
    let kubeconfig = state["kubeconfig"].as_str().unwrap();
    let get = |args: &[&str]| {
        let out = Command::new(kubectl).arg("--kubeconfig").arg(kubeconfig).args(args).output().unwrap();
        assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(get(&["get", "nodes", "-o", "name"]).lines().count(), 3);
    let service = get(&["get", "svc", "webapp1-loadbalancer-svc", "-o", "jsonpath={.spec.type}/{.spec.ipFamilies}"]);
    assert_eq!(service, r#"LoadBalancer/["IPv4","IPv6"]"#);
    let slices =
        get(&["get", "endpointslices", "-l", "kubernetes.io/service-name=webapp1-loadbalancer-svc", "-o", "name"]);
    assert_eq!(slices.lines().count(), 2);

    // The client reaches node-2 by its address.
    let out = netns::exec(
        &client_ns,
        "curl",
        &["-sS", "--max-time", "5", &format!("http://{}/", nodes[1]["ipv4"].as_str().unwrap())],
    )
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "node-2");

    let apiserver_pid = state["apiserver"]["pid"].as_u64().unwrap() as u32;
    let namespaces: Vec<String> = netns::list().into_iter().filter(|n| n.starts_with(&run.prefix)).collect();
    assert_eq!(namespaces.len(), 5, "switch, client and three nodes: {namespaces:?}");
    run.down();
    let after = netns::list();
    assert!(after.iter().all(|n| !n.starts_with(&run.prefix)), "namespaces left: {after:?}");
    assert!(!sweep::process_alive(apiserver_pid), "kube-apiserver still running after down");
    assert!(run.state().is_none(), "lab.json left behind");
}

#[test]
fn lab_restarts_a_component_that_exits_and_rewrites_lab_json() {
    // A stand-in controller that exits at once: the lab must restart it, as a kubelet would, with a new pid.
    let bins = tempfile::tempdir().unwrap();
    let fake = bins.path().join("ferrolb-controller");
    std::fs::write(&fake, "#!/bin/sh\nsleep 1\n").unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut run = LabRun::up(bins.path(), 1);
    let first = run.wait_for_state(|s| s["controller"]["pid"].is_u64());
    let first_pid = first["controller"]["pid"].as_u64().unwrap();
    let restarted = run.wait_for_state(|s| s["controller"]["pid"].as_u64().is_some_and(|p| p != first_pid));
    assert!(
        restarted["missing"].as_array().unwrap().iter().all(|m| !m.as_str().unwrap().contains("ferrolb-controller"))
    );
    run.down();
}

#[test]
fn the_demo_service_gets_its_external_ips_from_the_real_controller() {
    let controller = ferrolb_e2e::process::workspace_binary("ferrolb-controller").unwrap();
    let bins = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&controller, bins.path().join("ferrolb-controller")).unwrap();
    let mut run = LabRun::up(bins.path(), 1);
    let state = run.wait_for_state(|s| s["controller"]["pid"].is_u64());
    let (kubectl, kubeconfig) =
        (state["kubectl"].as_str().unwrap().to_string(), state["kubeconfig"].as_str().unwrap().to_string());
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut ips = String::new();
    while Instant::now() < deadline {
        let out = Command::new(&kubectl)
            .args([
                "--kubeconfig",
                &kubeconfig,
                "get",
                "svc",
                "webapp1-loadbalancer-svc",
                "-o",
                "jsonpath={.status.loadBalancer.ingress[*].ip}",
            ])
            .output()
            .unwrap();
        ips = String::from_utf8_lossy(&out.stdout).into_owned();
        if !ips.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        ips,
        "192.0.2.200 2001:db8::200",
        "controller log:\n{}",
        std::fs::read_to_string(run.state_dir.path().join("controller.log")).unwrap_or_default()
    );
    run.down();
}

/// The process name (`comm`, at most 15 bytes) of a pid, if it runs.
fn comm(pid: u64) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|c| c.trim().to_string())
}

#[test]
fn the_kubelet_lab_publishes_container_pids_follows_restarts_and_down_after_a_crash_leaves_nothing() {
    let bins = ferrolb_e2e::process::workspace_binary("ferrolb-controller").unwrap();
    let mut run = LabRun::up_with(bins.parent().unwrap(), 2, false);
    let state = run.wait_for_state(|s| {
        s["kubelet"] == true
            && s["controller"]["pid"].is_u64()
            && s["nodes"].as_array().is_some_and(|n| n.iter().all(|n| n["speaker"]["pid"].is_u64()))
    });
    // The pids are those of the containers' main processes, on the host.
    let controller = state["controller"]["pid"].as_u64().unwrap();
    assert_eq!(comm(controller).as_deref(), Some("ferrolb-control"), "controller pid {controller}");
    let speaker = state["nodes"][0]["speaker"]["pid"].as_u64().unwrap();
    assert_eq!(comm(speaker).as_deref(), Some("ferrolb-speaker"), "speaker pid {speaker}");
    assert!(state["missing"].as_array().unwrap().is_empty());

    // A crashed container is restarted by the kubelet; lab.json follows.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(speaker as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let restarted = run.wait_for_state(|s| s["nodes"][0]["speaker"]["pid"].as_u64().is_some_and(|p| p != speaker));
    let new_speaker = restarted["nodes"][0]["speaker"]["pid"].as_u64().unwrap();
    assert_eq!(comm(new_speaker).as_deref(), Some("ferrolb-speaker"));

    // The supervisor dies without cleaning up; `down` removes what it left: containers (in their own pod
    // namespaces), the runtimes, mounts, cgroups, namespaces.
    run.supervisor.kill().unwrap();
    run.supervisor.wait().unwrap();
    let status = Command::new(LAB_BIN)
        .args(["--state-dir", &run.state_dir.path().to_string_lossy(), "--prefix", &run.prefix, "down"])
        .status()
        .unwrap();
    assert!(status.success());
    for pid in [controller, new_speaker] {
        assert!(!sweep::process_alive(pid as u32), "container process {pid} still runs after down");
    }
    assert!(netns::list().iter().all(|n| !n.starts_with(&run.prefix)), "namespaces left");
    let cgroups = ferrolb_e2e::node_runtime::node_cgroups();
    assert!(cgroups.iter().all(|c| !c.starts_with(&run.prefix)), "cgroups left: {cgroups:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let state_dir = run.state_dir.path().to_string_lossy().into_owned();
    assert!(!mounts.contains(&state_dir), "mounts left under {state_dir}");
}
