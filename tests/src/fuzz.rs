//! A mutation fuzzer for everything the speakers parse from the wire, runnable on stable Rust (cargo-fuzz
//! needs nightly, which this machine's registries do not serve). It starts from valid inputs (frames as
//! arping and ndisc6 send them, gossip datagrams foca produced, pool entries), mutates them (bit flips,
//! byte overwrites, insertions, deletions, truncations, splices) and checks, for every input:
//! - no parser panics;
//! - whatever parses re-encodes to something that parses back to the same value (ARP, NDP);
//! - a gossip state machine fed the input (as if it came with a valid tag) neither panics nor wedges;
//! - a parsed pool entry is an ordered range of one family.
//!
//! `cargo xtask fuzz [TARGET] [--seconds N]` runs it for a while; the test suite runs every target for a
//! fixed number of inputs with a fixed seed.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use ferrolb_speaker::l2::frames::Mac;
use ferrolb_speaker::l2::frames::arp::{self, ArpFrame};
use ferrolb_speaker::l2::frames::ndp::{self, NdFrame};
use ferrolb_speaker::l2::gossip_auth::SharedKey;
use ferrolb_speaker::l2::membership::{self, MemberId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Arp,
    Ndp,
    Gossip,
    AddressEntry,
}

impl Target {
    pub const ALL: [Target; 4] = [Target::Arp, Target::Ndp, Target::Gossip, Target::AddressEntry];

    pub fn name(self) -> &'static str {
        match self {
            Target::Arp => "arp",
            Target::Ndp => "ndp",
            Target::Gossip => "gossip",
            Target::AddressEntry => "address-entry",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// How long to run: a number of inputs, or a time budget.
#[derive(Debug, Clone, Copy)]
pub enum Budget {
    Inputs(u64),
    Time(Duration),
}

#[derive(Debug)]
pub struct Stats {
    pub inputs: u64,
    /// Inputs that parsed (or, for gossip, were accepted without error).
    pub accepted: u64,
    pub elapsed: Duration,
}

/// An input that broke an invariant or panicked.
#[derive(Debug)]
pub struct Crash {
    pub target: &'static str,
    pub input: Vec<u8>,
    pub what: String,
}

impl std::fmt::Display for Crash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hex: String = self.input.iter().map(|b| format!("{b:02x}")).collect();
        write!(f, "{} target: {} on input {hex}", self.target, self.what)
    }
}

/// xorshift64*: deterministic, fast, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut input = seeds[rng.below(seeds.len())].clone();
    for _ in 0..=rng.below(4) {
        let len = input.len();
        match rng.below(7) {
            0 if len > 0 => {
                let at = rng.below(len);
                input[at] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let at = rng.below(len);
                input[at] = [0, 0xff, 0x7f, 0x80, 1, 255, rng.byte()][rng.below(7)];
            }
            2 => {
                let at = rng.below(len + 1);
                let count = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..count).map(|_| rng.byte()).collect();
                input.splice(at..at, bytes);
            }
            3 if len > 0 => {
                let at = rng.below(len);
                let end = (at + 1 + rng.below(16)).min(len);
                input.drain(at..end);
            }
            4 => input.truncate(rng.below(len + 1)),
            5 if len > 1 => {
                let at = rng.below(len);
                let end = (at + 1 + rng.below(32)).min(len);
                let chunk = input[at..end].to_vec();
                let to = rng.below(len);
                input.splice(to..to, chunk);
            }
            _ => {
                let other = &seeds[rng.below(seeds.len())];
                let cut = rng.below(input.len().min(other.len()) + 1);
                input.truncate(cut);
                input.extend_from_slice(&other[cut.min(other.len())..]);
            }
        }
    }
    input
}

const OURS: Mac = Mac([0x02, 0xf0, 0, 0, 0, 0x0b]);
const CLIENT: Mac = Mac([0x02, 0xf0, 0, 0, 0, 0x02]);

