//! The announcer's hands on the wire: one ARP and one Neighbor Discovery packet socket per usable
//! interface. It answers ARP requests and Neighbor Solicitations for the VIPs owned on that interface,
//! sends the gratuitous ARPs and unsolicited NAs the announcer asks for, joins solicited-node groups, and
//! reports frames from another MAC that claim an owned VIP.
//!
//! The owned set is swapped in as a whole by the main loop; receive tasks read it per frame, so answering
//! stops the moment ownership is dropped. Claims by other MACs are also reported for the VIPs the main
//! loop watches (being probed before a takeover, or deferred), and probes for them are sent on request.
//! Frames the kernel received more than [`frames::STALE_FRAME_AGE`] before they are read (queued while
//! the process was stopped) are dropped unread.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, RwLock};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::l2::announcer::Action;
use crate::l2::frames::arp::{self, ArpFrame};
use crate::l2::frames::ndp::{self, NdFrame};
use crate::l2::frames::{self, Mac};
use crate::l2::packet_socket::{BoundSocket, ETHERTYPE_ARP, ETHERTYPE_IPV6, PacketSocket};
use crate::links::Inventory;
use crate::metrics::{FamilyLabel, Metrics};

/// Another host claims a VIP we own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub vip: IpAddr,
    pub mac: Mac,
    pub interface: String,
}

#[derive(Debug, Default, Clone)]
struct Owned {
    v4: BTreeSet<Ipv4Addr>,
    v6: BTreeSet<Ipv6Addr>,
    /// Not answered, but claims for them from other MACs are reported.
    watched_v4: BTreeSet<Ipv4Addr>,
    watched_v6: BTreeSet<Ipv6Addr>,
}

impl Owned {
    fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty() && self.watched_v4.is_empty() && self.watched_v6.is_empty()
    }
}

type OwnedByInterface = Arc<RwLock<BTreeMap<String, Owned>>>;

