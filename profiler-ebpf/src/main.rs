//! Entry points of the prof-bpf kernel program. Only the attach points live here; the work is in
//! `python` (finding the thread's interpreter frames) and `maps` (what is shared with userspace).
#![no_std]
#![no_main]

mod maps;
mod native;
mod process;
mod python;
mod user;

use core::ffi::c_void;

use aya_ebpf::{
    helpers::bpf_probe_read_kernel,
    macros::{perf_event, raw_tracepoint},
    programs::{PerfEventContext, RawTracePointContext},
};
use profiler_common::{
    COPY_CODE_PROGRAM_SLOT, Stat, THREADS_PROGRAM_SLOT, UNWIND_PROGRAM_SLOT, WALK_PROGRAM_SLOT,
    config, target_options,
};

use crate::{
    maps::{PROGRAMS, SWITCH_PROGRAMS, Slot, config_value, count},
    python::Next,
};

/// `sched_switch`'s arguments as a raw tracepoint passes them (`TP_PROTO(bool preempt, struct
/// task_struct *prev, struct task_struct *next, ...)`, include/trace/events/sched.h; 5.18 added a
/// fourth, read here from the task instead, so one program serves every kernel): attached by
/// name, so no tracefs is needed.
const SWITCH_PREEMPT: usize = 0;
const SWITCH_PREV: usize = 1;
const SWITCH_NEXT: usize = 2;
/// Task state bits of a task that blocked (S, D, T, t, X, Z, P, I); zero means it is still
/// runnable (and a preempted task is runnable whatever its state says).
const BLOCKED_STATES: u32 = 0xff;

/// The slot of the program that goes on from a located frame: the native unwinder for a target
/// that wants native stacks, else the walker.
#[inline(always)]
fn stack_slot(next: Next) -> u32 {
    match next {
        Next::Threads => THREADS_PROGRAM_SLOT,
        Next::Stack if wants_native(Slot::Sample) => UNWIND_PROGRAM_SLOT,
        Next::Stack => WALK_PROGRAM_SLOT,
    }
}

/// Whether the target sampled now is unwound natively: it asked (`--native`) and has a table.
#[inline(always)]
fn wants_native(slot: Slot) -> bool {
    python::sampled_options(slot) & target_options::NATIVE_STACKS != 0 && native::wanted()
}

/// Runs on every CPU-clock sample of every CPU; returns at once unless the interrupted thread
/// belongs to a target process. Finds the thread's current frame (or starts the thread walk),
/// then tail-calls what comes next.
#[perf_event]
pub fn on_cpu_sample(ctx: PerfEventContext) -> u32 {
    if let Some(next) = python::locate_current_frame(Slot::Sample) {
        let slot = stack_slot(next);
        // SAFETY: the callee is a perf_event program like this one and takes the same context;
        // control only comes back here if the call fails.
        unsafe { PROGRAMS.tail_call(&ctx, slot) };
        count(Slot::Sample, Stat::TailCall);
    }
    0
}

/// Walks the interpreter's thread list for a thread not met before, a part per run.
#[perf_event]
pub fn find_thread_state(ctx: PerfEventContext) -> u32 {
    if let Some(next) = python::walk_threads(Slot::Sample) {
        let slot = stack_slot(next);
        // SAFETY: as in `on_cpu_sample`.
        unsafe { PROGRAMS.tail_call(&ctx, slot) };
        count(Slot::Sample, Stat::TailCall);
    }
    0
}

/// Unwinds the native stack (`--native`) in one run with `bpf_loop` (5.17+), then tail-calls
/// the walker.
#[perf_event]
pub fn unwind_native_stack(ctx: PerfEventContext) -> u32 {
    native::unwind(&ctx);
    // SAFETY: as in `on_cpu_sample`.
    unsafe { PROGRAMS.tail_call(&ctx, WALK_PROGRAM_SLOT) };
    count(Slot::Sample, Stat::TailCall);
    0
}

