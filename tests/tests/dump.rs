//! `prof-bpf dump` end to end, as root: a fixture whose three threads are blocked in known
//! functions on known lines. Blocked threads never run on a CPU, so this checks the userspace
//! walk of the interpreter's thread list, for every supported interpreter build.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
};

use prof_bpf_tests::*;

/// Kills the fixture when the test ends, pass or fail.
struct Fixture(Child);

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts blocked.py and waits until it says every thread is blocked; returns it and its pid.
fn start_blocked(python_name: &str) -> (Fixture, String) {
    let mut child = Command::new(python(python_name))
        .arg(fixture("blocked.py"))
        .env("BLOCKED_SECONDS", "30")
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting blocked.py");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pid = line.trim().to_string();
    // The pid is printed just before the main thread's last sleep: wait until it sleeps there,
    // or a dump on a busy machine can catch it still returning from the print.
    let state = |pid: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ")?.1.chars().next())
    };
    let started = std::time::Instant::now();
    while state(&pid) != Some('S') && started.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    (Fixture(child), pid)
}

/// Thread header line -> its frames, leaf first.
fn threads(dump: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for line in dump.lines() {
        if line.starts_with("Thread ") {
            out.push((line.to_string(), Vec::new()));
        } else if let (Some(frame), Some(t)) = (line.strip_prefix("    "), out.last_mut()) {
            t.1.push(frame.to_string());
        }
    }
    out
}

fn dump_shows_every_blocked_thread(python_name: &str) {
    if !privileged() {
        return;
    }
    let (_fixture, pid) = start_blocked(python_name);
    let out = run(&["dump", "--pid", &pid]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = fixture("blocked.py");
    let at = |function: &str, marker: &str| {
        format!("{function} ({}:{})", file.display(), line_of(&file, marker))
    };
    let threads = threads(&stdout);
    assert_eq!(threads.len(), 3, "three threads:\n{stdout}");
    // Main thread first (its tid is the pid), then the workers; each blocked on its line.
    assert!(
        threads[0].0.starts_with(&format!("Thread {pid} ")),
        "{stdout}"
    );
    let leaves: Vec<&str> = threads.iter().map(|t| t.1[0].as_str()).collect();
    assert_eq!(
        leaves,
        [
            at("main_waits_here", "# main waits on this line"),
            at("worker_sleeps_here", "# worker sleeps on this line"),
            at("worker_waits_on_lock_here", "# worker waits on this line"),
        ],
        "{stdout}"
    );
    // The main thread's whole stack, and the workers' roots in threading.py.
    assert_eq!(threads[0].1.len(), 2, "{stdout}");
    assert!(threads[0].1[1].starts_with("<module> ("), "{stdout}");
    for t in &threads {
        assert!(t.0.ends_with("(sleeping)"), "{}", t.0);
    }
    for t in &threads[1..] {
        assert!(
            t.1.last().unwrap().starts_with("Thread._bootstrap (") && t.1.len() == 4,
            "{:?}",
            t.1
        );
    }
}

#[test]
fn dump_3_11() {
    dump_shows_every_blocked_thread("3.11");
}

#[test]
fn dump_3_12() {
    dump_shows_every_blocked_thread("3.12");
}

#[test]
fn dump_debian_3_11() {
    dump_shows_every_blocked_thread("debian-3.11");
}

#[test]
fn dump_native_says_it_is_not_available_and_still_dumps() {
    if !privileged() {
        return;
    }
    let (_fixture, pid) = start_blocked("3.12");
    let out = run(&["dump", "--native", "--pid", &pid]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("native frames are not available"));
    assert_eq!(threads(&String::from_utf8_lossy(&out.stdout)).len(), 3);
}

#[test]
fn dump_of_a_process_that_is_not_python_is_refused() {
    if !privileged() {
        return;
    }
    let mut sleeper = Fixture(Command::new("sleep").arg("30").spawn().unwrap());
    let pid = sleeper.0.id().to_string();
    let out = run(&["dump", "--pid", &pid]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is not a Python process"), "{stderr}");
    let _ = sleeper.0.kill();
    let out = run(&["dump", "--pid", "999999999"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no process with pid 999999999"));
}
