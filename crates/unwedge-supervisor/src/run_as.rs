//! Who the workers run as: `--user` and `--group`, as systemd's `User=` and `Group=`, nginx's
//! `user` directive or gunicorn's `--user`.
//!
//! A supervisor started as root (to bind port 80, or because the container runs as root)
//! keeps root for itself (it holds the sockets, signals the workers and reads their `/proc`
//! files) and runs every worker as an unprivileged user. The names are looked up in the user
//! database once, when the configuration is resolved; each worker's [shim](crate::shim)
//! switches before it `exec`s the command: supplementary groups (the user's, from the group
//! database), then the group, then the user, then it asks for its parent-death signal (a
//! change of user clears it). The worker also gets `USER`, `LOGNAME`, `HOME` and `SHELL`
//! from the user's entry, as under systemd's `User=`, and owns its stdout and stderr pipes
//! (so `/dev/stdout` can be opened again) and the notify socket (so it can say `READY=1`).
//!
//! ```
//! use unwedge_supervisor::run_as::RunAs;
//!
//! let nobody = RunAs::resolve(Some("nobody"), None).unwrap().unwrap();
//! assert!(nobody.uid.is_some());
//! assert_eq!(nobody.account.as_ref().unwrap().name, "nobody");
//! assert!(RunAs::resolve(None, None).unwrap().is_none());
//! assert!(RunAs::resolve(Some("no-such-user-here"), None).is_err());
//! ```

use std::ffi::CString;
use std::fmt;
use std::path::PathBuf;

use nix::unistd::{Gid, Group, Uid, User};

/// Environment variable that carries the credentials to the shim: `uid:gid:g1,g2,…` (the
/// uid may be empty: keep the current one).
pub const SHIM_CREDENTIALS_ENV: &str = "UNWEDGE_SHIM_CREDENTIALS";

/// The user and groups the workers run as, resolved from `--user` and `--group`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunAs {
    /// `--user` as given (a name or a number).
    pub user: Option<String>,
    /// `--group` as given (a name or a number).
    pub group: Option<String>,
    /// The user id to switch to (`None`: only `--group` was given; the user stays).
    pub uid: Option<u32>,
    /// The group id: `--group`'s, else the user's primary group.
    pub gid: u32,
    /// The supplementary groups: the user's in the group database (with `gid`), or only
    /// `gid` for a user without an entry or with only `--group`.
    pub groups: Vec<u32>,
    /// The user's entry in the user database, when it has one.
    pub account: Option<Account>,
}

/// What the user database says of the user: the workers' `USER`, `LOGNAME`, `HOME` and
/// `SHELL`.
///
/// ```
/// let root = unwedge_supervisor::run_as::RunAs::resolve(Some("root"), None).unwrap().unwrap();
/// let account = root.account.unwrap();
/// assert_eq!((account.name.as_str(), account.home.to_str()), ("root", Some("/root")));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The login name.
    pub name: String,
    /// The home directory.
    pub home: PathBuf,
    /// The login shell.
    pub shell: PathBuf,
}

