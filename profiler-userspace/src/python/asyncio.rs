//! asyncio tasks, read from the process for `--async-aware`: every task, its name, its
//! coroutine chain (a suspended coroutine's embedded frame, then the coroutine it awaits) and
//! the tasks that await it. Two sources:
//! - 3.14+ publish the `_asyncio` module's layout (`_Py_AsyncioModuleDebugOffsets`, in the
//!   `.AsyncioDebug` section of the ELF file that holds the module): each thread state keeps a
//!   list of the tasks it created (tasks of threads that have exited move to the
//!   interpreter's), its running task, and each task the set of tasks awaiting it.
//! - 3.11-3.13 publish nothing: the C `Task`'s layout is this module's (from the DWARF of
//!   CPython's builds, checked against the type's size), the tasks are in the `_asyncio`
//!   module's registries (a `WeakSet`, and from 3.12 the set of eager tasks), and a task's
//!   awaiters are found through its done callbacks: the wakeup of the task that awaits it, or
//!   the `TaskGroup` whose parent task it is. No thread state says which task runs: the kernel
//!   records the outermost coroutine frame of the stack (`OUTERMOST_COROUTINE`) and
//!   `TaskIndex` finds the task whose coroutine that is.
//!
//! Pure over `ProcessMemory` once the layout is found; knows nothing of BPF or of how tasks are
//! shown. Every list and chain is walked with a bound, against a process that changes under the
//! read.

use std::{
    collections::{HashMap, HashSet},
    io,
    time::{Duration, Instant},
};

use profiler_common::{MAX_PYTHON_FRAMES, PyFrame, TargetInfo};

use super::{
    Layout, Version,
    code::CodeError,
    debug_offsets,
    discover::PythonProcess,
    locals::{LocalsReader, Value, read_c_string},
    objects::{SetLayout, attributes, lookup, module_globals, set_keys},
    threads::read_frame,
};
use crate::process::{self, ProcessMemory, elf};

/// The first version whose tasks are read.
pub const FIRST: Version = Version::new(3, 11);
/// The first version that publishes where its tasks are.
pub const FIRST_PUBLISHED: Version = Version::new(3, 14);

/// The ELF section `_asyncio` keeps its `_Py_AsyncioModuleDebugOffsets` in (Python/remote_debug.h
/// `GENERATE_DEBUG_SECTION`): in the executable when the module is built in (Debian's 3.15), in
/// `_asyncio.cpython-3XX-*.so` when it is a shared module (Debian's 3.14).
const SECTION: &str = ".AsyncioDebug";

/// Tasks read at most, over every list: a bound against a list that loops.
pub const MAX_TASKS: usize = 1 << 16;
/// Awaiting tasks read per task (`awaited_by` is a set once a second task awaits it).
const MAX_AWAITERS: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum AsyncioError {
    #[error(
        "--async-aware needs CPython 3.11 or newer (whose tasks keep their coroutine's frame); \
         this process runs {0}"
    )]
    TooOld(Version),
    #[error(
        "--async-aware needs a build with the GIL (free-threaded builds keep tasks per thread \
             differently)"
    )]
    FreeThreaded,
    #[error("asyncio is not loaded in this process (no {SECTION} section in what it maps)")]
    NotLoaded,
    #[error("asyncio is not imported in this process (no _asyncio in sys.modules)")]
    NotImported,
    #[error("_asyncio.Task is {0}, not the C task ({1} bytes) that --async-aware reads")]
    NotCTask(String, u64),
    #[error("reading _asyncio: {0}")]
    Module(#[from] CodeError),
    #[error("reading the process's mappings for {SECTION}: {0}")]
    Maps(io::Error),
    #[error("reading _Py_DebugOffsets for the coroutine layout: {0}")]
    DebugOffsets(#[from] debug_offsets::DebugOffsetsError),
    #[error("_Py_DebugOffsets has no {0}")]
    Missing(&'static str),
    #[error("reading {SECTION}: {0}")]
    Io(#[from] io::Error),
    #[error("{SECTION} {field} = {value} is out of range")]
    OutOfRange { field: &'static str, value: u64 },
}

/// Where asyncio's structures are: the task's name and coroutine, the coroutine's embedded
/// frame and state, where a suspended frame keeps what it awaits, and where the tasks are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AsyncioLayout {
    pub task_name: u64,
    pub task_coro: u64,
    pub gen_iframe: u64,
    pub gen_frame_state: u64,
    pub stack_top: StackTop,
    /// `gi_frame_state` of a coroutine suspended in `await` and of one whose frame is gone
    /// (`FRAME_CLEARED`), Include/internal/pycore_frame.h: -1 and 4 up to 3.14 (3.11 and 3.12
    /// call the first `FRAME_SUSPENDED`: a coroutine suspends only in `await`); 2 and 5 in
    /// 3.15, which renumbered the states.
    pub yield_from: i8,
    pub cleared: i8,
    pub registry: Registry,
}

/// Where a suspended frame's value stack ends: what it awaits (the receiver of `SEND`) is the
/// last value on it, or in 3.15 the one before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackTop {
    /// 3.14+: `_PyInterpreterFrame.stackpointer` (a pointer past the last value); the awaited
    /// value is `slot` words below it.
    Pointer { at: u64, slot: u64 },
    /// 3.11-3.13: `_PyInterpreterFrame.stacktop` (an `int`, the index past the last value in
    /// `localsplus`).
    Index { at: u64, localsplus: u64 },
}

/// Where the tasks are, and what awaits a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Registry {
    Published(Published),
    Module(Module),
}

/// 3.14+: `.AsyncioDebug` and the set and list offsets of `_Py_DebugOffsets`, each checked
/// against its struct's published size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    pub task_awaited_by: u64,
    pub task_is_task: u64,
    pub task_awaited_by_is_set: u64,
    pub task_node: u64,
    pub interp_tasks_head: u64,
    pub tstate_running_loop: u64,
    pub tstate_running_task: u64,
    pub tstate_tasks_head: u64,
    pub set: SetLayout,
    pub llist_next: u64,
}

