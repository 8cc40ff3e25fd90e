//! Backtraces for panic reports, captured at once and symbolized off the panicking thread.
//!
//! Capturing a backtrace (walking the stack) takes microseconds; turning it into function
//! names and lines takes milliseconds per cold code unit, 15–100 ms for a request's stack in
//! a fresh process. A panicking request must not wait that long (a graceful crash would wait
//! with it), so the hook only walks the stack, and [`Trace::render`] hands the symbolizing to
//! one background thread and waits for it at most the [budget](Mode::Budgeted). A trace not
//! ready in time is reported as raw frames, each with its offset in the binary or library it
//! belongs to, which `addr2line` turns into lines later with the same binary; the symbolized
//! text follows in the log (`tracing`, target `unwedge::panic`) when it is ready.
//!
//! The symbolizer reads the mapped files' debug information itself (the `addr2line` crate),
//! so it holds no lock that capturing needs: std's backtraces, and the `backtrace` crate's,
//! symbolize under the same process-wide lock as they capture, and a panic would then wait
//! for another panic's symbols (or the warm-up's, 100 ms) before its own stack could be walked.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// How backtraces are captured and rendered, from `UNWEDGE_BACKTRACE` when the hook is
/// installed: `0` (off), `full` (wait for symbols however long it takes), `1` or unset
/// (budgeted). The hook cannot fail, so it takes anything else as unset; `serve()` refuses it
/// (`serve::config::backtrace`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Off,
    /// Symbols if they are ready within this long, raw frames otherwise.
    Budgeted(Duration),
    Full,
}

/// Deepest stack a report shows.
const MAX_FRAMES: usize = 256;

/// How long a report waits for symbols by default.
pub(crate) const DEFAULT_BUDGET: Duration = Duration::from_millis(2);

/// The variable that sets the [`Mode`].
pub(crate) const BACKTRACE_ENV: &str = "UNWEDGE_BACKTRACE";

impl Mode {
    pub(crate) fn from_env() -> Mode {
        std::env::var(BACKTRACE_ENV)
            .ok()
            .and_then(|v| Mode::parse(&v))
            .unwrap_or(Mode::Budgeted(DEFAULT_BUDGET))
    }

    /// A value of [`BACKTRACE_ENV`]: `0` or `off`, `1` or empty (the default budget), `full`;
    /// `None` for anything else.
    pub(crate) fn parse(value: &str) -> Option<Mode> {
        match value.trim() {
            "0" | "off" => Some(Mode::Off),
            "" | "1" => Some(Mode::Budgeted(DEFAULT_BUDGET)),
            "full" => Some(Mode::Full),
            _ => None,
        }
    }
}

/// A captured, not yet symbolized backtrace: the frames' instruction pointers.
#[derive(Debug, Clone)]
pub(crate) struct Trace(Vec<usize>);

impl Trace {
    /// Walks this thread's stack (no symbols).
    pub(crate) fn capture() -> Trace {
        let mut ips = Vec::with_capacity(64);
        backtrace::trace(|frame| {
            ips.push(frame.ip() as usize);
            ips.len() < MAX_FRAMES
        });
        Trace(ips)
    }

    /// The report's text: symbolized when the symbolizer answers within `mode`'s budget, raw
    /// frames otherwise (the symbolized text is then logged when ready, labelled `label`).
    pub(crate) fn render(&self, mode: Mode, label: &str) -> String {
        let budget = match mode {
            Mode::Off => return raw(&self.0),
            Mode::Budgeted(budget) => Some(budget),
            Mode::Full => None,
        };
        let (reply, answer) = mpsc::sync_channel(1);
        let job = Job {
            trace: self.0.clone(),
            reply,
            label: Some(label.to_owned()),
        };
        if !symbolizer().submit(job) {
            return raw(&self.0);
        }
        let symbolized = match budget {
            Some(budget) => answer.recv_timeout(budget).ok(),
            None => answer.recv().ok(),
        };
        symbolized.unwrap_or_else(|| raw(&self.0))
    }
}

struct Job {
    trace: Vec<usize>,
    reply: SyncSender<String>,
    /// The panic, for the log line when the report went out without these symbols.
    label: Option<String>,
}

struct Symbolizer {
    jobs: Mutex<Option<SyncSender<Job>>>,
}

/// Backtraces waiting for the symbolizer at most; more (a storm of panics) get raw frames
/// at once, so that memory stays bounded.
const QUEUE: usize = 32;

impl Symbolizer {
    /// Queues `job`; false when the queue is full or the thread is gone.
    fn submit(&self, job: Job) -> bool {
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        jobs.as_ref().is_some_and(|tx| tx.try_send(job).is_ok())
    }
}

/// The process's symbolizer thread, started on first use.
fn symbolizer() -> &'static Symbolizer {
    static SYMBOLIZER: OnceLock<Symbolizer> = OnceLock::new();
    SYMBOLIZER.get_or_init(|| {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("unwedge-symbols".into())
            .spawn(move || symbolize_forever(rx));
        if let Err(e) = &spawned {
            tracing::debug!(error = %e, "could not start the backtrace symbolizer thread");
        }
        Symbolizer {
            jobs: Mutex::new(spawned.ok().map(|_| tx)),
        }
    })
}

