//! Was it the OOM killer? A worker killed by a SIGKILL nobody asked for was, most of the time,
//! killed by the kernel for memory: a container's or a unit's memory limit (its cgroup's), or
//! the machine's. Where the kernel kills that process alone (cgroup v1, a cgroup v2 without
//! `memory.oom.group`), the orchestrator does not see it (its main process, the supervisor,
//! lives on), so the supervisor says it.
//!
//! The kernel counts the processes it kills for memory in each memory cgroup (`oom_kill` in
//! `memory.events` with cgroup v2, in `memory.oom_control` with v1; any OOM kill of a process
//! in the cgroup, the machine's included) and for the whole machine (`oom_kill` in
//! `/proc/vmstat`). The workers are in the supervisor's cgroup (they inherit it), so its
//! counter is read once a second ([`OomWatch::tick`]); a worker that dies by an unexplained
//! SIGKILL is taken as OOM-killed when the counter grew in the last two seconds by a kill not
//! already put down to another worker. A kill no worker's death takes within those two seconds
//! was of another process of the cgroup, most often a worker's own child (a preforking
//! server's process): [`OomWatch::tick`] returns those, once each.
//!
//! ```
//! use unwedge_supervisor::oom::OomCounter;
//! // Every Linux since 4.13 counts OOM kills somewhere.
//! let counter = OomCounter::for_this_process().unwrap();
//! assert!(counter.read().is_some());
//! ```

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the kernel counts the OOM kills that concern this process's children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OomCounter {
    /// The file with the `oom_kill N` line.
    file: PathBuf,
    /// The file with the memory limit (cgroups only).
    limit_file: Option<PathBuf>,
}

impl OomCounter {
    /// This process's memory cgroup's counter (v1 `memory` controller, else v2), else the
    /// machine's (`/proc/vmstat`); `None` on a kernel that counts none of them.
    pub fn for_this_process() -> Option<OomCounter> {
        let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let from_cgroup = memory_cgroup_dir(&cgroups, &mounts).and_then(|(dir, v2)| {
            let (file, limit) = if v2 {
                ("memory.events", "memory.max")
            } else {
                ("memory.oom_control", "memory.limit_in_bytes")
            };
            let c = OomCounter {
                file: dir.join(file),
                limit_file: Some(dir.join(limit)),
            };
            c.read().map(|_| c)
        });
        from_cgroup.or_else(|| {
            let c = OomCounter {
                file: PathBuf::from("/proc/vmstat"),
                limit_file: None,
            };
            c.read().map(|_| c)
        })
    }

    /// The number of processes the kernel killed for memory so far.
    pub fn read(&self) -> Option<u64> {
        let text = std::fs::read_to_string(&self.file).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))?
            .trim()
            .parse()
            .ok()
    }

    /// The cgroup's memory limit in bytes, if it has one.
    pub fn limit(&self) -> Option<u64> {
        let text = std::fs::read_to_string(self.limit_file.as_ref()?).ok()?;
        // v2 says `max`; v1 says a number near 2^63 for none.
        text.trim().parse().ok().filter(|&b: &u64| b < 1 << 60)
    }

    /// The counter's file, for logs.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Whether the cgroup (v2) has `memory.oom.group` set: an OOM kill of any process in it
    /// kills all of them, the supervisor included. Kubernetes 1.28 and later sets it on every
    /// container's cgroup on cgroup v2 nodes (unless the kubelet has `singleProcessOOMKill`),
    /// and systemd with `OOMPolicy=kill`.
    pub fn kills_as_a_group(&self) -> bool {
        if !self.file.ends_with("memory.events") {
            return false;
        }
        let group = self.file.with_file_name("memory.oom.group");
        std::fs::read_to_string(group).is_ok_and(|v| v.trim() == "1")
    }
}

