//! The `dump` command: prints the current Python stack of every thread of a process once, like
//! `py-spy dump`. No BPF: a blocked thread never runs on a CPU, so the CPU-clock sampler cannot
//! see it; the thread list and frame chains are read from /proc/PID/mem (`python::threads`),
//! code objects and line tables as `record` reads them. The threads are stopped for a moment
//! (`process::ptrace`) while their frames are read, as py-spy does (not with `--nonblocking`).
//! With `--native` they are stopped to take their registers and a copy of their stacks too;
//! after they run again the stacks are unwound in userspace with the kernel's
//! tables and step (`unwind::walk`) and named and merged as `record --native` names them
//! (`profile::naming`). With `--locals` each Python frame's local variables are read beside its
//! frame (`python::locals`), while the threads are stopped when they are. With
//! `--subprocesses` every Python process under the pid is dumped in turn. Threads are named as
//! Python names them (`python::thread_names`, else the kernel's name), and up to 3.10 a method's
//! frame as `Class.method` from its first argument (`python::methods`), read beside the frames
//! as the locals are. With `--async-aware` (3.11+) the asyncio tasks are read too
//! (`python::asyncio`), right after the threads, and each is printed with its coroutine chain (a
//! running task's taken from its thread's stack) and the tasks that await it. The text is written by
//! `render` (values by `repr`), the JSON by `json`. It ties those stages together and holds none
//! of their logic.

mod json;
mod repr;

use std::{
    collections::HashMap,
    fmt::Write as _,
    fs,
    io::{self, Write},
    time::Duration,
};

use crate::{
    process::{
        self, LocalMemory, ProcMem, ProcessError, ProcessMemory,
        ptrace::{self, PtraceError, Regs},
    },
    profile::{
        Frame,
        collect::FrameOptions,
        naming::{Namer, RawStack},
    },
    python::{
        self, Layout, UnsupportedVersion,
        asyncio::{self, AsyncioError, AsyncioLayout, Task},
        discover::{self, FindError, PythonProcess},
        instance::Interpreter,
        locals::{FrameLocals, LocalsReader},
        methods,
        threads::{ThreadStack, WalkError, gil_holder, walk_threads},
    },
    unwind::{KnownMapping, NativeTables, walk::LocalMaps, walk::unwind},
};

/// Reads of a running process can race with it (a frame popped while we follow it); a failed
/// walk is tried again this many times.
const ATTEMPTS: usize = 5;

