//! Native unwinding (`--native`): from the sampled user registers, walks the thread's C stack
//! with the compact unwind tables userspace built from each mapped file's call frame
//! information, and records the raw instruction pointers, leaf first. No symbols here: userspace
//! names the addresses. Frame pointers are used only for mappings that have no table. With
//! `--kernel` the kernel stack of a sample taken in the kernel is recorded here too.
//!
//! The stack is read a window at a time (`stack_word`): a frame's callers sit above it, so one
//! read of up to `WINDOW` bytes serves the return addresses and saved registers of the frames
//! that lie in it, where each was a read of its own (about 150 ns each here).
//!
//! Each frame's row is looked for first in this CPU's memo of rows found (`ROW_MEMO`, by
//! address): the callers' return addresses repeat from sample to sample, and a memo hit is one
//! read of a cache line where the two binary searches touch ten, in tables that do not stay in
//! the CPU's caches while the target runs.
//!
//! One frame per `bpf_loop` iteration: the callback keeps every value it carries from one frame
//! to the next in the per-CPU scratch map, so the verifier sees the same state on every entry and
//! checks the callback once, whatever the number of frames. The two binary searches inside it
//! are bounded by constants from `profiler-common` and have one exit branch per step. Kernels
//! without `bpf_loop` or `bpf_task_pt_regs` (before 5.17) get the compatible unwinder instead:
//! `COMPAT_FRAMES_PER_CALL` frames per run, the program tail-calling itself, up to
//! `COMPAT_MAX_CALLS` runs, with the user registers of a sample taken in the kernel read from
//! the top of the task's kernel stack at an offset from BTF.

use core::{
    ffi::c_void,
    ptr::{addr_of, read_volatile},
};

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{
        bpf_get_current_task, bpf_get_current_task_btf, bpf_probe_read_kernel, bpf_probe_read_user,
        generated,
    },
    programs::PerfEventContext,
};
use profiler_common::{
    COMPAT_FRAMES_PER_CALL, COMPAT_MAX_CALLS, MAPPING_SEARCH_STEPS, MAX_KERNEL_FRAMES,
    MAX_MAPPINGS, MAX_NATIVE_FRAMES, NativeMapping, NativeMappings, PAGE_SHIFT, PAGES_PER_CHUNK,
    ROW_SEARCH_STEPS, ROWS_PER_CHUNK, Stat, UnwindRow, config, mix, target_options, unwind_step,
};

use crate::maps::{
    NATIVE_MAPPINGS, PAGE_INDEX, ROW_MEMO, ROW_MEMO_SLOTS, RowMemo, SCRATCH, Scratch, Slot,
    UNWIND_ROWS, WINDOW, config_value, count,
};
use crate::user::{PAGE_SIZE, copy_most};

/// User-mode code segments have privilege level 3 in the low bits of cs.
const USER_MODE: u64 = 3;
/// x86_64's kernel stack: 16 KiB (`THREAD_SIZE` without KASAN), with the user registers saved
/// at its top (`task_pt_regs`; no padding above them on x86_64).
const THREAD_SIZE: u64 = 16 * 1024;

#[inline(always)]
fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: the per-CPU scratch entry is only used by the programs of the sample running on
    // this CPU, one after another.
    SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// Whether the sampled target (`s.pid`) has a mapping table, whose generation is then noted
/// for the unwind (`s.native_generation`).
#[inline(always)]
pub fn wanted() -> bool {
    let Some(s) = scratch() else {
        return false;
    };
    match NATIVE_MAPPINGS.get_ptr(s.pid) {
        Some(m) => {
            // SAFETY: a read of one field of the entry; see `look_up_row`.
            s.native_generation = unsafe { (*m).generation };
            true
        }
        None => false,
    }
}

