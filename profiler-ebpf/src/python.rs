//! Finds the sampled thread's CPython thread state and records its frame chain as raw values
//! (code object address, instruction position, a tag), then counts the stack. No strings and no
//! line numbers here: userspace decodes those. Every loop has a bound from `profiler-common`, and
//! every read goes through `bpf_probe_read_user`, so a wrong offset yields a counted fault, never
//! a bad access.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
};
use profiler_common::{
    MAX_PYTHON_FRAMES, MAX_THREADS, NO_OFFSET, PyFrame, PyOffsets, STACK_TRUNCATED, SampleKey,
    Stat, TargetInfo, instr_kind,
};

use crate::maps::{ACTIVE_COUNTS, COUNTS_0, COUNTS_1, SCRATCH, STACKS, TARGETS, count};

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

/// One step of FxHash over 64-bit words: cheap, and good enough to key stacks.
#[inline(always)]
fn mix(hash: u64, word: u64) -> u64 {
    (hash.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95)
}

pub fn sample_current_thread() {
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    // SAFETY: TARGETS is only updated by userspace with whole entries; a racing update at worst
    // gives one sample the old or new layout, and every read below is fault-tolerant.
    let Some(target) = (unsafe { TARGETS.get(&pid) }) else {
        return;
    };
    match record(target, pid, tid) {
        Ok(()) => count(Stat::Recorded),
        Err(stat) => count(stat),
    }
}

fn record(target: &TargetInfo, pid: u32, tid: u32) -> Result<(), Stat> {
    let off = &target.offsets;
    if off.instr_kind > instr_kind::INT {
        return Err(Stat::BadOffsets);
    }
    let tstate = find_thread_state(target.runtime_addr, off, tid)?;

    let mut frame: u64 = read(field(tstate, off.tstate_frame))?;
    if off.cframe_current_frame != NO_OFFSET && frame != 0 {
        frame = read(field(frame, off.cframe_current_frame))?;
    }
    if frame == 0 {
        return Err(Stat::EmptyStack);
    }

    let stack = SCRATCH.get_ptr_mut(0).ok_or(Stat::StackMapFull)?;
    // SAFETY: the per-CPU scratch entry is ours for the duration of this program run.
    let stack = unsafe { &mut *stack };
    let walk = walk_frames(frame, off, &mut stack.frames);
    match walk.end {
        WalkEnd::Complete => {}
        // Keep what was read: a partial stack is more useful than none, and it is counted.
        WalkEnd::Fault => count(Stat::ReadFrame),
        WalkEnd::Truncated => count(Stat::Truncated),
    }
    if walk.len == 0 {
        return Err(Stat::ReadFrame);
    }
    stack.len = walk.len as u32;
    stack.flags = if matches!(walk.end, WalkEnd::Truncated) { STACK_TRUNCATED } else { 0 };
    let stack_id = mix(walk.hash, walk.len as u64);

    if STACKS.get_ptr(&stack_id).is_none() {
        if let Err(e) = STACKS.insert(&stack_id, &*stack, BPF_NOEXIST as u64) {
            if e != -EEXIST {
                return Err(Stat::StackMapFull);
            }
        }
    }

    let key = SampleKey { pid, tid, stack_id };
    let counts = match ACTIVE_COUNTS.get(0) {
        Some(1) => &COUNTS_1,
        _ => &COUNTS_0,
    };
    if let Some(n) = counts.get_ptr_mut(&key) {
        // SAFETY: a per-CPU value, touched only by this CPU.
        unsafe { *n += 1 };
        return Ok(());
    }
    match counts.insert(&key, &1, BPF_NOEXIST as u64) {
        Ok(()) => Ok(()),
        Err(e) if e == -EEXIST => {
            if let Some(n) = counts.get_ptr_mut(&key) {
                // SAFETY: as above.
                unsafe { *n += 1 };
            }
            Ok(())
        }
        Err(_) => Err(Stat::CountMapFull),
    }
}

/// Walks `PyInterpreterState.threads` for the thread state whose `native_thread_id` is `tid`.
fn find_thread_state(runtime: u64, off: &PyOffsets, tid: u32) -> Result<u64, Stat> {
    let interp: u64 = read(field(runtime, off.runtime_interpreters_head))
        .map_err(|_| Stat::ReadThreadState)?;
    if interp == 0 {
        return Err(Stat::NoThreadState);
    }
    let mut tstate: u64 =
        read(field(interp, off.interp_threads_head)).map_err(|_| Stat::ReadThreadState)?;
    for _ in 0..MAX_THREADS {
        if tstate == 0 {
            break;
        }
        let native: u64 = read(field(tstate, off.tstate_native_thread_id))
            .map_err(|_| Stat::ReadThreadState)?;
        if native == tid as u64 {
            return Ok(tstate);
        }
        tstate = read(field(tstate, off.tstate_next)).map_err(|_| Stat::ReadThreadState)?;
    }
    Err(Stat::NoThreadState)
}

enum WalkEnd {
    /// The chain ended.
    Complete,
    /// A read fault cut the walk short.
    Fault,
    /// The chain went on past `MAX_PYTHON_FRAMES`.
    Truncated,
}

struct Walk {
    len: usize,
    hash: u64,
    end: WalkEnd,
}

/// Records up to `MAX_PYTHON_FRAMES` frames, leaf first, hashing them as it goes. A C-stack shim
/// frame (3.12+) is recorded with `code == 0` so the slot index stays the loop counter (the
/// verifier needs that); userspace hides it.
#[inline(always)]
fn walk_frames(mut frame: u64, off: &PyOffsets, frames: &mut [PyFrame; MAX_PYTHON_FRAMES]) -> Walk {
    let mut hash = 0;
    for i in 0..MAX_PYTHON_FRAMES {
        if frame == 0 {
            return Walk { len: i, hash, end: WalkEnd::Complete };
        }
        let Ok(slot) = read_frame(frame, off) else {
            return Walk { len: i, hash, end: WalkEnd::Fault };
        };
        frames[i] = slot;
        hash = mix(mix(mix(hash, slot.code), slot.instr as u64), slot.tag as u64);
        frame = match read(field(frame, off.frame_previous)) {
            Ok(prev) => prev,
            Err(_) => return Walk { len: i + 1, hash, end: WalkEnd::Fault },
        };
    }
    let end = if frame == 0 { WalkEnd::Complete } else { WalkEnd::Truncated };
    Walk { len: MAX_PYTHON_FRAMES, hash, end }
}

#[inline(always)]
fn read_frame(frame: u64, off: &PyOffsets) -> Result<PyFrame, Stat> {
    if off.frame_owner != NO_OFFSET {
        let owner: u8 = read(field(frame, off.frame_owner))?;
        if owner == off.owner_cstack {
            return Ok(PyFrame::default());
        }
    }
    let code: u64 = read(field(frame, off.frame_code))?;
    let instr = if off.instr_kind == instr_kind::POINTER {
        let ptr: u64 = read(field(frame, off.frame_instr))?;
        ptr.wrapping_sub(code) as u32
    } else {
        read::<i32>(field(frame, off.frame_instr))? as u32
    };
    let name: u64 = read(field(code, off.code_name))?;
    let filename: u64 = read(field(code, off.code_filename))?;
    let firstlineno: i32 = read(field(code, off.code_firstlineno))?;
    let tag = mix(mix(mix(0, name), filename), firstlineno as u64);
    Ok(PyFrame { code, instr, tag: (tag >> 32) as u32 })
}
