//! prof-bpf on the kernels people have (issue 17): scripts/kernel-matrix boots Debian's 5.10,
//! 6.1 and 6.12 in QEMU, and each records the measured 3:1 split there, on two interpreters, one
//! with `--native`, the other with `--idle`. The same recordings run on the host first. The
//! checks run here, on what the guests wrote: the split against the fixture's own measurement,
//! the errors, and the kernel path the summary names (5.10 has no `bpf_loop`). It prints the BPF
//! time per sample on each kernel as a ratio to the host's, for BENCHMARKS.md.
//!
//! `PROF_BPF_KERNELS` picks some of the kernels (`5.10`); all three by default. The matrix takes
//! about 1.5 minutes on a quiet machine; the first run adds the download of the kernels and QEMU
//! (about 3 minutes, cached by the script in /var/cache/prof-bpf/kernels).

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
    process::Command,
};

use prof_bpf_tests::*;

/// The kernels, by Debian series, and the path each must take.
const ALL_KERNELS: &[(&str, KernelPath)] = &[
    ("5.10", KernelPath::WithoutBpfLoop),
    ("6.1", KernelPath::BpfLoop),
    ("6.12", KernelPath::BpfLoop),
];

/// The kernels of this run: `PROF_BPF_KERNELS`, by default all.
fn kernels() -> Vec<(&'static str, KernelPath)> {
    let Ok(wanted) = std::env::var("PROF_BPF_KERNELS") else {
        return ALL_KERNELS.to_vec();
    };
    wanted
        .split(',')
        .map(|series| {
            *ALL_KERNELS
                .iter()
                .find(|k| k.0 == series)
                .unwrap_or_else(|| panic!("PROF_BPF_KERNELS: no kernel series {series:?}"))
        })
        .collect()
}

/// The kernel program's two paths, as the summary names them.
#[derive(Clone, Copy, Debug)]
enum KernelPath {
    BpfLoop,
    WithoutBpfLoop,
}

impl KernelPath {
    /// What follows `kernel X.Y: ` in the summary.
    fn line(self) -> &'static str {
        match self {
            KernelPath::BpfLoop => "bpf_loop walker and unwinder",
            KernelPath::WithoutBpfLoop => {
                "walker and unwinder without bpf_loop (tail calls, 64 native frames at most)"
            }
        }
    }

    /// The host's, by its release: `bpf_loop` came in 5.17.
    fn of_host() -> (String, Self) {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut parts = release.trim().split(['.', '-']);
        let mut next = || {
            parts
                .next()
                .and_then(|p| p.parse::<u32>().ok())
                .unwrap_or(0)
        };
        let (major, minor) = (next(), next());
        let path = match (major, minor) >= (5, 17) {
            true => KernelPath::BpfLoop,
            false => KernelPath::WithoutBpfLoop,
        };
        (format!("{major}.{minor}"), path)
    }
}

/// One recording of split.py: its name (its files' stem), the interpreter and the options.
struct Run {
    name: &'static str,
    python: &'static str,
    options: &'static [&'static str],
}

const RUNS: &[Run] = &[
    Run {
        name: "native",
        python: "3.12",
        options: &["--native"],
    },
    Run {
        name: "idle",
        python: "3.8",
        options: &["--idle"],
    },
];

/// The least share of samples whose native unwind reaches the outermost frame (every one did
/// in the runs so far; the host's tests ask 99 %).
const MIN_NATIVE_COMPLETE: f64 = 98.0;

/// The least share of the samples the measured CPU time implies that a guest's profile must
/// hold, below which the guest was starved and its measurement cannot be compared: under TCG a
/// guest's clock is the host's, so while QEMU's threads wait for one of this machine's two CPUs
/// (its own two vCPU threads and I/O thread contend for them too) the guest charges the running
/// thread time it did not run, and takes no samples in it. 43-98 % were seen with the splits
/// right (the least with other builds running, at a load average of 6), and 18 % at a load of
/// 15 with a split measured 47:53 that the samples put at 72:28.
const MIN_GUEST_COMPLETENESS: f64 = 0.3;