struct Port {
    mac: Mac,
    link_local: Option<Ipv6Addr>,
    arp: Arc<PacketSocket>,
    nd: Arc<PacketSocket>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Port {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

pub struct Responder {
    ports: BTreeMap<String, Port>,
    owned: OwnedByInterface,
    our_macs: Arc<RwLock<BTreeSet<Mac>>>,
    /// Solicited-node groups the announcer asked for, per interface: re-joined when a socket is reopened.
    groups: BTreeMap<String, BTreeSet<Mac>>,
    conflicts: mpsc::UnboundedSender<Conflict>,
    metrics: Metrics,
}

impl Responder {
    pub fn new(conflicts: mpsc::UnboundedSender<Conflict>, metrics: Metrics) -> Self {
        Self {
            ports: BTreeMap::new(),
            owned: Arc::default(),
            our_macs: Arc::default(),
            groups: BTreeMap::new(),
            conflicts,
            metrics,
        }
    }

    /// Opens sockets on interfaces that became usable and closes those of interfaces that are gone.
    pub fn sync(&mut self, inventory: &Inventory) {
        let usable: BTreeMap<&str, &crate::links::Link> =
            inventory.links.iter().filter(|l| l.usable()).map(|l| (l.name.as_str(), l)).collect();
        self.ports.retain(|name, port| {
            usable.get(name.as_str()).is_some_and(|l| l.mac == Some(port.mac) && l.link_local() == port.link_local)
        });
        for (name, link) in &usable {
            if self.ports.contains_key(*name) {
                continue;
            }
            let Some(mac) = link.mac else { continue };
            match self.open(name, mac, link.link_local()) {
                Ok(port) => {
                    tracing::info!(interface = %name, %mac, "listening for ARP and Neighbor Solicitations");
                    self.ports.insert(name.to_string(), port);
                }
                Err(e) => tracing::error!(interface = %name, error = %e, "cannot open packet sockets (CAP_NET_RAW?)"),
            }
        }
        let macs: BTreeSet<Mac> = inventory.links.iter().filter_map(|l| l.mac).collect();
        *crate::locks::write(&self.our_macs, "own MACs") = macs;
    }

    fn open(&self, interface: &str, mac: Mac, link_local: Option<Ipv6Addr>) -> std::io::Result<Port> {
        let arp = BoundSocket::open(interface, ETHERTYPE_ARP)?;
        let nd = BoundSocket::open(interface, ETHERTYPE_IPV6)?;
        nd.only_neighbor_discovery()?;
        for group in self.groups.get(interface).into_iter().flatten() {
            nd.join_multicast(*group)?;
        }
        let arp = Arc::new(arp.into_async()?);
        let nd = Arc::new(nd.into_async()?);
        let reactions: [(Arc<PacketSocket>, FamilyLabel, React); 2] =
            [(arp.clone(), FamilyLabel::IPV4, react_arp), (nd.clone(), FamilyLabel::IPV6, react_nd)];
        let tasks = reactions
            .into_iter()
            .map(|(socket, family, react)| {
                let (owned, our_macs, conflicts, metrics) =
                    (self.owned.clone(), self.our_macs.clone(), self.conflicts.clone(), self.metrics.clone());
                tokio::spawn(serve(socket, family, react, mac, Shared { owned, our_macs, conflicts, metrics }))
            })
            .collect();
        Ok(Port { mac, link_local, arp, nd, tasks })
    }

    /// What is answered from now on: VIP → interfaces; and the VIPs whose claims by others are reported
    /// without answering for them.
    pub fn set_owned(&self, held: &crate::plan::Placement, watched: &crate::plan::Placement) {
        let mut by_interface: BTreeMap<String, Owned> = BTreeMap::new();
        for (vip, interfaces) in held {
            for interface in interfaces.iter() {
                let owned = by_interface.entry(interface.clone()).or_default();
                match vip {
                    IpAddr::V4(v4) => owned.v4.insert(*v4),
                    IpAddr::V6(v6) => owned.v6.insert(*v6),
                };
            }
        }
        for (vip, interfaces) in watched {
            for interface in interfaces.iter() {
                let owned = by_interface.entry(interface.clone()).or_default();
                match vip {
                    IpAddr::V4(v4) => owned.watched_v4.insert(*v4),
                    IpAddr::V6(v6) => owned.watched_v6.insert(*v6),
                };
            }
        }
        *crate::locks::write(&self.owned, "answered VIPs") = by_interface;
    }

    /// Carries out the announcer's actions.
    pub async fn execute(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Announce { vip, interface } => self.announce(vip, &interface).await,
                Action::Join { interface, group } => {
                    self.groups.entry(interface.clone()).or_default().insert(group);
                    if let Some(port) = self.ports.get(&interface)
                        && let Err(e) = port.nd.join_multicast(group)
                    {
                        tracing::warn!(%interface, %group, error = %e, "joining a solicited-node group failed");
                    }
                }
                Action::Leave { interface, group } => {
                    if let Some(groups) = self.groups.get_mut(&interface) {
                        groups.remove(&group);
                    }
                    if let Some(port) = self.ports.get(&interface) {
                        let _ = port.nd.leave_multicast(group);
                    }
                }
            }
        }
    }

    /// Sends one probe for `vip` out of `interface`: whoever holds it answers, and that answer comes back as
    /// a [`Conflict`] (the VIP must be watched).
    pub async fn probe(&self, vip: IpAddr, interface: &str) {
        let Some(port) = self.ports.get(interface) else {
            tracing::warn!(%vip, %interface, "cannot probe: no socket on the interface");
            return;
        };
        let result = match vip {
            IpAddr::V4(v4) => port.arp.send(&arp::probe(v4, port.mac).encode()).await,
            IpAddr::V6(v6) => port.nd.send(&ndp::probe(v6, port.mac).encode()).await,
        };
        match result {
            Ok(()) => self.metrics.probes_sent.get_or_create(&FamilyLabel::of(vip)).inc(),
            Err(e) => {
                self.metrics.send_errors.inc();
                tracing::warn!(%vip, %interface, error = %e, "probe not sent");
                0
            }
        };
    }