/// 3.11-3.13: the C task's layout (Modules/_asynciomodule.c `TaskObj`, whose head is
/// `FutureObj`'s) and the registries of the `_asyncio` module (which `asyncio.tasks` imports).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Module {
    /// `_asyncio.Task`, the type every task is of or derives from.
    pub task_type: u64,
    /// `fut_callback0` (the first done callback) and `fut_callbacks` (a list of `(callback,
    /// context)` tuples for the others).
    pub callback0: u64,
    pub callbacks: u64,
    /// `_all_tasks` (3.11) or `_scheduled_tasks` (3.12+), a `WeakSet`; `_eager_tasks` (3.12+),
    /// a set, or 0.
    pub weak_tasks: u64,
    pub eager_tasks: u64,
}

/// The C task of 3.11-3.13: its size (`tp_basicsize`), and `task_name`, `task_coro`; the
/// coroutine's `gi_iframe` and `gi_frame_state` (DWARF of CPython 3.11.7, 3.12.1, 3.13.0).
fn module_offsets(v: Version) -> Option<(u64, u64, u64, u64, u64)> {
    match (v.major, v.minor) {
        (3, 11) => Some((176, 144, 136, 80, 75)),
        (3, 12) => Some((176, 144, 136, 72, 67)),
        (3, 13) => Some((144, 128, 120, 72, 67)),
        _ => None,
    }
}

/// `fut_callback0` and `fut_callbacks`, 3.11-3.13.
const FUTURE_CALLBACK0: u64 = 24;
const FUTURE_CALLBACKS: u64 = 40;
/// `_PyInterpreterFrame.stacktop` and `.localsplus`, 3.11-3.13.
const FRAME_STACKTOP: u64 = 64;
const FRAME_LOCALSPLUS: u64 = 72;
/// `PyTypeObject.tp_base`, from `tp_name` (Include/cpython/object.h, 3.8-3.13), and
/// `tp_basicsize`.
const TP_BASE_AFTER_NAME: u64 = 232;
const TP_BASICSIZE_AFTER_NAME: u64 = 8;
/// `PyWeakReference.wr_object`; `PyCFunctionObject.m_self` and `PyMethodObject.im_self`; the
/// task of 3.11's `TaskWakeupMethWrapper` (`ww_task`); `PyListObject.ob_item`.
const WEAKREF_OBJECT: u64 = 16;
const BOUND_SELF: u64 = 24;
/// `PyCFunctionObject.m_ml`, whose `PyMethodDef` starts with the method's name.
const METHOD_DEF: u64 = 16;
const WAKEUP_WRAPPER_TASK: u64 = 16;
const LIST_ITEMS: u64 = 24;
/// Base classes followed up from a task's type to `_asyncio.Task`.
const MAX_BASES: usize = 16;
/// Characters of a type's name compared.
const MAX_TYPE_NAME: usize = 128;

/// `_Py_AsyncioModuleDebugOffsets` (Modules/_asynciomodule.c), 3.14 and 3.15 alike: the task
/// object's (size, name, awaited_by, is_task, awaited_by_is_set, coro, task_node), the
/// interpreter's (size, tasks head) and the thread state's (size, running loop, running task,
/// tasks head).
const WORDS: usize = 13;

impl AsyncioLayout {
    /// The module's section `section` (13 words) and the interpreter's published offsets.
    pub fn parse(
        section: &[u8],
        published: &debug_offsets::Published,
    ) -> Result<Self, AsyncioError> {
        let word = |i: usize| {
            section
                .get(i * 8..i * 8 + 8)
                .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
        };
        let inside = |field: &'static str, i: usize, size: u64| {
            let value = word(i);
            match value + 8 <= size {
                true => Ok(value),
                false => Err(AsyncioError::OutOfRange { field, value }),
            }
        };
        // Each struct's size: a task or a thread state is not megabytes, an interpreter is.
        let sized = |field: &'static str, i: usize, max: u64| {
            let value = word(i);
            match (1..=max).contains(&value) {
                true => Ok(value),
                false => Err(AsyncioError::OutOfRange { field, value }),
            }
        };
        let task = sized("asyncio_task_object.size", 0, 1 << 12)?;
        let interp = sized("asyncio_interpreter_state.size", 7, 1 << 24)?;
        let tstate = sized("asyncio_thread_state.size", 9, 1 << 16)?;
        let get = |name: &'static str| published.get(name).ok_or(AsyncioError::Missing(name));
        let (slot, yield_from, cleared) = match published.header.version {
            v if v <= Version::new(3, 14) => (1, -1, 4),
            _ => (2, 2, 5),
        };
        Ok(Self {
            task_name: inside("task_name", 1, task)?,
            task_coro: inside("task_coro", 5, task)?,
            gen_iframe: get("gen_object.gi_iframe")?,
            gen_frame_state: get("gen_object.gi_frame_state")?,
            stack_top: StackTop::Pointer {
                at: get("interpreter_frame.stackpointer")?,
                slot,
            },
            yield_from,
            cleared,
            registry: Registry::Published(Published {
                task_awaited_by: inside("task_awaited_by", 2, task)?,
                task_is_task: inside("task_is_task", 3, task)?,
                task_awaited_by_is_set: inside("task_awaited_by_is_set", 4, task)?,
                task_node: inside("task_node", 6, task)?,
                interp_tasks_head: inside("asyncio_tasks_head", 8, interp)?,
                tstate_running_loop: inside("asyncio_running_loop", 10, tstate)?,
                tstate_running_task: inside("asyncio_running_task", 11, tstate)?,
                tstate_tasks_head: inside("asyncio_tasks_head", 12, tstate)?,
                set: SetLayout {
                    used: get("set_object.used")?,
                    mask: get("set_object.mask")?,
                    table: get("set_object.table")?,
                },
                llist_next: get("llist_node.next")?,
            }),
        })
    }

    /// 3.14+'s published lists, or None (3.11-3.13).
    pub fn published(&self) -> Option<&Published> {
        match &self.registry {
            Registry::Published(p) => Some(p),
            Registry::Module(_) => None,
        }
    }
}

