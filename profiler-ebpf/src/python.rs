//! Finds the sampled thread's CPython thread state and records its frame chain as raw values
//! (code object address, instruction position, a tag), then counts the stack. No strings and no
//! line numbers here: userspace decodes those. Every loop has a bound from `profiler-common`, and
//! every read goes through `bpf_probe_read_user`, so a wrong offset yields a counted fault, never
//! a bad access.
//!
//! Cost is what makes a sampler usable at 10 kHz, so each step does the least it can:
//! - the thread state is found by thread id in `THREADS` and checked with one read; the
//!   interpreter's thread list is walked (`THREADS_PER_CALL` per run, the program tail-calling
//!   itself) only for a thread not met before, and every thread met on the way is remembered;
//! - each frame's fields are loaded from a copy of its bytes: up to 3.10 one read per frame;
//!   from 3.11, whose frames sit on the thread's data stack each above its caller's, one read of
//!   up to `WINDOW` bytes serves the frames below it (`load_frame`), whose fields are loaded
//!   from the window where they lie, aligned (`user::Aligned`: an unaligned load compiles to one
//!   per byte). At 200 frames and 10 kHz a sample cost 22.6 us with a read per frame, 14.7 with
//!   the window, and about 7 loading in place, four frames per `bpf_loop` iteration;
//! - a code object's tag (what tells it from a later one at the same address) is read from the
//!   code object, once per code object per sample (see `code_tag_of` for why not from a
//!   cache);
//! - a sample of a (thread, stack, native leaf) counted before adds one to its count entry and
//!   is done: the stack map is looked at, and the stack stored and its code objects copied, only
//!   when that entry is missing (userspace keeps the entries of stacks it holds across drains);
//! - the walk reads `FRAMES_PER_CALL` frames per run and tail-calls itself for the next, so
//!   the verifier checks one bounded loop and a stack costs what its depth costs, up to
//!   `MAX_PYTHON_FRAMES`.
//!
//! Results cross each program's end through the per-CPU scratch map.

use core::{
    ffi::c_void,
    ptr::{addr_of, addr_of_mut, read_unaligned, read_volatile, write_volatile},
};

use aya_ebpf::{
    bindings::{BPF_NOEXIST, bpf_pidns_info},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_user, generated,
    },
    maps::PerCpuHashMap,
};
use profiler_common::{
    COPY_CODES_PER_CALL, CodeSeen, CodeSnapshot, FRAME_OWNED_BY_GENERATOR, FRAME_READ,
    FRAMES_PER_CALL, KnownThread, MAX_PYTHON_FRAMES, MAX_THREAD_CALLS, NO_OFFSET, NewStack,
    OffCpuStart, PY_ENTRY_FRAME, PyFrame, SMALL_STACK_FRAMES, SNAPSHOT_CODE, SNAPSHOT_FILENAME,
    SNAPSHOT_LINETABLE, SNAPSHOT_NAME, STACK_IN_GC, STACK_TRUNCATED, SampleKey, SmallStack, Stat,
    THREADS_PER_CALL, TargetInfo, code_tag, config, count_kind, cpu_credit, instr_kind, mix,
    snapshot_part, target_options,
};

use crate::maps::{
    ACTIVE_COUNTS, CODE_MEMO_SLOTS, CODE_SNAPSHOTS, CODES_SEEN, COUNTS_0, COUNTS_1, CodeMemo,
    EXTRA_STACKS, NEW_STACKS, OFF_CPU_START, SCRATCH, STACKS_LARGE, STACKS_SMALL, Scratch, Slot,
    TARGETS, THREADS, WINDOW, config_value, count, enabled,
};
use crate::user::{PAGE_SIZE, copy, copy_most};

const EEXIST: i32 = 17;
/// Masks the length of a frame's or code object's read: userspace keeps them within
/// `FRAME_READ` and `CODE_READ`, so the mask only shows the verifier the read fits its buffer.
const BYTES_MASK: u64 = 255;

/// What a sample's first programs found: where to go next.
pub enum Next {
    /// The thread's current frame is in the scratch map: unwind (or walk) it.
    Stack,
    /// The thread is not known yet: walk the interpreter's thread list (tail-call the walk).
    Threads,
}

/// Reads a `T` at `addr` in the current process.
#[inline(always)]
fn read<T>(addr: u64) -> Result<T, ()> {
    // SAFETY: bpf_probe_read_user copies through the kernel's fault-tolerant path; any address
    // is safe to pass, a bad one returns an error.
    unsafe { bpf_probe_read_user(addr as *const T) }.map_err(|_| ())
}

#[inline(always)]
fn field(base: u64, offset: u16) -> u64 {
    base.wrapping_add(offset as u64)
}

#[inline(always)]
fn scratch(slot: Slot) -> Option<&'static mut Scratch> {
    // SAFETY: the per-CPU scratch entry is only used by the program running on this CPU, a
    // sample's programs run back to back on it, and each kind of program has its own slot.
    SCRATCH.get_ptr_mut(slot as u32).map(|p| unsafe { &mut *p })
}

/// The `TargetInfo::options` of the target sampled now (what `locate_current_frame` left in
/// `slot`).
#[inline(always)]
pub fn sampled_options(slot: Slot) -> u16 {
    scratch(slot).map_or(0, |s| s.target.options)
}

/// Whether the frame walk of this sample has begun (a later run of the walker).
#[inline(always)]
pub fn walk_started(slot: Slot) -> bool {
    scratch(slot).is_some_and(|s| s.stack.len != 0)
}

