//! Stopping a process's threads for a moment, for `dump`: a native stack (`--native`) can only be
//! read from a thread that stands still, and its registers only come from ptrace; and a Python
//! stack read from a thread that stands still is of one moment. Each thread
//! is seized (`PTRACE_SEIZE`, which sends no signal and leaves the process's own signals alone)
//! and interrupted (`PTRACE_INTERRUPT`); `Stopped` detaches every one of them again when it is
//! dropped, on every path (error, panic). Nothing here reads a stack or unwinds: the caller
//! copies what it needs while the threads are stopped and unwinds after.

use std::{fs, io, time::Instant};

/// Threads that appeared while others were being stopped are looked for this many times.
const PASSES: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum PtraceError {
    #[error(
        "not permitted to ptrace pid {pid} to stop its threads (run as root or with \
         CAP_SYS_PTRACE; another tracer such as gdb, or kernel.yama.ptrace_scope=3, also prevent it)"
    )]
    PermissionDenied { pid: u32 },
    #[error(
        "not permitted to ptrace thread {tid} of pid {pid}, even as root, to stop it: another \
         tracer such as gdb or strace is attached to it, or kernel.yama.ptrace_scope=3 forbids \
         ptrace"
    )]
    TracedElsewhere { pid: u32, tid: u32 },
    #[error("process {pid} exited")]
    Exited { pid: u32 },
    #[error("stopping thread {tid} of pid {pid}: {source}")]
    Io {
        pid: u32,
        tid: u32,
        source: io::Error,
    },
}

/// The registers a native unwind starts from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Regs {
    pub rip: u64,
    pub rsp: u64,
    pub rbp: u64,
}

/// One stopped thread: its id, and a signal that arrived while it was being stopped (to be
/// delivered on detach, so the process loses none).
struct Thread {
    tid: u32,
    signal: i32,
}

/// Every thread of a process, stopped under ptrace until this is dropped.
pub struct Stopped {
    pid: u32,
    threads: Vec<Thread>,
    since: Instant,
}

/// Stops every thread of `pid`. Threads that exit meanwhile are left out; if none is left, the
/// process exited.
pub fn stop_threads(pid: u32) -> Result<Stopped, PtraceError> {
    let mut stopped = Stopped {
        pid,
        threads: Vec::new(),
        since: Instant::now(),
    };
    for _ in 0..PASSES {
        let tids = match task_ids(pid) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(PtraceError::Exited { pid });
            }
            Err(source) => {
                return Err(PtraceError::Io {
                    pid,
                    tid: pid,
                    source,
                });
            }
        };
        let new: Vec<u32> = tids
            .into_iter()
            .filter(|tid| !stopped.threads.iter().any(|t| t.tid == *tid))
            .collect();
        if new.is_empty() {
            break;
        }
        for tid in new {
            match stop(tid) {
                Ok(signal) => stopped.threads.push(Thread { tid, signal }),
                // Gone since the task list was read.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                    return Err(if crate::privilege::is_root() {
                        PtraceError::TracedElsewhere { pid, tid }
                    } else {
                        PtraceError::PermissionDenied { pid }
                    });
                }
                Err(source) => return Err(PtraceError::Io { pid, tid, source }),
            }
        }
    }
    if stopped.threads.is_empty() {
        return Err(PtraceError::Exited { pid });
    }
    Ok(stopped)
}

