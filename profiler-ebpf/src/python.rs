//! Finds the sampled thread's CPython thread state and records its frame chain as raw values
//! (code object address, instruction position, a tag), then counts the stack. No strings and no
//! line numbers here: userspace decodes those. Every loop has a bound from `profiler-common`, and
//! every read goes through `bpf_probe_read_user`, so a wrong offset yields a counted fault, never
//! a bad access.
//!
//! The work is split in two programs joined by a tail call (`locate_current_frame`, then
//! `walk_and_count`), and results cross each loop's end through the per-CPU scratch map: that
//! keeps the verifier from exploring every exit of one loop times every exit of the other.

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, generated},
};
use profiler_common::{
    MAX_PYTHON_FRAMES, MAX_THREADS, NO_OFFSET, NewStack, PY_ENTRY_FRAME, PyFrame, PyOffsets,
    STACK_TRUNCATED, SampleKey, Stat, code_tag, instr_kind, mix,
};

use crate::maps::{
    ACTIVE_COUNTS, COUNTS_0, COUNTS_1, NEW_STACKS, SCRATCH, STACKS, Scratch, TARGETS, count,
};

const EEXIST: i32 = 17;

/// Reads a `T` at `addr` in the current process.
#[inline(always)]
fn read<T>(addr: u64) -> Result<T, Stat> {
    // SAFETY: bpf_probe_read_user copies through the kernel's fault-tolerant path; any address
    // is safe to pass, a bad one returns an error.
    unsafe { bpf_probe_read_user(addr as *const T) }.map_err(|_| Stat::ReadFrame)
}

#[inline(always)]
fn field(base: u64, offset: u16) -> u64 {
    base.wrapping_add(offset as u64)
}

#[inline(always)]
fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: the per-CPU scratch entry is only used by the program running on this CPU, and a
    // sample's two programs run back to back on it.
    SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// Stage one: for a target thread, finds its current frame and leaves it in the scratch map.
/// Returns the target's pid when there is a stack to walk.
pub fn locate_current_frame() -> Option<u32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    // SAFETY: TARGETS is only updated by userspace with whole entries; a racing update at worst
    // gives one sample the old or new layout, and every read below is fault-tolerant.
    let target = unsafe { TARGETS.get(pid) }?;
    let s = scratch()?;
    let off = &target.offsets;
    let frame = find_thread_state(target.runtime_addr, off, tid).and_then(|tstate| {
        let mut frame: u64 = read(field(tstate, off.tstate_frame))?;
        if off.cframe_current_frame != NO_OFFSET && frame != 0 {
            frame = read(field(frame, off.cframe_current_frame))?;
        }
        if frame == 0 {
            Err(Stat::EmptyStack)
        } else {
            Ok(frame)
        }
    });
    match frame {
        Ok(frame) => {
            s.pid = pid;
            s.tid = tid;
            s.frame = frame;
            s.entry_offset = target.frame_is_entry;
            s.options = target.options;
            // No native stack unless the unwinder runs next and records one.
            s.stack.native_len = 0;
            s.stack.native_end = 0;
            s.native_hash = 0;
            Some(pid)
        }
        Err(stat) => {
            count(stat);
            None
        }
    }
}

/// Walks `PyInterpreterState.threads` for the thread state whose `native_thread_id` is `tid`.
fn find_thread_state(runtime: u64, off: &PyOffsets, tid: u32) -> Result<u64, Stat> {
    let fault = |_| Stat::ReadThreadState;
    let interp: u64 = read(field(runtime, off.runtime_interpreters_head)).map_err(fault)?;
    if interp == 0 {
        return Err(Stat::NoThreadState);
    }
    let mut tstate: u64 = read(field(interp, off.interp_threads_head)).map_err(fault)?;
    for _ in 0..MAX_THREADS {
        if tstate == 0 {
            break;
        }
        let native: u64 = read(field(tstate, off.tstate_native_thread_id)).map_err(fault)?;
        if native == tid as u64 {
            return Ok(tstate);
        }
        tstate = read(field(tstate, off.tstate_next)).map_err(fault)?;
    }
    Err(Stat::NoThreadState)
}

