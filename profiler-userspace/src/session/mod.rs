//! The sampling session `record` and `top` share: the kernel program (`bpf`), the processes
//! registered with it (found by `python::discover`, followed by `process::watch`), their
//! interpreters and native tables, and the collector their stacks go to. It hands what the
//! kernel drains to naming and aggregation; it writes nothing and draws nothing.

mod launch;

use std::{
    collections::HashMap,
    io,
    process::{Child, ExitStatus},
    sync::atomic::AtomicBool,
    time::{Duration, Instant},
};

use profiler_common::{
    MAX_KERNEL_FRAMES, MAX_NATIVE_FRAMES, PyFrame, PyStack, STACK_TRUNCATED, Stat,
};

pub use launch::{LAUNCH_TIMEOUT, stop_child};

use crate::{
    bpf::{Announced, BpfError, Drained, RunTime, Sampler, SamplerOptions, Stats},
    cache::BoundedCache,
    privilege::NotPrivileged,
    process::{
        self, ProcessError,
        watch::{Change, Scope, Verdict, Watcher},
    },
    profile::{
        ProcessInfo, Profile,
        collect::{Collector, FrameOptions, Totals, Window},
        naming::{Namer, RawStack},
    },
    python::{
        self, Layout, LayoutSource, UnsupportedVersion,
        discover::{self, FindError, PythonProcess},
        instance::Interpreter,
    },
    symbolize::kernel::KernelSymbols,
    unwind::{LoadStats, NativeTables},
};

/// How often /proc is scanned for processes that started, forked, exec'd or ended: the
/// longest a new process goes unprofiled.
const SCAN_INTERVAL: Duration = Duration::from_millis(100);
/// Raw stacks kept from the kernel, for counts of a second process with the same stack (forked
/// workers share code addresses) and counts that come a drain after their stack.
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
}

/// A raw stack as kept between the kernel and naming: frames only, without the map's padding.
struct KeptStack {
    python: Vec<PyFrame>,
    truncated: bool,
    native: Vec<u64>,
    native_end: u32,
    kernel: Vec<u64>,
}

impl KeptStack {
    fn new(stack: &PyStack) -> Self {
        let len = (stack.len as usize).min(stack.frames.len());
        let native_len = (stack.native_len as usize).min(MAX_NATIVE_FRAMES);
        let kernel_len = (stack.kernel_len as usize).min(MAX_KERNEL_FRAMES);
        Self {
            python: stack.frames[..len].to_vec(),
            truncated: stack.flags & STACK_TRUNCATED != 0,
            native: stack.native[..native_len].to_vec(),
            native_end: stack.native_end,
            kernel: stack.kernel[..kernel_len].to_vec(),
        }
    }

