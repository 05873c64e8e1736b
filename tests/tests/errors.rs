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
            &format!("python {version} is not supported (prof-bpf supports CPython 3.8 to 3.13)"),
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
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("nothing to profile"), "{stderr}");
    let out = run(&["record", "--rate", "0", "--pid", "1"]);
    assert_eq!(out.status.code(), Some(2), "clap's usage errors exit 2");
}
