//! CPU pinning for the overhead benchmark: the servers on one CPU, the load client on
//! another, so that every round runs with the same placement. Unpinned, the scheduler puts a
//! one-thread server and the client on the same CPU in some rounds and not in others, and
//! requests/s jumps by 10–20 % between rounds for no reason in the code measured.

use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// Where the servers and the client run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Placement {
    pub(crate) server: usize,
    pub(crate) client: usize,
}

/// The CPUs to pin to: the first two this process may run on, when it may run on two or more.
pub(crate) fn placement() -> Option<Placement> {
    let allowed = nix::sched::sched_getaffinity(Pid::from_raw(0)).ok()?;
    let mut cpus = (0..CpuSet::count()).filter(|&c| allowed.is_set(c).unwrap_or(false));
    let server = cpus.next()?;
    let client = cpus.next()?;
    Some(Placement { server, client })
}

/// Pins every thread of process `pid`, and of its descendants, to `cpu` (threads started
/// later inherit it from the thread that starts them).
pub(crate) fn pin_tree(pid: u32, cpu: usize) -> Result<(), String> {
    let mut set = CpuSet::new();
    set.set(cpu).map_err(|e| format!("cpu {cpu}: {e}"))?;
    for p in crate::overhead::process_tree(pid) {
        // A process gone meanwhile has no tasks left to pin.
        for (tid, _) in crate::overhead::numbered_entries(format!("/proc/{p}/task")) {
            // A thread that ended meanwhile is fine; any other failure is not.
            match sched_setaffinity(Pid::from_raw(tid as i32), &set) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => return Err(format!("cannot pin thread {tid} of {p} to cpu {cpu}: {e}")),
            }
        }
    }
    Ok(())
}
