//! Walking every thread's frame chain from userspace, for `dump`. The kernel sampler cannot see a
//! thread that is blocked (it never runs on a CPU, so the CPU-clock event never fires for it);
//! this reads the same structures with the same `PyOffsets` fields the kernel uses, through
//! `ProcessMemory`, and yields the same raw frames (`PyFrame`: code object, instruction, tag) so
//! they are named the way recorded ones are. Generic over the memory, so it is tested against
//! local buffers; works for every version table, frame objects (up to 3.10, `cframe_current_frame
//! == NO_OFFSET`, instruction as an int) and interpreter frames (3.11+) alike.

use std::io;

use profiler_common::{
    MAX_PYTHON_FRAMES, NO_CSTACK_OWNER, NO_OFFSET, PY_ENTRY_FRAME, PyFrame, TargetInfo, code_tag,
    instr_kind, target_options,
};

use crate::process::ProcessMemory;

/// Threads walked at most: far beyond any real program (a thousand threads is a busy server),
/// a bound against a corrupt list that loops.
const MAX_WALKED_THREADS: usize = 1 << 16;

/// One Python thread and its frames, leaf first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadStack {
    /// `PyThreadState.native_thread_id`: the kernel's thread id, as the process's own pid
    /// namespace numbers it (a container's differs from the host's).
    pub tid: u64,
    /// Address of the thread state, to tell threads apart when there is no native id.
    pub tstate: u64,
    /// Leaf first. As the kernel records them: a shim frame that runs no code (3.12+) is a frame
    /// with code 0, the code field's tag bits (3.14+) are cleared, and where `TargetInfo::frame_is_entry` is set (3.11) an eval call's first frame has
    /// `PY_ENTRY_FRAME` in its instruction, so `profile::merge` can split the eval calls.
    pub frames: Vec<PyFrame>,
    /// Each frame's address, beside `frames`: the `PyFrameObject` (up to 3.10) or the
    /// `_PyInterpreterFrame` (3.11+), where its locals are.
    pub frame_addrs: Vec<u64>,
    /// The chain was deeper than `MAX_PYTHON_FRAMES`.
    pub truncated: bool,
    /// The garbage collector was running in this thread, by the kernel's test: the collector's
    /// flag is set and the thread holds the GIL (any thread of a free-threaded build).
    pub in_gc: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error("reading the interpreter's thread list: {0}")]
    Threads(io::Error),
    #[error("reading thread {tid}'s frames: {source}")]
    Frames { tid: u64, source: io::Error },
    #[error("the interpreter is not initialized (no interpreter state)")]
    NoInterpreter,
    #[error("the layout's instruction kind {0} is unknown")]
    BadLayout(u16),
}

/// Reads every thread of the main interpreter of `target` (as the kernel would get it: the
/// address of `_PyRuntime` and the layout), in the interpreter's list order (newest first).
pub fn walk_threads(
    mem: &impl ProcessMemory,
    target: &TargetInfo,
) -> Result<Vec<ThreadStack>, WalkError> {
    let off = &target.offsets;
    let runtime = target.runtime_addr;
    if off.instr_kind > instr_kind::INT {
        return Err(WalkError::BadLayout(off.instr_kind));
    }
    let field = |base: u64, offset: u16| base.wrapping_add(offset as u64);
    let interp = mem
        .read_u64(field(runtime, off.runtime_interpreters_head))
        .map_err(WalkError::Threads)?;
    if interp == 0 {
        return Err(WalkError::NoInterpreter);
    }
    let collecting = gc_running(mem, target, interp);
    let free_threaded = target.options & target_options::FREE_THREADED != 0;
    let gil_holder = gil_holder(mem, target).ok().flatten();
    let mut tstate = mem
        .read_u64(field(interp, off.interp_threads_head))
        .map_err(WalkError::Threads)?;
    let mut threads = Vec::new();
    while tstate != 0 && threads.len() < MAX_WALKED_THREADS {
        let id = mem
            .read_u64(field(tstate, off.tstate_native_thread_id))
            .map_err(WalkError::Threads)?;
        // Up to 3.10 the thread state holds pthread_self(): the tid is in the descriptor.
        let tid = match target.pthread_tid {
            NO_OFFSET => id,
            at => mem.read_u32(field(id, at)).map_or(0, u64::from),
        };
        let (frames, frame_addrs, truncated) =
            walk_frames(mem, target, tstate).map_err(|source| WalkError::Frames { tid, source })?;
        threads.push(ThreadStack {
            tid,
            tstate,
            frames,
            frame_addrs,
            truncated,
            in_gc: collecting && (free_threaded || gil_holder == Some(tstate)),
        });
        tstate = mem
            .read_u64(field(tstate, off.tstate_next))
            .map_err(WalkError::Threads)?;
    }
    // The process runs while it is read: a collection that ended during the walk may have left
    // frames read after it, so a thread is only in one that still runs once all are read.
    if collecting && !gc_running(mem, target, interp) {
        threads.iter_mut().for_each(|t| t.in_gc = false);
    }
    Ok(threads)
}

