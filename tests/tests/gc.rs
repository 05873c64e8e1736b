//! Issue 18, `<GC>` frames, end to end as root: a sample taken while the garbage collector runs
//! has a `<GC>` frame above the Python frame that started the collection, and the share of the
//! samples with one is the share of the CPU time the fixture measured inside `gc.collect()`, in
//! every supported version and every output format.

use std::path::Path;

use prof_bpf_tests::*;
use serde_json::Value;

/// How far the profiled share of `<GC>` may be from the measured share, in percentage points,
/// besides `check_share`'s bound (which is tighter at these sample counts).
const TOLERANCE_PP: f64 = 3.0;

/// CPU seconds the fixture runs for: about 3,000 samples at `RATE`.
const BUDGET: &str = "3";

const GC: &str = "<GC>";

/// The fixture's measurement: CPU seconds inside gc.collect() and of the whole measured run.
fn measured(stdout: &[u8]) -> (f64, f64) {
    let stdout = String::from_utf8_lossy(stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.contains("\"gc\""))
        .unwrap_or_else(|| panic!("the fixture printed no measurement: {stdout:?}"));
    let v: Value = serde_json::from_str(line).expect("the measurement is JSON");
    (v["gc"].as_f64().unwrap(), v["total"].as_f64().unwrap())
}

/// Whether `label` is the fixture's `main` (site.py has one too, and its imports at start-up
/// can set off an automatic collection, with its own `<GC>` frame).
fn is_main(label: &str) -> bool {
    function(label) == "main" && label.contains("gc_cycles.py")
}

/// Checks the `<GC>` frames of a recording of gc_cycles.py: each one of the measured run (under
/// its `main`) is the leaf, right above `collect`, the function that calls gc.collect(); their
/// share of main's samples is the measured share of the CPU time in gc.collect(). Returns
/// main's samples, for `check_complete`.
fn check_gc_frames(test: &str, profile: &Folded, (gc, total): (f64, f64)) -> u64 {
    let in_main: u64 = profile
        .iter()
        .filter(|(s, _)| s.iter().any(|f| is_main(f)))
        .map(|(_, n)| n)
        .sum();
    let mut in_gc = 0;
    for (stack, n) in profile {
        if !stack.iter().any(|f| is_main(f)) {
            continue;
        }
        let Some(at) = stack.iter().position(|f| f == GC) else {
            continue;
        };
        assert!(
            at == stack.len() - 1 && at > 0 && function(&stack[at - 1]) == "collect",
            "{test}: {n} samples with {GC} not right above collect: {stack:?}"
        );
        in_gc += n;
    }
    let expected = 100.0 * gc / total;
    let profiled = 100.0 * in_gc as f64 / in_main as f64;
    check_share(test, GC, profiled, expected, in_main);
    assert!(
        (profiled - expected).abs() <= TOLERANCE_PP,
        "{test}: {GC} holds {profiled:.1}% of main's samples, the fixture measured {expected:.1}% \
         of its CPU time in gc.collect()"
    );
    // Outside a collection, `collect` has next to nothing of its own: the <GC> frame is there
    // whenever the collector is.
    let collect_alone: u64 = profile
        .iter()
        .filter(|(s, _)| s.last().is_some_and(|f| function(f) == "collect"))
        .map(|(_, n)| n)
        .sum();
    assert!(
        collect_alone * 50 <= in_gc.max(1),
        "{test}: {collect_alone} samples in collect without {GC}, against {in_gc} with"
    );
    in_main
}

/// Records gc_cycles.py under interpreter `which` (`interpreter()`'s names) as collapsed stacks
/// and checks its `<GC>` frames and the recording's completeness.
fn gc_share(which: &str, test: &str) {
    if !privileged() {
        return;
    }
    let interp = interpreter(which);
    let out = scratch_dir(test).join("profile.txt");
    let result = record_under(
        &interp,
        &["-r", RATE, "-f", "raw"],
        &out,
        "gc_cycles.py",
        &[BUDGET],
    );
    let stderr = String::from_utf8_lossy(&result.stderr);
    let profile = parse_folded(&std::fs::read_to_string(&out).unwrap());
    let (gc, total) = measured(&result.stdout);
    let samples = check_gc_frames(test, &profile, (gc, total));
    let work = Work {
        samples,
        cpu: total,
    };
    check_complete(test, &stderr, Some(&profile), work, LAUNCHED);
}

#[test]
fn gc_share_3_8() {
    gc_share("3.8", "gc_share_3_8");
}

#[test]
fn gc_share_3_9() {
    gc_share("3.9", "gc_share_3_9");
}

