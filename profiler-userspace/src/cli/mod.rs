//! Command-line arguments (clap) and their validation into the configs the commands run with.
//! Pure: no process, file or kernel access, so it is unit tested with `try_parse_from`. Every
//! mistake in the arguments is a clap error: one message that names the option, exit status 2.

use std::{ffi::OsString, path::PathBuf, time::Duration};

use clap::{Args, CommandFactory as _, Parser, Subcommand, error::ErrorKind};

use crate::{
    agent::{AgentConfig, Overrides},
    dump::DumpConfig,
    output::Format,
    profile::collect::FrameOptions,
    record::RecordConfig,
    report::{ReportConfig, ReportOptions, SortKey},
    session::Target,
    top::TopConfig,
};

#[derive(Debug, Parser)]
#[command(name = "prof-bpf", version = crate::VERSION, about = "A kernel-assisted sampling profiler for Python", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Record a profile of a running process (--pid) or of a command (after --) and write it to a
    /// file.
    Record(RecordArgs),
    /// A live view of where a process spends its time, like py-spy top.
    Top(TopArgs),
    /// Print the current Python stack of every thread of a running process, once.
    Dump(DumpArgs),
    /// Print the statistics of a profile recorded with `-f profbpf`, or convert it (`-f`).
    Report(ReportArgs),
    /// Profile every Python process, always, and export OTLP profiles to an OpenTelemetry
    /// Collector every interval (configured by the OTEL_EXPORTER_OTLP_* variables).
    Agent(AgentArgs),
}

/// The largest pid Linux hands out (PID_MAX_LIMIT on 64-bit kernels).
const PID_MAX: i64 = 4_194_304;
/// The longest `--duration`: a century, far past any recording and far from overflow.
const MAX_DURATION_SECS: f64 = 100.0 * 365.0 * 24.0 * 3600.0;
/// The longest `--refresh`: a day.
const MAX_REFRESH_SECS: f64 = 24.0 * 3600.0;

fn parse_pid(s: &str) -> Result<u32, String> {
    // In hex too, as py-spy takes it (`0x1f90`).
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => i64::from_str_radix(hex, 16),
        None => s.parse::<i64>(),
    };
    match parsed {
        Ok(pid) if (1..=PID_MAX).contains(&pid) => Ok(pid as u32),
        Ok(pid) => Err(format!("{pid} is not a process id (1 to {PID_MAX})")),
        Err(_) => Err(format!(
            "{s:?} is not a process id (a number, 1 to {PID_MAX}, in decimal or 0x hex)"
        )),
    }
}

/// Seconds as a positive finite number no larger than `max`.
fn parse_seconds(s: &str, min: f64, max: f64) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !secs.is_finite() || secs < min || secs > max {
        return Err(format!(
            "{s} seconds is out of range: give a number from {min} to {max}"
        ));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    match parse_seconds(s, 0.0, MAX_DURATION_SECS)? {
        Duration::ZERO => Err(format!("{s} seconds is too short: give a positive number")),
        d => Ok(d),
    }
}

fn parse_refresh(s: &str) -> Result<Duration, String> {
    parse_seconds(s, 0.1, MAX_REFRESH_SECS)
}

/// The longest `--interval`: an hour.
const MAX_INTERVAL_SECS: f64 = 3600.0;

fn parse_interval(s: &str) -> Result<Duration, String> {
    parse_seconds(s, 1.0, MAX_INTERVAL_SECS)
}

/// A validated invocation of one of the commands.
#[derive(Clone, Debug, PartialEq)]
pub enum Config {
    Record(RecordConfig),
    Top(TopConfig),
    Dump(DumpConfig),
    Report(ReportConfig),
    Agent(AgentConfig),
}

