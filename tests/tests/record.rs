//! `prof-bpf record` end to end, as root: the real BPF program sampling real interpreters.
//! Fixtures time their own functions; each test compares the profile with the split measured
//! in the same run.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use prof_bpf_tests::*;
use serde_json::Value;

const RATE: &str = "1000";

fn record_launch(python: &str, test: &str) {
    if !privileged() {
        return;
    }
    let dir = scratch_dir(test);
    let out = dir.join("profile.txt");
    let py = python_path(python);
    let result = Command::new(prof_bpf())
        .args(["record", "-r", RATE, "-f", "raw", "-o"])
        .arg(&out)
        .arg("--")
        .arg(&py)
        .arg(fixture("split.py"))
        .arg("2")
        .output()
        .expect("running prof-bpf");
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "prof-bpf failed: {stderr}");
    assert!(stderr.contains("stopped (the program exited)"), "{stderr}");
    let profile = parse_folded(&std::fs::read_to_string(&out).unwrap());
    check_split(
        &profile,
        measured_split(&String::from_utf8_lossy(&result.stdout)),
        test,
    );
}

fn python_path(which: &str) -> std::path::PathBuf {
    python(which)
}

fn record_pid(python: &str, test: &str) {
    record_pid_with(python, test, &[]);
}

fn record_pid_with(python: &str, test: &str, env: &[(&str, &str)]) {
    if !privileged() {
        return;
    }
    let dir = scratch_dir(test);
    let out = dir.join("profile.txt");
    let mut target = Command::new(python_path(python))
        .arg(fixture("split.py"))
        .arg("2")
        .env("SPLIT_READY", "1.5")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the fixture");
    let mut stdout = BufReader::new(target.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let pid = serde_json::from_str::<Value>(&first).unwrap()["pid"]
        .as_u64()
        .unwrap()
        .to_string();
    let result = Command::new(prof_bpf())
        .args(["record", "-r", RATE, "-f", "raw", "--pid", &pid, "-o"])
        .arg(&out)
        .output()
        .expect("running prof-bpf");
    let mut rest = String::new();
    for line in stdout.lines() {
        rest.push_str(&line.unwrap());
        rest.push('\n');
    }
    target.wait().unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "prof-bpf failed: {stderr}");
    let profile = parse_folded(&std::fs::read_to_string(&out).unwrap());
    check_split(&profile, measured_split(&rest), test);
}

#[test]
fn split_3_11_launched() {
    record_launch("3.11", "split_3_11_launched");
}

#[test]
fn split_3_12_launched() {
    record_launch("3.12", "split_3_12_launched");
}

#[test]
fn split_debian_3_11_launched() {
    record_launch("debian-3.11", "split_debian_3_11_launched");
}

#[test]
fn split_3_8_launched() {
    record_launch("3.8", "split_3_8_launched");
}

#[test]
fn split_3_9_launched() {
    record_launch("3.9", "split_3_9_launched");
}

#[test]
fn split_3_10_launched() {
    record_launch("3.10", "split_3_10_launched");
}

#[test]
fn split_3_13_launched() {
    record_launch("3.13", "split_3_13_launched");
}

#[test]
fn split_3_8_by_pid() {
    record_pid("3.8", "split_3_8_by_pid");
}

#[test]
fn split_3_13_by_pid() {
    record_pid("3.13", "split_3_13_by_pid");
}

#[test]
fn split_3_11_by_pid() {
    record_pid("3.11", "split_3_11_by_pid");
}

#[test]
fn split_3_12_by_pid() {
    record_pid("3.12", "split_3_12_by_pid");
}

#[test]
fn split_debian_3_11_by_pid() {
    record_pid("debian-3.11", "split_debian_3_11_by_pid");
}

/// Records the recursion fixture at `depth`; returns the profile and prof-bpf's stderr.
/// A Python whose main thread has exited while a thread works on (issue 11): its
/// /proc/PID/maps and mem are empty, so it is read through the live thread, not refused.
#[test]
fn split_3_12_main_thread_exited_by_pid() {
    record_pid_with("3.12", "split_3_12_headless", &[("SPLIT_HEADLESS", "1")]);
}

#[test]
fn split_3_8_main_thread_exited_by_pid() {
    record_pid_with("3.8", "split_3_8_headless", &[("SPLIT_HEADLESS", "1")]);
}

