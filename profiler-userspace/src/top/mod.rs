//! The `top` command: a live view like py-spy top. It samples the target as `record` does
//! (`session::Session`), takes a snapshot of the profile every refresh (`Session::snapshot`),
//! turns two snapshots into the table (`model`) and draws it (`ui`). It owns the terminal while
//! it runs and gives it back as it was on every way out: `q`, Ctrl-C, SIGTERM, the target
//! exiting, an error (and a panic, through ratatui's hook).

mod input;
mod model;
mod ui;

use std::{
    io,
    io::IsTerminal as _,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use profiler_common::Stat;
use ratatui::{
    DefaultTerminal,
    crossterm::event::{KeyCode, KeyModifiers},
};

pub use model::Column;

use crate::{
    bpf::{BpfError, SamplerOptions},
    privilege,
    profile::{Profile, collect::FrameOptions},
    session::{self, Session, SessionError, SessionOptions, StopReason, Target},
};

/// How often the kernel maps are drained, as in `record`.
const DRAIN_INTERVAL: Duration = Duration::from_millis(50);
/// Longest wait for kernel notices or a key between two checks.
const TICK: Duration = Duration::from_millis(50);
/// How long a notice (e.g. about native frames) stays in the status line.
const NOTICE_TIME: Duration = Duration::from_secs(4);

/// What `n` says when top was started without native frames.
pub const NATIVE_UNAVAILABLE: &str =
    "native frames are recorded from the start: run `top --native` to see them";

#[derive(Debug, thiserror::Error)]
pub enum TopError {
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error("top needs a terminal: its output is not one (use `record` to write a file)")]
    NotATerminal,
    #[error("terminal: {0}")]
    Terminal(#[from] io::Error),
}

impl TopError {
    pub fn is_permission(&self) -> bool {
        match self {
            TopError::Session(e) => e.is_permission(),
            TopError::Bpf(e) => e.is_permission(),
            _ => false,
        }
    }
}

/// A validated `top` invocation.
#[derive(Clone, Debug, PartialEq)]
pub struct TopConfig {
    pub target: Target,
    pub rate_hz: u64,
    /// How often the table is recomputed (its percentages cover this interval).
    pub refresh: Duration,
    /// Start with line numbers (`l` toggles).
    pub lines: bool,
    /// Start asking for native frames (`n` toggles).
    pub native: bool,
    /// Tasks as rows (`--async-aware`).
    pub async_aware: bool,
    /// The target's descendants too (`--subprocesses`).
    pub subprocesses: bool,
    /// Only samples of threads holding the GIL (`--gil`).
    pub gil: bool,
}

/// How `top` ended, for the closing line.
pub struct TopSummary {
    /// The process named by `--pid` or launched; none for `--all`.
    pub pid: Option<u32>,
    pub samples: u64,
    pub elapsed: Duration,
    pub stop: StopReason,
}

pub fn run(cfg: &TopConfig, stop: &AtomicBool) -> Result<TopSummary, TopError> {
    if !io::stdout().is_terminal() {
        return Err(TopError::NotATerminal);
    }
    privilege::check().map_err(SessionError::from)?;
    session::check_rate(cfg.rate_hz)?;
    let options = SessionOptions {
        rate_hz: cfg.rate_hz,
        sampler: SamplerOptions {
            native: cfg.native,
            gil_only: cfg.gil,
            ..SamplerOptions::default()
        },
        frames: FrameOptions {
            native: cfg.native,
            async_aware: cfg.async_aware,
            ..FrameOptions::default()
        },
        subprocesses: cfg.subprocesses,
        kernel: false,
        rescan: session::SCAN_INTERVAL,
    };
    let mut session = Session::start(&cfg.target, options, stop)?;

    let result = ratatui::try_init()
        .map_err(TopError::from)
        .and_then(|mut terminal| {
            let r = Screen::new(cfg, &session).run(&mut terminal, &mut session, stop);
            ratatui::restore();
            r
        });
    let (stop_reason, samples, elapsed) = match result {
        Ok(done) => done,
        Err(e) => {
            if let Some(mut c) = session.take_child() {
                session::stop_child(&mut c, StopReason::Signal);
            }
            return Err(e);
        }
    };
    let pid = session.root_pid();
    let child = session.take_child();
    // Sampling ends before the launched program is told to stop.
    drop(session);
    if let Some(mut c) = child {
        session::stop_child(&mut c, stop_reason);
    }
    Ok(TopSummary {
        pid,
        samples,
        elapsed,
        stop: stop_reason,
    })
}

/// What the header says top watches: every Python process (`--all`), or the process named or
/// launched once its interpreter is known (and its subprocesses, with `--subprocesses`).
fn target_label(all: bool, subprocesses: bool, session: &Session) -> String {
    match (all, session.first_described()) {
        (true, _) => "all Python processes".to_string(),
        (false, Some(p)) if subprocesses => format!("{p} and its subprocesses"),
        (false, Some(p)) => p,
        (false, None) => "the program (no Python seen in it yet)".to_string(),
    }
}

/// The state of the screen between refreshes.
struct Screen {
    target: String,
    /// `--all`, and `--subprocesses`: what `target` says.
    all: bool,
    subprocesses: bool,
    rate_hz: u64,
    refresh: Duration,
    sort: Column,
    lines: bool,
    /// Native frames shown (`n`).
    native: bool,
    /// Native frames recorded (`--native`): `n` can show them.
    recording_native: bool,
    /// `n` was pressed since the last loop turn.
    native_toggled: bool,
    notice: Option<(String, Instant)>,
    /// The previous refresh's snapshot and this one's.
    before: Profile,
    now: Profile,
    header: Option<model::Header>,
    rows: Vec<model::TopRow>,
    /// Kernel samples of the target at the last refresh (all kinds, for Active %).
    kernel_samples: u64,
    /// The kernel's (GIL held, recorded) tallies at the last refresh, for GIL %.
    gil_tallies: (u64, u64),
}

impl Screen {
    fn new(cfg: &TopConfig, session: &Session) -> Self {
        Self {
            target: target_label(cfg.target == Target::All, cfg.subprocesses, session),
            all: cfg.target == Target::All,
            subprocesses: cfg.subprocesses,
            rate_hz: cfg.rate_hz,
            refresh: cfg.refresh,
            sort: Column::default(),
            lines: cfg.lines,
            native: cfg.native,
            recording_native: cfg.native,
            native_toggled: false,
            notice: None,
            before: Profile::default(),
            now: Profile::default(),
            header: None,
            rows: Vec::new(),
            kernel_samples: 0,
            gil_tallies: (0, 0),
        }
    }

    /// Runs until a way out; returns why, the samples and the time.
    fn run(
        mut self,
        terminal: &mut DefaultTerminal,
        session: &mut Session,
        stop: &AtomicBool,
    ) -> Result<(StopReason, u64, Duration), TopError> {
        let started = Instant::now();
        let mut last_drain = started;
        let mut last_refresh = started;
        let mut dirty = true;
        let keyboard = input::Keyboard::open();
        let mut size = terminal.size()?;
        let reason = loop {
            if dirty {
                self.draw(terminal, started.elapsed())?;
                dirty = false;
            }
            session.poll(TICK)?;
            // A terminal that has gone away (a closed window, a dropped ssh session) stops top,
            // as the SIGHUP that may come with it would.
            let keys = match keyboard.read() {
                input::Input::Keys(keys) => keys,
                input::Input::HungUp => break StopReason::Signal,
            };
            let mut quit = false;
            for (code, modifiers) in keys {
                quit |= self.key(code, modifiers);
                dirty = true;
                if quit {
                    break;
                }
            }
            if quit || stop.load(Ordering::Relaxed) {
                break StopReason::Signal;
            }
            let area = terminal.size()?;
            if area != size {
                size = area;
                dirty = true;
            }
            if std::mem::take(&mut self.native_toggled) {
                // The previous snapshot was built the other way: start the interval afresh,
                // so no row compares mixed frames with Python-only ones.
                session.show_native_frames(self.native);
                let snapshot = session.snapshot(self.rate_hz, started.elapsed());
                self.before = snapshot.clone();
                self.now = snapshot;
                self.rows = model::table(&self.before, &self.now, self.lines, self.sort);
            }
            if session.exited() {
                break StopReason::TargetExited;
            }
            if last_drain.elapsed() >= DRAIN_INTERVAL {
                session.drain()?;
                last_drain = Instant::now();
            }
            if last_refresh.elapsed() >= self.refresh {
                let interval = last_refresh.elapsed();
                last_refresh = Instant::now();
                session.drain()?;
                self.refresh(session, started.elapsed(), interval)?;
                dirty = true;
            }
            if self
                .notice
                .as_ref()
                .is_some_and(|(_, at)| at.elapsed() > NOTICE_TIME)
            {
                self.notice = None;
                dirty = true;
            }
        };
        Ok((reason, session.samples(), started.elapsed()))
    }

    /// Handles a key; returns whether to quit.
    fn key(&mut self, code: KeyCode, modifiers: KeyModifiers) -> bool {
        match code {
            KeyCode::Char('q') | KeyCode::Esc => return true,
            // Raw mode turns Ctrl-C into a key, not a signal.
            KeyCode::Char('c') if modifiers.contains(KeyModifiers::CONTROL) => return true,
            KeyCode::Char('l') => self.lines = !self.lines,
            KeyCode::Char('n') if self.recording_native => {
                self.native = !self.native;
                self.native_toggled = true;
            }
            KeyCode::Char('n') => {
                self.notice = Some((NATIVE_UNAVAILABLE.to_string(), Instant::now()));
            }
            KeyCode::Char(c) => match Column::from_key(c) {
                Some(column) => self.sort = column,
                None => return false,
            },
            _ => return false,
        }
        self.rows = model::table(&self.before, &self.now, self.lines, self.sort);
        false
    }

    fn refresh(
        &mut self,
        session: &mut Session,
        elapsed: Duration,
        interval: Duration,
    ) -> Result<(), TopError> {
        let snapshot = session.snapshot(self.rate_hz, elapsed);
        // With --subprocesses a launched program's Python may be found after top started.
        self.target = target_label(self.all, self.subprocesses, session);
        self.before = std::mem::replace(&mut self.now, snapshot);
        self.rows = model::table(&self.before, &self.now, self.lines, self.sort);
        let stats = session.stats()?;
        // Every sample's fate once: not the notes, unwind outcomes and tallies beside them.
        let kernel = stats.fates();
        let threads = session.live_threads();
        let mut header = model::header(
            self.now.total_samples(),
            elapsed.as_secs_f64(),
            kernel - self.kernel_samples,
            interval.as_secs_f64(),
            self.rate_hz,
            threads,
        );
        let gil = (stats.get(Stat::GilHeld), stats.get(Stat::Recorded));
        header.gil_pct = model::gil_pct(self.gil_tallies, gil);
        header.free_threaded =
            !self.now.processes.is_empty() && self.now.processes.iter().all(|p| p.free_threaded());
        self.header = Some(header);
        self.kernel_samples = kernel;
        self.gil_tallies = gil;
        Ok(())
    }

    fn draw(&self, terminal: &mut DefaultTerminal, elapsed: Duration) -> io::Result<()> {
        let view = ui::View {
            target: &self.target,
            elapsed_secs: elapsed.as_secs_f64(),
            rate_hz: self.rate_hz,
            header: self.header.as_ref(),
            rows: &self.rows,
            sort: self.sort,
            lines: self.lines,
            native: self.native,
            notice: self.notice.as_ref().map(|(n, _)| n.as_str()),
        };
        terminal.draw(|frame| ui::draw(frame, &view))?;
        Ok(())
    }
}
