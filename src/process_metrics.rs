//! Metrics read at each scrape: the process (CPU, memory, file descriptors, threads, start
//! time, from `/proc/self`), and `ferry_build_info`. Prometheus' standard `process_*` names,
//! so dashboards made for any exporter work.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// The process metrics; registered once on the root registry.
#[derive(Debug, Default)]
pub struct Process;

/// What `/proc/self` says about the process.
#[derive(Debug, Default, PartialEq)]
pub struct Snapshot {
    pub cpu_seconds: f64,
    pub resident_bytes: i64,
    pub virtual_bytes: i64,
    pub open_fds: i64,
    pub max_fds: i64,
    pub threads: i64,
    pub start_time_seconds: i64,
}

impl Snapshot {
    /// Reads `/proc/self` (every field stays 0 where it cannot be read).
    pub fn read() -> Snapshot {
        let mut s = Snapshot::default();
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the command name, which is in parentheses and may hold spaces.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.split_whitespace().collect())
                .unwrap_or_default();
            let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
            s.cpu_seconds =
                (field(14).unwrap_or(0.0) + field(15).unwrap_or(0.0)) / TICKS_PER_SECOND;
            s.threads = field(20).unwrap_or(0.0) as i64;
            s.virtual_bytes = field(23).unwrap_or(0.0) as i64;
            if let (Some(start), Some(boot)) = (field(22), boot_time()) {
                s.start_time_seconds = boot + (start / TICKS_PER_SECOND) as i64;
            }
        }
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            s.resident_bytes = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
                .map_or(0, |kb| kb * 1024);
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            s.open_fds = dir.count() as i64;
        }
        if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
            s.max_fds = limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        }
        s
    }
}

/// The boot time, unix seconds (`btime` in `/proc/stat`).
fn boot_time() -> Option<i64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = Snapshot::read();
        let cpu = ConstCounter::new(s.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time spent, in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        for (name, help, value) in [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                s.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                s.virtual_bytes,
            ),
            ("process_open_fds", "Open file descriptors", s.open_fds),
            (
                "process_max_fds",
                "The limit of open file descriptors",
                s.max_fds,
            ),
            ("process_threads", "OS threads of the process", s.threads),
            (
                "process_start_time_seconds",
                "Start time of the process, unix seconds",
                s.start_time_seconds,
            ),
        ] {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

/// `ferry_build_info{version,commit} 1`.
#[derive(Debug, Default)]
pub struct BuildInfo;

/// The commit Ferry was built from (`build.rs`), `unknown` outside a git checkout.
pub const COMMIT: &str = match option_env!("FERRY_COMMIT") {
    Some(c) if !c.is_empty() => c,
    _ => "unknown",
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    commit: &'static str,
}

impl Collector for BuildInfo {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let gauge = ConstGauge::new(1i64);
        let mut family = encoder.encode_descriptor(
            "ferry_build_info",
            "The version and commit of the running binary",
            None,
            gauge.metric_type(),
        )?;
        let labels = BuildLabels {
            version: env!("CARGO_PKG_VERSION"),
            commit: COMMIT,
        };
        gauge.encode(family.encode_family(&labels)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_reads_itself() {
        let s = Snapshot::read();
        assert!(s.resident_bytes > 0, "{s:?}");
        assert!(s.open_fds > 0 && s.max_fds >= s.open_fds, "{s:?}");
        assert!(s.threads >= 1, "{s:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!(
            (now - 86_400 * 365..=now + 1).contains(&s.start_time_seconds),
            "{s:?}"
        );
    }
}
