//! Turns what the kernel recorded (raw stacks by hash, counts by process/thread/stack) into a
//! `Profile`. Code objects are read from the target as soon as a stack is first seen, while the
//! process is alive; line numbers are decoded from the cached line tables when the profile is
//! built.

use std::{
    collections::{HashMap, HashSet},
    rc::Rc,
    time::Duration,
};

use profiler_common::{PyFrame, PyStack, STACK_TRUNCATED, SampleKey, instr_kind};

use super::{Frame, FrameTable, ProcessInfo, Profile, Sample};
use crate::{
    process::{ProcMem, PythonProcess},
    python::{
        Layout,
        code::{CodeError, CodeInfo, read_code},
        linetable::line_for,
    },
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
}

/// Accumulates drains from the kernel.
pub struct Collector {
    options: FrameOptions,
    targets: HashMap<u32, Target>,
    stacks: HashMap<u64, RawStack>,
    counts: HashMap<SampleKey, u64>,
    /// (pid, stack) pairs whose code objects have been read.
    resolved: HashSet<(u32, u64)>,
    /// Decoded lines by (pid, code, tag, instr), kept across snapshots.
    lines: HashMap<(u32, u64, u32, u32), u32>,
}

impl Collector {
    pub fn new(options: FrameOptions) -> Self {
        Self {
            options,
            targets: HashMap::new(),
            stacks: HashMap::new(),
            counts: HashMap::new(),
            resolved: HashSet::new(),
            lines: HashMap::new(),
        }
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
        self.stacks.entry(id).or_insert_with(|| RawStack {
            frames: stack.frames[..len].to_vec(),
            truncated: stack.flags & STACK_TRUNCATED != 0,
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
                    for f in stack.frames.iter().rev().filter(|f| f.code != 0) {
                        let frame = match target
                            .and_then(|t| t.codes.get(&(f.code, f.tag)).map(|c| (t, c)))
                        {
                            Some((t, Ok(code))) => {
                                let line = *line_cache
                                    .entry((key.pid, f.code, f.tag, f.instr))
                                    .or_insert_with(|| line_of(self.options, &t.layout, f, code));
                                named_frame(code, line)
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
                        frames.push(table.intern(frame));
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
        }
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
        instr_kind::POINTER => match f.instr.checked_sub(layout.code.code_adaptive as u32) {
            Some(addr) => addr,
            None => return code.firstlineno,
        },
        _ => f.instr,
    };
    line_for(
        layout.code.linetable_format,
        &code.linetable,
        code.firstlineno,
        addr,
    )
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
        let mut frames = [PyFrame::default(); MAX_PYTHON_FRAMES];
        frames[0] = PyFrame {
            code: code.base(),
            instr: layout.code.code_adaptive as u32,
            tag: code.tag(),
        };
        c.add_stack(
            1,
            &PyStack {
                len: 1,
                flags: 0,
                frames,
            },
        );
        let key = SampleKey {
            pid,
            tid: pid,
            stack_id: 1,
        };
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
}
