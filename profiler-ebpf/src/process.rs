//! Following processes as they fork, exec and exit (`--subprocesses`, `--all`): a forked child
//! of a target is a target from its first instruction (fork copies the address space, so the
//! parent's layout and `_PyRuntime` address hold), a target whose last thread exits stops being
//! one at once (its pid may be reused), and every fork and exec of a followed process and every
//! exit of a target is reported to userspace at once, so it registers new Pythons and retires
//! ended ones within milliseconds, without scanning /proc. Raw tracepoints: attached by name, no
//! tracefs.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use profiler_common::{ProcessEvent, Stat, config, process_event};

use crate::maps::{FOLLOWED, PROCESS_EVENTS, Slot, TARGETS, config_value, count, enabled};

/// The process id (tgid) of the kernel task at `task`, read at the offset userspace found in
/// the kernel's BTF; `None` if that offset is unknown or the read faults.
#[inline(always)]
fn tgid_of(task: u64) -> Option<u32> {
    let offset = config_value(config::TASK_TGID_OFFSET) as u64;
    if offset == 0 {
        return None;
    }
    // SAFETY: `task` is a task pointer the tracepoint passed; the helper reads kernel memory
    // fault-tolerantly.
    unsafe { bpf_probe_read_kernel((task + offset) as *const i32) }
        .ok()
        .map(|t| t as u32)
}

/// Whether forks and execs of process `tgid` are followed.
#[inline(always)]
fn followed(tgid: u32) -> bool {
    // SAFETY: a plain presence check of a map entry userspace and the kernel write whole.
    enabled(config::FOLLOW_ALL) || unsafe { FOLLOWED.get(tgid) }.is_some()
}

fn report(kind: u32, pid: u32, parent: u32) {
    let event = ProcessEvent {
        kind,
        pid,
        parent,
        _pad: 0,
    };
    if PROCESS_EVENTS.output::<ProcessEvent>(&event, 0).is_err() {
        count(Slot::Sample, Stat::ProcessEventLost);
    }
}

/// `sched_process_fork(parent, child)`: a new process (not a thread) of a followed parent is
/// followed; if the parent is a target, the child is one with the same layout.
pub fn on_fork(parent_task: u64, child_task: u64) {
    let (Some(parent), Some(child)) = (tgid_of(parent_task), tgid_of(child_task)) else {
        return;
    };
    if parent == child || !followed(parent) {
        return; // a new thread, or a process nobody follows
    }
    // SAFETY: a copy of the parent's whole entry, written whole by userspace.
    if let Some(info) = unsafe { TARGETS.get(parent) }.copied() {
        let _ = TARGETS.insert(child, info, 0);
    }
    if !enabled(config::FOLLOW_ALL) {
        let _ = FOLLOWED.insert(child, 1, 0);
    }
    count(Slot::Sample, Stat::Fork);
    report(process_event::FORK, child, parent);
}

/// `sched_process_exec(p, old_pid, bprm)`: a followed process runs a new program; its old
/// layout is void, so it stops being a target until userspace has looked at the new one.
pub fn on_exec(task: u64) {
    let Some(pid) = tgid_of(task) else {
        return;
    };
    if !followed(pid) {
        return;
    }
    let _ = TARGETS.remove(pid);
    count(Slot::Sample, Stat::Exec);
    report(process_event::EXEC, pid, 0);
}

/// Whether the process of exiting task `task` has no thread left that is not exiting: `do_exit`
/// decrements `signal->live` before this tracepoint, and the last thread takes it to zero.
/// `false` if the offsets are unknown or a read faults.
#[inline(always)]
fn last_thread(task: u64) -> bool {
    let signal_offset = config_value(config::TASK_SIGNAL_OFFSET) as u64;
    if signal_offset == 0 {
        return false;
    }
    let live_offset = config_value(config::SIGNAL_LIVE_OFFSET) as u64;
    // SAFETY: `task` is the task pointer the tracepoint passed; the helper reads kernel memory
    // fault-tolerantly.
    let Ok(signal) = (unsafe { bpf_probe_read_kernel((task + signal_offset) as *const u64) })
    else {
        return false;
    };
    if signal == 0 {
        return false;
    }
    // SAFETY: as above; `signal` is the task's own `signal_struct`, alive while it exits.
    let live = unsafe { bpf_probe_read_kernel((signal + live_offset) as *const i32) };
    live == Ok(0)
}

/// `sched_process_exit(p, ...)`: a thread ends. When it is the last of its process, the process
/// is forgotten here (no longer a target, no longer followed, so a new process with its pid is
/// not taken for it) and, if it was a target, userspace is told to retire it. Runs for every
/// thread that exits on the machine: two map lookups for any other.
pub fn on_exit(task: u64) {
    let Some(pid) = tgid_of(task) else {
        return;
    };
    // SAFETY: plain presence checks of entries userspace and the kernel write whole.
    let target = unsafe { TARGETS.get(pid) }.is_some();
    // SAFETY: as above.
    let named = unsafe { FOLLOWED.get(pid) }.is_some();
    if !(target || named) || !last_thread(task) {
        return;
    }
    if named {
        let _ = FOLLOWED.remove(pid);
    }
    if target {
        let _ = TARGETS.remove(pid);
        count(Slot::Sample, Stat::Exit);
        report(process_event::EXIT, pid, 0);
    }
}
