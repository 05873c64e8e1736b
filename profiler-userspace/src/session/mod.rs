//! The sampling session `record`, `top` and `agent` share: the kernel program (`bpf`), the
//! processes registered with it (found by `python::discover`, followed by the kernel's fork,
//! exec and exit reports and by `process::watch`), their
//! interpreters and native tables, and the collector their stacks go to. It hands what the
//! kernel drains to naming and aggregation; it writes nothing and draws nothing.

mod launch;
mod tables;

use std::{
    collections::{HashMap, HashSet},
    io,
    os::fd::{AsFd as _, OwnedFd},
    process::{Child, ExitStatus},
    rc::Rc,
    sync::atomic::AtomicBool,
    time::{Duration, Instant},
};

use profiler_common::{OffCpuStart, ProcessEvent, SampleKey, Stat, count_kind, mix, process_event};

pub use launch::{LAUNCH_TIMEOUT, stop_child};

use crate::{
    bpf::{
        self, Announced, BpfError, Drained, Follow, KernelFeatures, RawExtra, RunTime, Sampler,
        SamplerOptions, Stats,
    },
    cache::BoundedCache,
    privilege::NotPrivileged,
    process::{
        self, ProcessError,
        watch::{Change, Scope, Verdict, Watcher},
    },
    profile::{
        ProcessInfo, Profile,
        collect::{Collector, FrameOptions, Totals, Window},
        naming::{Namer, RawStack as NamingInput},
    },
    python::{
        self, Layout, LayoutSource, UnsupportedVersion,
        asyncio::TaskRoots,
        discover::{self, FindError, PythonProcess},
        instance::Interpreter,
        threads::walk_threads,
    },
    symbolize::kernel::KernelSymbols,
    unwind::LoadStats,
};

use tables::TableLoader;

/// How often `record` and `top` scan /proc for processes that started, forked, exec'd or ended
/// (`SessionOptions::rescan`). With `--subprocesses` and `--all` the kernel reports forks,
/// execs and exits as they happen; the scan catches what those miss.
pub const SCAN_INTERVAL: Duration = Duration::from_millis(100);
/// How often a process that exec'd is looked at while it loads its new program.
const EXEC_POLL: Duration = Duration::from_millis(5);
/// How long a process that exec'd a program not named like Python is looked at while glibc's
/// loader maps its libraries (an embedded libpython comes with them); then it is left to the
/// /proc scan.
const LOADER_GRACE: Duration = Duration::from_millis(100);
/// Marks the ids of stacks userspace read itself (threads blocked at registration, `--idle`):
/// the kernel's ids are content hashes, and one with this bit is as unlikely as any collision.
const SEEDED_STACK: u64 = 1 << 63;

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
/// Raw stacks kept from the kernel, for counts of a second process with the same stack (forked
/// workers share code addresses), counts that come a drain after their stack, and the stacks
/// of the count entries kept across drains (`Sampler::settle_counts`), which the kernel does
/// not store again: each settle marks those used, and the two count maps keep at most half as
/// many entries as this holds.
const RAW_STACKS: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    NotPrivileged(#[from] NotPrivileged),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    Find(#[from] FindError),
    #[error("pid {pid}: {source}")]
    Unsupported {
        pid: u32,
        source: UnsupportedVersion,
    },
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error("cannot launch `{program}`: {source}")]
    Launch { program: String, source: io::Error },
    #[error("`{program}` exited ({status}) before a Python interpreter was seen in it")]
    ExitedEarly { program: String, status: ExitStatus },
    #[error("`{program}` (pid {pid}) loaded no Python interpreter within {}s: it is not a Python program", LAUNCH_TIMEOUT.as_secs())]
    LaunchedNotPython { program: String, pid: u32 },
    #[error(
        "pid {pid}: --gil keeps only samples of threads holding the GIL, but python {version} is \
         a free-threaded build (free-threaded: no GIL)"
    )]
    GilFreeThreaded { pid: u32, version: String },
    #[error(
        "--rate {rate} is above the kernel's limit of {max} samples per second (/proc/sys/kernel/perf_event_max_sample_rate)"
    )]
    RateTooHigh { rate: u64, max: u64 },
}

impl SessionError {
    pub fn is_permission(&self) -> bool {
        match self {
            SessionError::NotPrivileged(_)
            | SessionError::Process(ProcessError::PermissionDenied { .. })
            | SessionError::Find(FindError::Process(ProcessError::PermissionDenied { .. })) => true,
            SessionError::Bpf(e) => e.is_permission(),
            _ => false,
        }
    }
}

/// What to profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Pid(u32),
    Launch(Vec<String>),
    /// Every Python process (`--all`).
    All,
}

/// Why sampling stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    TargetExited,
    Duration,
    Signal,
    /// Sampling failed; what was recorded before is still written.
    Error,
}

/// What `Session::start` needs besides the target.
#[derive(Clone, Copy, Debug)]
pub struct SessionOptions {
    pub rate_hz: u64,
    pub sampler: SamplerOptions,
    pub frames: FrameOptions,
    /// Follow child processes (`--subprocesses`).
    pub subprocesses: bool,
    /// Kernel frames on top (`--kernel`).
    pub kernel: bool,
    /// How often /proc is scanned in full (and once at the start). The kernel's fork, exec and
    /// exit reports (`--subprocesses`, `--all`) register and retire processes as they come and
    /// go; the scan is what finds the rest (a lost report, a libpython loaded late) and, without
    /// those reports, the only way processes are found.
    pub rescan: Duration,
}