/// Unwinds the native stack a few frames per run, on kernels without `bpf_loop`: loaded in the
/// unwinder's slot instead of `unwind_native_stack`, it tail-calls itself, then the walker.
#[perf_event]
pub fn unwind_native_stack_compat(ctx: PerfEventContext) -> u32 {
    let slot = if native::unwind_compat(&ctx) {
        UNWIND_PROGRAM_SLOT
    } else {
        WALK_PROGRAM_SLOT
    };
    // SAFETY: as in `on_cpu_sample`.
    unsafe { PROGRAMS.tail_call(&ctx, slot) };
    count(Slot::Sample, Stat::TailCall);
    0
}

/// Walks the frame chain, a part per run, and counts the stack (with the kernel stack, for
/// targets that want it, taken on the first run).
#[perf_event]
pub fn walk_python_stack(ctx: PerfEventContext) -> u32 {
    if !python::walk_started(Slot::Sample) {
        native::record_kernel_stack(&ctx);
    }
    if python::walk_step(Slot::Sample) {
        // SAFETY: as in `on_cpu_sample`: the callee is this program.
        unsafe { PROGRAMS.tail_call(&ctx, WALK_PROGRAM_SLOT) };
        count(Slot::Sample, Stat::TailCall);
    } else if python::stored_new_stack(Slot::Sample) {
        // SAFETY: as in `on_cpu_sample`.
        unsafe { PROGRAMS.tail_call(&ctx, COPY_CODE_PROGRAM_SLOT) };
        count(Slot::Sample, Stat::CodeCopiesCut);
    }
    0
}

/// Copies a new stack's code objects, a few per run, tail-calling itself: after
/// `walk_python_stack`, on kernels without `bpf_loop`. Where the chain of tail calls ends
/// first (`Stat::CodeCopiesCut`), userspace reads the rest from the live process.
#[perf_event]
pub fn copy_code_objects(ctx: PerfEventContext) -> u32 {
    if python::copy_codes_step(Slot::Sample) {
        // SAFETY: as in `on_cpu_sample`: the callee is this program.
        unsafe { PROGRAMS.tail_call(&ctx, COPY_CODE_PROGRAM_SLOT) };
        count(Slot::Sample, Stat::CodeCopiesCut);
    }
    0
}

/// Walks the whole frame chain in one run with `bpf_loop` (5.17+) and counts the stack: loaded
/// in the walker's slot instead of `walk_python_stack` where the kernel has `bpf_loop`.
#[perf_event]
pub fn walk_python_stack_loop(ctx: PerfEventContext) -> u32 {
    if !python::walk_started(Slot::Sample) {
        native::record_kernel_stack(&ctx);
    }
    python::walk_all(Slot::Sample, walk_one_sampled, snapshot_one_sampled);
    0
}

/// `walk_python_stack_loop`'s `bpf_loop` callback.
#[inline(never)]
extern "C" fn walk_one_sampled(_index: u64, _ctx: *mut c_void) -> i64 {
    python::walk_one(Slot::Sample)
}

/// `walk_python_stack_loop`'s `bpf_loop` callback that copies a new stack's code objects.
#[inline(never)]
extern "C" fn snapshot_one_sampled(index: u64, _ctx: *mut c_void) -> i64 {
    python::snapshot_code(Slot::Sample, index)
}

/// On every context switch (attached with `--idle` only): ends the off-CPU interval of the
/// thread coming in, and, when the thread going out blocks, records where it blocked.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn on_sched_switch(ctx: RawTracePointContext) -> i32 {
    let preempt: u64 = ctx.arg(SWITCH_PREEMPT);
    let prev: u64 = ctx.arg(SWITCH_PREV);
    let next: u64 = ctx.arg(SWITCH_NEXT);
    // `task_struct.pid` (the thread id) and its state sit where userspace found them in the
    // kernel's BTF.
    if let Some(tid) = task_field::<i32>(next, config::TASK_PID_OFFSET) {
        python::end_off_cpu(tid as u32);
    }
    let blocked = preempt & 0xff == 0
        && task_field::<u32>(prev, config::TASK_STATE_OFFSET)
            .is_some_and(|s| s & BLOCKED_STATES != 0);
    // The thread going out is the current one: its memory is the one user reads see.
    if blocked && let Some(next) = python::locate_current_frame(Slot::Switch) {
        let slot = match next {
            Next::Threads => THREADS_PROGRAM_SLOT,
            Next::Stack => WALK_PROGRAM_SLOT,
        };
        // SAFETY: the callee is a raw tracepoint program like this one and takes the same
        // context.
        unsafe { SWITCH_PROGRAMS.tail_call(&ctx, slot) };
        count(Slot::Switch, Stat::TailCall);
    }
    0
}

