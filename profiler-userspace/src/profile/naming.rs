//! Naming one stack: the raw values the kernel (or `dump`) recorded become frames. Python frames
//! are named from their code objects (`python::instance`), native frames from their symbols
//! (`symbolize`), and with native frames the Python frames stand in place of the eval loop that
//! ran them (`merge`); kernel frames go on top. `record`, `top` and `dump` all name stacks here,
//! once per distinct stack; aggregation is `collect`'s.

use profiler_common::{PyFrame, Stat};

use super::{
    Frame, Location, Unknown,
    merge::{self, EntryMarking, Mixed},
};
use crate::{
    python::{
        Layout,
        asyncio::TaskRoots,
        instance::{CodeUnavailable, Interpreter, line_of},
    },
    symbolize::{NativeSymbol, NativeSymbolizer, kernel::KernelSymbols},
    unwind::{
        KnownMapping,
        tables::{JIT_CODE, PERF_TRAMPOLINES, mapping_at},
    },
};

/// A stack as recorded, before naming.
#[derive(Clone, Copy, Debug)]
pub struct RawStack<'a> {
    /// Python frames, leaf first; a 3.12+ C-stack shim is a frame with code 0.
    pub python: &'a [PyFrame],
    /// Deeper than the kernel records: the root's frames are missing.
    pub truncated: bool,
    /// Taken while the garbage collector ran in the thread: a `<GC>` frame goes above the
    /// Python frame that started it.
    pub in_gc: bool,
    /// The roots of the asyncio task the thread ran (`--async-aware`), as the caller read them
    /// (`Interpreter::task_roots`): its name and its awaiters' go at the root, in place of the
    /// event loop's frames below its first coroutine.
    pub task: Option<&'a TaskRoots>,
    /// Native instruction pointers, leaf first (empty without `--native`).
    pub native: &'a [u64],
    /// How the native unwind ended: a `Stat::Native*` value.
    pub native_end: u32,
    /// Kernel instruction pointers, leaf first (`--kernel`).
    pub kernel: &'a [u64],
}

/// A frame and, for a Python frame, its function's first line: labels with `-F` show that, so
/// a stack named once serves every label option.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NamedFrame {
    pub frame: Frame,
    pub first_line: u32,
}

impl NamedFrame {
    fn plain(frame: Frame) -> Self {
        Self {
            frame,
            first_line: 0,
        }
    }
}

/// What names native and kernel frames, with its caches.
#[derive(Default)]
pub struct Namer {
    pub symbolizer: NativeSymbolizer,
    /// With `--kernel`: the kernel's symbols.
    pub kernel: Option<KernelSymbols>,
}

impl Namer {
    /// The frames of `raw`, root first. Python frames come from `interpreter` (none: the process
    /// ended before they could be read); with `mappings` and recorded native frames the stack is
    /// mixed.
    pub fn name(
        &mut self,
        interpreter: Option<&mut Interpreter>,
        mappings: Option<&[KnownMapping]>,
        raw: RawStack<'_>,
    ) -> Vec<NamedFrame> {
        self.name_with_origin(interpreter, mappings, raw)
            .into_iter()
            .map(|(f, _)| f)
            .collect()
    }