/// The sampled thread's user registers (rip, rsp, rbp) when the sample interrupted user code.
#[inline(always)]
fn interrupted_user_regs(ctx: &PerfEventContext) -> Option<(u64, u64, u64)> {
    // SAFETY: a perf_event program may read its context's register block.
    let regs: &pt_regs = unsafe { &(*ctx.ctx).regs };
    (regs.cs & 3 == USER_MODE).then_some((regs.rip, regs.rsp, regs.rbp))
}

/// The sampled thread's user registers (rip, rsp, rbp): the perf context's when the sample
/// interrupted user code, else those saved at the kernel entry (a system call or fault).
#[inline(always)]
fn user_regs(ctx: &PerfEventContext) -> Option<(u64, u64, u64)> {
    if let Some(regs) = interrupted_user_regs(ctx) {
        return Some(regs);
    }
    // SAFETY: bpf_get_current_task_btf returns the running task; bpf_task_pt_regs returns its
    // user register block (the top of its kernel stack), read below through the fault-tolerant
    // helper.
    let user = unsafe { generated::bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const pt_regs;
    if user.is_null() {
        return None;
    }
    // SAFETY: as above.
    let regs: pt_regs = unsafe { bpf_probe_read_kernel(user) }.ok()?;
    Some((regs.rip, regs.rsp, regs.rbp))
}

/// The user registers for kernels without `bpf_task_pt_regs`: those saved at the top of the
/// task's kernel stack, whose base is at the BTF offset userspace passed.
#[inline(always)]
fn user_regs_compat(ctx: &PerfEventContext) -> Option<(u64, u64, u64)> {
    if let Some(regs) = interrupted_user_regs(ctx) {
        return Some(regs);
    }
    let offset = config_value(config::TASK_STACK_OFFSET) as u64;
    if offset == 0 {
        return None;
    }
    // SAFETY: bpf_get_current_task returns the running task's address; every read of it goes
    // through the fault-tolerant helper.
    let task = unsafe { bpf_get_current_task() };
    // SAFETY: as above.
    let stack: u64 = unsafe { bpf_probe_read_kernel((task + offset) as *const u64) }.ok()?;
    let user = stack + THREAD_SIZE - core::mem::size_of::<pt_regs>() as u64;
    // SAFETY: as above.
    let regs: pt_regs = unsafe { bpf_probe_read_kernel(user as *const pt_regs) }.ok()?;
    Some((regs.rip, regs.rsp, regs.rbp))
}

/// Unwinds the sampled thread's native stack into the scratch map's `extra` (`native`,
/// `native_len`, `native_end`) and `native_hash`, and counts how the unwind ended.
pub fn unwind(ctx: &PerfEventContext) {
    let Some(s) = scratch() else {
        return;
    };
    s.extra.native_len = 0;
    s.native_hash = 0;
    s.native_end = Stat::NativeReadFault as u32;
    s.window_end = 0;
    if let Some((rip, rsp, rbp)) = user_regs(ctx) {
        s.rip = rip;
        s.rsp = rsp;
        s.rbp = rbp;
        s.native_end = Stat::NativeTruncated as u32;
        // SAFETY: `step` is a callback of the shape bpf_loop expects; it takes no context.
        unsafe {
            generated::bpf_loop(
                MAX_NATIVE_FRAMES as u32,
                step as *mut c_void,
                core::ptr::null_mut(),
                0,
            )
        };
    }
    end_unwind();
}

/// One run of the compatible unwinder (kernels before 5.17): up to `COMPAT_FRAMES_PER_CALL`
/// frames. Returns whether frames remain for another run.
pub fn unwind_compat(ctx: &PerfEventContext) -> bool {
    let Some(s) = scratch() else {
        return false;
    };
    if s.unwind_calls == 0 {
        s.extra.native_len = 0;
        s.native_hash = 0;
        s.native_end = Stat::NativeReadFault as u32;
        let Some((rip, rsp, rbp)) = user_regs_compat(ctx) else {
            end_unwind();
            return false;
        };
        s.rip = rip;
        s.rsp = rsp;
        s.rbp = rbp;
        s.native_end = Stat::NativeTruncated as u32;
    }
    s.unwind_calls += 1;
    for _ in 0..COMPAT_FRAMES_PER_CALL {
        // Words read alone: the window's code in this unrolled loop would make the older
        // kernels' program too large.
        if let Err(end) = step_frame::<false>(s) {
            s.native_end = end as u32;
            end_unwind();
            return false;
        }
    }
    if s.unwind_calls >= COMPAT_MAX_CALLS {
        end_unwind();
        return false;
    }
    true
}

/// Records how the unwind ended and counts it.
#[inline(always)]
fn end_unwind() {
    // The callback may have written through another pointer: read back through this one.
    let Some(s) = scratch() else {
        return;
    };
    // The window is the Python walk's next.
    s.window_end = 0;
    s.extra.native_end = s.native_end;
    s.native_hash = mix(s.native_hash, s.native_end as u64);
    let end = s.native_end;
    count(
        Slot::Sample,
        [
            Stat::NativeComplete,
            Stat::NativeNoMapping,
            Stat::NativeNoRow,
            Stat::NativeUnsupported,
            Stat::NativeTruncated,
            Stat::NativeBadFrame,
        ]
        .into_iter()
        .find(|&stat| stat as u32 == end)
        .unwrap_or(Stat::NativeReadFault),
    );
}

/// `--kernel`: records the kernel stack of a sample taken in the kernel (none for one taken in
/// user mode) and mixes it into `native_hash`. Run after the native unwind, before the walk.
pub fn record_kernel_stack(ctx: &PerfEventContext) {
    let Some(s) = scratch() else {
        return;
    };
    s.extra.kernel_len = 0;
    if s.target.options & target_options::KERNEL_STACKS == 0 {
        return;
    }
    // SAFETY: the destination is our scratch entry's kernel array, of the size passed; the
    // helper writes at most that many bytes.
    let bytes = unsafe {
        generated::bpf_get_stack(
            ctx.ctx.cast(),
            s.extra.kernel.as_mut_ptr().cast(),
            (MAX_KERNEL_FRAMES * 8) as u32,
            0,
        )
    };
    if bytes < 0 {
        count(Slot::Sample, Stat::KernelStack);
        return;
    }
    let len = (bytes as usize / 8).min(MAX_KERNEL_FRAMES);
    s.extra.kernel_len = len as u32;
    let mut hash = s.native_hash;
    for i in 0..MAX_KERNEL_FRAMES {
        if i >= len {
            break;
        }
        hash = mix(hash, s.extra.kernel[i]);
    }
    s.native_hash = mix(hash, len as u64);
}

/// bpf_loop's callback: records the current frame and steps to its caller. Returns 0 to go
/// on, 1 to stop (with `native_end` set).
#[inline(never)]
extern "C" fn step(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(s) = scratch() else {
        return 1;
    };
    match step_frame::<true>(s) {
        Ok(()) => 0,
        Err(end) => {
            s.native_end = end as u32;
            1
        }
    }
}

#[inline(always)]
fn step_frame<const WINDOWED: bool>(s: &mut Scratch) -> Result<(), Stat> {
    let (pc, rsp, rbp) = (s.rip, s.rsp, s.rbp);
    let i = s.extra.native_len as usize;
    if i >= MAX_NATIVE_FRAMES {
        return Err(Stat::NativeTruncated);
    }
    s.extra.native[i & (MAX_NATIVE_FRAMES - 1)] = pc;
    s.extra.native_len = i as u32 + 1;
    // The first frame's address goes in the count's key instead (`SampleKey::leaf`).
    if i != 0 {
        s.native_hash = mix(s.native_hash, pc);
    }
    if pc == 0 {
        return Err(Stat::NativeComplete);
    }
    // A return address points after the call: look up the call itself.
    let lookup = if i == 0 { pc } else { pc - 1 };
    // The compatible unwinder's frames are unrolled: no memo there, to keep its programs
    // within older kernels' limits.
    let row = match WINDOWED {
        true => match memoized_row(s, lookup) {
            Some(row) => row,
            None => {
                let (row, generation) = look_up_row(s.pid, lookup)?;
                if let Some(generation) = generation {
                    memoize_row(s.pid, generation, lookup, row);
                }
                row
            }
        },
        false => look_up_row(s.pid, lookup)?.0,
    };
    let (ra, cfa, new_rbp) = match WINDOWED {
        true => unwind_step(row, pc, rsp, rbp, |addr| stack_word(s, addr))?,
        false => unwind_step(row, pc, rsp, rbp, |addr| read(addr).ok())?,
    };
    s.rip = ra;
    s.rsp = cfa;
    s.rbp = new_rbp;
    Ok(())
}

/// The row covering `pc` in process `pid`'s tables (`None`: its file has no table, so the
/// frame pointer chain is trusted), and the generation of the tables it was found in, if that
/// held through the search.
#[inline(always)]
fn look_up_row(pid: u32, pc: u64) -> Result<(Option<UnwindRow>, Option<u32>), Stat> {
    let Some(mappings) = NATIVE_MAPPINGS.get_ptr(pid) else {
        return Err(Stat::NativeNoMapping);
    };
    // SAFETY: the entry's memory stays valid while the program runs. An update of the
    // (preallocated) map can rewrite it under this search: the generation read before and after
    // tells a row found in one table from one found in a table being written, which is used
    // for this sample but not memoized.
    let mappings = unsafe { &*mappings };
    // SAFETY: a read of a field of the entry above.
    let before = unsafe { read_volatile(addr_of!(mappings.generation)) };
    let m = find_mapping(mappings, pc).ok_or(Stat::NativeNoMapping)?;
    let row = if m.rows_len == 0 {
        None
    } else {
        let rel = pc.wrapping_sub(m.bias);
        if rel > u32::MAX as u64 {
            return Err(Stat::NativeNoRow);
        }
        Some(find_row(&m, rel as u32).ok_or(Stat::NativeNoRow)?)
    };
    // SAFETY: as above.
    let after = unsafe { read_volatile(addr_of!(mappings.generation)) };
    Ok((row, (before == after).then_some(before)))
}

/// `ROW_MEMO`'s slot for address `pc`.
#[inline(always)]
fn memo_slot(pc: u64) -> usize {
    (pc ^ (pc >> 9)) as usize & (ROW_MEMO_SLOTS - 1)
}

/// The row this CPU found for `pc` of the sampled process's current tables, if its memo still
/// holds it.
#[inline(always)]
fn memoized_row(s: &Scratch, pc: u64) -> Option<Option<UnwindRow>> {
    let memos = ROW_MEMO.get_ptr(0)?;
    // SAFETY: a per-CPU value, touched only by this CPU's samples, one at a time.
    let memo = unsafe { &(*memos).slots[memo_slot(pc)] };
    if memo.pc != pc || memo.pid != s.pid || memo.generation != s.native_generation {
        return None;
    }
    Some((memo.tabled != 0).then_some(memo.row))
}

/// Notes the row found for `pc` in the tables of `generation`.
#[inline(always)]
fn memoize_row(pid: u32, generation: u32, pc: u64, row: Option<UnwindRow>) {
    let Some(memos) = ROW_MEMO.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: as in `memoized_row`.
    let memo = unsafe { &mut (*memos).slots[memo_slot(pc)] };
    *memo = RowMemo {
        pc,
        pid,
        generation,
        row: row.unwrap_or_default(),
        tabled: row.is_some() as u32,
        _pad: 0,
    };
}

/// The word at `addr` of the thread's stack, from the window (`s.window`, `[window_start,
/// window_end)`) when it holds it; else the window is read anew from a little below `addr` (a
/// frame's saved registers sit below its return address; not below `addr`'s page) up: `WINDOW`
/// bytes, or, where that crosses the top of the stack into memory that is not mapped, up to the
/// end of `addr`'s page (mapped: the word is on it).
#[inline(always)]
fn stack_word(s: &mut Scratch, addr: u64) -> Option<u64> {
    let end = addr.wrapping_add(8);
    // The window is read with aligned loads; slots are aligned, a stray address is read alone.
    if addr & 7 != 0 {
        return read(addr).ok();
    }
    if addr < s.window_start || end > s.window_end || end < addr {
        let start = addr.saturating_sub(BELOW).max(addr & !(PAGE_SIZE - 1));
        // SAFETY: the window holds `WINDOW` bytes and more.
        let len = unsafe { copy_most(s.window.as_mut_ptr(), start, WINDOW as u32) } as u64;
        if start + len < end {
            s.window_end = 0;
            return read(addr).ok();
        }
        s.window_start = start;
        s.window_end = start + len;
    }
    // A multiple of 8: so are `addr` and the window's start (`BELOW` under it, or a page).
    Some(s.window.u64_at((addr - s.window_start) as usize))
}

/// How far below the word asked for a new window starts.
const BELOW: u64 = 64;

#[inline(always)]
fn read(addr: u64) -> Result<u64, Stat> {
    // SAFETY: bpf_probe_read_user copies through the kernel's fault-tolerant path.
    unsafe { bpf_probe_read_user(addr as *const u64) }.map_err(|_| Stat::NativeReadFault)
}

/// The mapping that holds `pc`: a binary search over the sorted mappings.
#[inline(always)]
fn find_mapping(maps: &NativeMappings, pc: u64) -> Option<NativeMapping> {
    let len = maps.len as usize;
    if len == 0 || len > MAX_MAPPINGS {
        return None;
    }
    let mut lo = 0usize;
    let mut n = len;
    for _ in 0..MAPPING_SEARCH_STEPS {
        let half = n / 2;
        let mid = lo + half;
        if maps.mappings[mid & (MAX_MAPPINGS - 1)].start <= pc {
            lo = mid;
        }
        n -= half;
    }
    let m = maps.mappings[lo & (MAX_MAPPINGS - 1)];
    if m.start <= pc && pc < m.end {
        Some(m)
    } else {
        None
    }
}

/// The row of `m`'s table that covers `pc` (an ELF address): the last one at or below it. The
/// page index narrows the search to the rows between the entries of `pc`'s page and the next
/// page; the search stops once one row is left.
#[inline(always)]
fn find_row(m: &NativeMapping, pc: u32) -> Option<UnwindRow> {
    let page = (pc >> PAGE_SHIFT).checked_sub(m.first_page)?;
    if m.rows_len == 0 || page >= m.pages_len {
        return None;
    }
    let lo_row = page_entry(m.pages_start + page)?;
    let hi_row = if page + 1 < m.pages_len {
        page_entry(m.pages_start + page + 1)?
    } else {
        m.rows_len - 1
    };
    if hi_row < lo_row || hi_row >= m.rows_len {
        return None;
    }
    let start = m.rows_start + lo_row;
    let mut lo = 0u32;
    let mut n = hi_row - lo_row + 1;
    for _ in 0..ROW_SEARCH_STEPS {
        if n <= 1 {
            break;
        }
        let half = n / 2;
        let mid = lo + half;
        if row_at(start + mid)?.pc <= pc {
            lo = mid;
        }
        n -= half;
    }
    let row = row_at(start + lo)?;
    if row.pc <= pc { Some(row) } else { None }
}

#[inline(always)]
fn page_entry(index: u32) -> Option<u32> {
    let chunk = PAGE_INDEX.get(index / PAGES_PER_CHUNK as u32)?;
    Some(chunk.rows[index as usize & (PAGES_PER_CHUNK - 1)])
}

#[inline(always)]
fn row_at(index: u32) -> Option<UnwindRow> {
    let chunk = UNWIND_ROWS.get(index / ROWS_PER_CHUNK as u32)?;
    Some(chunk.rows[index as usize & (ROWS_PER_CHUNK - 1)])
}
