#![allow(clippy::unwrap_used)]
use super::*;

/// bgpd's and bfdd's running configuration as FRR 8.4 printed it (through vtysh, both daemons in one).
const RUNNING: &str = "Building configuration...

Current configuration:
!
frr version 8.4.4
frr defaults traditional
hostname vm
no ip forwarding
!
router bgp 64512
 bgp router-id 192.0.2.10
 no bgp ebgp-requires-policy
 neighbor 192.0.2.1 remote-as 64500
 neighbor 192.0.2.1 bfd
 neighbor 192.0.2.1 timers 3 9
 !
 address-family ipv4 unicast
  network 203.0.113.1/32
  neighbor 192.0.2.1 activate
  neighbor 192.0.2.1 route-map flb-out permit out
 exit-address-family
exit
!
ip prefix-list flb-a seq 5 permit 203.0.113.1/32
!
route-map flb-out permit 10
 match ip address prefix-list flb-a
 set local-preference 100
exit
!
bfd
 profile fast
  transmit-interval 100
  receive-interval 100
 exit
 !
exit
!
end";

fn ours(line: &str) -> bool {
    line.starts_with("router bgp ")
        || line.starts_with("ip prefix-list flb-")
        || line.starts_with("route-map flb-")
        || line == "bfd"
}

fn c(text: &str) -> Line {
    Line::command(text)
}

fn b(text: &str, children: Vec<Line>) -> Line {
    Line::block(text, children)
}

fn running() -> Config {
    Config {
        lines: vec![
            b(
                "router bgp 64512",
                vec![
                    c("bgp router-id 192.0.2.10"),
                    c("no bgp ebgp-requires-policy"),
                    c("neighbor 192.0.2.1 remote-as 64500"),
                    c("neighbor 192.0.2.1 bfd"),
                    c("neighbor 192.0.2.1 timers 3 9"),
                    b(
                        "address-family ipv4 unicast",
                        vec![
                            c("network 203.0.113.1/32"),
                            c("neighbor 192.0.2.1 activate"),
                            c("neighbor 192.0.2.1 route-map flb-out permit out"),
                        ],
                    ),
                ],
            ),
            c("ip prefix-list flb-a permit 203.0.113.1/32"),
            b(
                "route-map flb-out permit 10",
                vec![c("match ip address prefix-list flb-a"), c("set local-preference 100")],
            ),
            b("bfd", vec![b("profile fast", vec![c("transmit-interval 100"), c("receive-interval 100")])]),
        ],
    }
}

#[test]
fn the_running_configuration_is_read_as_a_tree_of_our_lines() {
    assert_eq!(parse(RUNNING, ours), running());
    let bgp_only = parse(RUNNING, |l| l.starts_with("router bgp "));
    assert_eq!(bgp_only.lines.len(), 1);
}

#[test]
fn what_is_written_reads_back_the_same() {
    let text = running().to_string();
    assert!(text.contains(" address-family ipv4 unicast\n  network 203.0.113.1/32\n"), "{text}");
    assert!(text.contains(" exit-address-family\nexit\n"), "{text}");
    assert_eq!(parse(&text, |_| true), running());
}

#[test]
fn the_same_configuration_needs_no_command() {
    assert!(commands(&running(), &running()).is_empty());
}

#[test]
fn a_new_configuration_is_entered_in_the_order_written_and_a_gone_one_removed_by_its_headers() {
    let from_nothing = commands(&Config::default(), &running());
    assert_eq!(from_nothing[0], "router bgp 64512");
    assert_eq!(from_nothing[1], "bgp router-id 192.0.2.10");
    let neighbor = from_nothing.iter().position(|l| l == "neighbor 192.0.2.1 remote-as 64500").unwrap();
    let activate = from_nothing.iter().position(|l| l == "neighbor 192.0.2.1 activate").unwrap();
    assert!(neighbor < activate);
    assert!(from_nothing.contains(&"exit-address-family".to_string()));
    assert_eq!(from_nothing.iter().filter(|l| *l == "exit").count(), 4, "{from_nothing:?}");

    let to_nothing = commands(&running(), &Config::default());
    assert_eq!(
        to_nothing,
        [
            "no bfd",
            "no route-map flb-out permit 10",
            "no ip prefix-list flb-a permit 203.0.113.1/32",
            "no router bgp 64512"
        ]
    );
}