/// How much of a stopped thread's stack is copied, from its stack pointer up (less where the
/// stack's mapping ends first). An unwind that reaches beyond it stops there, marked.
const STACK_COPY: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    Find(#[from] FindError),
    #[error("pid {pid}: {source}")]
    Unsupported {
        pid: u32,
        source: UnsupportedVersion,
    },
    #[error("pid {pid}: {source}")]
    Walk { pid: u32, source: WalkError },
    #[error(transparent)]
    Ptrace(#[from] PtraceError),
    #[error("reading pid {pid}'s executable mappings for --native: {source}")]
    Tables { pid: u32, source: io::Error },
    #[error("writing the dump: {0}")]
    Write(#[from] io::Error),
    #[error("pid {pid}: {source}")]
    Asyncio { pid: u32, source: AsyncioError },
    #[error("pid {pid}: reading its asyncio tasks: {source}")]
    Tasks { pid: u32, source: io::Error },
    #[error("no Python process in the tree of pid {pid} (it and its {descendants} descendants)")]
    NoPython { pid: u32, descendants: usize },
}

impl DumpError {
    pub fn is_permission(&self) -> bool {
        matches!(
            self,
            DumpError::Process(ProcessError::PermissionDenied { .. })
                | DumpError::Find(FindError::Process(ProcessError::PermissionDenied { .. }))
                | DumpError::Ptrace(PtraceError::PermissionDenied { .. })
        )
    }
}

/// A validated `dump` invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpConfig {
    pub pid: u32,
    /// Native frames too, with the Python frames in place of the eval loop's (`--native`).
    pub native: bool,
    /// Each Python frame's local variables (`--locals`).
    pub locals: bool,
    /// Every Python process in the tree under `pid`, `pid` included (`--subprocesses`).
    pub subprocesses: bool,
    /// JSON (`--json`, `json::SCHEMA_VERSION`) instead of py-spy's text.
    pub json: bool,
    /// The asyncio tasks too, each with its coroutine chain and its awaiters (`--async-aware`).
    pub async_aware: bool,
    /// Read the threads while they run (`--nonblocking`) instead of stopped for the read.
    pub nonblocking: bool,
    pub frames: FrameOptions,
}

/// What was read of a Python frame's locals, or why they could not be.
pub type LocalsRead = Result<FrameLocals, String>;

/// One frame as printed: with `--locals`, a Python frame's locals beside it.
#[derive(Clone, Debug, PartialEq)]
pub struct FrameDump {
    pub frame: Frame,
    pub locals: Option<LocalsRead>,
}

/// One process as printed.
#[derive(Clone, Debug)]
pub struct ProcessDump {
    pub process: PythonProcess,
    /// `3.12`, or `3.13t` for a free-threaded build.
    pub version: String,
    pub threads: Vec<ThreadDump>,
    /// With `--async-aware`: its asyncio tasks, in the order the interpreter lists them.
    pub tasks: Option<Vec<TaskDump>>,
}

/// One asyncio task as printed.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskDump {
    pub name: String,
    /// The task object's address, as `python -m asyncio ps` shows it.
    pub addr: u64,
    /// The thread running it now (as `ThreadDump::tid` numbers it), if it is running.
    pub running_in: Option<u64>,
    /// Its coroutine chain, leaf first: for a running task, its thread's frames down to the
    /// task's first coroutine (the event loop's frames below left out).
    pub frames: Vec<FrameDump>,
    /// The names of the tasks that await it.
    pub awaited_by: Vec<String>,
}

/// One thread as printed.
#[derive(Clone, Debug, PartialEq)]
pub struct ThreadDump {
    /// The kernel's thread id, as prof-bpf's pid namespace numbers it.
    pub tid: u64,
    /// Its id inside the process's own pid namespace (a container's), when that is not ours.
    pub ns_tid: Option<u64>,
    /// Python's name for it (`threading`'s), else `/proc/PID/task/TID/comm` if the thread
    /// still exists.
    pub name: Option<String>,
    /// The kernel's state letter's meaning (`sleeping`, `running`, ...).
    pub state: Option<String>,
    /// Not running on a CPU nor ready to (any state but `R`), as py-spy calls a thread idle.
    pub idle: Option<bool>,
    /// Whether it holds the GIL; None where that is not known (a free-threaded build has none).
    pub holds_gil: Option<bool>,
    /// Leaf first.
    pub frames: Vec<FrameDump>,
    pub truncated: bool,
}

