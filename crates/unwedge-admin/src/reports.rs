//! [`ReportDir`]: crash reports that outlive the crash, as JSON lines on disk.
//!
//! Layout: the current file `reports.jsonl`, and rotated files `reports.1.jsonl` (newest)
//! … `reports.N.jsonl` (oldest). Each line is one [`Record`].

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::status::Record;

const CURRENT: &str = "reports.jsonl";

/// Errors of the report directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// The directory cannot be created or written.
    #[error("cannot write crash reports to {}: {source}", dir.display())]
    Unwritable {
        /// The directory.
        dir: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// Reading or appending failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done ("append to", "read").
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// A report file's path holds something else (a FIFO, whose read would wait for a
    /// writer for ever; a device; a directory): `unwedge reports` refuses it.
    #[error("cannot read {}: {what}, not a regular file (reports are regular files)", path.display())]
    NotRegular {
        /// The file.
        path: PathBuf,
        /// What it is: "a FIFO", "a device", …
        what: &'static str,
    },
}

/// Where to keep reports and how much.
#[derive(Debug, Clone)]
pub struct ReportDirConfig {
    /// The directory (created if missing, readable by the supervisor's user only: `0700`;
    /// the files in it are created `0600`).
    pub dir: PathBuf,
    /// Rotate the current file once it would grow past this many bytes (`--report-max-bytes`).
    pub max_bytes: u64,
    /// How many rotated files to keep besides the current one; older ones are deleted.
    pub keep: usize,
}

impl ReportDirConfig {
    /// `dir` with 10 MiB per file and 5 rotated files kept.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ReportDirConfig {
            dir: dir.into(),
            max_bytes: 10 * 1024 * 1024,
            keep: 5,
        }
    }
}

/// An append-only, size-rotated log of [`Record`]s (`--report-dir`).
///
/// [`append`](ReportDir::append) returns only after the line is on disk (`fsync`), so an
/// alert sent afterwards never points at a report that a power cut or a `SIGKILL` of the
/// supervisor could still lose. Its I/O is blocking: from async code call it through
/// `tokio::task::spawn_blocking` (or accept a millisecond on the caller's thread).
///
/// ```
/// use unwedge_admin::{ExitRecord, ExitStatus, Record, ReportDir, ReportDirConfig};
///
/// let tmp = tempfile::tempdir().unwrap();
/// let dir = ReportDir::open(ReportDirConfig::new(tmp.path())).unwrap();
/// let exit = ExitRecord::new(Some("w1"), Some(1234), ExitStatus { code: None, signal: Some(9) });
/// dir.append(&Record::Exit(exit)).unwrap();
///
/// let back = unwedge_admin::read_reports(tmp.path(), None).unwrap();
/// assert_eq!(back.len(), 1);
/// assert_eq!(back[0].message(), "signal 9");
/// ```
#[derive(Debug)]
pub struct ReportDir {
    config: ReportDirConfig,
    current: Mutex<Current>,
}

#[derive(Debug)]
struct Current {
    file: File,
    len: u64,
    /// The file may not end with a line break (a write failed halfway): the next record
    /// starts on a new line.
    torn: bool,
}

impl ReportDir {
    /// Opens (creating if needed) the directory and its current file, and checks that it is
    /// writable, so a bad `--report-dir` is reported at start-up.
    pub fn open(config: ReportDirConfig) -> Result<Self, ReportError> {
        let unwritable = |source| ReportError::Unwritable {
            dir: config.dir.clone(),
            source,
        };
        let current = open_current(&config.dir).map_err(unwritable)?;
        Ok(ReportDir {
            config,
            current: Mutex::new(current),
        })
    }

