//! Every fuzz target, for a fixed number of mutated inputs from a fixed seed: a parser panic or a broken
//! round trip fails the suite (longer runs: `cargo xtask fuzz`).

use ferrolb_e2e::fuzz::{self, Budget, Target};

#[test]
fn wire_parsers_survive_mutated_input() {
    for target in Target::ALL {
        match fuzz::run(target, Budget::Inputs(50_000), 0x5eed_f00d) {
            Ok(stats) => assert!(stats.accepted > 0, "{}: no mutated input was ever accepted", target.name()),
            Err(crash) => panic!("{crash}"),
        }
    }
}
