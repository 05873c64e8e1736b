//! One profiled interpreter: its process, layout and memory, and a bounded cache of the code
//! objects read from it (keyed by address and the kernel's tag, so a code object freed and its
//! address reused is read afresh, never named from the old one). Turns a raw frame (code object,
//! instruction) into what the code object says and the line it was on, and names the process's
//! threads as Python does (`thread_names`) and the asyncio tasks of its stacks (`asyncio`).

use std::{
    rc::Rc,
    time::{Duration, Instant},
};

use profiler_common::{CodeSnapshot, PY_ENTRY_FRAME, PyFrame, instr_kind};

use super::{
    Layout,
    asyncio::{self, AsyncioLayout, TaskIndex, TaskRoots},
    code::{CodeError, CodeInfo, read_code, read_snapshot},
    discover::PythonProcess,
    linetable::line_for,
    methods,
    thread_names::ThreadNames,
};
use crate::{cache::BoundedCache, process::ProcMem};

/// Code objects kept per interpreter: the working set of a program, with room for the ones a
/// long `--all` run meets; older ones are read again if they are still alive, else named from
/// the stacks that already hold their names.
const CODE_CACHE: usize = 16 * 1024;

/// Cut-short copies kept per interpreter: large module bodies, met mostly at import time.
const PARTIAL_CACHE: usize = 1024;

/// Why a frame's code object could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CodeUnavailable {
    /// Freed, and its address reused, before it was read.
    Freed,
    /// The process exited before it was read.
    Exited,
    /// Reading it failed, for this reason.
    Unreadable(String),
}

pub struct Interpreter {
    pub process: PythonProcess,
    pub layout: Layout,
    /// The process's memory while it runs; dropped when it ends, so a long `--all` run holds
    /// one descriptor per live process only.
    mem: Option<ProcMem>,
    /// A forked child's parent's memory: a child that ended before its code objects were read
    /// still has them at the same addresses in its parent (the tag check turns away any the
    /// child made, or the parent freed, since the fork).
    parent: Option<ProcMem>,
    codes: BoundedCache<(u64, u32), Result<Rc<CodeInfo>, CodeUnavailable>>,
    /// The kernel's copies of code objects whose line tables were cut short: their names, and
    /// their lines up to the cut, for frames whose code object is freed before it is read.
    partial: BoundedCache<(u64, u32), Rc<CodeInfo>>,
    /// Python's names for the process's threads.
    thread_names: ThreadNames,
    /// With `--async-aware`: where its tasks are, once found, and the tasks read (a task is
    /// read once per distinct stack it runs; the cache only bounds what a long run keeps).
    tasks: Option<Tasks>,
}

/// What `--async-aware` keeps of a process's tasks.
struct Tasks {
    /// Where they are, once found.
    found: Option<AsyncioLayout>,
    /// When they were last looked for, while not found (asyncio may be imported later).
    tried_at: Option<Instant>,
    /// 3.11-3.13: each coroutine frame's task.
    index: TaskIndex,
    roots: TaskCache,
}

/// How often, at most, a process whose tasks were not found is looked at again.
const LOCATE_AGAIN: Duration = Duration::from_millis(20);

/// The roots of tasks read, by the task's address, with what they are checked against
/// (`asyncio::task_identity`).
type TaskCache = BoundedCache<u64, (Option<(u64, u64)>, Rc<TaskRoots>)>;

/// Tasks kept per interpreter.
const TASK_CACHE: usize = 4096;

impl Interpreter {
    pub fn new(process: PythonProcess, layout: Layout) -> Self {
        let mem = ProcMem::open(process.pid).ok();
        Self {
            process,
            layout,
            mem,
            parent: None,
            codes: BoundedCache::new(CODE_CACHE),
            partial: BoundedCache::new(PARTIAL_CACHE),
            thread_names: ThreadNames::default(),
            tasks: None,
        }
    }

    /// Name the asyncio tasks of recorded stacks (`--async-aware`).
    pub fn name_tasks(&mut self) {
        self.tasks = Some(Tasks {
            found: None,
            tried_at: None,
            index: TaskIndex::default(),
            roots: BoundedCache::new(TASK_CACHE),
        });
    }

    /// The roots of a recorded stack's task, when tasks are named: `task ?` where the task
    /// cannot be read. `task` is what the kernel recorded: the task (3.14+), or the outermost
    /// coroutine's frame (3.11-3.13), which is no task's where the stack is not a task's (None).
    pub fn task_roots(&mut self, task: u64) -> Option<Rc<TaskRoots>> {
        let Tasks {
            found,
            tried_at,
            index,
            roots: cache,
        } = self.tasks.as_mut()?;
        let layout = &self.layout;
        let unknown = || {
            Rc::new(TaskRoots {
                names: vec!["?".into()],
                coro_code: 0,
            })
        };
        let modern = self.process.version >= asyncio::FIRST_PUBLISHED;
        let Some(mem) = self.mem.as_ref() else {
            return modern.then(unknown);
        };
        if found.is_none() && tried_at.is_none_or(|t| t.elapsed() >= LOCATE_AGAIN) {
            *tried_at = Some(Instant::now());
            *found = asyncio::locate(mem, &self.process, layout).ok();
        }
        let Some(a) = found.as_ref() else {
            return modern.then(unknown);
        };
        let task = match modern {
            true => task,
            false => index.task_of(mem, layout, a, task)?,
        };
        // A task made since at the address of one read before is read anew.
        let identity = asyncio::task_identity(mem, a, task);
        if let Some((known, roots)) = cache.get(&task)
            && *known == identity
        {
            return Some(Rc::clone(roots));
        }
        let roots = Rc::new(asyncio::task_roots(mem, layout, a, task));
        cache.insert(task, (identity, Rc::clone(&roots)));
        Some(roots)
    }

