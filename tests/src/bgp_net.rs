//! BGP mode's additions to a lab: an upstream router running BIRD 2 (ASN 64500, BFD, kernel ECMP) on the
//! node LAN, the client moved behind it on a subnet of its own (so it reaches VIPs only through the routes
//! BGP gave the router), and an FRR (zebra, bgpd, bfdd) per node for its speaker to drive.
//!
//! BIRD is a different BGP implementation from FRR, so every claim is judged by someone else's BGP and by
//! the client's own kernel.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, IoContext, Result};
use crate::netlab::{Lab, LabHost};
use crate::netns;
use crate::process::ManagedProcess;

pub const ROUTER_ASN: u32 = 64500;
pub const NODE_ASN: u32 = 64512;
pub const ROUTER_LAN_IPV4: &str = "192.0.2.1";
pub const ROUTER_LAN_IPV6: &str = "2001:db8::1";
/// The client's own subnet, behind the router.
pub const CLIENT_NET_IPV4: &str = "198.51.100.128/25";
pub const CLIENT_NET_IPV6: &str = "2001:db8:c::/64";
pub const ROUTER_CLIENT_IPV4: &str = "198.51.100.129";
pub const ROUTER_CLIENT_IPV6: &str = "2001:db8:c::1";
pub const BGP_CLIENT_IPV4: &str = "198.51.100.130";
pub const BGP_CLIENT_IPV6: &str = "2001:db8:c::2";
/// The BGP pool's prefixes, routed locally on every node (as kube-proxy does with the Service's external
/// IPs): a packet the router sends a node for a VIP is served there.
pub const BGP_POOL_PREFIXES: [&str; 2] = ["203.0.113.192/26", "2001:db8:b::200/120"];

/// The router namespace and its BIRD. Dropping it stops BIRD and deletes the namespace (and the client's
/// link into it).
pub struct Router {
    pub netns: String,
    pub bird_socket: PathBuf,
    bird: Option<ManagedProcess>,
}

