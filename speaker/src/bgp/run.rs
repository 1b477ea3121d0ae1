//! BGP mode's backend: at every step the routes this node sends are computed from the cluster's objects
//! ([`super::announce`]), rendered as FRR's configuration ([`super::render`]) and the difference sent to the
//! FRR beside the speaker ([`super::frr`]). FRR keeps running when the speaker stops, so a restarted or
//! upgraded speaker withdraws nothing; a speaker stopping because its node goes away (cordoned) withdraws
//! its routes first and waits for the routers to hear it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use ferrolb_crds::{BGPAnnouncement, BGPAnnouncementSpec, BgpPeerStatus};
use k8s_openapi::api::core::v1::ObjectReference;
use tokio::time::Instant;

use super::announce::{self, BgpWorld, Routes};
use super::announcements;
use super::daemons;
use super::frr::{Frr, SessionState};
use super::render::{self, Inputs, Rendered, Session};
use crate::cluster::{BgpObjects, Cluster, node_address};
use crate::driver::{self, Next};
use crate::report::{Notice, Report};

/// How often FRR's sessions are read back (for the SpeakerStatus), and a failed convergence retried.
const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// How long the reads at SIGTERM (the Pod, the Node) wait for the API.
const API_READ_TIMEOUT: Duration = Duration::from_secs(4);
/// This node's BGPAnnouncements are read back from the API this often (a safety net for lost writes and for
/// objects deleted by hand); between reads, what was sent is trusted.
const ANNOUNCEMENTS_READ_BACK: Duration = Duration::from_secs(600);
/// After withdrawing on a drain, how long the routers get to hear it before the speaker exits (FRR sends
/// the withdrawal at once; BIRD took 85–97 ms to act on one in the lab).
const WITHDRAW_GRACE: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct BgpOptions {
    /// Where FRR's daemons keep their vty sockets (`bgpd.vty`, `bfdd.vty`).
    pub frr_dir: PathBuf,
    /// To read this node's Node at SIGTERM (the watch may not have shown a cordon made a moment before).
    pub client: kube::Client,
    /// The speaker's Pod (the chart sets it): being deleted means this node's speaker and FRR go away.
    pub pod: Option<String>,
}

pub struct BgpBackend {
    me: String,
    frr: Frr,
    /// What FRR was last made to run (`None`: not yet, or it failed).
    applied: Option<Rendered>,
    /// The cluster's plan version (and whether draining) `applied` was rendered from.
    rendered_at: Option<(u64, bool)>,
    routes: Routes,
    /// The sessions configured on this node, by BGPPeer name.
    configured: Vec<Configured>,
    /// The BGPPeers that select this node but could not be configured: name → why.
    refused: BTreeMap<String, String>,
    /// What FRR said of its sessions at the last poll.
    states: BTreeMap<IpAddr, SessionState>,
    bfd: BTreeMap<IpAddr, String>,
    /// Polls in a row that found no BFD session in bfdd for a session with a BFD profile, by address.
    bfd_missing: BTreeMap<IpAddr, u32>,
    next_poll: Instant,
    /// The last error talking to FRR, logged once until it changes or clears.
    frr_error: Option<String>,
    /// The same for reading its sessions.
    poll_error: Option<String>,
    /// This node is cordoned (as of the last step).
    cordoned: bool,
    client: kube::Client,
    /// The speaker's Pod and its namespace, if it runs in one.
    pod: Option<(String, String)>,
    /// The install namespace (this node's BGPAnnouncements).
    namespace: String,
    /// This node's BGPAnnouncements as last written, by name (`None`: not read from the API yet), and when
    /// they were last read back.
    announcements: Option<BTreeMap<String, BGPAnnouncementSpec>>,
    announcements_read: Option<Instant>,
    /// The last error reading them back, logged once.
    announcements_error: Option<String>,
    frr_dir: PathBuf,
    /// SIGTERM came: whether the node is going away is decided at the next step.
    stop_requested: bool,
    /// Going away: announce nothing; once the withdrawal is applied, stop when the routers had time to hear it.
    draining: bool,
    drain_until: Option<Instant>,
    /// Not going away (a restart or an upgrade): stop at once, FRR keeps announcing.
    stop_now: bool,
}

pub enum BgpEvent {
    Poll,
}

/// A session configured on this node, as the status and the BFD check read it.
struct Configured {
    name: String,
    address: IpAddr,
    bfd_profile: Option<String>,
    /// A TCP MD5 password is set (a session that never comes up then most likely has the wrong one).
    with_password: bool,
}

