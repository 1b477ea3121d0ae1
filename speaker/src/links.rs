//! Reads the node's interface inventory ([`crate::inventory`]) from the kernel with rtnetlink, and tells when
//! links, addresses or routes change so it is read again.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;

use ipnet::IpNet;

use futures::{StreamExt, TryStreamExt};
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute};
use rtnetlink::{MulticastGroup, RouteMessageBuilder};
use tokio::sync::mpsc;

pub use crate::inventory::{Inventory, Link};
use crate::mac::Mac;

/// Reads the current links, addresses and default routes.
pub async fn scan() -> std::io::Result<Inventory> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    let connection = tokio::spawn(connection);
    let result = scan_with(&handle).await.map_err(|e| std::io::Error::other(format!("netlink: {e}")));
    connection.abort();
    result
}

async fn scan_with(handle: &rtnetlink::Handle) -> Result<Inventory, rtnetlink::Error> {
    let mut links: Vec<Link> = handle.link().get().execute().map_ok(link_of).try_collect().await?;
    let mut addresses = handle.address().get().execute();
    while let Some(message) = addresses.try_next().await? {
        let prefix = message.header.prefix_len;
        let Some(link) = links.iter_mut().find(|l| l.index == message.header.index) else { continue };
        for attribute in &message.attributes {
            if let AddressAttribute::Address(ip) = attribute
                && let Ok(net) = IpNet::new(*ip, prefix)
            {
                link.addresses.push(net);
            }
        }
    }
    let mut default_route = BTreeMap::new();
    for (v4, request) in [
        (true, RouteMessageBuilder::<std::net::Ipv4Addr>::new().build()),
        (false, RouteMessageBuilder::<Ipv6Addr>::new().build()),
    ] {
        let mut routes = handle.route().get(request).execute();
        while let Some(route) = routes.try_next().await? {
            // The main table's default route; a prefix length of 0 with a destination of 0 or none.
            if route.header.destination_prefix_length != 0 || route.header.table != 254 {
                continue;
            }
            let is_default = route.attributes.iter().all(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(d)) => d.is_unspecified(),
                RouteAttribute::Destination(RouteAddress::Inet6(d)) => d.is_unspecified(),
                _ => true,
            });
            let oif =
                route.attributes.iter().find_map(|a| if let RouteAttribute::Oif(i) = a { Some(*i) } else { None });
            if let (true, Some(oif)) = (is_default, oif)
                && let Some(link) = links.iter().find(|l| l.index == oif)
            {
                default_route.entry(v4).or_insert_with(|| link.name.clone());
            }
        }
    }
    links.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Inventory { links, default_route })
}

fn link_of(message: LinkMessage) -> Link {
    let flags = message.header.flags;
    let mut link = Link {
        name: String::new(),
        index: message.header.index,
        mac: None,
        up: flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::Running),
        broadcast: flags.contains(LinkFlags::Broadcast),
        loopback: flags.contains(LinkFlags::Loopback),
        kind: None,
        addresses: Vec::new(),
    };
    for attribute in message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name = name,
            LinkAttribute::Address(bytes) => link.mac = <[u8; 6]>::try_from(bytes.as_slice()).ok().map(Mac),
            LinkAttribute::LinkInfo(infos) => {
                link.kind = infos.into_iter().find_map(|i| match i {
                    LinkInfo::Kind(kind) => Some(kind_name(&kind)),
                    _ => None,
                })
            }
            _ => {}
        }
    }
    link
}

fn kind_name(kind: &InfoKind) -> String {
    kind.to_string().to_lowercase()
}

/// Sends `()` whenever a link, an address or a route changes (bursts are not coalesced here).
pub fn watch_changes() -> std::io::Result<mpsc::UnboundedReceiver<()>> {
    let (connection, _handle, mut messages) = rtnetlink::new_multicast_connection(&[
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Route,
    ])?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(connection);
    tokio::spawn(async move {
        while messages.next().await.is_some() {
            if tx.send(()).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}
