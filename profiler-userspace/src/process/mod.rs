//! Processes in general, from /proc: their state, maps, memory, executable and threads, the ELF
//! files they map (opened as mapped, `files`, which also serves processes in containers), their
//! pid namespace (`namespace`), stopping their threads (`ptrace`) and following them as they
//! come and go (`watch`). Knows nothing of Python (`python::discover` finds the interpreter in a process)
//! and never touches BPF.

pub mod elf;
mod files;
pub mod identity;
mod maps;
mod memory;
pub mod namespace;
pub mod ptrace;
pub mod watch;

use std::{
    fs, io,
    os::fd::{FromRawFd as _, OwnedFd},
    path::PathBuf,
};

pub use files::{map_files_entry, open_in_root, open_mapped};
pub use maps::{Mapping, load_bias, loader_at_work, parse_maps, read_maps};
pub use memory::{Copies, LocalMemory, ProcMem, ProcessMemory};

/// Where glibc's thread descriptor (`struct pthread`, nptl/descr.h), which `pthread_self()`
/// points at, keeps the kernel's thread id on x86_64. Python up to 3.10 records only
/// `pthread_self()` in its thread states; the kernel follows it here to match the sampled
/// thread. Checked with ctypes against `threading.get_native_id()` on glibc 2.36.
pub const PTHREAD_TID_OFFSET: u16 = 720;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("no process with pid {pid}")]
    NoSuchProcess { pid: u32 },
    #[error("process {pid} exited")]
    Exited { pid: u32 },
    #[error("permission denied reading /proc/{pid}/{what}")]
    PermissionDenied { pid: u32, what: &'static str },
    #[error(
        "the kernel does not let even root read /proc/{pid}/{what}: process {pid} is protected \
         (not dumpable, in a user namespace root does not own, or guarded by a security module)"
    )]
    Protected { pid: u32, what: &'static str },
    #[error("pid {pid} ({name}) is a kernel thread, not a user program")]
    KernelThread { pid: u32, name: String },
    #[error(
        "pid {pid} ({name}) is a zombie: it has exited and waits for its parent (pid {ppid}) to \
         collect its exit status"
    )]
    Zombie { pid: u32, name: String, ppid: u32 },
    #[error("reading {path}: {source}")]
    Elf {
        path: PathBuf,
        source: object::Error,
    },
    #[error("opening {} as pid {pid} maps it: {source}", path.display())]
    MappedFile {
        pid: u32,
        path: PathBuf,
        source: io::Error,
    },
    #[error("reading /proc/{pid}/{what}: {source}")]
    Io {
        pid: u32,
        what: &'static str,
        source: io::Error,
    },
}

impl ProcessError {
    pub(crate) fn from_proc(pid: u32, what: &'static str, e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::NotFound => ProcessError::NoSuchProcess { pid },
            io::ErrorKind::PermissionDenied if crate::privilege::is_root() => {
                ProcessError::Protected { pid, what }
            }
            io::ErrorKind::PermissionDenied => ProcessError::PermissionDenied { pid, what },
            _ if e.raw_os_error() == Some(libc::ESRCH) => ProcessError::Exited { pid },
            _ => ProcessError::Io {
                pid,
                what,
                source: e,
            },
        }
    }
}

/// The /proc directory to read `pid`'s memory, maps and files through: `/proc/PID`, or, when
/// its main thread has exited while other threads run on, `/proc/PID/task/TID` of a live
/// thread (the exited leader's own entries are empty).
pub fn proc_dir(pid: u32) -> PathBuf {
    let base = PathBuf::from(format!("/proc/{pid}"));
    if !proc_stat(pid).is_ok_and(|s| s.state == 'Z') {
        return base;
    }
    match live_thread(pid) {
        Some(tid) => base.join("task").join(tid.to_string()),
        None => base,
    }
}

/// A thread of `pid` other than its exited main thread that still runs.
fn live_thread(pid: u32) -> Option<u32> {
    let mut tids: Vec<u32> = fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&tid| tid != pid)
        .collect();
    tids.sort_unstable();
    tids.into_iter().find(|tid| {
        fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"))
            .ok()
            .and_then(|s| parse_stat(&s))
            .is_some_and(|s| !matches!(s.state, 'Z' | 'X'))
    })
}

/// `pid`'s memory, with the error saying which process and why (gone, not permitted).
pub fn open_memory(pid: u32) -> Result<ProcMem, ProcessError> {
    ProcMem::open(pid).map_err(|e| ProcessError::from_proc(pid, "mem", e))
}

