//! `cargo xtask lab`: builds our binaries, starts `ferrolb-lab up` in the background (it supervises the
//! control plane, the node namespaces and our components), then shows the demo Service and curls its VIP
//! from the client namespace. `cargo xtask lab down` removes everything the lab made.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{deps, image, run};

/// Real nodes take longer: kubelets register, the chart's pods start, the demo pods become ready.
const LAB_UP_TIMEOUT: Duration = Duration::from_secs(420);
/// How long to wait for the controller to write an EXTERNAL-IP, and for the VIP to answer.
const EXTERNAL_IP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(clap::Args)]
pub struct LabArgs {
    /// `down` stops the lab and removes every namespace, link and process it made.
    #[arg(value_parser = ["up", "down"], default_value = "up")]
    action: String,
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// native: the speakers answer ARP/NDP; keepalived: they drive keepalived (VRRP); bgp: they drive an FRR
    /// per node (the chart's FRR container), announcing to a router (BIRD) the client sits behind; native+bgp:
    /// both, the L2 demo pool beside the BGP pool.
    #[arg(long, value_parser = ["native", "keepalived", "bgp", "native+bgp"], default_value = "native")]
    mode: String,
    /// Run ferrolb's binaries as processes beside fake Nodes (the light lab: no kubelet, no images) instead of
    /// real kubelets running the chart.
    #[arg(long)]
    processes: bool,
}

fn state_dir() -> PathBuf {
    run::workspace_root().join("target").join("lab")
}

fn lab_binary() -> PathBuf {
    run::workspace_bin_dir().join("ferrolb-lab")
}

pub fn run(args: LabArgs) -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("the lab creates network namespaces: run it as root");
    }
    if args.action == "down" {
        return down();
    }
    let processes = args.processes;
    deps::install_all()?;
    run::step("cargo build --workspace --bins", run::cargo(&["build", "--workspace", "--bins"]))?;
    if !processes {
        // The pods run ferrolb's images: built from this tree, imported into every node.
        image::run(None)?;
    }
    if state_dir().join("supervisor.pid").exists() {
        eprintln!("==> a lab is already running here: taking it down first");
        down()?;
    }
    let state = start_supervisor(args.nodes, &args.mode, processes)?;
    show_demo(&state)
}

fn down() -> Result<()> {
    if !lab_binary().is_file() {
        run::step("cargo build -p ferrolb-e2e --bins", run::cargo(&["build", "-p", "ferrolb-e2e", "--bins"]))?;
    }
    let mut command = Command::new(lab_binary());
    command.arg("--state-dir").arg(state_dir()).arg("down");
    run::step("ferrolb-lab down", command)?;
    eprintln!("lab removed: no namespace, link or process of it is left");
    Ok(())
}