/// Stage one: for a target thread, finds its current frame (or the start of the thread walk)
/// and leaves it in the scratch map `slot`. `None`: nothing to walk (counted).
pub fn locate_current_frame(slot: Slot) -> Option<Next> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    // SAFETY: TARGETS is only updated by userspace with whole entries; a racing update at worst
    // gives one sample the old or new layout, and every read below is fault-tolerant.
    let target = unsafe { TARGETS.get(pid) }?;
    count(slot, Stat::TargetSample);
    let s = scratch(slot)?;
    let found = python_tid(target, tid).and_then(|python_tid| {
        start(s, target, pid, tid, python_tid);
        // SAFETY: entries are written whole; a stale one is checked below. Only the program
        // sampling this thread, on its CPU, writes its credit.
        match THREADS.get_ptr_mut(tid).map(|p| unsafe { &mut *p }) {
            Some(known)
                if known.pid == pid && thread_id_of(target, known.tstate) == Ok(python_tid) =>
            {
                if slot == Slot::Sample && !within_cpu_time(known) {
                    return Err(Stat::BeyondCpuTime);
                }
                current_frame(slot, s, target, known.interp, known.tstate).map(|()| Next::Stack)
            }
            _ => begin_thread_walk(s, target).map(|()| Next::Threads),
        }
    });
    match found {
        Ok(next) => Some(next),
        Err(stat) => {
            // An exiting thread's reads all fail: whatever failed first, that is why.
            let stat = if thread_exiting() {
                Stat::ThreadExiting
            } else {
                stat
            };
            count(slot, stat);
            None
        }
    }
}

/// Whether this sample of the current thread keeps its samples within the CPU time it used
/// (`profiler_common::cpu_credit`), which it charges to `known`. One read of the thread's CPU
/// clock (its `task_struct`, in the cache: the kernel just ran it). `true` if the offset is
/// unknown or the read faults.
#[inline(always)]
fn within_cpu_time(known: &mut KnownThread) -> bool {
    let offset = config_value(config::TASK_RUNTIME_OFFSET) as u64;
    let period = config_value(config::SAMPLE_PERIOD_NS) as u64;
    if offset == 0 || period == 0 {
        return true;
    }
    // SAFETY: the helper takes no arguments and returns the current task's address.
    let task = unsafe { bpf_get_current_task() };
    // SAFETY: the helper reads kernel memory fault-tolerantly.
    let Ok(runtime) = (unsafe { bpf_probe_read_kernel((task + offset) as *const u64) }) else {
        return true;
    };
    let (credit, keep) = cpu_credit(known.cpu_credit, runtime, period);
    known.cpu_credit = credit;
    keep
}

/// Whether the current thread is exiting: it has let go of the process's memory (`exit_mm`
/// cleared its `task_struct.mm`), so no user read of it can succeed. Only asked once a sample
/// failed. `false` if the offset is unknown or the read faults.
#[inline(always)]
fn thread_exiting() -> bool {
    let offset = config_value(config::TASK_MM_OFFSET) as u64;
    if offset == 0 {
        return false;
    }
    // SAFETY: the helper takes no arguments and returns the current task's address.
    let task = unsafe { bpf_get_current_task() };
    // SAFETY: the helper reads kernel memory fault-tolerantly; a bad offset only yields a wrong
    // label.
    let mm = unsafe { bpf_probe_read_kernel((task + offset) as *const u64) };
    mm == Ok(0)
}