/// A field of a kernel task at the BTF offset in `config[index]`; `None` if the offset is
/// unknown or the read faults.
#[inline(always)]
fn task_field<T>(task: u64, index: u32) -> Option<T> {
    let offset = config_value(index) as u64;
    if offset == 0 {
        return None;
    }
    // SAFETY: `task` is a task pointer the tracepoint passed; the helper reads kernel memory
    // fault-tolerantly, and a bad offset only yields a wrong value.
    unsafe { bpf_probe_read_kernel((task + offset) as *const T) }.ok()
}

/// The thread walk of `on_sched_switch`, as a raw tracepoint program.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn find_thread_state_on_switch(ctx: RawTracePointContext) -> i32 {
    if let Some(next) = python::walk_threads(Slot::Switch) {
        let slot = match next {
            Next::Threads => THREADS_PROGRAM_SLOT,
            Next::Stack => WALK_PROGRAM_SLOT,
        };
        // SAFETY: as in `on_sched_switch`.
        unsafe { SWITCH_PROGRAMS.tail_call(&ctx, slot) };
        count(Slot::Switch, Stat::TailCall);
    }
    0
}

/// Walks the frame chain `on_sched_switch` found, a part per run, and notes where the thread
/// left the CPU.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn walk_python_stack_on_switch(ctx: RawTracePointContext) -> i32 {
    if python::walk_step(Slot::Switch) {
        // SAFETY: as in `on_sched_switch`: the callee is this program.
        unsafe { SWITCH_PROGRAMS.tail_call(&ctx, WALK_PROGRAM_SLOT) };
        count(Slot::Switch, Stat::TailCall);
    } else if python::stored_new_stack(Slot::Switch) {
        // SAFETY: as in `on_sched_switch`.
        unsafe { SWITCH_PROGRAMS.tail_call(&ctx, COPY_CODE_PROGRAM_SLOT) };
        count(Slot::Switch, Stat::CodeCopiesCut);
    }
    0
}

/// `copy_code_objects` after `walk_python_stack_on_switch`.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn copy_code_objects_on_switch(ctx: RawTracePointContext) -> i32 {
    if python::copy_codes_step(Slot::Switch) {
        // SAFETY: as in `on_sched_switch`: the callee is this program.
        unsafe { SWITCH_PROGRAMS.tail_call(&ctx, COPY_CODE_PROGRAM_SLOT) };
        count(Slot::Switch, Stat::CodeCopiesCut);
    }
    0
}

/// `walk_python_stack_on_switch` in one run with `bpf_loop` (5.17+), as
/// `walk_python_stack_loop` is for samples.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn walk_python_stack_on_switch_loop(_ctx: RawTracePointContext) -> i32 {
    python::walk_all(Slot::Switch, walk_one_switched, snapshot_one_switched);
    0
}

/// `walk_python_stack_on_switch_loop`'s `bpf_loop` callback.
#[inline(never)]
extern "C" fn walk_one_switched(_index: u64, _ctx: *mut c_void) -> i64 {
    python::walk_one(Slot::Switch)
}

/// `walk_python_stack_on_switch_loop`'s callback that copies a new stack's code objects.
#[inline(never)]
extern "C" fn snapshot_one_switched(index: u64, _ctx: *mut c_void) -> i64 {
    python::snapshot_code(Slot::Switch, index)
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

/// `sched_process_exit(struct task_struct *p, ...)`: a thread exits. Newer kernels pass whether
/// it was the process's last as a second argument; it is read from the task instead, so one
/// program serves every kernel.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn on_process_exit(ctx: RawTracePointContext) -> i32 {
    process::on_exit(ctx.arg(0));
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // No code path panics (no unchecked indexing, no unwraps); the verifier would reject one.
    loop {}
}