/// What is left of a `Session` once sampling stopped.
pub struct Finished {
    pub stats: Stats,
    pub run_time: Option<RunTime>,
    pub followed: usize,
    pub collector: Collector,
    pub child: Option<Child>,
    pub skipped: Vec<String>,
    /// With `--native`: what loading unwind tables met, and native frames left unnamed by
    /// reason.
    pub native: Option<(LoadStats, Vec<(String, u64)>)>,
    /// The path the kernel program took on this kernel.
    pub kernel: KernelFeatures,
}

/// Native-and-kernel stack parts kept from the kernel (a stack may come a drain after its part).
const RAW_EXTRAS: usize = 8 * 1024;

/// A kept stack and its native and kernel part, as naming takes them.
fn naming_input<'a>(
    stack: &'a bpf::RawStack,
    extra: Option<&'a RawExtra>,
    task: Option<&'a TaskRoots>,
) -> NamingInput<'a> {
    NamingInput {
        python: &stack.frames,
        truncated: stack.truncated,
        in_gc: stack.in_gc,
        task,
        native: extra.map_or(&[], |e| e.native.as_slice()),
        native_end: extra.map_or(0, |e| e.native_end),
        kernel: extra.map_or(&[], |e| e.kernel.as_slice()),
    }
}

/// What is being sampled: the kernel program, the processes registered with it (with their
/// interpreters and native tables), the stacks named so far and what they counted, the watcher
/// that finds processes coming and going, and, for a launched command, the child.
pub struct Session {
    sampler: Sampler,
    collector: Collector,
    namer: Namer,
    /// The registered processes' interpreters, by pid.
    interpreters: HashMap<u32, Interpreter>,
    /// Recent raw stacks by the kernel's id.
    raw: BoundedCache<u64, bpf::RawStack>,
    /// Recent native-and-kernel parts by the kernel's id.
    extras: BoundedCache<u64, RawExtra>,
    /// The roots of recent task stacks by the kernel's id, read at their first naming since
    /// the kernel last stored them: a count at a native instruction is named later, when the
    /// task may be gone.
    task_roots: BoundedCache<u64, Rc<TaskRoots>>,
    /// The task stacks announced since the last drain.
    announced_tasks: HashSet<u64>,
    watcher: Watcher,
    pub child: Option<Child>,
    /// A --pid target (Python or, with --subprocesses, a launcher): its pid and start time, so
    /// a reused pid is not the target.
    target_pid: Option<(u32, u64)>,
    /// A pidfd of the launched child or the --pid target (`pidfd_open`, 5.3+): readable once it
    /// exits, so a poll ends then rather than at its timeout; dropped once it has woken one.
    exit_fd: Option<OwnedFd>,
    /// The first process registered (the one named by --pid or launched), for labels.
    first: Option<PythonProcess>,
    /// Python processes found but not profiled, and why.
    skipped: Vec<String>,
    last_scan: Option<Instant>,
    /// Native unwind tables (`--native`), per target, and the thread that loads them.
    tables: Option<TableLoader>,
    /// Processes that exec'd, looked at until their new program shows what it is (or the
    /// launch timeout passes).
    exec_pending: HashMap<u32, Instant>,
    /// Registered processes that ended (the kernel said so, or a forked child was gone before
    /// it was registered): retired after the next drain, which takes their last counts.
    retire: Vec<u32>,
    /// The kernel's copies of code objects of processes not registered yet (`take_code_snapshots`).
    waiting_snapshots: Vec<profiler_common::CodeSnapshot>,
    /// Stacks of threads found blocked at registration (`--idle`), numbered.
    seeded: u64,
    /// Threads shown by the kernel's name for want of Python's (`threading` not imported yet,
    /// or the thread not registered with it yet), by pid and tid, with the id the interpreter
    /// knows them by and when they were first seen: asked again at each drain for
    /// `NAME_WAIT`.
    unnamed: HashMap<(u32, u32), (u64, Instant)>,
    options: SessionOptions,
}