impl BgpBackend {
    pub fn start(setup: &driver::Setup, options: BgpOptions) -> Self {
        let client = options.client.clone();
        tracing::info!(frr_dir = %options.frr_dir.display(), "BGP mode");
        // A word left by an earlier run of the speaker would let FRR stop before this one withdrew.
        let done = options.frr_dir.join(daemons::SPEAKER_DONE);
        if let Err(e) = std::fs::remove_file(&done)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(file = %done.display(), error = %e, "cannot remove the previous speaker's word to FRR");
        }
        BgpBackend {
            me: setup.options.node_name.clone(),
            frr: Frr::new(&options.frr_dir),
            applied: None,
            rendered_at: None,
            routes: Routes::default(),
            configured: Vec::new(),
            refused: BTreeMap::new(),
            states: BTreeMap::new(),
            bfd: BTreeMap::new(),
            bfd_missing: BTreeMap::new(),
            next_poll: Instant::now(),
            frr_error: None,
            poll_error: None,
            cordoned: false,
            client,
            pod: options.pod.map(|pod| (setup.options.namespace.clone(), pod)),
            namespace: setup.options.namespace.clone(),
            announcements: None,
            announcements_read: None,
            announcements_error: None,
            frr_dir: options.frr_dir,
            stop_requested: false,
            draining: false,
            drain_until: None,
            stop_now: false,
        }
    }

    /// What this node's FRR should run now, and the sessions left out.
    fn desired(&mut self, cluster: &Cluster, reports: &crate::report::Reports) -> Option<Rendered> {
        let objects = cluster.bgp().unwrap_or_default();
        let node = cluster.node(&self.me)?;
        let world = cluster.world();
        let here = world.nodes.iter().find(|n| *n.name == *self.me);
        let labels = here.map(|n| n.labels.clone()).unwrap_or_default();
        self.cordoned = here.is_some_and(|n| n.unschedulable);
        let mut refused = BTreeMap::new();
        let sessions = sessions_here(&objects, &labels, &mut refused);
        let names: BTreeSet<String> = sessions.iter().map(|s| s.name.clone()).collect();
        self.routes = if self.draining {
            Routes::default()
        } else {
            announce::routes(
                &BgpWorld { world: &world, advertisements: &objects.advertisements, sessions: &names },
                &self.me,
            )
        };
        let router_id = match node_address(&node, true) {
            Some(IpAddr::V4(v4)) => v4,
            // An IPv6-only node: a router id is still 32 bits; any stable one will do.
            _ => Ipv4Addr::from(xxhash_rust::xxh3::xxh3_64(self.me.as_bytes()) as u32),
        };
        let rendered = render::render(&Inputs {
            router_id,
            sessions: &sessions,
            profiles: &objects.profiles,
            routes: &self.routes,
        });
        refused.extend(rendered.refused.iter().map(|r| (r.peer.clone(), r.reason.clone())));
        // Told once per cause: in the log, and as an Event on the BGPPeer.
        for (peer, reason) in &refused {
            if self.refused.get(peer) != Some(reason) {
                tracing::warn!(%peer, %reason, "BGP session not configured on this node");
                let _ = reports.send(Report::Notice(Notice {
                    regarding: peer_reference(peer),
                    warning: true,
                    reason: "SessionRefused",
                    action: "Configure",
                    note: format!("{} cannot peer: {reason}", self.me),
                }));
            }
        }
        self.refused = refused;
        self.configured = sessions
            .into_iter()
            .filter(|s| rendered.sessions.contains(&s.name))
            .filter_map(|s| {
                Some(Configured {
                    address: s.spec.peer_address.parse().ok()?,
                    bfd_profile: s.spec.bfd_profile,
                    with_password: s.password.is_some(),
                    name: s.name,
                })
            })
            .collect();
        Some(rendered)
    }

    async fn converge(&mut self, rendered: Rendered) {
        if self.applied.as_ref() == Some(&rendered) {
            return;
        }
        match self.frr.converge(&rendered).await {
            Ok(commands) => {
                if commands > 0 {
                    let routes: usize = self.routes.by_peer.values().map(|r| r.len()).sum();
                    tracing::info!(commands, sessions = rendered.sessions.len(), routes, "FRR converged");
                }
                if self.frr_error.take().is_some() {
                    tracing::info!("FRR reachable again");
                }
                self.applied = Some(rendered);
            }
            Err(e) => {
                let message = e.to_string();
                if self.frr_error.as_deref() != Some(message.as_str()) {
                    tracing::error!(error = %message, "FRR not converged; retrying every {POLL_INTERVAL:?}");
                }
                self.frr_error = Some(message);
                self.applied = None;
            }
        }
    }

    async fn poll(&mut self) {
        let sessions = self.frr.sessions().await;
        let bfd = self.frr.bfd_sessions().await;
        let error = match (&sessions, &bfd) {
            (Err(e), _) | (_, Err(e)) => Some(e.to_string()),
            _ => None,
        };
        let read = error.is_none();
        if error != self.poll_error {
            match &error {
                Some(error) => tracing::warn!(%error, "cannot read FRR's sessions; retrying every {POLL_INTERVAL:?}"),
                None => tracing::info!("FRR's sessions read again"),
            }
            self.poll_error = error;
        }
        self.states = sessions.unwrap_or_default();
        self.bfd = bfd.unwrap_or_default();
        if read {
            self.register_lost_bfd_sessions().await;
        }
        // FRR may have restarted empty: read back what it runs at the next step.
        if self.states.is_empty() && !self.configured.is_empty() {
            self.frr.forget();
            self.applied = None;
        }
    }

    /// Whether this node is going away: the speaker's Pod is being deleted (FRR, beside it, stops too: an
    /// upgrade or a drain), or its Node is cordoned, being deleted or gone. A speaker restarting in its Pod
    /// is not going away, and withdraws nothing. Read from the API (the watch may lag a cordon made just
    /// before the SIGTERM, as a drain does). When the Pod cannot be read, it may be being deleted: the
    /// speaker withdraws (a restart then costs this node a few seconds out of the routers' ECMP groups;
    /// the other guess would cost failed connections). The Node unread: the watched view.
    async fn going_away(&self) -> bool {
        if let Some((namespace, name)) = &self.pod {
            let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
                kube::Api::namespaced(self.client.clone(), namespace);
            let pod = format!("{namespace}/{name}");
            match tokio::time::timeout(API_READ_TIMEOUT, pods.get_opt(name)).await {
                // The pod is deleted (an upgrade, a node drain): FRR beside it stops too.
                Ok(Ok(Some(found))) if found.metadata.deletion_timestamp.is_some() => return true,
                Ok(Ok(None)) => return true,
                Ok(Ok(Some(_))) => {}
                Ok(Err(e)) => {
                    tracing::warn!(%pod, error = %e, "cannot read the speaker's Pod: withdrawing, as if it were deleted");
                    return true;
                }
                Err(_) => {
                    tracing::warn!(%pod, "the API did not answer within {API_READ_TIMEOUT:?}: withdrawing, as if the Pod were deleted");
                    return true;
                }
            }
        }
        let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(self.client.clone());
        let read = tokio::time::timeout(API_READ_TIMEOUT, nodes.get_opt(&self.me)).await;
        match read {
            Ok(Ok(Some(node))) => {
                node.metadata.deletion_timestamp.is_some() || crate::cluster::node_info(&node).unschedulable
            }
            Ok(Ok(None)) => true,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read this node's Node; deciding from the watched one");
                self.cordoned
            }
            Err(_) => {
                tracing::warn!("the API did not answer within {API_READ_TIMEOUT:?}; deciding from the watched Node");
                self.cordoned
            }
        }
    }

    /// Writes and deletes this node's BGPAnnouncements to match the routes (reading them back first when
    /// `read_back`).
    async fn report_announcements(&mut self, reports: &crate::report::Reports, read_back: bool) {
        if read_back {
            match self.read_announcements().await {
                Ok(read) => {
                    if self.announcements_error.take().is_some() {
                        tracing::info!("this node's BGPAnnouncements read again");
                    }
                    self.announcements = Some(read);
                    self.announcements_read = Some(Instant::now());
                }
                Err(e) => {
                    let message = e.to_string();
                    if self.announcements_error.as_deref() != Some(message.as_str()) {
                        tracing::warn!(error = %message, "cannot read this node's BGPAnnouncements; retrying");
                    }
                    self.announcements_error = Some(message);
                }
            }
        }
        // Never read: whatever was written before this speaker started is unknown, so nothing is written.
        let Some(written) = self.announcements.as_mut() else { return };
        let ops = announcements::ops(&self.me, &self.routes.by_service, written);
        if !ops.is_empty() {
            announcements::apply(written, &ops);
            let _ = reports.send(Report::Ops(ops));
        }
    }

    async fn read_announcements(&self) -> Result<BTreeMap<String, BGPAnnouncementSpec>, kube::Error> {
        let api: kube::Api<BGPAnnouncement> = kube::Api::namespaced(self.client.clone(), &self.namespace);
        let label = ferrolb_crds::bgp_announcement::node_label_value(&self.me);
        let selector = format!("{}={label}", ferrolb_crds::bgp_announcement::NODE_LABEL);
        let list = api.list(&kube::api::ListParams::default().labels(&selector)).await?;
        Ok(list
            .items
            .into_iter()
            .filter(|object| object.spec.node == self.me)
            .filter_map(|object| Some((object.metadata.name?, object.spec)))
            .collect())
    }

    /// BFD sessions bfdd does not know of two polls in a row are registered again (see
    /// [`Frr::register_bfd_again`]).
    async fn register_lost_bfd_sessions(&mut self) {
        let mut lost = Vec::new();
        for session in &self.configured {
            let (Some(profile), address) = (&session.bfd_profile, &session.address) else { continue };
            if self.bfd.contains_key(address) {
                self.bfd_missing.remove(address);
                continue;
            }
            let polls = self.bfd_missing.entry(*address).or_default();
            *polls += 1;
            if *polls >= 2 {
                lost.push((*address, profile.clone()));
                *polls = 0;
            }
        }
        let router =
            self.applied.as_ref().and_then(|r| r.bgpd.lines.iter().find(|l| l.text.starts_with("router bgp ")));
        let (Some(router), false) = (router.map(|l| l.text.clone()), lost.is_empty()) else { return };
        let addresses: Vec<String> = lost.iter().map(|(a, _)| a.to_string()).collect();
        tracing::warn!(peers = ?addresses, "bfdd runs no BFD session for these BGP sessions; registering them again");
        if let Err(e) = self.frr.register_bfd_again(&router, &lost).await {
            tracing::warn!(error = %e, "registering the BFD sessions again failed");
        }
    }
}