    /// Checks what [`open`](ReportDir::open) needs, and leaves nothing behind: that the
    /// directory can be created (or is there), that a file can be created in it, and that its
    /// current file, if there is one, opens for appending. The directories it had to create to
    /// find out are removed again; the error is the one `open` would return. For checking a
    /// configuration (`unwedge check-config`) while a supervisor may be writing there.
    ///
    /// ```
    /// use unwedge_admin::{ReportDir, ReportDirConfig};
    ///
    /// let tmp = tempfile::tempdir().unwrap();
    /// let dir = tmp.path().join("state/reports");
    /// ReportDir::check(&ReportDirConfig::new(&dir)).unwrap();
    /// assert!(!tmp.path().join("state").exists(), "nothing left behind");
    ///
    /// let file = tmp.path().join("a-file");
    /// std::fs::write(&file, "").unwrap();
    /// let e = ReportDir::check(&ReportDirConfig::new(file.join("reports"))).unwrap_err();
    /// assert!(e.to_string().starts_with("cannot write crash reports to "), "{e}");
    /// ```
    pub fn check(config: &ReportDirConfig) -> Result<(), ReportError> {
        // The directories that are not there yet, innermost first.
        let mut missing = Vec::new();
        let mut dir = config.dir.as_path();
        while fs::symlink_metadata(dir).is_err() {
            missing.push(dir);
            match dir.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => dir = parent,
                _ => break,
            }
        }
        let checked = create_dir_and_probe(&config.dir).and_then(|()| {
            let current = config.dir.join(CURRENT);
            match fs::symlink_metadata(&current) {
                Ok(_) => no_follow().read(true).append(true).open(&current).map(drop),
                Err(_) => Ok(()),
            }
        });
        for dir in missing {
            // Only if still empty: a supervisor starting meanwhile may have written there.
            let _ = fs::remove_dir(dir);
        }
        checked.map_err(|source| ReportError::Unwritable {
            dir: config.dir.clone(),
            source,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.config.dir
    }

    /// Appends one record as a JSON line and fsyncs it, rotating first if the current file
    /// would grow past `max_bytes`.
    pub fn append(&self, record: &Record) -> Result<(), ReportError> {
        let mut line = serde_json::to_vec(record).expect("a Record always serializes");
        line.push(b'\n');
        // A poisoned lock only means another append panicked; the file is still fine.
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        self.reopen_if_moved(&mut cur)?;
        if cur.len > 0 && cur.len + line.len() as u64 > self.config.max_bytes {
            self.rotate(&mut cur)?;
        }
        if cur.torn {
            line.insert(0, b'\n');
        }
        let path = self.config.dir.join(CURRENT);
        let io = |source| ReportError::Io {
            what: "cannot append to",
            path: path.clone(),
            source,
        };
        // Until this line is whole, the file may end inside it.
        cur.torn = true;
        cur.file.write_all(&line).map_err(io)?;
        cur.torn = false;
        cur.len += line.len() as u64;
        cur.file.sync_data().map_err(io)?;
        Ok(())
    }

    /// The open file is no longer the directory's current file (the directory was removed or
    /// replaced, the file deleted or moved by hand, a cleaner ran): appending to it would
    /// write records nobody can read, counted as written. Opens the current file again,
    /// creating the directory as at start-up; an error (the path is now a file, say) fails
    /// this append, so that the record counts as not written.
    fn reopen_if_moved(&self, cur: &mut Current) -> Result<(), ReportError> {
        use std::os::unix::fs::MetadataExt;
        let path = self.config.dir.join(CURRENT);
        let same = match (fs::symlink_metadata(&path), cur.file.metadata()) {
            (Ok(on_disk), Ok(open)) => on_disk.dev() == open.dev() && on_disk.ino() == open.ino(),
            _ => false,
        };
        if same {
            return Ok(());
        }
        *cur = open_current(&self.config.dir).map_err(|source| ReportError::Io {
            what: "cannot open again (moved or removed while open)",
            path: path.clone(),
            source,
        })?;
        tracing::warn!(
            file = %path.display(),
            "the crash report file was moved or removed while open: writing to a new one"
        );
        Ok(())
    }

    /// Shifts `reports.K` to `reports.K+1` (dropping the ones past `keep`) and starts a new
    /// current file.
    fn rotate(&self, cur: &mut Current) -> Result<(), ReportError> {
        let dir = &self.config.dir;
        let io = |path: PathBuf| {
            move |source| ReportError::Io {
                what: "cannot rotate",
                path,
                source,
            }
        };
        if self.config.keep == 0 {
            let _ = fs::remove_file(dir.join(CURRENT));
        } else {
            let _ = fs::remove_file(rotated(dir, self.config.keep));
            for k in (1..self.config.keep).rev() {
                let from = rotated(dir, k);
                if from.exists() {
                    fs::rename(&from, rotated(dir, k + 1)).map_err(io(from))?;
                }
            }
            fs::rename(dir.join(CURRENT), rotated(dir, 1)).map_err(io(dir.join(CURRENT)))?;
        }
        cur.file = open_append(&dir.join(CURRENT)).map_err(io(dir.join(CURRENT)))?;
        cur.len = 0;
        cur.torn = false;
        // Make the renames durable too.
        sync_dir(dir);
        Ok(())
    }

    /// Every record still on disk, oldest first; with `since`, only those recorded within
    /// that long before now.
    pub fn list(&self, since: Option<Duration>) -> Result<Vec<Record>, ReportError> {
        // Hold the lock so a rotation cannot move files under the reader.
        let _cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        read_reports(&self.config.dir, since)
    }
}

/// Creates `dir` if needed and opens its current file to append, noting whether it ends in
/// the middle of a line.
fn open_current(dir: &Path) -> io::Result<Current> {
    create_dir_and_probe(dir)?;
    let file = open_append(&dir.join(CURRENT))?;
    let len = file.metadata()?.len();
    // A supervisor that died mid-write left a torn last line: the next record must not be
    // glued to it.
    let torn = len > 0 && {
        let mut last = [0u8; 1];
        file.read_exact_at(&mut last, len - 1)?;
        last[0] != b'\n'
    };
    // Make a newly created reports.jsonl's directory entry durable too.
    sync_dir(dir);
    Ok(Current { file, len, torn })
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Creates `dir` if needed (`0700`: reports hold request data, only the supervisor's user may
/// read them), and checks that a file can be created in it (rotation creates files), with a
/// probe file removed at once: a new file (`O_EXCL`, mode `0600`) under a random name, so
/// that nothing planted in a directory others may write to (a link to another file, which a
/// truncating open of a name known in advance would empty) is opened, and nothing planted
/// can make the check fail either.
fn create_dir_and_probe(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    // Removed when dropped. Its error without the random name (tempfile adds the path): the
    // operating system's, as the directory's own.
    tempfile::Builder::new()
        .prefix(".unwedge-probe-")
        .tempfile_in(dir)
        .map_err(|e| {
            let os = std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<io::Error>())
                .and_then(io::Error::raw_os_error);
            os.map_or(e, io::Error::from_raw_os_error)
        })?;
    Ok(())
}

/// Opens `path` to append, creating it readable and writable by its owner only (`0600`):
/// reports hold request paths, messages and headers.
///
/// Only a regular file of this process's user with no other name: in a report directory
/// others may write to, a FIFO planted at its path would block every write (and with them
/// the alerts and metrics of each event, and the supervisor's exit), a file of another user
/// would receive the reports where that user reads them, a hard link would append them to
/// another file. Opened without waiting (`O_NONBLOCK`, which does not change how a regular
/// file is written).
fn open_append(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::MetadataExt;
    // Readable too: `open` looks at the last byte.
    let file = no_follow()
        .mode(0o600)
        .create(true)
        .read(true)
        .append(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(path)?;
    let meta = file.metadata()?;
    let refuse = |why: String| Err(io::Error::other(why));
    if !meta.file_type().is_file() {
        return refuse("not a regular file (something else was put at its path)".into());
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return refuse(format!(
            "owned by uid {}, not this process's {me} (someone else's file at its path)",
            meta.uid()
        ));
    }
    if meta.nlink() > 1 {
        return refuse(format!(
            "it has {} names (a hard link to another file)",
            meta.nlink()
        ));
    }
    Ok(file)
}

/// Opens never through a symbolic link (`O_NOFOLLOW`): the supervisor often runs as root,
/// and a link planted in a report directory others may write to would make it append to, or
/// create, any file.
fn no_follow() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
    o
}

/// Opens a report file to read without waiting (`O_NONBLOCK`): a FIFO at its path, which
/// [`scan`] then refuses, would wait for a writer for ever.
fn open_read(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
}

/// "a FIFO", "a directory", … for [`ReportError::NotRegular`].
fn kind_of(kind: fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "a device"
    }
}

fn rotated(dir: &Path, k: usize) -> PathBuf {
    dir.join(format!("reports.{k}.jsonl"))
}

/// Reads every record in `dir` (rotated files first, oldest first), without opening it for
/// writing: what `unwedge reports` does. Lines that do not parse (a line torn by a crash of
/// the supervisor mid-write, bytes that are not UTF-8) are skipped, and their number logged.
pub fn read_reports(dir: &Path, since: Option<Duration>) -> Result<Vec<Record>, ReportError> {
    let (records, skipped) = scan(dir, since)?;
    if skipped > 0 {
        tracing::warn!(skipped, dir = %dir.display(), "unreadable report lines skipped");
    }
    Ok(records)
}

/// [`read_reports`], and the number of lines skipped.
fn scan(dir: &Path, since: Option<Duration>) -> Result<(Vec<Record>, usize), ReportError> {
    let mut rotated_files: Vec<(usize, PathBuf)> = Vec::new();
    let entries = fs::read_dir(dir).map_err(|source| ReportError::Io {
        what: "cannot read report directory",
        path: dir.to_owned(),
        source,
    })?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(k) = name
            .strip_prefix("reports.")
            .and_then(|r| r.strip_suffix(".jsonl"))
            .and_then(|k| k.parse::<usize>().ok())
        {
            rotated_files.push((k, entry.path()));
        }
    }
    // Highest number is oldest.
    rotated_files.sort_by_key(|f| std::cmp::Reverse(f.0));
    let mut files: Vec<PathBuf> = rotated_files.into_iter().map(|(_, p)| p).collect();
    files.push(dir.join(CURRENT));

