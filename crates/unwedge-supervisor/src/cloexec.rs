//! Fds inherited without close-on-exec (a shell's `exec 7>file`, fds meant for another
//! process) passed on to nobody: marked close-on-exec, so that `exec` closes them.
#![allow(unsafe_code)]

use std::os::fd::RawFd;

/// Marks every fd from `first` up close-on-exec, so that `exec` closes them: in the shim, the
/// worker gets its stdin, stdout, stderr and the sockets below `first`, nothing else. One
/// `close_range(first, ~0, CLOSE_RANGE_CLOEXEC)` (Linux 5.11); on older kernels, each fd
/// `/proc/self/fd` lists, or without `/proc`, each number up to the open-file limit (at most
/// 65 536).
pub(crate) fn cloexec_from(first: RawFd) {
    use nix::libc;
    // SAFETY: a plain system call on numbers; it only sets a flag on this process's fds.
    let done = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    } == 0;
    if done {
        return;
    }
    // The listing's own fd is close-on-exec already; marking it too is harmless.
    let open: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
        Ok(list) => list
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|&fd| fd >= first)
            .collect(),
        Err(_) => {
            let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .map_or(1024, |(soft, _)| soft.min(1 << 16)) as RawFd;
            (first..limit).collect()
        }
    };
    for fd in open {
        // SAFETY: fcntl on a number, no memory involved; an fd that is not open (closed
        // meanwhile, or never opened) makes it fail with EBADF, which is ignored.
        let _ = unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}
