//! Command-line arguments (clap) and their validation into the configs the commands run with.
//! Pure: no process, file or kernel access, so it is unit tested with `try_parse_from`.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{output::Format, profile::collect::FrameOptions};

#[derive(Debug, Parser)]
#[command(name = "prof-bpf", version, about = "A kernel-assisted sampling profiler for Python", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Record a profile of a running process (--pid) or of a command (after --) and write it to a
    /// file.
    Record(RecordArgs),
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// PID of a running Python process.
    #[arg(short, long, value_name = "PID")]
    pub pid: Option<u32>,

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
    /// Mixed native and Python stacks (`--native`).
    pub native: bool,
    /// Kernel frames too (`--kernel`).
    pub kernel: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("give either --pid PID or a command after `--`, not both")]
    BothTargets,
    #[error(
        "nothing to profile: give --pid PID or a command after `--` (e.g. `prof-bpf record -- python app.py`)"
    )]
    NoTarget,
    #[error("--duration must be a positive number of seconds, not {0}")]
    BadDuration(String),
}

impl RecordArgs {
    pub fn into_config(self) -> Result<RecordConfig, ConfigError> {
        let target = match (self.pid, self.command.is_empty()) {
            (Some(_), false) => return Err(ConfigError::BothTargets),
            (Some(pid), true) => Target::Pid(pid),
            (None, false) => Target::Launch(self.command),
            (None, true) => return Err(ConfigError::NoTarget),
        };
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
            },
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
        let Command::Record(r) = cli.command;
        r.into_config().map_err(|e| e.to_string())
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
        assert!(c.frames.function && !c.frames.nolineno);
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
            record(&["-p", "1", "--", "python"])
                .unwrap_err()
                .contains("not both")
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