/// The errors a guest's recording may count: a launched process's (`LAUNCHED`), and frames
/// that could not be read, seen only in guests (5.10 and 6.1, with 3.8 and 3.12), in one
/// recording of three, up to 8 of 2,800 samples, always during the imports before split.py's
/// work, never on the host: kept with their readable frames, not lost. Not explained yet.
///
/// A launch's thread state read faults (`LAUNCHED`: up to 3 on the host) may be more here: a
/// starved 5.10 guest's `--idle` recording of python3.8 counted 8 of 4,603 samples, its 2 s of
/// work taking 5.57 s, with 485 samples before and after the Python code. Under TCG the start and
/// the end of a process, where its interpreter cannot be read, last far longer and hold more
/// samples. The same recording alone, six times: 0. A thread state read broken for good would
/// count thousands.
const GUEST_ERRORS: &[Expected] = &[
    ("thread state read fault", 0..=16),
    ("frame read fault", 0..=16),
];

/// The shell script that makes the recordings, into `$KERNEL_MATRIX_OUT` (set by the matrix in
/// a guest, by the caller on the host): for RUN, RUN.txt (the profile), RUN.out (the fixture's
/// measurement), RUN.err (the summary). The fixture waits for a go on its stdin, sent once
/// prof-bpf says it samples: loading the native tables takes seconds under TCG, and the work is
/// then all recorded (as `output_with_go` does on the host). Exits non-zero if a recording failed.
fn script() -> String {
    let prof = prof_bpf();
    let split = fixture("split.py");
    let mut s = String::from(
        "set -u; status=0; cd \"$KERNEL_MATRIX_OUT\"; go=$(mktemp -u /tmp/go.XXXXXX)\n",
    );
    for run in RUNS {
        s += &format!(
            "mkfifo \"$go\"
FIXTURE_GO=1 '{prof}' record -r {RATE} -f raw {options} -o {name}.txt -- '{python}' '{split}' 2 \\
  <\"$go\" >{name}.out 2>{name}.err &
exec 3>\"$go\"; rm \"$go\"
for _ in $(seq 1200); do
  grep -q '^prof-bpf: sampling ' {name}.err && break; kill -0 $! 2>/dev/null || break; sleep 0.05
done
(trap '' PIPE; echo go >&3) 2>/dev/null; exec 3>&-
wait $! || {{ status=1; echo '{name}: prof-bpf failed:' >&2; cat {name}.err >&2; }}
",
            prof = prof.display(),
            options = run.options.join(" "),
            python = python(run.python).display(),
            split = split.display(),
            name = run.name,
        );
    }
    s + "exit $status\n"
}

/// Checks the recordings in `dir` of a kernel whose summary must name `series` and `path`;
/// returns each run's BPF time per recorded sample.
fn check(dir: &Path, series: &str, path: KernelPath) -> Vec<f64> {
    let mut times = Vec::new();
    for run in RUNS {
        let test = format!("kernels_{series}_{}", run.name);
        let read = |ext: &str| {
            let file = dir.join(format!("{}.{ext}", run.name));
            std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("{test}: reading {}: {e}", file.display()))
        };
        let stderr = read("err");
        let profile = parse_folded(&read("txt"));
        let measured = measured_split(&read("out"));
        let s = Summary::parse(&stderr);
        assert_eq!(
            s.kernel_path,
            format!("kernel {series}: {}", path.line()),
            "{test}: the summary names another kernel path:\n{stderr}"
        );
        check_errors(&test, &s, GUEST_ERRORS);
        if run.options.contains(&"--idle") {
            // The profile holds the time off the CPU besides the samples the summary counts.
            assert!(stderr.contains("prof-bpf: idle: "), "{test}: {stderr}");
        } else {
            assert_eq!(
                total(&profile),
                s.samples,
                "{test}: the profile holds {} samples, the summary counts {}:\n{stderr}",
                total(&profile),
                s.samples
            );
        }
        let slack = 0.05 * s.seconds + 0.005 * s.achieved + 1.0;
        assert!(
            (s.attributable() - s.samples as f64).abs() <= slack,
            "{test}: the kernel recorded {:.0} samples but the profile holds {}:\n{stderr}",
            s.attributable(),
            s.samples
        );
        let work = split_work(&profile, measured);
        let ratio = work.samples as f64 / (s.rate as f64 * work.cpu);
        noise(&test, "completeness", ratio);
        assert!(
            ratio >= MIN_GUEST_COMPLETENESS,
            "{test}: {} samples of the work, {:.0}% of what {:.2} CPU seconds imply: the guest \
             was starved of this machine's CPUs (load average {}), or the work's frames were \
             not named (`[unknown]` in the profile):\n{stderr}",
            work.samples,
            100.0 * ratio,
            work.cpu,
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
        );
        if run.options.contains(&"--native") {
            let complete = s.native_complete.expect("a native unwind line");
            assert!(
                complete >= MIN_NATIVE_COMPLETE,
                "{test}: only {complete}% complete native unwinds:\n{stderr}"
            );
        }
        check_split(&profile, measured, &test);
        times.push(
            s.kernel_ns_per_sample
                .unwrap_or_else(|| panic!("{test}: no kernel time line:\n{stderr}")),
        );
    }
    times
}

