//! A thousand busy threads, end to end as root (issue 15): `dump` lists every one of them by its
//! Python name, and a recording by pid with `--threads` has every thread, by its Python name,
//! with the share of the samples it measured of the CPU, and finds every sampled thread's state
//! (no "no thread state" beyond 0.5 % of the samples), and tells the samples of its workers as
//! they exit from those of an interpreter not started.

use std::collections::BTreeMap;

use prof_bpf_tests::*;

/// Threads the fixture starts (the main thread is one more).
const THREADS: usize = 1000;
/// High enough that the lightest thread (1.5 ms of CPU) has about 15 samples: none goes
/// without one by chance.
const MANY_RATE: &str = "9973";
/// Most share of the samples filed under "outside Python code: no thread state".
const MAX_NO_THREAD_STATE: f64 = 0.005;
/// How far a thread's share of the samples may be from its share of the CPU, in points.
const SHARE_POINTS: f64 = 2.0;
/// Every worker ends during the recording, and a sample as a thread ends can find its frames
/// gone (`frame read fault`), as a process's end can its thread state: seen up to 4 times in
/// a run of 1000 threads; at most one thread in 50.
const THREADS_ENDING: Expected = ("frame read fault", 0..=THREADS as u64 / 50);

fn many_threads(python_name: &str, test: &str) {
    if !privileged() {
        return;
    }
    let mut target = Fixture::waiting(
        &python(python_name),
        "many_threads.py",
        &[&THREADS.to_string()],
        &[],
    );
    let pid = target.pid.to_string();

    // Every thread is started and waits: dump them all.
    let out = run(&["dump", "--pid", &pid]);
    let dump = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{test}: dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let headers: Vec<&str> = dump.lines().filter(|l| l.starts_with("Thread ")).collect();
    assert_eq!(headers.len(), THREADS + 1, "{test}: threads dumped");
    let named = |name: &str| headers.iter().any(|h| h.contains(&format!(" \"{name}\"")));
    assert!(named("many_threads main thread"), "{test}: {headers:?}");
    for i in 0..THREADS {
        let name = format!("many_threads worker {i:04}");
        assert!(named(&name), "{test}: no thread named {name} in the dump");
    }

    let dir = scratch_dir(test);
    let out = dir.join("profile.txt");
    let out_arg = out.display().to_string();
    let recording = Recording::start(&[
        "record",
        "-r",
        MANY_RATE,
        "-f",
        "raw",
        "--threads",
        "--pid",
        &pid,
        "-o",
        &out_arg,
    ]);
    target.go();
    let rest = target.finish();
    let ended = recording.wait();
    assert!(ended.status.success(), "prof-bpf failed: {}", ended.stderr);
    let measured = last_json(&rest).unwrap_or_else(|e| panic!("{test}: {e}: {rest:?}"));
    let measured = measured.as_object().unwrap();
    assert_eq!(measured.len(), THREADS + 1, "{test}: threads measured");
    let profile = parse_folded(&std::fs::read_to_string(&out).unwrap());

    // Each thread's samples in `burn` (what it measured), by its root frame.
    let mut samples: BTreeMap<&str, u64> = BTreeMap::new();
    for (stack, n) in &profile {
        if stack.iter().any(|f| function(f) == "burn") {
            *samples.entry(stack[0].as_str()).or_default() += n;
        }
    }
    let cpu: f64 = measured.values().map(|t| t["cpu"].as_f64().unwrap()).sum();
    let total_samples: u64 = samples.values().sum();
    let mut worst = (0.0f64, String::new());
    for (name, t) in measured {
        let root = format!("thread {} ({name})", t["tid"].as_u64().unwrap());
        let n = samples.get(root.as_str()).copied().unwrap_or(0);
        if n == 0 {
            let theirs: Vec<String> = profile
                .iter()
                .filter(|(stack, _)| stack[0] == root)
                .map(|(stack, n)| format!("{n} {}", stack.join(";")))
                .collect();
            panic!(
                "{test}: no sample of {root} in burn, in {} roots (it measured {:.4} s of CPU); \
                 its stacks:\n{}\n{}",
                samples.len(),
                t["cpu"].as_f64().unwrap(),
                theirs.join("\n"),
                ended.stderr
            );
        }
        let profiled = 100.0 * n as f64 / total_samples as f64;
        let expected = 100.0 * t["cpu"].as_f64().unwrap() / cpu;
        if (profiled - expected).abs() > worst.0 {
            worst = (
                (profiled - expected).abs(),
                format!("{root}: {profiled:.2}% profiled vs {expected:.2}% measured"),
            );
        }
        assert!(
            (profiled - expected).abs() <= SHARE_POINTS,
            "{test}: {root} has {profiled:.2}% of the samples in burn but {expected:.2}% of the CPU"
        );
    }
    eprintln!(
        "{test}: {total_samples} samples in burn, {cpu:.3} CPU seconds; farthest: {}",
        worst.1
    );

    let s = Summary::parse(&ended.stderr);
    let no_state = s.outside.get("no thread state").copied().unwrap_or(0);
    let all = s.samples + s.outside.values().sum::<u64>();
    eprintln!("{test}: no thread state on {no_state} of {all} samples");
    assert!(
        (no_state as f64) <= MAX_NO_THREAD_STATE * all as f64,
        "{test}: {no_state} of {all} samples had no thread state:\n{}",
        ended.stderr
    );
    // Its interpreter ran before the recording began, so no sample can find it not started:
    // the samples of the workers as they exit (their memory let go, every read fails) are
    // counted as such.
    let not_started = s
        .outside
        .get("interpreter not started")
        .copied()
        .unwrap_or(0);
    let exiting = s.outside.get("thread exiting").copied().unwrap_or(0);
    eprintln!("{test}: {exiting} samples of exiting threads");
    assert_eq!(
        not_started, 0,
        "{test}: {not_started} samples found the interpreter not started:\n{}",
        ended.stderr
    );
    check_complete(
        test,
        &ended.stderr,
        Some(&profile),
        Work {
            samples: total_samples,
            cpu,
        },
        &[read_faults(1), THREADS_ENDING],
    );
}

#[test]
fn a_thousand_threads_3_12() {
    many_threads("3.12", "a_thousand_threads_3_12");
}

#[test]
fn a_thousand_threads_3_10() {
    many_threads("3.10", "a_thousand_threads_3_10");
}
