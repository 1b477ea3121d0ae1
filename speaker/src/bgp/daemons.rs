//! How the speaker's FRR is run: zebra, bgpd and bfdd in the foreground, each with its vty socket, pid file
//! and (empty) configuration file in the one directory the speaker reaches them through. The chart's FRR
//! container (`ferrolb-frr`) and the lab's processes run them with these arguments.

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

/// The daemons, in the order they start (bgpd and bfdd connect to zebra).
pub const DAEMONS: [&str; 3] = ["zebra", "bgpd", "bfdd"];

/// The file the speaker writes in the directory when it stops (after withdrawing its routes, if its node
/// is going away): FRR's container, told to stop at the same moment, keeps announcing until it appears.
pub const SPEAKER_DONE: &str = "speaker-done";

/// The command-line arguments of `daemon` for the instance in `dir`. `user`: the user and group it drops
/// to (FRR's own default, `frr`, when `None`).
pub fn arguments(daemon: &str, dir: &Path, user: Option<(&str, &str)>) -> Vec<OsString> {
    let path = |name: String| dir.join(name).into_os_string();
    let mut args: Vec<OsString> = vec![
        "--vty_socket".into(),
        dir.as_os_str().to_owned(),
        "-z".into(),
        path("zserv.api".into()),
        // No vty over TCP: the socket directory is the only way in.
        "-P".into(),
        "0".into(),
        "-f".into(),
        path(format!("{daemon}.conf")),
        "-i".into(),
        path(format!("{daemon}.pid")),
    ];
    if daemon == "bfdd" {
        args.extend(["--bfdctl".into(), path("bfdd.sock".into())]);
    }
    if let Some((user, group)) = user {
        args.extend(["-u".into(), user.into(), "-g".into(), group.into()]);
    }
    args
}

/// How long to wait before starting a daemon again that exited `failures` times in a row (each within a
/// short time of its start): at once at first, then backing off to 10 s, so a daemon that cannot start does
/// not spin.
pub fn restart_delay(failures: u32) -> Duration {
    (Duration::from_millis(250) * 2u32.saturating_pow(failures.min(6))).min(Duration::from_secs(10))
}

/// A daemon that ran this long before it exited had started fine: its next exit counts from zero again.
pub const RAN_FINE: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_daemon_finds_its_files_in_the_one_directory_and_only_bfdd_has_a_control_socket() {
        let dir = Path::new("/run/ferrolb/frr");
        let text = |args: Vec<OsString>| args.iter().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>();
        assert_eq!(
            text(arguments("bgpd", dir, None)),
            [
                "--vty_socket",
                "/run/ferrolb/frr",
                "-z",
                "/run/ferrolb/frr/zserv.api",
                "-P",
                "0",
                "-f",
                "/run/ferrolb/frr/bgpd.conf",
                "-i",
                "/run/ferrolb/frr/bgpd.pid"
            ]
        );
        let bfdd = text(arguments("bfdd", dir, Some(("root", "root"))));
        assert!(bfdd.windows(2).any(|w| w == ["--bfdctl", "/run/ferrolb/frr/bfdd.sock"]), "{bfdd:?}");
        assert!(bfdd.ends_with(&["-u".into(), "root".into(), "-g".into(), "root".into()]), "{bfdd:?}");
    }

    #[test]
    fn a_failing_daemon_is_started_again_ever_more_slowly_up_to_ten_seconds() {
        let delays: Vec<Duration> = (0..10).map(restart_delay).collect();
        assert_eq!(delays[0], Duration::from_millis(250));
        assert!(delays.windows(2).all(|w| w[0] <= w[1]), "{delays:?}");
        assert_eq!(delays[9], Duration::from_secs(10));
        assert_eq!(restart_delay(u32::MAX), Duration::from_secs(10));
    }
}
