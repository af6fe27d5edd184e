//! The standard `process_*` series of Prometheus clients (CPU seconds, resident and virtual
//! memory, open and allowed file descriptors, start time), read from `/proc/self` at each scrape
//! (proc(5): `/proc/self/stat`, `/proc/self/fd`, `btime` in `/proc/stat`). A file that cannot be
//! read leaves its series out of that scrape rather than failing it.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Most bytes read from one `/proc` file: `/proc/self/stat` is one line of ~300 bytes, and the
/// `btime` line of `/proc/stat` comes after one line per CPU.
const MAX_PROC_FILE: u64 = 1 << 20;

/// The figures of `/proc/self/stat` the series need, in its units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    /// User plus system CPU time, clock ticks (fields 14 and 15).
    pub(crate) cpu_ticks: u64,
    /// Start time after boot, clock ticks (field 22).
    pub(crate) start_ticks: u64,
    /// Virtual memory size, bytes (field 23).
    pub(crate) virtual_bytes: u64,
    /// Resident set size, pages (field 24).
    pub(crate) rss_pages: u64,
}

/// Parses one `/proc/<pid>/stat` line. The command name (field 2) is in parentheses and may hold
/// spaces and parentheses itself, so the fields are counted from the last `)`. `None` if the
/// line has too few fields or a needed one is not a number.
pub(crate) fn parse_stat(line: &str) -> Option<Stat> {
    let (_, rest) = line.rsplit_once(')')?;
    // rest starts at field 3 (state): field N is at index N - 3
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        cpu_ticks: field(14)?.checked_add(field(15)?)?,
        start_ticks: field(22)?,
        virtual_bytes: field(23)?,
        rss_pages: field(24)?,
    })
}

/// The boot time, Unix seconds, from the `btime` line of `/proc/stat`.
pub(crate) fn parse_btime(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn read_proc(path: &str) -> Option<String> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_PROC_FILE)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

/// Collects the `process_*` series at each scrape.
#[derive(Debug)]
pub(crate) struct ProcessCollector;

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let ticks = rustix::param::clock_ticks_per_second().max(1) as f64;
        if let Some(stat) = read_proc("/proc/self/stat").as_deref().and_then(parse_stat) {
            let cpu = ConstCounter::new(stat.cpu_ticks as f64 / ticks);
            cpu.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                cpu.metric_type(),
            )?)?;
            let page = rustix::param::page_size() as f64;
            gauge(
                &mut encoder,
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                stat.rss_pages as f64 * page,
            )?;
            gauge(
                &mut encoder,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                stat.virtual_bytes as f64,
            )?;
            if let Some(boot) = read_proc("/proc/stat").as_deref().and_then(parse_btime) {
                gauge(
                    &mut encoder,
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds.",
                    boot as f64 + stat.start_ticks as f64 / ticks,
                )?;
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            // the directory handle itself is one of the entries
            let open = dir.count().saturating_sub(1);
            gauge(
                &mut encoder,
                "process_open_fds",
                "Number of open file descriptors.",
                open as f64,
            )?;
        }
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        if let Some(max) = limit.current {
            gauge(
                &mut encoder,
                "process_max_fds",
                "Maximum number of open file descriptors.",
                max as f64,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        // a real line of a process named `a) (b` (spaces and parentheses in the name)
        let line = "4242 (a) (b) S 1 4242 4242 0 -1 4194560 1800 0 0 0 250 50 0 0 20 0 3 0 \
                    123456 221184000 4100 18446744073709551615 1 1 0 0 0 0 0 4096 17663 0 0 \
                    0 17 1 0 0 0 0 0";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                cpu_ticks: 300,
                start_ticks: 123_456,
                virtual_bytes: 221_184_000,
                rss_pages: 4100,
            })
        );
        assert_eq!(parse_stat("4242 (fedgw) S 1 2 3"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
        assert_eq!(
            parse_btime("cpu  1 2 3\nbtime 1765000000\nprocesses 9\n"),
            Some(1_765_000_000)
        );
        assert_eq!(parse_btime("cpu  1 2 3\n"), None);
    }

    #[test]
    fn this_process_has_memory_cpu_and_descriptors() {
        let mut out = String::new();
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(ProcessCollector));
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("encodes");
        let value = |name: &str| -> f64 {
            out.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or_else(|| panic!("{name} missing from\n{out}"))
        };
        assert!(value("process_resident_memory_bytes") > 1e6, "{out}");
        assert!(value("process_virtual_memory_bytes") > 1e6, "{out}");
        assert!(value("process_open_fds") >= 3.0, "{out}");
        assert!(
            value("process_max_fds") >= value("process_open_fds"),
            "{out}"
        );
        assert!(value("process_cpu_seconds_total") >= 0.0, "{out}");
        // after 2020-01-01 and not in the future
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs_f64();
        let start = value("process_start_time_seconds");
        assert!(start > 1.577e9 && start <= now + 1.0, "{start} {now}");
    }
}
