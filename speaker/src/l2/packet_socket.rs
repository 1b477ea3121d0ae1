//! One AF_PACKET socket per interface and EtherType: it only moves whole Ethernet frames in and out, and
//! never interprets them (that is [`crate::l2::frames`]). Bound to one interface so a frame is answered from the
//! interface it arrived on; not promiscuous, and multicast groups are joined explicitly.

#![allow(unsafe_code)] // sockaddr_ll and packet_mreq have no safe constructor; each call says why it is sound.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, SockFilter, Socket, Type};
use tokio::io::unix::AsyncFd;

use crate::l2::frames::Mac;

/// EtherTypes the announcer listens to.
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// Large enough for any frame on a standard-MTU link.
const MAX_FRAME: usize = 1600;
/// linux/sockios.h: the kernel receive time of the last frame read from the socket, as a timespec.
const SIOCGSTAMPNS: libc::c_ulong = 0x8907;

/// A packet socket not yet attached to an async runtime. It is `Send`: create it in the network namespace
/// of its interface (sockets keep the namespace they were created in), then use it anywhere.
#[derive(Debug)]
pub struct BoundSocket {
    socket: Socket,
    interface: String,
    ifindex: u32,
}

impl BoundSocket {
    /// Opens a socket receiving and sending frames of `ethertype` on `interface`.
    pub fn open(interface: &str, ethertype: u16) -> io::Result<Self> {
        let ifindex = nix::net::if_::if_nametoindex(interface).map_err(io::Error::from)?;
        let protocol = i32::from(ethertype.to_be());
        let socket = Socket::new(Domain::PACKET, Type::RAW, Some(Protocol::from(protocol)))?;
        let mut address: libc::sockaddr_ll = zeroed_sockaddr_ll();
        address.sll_family = libc::AF_PACKET as libc::c_ushort;
        address.sll_protocol = ethertype.to_be();
        address.sll_ifindex = i32::try_from(ifindex).map_err(|_| io::Error::other("interface index out of range"))?;
        // SAFETY: `address` is a fully initialised sockaddr_ll and the length passed is its size.
        let rc = unsafe {
            libc::bind(
                socket.as_raw_fd(),
                (&address as *const libc::sockaddr_ll).cast::<libc::sockaddr>(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        socket.set_nonblocking(true)?;
        // The first query turns on receive timestamps for the socket (it fails: nothing received yet).
        let _ = last_receive_time(&socket);
        Ok(Self { socket, interface: interface.to_string(), ifindex })
    }

    /// Receives frames sent to the Ethernet multicast address `group` (e.g. a solicited-node group's).
    pub fn join_multicast(&self, group: Mac) -> io::Result<()> {
        membership(&self.socket, self.ifindex, libc::PACKET_ADD_MEMBERSHIP, group)
    }

    pub fn leave_multicast(&self, group: Mac) -> io::Result<()> {
        membership(&self.socket, self.ifindex, libc::PACKET_DROP_MEMBERSHIP, group)
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// Keeps only Neighbor Solicitations and Advertisements (ICMPv6 types 135 and 136 right after a plain
    /// IPv6 header) on an IPv6 socket, so the node's ordinary IPv6 traffic is never copied to us.
    pub fn only_neighbor_discovery(&self) -> io::Result<()> {
        const LDB_ABS: u16 = 0x30; // BPF_LD | BPF_B | BPF_ABS
        const JEQ: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
        const RET: u16 = 0x06; // BPF_RET | BPF_K
        const NEXT_HEADER: u32 = 14 + 6;
        const ICMPV6_TYPE: u32 = 14 + 40;
        let program = [
            SockFilter::new(LDB_ABS, 0, 0, NEXT_HEADER),
            SockFilter::new(JEQ, 0, 4, 58),
            SockFilter::new(LDB_ABS, 0, 0, ICMPV6_TYPE),
            SockFilter::new(JEQ, 1, 0, 135),
            SockFilter::new(JEQ, 0, 1, 136),
            SockFilter::new(RET, 0, 0, 0xffff),
            SockFilter::new(RET, 0, 0, 0),
        ];
        self.socket.attach_filter(&program)
    }

    /// Attaches the socket to the current tokio runtime.
    pub fn into_async(self) -> io::Result<PacketSocket> {
        // SAFETY: a socket2::Socket owns its descriptor and returns the same one from as_raw_fd for as long
        // as it lives; the AsyncFd owns the Socket, so the descriptor stays open while registered.
        let fd = unsafe { AsyncFd::register(self.socket) }.map_err(|e| io::Error::other(e.to_string()))?;
        Ok(PacketSocket { fd, interface: self.interface, ifindex: self.ifindex })
    }
}

fn membership(socket: &Socket, ifindex: u32, operation: libc::c_int, group: Mac) -> io::Result<()> {
    let mut address = [0u8; 8];
    address[..6].copy_from_slice(&group.0);
    let request = libc::packet_mreq {
        mr_ifindex: i32::try_from(ifindex).map_err(|_| io::Error::other("interface index out of range"))?,
        mr_type: libc::PACKET_MR_MULTICAST as libc::c_ushort,
        mr_alen: 6,
        mr_address: address,
    };
    // SAFETY: `request` is a fully initialised packet_mreq and the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_PACKET,
            operation,
            (&request as *const libc::packet_mreq).cast::<libc::c_void>(),
            std::mem::size_of::<libc::packet_mreq>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// When the kernel received the frame last read from `socket`; `None` if it did not stamp it.
fn last_receive_time(socket: &Socket) -> Option<std::time::SystemTime> {
    let mut stamp = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: SIOCGSTAMPNS writes one timespec to the pointer given, which points to one.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), SIOCGSTAMPNS as _, &mut stamp as *mut libc::timespec) };
    if rc != 0 || stamp.tv_sec <= 0 {
        return None;
    }
    let since_epoch = std::time::Duration::new(u64::try_from(stamp.tv_sec).ok()?, u32::try_from(stamp.tv_nsec).ok()?);
    std::time::UNIX_EPOCH.checked_add(since_epoch)
}

fn zeroed_sockaddr_ll() -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain old data; all-zero bytes are a valid value.
    unsafe { std::mem::zeroed() }
}

/// A bound packet socket driven by tokio.
#[derive(Debug)]
pub struct PacketSocket {
    fd: AsyncFd<Socket>,
    interface: String,
    ifindex: u32,
}

impl PacketSocket {
    pub fn join_multicast(&self, group: Mac) -> io::Result<()> {
        membership(self.fd.get_ref(), self.ifindex, libc::PACKET_ADD_MEMBERSHIP, group)
    }