/// The memory cgroup directory of the process whose `/proc/PID/cgroup` and
/// `/proc/PID/mountinfo` are given, and whether it is cgroup v2: the v1 `memory` hierarchy's
/// when it is mounted, else the v2 one's.
fn memory_cgroup_dir(cgroups: &str, mountinfo: &str) -> Option<(PathBuf, bool)> {
    // `ID:controllers:/path`; v2 is `0::/path`.
    let path_of = |v2: bool| {
        cgroups.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let hit = if v2 {
                controllers.is_empty()
            } else {
                controllers.split(',').any(|c| c == "memory")
            };
            hit.then_some(path)
        })
    };
    // `id parent dev root mountpoint options [optional…] - fstype source superoptions`.
    let mount_of = |v2: bool| {
        mountinfo.lines().find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let fields: Vec<&str> = left.split(' ').collect();
            let mut after = right.split(' ');
            let (fstype, _source, options) = (after.next()?, after.next()?, after.next()?);
            let hit = if v2 {
                fstype == "cgroup2"
            } else {
                fstype == "cgroup" && options.split(',').any(|o| o == "memory")
            };
            hit.then(|| (fields.get(3).copied(), fields.get(4).copied()))
                .and_then(|(root, point)| Some((root?, point?)))
        })
    };
    for v2 in [false, true] {
        let (Some(path), Some((root, point))) = (path_of(v2), mount_of(v2)) else {
            continue;
        };
        // The mount shows the hierarchy from `root` on (a container sees its own cgroup as
        // `/`).
        let rel = if root == "/" {
            Some(path)
        } else {
            path.strip_prefix(root)
                .filter(|r| r.is_empty() || r.starts_with('/'))
        };
        let Some(rel) = rel else { continue };
        let dir = Path::new(point).join(rel.trim_start_matches('/'));
        if !v2 || dir.join("memory.events").exists() {
            return Some((dir, v2));
        }
    }
    None
}

/// How long an OOM kill counted before a worker's death may still explain it.
const WINDOW: Duration = Duration::from_secs(2);

/// The counter sampled once a second, and the kills already put down to workers.
///
/// ```
/// use std::time::Instant;
/// use unwedge_supervisor::oom::{OomCounter, OomWatch};
///
/// let mut watch = OomWatch::new(OomCounter::for_this_process().unwrap()).unwrap();
/// watch.tick(Instant::now());
/// // No OOM kill counted meanwhile: a SIGKILL now would be somebody's `kill -9`.
/// assert_eq!(watch.explain_sigkill(Instant::now()), None);
/// ```
#[derive(Debug)]
pub struct OomWatch {
    counter: OomCounter,
    /// (when, count), oldest first, a few seconds' worth.
    samples: VecDeque<(Instant, u64)>,
    /// Kills up to this count are explained (put down to a worker, or older than the window).
    explained: u64,
    /// Kills up to this count were reported as not a worker's ([`OomWatch::tick`]).
    reported: u64,
}

/// A worker's death put down to the OOM killer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OomKill {
    /// The counter before and after.
    pub count: (u64, u64),
    /// The counter's file.
    pub file: PathBuf,
    /// The cgroup's memory limit, if any.
    pub limit: Option<u64>,
}

impl OomWatch {
    /// Watches `counter`, starting from its value now.
    pub fn new(counter: OomCounter) -> Option<OomWatch> {
        let now = counter.read()?;
        Some(OomWatch {
            counter,
            samples: VecDeque::from([(Instant::now(), now)]),
            explained: now,
            reported: now,
        })
    }