impl Session {
    /// Checks the target, loads the kernel program, launches the command if there is one (only
    /// once the kernel program is sampling) and registers what is Python of it.
    pub fn start(
        target: &Target,
        options: SessionOptions,
        stop: &AtomicBool,
    ) -> Result<Self, SessionError> {
        let follow = match (target, options.subprocesses) {
            (Target::All, _) => Follow::All,
            (_, true) => Follow::Named,
            (_, false) => Follow::Nobody,
        };
        let sampler_options = SamplerOptions {
            follow,
            kernel: options.kernel,
            ..options.sampler
        };
        let start_sampler = || Sampler::start(options.rate_hz, sampler_options);
        // Everything that can be checked without the kernel is checked before loading it.
        let (mut sampler, first, child) = match target {
            Target::Pid(pid) => match discover::inspect(*pid) {
                Ok(p) => {
                    let layout = supported_layout(&p)?;
                    check_gil(&p, &layout, options)?;
                    (start_sampler()?, Some((p, layout)), None)
                }
                // With --subprocesses a launcher (a shell, a job runner) is followed to the
                // Python processes it starts.
                Err(FindError::NotPython { .. }) if options.subprocesses => {
                    (start_sampler()?, None, None)
                }
                Err(e) => return Err(e.into()),
            },
            Target::Launch(cmd) => {
                launch::check_program(&cmd[0])?;
                let mut sampler = start_sampler()?;
                let mut c = launch::launch(cmd)?;
                if follow == Follow::Named {
                    sampler.follow(c.id())?;
                }
                // With --subprocesses the command itself need not be Python (a shell script,
                // a launcher): the watcher finds the Python processes under it.
                let first = if options.subprocesses {
                    None
                } else {
                    match launch::wait_for_python(&mut c, &cmd[0], stop).and_then(|(p, layout)| {
                        check_gil(&p, &layout, options).map(|()| (p, layout))
                    }) {
                        Ok(found) => Some(found),
                        Err(e) => {
                            let _ = c.kill();
                            let _ = c.wait();
                            return Err(e);
                        }
                    }
                };
                (sampler, first, Some(c))
            }
            Target::All => (start_sampler()?, None, None),
        };
        // A launcher (`unshare ... chroot ROOT python`, a shell) whose Python is a descendant:
        // that process is the one watched.
        let root = match (target, &child, &first) {
            (Target::Pid(pid), _, _) => Some(*pid),
            (_, Some(_), Some((p, _))) => Some(p.pid),
            (_, Some(c), None) => Some(c.id()),
            _ => None,
        };
        if let (Target::Pid(pid), Follow::Named) = (target, follow) {
            sampler.follow(*pid)?;
        }
        let watcher = Watcher::new(match (root, options.subprocesses) {
            (None, _) => Scope::All,
            (Some(root), true) => Scope::Tree(vec![root]),
            (Some(root), false) => Scope::One(root),
        });
        let tables = match options.sampler.native {
            true => Some(TableLoader::start(sampler.take_table_maps()?).map_err(BpfError::Native)?),
            false => None,
        };
        let namer = Namer {
            kernel: options
                .kernel
                .then(|| KernelSymbols::load().unwrap_or_default()),
            ..Namer::default()
        };
        let mut session = Self {
            sampler,
            collector: Collector::new(options.frames),
            namer,
            interpreters: HashMap::new(),
            unnamed: HashMap::new(),
            raw: BoundedCache::new(RAW_STACKS),
            extras: BoundedCache::new(RAW_EXTRAS),
            task_roots: BoundedCache::new(RAW_EXTRAS),
            announced_tasks: HashSet::new(),
            watcher,
            exit_fd: match (&child, target) {
                (Some(c), _) => process::pidfd(c.id()),
                (None, Target::Pid(pid)) => process::pidfd(*pid),
                _ => None,
            },
            child,
            target_pid: match target {
                Target::Pid(pid) => Some((*pid, process::start_time(*pid)?)),
                _ => None,
            },
            first: None,
            skipped: Vec::new(),
            last_scan: None,
            tables,
            exec_pending: HashMap::new(),
            retire: Vec::new(),
            waiting_snapshots: Vec::new(),
            seeded: 0,
            options,
        };
        if let Some((p, layout)) = first {
            session.watcher.know(p.pid, p.start_time);
            session.register(p, layout)?;
        }
        Ok(session)
    }

    /// Registers a Python process with the kernel, the collector and the namer. With
    /// `--native` its unwind tables go first, so its first samples already unwind.
    fn register(&mut self, p: PythonProcess, layout: Layout) -> Result<(), SessionError> {
        self.register_from(p, layout, None)
    }

    /// `register` of a process forked from `parent` (a registered one) if given.
    fn register_from(
        &mut self,
        p: PythonProcess,
        layout: Layout,
        parent: Option<u32>,
    ) -> Result<(), SessionError> {
        let mut info = layout.target_info_of(&p);
        let pid = p.pid;
        // A pid reused since a process with it ended: the new process stays.
        self.retire.retain(|&r| r != pid);
        self.collector.add_process(ProcessInfo {
            pid,
            name: p.name.clone(),
            version: layout.version_name(),
            ns_pid: p.ns_pid,
        });
        self.first.get_or_insert_with(|| p.clone());
        let mut interpreter = match parent {
            Some(parent) => Interpreter::forked(p, layout, parent),
            None => Interpreter::new(p, layout),
        };
        if self.options.frames.async_aware {
            let task = process::open_memory(pid)
                .map_err(|e| e.to_string())
                .and_then(|mem| {
                    python::asyncio::kernel_task(&mem, &interpreter.process, &layout)
                        .map_err(|e| e.to_string())
                });
            match task {
                Ok(python::asyncio::KernelTask::RunningTask(at)) => {
                    info.tstate_running_task = at;
                    interpreter.name_tasks();
                }
                // The walk without `bpf_loop` notes no coroutine frame.
                Ok(python::asyncio::KernelTask::OutermostCoroutine)
                    if !self.sampler.features.bpf_loop =>
                {
                    crate::note!(
                        "prof-bpf: pid {pid}: tasks of CPython 3.11-3.13 need a kernel with \
                         bpf_loop (5.17+); recorded without tasks"
                    )
                }
                Ok(python::asyncio::KernelTask::OutermostCoroutine) => {
                    info.options |= profiler_common::target_options::OUTERMOST_COROUTINE;
                    interpreter.name_tasks();
                }
                Err(why) => crate::note!("prof-bpf: pid {pid}: {why}; recorded without tasks"),
            }
        }
        self.interpreters.insert(pid, interpreter);
        if let Some(tables) = &self.tables {
            tables.add(pid).map_err(BpfError::Native)?;
            info.frame_is_entry = layout.entry_flag;
            info.options |= profiler_common::target_options::NATIVE_STACKS;
        }
        if self.options.kernel {
            info.options |= profiler_common::target_options::KERNEL_STACKS;
        }
        self.sampler.add_target(pid, info)?;
        // After the kernel samples it: reading the threading registry takes a few ms.
        if let Some(interpreter) = self.interpreters.get_mut(&pid) {
            interpreter.refresh_thread_names();
        }
        if self.options.sampler.idle {
            self.seed_blocked_threads(pid);
        }
        Ok(())
    }

