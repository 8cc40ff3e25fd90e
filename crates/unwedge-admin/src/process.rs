//! CPU and memory from `/proc`, read at each scrape: the supervisor's own standard `process_*`
//! metrics (the names every Prometheus client library's process collector exports, so the
//! usual dashboards and alerts work as they are), and `unwedge_worker_cpu_seconds_total`, the
//! CPU time of each worker's session (a pass over every process, so at most once per
//! [`CPU_SCAN_INTERVAL`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// The fields of `/proc/PID/stat` used here.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stat {
    /// The session id (a worker leads its own: its pid).
    sid: i32,
    /// utime + stime, in clock ticks: its own CPU time.
    own_ticks: u64,
    /// utime + stime + cutime + cstime, in clock ticks: its own CPU time and that of its
    /// children it waited for.
    cpu_ticks: u64,
    /// Start time, in clock ticks after boot.
    start_ticks: u64,
    vsize: u64,
    rss_pages: u64,
}

/// `pid (comm) state ppid pgrp …`: `comm` may hold spaces and parentheses, so the fields are
/// counted after the last `)` (field 3, `state`, is the first there).
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = text.get(text.rfind(')')? + 1..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 of proc(5): field n is f[n - 3].
    let num = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        sid: f.get(6 - 3)?.parse().ok()?,
        own_ticks: num(14)? + num(15)?,
        cpu_ticks: num(14)? + num(15)? + num(16)? + num(17)?,
        start_ticks: num(22)?,
        vsize: num(23)?,
        rss_pages: num(24)?,
    })
}

/// `/proc/PID/stat` read as bytes: the command name in it is whatever the process chose, or
/// its executable's name cut by the kernel at 15 bytes, also inside a UTF-8 character.
fn read_stat(pid: &str) -> Option<Stat> {
    let raw = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&String::from_utf8_lossy(&raw))
}

fn ticks_per_second() -> f64 {
    rustix::param::clock_ticks_per_second() as f64
}

/// Seconds since the epoch at boot (`btime` in `/proc/stat`).
fn boot_time() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// The supervisor's own `process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds` and
/// `process_start_time_seconds`. A value that cannot be read is left out of that scrape.
#[derive(Debug)]
pub(crate) struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(stat) = read_stat("self") else {
            return Ok(());
        };
        let ticks = ticks_per_second();
        let page = rustix::param::page_size() as u64;
        // Its own time only, as every client library's process collector: the workers it
        // reaped (cutime, cstime) are theirs, counted in `unwedge_worker_cpu_seconds_total`.
        let cpu = ConstCounter::new(stat.own_ticks as f64 / ticks);
        let e = encoder.encode_descriptor(
            "process_cpu",
            "Total user and system CPU time spent in seconds",
            Some(&Unit::Seconds),
            cpu.metric_type(),
        )?;
        cpu.encode(e)?;
        let gauges: [(&str, &str, Option<u64>); 4] = [
            (
                "process_resident_memory",
                "Resident memory size in bytes",
                Some(stat.rss_pages * page),
            ),
            (
                "process_virtual_memory",
                "Virtual memory size in bytes",
                Some(stat.vsize),
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                std::fs::read_dir("/proc/self/fd")
                    .ok()
                    .map(|d| d.count() as u64),
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                rustix::process::getrlimit(rustix::process::Resource::Nofile).current,
            ),
        ];
        for (name, help, value) in gauges {
            let Some(v) = value else { continue };
            let unit = name.ends_with("memory").then_some(Unit::Bytes);
            let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
            let e = encoder.encode_descriptor(name, help, unit.as_ref(), g.metric_type())?;
            g.encode(e)?;
        }
        if let Some(boot) = boot_time() {
            let start = ConstGauge::new(boot as f64 + stat.start_ticks as f64 / ticks);
            let e = encoder.encode_descriptor(
                "process_start_time",
                "Start time of the process since unix epoch in seconds",
                Some(&Unit::Seconds),
                start.metric_type(),
            )?;
            start.encode(e)?;
        }
        Ok(())
    }
}

/// Shortest time between two passes over `/proc` for `unwedge_worker_cpu_seconds_total`:
/// scrapes in between get the sums of the last pass. A pass reads every process's `stat`
/// (~15 µs each), which a scraper calling `/metrics` in a loop, on a host with thousands of
/// processes, must not repeat at will; no scrape interval is this short.
pub(crate) const CPU_SCAN_INTERVAL: Duration = Duration::from_secs(1);

/// `unwedge_worker_cpu_seconds_total{worker}`: the CPU time of each slot's current worker and
/// the processes in its session (every worker leads one: what it forked, in its process group
/// or in groups of their own, unless they started a session themselves), with the children
/// they waited for. Restarts start a slot's count again (a counter reset).
/// Clones share their state: one is registered, the other kept to [`observe`](Self::observe).
#[derive(Debug, Default, Clone)]
pub(crate) struct WorkerCpu {
    /// Slot → its current worker's pid, from the last status observed.
    pids: Arc<Mutex<Vec<(String, u32)>>>,
    /// Slot → (pid, seconds last exported): a session's sum drops when one of its processes
    /// exits and another process reaps it; the count then stays where it was, so that
    /// Prometheus does not see a reset.
    last: Arc<Mutex<HashMap<String, (u32, f64)>>>,
    /// The last pass over `/proc`: when, for which sessions, and their sums.
    scanned: Arc<Mutex<Option<Scan>>>,
}