/// Finds and reads the asyncio layout of process `p`.
pub fn locate(
    mem: &impl ProcessMemory,
    p: &PythonProcess,
    layout: &Layout,
) -> Result<AsyncioLayout, AsyncioError> {
    check_version(p, layout)?;
    if p.version < FIRST_PUBLISHED {
        return locate_module(mem, p, layout);
    }
    let published = debug_offsets::read(mem, p.runtime_addr, p.version, p.runtime_size)?;
    let at = find_section(p.pid)?.ok_or(AsyncioError::NotLoaded)?;
    AsyncioLayout::parse(&mem.read_vec(at, WORDS * 8)?, &published)
}

/// Refuses a version or build whose tasks are not read.
fn check_version(p: &PythonProcess, layout: &Layout) -> Result<(), AsyncioError> {
    if p.version < FIRST {
        return Err(AsyncioError::TooOld(p.version));
    }
    if layout.free_threaded {
        return Err(AsyncioError::FreeThreaded);
    }
    Ok(())
}

/// 3.11-3.13: `_asyncio`'s `Task` (checked to be the C task, of the size this module knows)
/// and its registries. The C module, not `asyncio.tasks`: that one is in `sys.modules` while its
/// body runs, before it has its registries.
fn locate_module(
    mem: &impl ProcessMemory,
    p: &PythonProcess,
    layout: &Layout,
) -> Result<AsyncioLayout, AsyncioError> {
    let Some((size, name, coro, iframe, frame_state)) = module_offsets(p.version) else {
        return Err(AsyncioError::TooOld(p.version));
    };
    let globals = module_globals(mem, layout, p.runtime_addr, "_asyncio")?
        .ok_or(AsyncioError::NotImported)?;
    let global = |n: &str| lookup(mem, layout, &globals, n).unwrap_or(0);
    let task_type = global("Task");
    let name_at = task_type.wrapping_add(layout.values.tp_name as u64);
    let type_name = read_c_string(mem, mem.read_u64(name_at)?, MAX_TYPE_NAME)?;
    let basic_size = mem.read_u64(name_at.wrapping_add(TP_BASICSIZE_AFTER_NAME))?;
    if type_name != "_asyncio.Task" || basic_size != size {
        return Err(AsyncioError::NotCTask(type_name, size));
    }
    let weak_tasks = match global("_scheduled_tasks") {
        0 => global("_all_tasks"),
        t => t,
    };
    if weak_tasks == 0 {
        return Err(AsyncioError::NotImported);
    }
    Ok(module_layout(
        (name, coro, iframe, frame_state),
        task_type,
        weak_tasks,
        global("_eager_tasks"),
    ))
}

/// The layout of 3.11-3.13's tasks: the task's name and coroutine and the coroutine's frame and
/// state (`module_offsets`), `_asyncio.Task` and the registries.
fn module_layout(
    (name, coro, iframe, frame_state): (u64, u64, u64, u64),
    task_type: u64,
    weak_tasks: u64,
    eager_tasks: u64,
) -> AsyncioLayout {
    AsyncioLayout {
        task_name: name,
        task_coro: coro,
        gen_iframe: iframe,
        gen_frame_state: frame_state,
        stack_top: StackTop::Index {
            at: FRAME_STACKTOP,
            localsplus: FRAME_LOCALSPLUS,
        },
        yield_from: -1,
        cleared: 4,
        registry: Registry::Module(Module {
            task_type,
            callback0: FUTURE_CALLBACK0,
            callbacks: FUTURE_CALLBACKS,
            weak_tasks,
            eager_tasks,
        }),
    }
}

/// The address of `.AsyncioDebug` in process `pid`, in the executable or a mapped `_asyncio`
/// module; None before asyncio is imported.
fn find_section(pid: u32) -> Result<Option<u64>, AsyncioError> {
    let maps = process::read_maps(pid).map_err(AsyncioError::Maps)?;
    let mut seen = HashSet::new();
    for m in &maps {
        let Some(path) = &m.path else { continue };
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        // Only the files that can hold it: reading every library's headers is needless work.
        if !(name.contains("python") || name.starts_with("_asyncio")) {
            continue;
        }
        if !seen.insert((m.dev, m.inode)) {
            continue;
        }
        let Ok(file) = process::open_mapped(pid, m) else {
            continue;
        };
        let Ok(info) = elf::inspect_file(&file, &[], &[SECTION]) else {
            continue;
        };
        let Some(Some(section)) = info.sections.first() else {
            continue;
        };
        let bias = process::load_bias(&maps, path, info.first_load_vaddr, info.is_pie_or_shared);
        if let Some(bias) = bias {
            return Ok(Some(section.address.wrapping_add(bias)));
        }
    }
    Ok(None)
}

/// What the kernel records of a thread's task with each stack (`record --async-aware`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelTask {
    /// 3.14+: `_PyThreadStateImpl.asyncio_running_task`, at this offset.
    RunningTask(u16),
    /// 3.11-3.13: the outermost coroutine's frame (`target_options::OUTERMOST_COROUTINE`).
    OutermostCoroutine,
}