/// Parses and validates `args` (the program name first). A usage mistake is a clap error
/// (`exit_code()` 2, or 0 for --help and --version).
pub fn parse_from<I, T>(args: I) -> Result<Config, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = Cli::try_parse_from(args)?;
    let (name, validated) = match cli.command {
        Command::Record(a) => ("record", a.into_config().map(Config::Record)),
        Command::Top(a) => ("top", a.into_config().map(Config::Top)),
        Command::Dump(a) => ("dump", Ok(Config::Dump(a.into_config()))),
        Command::Report(a) => ("report", Ok(Config::Report(a.into_config()))),
        Command::Agent(a) => ("agent", Ok(Config::Agent(a.into_config()))),
    };
    validated.map_err(|e| {
        let mut cmd = Cli::command();
        cmd.build();
        let sub = cmd
            .find_subcommand_mut(name)
            .expect("every command is a subcommand");
        sub.error(ErrorKind::ArgumentConflict, e)
    })
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// PID of a running Python process.
    #[arg(short, long, value_name = "PID", value_parser = parse_pid, allow_negative_numbers = true)]
    pub pid: Option<u32>,

    /// Every Python process on the machine, including those that start while watching.
    #[arg(long, conflicts_with = "pid")]
    pub all: bool,

    /// Also the target's descendants (forked workers, subprocesses that run Python), their
    /// functions counted with the target's.
    #[arg(short, long)]
    pub subprocesses: bool,

    /// Only samples of threads holding the GIL.
    #[arg(short, long)]
    pub gil: bool,

    /// Samples per second, per CPU.
    #[arg(short, long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000), allow_negative_numbers = true)]
    pub rate: u64,

    /// Seconds between refreshes (the percentages cover the last one); `--delay` as in py-spy.
    #[arg(long, visible_alias = "delay", value_name = "SECONDS", default_value = "1", value_parser = parse_refresh, allow_negative_numbers = true)]
    pub refresh: Duration,

    /// Start with line numbers shown (`l` toggles them).
    #[arg(long)]
    pub lines: bool,

    /// Mixed stacks: record native frames too (`n` then toggles showing them).
    #[arg(short, long)]
    pub native: bool,

    /// Show asyncio tasks as rows (`task NAME`), each with its share, in place of the event
    /// loop's frames (CPython 3.11+).
    #[arg(long)]
    pub async_aware: bool,

    /// Accepted as py-spy takes it; changes nothing: prof-bpf never stops the program to
    /// sample it.
    #[arg(long)]
    pub nonblocking: bool,

    /// The command to launch and watch, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

impl TopArgs {
    pub fn into_config(self) -> Result<TopConfig, ConfigError> {
        Ok(TopConfig {
            target: target(self.pid, self.all, self.command)?,
            rate_hz: self.rate,
            refresh: self.refresh,
            lines: self.lines,
            native: self.native,
            async_aware: self.async_aware,
            subprocesses: self.subprocesses,
            gil: self.gil,
        })
    }
}

/// The target from `--pid`, `--all` or a command, exactly one of them.
fn target(pid: Option<u32>, all: bool, command: Vec<String>) -> Result<Target, ConfigError> {
    match (pid, all, command.is_empty()) {
        (Some(pid), false, true) => Ok(Target::Pid(pid)),
        (None, true, true) => Ok(Target::All),
        (None, false, false) => Ok(Target::Launch(command)),
        (None, false, true) => Err(ConfigError::NoTarget),
        _ => Err(ConfigError::BothTargets),
    }
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Samples per second, per CPU.
    #[arg(short, long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000), allow_negative_numbers = true)]
    pub rate: u64,

    /// Seconds between exports: each export holds the profiles of this window.
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_interval, allow_negative_numbers = true)]
    pub interval: Duration,

    /// Time off the CPU too (sleeping, waiting on I/O or locks), as a second profile per
    /// process (off_cpu/nanoseconds).
    #[arg(short, long)]
    pub idle: bool,

    /// Mixed stacks: native (C, C++, Rust) frames too, unwound in the kernel.
    #[arg(short = 'n', long)]
    pub native: bool,

    /// A file of NAME=value lines (OTEL_EXPORTER_OTLP_*, OTEL_RESOURCE_ATTRIBUTES) read over
    /// the environment, and read again on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub env_file: Option<PathBuf>,

    /// The collector [default: OTEL_EXPORTER_OTLP_ENDPOINT, else http://localhost:4318].
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,

    /// OTLP protocol [default: OTEL_EXPORTER_OTLP_PROTOCOL, else http/protobuf].
    #[arg(long, value_name = "PROTOCOL")]
    pub protocol: Option<String>,

    /// Exports kept while the collector cannot be reached; past that the oldest is dropped
    /// (and counted).
    #[arg(long, value_name = "N", default_value_t = 12, value_parser = clap::value_parser!(u64).range(1..=10_000), allow_negative_numbers = true)]
    pub queue: u64,
}

