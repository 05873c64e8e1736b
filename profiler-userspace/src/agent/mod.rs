//! The `agent` command: always-on, system-wide profiling shipped as OTLP profiles. It runs one
//! sampling session over every Python process (`session`, as `record --all`; new processes are
//! registered from the kernel's fork and exec reports, ended ones retired from its exit reports,
//! and /proc is scanned in full only at the start and every `RESCAN_INTERVAL`), and every
//! `--interval` takes the window collected (`Session::take_window`), builds one OTLP request
//! with a resource and profile per process (`output::otlp`, resources from `resource`) and hands
//! it to the export queue (`export`), whose own thread sends it (`http` for OTLP/HTTP, `grpc`
//! for OTLP/gRPC) while sampling goes on. SIGTERM exports the last window and waits for the queue up to the export timeout; SIGHUP
//! re-reads the exporter's configuration (`config`). Every interval it logs its own health
//! (samples, kernel losses, exports, drops, BPF time per sample, its CPU and memory) and sends
//! the same figures as attributes of every profile.

pub mod config;
mod export;
mod grpc;
mod http;
pub mod resource;

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant, SystemTime},
};

use prost::Message as _;

pub use config::{ConfigError, ExportConfig, Overrides, Protocol};
pub use export::ExportCounters;

use crate::{
    bpf::{RunTime, SamplerOptions},
    output::otlp::{
        self, Measure, Module, ProcessProfiles, RequestBuilder, Window, proto::AnyValue,
    },
    privilege,
    process::{self, identity},
    profile::{Frame, Profile, Unknown, collect::FrameOptions},
    session::{self, Session, SessionError, SessionOptions, Target},
};
use export::{Batch, Exporter};
use resource::Resources;

/// How often the kernel's count maps are drained. Less often than `record` (50 ms): stacks are
/// named as the kernel announces them whatever the drain interval, and an always-on agent
/// saves the syscalls (at 1 kHz on 2 CPUs a drain holds about 400 samples).
const DRAIN_INTERVAL: Duration = Duration::from_millis(200);
/// How often /proc is scanned in full, besides once at the start. The kernel reports every
/// fork, exec and exit as it happens, and new Pythons are registered from those reports within
/// milliseconds; the scan only finds what they miss (a report lost to a full ring buffer, a
/// libpython loaded long after its program started), so it can be rare: scanning every 100 ms
/// was most of the agent's CPU.
const RESCAN_INTERVAL: Duration = Duration::from_secs(10);
/// Longest wait for kernel notices between two checks of the clock and the signals.
const TICK: Duration = Duration::from_millis(50);
/// Sampling errors in a row after which the agent gives up (a kernel program that cannot be
/// read any more); a lone error is logged and sampling goes on.
const MAX_CONSECUTIVE_ERRORS: u32 = 100;
/// Build ids remembered by file path (`--native`).
const BUILD_ID_CACHE: usize = 4096;

/// A validated `agent` invocation.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentConfig {
    pub rate_hz: u64,
    /// How often a window is exported.
    pub interval: Duration,
    /// Off-CPU time too (`--idle`), as a second profile per process.
    pub idle: bool,
    /// Mixed native and Python stacks (`--native`).
    pub native: bool,
    /// `NAME=value` lines read over the environment, again on SIGHUP.
    pub env_file: Option<PathBuf>,
    /// `--endpoint`, `--protocol`.
    pub overrides: Overrides,
    /// Requests kept while the collector is unreachable (the oldest goes first).
    pub queue: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("sampling failed {MAX_CONSECUTIVE_ERRORS} times in a row, the last time: {0}")]
    Sampling(SessionError),
}

impl AgentError {
    pub fn is_permission(&self) -> bool {
        match self {
            AgentError::Session(e) | AgentError::Sampling(e) => e.is_permission(),
            AgentError::Config(_) => false,
        }
    }
}

/// How the agent ended, for its last line.
#[derive(Clone, Debug, Default)]
pub struct AgentSummary {
    pub windows: u64,
    pub samples: u64,
    pub elapsed: Duration,
    pub export: ExportCounters,
}

/// Reads the exporter's configuration: the env file's variables over the process's.
pub fn load_export_config(cfg: &AgentConfig) -> Result<ExportConfig, ConfigError> {
    let file = match &cfg.env_file {
        None => HashMap::new(),
        Some(path) => config::parse_env_file(&std::fs::read_to_string(path).map_err(|e| {
            ConfigError::EnvFile {
                path: path.display().to_string(),
                error: e.to_string(),
            }
        })?),
    };
    config::from_vars(
        |name| file.get(name).cloned().or_else(|| std::env::var(name).ok()),
        &cfg.overrides,
    )
}

