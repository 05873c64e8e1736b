//! `prof-bpf report` and the output formats: converting the hand-made profile in
//! tests/data/profbpf gives each format's golden file (the unit tests check the writers against
//! the same files; this checks the command and its file handling), the table's numbers agree
//! with the raw counts of a real recording, and wrong inputs get specific messages.

use std::{path::Path, process::Command};

use prof_bpf_tests::*;

const CASE: &str = "two_threads";

fn data(format: &str, file: &str) -> std::path::PathBuf {
    root().join("tests/data").join(format).join(file)
}

fn input() -> std::path::PathBuf {
    data("profbpf", &format!("{CASE}.json"))
}

/// Runs `report` with `args` and returns stdout, asserting success.
fn report(args: &[&str]) -> Vec<u8> {
    let out = run(&[&["report"], args].concat());
    assert!(
        out.status.success(),
        "prof-bpf report {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Asserts `actual` equals the golden file, showing the first differing line.
fn same_as_golden(golden: &Path, actual: &str) {
    let expected = std::fs::read_to_string(golden).unwrap();
    if expected != actual {
        let line = expected
            .lines()
            .zip(actual.lines())
            .position(|(e, a)| e != a)
            .unwrap_or(expected.lines().count().min(actual.lines().count()));
        panic!(
            "{} differs at line {}:\n - {}\n + {}",
            golden.display(),
            line + 1,
            expected.lines().nth(line).unwrap_or("<end>"),
            actual.lines().nth(line).unwrap_or("<end>")
        );
    }
}

#[test]
fn conversions_match_the_golden_files() {
    let input = input();
    let input = input.to_str().unwrap();
    for (format, file) in [
        ("raw", "two_threads.txt"),
        ("speedscope", "two_threads.json"),
        ("flamegraph", "two_threads.svg"),
        ("profbpf", "two_threads.json"),
    ] {
        let out = report(&[input, "-f", format, "-o", "-"]);
        same_as_golden(&data(format, file), &String::from_utf8(out).unwrap());
    }
}

/// pprof's own reader (`go tool pprof`, Debian's golang-go, installed by scripts/setup) on the
/// converted example: the same samples as the collapsed golden file, stack for stack, with the
/// pid and tid labels of the input, the header's types, period and duration, and `-top`'s
/// flat and cumulative counts as in tests/data/report/two_threads.txt.
#[test]
fn go_tool_pprof_reads_the_conversion() {
    let dir = scratch_dir("go_tool_pprof");
    let out = dir.join("p.pb.gz");
    report(&[
        input().to_str().unwrap(),
        "-f",
        "pprof",
        "-o",
        out.to_str().unwrap(),
    ]);
    let samples = pprof_samples(&out, &dir);
    let golden = parse_folded(&std::fs::read_to_string(data("raw", "two_threads.txt")).unwrap());
    assert_eq!(
        pprof_folded(&samples),
        golden,
        "pprof's samples against the collapsed golden file"
    );
    let mut by_thread = std::collections::BTreeMap::<(String, String), u64>::new();
    for s in &samples {
        *by_thread
            .entry((s.labels["pid"].clone(), s.labels["tid"].clone()))
            .or_default() += s.count;
    }
    let input: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(input()).unwrap()).unwrap();
    let mut want = std::collections::BTreeMap::<(String, String), u64>::new();
    for s in input["samples"].as_array().unwrap() {
        *want
            .entry((s["pid"].to_string(), s["tid"].to_string()))
            .or_default() += s["count"].as_u64().unwrap();
    }
    assert_eq!(by_thread, want, "samples by pid and tid label");

    let pprof = |args: &[&str]| go_pprof(&out, args, &dir);
    let raw = pprof(&["-raw"]);
    for line in [
        "PeriodType: cpu nanoseconds",
        "Period: 10000000",
        "Duration: 1.25",
    ] {
        assert!(raw.contains(line), "{line:?} missing from:\n{raw}");
    }
    // flat = direct, cum = cumulative, as in tests/data/report/two_threads.txt.
    let top = pprof(&["-top", "-sample_index=samples"]);
    let row = |name: &str| -> (u64, u64) {
        let cols: Vec<&str> = top
            .lines()
            .find(|l| l.split_whitespace().skip(5).collect::<Vec<_>>().join(" ") == name)
            .unwrap_or_else(|| panic!("no row for {name} in:\n{top}"))
            .split_whitespace()
            .collect();
        (cols[0].parse().unwrap(), cols[3].parse().unwrap())
    };
    assert_eq!(row("burn"), (88, 88));
    assert_eq!(row("work"), (10, 70));
    assert_eq!(row("main"), (0, 90));
    assert_eq!(
        row("<module>"),
        (0, 90),
        "pprof must not cut <module> as a C++ template"
    );
    assert_eq!(row("recurse"), (0, 20));
    let cpu = pprof(&["-top", "-sample_index=cpu"]);
    assert!(cpu.contains("Total samples = 1000ms"), "{cpu}");
    let thread = pprof(&["-top", "-sample_index=samples", "-tagfocus=tid=4243"]);
    assert!(
        thread.contains("Showing nodes accounting for 10, 10.00% of 100 total"),
        "{thread}"
    );
}

#[test]
fn table_matches_the_golden_file() {
    // Run beside the input, so the header names it as the golden file does.
    let out = Command::new(prof_bpf())
        .current_dir(data("profbpf", ""))
        .args(["report", &format!("{CASE}.json"), "--limit", "5"])
        .output()
        .unwrap();
    assert!(out.status.success());
    same_as_golden(
        &data("report", "two_threads.txt"),
        &String::from_utf8(out.stdout).unwrap(),
    );
}

#[test]
fn conversion_defaults_to_a_file_beside_the_input() {
    let dir = scratch_dir("report_default_output");
    let copy = dir.join("app.profbpf.json");
    std::fs::copy(input(), &copy).unwrap();
    let out = run(&["report", copy.to_str().unwrap(), "-f", "raw"]);
    assert!(out.status.success());
    assert!(dir.join("app.txt").is_file());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("wrote raw to"), "{stderr}");
    // Converting to its own format by default would overwrite the input: refused.
    let out = run(&["report", copy.to_str().unwrap(), "-f", "profbpf"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("would overwrite it"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn wrong_inputs_are_named() {
    let dir = scratch_dir("report_wrong_inputs");
    let good = std::fs::read_to_string(input()).unwrap();
    let edited = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut doc: serde_json::Value = serde_json::from_str(&good).unwrap();
        edit(&mut doc);
        doc.to_string()
    };
    let garbage: String = (0..3000u32)
        .map(|i| char::from_u32(0x80 + i % 0x700).unwrap())
        .collect();
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("missing.json", None, "cannot read"),
        (
            "flame.svg",
            Some("<svg/>".into()),
            "is not a prof-bpf profile",
        ),
        (
            "speedscope.json",
            Some(r#"{"$schema": "https://www.speedscope.app/file-format-schema.json"}"#.into()),
            "is not a prof-bpf profile",
        ),
        (
            "future.json",
            Some(r#"{"format": "prof-bpf profile", "version": 99}"#.into()),
            "format version 99; this prof-bpf reads version 1",
        ),
        // Damaged prof-bpf profiles: cut short, emptied, overwritten, or edited by hand.
        (
            "truncated.json",
            Some(good[..good.len() / 2].to_string()),
            "not JSON (EOF while parsing",
        ),
        (
            "empty.json",
            Some(String::new()),
            "not JSON (EOF while parsing",
        ),
        ("garbage.json", Some(garbage), "is not a prof-bpf profile"),
        (
            "frames.json",
            Some(edited(&|d| d["frames"] = "x".into())),
            "is damaged: invalid type: string \"x\", expected a sequence",
        ),
        (
            "no-samples.json",
            Some(edited(&|d| {
                d.as_object_mut().unwrap().remove("samples");
            })),
            "is damaged: missing field `samples`",
        ),
        (
            "index.json",
            Some(edited(&|d| {
                d["samples"][0]["frames"] = serde_json::json!([0, 99])
            })),
            "is damaged: a sample of thread 4242 refers to a frame that is not in the frame list",
        ),
        (
            "count.json",
            Some(edited(&|d| d["samples"][0]["count"] = (-5).into())),
            "is damaged: invalid value: integer `-5`",
        ),
    ];
    for (name, content, message) in cases {
        let path = dir.join(name);
        if let Some(c) = content {
            std::fs::write(&path, c).unwrap();
        }
        // The table, and a conversion: neither may write anything.
        let converted = dir.join(format!("{name}.txt"));
        for args in [
            vec!["report", path.to_str().unwrap()],
            vec![
                "report",
                path.to_str().unwrap(),
                "-f",
                "raw",
                "-o",
                converted.to_str().unwrap(),
            ],
        ] {
            let out = run(&args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
            assert!(
                stderr.starts_with("prof-bpf: error: ") && stderr.contains(message),
                "{args:?}: want {message:?} in {stderr}"
            );
            assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
            assert!(out.stdout.is_empty(), "{args:?} printed {:?}", out.stdout);
            assert!(
                !converted.exists(),
                "{args:?} wrote {}",
                converted.display()
            );
        }
    }
}

/// Writing fails: a full disk (the conversion is kept in a fallback file that stderr names, and
/// the exit status is 1), a directory that does not exist, a directory as the output; a reader
/// that closes the pipe early is no error.
#[test]
fn write_errors_are_named() {
    let input = input();
    let input = input.to_str().unwrap();
    let out = run(&["report", input, "-f", "raw", "-o", "/dev/full"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot write the profile to /dev/full: No space left on device"),
        "{stderr}"
    );
    let saved = stderr
        .split("saved it to ")
        .nth(1)
        .and_then(|rest| rest.split(" instead").next())
        .unwrap_or_else(|| panic!("no fallback named: {stderr}"));
    let kept = std::fs::read_to_string(saved).unwrap();
    std::fs::remove_file(saved).unwrap();
    same_as_golden(&data("raw", "two_threads.txt"), &kept);

    let dir = scratch_dir("report_write_errors");
    for (to, message) in [
        (
            "/nonexistent-dir/p.txt",
            "cannot use /nonexistent-dir/p.txt: No such file or directory",
        ),
        (dir.to_str().unwrap(), "it is a directory"),
    ] {
        let out = run(&["report", input, "-f", "raw", "-o", to]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{to}: {stderr}");
        assert!(
            stderr.starts_with("prof-bpf: error: ") && stderr.contains(message),
            "{to}: want {message:?} in {stderr}"
        );
    }

    // The table and a conversion to stdout, into a pipe whose reader is gone: every write
    // fails (EPIPE), and that is no error.
    for args in [
        vec!["report", input, "--limit", "0"],
        vec!["report", input, "-f", "speedscope", "-o", "-"],
    ] {
        let mut fds = [0; 2];
        // SAFETY: pipe writes two descriptors into the array it is given.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both descriptors were just made and are owned here alone.
        let (read, write) = unsafe {
            use std::os::fd::FromRawFd as _;
            (
                std::os::fd::OwnedFd::from_raw_fd(fds[0]),
                std::os::fd::OwnedFd::from_raw_fd(fds[1]),
            )
        };
        drop(read);
        let out = Command::new(prof_bpf())
            .args(&args)
            .env_remove("RUST_BACKTRACE")
            .stdout(std::process::Stdio::from(write))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}

/// `function (file:line)` -> `file:line(function)`, the table's form.
fn location(label: &str) -> String {
    // A marker (`[unknown] (why)`, `[truncated: ...]`) is its own location.
    if label.starts_with('[') {
        return label.to_string();
    }
    match label.split_once(" (") {
        Some((name, rest)) => format!("{}({name})", rest.trim_end_matches(')')),
        None => label.to_string(),
    }
}

#[test]
fn table_numbers_agree_with_raw_counts() {
    if !privileged() {
        return;
    }
    let test = "report_numbers";
    let dir = scratch_dir(test);
    let recorded = dir.join("split.profbpf.json");
    let result = record_fixture(
        &["-r", RATE, "-f", "profbpf"],
        &recorded,
        &python("3.12"),
        "split.py",
        &["1"],
    );
    let rec = recorded.to_str().unwrap();
    let raw = parse_folded(&String::from_utf8(report(&[rec, "-f", "raw", "-o", "-"])).unwrap());
    let table = String::from_utf8(report(&[rec, "--limit", "0"])).unwrap();
    let total_samples = total(&raw);
    let measured = measured_split(&String::from_utf8_lossy(&result.stdout));
    let stderr = String::from_utf8_lossy(&result.stderr);
    check_complete(
        test,
        &stderr,
        Some(&raw),
        split_work(&raw, measured),
        LAUNCHED,
    );
    assert!(
        table.contains(&format!("samples: {total_samples} over")),
        "header disagrees with {total_samples} raw samples:\n{table}"
    );

    // Every row: direct = samples whose leaf is the location, cumulative = samples with it
    // anywhere on the stack (once per sample); percentages and times follow from them.
    let mut rows = 0;
    for line in table.lines().skip_while(|l| !l.contains("direct%")).skip(1) {
        if line.trim().is_empty() {
            break;
        }
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (direct, cumul): (u64, u64) = (cols[0].parse().unwrap(), cols[3].parse().unwrap());
        let mut loc = line;
        for _ in 0..6 {
            loc = loc.trim_start();
            loc = &loc[loc.find(' ').unwrap()..];
        }
        let loc = loc.trim_start();
        let want_direct: u64 = raw
            .iter()
            .filter(|(s, _)| location(s.last().unwrap()) == loc)
            .map(|(_, n)| n)
            .sum();
        let want_cumul: u64 = raw
            .iter()
            .filter(|(s, _)| s.iter().any(|f| location(f) == loc))
            .map(|(_, n)| n)
            .sum();
        assert_eq!((direct, cumul), (want_direct, want_cumul), "row {line:?}");
        let pct: f64 = cols[1].trim_end_matches('%').parse().unwrap();
        let expected_pct = 100.0 * direct as f64 / total_samples as f64;
        assert!(
            (pct - expected_pct).abs() < 0.051,
            "row {line:?}: {pct} vs {expected_pct}"
        );
        let own: f64 = cols[2].trim_end_matches('s').parse().unwrap();
        assert!((own - direct as f64 / 997.0).abs() < 0.0006, "row {line:?}");
        rows += 1;
    }
    assert!(rows >= 5, "only {rows} rows:\n{table}");
    // burn's hot line is the top hot spot.
    let hot = line_of(&fixture("split.py"), "# hot line of burn");
    let spots = table.split("hot spots").nth(1).unwrap();
    let first = spots.lines().nth(1).unwrap();
    assert!(first.ends_with(&format!("split.py:{hot}(burn)")), "{spots}");
}