fn arp_seeds() -> Vec<Vec<u8>> {
    let vip = Ipv4Addr::new(192, 0, 2, 200);
    let mut seeds: Vec<Vec<u8>> = arp::gratuitous(vip, OURS).iter().map(|f| f.encode().to_vec()).collect();
    let request = ArpFrame {
        eth_dst: Mac::BROADCAST,
        eth_src: CLIENT,
        operation: arp::Operation::Request,
        sender_mac: CLIENT,
        sender_ip: Ipv4Addr::new(192, 0, 2, 2),
        target_mac: Mac([0; 6]),
        target_ip: vip,
    };
    seeds.push(request.encode().to_vec());
    seeds
}

fn ndp_seeds() -> Vec<Vec<u8>> {
    let vip: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x200);
    let client: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
    let group = ndp::solicited_node_group(vip);
    let solicitation = NdFrame {
        eth_dst: ndp::multicast_mac(group),
        eth_src: CLIENT,
        ip_src: client,
        ip_dst: group,
        kind: ndp::Kind::Solicitation,
        target: vip,
        link_layer: Some(CLIENT),
    };
    let link_local = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
    let mut seeds = vec![solicitation.encode(), ndp::unsolicited(vip, OURS, link_local).encode()];
    if let Some(answer) = ndp::answer(&solicitation, &BTreeSet::from([vip]), OURS) {
        seeds.push(answer.encode());
    }
    seeds
}

fn member(node: &str, port: u16) -> MemberId {
    MemberId {
        addr: (Ipv4Addr::new(192, 0, 2, 11), port).into(),
        node: node.into(),
        interfaces: vec!["eth0".into()],
        bump: 1,
        draining: false,
    }
}

/// Datagrams (without their tag) as foca sends them to node-a (the fuzzed core's identity): announce,
/// pings, acks, gossip.
fn gossip_seeds() -> Vec<Vec<u8>> {
    let settings = membership::Settings::default();
    let (a_id, b_id) = (member("node-a", 1), member("node-b", 2));
    let mut a = membership::core(a_id.clone(), &settings);
    let mut b = membership::core(b_id, &settings);
    let mut seeds = Vec::new();
    let mut runtime_a = foca::AccumulatingRuntime::new();
    let mut runtime_b = foca::AccumulatingRuntime::new();
    let _ = b.announce(a_id, &mut runtime_b);
    // A few rounds of back and forth, keeping every datagram.
    for _ in 0..4 {
        while let Some((_, data)) = runtime_b.to_send() {
            seeds.push(data.to_vec());
            let _ = a.handle_data(&data, &mut runtime_a);
        }
        while let Some((_, data)) = runtime_a.to_send() {
            let _ = b.handle_data(&data, &mut runtime_b);
        }
        let _ = a.gossip(&mut runtime_a);
        let _ = b.gossip(&mut runtime_b);
    }
    if seeds.is_empty() {
        seeds.push(vec![0; 16]);
    }
    seeds
}

fn entry_seeds() -> Vec<Vec<u8>> {
    ["192.0.2.0/28", "192.0.2.10-192.0.2.20", "2001:db8::/120", "2001:db8::1-2001:db8::ff", "203.0.113.7", "::/0"]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect()
}

