//! `prof-bpf report` and the output formats: converting the hand-made profile in
//! tests/data/profbpf gives each format's golden file (the unit tests check the writers against
//! the same files; this checks the command and its file handling), the table's numbers agree
//! with the raw counts of a real recording, and wrong inputs get specific messages.

use std::{io::Read as _, path::Path, process::Command};

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

#[test]
fn pprof_conversion_is_gzipped_protobuf() {
    let dir = scratch_dir("pprof_conversion");
    let out = dir.join("p.pb.gz");
    report(&[
        input().to_str().unwrap(),
        "-f",
        "pprof",
        "-o",
        out.to_str().unwrap(),
    ]);
    let gz = std::fs::read(&out).unwrap();
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(gz.as_slice())
        .read_to_end(&mut raw)
        .expect("a gzip stream");
    // The string table holds the sample types and the functions.
    let text = String::from_utf8_lossy(&raw);
    for s in [
        "samples",
        "count",
        "cpu",
        "nanoseconds",
        "burn",
        "Helper.run",
        "app.py",
    ] {
        assert!(
            text.contains(s),
            "{s:?} missing from the pprof string table"
        );
    }
}

/// pprof's own reader agrees with `report`'s table: `go tool pprof` (Debian's golang-go,
/// installed by scripts/setup) on the converted example.
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
    let pprof = |args: &[&str]| {
        let o = Command::new("go")
            .args(["tool", "pprof"])
            .args(args)
            .arg(&out)
            .env("HOME", &dir) // pprof keeps a cache under $HOME
            .output()
            .expect("go is not installed: run scripts/setup (apt-get install golang-go)");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
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
    let cases = [
        ("missing.json", None, "cannot read"),
        ("flame.svg", Some("<svg/>"), "is not a prof-bpf profile"),
        (
            "speedscope.json",
            Some(r#"{"$schema": "https://www.speedscope.app/file-format-schema.json"}"#),
            "is not a prof-bpf profile",
        ),
        (
            "future.json",
            Some(r#"{"format": "prof-bpf profile", "version": 99}"#),
            "format version 99; this prof-bpf reads version 1",
        ),
    ];
    for (name, content, message) in cases {
        let path = dir.join(name);
        if let Some(c) = content {
            std::fs::write(&path, c).unwrap();
        }
        let out = run(&["report", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(
            stderr.starts_with("prof-bpf: error: ") && stderr.contains(message),
            "{name}: {stderr}"
        );
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
    let dir = scratch_dir("report_numbers");
    let recorded = dir.join("split.profbpf.json");
    record_fixture(
        &["-r", "1000", "-f", "profbpf"],
        &recorded,
        &python("3.12"),
        "split.py",
        &["1"],
    );
    let rec = recorded.to_str().unwrap();
    let raw = parse_folded(&String::from_utf8(report(&[rec, "-f", "raw", "-o", "-"])).unwrap());
    let table = String::from_utf8(report(&[rec, "--limit", "0"])).unwrap();
    let total_samples = total(&raw);
    assert!(total_samples >= 500, "only {total_samples} samples");
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
        assert!(
            (own - direct as f64 / 1000.0).abs() < 0.0006,
            "row {line:?}"
        );
        rows += 1;
    }
    assert!(rows >= 5, "only {rows} rows:\n{table}");
    // burn's hot line is the top hot spot.
    let hot = line_of(&fixture("split.py"), "# hot line of burn");
    let spots = table.split("hot spots").nth(1).unwrap();
    let first = spots.lines().nth(1).unwrap();
    assert!(first.ends_with(&format!("split.py:{hot}(burn)")), "{spots}");
}
