//! Command-line arguments (clap) and their validation into the configs the commands run with.
//! Pure: no process, file or kernel access, so it is unit tested with `try_parse_from`.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{
    dump::DumpConfig,
    output::Format,
    profile::collect::FrameOptions,
    report::{ReportConfig, ReportOptions, SortKey},
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
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// PID of a running Python process.
    #[arg(short, long, value_name = "PID")]
    pub pid: Option<u32>,

    /// Every Python process on the machine, including those that start while watching.
    #[arg(long, conflicts_with = "pid")]
    pub all: bool,

    /// Samples per second, per CPU.
    #[arg(short, long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub rate: u64,

    /// Seconds between refreshes (the percentages cover the last one).
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    pub refresh: f64,

    /// Start with line numbers shown (`l` toggles them).
    #[arg(long)]
    pub lines: bool,

    /// Mixed stacks: record native frames too (`n` then toggles showing them).
    #[arg(short, long)]
    pub native: bool,

    /// The command to launch and watch, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

impl TopArgs {
    pub fn into_config(self) -> Result<TopConfig, ConfigError> {
        let refresh = match self.refresh {
            r if r.is_finite() && r >= 0.1 => Duration::from_secs_f64(r),
            r => return Err(ConfigError::BadRefresh(r.to_string())),
        };
        Ok(TopConfig {
            target: target(self.pid, self.all, self.command)?,
            rate_hz: self.rate,
            refresh,
            lines: self.lines,
            native: self.native,
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
pub struct DumpArgs {
    /// PID of a running Python process.
    #[arg(short, long, value_name = "PID")]
    pub pid: u32,

    /// Native (C, C++, Rust) frames too, with the Python frames in place of the interpreter's
    /// eval loop (stops the threads for well under a millisecond, with ptrace).
    #[arg(short, long)]
    pub native: bool,

    /// Do not show line numbers.
    #[arg(long)]
    pub nolineno: bool,
}

impl DumpArgs {
    pub fn into_config(self) -> DumpConfig {
        DumpConfig {
            pid: self.pid,
            native: self.native,
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
    #[arg(short, long, default_value_t = 25)]
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
    #[arg(short, long, value_name = "PID")]
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

    /// Output file [default: NAME-PID-TIME.EXT in the current directory]; `-` for stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Flamegraph)]
    pub format: Format,

    /// Samples per second, per CPU.
    #[arg(short, long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub rate: u64,

    /// Stop after this many seconds [default: when the program exits or on Ctrl-C].
    #[arg(short, long, value_name = "SECONDS")]
    pub duration: Option<f64>,

    /// Aggregate by function (its first line) rather than by line.
    #[arg(short = 'F', long)]
    pub function: bool,

    /// Do not show line numbers.
    #[arg(long)]
    pub nolineno: bool,

    /// Show each thread (id and name) as the root frame of its stacks.
    #[arg(long)]
    pub threads: bool,

    /// Mixed stacks: native (C, C++, Rust) frames with the Python frames in place of the
    /// interpreter's eval loop, unwound in the kernel from .eh_frame.
    #[arg(short = 'n', long)]
    pub native: bool,

    /// Kernel frames on top of the stack for samples taken in the kernel (system calls, page
    /// faults).
    #[arg(long)]
    pub kernel: bool,

    /// The command to launch and profile, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// What to profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Pid(u32),
    Launch(Vec<String>),
    /// Every Python process (`--all`).
    All,
}

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

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("give one of --pid PID, --all or a command after `--`, not several")]
    BothTargets,
    #[error(
        "nothing to profile: give --pid PID, --all, or a command after `--` (e.g. `prof-bpf record -- python app.py`)"
    )]
    NoTarget,
    #[error("--duration must be a positive number of seconds, not {0}")]
    BadDuration(String),
    #[error("--refresh must be at least 0.1 seconds, not {0}")]
    BadRefresh(String),
}

impl RecordArgs {
    pub fn into_config(self) -> Result<RecordConfig, ConfigError> {
        let target = target(self.pid, self.all, self.command)?;
        // Several processes: each stack says whose it is.
        let processes = self.all || self.subprocesses;
        let duration = match self.duration {
            None => None,
            Some(d) if d.is_finite() && d > 0.0 => Some(Duration::from_secs_f64(d)),
            Some(d) => return Err(ConfigError::BadDuration(d.to_string())),
        };
        Ok(RecordConfig {
            target,
            output: self.output,
            format: self.format,
            rate_hz: self.rate,
            duration,
            frames: FrameOptions {
                function: self.function,
                nolineno: self.nolineno,
                threads: self.threads,
                processes,
                native: self.native,
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

    fn record(args: &[&str]) -> Result<RecordConfig, String> {
        let cli = Cli::try_parse_from(["prof-bpf", "record"].iter().chain(args))
            .map_err(|e| e.to_string())?;
        let Command::Record(r) = cli.command else {
            panic!("not record")
        };
        r.into_config().map_err(|e| e.to_string())
    }

    fn report(args: &[&str]) -> Result<ReportConfig, String> {
        let cli = Cli::try_parse_from(["prof-bpf", "report"].iter().chain(args))
            .map_err(|e| e.to_string())?;
        let Command::Report(r) = cli.command else {
            panic!("not report")
        };
        Ok(r.into_config())
    }

    fn top(args: &[&str]) -> Result<TopConfig, String> {
        let cli = Cli::try_parse_from(["prof-bpf", "top"].iter().chain(args))
            .map_err(|e| e.to_string())?;
        let Command::Top(t) = cli.command else {
            panic!("not top")
        };
        t.into_config().map_err(|e| e.to_string())
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
            (c.refresh, c.lines, c.native),
            (Duration::from_millis(500), true, true)
        );
        assert!(top(&[]).unwrap_err().contains("nothing to profile"));
        assert!(
            top(&["-p", "1", "--refresh", "0"])
                .unwrap_err()
                .contains("at least 0.1")
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
        assert!(record(&["-p", "x"]).unwrap_err().contains("invalid digit"));
        assert!(
            record(&["-p", "1", "-f", "svg"])
                .unwrap_err()
                .contains("possible values")
        );
    }
}
