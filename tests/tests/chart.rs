//! The Helm chart on the real API server: `helm lint`, `helm install`, then ferrolb run with the tokens of the
//! chart's ServiceAccounts through an e2e scenario (so the RBAC suffices), `kubectl auth can-i` for what it
//! must not allow, `helm upgrade` keeping the gossip key and every address, and `helm uninstall` leaving
//! only the CRDs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed step should stop the test, loudly

use ferrolb_crds::reason;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ferrolb_crds::{IPAddressPool, L2Announcement, SpeakerStatus};
use ferrolb_e2e::lab_supervisor::{
    DEMO_NAMESPACE, DEMO_POOL, DEMO_SERVICE, INSTALL_NAMESPACE, Identities, LabConfig, RunningLab,
};
use ferrolb_e2e::toolchain::K8sBinary;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams};

const RELEASE: &str = "ferrolb";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn chart() -> String {
    repo().join("charts").join("ferrolb").to_string_lossy().into_owned()
}

/// Runs helm with its caches and config in `home` (never the developer's own).
fn helm(home: &Path, kubeconfig: Option<&Path>, args: &[&str]) -> std::process::Output {
    let mut command = Command::new(K8sBinary::Helm.path());
    command
        .args(args)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    if let Some(kubeconfig) = kubeconfig {
        command.arg("--kubeconfig").arg(kubeconfig);
    } else if matches!(args.first(), Some(&"template" | &"lint")) && !args.contains(&"--kube-version") {
        // Offline, Helm assumes Kubernetes 1.20, which the chart's kubeVersion refuses: say the one we test.
        command.args(["--kube-version", ferrolb_e2e::toolchain::KUBERNETES_VERSION]);
    }
    command.output().unwrap()
}