/// The BGPPeers that select this node, with their passwords; peers whose password cannot be read are
/// left out (`refused` gets why).
fn sessions_here(
    objects: &BgpObjects,
    labels: &BTreeMap<String, String>,
    refused: &mut BTreeMap<String, String>,
) -> Vec<Session> {
    let mut sessions = Vec::new();
    for (name, spec) in &objects.peers {
        // A malformed selector selects nothing.
        if !ferrolb_crds::selector::matches_any(&spec.node_selectors, labels).unwrap_or(false) {
            continue;
        }
        let password = match &spec.password_secret {
            None => None,
            Some(secret) => match objects.passwords.get(&secret.name) {
                Some(password) => Some(password.clone()),
                None => {
                    let reason = format!(
                        "its password Secret {:?} (type {}, key password) is missing in the install namespace",
                        secret.name,
                        crate::cluster::PASSWORD_SECRET_TYPE
                    );
                    refused.insert(name.clone(), reason);
                    continue;
                }
            },
        };
        sessions.push(Session { name: name.clone(), spec: spec.clone(), password });
    }
    sessions
}

/// What the SpeakerStatus says of a session that is not established: FRR's last error, and with a password
/// the likeliest cause (a router without the same TCP MD5 key drops every segment: FRR sees no error at all).
fn session_message(state: Option<&SessionState>, with_password: bool) -> Option<String> {
    let state = state?;
    if state.state == "Established" {
        return None;
    }
    let hint = with_password.then_some(
        "a TCP MD5 password is set: the router must use the same one for this node, or it drops every segment",
    );
    match (state.last_error.as_deref(), hint) {
        (Some(error), Some(hint)) => Some(format!("{error}; {hint}")),
        (Some(error), None) => Some(error.to_string()),
        (None, Some(hint)) => Some(hint.to_string()),
        (None, None) => None,
    }
}

