//! The `prof-bpf` binary: parses arguments, runs the command, maps errors to exit codes
//! (0 done, 1 failed, 2 a usage mistake).

use std::{
    io,
    process::ExitCode,
    sync::{Arc, atomic::AtomicBool},
};

use profiler_userspace::{
    agent,
    cli::{self, Config},
    dump, note, record,
    report::{self, ReportDone},
    session::StopReason,
    top,
};

fn main() -> ExitCode {
    let config = match cli::parse_from(std::env::args_os()) {
        Ok(config) => config,
        Err(e) => e.exit(),
    };
    // A closed terminal (SIGHUP), Ctrl-C, SIGTERM and SIGQUIT all stop a recording the same
    // way: it stops sampling and writes what it has. The agent, a service, re-reads its
    // configuration on SIGHUP instead.
    let agent = matches!(config, Config::Agent(_));
    let reload = Arc::new(AtomicBool::new(false));
    let stop = match stop_on_signals(agent.then_some(&reload)) {
        Ok(stop) => stop,
        Err(e) => return fail(&e, false),
    };
    match config {
        Config::Agent(cfg) => match agent::run(&cfg, &stop, &reload) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => fail(&e, e.is_permission()),
        },
        Config::Record(cfg) => match record::run(&cfg, &stop) {
            Ok(summary) => {
                let _ = summary.print(&mut io::stderr());
                let mut code = ExitCode::SUCCESS;
                if let Some(e) = &summary.failure {
                    code = fail(e, e.is_permission());
                }
                if let Err(e) = &summary.saved {
                    code = fail(e, false);
                }
                code
            }
            Err(e) => fail(&e, e.is_permission()),
        },
        Config::Top(cfg) => match top::run(&cfg, &stop) {
            Ok(s) => {
                let why = match s.stop {
                    StopReason::TargetExited => "the program exited",
                    _ => "quit",
                };
                let what = match s.pid {
                    Some(pid) => format!("pid {pid}"),
                    None => "all Python processes".to_string(),
                };
                note!(
                    "prof-bpf: top of {what} stopped ({why}) after {:.1}s, {} samples",
                    s.elapsed.as_secs_f64(),
                    s.samples
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e, e.is_permission()),
        },
        Config::Dump(cfg) => match dump::run(&cfg, &mut io::stdout().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(dump::DumpError::Write(e)) if e.kind() == io::ErrorKind::BrokenPipe => {
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e, e.is_permission()),
        },
        Config::Report(cfg) => match report::run(&cfg) {
            Ok(ReportDone::Printed) => ExitCode::SUCCESS,
            Ok(ReportDone::Converted { format, path }) => {
                if path.as_os_str() != "-" {
                    note!(
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

/// A flag the stopping signals set, for a command to stop cleanly. With `reload`, SIGHUP sets
/// that flag instead of stopping.
fn stop_on_signals(reload: Option<&Arc<AtomicBool>>) -> io::Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGQUIT, SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    signal_hook::flag::register(SIGHUP, Arc::clone(reload.unwrap_or(&stop)))?;
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
    note!("{msg}");
    // Root that is refused has no use for "run as root": the error itself says why.
    if permission && !profiler_userspace::privilege::is_root() {
        note!(
            "prof-bpf: hint: run as root (sudo), or grant CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE"
        );
    }
    ExitCode::FAILURE
}
