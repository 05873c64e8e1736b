//! Issue 15, methods named with their class on every version, end to end as root: 3.8-3.10
//! code objects have no `co_qualname`, so `record` finds a method's class from the first
//! argument the kernel copied with its code object (`self` or `cls`) and names it by the class
//! that defines it, as 3.11+ name it from the code object. Each method's share is the share of
//! the CPU time the fixture measured for it.

use prof_bpf_tests::*;

/// The fixture's functions by the names it measured them under, and the name the profile gives
/// each on `minor`: the qualified name, but for a static method up to 3.10 (no first argument
/// to find its class by, as with py-spy).
fn expected_name(measured: &str, minor: u32) -> &str {
    match (measured, minor) {
        ("Left.pure", ..=10) => "pure",
        _ => measured,
    }
}

fn methods_are_named_with_their_class(version: &str, test: &str) {
    methods_are_named_with_their_class_env(version, &[], test);
}

/// `methods_are_named_with_their_class` with `env` set for prof-bpf; returns its summary.
fn methods_are_named_with_their_class_env(
    version: &str,
    env: &[(&str, &str)],
    test: &str,
) -> String {
    if !privileged() {
        return String::new();
    }
    let (result, profile) = record_raw_env(
        test,
        &["-r", RATE, "-f", "raw"],
        env,
        &python(version),
        "methods.py",
        &["3"],
    );
    let measured = fixture_json(&result);
    let minor: u32 = version_of(version)
        .split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap();
    let measured = measured.as_object().expect("the fixture's times by name");
    assert_eq!(measured.len(), 6, "{test}: {measured:?}");
    let parts: Vec<(String, u64, f64)> = measured
        .iter()
        .map(|(name, secs)| {
            let shown = expected_name(name, minor);
            (
                shown.to_string(),
                samples_in(&profile, shown),
                secs.as_f64().unwrap(),
            )
        })
        .collect();
    // The bare method names (what 3.8-3.10 frames showed before) are gone.
    for bare in ["shared", "own", "build", "deep"] {
        assert_eq!(samples_in(&profile, bare), 0, "{test}: frames named {bare}");
    }
    check_complete(
        test,
        &String::from_utf8_lossy(&result.stderr),
        Some(&profile),
        Work {
            samples: samples_in(&profile, "timed"),
            cpu: parts.iter().map(|p| p.2).sum(),
        },
        LAUNCHED,
    );
    check_shares(test, &parts);
    String::from_utf8_lossy(&result.stderr).into_owned()
}

#[test]
fn methods_are_named_with_their_class_3_8() {
    methods_are_named_with_their_class("3.8", "methods_3_8");
}

#[test]
fn methods_are_named_with_their_class_3_9() {
    methods_are_named_with_their_class("3.9", "methods_3_9");
}

#[test]
fn methods_are_named_with_their_class_3_10() {
    methods_are_named_with_their_class("3.10", "methods_3_10");
}

/// `co_qualname`: the same names.
#[test]
fn methods_are_named_with_their_class_3_12() {
    methods_are_named_with_their_class("3.12", "methods_3_12");
}

/// Kernels without `bpf_loop` (before 5.17) copy the first argument with the code object in the
/// tail-called copier, from the frame address the tail-called walk kept.
#[test]
fn methods_are_named_with_their_class_3_9_without_bpf_loop() {
    if !privileged() {
        return;
    }
    let test = "methods_3_9_compat";
    let stderr = methods_are_named_with_their_class_env("3.9", OLDER_KERNELS, test);
    check_older_kernels_path(test, &stderr);
}
