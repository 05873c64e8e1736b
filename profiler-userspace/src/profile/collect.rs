//! Turns what the kernel recorded (raw stacks by hash, counts by process/thread/stack) into a
//! `Profile`. Code objects are read from the target as soon as a stack is first seen, while the
//! process is alive; line numbers are decoded from the cached line tables when the profile is
//! built.

use std::{
    collections::{HashMap, HashSet},
    rc::Rc,
    time::Duration,
};

use profiler_common::{
    MAX_KERNEL_FRAMES, MAX_NATIVE_FRAMES, PY_ENTRY_FRAME, PyFrame, PyStack, STACK_TRUNCATED,
    SampleKey, Stat, count_kind, instr_kind,
};

use super::{
    Frame, FrameTable, ProcessInfo, Profile, Sample, ThreadInfo,
    merge::{self, EntryMarking, Mixed},
};
use crate::{
    process::{self, ProcMem, PythonProcess},
    python::{
        Layout, Version,
        code::{CodeError, CodeInfo, read_code},
        linetable::line_for,
    },
    symbolize::{NativeSymbolizer, kernel::KernelSymbols},
    unwind::KnownMapping,
};

/// How frames are labelled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameOptions {
    /// Group by function: every frame shows the function's first line (`-F`).
    pub function: bool,
    /// No line numbers at all (`--nolineno`).
    pub nolineno: bool,
    /// Put the thread under each stack as its root frame (`--threads`).
    pub threads: bool,
    /// Put the process under each stack as its root frame (several processes profiled).
    pub processes: bool,
    /// Mixed stacks: native frames, with the Python frames in place of the eval loop, where the
    /// kernel recorded them (`--native`).
    pub native: bool,
}

/// Why a frame could not be named.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Unknown {
    Freed,
    Exited,
    Unreadable(String),
}

impl Unknown {
    fn frame(&self) -> Frame {
        Frame::marker(match self {
            Unknown::Freed => "[unknown] (code object freed before it was read)".to_string(),
            Unknown::Exited => "[unknown] (process exited before its code was read)".to_string(),
            Unknown::Unreadable(why) => format!("[unknown] ({why})"),
        })
    }
}

struct Target {
    process: PythonProcess,
    layout: Layout,
    /// The process's memory while it is registered; dropped when it ends, so a long `--all`
    /// run holds one descriptor per live process only.
    mem: Option<ProcMem>,
    codes: HashMap<(u64, u32), Result<Rc<CodeInfo>, Unknown>>,
    /// With `--native`: the process's executable mappings, to name native frames.
    native: Option<Vec<KnownMapping>>,
}

struct RawStack {
    frames: Vec<PyFrame>,
    truncated: bool,
    /// Native instruction pointers, leaf first (empty without `--native`).
    native: Vec<u64>,
    /// How the native unwind ended (a `Stat`), 0 without `--native`.
    native_end: u32,
    /// Kernel instruction pointers, leaf first (`--kernel`, samples taken in the kernel).
    kernel: Vec<u64>,
}

/// What the kernel counted for one (process, thread, stack).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    /// CPU-clock samples.
    on_cpu: u64,
    /// Nanoseconds off the CPU (`--idle`).
    off_cpu_ns: u64,
}

/// Totals over a recording, for the summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub on_cpu_samples: u64,
    pub off_cpu: Duration,
}

/// Accumulates drains from the kernel. Processes are kept in order of registration and never
/// forgotten, so a process that exits keeps its samples and names; the kernel counts by pid,
/// and `by_pid` says which registration a pid's counts belong to now, so a reused pid starts a
/// new process rather than borrowing the old one's code objects.
pub struct Collector {
    options: FrameOptions,
    targets: Vec<Target>,
    by_pid: HashMap<u32, usize>,
    stacks: HashMap<u64, RawStack>,
    /// By (target index, thread id, stack id).
    counts: HashMap<(usize, u32, u64), Counts>,
    /// (target index, stack) pairs whose code objects have been read.
    resolved: HashSet<(usize, u64)>,
    /// Thread names, read when a thread is first seen (it may be gone by the end).
    threads: HashMap<(usize, u32), String>,
    /// Decoded lines by (target index, code, tag, instr), kept across snapshots.
    lines: HashMap<(usize, u64, u32, u32), u32>,
    /// Names native frames (`--native`), caching across snapshots.
    symbolizer: NativeSymbolizer,
    /// A new stack's native unwind stopped outside the known mappings: a library was mapped
    /// since the tables were last loaded.
    saw_unmapped: bool,
    /// With `--kernel`: the kernel's symbols.
    kernel_symbols: Option<KernelSymbols>,
}