impl AgentArgs {
    pub fn into_config(self) -> AgentConfig {
        AgentConfig {
            rate_hz: self.rate,
            interval: self.interval,
            idle: self.idle,
            native: self.native,
            env_file: self.env_file,
            overrides: Overrides {
                endpoint: self.endpoint,
                protocol: self.protocol,
            },
            queue: self.queue as usize,
        }
    }
}

#[derive(Debug, Args)]
pub struct DumpArgs {
    /// PID of a running Python process.
    #[arg(short, long, value_name = "PID", value_parser = parse_pid, allow_negative_numbers = true)]
    pub pid: u32,

    /// Native (C, C++, Rust) frames too, with the Python frames in place of the interpreter's
    /// eval loop (stops the threads for well under a millisecond, with ptrace).
    #[arg(short, long)]
    pub native: bool,

    /// Each Python frame's local variables: values of None, bools, ints, floats, str and bytes,
    /// the type and length of lists, tuples, dicts and sets, the type of anything else (`-ll`,
    /// py-spy's "more", gives the same).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub locals: u8,

    /// Every Python process in the tree under PID too (multiprocessing workers, a shell's
    /// Python); processes that are not Python, PID included, are passed over.
    #[arg(short, long)]
    pub subprocesses: bool,

    /// JSON instead of text (one document with a `schema_version`; see the README).
    #[arg(short, long)]
    pub json: bool,

    /// The asyncio tasks too: each with its coroutine chain and the tasks that await it
    /// (CPython 3.11+).
    #[arg(long)]
    pub async_aware: bool,

    /// Do not show line numbers.
    #[arg(long)]
    pub nolineno: bool,

    /// Read the threads while they run instead of stopping them for the read (by default they
    /// are stopped with ptrace, for about a millisecond, so each stack is of one moment).
    #[arg(long, conflicts_with = "native")]
    pub nonblocking: bool,
}

impl DumpArgs {
    pub fn into_config(self) -> DumpConfig {
        DumpConfig {
            pid: self.pid,
            native: self.native,
            locals: self.locals > 0,
            subprocesses: self.subprocesses,
            json: self.json,
            async_aware: self.async_aware,
            nonblocking: self.nonblocking,
            frames: FrameOptions {
                nolineno: self.nolineno,
                ..FrameOptions::default()
            },
        }
    }
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A profile written by `prof-bpf record -f profbpf`.
    #[arg(value_name = "FILE")]
    pub input: PathBuf,

    /// Order of the table's rows.
    #[arg(short, long, value_enum, default_value_t = SortKey::Direct)]
    pub sort: SortKey,

    /// Rows in the table; 0 shows all.
    #[arg(short, long, default_value_t = 25, allow_negative_numbers = true)]
    pub limit: usize,

    /// One row per function rather than per line.
    #[arg(short = 'F', long)]
    pub function: bool,

    /// Convert the profile to this format instead of printing the table.
    #[arg(short, long, value_enum)]
    pub format: Option<Format>,

    /// Where the table or the converted profile goes; `-` for stdout [default: stdout for the
    /// table, INPUT-NAME.EXT beside the input for a conversion].
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

impl ReportArgs {
    pub fn into_config(self) -> ReportConfig {
        ReportConfig {
            input: self.input,
            options: ReportOptions {
                sort: self.sort,
                limit: self.limit,
                by_function: self.function,
            },
            convert: self.format,
            output: self.output,
        }
    }
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// PID of a running Python process.
    #[arg(short, long, value_name = "PID", value_parser = parse_pid, allow_negative_numbers = true)]
    pub pid: Option<u32>,

    /// Every Python process on the machine, including those that start while recording.
    #[arg(long, conflicts_with = "pid")]
    pub all: bool,

    /// Follow the target's child processes too (multiprocessing workers, subprocesses).
    #[arg(short, long)]
    pub subprocesses: bool,

