//! Issue 18, end to end as root: `--async-aware` on CPython 3.14 and 3.15 (Debian forky's, in a
//! container), which publish where their tasks are, and on 3.11-3.13 (pyenv's, and Debian's
//! stripped 3.11), which do not. `async_tasks.py` runs named tasks with known awaits and says
//! what it knows of them itself (asyncio.capture_call_graph, or before 3.14 its tasks' done
//! callbacks and `cr_await`): `dump --async-aware` must print every task, the tasks that await
//! it, and the coroutine chain of each task that stays where it is. An older version is refused
//! with a message that says which versions work. `record --async-aware`
//! must root each sample of a task at `task NAME` under the task awaiting it, without the event
//! loop's frames, each task with its measured share of the CPU time and each of its two
//! coroutines with theirs.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
};

use prof_bpf_tests::*;
use serde_json::Value;

/// Ends a started fixture (and everything in its container) when the test ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One task as `dump --async-aware` prints it.
#[derive(Debug, Default)]
struct DumpedTask {
    header: String,
    /// Function names, leaf first.
    chain: Vec<String>,
    awaited_by: BTreeSet<String>,
}

/// The tasks section of a dump, by task name.
fn dumped_tasks(dump: &str) -> BTreeMap<String, DumpedTask> {
    let mut out = BTreeMap::new();
    let mut current: Option<(String, DumpedTask)> = None;
    let section = dump
        .split_once("\nasyncio tasks: ")
        .unwrap_or_else(|| panic!("no tasks section in\n{dump}"))
        .1;
    for line in section.lines() {
        if let Some(rest) = line.strip_prefix("Task \"") {
            if let Some((name, t)) = current.take() {
                out.insert(name, t);
            }
            let name = rest.split_once('"').unwrap().0.to_string();
            current = Some((
                name,
                DumpedTask {
                    header: line.to_string(),
                    ..DumpedTask::default()
                },
            ));
        } else if let (Some(by), Some((_, t))) =
            (line.strip_prefix("    awaited by "), current.as_mut())
        {
            t.awaited_by = by.split(", ").map(|n| n.trim_matches('"').into()).collect();
        } else if let (Some(frame), Some((_, t))) = (line.strip_prefix("    "), current.as_mut()) {
            // `Event.wait (file:line)` -> `wait`, as a code object names it.
            let f = function(frame);
            t.chain.push(f.rsplit('.').next().unwrap().to_string());
        }
    }
    if let Some((name, t)) = current {
        out.insert(name, t);
    }
    out
}

