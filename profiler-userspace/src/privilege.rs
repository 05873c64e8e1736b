//! Checking, before anything is loaded, that this process may load BPF programs and open
//! system-wide perf events, and dropping to the invoking user for launched commands.

use std::{ffi::CString, fs, os::unix::process::CommandExt, process::Command};

/// Capability bits in /proc/self/status's CapEff (include/uapi/linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[derive(Debug, thiserror::Error)]
#[error(
    "prof-bpf needs root, or the CAP_BPF and CAP_PERFMON capabilities (and CAP_SYS_PTRACE to read \
     another user's process): run it with sudo"
)]
pub struct NotPrivileged;

pub fn check() -> Result<(), NotPrivileged> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(());
    }
    let caps = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:").map(|v| v.trim().to_string()))
        })
        .and_then(|v| u64::from_str_radix(&v, 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| caps & (1 << cap) != 0;
    if (has(CAP_BPF) && has(CAP_PERFMON)) || has(CAP_SYS_ADMIN) {
        Ok(())
    } else {
        Err(NotPrivileged)
    }
}

/// Under sudo, makes `cmd` run as the user who ran sudo rather than as root.
pub fn run_as_invoking_user(cmd: &mut Command) {
    let parse = |var| std::env::var(var).ok().and_then(|v| v.parse::<u32>().ok());
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return;
    }
    let (Some(uid), Some(gid)) = (parse("SUDO_UID"), parse("SUDO_GID")) else {
        return;
    };
    let user = std::env::var("SUDO_USER")
        .ok()
        .and_then(|u| CString::new(u).ok());
    // SAFETY: initgroups is called in the forked child before exec; it only allocates and makes
    // syscalls, and a failure is reported as the spawn error.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(user) = &user
                && libc::initgroups(user.as_ptr(), gid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.uid(uid).gid(gid);
}

/// Gives `path` to the user who ran sudo, so they can move or delete their profile.
pub fn give_to_invoking_user(path: &std::path::Path) {
    let parse = |var| std::env::var(var).ok().and_then(|v| v.parse::<u32>().ok());
    if let (Some(uid), Some(gid)) = (parse("SUDO_UID"), parse("SUDO_GID")) {
        let _ = std::os::unix::fs::chown(path, Some(uid), Some(gid));
    }
}