    /// Samples the counter (call it about once a second). Returns the OOM kills counted more
    /// than the window ago that no worker's death took: processes of the cgroup that are not
    /// workers (a worker's own children, as a preforking server's, or another process sharing
    /// the cgroup), each returned once.
    pub fn tick(&mut self, now: Instant) -> u64 {
        if let Some(v) = self.counter.read() {
            self.samples.push_back((now, v));
        }
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|&(t, _)| now.duration_since(t) > WINDOW)
        {
            self.samples.pop_front();
        }
        // Settled: counted at least WINDOW ago, so no worker death still to come can take it.
        let Some(settled) = self
            .samples
            .iter()
            .rev()
            .find(|&&(t, _)| now.duration_since(t) >= WINDOW)
            .map(|&(_, v)| v)
        else {
            return 0;
        };
        // Claims take the oldest unexplained kills first: up to `explained`, all are a worker's.
        let from = self.reported.max(self.explained.min(settled));
        self.reported = self.reported.max(settled);
        settled.saturating_sub(from)
    }

    /// The memory limit of the cgroup watched, if it has one.
    pub fn limit(&self) -> Option<u64> {
        self.counter.limit()
    }

    /// See [`OomCounter::kills_as_a_group`].
    pub fn kills_as_a_group(&self) -> bool {
        self.counter.kills_as_a_group()
    }

    /// A worker just died of a SIGKILL nobody here sent: an OOM kill, if the counter grew
    /// within the window by a kill no other worker's death took already.
    pub fn explain_sigkill(&mut self, now: Instant) -> Option<OomKill> {
        let current = self.counter.read()?;
        // The newest sample at least WINDOW old (or the oldest kept): the count before.
        let before = self
            .samples
            .iter()
            .rev()
            .find(|&&(t, _)| now.duration_since(t) >= WINDOW)
            .or(self.samples.front())
            .map_or(current, |&(_, v)| v);
        let from = before.max(self.explained);
        self.samples.push_back((now, current));
        if current > from {
            self.explained = from + 1;
            Some(OomKill {
                count: (from, from + 1),
                file: self.counter.file.clone(),
                limit: self.counter.limit(),
            })
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_memory_cgroup_v1_or_v2_through_the_mounts() {
        let cgroups = "4:memory:/process_api/abc\n0::/\n";
        let mounts = "\
30 25 0:27 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
31 25 0:28 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            memory_cgroup_dir(cgroups, mounts),
            Some((
                PathBuf::from("/sys/fs/cgroup/memory/process_api/abc"),
                false
            ))
        );
        // A container: its own cgroup mounted as the root of the hierarchy.
        let cgroups = "0::/kubepods/pod1/ctr\n";
        let mounts = "40 30 0:30 /kubepods/pod1/ctr /sys/fs/cgroup ro - cgroup2 cgroup rw\n";
        // (No memory.events on this machine at that path: not taken.)
        assert_eq!(memory_cgroup_dir(cgroups, mounts), None);
        // A path outside the mounted part cannot be reached.
        let cgroups = "4:memory:/other\n";
        let mounts = "30 25 0:27 /mine /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(memory_cgroup_dir(cgroups, mounts), None);
    }

    #[test]
    fn memory_oom_group_is_read_on_cgroup_v2_only() {
        let dir = tempfile::tempdir().unwrap();
        let v2 = OomCounter {
            file: dir.path().join("memory.events"),
            limit_file: None,
        };
        assert!(!v2.kills_as_a_group(), "no file: not set");
        std::fs::write(dir.path().join("memory.oom.group"), "0\n").unwrap();
        assert!(!v2.kills_as_a_group());
        std::fs::write(dir.path().join("memory.oom.group"), "1\n").unwrap();
        assert!(v2.kills_as_a_group());
        let v1 = OomCounter {
            file: dir.path().join("memory.oom_control"),
            limit_file: None,
        };
        assert!(!v1.kills_as_a_group());
    }

    #[test]
    fn a_kill_counted_just_before_a_death_explains_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("memory.events");
        let write =
            |n: u64| std::fs::write(&file, format!("low 0\noom 0\noom_kill {n}\n")).unwrap();
        write(3);
        let counter = OomCounter {
            file: file.clone(),
            limit_file: None,
        };
        let t0 = Instant::now();
        let mut w = OomWatch::new(counter).unwrap();
        w.tick(t0 + Duration::from_secs(1));
        // Nothing counted: an ordinary kill -9.
        assert_eq!(w.explain_sigkill(t0 + Duration::from_millis(1500)), None);
        // One OOM kill, then two workers die: the first is it, the second is not.
        write(4);
        let k = w.explain_sigkill(t0 + Duration::from_millis(1600)).unwrap();
        assert_eq!(k.count, (3, 4));
        assert_eq!(w.explain_sigkill(t0 + Duration::from_millis(1700)), None);
        // A kill counted long before (another process in the cgroup) explains nothing later,
        // and is reported once as not a worker's, after the window.
        write(5);
        let others: Vec<u64> = (2..10)
            .map(|s| w.tick(t0 + Duration::from_secs(s)))
            .collect();
        assert_eq!(others.iter().sum::<u64>(), 1, "{others:?}");
        assert_eq!(w.explain_sigkill(t0 + Duration::from_secs(10)), None);
        // The kill a worker's death took (4) was never reported as another's.
        write(7);
        let _ = w.explain_sigkill(t0 + Duration::from_millis(10_100));
        let others: u64 = (11..15).map(|s| w.tick(t0 + Duration::from_secs(s))).sum();
        assert_eq!(others, 1, "two kills, one a worker's");
    }
}