pub fn run(cfg: &DumpConfig, out: &mut impl Write) -> Result<(), DumpError> {
    let mut dumps = Vec::new();
    if cfg.subprocesses {
        // The root must exist; anything in its tree that is not Python is passed over.
        process::proc_stat(cfg.pid).map_err(|e| ProcessError::from_proc(cfg.pid, "stat", e))?;
        let descendants = process::descendants(cfg.pid);
        let count = descendants.len();
        for pid in std::iter::once(cfg.pid).chain(descendants) {
            let p = match discover::find_python(pid) {
                Ok(Some(p)) => p,
                // Not Python, or gone since the tree was read.
                Ok(None)
                | Err(ProcessError::NoSuchProcess { .. } | ProcessError::Exited { .. }) => {
                    continue;
                }
                // Perhaps a Python: say why it could not be looked at.
                Err(e) => {
                    crate::note!("prof-bpf: pid {pid} left out: {e}");
                    continue;
                }
            };
            match dump_process(cfg, p) {
                Ok(d) => dumps.push(d),
                Err(e) => crate::note!("prof-bpf: pid {pid} left out: {e}"),
            }
        }
        if dumps.is_empty() {
            return Err(DumpError::NoPython {
                pid: cfg.pid,
                descendants: count,
            });
        }
    } else {
        dumps.push(dump_process(cfg, discover::inspect(cfg.pid)?)?);
    }
    let text = match cfg.json {
        true => json::render(&dumps),
        false => dumps
            .iter()
            .map(|d| {
                let mut text = render(&d.process, &d.version, &d.threads);
                if let Some(tasks) = &d.tasks {
                    text.push_str(&render_tasks(tasks));
                }
                text
            })
            .collect::<Vec<_>>()
            .join("\n"),
    };
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// One process, as `cfg` asks.
fn dump_process(cfg: &DumpConfig, p: PythonProcess) -> Result<ProcessDump, DumpError> {
    let mem = process::open_memory(p.pid)?;
    // Where the interpreter publishes its layout (3.13+), that one.
    let (layout, _) = python::layout_of(&mem, p.version, p.runtime_addr, p.runtime_size)
        .map_err(|source| DumpError::Unsupported { pid: p.pid, source })?;
    let asyncio = match cfg.async_aware {
        true => Some(
            asyncio::locate(&mem, &p, &layout)
                .map_err(|source| DumpError::Asyncio { pid: p.pid, source })?,
        ),
        false => None,
    };
    let ((threads, tasks), paused) = if cfg.native {
        let (dumped, paused) = dump_native(&p, &layout, cfg.frames, cfg.locals, asyncio.as_ref())?;
        (dumped, Some(paused))
    } else {
        let stop = !cfg.nonblocking;
        dump(&p, &layout, cfg.frames, cfg.locals, asyncio.as_ref(), stop)?
    };
    if let Some(paused) = paused {
        crate::note!(
            "prof-bpf: pid {}: the threads were stopped for {:.2} ms",
            p.pid,
            paused.as_secs_f64() * 1e3
        );
    }
    Ok(ProcessDump {
        version: layout.version_name(),
        process: p,
        threads,
        tasks: asyncio.map(|_| tasks),
    })
}

/// What the interpreter says of each thread besides its frames: their locals (with `locals`,
/// per thread and raw frame, leaf first, None for a shim) and which thread holds the GIL.
struct Extras {
    locals: Vec<Vec<Option<LocalsRead>>>,
    /// Up to 3.10 (no `co_qualname`): the class of each Python frame's method, per thread.
    classes: Vec<Vec<Option<String>>>,
    gil_holder: Option<Option<u64>>,
}

impl Extras {
    /// Read right after the walk that found `stacks` (while the threads are stopped, when they
    /// are).
    fn read(
        mem: &ProcMem,
        layout: &Layout,
        p: &PythonProcess,
        stacks: &[ThreadStack],
        locals: bool,
    ) -> Self {
        let gil_holder = match layout.free_threaded {
            true => None,
            false => gil_holder(mem, &layout.target_info_of(p)).ok(),
        };
        let locals = match locals {
            false => Vec::new(),
            true => {
                let mut reader = LocalsReader::new(mem, layout);
                stacks
                    .iter()
                    .map(|t| {
                        t.frames
                            .iter()
                            .zip(&t.frame_addrs)
                            .map(|(f, &addr)| {
                                (f.code != 0)
                                    .then(|| reader.frame(addr, f.code).map_err(|e| e.to_string()))
                            })
                            .collect()
                    })
                    .collect()
            }
        };
        let classes = match layout.values.methods {
            None => Vec::new(),
            Some(_) => stacks
                .iter()
                .map(|t| {
                    t.frames
                        .iter()
                        .zip(&t.frame_addrs)
                        .filter(|(f, _)| f.code != 0)
                        .map(|(f, &addr)| methods::frame_qualified_name(mem, layout, addr, f.code))
                        .collect()
                })
                .collect(),
        };
        Self {
            locals,
            classes,
            gil_holder,
        }
    }

    /// Whether thread `t` holds the GIL, where that is known.
    fn holds_gil(&self, t: &ThreadStack) -> Option<bool> {
        self.gil_holder.map(|h| h == Some(t.tstate))
    }

    /// The locals of the `i`-th thread's Python frames, leaf first (nothing without `--locals`),
    /// and their methods' qualified names (nothing from 3.11).
    fn of(&mut self, i: usize) -> (Vec<LocalsRead>, Vec<Option<String>>) {
        let locals = self
            .locals
            .get_mut(i)
            .map(|t| t.drain(..).flatten().collect())
            .unwrap_or_default();
        let classes = self
            .classes
            .get_mut(i)
            .map(std::mem::take)
            .unwrap_or_default();
        (locals, classes)
    }
}

/// What is read of a process: its threads, and its asyncio tasks when asked for.
pub type Dumped = (Vec<ThreadDump>, Vec<TaskDump>);

/// Every thread's stack, main thread first, and how long the threads were stopped.
///
/// With `stop`, every thread is stopped (`process::ptrace`) while its frames, the tasks and the
/// extras are read, so each stack is of one moment: a running thread read frame by frame can
/// return from a call and make another between two reads, and its stack would then join two
/// moments' frames. Naming comes after the threads run again. Where a thread cannot be stopped
/// (another tracer holds it), they are read running, and stderr says so.
pub fn dump(
    p: &PythonProcess,
    layout: &Layout,
    options: FrameOptions,
    locals: bool,
    asyncio: Option<&AsyncioLayout>,
    stop: bool,
) -> Result<(Dumped, Option<Duration>), DumpError> {
    let mem = process::open_memory(p.pid)?;
    let target = layout.target_info_of(p);
    let states = TaskStates::read(p.pid);
    let stopped = match stop {
        true => stop_for_reading(p.pid)?,
        false => None,
    };
    let mut attempt = 0;
    let (stacks, mut extras, tasks) = loop {
        attempt += 1;
        let walked = walk_threads(&mem, &target).and_then(|s| {
            let tasks = read_tasks(&mem, layout, &target, asyncio)?;
            Ok((s, tasks))
        });
        match walked {
            Ok((s, tasks)) => {
                let extras = Extras::read(&mem, layout, p, &s, locals);
                break (s, extras, tasks);
            }
            Err(_) if attempt < ATTEMPTS && p.is_alive() => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(source) if p.is_alive() => {
                return Err(DumpError::Walk { pid: p.pid, source });
            }
            Err(_) => return Err(ProcessError::Exited { pid: p.pid }.into()),
        }
    };
    let paused = stopped.map(ptrace::Stopped::resume);
    let mut names = Names::new(p, layout, options);
    let ids = ThreadIds::of(p);
    let mut threads: Vec<ThreadDump> = stacks
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let frames = names.frames(t, None, None, extras.of(i));
            let python_name = names.interpreter.thread_name(t.tid);
            thread_dump(
                p.pid,
                &ids,
                &states,
                t,
                frames,
                extras.holds_gil(t),
                python_name,
            )
        })
        .collect();
    let tasks = names.tasks(&tasks, &stacks, &ids);
    threads.sort_by_key(|t| t.tid);
    Ok(((threads, tasks), paused))
}