fn record_recursion(depth: u32, test: &str) -> (Folded, String) {
    let dir = scratch_dir(test);
    let out = dir.join("profile.txt");
    let result = Command::new(prof_bpf())
        .args(["record", "-r", "500", "-f", "raw", "-o"])
        .arg(&out)
        .arg("--")
        .arg(python("3.12"))
        .arg(fixture("recursion.py"))
        .arg(depth.to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr).to_string();
    assert!(result.status.success(), "{stderr}");
    (
        parse_folded(&std::fs::read_to_string(&out).unwrap()),
        stderr,
    )
}

#[test]
fn recursion_150_deep_is_captured_whole() {
    if !privileged() {
        return;
    }
    let (profile, stderr) = record_recursion(150, "recursion_150");
    let in_bottom: Vec<_> = profile
        .iter()
        .filter(|(s, _)| function(s.last().unwrap()) == "bottom")
        .collect();
    let bottom_samples: u64 = in_bottom.iter().map(|(_, n)| **n).sum();
    assert!(
        bottom_samples > 200,
        "too few samples in bottom(): {bottom_samples}\n{stderr}"
    );
    for (stack, n) in &in_bottom {
        let depth = stack.iter().filter(|f| function(f) == "recurse").count();
        assert_eq!(
            depth, 150,
            "{n} samples with {depth} recurse frames: {stack:?}"
        );
        assert_eq!(function(&stack[0]), "<module>", "root frame");
        assert!(
            !stack.iter().any(|f| f.starts_with("[truncated")),
            "marked truncated: {stack:?}"
        );
    }
    assert!(!stderr.contains("truncated stack"), "{stderr}");
}

#[test]
fn recursion_deeper_than_the_limit_is_marked_and_counted() {
    if !privileged() {
        return;
    }
    let (profile, stderr) = record_recursion(300, "recursion_300");
    let deep: u64 = profile
        .iter()
        .filter(|(s, _)| function(s.last().unwrap()) == "bottom")
        .inspect(|(s, _)| {
            assert!(
                s[0].starts_with("[truncated"),
                "no truncation marker at the root: {:?}",
                &s[..3]
            )
        })
        .map(|(_, n)| n)
        .sum();
    assert!(deep > 200, "too few samples in bottom(): {deep}");
    // A truncated stack is kept, with a caveat the summary states.
    let counted: u64 = stderr
        .lines()
        .find_map(|l| l.strip_prefix("prof-bpf: kept with a caveat: "))
        .and_then(|errors| {
            errors
                .split(", ")
                .find_map(|part| part.strip_suffix(" truncated stack"))
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("summary does not count truncated stacks: {stderr}"));
    assert!(
        counted >= deep,
        "{counted} counted truncated, {deep} truncated in the profile"
    );
}

#[test]
fn every_output_format_has_its_shape() {
    if !privileged() {
        return;
    }
    let dir = scratch_dir("formats");
    let py = python("3.12");
    let record = |format: &str, file: &str| {
        let path = dir.join(file);
        let r = Command::new(prof_bpf())
            .args(["record", "-r", "500", "-f", format, "-o"])
            .arg(&path)
            .arg("--")
            .arg(&py)
            .arg(fixture("split.py"))
            .arg("0.6")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&r.stderr).to_string();
        assert!(r.status.success(), "{format}: {stderr}");
        let samples: u64 = stderr
            .lines()
            .find(|l| l.contains(" samples of "))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no sample count in summary: {stderr}"));
        (std::fs::read_to_string(&path).unwrap(), samples)
    };

    // Collapsed: every line parses, and the counts add up to the summary's sample count.
    let (raw, samples) = record("raw", "p.txt");
    let folded = parse_folded(&raw);
    assert_eq!(total(&folded), samples);
    assert!(samples_in(&folded, "heavy") > 0);

    // Speedscope: the file format's fields, valid frame indices, weights in seconds.
    let (json, samples) = record("speedscope", "p.speedscope.json");
    let doc: Value = serde_json::from_str(&json).expect("speedscope output is JSON");
    assert_eq!(
        doc["$schema"],
        "https://www.speedscope.app/file-format-schema.json"
    );
    let frames = doc["shared"]["frames"].as_array().expect("shared.frames");
    assert!(
        frames
            .iter()
            .any(|f| f["name"] == "heavy" && f["file"].as_str().unwrap().ends_with("split.py"))
    );
    let profiles = doc["profiles"].as_array().expect("profiles");
    assert!(!profiles.is_empty());
    let mut weight = 0.0;
    for p in profiles {
        assert_eq!(p["type"], "sampled");
        assert_eq!(p["unit"], "seconds");
        let stacks = p["samples"].as_array().unwrap();
        let weights = p["weights"].as_array().unwrap();
        assert_eq!(stacks.len(), weights.len());
        for s in stacks {
            for f in s.as_array().unwrap() {
                assert!(
                    (f.as_u64().unwrap() as usize) < frames.len(),
                    "frame index out of range"
                );
            }
        }
        let sum: f64 = weights.iter().map(|w| w.as_f64().unwrap()).sum();
        assert!((p["endValue"].as_f64().unwrap() - sum).abs() < 1e-6);
        weight += sum;
    }
    assert!(
        (weight - samples as f64 / 500.0).abs() < 1e-6,
        "weights {weight}s for {samples} samples at 500 Hz"
    );

    // Flamegraph: an SVG from inferno naming the fixture's functions.
    let (svg, _) = record("flamegraph", "p.svg");
    assert!(
        svg.starts_with("<?xml"),
        "not XML: {}",
        &svg[..svg.len().min(80)]
    );
    assert!(svg.contains("<svg") && svg.contains("</svg>"));
    assert!(
        svg.contains("heavy (") && svg.contains("light ("),
        "functions missing from the SVG"
    );
}