impl Collector {
    pub fn new(options: FrameOptions) -> Self {
        Self {
            options,
            targets: Vec::new(),
            by_pid: HashMap::new(),
            stacks: HashMap::new(),
            counts: HashMap::new(),
            resolved: HashSet::new(),
            threads: HashMap::new(),
            lines: HashMap::new(),
            symbolizer: NativeSymbolizer::new(),
            saw_unmapped: false,
            kernel_symbols: None,
        }
    }

    /// Shows native frames in the snapshots from now on, or not (`top`'s `n`).
    pub fn show_native_frames(&mut self, show: bool) {
        self.options.native = show;
    }

    /// Shows kernel frames (`--kernel`), named from /proc/kallsyms (read now).
    pub fn enable_kernel_frames(&mut self) {
        self.kernel_symbols = Some(KernelSymbols::load().unwrap_or_default());
    }

    /// Whether a stack added since the last call hit an address outside the known mappings.
    pub fn take_saw_unmapped(&mut self) -> bool {
        std::mem::take(&mut self.saw_unmapped)
    }

    /// Turns mixed stacks on for the process registered as `pid`, naming native frames from
    /// `mappings` (every executable mapping it was seen with).
    pub fn set_native_mappings(&mut self, pid: u32, mappings: Vec<KnownMapping>) {
        if let Some(&target) = self.by_pid.get(&pid) {
            self.targets[target].native = Some(mappings);
        }
    }

    /// Registers a process. Drain the kernel's counts first if its pid was registered before:
    /// from here on that pid's counts are this process's.
    pub fn add_target(&mut self, process: PythonProcess, layout: Layout) {
        let mem = ProcMem::open(process.pid).ok();
        self.by_pid.insert(process.pid, self.targets.len());
        self.targets.push(Target {
            process,
            layout,
            mem,
            codes: HashMap::new(),
            native: None,
        });
    }

    /// Ends a process's registration (it exited, or exec'd something else). Its samples and
    /// names stay. Drain the kernel's counts first.
    pub fn remove_target(&mut self, pid: u32) {
        if let Some(i) = self.by_pid.remove(&pid) {
            self.targets[i].mem = None;
        }
    }

