//! Every supported CPython, end to end as root: threads attributed to the right thread, each
//! kind of frame named right, and 3.13's published layout equal to the built-in table. The
//! split fixture under every version lives in record.rs with the other split tests.

use std::{
    collections::BTreeMap,
    process::{Command, Stdio},
};

use prof_bpf_tests::*;
use profiler_userspace::{
    process::ProcMem,
    python::{self, LayoutSource, Version, debug_offsets},
};
use serde_json::Value;

/// Records `fixture` (with `args`) under `python` as collapsed stacks with thread roots;
/// returns the profile, the JSON line the fixture printed last and prof-bpf's stderr.
fn record(
    python_version: &str,
    fixture_name: &str,
    args: &[&str],
    test: &str,
) -> (Folded, Value, String) {
    let (result, profile) = record_raw(
        test,
        &["-r", RATE, "-f", "raw", "--threads"],
        &python(python_version),
        fixture_name,
        args,
    );
    let stderr = String::from_utf8_lossy(&result.stderr).into_owned();
    (profile, fixture_json(&result), stderr)
}

/// Checks the recording is complete for the functions `measured` names (their samples against
/// their summed CPU time) and each one's share of those samples against its share of the CPU.
fn check_functions(
    profile: &Folded,
    measured: &BTreeMap<String, f64>,
    stderr: &str,
    test: &str,
    expected: &[Expected],
) {
    let parts: Vec<(String, u64, f64)> = measured
        .iter()
        .map(|(name, cpu)| (name.clone(), samples_in(profile, name), *cpu))
        .collect();
    let work = Work {
        samples: parts.iter().map(|p| p.1).sum(),
        cpu: parts.iter().map(|p| p.2).sum(),
    };
    check_complete(test, stderr, Some(profile), work, expected);
    check_shares(test, &parts);
}

/// Four threads, equal work each: each thread's function holds its share of the samples, and
/// every stack through a worker function is rooted at that worker's own thread.
fn threads(python_version: &str, test: &str) {
    if !privileged() {
        return;
    }
    let (profile, measured, stderr) = record(python_version, "threads.py", &["0.5"], test);
    let workers = measured.as_object().expect("a JSON object");
    assert_eq!(workers.len(), 4, "{test}: {measured}");
    let cpu: BTreeMap<String, f64> = workers
        .iter()
        .map(|(name, w)| (name.clone(), w["cpu"].as_f64().unwrap()))
        .collect();
    check_functions(&profile, &cpu, &stderr, test, LAUNCHED);
    for (name, w) in workers {
        // Shown by Python's name for the thread, not the kernel's.
        let root = format!(
            "thread {} ({})",
            w["tid"].as_u64().unwrap(),
            w["name"].as_str().unwrap()
        );
        for (stack, n) in &profile {
            if stack.iter().any(|f| function(f) == name) {
                assert!(
                    stack[0] == root,
                    "{test}: {n} samples of {name} (thread {}) are rooted at {:?}",
                    w["tid"],
                    stack[0]
                );
            }
        }
    }
}

#[test]
fn threads_3_8() {
    threads("3.8", "threads_3_8");
}

#[test]
fn threads_3_9() {
    threads("3.9", "threads_3_9");
}

#[test]
fn threads_3_10() {
    threads("3.10", "threads_3_10");
}

#[test]
fn threads_3_11() {
    threads("3.11", "threads_3_11");
}

#[test]
fn threads_3_12() {
    threads("3.12", "threads_3_12");
}

#[test]
fn threads_3_13() {
    threads("3.13", "threads_3_13");
}

#[test]
fn threads_debian_3_11() {
    threads("debian-3.11", "threads_debian_3_11");
}

