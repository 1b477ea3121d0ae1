//! The speaker's frame and socket layers on a real LAN of namespaces: a responder made of them answers ARP
//! and Neighbor Solicitations for a VIP, and the client's own kernel, arping, ndisc6 and curl then reach the
//! node through it. (The speaker binary, with election and gossip, builds on exactly these parts.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed step should stop the test, loudly

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use ferrolb_e2e::netlab::{DEFAULT_POOL_V4, DEFAULT_POOL_V6, LabSpec};
use ferrolb_e2e::{Lab, names, netns};
use ferrolb_speaker::l2::frames::Mac;
use ferrolb_speaker::l2::frames::arp::{self, ArpFrame};
use ferrolb_speaker::l2::frames::ndp::{self, NdFrame, multicast_mac, solicited_node_group};
use ferrolb_speaker::l2::packet_socket::{BoundSocket, ETHERTYPE_ARP, ETHERTYPE_IPV6};

const VIP4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 200);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x200);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_responder_on_packet_sockets_makes_a_vip_reachable_on_both_families() {
    let lab = Lab::start(LabSpec {
        prefix: names::unique_lab_prefix(),
        nodes: 2,
        local_prefixes: vec![DEFAULT_POOL_V4.into(), DEFAULT_POOL_V6.into()],
        api_port: None,
        pod_network: false,
    })
    .unwrap();
    let node = lab.nodes()[1].clone();
    let mac: Mac = node.mac.parse().unwrap();

    // Nothing announces the VIP yet.
    assert_eq!(lab.client_curl(&format!("http://{VIP4}/"), 2).unwrap(), None);

    let arp_socket =
        netns::in_netns(&node.netns, || BoundSocket::open("eth0", ETHERTYPE_ARP)).unwrap().into_async().unwrap();
    let nd_socket = netns::in_netns(&node.netns, || {
        let socket = BoundSocket::open("eth0", ETHERTYPE_IPV6)?;
        socket.join_multicast(multicast_mac(solicited_node_group(VIP6)))?;
        Ok(socket)
    })
    .unwrap()
    .into_async()
    .unwrap();
    let owned4 = BTreeSet::from([VIP4]);
    let owned6 = BTreeSet::from([VIP6]);
    let arp_responder = tokio::spawn(async move {
        loop {
            let frame = arp_socket.recv().await.unwrap();
            if let Ok(request) = ArpFrame::parse(&frame)
                && let Some(reply) = arp::answer(&request, &owned4, mac)
            {
                arp_socket.send(&reply.encode()).await.unwrap();
            }
        }
    });
    let nd_responder = tokio::spawn(async move {
        loop {
            let frame = nd_socket.recv().await.unwrap();
            if let Ok(solicitation) = NdFrame::parse(&frame)
                && let Some(advertisement) = ndp::answer(&solicitation, &owned6, mac)
            {
                nd_socket.send(&advertisement.encode()).await.unwrap();
            }
        }
    });

    let client = lab.client().interface.clone();
    let arping = lab.client_exec("arping", &["-c", "2", "-w", "3", "-i", &client, &VIP4.to_string()]).unwrap();
    let arping_out = String::from_utf8_lossy(&arping.stdout).to_lowercase();
    assert!(arping.status.success(), "no ARP answer for {VIP4}: {arping_out}");
    assert!(arping_out.contains(&node.mac), "answered by the wrong MAC: {arping_out}");
    assert_eq!(lab.client_curl(&format!("http://{VIP4}/"), 5).unwrap().as_deref(), Some(node.name.as_str()));

    let ndisc = lab.client_exec("ndisc6", &["-1", "-r", "3", "-w", "1000", &VIP6.to_string(), &client]).unwrap();
    let ndisc_out = String::from_utf8_lossy(&ndisc.stdout).to_lowercase();
    assert!(ndisc.status.success(), "no NA for {VIP6}: {ndisc_out}");
    assert!(ndisc_out.contains(&node.mac), "answered by the wrong MAC: {ndisc_out}");
    assert_eq!(lab.client_curl(&format!("http://[{VIP6}]/"), 5).unwrap().as_deref(), Some(node.name.as_str()));

    arp_responder.abort();
    nd_responder.abort();
}