    /// The pids registered now (not the ones that ended).
    pub fn registered(&self) -> impl Iterator<Item = u32> + '_ {
        self.by_pid.keys().copied()
    }

    /// Processes registered so far, exited ones included.
    pub fn processes(&self) -> impl Iterator<Item = &PythonProcess> {
        self.targets.iter().map(|t| &t.process)
    }

    pub fn add_stack(&mut self, id: u64, stack: &PyStack) {
        let len = (stack.len as usize).min(stack.frames.len());
        let native_len = (stack.native_len as usize).min(MAX_NATIVE_FRAMES);
        let kernel_len = (stack.kernel_len as usize).min(MAX_KERNEL_FRAMES);
        self.saw_unmapped |= stack.native_end == Stat::NativeNoMapping as u32;
        self.stacks.entry(id).or_insert_with(|| RawStack {
            frames: stack.frames[..len].to_vec(),
            truncated: stack.flags & STACK_TRUNCATED != 0,
            native: stack.native[..native_len].to_vec(),
            native_end: stack.native_end,
            kernel: stack.kernel[..kernel_len].to_vec(),
        });
    }

    /// Adds what the kernel counted for `key`: `n` samples, or `n` nanoseconds off the CPU.
    pub fn add_count(&mut self, key: SampleKey, n: u64) {
        let Some(&target) = self.by_pid.get(&key.pid) else {
            return;
        };
        let counts = self
            .counts
            .entry((target, key.tid, key.stack_id))
            .or_default();
        match key.kind {
            count_kind::OFF_CPU_NS => counts.off_cpu_ns += n,
            _ => counts.on_cpu += n,
        }
        self.threads
            .entry((target, key.tid))
            .or_insert_with(|| process::thread_name(key.pid, key.tid));
    }

    /// CPU-clock samples collected so far.
    pub fn samples(&self) -> u64 {
        self.counts.values().map(|c| c.on_cpu).sum()
    }

    pub fn totals(&self) -> Totals {
        Totals {
            on_cpu_samples: self.samples(),
            off_cpu: Duration::from_nanos(self.counts.values().map(|c| c.off_cpu_ns).sum()),
        }
    }

    /// Reads the code objects of stacks seen since the last call. Call after every drain, so
    /// the reads happen while the processes are alive.
    pub fn resolve_new(&mut self) {
        let pending: Vec<(usize, u64)> = self
            .counts
            .keys()
            .map(|&(target, _, stack_id)| (target, stack_id))
            .filter(|pair| !self.resolved.contains(pair))
            .collect();
        for (target, stack_id) in pending {
            self.resolve(target, stack_id);
        }
    }

    /// Reads the code objects of one stack of process `pid` that are not cached yet.
    pub fn resolve_stack(&mut self, pid: u32, stack_id: u64) {
        if let Some(&target) = self.by_pid.get(&pid) {
            self.resolve(target, stack_id);
        }
    }

    fn resolve(&mut self, target: usize, stack_id: u64) {
        if self.resolved.contains(&(target, stack_id)) {
            return;
        }
        let (Some(target_state), Some(stack)) =
            (self.targets.get_mut(target), self.stacks.get(&stack_id))
        else {
            return;
        };
        for f in stack.frames.iter().filter(|f| f.code != 0) {
            target_state
                .codes
                .entry((f.code, f.tag))
                .or_insert_with(|| {
                    let Some(mem) = &target_state.mem else {
                        return Err(Unknown::Exited);
                    };
                    match read_code(mem, &target_state.layout, f.code, f.tag) {
                        Ok(info) => Ok(Rc::new(info)),
                        Err(CodeError::Stale) => Err(Unknown::Freed),
                        Err(CodeError::Io(e))
                            if e.raw_os_error() == Some(libc::ESRCH)
                                || e.kind() == std::io::ErrorKind::UnexpectedEof =>
                        {
                            Err(Unknown::Exited)
                        }
                        Err(e) => Err(Unknown::Unreadable(e.to_string())),
                    }
                });
        }
        self.resolved.insert((target, stack_id));
    }

    /// Builds the profile. Frames are root first: the process (`processes`), the thread
    /// (`threads`), a truncation marker, then the Python frames. Off-CPU time counts as the
    /// samples the CPU clock would have taken in it at `rate_hz`.
    pub fn finish(mut self, rate_hz: u64, duration: Duration) -> Profile {
        self.snapshot(rate_hz, duration)
    }

    /// The profile of everything collected so far, leaving the collector able to go on (`top`
    /// takes one per refresh). Code objects already read are not read again, and lines already
    /// decoded are not decoded again.
    pub fn snapshot(&mut self, rate_hz: u64, duration: Duration) -> Profile {
        self.resolve_new();
        let mut table = FrameTable::default();
        let mut merged: HashMap<(u32, u32, Vec<u32>), u64> = HashMap::new();
        let line_cache = &mut self.lines;
        let mut unknown_frames = 0;
        for (&(target, tid, stack_id), counts) in &self.counts {
            let t = &self.targets[target];
            let pid = t.process.pid;
            let count = counts.on_cpu + off_cpu_samples(counts.off_cpu_ns, rate_hz);
            if count == 0 {
                continue;
            }
            let mut frames = Vec::new();
            if self.options.processes {
                frames.push(
                    table.intern(Frame::marker(format!("process {pid} ({})", t.process.name))),
                );
            }
            if self.options.threads {
                frames.push(table.intern(thread_info(&self.threads, target, pid, tid).frame()));
            }
            match self.stacks.get(&stack_id) {
                None => frames.push(table.intern(Frame::marker("[unknown] (stack lost)"))),
                Some(stack) => {
                    if stack.truncated {
                        frames.push(table.intern(Frame::marker(format!(
                            "[truncated: deeper than {} frames]",
                            profiler_common::MAX_PYTHON_FRAMES
                        ))));
                    }
                    let options = self.options;
                    let mut python_frame = |f: &PyFrame| match t.codes.get(&(f.code, f.tag)) {
                        Some(Ok(code)) => {
                            let line = *line_cache
                                .entry((target, f.code, f.tag, f.instr))
                                .or_insert_with(|| line_of(options, &t.layout, f, code));
                            named_frame(code, line)
                        }
                        Some(Err(why)) => {
                            unknown_frames += count;
                            why.frame()
                        }
                        None => {
                            unknown_frames += count;
                            Unknown::Exited.frame()
                        }
                    };
                    match &t.native {
                        Some(mappings) if options.native && !stack.native.is_empty() => {
                            let mixed = mixed_frames(
                                &mut self.symbolizer,
                                mappings,
                                NativeRaw {
                                    pcs: &stack.native,
                                    end: stack.native_end,
                                },
                                &stack.frames,
                                t.layout.version,
                                options.nolineno,
                                &mut python_frame,
                            );
                            for frame in mixed {
                                frames.push(table.intern(frame));
                            }
                        }
                        _ => {
                            for f in stack.frames.iter().rev().filter(|f| f.code != 0) {
                                let frame = python_frame(f);
                                frames.push(table.intern(frame));
                            }
                        }
                    }
                    if let Some(ksyms) = &self.kernel_symbols {
                        for &pc in stack.kernel.iter().rev() {
                            frames.push(table.intern(Frame::marker(ksyms.name(pc))));
                        }
                    }
                }
            }
            *merged.entry((pid, tid, frames)).or_default() += count;
        }
        let mut samples: Vec<Sample> = merged
            .into_iter()
            .map(|((pid, tid, frames), count)| Sample {
                pid,
                tid,
                frames,
                count,
            })
            .collect();
        samples.sort_by(|a, b| (a.pid, a.tid, &a.frames).cmp(&(b.pid, b.tid, &b.frames)));
        let mut processes: Vec<ProcessInfo> = self
            .targets
            .iter()
            .map(|t| ProcessInfo {
                pid: t.process.pid,
                name: t.process.name.clone(),
                version: t.process.version.to_string(),
            })
            .collect();
        processes.sort_by_key(|p| p.pid);
        processes.dedup();
        let mut threads: Vec<ThreadInfo> = self
            .threads
            .keys()
            .map(|&(target, tid)| {
                thread_info(&self.threads, target, self.targets[target].process.pid, tid)
            })
            .collect();
        threads.sort_by_key(|t| (t.pid, t.tid));
        threads.dedup_by_key(|t| (t.pid, t.tid));
        Profile {
            frames: table.into_frames(),
            samples,
            processes,
            threads,
            rate_hz,
            duration,
            unknown_frames,
            unknown_native: {
                let mut v: Vec<(String, u64)> = self
                    .symbolizer
                    .unknown_reasons
                    .iter()
                    .map(|(why, n)| (why.clone(), *n))
                    .collect();
                v.sort();
                v
            },
        }
    }
}

