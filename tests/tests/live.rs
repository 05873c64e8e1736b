//! The library's readers against what they read in real life, as root: the interpreter's own
//! view of its threads and code objects (not memory built by hand with the offsets the reader
//! uses), the kernel's own symbol table, and this process's own stack as the system unwinder
//! walks it. Independent truth for the pieces the unit tests can only check against
//! themselves.

use std::{collections::BTreeMap, ffi::c_void, io, os::unix::fs::FileExt as _};

use prof_bpf_tests::*;
use profiler_common::{
    MAX_NATIVE_FRAMES, NativeMapping, NativeMappings, PAGES_PER_CHUNK, PageChunk, ROWS_PER_CHUNK,
    RowChunk, Stat, UnwindRow, unwind_step,
};
use profiler_userspace::{
    process::ProcMem,
    python::{self, code::read_code, threads::walk_threads},
    symbolize::kernel::KernelSymbols,
    unwind::{NativeTables, UnwindMaps, cfi},
};
use serde_json::Value;

/// Every thread of a live interpreter, walked from `/proc/PID/mem` with the version's layout
/// (the kernel's walk, in userspace), against the stacks the interpreter reports for itself
/// (`sys._current_frames()`): the same threads by native id, the same code objects in the same
/// order, and each code object read back with the name, file and first line Python gives it.
fn threads_and_code_objects(which: &str) {
    if !privileged() {
        return;
    }
    let fixture = Fixture::blocked(&python(which));
    let p = python::discover::inspect(fixture.pid).expect("the fixture is a Python process");
    let mem = ProcMem::open(p.pid).unwrap();
    let (layout, _) = python::layout_of(&mem, p.version, p.runtime_addr, p.runtime_size).unwrap();
    let mut target = layout.target_info(p.runtime_addr);
    target.frame_is_entry = layout.entry_flag;
    let walked = walk_threads(&mem, &target).expect("walking the threads");

    let expected: BTreeMap<u64, Vec<Value>> = fixture.ready["stacks"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(tid, frames)| (tid.parse().unwrap(), frames.as_array().unwrap().clone()))
        .collect();
    let tids: Vec<u64> = walked.iter().map(|t| t.tid).collect();
    assert_eq!(
        tids.iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        expected.keys().copied().collect(),
        "{which}: threads walked {tids:?}, the interpreter's {:?}",
        expected.keys()
    );
    for thread in &walked {
        // Code objects only: 3.12+ C-stack shim frames (code 0) are no Python frame.
        let frames: Vec<_> = thread.frames.iter().filter(|f| f.code != 0).collect();
        let want = &expected[&thread.tid];
        let addresses: Vec<u64> = frames.iter().map(|f| f.code).collect();
        let want_addresses: Vec<u64> = want.iter().map(|f| f[3].as_u64().unwrap()).collect();
        assert_eq!(
            addresses, want_addresses,
            "{which}: thread {}: code objects walked vs the interpreter's",
            thread.tid
        );
        for (f, w) in frames.iter().zip(want) {
            let info = read_code(&mem, &layout, f.code, f.tag)
                .unwrap_or_else(|e| panic!("{which}: reading {w}: {e}"));
            assert_eq!(
                (
                    info.name.as_str(),
                    info.filename.as_str(),
                    info.firstlineno as u64
                ),
                (
                    w[0].as_str().unwrap(),
                    w[1].as_str().unwrap(),
                    w[2].as_u64().unwrap()
                ),
                "{which}: the code object at {:#x}",
                f.code
            );
        }
    }
}

#[test]
fn threads_and_code_objects_3_8() {
    threads_and_code_objects("3.8");
}

#[test]
fn threads_and_code_objects_3_9() {
    threads_and_code_objects("3.9");
}

#[test]
fn threads_and_code_objects_3_10() {
    threads_and_code_objects("3.10");
}

#[test]
fn threads_and_code_objects_3_11() {
    threads_and_code_objects("3.11");
}