/// Resets the scratch entry for a new sample of thread `tid` of `pid`.
#[inline(always)]
fn start(s: &mut Scratch, target: &TargetInfo, pid: u32, tid: u32, python_tid: u32) {
    s.pid = pid;
    s.tid = tid;
    s.python_tid = python_tid;
    s.thread_calls = 0;
    s.unwind_calls = 0;
    s.sample_seq = s.sample_seq.wrapping_add(1);
    s.new_stack = 0;
    s.copy_next = 0;
    // For the sample's later programs and the walk's `bpf_loop` callbacks, which see only this
    // entry; so the walk needs no second lookup of the target.
    s.target = *target;
    s.hash = 0;
    s.hash2 = 0;
    s.code_seen = 0;
    s.faults = 0;
    s.native_hash = 0;
    s.native_end = 0;
    s.stack.len = 0;
    s.stack.flags = 0;
    s.window_end = 0;
    s.stack.extra = 0;
    s.extra.native_len = 0;
    s.extra.native_end = 0;
    s.extra.kernel_len = 0;
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

/// The thread id a thread state holds: `native_thread_id` (3.11+), or, up to 3.10, the one in
/// the C library's descriptor its `pthread_t` points at.
#[inline(always)]
fn thread_id_of(target: &TargetInfo, tstate: u64) -> Result<u32, ()> {
    let id: u64 = read(field(tstate, target.offsets.tstate_native_thread_id))?;
    if target.pthread_tid == NO_OFFSET {
        Ok(id as u32)
    } else {
        // A thread state whose thread has not started yet holds no descriptor: the read fails
        // and the state is just not this thread's.
        Ok(read::<u32>(field(id, target.pthread_tid)).unwrap_or(0))
    }
}

/// Points the thread walk at the interpreter's first thread state.
#[inline(always)]
fn begin_thread_walk(s: &mut Scratch, target: &TargetInfo) -> Result<(), Stat> {
    let off = &target.offsets;
    // `_PyRuntime` lives in the interpreter's data: until the interpreter starts, its page may
    // not be in memory, and a BPF read cannot fault it in.
    let interp: u64 = read(field(target.runtime_addr, off.runtime_interpreters_head))
        .map_err(|()| Stat::RuntimeNotReady)?;
    if interp == 0 {
        return Err(Stat::NoThreadState);
    }
    s.interp = interp;
    s.cursor = read(field(interp, off.interp_threads_head)).map_err(|()| Stat::ReadThreadState)?;
    Ok(())
}

/// One run of the thread walk: up to `THREADS_PER_CALL` thread states from the cursor. Every
/// thread met is remembered in `THREADS` (a thread of a container only once it is the one
/// sampled: its host id is not in its thread state). `Next::Threads`: run again.
pub fn walk_threads(slot: Slot) -> Option<Next> {
    let s = scratch(slot)?;
    // SAFETY: as in `locate_current_frame`.
    let Some(target) = (unsafe { TARGETS.get(s.pid) }) else {
        count(slot, Stat::TargetGone);
        return None;
    };
    let found = walk_thread_list(slot, s, target);
    match found {
        Ok(next) => Some(next),
        Err(stat) => {
            count(slot, stat);
            None
        }
    }
}

#[inline(always)]
fn walk_thread_list(slot: Slot, s: &mut Scratch, target: &TargetInfo) -> Result<Next, Stat> {
    let off = &target.offsets;
    let same_ids = target.pidns_ino == 0;
    for _ in 0..THREADS_PER_CALL {
        let tstate = s.cursor;
        if tstate == 0 {
            return Err(Stat::NoThreadState);
        }
        let id = thread_id_of(target, tstate).map_err(|()| Stat::ReadThreadState)?;
        let known = KnownThread {
            tstate,
            interp: s.interp,
            pid: s.pid,
            _pad: 0,
            cpu_credit: 0,
        };
        if id == s.python_tid {
            let _ = THREADS.insert(s.tid, known, 0);
            current_frame(slot, s, target, s.interp, tstate)?;
            return Ok(Next::Stack);
        }
        if same_ids && id != 0 {
            let _ = THREADS.insert(id, known, 0);
        }
        s.cursor = read(field(tstate, off.tstate_next)).map_err(|()| Stat::ReadThreadState)?;
    }
    s.thread_calls += 1;
    if s.thread_calls >= MAX_THREAD_CALLS {
        return Err(Stat::ThreadWalkLimit);
    }
    Ok(Next::Threads)
}

/// With the thread state found: the GIL test (`--gil`) and the thread's current frame.
#[inline(always)]
fn current_frame(
    slot: Slot,
    s: &mut Scratch,
    target: &TargetInfo,
    interp: u64,
    tstate: u64,
) -> Result<(), Stat> {
    let off = &target.offsets;
    let gil_held = holds_gil(target, interp, tstate);
    if slot == Slot::Sample && !gil_held && enabled(config::GIL_ONLY) {
        return Err(Stat::GilNotHeld);
    }
    s.gil_held = gil_held as u32;
    let collector = gil_held || target.options & target_options::FREE_THREADED != 0;
    s.stack.flags = STACK_IN_GC * (collector && gc_running(target, interp)) as u32;
    // `--async-aware`: one more read, the task the thread runs (0 outside a task).
    s.stack.task = match target.tstate_running_task {
        NO_OFFSET => 0,
        at => read(field(tstate, at)).unwrap_or(0),
    };
    let mut frame: u64 = read(field(tstate, off.tstate_frame)).map_err(|()| Stat::ReadFrame)?;
    if off.cframe_current_frame != NO_OFFSET && frame != 0 {
        frame = read(field(frame, off.cframe_current_frame)).map_err(|()| Stat::ReadFrame)?;
    }
    if frame == 0 {
        return Err(Stat::EmptyStack);
    }
    s.frame = frame;
    Ok(())
}

/// Whether the thread whose state is `tstate` holds the GIL: the GIL is locked and it is the
/// holder. A read fault answers no.
#[inline(always)]
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
    // Every layout so far keeps the holder in the word before the lock (`last_holder`, then
    // `locked`): one read of both.
    let (locked, holder) = if off.gil_locked == off.gil_last_holder.wrapping_add(8) {
        let words: [u64; 2] = read(field(gil, off.gil_last_holder)).unwrap_or([0, 0]);
        (words[1] as u32 as i32, words[0])
    } else {
        (
            read::<i32>(field(gil, off.gil_locked)).unwrap_or(0),
            read::<u64>(field(gil, off.gil_last_holder)).unwrap_or(0),
        )
    };
    locked != 0 && holder == tstate
}

/// Whether the interpreter's garbage collector is collecting: one read of its `collecting`
/// flag. A read fault or an unknown offset answers no.
#[inline(always)]
fn gc_running(target: &TargetInfo, interp: u64) -> bool {
    let off = &target.offsets;
    let flag = if off.gc_collecting_in_interp != NO_OFFSET {
        field(interp, off.gc_collecting_in_interp)
    } else if off.gc_collecting_in_runtime != NO_OFFSET {
        field(target.runtime_addr, off.gc_collecting_in_runtime)
    } else {
        return false;
    };
    read::<i32>(flag).unwrap_or(0) != 0
}

/// One run of the frame walk: up to `FRAMES_PER_CALL` frames from `s.frame`. Returns whether
/// frames remain for another run; when none do, the stack is stored and counted.
pub fn walk_step(slot: Slot) -> bool {
    let Some(s) = scratch(slot) else {
        return false;
    };
    // SAFETY: as in `locate_current_frame`.
    let Some(target) = (unsafe { TARGETS.get(s.pid) }) else {
        count(slot, Stat::TargetGone);
        return false;
    };
    if target.offsets.instr_kind > instr_kind::INT {
        count(slot, Stat::BadOffsets);
        return false;
    }
    walk_frames(s, target);
    end_walk(slot, s)
}