/// Whether the interpreter's garbage collector is collecting (its `collecting` flag, as the
/// kernel reads it); a read that fails or an unknown offset answers no.
fn gc_running(mem: &impl ProcessMemory, target: &TargetInfo, interp: u64) -> bool {
    let off = &target.offsets;
    let flag = match (off.gc_collecting_in_interp, off.gc_collecting_in_runtime) {
        (NO_OFFSET, NO_OFFSET) => return false,
        (NO_OFFSET, at) => target.runtime_addr.wrapping_add(at as u64),
        (at, _) => interp.wrapping_add(at as u64),
    };
    mem.read_u32(flag).is_ok_and(|v| v != 0)
}

/// One thread's frames, leaf first, as the kernel's walker records them, and their addresses.
fn walk_frames(
    mem: &impl ProcessMemory,
    target: &TargetInfo,
    tstate: u64,
) -> io::Result<(Vec<PyFrame>, Vec<u64>, bool)> {
    let off = &target.offsets;
    let field = |base: u64, offset: u16| base.wrapping_add(offset as u64);
    let mut frame = mem.read_u64(field(tstate, off.tstate_frame))?;
    if off.cframe_current_frame != NO_OFFSET && frame != 0 {
        frame = mem.read_u64(field(frame, off.cframe_current_frame))?;
    }
    let mut frames = Vec::new();
    let mut addrs = Vec::new();
    while frame != 0 {
        if frames.len() == MAX_PYTHON_FRAMES {
            return Ok((frames, addrs, true));
        }
        addrs.push(frame);
        frames.push(read_frame(mem, target, frame)?);
        frame = mem.read_u64(field(frame, off.frame_previous))?;
    }
    Ok((frames, addrs, false))
}

/// The interpreter frame at `frame` as the kernel records it: a shim frame (3.12+) as code 0,
/// the code field's tag bits cleared, the entry flag where the layout has one. Also reads a
/// coroutine's own frame, which is embedded in the coroutine object (`python::asyncio`).
pub fn read_frame(
    mem: &impl ProcessMemory,
    target: &TargetInfo,
    frame: u64,
) -> io::Result<PyFrame> {
    let off = &target.offsets;
    let field = |base: u64, offset: u16| base.wrapping_add(offset as u64);
    let shim = off.owner_cstack != NO_CSTACK_OWNER && {
        let mut owner = [0u8];
        mem.read(field(frame, off.frame_owner), &mut owner)?;
        owner[0] as u16 >= off.owner_cstack
    };
    if shim {
        return Ok(PyFrame {
            code: 0,
            instr: 0,
            tag: 0,
        });
    }
    let code = mem.read_u64(field(frame, off.frame_code))? & !(off.frame_code_tag as u64);
    let mut instr = if off.instr_kind == instr_kind::POINTER {
        // As the kernel records it: the pointer minus the code object's address.
        mem.read_u64(field(frame, off.frame_instr))?
            .wrapping_sub(code) as u32
    } else {
        mem.read_u32(field(frame, off.frame_instr))?
    };
    if target.frame_is_entry != NO_OFFSET {
        let mut entry = [0u8];
        mem.read(field(frame, target.frame_is_entry), &mut entry)?;
        if entry[0] != 0 {
            instr |= PY_ENTRY_FRAME;
        }
    }
    let name = mem.read_u64(field(code, off.code_name))?;
    let filename = mem.read_u64(field(code, off.code_filename))?;
    let firstlineno = mem.read_u32(field(code, off.code_firstlineno))? as i32;
    Ok(PyFrame {
        code,
        instr,
        tag: code_tag(name, filename, firstlineno),
    })
}

