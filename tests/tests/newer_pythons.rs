//! Issue 14, end to end as root: CPython 3.14 and 3.15 (Debian forky's, stripped executables
//! with the interpreter linked in) run as in a container, in their own pid and mount namespace
//! with the forky root (`Interp::Container`), and the free-threaded 3.13t on the host. The same
//! checks 3.8-3.13 pass (the measured split launched and by pid, threads, frame kinds, dump and
//! dump --native, the native callback), the published layouts against the built-in tables,
//! 3.13t's threads running at once, and `--all` over a container and a host Python together.
//! `scripts/setup` installs the interpreters; a missing one fails the test.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use prof_bpf_tests::*;
use profiler_userspace::{
    process::ProcMem,
    python::{self, LayoutSource, Version},
};
use serde_json::Value;

/// How far a profiled share may be from the measured share, in percentage points.
const TOLERANCE_PP: f64 = 3.0;

/// Ends a started fixture (and, in a container, everything in it) when the test ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The version prof-bpf names: `3.14`, `3.13t`.
fn version_of(which: &str) -> &str {
    which.strip_prefix("forky-").unwrap_or(which)
}

/// Asserts the summary names the process as it should be named: its version, and in a
/// container its pid there (1: the Python is the container's first process).
fn check_named(interp: &Interp, which: &str, summary: &str) {
    let version = version_of(which);
    let want = match interp.is_container() {
        true => format!(", pid 1 in its namespace, CPython {version})"),
        false => format!(", CPython {version})"),
    };
    assert!(
        summary.contains(&want),
        "{which}: no {want:?} in\n{summary}"
    );
}

// The measured split, launched.

fn split_launched(which: &str, test: &str) {
    split_launched_env(which, &[], test);
}

/// `split_launched` with `env` set for prof-bpf and the fixture; the fixture's output.
fn split_launched_env(which: &str, env: &[(&str, &str)], test: &str) -> String {
    if !privileged() {
        return String::new();
    }
    let interp = interpreter(which);
    let out = scratch_dir(test).join("profile.txt");
    let result = record_under_env(
        &interp,
        &["-r", "1000", "-f", "raw"],
        env,
        &out,
        "split.py",
        &["2"],
    );
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(stderr.contains("stopped (the program exited)"), "{stderr}");
    check_named(&interp, which, &stderr);
    let profile = parse_folded(&std::fs::read_to_string(&out).unwrap());
    // A thread with no Python frame (3.15's base frame alone) is outside Python, not an empty
    // stack.
    assert!(
        profile.keys().all(|s| s.iter().all(|f| !f.is_empty())),
        "{test}: an empty stack: {:?}",
        profile.keys().find(|s| s.iter().any(|f| f.is_empty()))
    );
    let stdout = String::from_utf8_lossy(&result.stdout).into_owned();
    check_split(&profile, measured_split(&stdout), test);
    stdout
}