pub fn run(
    cfg: &AgentConfig,
    stop: &AtomicBool,
    reload: &AtomicBool,
) -> Result<AgentSummary, AgentError> {
    let export_config = load_export_config(cfg)?;
    privilege::check().map_err(SessionError::from)?;
    session::check_rate(cfg.rate_hz)?;
    let options = SessionOptions {
        rate_hz: cfg.rate_hz,
        sampler: SamplerOptions {
            idle: cfg.idle,
            native: cfg.native,
            ..SamplerOptions::default()
        },
        frames: FrameOptions {
            native: cfg.native,
            ..FrameOptions::default()
        },
        subprocesses: false,
        kernel: false,
        rescan: RESCAN_INTERVAL,
    };
    let mut session = Session::start(&Target::All, options, stop)?;
    crate::note!(
        "prof-bpf agent {}: profiling every Python process {} times a second{}{}, exporting every {:.1} s to {} ({}{})",
        crate::VERSION,
        cfg.rate_hz,
        if cfg.idle { ", off-CPU time too" } else { "" },
        if cfg.native { ", native frames" } else { "" },
        cfg.interval.as_secs_f64(),
        export_config.endpoint,
        export_config.protocol,
        if export_config.gzip { ", gzip" } else { "" },
    );
    let mut agent = Agent {
        cfg,
        host: otlp::host_name(),
        resources: Resources::new(otlp::host_name(), export_config.resource.clone()),
        exporter: Exporter::start(export_config.clone(), cfg.queue),
        timeout: export_config.timeout,
        health: Health::new(&session),
        build_ids: HashMap::new(),
        summary: AgentSummary::default(),
    };
    let started = Instant::now();
    let mut window_started = Instant::now();
    let mut last_drain = Instant::now();
    let mut errors_in_a_row = 0;
    loop {
        let polled = session.poll(TICK).and_then(|()| {
            if last_drain.elapsed() >= DRAIN_INTERVAL {
                last_drain = Instant::now();
                session.drain()
            } else {
                Ok(())
            }
        });
        match polled {
            Ok(()) => errors_in_a_row = 0,
            Err(e) => {
                errors_in_a_row += 1;
                agent.health.sampling_errors += 1;
                crate::note!("prof-bpf agent: error while sampling (sampling goes on): {e}");
                if errors_in_a_row >= MAX_CONSECUTIVE_ERRORS {
                    let _ = agent.exporter.shutdown(Duration::ZERO);
                    return Err(AgentError::Sampling(e));
                }
            }
        }
        if reload.swap(false, Ordering::Relaxed) {
            agent.reload();
        }
        let stopping = stop.load(Ordering::Relaxed);
        if stopping || window_started.elapsed() >= cfg.interval {
            if let Err(e) = session.drain() {
                crate::note!("prof-bpf agent: error draining the kernel's maps: {e}");
            }
            let elapsed = window_started.elapsed();
            window_started = Instant::now();
            let start = SystemTime::now()
                .checked_sub(elapsed)
                .unwrap_or(SystemTime::now());
            agent.export_window(&mut session, start, elapsed);
            if stopping {
                break;
            }
        }
    }
    let Agent {
        exporter,
        timeout,
        mut summary,
        ..
    } = agent;
    // Sampling ends first: the last window is taken.
    drop(session);
    summary.export = exporter.shutdown(timeout);
    summary.elapsed = started.elapsed();
    let e = &summary.export;
    crate::note!(
        "prof-bpf agent: stopped after {:.1} s: {} windows, {} samples; {} requests sent ({} samples), {} dropped ({} samples), {} rejected ({} samples), {} failed attempts",
        summary.elapsed.as_secs_f64(),
        summary.windows,
        summary.samples,
        e.sent_requests,
        e.sent_samples,
        e.dropped_requests,
        e.dropped_samples,
        e.rejected_requests,
        e.rejected_samples,
        e.failures
    );
    Ok(summary)
}

struct Agent<'a> {
    cfg: &'a AgentConfig,
    host: String,
    resources: Resources,
    exporter: Exporter,
    timeout: Duration,
    health: Health,
    /// Build ids by file path (`--native`), bounded.
    build_ids: HashMap<PathBuf, Option<String>>,
    summary: AgentSummary,
}