    /// The interpreter of `process`, forked from process `parent`.
    pub fn forked(process: PythonProcess, layout: Layout, parent: u32) -> Self {
        Self {
            parent: ProcMem::open(parent).ok(),
            ..Self::new(process, layout)
        }
    }

    /// The process has ended: nothing more can be read from it.
    pub fn detach(&mut self) {
        self.mem = None;
        self.parent = None;
    }

    /// What the code object of `frame` says, read once while it is cached.
    pub fn code(&mut self, frame: &PyFrame) -> Result<Rc<CodeInfo>, CodeUnavailable> {
        let (mem, parent) = (self.mem.as_ref(), self.parent.as_ref());
        let layout = &self.layout;
        let partial = &mut self.partial;
        self.codes
            .get_or_insert_with((frame.code, frame.tag), || {
                let read = |mem: Option<&ProcMem>| {
                    let Some(mem) = mem else {
                        return Err(CodeUnavailable::Exited);
                    };
                    match read_code(mem, layout, frame.code, frame.tag) {
                        Ok(info) => Ok(Rc::new(info)),
                        Err(CodeError::Stale) => Err(CodeUnavailable::Freed),
                        Err(CodeError::Io(e))
                            if e.raw_os_error() == Some(libc::ESRCH)
                                || e.kind() == std::io::ErrorKind::UnexpectedEof =>
                        {
                            Err(CodeUnavailable::Exited)
                        }
                        Err(e) => Err(CodeUnavailable::Unreadable(e.to_string())),
                    }
                };
                let live = match read(mem) {
                    Err(CodeUnavailable::Exited) if parent.is_some() => read(parent),
                    other => other,
                };
                match live {
                    Err(e @ (CodeUnavailable::Freed | CodeUnavailable::Exited)) => {
                        partial.get(&(frame.code, frame.tag)).cloned().ok_or(e)
                    }
                    other => other,
                }
            })
            .clone()
    }

    /// Takes in the kernel's copy of a code object (made while a new stack held it): read from
    /// the copy as from the live object, it names the code object's frames even once it is
    /// freed, and saves reading it. A copy whose line table was longer than the kernel copies
    /// names lines up to where it ends: it is kept apart and used only if the live object is
    /// gone by the time it is read. A copy that does not hold a name (not a compact string, or
    /// longer than the copy) is left for the live read.
    ///
    /// Up to 3.10 a method is named with its class (`methods::qualified_name`) from the first
    /// local the kernel copied with the code object, read now while that class surely lives.
    pub fn add_snapshot(&mut self, snap: &CodeSnapshot) {
        let key = (snap.code, snap.tag);
        if let Ok(info) = read_snapshot(snap, &self.layout, false) {
            let info = self.with_class(info, snap);
            self.codes.insert(key, Ok(Rc::new(info)));
            return;
        }
        if let Ok(info) = read_snapshot(snap, &self.layout, true) {
            let info = self.with_class(info, snap);
            self.partial.insert(key, Rc::new(info));
        }
    }

    /// `info` named `Class.method` where the copy's first local says it is a method.
    fn with_class(&self, mut info: CodeInfo, snap: &CodeSnapshot) -> CodeInfo {
        if let Some(mem) = self.mem.as_ref()
            && let Some(name) = methods::qualified_name(
                mem,
                &self.layout,
                snap.code,
                &info.name,
                snap.first_local,
                snap.first_local_type,
            )
        {
            info.name = name;
        }
        info
    }

    /// Python's name for the thread it numbers `tid` (`threading.get_native_id()`), where the
    /// threading module knows the thread.
    pub fn thread_name(&mut self, tid: u64) -> Option<String> {
        let mem = self.mem.as_ref()?;
        let runtime = self.process.runtime_addr;
        self.thread_names.get(mem, &self.layout, runtime, tid)
    }

    /// Reads Python's names for the process's threads now: at registration, so threads that
    /// end before they are first seen in a drain keep their names.
    pub fn refresh_thread_names(&mut self) {
        if let Some(mem) = self.mem.as_ref() {
            let runtime = self.process.runtime_addr;
            self.thread_names.refresh(mem, &self.layout, runtime);
        }
    }

    /// Code objects cached now.
    pub fn cached_codes(&self) -> usize {
        self.codes.len()
    }
}

/// The line `frame` was on in `code`: from the version's line table, or the function's first
/// line where the table gives none (or line 0, which 3.11+ give a module's first instruction):
/// every Python frame has a line.
pub fn line_of(layout: &Layout, frame: &PyFrame, code: &CodeInfo) -> u32 {
    let addr = match layout.kernel.instr_kind {
        // prev_instr starts one code unit before the first instruction: that is the def line.
        // The entry-frame mark (3.11 with --native) is not part of the position.
        instr_kind::POINTER => {
            match (frame.instr & !PY_ENTRY_FRAME).checked_sub(layout.code.code_adaptive as u32) {
                Some(addr) => addr,
                None => return code.firstlineno,
            }
        }
        // f_lasti is -1 before the first instruction runs.
        _ => match i32::try_from(frame.instr) {
            Ok(lasti) => lasti as u32 * layout.code.instr_unit,
            Err(_) => return code.firstlineno,
        },
    };
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
    use super::*;
    use crate::python::{Version, layout_for};

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
        let line = |offset| line_of(&layout, &at(offset), &code);
        assert_eq!(line(0), 1, "RESUME, on line 0 in the table");
        assert_eq!(line(2), 1);
        assert_eq!(line(6), 2);
        assert_eq!(line(40), 1, "past the table: the first line");
    }
}