    /// `--idle` on the wall clock: a thread already blocked when its process is registered
    /// never leaves the CPU while watched, so the scheduler program would not see it. Its
    /// Python stack is read from the process now and it is marked off the CPU since now, as if
    /// it had just blocked there. Best effort: a process that cannot be walked is left to the
    /// scheduler program.
    fn seed_blocked_threads(&mut self, pid: u32) {
        let Some(interp) = self.interpreters.get(&pid) else {
            return;
        };
        let target = interp.layout.target_info(interp.process.runtime_addr);
        let Ok(mem) = process::open_memory(pid) else {
            return;
        };
        let Ok(threads) = walk_threads(&mem, &target) else {
            return;
        };
        for t in threads.iter().filter(|t| !t.frames.is_empty()) {
            let tid = t.tid as u32;
            if !process::thread_is_blocked(pid, tid) {
                continue;
            }
            // An id no content hash of the kernel's takes in practice: the top bit set.
            self.seeded += 1;
            let stack_id = SEEDED_STACK | self.seeded;
            self.keep_raw(
                stack_id,
                bpf::RawStack {
                    frames: t.frames.clone(),
                    truncated: t.truncated,
                    in_gc: t.in_gc,
                    extra: 0,
                    task: 0,
                },
                false,
            );
            self.name_stack(pid, stack_id, 0, false);
            let start = OffCpuStart {
                pid,
                _pad: 0,
                since_ns: monotonic_ns(),
                stack_id,
            };
            let _ = self.sampler.seed_off_cpu(tid, start);
        }
    }

    /// `--idle` on the wall clock: threads still off the CPU when recording stops count up to
    /// the end.
    fn close_off_cpu_intervals(&mut self) -> Result<(), SessionError> {
        let now = monotonic_ns();
        for (tid, start) in self.sampler.off_cpu_now()? {
            if !self.interpreters.contains_key(&start.pid) {
                continue;
            }
            self.name_stack(start.pid, start.stack_id, 0, false);
            let key = SampleKey {
                pid: start.pid,
                tid,
                stack_id: start.stack_id,
                leaf: 0,
                kind: count_kind::OFF_CPU_NS,
                _pad: 0,
            };
            let (interpreters, unnamed) = (&mut self.interpreters, &mut self.unnamed);
            self.collector
                .add_count(key, now.saturating_sub(start.since_ns), || {
                    thread_label(interpreters, unnamed, start.pid, tid)
                });
        }
        Ok(())
    }

    /// With `--native`: loads the tables of libraries every registered process mapped since the
    /// last call (an `import numpy`). Between calls the loader thread loads them as soon as
    /// the kernel meets one.
    fn refresh_all_tables(&mut self) -> Result<(), SessionError> {
        if let Some(tables) = &self.tables {
            tables.refresh_all().map_err(BpfError::Native)?;
        }
        Ok(())
    }

    /// Forgets registered process `pid`, which ended or exec'd: its counts were drained.
    fn unregister(&mut self, pid: u32) {
        self.collector.remove_process(pid);
        self.interpreters.remove(&pid);
        if let Some(tables) = &self.tables {
            tables.remove(pid);
        }
    }

    /// The process named by `--pid` or launched (or the first found), if it is Python.
    pub fn first_process(&self) -> Option<&PythonProcess> {
        self.first.as_ref()
    }

    /// `first_process` as the summary names it: `python3.13t (pid 42, CPython 3.13t)`, with
    /// its pid in a container where it has one.
    pub fn first_described(&self) -> Option<String> {
        let pid = self.first.as_ref()?.pid;
        let info = self
            .collector
            .processes()
            .iter()
            .rev()
            .find(|p| p.pid == pid)?;
        Some(info.describe())
    }

    /// The pid of the process named by `--pid` or launched.
    pub fn root_pid(&self) -> Option<u32> {
        match (&self.target_pid, &self.child) {
            (Some((pid, _)), _) => Some(*pid),
            (_, Some(c)) => Some(c.id()),
            _ => None,
        }
    }

    /// Waits up to `timeout` for new stacks (naming them at once, while their code objects are
    /// surely alive), then, when one is due, scans for processes that started or ended and
    /// registers or retires them.
    pub fn poll(&mut self, timeout: Duration) -> Result<(), SessionError> {
        let timeout = match self.exec_pending.is_empty() {
            true => timeout,
            false => timeout.min(EXEC_POLL),
        };
        let wake = self.exit_fd.as_ref().map(|f| f.as_fd());
        let (announced, woken) = self.sampler.wait_for_new_stacks(timeout, wake)?;
        if woken {
            // Readable from now on: once is enough.
            self.exit_fd = None;
        }
        self.take_notices(announced)?;
        self.check_exec_pending()?;
        if self
            .last_scan
            .is_none_or(|t| t.elapsed() >= self.options.rescan)
        {
            let changes = self.watcher.scan(classify);
            if !changes.is_empty() {
                // Counts so far belong to the processes registered so far.
                self.drain()?;
                self.apply(changes)?;
            }
            self.last_scan = Some(Instant::now());
        }
        Ok(())
    }