fn ok(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn the_chart_lints_and_its_schema_refuses_bad_values() {
    let home = tempfile::tempdir().unwrap();
    ok(&helm(home.path(), None, &["lint", &chart(), "--strict"]));
    for bad in [
        "speaker.gossip.key=tooshort",
        "logFormat=xml",
        "controller.replicas=0",
        "speaker.unknown=1",
        "speaker.mode=ospf",
        "speaker.frr.image.repository=",
    ] {
        let output = helm(home.path(), None, &["lint", &chart(), "--set", bad]);
        assert!(!output.status.success(), "{bad} was accepted");
    }
    // Rendering: least privilege is visible in the manifests themselves.
    let rendered = ok(&helm(home.path(), None, &["template", RELEASE, &chart(), "-n", INSTALL_NAMESPACE]));
    assert!(
        !rendered.contains("'*'") && !rendered.contains("\"*\"") && !rendered.contains("[*]"),
        "a wildcard in RBAC"
    );
    assert!(
        rendered.contains("add: [NET_RAW]") && !rendered.contains("NET_ADMIN"),
        "the speaker gets CAP_NET_RAW only"
    );
    assert!(rendered.contains("readOnlyRootFilesystem: true") && rendered.contains("runAsNonRoot: true"));
    // kubeVersion holds against the API server's reported version (the binaries are built stamped).
    let chart_yaml = std::fs::read_to_string(repo().join("charts/ferrolb/Chart.yaml")).unwrap();
    assert!(chart_yaml.contains("kubeVersion: \">=1.31.0-0\""), "the chart says which Kubernetes it needs");
    let too_old = helm(home.path(), None, &["template", RELEASE, &chart(), "--kube-version", "1.30.0"]);
    assert!(!too_old.status.success(), "the chart rendered for Kubernetes 1.30");
    let keepalived = ok(&helm(
        home.path(),
        None,
        &["template", RELEASE, &chart(), "-n", INSTALL_NAMESPACE, "--set", "speaker.mode=keepalived"],
    ));
    assert!(keepalived.contains("add: [NET_RAW, NET_ADMIN]"), "keepalived mode adds NET_ADMIN, and only then");
    assert!(keepalived.contains("ferrolb-keepalived:") && keepalived.contains("value: \"keepalived\""));
    assert!(!rendered.contains("ferrolb-frr") && !rendered.contains("secrets"), "FRR and Secrets only in BGP mode");
    for mode in ["bgp", "native+bgp"] {
        let bgp = ok(&helm(
            home.path(),
            None,
            &["template", RELEASE, &chart(), "-n", INSTALL_NAMESPACE, "--set", &format!("speaker.mode={mode}")],
        ));
        assert!(
            bgp.contains("- name: frr\n") && bgp.contains("ghcr.io/ferrolb/ferrolb-frr:"),
            "{mode}: FRR beside the speaker"
        );
        assert!(bgp.contains("add: [NET_ADMIN, NET_RAW, NET_BIND_SERVICE, SYS_ADMIN]"), "{mode}: FRR's capabilities");
        assert!(
            bgp.contains("name: POD_NAME") && bgp.contains("value: /run/ferrolb/frr"),
            "{mode}: the shared directory"
        );
        assert!(bgp.contains("resources: [secrets]") && bgp.contains("resources: [pods]"), "{mode}: its RBAC");
        let speaker_caps = if mode == "bgp" { "add: []" } else { "add: [NET_RAW]" };
        assert!(bgp.contains(speaker_caps), "{mode}: the speaker's own capabilities");
    }
}

struct Installed {
    running: RunningLab,
    runtime: tokio::runtime::Runtime,
    client: kube::Client,
    kubeconfig: PathBuf,
    helm_home: tempfile::TempDir,
    _state: tempfile::TempDir,
}

impl Installed {
    fn helm(&self, args: &[&str]) -> std::process::Output {
        helm(self.helm_home.path(), Some(&self.kubeconfig), args)
    }

    fn can_i(&self, account: &str, args: &[&str]) -> bool {
        let output = Command::new(K8sBinary::Kubectl.path())
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["auth", "can-i", "--as", &format!("system:serviceaccount:{INSTALL_NAMESPACE}:{account}")])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).trim() == "yes"
    }

    fn wait_for(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if done() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "timed out waiting for {what}\ncontroller: {}\nspeaker: {}",
            self.log("controller.log"),
            self.running.speaker_log("node-1", 20)
        );
    }

    fn log(&self, name: &str) -> String {
        ferrolb_e2e::process::tail(&self._state.path().join(name), 20)
    }

    fn gossip_key(&self) -> Vec<u8> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), INSTALL_NAMESPACE);
        let secret = self.runtime.block_on(secrets.get("ferrolb-gossip")).unwrap();
        secret.data.unwrap()["key"].0.clone()
    }

    fn service_ips(&self) -> Vec<String> {
        let ips = ferrolb_e2e::objects::load_balancer_ips(&self.client, DEMO_NAMESPACE, DEMO_SERVICE);
        self.runtime.block_on(ips).unwrap()
    }

    fn curl(&self, url: &str) -> Option<String> {
        self.running.lab().client_curl(url, 1).unwrap()
    }
}

fn install() -> Installed {
    install_chart(&chart(), |_| {})
}

/// A lab with `chart` installed; `before` runs first (e.g. to take the API back to what an older release had).
fn install_chart(chart: &str, before: impl FnOnce(&Installed)) -> Installed {
    let state = tempfile::tempdir().unwrap();
    let speaker = ferrolb_e2e::process::workspace_binary("ferrolb-speaker").unwrap();
    let config = LabConfig::processes(state.path().to_path_buf(), speaker.parent().unwrap().to_path_buf(), repo());
    let running = RunningLab::prepare(config).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = runtime.block_on(running.plane().admin_client()).unwrap();
    let kubeconfig = running.plane().kubeconfig_path();
    let installed =
        Installed { running, runtime, client, kubeconfig, helm_home: tempfile::tempdir().unwrap(), _state: state };
    before(&installed);
    ok(&installed.helm(&["install", RELEASE, chart, "-n", INSTALL_NAMESPACE]));
    installed
}