/// A native stack as unwound (by the kernel, or by `dump` in userspace).
#[derive(Clone, Copy, Debug)]
pub struct NativeRaw<'a> {
    /// Instruction pointers, leaf first.
    pub pcs: &'a [u64],
    /// How the unwind ended: a `Stat::Native*` value.
    pub end: u32,
}

/// A mixed stack, root first: the native frames named (`symbolizer`, from the process's
/// executable `mappings`), with each eval call's Python frames (`python`, leaf first as the
/// kernel records them, shims as code 0) in place of the eval loop frame that ran it, and a
/// `[native unwind stopped: ...]` frame where the unwind did not reach the root. `python_frame`
/// names one Python frame. `record --native` and `dump --native` both build their stacks here.
pub fn mixed_frames(
    symbolizer: &mut NativeSymbolizer,
    mappings: &[KnownMapping],
    native: NativeRaw<'_>,
    python: &[PyFrame],
    version: Version,
    nolineno: bool,
    python_frame: &mut impl FnMut(&PyFrame) -> Frame,
) -> Vec<Frame> {
    let named: Vec<Frame> = native
        .pcs
        .iter()
        .enumerate()
        .map(|(i, &pc)| {
            let sym = symbolizer.symbolize(mappings, pc, i > 0);
            if sym.unknown {
                Frame::marker(sym.name)
            } else {
                Frame {
                    name: sym.name,
                    file: sym.file,
                    line: if nolineno { 0 } else { sym.line },
                }
            }
        })
        .collect();
    let is_eval: Vec<bool> = named
        .iter()
        .map(|f| merge::is_eval_function(&f.name))
        .collect();
    let calls = merge::eval_calls(python, EntryMarking::for_version(version));
    let complete = native.end == Stat::NativeComplete as u32;
    merge::merge(&is_eval, complete, &calls)
        .into_iter()
        .map(|m| match m {
            Mixed::Native(i) => named[i].clone(),
            Mixed::Python(f) => python_frame(&f),
            Mixed::Incomplete => Frame::marker(format!(
                "[native unwind stopped: {}]",
                native_end_name(native.end)
            )),
        })
        .collect()
}