/// The whole frame walk in one run, with `bpf_loop` (5.17+), then the stack stored and counted.
/// The verifier checks `step` once, where `walk_step`'s bounded loop costs it every iteration:
/// most of the time a command took to start.
#[inline(always)]
pub fn walk_all(
    slot: Slot,
    step: extern "C" fn(u64, *mut c_void) -> i64,
    snapshot: extern "C" fn(u64, *mut c_void) -> i64,
) {
    let Some(s) = scratch(slot) else {
        return;
    };
    // The target's copy `locate_current_frame` made, which the callbacks read too.
    if s.target.offsets.instr_kind > instr_kind::INT {
        count(slot, Stat::BadOffsets);
        return;
    }
    // SAFETY: `step` has the shape bpf_loop expects and takes no context.
    unsafe {
        generated::bpf_loop(
            MAX_PYTHON_FRAMES.div_ceil(FRAMES_PER_LOOP) as u32,
            step as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    end_walk(slot, s);
    // SAFETY: read back of what `store` wrote through the same entry.
    let (new_stack, len) = unsafe {
        (
            read_volatile(addr_of!(s.new_stack)),
            read_volatile(addr_of!(s.stack.len)),
        )
    };
    if new_stack != 0 {
        // SAFETY: as above: `snapshot` has the shape bpf_loop expects and takes no context.
        unsafe {
            generated::bpf_loop(
                len.min(MAX_PYTHON_FRAMES as u32),
                snapshot as *mut c_void,
                core::ptr::null_mut(),
                0,
            )
        };
    }
}

/// After a new stack was stored (`bpf_loop`'s callback, or `copy_codes_step` without it): copies
/// the code object of frame `index` (`CodeSnapshot`) unless this process's copy of it was made
/// already. The frame running it holds it, so it is alive and whole now, however soon after it is
/// freed. The name, file name and line table are found through the copied header. Returns 1 (stop)
/// when the ring buffer is full.
#[inline(always)]
pub fn snapshot_code(slot: Slot, index: u64) -> i64 {
    let Some(s) = scratch(slot) else {
        return 1;
    };
    let f = s.stack.frames[index as usize & (MAX_PYTHON_FRAMES - 1)];
    if f.code == 0 {
        return 0;
    }
    let seen = CodeSeen {
        pid: s.pid,
        tag: f.tag,
        code: f.code,
    };
    // SAFETY: a presence check of an entry written whole.
    if unsafe { CODES_SEEN.get(seen) }.is_some() {
        return 0;
    }
    let Some(mut entry) = CODE_SNAPSHOTS.reserve::<CodeSnapshot>(0) else {
        count(slot, Stat::CodeSnapshotLost);
        return 1;
    };
    let snap: *mut CodeSnapshot = entry.as_mut_ptr();
    // SAFETY: `snap` points at a reserved entry of `CodeSnapshot`'s size; the header is read
    // into it first (the helper zeroes it on failure).
    let header = unsafe { addr_of_mut!((*snap).header).cast::<u8>() };
    // SAFETY: as above; `SNAPSHOT_CODE` is the header's size.
    if !unsafe { copy(header, f.code, SNAPSHOT_CODE as u32) } {
        entry.discard(0);
        count(slot, Stat::CodeSnapshotLost);
        return 0;
    }
    // The pointer at `off` in the copied header (userspace keeps every field it names within).
    // SAFETY: the offset is clamped so the 8 bytes read lie in the header; unaligned reads are
    // allowed.
    let pointer = |off: u16| unsafe {
        read_unaligned(
            header
                .add((off as usize).min(SNAPSHOT_CODE - 8))
                .cast::<u64>(),
        )
    };
    let (name, filename, linetable) = (
        pointer(s.target.code_shown_name),
        pointer(s.target.offsets.code_filename),
        pointer(s.target.code_linetable),
    );
    // Up to 3.10: the frame's first local and its type (a method's `self` and its class).
    let (first_local, first_local_type) = match s.target.frame_first_local {
        NO_OFFSET => (0, 0),
        offset => {
            let frame = s.frame_addrs[index as usize & (MAX_PYTHON_FRAMES - 1)];
            let local = read::<u64>(field(frame, offset)).unwrap_or(0);
            let ty = match local {
                0 => 0,
                local => read::<u64>(field(local, OB_TYPE)).unwrap_or(0),
            };
            (local, ty)
        }
    };
    // SAFETY: every other field is written below (the byte arrays by the helper) before the
    // entry is submitted; the reads are fault-tolerant.
    unsafe {
        (*snap).pid = s.pid;
        (*snap).tag = f.tag;
        (*snap).code = f.code;
        (*snap).name_addr = name;
        (*snap).filename_addr = filename;
        (*snap).linetable_addr = linetable;
        (*snap).first_local = first_local;
        (*snap).first_local_type = first_local_type;
        let mut parts = snapshot_part::CODE;
        let to = addr_of_mut!((*snap).name).cast();
        let n = copy_most(to, name, SNAPSHOT_NAME as u32);
        (*snap).name_len = n;
        parts |= snapshot_part::NAME * (n != 0) as u32;
        let to = addr_of_mut!((*snap).filename).cast();
        let n = copy_most(to, filename, SNAPSHOT_FILENAME as u32);
        (*snap).filename_len = n;
        parts |= snapshot_part::FILENAME * (n != 0) as u32;
        let to = addr_of_mut!((*snap).linetable).cast();
        let n = copy_most(to, linetable, SNAPSHOT_LINETABLE as u32);
        (*snap).linetable_len = n;
        parts |= snapshot_part::LINETABLE * (n != 0) as u32;
        (*snap).parts = parts;
    }
    entry.submit(0);
    let _ = CODES_SEEN.insert(seen, 1, 0);
    count(slot, Stat::CodeSnapshot);
    0
}

/// Whether this sample stored its stack for the first time, so that its code objects are to be
/// copied.
#[inline(always)]
pub fn stored_new_stack(slot: Slot) -> bool {
    // SAFETY: a read back of what `store` wrote through the same entry.
    scratch(slot).is_some_and(|s| unsafe { read_volatile(addr_of!(s.new_stack)) } != 0)
}

/// One run of the copies of a new stack's code objects where the kernel has no `bpf_loop`:
/// `snapshot_code` for up to `COPY_CODES_PER_CALL` frames from `Scratch::copy_next`. Returns
/// whether frames remain for another run.
#[inline(always)]
pub fn copy_codes_step(slot: Slot) -> bool {
    let Some(s) = scratch(slot) else {
        return false;
    };
    // SAFETY: reads back of what the walk stored through the same entry.
    let (len, first) = unsafe {
        (
            read_volatile(addr_of!(s.stack.len)),
            read_volatile(addr_of!(s.copy_next)),
        )
    };
    let len = len.min(MAX_PYTHON_FRAMES as u32);
    for k in 0..COPY_CODES_PER_CALL {
        let index = first + k;
        // The verifier needs `snapshot_code`'s mask of the index, which the compiler drops
        // after the test below unless it cannot see where the index comes from.
        // SAFETY: a read of a local.
        let masked = unsafe { read_volatile(&index) };
        if index >= len || snapshot_code(slot, masked as u64) != 0 {
            return false;
        }
    }
    let next = first + COPY_CODES_PER_CALL;
    if let Some(s) = scratch(slot) {
        s.copy_next = next;
    }
    next < len
}

/// `PyObject.ob_type` in a build with the GIL (Include/object.h), which every version with a
/// `TargetInfo::frame_first_local` (3.8 to 3.10) is.
const OB_TYPE: u16 = 8;

/// Frames `walk_one` reads per call: what a call costs besides its frames (finding the scratch
/// entry, loading the layout's offsets, storing the walk's state back) is paid once for them.
/// The verifier checks each of them: eight added 60 ms to every start (a 1000-frame sample at
/// 10 kHz: about 21 us with eight, 23 with four, 28 with two); four add about 15 ms.
const FRAMES_PER_LOOP: usize = 4;

/// `bpf_loop`'s callback for `walk_all`: reads up to `FRAMES_PER_LOOP` frames of the walk in
/// `slot`'s scratch entry. Returns 0 to go on, 1 when the chain ended, a read failed or the stack
/// is full.
#[inline(always)]
pub fn walk_one(slot: Slot) -> i64 {
    let Some(s) = scratch(slot) else {
        return 1;
    };
    if s.faults != 0 {
        return 1;
    }
    let target = s.target;
    let has_entry = ne_mask(target.frame_is_entry as u64, NO_OFFSET as u64);
    let entry_offset = target.frame_is_entry & (has_entry as u16);
    // `OUTERMOST_COROUTINE`: the last generator's frame met, rootward, is the outermost.
    let tracks_task = !ne_mask(
        (target.options & target_options::OUTERMOST_COROUTINE) as u64,
        target_options::OUTERMOST_COROUTINE as u64,
    );
    let mut frame = s.frame;
    let mut len = s.stack.len as usize;
    let mut hash = s.hash;
    let mut hash2 = s.hash2;
    let mut task = s.stack.task;
    let mut code_seen = s.code_seen;
    let mut faults = 0i64;
    let mut done = 0;
    for _ in 0..FRAMES_PER_LOOP {
        if frame == 0 || faults != 0 || len >= MAX_PYTHON_FRAMES {
            done = 1;
            break;
        }
        let (f, previous, owner) =
            read_frame::<true>(s, &target, frame, entry_offset, has_entry, &mut faults);
        let coroutine = !ne_mask(owner as u64, FRAME_OWNED_BY_GENERATOR as u64) & tracks_task;
        task = (frame & coroutine) | (task & !coroutine);
        // The verifier needs the mask, which the compiler drops as redundant after the test
        // above unless it cannot see where the index comes from.
        // SAFETY: a read of a local.
        let index = unsafe { read_volatile(&len) } & (MAX_PYTHON_FRAMES - 1);
        s.stack.frames[index] = f;
        s.frame_addrs[index] = frame;
        len += 1;
        hash = mix(hash, f.code);
        hash2 = mix(hash2, frame_word(f));
        code_seen |= (f.code != 0) as u32;
        frame = previous;
    }
    s.stack.task = task;
    s.stack.len = len as u32;
    s.hash = hash;
    s.hash2 = hash2;
    s.code_seen = code_seen;
    s.faults = (faults != 0) as u32;
    s.frame = frame;
    done
}

/// After a run of the walk: whether frames remain for another run (`walk_step` only); when
/// none do, marks a truncated stack, counts a read fault, and stores and counts the stack.
#[inline(always)]
fn end_walk(slot: Slot, s: &mut Scratch) -> bool {
    // SAFETY: reads back of what the walk stored through the same entry.
    let (frame, len, faults) = unsafe {
        (
            read_volatile(addr_of!(s.frame)),
            read_volatile(addr_of!(s.stack.len)),
            read_volatile(addr_of!(s.faults)),
        )
    };
    if frame != 0 && faults == 0 && (len as usize) < MAX_PYTHON_FRAMES {
        return true;
    }
    if frame != 0 && faults == 0 {
        s.stack.flags |= STACK_TRUNCATED;
        count(slot, Stat::Truncated);
    }
    if faults != 0 {
        count(slot, Stat::ReadFrame);
    }
    finish(slot, s);
    false
}

/// Counts a walked stack (a sample) or notes where the thread left the CPU (a switch).
///
/// A sample whose (thread, stack, native leaf) was counted before is just counted: userspace
/// keeps the count entries of stacks it holds across drains (`Sampler::settle_counts`), so for
/// those the stack map is not even looked at, and nothing is stored or copied again. Only a
/// count entry that is missing makes the stack stored (once per content) and its code objects
/// copied.
#[inline(always)]
fn finish(slot: Slot, s: &mut Scratch) {
    let done = match slot {
        Slot::Sample => stack_id(s).and_then(|stack_id| {
            let key = SampleKey {
                pid: s.pid,
                tid: s.tid,
                stack_id,
                leaf: native_leaf(s),
                kind: count_kind::ON_CPU,
                _pad: 0,
            };
            if !bump_count(&key, 1) {
                store(s, stack_id)?;
                insert_count(&key, 1)?;
            }
            if s.gil_held != 0 {
                count(slot, Stat::GilHeld);
            }
            count(slot, Stat::Recorded);
            Ok(())
        }),
        Slot::Switch => stack_id(s)
            .and_then(|stack_id| store(s, stack_id))
            .and_then(|stack_id| {
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
    // SAFETY: entries are written whole by `finish`; a concurrent update at worst gives the
    // old or the new interval.
    let Some(start) = (unsafe { OFF_CPU_START.get(tid) }).copied() else {
        return;
    };
    let _ = OFF_CPU_START.remove(tid);
    let key = SampleKey {
        pid: start.pid,
        tid,
        stack_id: start.stack_id,
        leaf: 0,
        kind: count_kind::OFF_CPU_NS,
        _pad: 0,
    };
    let away = now_ns().saturating_sub(start.since_ns);
    match add_count(&key, away) {
        Ok(()) => count(Slot::Switch, Stat::OffCpu),
        Err(stat) => count(Slot::Switch, stat),
    }
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

/// Copies `len` bytes at `addr` into the scratch buffer; 0, or 1 if they could not all be read.
#[inline(always)]
fn read_bytes(s: &mut Scratch, addr: u64, len: u32) -> i64 {
    // SAFETY: the destination is the scratch entry's buffer and `len` is masked below its size.
    let read = unsafe { copy(s.bytes.as_mut_ptr(), addr, len & BYTES_MASK as u32) };
    i64::from(!read)
}

/// Reads up to `FRAMES_PER_CALL` frames from `s.frame`, leaf first, appending them (and where
/// each was) to `s.stack` and hashing them into `s.hash` and `s.hash2`. A shim frame that runs
/// no code (3.12+: owner `owner_cstack` or above) is recorded with `code == 0` so the slot index
/// stays the loop counter (the verifier needs that); userspace hides it. A read fault ends the
/// walk there.
#[inline(always)]
fn walk_frames(s: &mut Scratch, target: &TargetInfo) {
    let has_entry = ne_mask(target.frame_is_entry as u64, NO_OFFSET as u64);
    let entry_offset = target.frame_is_entry & (has_entry as u16);
    let base = s.stack.len as usize;
    let mut frame = s.frame;
    let mut hash = s.hash;
    let mut hash2 = s.hash2;
    let mut code_seen = s.code_seen as u64;
    let mut n = FRAMES_PER_CALL;
    let mut faults = 0i64;
    for j in 0..FRAMES_PER_CALL {
        if frame == 0 || faults != 0 {
            n = j;
            break;
        }
        // Frames read alone: the window's code, inlined in this run's unrolled loop, would make
        // the older kernels' program too large to verify.
        let (slot, previous, _) =
            read_frame::<false>(s, target, frame, entry_offset, has_entry, &mut faults);
        s.stack.frames[(base + j) & (MAX_PYTHON_FRAMES - 1)] = slot;
        s.frame_addrs[(base + j) & (MAX_PYTHON_FRAMES - 1)] = frame;
        code_seen |= slot.code;
        hash = mix(hash, slot.code);
        hash2 = mix(hash2, frame_word(slot));
        frame = previous;
    }
    // SAFETY: plain stores into our scratch entry; volatile so the caller really reads them.
    unsafe {
        write_volatile(addr_of_mut!(s.frame), frame);
        write_volatile(addr_of_mut!(s.stack.len), (base + n) as u32);
        write_volatile(addr_of_mut!(s.hash), hash);
        write_volatile(addr_of_mut!(s.hash2), hash2);
        write_volatile(addr_of_mut!(s.code_seen), (code_seen != 0) as u32);
        write_volatile(addr_of_mut!(s.faults), (faults != 0) as u32);
    }
}

/// Reads the frame at `frame` (one read, or from the window with `WINDOWED`, `load_frame`) and
/// its code object's tag: the frame's slot, and the address of the frame below it, and its
/// owner. A failed read sets `faults` (the slot is then of zeroes).
#[inline(always)]
fn read_frame<const WINDOWED: bool>(
    s: &mut Scratch,
    target: &TargetInfo,
    frame: u64,
    entry_offset: u16,
    has_entry: u64,
    faults: &mut i64,
) -> (PyFrame, u64, u8) {
    let off = &target.offsets;
    // Masks, so the body needs no branch on the layout.
    let pointer_mask = !ne_mask(off.instr_kind as u64, instr_kind::POINTER as u64);
    let untag = !(off.frame_code_tag as u64);
    let base = match WINDOWED {
        true => load_frame(s, target, frame, faults),
        false => {
            *faults |= read_alone(s, frame, target.frame_read);
            0
        }
    };
    let w = &s.window;
    let owner = w.u8_at(base + off.frame_owner as usize);
    // Zero for a shim frame: its slot records code 0 and no tag.
    let keep = lt_mask(owner as u64, off.owner_cstack as u64);
    let code = w.u64_at(base + off.frame_code as usize) & untag & keep;
    // An instruction pointer (3.11+), or up to 3.10 the `int` index of the last instruction.
    let instr_at = base + off.frame_instr as usize;
    let raw_instr =
        (w.u64_at(instr_at) & pointer_mask) | (w.u32_at(instr_at) as u64 & !pointer_mask);
    let is_entry = w.u8_at(base + entry_offset as usize);
    let previous = w.u64_at(base + off.frame_previous as usize);
    let entry = ne_mask(is_entry as u64, 0) & has_entry & PY_ENTRY_FRAME as u64;
    let instr =
        (raw_instr.wrapping_sub(code & pointer_mask) as u32 & !PY_ENTRY_FRAME) | entry as u32;
    let tag = code_tag_of(s, target, code, faults) & keep as u32;
    (PyFrame { code, instr, tag }, previous, owner)
}

/// Reads the frame at `frame` alone into the start of the window, which then holds nothing
/// else; 0, or 1 if it could not be read.
#[inline(always)]
fn read_alone(s: &mut Scratch, frame: u64, len: u16) -> i64 {
    s.window_end = 0;
    // SAFETY: `len` is masked below the window's size.
    let read = unsafe { copy(s.window.as_mut_ptr(), frame, len as u32 & BYTES_MASK as u32) };
    i64::from(!read)
}

/// Puts the frame at `frame` in the window and returns where in it the frame starts (a failed
/// read sets `faults`).
///
/// 3.11+ keep a thread's frames on its data stack, each call's frame right above its
/// caller's: one read of up to `WINDOW` bytes below the frame (not below its page, which is
/// surely mapped) holds the frames of its callers that sit there, and each is taken from it
/// instead of read again. A frame elsewhere (a generator's, in another chunk) is read into a new
/// window; where that read fails, alone. Up to 3.10 each frame is its own heap object: read
/// alone.
#[inline(always)]
fn load_frame(s: &mut Scratch, target: &TargetInfo, frame: u64, faults: &mut i64) -> usize {
    if target.offsets.instr_kind != instr_kind::POINTER {
        *faults |= read_alone(s, frame, target.frame_read);
        return 0;
    }
    let end = frame.wrapping_add(FRAME_READ as u64);
    if frame < s.window_start || end > s.window_end || end < frame {
        let page = frame & !(PAGE_SIZE - 1);
        let start = end.saturating_sub(WINDOW as u64).max(page);
        let len = (end - start).min(WINDOW as u64);
        // SAFETY: the window holds `WINDOW` bytes and more; `len` is at most that.
        if !unsafe { copy(s.window.as_mut_ptr(), start, len as u32) } {
            *faults |= read_alone(s, frame, target.frame_read);
            return 0;
        }
        s.window_start = start;
        s.window_end = start + len;
    }
    // At most `WINDOW - FRAME_READ`, and a multiple of 8 (frames are 8-byte aligned, and so is a
    // window's start: a frame's end, or a page).
    (frame - s.window_start) as usize
}

/// The tag of the code object at `code` (0 for a shim): read from the code object (one read) the
/// first time this sample meets it, from the sample's `code_memo` after that, so a recursion's
/// thousand frames of one function cost one read of its code object.
///
/// Not cached across samples: a per-CPU cache keyed by address (and process, and a generation
/// userspace moved on at each drain) gave import-time frames the tag of a code object freed
/// within the same 50 ms, whose address a new one had taken; the frame then could not be named,
/// or, named from what lives at the address later, was named wrongly. Within one sample the
/// address cannot be reused (see `CodeMemo`).
#[inline(always)]
fn code_tag_of(s: &mut Scratch, target: &TargetInfo, code: u64, faults: &mut i64) -> u32 {
    if code == 0 {
        return 0;
    }
    // Code objects are at least 16-byte aligned: the low bits say nothing.
    let slot = ((code >> 4) ^ (code >> 12)) as usize & (CODE_MEMO_SLOTS - 1);
    let memo = s.code_memo[slot];
    if memo.code == code && memo.sample_seq == s.sample_seq {
        return memo.tag;
    }
    let off = &target.offsets;
    let failed = read_bytes(s, code, target.code_read as u32);
    *faults |= failed;
    let tag = code_tag(
        s.bytes.u64_at(off.code_name as usize),
        s.bytes.u64_at(off.code_filename as usize),
        s.bytes.u32_at(off.code_firstlineno as usize) as i32,
    );
    if failed == 0 {
        s.code_memo[slot] = CodeMemo {
            code,
            tag,
            sample_seq: s.sample_seq,
        };
    }
    tag
}

/// What a frame adds to the hash's second lane: its instruction position and its code object's
/// tag, side by side.
#[inline(always)]
fn frame_word(f: PyFrame) -> u64 {
    (f.instr as u64) << 32 | f.tag as u64
}

/// The walked stack's id: a hash of its content. Reads the walk's results back from the map, so
/// the verifier sees one state here whatever run the walk ended in.
#[inline(always)]
fn stack_id(s: &mut Scratch) -> Result<u64, Stat> {
    // SAFETY: reads of our own scratch entry, written by the walk.
    let (len, hash, native_hash, code_seen, flags, task) = unsafe {
        (
            read_volatile(addr_of!(s.stack.len)),
            mix(
                read_volatile(addr_of!(s.hash)),
                read_volatile(addr_of!(s.hash2)),
            ),
            read_volatile(addr_of!(s.native_hash)),
            read_volatile(addr_of!(s.code_seen)),
            read_volatile(addr_of!(s.stack.flags)),
            read_volatile(addr_of!(s.stack.task)),
        )
    };
    if len == 0 {
        return Err(Stat::NoFrame);
    }
    // Only shims: the thread runs no Python code (3.15's base frame alone, say).
    if code_seen == 0 {
        return Err(Stat::EmptyStack);
    }
    // The flags and the task too: the same frames inside and outside a collection, or in two
    // tasks, are two stacks.
    Ok(mix(
        mix(mix(mix(hash, len as u64), native_hash), flags as u64),
        task,
    ))
}

/// The sampled instruction's address when the sample has native frames (`SampleKey::leaf`),
/// else 0.
#[inline(always)]
fn native_leaf(s: &Scratch) -> u64 {
    // SAFETY: reads of our own scratch entry, written by the native unwinder.
    let len = unsafe { read_volatile(addr_of!(s.extra.native_len)) };
    if len == 0 {
        return 0;
    }
    s.extra.native[0]
}

/// Stores stack `stack_id` (once per content; in `STACKS_SMALL` when it fits) and its native
/// and kernel part, and returns its id.
#[inline(always)]
fn store(s: &mut Scratch, stack_id: u64) -> Result<u64, Stat> {
    // SAFETY: reads of our own scratch entry, written by the walk.
    let (len, native_hash) = unsafe {
        (
            read_volatile(addr_of!(s.stack.len)),
            read_volatile(addr_of!(s.native_hash)),
        )
    };
    if native_hash != 0 {
        s.stack.extra = native_hash;
        if EXTRA_STACKS.get_ptr(native_hash).is_none() {
            // By reference: a copy would not fit the 512-byte BPF stack.
            #[expect(
                clippy::needless_borrows_for_generic_args,
                reason = "avoids a 2.6 KB copy"
            )]
            let inserted = EXTRA_STACKS.insert(native_hash, &s.extra, BPF_NOEXIST as u64);
            match inserted {
                Ok(()) => {}
                Err(e) if e == -EEXIST => {}
                Err(_) => return Err(Stat::StackMapFull),
            }
        }
    }
    let large = len as usize > SMALL_STACK_FRAMES;
    let known = if large {
        STACKS_LARGE.get_ptr(stack_id).is_some()
    } else {
        STACKS_SMALL.get_ptr(stack_id).is_some()
    };
    if !known {
        let inserted = if large {
            #[expect(
                clippy::needless_borrows_for_generic_args,
                reason = "avoids a 16 KB copy"
            )]
            let r = STACKS_LARGE.insert(stack_id, &s.stack, BPF_NOEXIST as u64);
            r
        } else {
            // SAFETY: a large stack's first bytes are a small stack: same header, and the
            // first `SMALL_STACK_FRAMES` frames, which hold every frame of this one.
            let small = unsafe { &*(addr_of!(s.stack) as *const SmallStack) };
            STACKS_SMALL.insert(stack_id, small, BPF_NOEXIST as u64)
        };
        match inserted {
            Ok(()) => {
                s.new_stack = 1;
                let notice = NewStack {
                    pid: s.pid,
                    large: large as u32,
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

/// The count map userspace is not draining.
#[inline(always)]
fn active_counts() -> &'static PerCpuHashMap<SampleKey, u64> {
    match ACTIVE_COUNTS.get(0) {
        Some(1) => &COUNTS_1,
        _ => &COUNTS_0,
    }
}

/// Adds `n` to `key`'s count in the count map userspace is not draining.
#[inline(always)]
fn add_count(key: &SampleKey, n: u64) -> Result<(), Stat> {
    if bump_count(key, n) {
        return Ok(());
    }
    insert_count(key, n)
}

/// Adds `n` to `key`'s count if the live count map has an entry for it; whether it had.
#[inline(always)]
fn bump_count(key: &SampleKey, n: u64) -> bool {
    match active_counts().get_ptr_mut(key) {
        Some(v) => {
            // SAFETY: a per-CPU value, touched only by this CPU.
            unsafe { *v += n };
            true
        }
        None => false,
    }
}

/// Adds an entry of `n` for `key` to the live count map, which had none a moment ago (one
/// made since, on another CPU, gets `n` added).
#[inline(always)]
fn insert_count(key: &SampleKey, n: u64) -> Result<(), Stat> {
    let counts = active_counts();
    match counts.insert(key, n, BPF_NOEXIST as u64) {
        Ok(()) => Ok(()),
        Err(e) if e == -EEXIST => {
            if let Some(v) = counts.get_ptr_mut(key) {
                // SAFETY: as in `bump_count`.
                unsafe { *v += n };
            }
            Ok(())
        }
        Err(_) => Err(Stat::CountMapFull),
    }
}