    /// `name`, each frame with whether it stands for one of `raw.python`'s frames. Those come
    /// in the order of the non-shim frames of `raw.python` (root first, as all frames here), so
    /// `dump` can put what it read of each Python frame (its locals) beside its name.
    pub fn name_with_origin(
        &mut self,
        mut interpreter: Option<&mut Interpreter>,
        mappings: Option<&[KnownMapping]>,
        raw: RawStack<'_>,
    ) -> Vec<(NamedFrame, bool)> {
        let mut frames = Vec::new();
        if raw.truncated {
            frames.push((
                NamedFrame::plain(Frame::Truncated {
                    limit: profiler_common::MAX_PYTHON_FRAMES as u32,
                }),
                false,
            ));
        }
        let layout = interpreter.as_ref().map(|i| i.layout);
        let base_frame = interpreter.as_ref().is_some_and(|i| i.layout.base_frame);
        let mut python = |f: &PyFrame| python_frame(interpreter.as_deref_mut(), f);
        match (mappings, layout) {
            (Some(mappings), Some(layout)) if !raw.native.is_empty() => {
                // 3.15's base frame ends every thread's chain: a shim, but no eval call's.
                let raw = match raw.python.split_last() {
                    Some((last, rest)) if base_frame && !raw.truncated && last.code == 0 => {
                        RawStack {
                            python: rest,
                            ..raw
                        }
                    }
                    _ => raw,
                };
                let mixed = self.mixed(mappings, raw, &layout, &mut python);
                frames.extend(mixed);
            }
            _ => frames.extend(
                raw.python
                    .iter()
                    .rev()
                    .filter(|f| f.code != 0)
                    .map(|f| (python(f), true)),
            ),
        }
        if raw.in_gc {
            frames.insert(gc_position(&frames), (NamedFrame::plain(Frame::Gc), false));
        }
        if let Some(task) = raw.task {
            let root = raw.truncated as usize;
            // Below the task's first coroutine (its rootmost frame of that code: recursion
            // stays), the event loop's frames, Python and native: left out.
            // A stack without that coroutine is the loop's own work around the task (entering
            // or leaving it): no task root.
            // A task that could not be read (`task ?`) has no known coroutine: code 0 would
            // match the shim frames, so such a sample is taken for the loop's own work.
            let first = raw
                .python
                .iter()
                .rposition(|f| f.code != 0 && f.code == task.coro_code);
            let rooted = match first {
                Some(j) => {
                    let loop_frames = raw.python[j + 1..].iter().filter(|f| f.code != 0).count();
                    // The coroutine's frame: the Python frame with `loop_frames` before it.
                    let coroutine = frames[root..]
                        .iter()
                        .enumerate()
                        .filter(|(_, (_, python))| *python)
                        .nth(loop_frames)
                        .map_or(frames.len(), |(k, _)| root + k);
                    frames.drain(root..coroutine);
                    true
                }
                None => false,
            };
            if rooted {
                let roots = task
                    .names
                    .iter()
                    .map(|n| (NamedFrame::plain(Frame::Task(n.clone())), false));
                frames.splice(root..root, roots);
            }
        }
        if let Some(ksyms) = &self.kernel {
            frames.extend(raw.kernel.iter().rev().map(|&pc| {
                (
                    NamedFrame::plain(Frame::Kernel(ksyms.name(pc).map(String::from))),
                    false,
                )
            }));
        }
        frames
    }

    /// A mixed stack, root first: the native frames named, with each eval call's Python frames
    /// in place of the eval loop frame that ran it, and a `NativeStopped` frame where the unwind
    /// did not reach the root.
    fn mixed(
        &mut self,
        mappings: &[KnownMapping],
        raw: RawStack<'_>,
        layout: &Layout,
        python: &mut impl FnMut(&PyFrame) -> NamedFrame,
    ) -> Vec<(NamedFrame, bool)> {
        // A perf trampoline (`-X perf`) between a call and the eval loop it runs, or the JIT
        // code the eval loop runs a Python function's trace in, says nothing the Python frame
        // does not: the stacks read as they do without them.
        let named: Vec<Frame> = raw
            .native
            .iter()
            .enumerate()
            .filter(|&(i, &pc)| !in_interpreter_glue(mappings, pc, i > 0))
            .map(|(i, &pc)| native_frame(self.symbolizer.symbolize(mappings, pc, i > 0)))
            .collect();
        let is_eval: Vec<bool> = named
            .iter()
            .map(|f| matches!(f, Frame::Native(l) if merge::is_eval_function(&l.function)))
            .collect();
        let marking = EntryMarking::for_version(layout.version);
        let mut calls = merge::eval_calls(raw.python, marking);
        if marking == EntryMarking::EntryFlag {
            let evals = is_eval.iter().filter(|&&e| e).count();
            merge::split_unmarked_entry(&mut calls, evals, layout.code.code_adaptive as u32);
        }
        let complete = raw.native_end == Stat::NativeComplete as u32;
        merge::merge(&is_eval, complete, &calls)
            .into_iter()
            .map(|m| match m {
                Mixed::Native(i) => (NamedFrame::plain(named[i].clone()), false),
                Mixed::Python(f) => (python(&f), true),
                Mixed::Incomplete => (
                    NamedFrame::plain(Frame::NativeStopped(native_end_name(raw.native_end).into())),
                    false,
                ),
            })
            .collect()
    }
}