    let cutoff = since.and_then(|s| SystemTime::now().checked_sub(s));
    let mut out = Vec::new();
    let mut skipped = 0;
    for path in files {
        let file = match open_read(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(match fs::metadata(&path) {
                    // A unix socket cannot be opened at all (ENXIO): say what it is.
                    Ok(m) if !m.is_file() => ReportError::NotRegular {
                        what: kind_of(m.file_type()),
                        path,
                    },
                    _ => ReportError::Io {
                        what: "cannot read",
                        path,
                        source,
                    },
                });
            }
        };
        let kind = file
            .metadata()
            .map_err(|source| ReportError::Io {
                what: "cannot read",
                path: path.clone(),
                source,
            })?
            .file_type();
        if !kind.is_file() {
            return Err(ReportError::NotRegular {
                what: kind_of(kind),
                path,
            });
        }
        // Raw bytes: a torn line may end inside a UTF-8 sequence, and must not fail the rest.
        for line in BufReader::new(file).split(b'\n') {
            let line = line.map_err(|source| ReportError::Io {
                what: "cannot read",
                path: path.clone(),
                source,
            })?;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let Some(mut record) = parse_line(&line) else {
                skipped += 1;
                continue;
            };
            // Written by a version that stored reports as received: never show credentials.
            record.redact();
            if let (Some(cutoff), Some(t)) = (cutoff, record.system_time()) {
                if t < cutoff {
                    continue;
                }
            }
            out.push(record);
        }
    }
    Ok((out, skipped))
}