/// Stage two: walks the frame chain from the scratch map, stores the stack once and counts it.
pub fn walk_and_count() {
    let Some(s) = scratch() else {
        return;
    };
    // SAFETY: as in `locate_current_frame`.
    let Some(target) = (unsafe { TARGETS.get(s.pid) }) else {
        return;
    };
    if target.offsets.instr_kind > instr_kind::INT {
        count(Stat::BadOffsets);
        return;
    }
    walk_frames(s, &target.offsets);
    match finish(s) {
        Ok(()) => count(Stat::Recorded),
        Err(stat) => count(stat),
    }
}

/// Reads a `T` at `addr`, or zeroes when the read faults (the helper zeroes its destination on
/// failure); ORs the helper's return code into `faults`. No branch: the frame loop has none but
/// its exit test, so the verifier walks one path per iteration.
#[inline(always)]
fn read_or_zero<T: Default>(addr: u64, faults: &mut i64) -> T {
    let mut value = T::default();
    // SAFETY: `value` is a valid destination of size_of::<T>() bytes; the helper reads user
    // memory fault-tolerantly.
    let ret = unsafe {
        generated::bpf_probe_read_user(
            addr_of_mut!(value).cast(),
            core::mem::size_of::<T>() as u32,
            addr as *const core::ffi::c_void,
        )
    };
    *faults |= ret;
    value
}

/// All ones when `a != b`, zero when equal, without a branch.
#[inline(always)]
fn ne_mask(a: u64, b: u64) -> u64 {
    let diff = a ^ b;
    0u64.wrapping_sub((diff | diff.wrapping_neg()) >> 63)
}

/// Records up to `MAX_PYTHON_FRAMES` frames, leaf first, hashing them as it goes, into
/// `s.stack` and `s.hash`. A C-stack shim frame (3.12+) is recorded with `code == 0` so the
/// slot index stays the loop counter (the verifier needs that); userspace hides it. A read
/// fault ends the walk at that frame and is counted once.
#[inline(always)]
fn walk_frames(s: &mut Scratch, off: &PyOffsets) {
    // Loop-invariant masks, so the body needs no branch on the layout.
    let pointer_mask = !ne_mask(off.instr_kind as u64, instr_kind::POINTER as u64);
    // Where the eval-call entry flag is (3.11). Other versions read 0 bytes of it: the helper
    // returns at once, and the loop body stays free of branches.
    let has_entry = ne_mask(s.entry_offset as u64, NO_OFFSET as u64);
    let entry_offset = s.entry_offset as u64 & has_entry;
    let entry_size = (has_entry & 1) as u32;
    let mut frame = s.frame;
    let mut hash = 0;
    let mut len = MAX_PYTHON_FRAMES;
    let mut faults: i64 = 0;
    for i in 0..MAX_PYTHON_FRAMES {
        if frame == 0 {
            len = i;
            break;
        }
        let owner: u8 = read_or_zero(field(frame, off.frame_owner), &mut faults);
        // Zero for a shim frame: its slot records code 0 and no tag.
        let keep = ne_mask(owner as u64, off.owner_cstack as u64);
        let code = read_or_zero::<u64>(field(frame, off.frame_code), &mut faults) & keep;
        let raw_instr: u64 = read_or_zero(field(frame, off.frame_instr), &mut faults);
        // A shim's code field may not point at a code object (3.13): read the frame itself
        // instead, which is readable, and drop what was read.
        let readable = code | (frame & !keep);
        let name: u64 = read_or_zero(field(readable, off.code_name), &mut faults);
        let filename: u64 = read_or_zero(field(readable, off.code_filename), &mut faults);
        let firstlineno: i32 = read_or_zero(field(readable, off.code_firstlineno), &mut faults);
        let mut is_entry: u8 = 0;
        // SAFETY: `is_entry` is a valid destination of `entry_size` (0 or 1) bytes; the helper
        // reads user memory fault-tolerantly.
        faults |= unsafe {
            generated::bpf_probe_read_user(
                addr_of_mut!(is_entry).cast(),
                entry_size,
                frame.wrapping_add(entry_offset) as *const core::ffi::c_void,
            )
        };
        let entry = ne_mask(is_entry as u64, 0) & has_entry & PY_ENTRY_FRAME as u64;
        let slot = PyFrame {
            code,
            // A pointer becomes an offset from the code object; an int is kept as is.
            instr: (raw_instr.wrapping_sub(code & pointer_mask) as u32 & !PY_ENTRY_FRAME)
                | entry as u32,
            tag: code_tag(name, filename, firstlineno) & keep as u32,
        };
        s.stack.frames[i] = slot;
        hash = mix(
            mix(mix(hash, slot.code), slot.instr as u64),
            slot.tag as u64,
        );
        let previous: u64 = read_or_zero(field(frame, off.frame_previous), &mut faults);
        // After a fault the chain cannot be trusted: stop here (the next test ends the loop).
        frame = previous & !ne_mask(faults as u64, 0);
    }
    let mut flags = 0;
    if len == MAX_PYTHON_FRAMES && frame != 0 {
        flags = STACK_TRUNCATED;
        count(Stat::Truncated);
    }
    if faults != 0 {
        count(Stat::ReadFrame);
    }
    // SAFETY: plain stores into our scratch entry; volatile so `finish` really reads them back.
    unsafe {
        write_volatile(addr_of_mut!(s.stack.len), len as u32);
        write_volatile(addr_of_mut!(s.stack.flags), flags);
        write_volatile(addr_of_mut!(s.hash), hash);
    }
}