impl Router {
    /// Builds the router on `lab`'s LAN, peering with every node over IPv4 and IPv6, and moves the client
    /// behind it. `dir` holds BIRD's configuration, socket and log.
    pub fn start(lab: &Lab, prefix: &str, dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).context(|| format!("creating {}", dir.display()))?;
        let router = LabHost {
            name: "router".into(),
            netns: format!("{prefix}-router"),
            ipv4: ROUTER_LAN_IPV4.into(),
            ipv6: ROUTER_LAN_IPV6.into(),
            mac: "02:f0:00:00:00:01".into(),
            interface: "eth0".into(),
        };
        // From here on, a failure drops `this`, which deletes the namespace.
        let mut this = Router { netns: router.netns.clone(), bird_socket: dir.join("bird.ctl"), bird: None };
        lab.plug(&router, "rt")?;
        let ns = router.netns.as_str();
        netns::sysctl(
            ns,
            &[
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
                // Without it every IPv4 connection from one client goes to one next hop.
                "net.ipv4.fib_multipath_hash_policy=1",
                "net.ipv6.fib_multipath_hash_policy=1",
            ],
        )?;
        this.move_client_behind(lab)?;
        for node in lab.nodes() {
            let n = node.netns.as_str();
            netns::ip(&["-n", n, "route", "add", CLIENT_NET_IPV4, "via", ROUTER_LAN_IPV4])?;
            netns::ip(&["-n", n, "-6", "route", "add", CLIENT_NET_IPV6, "via", ROUTER_LAN_IPV6])?;
            for prefix in BGP_POOL_PREFIXES {
                let family = if prefix.contains(':') { "-6" } else { "-4" };
                netns::ip(&["-n", n, family, "route", "add", "local", prefix, "dev", "lo", "table", "local"])?;
            }
        }
        let config = dir.join("bird.conf");
        std::fs::write(&config, bird_config(lab.nodes())).context(|| format!("writing {}", config.display()))?;
        let mut command = Command::new(bird_binary()?);
        command.arg("-f").arg("-c").arg(&config).arg("-s").arg(&this.bird_socket);
        this.bird = Some(ManagedProcess::spawn_in_netns("bird", ns, command, &dir.join("bird.log"))?);
        Ok(this)
    }

    /// The client leaves the LAN for a link of its own to the router.
    fn move_client_behind(&self, lab: &Lab) -> Result<()> {
        let client = lab.client().netns.as_str();
        let ns = self.netns.as_str();
        netns::ip(&["-n", client, "link", "del", "eth0"])?;
        netns::ip(&["-n", ns, "link", "add", "eth1", "type", "veth", "peer", "name", "eth0", "netns", client])?;
        netns::sysctl(client, &["net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"])?;
        netns::sysctl(ns, &["net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"])?;
        for (namespace, v4, v6) in [
            (ns, format!("{ROUTER_CLIENT_IPV4}/25"), format!("{ROUTER_CLIENT_IPV6}/64")),
            (client, format!("{BGP_CLIENT_IPV4}/25"), format!("{BGP_CLIENT_IPV6}/64")),
        ] {
            let link = if namespace == ns { "eth1" } else { "eth0" };
            netns::ip(&["-n", namespace, "addr", "add", &v4, "dev", link])?;
            netns::ip(&["-n", namespace, "addr", "add", &v6, "dev", link, "nodad"])?;
            netns::ip(&["-n", namespace, "link", "set", link, "up"])?;
        }
        netns::ip(&["-n", client, "route", "add", "default", "via", ROUTER_CLIENT_IPV4])?;
        netns::ip(&["-n", client, "-6", "route", "add", "default", "via", ROUTER_CLIENT_IPV6])?;
        Ok(())
    }

    /// `ip route show VIP` in the router: one `nexthop via` line per announcing node (or a single `via`).
    pub fn route(&self, vip: &str) -> Result<String> {
        let family = if vip.contains(':') { "-6" } else { "-4" };
        let output = netns::ip(&["-n", &self.netns, family, "route", "show", vip])?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The node addresses the router's kernel route to `vip` goes through.
    pub fn next_hops(&self, vip: &str) -> Result<Vec<String>> {
        Ok(next_hops(&self.route(vip)?))
    }

    /// `birdc` output for `command` (e.g. `show route all 203.0.113.200/32`).
    pub fn birdc(&self, command: &str) -> Result<String> {
        let mut args = vec!["-s", self.bird_socket.to_str().unwrap_or_default()];
        args.extend(command.split(' '));
        let output = netns::run(&birdc_binary()?, &args)?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Edits BIRD's configuration (`edit` gets the current text) and has BIRD load it (`birdc configure`):
    /// protocols whose configuration changed restart, the others keep their sessions.
    pub fn reconfigure(&self, edit: impl FnOnce(String) -> String) -> Result<()> {
        let path = self.bird_socket.with_file_name("bird.conf");
        let config = std::fs::read_to_string(&path).context(|| format!("reading {}", path.display()))?;
        std::fs::write(&path, edit(config)).context(|| format!("writing {}", path.display()))?;
        let answer =
            self.birdc("configure").map_err(|e| Error::Lab(format!("BIRD refused the new configuration: {e}")))?;
        if answer.contains("Reconfigured") || answer.contains("Reconfiguration in progress") {
            Ok(())
        } else {
            Err(Error::Lab(format!("BIRD refused the new configuration: {answer}")))
        }
    }

    pub fn bird_log(&self, lines: usize) -> String {
        self.bird.as_ref().map(|b| b.log_tail(lines)).unwrap_or_default()
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        self.bird = None;
        netns::delete(&self.netns);
    }
}

/// The `via` addresses of `ip route show` output (ECMP or single next hop).
pub fn next_hops(route: &str) -> Vec<String> {
    let mut hops: Vec<String> = route
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "via")
        .map(|w| w[1].to_string())
        .collect();
    hops.sort();
    hops
}