/// `pid`'s threads, stopped for a read; None, with a note on stderr, where one cannot be
/// stopped (another tracer holds it) and they are read running instead.
fn stop_for_reading(pid: u32) -> Result<Option<ptrace::Stopped>, DumpError> {
    match ptrace::stop_threads(pid) {
        Ok(stopped) => Ok(Some(stopped)),
        Err(PtraceError::Exited { pid }) => Err(ProcessError::Exited { pid }.into()),
        Err(e) => {
            crate::note!("prof-bpf: pid {pid}: reading its threads while they run: {e}");
            Ok(None)
        }
    }
}

/// The tasks, where `asyncio` says they are; a failed read is retried as a failed walk is.
fn read_tasks(
    mem: &ProcMem,
    layout: &Layout,
    target: &profiler_common::TargetInfo,
    asyncio: Option<&AsyncioLayout>,
) -> Result<Vec<Task>, WalkError> {
    match asyncio {
        None => Ok(Vec::new()),
        Some(a) => asyncio::read_tasks(mem, layout, target, a).map_err(WalkError::Threads),
    }
}

/// Names the threads' frames as `record` names its stacks, leaf first as `dump` prints them.
struct Names {
    interpreter: Interpreter,
    namer: Namer,
    options: FrameOptions,
}

impl Names {
    fn new(p: &PythonProcess, layout: &Layout, options: FrameOptions) -> Self {
        Self {
            interpreter: Interpreter::new(p.clone(), *layout),
            namer: Namer::default(),
            options,
        }
    }