#[test]
fn a_changed_block_is_entered_only_to_change_what_changed() {
    let mut wanted = running();
    let bgp = &mut wanted.lines[0].children;
    bgp.retain(|l| !l.text.starts_with("neighbor 192.0.2.1 timers"));
    bgp.insert(4, c("neighbor 192.0.2.1 timers 1 3"));
    bgp[5].children.push(c("network 203.0.113.2/32"));
    assert_eq!(
        commands(&running(), &wanted),
        [
            "router bgp 64512",
            "no neighbor 192.0.2.1 timers 3 9",
            "exit",
            "router bgp 64512",
            "neighbor 192.0.2.1 timers 1 3",
            "address-family ipv4 unicast",
            "network 203.0.113.2/32",
            "exit-address-family",
            "exit",
        ]
    );
}

#[test]
fn a_neighbour_goes_after_its_address_family_lines_and_options() {
    let mut wanted = running();
    let bgp = &mut wanted.lines[0].children;
    bgp.retain(|l| !l.text.starts_with("neighbor "));
    bgp[2].children.retain(|l| !l.text.starts_with("neighbor "));
    assert_eq!(
        commands(&running(), &wanted),
        [
            "router bgp 64512",
            "address-family ipv4 unicast",
            "no neighbor 192.0.2.1 route-map flb-out permit out",
            "no neighbor 192.0.2.1 activate",
            "exit-address-family",
            "no neighbor 192.0.2.1 timers 3 9",
            "no neighbor 192.0.2.1 bfd",
            "no neighbor 192.0.2.1 remote-as 64500",
            "exit",
        ]
    );
}

#[test]
fn a_family_that_goes_is_emptied_line_by_line() {
    let mut wanted = running();
    let bgp = &mut wanted.lines[0].children;
    bgp.retain(|l| !l.text.starts_with("address-family "));
    assert_eq!(
        commands(&running(), &wanted),
        [
            "router bgp 64512",
            "address-family ipv4 unicast",
            "no neighbor 192.0.2.1 route-map flb-out permit out",
            "no neighbor 192.0.2.1 activate",
            "no network 203.0.113.1/32",
            "exit-address-family",
            "exit",
        ]
    );
}

#[test]
fn prefix_list_entries_are_read_without_the_sequence_frr_gave_them() {
    let config = parse(
        "ip prefix-list flb-a seq 15 permit 203.0.113.9/32\nipv6 prefix-list flb-b seq 5 permit 2001:db8::1/128\n",
        |_| true,
    );
    assert_eq!(
        config.lines,
        [c("ip prefix-list flb-a permit 203.0.113.9/32"), c("ipv6 prefix-list flb-b permit 2001:db8::1/128")]
    );
}

#[test]
fn an_empty_block_is_still_a_block() {
    let text = "bfd\n profile defaults\n exit\n !\n profile fast\n  receive-interval 100\n exit\nexit\n";
    let config = parse(text, |_| true);
    assert_eq!(
        config.lines,
        [b("bfd", vec![b("profile defaults", vec![]), b("profile fast", vec![c("receive-interval 100")])])]
    );
    assert_eq!(parse(&config.to_string(), |_| true), config);
    assert_eq!(
        commands(&Config::default(), &config),
        ["bfd", "profile defaults", "exit", "profile fast", "receive-interval 100", "exit", "exit"]
    );
}

/// What FRR does with the commands, for lines (not its semantics of any one command): `no LINE` removes the
/// line (and its block), a header enters its block (made if missing), `exit` leaves.
fn replay(start: &Config, commands: &[String]) -> Config {
    let mut config = start.clone();
    let mut path: Vec<String> = Vec::new();
    for command in commands {
        let here = lines_at(&mut config, &path);
        if command == "exit" || command == "exit-address-family" {
            path.pop();
            // FRR prints no family that has nothing left in it.
            lines_at(&mut config, &path).retain(|l| !(l.text.starts_with("address-family ") && l.children.is_empty()));
        } else if let Some(gone) = command.strip_prefix("no ") {
            let before = here.len();
            here.retain(|l| l.text != gone);
            assert_eq!(here.len() + 1, before, "removing {gone:?}, which is not there");
        } else if let Some(existing) = here.iter().find(|l| &l.text == command) {
            // Entering a block (a line is never added twice).
            assert!(existing.is_block() || is_header(command), "{command:?} added twice");
            path.push(command.clone());
        } else {
            if is_header(command) {
                here.push(Line::block(command.clone(), Vec::new()));
                path.push(command.clone());
            } else {
                here.push(Line::command(command.clone()));
            }
        }
    }
    assert!(path.is_empty(), "left inside {path:?}");
    config
}