/// Checks one input; `Ok(accepted)` or the broken invariant.
fn check(target: Target, input: &[u8], gossip: &mut Option<membership::Core>) -> Result<bool, String> {
    match target {
        Target::Arp => {
            let Ok(frame) = ArpFrame::parse(input) else { return Ok(false) };
            let again =
                ArpFrame::parse(&frame.encode()).map_err(|e| format!("re-encoded frame does not parse: {e}"))?;
            if again != frame {
                return Err(format!("round trip changed the frame: {frame:?} -> {again:?}"));
            }
            let owned = BTreeSet::from([frame.target_ip, frame.sender_ip]);
            let _ = arp::answer(&frame, &owned, OURS);
            let _ = arp::conflict(&frame, &owned, &BTreeSet::from([OURS]));
            Ok(true)
        }
        Target::Ndp => {
            let Ok(frame) = NdFrame::parse(input) else { return Ok(false) };
            let again = NdFrame::parse(&frame.encode()).map_err(|e| format!("re-encoded frame does not parse: {e}"))?;
            if again != frame {
                return Err(format!("round trip changed the frame: {frame:?} -> {again:?}"));
            }
            let owned = BTreeSet::from([frame.target]);
            let _ = ndp::answer(&frame, &owned, OURS);
            let _ = ndp::conflict(&frame, &owned, &BTreeSet::from([OURS]));
            Ok(true)
        }
        Target::Gossip => {
            // Unauthenticated bytes never reach foca...
            let key = SharedKey::from_file_contents(b"a key for the fuzzer only").map_err(|e| e.to_string())?;
            if key.verify(input).is_ok() {
                return Err("a mutated datagram passed authentication".into());
            }
            // The freshness check reads the header only after the tag verified; whatever the bytes, no panic.
            let _ = ferrolb_speaker::l2::gossip_auth::Opener::new(key).open(input, std::time::SystemTime::now());
            // ...but a peer holding the key can send anything: foca must cope.
            let core =
                gossip.get_or_insert_with(|| membership::core(member("node-a", 1), &membership::Settings::default()));
            let mut runtime = foca::AccumulatingRuntime::new();
            let accepted = core.handle_data(input, &mut runtime).is_ok();
            while runtime.to_send().is_some() {}
            while runtime.to_schedule().is_some() {}
            while runtime.to_notify().is_some() {}
            Ok(accepted)
        }
        Target::AddressEntry => {
            let text = String::from_utf8_lossy(input);
            let Ok((first, last)) = ferrolb_crds::address::parse_entry(&text) else { return Ok(false) };
            if first > last || first.is_ipv4() != last.is_ipv4() {
                return Err(format!("{text:?} parsed to {first}..{last}"));
            }
            Ok(true)
        }
    }
}

/// Runs `target` within `budget` from `seed`; the first crash ends the run.
pub fn run(target: Target, budget: Budget, seed: u64) -> Result<Stats, Crash> {
    let seeds = match target {
        Target::Arp => arp_seeds(),
        Target::Ndp => ndp_seeds(),
        Target::Gossip => gossip_seeds(),
        Target::AddressEntry => entry_seeds(),
    };
    let mut rng = Rng(seed | 1);
    let mut gossip = None;
    let started = Instant::now();
    let (mut inputs, mut accepted) = (0u64, 0u64);
    let done = |inputs: u64| match budget {
        Budget::Inputs(n) => inputs >= n,
        Budget::Time(t) => inputs.is_multiple_of(256) && started.elapsed() >= t,
    };
    // Seeds first: they must be accepted (gossip: the first, an announce; later ones may depend on state the
    // fuzzed core does not have), or the harness would test nothing.
    for (i, seed_input) in seeds.iter().enumerate() {
        let required = target != Target::Gossip || i == 0;
        if required && !matches!(check(target, seed_input, &mut gossip), Ok(true)) {
            return Err(Crash {
                target: target.name(),
                input: seed_input.clone(),
                what: "a seed input is not accepted".into(),
            });
        }
    }
    while !done(inputs) {
        let input = mutate(&mut rng, &seeds);
        inputs += 1;
        // A wedged gossip core (it accumulates members without bound) is replaced now and then.
        if inputs.is_multiple_of(4096) {
            gossip = None;
        }
        match std::panic::catch_unwind(AssertUnwindSafe(|| check(target, &input, &mut gossip))) {
            Ok(Ok(true)) => accepted += 1,
            Ok(Ok(false)) => {}
            Ok(Err(what)) => return Err(Crash { target: target.name(), input, what }),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic".into());
                return Err(Crash { target: target.name(), input, what: format!("panicked: {what}") });
            }
        }
    }
    Ok(Stats { inputs, accepted, elapsed: started.elapsed() })
}