impl RunAs {
    /// Looks `user` and `group` up (names or numbers). `Ok(None)` when neither is given; an
    /// `Err` is a one-line message for a usage error.
    ///
    /// A number that is not in the user database is a valid user id only with `group` given
    /// (nothing else names its group).
    pub fn resolve(user: Option<&str>, group: Option<&str>) -> Result<Option<RunAs>, String> {
        if user.is_none() && group.is_none() {
            return Ok(None);
        }
        for (flag, value) in [("--user", user), ("--group", group)] {
            if value.is_some_and(|v| v.trim().is_empty()) {
                return Err(format!("{flag} is empty: give a name or a number"));
            }
        }
        let mut uid = None;
        let mut account = None;
        let mut user_gid = None;
        if let Some(name) = user {
            let entry = lookup_user(name)?;
            uid = Some(match (&entry, name.parse::<u32>()) {
                (Some(e), _) => e.uid.as_raw(),
                (None, Ok(n)) => n,
                (None, Err(_)) => return Err(format!("--user {name}: no such user")),
            });
            if let Some(e) = entry {
                user_gid = Some(e.gid.as_raw());
                account = Some(Account {
                    name: e.name,
                    home: e.dir,
                    shell: e.shell,
                });
            }
        }
        let gid = match group {
            Some(g) => lookup_group(g)?,
            None => user_gid.ok_or_else(|| {
                format!(
                    "--user {}: not in the user database, so it has no group: give --group too",
                    user.unwrap_or_default()
                )
            })?,
        };
        let groups = match &account {
            Some(a) => supplementary(&a.name, gid),
            None => vec![gid],
        };
        Ok(Some(RunAs {
            user: user.map(str::to_owned),
            group: group.map(str::to_owned),
            uid,
            gid,
            groups,
            account,
        }))
    }

    /// Whether the workers would run with other ids than this process has (a switch that
    /// needs root).
    pub fn switches(&self) -> bool {
        let uid_differs = self.uid.is_some_and(|u| u != Uid::effective().as_raw());
        uid_differs || self.gid != Gid::effective().as_raw()
    }

    /// Who the notify socket must belong to for the workers to reach it: their (uid, gid)
    /// when they run as another user than this process, `None` otherwise (root workers with
    /// only another group reach it anyway).
    pub fn socket_owner(&self) -> Option<(u32, u32)> {
        self.uid
            .filter(|&u| u != Uid::effective().as_raw())
            .map(|u| (u, self.gid))
    }

    /// Refuses a switch this process cannot make: changing user or group needs root (a
    /// process with only `CAP_SETUID` could switch, but then neither signal its workers nor
    /// read their `/proc` files).
    ///
    /// Root without the capabilities the switch takes (a container started with its
    /// capabilities dropped) is refused too, naming them, rather than every worker failing to
    /// start.
    pub fn check_permitted(&self) -> Result<(), String> {
        if !self.switches() {
            return Ok(());
        }
        if !Uid::effective().is_root() {
            return Err(format!(
                "{self}: running workers as another user needs the supervisor to run as root \
                 (it runs as uid {})",
                Uid::effective()
            ));
        }
        let missing = missing_capabilities(effective_capabilities());
        if !missing.is_empty() {
            return Err(format!(
                "{self}: running workers as another user needs {}, which this root process \
                 lacks (a container with its capabilities dropped?): add them back, or run the \
                 whole container as that user instead",
                missing.join(", ")
            ));
        }
        Ok(())
    }

    /// `user nobody (uid 65534, gid 65534)`, `uid 4242 (gid 4242)`, `gid 33`: for logs.
    pub fn describe(&self) -> String {
        match (&self.account, self.uid) {
            (Some(a), Some(uid)) => format!("user {} (uid {uid}, gid {})", a.name, self.gid),
            (None, Some(uid)) => format!("uid {uid} (gid {})", self.gid),
            (_, None) => format!("gid {}", self.gid),
        }
    }

    /// The value of [`SHIM_CREDENTIALS_ENV`] for the shim: `uid:gid:g1,g2,…`.
    pub fn shim_value(&self) -> String {
        let groups: Vec<String> = self.groups.iter().map(u32::to_string).collect();
        let uid = self.uid.map(|u| u.to_string()).unwrap_or_default();
        format!("{uid}:{}:{}", self.gid, groups.join(","))
    }

    /// The environment the workers get: `USER`, `LOGNAME`, `HOME`, `SHELL` from the user's
    /// entry; `HOME=/` for a user id without one (the supervisor's own `HOME` is of no use to
    /// another user); nothing with only `--group`.
    pub fn env(&self) -> Vec<(&'static str, std::ffi::OsString)> {
        match (&self.account, self.uid) {
            (Some(a), Some(_)) => vec![
                ("USER", a.name.clone().into()),
                ("LOGNAME", a.name.clone().into()),
                ("HOME", a.home.clone().into()),
                ("SHELL", a.shell.clone().into()),
            ],
            (None, Some(uid)) => vec![
                ("USER", uid.to_string().into()),
                ("LOGNAME", uid.to_string().into()),
                ("HOME", "/".into()),
            ],
            (_, None) => Vec::new(),
        }
    }
}