/// The lines of the block `path` leads to.
fn lines_at<'a>(config: &'a mut Config, path: &[String]) -> &'a mut Vec<Line> {
    let mut lines = &mut config.lines;
    for header in path {
        let at = lines.iter().position(|l| &l.text == header).unwrap();
        lines = &mut lines[at].children;
    }
    lines
}

fn is_header(text: &str) -> bool {
    ["router bgp ", "address-family ", "route-map ", "profile "].iter().any(|p| text.starts_with(p)) || text == "bfd"
}

/// The tree with every level sorted (the replay appends where FRR would print in its own order).
fn sorted(mut lines: Vec<Line>) -> Vec<Line> {
    for line in &mut lines {
        line.children = sorted(std::mem::take(&mut line.children));
    }
    lines.sort_by(|a, b| a.text.cmp(&b.text));
    lines
}

fn arbitrary_config() -> impl proptest::strategy::Strategy<Value = Config> {
    use proptest::prelude::*;
    let neighbors = proptest::collection::btree_set(0u8..4, 0..4);
    let options = proptest::collection::btree_set((0u8..4, 0u8..3), 0..6);
    let networks = proptest::collection::btree_set(0u8..6, 0..6);
    let lists = proptest::collection::btree_set((0u8..2, 0u8..6), 0..6);
    let maps = proptest::collection::btree_map(0u8..3, proptest::collection::btree_set(0u8..3, 1..3), 0..3);
    (proptest::bool::ANY, neighbors, options, networks, lists, maps).prop_map(
        |(bgp, neighbors, options, networks, lists, maps)| {
            let mut lines = Vec::new();
            if bgp {
                let mut children = vec![c("bgp router-id 192.0.2.10")];
                let option = ["bfd", "timers 3 9", "port 1179"];
                for n in &neighbors {
                    children.push(c(&format!("neighbor 192.0.2.{n} remote-as 64500")));
                    for (_, o) in options.iter().filter(|(on, _)| on == n) {
                        children.push(c(&format!("neighbor 192.0.2.{n} {}", option[usize::from(*o)])));
                    }
                }
                let mut family: Vec<Line> = networks.iter().map(|p| c(&format!("network 203.0.113.{p}/32"))).collect();
                family.extend(neighbors.iter().map(|n| c(&format!("neighbor 192.0.2.{n} activate"))));
                if !family.is_empty() {
                    children.push(b("address-family ipv4 unicast", family));
                }
                lines.push(b("router bgp 64512", children));
            }
            lines.extend(lists.iter().map(|(l, p)| c(&format!("ip prefix-list flb-{l} permit 203.0.113.{p}/32"))));
            for (m, sets) in &maps {
                let children = sets.iter().map(|s| c(&format!("set local-preference {s}"))).collect();
                lines.push(b(&format!("route-map flb-{m} permit 10"), children));
            }
            Config { lines }
        },
    )
}

proptest::proptest! {
    #[test]
    fn the_commands_turn_the_running_configuration_into_the_wanted_one(
        running in arbitrary_config(),
        wanted in arbitrary_config(),
    ) {
        let commands = commands(&running, &wanted);
        proptest::prop_assert_eq!(sorted(replay(&running, &commands).lines), sorted(wanted.lines.clone()));
        if running == wanted {
            proptest::prop_assert!(commands.is_empty());
        }
    }

    #[test]
    fn parsing_never_panics_and_what_it_reads_writes_back_the_same(text in "[ a-z0-9!./:-]{0,12}(\n[ a-z0-9!./:-]{0,12}){0,12}") {
        let config = parse(&text, |_| true);
        proptest::prop_assert_eq!(parse(&config.to_string(), |_| true), config);
    }
}
