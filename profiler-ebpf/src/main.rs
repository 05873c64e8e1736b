//! Entry points of the prof-bpf kernel program. Only the attach points live here; the work is in
//! `python` (finding the thread's interpreter frames) and `maps` (what is shared with userspace).
#![no_std]
#![no_main]

mod maps;
mod native;
mod python;

use aya_ebpf::{macros::perf_event, programs::PerfEventContext};
use profiler_common::{Stat, UNWIND_PROGRAM_SLOT, WALK_PROGRAM_SLOT};

use crate::maps::{PROGRAMS, count};

/// Runs on every CPU-clock sample of every CPU; returns at once unless the interrupted thread
/// belongs to a target process. Finds the thread's current frame, then tail-calls the native
/// unwinder (targets with `--native`) or the walker.
#[perf_event]
pub fn on_cpu_sample(ctx: PerfEventContext) -> u32 {
    if let Some(pid) = python::locate_current_frame() {
        let slot = if native::wanted(pid) {
            UNWIND_PROGRAM_SLOT
        } else {
            WALK_PROGRAM_SLOT
        };
        // SAFETY: the callee is a perf_event program like this one and takes the same context;
        // control only comes back here if the call fails.
        unsafe { PROGRAMS.tail_call(&ctx, slot) };
        count(Stat::TailCall);
    }
    0
}

/// Unwinds the native stack (`--native`), then tail-calls the walker.
#[perf_event]
pub fn unwind_native_stack(ctx: PerfEventContext) -> u32 {
    native::unwind(&ctx);
    // SAFETY: as in `on_cpu_sample`.
    unsafe { PROGRAMS.tail_call(&ctx, WALK_PROGRAM_SLOT) };
    count(Stat::TailCall);
    0
}

/// Walks the frame chain `on_cpu_sample` found and counts the stack (with the kernel stack,
/// for targets that want it).
#[perf_event]
pub fn walk_python_stack(ctx: PerfEventContext) -> u32 {
    native::record_kernel_stack(&ctx);
    python::walk_and_count();
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // No code path panics (no unchecked indexing, no unwraps); the verifier would reject one.
    loop {}
}