/// `--user nobody`, `--user 1000 --group 1000`, `--group www-data`: as given.
impl fmt::Display for RunAs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.user, &self.group) {
            (Some(u), Some(g)) => write!(f, "--user {u} --group {g}"),
            (Some(u), None) => write!(f, "--user {u}"),
            (None, Some(g)) => write!(f, "--group {g}"),
            (None, None) => Ok(()),
        }
    }
}

/// The capabilities a switch takes: the groups and the user (in the shim), and the ownership
/// of the notify socket and the workers' pipes (in the supervisor and the shim).
const NEEDED_CAPABILITIES: [(u32, &str); 3] =
    [(0, "CAP_CHOWN"), (6, "CAP_SETGID"), (7, "CAP_SETUID")];

/// This process's effective capability set (`CapEff` in `/proc/self/status`).
fn effective_capabilities() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// The names of the [`NEEDED_CAPABILITIES`] missing from `caps` (none when unknown).
fn missing_capabilities(caps: Option<u64>) -> Vec<&'static str> {
    let Some(caps) = caps else {
        return Vec::new();
    };
    NEEDED_CAPABILITIES
        .iter()
        .filter(|(bit, _)| caps & (1 << bit) == 0)
        .map(|&(_, name)| name)
        .collect()
}

fn lookup_user(name: &str) -> Result<Option<User>, String> {
    let found = match name.parse::<u32>() {
        Ok(n) => User::from_uid(Uid::from_raw(n)),
        Err(_) => User::from_name(name),
    };
    found.map_err(|e| format!("--user {name}: cannot read the user database: {}", e.desc()))
}

/// The gid of group `name` (a name or a number), or a one-line message naming `--group`.
pub(crate) fn lookup_group(name: &str) -> Result<u32, String> {
    if name.trim().is_empty() {
        return Err("--group is empty: give a name or a number".into());
    }
    if let Ok(n) = name.parse::<u32>() {
        return Ok(n);
    }
    match Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(format!("--group {name}: no such group")),
        Err(e) => Err(format!(
            "--group {name}: cannot read the group database: {}",
            e.desc()
        )),
    }
}

/// The groups `name` belongs to in the group database, with `gid` first (as `initgroups`).
fn supplementary(name: &str, gid: u32) -> Vec<u32> {
    let mut out = vec![gid];
    if let Ok(cname) = CString::new(name) {
        if let Ok(list) = nix::unistd::getgrouplist(&cname, Gid::from_raw(gid)) {
            for g in list {
                if !out.contains(&g.as_raw()) {
                    out.push(g.as_raw());
                }
            }
        }
    }
    out
}

/// What the shim makes of [`SHIM_CREDENTIALS_ENV`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub(crate) uid: Option<u32>,
    pub(crate) gid: u32,
    pub(crate) groups: Vec<u32>,
}

impl Credentials {
    pub(crate) fn parse(s: &str) -> Option<Credentials> {
        let mut parts = s.splitn(3, ':');
        let uid = match parts.next()? {
            "" => None,
            u => Some(u.parse().ok()?),
        };
        let gid = parts.next()?.parse().ok()?;
        let groups = match parts.next()? {
            "" => Vec::new(),
            g => g
                .split(',')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?,
        };
        Some(Credentials { uid, gid, groups })
    }