#[test]
fn threads_and_code_objects_3_12() {
    threads_and_code_objects("3.12");
}

#[test]
fn threads_and_code_objects_3_13() {
    threads_and_code_objects("3.13");
}

#[test]
fn threads_and_code_objects_debian_3_11() {
    threads_and_code_objects("debian-3.11");
}

/// `--kernel`'s symbol table, loaded as prof-bpf loads it, names addresses as /proc/kallsyms
/// says: a table that came back empty (or was not read) names every kernel frame `[unknown]`.
#[test]
fn kernel_symbols_name_what_kallsyms_lists() {
    if !privileged() {
        return;
    }
    let kallsyms = std::fs::read_to_string("/proc/kallsyms").unwrap();
    let address = |name: &str| -> u64 {
        let found: Vec<u64> = kallsyms
            .lines()
            .filter_map(|l| {
                let mut parts = l.split_whitespace();
                let addr = u64::from_str_radix(parts.next()?, 16).ok()?;
                let kind = parts.next()?;
                (parts.next()? == name && matches!(kind, "t" | "T")).then_some(addr)
            })
            .collect();
        assert_eq!(found.len(), 1, "{name} in /proc/kallsyms: {found:x?}");
        assert_ne!(found[0], 0, "kallsyms hides addresses: not root?");
        found[0]
    };
    let symbols = KernelSymbols::load().expect("reading /proc/kallsyms");
    for name in ["do_syscall_64", "schedule", "vfs_read", "__x64_sys_getpid"] {
        let at = address(name);
        for addr in [at, at + 1] {
            assert_eq!(symbols.name(addr), Some(name), "{addr:#x}");
        }
    }
}

/// The kernel's unwind maps, in memory: what `NativeTables` writes, addressed as the kernel
/// addresses them.
#[derive(Default)]
struct Maps {
    chunks: BTreeMap<u32, Box<RowChunk>>,
    pages: BTreeMap<u32, Box<PageChunk>>,
    mappings: Vec<NativeMapping>,
}

impl UnwindMaps for Maps {
    fn write_chunk(&mut self, index: u32, chunk: &RowChunk) -> io::Result<()> {
        self.chunks.insert(index, Box::new(*chunk));
        Ok(())
    }

    fn write_page_chunk(&mut self, index: u32, chunk: &PageChunk) -> io::Result<()> {
        self.pages.insert(index, Box::new(*chunk));
        Ok(())
    }

    fn write_mappings(&mut self, _pid: u32, mappings: &NativeMappings) -> io::Result<()> {
        self.mappings = mappings.mappings[..mappings.len as usize].to_vec();
        Ok(())
    }

    fn unmapped(&self) -> u64 {
        0
    }
}

impl Maps {
    /// `m`'s rows and page index, from the row array and page array as the kernel reads them
    /// (`rows_start + i`, `pages_start + page`).
    fn table(&self, m: &NativeMapping) -> (Vec<UnwindRow>, Vec<u32>) {
        let rows = (m.rows_start..m.rows_start + m.rows_len)
            .map(|i| self.chunks[&(i / ROWS_PER_CHUNK as u32)].rows[i as usize % ROWS_PER_CHUNK])
            .collect();
        let pages = (m.pages_start..m.pages_start + m.pages_len)
            .map(|i| self.pages[&(i / PAGES_PER_CHUNK as u32)].rows[i as usize % PAGES_PER_CHUNK])
            .collect();
        (rows, pages)
    }

