//! `prof-bpf top` driven in a real terminal: tmux runs it in a detached pane, the test types
//! keys (send-keys) and reads the screen (capture-pane). Against split.py, which keeps a file up
//! to date with the heavy:light split it measured: the header and rows appear with that split,
//! the sort keys reorder the rows, `l` toggles line numbers, and `q`, Esc, Ctrl-C, SIGTERM or
//! the program's end give the terminal back as it was. Against gc_cycles.py, the collector's
//! `<GC>` row with the share of the time that fixture measured in gc.collect(). Against
//! async_tasks.py on 3.14 and 3.13, `--async-aware`: a row per task, the CPU tasks split as
//! measured.

use std::{
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use prof_bpf_tests::*;

/// A tmux server of its own (its own socket), killed when the test ends.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(test: &str) -> Self {
        let t = Tmux {
            socket: format!("prof-bpf-{test}-{}", std::process::id()),
        };
        let out = t.cmd(&[
            "new-session",
            "-d",
            "-x",
            "150",
            "-y",
            "40",
            "-s",
            "top",
            "bash",
            "--norc",
            "--noprofile",
        ]);
        assert!(
            out.status.success(),
            "tmux: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        t
    }

    fn cmd(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("running tmux (apt-get install tmux)")
    }

    fn keys(&self, keys: &[&str]) {
        let out = self.cmd(&[&["send-keys", "-t", "top"], keys].concat());
        assert!(out.status.success());
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "top"]).stdout).into()
    }

    fn alternate_screen(&self) -> bool {
        let out = self.cmd(&["display-message", "-p", "-t", "top", "#{alternate_on}"]);
        String::from_utf8_lossy(&out.stdout).trim() == "1"
    }

    /// Waits up to `secs` for the screen to satisfy `ok`; returns the last screen.
    fn wait_for(&self, secs: u64, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "waited {secs}s for {what}; screen:\n{s}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

/// The table's rows: (the five columns, function label).
fn rows(screen: &str) -> Vec<(Vec<f64>, String)> {
    screen
        .lines()
        .skip_while(|l| !l.starts_with("%Own"))
        .skip(1)
        .filter_map(|l| {
            let mut cols = l.split_whitespace();
            let nums: Vec<f64> = cols
                .by_ref()
                .take(4)
                .map(|c| c.trim_end_matches(['%', 's']).parse().ok())
                .collect::<Option<_>>()?;
            (nums.len() == 4).then(|| (nums, cols.collect::<Vec<_>>().join(" ")))
        })
        .collect()
}

fn first_function(screen: &str) -> String {
    function(&rows(screen)[0].1).to_string()
}

fn total_time(screen: &str, name: &str) -> f64 {
    rows(screen)
        .iter()
        .filter(|(_, f)| function(f) == name)
        .map(|(n, _)| n[3])
        .sum()
}

/// Starts top on split.py (`budget` CPU seconds, its measured split kept in `progress`) in a
/// fresh pane, after a line that must survive it.
fn start_top(test: &str, budget: &str, progress: &std::path::Path) -> Tmux {
    let tmux = Tmux::start(test);
    tmux.keys(&["clear; echo BEFORE-TOP-MARKER", "Enter"]);
    let cmd = format!(
        "SPLIT_PROGRESS={} {} top --lines --refresh 0.5 -r {RATE} -- {} {} {budget}",
        progress.display(),
        prof_bpf().display(),
        python("3.12").display(),
        fixture("split.py").display()
    );
    tmux.keys(&[&cmd, "Enter"]);
    tmux.wait_for(15, "the first refresh", |s| {
        s.contains("Total Samples") && rows(s).len() >= 5
    });
    tmux
}

/// The pid of the program the pane's shell runs (top), and of that program's child (the
/// launched fixture), from the kernel's children lists.
fn top_and_child(tmux: &Tmux) -> (u32, Option<u32>) {
    let out = tmux.cmd(&["display-message", "-p", "-t", "top", "#{pane_pid}"]);
    let shell: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let top = *children(shell).first().expect("top runs in the pane");
    (top, children(top).first().copied())
}

/// Asserts top left the alternate screen and the shell's earlier output is back.
fn assert_terminal_restored(tmux: &Tmux) {
    assert_terminal_restored_after(tmux, "quit");
}

/// Asserts top stopped for `why` (`quit` or `the program exited`) and gave the terminal back.
fn assert_terminal_restored_after(tmux: &Tmux, why: &str) {
    let stopped = format!("stopped ({why})");
    let s = tmux.wait_for(10, "top to exit", |s| s.contains(&stopped));
    assert!(
        !tmux.alternate_screen(),
        "still on the alternate screen:\n{s}"
    );
    assert!(s.contains("BEFORE-TOP-MARKER"), "earlier output gone:\n{s}");
    assert!(!s.contains("%Own"), "top's table left behind:\n{s}");
    // The shell reads lines again (raw mode is off): a typed command runs.
    tmux.keys(&["echo AFTER-TOP-$((6*7))", "Enter"]);
    tmux.wait_for(5, "the shell to answer", |s| s.contains("AFTER-TOP-42"));
}

#[test]
fn top_shows_the_split_sorts_toggles_lines_and_quits() {
    if !privileged() {
        return;
    }
    let progress = scratch_dir("top_main").join("split.json");
    let tmux = start_top("top_main", "20", &progress);
    assert!(tmux.alternate_screen());
    // Let at least 2 s of samples accumulate.
    let s = tmux.wait_for(20, "2000 samples", |s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Total Samples "))
            .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
            .is_some_and(|n| n >= 2000)
    });
    assert!(
        s.contains("python3.12 (pid ") && s.contains("Threads 1"),
        "{s}"
    );
    // One thread running pure Python holds the GIL whenever it is sampled in Python code.
    let gil: f64 = s
        .lines()
        .find_map(|l| l.split("   GIL ").nth(1))
        .and_then(|g| g.trim_end().trim_end_matches('%').parse().ok())
        .unwrap_or_else(|| panic!("no GIL % in the header:\n{s}"));
    assert!(gil >= 90.0, "GIL {gil}% for a single busy thread:\n{s}");

    // Each key sorts by its column, highest first. A screen is judged once it is whole: tmux
    // can capture a redraw half done, so each wait is for the header and the order together.
    let sorted_by = |s: &str, column: usize| {
        let values: Vec<f64> = rows(s).iter().map(|r| r.0[column]).collect();
        !values.is_empty() && values.windows(2).all(|w| w[0] >= w[1])
    };
    let sort = |key: &str, title: &str, column: usize| {
        tmux.keys(&[key]);
        tmux.wait_for(5, &format!("sorted by {title}"), |s| {
            s.contains(&format!("Sort: {title}")) && sorted_by(s, column)
        })
    };
    // 1 (%Own): the leaf burn leads. 2 (%Total): <module> (on every stack) leads.
    let s = sort("1", "%Own", 0);
    assert_eq!(first_function(&s), "burn", "{s}");
    let s = sort("2", "%Total", 1);
    assert_eq!(first_function(&s), "<module>", "{s}");
    // Sorted by %Total, heavy's and light's rows are on screen, whatever else the recording
    // holds (it starts with the interpreter, so import-time functions are in it too). Their
    // split over the whole run is the one split.py measured up to now.
    let (heavy, light) = (total_time(&s, "heavy"), total_time(&s, "light"));
    let share = 100.0 * heavy / (heavy + light);
    let measured: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&progress).unwrap()).unwrap();
    let (mh, ml) = (
        measured["heavy"].as_f64().unwrap(),
        measured["light"].as_f64().unwrap(),
    );
    let expected = 100.0 * mh / (mh + ml);
    eprintln!(
        "top: heavy {share:.1}% of heavy+light total time ({heavy}s + {light}s), {expected:.1}% measured ({mh:.2}s + {ml:.2}s)"
    );
    // The two readings are up to a refresh (0.5 s) apart; the share of the whole run moves
    // little in that time.
    let n = ((heavy + light) * RATE.parse::<f64>().unwrap()) as u64;
    check_share("top", "heavy", share, expected, n);
    let s = sort("3", "OwnTime", 2);
    assert_eq!(first_function(&s), "burn", "{s}");
    let s = sort("4", "TotalTime", 3);

    // l: line numbers off (one row per function), then on again. The fixture's rows are the
    // ones to look at: the interpreter's own start-up (importlib) has rows too.
    let fixture_rows = |s: &str| -> Vec<String> {
        rows(s)
            .into_iter()
            .map(|r| r.1)
            .filter(|f| f.contains("split.py"))
            .collect()
    };
    let with_lines = |s: &str| {
        let labels = fixture_rows(s);
        !labels.is_empty() && labels.iter().all(|f| f.contains("split.py:"))
    };
    assert!(with_lines(&s), "{s}");
    // As with the sort keys, a screen counts once it is whole: header and rows agree.
    let without_lines = |s: &str| {
        let labels = fixture_rows(s);
        !labels.is_empty() && labels.iter().all(|f| f.ends_with("split.py)"))
    };
    tmux.keys(&["l"]);
    let s = tmux.wait_for(5, "lines off", |s| {
        s.contains("Line numbers: off") && without_lines(s)
    });
    assert!(s.contains("Function (file)"), "{s}");
    let labels = fixture_rows(&s);
    let burns = labels.iter().filter(|f| function(f) == "burn").count();
    assert_eq!(burns, 1, "one row per function: {labels:?}");
    tmux.keys(&["l"]);
    tmux.wait_for(5, "lines on", |s| {
        s.contains("Line numbers: on") && with_lines(s)
    });

    // n without --native: native frames are recorded from the start; the key says so.
    tmux.keys(&["n"]);
    tmux.wait_for(5, "the native notice", |s| {
        s.contains("run `top --native` to see them")
    });

    tmux.keys(&["q"]);
    assert_terminal_restored(&tmux);
}

