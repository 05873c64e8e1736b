//! Reads of the sampled process's memory that the Python walk and the native unwinder share:
//! a copy of as much of a span as is mapped, into buffers that fields are then taken from with
//! aligned loads. Below both of them; every read goes through `bpf_probe_read_user`, which fails
//! instead of faulting.

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

/// A buffer for copies of the process's memory, 8-byte aligned so that a field is taken with one
/// load: an unaligned read compiles to a load, a shift and an or per byte (22 instructions for a
/// `u64`), and a walk takes several fields per frame.
///
/// Offsets are masked with `MASK` (the largest power of two that leaves 8 bytes of room, less
/// one), so every read is inside the buffer whatever the offset; they are then rounded down to
/// the field's size. Userspace refuses a layout whose fields are not aligned (CPython's always
/// are), so the rounding only ever meets aligned offsets.
#[repr(C, align(8))]
pub struct Aligned<const N: usize>(pub [u8; N]);

impl<const N: usize> Aligned<N> {
    const MASK: usize = (1 << (usize::BITS - 1 - (N - 8).leading_zeros())) - 1;

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.0.as_mut_ptr()
    }

    /// The `u64` at `offset` (a multiple of 8).
    #[inline(always)]
    pub fn u64_at(&self, offset: usize) -> u64 {
        let at = offset & Self::MASK & !7;
        // SAFETY: `at + 8 <= MASK + 1 <= N - 8 + 1`; the buffer is 8-byte aligned and `at` is a
        // multiple of 8.
        unsafe { self.0.as_ptr().add(at).cast::<u64>().read() }
    }

    /// The `u32` at `offset` (a multiple of 4).
    #[inline(always)]
    pub fn u32_at(&self, offset: usize) -> u32 {
        let at = offset & Self::MASK & !3;
        // SAFETY: as in `u64_at`, for 4 bytes at a multiple of 4.
        unsafe { self.0.as_ptr().add(at).cast::<u32>().read() }
    }

    /// The byte at `offset`.
    #[inline(always)]
    pub fn u8_at(&self, offset: usize) -> u8 {
        self.0[offset & Self::MASK]
    }
}
