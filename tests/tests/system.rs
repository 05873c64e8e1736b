//! Many processes and time off the CPU, end to end as root: `--all` across Python versions and
//! processes that come and go, `--subprocesses` through fork and exec, `--idle` and `--gil`.
//! Each fixture measures what it did (CPU seconds, sleep seconds, pids, thread ids) and the
//! profile is compared with that.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use prof_bpf_tests::*;
use serde_json::Value;

/// How far a profiled share may be from the measured share, in percentage points.
const TOLERANCE_PP: f64 = 5.0;

/// Starts `prof-bpf record` with `args`, writing collapsed stacks to `out`.
fn start_recording(args: &[&str], out: &Path) -> Child {
    Command::new(prof_bpf())
        .args(["record", "-f", "raw", "-o"])
        .arg(out)
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting prof-bpf")
}

/// Stops a recording started by `start_recording` as Ctrl-C would; returns its stderr (the
/// summary). Stopping when the fixtures are done, not after a set time, keeps a slow machine
/// from cutting them short.
fn finish_recording(child: Child) -> String {
    // SAFETY: kill with the pid of a child we spawned and have not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().expect("waiting for prof-bpf");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "prof-bpf failed: {stderr}");
    stderr
}

/// Waits until the recording samples: prof-bpf holds one BPF link per CPU (the program on that
/// CPU's CPU-clock event) once its kernel program is attached.
fn wait_until_sampling(recording: &Child) {
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    let started = Instant::now();
    loop {
        let events = std::fs::read_dir(format!("/proc/{}/fd", recording.id()))
            .map(|fds| {
                fds.filter_map(Result::ok)
                    .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                    .filter(|l| l.to_string_lossy().contains("bpf_link"))
                    .count()
            })
            .unwrap_or(0);
        if events >= cpus {
            // The first scan for processes follows at once.
            thread::sleep(Duration::from_millis(200));
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "prof-bpf did not start sampling within 30 s"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Runs busy.py `function` under `python_version`, burning `cpu` seconds after waiting
/// `wait` seconds.
fn spawn_busy(python_version: &str, function: &str, cpu: f64, wait: f64) -> Child {
    Command::new(python(python_version))
        .arg(fixture("busy.py"))
        .args([function, &cpu.to_string(), &wait.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting busy.py")
}

/// Samples whose root frame is process `pid` and which pass through function `name`.
fn samples_of(profile: &Folded, pid: u64, name: &str) -> u64 {
    let root = format!("process {pid} (");
    profile
        .iter()
        .filter(|(stack, _)| stack[0].starts_with(&root))
        .filter(|(stack, _)| stack.iter().any(|f| function(f) == name))
        .map(|(_, n)| n)
        .sum()
}

/// For each (pid, function, cpu) measured, its share of the samples among them all is within
/// `TOLERANCE_PP` of its share of the CPU time, and every one has samples.
fn check_processes(profile: &Folded, runs: &[Value], test: &str) {
    let counts: Vec<u64> = runs
        .iter()
        .map(|r| {
            samples_of(
                profile,
                r["pid"].as_u64().unwrap(),
                r["function"].as_str().unwrap(),
            )
        })
        .collect();
    let total_samples: u64 = counts.iter().sum();
    let total_cpu: f64 = runs.iter().map(|r| r["cpu"].as_f64().unwrap()).sum();
    assert!(
        total_samples >= 500,
        "{test}: only {total_samples} samples of {runs:?}"
    );
    for (r, n) in runs.iter().zip(&counts) {
        let profiled = 100.0 * *n as f64 / total_samples as f64;
        let expected = 100.0 * r["cpu"].as_f64().unwrap() / total_cpu;
        eprintln!(
            "{test}: {} (pid {}) {profiled:.1}% profiled vs {expected:.1}% measured ({n} samples)",
            r["function"], r["pid"]
        );
        assert!(
            (profiled - expected).abs() <= TOLERANCE_PP,
            "{test}: {} of pid {} has {profiled:.1}% of the samples but {expected:.1}% of the CPU",
            r["function"],
            r["pid"]
        );
    }
}

/// Three Python versions at once under `--all`: one started before the recording and two
/// during it; one of them exits long before the end. Each is there, rooted at its own process,
/// with its share, and the one that exited keeps its names.
#[test]
fn all_processes_of_three_versions_started_before_and_during() {
    if !privileged() {
        return;
    }
    let dir = scratch_dir("all_three_versions");
    let out = dir.join("profile.txt");
    // Started before the recording, still waiting when it begins.
    let early = spawn_busy("3.8", "alpha", 1.0, 2.5);
    let recording = start_recording(&["--all", "-r", "1000"], &out);
    wait_until_sampling(&recording);
    let during = [
        spawn_busy("debian-3.11", "beta", 1.0, 0.5),
        spawn_busy("3.13", "gamma", 1.0, 0.5),
    ];
    let runs: Vec<Value> = [early]
        .into_iter()
        .chain(during)
        .map(|c| fixture_json(&c.wait_with_output().unwrap()))
        .collect();
    let summary = finish_recording(recording);
    let profile = parse_folded(&std::fs::read_to_string(&out).unwrap());
    check_processes(&profile, &runs, "all_three_versions");
    for (r, version) in runs.iter().zip(["3.8", "3.11", "3.13"]) {
        assert!(
            summary.contains(&format!("(pid {}, CPython {version})", r["pid"])),
            "pid {} ({version}) is not in the summary:\n{summary}",
            r["pid"]
        );
        // Every process exited before the recording ended: its frames are named all the same.
        let root = format!("process {} (", r["pid"]);
        let unknown: u64 = profile
            .iter()
            .filter(|(s, _)| {
                s[0].starts_with(&root) && s.iter().any(|f| f.starts_with("[unknown]"))
            })
            .map(|(_, n)| n)
            .sum();
        let all: u64 = profile
            .iter()
            .filter(|(s, _)| s[0].starts_with(&root))
            .map(|(_, n)| n)
            .sum();
        assert!(
            unknown * 100 <= all,
            "pid {}: {unknown} of {all} samples have unnamed frames",
            r["pid"]
        );
    }
}

/// Fifty short-lived Python processes during an `--all` recording: the profiler keeps up, its
/// memory does not grow with them, and the summary counts them.
#[test]
fn fifty_short_lived_processes_under_all() {
    if !privileged() {
        return;
    }
    let dir = scratch_dir("all_fifty");
    let out = dir.join("profile.txt");
    let recording = start_recording(&["--all", "-r", "100"], &out);
    let profiler = recording.id();
    wait_until_sampling(&recording);
    let rss = || -> u64 {
        std::fs::read_to_string(format!("/proc/{profiler}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    };
    let started = Instant::now();
    let mut pids = Vec::new();
    let mut rss_after_ten = 0;
    for batch in 0..10 {
        let children: Vec<Child> = (0..5)
            .map(|_| spawn_busy("3.12", "short", 0.15, 0.2))
            .collect();
        for c in children {
            let run = fixture_json(&c.wait_with_output().unwrap());
            pids.push(run["pid"].as_u64().unwrap());
        }
        if batch == 1 {
            thread::sleep(Duration::from_millis(300));
            rss_after_ten = rss();
        }
    }
    thread::sleep(Duration::from_millis(300));
    let rss_after_fifty = rss();
    eprintln!(
        "all_fifty: 50 processes in {:.1}s; profiler RSS {rss_after_ten} kB after 10, {rss_after_fifty} kB after 50",
        started.elapsed().as_secs_f64()
    );
    assert!(
        rss_after_fifty > 0 && rss_after_fifty < rss_after_ten + 32 * 1024,
        "the profiler grew from {rss_after_ten} kB to {rss_after_fifty} kB over 40 processes"
    );
    let summary = finish_recording(recording);
    let profile = parse_folded(&std::fs::read_to_string(&out).unwrap());
    let seen = pids
        .iter()
        .filter(|&&pid| samples_of(&profile, pid, "short") > 0)
        .count();
    assert!(
        seen >= 45,
        "only {seen} of 50 short-lived processes have samples in `short`"
    );
    let processes: u64 = summary
        .lines()
        .find_map(|l| l.split(" samples of ").nth(1))
        .and_then(|r| r.split(" Python processes").next()?.parse().ok())
        .expect("the summary counts the processes");
    assert!(processes >= 50, "the summary saw {processes}:\n{summary}");
}

/// A pool of four forked workers and `--subprocesses`: each worker is there, rooted at its own
/// process, with a quarter of the samples.
#[test]
fn subprocesses_follow_a_multiprocessing_pool() {
    if !privileged() {
        return;
    }
    let out = scratch_dir("subprocesses_pool").join("profile.txt");
    let args = ["--subprocesses", "-r", "1000", "-f", "raw"];
    let result = record_fixture(&args, &out, &python("3.12"), "pool.py", &["1"]);
    let runs = fixture_json(&result).as_array().unwrap().clone();
    assert_eq!(runs.len(), 4);
    let profile = parse_folded(&std::fs::read_to_string(&out).unwrap());
    check_processes(&profile, &runs, "subprocesses_pool");
}

/// A subprocess that execs a new Python, which runs another: all three generations, each in
/// its own function under its own process.
#[test]
fn subprocesses_follow_exec_and_grandchildren() {
    if !privileged() {
        return;
    }
    let out = scratch_dir("subprocesses_family").join("profile.txt");
    let result = record_fixture(
        &["-s", "-r", "1000", "-f", "raw"],
        &out,
        &python("3.11"),
        "family.py",
        &[],
    );
    let runs = fixture_json(&result).as_array().unwrap().clone();
    assert_eq!(runs.len(), 3);
    let profile = parse_folded(&std::fs::read_to_string(&out).unwrap());
    check_processes(&profile, &runs, "subprocesses_family");
}

/// A fork storm (issue 15): 200 children of about 20 ms of CPU each under `--subprocesses`. The
/// kernel follows each fork and samples the child from its first instruction: at least 90 % of
/// the CPU time the children measured is in the profile, and the summary says if any samples
/// could not be attributed.
#[test]
fn a_fork_storm_is_profiled_from_each_childs_first_millisecond() {
    if !privileged() {
        return;
    }
    let rate = 1000.0;
    let out = scratch_dir("fork_storm").join("profile.txt");
    let result = record_fixture(
        &["-s", "-r", "1000", "-f", "raw"],
        &out,
        &python("3.12"),
        "fork_storm.py",
        &["200", "0.02"],
    );
    let stderr = String::from_utf8_lossy(&result.stderr);
    let measured = fixture_json(&result);
    assert_eq!(measured["children"].as_u64(), Some(200), "{measured}");
    let child_cpu = measured["child_cpu"].as_f64().unwrap();
    let profile = parse_folded(&std::fs::read_to_string(&out).unwrap());
    let got = samples_in(&profile, "child_work") as f64;
    let expected = child_cpu * rate;
    eprintln!(
        "fork_storm: {got} samples in child_work, {expected:.0} expected from {child_cpu:.2}s"
    );
    assert!(
        got >= 0.9 * expected,
        "{got} samples in child_work, but the children measured {child_cpu:.3}s ({expected:.0} samples)\n{stderr}"
    );
    // Each child is its own process in the profile.
    let pids: std::collections::HashSet<&String> = profile
        .keys()
        .filter(|s| s.iter().any(|f| function(f) == "child_work"))
        .map(|s| &s[0])
        .collect();
    assert!(
        pids.len() >= 180,
        "only {} child processes in the profile",
        pids.len()
    );
}

/// `--pid` of a shell with `-s`: the shell is not Python, the Python it starts is followed.
#[test]
fn a_shell_that_starts_python_is_followed_by_its_pid() {
    if !privileged() {
        return;
    }
    let dir = scratch_dir("launcher_shell");
    let go = dir.join("go");
    let out = dir.join("profile.txt");
    let mut shell = Command::new(fixture("launcher.sh"))
        .arg(&go)
        .arg("1.5")
        .env("PYTHON", python("3.12"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the launcher");
    let mut stdout = std::io::BufReader::new(shell.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    let pid = line.trim().to_string();
    let mut recording = start_recording(&["-s", "-r", "1000", "--pid", &pid], &out);
    let mut stderr = std::io::BufReader::new(recording.stderr.take().unwrap());
    let mut said = String::new();
    while !said.contains("prof-bpf: sampling ") {
        let mut l = String::new();
        assert!(
            std::io::BufRead::read_line(&mut stderr, &mut l).unwrap() > 0,
            "{said}"
        );
        said.push_str(&l);
    }
    std::fs::write(&go, "").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    shell.wait().unwrap();
    // The shell has exited: so must the recording, soon.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = recording.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = recording.kill();
            panic!("prof-bpf did not stop when the shell it followed exited: {said}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let mut summary = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut summary).unwrap();
    assert!(status.success(), "{said}{summary}");
    let profile = parse_folded(&std::fs::read_to_string(&out).unwrap());
    check_split(&profile, measured_split(&rest), "launcher_shell");
}

/// py-spy's idle example: a() sleeps 5 s; b() sleeps 1 s and calls a(). With `--idle`, the own
/// time of each is what it slept, within 10 %.
#[test]
fn idle_time_goes_to_where_the_thread_slept() {
    if !privileged() {
        return;
    }
    let rate = 100.0;
    let out = scratch_dir("idle_sleep").join("profile.txt");
    // As on a fresh machine: neither tracefs nor debugfs mounted (issue 11). A private mount
    // namespace unmounts them if this machine has them, and proves they are gone.
    let result = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(
            "umount -l /sys/kernel/tracing 2>/dev/null; umount -l /sys/kernel/debug 2>/dev/null; \
             if [ -e /sys/kernel/tracing/events ] || [ -e /sys/kernel/debug/tracing/events ]; \
             then echo 'tracefs is still mounted' >&2; exit 97; fi; exec \"$0\" \"$@\"",
        )
        .arg(prof_bpf())
        .args(["record", "--idle", "-r", "100", "-f", "raw", "-o"])
        .arg(&out)
        .arg("--")
        .arg(python("3.12"))
        .arg(fixture("sleepy.py"))
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("running unshare");
    assert!(
        result.status.success(),
        "record --idle without tracefs: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    check_slept(&result, &out, rate, "idle_sleep");
}

/// The own time of sleepy.py's a() and b() is what each measured it slept, within 10 %.
fn check_slept(result: &std::process::Output, out: &Path, rate: f64, what: &str) {
    let stderr = String::from_utf8_lossy(&result.stderr);
    let slept = fixture_json(result);
    let profile = parse_folded(&std::fs::read_to_string(out).unwrap());
    let own = |name: &str| -> f64 {
        profile
            .iter()
            .filter(|(s, _)| function(s.last().unwrap()) == name)
            .map(|(_, n)| *n as f64 / rate)
            .sum()
    };
    for name in ["a", "b"] {
        let want = slept[name].as_f64().unwrap();
        let got = own(name);
        eprintln!("{what}: {name} own {got:.2}s profiled vs {want:.2}s slept");
        assert!(
            (got - want).abs() <= 0.1 * want,
            "{what}: {name}: {got:.2}s of own time, but it slept {want:.2}s\n{stderr}"
        );
    }
    assert!(stderr.contains("idle: "), "{stderr}");
}

/// `--native --idle` attributes time off the CPU as `--idle` does (issue 16): the blocked
/// thread's stack is its Python stack, named the same way.
#[test]
fn idle_with_native_frames_splits_like_idle() {
    if !privileged() {
        return;
    }
    let out = scratch_dir("idle_native").join("profile.txt");
    let result = record_fixture(
        &["--idle", "--native", "-r", "100", "-f", "raw"],
        &out,
        &python("3.12"),
        "sleepy.py",
        &[],
    );
    check_slept(&result, &out, 100.0, "idle_native");
}

/// `--idle` on the wall clock (issue 15), py-spy's check: attached to a process whose main
/// thread sleeps in one line the whole time, that thread gets the whole window (it was blocked
/// before recording started and is still blocked when it stops), at least 95 % of its samples in
/// that line; a worker that wakes every second gets its measured busy/idle split.
#[test]
fn idle_counts_the_whole_window_by_the_wall_clock() {
    if !privileged() {
        return;
    }
    let rate = 100.0;
    // Six of the worker's one-second cycles: a part cycle at each end moves its split little.
    let window = 6.0;
    let out = scratch_dir("idle_wall_clock").join("profile.txt");
    let mut target = Command::new(python("3.12"))
        .arg(fixture("idle_threads.py"))
        .arg("10")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(target.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    let pid = serde_json::from_str::<Value>(&line).unwrap()["pid"].to_string();
    let result = Command::new(prof_bpf())
        .args([
            "record",
            "--idle",
            "--threads",
            "-r",
            "100",
            "-d",
            "6",
            "-f",
            "raw",
        ])
        .args(["--pid", &pid, "-o"])
        .arg(&out)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    target.wait().unwrap();
    let measured: Value = serde_json::from_str(rest.lines().last().unwrap()).unwrap();
    let profile = parse_folded(&std::fs::read_to_string(&out).unwrap());

    // The main thread: every sample in the sleeping line, the whole window long.
    let sleeping_line = line_of(&fixture("idle_threads.py"), "# the sleeping line");
    let main_thread = format!("thread {pid} ");
    let of_main: Vec<(&Vec<String>, &u64)> = profile
        .iter()
        .filter(|(s, _)| s[0].starts_with(&main_thread))
        .collect();
    let main_total: u64 = of_main.iter().map(|(_, n)| **n).sum();
    let in_line: u64 = of_main
        .iter()
        .filter(|(s, _)| s.last().unwrap().ends_with(&format!(":{sleeping_line})")))
        .map(|(_, n)| **n)
        .sum();
    eprintln!(
        "idle_wall_clock: main thread {in_line} of {main_total} samples in the sleeping line"
    );
    assert!(
        main_total as f64 >= 0.9 * window * rate,
        "the main thread slept the whole {window}s window but has {main_total} samples\n{stderr}"
    );
    assert!(in_line as f64 >= 0.95 * main_total as f64, "{of_main:?}");

    // The worker: its busy share of its samples is the share it measured.
    let of_worker = |name: &str| samples_in(&profile, name);
    let (busy, all) = (
        profile
            .iter()
            .filter(|(s, _)| s.iter().any(|f| function(f) == "burn"))
            .map(|(_, n)| *n)
            .sum::<u64>(),
        of_worker("wakes_every_second"),
    );
    let profiled = 100.0 * busy as f64 / all.max(1) as f64;
    let (b, i) = (
        measured["busy"].as_f64().unwrap(),
        measured["idle"].as_f64().unwrap(),
    );
    let expected = 100.0 * b / (b + i);
    eprintln!("idle_wall_clock: worker busy {profiled:.1}% profiled vs {expected:.1}% measured");
    assert!(
        (profiled - expected).abs() <= TOLERANCE_PP,
        "worker busy {profiled:.1}% of its samples, measured {expected:.1}%\n{stderr}"
    );
}

/// Two threads busy at once, one in Python with the GIL and one hashing without it: `--gil`
/// keeps the first and leaves out the second, and the summary gives the GIL share.
#[test]
fn gil_keeps_only_samples_holding_the_gil() {
    if !privileged() {
        return;
    }
    let dir = scratch_dir("gil_only");
    let record = |extra: &[&str], name: &str| -> (Folded, Value, String) {
        let out = dir.join(name);
        let args: Vec<&str> = ["--threads", "-r", "1000", "-f", "raw"]
            .into_iter()
            .chain(extra.iter().copied())
            .collect();
        let result = record_fixture(&args, &out, &python("3.12"), "gil.py", &["1"]);
        let stderr = String::from_utf8_lossy(&result.stderr).into_owned();
        let profile = parse_folded(&std::fs::read_to_string(&out).unwrap());
        (profile, fixture_json(&result), stderr)
    };
    let gil_share = |summary: &str| -> f64 {
        summary
            .lines()
            .find_map(|l| l.strip_prefix("prof-bpf: GIL held in "))
            .and_then(|r| r.split('%').next()?.parse().ok())
            .expect("the summary gives the GIL share")
    };
    let (all, _, summary_all) = record(&[], "all.txt");
    let (held, threads, summary_held) = record(&["--gil"], "gil.txt");
    let python = samples_in(&held, "python_worker");
    let hashing = samples_in(&held, "hashing_worker");
    let hashing_all = samples_in(&all, "hashing_worker");
    eprintln!(
        "gil_only: without --gil hashing has {hashing_all} samples, GIL {:.1}%; with --gil python {python}, hashing {hashing}, GIL {:.1}%",
        gil_share(&summary_all),
        gil_share(&summary_held)
    );
    // Both threads burned the same CPU; without --gil both are there, about half each.
    let share = 100.0 * hashing_all as f64 / total(&all).max(1) as f64;
    assert!(
        (share - 50.0).abs() <= 15.0,
        "hashing has {share:.1}% without --gil"
    );
    let gil_all = gil_share(&summary_all);
    assert!(
        (gil_all - (100.0 - share)).abs() <= 15.0,
        "GIL held in {gil_all:.1}% of samples, but {:.1}% were in pure Python",
        100.0 - share
    );
    // With --gil the hashing thread keeps only the moments between hashes.
    assert!(python >= 500, "python_worker has {python} samples");
    assert!(
        hashing * 10 <= python,
        "with --gil, hashing_worker kept {hashing} samples against python_worker's {python}"
    );
    assert!(summary_held.contains("without the GIL (left out by --gil)"));
    let tid = threads["python_worker"]["tid"].as_u64().unwrap();
    assert!(
        held.keys()
            .filter(|s| s.iter().any(|f| function(f) == "python_worker"))
            .all(|s| s[0].starts_with(&format!("thread {tid} ("))),
        "python_worker's samples are on its own thread"
    );
}