fn symbolize_forever(jobs: Receiver<Job>) {
    let mut loaders = Loaders::default();
    for job in jobs {
        let text = loaders.symbolize(&job.trace);
        if let (Err(mpsc::SendError(text)), Some(label)) = (job.reply.send(text), &job.label) {
            // The report went out with raw frames; its symbols follow in the log.
            tracing::info!(
                target: "unwedge::panic",
                panic = %label,
                backtrace = %text,
                "symbolized backtrace of a reported panic"
            );
        }
    }
}

/// Loads the binary's symbols on the symbolizer thread ahead of the first panic, so that it
/// is more likely to answer within the budget.
pub(crate) fn warm_up() {
    let (reply, _unread) = mpsc::sync_channel(1);
    let job = Job {
        trace: Trace::capture().0,
        reply,
        label: None,
    };
    symbolizer().submit(job);
}

/// One line per frame: `N: 0xADDR <module>+0xOFFSET`, then how to symbolize them.
fn raw(trace: &[usize]) -> String {
    let maps = mappings();
    let mut out = String::from(
        "not symbolized in time; raw frames (symbolize with `addr2line -Cfipe <module> <offset>...`):\n",
    );
    let mut modules: Vec<&PathBuf> = Vec::new();
    for (i, &ip) in trace.iter().enumerate() {
        match find_mapping(maps, ip) {
            Some(m) => {
                let name = m.path.file_name().unwrap_or_default().to_string_lossy();
                let _ = writeln!(out, "{i:4}: {ip:#x} {name}+{:#x}", ip - m.base);
                if !modules.contains(&&m.path) {
                    modules.push(&m.path);
                }
            }
            None => {
                let _ = writeln!(out, "{i:4}: {ip:#x}");
            }
        }
    }
    for m in modules {
        let _ = writeln!(out, "module {}", m.display());
    }
    out
}

fn find_mapping(maps: &[Mapping], ip: usize) -> Option<&Mapping> {
    maps.iter().find(|m| m.start <= ip && ip < m.end)
}

/// The symbolizer thread's open debug information, one per mapped file.
#[derive(Default)]
struct Loaders {
    files: HashMap<PathBuf, Option<addr2line::Loader>>,
}

impl Loaders {
    fn get(&mut self, path: &Path) -> Option<&addr2line::Loader> {
        self.files
            .entry(path.to_owned())
            .or_insert_with(|| addr2line::Loader::new(path).ok())
            .as_ref()
    }

    /// std's layout: `N: function` then `at file:line:col`, inlined functions numbered with
    /// their caller; the frames of the unwinder and the panic machinery before the panic
    /// (up to std's `__rust_end_short_backtrace` marker) are left out.
    fn symbolize(&mut self, trace: &[usize]) -> String {
        let maps = mappings();
        let mut lines: Vec<(String, Option<String>)> = Vec::new();
        for (i, &ip) in trace.iter().enumerate() {
            let Some(m) = find_mapping(maps, ip) else {
                lines.push((format!("{ip:#x} <unknown>"), None));
                continue;
            };
            // A return address points after the call: look up the call itself.
            let probe = (ip - m.base).saturating_sub(usize::from(i > 0)) as u64;
            let module = m.path.file_name().unwrap_or_default().to_string_lossy();
            let Some(loader) = self.get(&m.path) else {
                lines.push((format!("{ip:#x} {module}+{probe:#x}"), None));
                continue;
            };
            // The symbol table's name of the real function (the outermost of an address's
            // frames): the full path, where inlined frames only have short DWARF names.
            let symbol = loader.find_symbol(probe).map(demangle);
            let fallback = || {
                symbol
                    .clone()
                    .unwrap_or_else(|| format!("{module}+{probe:#x}"))
            };
            let before = lines.len();
            if let Ok(mut frames) = loader.find_frames(probe) {
                while let Ok(Some(frame)) = frames.next() {
                    let name = frame
                        .function
                        .as_ref()
                        .and_then(|f| f.demangle().ok().map(|n| n.into_owned()));
                    let at = frame.location.as_ref().and_then(|l| {
                        let file = l.file?;
                        Some(match (l.line, l.column) {
                            (Some(line), Some(col)) => format!("{file}:{line}:{col}"),
                            (Some(line), None) => format!("{file}:{line}"),
                            _ => file.to_owned(),
                        })
                    });
                    lines.push((name.unwrap_or_else(fallback), at));
                }
            }
            match (lines.len() > before, &symbol) {
                (true, Some(symbol)) => lines.last_mut().expect("pushed above").0 = symbol.clone(),
                (true, None) => {}
                (false, _) => lines.push((fallback(), None)),
            }
        }
        let start = lines
            .iter()
            .rposition(|(name, _)| name.contains("__rust_end_short_backtrace"))
            .map_or(0, |i| i + 1);
        let mut out = String::new();
        for (n, (name, at)) in lines[start..].iter().enumerate() {
            let _ = writeln!(out, "{n:4}: {name}");
            if let Some(at) = at {
                let _ = writeln!(out, "             at {at}");
            }
        }
        out
    }
}