impl Agent<'_> {
    /// SIGHUP: the exporter's configuration again (a broken one is refused, the old one kept).
    fn reload(&mut self) {
        match load_export_config(self.cfg) {
            Ok(c) => {
                crate::note!(
                    "prof-bpf agent: SIGHUP: configuration read again: exporting to {} ({}{})",
                    c.endpoint,
                    c.protocol,
                    if c.gzip { ", gzip" } else { "" }
                );
                self.resources.set_extra(c.resource.clone());
                self.timeout = c.timeout;
                self.exporter.reconfigure(c);
            }
            Err(e) => {
                crate::note!("prof-bpf agent: SIGHUP: {e}; keeping the current configuration")
            }
        }
    }

    /// Takes the window, builds its request, queues it and logs the agent's health.
    fn export_window(&mut self, session: &mut Session, start: SystemTime, elapsed: Duration) {
        let w = session.take_window(elapsed);
        let window = Window {
            start,
            duration: elapsed,
            rate_hz: self.cfg.rate_hz,
        };
        let samples = w.cpu.total_samples();
        self.summary.windows += 1;
        self.summary.samples += samples;
        let (counters, queued) = self.exporter.status();
        let figures = self
            .health
            .measure(session, samples, elapsed, &counters, queued);
        let mut b = RequestBuilder::new();
        b.set_profile_attributes(figures.attributes());
        let mut live = Vec::new();
        let mut processes = 0;
        for info in &w.cpu.processes {
            let resource = match session.process(info.pid) {
                Some(p) => {
                    live.push(info.pid);
                    self.resources.of(p).to_vec()
                }
                // It ended before it was read: what the profile knows of it.
                None => self.resources.last_known(info.pid).map_or_else(
                    || {
                        self.resources.with_extra(otlp::basic_resource(
                            &self.host,
                            info.pid,
                            &info.name,
                            &info.version,
                        ))
                    },
                    <[_]>::to_vec,
                ),
            };
            let modules = if self.cfg.native {
                self.native_modules(info.pid, &w.cpu)
            } else {
                HashMap::new()
            };
            let mut profiles = vec![(Measure::CpuSamples, &w.cpu)];
            if self.cfg.idle {
                profiles.push((Measure::OffCpuNanos, &w.off_cpu_ns));
            }
            let before = b.sample_count();
            b.add(
                &ProcessProfiles {
                    pid: info.pid,
                    resource,
                    profiles,
                    modules,
                },
                &window,
            );
            processes += usize::from(b.sample_count() > before);
        }
        self.resources.retain(&live);
        let mut size = 0;
        if !b.is_empty() {
            let body = b.finish().encode_to_vec();
            size = body.len();
            self.exporter.enqueue(Batch { body, samples });
        }
        for why in session.take_skipped() {
            crate::note!("prof-bpf agent: not profiled: {why}");
        }
        figures.log(processes, size, &counters, queued, self.cfg.queue);
    }

    /// The modules (path, build id) of the native addresses of `pid` that could not be named,
    /// from its mappings now; none once it exited.
    fn native_modules(&mut self, pid: u32, profile: &Profile) -> HashMap<String, Module> {
        let mut wanted = HashSet::new();
        for s in profile.samples.iter().filter(|s| s.pid == pid) {
            for &f in &s.frames {
                if let Frame::Unknown(Unknown::NativeAddress {
                    module: Some(m), ..
                }) = &profile.frames[f as usize]
                {
                    wanted.insert(m.clone());
                }
            }
        }
        if wanted.is_empty() {
            return HashMap::new();
        }
        let Ok(maps) = process::read_maps(pid) else {
            return HashMap::new();
        };
        if self.build_ids.len() > BUILD_ID_CACHE {
            self.build_ids.clear();
        }
        let mut out = HashMap::new();
        for path in maps.into_iter().filter_map(|m| m.path) {
            let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                continue;
            };
            if !wanted.contains(&name) || out.contains_key(&name) {
                continue;
            }
            let build_id = self
                .build_ids
                .entry(path.clone())
                .or_insert_with(|| {
                    identity::build_id(
                        &process::proc_dir(pid)
                            .join("root")
                            .join(path.strip_prefix("/").unwrap_or(&path)),
                    )
                })
                .clone();
            out.insert(
                name,
                Module {
                    path: path.to_string_lossy().into_owned(),
                    build_id,
                },
            );
        }
        out
    }
}

/// What the agent measures of itself between two windows.
struct Health {
    started: Instant,
    last: Instant,
    run_time: Option<RunTime>,
    kernel_lost: u64,
    cpu_ticks: u64,
    sampling_errors: u64,
}

/// One window's figures.
struct Figures {
    samples: u64,
    kernel_lost: u64,
    bpf_ns_per_sample: Option<u64>,
    cpu_percent: f64,
    rss_bytes: u64,
    export_dropped_requests: u64,
    export_dropped_samples: u64,
    export_rejected_requests: u64,
    export_failures: u64,
    sampling_errors: u64,
    queued: usize,
}