    /// `t`'s frames, leaf first; mixed with its native stack (`pcs`, how the unwind ended) where
    /// there is one; each Python frame with its locals, if `locals` (leaf first) has them, and
    /// named `Class.method` where `classes` (leaf first) has a method's qualified name.
    fn frames(
        &mut self,
        t: &ThreadStack,
        mappings: Option<&[KnownMapping]>,
        native: Option<(&[u64], u32)>,
        (locals, classes): (Vec<LocalsRead>, Vec<Option<String>>),
    ) -> Vec<FrameDump> {
        let (pcs, end) = native.unwrap_or((&[], 0));
        let raw = RawStack {
            python: &t.frames,
            // Said on its own line by `render`.
            truncated: false,
            in_gc: t.in_gc,
            // The tasks are printed on their own.
            task: None,
            native: pcs,
            native_end: end,
            kernel: &[],
        };
        let named = self
            .namer
            .name_with_origin(Some(&mut self.interpreter), mappings, raw);
        // The Python frames come leaf first as `t.frames` (shims aside) does.
        let mut locals = locals.into_iter();
        let mut classes = classes.into_iter();
        named
            .into_iter()
            .rev()
            .map(|(f, python)| {
                let mut frame = match self.options.nolineno {
                    true => f.frame.without_line(),
                    false => f.frame,
                };
                if let (true, Some(Some(name)), Frame::Python(l)) =
                    (python, python.then(|| classes.next()).flatten(), &mut frame)
                {
                    l.function = name;
                }
                FrameDump {
                    frame,
                    locals: python.then(|| locals.next()).flatten(),
                }
            })
            .collect()
    }
}

impl Names {
    /// The tasks as printed: each one's chain named, a running task's taken from its thread's
    /// stack down to its first coroutine's frame.
    fn tasks(&mut self, tasks: &[Task], stacks: &[ThreadStack], ids: &ThreadIds) -> Vec<TaskDump> {
        let name_of = |addr: u64| {
            tasks
                .iter()
                .find(|t| t.addr == addr)
                .map_or_else(|| "?".to_string(), |t| t.name.clone())
        };
        tasks
            .iter()
            .map(|t| {
                // 3.11-3.13 say of no thread which task it runs: the thread whose stack holds
                // the task's first coroutine runs it.
                let running_in = t.running_in.or_else(|| {
                    let s = stacks
                        .iter()
                        .find(|s| t.coro_frame != 0 && s.frame_addrs.contains(&t.coro_frame))?;
                    Some(s.tid)
                });
                let on_stack = running_in.and_then(|tid| {
                    let s = stacks.iter().find(|s| s.tid == tid)?;
                    let at = s.frame_addrs.iter().position(|&f| f == t.coro_frame)?;
                    Some(s.frames[..=at].to_vec())
                });
                let chain = ThreadStack {
                    tid: 0,
                    tstate: 0,
                    frames: on_stack.unwrap_or_else(|| t.chain.clone()),
                    frame_addrs: Vec::new(),
                    truncated: false,
                    in_gc: false,
                };
                TaskDump {
                    name: t.name.clone(),
                    addr: t.addr,
                    running_in: running_in.map(|tid| ids.resolve(tid).0),
                    frames: self.frames(&chain, None, None, (Vec::new(), Vec::new())),
                    awaited_by: t.awaited_by.iter().map(|&a| name_of(a)).collect(),
                }
            })
            .collect()
    }
}

/// How the interpreter's thread ids (`native_thread_id`) map to the kernel's: the same, or,
/// for a process in a container, its namespace's ids mapped to ours.
struct ThreadIds {
    /// Host tid by namespace tid; None when the process is in our pid namespace.
    host: Option<HashMap<u32, u32>>,
}

