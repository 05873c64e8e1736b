//! Reads of the sampled process's memory that the Python walk and the native unwinder share:
//! a copy of as much of a span as is mapped. Below both of them; every read goes through
//! `bpf_probe_read_user`, which fails instead of faulting.

use core::ffi::c_void;

use aya_ebpf::helpers::generated;

/// The page size of every platform prof-bpf builds for.
pub const PAGE_SIZE: u64 = 4096;

/// Copies what it can of the `len` bytes at user address `addr` to `dst`: all of them, or, when
/// they run into memory that is not mapped (an object near the end of its mapping, a stack's
/// top), those up to the end of `addr`'s page, which is mapped since the span starts there.
/// Returns the bytes copied, 0 if none (or `addr` is 0).
///
/// # Safety
/// `dst` is valid for writes of `len` bytes.
#[inline(always)]
pub unsafe fn copy_most(dst: *mut u8, addr: u64, len: u32) -> u32 {
    if addr == 0 {
        return 0;
    }
    // SAFETY: the caller's promise.
    if unsafe { copy(dst, addr, len) } {
        return len;
    }
    let to_page_end = (PAGE_SIZE - (addr & (PAGE_SIZE - 1))) as u32;
    let n = to_page_end.min(len);
    // SAFETY: the caller's promise; `n` is at most `len`.
    if unsafe { copy(dst, addr, n) } { n } else { 0 }
}

/// Fills the `len` bytes at `dst` from user address `addr`; whether all of them could be read.
///
/// # Safety
/// `dst` is valid for writes of `len` bytes.
#[inline(always)]
pub unsafe fn copy(dst: *mut u8, addr: u64, len: u32) -> bool {
    // SAFETY: the caller's promise; the helper reads user memory fault-tolerantly (zeroing
    // `dst` on failure).
    unsafe { generated::bpf_probe_read_user(dst.cast(), len, addr as *const c_void) == 0 }
}