fn peer_reference(name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some(ferrolb_crds::API_VERSION.into()),
        kind: Some("BGPPeer".into()),
        name: Some(name.into()),
        // Cluster-scoped: no namespace (the Event itself goes to the default namespace).
        namespace: None,
        ..Default::default()
    }
}

impl driver::Backend for BgpBackend {
    type Event = BgpEvent;

    async fn next_event(&mut self) -> anyhow::Result<BgpEvent> {
        let wake = self.drain_until.map_or(self.next_poll, |until| until.min(self.next_poll));
        tokio::time::sleep_until(wake).await;
        Ok(BgpEvent::Poll)
    }

    async fn handle(&mut self, event: BgpEvent, _shared: &mut driver::Shared<'_>) -> anyhow::Result<Next> {
        match event {
            BgpEvent::Poll => {
                self.next_poll = Instant::now() + POLL_INTERVAL;
                self.poll().await;
                // A failed convergence is retried; the SpeakerStatus carries what was polled.
                Ok(Next::Step)
            }
        }
    }

    async fn step(&mut self, shared: &mut driver::Shared<'_>) -> anyhow::Result<()> {
        if self.stop_requested && !self.draining && !self.stop_now {
            if self.going_away().await {
                tracing::info!("this node is going away (cordoned or deleted): withdrawing its routes before stopping");
                self.draining = true;
            } else {
                tracing::info!("stopping: this node stays, so FRR keeps announcing its routes");
                self.stop_now = true;
                return Ok(());
            }
        }
        // Steps come every poll: the routes are computed again only when an object they are made of
        // changed, or the last convergence failed, or a drain began.
        let version = shared.cluster.plan_version();
        let current = self.applied.is_some() && self.rendered_at == Some((version, self.draining));
        if !current && let Some(rendered) = self.desired(shared.cluster, shared.reports) {
            self.converge(rendered).await;
            self.rendered_at = Some((version, self.draining));
        }
        // What FRR runs now, Service by Service, once it runs it.
        let read_back_due = self.announcements_read.is_none_or(|at| at.elapsed() >= ANNOUNCEMENTS_READ_BACK);
        if self.applied.is_some() && (!current || read_back_due) {
            self.report_announcements(shared.reports, read_back_due).await;
        }
        if self.draining && self.drain_until.is_none() && self.applied.is_some() {
            tracing::info!("routes withdrawn; giving the routers {WITHDRAW_GRACE:?} to act on it");
            self.drain_until = Some(Instant::now() + WITHDRAW_GRACE);
        }
        Ok(())
    }