impl ThreadIds {
    fn of(p: &PythonProcess) -> Self {
        Self {
            host: p
                .pid_namespace
                .map(|_| process::namespace::host_tids(p.pid)),
        }
    }

    /// (our tid, the tid inside the container) of a thread the interpreter names `tid`.
    fn resolve(&self, tid: u64) -> (u64, Option<u64>) {
        match &self.host {
            None => (tid, None),
            Some(host) => {
                let ours = u32::try_from(tid).ok().and_then(|t| host.get(&t));
                // A thread gone since: its id inside stands alone.
                (ours.map_or(tid, |&h| h as u64), Some(tid))
            }
        }
    }
}

/// A thread as printed: its frames (leaf first), its name (Python's, `python_name`, else the
/// kernel's) and what /proc says of it now.
fn thread_dump(
    pid: u32,
    ids: &ThreadIds,
    states: &TaskStates,
    t: &ThreadStack,
    frames: Vec<FrameDump>,
    holds_gil: Option<bool>,
    python_name: Option<String>,
) -> ThreadDump {
    let (tid, ns_tid) = ids.resolve(t.tid);
    let task = format!("/proc/{pid}/task/{tid}");
    let name = python_name.or_else(|| {
        fs::read_to_string(format!("{task}/comm"))
            .ok()
            .map(|s| s.trim_end().to_string())
    });
    let letter = states.of(tid).or_else(|| task_state(&task));
    ThreadDump {
        tid,
        ns_tid,
        name,
        state: letter.as_deref().map(state_name),
        idle: letter.map(|l| l != "R"),
        holds_gil,
        frames,
        truncated: t.truncated,
    }
}

/// The state letter (`R`, `S`, ...) of every thread of a process, as read before its threads
/// are stopped: a thread stopped under ptrace, and one let go a moment ago, are in neither
/// state they were in.
struct TaskStates(HashMap<u64, String>);

impl TaskStates {
    fn read(pid: u32) -> Self {
        let task = format!("/proc/{pid}/task");
        let states = fs::read_dir(&task)
            .into_iter()
            .flatten()
            .filter_map(|e| {
                let name = e.ok()?.file_name();
                let tid: u64 = name.to_str()?.parse().ok()?;
                Some((tid, task_state(&format!("{task}/{tid}"))?))
            })
            .collect();
        Self(states)
    }

    fn of(&self, tid: u64) -> Option<String> {
        self.0.get(&tid).cloned()
    }
}

/// The state letter in `task`'s (a /proc/PID/task/TID directory's) `stat`.
fn task_state(task: &str) -> Option<String> {
    let stat = fs::read_to_string(format!("{task}/stat")).ok()?;
    Some(
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .next()?
            .to_string(),
    )
}

/// A stopped thread: its registers and a copy of its stack from the stack pointer up.
struct Captured {
    regs: Regs,
    stack: LocalMemory,
}

