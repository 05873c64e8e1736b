//! Entry points of the prof-bpf kernel program. Only the attach points live here; the work is in
//! `python` (finding the thread's interpreter frames) and `maps` (what is shared with userspace).
#![no_std]
#![no_main]

mod maps;
mod python;

use aya_ebpf::{macros::perf_event, programs::PerfEventContext};

/// Runs on every CPU-clock sample of every CPU; returns at once unless the interrupted thread
/// belongs to a target process.
#[perf_event]
pub fn on_cpu_sample(_ctx: PerfEventContext) -> u32 {
    python::sample_current_thread();
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // No code path panics (no unchecked indexing, no unwraps); the verifier would reject one.
    loop {}
}