#[test]
fn function_mode_and_nolineno_label_frames() {
    if !privileged() {
        return;
    }
    let dir = scratch_dir("labels");
    let py = python("3.11");
    let record = |flag: &str| {
        let path = dir.join(format!("p{flag}.txt"));
        let r = Command::new(prof_bpf())
            .args(["record", "-r", "500", "-f", "raw", flag, "-o"])
            .arg(&path)
            .arg("--")
            .arg(&py)
            .arg(fixture("split.py"))
            .arg("0.4")
            .output()
            .unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        parse_folded(&std::fs::read_to_string(&path).unwrap())
    };
    let def_line = line_of(&fixture("split.py"), "def burn(");
    let by_function = record("-F");
    let burn_labels: std::collections::BTreeSet<&String> = by_function
        .keys()
        .flatten()
        .filter(|f| function(f) == "burn")
        .collect();
    assert_eq!(
        burn_labels.len(),
        1,
        "-F: one label per function, got {burn_labels:?}"
    );
    assert!(
        burn_labels
            .iter()
            .next()
            .unwrap()
            .ends_with(&format!("split.py:{def_line})"))
    );
    let no_lines = record("--nolineno");
    for f in no_lines.keys().flatten().filter(|f| function(f) == "burn") {
        assert!(f.ends_with("split.py)"), "--nolineno label has a line: {f}");
    }
}

