//! How much memory a worker uses, as the kernel counts it.

/// The most processes of one worker's tree that [`worker_bytes`] measures.
pub const MAX_TREE: usize = 1024;

/// The memory worker `pid` uses together with the processes it started, in bytes; `None` when
/// it is gone. This is what `--max-memory` is compared with.
///
/// - A worker without children: its resident memory ([`resident_bytes`]), a counter the
///   kernel keeps (cheap to read, however large the process).
/// - A worker with children (a preforking server, a helper it runs): the proportional set
///   size ([`proportional_bytes`]) of the worker and each of its descendants, summed. PSS
///   splits every shared page among the processes that map it, so the pages forked processes
///   share count once in the sum, where adding up their RSS would count them once per
///   process. (A descendant whose PSS cannot be read counts with its RSS.)
///
/// ```
/// use unwedge_supervisor::memory::{resident_bytes, worker_bytes};
/// let me = std::process::id() as i32;
/// assert!(worker_bytes(me).unwrap() > 0);
/// assert_eq!(worker_bytes(i32::MAX), None);
/// ```
pub fn worker_bytes(pid: i32) -> Option<u64> {
    // Any tree is over a limit of 0: always the precise figure.
    worker_bytes_against(pid, 0, true).map(|(bytes, _)| bytes)
}

/// [`worker_bytes`] as compared with a limit, at the least cost: the worker's resident memory
/// when it has no children; with children, first the sum of their RSS (cheap counters, and
/// never less than the PSS sum), and the PSS sum (a walk of every page table of the tree:
/// ~12 ms per GiB mapped) only when `precise` and that sum is above `limit`.
///
/// Returns the bytes and whether the figure is the precise one (`false`: an RSS sum, over
/// `limit` when `precise` was `false`, not over it otherwise).
///
/// ```
/// use unwedge_supervisor::memory::worker_bytes_against;
/// let me = std::process::id() as i32;
/// let (bytes, _) = worker_bytes_against(me, u64::MAX, true).unwrap();
/// assert!(bytes > 0);
/// ```
pub fn worker_bytes_against(pid: i32, limit: u64, precise: bool) -> Option<(u64, bool)> {
    let tree = crate::procfs::descendants(pid, MAX_TREE);
    match tree.len() {
        0 => None,
        1 => resident_bytes(pid).map(|b| (b, true)),
        _ => {
            let rss: u64 = tree.iter().filter_map(|&p| resident_bytes(p)).sum();
            if rss <= limit || !precise {
                return Some((rss, false));
            }
            let pss = tree
                .iter()
                .filter_map(|&p| proportional_bytes(p).or_else(|| resident_bytes(p)))
                .sum();
            Some((pss, true))
        }
    }
}

/// When a worker's memory may be measured again after a measurement that took `cost`: at
/// most once per second, and at most once per 20 times its cost (a tree's PSS walks page
/// tables: ~12 ms per GiB), so measuring takes at most ~5 % of the time of whoever measures.
///
/// ```
/// use std::time::{Duration, Instant};
/// let now = Instant::now();
/// let next = unwedge_supervisor::memory::next_measurement(now, Duration::from_millis(100));
/// assert_eq!(next - now, Duration::from_secs(2));
/// ```
pub fn next_measurement(now: std::time::Instant, cost: std::time::Duration) -> std::time::Instant {
    now + (cost * 20).max(std::time::Duration::from_secs(1))
}

/// The resident memory of process `pid` (`VmRSS` in `/proc/PID/status`: its own pages in RAM,
/// shared ones included, its children's not), in bytes; `None` when it is gone (or not
/// readable).
///
/// ```
/// let me = unwedge_supervisor::memory::resident_bytes(std::process::id() as i32).unwrap();
/// assert!(me > 0);
/// assert_eq!(unwedge_supervisor::memory::resident_bytes(i32::MAX), None);
/// ```
pub fn resident_bytes(pid: i32) -> Option<u64> {
    // Its `Name:` line is the process's choice of bytes.
    let status = crate::procfs::read_lossy(&format!("/proc/{pid}/status"))?;
    kib_field(&status, "VmRSS:")
}