    /// A node that goes away withdraws first; a restart or upgrade withdraws nothing (FRR keeps running).
    /// Which it is, is decided at the next step (it reads the Node).
    fn begin_drain(&mut self) -> Option<Duration> {
        self.stop_requested = true;
        self.next_poll = Instant::now();
        // The reads, the withdrawal, the grace, with room to spare (ferrolb-frr waits up to 12 s).
        Some(API_READ_TIMEOUT * 2 + WITHDRAW_GRACE + Duration::from_secs(2))
    }

    fn drained(&self) -> bool {
        self.stop_now || self.drain_until.is_some_and(|until| Instant::now() >= until)
    }

    async fn stop(self, _shared: &mut driver::Shared<'_>) {
        if self.draining {
            tracing::info!("stopping: this node's routes are withdrawn");
        } else {
            tracing::info!("stopping: FRR keeps running and keeps what it announces");
        }
        // FRR's container, if it is stopping too, waits for this.
        let done = self.frr_dir.join(daemons::SPEAKER_DONE);
        if let Err(e) = std::fs::write(&done, b"") {
            tracing::warn!(file = %done.display(), error = %e, "cannot tell FRR that the speaker is done");
        }
    }

    fn mode(&self) -> &'static str {
        "bgp"
    }

    fn bgp_peers(&self) -> Vec<BgpPeerStatus> {
        let mut peers: Vec<BgpPeerStatus> = self
            .configured
            .iter()
            .map(|session| {
                let state = self.states.get(&session.address);
                BgpPeerStatus {
                    name: session.name.clone(),
                    address: session.address.to_string(),
                    session: state.map_or_else(|| "Unknown".into(), |s| s.state.clone()),
                    bfd: session
                        .bfd_profile
                        .as_ref()
                        .map(|_| self.bfd.get(&session.address).cloned().unwrap_or_else(|| "unknown".into())),
                    message: session_message(state, session.with_password),
                    routes: u32::try_from(self.routes.by_peer.get(&session.name).map_or(0, |r| r.len()))
                        .unwrap_or(u32::MAX),
                }
            })
            .collect();
        peers.extend(self.refused.iter().map(|(name, reason)| BgpPeerStatus {
            name: name.clone(),
            session: "Refused".into(),
            message: Some(reason.clone()),
            ..Default::default()
        }));
        peers
    }
}