impl Installed {
    /// Runs the controller and the speakers with the chart's ServiceAccounts and its gossip key.
    fn start_with_chart_identities(&mut self) {
        let (controller_kubeconfig, speaker_kubeconfig) = self.runtime.block_on(async {
            let plane = self.running.plane();
            (
                plane.service_account_kubeconfig(INSTALL_NAMESPACE, "ferrolb-controller").await.unwrap(),
                plane.service_account_kubeconfig(INSTALL_NAMESPACE, "ferrolb-speaker").await.unwrap(),
            )
        });
        let key = self._state.path().join("chart-gossip.key");
        std::fs::write(&key, self.gossip_key()).unwrap();
        self.running
            .start_components(Some(Identities { controller_kubeconfig, speaker_kubeconfig, gossip_key: key }))
            .unwrap();
    }

    fn speaker_statuses(&self) -> Vec<SpeakerStatus> {
        let statuses: Api<SpeakerStatus> = Api::namespaced(self.client.clone(), INSTALL_NAMESPACE);
        self.runtime.block_on(statuses.list(&ListParams::default())).map(|l| l.items).unwrap_or_default()
    }
}

#[test]
fn upgrading_from_the_previous_chart_as_documented_keeps_every_ip_and_the_gossip_key() {
    // The previous release: its chart, and its CRDs (which had no SpeakerStatus).
    let previous = repo().join("tests/fixtures/ferrolb-chart-previous.tgz").to_string_lossy().into_owned();
    let mut installed = install_chart(&previous, |lab| {
        let crds: Api<CustomResourceDefinition> = Api::all(lab.client.clone());
        lab.runtime.block_on(crds.delete("speakerstatuses.ferrolb.io", &Default::default())).unwrap();
    });
    installed.start_with_chart_identities();
    installed.wait_for("the demo VIP to answer", || installed.curl("http://192.0.2.200/").is_some());
    let (ips, key) = (installed.service_ips(), installed.gossip_key());
    assert_eq!(ips, ["192.0.2.200", "2001:db8::200"]);
    // Without the new kind (and its RBAC) the speakers keep announcing, and say so once: the refusal is
    // logged after the first step's writes, maybe after the VIP answers, and not again when the writer retries
    // (5 s later at the first).
    let refusals = || installed.running.speaker_log("node-1", 200).matches("SpeakerStatus not written").count();
    installed.wait_for("the speaker to say it cannot write its SpeakerStatus", || refusals() > 0);
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(refusals(), 1, "{}", installed.running.speaker_log("node-1", 200));

    // The upgrade of docs/install.md: the CRDs first, then the chart with the values kept.
    ok(&ferrolb_e2e::objects::apply_printed_crds(&installed.kubeconfig, &[]).unwrap());
    ok(&installed.helm(&["upgrade", RELEASE, &chart(), "-n", INSTALL_NAMESPACE, "--reset-then-reuse-values"]));

    // The gossip key and every address stay, across a controller restart (a rollout) too; the speakers,
    // now allowed, report themselves without a restart.
    assert_eq!(installed.gossip_key(), key, "the upgrade kept the gossip key");
    installed.running.restart_controller(Duration::from_secs(10)).unwrap();
    // Refused writes are retried after a backoff of up to a minute.
    let deadline = Instant::now() + Duration::from_secs(90);
    let reported =
        |statuses: Vec<SpeakerStatus>| statuses.len() == 3 && statuses.iter().all(|s| s.spec.alive.len() == 3);
    while !reported(installed.speaker_statuses()) {
        assert!(
            Instant::now() < deadline,
            "no SpeakerStatus per node\n{}",
            installed.running.speaker_log("node-1", 20)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    installed.wait_for("the controller to be back", || installed.log("controller.log").contains("leading"));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(installed.service_ips(), ips, "every address survived the upgrade");
    assert!(installed.curl("http://192.0.2.200/").is_some() && installed.curl("http://[2001:db8::200]/").is_some());
    assert!(installed.running.speaker_log("node-1", 200).contains("SpeakerStatus written again"));
}

#[test]
fn ferrolb_runs_on_the_charts_rbac_which_allows_nothing_more_and_upgrade_and_uninstall_behave() {
    let mut installed = install();

    // The components run with the chart's ServiceAccounts and gossip key, nothing else.
    let key_before = installed.gossip_key();
    assert!(key_before.len() >= 32, "a generated key of 48 characters");
    installed.start_with_chart_identities();

    // The scenario: an address in status, pool status, the VIP answering, the announcement and both Events.
    installed.wait_for("the demo VIP to answer", || installed.curl("http://192.0.2.200/").is_some());
    assert!(installed.curl("http://[2001:db8::200]/").is_some());
    let ips = installed.service_ips();
    assert_eq!(ips, ["192.0.2.200", "2001:db8::200"]);
    let pools: Api<IPAddressPool> = Api::all(installed.client.clone());
    installed.wait_for("pool status", || {
        installed.runtime.block_on(pools.get(DEMO_POOL)).unwrap().status.is_some_and(|s| s.ipv4.is_some())
    });
    let announcements: Api<L2Announcement> = Api::namespaced(installed.client.clone(), INSTALL_NAMESPACE);
    installed.wait_for("the L2Announcement", || {
        !installed.runtime.block_on(announcements.list(&ListParams::default())).unwrap().items.is_empty()
    });
    // Each speaker reports whom it hears, with the chart's RBAC; the object is owned by (and goes with) its Node.
    let statuses: Api<SpeakerStatus> = Api::namespaced(installed.client.clone(), INSTALL_NAMESPACE);
    installed.wait_for("a SpeakerStatus per node, each hearing all three", || {
        let list = installed.runtime.block_on(statuses.list(&ListParams::default())).unwrap().items;
        list.len() == 3 && list.iter().all(|s| s.spec.alive.len() == 3 && s.spec.mode == "native")
    });
    for status in installed.runtime.block_on(statuses.list(&ListParams::default())).unwrap().items {
        let owner = &status.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Node", status.spec.node.as_str()));
    }
    let events: Api<Event> = Api::namespaced(installed.client.clone(), DEMO_NAMESPACE);
    installed.wait_for("IPAllocated and NodeAssigned Events", || {
        let reasons: Vec<String> = installed
            .runtime
            .block_on(events.list(&ListParams::default()))
            .unwrap()
            .items
            .into_iter()
            .filter_map(|e| e.reason)
            .collect();
        reasons.iter().any(|r| r == reason::IP_ALLOCATED) && reasons.iter().any(|r| r == reason::NODE_ASSIGNED)
    });

    // What each may do, and what it must not.
    let speaker = "ferrolb-speaker";
    let controller = "ferrolb-controller";
    let ns = ["-n", INSTALL_NAMESPACE];
    assert!(installed.can_i(speaker, &["create", "l2announcements.ferrolb.io", ns[0], ns[1]]));
    assert!(installed.can_i(speaker, &["patch", "speakerstatuses.ferrolb.io", ns[0], ns[1]]));
    assert!(installed.can_i(speaker, &["list", "endpointslices.discovery.k8s.io", "-A"]));
    assert!(installed.can_i(controller, &["patch", "services", "--subresource=status", "-A"]));
    assert!(installed.can_i(controller, &["watch", "bgpadvertisements.ferrolb.io"]));
    assert!(installed.can_i(speaker, &["watch", "bgppeers.ferrolb.io"]));
    for (account, args) in [
        (speaker, vec!["patch", "services", "--subresource=status", "-A"]),
        (speaker, vec!["update", "services", "-A"]),
        (speaker, vec!["delete", "services", "-A"]),
        (speaker, vec!["create", "l2announcements.ferrolb.io", "-n", "default"]),
        (speaker, vec!["create", "speakerstatuses.ferrolb.io", "-n", "default"]),
        (speaker, vec!["delete", "speakerstatuses.ferrolb.io", "-n", INSTALL_NAMESPACE]),
        (speaker, vec!["patch", "ipaddresspools.ferrolb.io"]),
        (speaker, vec!["get", "secrets", "-n", INSTALL_NAMESPACE]),
        (speaker, vec!["list", "secrets", "-n", INSTALL_NAMESPACE]),
        (speaker, vec!["create", "pods", "-n", INSTALL_NAMESPACE]),
        (speaker, vec!["*", "*"]),
        (controller, vec!["update", "services", "-A"]),
        (controller, vec!["delete", "services", "-A"]),
        (controller, vec!["create", "l2announcements.ferrolb.io", "-n", INSTALL_NAMESPACE]),
        (controller, vec!["update", "ipaddresspools.ferrolb.io"]),
        (controller, vec!["get", "secrets", "-n", INSTALL_NAMESPACE]),
        (controller, vec!["create", "leases.coordination.k8s.io", "-n", "default"]),
        (controller, vec!["*", "*"]),
    ] {
        assert!(!installed.can_i(account, &args), "{account} may {args:?}");
    }

    // Upgrade: same key, and after a controller restart every address is where it was.
    ok(&installed.helm(&["upgrade", RELEASE, &chart(), "-n", INSTALL_NAMESPACE, "--set", "logLevel=debug"]));
    assert_eq!(installed.gossip_key(), key_before, "helm upgrade kept the gossip key");
    installed.running.restart_controller(Duration::from_secs(10)).unwrap();
    installed.wait_for("the controller to be back", || installed.log("controller.log").contains("leading"));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(installed.service_ips(), ips, "every address survived the upgrade");

    // Uninstall: only the CRDs stay.
    ok(&installed.helm(&["uninstall", RELEASE, "-n", INSTALL_NAMESPACE, "--wait"]));
    let leftovers = Command::new(K8sBinary::Kubectl.path())
        .arg("--kubeconfig")
        .arg(&installed.kubeconfig)
        .args(["get", "serviceaccounts,secrets,services,deployments,daemonsets,roles,rolebindings,clusterroles,clusterrolebindings", "-A", "-l", "app.kubernetes.io/instance=ferrolb", "-o", "name"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&leftovers.stdout).trim(), "", "left after uninstall");
    let crds: Api<CustomResourceDefinition> = Api::all(installed.client.clone());
    for crd in [
        "ipaddresspools.ferrolb.io",
        "l2advertisements.ferrolb.io",
        "l2announcements.ferrolb.io",
        "speakerstatuses.ferrolb.io",
        "bgppeers.ferrolb.io",
    ] {
        assert!(installed.runtime.block_on(crds.get_opt(crd)).unwrap().is_some(), "{crd} kept (Helm's convention)");
    }
}

/// The rendered objects of `helm template` with `values`, parsed.
fn rendered(values: &[&str]) -> Vec<serde_json::Value> {
    let home = tempfile::tempdir().unwrap();
    let chart = chart();
    let mut args = vec!["template", RELEASE, &chart, "-n", INSTALL_NAMESPACE];
    for value in values {
        args.extend(["--set", value]);
    }
    let text = ok(&helm(home.path(), None, &args));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &serde_json::Value| !v.is_null())
        .collect()
}

fn kind<'a>(objects: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

#[test]
fn operators_can_name_label_extend_and_bring_their_own_gossip_secret() {
    let objects = rendered(&[
        "fullnameOverride=edge-lb",
        "controller.podLabels.team=net",
        "speaker.podLabels.team=net",
        "controller.extraArgs[0]=--log-format=json",
        "speaker.extraEnv[0].name=EXTRA",
        "speaker.extraEnv[0].value=on-purpose",
        "speaker.gossip.existingSecret=sealed-gossip",
        "speaker.gossip.existingSecretKey=token",
    ]);
    let deployment = kind(&objects, "Deployment")[0];
    let daemonset = kind(&objects, "DaemonSet")[0];
    assert_eq!(deployment["metadata"]["name"], "edge-lb-controller");
    assert_eq!(daemonset["metadata"]["name"], "edge-lb-speaker");
    for workload in [deployment, daemonset] {
        let pod = &workload["spec"]["template"];
        assert_eq!(pod["metadata"]["labels"]["team"], "net");
        let container = &pod["spec"]["containers"][0];
        assert_eq!(container["startupProbe"]["httpGet"]["path"], "/healthz", "a startup probe guards liveness");
    }
    assert_eq!(deployment["spec"]["template"]["spec"]["containers"][0]["args"][0], "--log-format=json");
    let env = daemonset["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap();
    assert!(env.iter().any(|e| e["name"] == "EXTRA" && e["value"] == "on-purpose"));
    assert_eq!(daemonset["spec"]["template"]["spec"]["priorityClassName"], "system-node-critical");
    assert!(deployment["spec"]["template"]["spec"]["priorityClassName"].is_null());
    // The operator's Secret is used and none is made (so GitOps renders are stable).
    assert!(kind(&objects, "Secret").is_empty());
    let volume = daemonset["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "gossip-key")
        .unwrap();
    assert_eq!(volume["secret"]["secretName"], "sealed-gossip");
    assert_eq!(volume["secret"]["items"][0]["key"], "token");
    assert_eq!(volume["secret"]["items"][0]["path"], "key");
    // A drain never takes every controller replica.
    let budget = kind(&objects, "PodDisruptionBudget")[0];
    assert_eq!(budget["spec"]["maxUnavailable"], 1);
    assert_eq!(budget["spec"]["selector"]["matchLabels"], deployment["spec"]["selector"]["matchLabels"]);

    // Defaults: a generated Secret, read at the key the speaker expects.
    let defaults = rendered(&[]);
    assert_eq!(kind(&defaults, "Secret").len(), 1);
    let daemonset = kind(&defaults, "DaemonSet")[0];
    assert_eq!(daemonset["metadata"]["name"], "ferrolb-speaker");
    let overridden = rendered(&["nameOverride=edge"]);
    let daemonset = kind(&overridden, "DaemonSet")[0];
    assert_eq!(daemonset["metadata"]["name"], "ferrolb-edge-speaker");
    assert_eq!(daemonset["metadata"]["labels"]["app.kubernetes.io/name"], "edge");
}

/// Every series name a /metrics text declares (`# TYPE` lines, so families without samples count too), with
/// the label names its samples carry.
fn exported_series(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut series: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            let mut words = declared.split_whitespace();
            let (Some(name), Some(kind)) = (words.next(), words.next()) else { continue };
            let sample = match kind {
                "counter" => format!("{name}_total"),
                "info" => format!("{name}_info"),
                _ => name.to_string(),
            };
            series.entry(sample).or_default();
        } else if !line.starts_with('#') {
            let name: String = line.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            let labels = line[name.len()..].strip_prefix('{').and_then(|rest| rest.split_once('}')).map(|(l, _)| l);
            let names = labels.into_iter().flat_map(|l| l.split(',')).filter_map(|pair| pair.split_once('='));
            series.entry(name).or_default().extend(names.map(|(label, _)| label.to_string()));
        }
    }
    series
}

/// The metric names, matcher labels and grouping labels (`by`, `on`, `group_left`) of a PromQL expression.
#[derive(Default)]
struct Names {
    metrics: BTreeSet<String>,
    matched_labels: Vec<(String, String)>,
    grouping: BTreeSet<String>,
}

impl promql_parser::util::ExprVisitor for Names {
    type Error = std::convert::Infallible;

    fn pre_visit(&mut self, expr: &promql_parser::parser::Expr) -> Result<bool, Self::Error> {
        use promql_parser::parser::Expr;
        let selector = match expr {
            Expr::VectorSelector(selector) => Some(selector),
            Expr::MatrixSelector(matrix) => Some(&matrix.vs),
            _ => None,
        };
        if let Some(selector) = selector {
            let name = selector.name.clone().unwrap_or_default();
            for matcher in &selector.matchers.matchers {
                self.matched_labels.push((name.clone(), matcher.name.clone()));
            }
            self.metrics.insert(name);
        }
        if let Expr::Aggregate(aggregate) = expr {
            self.grouping.extend(aggregate.modifier.iter().flat_map(|m| m.labels().labels.clone()));
        }
        if let Expr::Binary(binary) = expr
            && let Some(modifier) = &binary.modifier
        {
            self.grouping.extend(modifier.matching.iter().flat_map(|m| m.labels().labels.clone()));
            self.grouping.extend(modifier.card.labels().into_iter().flat_map(|l| l.labels.clone()));
        }
        Ok(true)
    }
}

#[test]
fn every_alert_and_dashboard_expression_parses_and_names_series_the_binaries_export() {
    let objects = rendered(&["metrics.prometheusRule.enabled=true", "metrics.grafanaDashboard.enabled=true"]);
    let mut expressions: Vec<(String, String)> = Vec::new();
    for rule in kind(&objects, "PrometheusRule") {
        for group in rule["spec"]["groups"].as_array().unwrap() {
            for alert in group["rules"].as_array().unwrap() {
                expressions.push((alert["alert"].as_str().unwrap().into(), alert["expr"].as_str().unwrap().into()));
            }
        }
    }
    let alerts: Vec<&str> = expressions.iter().map(|(name, _)| name.as_str()).collect();
    for wanted in [
        "FerrolbPoolNearlyExhausted",
        "FerrolbServicePending",
        "FerrolbVIPNotAnnounced",
        "FerrolbIPConflict",
        "FerrolbGossipMembersMissing",
        "FerrolbKeepalivedReloadFailing",
    ] {
        assert!(alerts.contains(&wanted), "{wanted} missing from {alerts:?}");
    }
    let dashboards = kind(&objects, "ConfigMap");
    let dashboard: serde_json::Value =
        serde_json::from_str(dashboards[0]["data"]["ferrolb.json"].as_str().unwrap()).unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let title = format!("dashboard panel {:?}", panel["title"].as_str().unwrap());
            expressions.push((title, target["expr"].as_str().unwrap().into()));
        }
    }

    // What the binaries really export: a lab's controller and speaker (one Service announced, so the
    // per-Service series have samples and their labels can be checked).
    let lab = ferrolb_e2e::l2lab::L2Lab::up();
    let owner = lab.owner();
    let mut exported = exported_series(&lab.controller_metrics());
    lab.wait_for("the owner's announcement series", || lab.metrics(&owner).contains("ferrolb_speaker_announced{"));
    // Every speaker's: some series come from one speaker only (the janitor's ferrolb_speaker_expected).
    for node in ["node-1", "node-2", "node-3"] {
        for (name, labels) in exported_series(&lab.metrics(node)) {
            exported.entry(name).or_default().extend(labels);
        }
    }
    assert!(exported.contains_key("ferrolb_service_address") && exported.contains_key("ferrolb_speaker_members"));
    // The reference lists every series.
    let reference = std::fs::read_to_string(repo().join("docs/metrics.md")).unwrap();
    for name in exported.keys().filter(|n| n.starts_with("ferrolb_") || n.starts_with("process_")) {
        assert!(reference.contains(&format!("`{name}`")), "docs/metrics.md does not describe {name}");
    }
    // Labels Prometheus adds to every scraped series.
    let scrape_labels = ["instance", "job"];

    for (what, expr) in &expressions {
        let parsed = promql_parser::parser::parse(expr).unwrap_or_else(|e| panic!("{what}: {expr}\n{e}"));
        let mut names = Names::default();
        promql_parser::util::walk_expr(&mut names, &parsed).unwrap();
        assert!(!names.metrics.is_empty(), "{what} reads no series: {expr}");
        for metric in &names.metrics {
            assert!(exported.contains_key(metric), "{what} reads {metric:?}, which nothing exports: {expr}");
        }
        for (metric, label) in &names.matched_labels {
            let labels = &exported[metric];
            assert!(
                labels.is_empty() || labels.contains(label) || scrape_labels.contains(&label.as_str()),
                "{what} matches {metric}{{{label}}}, a label it does not have ({labels:?})"
            );
        }
        for label in &names.grouping {
            let carried = names.metrics.iter().any(|m| exported[m].contains(label));
            assert!(
                carried || scrape_labels.contains(&label.as_str()),
                "{what} groups by {label:?}, which none of {:?} carries",
                names.metrics
            );
        }
    }
}
