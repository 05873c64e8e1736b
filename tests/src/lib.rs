//! Helpers for the end-to-end suite: finding the built binary, the interpreters and fixtures,
//! running prof-bpf, and reading the profiles it writes. The tests run the real BPF program
//! against real Python processes; nothing here stands in for the kernel.

use std::{
    collections::BTreeMap,
    env,
    path::{Path, PathBuf},
    process::{Command, Output},
};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// The prof-bpf binary under test: `PROF_BPF_BIN`, or the release build.
pub fn prof_bpf() -> PathBuf {
    let path = env::var_os("PROF_BPF_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/release/prof-bpf"));
    assert!(
        path.is_file(),
        "{} is missing: build it first (cargo build --release)",
        path.display()
    );
    path
}

pub fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

/// A fresh scratch directory for one test's output files.
pub fn scratch_dir(test: &str) -> PathBuf {
    let dir = root().join("target/e2e").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating the test's scratch dir");
    dir
}

/// Whether privileged tests can run. Outside CI a test without root says why it skipped and
/// passes; in CI (CI=true, run as root) a skip is a failure, so it panics.
pub fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    if root && btf {
        return true;
    }
    let why = if root {
        "no kernel BTF at /sys/kernel/btf/vmlinux"
    } else {
        "not root"
    };
    if env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("privileged test cannot run in CI: {why}");
    }
    eprintln!("SKIPPED: privileged test needs root and BTF ({why}); run the suite with sudo");
    false
}

/// An interpreter by name: "3.X" is pyenv's (shared libpython), "debian-3.11" is
/// /usr/bin/python3.11 (interpreter linked into the executable).
pub fn python(which: &str) -> PathBuf {
    if which == "debian-3.11" {
        return PathBuf::from("/usr/bin/python3.11");
    }
    let out = Command::new("pyenv")
        .args(["prefix", which])
        .output()
        .expect("running pyenv");
    assert!(
        out.status.success(),
        "pyenv has no {which}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let prefix = String::from_utf8(out.stdout)
        .expect("utf-8 path")
        .trim()
        .to_string();
    let exe = Path::new(&prefix)
        .join("bin")
        .join(format!("python{which}"));
    assert!(exe.is_file(), "{} is missing", exe.display());
    exe
}

/// Runs prof-bpf with `args`; returns its output.
pub fn run(args: &[&str]) -> Output {
    Command::new(prof_bpf())
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("running prof-bpf")
}

/// Runs `prof-bpf record ARGS -o OUT -- PYTHON FIXTURE FIXTURE_ARGS` to the end and asserts it
/// succeeded. The fixture's stdout is the output's stdout; prof-bpf's summary its stderr.
pub fn record_fixture(
    args: &[&str],
    out: &Path,
    python: &Path,
    fixture_name: &str,
    fixture_args: &[&str],
) -> Output {
    let result = Command::new(prof_bpf())
        .arg("record")
        .args(args)
        .arg("-o")
        .arg(out)
        .arg("--")
        .arg(python)
        .arg(fixture(fixture_name))
        .args(fixture_args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("running prof-bpf");
    assert!(
        result.status.success(),
        "prof-bpf record {args:?} -- {fixture_name} failed: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    result
}

/// The last line a fixture printed, as JSON: its own measurement of the run.
pub fn fixture_json(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout
        .lines()
        .last()
        .expect("the fixture printed its measurement");
    serde_json::from_str(last).expect("the fixture's measurement is JSON")
}

/// A collapsed profile: stack (root first) -> count.
pub type Folded = BTreeMap<Vec<String>, u64>;

/// Parses `frame;frame count` lines, checking every line has that shape.
pub fn parse_folded(text: &str) -> Folded {
    let mut out = Folded::new();
    for line in text.lines() {
        let (stack, count) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no count on line {line:?}"));
        let count: u64 = count
            .parse()
            .unwrap_or_else(|_| panic!("bad count on line {line:?}"));
        *out.entry(stack.split(';').map(String::from).collect())
            .or_default() += count;
    }
    out
}

/// The function part of a `function (file:line)` label.
pub fn function(label: &str) -> &str {
    label.split(" (").next().unwrap_or(label)
}

/// Samples whose stack contains a frame of function `name`.
pub fn samples_in(profile: &Folded, name: &str) -> u64 {
    profile
        .iter()
        .filter(|(stack, _)| stack.iter().any(|f| function(f) == name))
        .map(|(_, n)| n)
        .sum()
}

pub fn total(profile: &Folded) -> u64 {
    profile.values().sum()
}

/// The 1-based line of the first line of `file` containing `marker`.
pub fn line_of(file: &Path, marker: &str) -> u32 {
    let text = std::fs::read_to_string(file).expect("reading fixture");
    text.lines()
        .position(|l| l.contains(marker))
        .map(|i| i as u32 + 1)
        .expect("marker in fixture")
}

/// How far split.py's profiled heavy share may be from its measured share, in percentage points.
const SPLIT_TOLERANCE_PP: f64 = 3.0;

/// split.py's own measurement: CPU seconds spent in heavy() and light(), from its stdout.
pub fn measured_split(stdout: &str) -> (f64, f64) {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.contains("heavy"))
        .expect("fixture printed its split");
    let v: serde_json::Value = serde_json::from_str(line).expect("fixture split is JSON");
    (v["heavy"].as_f64().unwrap(), v["light"].as_f64().unwrap())
}

/// Asserts a profile of split.py: its heavy:light split matches the measured one, with enough
/// samples, and burn's hot line is the hottest line.
pub fn check_split(profile: &Folded, measured: (f64, f64), what: &str) {
    let (heavy, light) = (samples_in(profile, "heavy"), samples_in(profile, "light"));
    assert!(
        heavy + light >= 1000,
        "{what}: only {} samples in heavy/light (want >= 1000)",
        heavy + light
    );
    let profiled = 100.0 * heavy as f64 / (heavy + light) as f64;
    let expected = 100.0 * measured.0 / (measured.0 + measured.1);
    eprintln!(
        "{what}: heavy {profiled:.1}% profiled vs {expected:.1}% measured ({heavy}+{light} samples)"
    );
    assert!(
        (profiled - expected).abs() <= SPLIT_TOLERANCE_PP,
        "{what}: heavy is {profiled:.1}% of samples but {expected:.1}% of measured CPU time"
    );
    // Per-line counts of burn's leaf frames: the hot line must win.
    let hot = line_of(&fixture("split.py"), "# hot line of burn");
    let mut by_line = std::collections::BTreeMap::<u32, u64>::new();
    for (stack, n) in profile {
        let leaf = stack.last().unwrap();
        if function(leaf) == "burn" {
            let line: u32 = leaf
                .rsplit(':')
                .next()
                .unwrap()
                .trim_end_matches(')')
                .parse()
                .unwrap();
            *by_line.entry(line).or_default() += n;
        }
    }
    let hottest = by_line.iter().max_by_key(|(_, n)| **n).map(|(l, _)| *l);
    assert_eq!(
        hottest,
        Some(hot),
        "{what}: burn's samples by line: {by_line:?}"
    );
}