/// Stores the stack (once per content) and counts it. Reads the walk's results back from the
/// map, so the verifier sees one state here whatever iteration the walk ended in.
#[inline(always)]
fn finish(s: &mut Scratch) -> Result<(), Stat> {
    // SAFETY: reads of our own scratch entry, written by `walk_frames`.
    let (len, hash, native_hash) = unsafe {
        (
            read_volatile(addr_of!(s.stack.len)),
            read_volatile(addr_of!(s.hash)),
            read_volatile(addr_of!(s.native_hash)),
        )
    };
    if len == 0 {
        return Err(Stat::ReadFrame);
    }
    let stack_id = mix(mix(hash, len as u64), native_hash);
    if STACKS.get_ptr(stack_id).is_none() {
        // By reference: clippy's needless-borrow advice would copy the 3 KB stack onto the
        // 512-byte BPF stack.
        #[expect(
            clippy::needless_borrows_for_generic_args,
            reason = "avoids a 3 KB copy"
        )]
        let inserted = STACKS.insert(stack_id, &s.stack, BPF_NOEXIST as u64);
        match inserted {
            Ok(()) => {
                let notice = NewStack {
                    pid: s.pid,
                    _pad: 0,
                    stack_id,
                };
                // A full ring only delays naming to the next drain: nothing is lost.
                let _ = NEW_STACKS.output::<NewStack>(&notice, 0);
            }
            Err(e) if e == -EEXIST => {}
            Err(_) => return Err(Stat::StackMapFull),
        }
    }

    let key = SampleKey {
        pid: s.pid,
        tid: s.tid,
        stack_id,
    };
    let counts = match ACTIVE_COUNTS.get(0) {
        Some(1) => &COUNTS_1,
        _ => &COUNTS_0,
    };
    if let Some(n) = counts.get_ptr_mut(key) {
        // SAFETY: a per-CPU value, touched only by this CPU.
        unsafe { *n += 1 };
        return Ok(());
    }
    match counts.insert(key, 1, BPF_NOEXIST as u64) {
        Ok(()) => Ok(()),
        Err(e) if e == -EEXIST => {
            if let Some(n) = counts.get_ptr_mut(key) {
                // SAFETY: as above.
                unsafe { *n += 1 };
            }
            Ok(())
        }
        Err(_) => Err(Stat::CountMapFull),
    }
}
