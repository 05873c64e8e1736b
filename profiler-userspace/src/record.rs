//! The `record` command: checks the input, starts the kernel sampler, registers the target,
//! drains until the target exits, the duration ends or a signal arrives, and writes the profile.
//! It ties the pipeline stages together and holds no stage's logic itself.

use std::{
    env,
    fs::{self, File},
    io::{self, BufWriter, IsTerminal, Write},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use profiler_common::{Stat, TargetInfo};

use crate::{
    bpf::{BpfError, RunTime, Sampler, Stats},
    cli::{RecordConfig, Target},
    output::Format,
    privilege::{self, NotPrivileged},
    process::{self, ProcessError, PythonProcess},
    profile::{Profile, collect::Collector},
    python::{self, Layout, UnsupportedVersion},
    unwind::{LoadStats, NativeTables},
};

/// How often the kernel maps are drained (and new code objects read while they exist).
const DRAIN_INTERVAL: Duration = Duration::from_millis(50);
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
}

/// What the summary reports.
pub struct Summary {
    pub output: PathBuf,
    pub format: Format,
    pub process: PythonProcess,
    pub samples: u64,
    pub duration: Duration,
    pub rate_hz: u64,
    pub stats: Stats,
    pub unknown_frames: u64,
    pub stop: StopReason,
    pub run_time: Option<RunTime>,
    /// With `--native`: what loading unwind tables met, and native frames left unnamed.
    pub native: Option<(LoadStats, Vec<(String, u64)>)>,
}

/// Fails now if `path` could not be written later, without changing it: an existing file is
/// opened for writing but not truncated; a new one is created and removed again.
fn check_writable(path: &Path) -> Result<(), RecordError> {
    let fail = |source| RecordError::Output {
        path: path.into(),
        source,
    };
    if path == Path::new("-") {
        return Ok(());
    }
    if path.is_dir() {
        return Err(fail(io::Error::other("it is a directory")));
    }
    if path.exists() {
        fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(fail)?;
    } else {
        File::create(path).map_err(fail)?;
        fs::remove_file(path).map_err(fail)?;
    }
    Ok(())
}

pub fn run(cfg: &RecordConfig, stop: &AtomicBool) -> Result<Summary, RecordError> {
    privilege::check()?;
    check_rate(cfg.rate_hz)?;
    if let Some(path) = &cfg.output {
        check_writable(path)?;
    }
    record(cfg, stop)
}

fn record(cfg: &RecordConfig, stop: &AtomicBool) -> Result<Summary, RecordError> {
    // Everything that can be checked without the kernel is checked before loading it; a
    // launched command starts only once the kernel program is sampling.
    let (mut sampler, process, layout, mut child) = match &cfg.target {
        Target::Pid(pid) => {
            let p = process::inspect(*pid)?;
            let layout = supported_layout(&p)?;
            (Sampler::start(cfg.rate_hz, cfg.native)?, p, layout, None)
        }
        Target::Launch(cmd) => {
            check_program(&cmd[0])?;
            let sampler = Sampler::start(cfg.rate_hz, cfg.native)?;
            let mut c = launch(cmd)?;
            match wait_for_python(&mut c, &cmd[0], stop) {
                Ok((p, layout)) => (sampler, p, layout, Some(c)),
                Err(e) => {
                    let _ = c.kill();
                    let _ = c.wait();
                    return Err(e);
                }
            }
        }
    };
    let output = match &cfg.output {
        Some(path) => path.clone(),
        None => {
            let path = default_output(&process, cfg.format);
            check_writable(&path)?;
            path
        }
    };

    // Unwind tables before the target: its first samples already unwind.
    let mut tables = NativeTables::default();
    if cfg.native {
        refresh_tables(&mut tables, &mut sampler, process.pid)?;
    }
    sampler.add_target(
        process.pid,
        TargetInfo {
            runtime_addr: process.runtime_addr,
            offsets: layout.kernel,
            version: layout.version.as_u16(),
            // Only mixed stacks need the eval-call boundaries; without them the kernel skips the
            // flag's read.
            frame_is_entry: if cfg.native {
                crate::profile::merge::entry_flag_offset(layout.version)
            } else {
                profiler_common::NO_OFFSET
            },
            options: if cfg.kernel {
                profiler_common::target_options::KERNEL_STACKS
            } else {
                0
            },
            _pad: [0; 2],
        },
    )?;
    let mut collector = Collector::new(cfg.frames);
    if cfg.kernel {
        collector.enable_kernel_frames();
    }
    collector.add_target(process.clone(), layout);

    let started = Instant::now();
    let mut last_drain = started;
    let progress = Progress::new();
    let reason = loop {
        sampler.wait_for_new_stacks(TICK, &mut collector)?;
        if cfg.native && collector.take_saw_unmapped() {
            // A library was mapped since the last refresh: load its table now, not at the drain.
            refresh_tables(&mut tables, &mut sampler, process.pid)?;
        }
        let exited = match &mut child {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => !process::is_alive(&process),
        };
        if exited {
            break StopReason::TargetExited;
        }
        if stop.load(Ordering::Relaxed) {
            break StopReason::Signal;
        }
        if cfg.duration.is_some_and(|d| started.elapsed() >= d) {
            break StopReason::Duration;
        }
        if last_drain.elapsed() >= DRAIN_INTERVAL {
            if cfg.native {
                // Libraries mapped since (an `import numpy`) get their tables now.
                refresh_tables(&mut tables, &mut sampler, process.pid)?;
            }
            sampler.drain(&mut collector)?;
            last_drain = Instant::now();
            progress.show(
                collector.samples(),
                sampler.stats()?.lost(),
                started.elapsed(),
            );
        }
    };
    let elapsed = started.elapsed();
    sampler.drain(&mut collector)?;
    let stats = sampler.stats()?;
    let run_time = sampler.run_time();
    drop(sampler);
    progress.clear();
    if let Some(mut c) = child {
        stop_child(&mut c, reason);
    }

    if cfg.native {
        collector.set_native_mappings(process.pid, tables.mappings(process.pid).to_vec());
    }
    let profile = collector.finish(cfg.rate_hz, elapsed);
    write_profile(&profile, cfg.format, &process, &output)?;
    Ok(Summary {
        output,
        format: cfg.format,
        process,
        samples: profile.total_samples(),
        duration: elapsed,
        rate_hz: cfg.rate_hz,
        stats,
        unknown_frames: profile.unknown_frames,
        stop: reason,
        run_time,
        native: cfg
            .native
            .then(|| (tables.stats.clone(), profile.unknown_native.clone())),
    })
}