    /// Record time off the CPU too (sleeping, waiting on I/O or locks), at the stack where the
    /// thread left the CPU.
    #[arg(short, long)]
    pub idle: bool,

    /// Keep only samples of threads holding the GIL.
    #[arg(short, long)]
    pub gil: bool,

    /// Root each sample of an asyncio task at `task NAME`, under the tasks that await it, in
    /// place of the event loop's frames (CPython 3.11+).
    #[arg(long)]
    pub async_aware: bool,

    /// Output file [default: NAME-PID-TIME.EXT in the current directory]; `-` for stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Flamegraph)]
    pub format: Format,

    /// Samples per second, per CPU.
    #[arg(short, long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000), allow_negative_numbers = true)]
    pub rate: u64,

    /// Stop after this many seconds [default: when the program exits or on Ctrl-C].
    #[arg(short, long, value_name = "SECONDS", value_parser = parse_duration, allow_negative_numbers = true)]
    pub duration: Option<Duration>,

    /// Aggregate by function (its first line) rather than by line.
    #[arg(short = 'F', long)]
    pub function: bool,

    /// Do not show line numbers.
    #[arg(long)]
    pub nolineno: bool,

    /// Show each thread (id and name) as the root frame of its stacks.
    #[arg(short, long)]
    pub threads: bool,

    /// Mixed stacks: native (C, C++, Rust) frames with the Python frames in place of the
    /// interpreter's eval loop, unwound in the kernel from .eh_frame.
    #[arg(short = 'n', long)]
    pub native: bool,

    /// Kernel frames on top of the stack for samples taken in the kernel (system calls, page
    /// faults).
    #[arg(long)]
    pub kernel: bool,

    /// Accepted as py-spy takes it; changes nothing: prof-bpf never stops the program to
    /// sample it.
    #[arg(long)]
    pub nonblocking: bool,

    /// The command to launch and profile, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("give one of --pid PID, --all or a command after `--`, not several")]
    BothTargets,
    #[error(
        "nothing to profile: give --pid PID, --all, or a command after `--` (e.g. `prof-bpf record -- python app.py`)"
    )]
    NoTarget,
}