/// Quits with `key`: the terminal is restored and the launched program is ended with it.
fn quits_on(key: &str, test: &str) {
    let progress = scratch_dir(test).join("split.json");
    let tmux = start_top(test, "60", &progress);
    let (_, child) = top_and_child(&tmux);
    let child = child.expect("top launched the program");
    tmux.keys(&[key]);
    assert_terminal_restored(&tmux);
    assert!(
        thread_state(child, child).is_none(),
        "the launched program {child} runs on after top quit"
    );
}

#[test]
fn top_ctrl_c_restores_the_terminal() {
    if !privileged() {
        return;
    }
    quits_on("C-c", "top_ctrl_c");
}

#[test]
fn top_esc_restores_the_terminal() {
    if !privileged() {
        return;
    }
    quits_on("Escape", "top_esc");
}

/// SIGTERM (a shutdown, `kill`) stops top like `q`: the terminal is given back.
#[test]
fn top_sigterm_restores_the_terminal() {
    if !privileged() {
        return;
    }
    let progress = scratch_dir("top_sigterm").join("split.json");
    let tmux = start_top("top_sigterm", "60", &progress);
    let (top, _) = top_and_child(&tmux);
    // SAFETY: kill with a pid read from the kernel's children list of our own tmux pane.
    unsafe { libc::kill(top as i32, libc::SIGTERM) };
    assert_terminal_restored(&tmux);
}

