//! The `prof-bpf` binary: parses arguments, runs the command, maps errors to exit codes.

use std::{
    io,
    process::ExitCode,
    sync::{Arc, atomic::AtomicBool},
};

use clap::Parser as _;
use profiler_userspace::{
    cli::{Cli, Command},
    dump, record,
    report::{self, ReportDone},
    top,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Record(args) => {
            let cfg = match args.into_config() {
                Ok(cfg) => cfg,
                Err(e) => return fail(&e, false),
            };
            // Ctrl-C and SIGTERM stop the recording; the profile is still written.
            let stop = match stop_on_signals() {
                Ok(stop) => stop,
                Err(e) => return fail(&e, false),
            };
            match record::run(&cfg, &stop) {
                Ok(summary) => {
                    let _ = summary.print(&mut io::stderr());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    let permission = e.is_permission();
                    fail(&e, permission)
                }
            }
        }
        Command::Top(args) => {
            let cfg = match args.into_config() {
                Ok(cfg) => cfg,
                Err(e) => return fail(&e, false),
            };
            // SIGTERM (and SIGINT before the terminal is raw) end top and restore the terminal.
            let stop = match stop_on_signals() {
                Ok(stop) => stop,
                Err(e) => return fail(&e, false),
            };
            match top::run(&cfg, &stop) {
                Ok(s) => {
                    let why = match s.stop {
                        record::StopReason::TargetExited => "the program exited",
                        _ => "quit",
                    };
                    let what = match s.pid {
                        Some(pid) => format!("pid {pid}"),
                        None => "all Python processes".to_string(),
                    };
                    eprintln!(
                        "prof-bpf: top of {what} stopped ({why}) after {:.1}s, {} samples",
                        s.elapsed.as_secs_f64(),
                        s.samples
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    let permission = e.is_permission();
                    fail(&e, permission)
                }
            }
        }
        Command::Dump(args) => match dump::run(&args.into_config(), &mut io::stdout().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(dump::DumpError::Write(e)) if e.kind() == io::ErrorKind::BrokenPipe => {
                ExitCode::SUCCESS
            }
            Err(e) => {
                let permission = e.is_permission();
                fail(&e, permission)
            }
        },
        Command::Report(args) => match report::run(&args.into_config()) {
            Ok(ReportDone::Printed) => ExitCode::SUCCESS,
            Ok(ReportDone::Converted { format, path }) => {
                if path.as_os_str() != "-" {
                    eprintln!(
                        "prof-bpf: wrote {format} to {}: {}",
                        path.display(),
                        format.how_to_open()
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e, false),
        },
    }
}

/// A flag SIGINT and SIGTERM set, for a command to stop cleanly.
fn stop_on_signals() -> io::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    Ok(stop)
}

/// Prints `prof-bpf: error: <error chain>` and a hint where one helps.
fn fail(e: &dyn std::error::Error, permission: bool) -> ExitCode {
    let mut msg = format!("prof-bpf: error: {e}");
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    eprintln!("{msg}");
    if permission {
        eprintln!(
            "prof-bpf: hint: run as root (sudo), or grant CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE"
        );
    }
    ExitCode::FAILURE
}