/// What a `Stat::Native*` code says, for the incomplete-stack marker.
fn native_end_name(end: u32) -> &'static str {
    Stat::ALL
        .iter()
        .find(|s| **s as u32 == end)
        .map_or("unknown", |s| s.name())
}

/// Off-CPU time as the number of CPU-clock samples `rate_hz` would have taken in it.
fn off_cpu_samples(ns: u64, rate_hz: u64) -> u64 {
    ((ns as u128 * rate_hz as u128 + 500_000_000) / 1_000_000_000) as u64
}

fn thread_info(
    names: &HashMap<(usize, u32), String>,
    target: usize,
    pid: u32,
    tid: u32,
) -> ThreadInfo {
    ThreadInfo {
        pid,
        tid,
        name: names.get(&(target, tid)).cloned().unwrap_or_default(),
    }
}

/// A frame named from its code object.
fn named_frame(code: &CodeInfo, line: u32) -> Frame {
    Frame {
        name: code.name.clone(),
        file: code.filename.clone(),
        line,
    }
}

/// The frame the user sees for a frame the kernel (or `python::threads`) recorded, once its
/// code object has been read.
pub fn frame_for(options: FrameOptions, layout: &Layout, f: &PyFrame, code: &CodeInfo) -> Frame {
    named_frame(code, line_of(options, layout, f, code))
}

/// The line a frame was on, per the label options.
fn line_of(options: FrameOptions, layout: &Layout, f: &PyFrame, code: &CodeInfo) -> u32 {
    if options.nolineno {
        return 0;
    }
    if options.function {
        return code.firstlineno;
    }
    let addr = match layout.kernel.instr_kind {
        // prev_instr starts one code unit before the first instruction: that is the def line.
        // The entry-frame mark (3.11 with --native) is not part of the position.
        instr_kind::POINTER => {
            match (f.instr & !PY_ENTRY_FRAME).checked_sub(layout.code.code_adaptive as u32) {
                Some(addr) => addr,
                None => return code.firstlineno,
            }
        }
        // f_lasti is -1 before the first instruction runs.
        _ => match i32::try_from(f.instr) {
            Ok(lasti) => lasti as u32 * layout.code.instr_unit,
            Err(_) => return code.firstlineno,
        },
    };
    // Where the table gives no line, or line 0 (3.11+ put a module's RESUME on line 0), the
    // frame shows its function's first line: every Python frame has a line.
    line_for(
        layout.code.linetable_format,
        &code.linetable,
        code.firstlineno,
        addr,
    )
    .filter(|&line| line > 0)
    .unwrap_or(code.firstlineno)
}