    /// Acts on the forks, execs and exits the kernel reported: a forked child of a registered
    /// Python is registered as a copy of its parent (the kernel samples it already); a process
    /// that exec'd is retired and looked at until its new program shows what it is, and so is a
    /// child it forked meanwhile; a registered process that ended is retired.
    fn follow(&mut self, events: Vec<ProcessEvent>) -> Result<(), SessionError> {
        for e in events {
            match e.kind {
                process_event::FORK if self.exec_pending.contains_key(&e.parent) => {
                    self.exec_pending.insert(e.pid, Instant::now());
                }
                process_event::FORK => self.register_fork(e.parent, e.pid)?,
                process_event::EXIT => self.ended(e.pid),
                process_event::EXEC => {
                    if self.interpreters.contains_key(&e.pid) {
                        // Its counts so far are the old program's.
                        self.drain()?;
                        self.unregister(e.pid);
                    }
                    self.exec_pending.insert(e.pid, Instant::now());
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Registers `child`, forked by registered `parent`: same interpreter, same layout, at the
    /// same addresses. A child gone already keeps what the kernel counted for it.
    fn register_fork(&mut self, parent: u32, child: u32) -> Result<(), SessionError> {
        let Some(p) = self.interpreters.get(&parent) else {
            return Ok(());
        };
        let (layout, mut process) = (p.layout, p.process.clone());
        process.pid = child;
        let gone = match process::start_time(child) {
            Ok(start_time) => {
                process.start_time = start_time;
                self.watcher.know(child, start_time);
                false
            }
            Err(_) => true,
        };
        self.register_from(process, layout, Some(parent))?;
        if gone {
            self.retire.push(child);
        }
        Ok(())
    }

    /// Registered process `pid` ended (the kernel stopped sampling it): it is retired after
    /// the next drain, and the /proc scan need not find it gone.
    fn ended(&mut self, pid: u32) {
        self.exec_pending.remove(&pid);
        if self.interpreters.contains_key(&pid) {
            self.watcher.forget(pid);
            if !self.retire.contains(&pid) {
                self.retire.push(pid);
            }
        }
    }

    /// Looks at processes that exec'd: registers the ones that are Python now.
    fn check_exec_pending(&mut self) -> Result<(), SessionError> {
        let pending: Vec<(u32, Instant)> =
            self.exec_pending.iter().map(|(&p, &t)| (p, t)).collect();
        for (pid, since) in pending {
            let Ok(stat) = process::proc_stat(pid) else {
                self.exec_pending.remove(&pid);
                continue;
            };
            let exe = process::exe_of(pid).unwrap_or_default();
            match classify(pid, &stat, &exe) {
                Verdict::Wanted(p) => {
                    self.exec_pending.remove(&pid);
                    self.watcher.know(pid, p.start_time);
                    self.apply(vec![Change::Started(p)])?;
                }
                // A program whose libraries are still being mapped may yet load a libpython.
                Verdict::No
                    if since.elapsed() < LOADER_GRACE
                        && process::read_maps(pid).is_ok_and(|m| process::loader_at_work(&m)) => {}
                Verdict::No => {
                    self.exec_pending.remove(&pid);
                }
                Verdict::NotYet | Verdict::Unreadable(_) if since.elapsed() > LAUNCH_TIMEOUT => {
                    // Left to the /proc scan, which says why if it still cannot tell.
                    self.exec_pending.remove(&pid);
                }
                Verdict::NotYet | Verdict::Unreadable(_) => {}
            }
        }
        Ok(())
    }

    /// Gives each interpreter the kernel's copies of its code objects (`CodeSnapshot`), before
    /// the stacks that hold them are named.
    /// One of a process not registered yet (a forked child whose fork is acted on at the next
    /// poll) waits for one more call.
    fn take_code_snapshots(&mut self) {
        let waiting = std::mem::take(&mut self.waiting_snapshots);
        for (snap, retried) in waiting.into_iter().map(|s| (s, true)).chain(
            self.sampler
                .code_snapshots()
                .into_iter()
                .map(|s| (s, false)),
        ) {
            match self.interpreters.get_mut(&snap.pid) {
                Some(interpreter) => interpreter.add_snapshot(&snap),
                None if !retried && self.waiting_snapshots.len() < WAITING_SNAPSHOTS => {
                    self.waiting_snapshots.push(snap);
                }
                None => {}
            }
        }
    }

    /// Takes in what the kernel told since the last call: processes forked, exec'd or ended,
    /// code objects copied and the stacks `announced`, named.
    fn take_notices(&mut self, announced: Vec<Announced>) -> Result<(), SessionError> {
        // Forks first: a new stack may be a child's the kernel followed since the last poll,
        // and is named from the child's memory while the child (often short-lived) is there.
        let events = self.sampler.process_events();
        self.follow(events)?;
        self.take_code_snapshots();
        self.name_announced(announced)
    }

    /// Names the stacks the kernel announced. A native unwind that stopped in an unknown
    /// mapping means a library was mapped since the tables were loaded: load them first, so
    /// its frames are named.
    fn name_announced(&mut self, announced: Vec<Announced>) -> Result<(), SessionError> {
        // Their code objects first: loading a new library's unwind tables below can take longer
        // than a short program lives (seconds on a slow machine), and a program gone before its
        // code objects were read leaves every Python frame unnamed. Read, they wait in the
        // interpreter's cache for naming.
        for a in &announced {
            if let (Some(stack), Some(interpreter)) = (&a.stack, self.interpreters.get_mut(&a.pid))
            {
                for frame in stack.frames.iter().filter(|f| f.code != 0) {
                    let _ = interpreter.code(frame);
                }
            }
        }
        let unmapped = announced.iter().any(|a| {
            a.extra
                .as_ref()
                .is_some_and(|(_, e)| e.native_end == Stat::NativeNoMapping as u32)
        });
        if unmapped {
            self.refresh_all_tables()?;
        }
        for a in announced {
            if let Some((id, extra)) = a.extra {
                self.extras.insert(id, extra);
            }
            // A task's stack is named again each time the kernel stores it anew (after each
            // drain): its id holds the task's (or, 3.11-3.13, its coroutine's) address, which a
            // task made later can have.
            let again = a.stack.as_ref().is_some_and(|s| s.task != 0);
            if let Some(stack) = a.stack {
                self.keep_raw(a.stack_id, stack, true);
            }
            self.name_stack(a.pid, a.stack_id, 0, again);
        }
        Ok(())
    }

    /// Keeps a stack the kernel stored, `announced` or drained: a task's roots are read again
    /// at its next naming (its id holds the task's address, which a task made later can have),
    /// unless the drain copies a stack announced since the last one.
    fn keep_raw(&mut self, stack_id: u64, stack: bpf::RawStack, announced: bool) {
        if stack.task != 0 {
            let copied = !announced && self.announced_tasks.contains(&stack_id);
            if announced {
                self.announced_tasks.insert(stack_id);
            }
            if !copied {
                self.task_roots.remove(&stack_id);
            }
        }
        self.raw.insert(stack_id, stack);
    }

    /// Names stack `stack_id` for process `pid` from the raw stack kept, at native instruction
    /// `leaf` (`SampleKey::leaf`; 0: as stored), under `counted_stack(stack_id, leaf)`: once,
    /// unless `again`.
    fn name_stack(&mut self, pid: u32, stack_id: u64, leaf: u64, again: bool) {
        // A task's stack is named again whenever the kernel stores it anew (`name_announced`),
        // and so is, at each count, a task's stack at an instruction.
        let again =
            again || (leaf != 0 && self.raw.get(&stack_id).is_some_and(|stack| stack.task != 0));
        if !again && self.collector.has_stack(pid, counted_stack(stack_id, leaf)) {
            return;
        }
        let Some(kept) = self.raw.get(&stack_id).cloned() else {
            return; // counted as a lost stack, if it is ever counted
        };
        let mut extra = match kept.extra {
            0 => None,
            id => self.extras.get(&id).cloned(),
        };
        if leaf != 0
            && let Some(first) = extra.as_mut().and_then(|e| e.native.first_mut())
        {
            *first = leaf;
        }
        let task = match (kept.task, self.task_roots.get(&stack_id)) {
            (0, _) => None,
            (_, Some(roots)) => Some(Rc::clone(roots)),
            (task, None) => {
                let roots = self
                    .interpreters
                    .get_mut(&pid)
                    .and_then(|i| i.task_roots(task));
                // Kept once read whole: a task not found (its module not loaded yet, say) is
                // looked for again at the next naming.
                if let Some(read) = roots.as_ref().filter(|r| r.coro_code != 0) {
                    self.task_roots.insert(stack_id, Rc::clone(read));
                }
                roots
            }
        };
        let mappings = self.tables.as_ref().map(|t| t.mappings(pid));
        let frames = self.namer.name(
            self.interpreters.get_mut(&pid),
            mappings.as_ref().map(|m| m.as_deref().unwrap_or_default()),
            naming_input(&kept, extra.as_ref(), task.as_deref()),
        );
        self.collector
            .add_stack(pid, counted_stack(stack_id, leaf), frames);
    }

    /// Moves what the kernel recorded into the collector.
    pub fn drain(&mut self) -> Result<(), SessionError> {
        // The stacks announced since the last poll first: named now, while their tasks are
        // there to be read, not at a count.
        let (announced, _) = self.sampler.wait_for_new_stacks(Duration::ZERO, None)?;
        self.take_notices(announced)?;
        if let Some(tables) = &self.tables {
            tables.check().map_err(BpfError::Native)?;
        }
        let Drained {
            counts,
            stacks,
            extras,
        } = self.sampler.drain()?;
        self.take_code_snapshots();
        for (id, extra) in extras {
            self.extras.insert(id, extra);
        }
        for (id, stack) in stacks {
            self.keep_raw(id, stack, false);
        }
        self.announced_tasks.clear();
        for (mut key, n) in counts {
            self.name_stack(key.pid, key.stack_id, key.leaf, false);
            key.stack_id = counted_stack(key.stack_id, key.leaf);
            key.leaf = 0;
            let (interpreters, unnamed) = (&mut self.interpreters, &mut self.unnamed);
            self.collector.add_count(key, n, || {
                thread_label(interpreters, unnamed, key.pid, key.tid)
            });
        }
        self.name_unnamed_threads();
        // Children that were gone when they were registered have been counted now.
        for pid in std::mem::take(&mut self.retire) {
            self.sampler.remove_target(pid)?;
            self.unregister(pid);
        }
        // The kernel goes on counting into a kept entry without storing its stack again: keep
        // those whose stack is named for a live process and held here whole (marked used in
        // the caches, so it stays while its entry is kept). Not a task's stack: a task made
        // later at the same address is named anew only when stored anew.
        let (collector, raw, extras, interpreters) = (
            &mut self.collector,
            &mut self.raw,
            &mut self.extras,
            &self.interpreters,
        );
        self.sampler.settle_counts(|key| {
            key.kind == count_kind::ON_CPU
                && interpreters.contains_key(&key.pid)
                && collector.has_stack(key.pid, counted_stack(key.stack_id, key.leaf))
                && raw.get(&key.stack_id).is_some_and(|stack| {
                    stack.task == 0 && (stack.extra == 0 || extras.get(&stack.extra).is_some())
                })
        })?;
        Ok(())
    }

    /// Gives the threads shown by the kernel's name Python's, where it is known by now; a
    /// thread still without one after `NAME_WAIT`, or whose process ended, keeps the kernel's.
    fn name_unnamed_threads(&mut self) {
        let (interpreters, collector) = (&mut self.interpreters, &mut self.collector);
        self.unnamed.retain(|&(pid, tid), &mut (py_tid, since)| {
            let Some(interpreter) = interpreters.get_mut(&pid) else {
                return false;
            };
            match interpreter.thread_name(py_tid) {
                Some(name) => {
                    collector.rename_thread(pid, tid, name);
                    false
                }
                None => since.elapsed() < NAME_WAIT,
            }
        });
    }

    /// Registers the processes a scan found and retires the ones that ended. Processes of a
    /// version prof-bpf cannot profile are noted for the summary, not errors: in `--all` they
    /// are just part of the machine.
    fn apply(&mut self, changes: Vec<Change<PythonProcess>>) -> Result<(), SessionError> {
        for change in changes {
            match change {
                Change::Ended(pid) => {
                    self.sampler.remove_target(pid)?;
                    self.unregister(pid);
                }
                Change::Started(p) => match supported_layout(&p)
                    .and_then(|layout| check_gil(&p, &layout, self.options).map(|()| layout))
                {
                    Ok(layout) => self.register(p, layout)?,
                    // Gone before it could be registered: nothing was missed.
                    Err(SessionError::Process(
                        ProcessError::Exited { .. } | ProcessError::NoSuchProcess { .. },
                    )) => {}
                    Err(e) => self
                        .skipped
                        .push(format!("{} (pid {}): {e}", p.name, p.pid)),
                },
                Change::Unreadable { pid, name, why } => {
                    self.skipped.push(format!("{name} (pid {pid}): {why}"))
                }
            }
        }
        Ok(())
    }

    /// The kernel's counters so far.
    pub fn stats(&self) -> Result<Stats, SessionError> {
        Ok(self.sampler.stats()?)
    }

    /// CPU-clock samples collected so far.
    pub fn samples(&self) -> u64 {
        self.collector.samples()
    }

    /// The profile of everything so far (`top` takes one per refresh).
    pub fn snapshot(&mut self, rate_hz: u64, elapsed: Duration) -> Profile {
        self.collector.snapshot(rate_hz, elapsed)
    }

    /// What was collected since the last window (or the start), forgotten once taken: the
    /// agent takes one per export interval.
    pub fn take_window(&mut self, elapsed: Duration) -> Window {
        self.collector.take_window(self.options.rate_hz, elapsed)
    }

    /// The registered (live) Python process `pid`.
    pub fn process(&self, pid: u32) -> Option<&PythonProcess> {
        self.interpreters.get(&pid).map(|i| &i.process)
    }

    /// The kernel's measure of the sampling program's run time so far.
    pub fn run_time(&self) -> Option<RunTime> {
        self.sampler.run_time()
    }

    /// The Python processes found but not profiled since the last call, and why (the agent
    /// logs them; a run of weeks must not keep them all).
    pub fn take_skipped(&mut self) -> Vec<String> {
        std::mem::take(&mut self.skipped)
    }

    /// Shows native frames in snapshots from now on, or not (`top`'s `n`).
    pub fn show_native_frames(&mut self, show: bool) {
        self.collector.show_native_frames(show);
    }

    /// Threads of the registered processes that still run.
    pub fn live_threads(&self) -> usize {
        self.interpreters
            .values()
            .map(|i| &i.process)
            .filter(|p| p.is_alive())
            .map(|p| {
                std::fs::read_dir(format!("/proc/{}/task", p.pid))
                    .map(|d| d.count())
                    .unwrap_or(0)
            })
            .sum()
    }

    /// Totals of what was collected, for the summary.
    pub fn totals(&self) -> Totals {
        self.collector.totals()
    }

    /// Ends the session: the last drain, the kernel program unloaded. Returns the collector and
    /// what the summary needs of the rest; an error on the way (the last drain, the counters)
    /// is returned beside them, so the recording can still be written.
    pub fn finish(mut self) -> (Finished, Option<SessionError>) {
        let mut drained = self.drain().err();
        if self.options.sampler.idle && drained.is_none() {
            drained = self.close_off_cpu_intervals().err();
        }
        let (stats, stats_error) = match self.sampler.stats() {
            Ok(stats) => (stats, None),
            Err(e) => (Stats::default(), Some(e.into())),
        };
        // Samples taken while that drain ran went to the other count map, and the counters just
        // read include them: drain once more, so the profile holds every sample they count.
        let drained = drained.or(self.drain().err());
        let run_time = self.sampler.run_time();
        let native = self.options.sampler.native.then(|| {
            let mut unknown: Vec<(String, u64)> = self
                .namer
                .symbolizer
                .unknown_reasons
                .iter()
                .map(|(why, n)| (why.clone(), *n))
                .collect();
            unknown.sort();
            let stats = self.tables.as_ref().map(TableLoader::stats);
            (stats.unwrap_or_default(), unknown)
        });
        let finished = Finished {
            stats,
            run_time,
            followed: self.watcher.followed(),
            collector: self.collector,
            child: self.child,
            skipped: self.skipped,
            native,
            kernel: self.sampler.features,
        };
        (finished, drained.or(stats_error))
    }

    /// Whether the target has exited (a launched child is reaped by this check). `--all` has
    /// no end of its own.
    pub fn exited(&mut self) -> bool {
        match (&mut self.child, self.target_pid) {
            (Some(c), _) => !matches!(c.try_wait(), Ok(None)),
            (None, Some((pid, start_time))) => !process::is_alive(pid, start_time),
            (None, None) => false,
        }
    }

    /// Takes the launched child, to end it (`top` does when it stops on an error).
    pub fn take_child(&mut self) -> Option<Child> {
        self.child.take()
    }
}

/// The watcher's classifier: a process is wanted if it has a CPython interpreter (of any
/// version: an unsupported one is said in the summary).
fn classify(pid: u32, stat: &process::ProcStat, exe: &std::path::Path) -> Verdict<PythonProcess> {
    match discover::find_python_cheaply(pid) {
        Ok(Some(p)) if p.start_time == stat.start_time => Verdict::Wanted(p),
        // A reused pid: the next scan sees the new process.
        Ok(Some(_)) => Verdict::NotYet,
        // A Python executable whose libpython is not mapped yet (the loader is still at work)
        // is looked at again like one mid-exec.
        Ok(None) if !discover::named_python(exe) => Verdict::No,
        Ok(None) => Verdict::Unreadable(format!(
            "named like Python but no interpreter found in it ({})",
            exe.display()
        )),
        Err(ProcessError::Exited { .. } | ProcessError::NoSuchProcess { .. }) => Verdict::NotYet,
        // Unreadable: worth a word only if it looks like Python.
        Err(e) if discover::named_python(exe) => Verdict::Unreadable(e.to_string()),
        Err(_) => Verdict::No,
    }
}

/// The layout of the process's Python (published by the interpreter where it does so), or the
/// error naming its unsupported version. Says so on stderr when the published layout differs
/// from the built-in table or could not be used, and when a version newer than any table is
/// profiled from what it publishes (after checking that against the live process).
pub(crate) fn supported_layout(p: &PythonProcess) -> Result<Layout, SessionError> {
    let mem = process::open_memory(p.pid)?;
    let (layout, source) = python::layout_of(&mem, p.version, p.runtime_addr, p.runtime_size)
        .map_err(|source| SessionError::Unsupported { pid: p.pid, source })?;
    match source {
        LayoutSource::Published(differences) => {
            for d in differences {
                crate::note!(
                    "prof-bpf: note: pid {}: python {} publishes {} = {}, the built-in table says {}; using the published value",
                    p.pid,
                    p.version,
                    d.field,
                    d.published,
                    d.builtin
                );
            }
        }
        LayoutSource::Newer => {
            python::check_live(&mem, &layout, p).map_err(|why| SessionError::Unsupported {
                pid: p.pid,
                source: UnsupportedVersion::Newer {
                    version: p.version,
                    why,
                },
            })?;
            crate::note!(
                "prof-bpf: warning: pid {}: python {} is newer than prof-bpf's tables (up to {}); profiling it from the layout it publishes (_Py_DebugOffsets), which checks out",
                p.pid,
                layout.version_name(),
                python::NEWEST
            );
        }
        LayoutSource::Fallback(why) => crate::note!(
            "prof-bpf: warning: pid {}: {why}; using the built-in python {} layout",
            p.pid,
            p.version
        ),
        LayoutSource::Builtin | LayoutSource::FreeThreaded => {}
    }
    Ok(layout)
}

/// Fails when `--gil` asks for GIL holders of a free-threaded build, which has no GIL.
fn check_gil(
    p: &PythonProcess,
    layout: &Layout,
    options: SessionOptions,
) -> Result<(), SessionError> {
    if options.sampler.gil_only && layout.free_threaded {
        return Err(SessionError::GilFreeThreaded {
            pid: p.pid,
            version: layout.version_name(),
        });
    }
    Ok(())
}

/// Fails when the kernel would refuse `rate` samples per second.
pub fn check_rate(rate: u64) -> Result<(), SessionError> {
    let max = std::fs::read_to_string("/proc/sys/kernel/perf_event_max_sample_rate")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    match max {
        Some(max) if rate > max => Err(SessionError::RateTooHigh { rate, max }),
        _ => Ok(()),
    }
}

/// How long a thread shown by the kernel's name is asked for Python's: a program may import
/// `threading` (which names the main thread too) a while after it starts.
const NAME_WAIT: Duration = Duration::from_secs(10);

/// Copies of code objects that may wait for their process to be registered.
const WAITING_SNAPSHOTS: usize = 1024;

/// Threads waiting for Python's name at once, at most; more keep the kernel's.
const MAX_UNNAMED: usize = 1 << 16;

/// How thread `tid` of `pid` is shown (with its id in the process's pid namespace, if that is
/// not ours): Python's name for it, else the kernel's, and then it goes to `unnamed`.
fn thread_label(
    interpreters: &mut HashMap<u32, Interpreter>,
    unnamed: &mut HashMap<(u32, u32), (u64, Instant)>,
    pid: u32,
    tid: u32,
) -> (String, Option<u32>) {
    let ns_tid = process::namespace::ns_tid(pid, tid);
    let py_tid = ns_tid.unwrap_or(tid) as u64;
    let Some(interpreter) = interpreters.get_mut(&pid) else {
        return (process::thread_name(pid, tid), ns_tid);
    };
    match interpreter.thread_name(py_tid) {
        Some(name) => (name, ns_tid),
        None => {
            if unnamed.len() < MAX_UNNAMED {
                unnamed.insert((pid, tid), (py_tid, Instant::now()));
            }
            (process::thread_name(pid, tid), ns_tid)
        }
    }
}

/// The id a count of stack `stack_id` at native instruction `leaf` (`SampleKey::leaf`) is kept
/// under: the kernel's own, or, with native frames, one for the stack at that instruction.
fn counted_stack(stack_id: u64, leaf: u64) -> u64 {
    match leaf {
        0 => stack_id,
        leaf => mix(stack_id, leaf),
    }
}