fn start_supervisor(nodes: usize, mode: &str, processes: bool) -> Result<Value> {
    let dir = state_dir();
    std::fs::create_dir_all(&dir)?;
    let _ = std::fs::remove_file(dir.join("lab.json"));
    let log_path = dir.join("supervisor.log");
    let log = File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let kind = if processes { "node namespaces" } else { "nodes with containerd, kubelet and kube-proxy" };
    eprintln!("==> starting the lab (control plane, {nodes} {kind}, client); log: {}", log_path.display());
    let mut supervisor = Command::new(lab_binary())
        .arg("--state-dir")
        .arg(&dir)
        .args((mode == "keepalived").then_some("--keepalived"))
        .args(mode.ends_with("bgp").then_some("--bgp"))
        .args((mode == "native+bgp").then_some("--with-native"))
        .args(processes.then_some("--processes"))
        .arg("up")
        .arg("--bin-dir")
        .arg(run::workspace_bin_dir())
        .arg("--repo")
        .arg(run::workspace_root())
        .arg("--nodes")
        .arg(nodes.to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: the lab outlives this command and a Ctrl-C in this terminal.
        .process_group(0)
        .spawn()
        .context("starting ferrolb-lab")?;
    let started = Instant::now();
    while started.elapsed() < LAB_UP_TIMEOUT {
        if let Some(status) = supervisor.try_wait()? {
            bail!("the lab failed to come up ({status}):\n{}", tail(&log_path, 30));
        }
        if let Some(state) = read_state(&dir.join("lab.json")).filter(|s| s["ready"] == true) {
            eprintln!("    lab up in {:.1?}", started.elapsed());
            return Ok(state);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("the lab did not come up within {} s:\n{}", LAB_UP_TIMEOUT.as_secs(), tail(&log_path, 30))
}

fn show_demo(state: &Value) -> Result<()> {
    let kubectl = state["kubectl"].as_str().context("lab.json has no kubectl")?;
    let kubeconfig = state["kubeconfig"].as_str().context("lab.json has no kubeconfig")?;
    let namespace = state["service"]["namespace"].as_str().unwrap_or("default");
    let service = state["service"]["name"].as_str().unwrap_or_default();
    let client_ns = state["client"]["netns"].as_str().unwrap_or_default();
    // BGP mode: the router the client is behind.
    let router = state["router"]["netns"].as_str();
    let kubectl_cmd = |args: &[&str]| -> Result<String> {
        let output = Command::new(kubectl).arg("--kubeconfig").arg(kubeconfig).args(args).output()?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    };

    let has_controller = !state["controller"].is_null();
    let mut external_ips = Vec::new();
    if has_controller {
        let started = Instant::now();
        while started.elapsed() < EXTERNAL_IP_TIMEOUT && external_ips.is_empty() {
            let ips = kubectl_cmd(&[
                "get",
                "svc",
                "-n",
                namespace,
                service,
                "-o",
                "jsonpath={.status.loadBalancer.ingress[*].ip}",
            ])?;
            external_ips = ips.split_whitespace().map(str::to_string).collect();
            if external_ips.is_empty() {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    if state["kubelet"] == true {
        println!("\n$ kubectl get pods -A -o wide");
        print!("{}", kubectl_cmd(&["get", "pods", "-A", "-o", "wide"])?);
    }
    println!("\n$ kubectl get svc -o wide");
    print!("{}", kubectl_cmd(&["get", "svc", "-n", namespace, "-o", "wide"])?);

    let missing: Vec<&str> =
        state["missing"].as_array().map(|m| m.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    if !missing.is_empty() {
        println!("\nNot part of this lab yet:");
        for part in &missing {
            println!("  - {part}");
        }
    }
    if has_controller && external_ips.is_empty() {
        println!(
            "\nThe controller is running but wrote no EXTERNAL-IP within {} s: see {}/controller.log",
            EXTERNAL_IP_TIMEOUT.as_secs(),
            state_dir().display()
        );
    }
    let has_speakers = state["nodes"].as_array().is_some_and(|nodes| nodes.iter().any(|n| !n["speaker"].is_null()));
    if !external_ips.is_empty() && !has_speakers {
        println!(
            "\nNo speaker runs, so nothing answers ARP/NDP for {}: curl from the client would not get through.",
            external_ips.join(", ")
        );
    }
    for ip in external_ips.iter().filter(|_| has_speakers) {
        let url = if ip.contains(':') { format!("http://[{ip}]/") } else { format!("http://{ip}/") };
        println!("\n$ ip netns exec {client_ns} curl {url}");
        let answer = curl_until_answer(client_ns, &url);
        match answer {
            Some(answer) if state["kubelet"] == true => println!("{answer}    <- answered by a demo pod"),
            Some(node) if router.is_some() => println!("{node}    <- answered by a node the router chose for {ip}"),
            Some(node) => println!("{node}    <- answered by the node that holds {ip}"),
            None => println!("(no answer within {} s: nothing announces {ip} yet)", EXTERNAL_IP_TIMEOUT.as_secs()),
        }
    }

    if let Some(router) = router {
        for ip in &external_ips {
            let family = if ip.contains(':') { "-6" } else { "-4" };
            println!("\n$ ip -n {router} {family} route show {ip}    # one next hop per announcing node");
            let output = Command::new("ip").args(["-n", router, family, "route", "show", ip]).output()?;
            print!("{}", String::from_utf8_lossy(&output.stdout));
        }
        println!("\n$ kubectl get speakerstatuses -n ferrolb-system -o wide    # sessions per node");
        // Each speaker writes its status once what it sees has settled (a few seconds after start-up).
        let started = Instant::now();
        let mut statuses = String::new();
        while started.elapsed() < EXTERNAL_IP_TIMEOUT && !statuses.contains("Established") {
            std::thread::sleep(Duration::from_millis(500));
            statuses = kubectl_cmd(&["get", "speakerstatuses", "-n", "ferrolb-system", "-o", "wide"])?;
        }
        print!("{statuses}");
    } else if has_speakers && !external_ips.is_empty() {
        println!("\n$ kubectl get l2announcements -n ferrolb-system");
        print!("{}", kubectl_cmd(&["get", "l2announcements", "-n", "ferrolb-system"])?);
    }

    println!("\nThe lab keeps running. Use it with:");
    println!("  export KUBECONFIG={kubeconfig}");
    println!("  alias kubectl={kubectl}");
    println!("  kubectl get svc,nodes -o wide");
    println!("  kubectl get l2announcements -n ferrolb-system    # which node holds each VIP");
    println!("  ip netns exec {client_ns} curl http://<EXTERNAL-IP>/");
    println!("State (pids, namespaces, addresses): {}", state_dir().join("lab.json").display());
    if state["kubelet"] == true {
        println!("  kubectl logs -n ferrolb-system ds/ferrolb-speaker    # or deploy/ferrolb-controller");
        println!("Node daemons' logs (containerd, kubelet, kube-proxy): {}/nodes/<node>/*.log", state_dir().display());
        println!("Control plane logs: {}/control-plane/*.log", state_dir().display());
    } else {
        println!("Logs: {}/*.log", state_dir().display());
    }
    println!("Tear it down: cargo xtask lab down");
    Ok(())
}

fn curl_until_answer(netns: &str, url: &str) -> Option<String> {
    let started = Instant::now();
    while started.elapsed() < EXTERNAL_IP_TIMEOUT {
        let output = Command::new("ip")
            .args(["netns", "exec", netns, "curl", "-sS", "-g", "--max-time", "2", url])
            .output()
            .ok()?;
        if output.status.success() {
            return Some(String::from_utf8_lossy(&output.stdout).trim().to_string());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

fn read_state(path: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