/// Every thread's mixed stack, main thread first, and how long the threads were stopped.
///
/// The unwind tables are built before anything is stopped (reading and converting the files'
/// CFI is the slow part). Then every thread is stopped; its registers, a copy of its stack and
/// the interpreter's frames are read; the threads run again; and only then are the stacks
/// unwound, named and merged. A thread that exits meanwhile is left out.
pub fn dump_native(
    p: &PythonProcess,
    layout: &Layout,
    options: FrameOptions,
    locals: bool,
    asyncio: Option<&AsyncioLayout>,
) -> Result<(Dumped, Duration), DumpError> {
    let pid = p.pid;
    let mem = process::open_memory(pid)?;
    let mut tables = NativeTables::default();
    let mut maps = LocalMaps::default();
    tables.refresh(pid, &mut maps).map_err(|source| {
        match ProcessError::from_proc(pid, "maps", source) {
            ProcessError::Io { source, .. } => DumpError::Tables { pid, source },
            e => e.into(),
        }
    })?;
    let mut target = layout.target_info_of(p);
    target.frame_is_entry = layout.entry_flag;

    let states = TaskStates::read(pid);
    let stopped = ptrace::stop_threads(pid)?;
    // Read while stopped: the stacks of threads started since the tables were built are here.
    let areas = process::read_maps(pid).unwrap_or_default();
    let mut captured: HashMap<u64, Captured> = HashMap::new();
    for tid in stopped.tids() {
        // A thread that died since it was stopped has no registers: left out.
        let Ok(regs) = stopped.regs(tid) else {
            continue;
        };
        let len = areas
            .iter()
            .find(|m| m.start <= regs.rsp && regs.rsp < m.end)
            .map_or(0, |m| (m.end - regs.rsp).min(STACK_COPY));
        let bytes = mem.read_vec(regs.rsp, len as usize).unwrap_or_default();
        captured.insert(
            tid as u64,
            Captured {
                regs,
                stack: LocalMemory {
                    base: regs.rsp,
                    bytes,
                },
            },
        );
    }
    let walked = walk_threads(&mem, &target).and_then(|s| {
        let tasks = read_tasks(&mem, layout, &target, asyncio)?;
        let extras = Extras::read(&mem, layout, p, &s, locals);
        Ok((s, extras, tasks))
    });
    let paused = stopped.resume();
    let (stacks, mut extras, tasks) = match walked {
        Ok(s) => s,
        Err(_) if !p.is_alive() => return Err(ProcessError::Exited { pid }.into()),
        Err(source) => return Err(DumpError::Walk { pid, source }),
    };

    // A library mapped between building the tables and stopping the threads: add it.
    let _ = tables.refresh(pid, &mut maps);
    let mut names = Names::new(p, layout, options);
    let ids = ThreadIds::of(p);
    let mut threads = Vec::new();
    for (i, t) in stacks.iter().enumerate() {
        let (tid, _) = ids.resolve(t.tid);
        let locals = extras.of(i);
        let frames = match captured.get(&tid) {
            Some(c) => {
                let regs = (c.regs.rip, c.regs.rsp, c.regs.rbp);
                let native = unwind(maps.tables(pid), regs, &c.stack);
                names.frames(
                    t,
                    Some(tables.mappings(pid)),
                    Some((&native.pcs, native.end as u32)),
                    locals,
                )
            }
            // Not stopped: it exited before it could be.
            None if !fs::exists(format!("/proc/{pid}/task/{tid}")).unwrap_or(false) => {
                continue;
            }
            None => names.frames(t, None, None, locals),
        };
        let python_name = names.interpreter.thread_name(t.tid);
        threads.push(thread_dump(
            pid,
            &ids,
            &states,
            t,
            frames,
            extras.holds_gil(t),
            python_name,
        ));
    }
    let tasks = names.tasks(&tasks, &stacks, &ids);
    threads.sort_by_key(|t| t.tid);
    Ok(((threads, tasks), paused))
}

/// `S` -> `sleeping`, as ps(1) documents the letters.
fn state_name(letter: &str) -> String {
    match letter {
        "R" => "running",
        "S" => "sleeping",
        "D" => "waiting for I/O",
        "T" | "t" => "stopped",
        "Z" => "zombie",
        other => return other.to_string(),
    }
    .to_string()
}