fn bird_config(nodes: &[LabHost]) -> String {
    let mut config = format!(
        "router id {ROUTER_LAN_IPV4};
protocol device {{ scan time 10; }}
protocol kernel kernel4 {{ ipv4 {{ export all; import none; }}; merge paths on; }}
protocol kernel kernel6 {{ ipv6 {{ export all; import none; }}; merge paths on; }}
protocol bfd {{ interface \"*\" {{ min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }}; }}
template bgp node4 {{
  local {ROUTER_LAN_IPV4} as {ROUTER_ASN};
  hold time 9; keepalive time 3; bfd on; error wait time 1, 10; graceful restart off;
  ipv4 {{ import all; export none; }};
}}
template bgp node6 {{
  local {ROUTER_LAN_IPV6} as {ROUTER_ASN};
  hold time 9; keepalive time 3; bfd on; error wait time 1, 10; graceful restart off;
  ipv6 {{ import all; export none; }};
}}
"
    );
    for node in nodes {
        let id = node.name.replace('-', "_");
        config.push_str(&format!(
            "protocol bgp {id}_v4 from node4 {{ neighbor {} as {NODE_ASN}; }}\nprotocol bgp {id}_v6 from node6 {{ neighbor {} as {NODE_ASN}; }}\n",
            node.ipv4, node.ipv6
        ));
    }
    config
}

fn sbin(name: &str) -> Result<String> {
    ["/usr/sbin", "/sbin", "/usr/bin", "/usr/lib/frr"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .map(|p| p.to_string_lossy().into_owned())
        .ok_or_else(|| Error::Lab(format!("{name} is not installed (cargo xtask deps installs bird2 and frr)")))
}

fn bird_binary() -> Result<String> {
    sbin("bird")
}

fn birdc_binary() -> Result<String> {
    sbin("birdc")
}

/// The FRR daemons a node runs for its speaker.
pub const FRR_DAEMONS: [&str; 3] = ferrolb_speaker::bgp::daemons::DAEMONS;

/// Prepares `dir` for one FRR instance: owned by `frr:frr` (FRR refuses a root-owned one) with an empty
/// configuration file per daemon. Returns the directory.
pub fn prepare_frr_dir(dir: &Path) -> Result<PathBuf> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).context(|| format!("creating {}", dir.display()))?;
    let mut paths = vec![dir.to_path_buf()];
    for daemon in FRR_DAEMONS {
        let file = dir.join(format!("{daemon}.conf"));
        std::fs::write(&file, "").context(|| format!("writing {}", file.display()))?;
        paths.push(file);
    }
    let mut chown = Command::new("chown");
    chown.arg("frr:frr").args(&paths);
    let output = chown.output().context(|| "running chown".into())?;
    if !output.status.success() {
        return Err(Error::Lab(format!(
            "chown frr:frr {} failed (is FRR installed? cargo xtask deps installs it): {}",
            dir.display(),
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(dir.to_path_buf())
}

/// The command that runs one FRR daemon of the instance in `dir`, in the foreground.
pub fn frr_daemon_command(daemon: &str, dir: &Path) -> Result<Command> {
    let mut command = Command::new(sbin(daemon)?);
    // As the `frr` user FRR's package made (the directory is theirs).
    command.args(ferrolb_speaker::bgp::daemons::arguments(daemon, dir, None));
    Ok(command)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_hops_are_read_from_ecmp_and_single_routes() {
        let ecmp = "203.0.113.200 proto bird metric 32\n\tnexthop via 192.0.2.12 dev eth0 weight 1\n\tnexthop via 192.0.2.11 dev eth0 weight 1\n";
        assert_eq!(next_hops(ecmp), ["192.0.2.11", "192.0.2.12"]);
        assert_eq!(next_hops("203.0.113.200 via 192.0.2.13 dev eth0 proto bird metric 32\n"), ["192.0.2.13"]);
        assert!(next_hops("").is_empty());
    }
}
