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
    SampleKey, Stat, instr_kind,
};

use super::{
    Frame, FrameTable, ProcessInfo, Profile, Sample,
    merge::{self, EntryMarking, Mixed},
};
use crate::{
    process::{ProcMem, PythonProcess},
    python::{
        Layout,
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
    mem: Option<ProcMem>,
    codes: HashMap<(u64, u32), Result<Rc<CodeInfo>, Unknown>>,
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

/// Accumulates drains from the kernel.
pub struct Collector {
    options: FrameOptions,
    targets: HashMap<u32, Target>,
    stacks: HashMap<u64, RawStack>,
    counts: HashMap<SampleKey, u64>,
    /// (pid, stack) pairs whose code objects have been read.
    resolved: HashSet<(u32, u64)>,
    /// With `--native`: each target's executable mappings, to name native frames.
    native: HashMap<u32, Vec<KnownMapping>>,
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
            targets: HashMap::new(),
            stacks: HashMap::new(),
            counts: HashMap::new(),
            resolved: HashSet::new(),
            native: HashMap::new(),
            saw_unmapped: false,
            kernel_symbols: None,
        }
    }

    /// Shows kernel frames (`--kernel`), named from /proc/kallsyms (read now).
    pub fn enable_kernel_frames(&mut self) {
        self.kernel_symbols = Some(KernelSymbols::load().unwrap_or_default());
    }

    /// Whether a stack added since the last call hit an address outside the known mappings.
    pub fn take_saw_unmapped(&mut self) -> bool {
        std::mem::take(&mut self.saw_unmapped)
    }

    /// Turns mixed stacks on for `pid`, naming native frames from `mappings` (every executable
    /// mapping it was seen with).
    pub fn set_native_mappings(&mut self, pid: u32, mappings: Vec<KnownMapping>) {
        self.native.insert(pid, mappings);
    }

    pub fn add_target(&mut self, process: PythonProcess, layout: Layout) {
        let mem = ProcMem::open(process.pid).ok();
        self.targets.insert(
            process.pid,
            Target {
                process,
                layout,
                mem,
                codes: HashMap::new(),
            },
        );
    }

    pub fn add_stack(&mut self, id: u64, stack: &PyStack) {
        let len = (stack.len as usize).min(stack.frames.len());
        let native_len = (stack.native_len as usize).min(MAX_NATIVE_FRAMES);
        self.saw_unmapped |= stack.native_end == Stat::NativeNoMapping as u32;
        self.stacks.entry(id).or_insert_with(|| RawStack {
            frames: stack.frames[..len].to_vec(),
            truncated: stack.flags & STACK_TRUNCATED != 0,
            native: stack.native[..native_len].to_vec(),
            native_end: stack.native_end,
            kernel: stack.kernel[..(stack.kernel_len as usize).min(MAX_KERNEL_FRAMES)].to_vec(),
        });
    }

    pub fn add_count(&mut self, key: SampleKey, n: u64) {
        *self.counts.entry(key).or_default() += n;
    }

    pub fn samples(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Reads the code objects of stacks seen since the last call. Call after every drain, so
    /// the reads happen while the process is alive.
    pub fn resolve_new(&mut self) {
        let pending: Vec<(u32, u64)> = self
            .counts
            .keys()
            .map(|k| (k.pid, k.stack_id))
            .filter(|pair| !self.resolved.contains(pair))
            .collect();
        for (pid, stack_id) in pending {
            self.resolve_stack(pid, stack_id);
        }
    }

    /// Reads the code objects of one stack of process `pid` that are not cached yet.
    pub fn resolve_stack(&mut self, pid: u32, stack_id: u64) {
        if self.resolved.contains(&(pid, stack_id)) {
            return;
        }
        let (Some(target), Some(stack)) = (self.targets.get_mut(&pid), self.stacks.get(&stack_id))
        else {
            return;
        };
        for f in stack.frames.iter().filter(|f| f.code != 0) {
            target.codes.entry((f.code, f.tag)).or_insert_with(|| {
                let Some(mem) = &target.mem else {
                    return Err(Unknown::Exited);
                };
                match read_code(mem, &target.layout, f.code, f.tag) {
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
        self.resolved.insert((pid, stack_id));
    }

    /// Builds the profile. Frames are root first; a truncated stack starts with a marker.
    pub fn finish(mut self, rate_hz: u64, duration: Duration) -> Profile {
        self.resolve_new();
        let mut table = FrameTable::default();
        let mut merged: HashMap<(u32, u32, Vec<u32>), u64> = HashMap::new();
        let mut line_cache: HashMap<(u32, u64, u32, u32), u32> = HashMap::new();
        let mut unknown_frames = 0;
        let mut symbolizer = NativeSymbolizer::new();
        for (key, count) in &self.counts {
            let mut frames = Vec::new();
            match self.stacks.get(&key.stack_id) {
                None => frames.push(table.intern(Frame::marker("[unknown] (stack lost)"))),
                Some(stack) => {
                    if stack.truncated {
                        frames.push(table.intern(Frame::marker(format!(
                            "[truncated: deeper than {} frames]",
                            profiler_common::MAX_PYTHON_FRAMES
                        ))));
                    }
                    let target = self.targets.get(&key.pid);
                    let mut python_frame = |f: &PyFrame| match target
                        .and_then(|t| t.codes.get(&(f.code, f.tag)).map(|c| (t, c)))
                    {
                        Some((t, Ok(code))) => {
                            let line = *line_cache
                                .entry((key.pid, f.code, f.tag, f.instr))
                                .or_insert_with(|| line_of(self.options, &t.layout, f, code));
                            Frame {
                                name: code.name.clone(),
                                file: code.filename.clone(),
                                line,
                            }
                        }
                        Some((_, Err(why))) => {
                            unknown_frames += count;
                            why.frame()
                        }
                        None => {
                            unknown_frames += count;
                            Unknown::Exited.frame()
                        }
                    };
                    match (self.native.get(&key.pid), target) {
                        (Some(mappings), Some(t)) if !stack.native.is_empty() => {
                            let named: Vec<Frame> = stack
                                .native
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
                                            line: if self.options.nolineno { 0 } else { sym.line },
                                        }
                                    }
                                })
                                .collect();
                            let is_eval: Vec<bool> = named
                                .iter()
                                .map(|f| merge::is_eval_function(&f.name))
                                .collect();
                            let marking = EntryMarking::for_version(t.layout.version);
                            let calls = merge::eval_calls(&stack.frames, marking);
                            let complete = stack.native_end == Stat::NativeComplete as u32;
                            for m in merge::merge(&is_eval, complete, &calls) {
                                let frame = match m {
                                    Mixed::Native(i) => named[i].clone(),
                                    Mixed::Python(f) => python_frame(&f),
                                    Mixed::Incomplete => Frame::marker(format!(
                                        "[native unwind stopped: {}]",
                                        native_end_name(stack.native_end)
                                    )),
                                };
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
            *merged.entry((key.pid, key.tid, frames)).or_default() += count;
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
            .values()
            .map(|t| ProcessInfo {
                pid: t.process.pid,
                name: t.process.name.clone(),
                version: t.process.version.to_string(),
            })
            .collect();
        processes.sort_by_key(|p| p.pid);
        Profile {
            frames: table.into_frames(),
            samples,
            processes,
            rate_hz,
            duration,
            unknown_frames,
            unknown_native: {
                let mut v: Vec<(String, u64)> = symbolizer.unknown_reasons.into_iter().collect();
                v.sort();
                v
            },
        }
    }
}

/// What a `Stat::Native*` code says, for the incomplete-stack marker.
fn native_end_name(end: u32) -> &'static str {
    Stat::ALL
        .iter()
        .find(|s| **s as u32 == end)
        .map_or("unknown", |s| s.name())
}

/// The line a frame was on, per the label options.
fn line_of(options: FrameOptions, layout: &Layout, f: &PyFrame, code: &CodeInfo) -> u32 {
    if options.nolineno {
        return 0;
    }
    if options.function {
        return code.firstlineno;
    }
    let instr = f.instr & !PY_ENTRY_FRAME;
    let addr = match layout.kernel.instr_kind {
        // prev_instr starts one code unit before the first instruction: that is the def line.
        instr_kind::POINTER => match instr.checked_sub(layout.code.code_adaptive as u32) {
            Some(addr) => addr,
            None => return code.firstlineno,
        },
        _ => instr,
    };
    line_for(
        layout.code.linetable_format,
        &code.linetable,
        code.firstlineno,
        addr,
    )
    .unwrap_or(code.firstlineno)
}
