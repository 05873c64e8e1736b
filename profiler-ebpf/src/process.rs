//! Following processes as they fork and exec (`--subprocesses`, `--all`): a forked child of a
//! target is a target from its first instruction (fork copies the address space, so the
//! parent's layout and `_PyRuntime` address hold), and every fork and exec of a followed process
//! is reported to userspace at once, so it registers new Pythons within milliseconds. Raw
//! tracepoints: attached by name, no tracefs.

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
