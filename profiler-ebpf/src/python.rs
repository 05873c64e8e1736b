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
    bindings::{BPF_NOEXIST, bpf_pidns_info},
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user, generated},
};
use profiler_common::{
    MAX_PYTHON_FRAMES, MAX_THREADS, NO_OFFSET, NewStack, OffCpuStart, PY_ENTRY_FRAME, PyFrame,
    PyOffsets, STACK_TRUNCATED, SampleKey, Stat, TargetInfo, code_tag, config, count_kind,
    instr_kind, mix,
};

use crate::maps::{
    ACTIVE_COUNTS, COUNTS_0, COUNTS_1, NEW_STACKS, OFF_CPU_START, SCRATCH, STACKS, Scratch, Slot,
    TARGETS, count, enabled,
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
fn scratch(slot: Slot) -> Option<&'static mut Scratch> {
    // SAFETY: the per-CPU scratch entry is only used by the program running on this CPU, a
    // sample's two programs run back to back on it, and each kind of program has its own slot.
    SCRATCH.get_ptr_mut(slot as u32).map(|p| unsafe { &mut *p })
}

/// Stage one: for a target thread, finds its current frame and leaves it in the scratch map
/// `slot`. Returns the target's pid when there is a stack to walk.
pub fn locate_current_frame(slot: Slot) -> Option<u32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    // SAFETY: TARGETS is only updated by userspace with whole entries; a racing update at worst
    // gives one sample the old or new layout, and every read below is fault-tolerant.
    let target = unsafe { TARGETS.get(pid) }?;
    count(slot, Stat::TargetSample);
    let s = scratch(slot)?;
    let off = &target.offsets;
    let frame =
        python_tid(target, tid).and_then(|python_tid| find_thread_state(target, python_tid));
    let frame = frame.and_then(|(interp, tstate)| {
        let gil_held = holds_gil(target, interp, tstate);
        if slot == Slot::Sample && !gil_held && enabled(config::GIL_ONLY) {
            return Err(Stat::GilNotHeld);
        }
        s.gil_held = gil_held as u32;
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
            count(slot, stat);
            None
        }
    }
}

/// The id the target's thread states know the current thread by: its id in the target's pid
/// namespace (a container's), which the kernel's own id `tid` is not.
#[inline(always)]
fn python_tid(target: &TargetInfo, tid: u32) -> Result<u32, Stat> {
    if target.pidns_ino == 0 {
        return Ok(tid);
    }
    let mut ns = bpf_pidns_info { pid: 0, tgid: 0 };
    // SAFETY: `ns` is a valid destination of the size passed; the helper only writes it.
    let ret = unsafe {
        generated::bpf_get_ns_current_pid_tgid(
            target.pidns_dev,
            target.pidns_ino,
            addr_of_mut!(ns),
            core::mem::size_of::<bpf_pidns_info>() as u32,
        )
    };
    if ret == 0 {
        Ok(ns.pid)
    } else {
        Err(Stat::NamespaceId)
    }
}

/// Whether the thread whose state is `tstate` holds the GIL: the GIL is locked and it is the
/// holder. A read fault answers no.
fn holds_gil(target: &TargetInfo, interp: u64, tstate: u64) -> bool {
    let off = &target.offsets;
    let gil = if off.gil_ptr_in_interp == NO_OFFSET {
        field(target.runtime_addr, off.gil_in_runtime)
    } else {
        read::<u64>(field(interp, off.gil_ptr_in_interp)).unwrap_or(0)
    };
    if gil == 0 {
        return false;
    }
    let locked: i32 = read(field(gil, off.gil_locked)).unwrap_or(0);
    let holder: u64 = read(field(gil, off.gil_last_holder)).unwrap_or(0);
    locked != 0 && holder == tstate
}