/// One line of a report file as a record. A line an older version glued to a torn one
/// (`{"kind":"exit","ti{"kind":"panic",…}`) still gives its whole record: the last
/// `{"kind":` that starts a record parses (that text cannot occur inside a JSON string,
/// where its quotes would be escaped).
fn parse_line(line: &[u8]) -> Option<Record> {
    if let Ok(record) = serde_json::from_slice(line) {
        return Some(record);
    }
    const START: &[u8] = b"{\"kind\":";
    (1..line.len())
        .rev()
        .filter(|&i| line[i..].starts_with(START))
        .find_map(|i| serde_json::from_slice(&line[i..]).ok())
}

/// What `unwedge reports [--dir DIR] [--since DUR] [--json]` prints: the records of `dir`
/// as a table (or as JSON lines with `json`), oldest first. Returns the number of lines that
/// could not be read and were skipped (torn by a crash mid-write, or not records), for the
/// caller to mention: the table says it in a last line, the JSON output cannot.
///
/// ```
/// use unwedge_admin::{print_reports, ExitRecord, ExitStatus, Record, ReportDir, ReportDirConfig};
///
/// let tmp = tempfile::tempdir().unwrap();
/// let dir = ReportDir::open(ReportDirConfig::new(tmp.path())).unwrap();
/// let exit = ExitRecord::new(Some("w2"), Some(77), ExitStatus { code: Some(70), signal: None });
/// dir.append(&Record::Exit(exit)).unwrap();
///
/// let mut out = Vec::new();
/// print_reports(tmp.path(), None, false, &mut out).unwrap();
/// let table = String::from_utf8(out).unwrap();
/// assert!(table.starts_with("TIME"));
/// assert!(table.contains("exit 70"));
/// ```
pub fn print_reports(
    dir: &Path,
    since: Option<Duration>,
    json: bool,
    out: &mut impl Write,
) -> Result<usize, ReportError> {
    let (records, skipped) = scan(dir, since)?;
    let io = |source| ReportError::Io {
        what: "cannot write",
        path: PathBuf::from("<stdout>"),
        source,
    };
    if json {
        for r in &records {
            let line = serde_json::to_string(r).expect("a Record always serializes");
            writeln!(out, "{line}").map_err(io)?;
        }
        return Ok(skipped);
    }
    write_records(&records, out).map_err(io)?;
    if records.is_empty() {
        writeln!(
            out,
            "(no reports in {})",
            visible(&dir.display().to_string())
        )
        .map_err(io)?;
    }
    if skipped > 0 {
        writeln!(
            out,
            "({skipped} unreadable line(s) skipped: torn by a crash mid-write, or not records)"
        )
        .map_err(io)?;
    }
    Ok(skipped)
}

