//! The `record` command: checks the input, runs a sampling session until the target exits, the
//! duration ends or a signal arrives, and writes the profile. It ties the stages together
//! (`session`, `output`) and holds none of their logic; `summary` says what happened.

mod summary;

use std::{
    collections::HashMap,
    env, io,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

pub use summary::Summary;

use crate::{
    bpf::SamplerOptions,
    output::{self, Format, file::SaveError},
    privilege,
    profile::{ProcessInfo, Profile, collect::FrameOptions},
    session::{self, Finished, Session, SessionError, SessionOptions, StopReason, Target},
};

/// How often the kernel maps are drained (and new stacks named while their code lives).
const DRAIN_INTERVAL: Duration = Duration::from_millis(50);
/// How often stop conditions and the progress line are checked.
const TICK: Duration = Duration::from_millis(50);

/// A validated `record` invocation.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordConfig {
    pub target: Target,
    pub output: Option<PathBuf>,
    pub format: Format,
    pub rate_hz: u64,
    pub duration: Option<Duration>,
    pub frames: FrameOptions,
    /// Follow child processes (`--subprocesses`).
    pub subprocesses: bool,
    /// Record off-CPU time (`--idle`).
    pub idle: bool,
    /// Only samples with the GIL held (`--gil`).
    pub gil: bool,
    /// Mixed native and Python stacks (`--native`).
    pub native: bool,
    /// Kernel frames too (`--kernel`).
    pub kernel: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("cannot write the profile to {}: {source}", path.display())]
    Output { path: PathBuf, source: io::Error },
}

impl RecordError {
    pub fn is_permission(&self) -> bool {
        match self {
            RecordError::Session(e) => e.is_permission(),
            RecordError::Output { .. } => false,
        }
    }
}

pub fn run(cfg: &RecordConfig, stop: &AtomicBool) -> Result<Summary, RecordError> {
    privilege::check().map_err(SessionError::from)?;
    session::check_rate(cfg.rate_hz)?;
    // The default name depends on the target, known only once it runs: its directory is checked
    // before anything is launched (a launched program is never left running for a profile that
    // could not be written).
    let (probe, shown) = match &cfg.output {
        Some(path) => (path.clone(), path.clone()),
        None => (
            default_output(None, None, cfg.format),
            env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
        ),
    };
    output::file::check_writable(&probe).map_err(|source| RecordError::Output {
        path: shown,
        source,
    })?;
    record(cfg, stop)
}

fn record(cfg: &RecordConfig, stop: &AtomicBool) -> Result<Summary, RecordError> {
    let options = SessionOptions {
        rate_hz: cfg.rate_hz,
        sampler: SamplerOptions {
            idle: cfg.idle,
            gil_only: cfg.gil,
            native: cfg.native,
            ..SamplerOptions::default()
        },
        frames: cfg.frames,
        subprocesses: cfg.subprocesses,
        kernel: cfg.kernel,
        rescan: session::SCAN_INTERVAL,
    };
    let mut session = Session::start(&cfg.target, options, stop)?;
    let output = match &cfg.output {
        Some(path) => path.clone(),
        None => default_output(
            session.first_process().map(|p| (p.name.as_str(), p.pid)),
            session.root_pid(),
            cfg.format,
        ),
    };
    announce(cfg, &session);
    let started = Instant::now();
    let (reason, failure) = sample(cfg, &mut session, stop, started);
    let elapsed = started.elapsed();
    let (finished, finish_error) = session.finish();
    let Finished {
        stats,
        run_time,
        followed,
        collector,
        child,
        skipped,
        native,
        kernel,
    } = finished;
    if let Some(mut c) = child {
        session::stop_child(&mut c, reason);
    }

    let processes: Vec<ProcessInfo> = collector.processes().to_vec();
    let totals = collector.totals();
    let profile = collector.finish(cfg.rate_hz, elapsed);
    let saved = write_profile(&profile, cfg.format, &title(&processes), &output);
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
        unattributed: totals.unattributed,
        off_cpu: cfg.idle.then_some(totals.off_cpu),
        duration: elapsed,
        rate_hz: cfg.rate_hz,
        stats,
        unknown_frames: profile.unknown_frames,
        stop: reason,
        run_time,
        kernel,
        native,
        failure: failure.or(finish_error).map(RecordError::from),
        saved,
    })
}