/// Walks `PyInterpreterState.threads` for the thread state of thread `tid`: the one whose
/// `native_thread_id` is `tid` (3.11+), or whose `pthread_t` descriptor holds `tid` (up to 3.10).
/// Returns the interpreter and the thread state.
fn find_thread_state(target: &TargetInfo, tid: u32) -> Result<(u64, u64), Stat> {
    let off = &target.offsets;
    let fault = |_| Stat::ReadThreadState;
    // `_PyRuntime` lives in the interpreter's data: until the interpreter starts, its page may
    // not be in memory, and a BPF read cannot fault it in.
    let interp: u64 = read(field(target.runtime_addr, off.runtime_interpreters_head))
        .map_err(|_| Stat::RuntimeNotReady)?;
    if interp == 0 {
        return Err(Stat::NoThreadState);
    }
    let mut tstate: u64 = read(field(interp, off.interp_threads_head)).map_err(fault)?;
    for _ in 0..MAX_THREADS {
        if tstate == 0 {
            break;
        }
        let id: u64 = read(field(tstate, off.tstate_native_thread_id)).map_err(fault)?;
        let native = if target.pthread_tid == NO_OFFSET {
            id
        } else {
            // A thread state whose thread has not started yet holds no descriptor: the read
            // fails and the state is just not this thread's.
            read::<u32>(field(id, target.pthread_tid)).unwrap_or(0) as u64
        };
        if native == tid as u64 {
            return Ok((interp, tstate));
        }
        tstate = read(field(tstate, off.tstate_next)).map_err(fault)?;
    }
    Err(Stat::NoThreadState)
}

/// Stage two: walks the frame chain from the scratch map `slot` and stores the stack once.
/// A CPU sample (`Slot::Sample`) is counted; a thread leaving the CPU (`Slot::Switch`) is noted
/// in `OFF_CPU_START`, to be counted when it comes back.
pub fn walk_and_count(slot: Slot) {
    let Some(s) = scratch(slot) else {
        return;
    };
    // SAFETY: as in `locate_current_frame`.
    let Some(target) = (unsafe { TARGETS.get(s.pid) }) else {
        count(slot, Stat::TargetGone);
        return;
    };
    if target.offsets.instr_kind > instr_kind::INT {
        count(slot, Stat::BadOffsets);
        return;
    }
    walk_frames(s, &target.offsets, slot);
    let stored = store(s);
    let done = match slot {
        Slot::Sample => stored.and_then(|stack_id| {
            let key = SampleKey {
                pid: s.pid,
                tid: s.tid,
                stack_id,
                kind: count_kind::ON_CPU,
                _pad: 0,
            };
            add_count(&key, 1)?;
            if s.gil_held != 0 {
                count(slot, Stat::GilHeld);
            }
            count(slot, Stat::Recorded);
            Ok(())
        }),
        Slot::Switch => stored.and_then(|stack_id| {
            let start = OffCpuStart {
                pid: s.pid,
                _pad: 0,
                since_ns: now_ns(),
                stack_id,
            };
            OFF_CPU_START
                .insert(s.tid, start, 0)
                .map_err(|_| Stat::OffCpuMapFull)
        }),
    };
    if let Err(stat) = done {
        count(slot, stat);
    }
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: bpf_ktime_get_ns takes no arguments and only reads the clock.
    unsafe { bpf_ktime_get_ns() }
}

