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

/// What `dump` calls threading's methods on every version: qualified by `co_qualname` from
/// 3.11, by the class of their `self` before (py-spy's rule).
fn method(name: &str) -> String {
    format!("Thread.{name}")
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
    // Python's names for the threads, not the kernel's (`python3.X` for all three).
    for (t, name) in threads.iter().zip(["MainThread", "sleeper", "locker"]) {
        assert!(t.0.ends_with("(sleeping)"), "{}", t.0);
        assert!(t.0.contains(&format!(" \"{name}\" ")), "{}", t.0);
    }
    let bootstrap = format!("{} (", method("_bootstrap"));
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
        method("run"),
        method("_bootstrap_inner"),
        method("_bootstrap"),
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
/// dump fails with a message that says so, and the threads stopped before it run again. A dump
/// without `--native` reads the threads running instead, and says so.
#[test]
fn dump_when_ptrace_is_refused_says_so_and_resumes_the_others() {
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
    let out = run(&["dump", "--pid", &pid]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("pid {pid}: reading its threads while they run"))
            && stderr.contains("another tracer")
            && !stderr.contains("threads were stopped for"),
        "{stderr}"
    );
    let printed = threads(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(printed.len(), 3, "{printed:?}");
    drop(strace);
    let others = || -> Vec<(String, char)> {
        thread_states(&pid)
            .into_iter()
            .filter(|(tid, _)| *tid != last)
            .collect()
    };
    // Not left stopped; a thread let go runs for a moment before it sleeps again.
    assert!(
        others().iter().all(|(_, s)| *s != 't' && *s != 'T'),
        "left stopped: {:?}",
        others()
    );
    let started = std::time::Instant::now();
    while !others().iter().all(|(_, s)| *s == 'S') {
        assert!(
            started.elapsed() < READY_TIMEOUT,
            "not asleep again: {:?}",
            others()
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
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

// dump --locals, --json and --subprocesses.

/// x86_64's futex(2): a lock wait, and also a wait for the GIL.
const SYS_FUTEX: i64 = 202;

/// Waits until thread `tid` of `pid` sleeps in a system call that is not a futex (a sleep: not
/// waiting for a lock or for the GIL).
fn wait_sleeping(pid: u32, tid: u32) {
    let started = std::time::Instant::now();
    while !(thread_state(pid, tid) == Some('S')
        && blocked_in(pid, tid).is_some_and(|n| n >= 0 && n != SYS_FUTEX))
    {
        assert!(
            started.elapsed() < READY_TIMEOUT,
            "thread {tid} of pid {pid} never slept"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// locals.py under `which` (`interpreter`'s names), once it sleeps in libc's `sleep` with the
/// GIL held: the process (killed when dropped), its host pid and what it said of its locals.
fn start_locals(which: &str) -> (Killed, u32, serde_json::Value) {
    let (child, pid, ready) = start_under(which, "locals.py", &[], &[("BLOCKED_SECONDS", "60")]);
    wait_sleeping(pid, pid);
    (child, pid, ready)
}

/// Fixture `name` with `args` and `env`, under `which` (`interpreter`'s names), once it printed
/// its first line: the process (killed when dropped), its host pid and that line, parsed.
fn start_under(
    which: &str,
    name: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Killed, u32, serde_json::Value) {
    let interp = interpreter(which);
    let mut child = interp
        .command(name, args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let child = Killed(child);
    let ready: serde_json::Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("{name} said {line:?}, not JSON: {e}"));
    let pid = interp.python_pid(child.0.id());
    (child, pid, ready)
}

/// The locals `dump --locals` printed under the first frame of `function`: name -> value.
fn printed_locals(dump: &str, function: &str) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut inside = false;
    for line in dump.lines() {
        if let Some(local) = line.strip_prefix("        ") {
            if inside {
                let (name, value) = local
                    .split_once(" = ")
                    .unwrap_or_else(|| panic!("not a local: {line:?}"));
                out.insert(name.to_string(), value.to_string());
            }
        } else if let Some(frame) = line.strip_prefix("    ") {
            if !out.is_empty() || inside {
                break;
            }
            inside = frame.starts_with(&format!("{function} ("));
        }
    }
    out
}

/// What dump should print of a local the fixture described (`described` in locals.py): its
/// `repr` for the types dump reads, else the type and length, else the type and address.
fn check_value(name: &str, printed: &str, want: &serde_json::Value) {
    let type_name = want["type"].as_str().unwrap();
    if let Some(repr) = want["repr"].as_str() {
        assert_eq!(printed, repr, "{name}");
    } else if let Some(len) = want["len"].as_u64() {
        assert_eq!(printed, format!("<{type_name}, len {len}>"), "{name}");
    } else {
        assert!(
            printed.starts_with(&format!("<{type_name} object at 0x")),
            "{name}: {printed}"
        );
    }
}

/// `dump --locals`: the blocked function's frame on its line, with every local the fixture set,
/// each with its value or type; the thread holds the GIL (no GIL in a free-threaded build).
fn dump_locals_shows_each_value(which: &str) {
    if !privileged() {
        return;
    }
    let (_fixture, pid, ready) = start_locals(which);
    let out = run(&["dump", "--locals", "--pid", &pid.to_string()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = interpreter(which).fixture_path("locals.py");
    let line = line_of(&fixture("locals.py"), "# blocked with locals on this line");
    let frame = format!("    blocked_with_locals ({}:{line})", file.display());
    assert!(
        stdout.lines().any(|l| l == frame),
        "no {frame:?}:\n{stdout}"
    );
    let printed = printed_locals(&stdout, "blocked_with_locals");
    let want = ready["locals"].as_object().unwrap();
    assert!(want.len() >= 13, "every local the fixture sets: {want:?}");
    for (name, want) in want {
        let got = printed
            .get(name)
            .unwrap_or_else(|| panic!("no local {name}:\n{stdout}"));
        check_value(name, got, want);
    }
    let header = stdout
        .lines()
        .find(|l| l.starts_with(&format!("Thread {pid} ")))
        .unwrap_or_else(|| panic!("no main thread:\n{stdout}"));
    let gil = !which.ends_with('t');
    assert_eq!(header.contains("holding the GIL"), gil, "{header}");
}

#[test]
fn dump_locals_3_8() {
    dump_locals_shows_each_value("3.8");
}

#[test]
fn dump_locals_3_9() {
    dump_locals_shows_each_value("3.9");
}

#[test]
fn dump_locals_3_10() {
    dump_locals_shows_each_value("3.10");
}

#[test]
fn dump_locals_3_11() {
    dump_locals_shows_each_value("3.11");
}

#[test]
fn dump_locals_3_12() {
    dump_locals_shows_each_value("3.12");
}

#[test]
fn dump_locals_3_13() {
    dump_locals_shows_each_value("3.13");
}

#[test]
fn dump_locals_debian_3_11() {
    dump_locals_shows_each_value("debian-3.11");
}

#[test]
fn dump_locals_3_13t() {
    dump_locals_shows_each_value("3.13t");
}

#[test]
fn dump_locals_3_14_in_a_container() {
    dump_locals_shows_each_value("forky-3.14");
}

#[test]
fn dump_locals_3_15_in_a_container() {
    dump_locals_shows_each_value("forky-3.15");
}

/// The JSON types `check_object` knows.
#[derive(Clone, Copy, Debug)]
enum Json {
    U64,
    Str,
    Bool,
    Array,
    OrNull(&'static Json),
}

/// Asserts `v` is an object with exactly `fields`, each of its type.
fn check_object(what: &str, v: &serde_json::Value, fields: &[(&str, Json)]) {
    let object = v
        .as_object()
        .unwrap_or_else(|| panic!("{what} is not an object: {v}"));
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    let mut want: Vec<&str> = fields.iter().map(|f| f.0).collect();
    keys.sort_unstable();
    want.sort_unstable();
    assert_eq!(keys, want, "{what}'s fields");
    fn is(v: &serde_json::Value, t: Json) -> bool {
        match t {
            Json::U64 => v.is_u64(),
            Json::Str => v.is_string(),
            Json::Bool => v.is_boolean(),
            Json::Array => v.is_array(),
            Json::OrNull(t) => v.is_null() || is(v, *t),
        }
    }
    for (name, t) in fields {
        assert!(is(&v[name], *t), "{what}.{name} is not {t:?}: {}", v[name]);
    }
}

/// Checks a `dump --json` document against the schema README.md documents (schema_version 1):
/// every object has exactly its fields, each of its type. Returns the processes.
fn check_schema(doc: &serde_json::Value) -> &Vec<serde_json::Value> {
    use Json::*;
    check_object(
        "the document",
        doc,
        &[
            ("schema_version", U64),
            ("prof_bpf_version", Str),
            ("processes", Array),
        ],
    );
    assert_eq!(doc["schema_version"], 1);
    let processes = doc["processes"].as_array().unwrap();
    for p in processes {
        check_object(
            "a process",
            p,
            &[
                ("pid", U64),
                ("ns_pid", OrNull(&U64)),
                ("name", Str),
                ("executable", Str),
                ("python_version", Str),
                ("threads", Array),
                // `--async-aware` only.
                ("tasks", OrNull(&Array)),
            ],
        );
        for t in p["threads"].as_array().unwrap() {
            check_object(
                "a thread",
                t,
                &[
                    ("tid", U64),
                    ("ns_tid", OrNull(&U64)),
                    ("name", OrNull(&Str)),
                    ("state", OrNull(&Str)),
                    ("idle", OrNull(&Bool)),
                    ("holds_gil", OrNull(&Bool)),
                    ("truncated", Bool),
                    ("frames", Array),
                ],
            );
            for f in t["frames"].as_array().unwrap() {
                check_object(
                    "a frame",
                    f,
                    &[
                        ("kind", Str),
                        ("function", Str),
                        ("file", OrNull(&Str)),
                        ("line", OrNull(&U64)),
                        ("locals", OrNull(&Array)),
                        ("locals_omitted", OrNull(&U64)),
                        ("locals_error", OrNull(&Str)),
                    ],
                );
                let kind = f["kind"].as_str().unwrap();
                assert!(
                    ["python", "native", "unknown", "marker"].contains(&kind),
                    "kind {kind}"
                );
                for l in f["locals"].as_array().into_iter().flatten() {
                    check_object(
                        "a local",
                        l,
                        &[
                            ("name", Str),
                            ("type", Str),
                            ("repr", Str),
                            ("len", OrNull(&U64)),
                        ],
                    );
                }
            }
        }
    }
    processes
}

/// `dump --json --locals` (and `--native`): a document of the schema, whose process, main
/// thread, leaf Python frame and locals are the fixture's.
fn dump_json_follows_the_schema(which: &str, native: bool) {
    if !privileged() {
        return;
    }
    let (_fixture, pid, ready) = start_locals(which);
    let pid_text = pid.to_string();
    let mut args = vec!["dump", "--json", "--locals", "--pid", &pid_text];
    if native {
        args.push("--native");
    }
    let out = run(&args);
    assert!(
        out.status.success(),
        "dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("dump --json is JSON");
    let processes = check_schema(&doc);
    assert_eq!(processes.len(), 1, "{doc:#}");
    let p = &processes[0];
    assert_eq!(p["pid"], pid);
    assert_eq!(p["python_version"], version_of(which));
    let threads = p["threads"].as_array().unwrap();
    assert_eq!(threads.len(), 1, "{doc:#}");
    let t = &threads[0];
    assert_eq!(t["tid"], pid);
    // The fixture never imports threading: the thread has no Python name, so the kernel's.
    assert_eq!(t["name"], p["name"], "{doc:#}");
    assert_eq!(
        (t["state"].as_str(), &t["idle"]),
        (Some("sleeping"), &true.into())
    );
    assert_eq!(t["holds_gil"], true, "it sleeps in C with the GIL held");
    let frames = t["frames"].as_array().unwrap();
    let python: Vec<&serde_json::Value> = frames.iter().filter(|f| f["kind"] == "python").collect();
    let leaf = python[0];
    assert_eq!(leaf["function"], "blocked_with_locals");
    assert_eq!(
        leaf["file"].as_str().map(std::path::PathBuf::from),
        Some(fixture("locals.py"))
    );
    assert_eq!(
        leaf["line"],
        line_of(&fixture("locals.py"), "# blocked with locals on this line")
    );
    // With --native the C frames it sleeps in are above it, and the program's start below.
    assert_eq!(frames[0]["kind"] == "native", native, "{doc:#}");
    // The Python frames and only they have locals; a module keeps none in fast locals.
    for f in frames {
        assert_eq!(f["locals"].is_array(), f["kind"] == "python", "{f}");
    }
    assert_eq!(leaf["locals_omitted"], 0);
    let locals: std::collections::BTreeMap<&str, &serde_json::Value> = leaf["locals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["name"].as_str().unwrap(), l))
        .collect();
    for (name, want) in ready["locals"].as_object().unwrap() {
        let got = locals
            .get(name.as_str())
            .unwrap_or_else(|| panic!("no local {name}: {leaf:#}"));
        assert_eq!(got["type"], want["type"], "{name}");
        assert_eq!(
            got["len"],
            want.get("len").cloned().unwrap_or_default(),
            "{name}"
        );
        check_value(name, got["repr"].as_str().unwrap(), want);
    }
    let module = python.last().unwrap();
    assert_eq!(module["function"], "<module>");
    assert_eq!(module["locals"], serde_json::json!([]), "{module:#}");
}

#[test]
fn dump_json_3_8() {
    dump_json_follows_the_schema("3.8", false);
}

#[test]
fn dump_json_native_3_12() {
    dump_json_follows_the_schema("3.12", true);
}

/// The pids `Process PID...` lines of a text dump name, in order.
fn dumped_processes(dump: &str) -> Vec<u32> {
    dump.lines()
        .filter_map(|l| {
            l.strip_prefix("Process ")?
                .split([':', ' '])
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// Kills the pids the test did not start itself (a pool's workers) when the test ends.
struct KilledPids(Vec<u32>);

impl Drop for KilledPids {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: kill(2) with a pid the fixture said is its worker; at worst a no-op.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// `dump -s` on a multiprocessing pool's parent: the parent and each of its 4 workers once,
/// each worker in its task on its line; without `-s`, the parent alone. `--json` lists the same.
#[test]
fn dump_subprocesses_of_a_pool() {
    if !privileged() {
        return;
    }
    let fixture_run = Fixture::start(
        &python("3.12"),
        "pool_blocked.py",
        &[],
        &[("BLOCKED_SECONDS", "60")],
    );
    let parent = fixture_run.pid;
    let workers: Vec<u32> = fixture_run.ready["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_u64().unwrap() as u32)
        .collect();
    let _workers = KilledPids(workers.clone());
    assert_eq!(
        workers
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        4,
        "four workers: {workers:?}"
    );
    for &w in &workers {
        wait_sleeping(w, w);
    }
    let pid = parent.to_string();
    let out = run(&["dump", "-s", "--pid", &pid]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut want = vec![parent];
    want.extend(&workers);
    want.sort_unstable();
    let mut got = dumped_processes(&stdout);
    got.sort_unstable();
    assert_eq!(got, want, "each process once:\n{stdout}");
    let line = line_of(&fixture("pool_blocked.py"), "# worker blocks on this line");
    let task = format!(
        "    task_blocks_here ({}:{line})",
        fixture("pool_blocked.py").display()
    );
    assert_eq!(
        stdout.lines().filter(|l| *l == task).count(),
        4,
        "every worker in its task:\n{stdout}"
    );

    let alone = run(&["dump", "--pid", &pid]);
    assert_eq!(
        dumped_processes(&String::from_utf8_lossy(&alone.stdout)),
        [parent]
    );

    let json = run(&["dump", "-s", "--json", "--pid", &pid]);
    assert!(json.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let mut pids: Vec<u32> = check_schema(&doc)
        .iter()
        .map(|p| p["pid"].as_u64().unwrap() as u32)
        .collect();
    pids.sort_unstable();
    assert_eq!(pids, want, "{doc:#}");
}

/// `dump -s` on a shell that started Python: the shell is passed over, its Python dumped once;
/// without `-s` the shell is refused as not Python.
#[test]
fn dump_subprocesses_of_a_shell() {
    if !privileged() {
        return;
    }
    // `; exit` keeps the shell from exec'ing Python in its place.
    let mut shell = Killed(
        Command::new("sh")
            .args(["-c", "\"$0\" \"$1\"; exit $?"])
            .arg(python("3.12"))
            .arg(fixture("locals.py"))
            .env("BLOCKED_SECONDS", "60")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(shell.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let ready: serde_json::Value = serde_json::from_str(&line).unwrap();
    let py = ready["pid"].as_u64().unwrap() as u32;
    let sh = shell.0.id();
    assert_ne!(py, sh, "the shell runs on beside its Python");
    wait_sleeping(py, py);
    let sh_text = sh.to_string();
    let out = run(&["dump", "-s", "--locals", "--pid", &sh_text]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(dumped_processes(&stdout), [py], "{stdout}");
    let printed = printed_locals(&stdout, "blocked_with_locals");
    assert_eq!(
        printed.get("count").map(String::as_str),
        Some("42"),
        "{stdout}"
    );

    let out = run(&["dump", "--pid", &sh_text]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is not a Python process"), "{stderr}");
}

/// `dump -s` on a tree without Python: an error that says so, not an empty dump.
#[test]
fn dump_subprocesses_without_python_says_so() {
    if !privileged() {
        return;
    }
    let sleeper = Killed(Command::new("sleep").arg("30").spawn().unwrap());
    let pid = sleeper.0.id().to_string();
    let out = run(&["dump", "-s", "--pid", &pid]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("no Python process in the tree of pid {pid}")),
        "{stderr}"
    );
}

/// The main thread of a `dump --locals` (text): its frames, leaf first, as (function, the
/// value of its local `n` where it has one).
fn main_thread_frames(dump: &str) -> Vec<(String, Option<i64>)> {
    let mut frames: Vec<(String, Option<i64>)> = Vec::new();
    for line in dump
        .lines()
        .skip_while(|l| !l.starts_with("Thread "))
        .skip(1)
    {
        if line.starts_with("Thread ") {
            break;
        }
        if let Some(local) = line.strip_prefix("        ") {
            if let (Some(n), Some(last)) = (local.strip_prefix("n = "), frames.last_mut()) {
                last.1 = n.parse().ok();
            }
        } else if let Some(frame) = line.strip_prefix("    ") {
            frames.push((function(frame).to_string(), None));
        }
    }
    frames
}

/// `dump` of a thread that runs: each stack is of one moment. flip.py recurses into `ping`,
/// then into `pong`, over and over, and the two take the same places in memory: a stack read
/// while the thread runs joins frames of both (with `--nonblocking`, each of a dozen dumps on
/// an idle machine did), or loses its root; a thread waiting for a CPU does not show it, so a
/// busy machine needs more dumps to. Stopped for the read, the thread shows one function's
/// frames above `flip`, `main` and `<module>`, each frame's `n` one more than the frame above
/// it, the outermost at the fixture's depth. And it runs on after.
fn dump_of_a_running_thread_is_of_one_moment(which: &str) {
    if !privileged() {
        return;
    }
    let (_child, pid, ready) = start_under(which, "flip.py", &["120"], &[]);
    let depth = ready["depth"].as_i64().unwrap();
    let pid = pid.to_string();
    // Said ready, it returns from `ready` and starts to flip: dumps from then on.
    let mut skipped = 0;
    let mut checked = 0;
    while checked < 40 {
        let out = run(&["dump", "--locals", "--pid", &pid]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "dump failed: {stderr}");
        assert!(stderr.contains("threads were stopped for"), "{stderr}");
        let frames = main_thread_frames(&stdout);
        if checked == 0 && !frames.iter().any(|(f, _)| f == "flip") {
            skipped += 1;
            assert!(skipped < 100, "flip.py never flips:\n{stdout}");
            continue;
        }
        checked += 1;
        let names: Vec<&str> = frames.iter().map(|(f, _)| f.as_str()).collect();
        let recursion = names.len().saturating_sub(3);
        assert_eq!(
            names[recursion..],
            ["flip", "main", "<module>"],
            "the stack does not end in flip, main, <module>:\n{stdout}"
        );
        let (inner, _) = &frames[0];
        assert!(
            frames[..recursion].iter().all(|(f, _)| f == inner),
            "frames of two moments:\n{stdout}"
        );
        let ns: Vec<Option<i64>> = frames[..recursion].iter().map(|(_, n)| *n).collect();
        let want: Vec<Option<i64>> = (depth + 1 - recursion as i64..=depth).map(Some).collect();
        assert_eq!(ns, want, "not one recursion's values of n:\n{stdout}");
    }
    // Let go: the thread runs (or waits for a CPU) again.
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(
        thread_states(&pid).iter().all(|(_, s)| *s == 'R'),
        "{:?}",
        thread_states(&pid)
    );
}

#[test]
fn dump_of_a_running_thread_is_of_one_moment_3_8() {
    dump_of_a_running_thread_is_of_one_moment("3.8");
}

#[test]
fn dump_of_a_running_thread_is_of_one_moment_3_12() {
    dump_of_a_running_thread_is_of_one_moment("3.12");
}

#[test]
fn dump_of_a_running_thread_is_of_one_moment_3_13t() {
    dump_of_a_running_thread_is_of_one_moment("3.13t");
}
