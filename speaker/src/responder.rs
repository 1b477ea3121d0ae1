//! The announcer's hands on the wire: one ARP and one Neighbor Discovery packet socket per usable
//! interface. It answers ARP requests and Neighbor Solicitations for the VIPs owned on that interface,
//! sends the gratuitous ARPs and unsolicited NAs the announcer asks for, joins solicited-node groups, and
//! reports frames from another MAC that claim an owned VIP.
//!
//! The owned set is swapped in as a whole by the main loop; receive tasks read it per frame, so answering
//! stops the moment ownership is dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, RwLock};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::announcer::Action;
use crate::frames::Mac;
use crate::frames::arp::{self, ArpFrame};
use crate::frames::ndp::{self, NdFrame};
use crate::links::Inventory;
use crate::metrics::{FamilyLabel, Metrics};
use crate::packet_socket::{BoundSocket, ETHERTYPE_ARP, ETHERTYPE_IPV6, PacketSocket};

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
        if let Ok(mut ours) = self.our_macs.write() {
            *ours = macs;
        }
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
        let tasks = vec![
            tokio::spawn(answer_arp(
                arp.clone(),
                mac,
                self.owned.clone(),
                self.our_macs.clone(),
                self.conflicts.clone(),
                self.metrics.clone(),
            )),
            tokio::spawn(answer_nd(
                nd.clone(),
                mac,
                self.owned.clone(),
                self.our_macs.clone(),
                self.conflicts.clone(),
                self.metrics.clone(),
            )),
        ];
        Ok(Port { mac, link_local, arp, nd, tasks })
    }

    /// What is answered from now on: VIP → interfaces.
    pub fn set_owned<'a>(&self, held: impl IntoIterator<Item = (&'a IpAddr, &'a BTreeSet<String>)>) {
        let mut by_interface: BTreeMap<String, Owned> = BTreeMap::new();
        for (vip, interfaces) in held {
            for interface in interfaces {
                let owned = by_interface.entry(interface.clone()).or_default();
                match vip {
                    IpAddr::V4(v4) => owned.v4.insert(*v4),
                    IpAddr::V6(v6) => owned.v6.insert(*v6),
                };
            }
        }
        if let Ok(mut owned) = self.owned.write() {
            *owned = by_interface;
        }
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

fn owned_v4(owned: &OwnedByInterface, interface: &str) -> BTreeSet<Ipv4Addr> {
    owned.read().ok().and_then(|o| o.get(interface).map(|x| x.v4.clone())).unwrap_or_default()
}

fn owned_v6(owned: &OwnedByInterface, interface: &str) -> BTreeSet<Ipv6Addr> {
    owned.read().ok().and_then(|o| o.get(interface).map(|x| x.v6.clone())).unwrap_or_default()
}

fn macs(ours: &Arc<RwLock<BTreeSet<Mac>>>) -> BTreeSet<Mac> {
    ours.read().map(|m| m.clone()).unwrap_or_default()
}

async fn answer_arp(
    socket: Arc<PacketSocket>,
    mac: Mac,
    owned: OwnedByInterface,
    our_macs: Arc<RwLock<BTreeSet<Mac>>>,
    conflicts: mpsc::UnboundedSender<Conflict>,
    metrics: Metrics,
) {
    let interface = socket.interface().to_string();
    loop {
        let frame = match socket.recv().await {
            Ok(frame) => frame,
            Err(e) => {
                tracing::warn!(%interface, error = %e, "ARP socket receive failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(frame) = ArpFrame::parse(&frame) else { continue };
        let mine = owned_v4(&owned, &interface);
        if mine.is_empty() {
            continue;
        }
        if let Some((vip, other)) = arp::conflict(&frame, &mine, &macs(&our_macs)) {
            metrics.conflicts.get_or_create(&FamilyLabel::IPV4).inc();
            let _ = conflicts.send(Conflict { vip: IpAddr::V4(vip), mac: other, interface: interface.clone() });
        }
        if let Some(reply) = arp::answer(&frame, &mine, mac) {
            match socket.send(&reply.encode()).await {
                Ok(()) => metrics.requests_answered.get_or_create(&FamilyLabel::IPV4).inc(),
                Err(_) => metrics.send_errors.inc(),
            };
        }
    }
}

async fn answer_nd(
    socket: Arc<PacketSocket>,
    mac: Mac,
    owned: OwnedByInterface,
    our_macs: Arc<RwLock<BTreeSet<Mac>>>,
    conflicts: mpsc::UnboundedSender<Conflict>,
    metrics: Metrics,
) {
    let interface = socket.interface().to_string();
    loop {
        let frame = match socket.recv().await {
            Ok(frame) => frame,
            Err(e) => {
                tracing::warn!(%interface, error = %e, "Neighbor Discovery socket receive failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        // Parsing checks the hop limit (255) and the checksum: anything else is not Neighbor Discovery.
        let Ok(frame) = NdFrame::parse(&frame) else { continue };
        let mine = owned_v6(&owned, &interface);
        if mine.is_empty() {
            continue;
        }
        if let Some((vip, other)) = ndp::conflict(&frame, &mine, &macs(&our_macs)) {
            metrics.conflicts.get_or_create(&FamilyLabel::IPV6).inc();
            let _ = conflicts.send(Conflict { vip: IpAddr::V6(vip), mac: other, interface: interface.clone() });
        }
        if let Some(reply) = ndp::answer(&frame, &mine, mac) {
            match socket.send(&reply.encode()).await {
                Ok(()) => metrics.requests_answered.get_or_create(&FamilyLabel::IPV6).inc(),
                Err(_) => metrics.send_errors.inc(),
            };
        }
    }
}