    /// Switches this (single-threaded, not yet exec'd) process: supplementary groups, group,
    /// user, in that order (each needs the privilege the next one drops). Then checks that
    /// root cannot be regained.
    pub(crate) fn switch(&self) -> Result<(), String> {
        let groups: Vec<Gid> = self.groups.iter().map(|&g| Gid::from_raw(g)).collect();
        nix::unistd::setgroups(&groups)
            .map_err(|e| format!("cannot set the supplementary groups: {}", e.desc()))?;
        nix::unistd::setgid(Gid::from_raw(self.gid))
            .map_err(|e| format!("cannot switch to gid {}: {}", self.gid, e.desc()))?;
        if let Some(uid) = self.uid {
            nix::unistd::setuid(Uid::from_raw(uid))
                .map_err(|e| format!("cannot switch to uid {uid}: {}", e.desc()))?;
            if uid != 0 && nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
                return Err(format!("switched to uid {uid}, but root could be regained"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_resolve_from_the_user_database() {
        let root = RunAs::resolve(Some("root"), None).unwrap().unwrap();
        assert_eq!((root.uid, root.gid), (Some(0), 0));
        assert_eq!(root.account.as_ref().unwrap().home, PathBuf::from("/root"));
        let by_number = RunAs::resolve(Some("0"), None).unwrap().unwrap();
        assert_eq!(
            by_number.account, root.account,
            "a number with an entry is that user"
        );

        // A uid with no entry needs a group, and then has no account.
        let err = RunAs::resolve(Some("4242424"), None).unwrap_err();
        assert!(err.contains("give --group"), "{err}");
        let bare = RunAs::resolve(Some("4242424"), Some("4242424"))
            .unwrap()
            .unwrap();
        assert_eq!((bare.uid, bare.gid), (Some(4242424), 4242424));
        assert_eq!(bare.groups, [4242424]);
        assert!(bare.account.is_none());
        let env = bare.env();
        assert!(env.contains(&("HOME", "/".into())), "{env:?}");

        // Only a group: the user stays, and the environment is not touched.
        let g = RunAs::resolve(None, Some("root")).unwrap().unwrap();
        assert_eq!((g.uid, g.gid, g.groups.clone()), (None, 0, vec![0]));
        assert!(g.env().is_empty());

        let err = RunAs::resolve(Some("no-such-user-here"), None).unwrap_err();
        assert_eq!(err, "--user no-such-user-here: no such user");
        let err = RunAs::resolve(Some(""), None).unwrap_err();
        assert_eq!(err, "--user is empty: give a name or a number");
        let err = RunAs::resolve(Some("root"), Some("no-such-group-here")).unwrap_err();
        assert_eq!(err, "--group no-such-group-here: no such group");
    }

    #[test]
    fn the_capabilities_a_switch_needs_are_named_when_missing() {
        assert!(missing_capabilities(Some(0x3f_ffff_ffff)).is_empty());
        assert!(
            missing_capabilities(None).is_empty(),
            "unknown: not refused"
        );
        // CAP_SETUID (bit 7) dropped.
        assert_eq!(
            missing_capabilities(Some(0x3f_ffff_ffff & !(1 << 7))),
            ["CAP_SETUID"]
        );
        assert_eq!(
            missing_capabilities(Some(0)),
            ["CAP_CHOWN", "CAP_SETGID", "CAP_SETUID"]
        );
    }

    #[test]
    fn the_shim_gets_back_what_the_supervisor_resolved() {
        let r = RunAs::resolve(Some("4242424"), Some("77"))
            .unwrap()
            .unwrap();
        assert_eq!(r.shim_value(), "4242424:77:77");
        let c = Credentials::parse(&r.shim_value()).unwrap();
        assert_eq!(
            c,
            Credentials {
                uid: Some(4242424),
                gid: 77,
                groups: vec![77]
            }
        );
        let only_group = Credentials::parse(":5:5,6").unwrap();
        assert_eq!((only_group.uid, only_group.groups), (None, vec![5, 6]));
        for bad in ["", "1", "x:1:1", "1:y:1", "1:1:a,b", "1:1"] {
            assert_eq!(Credentials::parse(bad), None, "{bad:?}");
        }
    }
}