#[cfg(test)]
mod tests {
    use profiler_common::{MAX_PYTHON_FRAMES, code_tag};

    use super::*;
    use crate::python::{Version, layout_for};

    /// A CPython 3.12 code object named `f` in `t.py`, laid out in this process's own memory,
    /// which the collector reads through /proc/self/mem like any target's.
    struct FakeCode {
        bytes: Vec<u8>,
    }

    impl FakeCode {
        const NAME: u64 = 0x400;
        const FILE: u64 = 0x500;
        const TABLE: u64 = 0x600;

        fn new(layout: &Layout) -> Self {
            let mut me = Self {
                bytes: vec![0; 0x800],
            };
            let c = layout.code;
            let base = me.base();
            me.word(0, 1); // ob_refcnt: alive
            me.word(c.name as u64, base + Self::NAME);
            me.word(c.qualname.unwrap() as u64, base + Self::NAME);
            me.word(c.filename as u64, base + Self::FILE);
            me.word(c.linetable as u64, base + Self::TABLE);
            me.put(c.firstlineno as u64, &7i32.to_le_bytes());
            me.string(layout, Self::NAME, "f");
            me.string(layout, Self::FILE, "t.py");
            me.word(Self::TABLE, 1); // an empty bytes object
            me
        }

        fn base(&self) -> u64 {
            self.bytes.as_ptr() as u64
        }

        fn tag(&self) -> u32 {
            code_tag(self.base() + Self::NAME, self.base() + Self::FILE, 7)
        }

        fn put(&mut self, at: u64, b: &[u8]) {
            self.bytes[at as usize..at as usize + b.len()].copy_from_slice(b);
        }

        fn word(&mut self, at: u64, v: u64) {
            self.put(at, &v.to_le_bytes());
        }

        /// A compact ASCII str object.
        fn string(&mut self, layout: &Layout, at: u64, s: &str) {
            let o = layout.objects;
            self.word(at, 1);
            self.word(at + o.unicode_length as u64, s.len() as u64);
            let state: u32 = 1 << 2 | 1 << 5 | 1 << 6;
            self.put(at + o.unicode_state as u64, &state.to_le_bytes());
            self.put(at + o.unicode_ascii_data as u64, s.as_bytes());
        }

        /// A one-frame stack in this code object, at its first instruction.
        fn stack(&self, layout: &Layout) -> PyStack {
            let mut frames = [PyFrame::default(); MAX_PYTHON_FRAMES];
            frames[0] = PyFrame {
                code: self.base(),
                instr: layout.code.code_adaptive as u32,
                tag: self.tag(),
            };
            PyStack {
                len: 1,
                frames,
                ..PyStack::EMPTY
            }
        }
    }

    /// The on-CPU count of stack 1 on this process's main thread.
    fn key() -> SampleKey {
        let pid = std::process::id();
        SampleKey {
            pid,
            tid: pid,
            stack_id: 1,
            kind: count_kind::ON_CPU,
            _pad: 0,
        }
    }