impl Stopped {
    /// The thread ids stopped.
    pub fn tids(&self) -> impl Iterator<Item = u32> + '_ {
        self.threads.iter().map(|t| t.tid)
    }

    /// A stopped thread's registers.
    pub fn regs(&self, tid: u32) -> io::Result<Regs> {
        if !self.threads.iter().any(|t| t.tid == tid) {
            return Err(io::ErrorKind::NotFound.into());
        }
        // SAFETY: user_regs_struct is plain integers, so all zeroes is a valid value.
        let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
        // SAFETY: `tid` is stopped under our ptrace; PTRACE_GETREGS writes one
        // user_regs_struct to the pointer passed, which points at one.
        let r = unsafe {
            libc::ptrace(
                libc::PTRACE_GETREGS,
                tid as libc::pid_t,
                std::ptr::null_mut::<libc::c_void>(),
                &mut regs as *mut libc::user_regs_struct,
            )
        };
        if r == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(Regs {
            rip: regs.rip,
            rsp: regs.rsp,
            rbp: regs.rbp,
        })
    }

    /// Detaches every thread now; returns how long the first one was stopped.
    pub fn resume(mut self) -> std::time::Duration {
        self.detach_all();
        self.since.elapsed()
    }

    fn detach_all(&mut self) {
        for t in self.threads.drain(..) {
            // SAFETY: detaching a thread we seized; the last argument is the signal to deliver.
            // A thread that died meanwhile fails with ESRCH, which leaves nothing to undo.
            unsafe {
                libc::ptrace(
                    libc::PTRACE_DETACH,
                    t.tid as libc::pid_t,
                    std::ptr::null_mut::<libc::c_void>(),
                    t.signal as libc::c_long as *mut libc::c_void,
                );
            }
        }
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        self.detach_all();
    }
}

impl std::fmt::Debug for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stopped")
            .field("pid", &self.pid)
            .field("threads", &self.threads.len())
            .finish()
    }
}

fn task_ids(pid: u32) -> io::Result<Vec<u32>> {
    let mut tids: Vec<u32> = fs::read_dir(format!("/proc/{pid}/task"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    Ok(tids)
}

/// Seizes and interrupts `tid` and waits until it stops. Returns the signal to deliver on
/// detach (one that stopped it first), 0 for none. On failure after the seize the thread is
/// detached again.
fn stop(tid: u32) -> io::Result<i32> {
    let t = tid as libc::pid_t;
    let null = std::ptr::null_mut::<libc::c_void>();
    // SAFETY: PTRACE_SEIZE and PTRACE_INTERRUPT take no pointers (addr and data are 0).
    if unsafe { libc::ptrace(libc::PTRACE_SEIZE, t, null, null) } == -1 {
        return Err(io::Error::last_os_error());
    }
    let detach = |signal: i32| {
        // SAFETY: as in `Stopped::detach_all`.
        unsafe {
            libc::ptrace(
                libc::PTRACE_DETACH,
                t,
                null,
                signal as libc::c_long as *mut libc::c_void,
            )
        };
    };
    // SAFETY: as above.
    if unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, t, null, null) } == -1 {
        let e = io::Error::last_os_error();
        detach(0);
        return Err(e);
    }
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid destination for waitpid's status word.
        let r = unsafe { libc::waitpid(t, &mut status, libc::__WALL) };
        if r == -1 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            detach(0);
            return Err(e);
        }
        break;
    }
    if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    // The interrupt's stop is PTRACE_EVENT_STOP; any other stop is a signal on its way to the
    // thread, which it gets back when detached.
    let signal = if status >> 16 == libc::PTRACE_EVENT_STOP {
        0
    } else {
        libc::WSTOPSIG(status)
    };
    Ok(signal)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs CAP_SYS_PTRACE over a child: root in CI. A sleeping child is stopped, its registers
    /// read, and it runs again after (its state is not `t`).
    #[test]
    fn stops_and_resumes_a_child() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(std::env::var("CI").is_err(), "root is needed in CI");
            eprintln!("SKIPPED: not root");
            return;
        }
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let stopped = stop_threads(pid).unwrap();
        assert_eq!(stopped.tids().collect::<Vec<_>>(), vec![pid]);
        let regs = stopped.regs(pid).unwrap();
        assert!(regs.rip != 0 && regs.rsp != 0, "{regs:?}");
        assert_eq!(state(pid), 't');
        let paused = stopped.resume();
        assert!(paused.as_secs() < 1);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(state(pid), 'S');
        // Dropped without resume(): detached all the same.
        drop(stop_threads(pid).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(state(pid), 'S');
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(matches!(stop_threads(pid), Err(PtraceError::Exited { .. })));
    }

    fn state(pid: u32) -> char {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        stat.rsplit_once(')')
            .unwrap()
            .1
            .trim_start()
            .chars()
            .next()
            .unwrap()
    }
}
