//! A free-threaded Python's threads really run at once while prof-bpf samples them: the one
//! end-to-end test that needs both CPUs to itself, in a test binary of its own (cargo runs test
//! binaries one after another, the tests of one binary side by side). Beside another test
//! burning a CPU, four threads of 3.13t got 4.0 CPU seconds in 4.7 s, and the check failed.

use prof_bpf_tests::*;

/// 3.13t: four threads burning 1 s of CPU each use more CPU time than the recording lasts,
/// which one thread at a time (a GIL) cannot do. The margin is asserted, not two full CPUs: a
/// hypervisor that takes part of the CPUs' time (steal) takes it from a lone thread too, so the
/// recording's length less the time taken from one CPU is what one thread could have had.
#[test]
fn threads_3_13t_run_in_parallel() {
    if !privileged() {
        return;
    }
    let interp = interpreter("3.13t");
    let out = scratch_dir("threads_3_13t_parallel").join("profile.txt");
    let (stolen_before, cpus) = stolen_seconds();
    let result = record_under(
        &interp,
        &["-r", "1000", "-f", "raw"],
        &out,
        "threads.py",
        &["1.0"],
    );
    let stolen = (stolen_seconds().0 - stolen_before) / cpus as f64;
    let summary = String::from_utf8_lossy(&result.stderr);
    let measured = fixture_json(&result);
    let workers = measured.as_object().expect("a JSON object");
    assert_eq!(workers.len(), 4, "{measured}");
    let cpu: f64 = workers.values().map(|w| w["cpu"].as_f64().unwrap()).sum();
    let secs = Summary::parse(&summary).seconds;
    eprintln!("threads_3_13t: {cpu:.2} CPU seconds in {secs:.2} s, {stolen:.2} s stolen a CPU");
    assert!(
        cpu > secs - stolen,
        "the threads did not run in parallel: {cpu:.2} CPU seconds in {secs:.2} s, of which the \
         hypervisor took {stolen:.2} s a CPU (is the machine this busy?)\n{summary}"
    );
    assert!(
        summary.contains("prof-bpf: free-threaded: no GIL"),
        "{summary}"
    );
}