#[derive(Debug)]
struct Scan {
    at: Instant,
    sids: Vec<u32>,
    seconds: HashMap<u32, f64>,
}

impl WorkerCpu {
    /// The workers to report at the next scrape: (slot, pid).
    pub(crate) fn observe(&self, workers: Vec<(String, u32)>) {
        *self.pids.lock().unwrap_or_else(|p| p.into_inner()) = workers;
    }

    /// Seconds of CPU per session, for the sessions in `sids`: from the last pass over `/proc`
    /// if it was for the same sessions less than [`CPU_SCAN_INTERVAL`] ago, else from a new
    /// one.
    fn seconds(&self, sids: &[u32]) -> HashMap<u32, f64> {
        let mut scanned = self.scanned.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = scanned.as_ref() {
            if s.sids == sids && s.at.elapsed() < CPU_SCAN_INTERVAL {
                return s.seconds.clone();
            }
        }
        let seconds = Self::session_seconds(sids);
        *scanned = Some(Scan {
            at: Instant::now(),
            sids: sids.to_vec(),
            seconds: seconds.clone(),
        });
        seconds
    }

    /// Seconds of CPU per session, for the sessions in `sids`, from one pass over `/proc`.
    fn session_seconds(sids: &[u32]) -> HashMap<u32, f64> {
        let mut ticks: HashMap<u32, u64> = HashMap::new();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return HashMap::new();
        };
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let Some(stat) = read_stat(pid) else { continue };
            let Ok(sid) = u32::try_from(stat.sid) else {
                continue;
            };
            if sids.contains(&sid) {
                *ticks.entry(sid).or_default() += stat.cpu_ticks;
            }
        }
        let per_second = ticks_per_second();
        ticks
            .into_iter()
            .map(|(g, t)| (g, t as f64 / per_second))
            .collect()
    }
}

impl Collector for WorkerCpu {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let pids = self.pids.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let sessions: Vec<u32> = pids.iter().map(|&(_, pid)| pid).collect();
        let seconds = self.seconds(&sessions);
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.retain(|slot, _| pids.iter().any(|(s, _)| s == slot));
        let mut e = encoder.encode_descriptor(
            "worker_cpu",
            "CPU time of each worker's session (user and system, with the children it waited for)",
            Some(&Unit::Seconds),
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (slot, pid) in pids {
            let Some(&now) = seconds.get(&pid) else {
                continue;
            };
            let value = match last.get(&slot) {
                Some(&(p, before)) if p == pid => now.max(before),
                _ => now,
            };
            last.insert(slot.clone(), (pid, value));
            let labels = [("worker", slot)];
            ConstCounter::new(value).encode(e.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // A command name with spaces and a parenthesis, as a process may set it.
        let line = "4242 (my (odd) srv) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 50 7 3 20 0 1 0 12345 104857600 2560 18446744073709551615";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.sid, 4242);
        assert_eq!(s.own_ticks, 250 + 50);
        assert_eq!(s.cpu_ticks, 250 + 50 + 7 + 3);
        assert_eq!(s.start_ticks, 12345);
        assert_eq!(s.vsize, 104_857_600);
        assert_eq!(s.rss_pages, 2560);
        assert_eq!(parse_stat("4242 (cut short) S 1"), None);
    }

    /// A worker named `srv-r` and the first byte of `é` (the kernel cuts a name at 15
    /// bytes, also inside a character) is still counted.
    #[test]
    fn a_process_whose_name_is_not_utf8_is_read() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", r"printf 'srv-r\303' > /proc/$$/comm; echo named; exec >/dev/null 2>&1; while :; do sleep 1; done"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        let stat = read_stat(&child.id().to_string());
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(line, "named\n");
        // Its session id may be 0 (a session leader outside this PID namespace, as in
        // a CI container); its memory is never 0.
        assert!(
            stat.is_some_and(|s| s.vsize > 0 && s.rss_pages > 0),
            "{stat:?}"
        );
    }

    /// `process_cpu_seconds_total` of this process, as the collector exports it.
    fn exported_cpu_seconds() -> f64 {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(ProcessCollector));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("process_cpu_seconds_total ")?.parse().ok())
            .unwrap_or_else(|| panic!("no process_cpu_seconds_total in {text}"))
    }

    /// A supervisor reaps its workers: their CPU time lands in its cutime and cstime. It is
    /// theirs, not the supervisor's own.
    #[test]
    fn the_supervisors_cpu_leaves_out_the_children_it_reaped() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .unwrap();
        let pid = child.id().to_string();
        let ticks = ticks_per_second();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        // Until the child has burnt 0.3 s of CPU (a loaded machine takes longer).
        while read_stat(&pid).is_some_and(|s| (s.own_ticks as f64) < 0.3 * ticks)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let exported = exported_cpu_seconds();
        let me = read_stat("self").unwrap();
        let children = (me.cpu_ticks - me.own_ticks) as f64 / ticks;
        assert!(children >= 0.3, "the child was reaped: {children} s");
        // Read after the export: this process's own time can only have grown since.
        let own = me.own_ticks as f64 / ticks;
        assert!(
            exported <= own,
            "exported {exported} s, own {own} s, children {children} s"
        );
    }

    #[test]
    fn this_process_reads_its_own_figures() {
        let s = read_stat("self").unwrap();
        assert!(s.rss_pages > 0 && s.vsize > 0);
        let boot = boot_time().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let started = boot as f64 + s.start_ticks as f64 / ticks_per_second();
        assert!(started <= now as f64 + 1.0 && started > now as f64 - 3600.0);
    }
}