/// What the kernel is to record of process `p`'s tasks. 3.14+: the running task's offset, as
/// the process's `.AsyncioDebug` says, or, before a 3.14 process has imported asyncio (its
/// `_asyncio` is a shared module, mapped only then), the value of CPython's default build
/// (3.14: 872, 3.15: 1032; the interpreter's struct, not the module's, holds it). 3.11-3.13
/// need nothing of the process: its tasks are found once they are met.
pub fn kernel_task(
    mem: &impl ProcessMemory,
    p: &PythonProcess,
    layout: &Layout,
) -> Result<KernelTask, AsyncioError> {
    check_version(p, layout)?;
    if p.version < FIRST_PUBLISHED {
        return Ok(KernelTask::OutermostCoroutine);
    }
    let default = match (p.version.major, p.version.minor) {
        (3, 14) => 872,
        (3, 15) => 1032,
        _ => 0,
    };
    match locate(mem, p, layout) {
        Ok(AsyncioLayout {
            registry: Registry::Published(a),
            ..
        }) => u16::try_from(a.tstate_running_task)
            .map(KernelTask::RunningTask)
            .map_err(|_| AsyncioError::OutOfRange {
                field: "asyncio_running_task",
                value: a.tstate_running_task,
            }),
        Ok(_) => Err(AsyncioError::TooOld(p.version)),
        Err(AsyncioError::NotLoaded) if default != 0 => Ok(KernelTask::RunningTask(default)),
        Err(e) => Err(e),
    }
}

/// What a recorded stack's task is rooted at: its awaiters' names and its own, outermost
/// first, and the code object of its first coroutine (where the event loop's frames end).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskRoots {
    pub names: Vec<String>,
    pub coro_code: u64,
}

/// Awaiting tasks followed up from a recorded task, at most.
const MAX_AWAITER_DEPTH: usize = 32;

/// The roots of the task at `task`, read now (after the sample: a task gone since reads as
/// `?`). Where several tasks await one, the first is followed.
pub fn task_roots(
    mem: &impl ProcessMemory,
    layout: &Layout,
    a: &AsyncioLayout,
    task: u64,
) -> TaskRoots {
    let mut names = LocalsReader::new(mem, layout);
    let ob_type = |obj: u64| mem.read_u64(obj.wrapping_add(layout.values.ob_type as u64));
    let coro_code = (|| -> io::Result<u64> {
        let coro = mem.read_u64(task.wrapping_add(a.task_coro))? & !7;
        let frame = coro.wrapping_add(a.gen_iframe);
        Ok(
            mem.read_u64(frame.wrapping_add(layout.kernel.frame_code as u64))?
                & !(layout.kernel.frame_code_tag as u64),
        )
    })()
    .unwrap_or(0);
    let task_type = ob_type(task).unwrap_or(0);
    let mut chain = vec![task_name(mem, a, &mut names, task).unwrap_or_else(|_| "?".into())];
    let mut at = task;
    while chain.len() < MAX_AWAITER_DEPTH {
        // Only a task of the same type: anything else in a set is its marker of a removed key.
        let Some(&by) = awaited_by(mem, layout, a, at)
            .unwrap_or_default()
            .iter()
            .find(|&&t| task_type != 0 && ob_type(t).ok() == Some(task_type))
        else {
            break;
        };
        chain.push(task_name(mem, a, &mut names, by).unwrap_or_else(|_| "?".into()));
        at = by;
    }
    chain.reverse();
    TaskRoots {
        names: chain,
        coro_code,
    }
}

/// One asyncio task (or a future that another task awaits, when `is_task` is false).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    pub addr: u64,
    /// Its name (`Task-3` for one never named).
    pub name: String,
    /// `native_thread_id` of the thread whose list holds it: the thread that created it (None:
    /// the interpreter's list, where the tasks of an exited thread go, and 3.11-3.13, whose
    /// registries are the process's).
    pub thread: Option<u64>,
    /// The thread it is running in now, if it is some thread's running task (3.14+; the
    /// caller finds it from the threads' stacks on 3.11-3.13).
    pub running_in: Option<u64>,
    /// Its coroutine chain, leaf (the innermost awaited coroutine) first. A running task's is
    /// its first coroutine's frame only: the rest is on its thread's stack.
    pub chain: Vec<PyFrame>,
    /// The address of its first coroutine's frame (embedded in the coroutine object): where on
    /// its thread's stack a running task starts. 0 without a coroutine.
    pub coro_frame: u64,
    /// The tasks that await it.
    pub awaited_by: Vec<u64>,
}

/// Every task of the main interpreter: 3.14+ thread by thread in the interpreter's thread
/// order, then the interpreter's own list; 3.11-3.13 in the registries' order.
pub fn read_tasks(
    mem: &impl ProcessMemory,
    layout: &Layout,
    target: &TargetInfo,
    a: &AsyncioLayout,
) -> io::Result<Vec<Task>> {
    let mut names = LocalsReader::new(mem, layout);
    let mut tasks = Vec::new();
    match &a.registry {
        Registry::Published(p) => {
            let k = &target.offsets;
            let field = |base: u64, off: u64| base.wrapping_add(off);
            let interp = mem.read_u64(field(
                target.runtime_addr,
                k.runtime_interpreters_head as u64,
            ))?;
            if interp == 0 {
                return Ok(Vec::new());
            }
            let mut running = Vec::new();
            let mut tstate = mem.read_u64(field(interp, k.interp_threads_head as u64))?;
            let mut threads = 0;
            while tstate != 0 && threads < MAX_TASKS {
                threads += 1;
                let tid = mem.read_u64(field(tstate, k.tstate_native_thread_id as u64))?;
                // The running task is set only while the thread runs a loop.
                if mem.read_u64(field(tstate, p.tstate_running_loop))? != 0 {
                    running.push((mem.read_u64(field(tstate, p.tstate_running_task))?, tid));
                }
                let head = field(tstate, p.tstate_tasks_head);
                for addr in list(mem, p, head, MAX_TASKS - tasks.len())? {
                    // A task that ends while it is read is left out, not the others with it.
                    if let Ok(mut t) = read_task(mem, layout, target, a, &mut names, addr) {
                        t.thread = Some(tid);
                        tasks.push(t);
                    }
                }
                tstate = mem.read_u64(field(tstate, k.tstate_next as u64))?;
            }
            let head = field(interp, p.interp_tasks_head);
            for addr in list(mem, p, head, MAX_TASKS - tasks.len())? {
                tasks.extend(read_task(mem, layout, target, a, &mut names, addr).ok());
            }
            // A running task is in its creator's list, which may be another thread's.
            for (task, tid) in running {
                if let Some(t) = tasks.iter_mut().find(|t| t.addr == task) {
                    t.running_in = Some(tid);
                }
            }
        }
        Registry::Module(m) => {
            for addr in registered(mem, layout, m)? {
                tasks.extend(read_task(mem, layout, target, a, &mut names, addr).ok());
            }
        }
    }
    // Only tasks await tasks: anything else in a set's table is the set's marker of a removed
    // entry.
    let known: HashSet<u64> = tasks.iter().map(|t| t.addr).collect();
    for t in &mut tasks {
        t.awaited_by.retain(|a| known.contains(a));
    }
    Ok(tasks)
}

