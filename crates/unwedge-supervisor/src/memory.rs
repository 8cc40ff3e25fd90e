//! How much memory a worker uses, as the kernel counts it.

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
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}