/// Speedscope's profile of each thread is named by Python's name for the thread (issue 15).
#[test]
fn speedscope_profiles_carry_python_thread_names() {
    if !privileged() {
        return;
    }
    let test = "speedscope_thread_names";
    let out = scratch_dir(test).join("profile.speedscope.json");
    let result = record_fixture(
        &["-r", RATE, "-f", "speedscope"],
        &out,
        &python("3.12"),
        "threads.py",
        &["0.3"],
    );
    let measured = fixture_json(&result);
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let names: Vec<&str> = doc["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for w in measured.as_object().unwrap().values() {
        let want = format!("thread {} ({})", w["tid"], w["name"].as_str().unwrap());
        assert!(
            names.iter().any(|n| n.ends_with(&want)),
            "{test}: no profile named ...{want} in {names:?}"
        );
    }
}

/// A generator, a coroutine, a method, non-ASCII names of every string kind and a module with a
/// non-ASCII file name: each appears by its right name, with its share of the samples.
fn frame_kinds(python_version: &str, test: &str) {
    if !privileged() {
        return;
    }
    let (profile, measured, stderr) = record(python_version, "kinds.py", &["0.3"], test);
    // A method is `Shape.area` on every version (up to 3.10 through its `self`).
    let cpu: BTreeMap<String, f64> = measured
        .as_object()
        .expect("a JSON object")
        .iter()
        .map(|(name, secs)| (name.to_string(), secs.as_f64().unwrap()))
        .collect();
    assert_eq!(cpu.len(), 7, "{test}: {measured}");
    // Generators and coroutines made and entered, asyncio.run: calls at a high rate.
    check_functions(&profile, &cpu, &stderr, test, &[LAUNCH_FAULTS, CALL_RACE]);
    let module_frame = profile
        .keys()
        .flatten()
        .find(|f| function(f) == "función_en_módulo")
        .expect("the non-ASCII module's function");
    assert!(
        module_frame.contains("/módulo_Ω.py:"),
        "{test}: {module_frame}"
    );
}

#[test]
fn frame_kinds_3_8() {
    frame_kinds("3.8", "frame_kinds_3_8");
}

#[test]
fn frame_kinds_3_9() {
    frame_kinds("3.9", "frame_kinds_3_9");
}

#[test]
fn frame_kinds_3_10() {
    frame_kinds("3.10", "frame_kinds_3_10");
}

#[test]
fn frame_kinds_3_11() {
    frame_kinds("3.11", "frame_kinds_3_11");
}

#[test]
fn frame_kinds_3_12() {
    frame_kinds("3.12", "frame_kinds_3_12");
}

#[test]
fn frame_kinds_3_13() {
    frame_kinds("3.13", "frame_kinds_3_13");
}

#[test]
fn frame_kinds_debian_3_11() {
    frame_kinds("debian-3.11", "frame_kinds_debian_3_11");
}

/// What a live 3.13 interpreter publishes in `_Py_DebugOffsets` equals the built-in 3.13 table,
/// field for field: a wrong table fails here.
#[test]
fn published_3_13_layout_equals_the_builtin_table() {
    if !privileged() {
        return;
    }
    let mut child = Command::new(python("3.13"))
        .args([
            "-c",
            "import sys, time; print(1, flush=True); time.sleep(30)",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting python 3.13");
    let mut ready = [0u8; 1];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut ready).unwrap();
    let read = || {
        let p = python::discover::inspect(child.id()).expect("python 3.13 found");
        let builtin = python::layout_for(Version::new(3, 13)).unwrap();
        let mem = ProcMem::open(p.pid).unwrap();
        let published = debug_offsets::read(&mem, p.runtime_addr, p.version, p.runtime_size)
            .and_then(|published| debug_offsets::apply(&published, &builtin));
        let of = python::layout_of(&mem, p.version, p.runtime_addr, p.runtime_size).unwrap();
        (builtin, published, of)
    };
    let (builtin, published, (layout, source)) = read();
    let _ = child.kill();
    let _ = child.wait();
    let published = published.expect("the 3.13 process publishes its layout");
    assert_eq!(
        debug_offsets::disagreements(&builtin, &published),
        [],
        "published vs built-in"
    );
    assert_eq!(published, builtin);
    assert_eq!(layout, builtin);
    assert_eq!(source, LayoutSource::Published(vec![]));
}