/// A terminal that goes away under top (a closed window, a dropped ssh session): top stops, and
/// so does the program it launched, instead of running on with nobody to show it to.
#[test]
fn top_stops_when_its_terminal_closes() {
    if !privileged() {
        return;
    }
    let progress = scratch_dir("top_hangup").join("split.json");
    let tmux = start_top("top_hangup", "600", &progress);
    let (top, child) = top_and_child(&tmux);
    let child = child.expect("top launched the fixture");
    drop(tmux); // kills the tmux server: the pane's terminal closes
    let gone = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.rsplit(')').next().unwrap_or("").split_whitespace().next() == Some("Z"))
            .unwrap_or(true)
    };
    let started = std::time::Instant::now();
    while !(gone(top) && gone(child)) {
        if started.elapsed() > std::time::Duration::from_secs(20) {
            // Do not leave them running for the tests after this one.
            // SAFETY: pids read from our own tmux pane's children lists.
            unsafe {
                libc::kill(top as i32, libc::SIGKILL);
                libc::kill(child as i32, libc::SIGKILL);
            }
            panic!(
                "20 s after its terminal closed top is {}, its program {}",
                if gone(top) { "gone" } else { "still running" },
                if gone(child) { "gone" } else { "still running" }
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// When the launched program exits, so does top, and the terminal is given back.
#[test]
fn top_ends_when_the_program_exits() {
    if !privileged() {
        return;
    }
    let progress = scratch_dir("top_exit").join("split.json");
    let tmux = start_top("top_exit", "1.5", &progress);
    assert_terminal_restored_after(&tmux, "the program exited");
}

#[test]
fn top_by_pid_leaves_the_process_running() {
    if !privileged() {
        return;
    }
    // Running Python code once it says so.
    let mut target = Fixture::start(&python("3.11"), "split.py", &["20"], &[]);
    let pid = target.pid;
    let tmux = Tmux::start("top_pid");
    tmux.keys(&["clear; echo BEFORE-TOP-MARKER", "Enter"]);
    tmux.keys(&[
        &format!(
            "{} top --refresh 0.5 -r {RATE} --pid {pid}",
            prof_bpf().display()
        ),
        "Enter",
    ]);
    let s = tmux.wait_for(15, "heavy and light", |s| {
        rows(s).iter().any(|r| function(&r.1) == "heavy")
            && rows(s).iter().any(|r| function(&r.1) == "light")
    });
    assert!(
        s.contains(&format!("python3.11 (pid {pid}, CPython 3.11)")),
        "{s}"
    );
    // Line numbers are off by default: one row per function.
    assert!(s.contains("Function (file)"), "{s}");
    tmux.keys(&["q"]);
    assert_terminal_restored(&tmux);
    // Attached, not launched: the program goes on.
    assert!(target.alive(), "top ended the process it watched");
}

/// `top --all`: a Python process that starts after top does shows up by its function, and
/// quitting leaves it running.
#[test]
fn top_all_takes_in_a_process_started_later() {
    if !privileged() {
        return;
    }
    let tmux = Tmux::start("top_all");
    tmux.keys(&["clear; echo BEFORE-TOP-MARKER", "Enter"]);
    tmux.keys(&[
        &format!("{} top --all --refresh 0.5 -r {RATE}", prof_bpf().display()),
        "Enter",
    ]);
    tmux.wait_for(15, "the all-processes header", |s| {
        s.contains("prof-bpf top: all Python processes")
    });
    // By %Total over the last refresh: whatever else runs on the machine, a busy process's
    // function is near the top.
    tmux.keys(&["2"]);
    let mut busy = Fixture::start(&python("3.13"), "busy.py", &["gamma", "30"], &[]);
    let s = tmux.wait_for(15, "gamma", |s| {
        rows(s).iter().any(|r| function(&r.1) == "gamma")
    });
    assert!(s.contains("Total Samples"), "{s}");
    tmux.keys(&["q"]);
    assert_terminal_restored(&tmux);
    assert!(busy.alive(), "top ended a process it watched");
}

/// `top -s` on a multiprocessing pool: the four forked workers' functions are rows, counted with
/// the parent's (whose own Python only waits for them). Without `-s` no worker is watched, and
/// none of them shows.
#[test]
fn top_subprocesses_shows_the_pool_workers() {
    if !privileged() {
        return;
    }
    let tmux = Tmux::start("top_subprocesses");
    tmux.keys(&["clear; echo BEFORE-TOP-MARKER", "Enter"]);
    let cmd = format!(
        "cd {} && {} top -s --refresh 0.5 -r {RATE} -- {} pool.py 3",
        fixture("pool.py").parent().unwrap().display(),
        prof_bpf().display(),
        python("3.12").display(),
    );
    tmux.keys(&[&cmd, "Enter"]);
    tmux.wait_for(15, "the header", |s| s.contains("and its subprocesses"));
    // By %Total: each worker's function is under `burn`, which has all the own time.
    tmux.keys(&["2"]);
    // Each worker burns 3 s of CPU, the four of them on two CPUs: each shows for a few
    // refreshes. Rows stay while their time counts, so one screen can hold all four.
    let seen = std::cell::RefCell::new(std::collections::BTreeSet::new());
    tmux.wait_for(40, "a row for each of the four workers", |s| {
        let mut seen = seen.borrow_mut();
        for (_, f) in rows(s) {
            if function(&f).starts_with("worker_") {
                seen.insert(function(&f).to_string());
            }
        }
        seen.len() == 4
    });
    let (_, launched) = top_and_child(&tmux);
    let launched = launched.expect("top launched pool.py");
    let workers = children(launched);
    assert_eq!(workers.len(), 4, "the pool's workers: {workers:?}");
    tmux.keys(&["q"]);
    assert_terminal_restored(&tmux);
    // Quitting stops what top launched: the pool and its workers, which would otherwise burn
    // on for seconds.
    let started = Instant::now();
    while workers
        .iter()
        .any(|w| std::path::Path::new(&format!("/proc/{w}")).exists())
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "workers left running: {workers:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// The pids of `pid`'s children, from the kernel's list.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// `top --native` on numpy FFT work: pocketfft's native frames are rows of their own, and `n`
/// hides them (Python frames only) and shows them again.
#[test]
fn top_native_shows_and_hides_native_frames() {
    if !privileged() {
        return;
    }
    let numpy = root().join("target/numpy-venv/bin/python");
    assert!(numpy.exists(), "scripts/setup makes {}", numpy.display());
    let tmux = Tmux::start("top_native");
    tmux.keys(&["clear; echo BEFORE-TOP-MARKER", "Enter"]);
    tmux.keys(&[
        &format!(
            "{} top --native --refresh 0.5 -r {RATE} -- {} {} 30",
            prof_bpf().display(),
            numpy.display(),
            fixture("numpy_fft.py").display()
        ),
        "Enter",
    ]);
    // pocketfft is C++: its native frames are `pocketfft::...` functions.
    let native_rows = |s: &str| rows(s).iter().any(|r| r.1.contains("pocketfft::"));
    tmux.wait_for(20, "pocketfft rows", |s| {
        native_rows(s) && s.contains("Native frames: on")
    });
    tmux.keys(&["n"]);
    // Hidden, the FFT time is the own time of numpy's Python function that calls pocketfft.
    let s = tmux.wait_for(10, "Python frames only", |s| {
        s.contains("Native frames: off")
            && !native_rows(s)
            && rows(s)
                .first()
                .is_some_and(|r| function(&r.1) == "_raw_fft")
    });
    assert!(!s.contains("_PyEval_EvalFrameDefault"), "{s}");
    tmux.keys(&["n"]);
    tmux.wait_for(10, "pocketfft rows again", |s| {
        native_rows(s) && s.contains("Native frames: on")
    });
    tmux.keys(&["q"]);
    assert_terminal_restored(&tmux);
}

/// Issue 18: the collector's time shows as a `<GC>` row in top, its own time over the run the
/// share of the CPU time gc_cycles.py measured in gc.collect().
#[test]
fn top_shows_the_garbage_collector() {
    if !privileged() {
        return;
    }
    let progress = scratch_dir("top_gc").join("gc.json");
    let tmux = Tmux::start("top_gc");
    let cmd = format!(
        "GC_PROGRESS={} {} top --refresh 0.5 -r {RATE} -- {} {} 20",
        progress.display(),
        prof_bpf().display(),
        python("3.12").display(),
        fixture("gc_cycles.py").display()
    );
    tmux.keys(&[&cmd, "Enter"]);
    let main_time = |s: &str| {
        rows(s)
            .iter()
            .filter(|(_, f)| f.starts_with("main (") && f.contains("gc_cycles.py"))
            .map(|(n, _)| n[3])
            .sum::<f64>()
    };
    let s = tmux.wait_for(30, "3 s of main with a <GC> row", |s| {
        main_time(s) >= 3.0 && rows(s).iter().any(|(_, f)| f == "<GC>")
    });
    let gc: f64 = rows(&s)
        .iter()
        .filter(|(_, f)| f == "<GC>")
        .map(|(n, _)| n[2])
        .sum();
    let main = main_time(&s);
    let measured: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&progress).unwrap()).unwrap();
    let (mg, mt) = (
        measured["gc"].as_f64().unwrap(),
        measured["total"].as_f64().unwrap(),
    );
    let (share, expected) = (100.0 * gc / main, 100.0 * mg / mt);
    eprintln!(
        "top: <GC> {share:.1}% of main's time ({gc}s of {main}s), {expected:.1}% measured ({mg:.2}s of {mt:.2}s)"
    );
    // The two readings are up to a refresh apart, and top's times are rounded to 10 ms.
    let n = (main * RATE.parse::<f64>().unwrap()) as u64;
    check_share("top_gc", "<GC>", share, expected, n);
    tmux.keys(&["q"]);
}

/// `cmd` as one shell command line, each word single-quoted.
fn shell_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|w| format!("'{}'", w.to_string_lossy().replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `top --async-aware` on CPython 3.14 (Debian forky's, in a container): each asyncio task is a
/// row, `task NAME`, and the CPU tasks' rows split their time as async_tasks.py measured it.
#[test]
fn top_async_aware_shows_each_task_with_its_share() {
    top_async("forky-3.14", "top_async");
}

/// The same on 3.13, whose tasks are found through their coroutines' frames.
#[test]
fn top_async_aware_shows_each_task_with_its_share_3_13() {
    top_async("3.13", "top_async_3_13");
}

fn top_async(which: &str, test: &str) {
    if !privileged() {
        return;
    }
    let interp = interpreter(which);
    let name = format!("prof-bpf-{test}-{}.json", std::process::id());
    // The fixture writes /tmp/NAME inside its root: the test reads it there.
    let progress = match &interp {
        Interp::Container { root, .. } => root.join("tmp").join(&name),
        Interp::Host(_) => std::path::PathBuf::from("/tmp").join(&name),
    };
    let _ = std::fs::remove_file(&progress);
    let tmux = Tmux::start(test);
    // The fixture's lines go to /dev/null, not over top's screen.
    let cmd = format!(
        "ASYNC_PROGRESS=/tmp/{name} {} top --async-aware --refresh 0.5 -r {RATE} -- sh -c 'exec \"$@\" >/dev/null' sh {}",
        prof_bpf().display(),
        shell_line(&interp.command("async_tasks.py", &["60"]))
    );
    tmux.keys(&[&cmd, "Enter"]);
    // Task rows have no time of their own: sorted by total time, they come first.
    tmux.wait_for(30, "top's table", |s| s.contains("%Own"));
    tmux.keys(&["4"]);
    let time_of = |s: &str, label: &str| -> f64 {
        rows(s)
            .iter()
            .filter(|(_, f)| f == label)
            .map(|(n, _)| n[3])
            .sum()
    };
    let s = tmux.wait_for(60, "3 s in the splitter and steady task rows", |s| {
        time_of(s, "task splitter") + time_of(s, "task steady") >= 3.0
    });
    let (splitter, steady) = (time_of(&s, "task splitter"), time_of(&s, "task steady"));
    let measured: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&progress).unwrap()).unwrap();
    let secs = |k: &str| measured[k].as_f64().unwrap();
    let (split_m, steady_m) = (secs("part_a") + secs("part_b"), secs("steady"));
    let share = 100.0 * splitter / (splitter + steady);
    let expected = 100.0 * split_m / (split_m + steady_m);
    eprintln!(
        "top: task splitter {share:.1}% of the two tasks ({splitter}s, {steady}s), {expected:.1}% measured ({split_m:.2}s, {steady_m:.2}s)"
    );
    // The two readings are up to a refresh apart, and top's times are rounded to 10 ms.
    let n = ((splitter + steady) * RATE.parse::<f64>().unwrap()) as u64;
    check_share(test, "task splitter", share, expected, n);
    // The root task, which awaits the others (its row holds theirs).
    assert!(
        rows(&s).iter().any(|(_, f)| f == "task main"),
        "no row for task main:\n{s}"
    );
    tmux.keys(&["q"]);
    let _ = std::fs::remove_file(&progress);
}