#[test]
fn gc_share_3_10() {
    gc_share("3.10", "gc_share_3_10");
}

#[test]
fn gc_share_3_11() {
    gc_share("3.11", "gc_share_3_11");
}

#[test]
fn gc_share_debian_3_11() {
    gc_share("debian-3.11", "gc_share_debian_3_11");
}

#[test]
fn gc_share_3_12() {
    gc_share("3.12", "gc_share_3_12");
}

#[test]
fn gc_share_3_13() {
    gc_share("3.13", "gc_share_3_13");
}

#[test]
fn gc_share_3_13t() {
    gc_share("3.13t", "gc_share_3_13t");
}

#[test]
fn gc_share_3_14_in_a_container() {
    gc_share("forky-3.14", "gc_share_3_14");
}

#[test]
fn gc_share_3_15_in_a_container() {
    gc_share("forky-3.15", "gc_share_3_15");
}

/// Records gc_cycles.py under 3.12 in `format` into `dir/file`; returns the fixture's
/// measurement and prof-bpf's stderr.
fn record_format(dir: &Path, format: &str, file: &str) -> ((f64, f64), String) {
    let result = record_fixture(
        &["-r", RATE, "-f", format],
        &dir.join(file),
        &python("3.12"),
        "gc_cycles.py",
        &[BUDGET],
    );
    (
        measured(&result.stdout),
        String::from_utf8_lossy(&result.stderr).into_owned(),
    )
}

/// The `<GC>` frame in speedscope, the flamegraph SVG and pprof (read by `go tool pprof`), each
/// with the measured share.
#[test]
fn gc_frames_in_every_output_format() {
    if !privileged() {
        return;
    }
    let dir = scratch_dir("gc_formats");

    let (split, stderr) = record_format(&dir, "speedscope", "p.speedscope.json");
    let doc: Value =
        serde_json::from_slice(&std::fs::read(dir.join("p.speedscope.json")).unwrap()).unwrap();
    let folded = speedscope_folded(&doc, RATE.parse().unwrap());
    let samples = check_gc_frames("gc_speedscope", &folded, split);
    let work = Work {
        samples,
        cpu: split.1,
    };
    check_complete("gc_speedscope", &stderr, Some(&folded), work, LAUNCHED);

    let (split, stderr) = record_format(&dir, "flamegraph", "p.svg");
    let boxes = svg_boxes(&std::fs::read_to_string(dir.join("p.svg")).unwrap());
    let in_boxes = |is: &dyn Fn(&str) -> bool| -> u64 {
        boxes.iter().filter(|(l, _)| is(l)).map(|(_, n)| n).sum()
    };
    // A box per distinct stack prefix; an automatic collection at start-up, outside main, would
    // add a box of a sample or two.
    let (gc, main) = (in_boxes(&|l| l == GC), in_boxes(&is_main));
    check_share(
        "gc_flamegraph",
        GC,
        100.0 * gc as f64 / main as f64,
        100.0 * split.0 / split.1,
        main,
    );
    let work = Work {
        samples: main,
        cpu: split.1,
    };
    check_complete("gc_flamegraph", &stderr, None, work, LAUNCHED);

    let (split, stderr) = record_format(&dir, "pprof", "p.pb.gz");
    let folded = pprof_folded(&pprof_samples(&dir.join("p.pb.gz"), &dir));
    let samples = check_gc_frames("gc_pprof", &folded, split);
    let work = Work {
        samples,
        cpu: split.1,
    };
    check_complete("gc_pprof", &stderr, Some(&folded), work, LAUNCHED);
}

/// `dump` shows the collector too: a thread dumped while it collects has `<GC>` above
/// `collect`, the leaf first as dump prints it. gc_cycles.py collects about a third of the
/// time, so among 40 dumps some catch it.
#[test]
fn dump_shows_the_collector_at_work() {
    if !privileged() {
        return;
    }
    let fixture = Fixture::start(&python("3.12"), "gc_cycles.py", &["60"], &[]);
    let pid = fixture.pid.to_string();
    let mut with_gc = 0;
    for _ in 0..40 {
        let out = run(&["dump", "--pid", &pid]);
        assert!(
            out.status.success(),
            "dump: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        for (i, line) in lines.iter().enumerate() {
            if *line == GC {
                assert!(
                    lines.get(i + 1).is_some_and(|l| function(l) == "collect"),
                    "{GC} not right above collect:\n{text}"
                );
                with_gc += 1;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    eprintln!("dump_gc: {with_gc} of 40 dumps caught the collector");
    assert!(with_gc > 0, "no dump of 40 showed {GC}");
    fixture.kill();
}