    fn raw(&self) -> RawStack<'_> {
        RawStack {
            python: &self.python,
            truncated: self.truncated,
            native: &self.native,
            native_end: self.native_end,
            kernel: &self.kernel,
        }
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
    raw: BoundedCache<u64, KeptStack>,
    watcher: Watcher,
    pub child: Option<Child>,
    /// A --pid target: watched by pid and start time, so a reused pid is not the target.
    target_process: Option<PythonProcess>,
    /// The first process registered (the one named by --pid or launched), for labels.
    first: Option<PythonProcess>,
    /// Python processes found but not profiled, and why.
    skipped: Vec<String>,
    last_scan: Option<Instant>,
    /// Native unwind tables (`--native`), per target.
    tables: NativeTables,
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
        let start_sampler = || Sampler::start(options.rate_hz, options.sampler);
        // Everything that can be checked without the kernel is checked before loading it.
        let (sampler, first, child) = match target {
            Target::Pid(pid) => {
                let p = discover::inspect(*pid)?;
                let layout = supported_layout(&p)?;
                (start_sampler()?, Some((p, layout)), None)
            }
            Target::Launch(cmd) => {
                launch::check_program(&cmd[0])?;
                let sampler = start_sampler()?;
                let mut c = launch::launch(cmd)?;
                // With --subprocesses the command itself need not be Python (a shell script,
                // a launcher): the watcher finds the Python processes under it.
                let first = if options.subprocesses {
                    None
                } else {
                    match launch::wait_for_python(&mut c, &cmd[0], stop) {
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
        let root = match (target, &child) {
            (Target::Pid(pid), _) => Some(*pid),
            (_, Some(c)) => Some(c.id()),
            _ => None,
        };
        let watcher = Watcher::new(match (root, options.subprocesses) {
            (None, _) => Scope::All,
            (Some(root), true) => Scope::Tree(vec![root]),
            (Some(root), false) => Scope::One(root),
        });
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
            raw: BoundedCache::new(RAW_STACKS),
            watcher,
            child,
            target_process: match target {
                Target::Pid(_) => first.as_ref().map(|(p, _)| p.clone()),
                _ => None,
            },
            first: None,
            skipped: Vec::new(),
            last_scan: None,
            tables: NativeTables::default(),
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
        let mut info = layout.target_info(p.runtime_addr);
        let pid = p.pid;
        self.collector.add_process(ProcessInfo {
            pid,
            name: p.name.clone(),
            version: p.version.to_string(),
        });
        self.first.get_or_insert_with(|| p.clone());
        self.interpreters.insert(pid, Interpreter::new(p, layout));
        if self.options.sampler.native {
            self.refresh_tables(pid)?;
            info.frame_is_entry = layout.entry_flag;
        }
        if self.options.kernel {
            info.options |= profiler_common::target_options::KERNEL_STACKS;
        }
        self.sampler
            .add_target(pid, info)
            .map_err(SessionError::from)
    }

    /// Loads the tables of `pid`'s newly mapped files; a process that has exited is not an error
    /// (the watcher retires it).
    fn refresh_tables(&mut self, pid: u32) -> Result<(), SessionError> {
        match self.tables.refresh(pid, &mut self.sampler) {
            Ok(_) => Ok(()),
            Err(e)
                if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) =>
            {
                Ok(())
            }
            Err(e) => Err(SessionError::Bpf(BpfError::Native(e))),
        }
    }

    /// With `--native`: loads the tables of libraries every registered process mapped since the
    /// last call (an `import numpy`).
    fn refresh_all_tables(&mut self) -> Result<(), SessionError> {
        if self.options.sampler.native {
            let pids: Vec<u32> = self.interpreters.keys().copied().collect();
            for pid in pids {
                self.refresh_tables(pid)?;
            }
        }
        Ok(())
    }

    /// The process named by `--pid` or launched (or the first found), if it is Python.
    pub fn first_process(&self) -> Option<&PythonProcess> {
        self.first.as_ref()
    }

    /// The pid of the process named by `--pid` or launched.
    pub fn root_pid(&self) -> Option<u32> {
        match (&self.target_process, &self.child) {
            (Some(p), _) => Some(p.pid),
            (_, Some(c)) => Some(c.id()),
            _ => None,
        }
    }

    /// Waits up to `timeout` for new stacks (naming them at once, while their code objects are
    /// surely alive), then, when one is due, scans for processes that started or ended and
    /// registers or retires them.
    pub fn poll(&mut self, timeout: Duration) -> Result<(), SessionError> {
        let announced = self.sampler.wait_for_new_stacks(timeout)?;
        self.name_announced(announced)?;
        if self.last_scan.is_none_or(|t| t.elapsed() >= SCAN_INTERVAL) {
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

    /// Names the stacks the kernel announced. A native unwind that stopped in an unknown
    /// mapping means a library was mapped since the tables were loaded: load them first, so
    /// its frames are named.
    fn name_announced(&mut self, announced: Vec<Announced>) -> Result<(), SessionError> {
        let unmapped = announced.iter().any(|a| {
            a.stack
                .as_ref()
                .is_some_and(|s| s.native_end == Stat::NativeNoMapping as u32)
        });
        if unmapped {
            self.refresh_all_tables()?;
        }
        for a in announced {
            if let Some(stack) = a.stack {
                self.raw.insert(a.stack_id, KeptStack::new(&stack));
            }
            self.name_stack(a.pid, a.stack_id);
        }
        Ok(())
    }

    /// Names stack `stack_id` for process `pid`, once, from the raw stack kept.
    fn name_stack(&mut self, pid: u32, stack_id: u64) {
        if self.collector.has_stack(pid, stack_id) {
            return;
        }
        let Some(kept) = self.raw.get(&stack_id) else {
            return; // counted as a lost stack, if it is ever counted
        };
        let mappings = self
            .options
            .sampler
            .native
            .then(|| self.tables.mappings(pid));
        let frames = self
            .namer
            .name(self.interpreters.get_mut(&pid), mappings, kept.raw());
        self.collector.add_stack(pid, stack_id, frames);
    }

    /// Moves what the kernel recorded into the collector (with `--native`, after loading the
    /// tables of libraries mapped since).
    pub fn drain(&mut self) -> Result<(), SessionError> {
        self.refresh_all_tables()?;
        let Drained { counts, stacks } = self.sampler.drain()?;
        for (id, stack) in stacks {
            self.raw.insert(id, KeptStack::new(&stack));
        }
        for (key, n) in counts {
            self.name_stack(key.pid, key.stack_id);
            self.collector
                .add_count(key, n, || process::thread_name(key.pid, key.tid));
        }
        Ok(())
    }

    /// Registers the processes a scan found and retires the ones that ended. Processes of a
    /// version prof-bpf cannot profile are noted for the summary, not errors: in `--all` they
    /// are just part of the machine.
    fn apply(&mut self, changes: Vec<Change<PythonProcess>>) -> Result<(), SessionError> {
        for change in changes {
            match change {
                Change::Ended(pid) => {
                    self.sampler.remove_target(pid)?;
                    self.collector.remove_process(pid);
                    self.interpreters.remove(&pid);
                }
                Change::Started(p) => match supported_layout(&p) {
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
        let drained = self.drain().err();
        let (stats, stats_error) = match self.sampler.stats() {
            Ok(stats) => (stats, None),
            Err(e) => (Stats::default(), Some(e.into())),
        };
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
            (self.tables.stats.clone(), unknown)
        });
        let finished = Finished {
            stats,
            run_time,
            followed: self.watcher.followed(),
            collector: self.collector,
            child: self.child,
            skipped: self.skipped,
            native,
        };
        (finished, drained.or(stats_error))
    }

    /// Whether the target has exited (a launched child is reaped by this check). `--all` has
    /// no end of its own.
    pub fn exited(&mut self) -> bool {
        match (&mut self.child, &self.target_process) {
            (Some(c), _) => !matches!(c.try_wait(), Ok(None)),
            (None, Some(p)) => !p.is_alive(),
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
/// from the built-in table or could not be used.
pub(crate) fn supported_layout(p: &PythonProcess) -> Result<Layout, SessionError> {
    let mem = process::open_memory(p.pid)?;
    let (layout, source) = python::layout_of(&mem, p.version, p.runtime_addr)
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
        LayoutSource::Fallback(why) => crate::note!(
            "prof-bpf: warning: pid {}: {why}; using the built-in python {} layout",
            p.pid,
            p.version
        ),
        LayoutSource::Builtin => {}
    }
    Ok(layout)
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