/// The proportional set size of process `pid` (`Pss` in `/proc/PID/smaps_rollup`, Linux 4.14
/// and later): its private pages in RAM plus, for each page it shares with others, its share
/// of it. `None` when it is gone or the kernel does not say. Costs a walk of its page tables:
/// about 12 ms per GiB mapped in 4 KiB pages (measured here), where `VmRSS` costs 20 µs.
///
/// ```
/// let me = std::process::id() as i32;
/// let pss = unwedge_supervisor::memory::proportional_bytes(me).unwrap();
/// let rss = unwedge_supervisor::memory::resident_bytes(me).unwrap();
/// assert!(pss > 0 && pss <= rss + 4096);
/// ```
pub fn proportional_bytes(pid: i32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    kib_field(&rollup, "Pss:")
}

/// The value of a `Name:   1234 kB` line, in bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix(name))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_in_kib_are_bytes() {
        let text = "Name:\tx\nVmRSS:\t    2048 kB\nPss:      12 kB\nBad:  12 MB\n";
        assert_eq!(kib_field(text, "VmRSS:"), Some(2048 * 1024));
        assert_eq!(kib_field(text, "Pss:"), Some(12 * 1024));
        assert_eq!(kib_field(text, "Bad:"), None);
        assert_eq!(kib_field(text, "Missing:"), None);
    }

    #[test]
    fn the_memory_of_a_process_whose_name_is_not_utf8_is_read() {
        let (mut child, line) = crate::procfs::named_in_cut_utf8();
        assert_eq!(line.trim(), "named");
        let rss = resident_bytes(child.id() as i32);
        let _ = child.kill();
        child.wait().unwrap();
        assert!(rss.is_some_and(|b| b > 0), "{rss:?}");
    }

    #[test]
    fn a_child_s_memory_counts_for_its_parent_and_shared_pages_count_once() {
        // sh (tiny) runs python, which fills 64 MiB of its own and says so.
        let (mut child, line) = crate::procfs::sh_until_first_line(
            "python3 -c 'import time; b = b\"x\" * (64 << 20); print(\"grown\", flush=True); time.sleep(60)'; :",
        );
        assert_eq!(line.trim(), "grown");
        let sh = child.id() as i32;
        let alone = resident_bytes(sh).unwrap();
        let tree = worker_bytes(sh).unwrap();
        assert!(alone < 16 << 20, "sh alone: {alone}");
        assert!(tree > 64 << 20, "sh and python: {tree}");
        // Less than their RSS summed: the libraries they share count once.
        let py = crate::procfs::descendants(sh, 10)[1];
        assert!(tree < alone + resident_bytes(py).unwrap(), "{tree}");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(py),
            nix::sys::signal::Signal::SIGKILL,
        );
        child.wait().unwrap();
    }

    #[test]
    fn pages_forked_processes_share_count_once_against_a_limit() {
        use std::os::unix::process::CommandExt;
        // 60 MiB written, then 3 forks: each process has the 60 MiB resident (shared).
        let script = "import os, time\n\
            b = b'x' * (60 << 20)\n\
            for _ in range(3):\n\
            \x20   if os.fork() == 0:\n\
            \x20       time.sleep(60); os._exit(0)\n\
            print('forked', flush=True)\n\
            time.sleep(60)\n";
        let (mut child, line) = crate::procfs::until_first_line(
            std::process::Command::new("python3")
                .args(["-c", script])
                .process_group(0),
        );
        assert_eq!(line.trim(), "forked");
        let pid = child.id() as i32;
        let limit = 150 << 20;
        // Their RSS summed is over the limit (each counts the shared 60 MiB) ...
        let (rss, precise) = worker_bytes_against(pid, limit, false).unwrap();
        assert!(!precise && rss > limit, "{rss}");
        // ... their PSS is not: the worker is within its limit.
        let (pss, precise) = worker_bytes_against(pid, limit, true).unwrap();
        assert!(precise && pss < limit && pss > 60 << 20, "{pss}");
        assert_eq!(worker_bytes(pid).map(|b| b < limit), Some(true));
        // Under the limit by the cheap sum already: no page-table walk.
        let (bytes, precise) = worker_bytes_against(pid, u64::MAX, true).unwrap();
        assert!(!precise && bytes > limit, "{bytes}");
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        child.wait().unwrap();
    }
}