fn demangle(name: &str) -> String {
    addr2line::demangle_auto(name.into(), None).into_owned()
}

/// An executable mapping of a file, and the address the file is loaded at.
struct Mapping {
    start: usize,
    end: usize,
    /// Where the file's first byte is mapped (its load address): frame offsets are from here.
    base: usize,
    path: PathBuf,
}

/// This process's executable file mappings, read once from `/proc/self/maps`.
fn mappings() -> &'static [Mapping] {
    static MAPS: OnceLock<Vec<Mapping>> = OnceLock::new();
    MAPS.get_or_init(|| {
        std::fs::read_to_string("/proc/self/maps")
            .map(|text| parse_maps(&text))
            .unwrap_or_default()
    })
}

fn parse_maps(text: &str) -> Vec<Mapping> {
    struct Line<'a> {
        start: usize,
        end: usize,
        exec: bool,
        offset: usize,
        path: &'a str,
    }
    let lines: Vec<Line<'_>> = text
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (range, perms, offset) = (f.next()?, f.next()?, f.next()?);
            let path = f.nth(2)?;
            let (start, end) = range.split_once('-')?;
            Some(Line {
                start: usize::from_str_radix(start, 16).ok()?,
                end: usize::from_str_radix(end, 16).ok()?,
                exec: perms.contains('x'),
                offset: usize::from_str_radix(offset, 16).ok()?,
                path,
            })
        })
        .filter(|l| l.path.starts_with('/'))
        .collect();
    lines
        .iter()
        .filter(|l| l.exec)
        .map(|l| {
            let base = lines
                .iter()
                .filter(|o| o.path == l.path && o.offset == 0)
                .map(|o| o.start)
                .min()
                .unwrap_or(l.start - l.offset);
            Mapping {
                start: l.start,
                end: l.end,
                base,
                path: PathBuf::from(l.path),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_give_offsets_from_the_load_address() {
        let text = "\
55d0c0000000-55d0c0010000 r--p 00000000 08:01 123 /usr/bin/app
55d0c0010000-55d0c0100000 r-xp 00010000 08:01 123 /usr/bin/app
7f0000000000-7f0000001000 rw-p 00000000 00:00 0
7f0000100000-7f0000200000 r-xp 00028000 08:01 456 /lib/libc.so.6
7f00000d8000-7f0000100000 r--p 00000000 08:01 456 /lib/libc.so.6
";
        let maps = parse_maps(text);
        assert_eq!(maps.len(), 2);
        assert_eq!(maps[0].base, 0x55d0c0000000);
        assert_eq!(maps[1].base, 0x7f00000d8000);
        assert_eq!(maps[1].path, PathBuf::from("/lib/libc.so.6"));
    }

    #[test]
    fn raw_frames_name_this_test_binary() {
        let t = Trace::capture();
        let text = raw(&t.0);
        assert!(t.0.len() > 3, "{t:?}");
        let exe = std::env::current_exe().unwrap();
        let name = exe.file_name().unwrap().to_string_lossy().into_owned();
        assert!(text.contains(&format!("{name}+0x")), "{text}");
        assert!(
            text.contains(&format!("module {}", exe.display())),
            "{text}"
        );
    }

    #[test]
    fn full_mode_symbolizes_and_names_this_function() {
        let t = Trace::capture();
        let text = t.render(Mode::Full, "test");
        assert!(
            text.contains("full_mode_symbolizes_and_names_this_function"),
            "{text}"
        );
    }

    #[test]
    fn the_queue_is_bounded_and_a_full_queue_refuses_at_once() {
        // A storm: far more backtraces than the queue holds, offered faster than any can be
        // symbolized. Some are refused (their reports get raw frames), none blocks the caller.
        let t = Trace::capture();
        let start = std::time::Instant::now();
        let refused = (0..QUEUE * 30)
            .filter(|_| {
                let (reply, _answer) = mpsc::sync_channel(1);
                let job = Job {
                    trace: t.0.clone(),
                    reply,
                    label: None,
                };
                !symbolizer().submit(job)
            })
            .count();
        assert!(refused > 0, "a queue of {QUEUE} took {} jobs", QUEUE * 30);
        assert!(start.elapsed() < Duration::from_secs(5));
        // And a refused trace still renders, raw and at once.
        let text = t.render(Mode::Budgeted(Duration::ZERO), "storm");
        assert!(text.starts_with("not symbolized in time"), "{text}");
    }

    #[test]
    fn a_zero_budget_gives_raw_frames_at_once() {
        let t = Trace::capture();
        let start = std::time::Instant::now();
        // A cold symbolizer cannot answer in no time.
        let text = t.render(Mode::Budgeted(Duration::ZERO), "test");
        assert!(text.starts_with("not symbolized in time"), "{text}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