    async fn announce(&self, vip: IpAddr, interface: &str) {
        let Some(port) = self.ports.get(interface) else {
            tracing::warn!(%vip, %interface, "cannot announce: no socket on the interface");
            return;
        };
        let result = match vip {
            IpAddr::V4(v4) => {
                let [request, reply] = arp::gratuitous(v4, port.mac);
                match port.arp.send(&request.encode()).await {
                    Ok(()) => port.arp.send(&reply.encode()).await,
                    Err(e) => Err(e),
                }
            }
            IpAddr::V6(v6) => match port.link_local {
                Some(source) => port.nd.send(&ndp::unsolicited(v6, port.mac, source).encode()).await,
                None => {
                    tracing::warn!(%vip, %interface, "cannot send an unsolicited NA: the interface has no IPv6 link-local address");
                    return;
                }
            },
        };
        match result {
            Ok(()) => self.metrics.announcements_sent.get_or_create(&FamilyLabel::of(vip)).inc(),
            Err(e) => {
                self.metrics.send_errors.inc();
                tracing::warn!(%vip, %interface, error = %e, "announcement not sent");
                0
            }
        };
    }
}

fn macs(ours: &Arc<RwLock<BTreeSet<Mac>>>) -> BTreeSet<Mac> {
    crate::locks::read(ours, "own MACs").clone()
}

/// What one received frame calls for.
struct Reaction {
    conflict: Option<(IpAddr, Mac)>,
    reply: Option<Vec<u8>>,
}

/// The ARP side: requests for owned IPv4 VIPs are answered; replies or requests claiming one are conflicts.
fn react_arp(frame: &[u8], owned: &Owned, our_mac: Mac, our_macs: &BTreeSet<Mac>) -> Option<Reaction> {
    let frame = ArpFrame::parse(frame).ok()?;
    let claimed =
        arp::conflict(&frame, &owned.v4, our_macs).or_else(|| arp::conflict(&frame, &owned.watched_v4, our_macs));
    Some(Reaction {
        conflict: claimed.map(|(vip, mac)| (IpAddr::V4(vip), mac)),
        reply: arp::answer(&frame, &owned.v4, our_mac).map(|r| r.encode().to_vec()),
    })
}

/// The NDP side. Parsing checks the hop limit (255) and the checksum: anything else is not Neighbor Discovery.
fn react_nd(frame: &[u8], owned: &Owned, our_mac: Mac, our_macs: &BTreeSet<Mac>) -> Option<Reaction> {
    let frame = NdFrame::parse(frame).ok()?;
    let claimed =
        ndp::conflict(&frame, &owned.v6, our_macs).or_else(|| ndp::conflict(&frame, &owned.watched_v6, our_macs));
    Some(Reaction {
        conflict: claimed.map(|(vip, mac)| (IpAddr::V6(vip), mac)),
        reply: ndp::answer(&frame, &owned.v6, our_mac).map(|r| r.encode()),
    })
}

type React = fn(&[u8], &Owned, Mac, &BTreeSet<Mac>) -> Option<Reaction>;

/// What every receive task shares with the responder.
struct Shared {
    owned: OwnedByInterface,
    our_macs: Arc<RwLock<BTreeSet<Mac>>>,
    conflicts: mpsc::UnboundedSender<Conflict>,
    metrics: Metrics,
}

/// Receives frames on `socket` until the task is aborted, and answers or reports them with `react`.
async fn serve(socket: Arc<PacketSocket>, family: FamilyLabel, react: React, mac: Mac, shared: Shared) {
    let Shared { owned, our_macs, conflicts, metrics } = shared;
    let interface = socket.interface().to_string();
    loop {
        let frame = match socket.recv_stamped().await {
            Ok((_, Some(received))) if frames::is_stale(received, std::time::SystemTime::now()) => {
                metrics.stale_frames.inc();
                continue;
            }
            Ok((frame, _)) => frame,
            Err(e) => {
                tracing::warn!(%interface, family = family.family, error = %e, "packet socket receive failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let mine = crate::locks::read(&owned, "answered VIPs").get(&interface).cloned().unwrap_or_default();
        if mine.is_empty() {
            continue;
        }
        let Some(reaction) = react(&frame, &mine, mac, &macs(&our_macs)) else { continue };
        if let Some((vip, other)) = reaction.conflict {
            metrics.conflicts.get_or_create(&family).inc();
            let _ = conflicts.send(Conflict { vip, mac: other, interface: interface.clone() });
        }
        if let Some(reply) = reaction.reply {
            match socket.send(&reply).await {
                Ok(()) => metrics.requests_answered.get_or_create(&family).inc(),
                Err(_) => metrics.send_errors.inc(),
            };
        }
    }
}