/// py-spy's layout: a line per process, then per thread its id, name and state, and its frames
/// leaf first, indented.
pub fn render(p: &PythonProcess, version: &str, threads: &[ThreadDump]) -> String {
    let mut out = String::new();
    let ns = p
        .ns_pid
        .map(|n| format!(" (pid {n} in its namespace)"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "Process {}{ns}: {} ({}, CPython {})",
        p.pid,
        p.name,
        p.binary.display(),
        version
    );
    for t in threads {
        let _ = writeln!(out);
        let _ = write!(out, "Thread {}", t.tid);
        if let Some(ns_tid) = t.ns_tid {
            let _ = write!(out, " (tid {ns_tid} in its namespace)");
        }
        if let Some(name) = &t.name {
            let _ = write!(out, " \"{name}\"");
        }
        match (&t.state, t.holds_gil) {
            (Some(state), Some(true)) => {
                let _ = write!(out, " ({state}, holding the GIL)");
            }
            (Some(state), _) => {
                let _ = write!(out, " ({state})");
            }
            (None, Some(true)) => {
                let _ = write!(out, " (holding the GIL)");
            }
            (None, _) => {}
        }
        let _ = writeln!(out);
        if t.frames.is_empty() {
            let _ = writeln!(out, "    (no Python frame: idle or outside Python code)");
        }
        for f in &t.frames {
            let _ = writeln!(out, "    {}", f.frame.label());
            match &f.locals {
                None => {}
                Some(Err(why)) => {
                    let _ = writeln!(out, "        [locals unreadable: {why}]");
                }
                Some(Ok(l)) => {
                    for local in &l.locals {
                        let _ =
                            writeln!(out, "        {} = {}", local.name, repr::repr(&local.value));
                    }
                    if l.omitted > 0 {
                        let _ = writeln!(out, "        [{} more locals not shown]", l.omitted);
                    }
                }
            }
        }
        if t.truncated {
            let _ = writeln!(
                out,
                "    [truncated: deeper than {} frames]",
                profiler_common::MAX_PYTHON_FRAMES
            );
        }
    }
    out
}

/// The tasks, each with its state, its coroutine chain (leaf first, as threads print their
/// frames) and the tasks that await it.
pub fn render_tasks(tasks: &[TaskDump]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\nasyncio tasks: {}", tasks.len());
    for t in tasks {
        let _ = writeln!(out);
        let _ = write!(out, "Task \"{}\" (0x{:x}", t.name, t.addr);
        let _ = match t.running_in {
            Some(tid) => writeln!(out, ", running in thread {tid})"),
            None => writeln!(out, ", waiting)"),
        };
        if t.frames.is_empty() {
            let _ = writeln!(out, "    (no coroutine frame: finished or not started)");
        }
        for f in &t.frames {
            let _ = writeln!(out, "    {}", f.frame.label());
        }
        if !t.awaited_by.is_empty() {
            let quoted: Vec<String> = t.awaited_by.iter().map(|n| format!("\"{n}\"")).collect();
            let _ = writeln!(out, "    awaited by {}", quoted.join(", "));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::locals::{Local, Value};

    #[test]
    fn renders_like_py_spy() {
        let p = PythonProcess {
            pid: 10,
            name: "python3".into(),
            binary: "/usr/bin/python3.11".into(),
            version: python::Version::new(3, 11),
            runtime_addr: 0,
            runtime_size: None,
            start_time: 0,
            ns_pid: None,
            pid_namespace: None,
        };
        let f = |name: &str, line, locals| FrameDump {
            frame: Frame::python(name, "a.py", line),
            locals,
        };
        let int = |n| Value::Int {
            negative: false,
            digits: vec![n],
        };
        let locals = FrameLocals {
            locals: vec![
                Local {
                    name: "n".into(),
                    value: int(3),
                },
                Local {
                    name: "s".into(),
                    value: Value::Str {
                        prefix: "hi".into(),
                        chars: 2,
                    },
                },
            ],
            omitted: 2,
        };
        let threads = vec![
            ThreadDump {
                tid: 10,
                ns_tid: None,
                name: Some("python3".into()),
                state: Some(state_name("S")),
                idle: Some(true),
                holds_gil: Some(false),
                frames: vec![
                    f("wait", 3, Some(Ok(locals))),
                    f("<module>", 9, Some(Err("reading memory: gone".into()))),
                ],
                truncated: false,
            },
            ThreadDump {
                tid: 11,
                ns_tid: None,
                name: None,
                state: None,
                idle: None,
                holds_gil: Some(true),
                frames: vec![],
                truncated: false,
            },
        ];
        assert_eq!(
            render(&p, "3.11", &threads),
            "Process 10: python3 (/usr/bin/python3.11, CPython 3.11)\n\n\
             Thread 10 \"python3\" (sleeping)\n    wait (a.py:3)\n        n = 3\n        s = 'hi'\n\
             \x20       [2 more locals not shown]\n    <module> (a.py:9)\n\
             \x20       [locals unreadable: reading memory: gone]\n\n\
             Thread 11 (holding the GIL)\n    (no Python frame: idle or outside Python code)\n"
        );
    }
}
