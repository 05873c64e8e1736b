//! The `record` command: checks the input, starts the kernel sampler, registers the target,
//! drains until the target exits, the duration ends or a signal arrives, and writes the profile.
//! It ties the pipeline stages together and holds no stage's logic itself.

use std::{
    collections::HashMap,
    env, fs,
    io::{self, IsTerminal, Write},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use profiler_common::Stat;

use crate::{
    bpf::{BpfError, RunTime, Sampler, SamplerOptions, Stats},
    cli::{RecordConfig, Target},
    output::{self, Format},
    privilege::{self, NotPrivileged},
    process::{
        self, ProcessError, PythonProcess,
        watch::{Change, Scope, Watcher},
    },
    profile::{
        Profile,
        collect::{Collector, FrameOptions},
    },
    python::{self, Layout, LayoutSource, UnsupportedVersion},
    unwind::{LoadStats, NativeTables},
};

/// How often the kernel maps are drained (and new code objects read while they exist).
const DRAIN_INTERVAL: Duration = Duration::from_millis(50);
/// How often /proc is scanned for processes that started, forked, exec'd or ended: the
/// longest a new process goes unprofiled.
const SCAN_INTERVAL: Duration = Duration::from_millis(100);
/// Processes listed by name in the summary of a multi-process recording.
const SUMMARY_PROCESSES: usize = 10;
/// How often stop conditions and the progress line are checked.
const TICK: Duration = Duration::from_millis(50);
/// How long a launched command may take to load its interpreter.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    NotPrivileged(#[from] NotPrivileged),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("pid {pid}: {source}")]
    Unsupported {
        pid: u32,
        source: UnsupportedVersion,
    },
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error("cannot write the profile to {}: {source}", path.display())]
    Output { path: PathBuf, source: io::Error },
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

impl RecordError {
    pub fn is_permission(&self) -> bool {
        match self {
            RecordError::NotPrivileged(_)
            | RecordError::Process(ProcessError::PermissionDenied { .. }) => true,
            RecordError::Bpf(e) => e.is_permission(),
            _ => false,
        }
    }
}

/// Why recording stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    TargetExited,
    Duration,
    Signal,
    /// Sampling failed; what was recorded before is still written.
    Error,
}

/// What the summary reports.
pub struct Summary {
    pub output: PathBuf,
    pub format: Format,
    /// Every Python process profiled, in order of registration.
    pub processes: Vec<PythonProcess>,
    /// Samples (off-CPU time included) by pid.
    pub per_process: HashMap<u32, u64>,
    /// Python processes found but not profiled, and why.
    pub skipped: Vec<String>,
    /// Processes the watcher followed at the end (Python or not).
    pub followed: usize,
    /// CPU-clock samples.
    pub samples: u64,
    /// Time off the CPU recorded (`--idle`).
    pub off_cpu: Option<Duration>,
    pub duration: Duration,
    pub rate_hz: u64,
    pub stats: Stats,
    pub unknown_frames: u64,
    pub stop: StopReason,
    pub run_time: Option<RunTime>,
    /// With `--native`: what loading unwind tables met, and native frames left unnamed.
    pub native: Option<(LoadStats, Vec<(String, u64)>)>,
    /// What ended the recording early, if an error did.
    pub failure: Option<RecordError>,
    /// Whether the profile went where it was asked to (else where it went instead).
    pub saved: Result<(), output::file::SaveError>,
}

impl Summary {
    /// Whether the run failed: the profile is not where it was asked to go, or sampling ended
    /// on an error.
    pub fn failed(&self) -> bool {
        self.failure.is_some() || self.saved.is_err()
    }
}

/// Fails now if `path` could not be written later, without changing it.
fn check_writable(path: &Path) -> Result<(), RecordError> {
    output::file::check_writable(path).map_err(|source| RecordError::Output {
        path: path.into(),
        source,
    })
}

