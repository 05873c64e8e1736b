//! Bad input: each gets a specific message and a non-zero exit, before sampling starts, and no
//! stray output file is left behind.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
};

use prof_bpf_tests::*;

fn assert_fails(args: &[&str], expected: &str) -> String {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(1),
        "exit code for {args:?}: {stderr}"
    );
    assert!(
        stderr.contains(expected),
        "for {args:?} expected {expected:?} in:\n{stderr}"
    );
    assert!(stderr.starts_with("prof-bpf: error: "), "{stderr}");
    stderr
}

/// Starts a process that sleeps, and waits until it runs.
struct Sleeper(Child);

impl Sleeper {
    fn python(python: &std::path::Path) -> Self {
        let mut child = Command::new(python)
            .arg(fixture("idle.py"))
            .env("IDLE_SECONDS", "60")
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the idle fixture");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        Self(child)
    }

    fn pid(&self) -> String {
        self.0.id().to_string()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn missing_pid() {
    if !privileged() {
        return;
    }
    // A pid that just exited and was reaped.
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id().to_string();
    child.wait().unwrap();
    let out = scratch_dir("missing_pid").join("never-written.txt");
    assert_fails(
        &["record", "--pid", &pid, "-o", out.to_str().unwrap()],
        &format!("no process with pid {pid}"),
    );
    assert!(!out.exists(), "left an output file behind");
}

#[test]
fn non_python_process() {
    if !privileged() {
        return;
    }
    let mut sleep = Command::new("sleep").arg("60").spawn().unwrap();
    let pid = sleep.id().to_string();
    let stderr = assert_fails(
        &["record", "--pid", &pid],
        "is not a Python process: looked for",
    );
    assert!(
        stderr.contains("libpython") && stderr.contains("_PyRuntime"),
        "{stderr}"
    );
    sleep.kill().unwrap();
    sleep.wait().unwrap();
}

#[test]
fn unsupported_python_versions_are_named() {
    if !privileged() {
        return;
    }
    for version in ["2.7", "3.6", "3.7"] {
        let sleeper = Sleeper::python(&python(version));
        assert_fails(
            &["record", "--pid", &sleeper.pid()],
            &format!("python {version} is not supported (prof-bpf supports CPython 3.8 to 3.15"),
        );
    }
}

#[test]
fn launched_command_that_does_not_exist() {
    if !privileged() {
        return;
    }
    assert_fails(
        &["record", "--", "/nonexistent/python3"],
        "cannot launch `/nonexistent/python3`: no such file",
    );
    assert_fails(
        &["record", "--", "no-such-program-anywhere"],
        "cannot launch `no-such-program-anywhere`",
    );
}

#[test]
fn launched_command_that_is_not_python() {
    if !privileged() {
        return;
    }
    assert_fails(
        &["record", "--", "true"],
        "`true` exited (exit status: 0) before a Python interpreter was seen",
    );
}

#[test]
fn unwritable_output_path() {
    if !privileged() {
        return;
    }
    let sleeper = Sleeper::python(&python("3.12"));
    assert_fails(
        &[
            "record",
            "--pid",
            &sleeper.pid(),
            "-o",
            "/nonexistent-dir/p.svg",
        ],
        "cannot write the profile to /nonexistent-dir/p.svg",
    );
    let dir = scratch_dir("unwritable");
    assert_fails(
        &[
            "record",
            "--pid",
            &sleeper.pid(),
            "-o",
            dir.to_str().unwrap(),
        ],
        "it is a directory",
    );
}

/// Without -o the profile goes to the current directory: a read-only one is refused before the
/// command is launched, so nothing is left running (found on a read-only checkout).
#[test]
fn default_output_in_a_read_only_directory_launches_nothing() {
    if !privileged() {
        return;
    }
    let dir = scratch_dir("readonly_cwd");
    let marker = dir.join("launched");
    let script = format!(
        "mkdir -p {d}/ro && mount -t tmpfs -o ro tmpfs {d}/ro && cd {d}/ro && exec \"$0\" \"$@\"",
        d = dir.display()
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .arg(prof_bpf())
        .args(["record", "--"])
        .arg(python("3.12"))
        .arg("-c")
        .arg(format!("open({:?}, 'w')", marker.display().to_string()))
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot write the profile to {}/ro", dir.display()))
            && stderr.contains("Read-only file system"),
        "{stderr}"
    );
    assert!(!marker.exists(), "the command was launched");
}

#[test]
fn not_root_gets_the_capabilities_hint() {
    if !privileged() {
        return;
    }
    // Drop to nobody with no capabilities, as a user without sudo would run it.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(prof_bpf())
        .args(["record", "--pid", "1"])
        .output()
        .expect("running setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("prof-bpf needs root, or the CAP_BPF and CAP_PERFMON capabilities"),
        "{stderr}"
    );
    assert!(stderr.contains("hint: run as root (sudo)"), "{stderr}");
}

#[test]
fn usage_errors_exit_2_without_privileges() {
    let out = run(&["record"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("nothing to profile"), "{stderr}");
    let out = run(&["record", "--rate", "0", "--pid", "1"]);
    assert_eq!(out.status.code(), Some(2), "clap's usage errors exit 2");
}

/// Issue 11: extreme and nonsensical values are a one-line usage error (exit 2) naming the
/// option, never a panic, from the real binary. (The property test in cli/ covers every option
/// with random values; this checks the binary's exit path.)
#[test]
fn extreme_values_are_usage_errors_not_panics() {
    for args in [
        &["record", "-d", "1e20", "-p", "1"][..],
        &["record", "-d", "0", "-p", "1"],
        &["record", "-d=-1", "-p", "1"],
        &["record", "-d", "nan", "-p", "1"],
        &["record", "-d", "inf", "-p", "1"],
        &["record", "-p", "0"],
        &["record", "-p", "99999999999"],
        &["top", "--refresh", "1e300", "-p", "1"],
        &["top", "--refresh", "0.01", "-p", "1"],
        &["dump", "-p", "-5"],
        &["report", "x.json", "--limit", "-1"],
    ] {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        let option = args[1].split('=').next().unwrap();
        let long = match option {
            "-d" => "--duration",
            "-p" => "--pid",
            "--limit" => "--limit",
            other => other,
        };
        let named = if args[0] == "report" { "--limit" } else { long };
        assert!(stderr.contains(named), "{args:?} names {named}: {stderr}");
    }
}

/// A kernel thread and a zombie get their own messages, not "no process with pid N".
#[test]
fn kernel_threads_and_zombies_are_named_as_such() {
    if !privileged() {
        return;
    }
    // kthreadd, pid 2, the parent of every kernel thread.
    assert_fails(
        &["record", "--pid", "2"],
        "pid 2 (kthreadd) is a kernel thread",
    );
    // A child that exited and is not reaped by its parent.
    let mut parent = Command::new(python("3.12"))
        .args([
            "-c",
            "import os, time\n\
             pid = os.fork()\n\
             if pid == 0: os._exit(0)\n\
             print(pid, flush=True)\n\
             time.sleep(60)",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(parent.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let zombie = line.trim().to_string();
    // The child's exit is asynchronous: wait until the kernel shows it as a zombie.
    for _ in 0..200 {
        let stat = std::fs::read_to_string(format!("/proc/{zombie}/stat")).unwrap_or_default();
        if stat
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'))
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_fails(
        &["record", "--pid", &zombie],
        &format!("pid {zombie} (python3.12) is a zombie"),
    );
    parent.kill().unwrap();
    parent.wait().unwrap();
}

/// Root that is refused (a protected pid 1 in some sandboxes) is never told to run as root.
#[test]
fn root_is_never_told_to_run_as_root() {
    if !privileged() {
        return;
    }
    let out = run(&["record", "--pid", "1", "-d", "0.1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("run as root"), "{stderr}");
}