impl RecordArgs {
    pub fn into_config(self) -> Result<RecordConfig, ConfigError> {
        let target = target(self.pid, self.all, self.command)?;
        // Several processes: each stack says whose it is.
        let processes = self.all || self.subprocesses;
        Ok(RecordConfig {
            target,
            output: self.output,
            format: self.format,
            rate_hz: self.rate,
            duration: self.duration,
            frames: FrameOptions {
                function: self.function,
                nolineno: self.nolineno,
                threads: self.threads,
                processes,
                native: self.native,
                async_aware: self.async_aware,
            },
            subprocesses: self.subprocesses,
            idle: self.idle,
            gil: self.gil,
            native: self.native,
            kernel: self.kernel,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(command: &str, args: &[&str]) -> Result<Config, String> {
        parse_from(["prof-bpf", command].iter().chain(args)).map_err(|e| e.to_string())
    }

    fn record(args: &[&str]) -> Result<RecordConfig, String> {
        match parse("record", args)? {
            Config::Record(c) => Ok(c),
            other => panic!("not record: {other:?}"),
        }
    }

    fn report(args: &[&str]) -> Result<ReportConfig, String> {
        match parse("report", args)? {
            Config::Report(c) => Ok(c),
            other => panic!("not report: {other:?}"),
        }
    }

    fn top(args: &[&str]) -> Result<TopConfig, String> {
        match parse("top", args)? {
            Config::Top(c) => Ok(c),
            other => panic!("not top: {other:?}"),
        }
    }

    fn agent(args: &[&str]) -> Result<AgentConfig, String> {
        match parse("agent", args)? {
            Config::Agent(c) => Ok(c),
            other => panic!("not agent: {other:?}"),
        }
    }

    #[test]
    fn agent_defaults_and_options() {
        let c = agent(&[]).unwrap();
        assert_eq!(
            (c.rate_hz, c.interval, c.idle, c.native, c.queue),
            (100, Duration::from_secs(10), false, false, 12)
        );
        assert_eq!(c.overrides, Overrides::default());
        let c = agent(&[
            "--interval",
            "5",
            "-r",
            "1000",
            "-i",
            "-n",
            "--endpoint",
            "http://127.0.0.1:4318",
            "--protocol",
            "http/protobuf",
            "--env-file",
            "/etc/prof-bpf/agent.env",
        ])
        .unwrap();
        assert_eq!(
            (c.interval, c.rate_hz, c.idle, c.native),
            (Duration::from_secs(5), 1000, true, true)
        );
        assert_eq!(
            c.overrides.endpoint.as_deref(),
            Some("http://127.0.0.1:4318")
        );
        assert_eq!(c.env_file, Some(PathBuf::from("/etc/prof-bpf/agent.env")));
        assert!(
            agent(&["--interval", "0.5"])
                .unwrap_err()
                .contains("--interval")
        );
        assert!(agent(&["--pid", "1"]).is_err());
    }

    #[test]
    fn dump_flags_short_and_long() {
        let dump = |args: &[&str]| match parse("dump", args) {
            Ok(Config::Dump(c)) => c,
            other => panic!("not dump: {other:?}"),
        };
        let c = dump(&["--pid", "7"]);
        assert_eq!(
            (c.pid, c.native, c.locals, c.subprocesses, c.json),
            (7, false, false, false, false)
        );
        assert!(!c.async_aware);
        assert!(dump(&["-p", "7", "--async-aware"]).async_aware);
        let c = dump(&["-p", "7", "-l", "-s", "-n", "-j"]);
        assert_eq!(
            (c.native, c.locals, c.subprocesses, c.json),
            (true, true, true, true)
        );
        let c = dump(&["-p", "7", "--locals", "--subprocesses", "--nolineno"]);
        assert!(c.locals && c.subprocesses && c.frames.nolineno);
        assert!(parse("dump", &["-l"]).is_err(), "a pid is needed");
        assert!(!c.nonblocking);
        assert!(dump(&["-p", "7", "--nonblocking", "-l"]).nonblocking);
        assert!(dump(&["-p", "7", "-ll"]).locals);
        assert_eq!(dump(&["-p", "0x1f90"]).pid, 0x1f90);
        assert!(
            parse("dump", &["-p", "0xzz"])
                .unwrap_err()
                .contains("0x hex")
        );
        assert!(
            parse("dump", &["-p", "7", "--nonblocking", "--native"]).is_err(),
            "a native stack is only read from a stopped thread"
        );
    }

    #[test]
    fn top_targets_and_options() {
        let c = top(&["--pid", "7"]).unwrap();
        assert_eq!(c.target, Target::Pid(7));
        assert_eq!(
            (c.rate_hz, c.refresh, c.lines, c.native),
            (100, Duration::from_secs(1), false, false)
        );
        let c = top(&["--refresh", "0.5", "--lines", "-n", "--", "python", "x.py"]).unwrap();
        assert_eq!(
            c.target,
            Target::Launch(vec!["python".into(), "x.py".into()])
        );
        assert_eq!(
            (c.refresh, c.lines, c.native, c.async_aware),
            (Duration::from_millis(500), true, true, false)
        );
        assert!(top(&["-p", "7", "--async-aware"]).unwrap().async_aware);
        let c = top(&["-p", "7"]).unwrap();
        assert!(!c.subprocesses && !c.gil);
        let c = top(&["-p", "7", "-s", "-g", "--delay", "2"]).unwrap();
        assert!(c.subprocesses && c.gil);
        assert_eq!(c.refresh, Duration::from_secs(2));
        assert!(top(&[]).unwrap_err().contains("nothing to profile"));
        assert!(
            top(&["-p", "1", "--refresh", "0"])
                .unwrap_err()
                .contains("from 0.1")
        );
    }

    /// A py-spy command line works with its subcommand's name changed: `-t` for `--threads`,
    /// `--nonblocking` taken (prof-bpf never stops the program to sample it).
    #[test]
    fn py_spy_command_lines_are_taken() {
        let c = record(&["-p", "7", "-t", "--nonblocking", "-r", "250", "-F", "-i"]).unwrap();
        assert!(c.frames.threads && c.frames.function && c.idle);
        assert_eq!(c.rate_hz, 250);
        assert_eq!(
            record(&["-p", "7", "--nonblocking"]).unwrap(),
            record(&["-p", "7"]).unwrap()
        );
        assert_eq!(
            top(&["-p", "7", "--nonblocking"]).unwrap(),
            top(&["-p", "7"]).unwrap()
        );
    }

    #[test]
    fn report_defaults_and_conversion() {
        let c = report(&["p.json"]).unwrap();
        assert_eq!(c.input, PathBuf::from("p.json"));
        assert_eq!(
            (c.options.sort, c.options.limit, c.convert),
            (SortKey::Direct, 25, None)
        );
        let c = report(&[
            "p.json",
            "-s",
            "cumulative",
            "-l",
            "0",
            "-F",
            "-f",
            "pprof",
            "-o",
            "-",
        ])
        .unwrap();
        assert_eq!(c.options.sort, SortKey::Cumulative);
        assert!(c.options.by_function && c.options.limit == 0);
        assert_eq!(
            (c.convert, c.output),
            (Some(Format::Pprof), Some(PathBuf::from("-")))
        );
        assert!(report(&[]).unwrap_err().contains("<FILE>"));
        assert!(
            report(&["p", "-s", "size"])
                .unwrap_err()
                .contains("possible values")
        );
    }

    #[test]
    fn pid_with_defaults_like_py_spy() {
        let c = record(&["--pid", "42"]).unwrap();
        assert_eq!(c.target, Target::Pid(42));
        assert_eq!(
            (c.rate_hz, c.format, c.duration, c.output),
            (100, Format::Flamegraph, None, None)
        );
        assert_eq!(c.frames, FrameOptions::default());
        assert!(!c.subprocesses && !c.idle && !c.gil);
    }

    #[test]
    fn all_processes_idle_and_gil_like_py_spy() {
        let c = record(&["--all", "-i", "-g"]).unwrap();
        assert_eq!(c.target, Target::All);
        assert!(c.idle && c.gil && c.frames.processes);
        let c = record(&["-s", "--", "python", "pool.py"]).unwrap();
        assert!(c.subprocesses && c.frames.processes);
        assert!(!record(&["-p", "7"]).unwrap().frames.processes);
    }

    #[test]
    fn launch_with_options() {
        let c = record(&[
            "-r",
            "1000",
            "-d",
            "2.5",
            "-f",
            "speedscope",
            "-o",
            "x.json",
            "-F",
            "--threads",
            "--",
            "python",
            "-c",
            "1",
        ])
        .unwrap();
        assert_eq!(
            c.target,
            Target::Launch(vec!["python".into(), "-c".into(), "1".into()])
        );
        assert_eq!(c.rate_hz, 1000);
        assert_eq!(c.duration, Some(Duration::from_millis(2500)));
        assert_eq!(c.format, Format::Speedscope);
        assert_eq!(c.output, Some(PathBuf::from("x.json")));
        assert!(c.frames.function && !c.frames.nolineno && c.frames.threads);
        let c = record(&["-p", "1", "-n", "--kernel"]).unwrap();
        assert!(c.native && c.kernel);
        let c = record(&["-p", "1"]).unwrap();
        assert!(!c.native && !c.kernel);
        assert!(
            record(&["-f", "raw", "--nolineno", "-p", "1"])
                .unwrap()
                .frames
                .nolineno
        );
    }

    #[test]
    fn bad_invocations_say_what_is_wrong() {
        assert!(record(&[]).unwrap_err().contains("nothing to profile"));
        assert!(
            record(&["--all", "--", "python"])
                .unwrap_err()
                .contains("not several")
        );
        assert!(
            record(&["--all", "-p", "1"])
                .unwrap_err()
                .contains("cannot be used with")
        );
        assert!(
            record(&["-p", "1", "--", "python"])
                .unwrap_err()
                .contains("not several")
        );
        assert!(
            record(&["-p", "1", "-d", "0"])
                .unwrap_err()
                .contains("positive number")
        );
        assert!(
            record(&["-p", "1", "-r", "0"])
                .unwrap_err()
                .contains("0 is not in 1..=100000")
        );
        assert!(
            record(&["-p", "x"])
                .unwrap_err()
                .contains("is not a process id")
        );
        assert!(
            record(&["-p", "1", "-f", "svg"])
                .unwrap_err()
                .contains("possible values")
        );
    }

    /// Values no option should take, and ones at the edge of what they take.
    const EXTREMES: &[&str] = &[
        "",
        " ",
        "0",
        "-0",
        "-1",
        "1",
        "1e20",
        "-1e20",
        "1e-400",
        "1e308",
        "nan",
        "NaN",
        "inf",
        "-inf",
        "0x10",
        "18446744073709551616",
        "4294967296",
        "4194305",
        "99999999999999999999",
        "1.5",
        "0.05",
        "86401",
        "3153600001",
        "--",
        "-",
        "=",
        "\u{0}",
        "é",
        "1 2",
    ];

    /// Every option of every command that takes a value, with a target that is valid on its
    /// own, so the option under test is the only thing that can be wrong.
    fn options() -> Vec<(String, String, Vec<&'static str>)> {
        let mut cmd = Cli::command();
        cmd.build();
        let mut out = Vec::new();
        for sub in cmd.get_subcommands() {
            let name = sub.get_name().to_string();
            for arg in sub.get_arguments() {
                let (Some(long), true) = (arg.get_long(), arg.get_action().takes_values()) else {
                    continue;
                };
                let target: Vec<&str> = match (name.as_str(), long) {
                    ("report", _) => vec!["p.json"],
                    ("agent", _) => vec![],
                    (_, "pid") => vec![],
                    _ => vec!["-p", "1"],
                };
                out.push((name.clone(), format!("--{long}"), target));
            }
        }
        out
    }

    /// Parses `command --option=value target`: never a panic; a refusal is a usage error
    /// (exit 2) whose message names the option.
    fn check_one(command: &str, option: &str, value: &str, target: &[&str]) -> Result<(), String> {
        let with_value = format!("{option}={value}");
        let args = ["prof-bpf", command, with_value.as_str()]
            .into_iter()
            .chain(target.iter().copied());
        match parse_from(args) {
            Ok(_) => Ok(()),
            Err(e) if e.exit_code() != 2 => Err(format!(
                "{command} {option}={value:?}: exit {} ({e})",
                e.exit_code()
            )),
            Err(e) if !e.to_string().contains(option) => Err(format!(
                "{command} {option}={value:?}: the message does not name {option}: {e}"
            )),
            Err(_) => Ok(()),
        }
    }

    #[test]
    fn every_option_refuses_extreme_values_with_a_usage_error_naming_it() {
        let options = options();
        assert!(options.len() >= 12, "{options:?}");
        for (command, option, target) in &options {
            for value in EXTREMES {
                check_one(command, option, value, target).unwrap();
            }
        }
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(2000))]

        /// Random strings, numbers and floats of every kind at every option.
        #[test]
        fn every_option_takes_any_value_without_panicking(
            which in 0usize..64,
            value in prop_oneof![
                ".{0,12}".prop_map(|s: String| s),
                any::<i64>().prop_map(|n| n.to_string()),
                any::<f64>().prop_map(|f| f.to_string()),
                any::<f64>().prop_map(|f| format!("{f:e}")),
            ],
        ) {
            let options = options();
            let (command, option, target) = &options[which % options.len()];
            let checked = check_one(command, option, &value, target);
            prop_assert!(checked.is_ok(), "{}", checked.unwrap_err());
        }

        /// Any mix of targets and flags: a valid config or a usage error, never a panic.
        #[test]
        fn any_mix_of_targets_and_flags_is_a_config_or_a_usage_error(
            command in proptest::sample::select(vec!["record", "top", "dump"]),
            flags in proptest::collection::vec(proptest::sample::select(vec![
                "-p", "7", "--all", "-s", "-i", "-g", "-n", "--kernel", "--threads", "-F",
                "--nolineno", "--lines", "--", "python", "-d", "2", "-r", "1000", "x.py",
            ]), 0..8),
        ) {
            let args = ["prof-bpf", command].into_iter().chain(flags.iter().copied());
            if let Err(e) = parse_from(args) {
                prop_assert!(matches!(e.exit_code(), 0 | 2), "exit {}: {e}", e.exit_code());
                prop_assert!(e.to_string().contains("-"), "names no option: {e}");
            }
        }
    }
}