pub fn run(cfg: &RecordConfig, stop: &AtomicBool) -> Result<Summary, RecordError> {
    privilege::check()?;
    check_rate(cfg.rate_hz)?;
    if let Some(path) = &cfg.output {
        check_writable(path)?;
    }
    record(cfg, stop)
}

/// What is left of a `Session` once sampling stopped.
pub(crate) struct Finished {
    pub stats: Stats,
    pub run_time: Option<RunTime>,
    pub followed: usize,
    pub collector: Collector,
    pub child: Option<Child>,
    pub skipped: Vec<String>,
    /// With `--native`: what loading unwind tables met.
    pub tables: Option<LoadStats>,
}

/// What `Session::start` needs besides the target.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SessionOptions {
    pub rate_hz: u64,
    pub sampler: SamplerOptions,
    pub frames: FrameOptions,
    /// Follow child processes (`--subprocesses`).
    pub subprocesses: bool,
    /// Kernel frames on top (`--kernel`).
    pub kernel: bool,
}

/// What is being sampled: the kernel program, the processes registered with it and what they
/// recorded, the watcher that finds processes coming and going, and, for a launched command,
/// the child. `record` and `top` share it.
pub(crate) struct Session {
    pub sampler: Sampler,
    pub collector: Collector,
    watcher: Watcher,
    pub child: Option<Child>,
    /// A --pid target: watched by pid and start time, so a reused pid is not the target.
    target_process: Option<PythonProcess>,
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
    ) -> Result<Self, RecordError> {
        let start_sampler = || Sampler::start(options.rate_hz, options.sampler);
        // Everything that can be checked without the kernel is checked before loading it.
        let (sampler, first, child) = match target {
            Target::Pid(pid) => {
                let p = process::inspect(*pid)?;
                let layout = supported_layout(&p)?;
                (start_sampler()?, Some((p, layout)), None)
            }
            Target::Launch(cmd) => {
                check_program(&cmd[0])?;
                let sampler = start_sampler()?;
                let mut c = launch(cmd)?;
                // With --subprocesses the command itself need not be Python (a shell script,
                // a launcher): the watcher finds the Python processes under it.
                let first = if options.subprocesses {
                    None
                } else {
                    match wait_for_python(&mut c, &cmd[0], stop) {
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
        let mut collector = Collector::new(options.frames);
        if options.kernel {
            collector.enable_kernel_frames();
        }
        let target_process = match target {
            Target::Pid(_) => first.as_ref().map(|(p, _)| p.clone()),
            _ => None,
        };
        let mut session = Self {
            sampler,
            collector,
            watcher,
            child,
            target_process,
            skipped: Vec::new(),
            last_scan: None,
            tables: NativeTables::default(),
            options,
        };
        if let Some((p, layout)) = first {
            session.watcher.know(&p);
            session.register(p, layout)?;
        }
        Ok(session)
    }

    /// Registers a Python process with the kernel and the collector. With `--native` its
    /// unwind tables go first, so its first samples already unwind.
    fn register(&mut self, p: PythonProcess, layout: Layout) -> Result<(), RecordError> {
        let mut info = layout.target_info(p.runtime_addr);
        let pid = p.pid;
        self.collector.add_target(p, layout);
        if self.options.sampler.native {
            self.refresh_tables(pid)?;
            info.frame_is_entry = layout.entry_flag;
        }
        if self.options.kernel {
            info.options |= profiler_common::target_options::KERNEL_STACKS;
        }
        self.sampler
            .add_target(pid, info)
            .map_err(RecordError::from)
    }

    /// Loads the tables of `pid`'s newly mapped files; a process that has exited is not an error
    /// (the watcher retires it). Must follow the process's registration with the collector.
    fn refresh_tables(&mut self, pid: u32) -> Result<(), RecordError> {
        match self.tables.refresh(pid, &mut self.sampler) {
            // Live views (`top`) name native frames before the process ends.
            Ok(true) => {
                self.name_native_frames(pid);
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(e)
                if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) =>
            {
                Ok(())
            }
            Err(e) => Err(RecordError::Bpf(BpfError::Native(e))),
        }
    }

    /// With `--native`: loads the tables of libraries every registered process mapped since the
    /// last call (an `import numpy`).
    fn refresh_all_tables(&mut self) -> Result<(), RecordError> {
        if self.options.sampler.native {
            let pids: Vec<u32> = self.collector.registered().collect();
            for pid in pids {
                self.refresh_tables(pid)?;
            }
        }
        Ok(())
    }

    /// The process named by `--pid` or launched, if it is Python: for labels.
    pub fn first_process(&self) -> Option<&PythonProcess> {
        self.collector.processes().next()
    }

    /// The pid of the process named by `--pid` or launched.
    pub fn root_pid(&self) -> Option<u32> {
        match (&self.target_process, &self.child) {
            (Some(p), _) => Some(p.pid),
            (_, Some(c)) => Some(c.id()),
            _ => None,
        }
    }

    /// Waits up to `timeout` for new stacks (reading their code objects at once), then, when
    /// one is due, scans for processes that started or ended and registers or retires them.
    pub fn poll(&mut self, timeout: Duration) -> Result<(), RecordError> {
        self.sampler
            .wait_for_new_stacks(timeout, &mut self.collector)?;
        if self.options.sampler.native && self.collector.take_saw_unmapped() {
            // A library was mapped since the last refresh: load its table now, not at the drain.
            self.refresh_all_tables()?;
        }
        if self.last_scan.is_none_or(|t| t.elapsed() >= SCAN_INTERVAL) {
            let changes = self.watcher.scan();
            if !changes.is_empty() {
                // Counts so far belong to the processes registered so far.
                self.drain()?;
                self.apply(changes)?;
            }
            self.last_scan = Some(Instant::now());
        }
        Ok(())
    }

    /// Moves what the kernel recorded into the collector (with `--native`, after loading the
    /// tables of libraries mapped since).
    pub fn drain(&mut self) -> Result<(), RecordError> {
        self.refresh_all_tables()?;
        Ok(self.sampler.drain(&mut self.collector)?)
    }

    /// Registers the processes a scan found and retires the ones that ended. Processes of a
    /// version prof-bpf cannot profile are noted for the summary, not errors: in `--all` they
    /// are just part of the machine.
    fn apply(&mut self, changes: Vec<Change>) -> Result<(), RecordError> {
        for change in changes {
            match change {
                Change::Ended(pid) => {
                    self.sampler.remove_target(pid)?;
                    self.name_native_frames(pid);
                    self.collector.remove_target(pid);
                }
                Change::Started(p) => match supported_layout(&p) {
                    Ok(layout) => self.register(p, layout)?,
                    // Gone before it could be registered: nothing was missed.
                    Err(RecordError::Process(
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

    /// With `--native`: hands the collector every executable mapping `pid` was seen with, to
    /// name its native frames (also after it exits).
    fn name_native_frames(&mut self, pid: u32) {
        if self.options.sampler.native {
            self.collector
                .set_native_mappings(pid, self.tables.mappings(pid).to_vec());
        }
    }

    /// Ends the session: the last drain, native frames' mappings handed over, the kernel
    /// program unloaded. Returns the collector and what the summary needs of the rest.
    /// An error on the way (the last drain, the counters) is returned beside what was
    /// collected, so the recording can still be written.
    pub fn finish(mut self) -> (Finished, Option<RecordError>) {
        let drained = self.drain().err();
        let (stats, stats_error) = match self.sampler.stats() {
            Ok(stats) => (stats, None),
            Err(e) => (Stats::default(), Some(e.into())),
        };
        // Samples taken while that drain ran went to the other count map, and the counters just
        // read include them: drain once more, so the profile holds every sample they count.
        let drained = drained.or(self.drain().err());
        let run_time = self.sampler.run_time();
        let pids: Vec<u32> = self.collector.registered().collect();
        for pid in pids {
            self.name_native_frames(pid);
        }
        let finished = Finished {
            stats,
            run_time,
            followed: self.watcher.followed(),
            collector: self.collector,
            child: self.child,
            skipped: self.skipped,
            tables: self
                .options
                .sampler
                .native
                .then(|| self.tables.stats.clone()),
        };
        (finished, drained.or(stats_error))
    }

    /// Whether the target has exited (a launched child is reaped by this check). `--all` has
    /// no end of its own.
    pub fn exited(&mut self) -> bool {
        match (&mut self.child, &self.target_process) {
            (Some(c), _) => !matches!(c.try_wait(), Ok(None)),
            (None, Some(p)) => !process::is_alive(p),
            (None, None) => false,
        }
    }
}

fn record(cfg: &RecordConfig, stop: &AtomicBool) -> Result<Summary, RecordError> {
    let options = SessionOptions {
        rate_hz: cfg.rate_hz,
        sampler: SamplerOptions {
            idle: cfg.idle,
            gil_only: cfg.gil,
            native: cfg.native,
        },
        frames: cfg.frames,
        subprocesses: cfg.subprocesses,
        kernel: cfg.kernel,
    };
    // The default name depends on the target, known only once it runs: its directory is checked
    // before anything is launched (a launched program is never left running for a profile that
    // could not be written).
    if cfg.output.is_none() {
        output::file::check_writable(&default_output(None, None, cfg.format)).map_err(
            |source| RecordError::Output {
                path: env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
                source,
            },
        )?;
    }
    let mut session = Session::start(&cfg.target, options, stop)?;
    let output = match &cfg.output {
        Some(path) => path.clone(),
        None => default_output(session.first_process(), session.root_pid(), cfg.format),
    };
    // Said once sampling runs and the target is registered, as py-spy says it: a person sees
    // it has begun, and a script can wait for it.
    let what = match (session.first_process(), &cfg.target) {
        (_, Target::All) => "every Python process".to_string(),
        (Some(p), _) => format!("{} (pid {}, CPython {})", p.name, p.pid, p.version),
        (None, _) => format!(
            "pid {} and its Python subprocesses",
            session.root_pid().unwrap_or(0)
        ),
    };
    crate::note!(
        "prof-bpf: sampling {what} {} times a second; Ctrl-C to stop and write the profile",
        cfg.rate_hz
    );

    let started = Instant::now();
    let mut last_drain = started;
    let progress = Progress::new();
    // An error while sampling ends the recording; what was recorded up to it is still written.
    let mut failure = None;
    let reason = loop {
        if let Err(e) = session.poll(TICK) {
            failure = Some(e);
            break StopReason::Error;
        }
        if session.exited() {
            break StopReason::TargetExited;
        }
        if stop.load(Ordering::Relaxed) {
            break StopReason::Signal;
        }
        if cfg.duration.is_some_and(|d| started.elapsed() >= d) {
            break StopReason::Duration;
        }
        if last_drain.elapsed() >= DRAIN_INTERVAL {
            if let Err(e) = session.drain() {
                failure = Some(e);
                break StopReason::Error;
            }
            last_drain = Instant::now();
            let lost = session.sampler.stats().map(|s| s.lost()).unwrap_or(0);
            progress.show(session.collector.samples(), lost, started.elapsed());
        }
    };
    let elapsed = started.elapsed();
    let (
        Finished {
            stats,
            run_time,
            followed,
            collector,
            child,
            skipped,
            tables,
        },
        finish_error,
    ) = session.finish();
    progress.clear();
    if let Some(mut c) = child {
        stop_child(&mut c, reason);
    }

    let processes: Vec<PythonProcess> = collector.processes().cloned().collect();
    let totals = collector.totals();
    let profile = collector.finish(cfg.rate_hz, elapsed);
    let title = match &processes[..] {
        [p] => format!("prof-bpf: {} (pid {})", p.name, p.pid),
        ps => format!("prof-bpf: {} Python processes", ps.len()),
    };
    let saved = write_profile(&profile, cfg.format, &title, &output);
    let mut per_process: HashMap<u32, u64> = HashMap::new();
    for s in &profile.samples {
        *per_process.entry(s.pid).or_default() += s.count;
    }
    Ok(Summary {
        output,
        format: cfg.format,
        processes,
        per_process,
        skipped,
        followed,
        samples: totals.on_cpu_samples,
        off_cpu: cfg.idle.then_some(totals.off_cpu),
        duration: elapsed,
        rate_hz: cfg.rate_hz,
        stats,
        unknown_frames: profile.unknown_frames,
        stop: reason,
        run_time,
        native: tables.map(|t| (t, profile.unknown_native.clone())),
        failure: failure.or(finish_error),
        saved,
    })
}

fn write_profile(
    profile: &Profile,
    format: Format,
    title: &str,
    path: &Path,
) -> Result<(), output::file::SaveError> {
    let writer = format.writer(title.to_string());
    output::file::save(path, format.extension(), |out| writer.write(profile, out))
}

/// The layout of the process's Python (published by the interpreter where it does so), or the
/// error naming its unsupported version. Says so on stderr when the published layout differs
/// from the built-in table or could not be used.
fn supported_layout(p: &PythonProcess) -> Result<Layout, RecordError> {
    let mem = process::open_memory(p.pid)?;
    let (layout, source) = python::layout_of(&mem, p.version, p.runtime_addr)
        .map_err(|source| RecordError::Unsupported { pid: p.pid, source })?;
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

pub(crate) fn check_rate(rate: u64) -> Result<(), RecordError> {
    let max = fs::read_to_string("/proc/sys/kernel/perf_event_max_sample_rate")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    match max {
        Some(max) if rate > max => Err(RecordError::RateTooHigh { rate, max }),
        _ => Ok(()),
    }
}

/// Fails like exec would, before the kernel program is loaded.
fn check_program(program: &str) -> Result<(), RecordError> {
    let not_found = || RecordError::Launch {
        program: program.into(),
        source: io::Error::new(
            io::ErrorKind::NotFound,
            "no such file or directory (nor on PATH)",
        ),
    };
    if program.contains('/') {
        return if Path::new(program).is_file() {
            Ok(())
        } else {
            Err(not_found())
        };
    }
    let path = env::var_os("PATH").unwrap_or_default();
    if env::split_paths(&path).any(|dir| dir.join(program).is_file()) {
        Ok(())
    } else {
        Err(not_found())
    }
}

fn launch(cmd: &[String]) -> Result<Child, RecordError> {
    let mut command = Command::new(&cmd[0]);
    command.args(&cmd[1..]);
    privilege::run_as_invoking_user(&mut command);
    command.spawn().map_err(|source| RecordError::Launch {
        program: cmd[0].clone(),
        source,
    })
}

/// Polls the launched command until its interpreter is mapped (a launcher script may exec
/// Python later), it exits, or the timeout passes.
fn wait_for_python(
    child: &mut Child,
    program: &str,
    stop: &AtomicBool,
) -> Result<(PythonProcess, Layout), RecordError> {
    let pid = child.id();
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().map_err(|source| RecordError::Launch {
            program: program.into(),
            source,
        })? {
            return Err(RecordError::ExitedEarly {
                program: program.into(),
                status,
            });
        }
        match process::find_python_cheaply(pid) {
            Ok(Some(p)) => {
                let layout = supported_layout(&p)?;
                return Ok((p, layout));
            }
            Ok(None) => {}
            // Exec in progress or the child just exited: look again.
            Err(
                ProcessError::Exited { .. }
                | ProcessError::NoSuchProcess { .. }
                | ProcessError::Io { .. },
            ) => {}
            Err(e) => return Err(e.into()),
        }
        if started.elapsed() > LAUNCH_TIMEOUT || stop.load(Ordering::Relaxed) {
            return Err(RecordError::LaunchedNotPython {
                program: program.into(),
                pid,
            });
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// A launched command still running when recording stops is ended, as py-spy does.
pub(crate) fn stop_child(child: &mut Child, reason: StopReason) {
    if reason != StopReason::TargetExited {
        // SAFETY: kill with a pid we spawned and have not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// `NAME-PID-YYYYmmdd-HHMMSS.EXT`, like py-spy's default names; `all-python-...` for `--all`
/// and `process-PID-...` for a command not known to be Python yet.
fn default_output(p: Option<&PythonProcess>, root: Option<u32>, format: Format) -> PathBuf {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as libc::time_t)
        .unwrap_or(0);
    // SAFETY: localtime_r writes into the tm we own.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&now, &mut tm);
        tm
    };
    let (name, pid) = match (p, root) {
        (Some(p), _) => (p.name.as_str(), p.pid.to_string()),
        (None, Some(pid)) => ("process", pid.to_string()),
        (None, None) => ("all", "python".to_string()),
    };
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '.' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    PathBuf::from(format!(
        "{name}-{pid}-{:04}{:02}{:02}-{:02}{:02}{:02}.{}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        format.extension()
    ))
}

/// The one-line progress display, on a terminal only.
struct Progress {
    tty: bool,
}

impl Progress {
    fn new() -> Self {
        Self {
            tty: io::stderr().is_terminal(),
        }
    }

    fn show(&self, samples: u64, lost: u64, elapsed: Duration) {
        if self.tty {
            let _ = write!(
                io::stderr(),
                "\r\x1b[Kprof-bpf: {samples} samples, {lost} errors, {:.1}s (Ctrl-C to stop and write)",
                elapsed.as_secs_f64()
            );
        }
    }

    fn clear(&self) {
        if self.tty {
            let _ = write!(io::stderr(), "\r\x1b[K");
        }
    }
}

impl Summary {
    /// The end-of-run report: what was recorded, how well, and where it went.
    pub fn print(&self, out: &mut impl Write) -> io::Result<()> {
        let secs = self.duration.as_secs_f64();
        let recorded = self.stats.get(Stat::Recorded);
        let what = match &self.processes[..] {
            [] => format!("no Python process ({} processes followed)", self.followed),
            [p] => format!("{} (pid {}, CPython {})", p.name, p.pid, p.version),
            ps => format!("{} Python processes", ps.len()),
        };
        writeln!(
            out,
            "prof-bpf: {} samples of {what} in {secs:.2}s: {:.1} samples/s at --rate {}",
            self.samples,
            recorded as f64 / secs.max(1e-9),
            self.rate_hz,
        )?;
        if self.processes.len() > 1 {
            let mut by_samples: Vec<&PythonProcess> = self.processes.iter().collect();
            by_samples.sort_by_key(|p| std::cmp::Reverse(self.per_process.get(&p.pid)));
            for p in by_samples.iter().take(SUMMARY_PROCESSES) {
                writeln!(
                    out,
                    "prof-bpf:   {} (pid {}, CPython {}): {} samples",
                    p.name,
                    p.pid,
                    p.version,
                    self.per_process.get(&p.pid).copied().unwrap_or(0)
                )?;
            }
            if by_samples.len() > SUMMARY_PROCESSES {
                writeln!(
                    out,
                    "prof-bpf:   and {} more",
                    by_samples.len() - SUMMARY_PROCESSES
                )?;
            }
        }
        for why in &self.skipped {
            writeln!(out, "prof-bpf: not profiled: {why}")?;
        }
        if let Some(off_cpu) = self.off_cpu {
            let idle = off_cpu.as_secs_f64() * self.rate_hz as f64;
            writeln!(
                out,
                "prof-bpf: idle: {:.2}s off the CPU recorded; active {:.1}% of the time",
                off_cpu.as_secs_f64(),
                100.0 * self.samples as f64 / (self.samples as f64 + idle).max(1.0)
            )?;
        }
        writeln!(
            out,
            "prof-bpf: GIL held in {:.1}% of samples",
            100.0 * self.stats.get(Stat::GilHeld) as f64
                / (recorded + self.stats.get(Stat::GilNotHeld)).max(1) as f64
        )?;
        let list = |keep: fn(Stat) -> bool| -> Vec<String> {
            Stat::ALL
                .iter()
                .filter(|&&s| s != Stat::Recorded && keep(s) && self.stats.get(s) > 0)
                .map(|&s| format!("{} {}", self.stats.get(s), s.name()))
                .collect()
        };
        let outside = list(Stat::is_outside_python);
        if !outside.is_empty() {
            writeln!(out, "prof-bpf: outside Python code: {}", outside.join(", "))?;
        }
        let left_out = list(|s| s == Stat::GilNotHeld);
        if !left_out.is_empty() {
            writeln!(out, "prof-bpf: left out: {}", left_out.join(", "))?;
        }
        let errors = list(|s| {
            !s.is_outside_python() && !s.is_tally() && !s.is_native() && s != Stat::GilNotHeld
        });
        if errors.is_empty() {
            writeln!(out, "prof-bpf: errors: none")?;
        } else {
            writeln!(out, "prof-bpf: errors: {}", errors.join(", "))?;
        }
        if let Some((load, unknown)) = &self.native {
            let unwinds: u64 = Stat::ALL
                .iter()
                .filter(|s| s.is_native())
                .map(|&s| self.stats.get(s))
                .sum();
            let complete = self.stats.get(Stat::NativeComplete);
            let failures = list(|s| s.is_native() && s != Stat::NativeComplete);
            writeln!(
                out,
                "prof-bpf: native unwind: {:.1}% complete ({complete} of {unwinds} samples reached the outermost frame){}",
                100.0 * complete as f64 / unwinds.max(1) as f64,
                if failures.is_empty() {
                    String::new()
                } else {
                    format!("; stopped early: {}", failures.join(", "))
                },
            )?;
            writeln!(
                out,
                "prof-bpf: native unwind tables: {} rows for {} files{}",
                load.rows,
                load.files,
                if load.failed.is_empty() {
                    String::new()
                } else {
                    let failed: Vec<String> = load
                        .failed
                        .iter()
                        .map(|(f, why)| format!("{f} ({why})"))
                        .collect();
                    format!("; frame pointers only for: {}", failed.join(", "))
                },
            )?;
            if !unknown.is_empty() {
                let reasons: Vec<String> = unknown
                    .iter()
                    .map(|(why, n)| format!("{n} {why}"))
                    .collect();
                writeln!(
                    out,
                    "prof-bpf: native frames not named: {}",
                    reasons.join(", ")
                )?;
            }
        }
        if let Some(rt) = self.run_time.filter(|rt| rt.runs > 0) {
            writeln!(
                out,
                "prof-bpf: kernel time: {:.0} ns per CPU sample over {} runs, {:.0} ns per recorded sample",
                rt.total.as_nanos() as f64 / rt.runs as f64,
                rt.runs,
                rt.total.as_nanos() as f64 / recorded.max(1) as f64,
            )?;
        }
        if self.unknown_frames > 0 {
            writeln!(
                out,
                "prof-bpf: {} frames could not be named (shown as [unknown])",
                self.unknown_frames
            )?;
        }
        let why = match self.stop {
            StopReason::TargetExited => "the program exited",
            StopReason::Duration => "the duration ended",
            StopReason::Signal => "interrupted",
            StopReason::Error => "an error",
        };
        if self.saved.is_err() {
            writeln!(
                out,
                "prof-bpf: stopped ({why}); could not write {} to {}",
                self.format,
                if self.output == Path::new("-") {
                    "stdout".to_string()
                } else {
                    self.output.display().to_string()
                }
            )
        } else if self.output == Path::new("-") {
            writeln!(
                out,
                "prof-bpf: stopped ({why}); wrote {} to stdout",
                self.format
            )
        } else {
            writeln!(
                out,
                "prof-bpf: stopped ({why}); wrote {} to {}: {}",
                self.format,
                self.output.display(),
                self.format.how_to_open()
            )
        }
    }
}