/// The kernel's name for process `pid` (its `comm`), or `?` if it is gone.
pub fn comm(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Whether thread `tid` of `pid` is blocked now (sleeping or waiting on I/O: state S or D).
pub fn thread_is_blocked(pid: u32, tid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"))
        .ok()
        .and_then(|s| parse_stat(&s))
        .is_some_and(|s| matches!(s.state, 'S' | 'D'))
}

/// The kernel's name for thread `tid` of `pid` (its `comm`), or `?` if it is gone.
pub fn thread_name(pid: u32, tid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// `PF_KTHREAD` in /proc/PID/stat's flags (include/linux/sched.h): a kernel thread.
const PF_KTHREAD: u32 = 0x0020_0000;

/// What prof-bpf reads from /proc/PID/stat: the state letter, the parent, the flags and the
/// start time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStat {
    pub state: char,
    pub ppid: u32,
    /// The kernel's `PF_*` flags.
    pub flags: u32,
    /// Clock ticks since boot: with the pid, it tells a process from a later one with its pid.
    pub start_time: u64,
}

/// /proc/PID/stat's fields 3, 4, 9 and 22.
pub fn proc_stat(pid: u32) -> io::Result<ProcStat> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&stat).ok_or_else(|| io::Error::other("malformed /proc/PID/stat"))
}

fn parse_stat(stat: &str) -> Option<ProcStat> {
    // The name (field 2) may hold spaces and parentheses: parse after the last ')'.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let flags = fields.nth(4)?.parse().ok()?;
    let start_time = fields.nth(12)?.parse().ok()?;
    Some(ProcStat {
        state,
        ppid,
        flags,
        start_time,
    })
}

/// The process's start time (field 22 of /proc/PID/stat).
pub fn start_time(pid: u32) -> Result<u64, ProcessError> {
    proc_stat(pid)
        .map(|s| s.start_time)
        .map_err(|e| ProcessError::from_proc(pid, "stat", e))
}

/// A pidfd of process `pid` (`pidfd_open(2)`, Linux 5.3+): readable once it has exited. None
/// where the kernel has no pidfds or the process is gone: its end is then found by polling.
pub fn pidfd(pid: u32) -> Option<OwnedFd> {
    // SAFETY: a plain system call; a non-negative result is a new descriptor we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // SAFETY: as above: the kernel just returned this descriptor, open and ours alone.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Whether process `pid` that started at `start_time` still runs (not exited, pid not reused,
/// not a zombie; a process whose main thread exited lives on in its other threads).
pub fn is_alive(pid: u32, start_time: u64) -> bool {
    proc_stat(pid).is_ok_and(|s| {
        s.start_time == start_time && (!matches!(s.state, 'Z' | 'X') || live_thread(pid).is_some())
    })
}

/// Fails when `pid` names no process that could be profiled: none at all, a kernel thread, a
/// zombie. Each has its own message.
pub fn check_profilable(pid: u32) -> Result<ProcStat, ProcessError> {
    let stat = proc_stat(pid).map_err(|e| ProcessError::from_proc(pid, "stat", e))?;
    if stat.flags & PF_KTHREAD != 0 {
        return Err(ProcessError::KernelThread {
            pid,
            name: comm(pid),
        });
    }
    if stat.state == 'Z' && live_thread(pid).is_none() {
        return Err(ProcessError::Zombie {
            pid,
            name: comm(pid),
            ppid: stat.ppid,
        });
    }
    Ok(stat)
}

/// The descendants of `pid` (children, grandchildren, ...), nearest first, each generation in
/// pid order.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut children: std::collections::HashMap<u32, Vec<u32>> = Default::default();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if let Ok(stat) = proc_stat(child) {
            children.entry(stat.ppid).or_default().push(child);
        }
    }
    let mut out = Vec::new();
    let mut generation = vec![pid];
    while !generation.is_empty() {
        let mut next: Vec<u32> = generation
            .iter()
            .flat_map(|p| children.get(p).cloned().unwrap_or_default())
            .filter(|c| !out.contains(c))
            .collect();
        next.sort_unstable();
        out.extend(&next);
        generation = next;
    }
    out
}

/// The process's executable, as it was when it started (a deleted file keeps its path).
pub fn exe_of(pid: u32) -> Result<PathBuf, ProcessError> {
    let exe = fs::read_link(proc_dir(pid).join("exe"))
        .map_err(|e| ProcessError::from_proc(pid, "exe", e))?;
    Ok(strip_deleted(exe))
}

pub fn strip_deleted(p: PathBuf) -> PathBuf {
    match p.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(s) => PathBuf::from(s),
        None => p,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_name_with_spaces_and_parentheses() {
        let line = "42 (a (b) c) S 7 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 123456 1 2";
        assert_eq!(
            parse_stat(line),
            Some(ProcStat {
                state: 'S',
                ppid: 7,
                flags: 4194560,
                start_time: 123456
            })
        );
        assert_eq!(parse_stat("42 (x"), None);
        let me = proc_stat(std::process::id()).unwrap();
        assert_eq!(me.ppid, std::os::unix::process::parent_id());
        assert_ne!(me.start_time, 0);
        assert_eq!(me.flags & PF_KTHREAD, 0);
        // kthreadd, the parent of every kernel thread.
        assert_ne!(proc_stat(2).unwrap().flags & PF_KTHREAD, 0);
    }
}
