//! `prof-bpf dump` end to end, as root: a fixture whose three threads are blocked in known
//! functions on known lines. Blocked threads never run on a CPU, so this checks the userspace
//! walk of the interpreter's thread list, for every supported interpreter build, and with
//! `--native` the userspace unwind of the stopped threads' C stacks.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use prof_bpf_tests::*;

/// Kills a process the test started when the test ends, pass or fail.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// blocked.py under `python_name`, every thread blocked; its pid as text.
fn start_blocked(python_name: &str) -> (Fixture, String) {
    let fixture = Fixture::blocked(&python(python_name));
    let pid = fixture.pid.to_string();
    (fixture, pid)
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

/// What a version calls threading's methods: qualified from 3.11, which has `co_qualname`.
fn method(python_name: &str, name: &str) -> String {
    let v = profiler_userspace::python::Version::parse(version_of(python_name)).unwrap();
    if v >= profiler_userspace::python::Version::new(3, 11) {
        format!("Thread.{name}")
    } else {
        name.to_string()
    }
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
    let bootstrap = format!("{} (", method(python_name, "_bootstrap"));
    for t in &threads[1..] {
        assert!(
            t.1.last().unwrap().starts_with(&bootstrap) && t.1.len() == 4,
            "{:?}",
            t.1
        );
    }
}

#[test]
fn dump_3_8() {
    dump_shows_every_blocked_thread("3.8");
}

#[test]
fn dump_3_9() {
    dump_shows_every_blocked_thread("3.9");
}

#[test]
fn dump_3_10() {
    dump_shows_every_blocked_thread("3.10");
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
fn dump_3_13() {
    dump_shows_every_blocked_thread("3.13");
}

#[test]
fn dump_debian_3_11() {
    dump_shows_every_blocked_thread("debian-3.11");
}

/// The kernel's state letter of every thread of `pid` (`t` is stopped under a tracer).
fn thread_states(pid: &str) -> Vec<(String, char)> {
    let mut states: Vec<(String, char)> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| {
            let tid = e.ok()?.file_name().to_string_lossy().to_string();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
            Some((tid, stat.rsplit_once(") ")?.1.chars().next()?))
        })
        .collect();
    states.sort();
    states
}

/// `dump --native`: each blocked thread shows the C functions it is blocked in above the Python
/// function that called them, the Python frames in order in place of the eval loop's frames
/// (which must not show), C again down to the thread's start; and the process runs on after.
fn dump_native_shows_c_frames_above_python(python_name: &str) {
    if !privileged() {
        return;
    }
    let (_fixture, pid) = start_blocked(python_name);
    let out = run(&["dump", "--native", "--pid", &pid]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "dump failed: {stderr}");
    eprintln!("{}", stderr.trim_end());
    assert!(stderr.contains("threads were stopped for"), "{stderr}");

    // Not left stopped: every thread sleeps again once the dump is done.
    let states = thread_states(&pid);
    assert!(
        states.iter().all(|(_, s)| *s != 't' && *s != 'T'),
        "left stopped: {states:?}"
    );
    let started = std::time::Instant::now();
    while !thread_states(&pid).iter().all(|(_, s)| *s == 'S') {
        assert!(
            started.elapsed() < READY_TIMEOUT,
            "not asleep again: {:?}",
            thread_states(&pid)
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }

    let file = fixture("blocked.py");
    let at = |function: &str, marker: &str| {
        format!("{function} ({}:{})", file.display(), line_of(&file, marker))
    };
    let threads = threads(&stdout);
    assert_eq!(threads.len(), 3, "three threads:\n{stdout}");
    assert!(
        !stdout.contains("_PyEval_EvalFrameDefault"),
        "the eval loop's frames are replaced by the Python frames:\n{stdout}"
    );
    let index = |frames: &[String], want: &str| {
        frames
            .iter()
            .position(|f| f == want || function(f) == want)
            .unwrap_or_else(|| panic!("no {want} in {frames:#?}"))
    };
    // time.sleep is select(2) up to 3.10, clock_nanosleep(2) from 3.11.
    let v = profiler_userspace::python::Version::parse(version_of(python_name)).unwrap();
    let sleep = if v >= profiler_userspace::python::Version::new(3, 11) {
        "clock_nanosleep"
    } else {
        "select"
    };
    let (run, inner, bootstrap) = (
        method(python_name, "run"),
        method(python_name, "_bootstrap_inner"),
        method(python_name, "_bootstrap"),
    );
    let workers = vec![run.as_str(), inner.as_str(), bootstrap.as_str()];
    let cases = [
        (
            at("main_waits_here", "# main waits on this line"),
            sleep,
            vec!["<module>"],
            "_start",
        ),
        (
            at("worker_sleeps_here", "# worker sleeps on this line"),
            sleep,
            workers.clone(),
            "clone3",
        ),
        (
            at("worker_waits_on_lock_here", "# worker waits on this line"),
            "PyThread_acquire_lock_timed",
            workers,
            "clone3",
        ),
    ];
    for ((header, frames), (python_leaf, c_leaf, callers, root)) in threads.iter().zip(cases) {
        // Leaf first: the C function the thread is blocked in, then the Python function.
        let leaf_c = frames
            .iter()
            .position(|f| function(f).contains(c_leaf))
            .unwrap_or_else(|| panic!("{header}: no {c_leaf} in {frames:#?}"));
        let py = index(frames, &python_leaf);
        assert!(leaf_c < py, "{header}: C above Python: {frames:#?}");
        assert!(
            !frames[0].contains(".py:"),
            "{header}: the leaf is native: {frames:#?}"
        );
        // Its Python callers, in order, below it, and the thread's start at the root.
        let mut last = py;
        for caller in callers {
            let i = index(frames, caller);
            assert!(i > last, "{header}: {caller} out of order: {frames:#?}");
            last = i;
        }
        assert!(
            function(frames.last().unwrap()).contains(root),
            "{header}: the unwind reaches {root}: {frames:#?}"
        );
        assert!(
            !frames
                .iter()
                .any(|f| f.starts_with("[native unwind stopped")),
            "{header}: {frames:#?}"
        );
    }
}

#[test]
fn dump_native_3_8() {
    dump_native_shows_c_frames_above_python("3.8");
}

#[test]
fn dump_native_3_9() {
    dump_native_shows_c_frames_above_python("3.9");
}

#[test]
fn dump_native_3_10() {
    dump_native_shows_c_frames_above_python("3.10");
}

#[test]
fn dump_native_3_11() {
    dump_native_shows_c_frames_above_python("3.11");
}

#[test]
fn dump_native_3_12() {
    dump_native_shows_c_frames_above_python("3.12");
}

#[test]
fn dump_native_3_13() {
    dump_native_shows_c_frames_above_python("3.13");
}

#[test]
fn dump_native_debian_3_11() {
    dump_native_shows_c_frames_above_python("debian-3.11");
}

/// A thread already traced by another tracer (strace on the last worker) cannot be stopped: the
/// dump fails with a message that says so, and the threads stopped before it run again.
#[test]
fn dump_native_when_ptrace_is_refused_says_so_and_resumes_the_others() {
    if !privileged() {
        return;
    }
    let (_fixture, pid) = start_blocked("3.12");
    let last = thread_states(&pid).last().unwrap().0.clone();
    let mut strace = Killed(
        Command::new("strace")
            .args(["-o", "/dev/null", "-p", &last])
            .stderr(Stdio::piped())
            .spawn()
            .expect("strace is needed for this test"),
    );
    // strace says "attached" once it is.
    let mut line = String::new();
    BufReader::new(strace.0.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let out = run(&["dump", "--native", "--pid", &pid]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // Root is refused because of the other tracer: it is named, and root is not told to run
    // as root.
    assert!(
        stderr.contains(&format!(
            "not permitted to ptrace thread {last} of pid {pid}, even as root"
        )) && stderr.contains("another tracer")
            && !stderr.contains("run as root"),
        "{stderr}"
    );
    drop(strace);
    let others: Vec<(String, char)> = thread_states(&pid)
        .into_iter()
        .filter(|(tid, _)| *tid != last)
        .collect();
    assert!(
        others.iter().all(|(_, s)| *s == 'S'),
        "left stopped: {others:?}"
    );
}

/// A process that exits while it is dumped, or before: a specific error, not a hang or panic.
#[test]
fn dump_native_of_an_exited_process_says_so() {
    if !privileged() {
        return;
    }
    let (fixture, pid) = start_blocked("3.12");
    fixture.kill();
    let out = run(&["dump", "--native", "--pid", &pid]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("no process with pid {pid}"))
            || stderr.contains(&format!("process {pid} exited")),
        "{stderr}"
    );
}

#[test]
fn dump_of_a_process_that_is_not_python_is_refused() {
    if !privileged() {
        return;
    }
    let mut sleeper = Killed(Command::new("sleep").arg("30").spawn().unwrap());
    let pid = sleeper.0.id().to_string();
    let out = run(&["dump", "--pid", &pid]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is not a Python process"), "{stderr}");
    let _ = sleeper.0.kill();
    // A pid that just exited and was reaped.
    let mut gone = Command::new("true").spawn().unwrap();
    let gone_pid = gone.id().to_string();
    gone.wait().unwrap();
    let out = run(&["dump", "--pid", &gone_pid]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("no process with pid {gone_pid}")),
        "{stderr}"
    );
    // No process could have this pid: a usage error.
    let out = run(&["dump", "--pid", "999999999"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is not a process id"), "{stderr}");
}
