//! A session's command, when it launches one: checked before the kernel program loads,
//! launched as the invoking user once sampling runs, waited for until its interpreter is
//! mapped, and ended as py-spy ends it when recording stops first.

use std::{
    env, io,
    path::Path,
    process::{Child, Command},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use super::{SessionError, StopReason, supported_layout};
use crate::{
    privilege,
    process::{self, ProcessError},
    python::{
        Layout,
        discover::{PythonProcess, find_python_cheaply},
    },
};

/// How long a launched command may take to load its interpreter.
pub const LAUNCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Fails like exec would, before the kernel program is loaded.
pub fn check_program(program: &str) -> Result<(), SessionError> {
    let not_found = || SessionError::Launch {
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

/// Starts `cmd` (under sudo, as the invoking user).
pub fn launch(cmd: &[String]) -> Result<Child, SessionError> {
    let mut command = Command::new(&cmd[0]);
    command.args(&cmd[1..]);
    privilege::run_as_invoking_user(&mut command);
    command.spawn().map_err(|source| SessionError::Launch {
        program: cmd[0].clone(),
        source,
    })
}

/// Polls the launched command until its interpreter is mapped (a launcher script may exec
/// Python later), it exits, or the timeout passes. A command that is not Python itself but
/// starts one (`unshare --pid --fork chroot ROOT python ...`, `sh -c "python ..."`, `sudo -u`)
/// is followed to its first Python descendant, which is then the process profiled; stderr says
/// so. A launcher has no interpreter of its own: following it is what a user means, and
/// `--subprocesses` is still there for all of a tree.
pub fn wait_for_python(
    child: &mut Child,
    program: &str,
    stop: &AtomicBool,
) -> Result<(PythonProcess, Layout), SessionError> {
    let pid = child.id();
    let started = Instant::now();
    // A mapped file that could not be opened, if that is what kept us from the interpreter.
    let mut unreadable = None;
    loop {
        if let Some(status) = child.try_wait().map_err(|source| SessionError::Launch {
            program: program.into(),
            source,
        })? {
            return Err(SessionError::ExitedEarly {
                program: program.into(),
                status,
            });
        }
        match find_python_cheaply(pid) {
            // A libpython the dynamic loader is still mapping may not have its data segment
            // in place yet: its `_PyRuntime` read then is some other part of the file (seen as
            // a 3.13t taken for a 3.13 without its debug offsets). Once the C library, mapped
            // after it, is in, it is whole.
            Ok(Some(_)) if loading(pid) => {}
            Ok(Some(p)) => {
                let layout = supported_layout(&p)?;
                return Ok((p, layout));
            }
            Ok(None) => {
                if let Some(p) = python_descendant(pid) {
                    crate::note!(
                        "prof-bpf: `{program}` (pid {pid}) is not Python; profiling its descendant {} (pid {})",
                        p.name,
                        p.pid
                    );
                    let layout = supported_layout(&p)?;
                    return Ok((p, layout));
                }
            }
            // Exec in progress or the child just exited: look again.
            Err(
                ProcessError::Exited { .. }
                | ProcessError::NoSuchProcess { .. }
                | ProcessError::Io { .. },
            ) => {}
            Err(e @ ProcessError::MappedFile { .. }) => unreadable = Some(e),
            Err(e) => return Err(e.into()),
        }
        if started.elapsed() > LAUNCH_TIMEOUT || stop.load(Ordering::Relaxed) {
            return Err(match unreadable {
                Some(e) => e.into(),
                None => SessionError::LaunchedNotPython {
                    program: program.into(),
                    pid,
                },
            });
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// The first descendant of `pid` with a Python interpreter in it, nearest first, once the
/// dynamic loader is done with it.
fn python_descendant(pid: u32) -> Option<PythonProcess> {
    process::descendants(pid)
        .into_iter()
        .find_map(|child| find_python_cheaply(child).ok().flatten())
        .filter(|p| !loading(p.pid))
}

/// Whether the dynamic loader is still mapping process `pid`'s libraries.
fn loading(pid: u32) -> bool {
    process::read_maps(pid).is_ok_and(|m| process::loader_at_work(&m))
}

/// A launched command still running when recording stops is ended, as py-spy does: it and the
/// processes it started (a pool's workers, a shell's Python), as Ctrl-C in its terminal would
/// end them. They are found before the command ends, while they are still its descendants.
pub fn stop_child(child: &mut Child, reason: StopReason) {
    if reason != StopReason::TargetExited {
        let family = process::descendants(child.id());
        // SAFETY: kill with a pid we spawned and have not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        for pid in family {
            // SAFETY: kill with pids just read as the command's descendants; one that has
            // exited since gets nothing (its pid is not reused within microseconds).
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
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