/// The directory the matrix wrote `series`'s results to (named by the kernel's release).
fn release_dir(out: &Path, series: &str) -> PathBuf {
    std::fs::read_dir(out)
        .unwrap_or_else(|e| panic!("reading {}: {e}", out.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{series}.")))
        })
        .unwrap_or_else(|| panic!("the matrix wrote nothing for {series} in {}", out.display()))
}

#[test]
fn split_on_debian_kernels() {
    if !privileged() {
        return;
    }
    let dir = scratch_dir("kernels");
    let script = script();

    // The host first: the reference for the BPF time.
    let host_dir = dir.join("host");
    std::fs::create_dir_all(&host_dir).unwrap();
    let host = Command::new("bash")
        .args(["-c", &script])
        .env("KERNEL_MATRIX_OUT", &host_dir)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("running bash");
    assert!(
        host.status.success(),
        "the recordings failed on the host: {}",
        String::from_utf8_lossy(&host.stderr)
    );
    let (host_series, host_path) = KernelPath::of_host();
    let host_times = check(&host_dir, &host_series, host_path);

    let out = dir.join("matrix");
    let kernels = kernels();
    let series: Vec<&str> = kernels.iter().map(|k| k.0).collect();
    let started = std::time::Instant::now();
    let matrix = Command::new(root().join("scripts/kernel-matrix"))
        .args(["--kernels", &series.join(","), "--timeout", "600", "--out"])
        .arg(&out)
        .args(["--", "bash", "-c", &script])
        .current_dir(root())
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("running scripts/kernel-matrix");
    let matrix_stdout = String::from_utf8_lossy(&matrix.stdout);
    eprintln!(
        "kernels: the matrix took {:.0} s:\n{matrix_stdout}{}",
        started.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&matrix.stderr)
    );

    // Every kernel is checked, so a failure on one does not hide the others' results.
    let mut failures = Vec::new();
    let mut ratios = Vec::new();
    for &(series, path) in &kernels {
        match catch_unwind(AssertUnwindSafe(|| {
            check(&release_dir(&out, series), series, path)
        })) {
            Ok(times) => ratios.push((series, times)),
            Err(e) => failures.push(format!(
                "{series}: {}",
                e.downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| e.downcast_ref::<&str>().copied())
                    .unwrap_or("failed")
            )),
        }
    }
    let names: Vec<&str> = RUNS.iter().map(|r| r.name).collect();
    eprintln!(
        "kernels: BPF ns per recorded sample on the host ({host_series}), {}: {host_times:.0?}",
        names.join(", ")
    );
    for (series, times) in &ratios {
        let r: Vec<String> = times
            .iter()
            .zip(&host_times)
            .map(|(t, h)| format!("{:.1}x", t / h))
            .collect();
        eprintln!(
            "kernels: {series}: {times:.0?} ns, {} the host's",
            r.join(", ")
        );
    }
    assert!(
        failures.is_empty() && matrix.status.success(),
        "the matrix failed:\n{}\n{matrix_stdout}",
        failures.join("\n")
    );
}