/// 3.11-3.13: the tasks in `asyncio.tasks`' registries (each live weak reference's object,
/// and the eager tasks), each once, at most `MAX_TASKS`.
fn registered(mem: &impl ProcessMemory, layout: &Layout, m: &Module) -> io::Result<Vec<u64>> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut add = |t: u64, out: &mut Vec<u64>| {
        if out.len() < MAX_TASKS && is_task(mem, layout, m, t) && seen.insert(t) {
            out.push(t);
        }
    };
    if m.weak_tasks != 0 {
        let attrs = attributes(mem, layout, m.weak_tasks).map_err(io_error)?;
        if let Some(data) = lookup(mem, layout, &attrs, "data") {
            for r in set_keys(mem, SetLayout::CLASSIC, data, MAX_TASKS).map_err(io_error)? {
                // A dead reference points at None, which is no task.
                if let Ok(t) = mem.read_u64(r.wrapping_add(WEAKREF_OBJECT)) {
                    add(t, &mut out);
                }
            }
        }
    }
    if m.eager_tasks != 0 {
        for t in set_keys(mem, SetLayout::CLASSIC, m.eager_tasks, MAX_TASKS).map_err(io_error)? {
            add(t, &mut out);
        }
    }
    Ok(out)
}

/// Whether the object at `obj` is a C task (of `_asyncio.Task` or a class derived from it).
fn is_task(mem: &impl ProcessMemory, layout: &Layout, m: &Module, obj: u64) -> bool {
    let Ok(mut ty) = mem.read_u64(obj.wrapping_add(layout.values.ob_type as u64)) else {
        return false;
    };
    for _ in 0..MAX_BASES {
        if ty == m.task_type {
            return true;
        }
        match mem.read_u64(ty.wrapping_add(layout.values.tp_name as u64 + TP_BASE_AFTER_NAME)) {
            Ok(base) if base != 0 => ty = base,
            _ => return false,
        }
    }
    false
}

