//! Entry points of the prof-bpf kernel program. Only the attach points live here; the work is in
//! `python` (finding the thread's interpreter frames) and `maps` (what is shared with userspace).
#![no_std]
#![no_main]

mod maps;
mod native;
mod process;
mod python;

use aya_ebpf::{
    helpers::bpf_probe_read_kernel,
    macros::{perf_event, raw_tracepoint},
    programs::{PerfEventContext, RawTracePointContext},
};
use profiler_common::{Stat, UNWIND_PROGRAM_SLOT, WALK_PROGRAM_SLOT, config};

use crate::maps::{PROGRAMS, SWITCH_PROGRAMS, Slot, config_value, count};

/// `sched_switch`'s arguments (`TP_PROTO(bool preempt, struct task_struct *prev, struct
/// task_struct *next, unsigned int prev_state)`, include/trace/events/sched.h, 5.18+), as a raw
/// tracepoint passes them: attached by name, so no tracefs is needed.
const SWITCH_NEXT: usize = 2;
const SWITCH_PREV_STATE: usize = 3;
/// `prev_state` bits of a task that blocked (S, D, T, t, X, Z, P, I); zero, or the
/// preempted-while-runnable bit 0x100, means it is still runnable, not idle.
const BLOCKED_STATES: u64 = 0xff;

/// Runs on every CPU-clock sample of every CPU; returns at once unless the interrupted thread
/// belongs to a target process. Finds the thread's current frame, then tail-calls the native
/// unwinder (targets with `--native`) or the walker.
#[perf_event]
pub fn on_cpu_sample(ctx: PerfEventContext) -> u32 {
    if let Some(pid) = python::locate_current_frame(Slot::Sample) {
        let slot = if native::wanted(pid) {
            UNWIND_PROGRAM_SLOT
        } else {
            WALK_PROGRAM_SLOT
        };
        // SAFETY: the callee is a perf_event program like this one and takes the same context;
        // control only comes back here if the call fails.
        unsafe { PROGRAMS.tail_call(&ctx, slot) };
        count(Slot::Sample, Stat::TailCall);
    }
    0
}

/// Unwinds the native stack (`--native`), then tail-calls the walker.
#[perf_event]
pub fn unwind_native_stack(ctx: PerfEventContext) -> u32 {
    native::unwind(&ctx);
    // SAFETY: as in `on_cpu_sample`.
    unsafe { PROGRAMS.tail_call(&ctx, WALK_PROGRAM_SLOT) };
    count(Slot::Sample, Stat::TailCall);
    0
}

/// Walks the frame chain `on_cpu_sample` found and counts the stack (with the kernel stack,
/// for targets that want it).
#[perf_event]
pub fn walk_python_stack(ctx: PerfEventContext) -> u32 {
    native::record_kernel_stack(&ctx);
    python::walk_and_count(Slot::Sample);
    0
}

/// On every context switch (attached with `--idle` only): ends the off-CPU interval of the
/// thread coming in, and, when the thread going out blocks, records where it blocked.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn on_sched_switch(ctx: RawTracePointContext) -> i32 {
    let next: u64 = ctx.arg(SWITCH_NEXT);
    let prev_state: u64 = ctx.arg(SWITCH_PREV_STATE);
    // `task_struct.pid` (the thread id) sits where userspace found it in the kernel's BTF.
    let pid_offset = config_value(config::TASK_PID_OFFSET) as u64;
    if pid_offset != 0 {
        // SAFETY: `next` is the kernel's task pointer for this switch; the helper reads kernel
        // memory fault-tolerantly, and a bad offset only yields a wrong or zero tid.
        let next_tid = unsafe { bpf_probe_read_kernel((next + pid_offset) as *const i32) };
        if let Ok(tid) = next_tid {
            python::end_off_cpu(tid as u32);
        }
    }
    // The thread going out is the current one: its memory is the one user reads see.
    if prev_state & BLOCKED_STATES != 0 && python::locate_current_frame(Slot::Switch).is_some() {
        // SAFETY: the walker is a raw tracepoint program like this one and takes the same
        // context.
        unsafe { SWITCH_PROGRAMS.tail_call(&ctx, WALK_PROGRAM_SLOT) };
        count(Slot::Switch, Stat::TailCall);
    }
    0
}

/// `sched_process_fork(struct task_struct *parent, struct task_struct *child)` (attached with
/// `--subprocesses` and `--all`).
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn on_process_fork(ctx: RawTracePointContext) -> i32 {
    process::on_fork(ctx.arg(0), ctx.arg(1));
    0
}

/// `sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)`.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn on_process_exec(ctx: RawTracePointContext) -> i32 {
    process::on_exec(ctx.arg(0));
    0
}

/// Walks the frame chain `on_sched_switch` found and notes where the thread left the CPU.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn walk_python_stack_on_switch(_ctx: RawTracePointContext) -> i32 {
    python::walk_and_count(Slot::Switch);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // No code path panics (no unchecked indexing, no unwraps); the verifier would reject one.
    loop {}
}