/// Says once sampling runs and the target is registered, as py-spy says it: a person sees it
/// has begun, and a script can wait for it.
fn announce(cfg: &RecordConfig, session: &Session) {
    let what = match (session.first_described(), &cfg.target) {
        (_, Target::All) => "every Python process".to_string(),
        (Some(p), _) => p,
        (None, _) => format!(
            "pid {} and its Python subprocesses",
            session.root_pid().unwrap_or(0)
        ),
    };
    crate::note!(
        "prof-bpf: sampling {what} {} times a second; Ctrl-C to stop and write the profile",
        cfg.rate_hz
    );
}

/// Samples until the target exits, the duration ends, a signal arrives or an error happens
/// (which ends the recording; what was recorded up to it is still written).
fn sample(
    cfg: &RecordConfig,
    session: &mut Session,
    stop: &AtomicBool,
    started: Instant,
) -> (StopReason, Option<SessionError>) {
    let mut last_drain = started;
    let progress = summary::Progress::new();
    let reason = loop {
        if let Err(e) = session.poll(TICK) {
            break (StopReason::Error, Some(e));
        }
        if session.exited() {
            break (StopReason::TargetExited, None);
        }
        if stop.load(Ordering::Relaxed) {
            break (StopReason::Signal, None);
        }
        if cfg.duration.is_some_and(|d| started.elapsed() >= d) {
            break (StopReason::Duration, None);
        }
        if last_drain.elapsed() >= DRAIN_INTERVAL {
            if let Err(e) = session.drain() {
                break (StopReason::Error, Some(e));
            }
            last_drain = Instant::now();
            let errors = session.stats().map(|s| s.lost()).unwrap_or(0);
            progress.show(session.samples(), errors, started.elapsed());
        }
    };
    progress.clear();
    reason
}

fn title(processes: &[ProcessInfo]) -> String {
    match processes {
        [p] => format!("prof-bpf: {} (pid {})", p.name, p.pid),
        ps => format!("prof-bpf: {} Python processes", ps.len()),
    }
}

fn write_profile(
    profile: &Profile,
    format: Format,
    title: &str,
    path: &Path,
) -> Result<(), SaveError> {
    let writer = format.writer(title.to_string());
    output::file::save(path, format.extension(), |out| writer.write(profile, out))
}

/// `NAME-PID-YYYYmmdd-HHMMSS.EXT`, like py-spy's default names; `all-python-...` for `--all`
/// and `process-PID-...` for a command not known to be Python yet.
fn default_output(named: Option<(&str, u32)>, root: Option<u32>, format: Format) -> PathBuf {
    // libc deprecates `time_t` on musl (the wheel's target) because it will widen on 32-bit
    // targets; on x86_64 it is 64 bits on both libcs.
    #[allow(deprecated)]
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
    let (name, pid) = match (named, root) {
        (Some((name, pid)), _) => (name, pid.to_string()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_say_what_was_profiled() {
        let name = |named, root| {
            default_output(named, root, Format::Speedscope)
                .display()
                .to_string()
        };
        let n = name(Some(("python3.12", 42)), Some(42));
        assert!(
            n.starts_with("python3.12-42-") && n.ends_with(".speedscope.json"),
            "{n}"
        );
        assert!(name(None, Some(7)).starts_with("process-7-"));
        assert!(name(None, None).starts_with("all-python-"));
        assert!(name(Some(("a b/c", 1)), None).starts_with("a-b-c-1-"));
    }
}