/// Called when thread `tid` comes back on the CPU: if it left in a recorded stack, adds the
/// time it was away to that stack's off-CPU count.
pub fn end_off_cpu(tid: u32) {
    // SAFETY: entries are written whole by `walk_and_count`; a concurrent update at worst
    // gives the old or the new interval.
    let Some(start) = (unsafe { OFF_CPU_START.get(tid) }).copied() else {
        return;
    };
    let _ = OFF_CPU_START.remove(tid);
    let key = SampleKey {
        pid: start.pid,
        tid,
        stack_id: start.stack_id,
        kind: count_kind::OFF_CPU_NS,
        _pad: 0,
    };
    let away = now_ns().saturating_sub(start.since_ns);
    match add_count(&key, away) {
        Ok(()) => count(Slot::Switch, Stat::OffCpu),
        Err(stat) => count(Slot::Switch, stat),
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

/// All ones when `a < b`, zero otherwise, without a branch (both below 2^63).
#[inline(always)]
fn lt_mask(a: u64, b: u64) -> u64 {
    0u64.wrapping_sub(a.wrapping_sub(b) >> 63)
}

/// Records up to `MAX_PYTHON_FRAMES` frames, leaf first, hashing them as it goes, into
/// `s.stack` and `s.hash`. A shim frame that runs no code (3.12+: owner `owner_cstack` or
/// above) is recorded with `code == 0` so the slot index stays the loop counter (the verifier
/// needs that); userspace hides it. The code field's tag bits (3.14+'s `_PyStackRef`) are
/// cleared. A read fault ends the walk at that frame and is counted once.
#[inline(always)]
fn walk_frames(s: &mut Scratch, off: &PyOffsets, slot: Slot) {
    // Loop-invariant masks, so the body needs no branch on the layout.
    let pointer_mask = !ne_mask(off.instr_kind as u64, instr_kind::POINTER as u64);
    let untag = !(off.frame_code_tag as u64);
    // Where the eval-call entry flag is (3.11). Other versions read 0 bytes of it: the helper
    // returns at once, and the loop body stays free of branches.
    let has_entry = ne_mask(s.entry_offset as u64, NO_OFFSET as u64);
    let entry_offset = s.entry_offset as u64 & has_entry;
    let entry_size = (has_entry & 1) as u32;
    let mut frame = s.frame;
    let mut hash = 0;
    let mut len = MAX_PYTHON_FRAMES;
    let mut faults: i64 = 0;
    let mut code_seen: u64 = 0;
    for i in 0..MAX_PYTHON_FRAMES {
        if frame == 0 {
            len = i;
            break;
        }
        let owner: u8 = read_or_zero(field(frame, off.frame_owner), &mut faults);
        // Zero for a shim frame: its slot records code 0 and no tag.
        let keep = lt_mask(owner as u64, off.owner_cstack as u64);
        let code = read_or_zero::<u64>(field(frame, off.frame_code), &mut faults) & untag & keep;
        code_seen |= code;
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
        count(slot, Stat::Truncated);
    }
    if faults != 0 {
        count(slot, Stat::ReadFrame);
    }
    // SAFETY: plain stores into our scratch entry; volatile so `finish` really reads them back.
    unsafe {
        write_volatile(addr_of_mut!(s.stack.len), len as u32);
        write_volatile(addr_of_mut!(s.stack.flags), flags);
        write_volatile(addr_of_mut!(s.hash), hash);
        write_volatile(addr_of_mut!(s.code_seen), (code_seen != 0) as u32);
    }
}

/// Stores the stack (once per content) and returns its id. Reads the walk's results back from
/// the map, so the verifier sees one state here whatever iteration the walk ended in.
#[inline(always)]
fn store(s: &mut Scratch) -> Result<u64, Stat> {
    // SAFETY: reads of our own scratch entry, written by `walk_frames`.
    let (len, hash, native_hash, code_seen) = unsafe {
        (
            read_volatile(addr_of!(s.stack.len)),
            read_volatile(addr_of!(s.hash)),
            read_volatile(addr_of!(s.native_hash)),
            read_volatile(addr_of!(s.code_seen)),
        )
    };
    if len == 0 {
        return Err(Stat::NoFrame);
    }
    // Only shims: the thread runs no Python code (3.15's base frame alone, say).
    if code_seen == 0 {
        return Err(Stat::EmptyStack);
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
    Ok(stack_id)
}

/// Adds `n` to `key`'s count in the count map userspace is not draining.
#[inline(always)]
fn add_count(key: &SampleKey, n: u64) -> Result<(), Stat> {
    let counts = match ACTIVE_COUNTS.get(0) {
        Some(1) => &COUNTS_1,
        _ => &COUNTS_0,
    };
    if let Some(v) = counts.get_ptr_mut(key) {
        // SAFETY: a per-CPU value, touched only by this CPU.
        unsafe { *v += n };
        return Ok(());
    }
    match counts.insert(key, n, BPF_NOEXIST as u64) {
        Ok(()) => Ok(()),
        Err(e) if e == -EEXIST => {
            if let Some(v) = counts.get_ptr_mut(key) {
                // SAFETY: as above.
                unsafe { *v += n };
            }
            Ok(())
        }
        Err(_) => Err(Stat::CountMapFull),
    }
}