fn io_error(e: CodeError) -> io::Error {
    match e {
        CodeError::Io(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    }
}

/// The tasks on the list whose head (an `llist_node`) is at `head`, at most `max`.
fn list(mem: &impl ProcessMemory, p: &Published, head: u64, max: usize) -> io::Result<Vec<u64>> {
    let mut out = Vec::new();
    let mut node = mem.read_u64(head.wrapping_add(p.llist_next))?;
    while node != head && node != 0 && out.len() < max {
        out.push(node.wrapping_sub(p.task_node));
        node = mem.read_u64(node.wrapping_add(p.llist_next))?;
    }
    Ok(out)
}

/// The task at `addr`.
fn read_task(
    mem: &impl ProcessMemory,
    layout: &Layout,
    target: &TargetInfo,
    a: &AsyncioLayout,
    names: &mut LocalsReader<'_, impl ProcessMemory>,
    addr: u64,
) -> io::Result<Task> {
    let name = task_name(mem, a, names, addr)?;
    let coro = mem.read_u64(addr.wrapping_add(a.task_coro))? & !7;
    let ob_type = layout.values.ob_type as u64;
    let (chain, coro_frame) = match coro {
        0 => (Vec::new(), 0),
        c => (
            coroutine_chain(mem, target, a, ob_type, c)?,
            c.wrapping_add(a.gen_iframe),
        ),
    };
    Ok(Task {
        addr,
        name,
        thread: None,
        running_in: None,
        chain,
        coro_frame,
        awaited_by: awaited_by(mem, layout, a, addr)?,
    })
}

/// A task's name as `Task.get_name()` would say it.
pub fn task_name(
    mem: &impl ProcessMemory,
    a: &AsyncioLayout,
    names: &mut LocalsReader<'_, impl ProcessMemory>,
    addr: u64,
) -> io::Result<String> {
    let name = mem.read_u64(addr.wrapping_add(a.task_name))? & !7;
    Ok(match names.value(name) {
        Value::Str { prefix, .. } => prefix,
        // Not named yet: the counter `Task-N` is made of.
        Value::Int { negative, digits } if !negative => {
            let n = digits
                .iter()
                .rev()
                .fold(0u128, |n, &d| (n << 30) | d as u128);
            format!("Task-{n}")
        }
        other => format!("<{}>", other.type_name()),
    })
}

/// The largest `stacktop` believed (locals and values of one frame): beyond it the frame is
/// taken as changed under the read.
const MAX_STACK_TOP: i32 = 1 << 16;

/// The chain of coroutines from the coroutine at `coro` down what each awaits, leaf first: a
/// suspended coroutine in `await` keeps what it awaits on its frame's stack; the chain goes on
/// while that is a coroutine of the same type.
fn coroutine_chain(
    mem: &impl ProcessMemory,
    target: &TargetInfo,
    a: &AsyncioLayout,
    ob_type_at: u64,
    coro: u64,
) -> io::Result<Vec<PyFrame>> {
    let ob_type = |obj: u64| mem.read_u64(obj.wrapping_add(ob_type_at));
    let mut chain = Vec::new();
    let mut coro = coro;
    let coro_type = ob_type(coro)?;
    while chain.len() < MAX_PYTHON_FRAMES {
        let mut state = [0u8];
        mem.read(coro.wrapping_add(a.gen_frame_state), &mut state)?;
        let state = state[0] as i8;
        if state == a.cleared {
            break;
        }
        let frame = coro.wrapping_add(a.gen_iframe);
        chain.push(read_frame(mem, target, frame)?);
        if state != a.yield_from {
            break;
        }
        let awaited_at = match a.stack_top {
            StackTop::Pointer { at, slot } => {
                let sp = mem.read_u64(frame.wrapping_add(at))? & !7;
                if sp == 0 {
                    break;
                }
                sp.wrapping_sub(8 * slot)
            }
            StackTop::Index { at, localsplus } => {
                let top = mem.read_u32(frame.wrapping_add(at))? as i32;
                if top <= 0 || top >= MAX_STACK_TOP {
                    break;
                }
                frame.wrapping_add(localsplus + 8 * (top as u64 - 1))
            }
        };
        let awaited = mem.read_u64(awaited_at)? & !7;
        if awaited == 0 || ob_type(awaited)? != coro_type {
            break;
        }
        coro = awaited;
    }
    chain.reverse();
    Ok(chain)
}

/// The tasks awaiting the task at `addr`. 3.14+: none, one, or a set of them. 3.11-3.13: the
/// owners of its done callbacks: a task's wakeup (3.11: a `TaskWakeupMethWrapper`; 3.12+: a
/// builtin method bound to the task), or a bound method of a `TaskGroup`, whose parent task
/// awaits its tasks.
fn awaited_by(
    mem: &impl ProcessMemory,
    layout: &Layout,
    a: &AsyncioLayout,
    addr: u64,
) -> io::Result<Vec<u64>> {
    match &a.registry {
        Registry::Published(p) => {
            let by = mem.read_u64(addr.wrapping_add(p.task_awaited_by))? & !7;
            if by == 0 {
                return Ok(Vec::new());
            }
            let mut is_set = [0u8];
            mem.read(addr.wrapping_add(p.task_awaited_by_is_set), &mut is_set)?;
            if is_set[0] == 0 {
                return Ok(vec![by]);
            }
            set_keys(mem, p.set, by, MAX_AWAITERS).map_err(io_error)
        }
        Registry::Module(m) => {
            let mut out = Vec::new();
            for callback in callbacks(mem, layout, m, addr)? {
                if let Some(t) = callback_task(mem, layout, m, callback)
                    && !out.contains(&t)
                {
                    out.push(t);
                }
            }
            Ok(out)
        }
    }
}

/// The done callbacks of the future at `addr`, at most `MAX_AWAITERS`.
fn callbacks(
    mem: &impl ProcessMemory,
    layout: &Layout,
    m: &Module,
    addr: u64,
) -> io::Result<Vec<u64>> {
    let mut out = Vec::new();
    let first = mem.read_u64(addr.wrapping_add(m.callback0))?;
    if first != 0 {
        out.push(first);
    }
    let list = mem.read_u64(addr.wrapping_add(m.callbacks))?;
    if list != 0 {
        let v = &layout.values;
        let len = (mem.read_u64(list.wrapping_add(v.list_size as u64))? as i64)
            .clamp(0, MAX_AWAITERS as i64) as usize;
        let items = mem.read_u64(list.wrapping_add(LIST_ITEMS))?;
        let items = mem.read_vec(items, len * 8)?;
        for pair in items.chunks_exact(8) {
            // Each a `(callback, context)` tuple.
            let pair = u64::from_le_bytes(pair.try_into().unwrap_or_default());
            out.push(mem.read_u64(pair.wrapping_add(v.tuple_items as u64))?);
        }
    }
    Ok(out)
}

/// The task a done callback wakes or stands for, if it is one of those `awaited_by` knows.
fn callback_task(
    mem: &impl ProcessMemory,
    layout: &Layout,
    m: &Module,
    callback: u64,
) -> Option<u64> {
    let v = &layout.values;
    let ty = mem.read_u64(callback.wrapping_add(v.ob_type as u64)).ok()?;
    let type_name = read_c_string(
        mem,
        mem.read_u64(ty.wrapping_add(v.tp_name as u64)).ok()?,
        MAX_TYPE_NAME,
    )
    .ok()?;
    let task = match type_name.as_str() {
        "TaskWakeupMethWrapper" => mem.read_u64(callback.wrapping_add(WAKEUP_WRAPPER_TASK)),
        // Only the wakeup: a task's other methods (`cancel`, say) can be callbacks too.
        "builtin_function_or_method" => {
            let def = mem.read_u64(callback.wrapping_add(METHOD_DEF)).ok()?;
            let name = read_c_string(mem, mem.read_u64(def).ok()?, MAX_TYPE_NAME).ok()?;
            if name != "task_wakeup" {
                return None;
            }
            mem.read_u64(callback.wrapping_add(BOUND_SELF))
        }
        "method" => {
            let owner = mem.read_u64(callback.wrapping_add(BOUND_SELF)).ok()?;
            let attrs = attributes(mem, layout, owner).ok()?;
            let parent = lookup(mem, layout, &attrs, "_parent_task")?;
            // A `TaskGroup`: checked by its other attribute, as a parent task alone is no proof.
            lookup(mem, layout, &attrs, "_tasks")?;
            Ok(parent)
        }
        _ => return None,
    }
    .ok()?;
    is_task(mem, layout, m, task).then_some(task)
}

/// The least time between two reads of the registries (3.11-3.13), and how many times the
/// last read took that it must be apart from the next: reading a registry of many tasks costs
/// at most a tenth of the time. A frame met before a read is due finds no task then; its stack
/// is named again when the kernel stores it again after the next drain (`record` drains every
/// 50 ms).
const INDEX_INTERVAL: Duration = Duration::from_millis(5);
const INDEX_COST_FACTOR: u32 = 10;

/// 3.11-3.13: the task of each coroutine frame the kernel recorded as a stack's outermost.
/// A frame that none of the tasks read before has makes the registries be read again (a task
/// is registered before its coroutine first runs, so a read after the sample finds it unless
/// it has ended). A frame's task is checked before it is used (its coroutine's frame is still
/// the one asked for): a task ended since, its coroutine's memory may be another's. At most
/// `MAX_TASKS` kept.
#[derive(Debug, Default)]
pub struct TaskIndex {
    by_frame: HashMap<u64, u64>,
    /// When the registries were last read, and the time the read took.
    read: Option<(Instant, Duration)>,
}

impl TaskIndex {
    /// The task whose first coroutine's frame is at `frame`, if a task has it.
    pub fn task_of(
        &mut self,
        mem: &impl ProcessMemory,
        layout: &Layout,
        a: &AsyncioLayout,
        frame: u64,
    ) -> Option<u64> {
        let Registry::Module(m) = &a.registry else {
            return None;
        };
        let coro_frame = |t: u64| {
            let coro = mem.read_u64(t.wrapping_add(a.task_coro)).ok()? & !7;
            (coro != 0).then(|| coro.wrapping_add(a.gen_iframe))
        };
        if let Some(&t) = self.by_frame.get(&frame)
            && coro_frame(t) == Some(frame)
        {
            return Some(t);
        }
        let now = Instant::now();
        let due = self.read.is_none_or(|(at, took)| {
            now.duration_since(at) >= INDEX_INTERVAL.max(took * INDEX_COST_FACTOR)
        });
        if !due {
            return None;
        }
        let tasks = registered(mem, layout, m).ok()?;
        self.read = Some((now, now.elapsed()));
        if self.by_frame.len() + tasks.len() > MAX_TASKS {
            self.by_frame.clear();
        }
        for t in tasks {
            if let Some(f) = coro_frame(t) {
                self.by_frame.insert(f, t);
            }
        }
        self.by_frame.get(&frame).copied()
    }
}

/// What a task's cached roots are checked against before they are used again: its name and
/// coroutine pointers, which a task made later at the same address does not share with it.
pub fn task_identity(mem: &impl ProcessMemory, a: &AsyncioLayout, task: u64) -> Option<(u64, u64)> {
    let name = mem.read_u64(task.wrapping_add(a.task_name)).ok()?;
    let coro = mem.read_u64(task.wrapping_add(a.task_coro)).ok()?;
    Some((name, coro))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::{debug_offsets::tests::captured, layout_for, test_heap::Objects};

    /// `.AsyncioDebug` as Debian forky's files hold it: 3.14's in
    /// `lib-dynload/_asyncio.cpython-314-x86_64-linux-gnu.so`, 3.15's in `python3.15` (built in).
    const SECTION_3_14: [u64; WORDS] = [
        168, 136, 96, 108, 109, 128, 152, 225864, 10880, 936, 864, 872, 880,
    ];
    const SECTION_3_15: [u64; WORDS] = [
        168, 136, 96, 108, 109, 128, 152, 226240, 10856, 1104, 1024, 1032, 1048,
    ];

    fn bytes(words: &[u64]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    fn published(name: &str, minor: u8) -> debug_offsets::Published {
        debug_offsets::parse(captured(name), Version::new(3, minor), None).unwrap()
    }

    #[test]
    fn reads_3_14_and_3_15_sections() {
        let a = AsyncioLayout::parse(&bytes(&SECTION_3_14), &published("3.14", 14)).unwrap();
        let l = a.published().unwrap();
        assert_eq!(
            (a.task_name, l.task_awaited_by, a.task_coro, l.task_node),
            (136, 96, 128, 152)
        );
        assert_eq!((l.task_is_task, l.task_awaited_by_is_set), (108, 109));
        assert_eq!(l.interp_tasks_head, 10880);
        assert_eq!(
            (
                l.tstate_running_loop,
                l.tstate_running_task,
                l.tstate_tasks_head
            ),
            (864, 872, 880)
        );
        assert!(matches!(a.stack_top, StackTop::Pointer { slot: 1, .. }));
        assert_eq!((a.yield_from, a.cleared), (-1, 4));
        let b = AsyncioLayout::parse(&bytes(&SECTION_3_15), &published("3.15", 15)).unwrap();
        let m = b.published().unwrap();
        assert_eq!(m.interp_tasks_head, 10856);
        assert_eq!(
            (
                m.tstate_running_loop,
                m.tstate_running_task,
                m.tstate_tasks_head
            ),
            (1024, 1032, 1048)
        );
        assert!(matches!(b.stack_top, StackTop::Pointer { slot: 2, .. }));
        assert_eq!((b.yield_from, b.cleared), (2, 5));
        // The coroutine layout comes from _Py_DebugOffsets.
        let p = published("3.15", 15);
        assert_eq!(Some(b.gen_iframe), p.get("gen_object.gi_iframe"));
        assert_eq!(Some(m.llist_next), p.get("llist_node.next"));
    }

    /// 3.12's C tasks by hand: the type, a set of eager tasks, and each task's coroutine (a
    /// frame inside it running `code`).
    struct Tasks312 {
        o: Objects,
        a: AsyncioLayout,
        set_table: u64,
        count: u64,
    }

    impl Tasks312 {
        fn new() -> Self {
            let mut o = Objects::new(layout_for(Version::new(3, 12)).unwrap());
            let task_type = o.ty("_asyncio.Task", 0);
            let set = o.alloc(64);
            let set_table = o.alloc(16 * 8);
            o.word(set + 32, 7);
            o.word(set + 40, set_table);
            let (size, name, coro, iframe, state) = module_offsets(Version::new(3, 12)).unwrap();
            assert_eq!(size, 176);
            let a = module_layout((name, coro, iframe, state), task_type, 0, set);
            Self {
                o,
                a,
                set_table,
                count: 0,
            }
        }

        /// A registered task named `name` whose coroutine is at `coro` (made if 0), running
        /// `code`: the task, and its coroutine's frame.
        fn task(&mut self, name: &str, coro: u64, code: u64) -> (u64, u64) {
            let Registry::Module(m) = self.a.registry else {
                unreachable!()
            };
            let t = self.o.instance(m.task_type, 176);
            let n = self.o.str(name);
            self.o.word(t + self.a.task_name, n);
            let coro = match coro {
                0 => self.o.object("coroutine", 0, 256),
                c => c,
            };
            self.o.word(t + self.a.task_coro, coro);
            // Cleared: no chain to read (the code objects here are not whole).
            self.o
                .put(coro + self.a.gen_frame_state, &[self.a.cleared as u8]);
            let frame = coro + self.a.gen_iframe;
            let frame_code = self.o.layout.kernel.frame_code as u64;
            self.o.word(frame + frame_code, code);
            self.o.word(self.set_table + 16 * self.count, t);
            self.count += 1;
            (t, frame)
        }
    }

    /// A frame no task has finds none; a task made later whose coroutine is at the same address
    /// (running the same code, as a new request's handler would) is found once a read is due.
    #[test]
    fn finds_the_task_of_an_outermost_coroutine_frame() {
        let mut h = Tasks312::new();
        let (first, first_frame) = h.task("first", 0, 0x1000);
        let generator = h.o.object("generator", 0, 256);
        let frame_code = h.o.layout.kernel.frame_code as u64;
        let other = generator + h.a.gen_iframe;
        h.o.word(other + frame_code, 0x2000);
        let mut index = TaskIndex::default();
        let (mem, layout, a) = (h.o.mem(), h.o.layout, h.a);
        assert_eq!(index.task_of(&mem, &layout, &a, first_frame), Some(first));
        assert_eq!(index.task_of(&mem, &layout, &a, other), None);
        // A task's coroutine now where the generator was, running the same code.
        let (second, frame) = h.task("second", generator, 0x2000);
        assert_eq!(frame, other);
        std::thread::sleep(INDEX_INTERVAL);
        let (mem, layout, a) = (h.o.mem(), h.o.layout, h.a);
        assert_eq!(index.task_of(&mem, &layout, &a, other), Some(second));
        assert_eq!(index.task_of(&mem, &layout, &a, first_frame), Some(first));
        let roots = task_roots(&mem, &layout, &a, second);
        assert_eq!(roots.names, ["second"]);
        assert_eq!(roots.coro_code, 0x2000);
    }

    /// A task awaited by another holds the other's wakeup (a builtin method bound to it) among
    /// its done callbacks: the roots are the awaiting task's name, then its own.
    #[test]
    fn awaiters_are_the_tasks_callbacks_wake() {
        let mut h = Tasks312::new();
        let (outer, _) = h.task("outer", 0, 0x1000);
        let (inner, _) = h.task("inner", 0, 0x2000);
        let Registry::Module(m) = h.a.registry else {
            unreachable!()
        };
        // A builtin method named `name` bound to `outer`.
        let mut bound = |name: &str| {
            let m = h.o.object("builtin_function_or_method", 0, 64);
            h.o.word(m + BOUND_SELF, outer);
            let (def, text) = (h.o.alloc(32), h.o.alloc(32));
            h.o.put(text, format!("{name}\0").as_bytes());
            h.o.word(def, text);
            h.o.word(m + METHOD_DEF, def);
            m
        };
        let wakeup = bound("task_wakeup");
        // Another method of the task (its `cancel`) is no awaiter.
        let cancel = bound("cancel");
        // The first callback is the other method; the wakeup is in the list of the others.
        h.o.word(inner + m.callback0, cancel);
        let ctx = h.o.object("Context", 0, 64);
        let pair = h.o.tuple(&[wakeup, ctx]);
        let list = h.o.object("list", 0, 64);
        let items = h.o.alloc(8);
        h.o.word(items, pair);
        let list_size = h.o.layout.values.list_size as u64;
        h.o.word(list + list_size, 1);
        h.o.word(list + LIST_ITEMS, items);
        h.o.word(inner + m.callbacks, list);
        let (mem, layout, a) = (h.o.mem(), h.o.layout, h.a);
        assert_eq!(awaited_by(&mem, &layout, &a, inner).unwrap(), [outer]);
        assert_eq!(
            task_roots(&mem, &layout, &a, inner).names,
            ["outer", "inner"]
        );
        let target = layout.target_info(0);
        let tasks = read_tasks(&mem, &layout, &target, &a).unwrap();
        let names: Vec<_> = tasks
            .iter()
            .map(|t| (t.name.as_str(), t.awaited_by.clone()))
            .collect();
        assert_eq!(names, [("outer", vec![]), ("inner", vec![outer])]);
    }

    #[test]
    fn refuses_offsets_outside_their_struct() {
        let p = published("3.14", 14);
        let mut words = SECTION_3_14;
        words[6] = 168; // task_node at the task's end
        assert!(matches!(
            AsyncioLayout::parse(&bytes(&words), &p),
            Err(AsyncioError::OutOfRange {
                field: "task_node",
                ..
            })
        ));
        let mut words = SECTION_3_14;
        words[9] = 0; // a thread state of no size
        assert!(AsyncioLayout::parse(&bytes(&words), &p).is_err());
        assert!(AsyncioLayout::parse(&[0; 16], &p).is_err());
    }
}