/// Loads the tables of the target's newly mapped files; a target that has exited is not an
/// error (the loop notices it next).
fn refresh_tables(
    tables: &mut NativeTables,
    sampler: &mut Sampler,
    pid: u32,
) -> Result<(), RecordError> {
    match tables.refresh(pid, sampler) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) => {
            Ok(())
        }
        Err(e) => Err(RecordError::Bpf(BpfError::Native(e))),
    }
}

fn write_profile(
    profile: &Profile,
    format: Format,
    process: &PythonProcess,
    path: &Path,
) -> Result<(), RecordError> {
    let title = format!("prof-bpf: {} (pid {})", process.name, process.pid);
    let writer = format.writer(title);
    let fail = |source| RecordError::Output {
        path: path.into(),
        source,
    };
    if path == Path::new("-") {
        let stdout = io::stdout();
        let mut out = BufWriter::new(stdout.lock());
        return match writer.write(profile, &mut out).and_then(|()| out.flush()) {
            // A closed pipe (`| head`) is the reader's choice, not an error.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
            r => r.map_err(fail),
        };
    }
    let mut out = BufWriter::new(File::create(path).map_err(fail)?);
    writer
        .write(profile, &mut out)
        .and_then(|()| out.flush())
        .map_err(fail)?;
    privilege::give_to_invoking_user(path);
    Ok(())
}

/// The layout for the process's Python, or the error naming its unsupported version.
fn supported_layout(p: &PythonProcess) -> Result<Layout, RecordError> {
    python::layout_for(p.version).map_err(|source| RecordError::Unsupported { pid: p.pid, source })
}

fn check_rate(rate: u64) -> Result<(), RecordError> {
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
fn stop_child(child: &mut Child, reason: StopReason) {
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

/// `NAME-PID-YYYYmmdd-HHMMSS.EXT`, like py-spy's default names.
fn default_output(p: &PythonProcess, format: Format) -> PathBuf {
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
    let name: String = p
        .name
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
        "{name}-{}-{:04}{:02}{:02}-{:02}{:02}{:02}.{}",
        p.pid,
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
            eprint!(
                "\r\x1b[Kprof-bpf: {samples} samples, {lost} errors, {:.1}s (Ctrl-C to stop and write)",
                elapsed.as_secs_f64()
            );
        }
    }

    fn clear(&self) {
        if self.tty {
            eprint!("\r\x1b[K");
        }
    }
}

impl Summary {
    /// The end-of-run report: what was recorded, how well, and where it went.
    pub fn print(&self, out: &mut impl Write) -> io::Result<()> {
        let secs = self.duration.as_secs_f64();
        let recorded = self.stats.get(Stat::Recorded);
        writeln!(
            out,
            "prof-bpf: {} samples of {} (pid {}, CPython {}) in {secs:.2}s: {:.1} samples/s at --rate {}",
            self.samples,
            self.process.name,
            self.process.pid,
            self.process.version,
            recorded as f64 / secs.max(1e-9),
            self.rate_hz,
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
        let errors = list(|s| !s.is_outside_python() && !s.is_native());
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
        };
        if self.output == Path::new("-") {
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