/// Starts `async_tasks.py` with a CPU budget far beyond the test, and returns it, its Python's
/// pid and what it says of its tasks.
fn start(interp: &Interp) -> (Running, u32, Value) {
    let mut child = interp
        .command("async_tasks.py", &["600"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting async_tasks.py");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pid = interp.python_pid(child.id());
    let known: Value = serde_json::from_str(&line).expect("the fixture's tasks are JSON");
    (Running(child), pid, known["tasks"].clone())
}

fn dump_tasks(which: &str) {
    if !privileged() {
        return;
    }
    let interp = interpreter(which);
    let (_fixture, pid, known) = start(&interp);
    let out = run(&["dump", "--async-aware", "--pid", &pid.to_string()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dumped = dumped_tasks(&stdout);
    let known = known.as_object().unwrap();
    let names = |it: &mut dyn Iterator<Item = &String>| it.cloned().collect::<BTreeSet<_>>();
    assert_eq!(
        names(&mut dumped.keys()),
        names(&mut known.keys()),
        "{which}: the tasks dumped are the program's:\n{stdout}"
    );
    for (name, k) in known {
        let d = &dumped[name];
        let awaited_by: BTreeSet<String> = k["awaited_by"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            d.awaited_by, awaited_by,
            "{which}: what awaits {name}:\n{stdout}"
        );
        let chain: Vec<String> = k["chain"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        match name.as_str() {
            // Suspended for good: the whole chain, innermost first.
            "waiter" | "child" => {
                assert_eq!(d.chain, chain, "{which}: {name}'s coroutines:\n{stdout}");
                assert!(d.header.ends_with(", waiting)"), "{}", d.header);
            }
            // Running or between slices: the task's own coroutine is outermost.
            _ => assert_eq!(
                d.chain.last(),
                chain.last(),
                "{which}: {name}'s first coroutine:\n{stdout}"
            ),
        }
    }
    // The JSON document has the same tasks and awaiters.
    let out = run(&["dump", "--async-aware", "--json", "--pid", &pid.to_string()]);
    let doc: Value = serde_json::from_slice(&out.stdout).expect("dump --json is JSON");
    let tasks = doc["processes"][0]["tasks"].as_array().expect("tasks");
    let by_name: BTreeMap<&str, &Value> = tasks
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), &t["awaited_by"]))
        .collect();
    for (name, k) in known {
        assert_eq!(
            by_name.get(name.as_str()).copied(),
            Some(&k["awaited_by"]),
            "{which}: {name} in JSON"
        );
    }
    // The CPU tasks take turns: at most one runs, and a running one's chain is its thread's
    // stack down to its coroutine, with no event loop frame.
    let running: Vec<_> = dumped
        .values()
        .filter(|t| t.header.contains(", running in thread "))
        .collect();
    assert!(running.len() <= 1, "{stdout}");
    for t in running {
        assert!(
            !t.chain
                .iter()
                .any(|f| f.contains("run_once") || f == "_run"),
            "{which}: the loop's frames are not the task's: {t:?}"
        );
    }
}

#[test]
fn dump_async_aware_3_14() {
    dump_tasks("forky-3.14");
}

#[test]
fn dump_async_aware_3_15() {
    dump_tasks("forky-3.15");
}

#[test]
fn dump_async_aware_3_11() {
    dump_tasks("3.11");
}

#[test]
fn dump_async_aware_debian_3_11() {
    dump_tasks("debian-3.11");
}

#[test]
fn dump_async_aware_3_12() {
    dump_tasks("3.12");
}

#[test]
fn dump_async_aware_3_13() {
    dump_tasks("3.13");
}

/// 3.10's tasks run coroutines whose frames are not the tasks' own: refused, with the versions
/// that work.
#[test]
fn async_aware_needs_3_11() {
    if !privileged() {
        return;
    }
    let mut child = Command::new(python("3.10"))
        .args([
            "-c",
            "import asyncio, time; print(1, flush=True); time.sleep(30)",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let child = Running(child);
    let out = run(&["dump", "--async-aware", "--pid", &child.0.id().to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--async-aware needs CPython 3.11 or newer") && stderr.contains("3.10"),
        "{stderr}"
    );
}

/// Records `fixture` (given 2 CPU seconds) with `--async-aware` and `extra` at 1 kHz: what the
/// fixture measured (its last JSON line) and the profile. None where privileged tests skip.
fn record_async(which: &str, extra: &[&str], test: &str, fixture: &str) -> Option<(Value, Folded)> {
    if !privileged() {
        return None;
    }
    let interp = interpreter(which);
    let out = scratch_dir(test).join("profile.txt");
    let mut args = vec!["--async-aware", "-r", "1000", "-f", "raw"];
    args.extend(extra);
    let result = record_under(&interp, &args, &out, fixture, &["2"]);
    let measured = fixture_json(&result);
    Some((
        measured,
        parse_folded(&std::fs::read_to_string(&out).unwrap()),
    ))
}

fn record_tasks(which: &str, extra: &[&str], test: &str) {
    let Some((measured, profile)) = record_async(which, extra, test, "async_tasks.py") else {
        return;
    };
    let secs = |k: &str| measured[k].as_f64().unwrap();
    let under = |task: &str, function: Option<&str>| -> u64 {
        profile
            .iter()
            .filter(|(s, _)| s.len() > 2 && s[0] == "task main" && s[1] == task)
            .filter(|(s, _)| function.is_none_or(|f| s.iter().any(|l| function_of(l) == f)))
            .map(|(_, n)| n)
            .sum()
    };
    // Each CPU task is a root under the task that awaits it, with its share.
    check_shares(
        test,
        &[
            (
                "task splitter".into(),
                under("task splitter", None),
                secs("part_a") + secs("part_b"),
            ),
            (
                "task steady".into(),
                under("task steady", None),
                secs("steady"),
            ),
        ],
    );
    // Within a task, its two coroutines' split.
    check_shares(
        test,
        &[
            (
                "part_a".into(),
                under("task splitter", Some("part_a")),
                secs("part_a"),
            ),
            (
                "part_b".into(),
                under("task splitter", Some("part_b")),
                secs("part_b"),
            ),
        ],
    );
    // The task's first coroutine follows its roots: the event loop's frames, Python and
    // native (`--native`), are gone.
    for (stack, n) in &profile {
        if stack.first().is_some_and(|f| f.starts_with("task ")) {
            assert!(
                !stack
                    .iter()
                    .any(|f| f.contains("_run_once") || f.contains("run_forever")),
                "{test}: a loop frame under a task ({n} samples): {stack:?}"
            );
            let first = stack.iter().find(|f| !f.starts_with("task "));
            assert!(
                first.is_some_and(|f| f.contains("async_tasks.py:")),
                "{test}: the task's roots are not followed by its coroutine ({n} samples): \
                 {stack:?}"
            );
        }
    }
    let splitter = under("task splitter", Some("splitter"));
    assert!(
        splitter * 10 >= under("task splitter", None) * 9,
        "{test}: splitter's samples start at splitter: {profile:#?}"
    );
}

/// The function of a `function (file:line)` label.
fn function_of(label: &str) -> &str {
    function(label)
}

#[test]
fn record_async_aware_3_14() {
    record_tasks("forky-3.14", &[], "record_async_aware_3_14");
}

#[test]
fn record_async_aware_3_15() {
    record_tasks("forky-3.15", &[], "record_async_aware_3_15");
}

/// Mixed stacks: the loop's native frames (its C task step, the eval loop that runs it) are
/// left out with its Python ones.
#[test]
fn record_async_aware_native_3_14() {
    record_tasks(
        "forky-3.14",
        &["--native"],
        "record_async_aware_native_3_14",
    );
}

#[test]
fn record_async_aware_3_11() {
    record_tasks("3.11", &[], "record_async_aware_3_11");
}

#[test]
fn record_async_aware_debian_3_11() {
    record_tasks("debian-3.11", &[], "record_async_aware_debian_3_11");
}

#[test]
fn record_async_aware_3_12() {
    record_tasks("3.12", &[], "record_async_aware_3_12");
}

#[test]
fn record_async_aware_3_13() {
    record_tasks("3.13", &[], "record_async_aware_3_13");
}

/// Mixed stacks on 3.12: the C task step and the eval loop above the loop's Python frames go
/// with them.
#[test]
fn record_async_aware_native_3_12() {
    record_tasks("3.12", &["--native"], "record_async_aware_native_3_12");
}

/// Tasks that end before the profiler next reads what the kernel counted keep their names: the
/// fixture (`short_tasks.py`) starts one task "short" after another, each burning 20 ms of CPU,
/// beside a task "steady" that burns CPU throughout, and measures the split. With native
/// frames each sample at a new instruction is a count named at the next drain, by which time
/// its task has ended: named from what was read when the kernel stored the stack.
fn record_short_tasks(which: &str, extra: &[&str], test: &str) {
    let Some((measured, profile)) = record_async(which, extra, test, "short_tasks.py") else {
        return;
    };
    let secs = |k: &str| measured[k].as_f64().unwrap();
    let in_work = |function: &'static str| {
        profile
            .iter()
            .filter(move |(s, _)| s.iter().any(|l| function_of(l) == function))
    };
    let under = |s: &[String], roots: &[&str]| {
        s.len() > roots.len() && s.iter().zip(roots).all(|(l, r)| l == r)
    };
    let rooted = |roots: &[&str], function: &'static str| -> u64 {
        in_work(function)
            .filter(|(s, _)| under(s, roots))
            .map(|(_, n)| n)
            .sum()
    };
    let short = rooted(&["task main", "task short"], "short_work");
    let unrooted: Vec<_> = in_work("short_work")
        .filter(|(s, _)| !under(s, &["task main", "task short"]))
        .collect();
    check_shares(
        test,
        &[
            ("task short".into(), short, secs("short")),
            (
                "task steady".into(),
                rooted(&["task steady"], "steady_work"),
                secs("steady"),
            ),
        ],
    );
    let lost: u64 = unrooted.iter().map(|(_, n)| **n).sum();
    eprintln!("{test}: {lost} samples of short_work outside its task, {short} in it");
    // At most a few in a hundred: a task whose stack is announced while the profiler is busy
    // elsewhere for longer than the task lives is not found.
    assert!(
        lost * 20 <= short,
        "{test}: {lost} samples of short_work are not under task main;task short \
         (against {short} that are): {unrooted:#?}"
    );
}

#[test]
fn record_short_tasks_3_12() {
    record_short_tasks("3.12", &[], "record_short_tasks_3_12");
}

#[test]
fn record_short_tasks_native_3_12() {
    record_short_tasks("3.12", &["--native"], "record_short_tasks_native_3_12");
}

#[test]
fn record_short_tasks_native_3_14() {
    record_short_tasks(
        "forky-3.14",
        &["--native"],
        "record_short_tasks_native_3_14",
    );
}