    /// The kernel's walk (profiler-ebpf/src/native.rs `step_frame`) over these maps, reading
    /// this process's stack: the mapping of the pc (a return address looked up one byte
    /// back), its row through the page index (`cfi::lookup_paged`, the kernel's search), and
    /// the step itself from `profiler_common::unwind_step`, the function the kernel runs.
    fn unwind(&self, (mut pc, mut rsp, mut rbp): (u64, u64, u64)) -> (Vec<u64>, Stat) {
        let mem = std::fs::File::open("/proc/self/mem").unwrap();
        let read = |addr: u64| {
            let mut b = [0; 8];
            mem.read_exact_at(&mut b, addr).ok()?;
            Some(u64::from_le_bytes(b))
        };
        let mut pcs = Vec::new();
        while pcs.len() < MAX_NATIVE_FRAMES {
            let first = pcs.is_empty();
            pcs.push(pc);
            if pc == 0 {
                return (pcs, Stat::NativeComplete);
            }
            let lookup = if first { pc } else { pc - 1 };
            let i = self.mappings.partition_point(|m| m.start <= lookup);
            let Some(m) = i
                .checked_sub(1)
                .map(|i| self.mappings[i])
                .filter(|m| lookup < m.end)
            else {
                return (pcs, Stat::NativeNoMapping);
            };
            let row = if m.rows_len == 0 {
                None
            } else {
                let (rows, pages) = self.table(&m);
                let rel = u32::try_from(lookup - m.bias).unwrap();
                match cfi::lookup_paged(&rows, (m.first_page, &pages), rel) {
                    Some(row) => Some(row),
                    None => return (pcs, Stat::NativeNoRow),
                }
            };
            match unwind_step(row, pc, rsp, rbp, read) {
                Ok((ra, cfa, new_rbp)) => (pc, rsp, rbp) = (ra, cfa, new_rbp),
                Err(end) => return (pcs, end),
            }
        }
        (pcs, Stat::NativeTruncated)
    }
}

unsafe extern "C" {
    /// glibc's backtrace(3): libgcc's unwinder over the same .eh_frame.
    fn backtrace(buffer: *mut *mut c_void, size: i32) -> i32;
}

/// The kernel's unwind from this function's registers, and glibc's backtrace, both taken here
/// while the frames above are live.
#[inline(never)]
fn capture(maps: &Maps) -> ((Vec<u64>, Stat), Vec<u64>) {
    let (rip, rsp, rbp): (u64, u64, u64);
    // SAFETY: reads three registers, writes nothing else.
    unsafe {
        std::arch::asm!(
            "lea {0}, [rip]",
            "mov {1}, rsp",
            "mov {2}, rbp",
            out(reg) rip,
            out(reg) rsp,
            out(reg) rbp,
        )
    };
    let mut buf = [std::ptr::null_mut(); 256];
    // SAFETY: the buffer holds the 256 entries backtrace may write.
    let n = unsafe { backtrace(buf.as_mut_ptr(), buf.len() as i32) };
    let reference = buf[..n.max(0) as usize].iter().map(|&p| p as u64).collect();
    (maps.unwind((rip, rsp, rbp)), reference)
}

#[inline(never)]
fn nested(maps: &Maps, depth: u32) -> ((Vec<u64>, Stat), Vec<u64>) {
    let r = if depth == 0 {
        capture(maps)
    } else {
        nested(maps, depth - 1)
    };
    std::hint::black_box(r)
}

/// The tables `NativeTables` builds for this very process, walked with the kernel's step,
/// return the same addresses as the system unwinder, up to the outermost frame.
#[test]
fn tables_unwind_this_thread_with_the_kernels_step() {
    let mut maps = Maps::default();
    let mut tables = NativeTables::default();
    assert!(tables.refresh(std::process::id(), &mut maps).unwrap());
    let ((ours, end), reference) = nested(&maps, 5);
    assert_eq!(
        end,
        Stat::NativeComplete,
        "stopped early: ours {ours:x?}\nreference {reference:x?}"
    );
    // reference[0] is the return into `capture` after backtrace(); ours[0] the asm.
    let n = reference.len().min(ours.len());
    assert!(n > 8, "ours {ours:x?}\nreference {reference:x?}");
    assert_eq!(
        ours[1..n],
        reference[1..n],
        "ours {ours:x?}\nreference {reference:x?}"
    );
}