    pub fn leave_multicast(&self, group: Mac) -> io::Result<()> {
        membership(self.fd.get_ref(), self.ifindex, libc::PACKET_DROP_MEMBERSHIP, group)
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// The next frame received (copied into a fresh buffer).
    pub async fn recv(&self) -> io::Result<Vec<u8>> {
        self.recv_stamped().await.map(|(frame, _)| frame)
    }

    /// The next frame received (copied into a fresh buffer), with the time the kernel received it if known.
    pub async fn recv_stamped(&self) -> io::Result<(Vec<u8>, Option<std::time::SystemTime>)> {
        loop {
            let mut guard = self.fd.readable().await?;
            let mut buffer = [MaybeUninit::<u8>::uninit(); MAX_FRAME];
            // One task reads a socket, so the stamp read right after is this frame's.
            match guard.try_io(|fd| fd.get_ref().recv(&mut buffer).map(|len| (len, last_receive_time(fd.get_ref())))) {
                Ok(Ok((len, received))) => {
                    // SAFETY: recv initialised the first `len` bytes.
                    let bytes = buffer[..len].iter().map(|b| unsafe { b.assume_init() }).collect();
                    return Ok((bytes, received));
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Sends one whole Ethernet frame out of the bound interface.
    pub async fn send(&self, frame: &[u8]) -> io::Result<()> {
        loop {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| fd.get_ref().send(frame)) {
                Ok(result) => return result.map(|_| ()),
                Err(_would_block) => continue,
            }
        }
    }
}