impl Health {
    fn new(session: &Session) -> Self {
        Self {
            started: Instant::now(),
            last: Instant::now(),
            run_time: session.run_time(),
            kernel_lost: session.stats().map(|s| s.lost()).unwrap_or(0),
            cpu_ticks: own_cpu_ticks(),
            sampling_errors: 0,
        }
    }

    fn measure(
        &mut self,
        session: &Session,
        samples: u64,
        _elapsed: Duration,
        counters: &ExportCounters,
        queued: usize,
    ) -> Figures {
        let wall = self.last.elapsed();
        self.last = Instant::now();
        let run_time = session.run_time();
        let bpf_ns_per_sample = match (self.run_time, run_time) {
            (Some(a), Some(b)) if b.runs > a.runs => {
                Some((b.total.saturating_sub(a.total)).as_nanos() as u64 / (b.runs - a.runs))
            }
            _ => None,
        };
        self.run_time = run_time;
        let lost = session
            .stats()
            .map(|s| s.lost())
            .unwrap_or(self.kernel_lost);
        let kernel_lost = lost.saturating_sub(self.kernel_lost);
        self.kernel_lost = lost;
        let ticks = own_cpu_ticks();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let cpu = ticks.saturating_sub(self.cpu_ticks) as f64 / hz;
        self.cpu_ticks = ticks;
        let _ = self.started;
        Figures {
            samples,
            kernel_lost,
            bpf_ns_per_sample,
            cpu_percent: 100.0 * cpu / wall.as_secs_f64().max(1e-9),
            rss_bytes: own_rss_bytes(),
            export_dropped_requests: counters.dropped_requests,
            export_dropped_samples: counters.dropped_samples,
            export_rejected_requests: counters.rejected_requests,
            export_failures: counters.failures,
            sampling_errors: self.sampling_errors,
            queued,
        }
    }
}

impl Figures {
    /// As profile attributes (`prof_bpf.agent.*`): the window's own figures, and the export's
    /// totals since the agent started.
    fn attributes(&self) -> Vec<(String, AnyValue)> {
        let int = |n: u64| AnyValue::int(n.min(i64::MAX as u64) as i64);
        let mut out = vec![
            ("prof_bpf.agent.window.samples".into(), int(self.samples)),
            (
                "prof_bpf.agent.window.kernel_lost".into(),
                int(self.kernel_lost),
            ),
            (
                "prof_bpf.agent.cpu_percent".into(),
                AnyValue::double(self.cpu_percent),
            ),
            ("prof_bpf.agent.rss_bytes".into(), int(self.rss_bytes)),
            (
                "prof_bpf.agent.export.dropped_requests".into(),
                int(self.export_dropped_requests),
            ),
            (
                "prof_bpf.agent.export.dropped_samples".into(),
                int(self.export_dropped_samples),
            ),
            (
                "prof_bpf.agent.export.rejected_requests".into(),
                int(self.export_rejected_requests),
            ),
            (
                "prof_bpf.agent.export.failures".into(),
                int(self.export_failures),
            ),
            (
                "prof_bpf.agent.export.queued".into(),
                int(self.queued as u64),
            ),
            (
                "prof_bpf.agent.sampling_errors".into(),
                int(self.sampling_errors),
            ),
        ];
        if let Some(ns) = self.bpf_ns_per_sample {
            out.push(("prof_bpf.agent.bpf_ns_per_sample".into(), int(ns)));
        }
        out
    }

    fn log(
        &self,
        processes: usize,
        size: usize,
        counters: &ExportCounters,
        queued: usize,
        capacity: usize,
    ) {
        let bpf = self.bpf_ns_per_sample.map_or("n/a".to_string(), |ns| {
            format!("{:.1} us", ns as f64 / 1000.0)
        });
        crate::note!(
            "prof-bpf agent: window: {processes} processes, {} samples ({} lost in the kernel), request {} KiB queued; export: {} sent, {} dropped ({} samples), {} rejected, {} failed attempts, {queued}/{capacity} queued; BPF {bpf}/sample; agent CPU {:.2} %, RSS {:.1} MiB",
            self.samples,
            self.kernel_lost,
            size.div_ceil(1024),
            counters.sent_requests,
            counters.dropped_requests,
            counters.dropped_samples,
            counters.rejected_requests,
            counters.failures,
            self.cpu_percent,
            self.rss_bytes as f64 / (1024.0 * 1024.0),
        );
        if counters.failures > 0
            && let Some(e) = &counters.last_error
        {
            crate::note!("prof-bpf agent: last export error: {e}");
        }
    }
}

/// This process's CPU time in clock ticks (utime + stime).
fn own_cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

/// This process's resident set size.
fn own_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