/// The thread state holding the GIL of `target`'s main interpreter, if one holds it: the GIL's
/// `last_holder` while it is `locked` (Include/internal/pycore_gil.h), as the kernel reads them.
/// None for a layout without a GIL to read.
pub fn gil_holder(mem: &impl ProcessMemory, target: &TargetInfo) -> io::Result<Option<u64>> {
    let off = &target.offsets;
    let field = |base: u64, offset: u16| base.wrapping_add(offset as u64);
    let gil = if off.gil_ptr_in_interp != NO_OFFSET {
        let interp = mem.read_u64(field(target.runtime_addr, off.runtime_interpreters_head))?;
        mem.read_u64(field(interp, off.gil_ptr_in_interp))?
    } else if off.gil_in_runtime != NO_OFFSET {
        field(target.runtime_addr, off.gil_in_runtime)
    } else {
        return Ok(None);
    };
    if gil == 0 || mem.read_u32(field(gil, off.gil_locked))? == 0 {
        return Ok(None);
    }
    let holder = mem.read_u64(field(gil, off.gil_last_holder))?;
    Ok((holder != 0).then_some(holder))
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use profiler_common::PyOffsets;

    use super::*;
    use crate::{
        process::LocalMemory,
        python::{Layout, Version, layout_for},
    };

    use crate::python::test_heap::{BASE, Heap};

    /// A code object with `name`/`filename` pointers and a first line, at a fresh address.
    fn code(h: &mut Heap, off: &PyOffsets, n: u64) -> (u64, u32) {
        let c = h.alloc(512);
        let (name, file, first) = (0xaaaa_0000 + n, 0xbbbb_0000 + n, 10 * n as i32);
        h.word(c + off.code_name as u64, name);
        h.word(c + off.code_filename as u64, file);
        h.put(c + off.code_firstlineno as u64, &first.to_le_bytes());
        (c, code_tag(name, file, first))
    }

    /// A frame running `code` at instruction `instr`, its caller `previous`.
    fn frame(
        h: &mut Heap,
        off: &PyOffsets,
        code: u64,
        instr: u32,
        previous: u64,
        owner: u8,
    ) -> u64 {
        let f = h.alloc(256);
        // 3.14+: a _PyStackRef, tagged as a borrowed reference.
        let tag = (off.frame_code_tag as u64) & 1;
        h.word(f + off.frame_code as u64, code | tag);
        h.word(f + off.frame_previous as u64, previous);
        if off.instr_kind == instr_kind::POINTER {
            h.word(f + off.frame_instr as u64, code + instr as u64);
        } else {
            h.put(f + off.frame_instr as u64, &instr.to_le_bytes());
        }
        if off.owner_cstack != NO_CSTACK_OWNER {
            h.put(f + off.frame_owner as u64, &[owner]);
        }
        f
    }

    /// Two threads: tid 7 runs c1 <- c2 <- (shim) <- c3; tid 8 has no frame. The thread state's
    /// frame field points at a cframe or straight at the frame, and its thread id field holds
    /// the tid or a `pthread_t` descriptor holding it, per the layout.
    fn two_threads(off: &PyOffsets, pthread_tid: u16) -> (LocalMemory, u64, Vec<(u64, u32)>) {
        let mut h = Heap::new();
        let codes: Vec<(u64, u32)> = (1..=3).map(|n| code(&mut h, off, n)).collect();
        let owner_cstack = off.owner_cstack as u8;
        let f3 = frame(&mut h, off, codes[2].0, 40, 0, 0);
        let top = if off.owner_cstack != NO_CSTACK_OWNER {
            frame(&mut h, off, 0xdead, 0, f3, owner_cstack)
        } else {
            f3
        };
        let f2 = frame(&mut h, off, codes[1].0, 20, top, 0);
        let f1 = frame(&mut h, off, codes[0].0, 6, f2, 0);
        // Large enough for every version's interpreter fields up to the collector's flag.
        let (runtime, interp) = (h.alloc(8192), h.alloc(8192));
        let (t7, t8) = (h.alloc(512), h.alloc(512));
        h.word(runtime + off.runtime_interpreters_head as u64, interp);
        h.word(interp + off.interp_threads_head as u64, t7);
        h.word(t7 + off.tstate_next as u64, t8);
        for (t, tid) in [(t7, 7), (t8, 8)] {
            let id = if pthread_tid == NO_OFFSET {
                tid
            } else {
                let descriptor = h.alloc(1024);
                h.word(descriptor + pthread_tid as u64, tid);
                descriptor
            };
            h.word(t + off.tstate_native_thread_id as u64, id);
        }
        if off.cframe_current_frame != NO_OFFSET {
            let cframe = h.alloc(64);
            h.word(t7 + off.tstate_frame as u64, cframe);
            h.word(cframe + off.cframe_current_frame as u64, f1);
        } else {
            h.word(t7 + off.tstate_frame as u64, f1);
        }
        (h.mem(), runtime, codes)
    }

    fn check(layout: Layout) {
        let info = layout.target_info(0);
        let (mem, runtime, codes) = two_threads(&info.offsets, info.pthread_tid);
        let threads = walk_threads(&mem, &layout.target_info(runtime)).unwrap();
        assert_eq!(threads.len(), 2);
        assert_eq!((threads[0].tid, threads[1].tid), (7, 8));
        let got: Vec<(u64, u32, u32)> = threads[0]
            .frames
            .iter()
            .map(|f| (f.code, f.instr, f.tag))
            .collect();
        let mut want = vec![(codes[0].0, 6, codes[0].1), (codes[1].0, 20, codes[1].1)];
        if info.offsets.owner_cstack != NO_CSTACK_OWNER {
            want.push((0, 0, 0));
        }
        want.push((codes[2].0, 40, codes[2].1));
        assert_eq!(got, want, "leaf first, shims as code 0");

        // 3.11 marks each eval call's first frame (here the leaf's: its is_entry byte is 1).
        if layout.entry_flag != NO_OFFSET {
            let mut mem = mem;
            let mut target = layout.target_info(runtime);
            target.frame_is_entry = layout.entry_flag;
            let leaf = leaf_frame(&mem, &target);
            mem.bytes[(leaf + layout.entry_flag as u64 - BASE) as usize] = 1;
            let threads = walk_threads(&mem, &target).unwrap();
            let flags: Vec<bool> = threads[0]
                .frames
                .iter()
                .map(|f| f.instr & PY_ENTRY_FRAME != 0)
                .collect();
            assert_eq!(flags, vec![true, false, false]);
            assert_eq!(threads[0].frames[0].instr & !PY_ENTRY_FRAME, 6);
        }
        assert!(threads[1].frames.is_empty() && !threads[1].truncated);
    }

    /// The address of thread 7's leaf frame (the thread state's frame, through the cframe).
    fn leaf_frame(mem: &LocalMemory, target: &TargetInfo) -> u64 {
        let off = &target.offsets;
        let interp = mem
            .read_u64(target.runtime_addr + off.runtime_interpreters_head as u64)
            .unwrap();
        let t7 = mem
            .read_u64(interp + off.interp_threads_head as u64)
            .unwrap();
        let mut frame = mem.read_u64(t7 + off.tstate_frame as u64).unwrap();
        if off.cframe_current_frame != NO_OFFSET {
            frame = mem
                .read_u64(frame + off.cframe_current_frame as u64)
                .unwrap();
        }
        frame
    }

    #[test]
    fn walks_every_built_in_layout() {
        for minor in 8..=15 {
            check(layout_for(Version::new(3, minor)).unwrap());
        }
    }

    fn poke(mem: &mut LocalMemory, at: u64, bytes: &[u8]) {
        let i = (at - BASE) as usize;
        mem.bytes[i..i + bytes.len()].copy_from_slice(bytes);
    }

    /// A thread is in a collection as the kernel judges it: the collector's flag is set and the
    /// thread holds the GIL, or, in a free-threaded build, whatever thread it is.
    #[test]
    fn the_gil_holder_during_a_collection_is_in_gc() {
        for minor in 8..=15 {
            let layout = layout_for(Version::new(3, minor)).unwrap();
            let info = layout.target_info(0);
            let off = info.offsets;
            let (mut mem, runtime, _) = two_threads(&off, info.pthread_tid);
            let mut target = layout.target_info(runtime);
            let interp = mem
                .read_u64(runtime + off.runtime_interpreters_head as u64)
                .unwrap();
            let t7 = mem
                .read_u64(interp + off.interp_threads_head as u64)
                .unwrap();
            let gil = match off.gil_ptr_in_interp {
                NO_OFFSET => runtime + off.gil_in_runtime as u64,
                at => {
                    let gil = BASE + 0xf000;
                    poke(&mut mem, interp + at as u64, &gil.to_le_bytes());
                    gil
                }
            };
            poke(&mut mem, gil + off.gil_locked as u64, &1u32.to_le_bytes());
            poke(
                &mut mem,
                gil + off.gil_last_holder as u64,
                &t7.to_le_bytes(),
            );
            let in_gc = |mem: &LocalMemory, target: &TargetInfo| -> Vec<bool> {
                let threads = walk_threads(mem, target).unwrap();
                threads.iter().map(|t| t.in_gc).collect()
            };
            assert_eq!(
                in_gc(&mem, &target),
                [false, false],
                "3.{minor}, no collection"
            );
            let flag = match off.gc_collecting_in_interp {
                NO_OFFSET => runtime + off.gc_collecting_in_runtime as u64,
                at => interp + at as u64,
            };
            poke(&mut mem, flag, &1u32.to_le_bytes());
            assert_eq!(in_gc(&mem, &target), [true, false], "3.{minor}, collecting");
            let ended = EndsAfterFirstRead {
                mem: &mem,
                flag,
                reads: Cell::new(0),
            };
            let threads = walk_threads(&ended, &target).unwrap();
            assert!(
                threads.iter().all(|t| !t.in_gc),
                "3.{minor}, a collection that ended during the walk"
            );
            target.options |= target_options::FREE_THREADED;
            assert_eq!(in_gc(&mem, &target), [true, true], "3.{minor}t, collecting");
        }
    }

    /// A process whose collection ends right after its flag is first read.
    struct EndsAfterFirstRead<'a> {
        mem: &'a LocalMemory,
        flag: u64,
        reads: Cell<u32>,
    }

    impl ProcessMemory for EndsAfterFirstRead<'_> {
        fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
            self.mem.read(addr, buf)?;
            if addr == self.flag {
                self.reads.set(self.reads.get() + 1);
                if self.reads.get() > 1 {
                    buf.fill(0);
                }
            }
            Ok(())
        }
    }

    #[test]
    fn a_cycle_is_cut_and_marked_truncated() {
        let layout = layout_for(Version::new(3, 12)).unwrap();
        let off = layout.kernel;
        let mut h = Heap::new();
        let (c, _) = code(&mut h, &off, 1);
        let f = frame(&mut h, &off, c, 2, 0, 0);
        h.word(f + off.frame_previous as u64, f); // a frame that is its own caller
        let (runtime, interp, t) = (h.alloc(512), h.alloc(512), h.alloc(512));
        let cframe = h.alloc(64);
        h.word(runtime + off.runtime_interpreters_head as u64, interp);
        h.word(interp + off.interp_threads_head as u64, t);
        h.word(t + off.tstate_frame as u64, cframe);
        h.word(cframe + off.cframe_current_frame as u64, f);
        let threads = walk_threads(&h.mem(), &layout.target_info(runtime)).unwrap();
        assert!(threads[0].truncated);
        assert_eq!(threads[0].frames.len(), MAX_PYTHON_FRAMES);
    }

    #[test]
    fn unreadable_memory_is_an_error_not_a_panic() {
        let layout = layout_for(Version::new(3, 11)).unwrap();
        let mem = LocalMemory {
            base: BASE,
            bytes: vec![0; 16],
        };
        assert!(matches!(
            walk_threads(&mem, &layout.target_info(BASE + 0x1000)),
            Err(WalkError::Threads(_))
        ));
        let mem = LocalMemory {
            base: BASE,
            bytes: vec![0; 4096],
        };
        assert!(matches!(
            walk_threads(&mem, &layout.target_info(BASE)),
            Err(WalkError::NoInterpreter)
        ));
    }
}
