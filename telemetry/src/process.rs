//! Process metrics read from `/proc/self` at each scrape (what Prometheus' client libraries call the
//! process collector): resident memory, CPU seconds, threads, open and maximum file descriptors. The
//! parsing is pure and never panics; a file that cannot be read just leaves its metric out.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Linux reports CPU times in /proc in USER_HZ ticks, fixed at 100 for user space on every architecture we
/// build for.
const USER_HZ: f64 = 100.0;

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessStats {
    pub resident_bytes: Option<i64>,
    pub cpu_seconds: Option<f64>,
    pub threads: Option<i64>,
    pub open_fds: Option<i64>,
    pub max_fds: Option<i64>,
}

impl ProcessStats {
    /// This process, now.
    pub fn read() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).ok();
        let status = read("/proc/self/status").unwrap_or_default();
        Self {
            resident_bytes: status_number(&status, "VmRSS:").map(|kib| kib * 1024),
            cpu_seconds: read("/proc/self/stat").as_deref().and_then(cpu_seconds),
            threads: status_number(&status, "Threads:"),
            open_fds: std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as i64),
            max_fds: read("/proc/self/limits").as_deref().and_then(max_open_files),
        }
    }
}

/// A numeric field of /proc/PID/status (`VmRSS:   1234 kB` → 1234).
pub fn status_number(status: &str, field: &str) -> Option<i64> {
    status.lines().find_map(|l| l.strip_prefix(field)).and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// utime + stime of a /proc/PID/stat, in seconds. The command name may hold spaces and parentheses, so the
/// fields are counted from its last closing parenthesis.
pub fn cpu_seconds(stat: &str) -> Option<f64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 of the line; utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// The soft limit of `Max open files` in /proc/self/limits.
fn max_open_files(limits: &str) -> Option<i64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files").split_whitespace().next()?.parse().ok()
}

#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = ProcessStats::read();
        let gauges = [
            ("process_resident_memory_bytes", "Resident memory size in bytes", stats.resident_bytes),
            ("process_threads", "Number of OS threads", stats.threads),
            ("process_open_fds", "Number of open file descriptors", stats.open_fds),
            ("process_max_fds", "Maximum number of open file descriptors", stats.max_fds),
        ];
        for (name, help, value) in gauges {
            if let Some(value) = value {
                let gauge = ConstGauge::new(value);
                gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
            }
        }
        if let Some(seconds) = stats.cpu_seconds {
            let counter = ConstCounter::new(seconds);
            let help = "Total user and system CPU time spent in seconds";
            counter.encode(encoder.encode_descriptor("process_cpu_seconds", help, None, counter.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_read_as_the_kernel_writes_them() {
        let stat = "4242 (ferrolb (speaker)) S 1 4242 4242 0 -1 4194560 1289 0 0 0 250 75 0 0 20 0 9 0 123 1 2";
        assert_eq!(cpu_seconds(stat), Some(3.25));
        assert_eq!(cpu_seconds("garbage"), None);
        assert_eq!(status_number("Name:\tx\nVmRSS:\t   20480 kB\nThreads:\t9\n", "VmRSS:"), Some(20480));
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1048576              1048576              files\n";
        assert_eq!(max_open_files(limits), Some(1_048_576));
    }

    #[test]
    fn this_process_is_measured() {
        let stats = ProcessStats::read();
        assert!(stats.resident_bytes.is_some_and(|b| b > 0));
        assert!(stats.open_fds.is_some_and(|n| n > 0) && stats.max_fds.is_some_and(|n| n > 0));
        assert!(stats.threads.is_some_and(|n| n >= 1) && stats.cpu_seconds.is_some());
    }
}