    #[test]
    fn snapshots_repeat_without_reading_code_objects_again() {
        let layout = layout_for(Version::new(3, 12)).unwrap();
        let mut code = FakeCode::new(&layout);
        let pid = std::process::id();
        let mut c = Collector::new(FrameOptions::default());
        c.add_target(
            PythonProcess {
                pid,
                name: "self".into(),
                binary: "/proc/self/exe".into(),
                version: Version::new(3, 12),
                runtime_addr: 0,
                start_time: 0,
            },
            layout,
        );
        c.add_stack(1, &code.stack(&layout));
        let key = key();
        c.add_count(key, 5);
        let first = c.snapshot(100, Duration::from_secs(1));
        assert_eq!(
            first.frames[first.samples[0].frames[0] as usize].label(),
            "f (t.py:7)"
        );
        assert_eq!(first.total_samples(), 5);

        // The code object is freed now: reading it again would give [unknown]. A later
        // snapshot still names it from what the first read cached, and counts on.
        code.word(0, 0);
        c.add_count(key, 3);
        let second = c.snapshot(100, Duration::from_secs(2));
        assert_eq!(second.frames, first.frames);
        assert_eq!(second.total_samples(), 8);
        assert_eq!(second.unknown_frames, 0);
        drop(code);
    }

    /// A pid that ends and comes back as another process (reused) starts a new process in the
    /// profile: its frames are read anew, never named from the old process's code objects.
    #[test]
    fn a_reused_pid_is_a_new_process() {
        let layout = layout_for(Version::new(3, 12)).unwrap();
        let mut code = FakeCode::new(&layout);
        let pid = std::process::id();
        let process = |name: &str| PythonProcess {
            pid,
            name: name.into(),
            binary: "/proc/self/exe".into(),
            version: Version::new(3, 12),
            runtime_addr: 0,
            start_time: 0,
        };
        let stack = code.stack(&layout);
        let key = key();
        let mut c = Collector::new(FrameOptions {
            processes: true,
            ..FrameOptions::default()
        });
        c.add_target(process("old"), layout);
        c.add_stack(1, &stack);
        c.add_count(key, 2);
        c.resolve_new();
        c.remove_target(pid);
        // The same address in the new process holds a code object named otherwise.
        code.string(&layout, FakeCode::NAME, "g");
        c.add_target(process("new"), layout);
        c.add_count(key, 3);
        let p = c.finish(100, Duration::from_secs(1));
        let folded = p.folded();
        let line = |name: &str, n: u64| {
            (
                format!(
                    "process {pid} ({name});{} (t.py:7)",
                    if name == "old" { "f" } else { "g" }
                ),
                n,
            )
        };
        assert!(folded.contains(&line("old", 2)), "{folded:?}");
        assert!(folded.contains(&line("new", 3)), "{folded:?}");
        assert_eq!(p.processes.len(), 2);
        drop(code);
    }

    /// Issue 11's flake: a module sampled at its first instruction (RESUME, which 3.11+ put on
    /// line 0) showed a frame without a line.
    #[test]
    fn every_python_frame_has_a_line() {
        let layout = layout_for(Version::new(3, 12)).unwrap();
        // `compile("x=1\ny=2\n", "m", "exec")` under 3.12: lines (0, 2, 0), (2, 6, 1), (6, 12, 2).
        let code = CodeInfo {
            name: "<module>".into(),
            filename: "m".into(),
            firstlineno: 1,
            linetable: vec![
                0xf0, 0x03, 0x01, 0x01, 0x01, 0xd8, 0x02, 0x03, 0x80, 0x01, 0xd8, 0x02, 0x03, 0x81,
                0x01,
            ],
        };
        let at = |offset: u32| PyFrame {
            code: 1,
            instr: layout.code.code_adaptive as u32 + offset,
            tag: 0,
        };
        let line = |offset| line_of(FrameOptions::default(), &layout, &at(offset), &code);
        assert_eq!(line(0), 1, "RESUME, on line 0 in the table");
        assert_eq!(line(2), 1);
        assert_eq!(line(6), 2);
        assert_eq!(line(40), 1, "past the table: the first line");
    }

    #[test]
    fn off_cpu_time_counts_as_the_samples_it_would_have_had() {
        assert_eq!(off_cpu_samples(5_000_000_000, 100), 500);
        assert_eq!(off_cpu_samples(5_000_000_000, 1000), 5000);
        assert_eq!(off_cpu_samples(1_499_999, 1000), 1);
        assert_eq!(off_cpu_samples(1_500_000, 1000), 2);
        assert_eq!(off_cpu_samples(0, 1000), 0);
    }
}