/// The table of `records` that `unwedge reports` and `unwedge status` print: a header line,
/// then one line per record.
pub(crate) fn write_records(records: &[Record], out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<24}  {:<5}  {:>6}  {:>8}  {:<30}  WHAT",
        "TIME", "KIND", "WORKER", "PID", "WHERE"
    )?;
    for r in records {
        let (kind, place) = match r {
            Record::Panic(p) => (
                "panic",
                p.request_line()
                    .or_else(|| p.str_field("task").map(|t| format!("task {t}")))
                    .or_else(|| p.str_field("location").map(str::to_owned))
                    .unwrap_or_default(),
            ),
            Record::Exit(_) => ("exit", String::new()),
        };
        // Everything here came from a worker (or a file): nothing reaches the terminal raw.
        writeln!(
            out,
            "{:<24}  {:<5}  {:>6}  {:>8}  {:<30}  {}",
            visible(r.time()),
            kind,
            visible(r.worker().unwrap_or("-")),
            r.pid().map_or_else(|| "-".to_owned(), |p| p.to_string()),
            cut(&visible(&place), 30),
            cut(&visible(&r.message()), 120),
        )?;
    }
    Ok(())
}

/// `s` made safe to print on a terminal, on one line: a line break or a tab becomes a space,
/// and every other control character (C0, DEL, C1: `ESC` starts the sequences that move the
/// cursor, clear the screen or set the window title) and the bidirectional-text controls
/// (which reorder what is shown) become a visible escape: `\x1b`, `\x9b`, `\u{202e}`.
pub(crate) fn visible(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' | '\r' | '\t' => out.push(' '),
            // Cc: U+0000..=U+001F, U+007F..=U+009F.
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            '\u{061c}'
            | '\u{200e}'
            | '\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}' => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

pub(crate) fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut t: String = s.chars().take(max - 1).collect();
    t.push('…');
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::PanicRecord;

    #[test]
    fn control_characters_become_visible_escapes() {
        assert_eq!(visible("a\u{1b}[31mb"), r"a\x1b[31mb");
        assert_eq!(
            visible("\u{0}\u{7}\u{7f}\u{85}\u{9b}"),
            r"\x00\x07\x7f\x85\x9b"
        );
        assert_eq!(visible("l1\r\nl2\tx"), "l1  l2 x");
        assert_eq!(visible("\u{202e}\u{2066}"), r"\u{202e}\u{2066}");
        assert_eq!(visible("héllo → ✓"), "héllo → ✓");
    }

    /// `unwedge reports`: the table shows a worker's escape sequences as text.
    #[test]
    fn the_reports_table_never_prints_a_control_character() {
        let evil = "x\u{1b}]52;c;cm0gLXJm\u{7}\u{1b}[2J\u{9b}H";
        let report = serde_json::json!({"time": evil, "message": evil,
            "request": {"method": evil, "path": evil, "request_id": "r1"}});
        let records = [Record::Panic(PanicRecord::new(Some(evil), report))];
        let mut out = Vec::new();
        write_records(&records, &mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(!out.chars().any(|c| c != '\n' && c.is_control()), "{out:?}");
        assert_eq!(out.lines().count(), 2, "{out}");
        assert!(
            out.contains(r"x\x1b]52;c;cm0gLXJm\x07\x1b[2J\x9bH"),
            "{out}"
        );
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// A line torn by a crash mid-write (any prefix of a record, cut inside a character
        /// too) and the record written after it on the same line: the record is read back;
        /// any bytes at all: no panic.
        #[test]
        fn a_record_after_a_torn_line_is_read(
            message in "([a-z{}\":,]|\\\\|é|日本|🦀|\n){0,40}",
            cut in any::<prop::sample::Index>(),
            junk in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let report = serde_json::json!({"message": message, "pid": 7, "kind": {"kind": 1}});
            let record = Record::Panic(PanicRecord::new(Some("w1"), report));
            let line = serde_json::to_vec(&record).unwrap();
            let mut torn = line[..cut.index(line.len())].to_vec();
            torn.extend_from_slice(&line);
            prop_assert_eq!(parse_line(&torn), Some(record));
            let _ = parse_line(&junk);
        }
    }
}