#[test]
fn ctrl_c_stops_and_still_writes_the_profile() {
    if !privileged() {
        return;
    }
    let dir = scratch_dir("ctrl_c");
    let out = dir.join("p.txt");
    let mut target = Command::new(python("3.12"))
        .arg(fixture("split.py"))
        .arg("60")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Attach once the interpreter is mapped: on a loaded machine a just-spawned python may not
    // have mapped libpython yet, and prof-bpf would rightly say it is not a Python process.
    let maps = format!("/proc/{}/maps", target.id());
    for _ in 0..200 {
        if std::fs::read_to_string(&maps).is_ok_and(|m| m.contains("libpython")) {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let profiler = Command::new(prof_bpf())
        .args([
            "record",
            "-r",
            "500",
            "-f",
            "raw",
            "--pid",
            &target.id().to_string(),
            "-o",
        ])
        .arg(&out)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_secs(3));
    // SAFETY: kill with the pid of a child we spawned and have not reaped.
    unsafe { libc::kill(profiler.id() as i32, libc::SIGINT) };
    let result = profiler.wait_with_output().unwrap();
    target.kill().unwrap();
    target.wait().unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    assert!(stderr.contains("stopped (interrupted)"), "{stderr}");
    let profile = parse_folded(&std::fs::read_to_string(&out).unwrap());
    assert!(
        samples_in(&profile, "burn") > 100,
        "too few samples: {}",
        total(&profile)
    );
}

#[test]
fn duration_stops_and_ends_the_launched_command() {
    if !privileged() {
        return;
    }
    let dir = scratch_dir("duration");
    let out = dir.join("p.txt");
    let started = std::time::Instant::now();
    let result = Command::new(prof_bpf())
        .args(["record", "-r", "200", "-f", "raw", "-d", "1.5", "-o"])
        .arg(&out)
        .arg("--")
        .arg(python("3.12"))
        .arg(fixture("split.py"))
        .arg("120")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    assert!(stderr.contains("stopped (the duration ended)"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the launched command was not ended"
    );
    assert!(
        samples_in(
            &parse_folded(&std::fs::read_to_string(&out).unwrap()),
            "burn"
        ) > 50
    );
}

/// Starts split.py with a long budget and returns it once it runs Python code (it says so).
fn running_split(python: &str) -> std::process::Child {
    let mut target = Command::new(python_path(python))
        .arg(fixture("split.py"))
        .arg("60")
        .env("SPLIT_READY", "0")
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the fixture");
    let mut first = String::new();
    BufReader::new(target.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("pid"), "fixture said {first:?}");
    target
}

/// Starts prof-bpf with `args` and returns it once it says it is sampling, with the rest of its
/// stderr being collected.
fn sampling(args: &[&str]) -> (std::process::Child, thread::JoinHandle<String>) {
    let mut profiler = Command::new(prof_bpf())
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting prof-bpf");
    let mut stderr = BufReader::new(profiler.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            panic!("prof-bpf ended before sampling: {seen}");
        }
        seen.push_str(&line);
        if line.contains("prof-bpf: sampling ") {
            break;
        }
    }
    let rest = thread::spawn(move || {
        let mut rest = seen;
        for line in stderr.lines() {
            rest.push_str(&line.unwrap());
            rest.push('\n');
        }
        rest
    });
    (profiler, rest)
}

/// A closed terminal (SIGHUP), SIGQUIT and SIGTERM stop a recording like Ctrl-C: the profile is
/// written, and a --pid target runs on untouched (issue 11).
#[test]
fn every_stopping_signal_writes_the_profile_and_spares_the_target() {
    if !privileged() {
        return;
    }
    let dir = scratch_dir("signals");
    let mut target = running_split("3.12");
    let pid = target.id().to_string();
    for (name, signal) in [
        ("SIGHUP", libc::SIGHUP),
        ("SIGQUIT", libc::SIGQUIT),
        ("SIGTERM", libc::SIGTERM),
    ] {
        let out = dir.join(format!("{name}.txt"));
        let out_arg = out.display().to_string();
        let (profiler, stderr) = sampling(&[
            "record", "-r", "500", "-f", "raw", "--pid", &pid, "-o", &out_arg,
        ]);
        wait_for_cpu(target.id(), 0.6); // work to sample, however loaded the machine is
        // SAFETY: kill with the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(profiler.id() as i32, signal) };
        let status = profiler.wait_with_output().unwrap().status;
        let stderr = stderr.join().unwrap();
        assert!(status.success(), "{name}: {stderr}");
        assert!(stderr.contains("stopped (interrupted)"), "{name}: {stderr}");
        let profile = parse_folded(&std::fs::read_to_string(&out).unwrap());
        assert!(samples_in(&profile, "burn") > 100, "{name}: {profile:?}");
        assert!(
            matches!(target.try_wait(), Ok(None)),
            "{name}: the target did not survive"
        );
    }
    target.kill().unwrap();
    target.wait().unwrap();
}

/// A write that fails at the end (a full disk: /dev/full) loses nothing: the profile goes to a
/// fallback file that stderr names, and the exit status says it failed (issue 11).
#[test]
fn a_failed_write_saves_the_profile_elsewhere_and_fails() {
    if !privileged() {
        return;
    }
    let result = Command::new(prof_bpf())
        .args(["record", "-r", RATE, "-f", "raw", "-o", "/dev/full", "--"])
        .arg(python("3.12"))
        .arg(fixture("split.py"))
        .arg("1")
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(1), "{stderr}");
    let saved = stderr
        .split("saved it to ")
        .nth(1)
        .and_then(|rest| rest.split(" instead").next())
        .unwrap_or_else(|| panic!("no fallback named: {stderr}"));
    assert!(
        stderr.contains("cannot write the profile to /dev/full: No space left on device"),
        "{stderr}"
    );
    let profile = parse_folded(&std::fs::read_to_string(saved).unwrap());
    std::fs::remove_file(saved).unwrap();
    check_split(
        &profile,
        measured_split(&String::from_utf8_lossy(&result.stdout)),
        "fallback",
    );
}