/// Under the experimental JIT (`PYTHON_JIT=1`; Debian's 3.14 and 3.15 have it built in, off by
/// default) the traces run as machine code but keep the interpreter's frames: the split holds.
#[test]
fn split_3_15_in_a_container_under_the_jit() {
    let stdout = split_launched_env("forky-3.15", &[("PYTHON_JIT", "1")], "split_3_15_jit");
    if !privileged() {
        return;
    }
    assert!(
        stdout.contains(r#"{"jit": true}"#),
        "the JIT was not on: {stdout}"
    );
}

#[test]
fn split_3_14_in_a_container_launched() {
    split_launched("forky-3.14", "split_3_14_container_launched");
}

#[test]
fn split_3_15_in_a_container_launched() {
    split_launched("forky-3.15", "split_3_15_container_launched");
}

#[test]
fn split_3_13t_launched() {
    split_launched("3.13t", "split_3_13t_launched");
}

/// `record -- chroot ROOT python3.14 -` (the script on stdin): no namespaces, only another
/// root, whose executable's path in /proc/PID/maps is the host's view of it. Issue 14's
/// "`chroot` exited before a Python interpreter was seen".
#[test]
fn split_3_14_in_a_plain_chroot_launched() {
    if !privileged() {
        return;
    }
    let root = cache_dir().join("forky");
    interpreter("forky-3.14");
    let out = scratch_dir("split_3_14_plain_chroot").join("profile.txt");
    let result = Command::new(prof_bpf())
        .args(["record", "-r", "1000", "-f", "raw", "-o"])
        .arg(&out)
        .arg("--")
        .arg("chroot")
        .arg(&root)
        .args(["python3.14", "-", "2"])
        .stdin(std::fs::File::open(fixture("split.py")).unwrap())
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("running prof-bpf");
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    assert!(stderr.contains("(pid "), "{stderr}");
    let profile = parse_folded(&std::fs::read_to_string(&out).unwrap());
    check_split(
        &profile,
        measured_split(&String::from_utf8_lossy(&result.stdout)),
        "split_3_14_plain_chroot",
    );
}

// The measured split, attached by (host) pid.

/// A fixture started to be attached to: it has said its pid and waits for `go` (a line on its
/// stdin, `cpu.ready` with FIXTURE_GO) before it does the work it measures.
struct Attachable {
    running: Running,
    pid: u32,
    stdin: std::process::ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Attachable {
    /// Starts `cmd` (a fixture that calls `cpu.ready`) with the handshake on its stdin and
    /// stdout; `pid` finds the Python's host pid from the started process's.
    fn start(mut cmd: Command, pid: impl FnOnce(u32) -> u32) -> Self {
        let mut child = cmd
            .env("FIXTURE_GO", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the fixture");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        stdout.read_line(&mut first).unwrap();
        let printed = serde_json::from_str::<Value>(&first)
            .ok()
            .and_then(|v| v["pid"].as_u64())
            .unwrap_or_else(|| panic!("the fixture did not say its pid: {first:?}"));
        let host_pid = pid(child.id());
        Self {
            running: Running(child),
            pid: host_pid,
            stdin,
            stdout,
        }
        .checked(printed)
    }

    /// The pid the fixture printed is its own: the host pid, or 1 in a container.
    fn checked(self, printed: u64) -> Self {
        assert!(
            printed == self.pid as u64 || printed == 1,
            "the fixture says pid {printed}, found {}",
            self.pid
        );
        self
    }

    /// Starts `recording` (which returns once prof-bpf samples), then lets the fixture work;
    /// returns how prof-bpf ended and what the fixture printed after its pid.
    fn record(mut self, recording: impl FnOnce(u32) -> Recording) -> (Ended, String) {
        let recording = recording(self.pid);
        std::io::Write::write_all(&mut self.stdin, b"go\n").unwrap();
        let rest: String = (&mut self.stdout)
            .lines()
            .map(|l| l.unwrap() + "\n")
            .collect();
        let ended = recording.wait();
        drop(self.running);
        (ended, rest)
    }
}

/// Starts split.py under `interp`, ready to be attached.
fn start_split(interp: &Interp) -> Attachable {
    Attachable::start(interp.command("split.py", &["2"]), |id| {
        interp.python_pid(id)
    })
}

/// `prof-bpf record -r 1000 -f raw --pid PID -o OUT EXTRA` of an attachable fixture.
fn record_by_pid(a: Attachable, out: &std::path::Path, extra: &[&str]) -> (Ended, String) {
    let out = out.to_str().unwrap().to_string();
    a.record(|pid| {
        let pid = pid.to_string();
        let args: Vec<&str> = [
            "record", "-r", "1000", "-f", "raw", "--pid", &pid, "-o", &out,
        ]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
        Recording::start(&args)
    })
}

fn split_by_pid(which: &str, test: &str) {
    if !privileged() {
        return;
    }
    let interp = interpreter(which);
    let out = scratch_dir(test).join("profile.txt");
    let (ended, rest) = record_by_pid(start_split(&interp), &out, &[]);
    let stderr = ended.stderr;
    assert!(ended.status.success(), "prof-bpf failed: {stderr}");
    check_named(&interp, which, &stderr);
    let profile = parse_folded(&std::fs::read_to_string(&out).unwrap());
    check_split(&profile, measured_split(&rest), test);
}

#[test]
fn split_3_14_in_a_container_by_pid() {
    split_by_pid("forky-3.14", "split_3_14_container_by_pid");
}

#[test]
fn split_3_15_in_a_container_by_pid() {
    split_by_pid("forky-3.15", "split_3_15_container_by_pid");
}

#[test]
fn split_3_13t_by_pid() {
    split_by_pid("3.13t", "split_3_13t_by_pid");
}

/// A container whose root is only mounted inside its own mount namespace: the executable's
/// path in the host's /proc/PID/maps names an empty directory here (issue 14: read files
/// through map_files, not by the path).
#[test]
fn split_3_15_root_mounted_only_inside_the_container_by_pid() {
    if !privileged() {
        return;
    }
    let test = "split_3_15_private_root";
    let dir = scratch_dir(test);
    let (root, mountpoint) = (cache_dir().join("forky"), dir.join("root"));
    interpreter("forky-3.15");
    std::fs::create_dir_all(&mountpoint).unwrap();
    let script = format!(
        "mount --bind '{root}' '{m}' && mount --bind '{fixtures}' '{m}/mnt' && exec chroot '{m}' python3.15 /mnt/split.py 2",
        root = root.display(),
        m = mountpoint.display(),
        fixtures = fixture("").display(),
    );
    let mut child = Command::new("unshare");
    child.args([
        "--pid",
        "--mount",
        "--fork",
        "--kill-child",
        "sh",
        "-c",
        &script,
    ]);
    let target = Attachable::start(child, |id| interpreter("forky-3.15").python_pid(id));
    let pid = target.pid;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let exe = mountpoint.join("usr/bin/python3.15");
    assert!(
        maps.contains(exe.to_str().unwrap()) && !exe.exists(),
        "the maps name {} (absent here):\n{maps}",
        exe.display()
    );
    let out = dir.join("profile.txt");
    let (ended, rest) = record_by_pid(target, &out, &[]);
    assert!(ended.status.success(), "prof-bpf failed: {}", ended.stderr);
    let profile = parse_folded(&std::fs::read_to_string(&out).unwrap());
    check_split(&profile, measured_split(&rest), test);
}

// Threads and frame kinds.

/// Records `name` under `interp` at 1000 Hz as collapsed stacks with thread roots; returns the
/// profile, the fixture's JSON line and prof-bpf's summary.
fn record_threads(
    interp: &Interp,
    name: &str,
    args: &[&str],
    test: &str,
) -> (Folded, Value, String) {
    let out = scratch_dir(test).join("profile.txt");
    let result = record_under(
        interp,
        &["-r", "1000", "-f", "raw", "--threads"],
        &out,
        name,
        args,
    );
    let profile = parse_folded(&std::fs::read_to_string(&out).unwrap());
    let summary = String::from_utf8_lossy(&result.stderr).into_owned();
    (profile, fixture_json(&result), summary)
}

/// Asserts each function's share of the samples in any of `measured` is within `TOLERANCE_PP`
/// of its share of the CPU time measured for it.
fn check_shares(profile: &Folded, measured: &BTreeMap<String, f64>, test: &str) {
    let counts: BTreeMap<&str, u64> = measured
        .keys()
        .map(|name| (name.as_str(), samples_in(profile, name)))
        .collect();
    let total_samples: u64 = counts.values().sum();
    let total_cpu: f64 = measured.values().sum();
    assert!(
        total_samples >= 1000,
        "{test}: only {total_samples} samples in {counts:?}"
    );
    for (name, cpu) in measured {
        let profiled = 100.0 * counts[name.as_str()] as f64 / total_samples as f64;
        let expected = 100.0 * cpu / total_cpu;
        eprintln!("{test}: {name} {profiled:.1}% profiled vs {expected:.1}% measured");
        assert!(
            (profiled - expected).abs() <= TOLERANCE_PP,
            "{test}: {name} has {profiled:.1}% of samples but {expected:.1}% of the CPU time; samples: {counts:?}"
        );
    }
}

/// Four threads, equal work each: each thread's function holds its share, and every stack
/// through a worker function is rooted at that worker's thread (in a container, the thread
/// the fixture knows by its id there). Returns the summary.
fn threads(which: &str, cpu_each: &str, test: &str) -> String {
    let interp = interpreter(which);
    let (profile, measured, summary) = record_threads(&interp, "threads.py", &[cpu_each], test);
    let workers = measured.as_object().expect("a JSON object");
    assert_eq!(workers.len(), 4, "{test}: {measured}");
    let cpu: BTreeMap<String, f64> = workers
        .iter()
        .map(|(name, w)| (name.clone(), w["cpu"].as_f64().unwrap()))
        .collect();
    check_shares(&profile, &cpu, test);
    for (name, w) in workers {
        let tid = w["tid"].as_u64().unwrap();
        // Shown by Python's name for the thread, longer than the kernel's copy (3.14+).
        let label = format!(" ({}", w["name"].as_str().unwrap());
        for (stack, n) in &profile {
            if stack.iter().any(|f| function(f) == name) {
                assert!(
                    interp.is_thread_root(&stack[0], tid) && stack[0].contains(&label),
                    "{test}: {n} samples of {name} (thread {tid}) are rooted at {:?}",
                    stack[0]
                );
            }
        }
    }
    summary
}

#[test]
fn threads_3_14_in_a_container() {
    if privileged() {
        threads("forky-3.14", "0.5", "threads_3_14_container");
    }
}

#[test]
fn threads_3_15_in_a_container() {
    if privileged() {
        threads("forky-3.15", "0.5", "threads_3_15_container");
    }
}

/// 3.13t: each of the four threads holds its measured share and is rooted at its thread; no
/// GIL is reported. That they ran at once is `tests/parallel.rs`, which needs the machine to
/// itself.
#[test]
fn threads_3_13t_each_with_its_share() {
    if !privileged() {
        return;
    }
    // Not beside the mixed-stack tests, which want a CPU of their own.
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let summary = threads("3.13t", "1.0", "threads_3_13t");
    assert!(
        summary.contains("prof-bpf: free-threaded: no GIL"),
        "{summary}"
    );
    assert!(!summary.contains("GIL held"), "{summary}");
}

/// A generator, a coroutine, a method, non-ASCII names of every string kind and a module with a
/// non-ASCII file name: each by its right name, with its share of the samples.
fn frame_kinds(which: &str, test: &str) {
    if !privileged() {
        return;
    }
    let interp = interpreter(which);
    let (profile, measured, _) = record_threads(&interp, "kinds.py", &["0.3"], test);
    let cpu: BTreeMap<String, f64> = measured
        .as_object()
        .expect("a JSON object")
        .iter()
        .map(|(name, secs)| (name.clone(), secs.as_f64().unwrap()))
        .collect();
    assert_eq!(cpu.len(), 7, "{test}: {measured}");
    check_shares(&profile, &cpu, test);
    let module_frame = profile
        .keys()
        .flatten()
        .find(|f| function(f) == "función_en_módulo")
        .expect("the non-ASCII module's function");
    let file = interp.fixture_path("módulo_Ω.py");
    assert!(
        module_frame.contains(&format!("{}:", file.display())),
        "{test}: {module_frame}"
    );
}

#[test]
fn frame_kinds_3_14_in_a_container() {
    frame_kinds("forky-3.14", "frame_kinds_3_14_container");
}

#[test]
fn frame_kinds_3_15_in_a_container() {
    frame_kinds("forky-3.15", "frame_kinds_3_15_container");
}

#[test]
fn frame_kinds_3_13t() {
    frame_kinds("3.13t", "frame_kinds_3_13t");
}

// dump and dump --native.

/// Starts blocked.py under `interp` and waits until every thread is blocked; returns it and the
/// host pid of its Python.
fn start_blocked(interp: &Interp) -> (Running, u32) {
    let mut child = interp
        .command("blocked.py", &[])
        .env("BLOCKED_SECONDS", "30")
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting blocked.py");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pid = interp.python_pid(child.id());
    // The pid is printed just before the main thread's last sleep, the workers blocked a
    // moment before: wait until all three sleep (a busy machine can take a while).
    let sleeping = || {
        let states: Vec<char> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|t| {
                let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
                stat.rsplit_once(") ")?.1.chars().next()
            })
            .collect();
        states.len() == 3 && states.iter().all(|&s| s == 'S')
    };
    let started = Instant::now();
    while !sleeping() && started.elapsed() < Duration::from_secs(10) {
        thread::sleep(Duration::from_millis(5));
    }
    (Running(child), pid)
}

/// Thread header line -> its frames, leaf first.
fn dumped_threads(dump: &str) -> Vec<(String, Vec<String>)> {
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

/// `dump`: every thread blocked on its line, named by its host tid (and its id inside a
/// container), the main thread first.
fn dump_blocked(which: &str) {
    if !privileged() {
        return;
    }
    let interp = interpreter(which);
    let (_target, pid) = start_blocked(&interp);
    let out = run(&["dump", "--pid", &pid.to_string()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = interp.fixture_path("blocked.py");
    let host_file = fixture("blocked.py");
    let at = |function: &str, marker: &str| {
        format!(
            "{function} ({}:{})",
            file.display(),
            line_of(&host_file, marker)
        )
    };
    let threads = dumped_threads(&stdout);
    assert_eq!(threads.len(), 3, "three threads:\n{stdout}");
    let main = match interp.is_container() {
        true => format!("Thread {pid} (tid 1 in its namespace) "),
        false => format!("Thread {pid} "),
    };
    assert!(threads[0].0.starts_with(&main), "{stdout}");
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
    assert_eq!(threads[0].1.len(), 2, "{stdout}");
    // Python's names, not the kernel's (3.14+ give the kernel the names of the threads they
    // start, but not the main thread's).
    for (t, name) in threads.iter().zip(["MainThread", "sleeper", "locker"]) {
        assert!(t.0.ends_with("(sleeping)"), "{}", t.0);
        assert!(t.0.contains(&format!(" \"{name}\" ")), "{}", t.0);
    }
    for t in &threads[1..] {
        assert!(
            t.1.last().unwrap().starts_with("Thread._bootstrap ("),
            "{:?}",
            t.1
        );
    }
}

#[test]
fn dump_3_14_in_a_container() {
    dump_blocked("forky-3.14");
}

#[test]
fn dump_3_15_in_a_container() {
    dump_blocked("forky-3.15");
}

#[test]
fn dump_3_13t() {
    dump_blocked("3.13t");
}

/// `dump --native`: each blocked thread shows the C functions it is blocked in above the Python
/// function that called them, the Python frames in place of the eval loop, C again down to the
/// thread's start. In a container the C library is the container's, named from the debug
/// symbols installed in it.
fn dump_native(which: &str) {
    if !privileged() {
        return;
    }
    let interp = interpreter(which);
    let (_target, pid) = start_blocked(&interp);
    let out = run(&["dump", "--native", "--pid", &pid.to_string()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "dump failed: {stderr}");
    let threads = dumped_threads(&stdout);
    assert_eq!(threads.len(), 3, "three threads:\n{stdout}");
    assert!(
        !stdout.contains("_PyEval_EvalFrameDefault"),
        "the eval loop's frames are replaced by the Python frames:\n{stdout}"
    );
    let file = interp.fixture_path("blocked.py");
    let host_file = fixture("blocked.py");
    let at = |function: &str, marker: &str| {
        format!(
            "{function} ({}:{})",
            file.display(),
            line_of(&host_file, marker)
        )
    };
    let cases = [
        (
            at("main_waits_here", "# main waits on this line"),
            "clock_nanosleep",
            vec!["<module>"],
            "_start",
        ),
        (
            at("worker_sleeps_here", "# worker sleeps on this line"),
            "clock_nanosleep",
            vec!["Thread.run", "Thread._bootstrap_inner", "Thread._bootstrap"],
            "clone3",
        ),
        (
            // From 3.13 a lock waits in the parking lot.
            at("worker_waits_on_lock_here", "# worker waits on this line"),
            "_PySemaphore_Wait",
            vec!["Thread.run", "Thread._bootstrap_inner", "Thread._bootstrap"],
            "clone3",
        ),
    ];
    for ((header, frames), (python_leaf, c_leaf, callers, root)) in threads.iter().zip(cases) {
        let index = |want: &str| {
            frames
                .iter()
                .position(|f| f == want || function(f) == want)
                .unwrap_or_else(|| panic!("{header}: no {want} in {frames:#?}"))
        };
        let leaf_c = frames
            .iter()
            .position(|f| function(f).contains(c_leaf))
            .unwrap_or_else(|| panic!("{header}: no {c_leaf} in {frames:#?}"));
        let py = index(&python_leaf);
        assert!(leaf_c < py, "{header}: C above Python: {frames:#?}");
        let mut last = py;
        for caller in callers {
            let i = index(caller);
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
fn dump_native_3_14_in_a_container() {
    dump_native("forky-3.14");
}

#[test]
fn dump_native_3_15_in_a_container() {
    dump_native("forky-3.15");
}

#[test]
fn dump_native_3_13t() {
    dump_native("3.13t");
}

// Mixed stacks.

/// The native tests measure how complete the kernel's unwinds are: one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `sorted(key=...)` calling back into Python: every sample in the key function shows Python ->
/// C sort -> Python, no eval loop frame is left, and the unwinds are complete.
fn callback_nests(which: &str, test: &str) {
    callback_nests_env(which, &[], test);
}

/// `callback_nests` with `env` set for prof-bpf and the fixture; the profile and the fixture's
/// output.
fn callback_nests_env(which: &str, env: &[(&str, &str)], test: &str) -> (Folded, String) {
    if !privileged() {
        return (Folded::new(), String::new());
    }
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let interp = interpreter(which);
    let out = scratch_dir(test).join("profile.txt");
    let result = record_under_env(
        &interp,
        &["--native", "-r", "1000", "-f", "raw"],
        env,
        &out,
        "callback.py",
        &["2"],
    );
    let stderr = String::from_utf8_lossy(&result.stderr);
    let profile = parse_folded(&std::fs::read_to_string(&out).unwrap());
    let mut in_key = 0;
    for (stack, n) in &profile {
        let names: Vec<&str> = stack.iter().map(|f| function(f)).collect();
        let Some(key) = names.iter().position(|f| *f == "slow_key") else {
            continue;
        };
        in_key += n;
        // An unwind that stopped early (a sample in memory mapped since the last table load:
        // under `-X perf`, a new arena of trampolines) shows its Python frames above a marker,
        // not nested: counted by the summary, whose completeness is checked below.
        if stack
            .iter()
            .any(|f| f.starts_with("[native unwind stopped"))
        {
            continue;
        }
        let caller = names.iter().position(|f| *f == "sort_with_key");
        let c_sort = names
            .iter()
            .position(|f| f.contains("sort") && !f.contains("sort_with_key"));
        assert!(
            matches!((caller, c_sort), (Some(a), Some(b)) if a < b && b < key),
            "{which}: not Python -> C sort -> Python key: {stack:?}"
        );
        assert!(
            !names
                .iter()
                .any(|f| f.starts_with("_PyEval_EvalFrameDefault")),
            "{which}: an eval frame was left in place of Python frames: {stack:?}"
        );
    }
    assert!(
        in_key >= 500,
        "{which}: only {in_key} samples in slow_key\n{stderr}"
    );
    let complete: f64 = stderr
        .lines()
        .find_map(|l| {
            l.split("native unwind: ")
                .nth(1)?
                .split('%')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no native unwind line in the summary: {stderr}"));
    assert!(complete >= 99.0, "{stderr}");
    (
        profile,
        String::from_utf8_lossy(&result.stdout).into_owned(),
    )
}

/// Under `-X perf` (`PYTHONPERFSUPPORT=1`) and `-X perf_jit` (`PYTHON_PERF_JIT_SUPPORT=1`),
/// 3.14 and later copy another trampoline than 3.12's (it saves rbp; Debian's starts with
/// endbr64, and pads each copy to 32 bytes, 96 under `perf_jit`): the unwind goes through it (0 %
/// complete before it was recognized), and no trampoline frame is shown.
fn callback_nests_under_perf_trampolines(which: &str, mode: &str, test: &str) {
    let (profile, stdout) = callback_nests_env(which, &[(mode, "1")], test);
    if !privileged() {
        return;
    }
    check_ran_and_hidden(
        &profile,
        &stdout,
        "perf_trampolines",
        "perf trampolines",
        which,
    );
}

#[test]
fn callback_through_c_nests_3_14_in_a_container_under_perf_trampolines() {
    callback_nests_under_perf_trampolines(
        "forky-3.14",
        "PYTHONPERFSUPPORT",
        "callback_native_perf_3_14_container",
    );
}

#[test]
fn callback_through_c_nests_3_15_in_a_container_under_perf_jit_trampolines() {
    callback_nests_under_perf_trampolines(
        "forky-3.15",
        "PYTHON_PERF_JIT_SUPPORT",
        "callback_native_perf_jit_3_15_container",
    );
}

/// Under CPython's experimental JIT (`PYTHON_JIT=1`), 3.15 runs a hot Python function's trace
/// as machine code in anonymous memory, entered from a frame with a frame pointer that the JIT
/// code leaves alone: the unwind goes through it by that pointer (2 % complete before), and the
/// stacks read as without the JIT (no JIT code frame between a Python frame and what it calls).
#[test]
fn callback_through_c_nests_3_15_in_a_container_under_the_jit() {
    let (profile, stdout) = callback_nests_env(
        "forky-3.15",
        &[("PYTHON_JIT", "1")],
        "callback_native_jit_3_15",
    );
    if !privileged() {
        return;
    }
    check_ran_and_hidden(
        &profile,
        &stdout,
        "jit_ran",
        "JIT code",
        "3.15 under the JIT",
    );
}

#[test]
fn callback_through_c_nests_3_14_in_a_container() {
    callback_nests("forky-3.14", "callback_native_3_14_container");
}

#[test]
fn callback_through_c_nests_3_15_in_a_container() {
    callback_nests("forky-3.15", "callback_native_3_15_container");
}

#[test]
fn callback_through_c_nests_3_13t() {
    callback_nests("3.13t", "callback_native_3_13t");
}

// Layouts.

/// What a live interpreter publishes in `_Py_DebugOffsets` is what prof-bpf uses: for 3.14 and
/// 3.15 it equals the built-in table field for field; 3.13t's is free-threaded (its own object
/// layout, no table).
fn published_layout(which: &str) {
    if !privileged() {
        return;
    }
    let interp = interpreter(which);
    let (target, pid) = start_blocked(&interp);
    let p = python::discover::inspect(pid).expect("the interpreter is found");
    let mem = ProcMem::open(p.pid).unwrap();
    let (layout, source) =
        python::layout_of(&mem, p.version, p.runtime_addr, p.runtime_size).unwrap();
    drop(target);
    let version = Version::parse(version_of(which)).unwrap();
    assert_eq!(p.version, version);
    assert!(
        p.runtime_size.is_some(),
        "{which}: the ELF file gives _PyRuntime's size"
    );
    if which == "3.13t" {
        assert_eq!(source, LayoutSource::FreeThreaded);
        assert!(layout.free_threaded);
        assert_eq!(layout.version_name(), "3.13t");
    } else {
        assert_eq!(source, LayoutSource::Published(vec![]), "{which}");
        assert_eq!(layout, python::layout_for(version).unwrap(), "{which}");
        assert_eq!(p.ns_pid, Some(1));
        assert!(p.pid_namespace.is_some());
    }
}

#[test]
fn published_3_14_layout_equals_the_builtin_table() {
    published_layout("forky-3.14");
}

#[test]
fn published_3_15_layout_equals_the_builtin_table() {
    published_layout("forky-3.15");
}

#[test]
fn published_3_13t_layout_is_free_threaded() {
    published_layout("3.13t");
}

/// `--gil` keeps GIL holders only: a free-threaded build has no GIL, and is refused with that.
#[test]
fn gil_option_is_refused_for_a_free_threaded_build() {
    if !privileged() {
        return;
    }
    let interp = interpreter("3.13t");
    let command = interp.command("split.py", &["0.2"]);
    let out = Command::new(prof_bpf())
        .args(["record", "--gil", "-f", "raw", "-o", "-", "--"])
        .arg(command.get_program())
        .args(command.get_args())
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is a free-threaded build (free-threaded: no GIL)"),
        "{stderr}"
    );
}

// --all.

/// `--all` while a 3.15 in a container and a host 3.12 run side by side: both are found and
/// profiled, each named with its pids, each function with its measured share.
#[test]
fn all_processes_with_a_container_and_a_host_python() {
    if !privileged() {
        return;
    }
    let dir = scratch_dir("all_container_and_host");
    let out = dir.join("profile.txt");
    let mut recording = Command::new(prof_bpf())
        .args(["record", "--all", "-r", "1000", "-f", "raw", "-o"])
        .arg(&out)
        .env_remove("RUST_BACKTRACE")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Until the program is attached (the announcement), processes would start unseen.
    let mut stderr = BufReader::new(recording.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.contains("sampling every Python process"), "{line}");
    thread::sleep(Duration::from_millis(300));

    let container = interpreter("forky-3.15");
    let host = interpreter("3.12");
    let spawn = |interp: &Interp, function: &str| {
        interp
            .command("busy.py", &[function, "1.5", "0.5"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (c, h) = (spawn(&container, "alpha"), spawn(&host, "beta"));
    let container_pid = container.python_pid(c.id());
    let runs: Vec<(u32, Value)> = [(container_pid, c), (h.id(), h)]
        .into_iter()
        .map(|(pid, child)| (pid, fixture_json(&child.wait_with_output().unwrap())))
        .collect();
    // SAFETY: kill with the pid of a child we spawned and have not reaped.
    unsafe { libc::kill(recording.id() as i32, libc::SIGINT) };
    let mut summary = line;
    stderr.read_to_string(&mut summary).unwrap();
    assert!(recording.wait().unwrap().success(), "{summary}");
    let profile = parse_folded(&std::fs::read_to_string(&out).unwrap());

    assert!(
        summary.contains(&format!(
            "(pid {container_pid}, pid 1 in its namespace, CPython 3.15)"
        )),
        "{summary}"
    );
    assert!(
        summary.contains(&format!("(pid {}, CPython 3.12)", runs[1].0)),
        "{summary}"
    );
    let counts: Vec<u64> = runs
        .iter()
        .map(|(pid, r)| {
            let root = format!("process {pid} (");
            profile
                .iter()
                .filter(|(s, _)| s[0].starts_with(&root))
                .filter(|(s, _)| {
                    s.iter()
                        .any(|f| function(f) == r["function"].as_str().unwrap())
                })
                .map(|(_, n)| n)
                .sum()
        })
        .collect();
    let total_samples: u64 = counts.iter().sum();
    let total_cpu: f64 = runs.iter().map(|(_, r)| r["cpu"].as_f64().unwrap()).sum();
    assert!(
        total_samples >= 1000,
        "only {total_samples} samples:\n{summary}"
    );
    for ((pid, r), n) in runs.iter().zip(&counts) {
        let profiled = 100.0 * *n as f64 / total_samples as f64;
        let expected = 100.0 * r["cpu"].as_f64().unwrap() / total_cpu;
        eprintln!(
            "all_container_and_host: pid {pid} {} {profiled:.1}% profiled vs {expected:.1}% measured",
            r["function"]
        );
        assert!(
            (profiled - expected).abs() <= 5.0,
            "pid {pid}: {profiled:.1}% of the samples but {expected:.1}% of the CPU\n{summary}"
        );
    }
    let container_root = profile
        .keys()
        .map(|s| &s[0])
        .find(|f| f.starts_with(&format!("process {container_pid} (")))
        .unwrap();
    assert_eq!(
        container_root,
        &format!("process {container_pid} (python3.15, pid 1 in its namespace)")
    );
}

// A version newer than any table.

/// `PY_VERSION_HEX` of 3.16.0a1.
const VERSION_3_16: u32 = 0x0310_00a1;

/// A copy of forky's python3.15 that says it is 3.16.0a1 where prof-bpf reads the version
/// (`Py_Version`, `_Py_DebugOffsets.version`), with `edit` applied to its `_Py_DebugOffsets`
/// bytes after that: a stand-in for a 3.16 beta, which cannot be had here. The layout it
/// publishes is 3.15's, which is what a 3.16 that changed nothing there would publish.
fn fake_3_16(test: &str, edit: impl FnOnce(&mut [u8])) -> std::path::PathBuf {
    use object::{Object, ObjectSection, ObjectSymbol};
    let original = cache_dir().join("forky/usr/bin/python3.15");
    interpreter("forky-3.15");
    let mut bytes = std::fs::read(&original).unwrap();
    let file = object::File::parse(&*bytes).unwrap();
    let runtime = file
        .section_by_name(".PyRuntime")
        .unwrap()
        .file_range()
        .unwrap()
        .0 as usize;
    let py_version = file
        .dynamic_symbols()
        .find(|s| s.name() == Ok("Py_Version"))
        .unwrap()
        .address();
    let section = file
        .sections()
        .find(|s| s.address() <= py_version && py_version < s.address() + s.size())
        .unwrap();
    let at = (section.file_range().unwrap().0 + py_version - section.address()) as usize;
    assert_eq!(bytes[runtime..runtime + 8], *b"xdebugpy");
    bytes[at..at + 4].copy_from_slice(&VERSION_3_16.to_le_bytes());
    bytes[runtime + 8..runtime + 16].copy_from_slice(&(VERSION_3_16 as u64).to_le_bytes());
    edit(&mut bytes[runtime..]);
    let path = scratch_dir(test).join("python3.16");
    std::fs::write(&path, &bytes).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

/// `prof-bpf record` of split.py under `exe` (bind-mounted over python3.15 in a container, so the
/// forky root is not changed).
fn record_fake(exe: &std::path::Path, out: &std::path::Path) -> std::process::Output {
    let root = cache_dir().join("forky");
    let script = format!(
        "mount --bind '{exe}' '{root}/usr/bin/python3.15' && mount --bind '{fixtures}' '{root}/mnt' && exec chroot '{root}' python3.15 /mnt/split.py 2",
        exe = exe.display(),
        root = root.display(),
        fixtures = fixture("").display(),
    );
    Command::new(prof_bpf())
        .args(["record", "-r", "1000", "-f", "raw", "-o"])
        .arg(out)
        .args([
            "--",
            "unshare",
            "--pid",
            "--mount",
            "--fork",
            "--kill-child",
            "sh",
            "-c",
        ])
        .arg(script)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("running prof-bpf")
}

/// A 3.16 is profiled from the `_Py_DebugOffsets` it publishes, once they check out, with a
/// warning; one whose offsets do not check out is refused, saying why.
#[test]
fn a_newer_version_is_profiled_from_its_debug_offsets_with_a_warning() {
    if !privileged() {
        return;
    }
    let test = "newer_version_3_16";
    let exe = fake_3_16(test, |_| {});
    let out = scratch_dir(&format!("{test}_profile")).join("profile.txt");
    let result = record_fake(&exe, &out);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    assert!(
        stderr.contains("python 3.16 is newer than prof-bpf's tables (up to 3.15); profiling it from the layout it publishes"),
        "{stderr}"
    );
    assert!(stderr.contains("CPython 3.16)"), "{stderr}");
    let profile = parse_folded(&std::fs::read_to_string(&out).unwrap());
    check_split(
        &profile,
        measured_split(&String::from_utf8_lossy(&result.stdout)),
        test,
    );

    // _PyRuntime's size as published no longer matches the ELF section's: refused.
    let broken = fake_3_16(&format!("{test}_broken"), |offsets| {
        offsets[24..32].copy_from_slice(&1234u64.to_le_bytes());
    });
    let result = record_fake(&broken, &out);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("python 3.16 is newer than prof-bpf's tables (up to 3.15), and its _Py_DebugOffsets could not be used: _Py_DebugOffsets says _PyRuntime is 1234 bytes"),
        "{stderr}"
    );
}

// top.

/// A tmux server of its own running one pane, killed when the test ends.
struct Tmux(String);

impl Tmux {
    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .args(["-L", &self.0])
            .args(args)
            .output()
            .expect("running tmux (apt-get install tmux)")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "top"]).stdout).into()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

/// `word` quoted for a POSIX shell.
fn shell_quote(word: &std::ffi::OsStr) -> String {
    format!("'{}'", word.to_string_lossy().replace('\'', r"'\''"))
}

/// `top` on split.py under `which`, in a real terminal: the header names the process (with its
/// pid in a container) and says what there is of a GIL, and heavy holds its 3:1 share.
fn top_shows(which: &str, test: &str) {
    if !privileged() {
        return;
    }
    let interp = interpreter(which);
    let tmux = Tmux(format!("prof-bpf-{test}-{}", std::process::id()));
    let out = tmux.cmd(&[
        "new-session",
        "-d",
        "-x",
        "160",
        "-y",
        "40",
        "-s",
        "top",
        "bash",
        "--norc",
        "--noprofile",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let command = interp.command("split.py", &["30"]);
    let words: Vec<String> = std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(shell_quote)
        .collect();
    let line = format!(
        "{} top --refresh 0.5 -r 1000 -- {}",
        prof_bpf().display(),
        words.join(" ")
    );
    assert!(
        tmux.cmd(&["send-keys", "-t", "top", &line, "Enter"])
            .status
            .success()
    );
    let samples = |s: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix("Total Samples "))
            .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
    };
    let total_time = |s: &str, name: &str| -> f64 {
        s.lines()
            .skip_while(|l| !l.starts_with("%Own"))
            .filter_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                (cols.len() > 4 && function(&cols[4..].join(" ")) == name)
                    .then(|| cols[3].trim_end_matches('s').parse::<f64>().ok())?
            })
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let screen = loop {
        let s = tmux.screen();
        if !s.contains("Sort: TotalTime") {
            let _ = tmux.cmd(&["send-keys", "-t", "top", "4"]);
        } else if samples(&s).is_some_and(|n| n >= 2000)
            && total_time(&s, "light") > 0.0
            && total_time(&s, "heavy") > 0.0
        {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "{test}: no 2000 samples in 30 s:\n{s}"
        );
        thread::sleep(Duration::from_millis(200));
    };
    let _ = tmux.cmd(&["send-keys", "-t", "top", "q"]);
    let version = version_of(which);
    let named = match interp.is_container() {
        true => format!(", pid 1 in its namespace, CPython {version})"),
        false => format!(", CPython {version})"),
    };
    assert!(screen.contains(&named), "{test}: no {named:?}:\n{screen}");
    let gil = match which {
        "3.13t" => "free-threaded: no GIL",
        _ => "   GIL ",
    };
    assert!(screen.contains(gil), "{test}: no {gil:?}:\n{screen}");
    let (heavy, light) = (total_time(&screen, "heavy"), total_time(&screen, "light"));
    let share = 100.0 * heavy / (heavy + light);
    eprintln!("{test}: heavy {share:.1}% of heavy+light total time");
    assert!(
        (share - 75.0).abs() <= 6.0,
        "{test}: heavy is {share:.1}%:\n{screen}"
    );
}

#[test]
fn top_3_15_in_a_container() {
    top_shows("forky-3.15", "top_3_15_container");
}

#[test]
fn top_3_13t() {
    top_shows("3.13t", "top_3_13t");
}

// Tagged code references.

/// 3.14+ keep a frame's code object as a `_PyStackRef`, whose low bit says the reference is not
/// counted (an immortal or, in free-threaded builds, a deferred one). The interpreters here
/// happen to tag only their entry frames, so the test tags the long-lived frames of split.py
/// itself (`<module>` and `main`, while it waits to be attached) the way CPython would: the
/// interpreter clears the bit whenever it reads the field, and only skips a decrement when the
/// frame ends. Every stack must still be named from its root.
fn tagged_code_is_untagged(which: &str, test: &str) {
    if !privileged() {
        return;
    }
    let interp = interpreter(which);
    let target = start_split(&interp);
    let pid = target.pid;
    let p = python::discover::inspect(pid).unwrap();
    let mem = ProcMem::open(pid).unwrap();
    let (layout, _) = python::layout_of(&mem, p.version, p.runtime_addr, p.runtime_size).unwrap();
    let k = layout.kernel;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/{pid}/mem"))
        .unwrap();
    let word = |addr: u64| {
        let mut b = [0u8; 8];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut b, addr).unwrap();
        u64::from_le_bytes(b)
    };
    let interp_state = word(p.runtime_addr + k.runtime_interpreters_head as u64);
    let tstate = word(interp_state + k.interp_threads_head as u64);
    let mut frame = word(tstate + k.tstate_frame as u64);
    let mut tagged = 0;
    while frame != 0 {
        let mut owner = [0u8];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut owner, frame + k.frame_owner as u64)
            .unwrap();
        let at = frame + k.frame_code as u64;
        let code = word(at);
        if (owner[0] as u16) < k.owner_cstack && code & 1 == 0 {
            // Only the low byte changes.
            std::os::unix::fs::FileExt::write_all_at(&file, &[(code as u8) | 1], at).unwrap();
            tagged += 1;
        }
        frame = word(frame + k.frame_previous as u64);
    }
    assert!(tagged >= 2, "{test}: tagged {tagged} frames");
    let out = scratch_dir(test).join("profile.txt");
    let (ended, rest) = record_by_pid(target, &out, &[]);
    assert!(ended.status.success(), "prof-bpf failed: {}", ended.stderr);
    let profile = parse_folded(&std::fs::read_to_string(&out).unwrap());
    check_split(&profile, measured_split(&rest), test);
    for (stack, n) in &profile {
        let names: Vec<&str> = stack.iter().map(|f| function(f)).collect();
        assert!(
            names.starts_with(&["<module>", "main"]),
            "{test}: {n} samples not named from the root: {stack:?}"
        );
    }
}

#[test]
fn tagged_code_references_are_untagged_3_14() {
    tagged_code_is_untagged("forky-3.14", "tagged_code_3_14");
}

#[test]
fn tagged_code_references_are_untagged_3_15() {
    tagged_code_is_untagged("forky-3.15", "tagged_code_3_15");
}

/// Without CAP_SYS_ADMIN and CAP_CHECKPOINT_RESTORE (root with only what it needs, or the
/// capabilities the README lists) /proc/PID/map_files cannot be opened: the container's files
/// are then opened inside its root and checked to be the mapped ones, and it is profiled all the
/// same, native frames too.
#[test]
fn a_container_is_profiled_without_the_right_to_map_files() {
    if !privileged() {
        return;
    }
    let test = "container_without_map_files";
    let interp = interpreter("forky-3.15");
    let out = scratch_dir(test).join("profile.txt");
    let (ended, rest) = start_split(&interp).record(|pid| {
        let mut capsh = Command::new("capsh");
        capsh
            .args(["--drop=cap_sys_admin,cap_checkpoint_restore", "--", "-c"])
            .arg(format!(
                "exec '{}' record --native -r 1000 -f raw --pid {pid} -o '{}'",
                prof_bpf().display(),
                out.display()
            ));
        Recording::spawn(capsh)
    });
    let stderr = ended.stderr;
    assert!(ended.status.success(), "prof-bpf failed: {stderr}");
    let profile = parse_folded(&std::fs::read_to_string(&out).unwrap());
    check_split(&profile, measured_split(&rest), test);
    assert!(
        profile
            .keys()
            .any(|s| s.iter().any(|f| function(f) == "Py_BytesMain")),
        "{test}: no native frames named"
    );
}