/// Whether `pc` (a return address when `is_return`) is in an arena of CPython's perf
/// trampolines or in its JIT code, as the mapping that names it says.
fn in_interpreter_glue(mappings: &[KnownMapping], pc: u64, is_return: bool) -> bool {
    let at = pc.wrapping_sub(is_return as u64);
    mapping_at(mappings, at).is_some_and(|m| m.name == PERF_TRAMPOLINES || m.name == JIT_CODE)
}

/// Where the `<GC>` frame goes in a stack of Python (and native) frames, root first: right above
/// its leaf Python frame, the one whose call started the collection (in a mixed stack the
/// collector's native frames stand above it), or on top when no Python frame was named.
fn gc_position(frames: &[(NamedFrame, bool)]) -> usize {
    frames
        .iter()
        .rposition(|(f, _)| match &f.frame {
            Frame::Python(_) => true,
            // A Python frame that could not be named; an unnamed native one is not.
            Frame::Unknown(u) => !matches!(u, Unknown::NativeAddress { .. }),
            _ => false,
        })
        .map_or(frames.len(), |i| i + 1)
}

/// A Python frame named from its code object, or why it could not be.
fn python_frame(interpreter: Option<&mut Interpreter>, f: &PyFrame) -> NamedFrame {
    let Some(interpreter) = interpreter else {
        return NamedFrame::plain(Frame::Unknown(Unknown::ProcessExited));
    };
    match interpreter.code(f) {
        Ok(code) => NamedFrame {
            frame: Frame::Python(Location {
                function: code.name.clone(),
                file: code.filename.clone(),
                line: line_of(&interpreter.layout, f, &code),
            }),
            first_line: code.firstlineno,
        },
        Err(why) => NamedFrame::plain(Frame::Unknown(match why {
            CodeUnavailable::Freed => Unknown::CodeFreed,
            CodeUnavailable::Exited => Unknown::ProcessExited,
            CodeUnavailable::Unreadable(why) => Unknown::Unreadable(why),
        })),
    }
}

fn native_frame(sym: NativeSymbol) -> Frame {
    match sym {
        NativeSymbol::Named {
            function,
            file,
            line,
        } => Frame::Native(Location {
            function,
            file,
            line,
        }),
        NativeSymbol::Unnamed { module, offset, .. } => {
            Frame::Unknown(Unknown::NativeAddress { module, offset })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn named(frames: &[Frame]) -> Vec<(NamedFrame, bool)> {
        frames
            .iter()
            .cloned()
            .map(|f| (NamedFrame::plain(f), false))
            .collect()
    }

    /// `<GC>` goes right above the leaf Python frame (named or not): above a Python-only stack,
    /// below the collector's own native frames in a mixed one, on top of a stack without one.
    #[test]
    fn the_gc_frame_stands_above_the_leaf_python_frame() {
        let main = Frame::python("main", "app.py", 3);
        let collect = Frame::python("collect", "app.py", 9);
        let native = Frame::native("gc_collect_main", "gc.c", 1300);
        let unnamed = Frame::Unknown(Unknown::NativeAddress {
            module: Some("libpython3.12.so".into()),
            offset: 0x10,
        });
        assert_eq!(gc_position(&named(&[main.clone(), collect.clone()])), 2);
        assert_eq!(
            gc_position(&named(&[main.clone(), collect, native.clone(), unnamed])),
            2
        );
        assert_eq!(
            gc_position(&named(&[main, Frame::Unknown(Unknown::CodeFreed), native])),
            2
        );
        assert_eq!(gc_position(&named(&[Frame::Truncated { limit: 1024 }])), 1);
    }
}
