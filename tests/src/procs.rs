//! Processes a test runs and waits on by readiness, never by a sleep of wall time: fixtures that
//! say when they are in the state the test needs, recordings that say when they sample, the
//! kernel program's target map for when a process is registered, and the CPU time a process
//! has used.

use std::{
    io::{BufRead, BufReader, Write as _},
    path::Path,
    process::{Child, ChildStdout, Command, ExitStatus, Stdio},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{fixture, prof_bpf};

/// How long any readiness wait may take before the test fails: far above what a loaded
/// 2-CPU machine needs, short enough that a hang is reported.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A fixture the test starts itself (not launched by prof-bpf), killed when dropped. Its first
/// line on stdout is a JSON object with its pid: it runs Python code from then on. Started with
/// `Fixture::waiting`, it then waits for the test's go (`Fixture::go`, a line on its stdin)
/// before it works, so all of its measured work falls inside a recording.
pub struct Fixture {
    child: Child,
    stdout: BufReader<ChildStdout>,
    pub pid: u32,
    /// The first line, parsed.
    pub ready: Value,
}

impl Fixture {
    /// Starts `python FIXTURE ARGS` with `env` and returns once it said it is ready.
    pub fn start(python: &Path, name: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn(python, name, args, env, false)
    }

    /// Like `start`, but the fixture then waits for `go` before it works.
    pub fn waiting(python: &Path, name: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn(python, name, args, env, true)
    }

    fn spawn(python: &Path, name: &str, args: &[&str], env: &[(&str, &str)], go: bool) -> Self {
        let mut cmd = Command::new(python);
        cmd.arg(fixture(name))
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .env("FIXTURE_READY", "1");
        if go {
            cmd.env("FIXTURE_GO", "1");
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let ready: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{name} said {line:?} instead of its pid: {e}"));
        let pid = ready["pid"].as_u64().expect("the ready line has the pid") as u32;
        Self {
            child,
            stdout,
            pid,
            ready,
        }
    }

    /// blocked.py, once it says both workers stand on their blocking lines and the kernel shows
    /// every thread asleep in its blocking call: main and the sleeper in a sleep (not a futex:
    /// not waiting for the GIL), the locker in a futex. Once the other two sleep nobody holds
    /// the GIL, so the locker's futex is its lock's.
    pub fn blocked(python: &Path) -> Self {
        let fixture = Self::start(python, "blocked.py", &[], &[("BLOCKED_SECONDS", "60")]);
        let pid = fixture.pid;
        let (sleeper, locker) = (
            fixture.ready["sleeper"].as_u64().unwrap() as u32,
            fixture.ready["locker"].as_u64().unwrap() as u32,
        );
        let asleep = |tid: u32, futex: bool| {
            thread_state(pid, tid) == Some('S')
                && blocked_in(pid, tid).is_some_and(|n| n >= 0 && (n == SYS_FUTEX) == futex)
        };
        let started = Instant::now();
        while !(asleep(pid, false) && asleep(sleeper, false) && asleep(locker, true)) {
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "blocked.py's threads never all blocked"
            );
            thread::sleep(Duration::from_millis(2));
        }
        fixture
    }

    /// Tells a waiting fixture to start its work.
    pub fn go(&mut self) {
        let stdin = self.child.stdin.as_mut().expect("the fixture's stdin");
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }

    /// The next line the fixture prints.
    pub fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line
    }

    /// Sends `signal` to the fixture.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill with the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Freezes the fixture (SIGSTOP) and waits until the kernel shows it stopped: its CPU time
    /// stands still from then on.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
        let started = Instant::now();
        while thread_state(self.pid, self.pid) != Some('T') {
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "the fixture did not stop"
            );
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// Whether the fixture is still running (or stopped), not exited.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the fixture to exit; returns everything it printed after its ready line.
    pub fn finish(mut self) -> String {
        let mut rest = String::new();
        for line in (&mut self.stdout).lines() {
            rest.push_str(&line.unwrap());
            rest.push('\n');
        }
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the fixture failed ({status}): {rest}");
        rest
    }

    /// Kills the fixture and reaps it: its pid is gone when this returns.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Ends a fixture that works on: SIGTERM (it prints its measurement so far and exits),
    /// and SIGCONT in case it was frozen. Returns what it printed after its ready line.
    pub fn terminate(self) -> String {
        self.signal(libc::SIGTERM);
        self.signal(libc::SIGCONT);
        self.finish()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The kernel's state letter of thread `tid` of `pid`.
pub fn thread_state(pid: u32, tid: u32) -> Option<char> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ")?.1.chars().next())
}

/// The system call a thread is blocked in (`/proc/PID/task/TID/syscall`), if it is.
pub fn blocked_in(pid: u32, tid: u32) -> Option<i64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// x86_64's futex(2): a lock wait, and also a wait for the GIL.
const SYS_FUTEX: i64 = 202;

/// A `prof-bpf` command the test started, with its stdout and stderr collected as it runs.
pub struct Recording {
    child: Child,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<String>>,
}

/// Runs `cmd`, a `prof-bpf record` that launches a fixture which waits for its go (a line on
/// stdin, with FIXTURE_GO set: the fixture inherits prof-bpf's stdin): sends it once prof-bpf
/// says it samples, and returns everything as `Command::output` would.
pub fn output_with_go(mut cmd: Command) -> std::process::Output {
    let mut child = cmd
        .env("FIXTURE_GO", "1")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting prof-bpf");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            break; // ended before it sampled: the caller sees why in stderr
        }
        seen.push_str(&line);
        if line.starts_with("prof-bpf: sampling ") {
            break;
        }
    }
    let mut stdin = child.stdin.take().unwrap();
    let _ = std::io::Write::write_all(&mut stdin, b"go\n");
    drop(stdin);
    let rest = thread::spawn(move || {
        let mut all = seen;
        let _ = std::io::Read::read_to_string(&mut stderr, &mut all);
        all
    });
    let mut out = child.wait_with_output().unwrap();
    out.stderr = rest.join().unwrap().into_bytes();
    out
}

/// How a `Recording` ended.
pub struct Ended {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Recording {
    /// Starts `prof-bpf ARGS` and returns once it says it samples (`prof-bpf: sampling ...`,
    /// printed once the target is registered with the kernel program), so whatever the test
    /// does next is recorded.
    pub fn start(args: &[&str]) -> Self {
        Self::start_in(args, None)
    }

    /// `start` in directory `dir`.
    pub fn start_in(args: &[&str], dir: Option<&Path>) -> Self {
        let mut cmd = Command::new(prof_bpf());
        cmd.args(args);
        if let Some(dir) = dir {
            cmd.current_dir(dir);
        }
        Self::spawn(cmd)
    }

    /// `start` of a command that runs prof-bpf (through `capsh`, `sudo`, ...).
    pub fn spawn(mut cmd: Command) -> Self {
        let args = format!("{cmd:?}");
        cmd.env_remove("RUST_BACKTRACE")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("starting prof-bpf");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut seen = String::new();
        loop {
            let mut line = String::new();
            if stderr.read_line(&mut line).unwrap() == 0 {
                let _ = child.kill();
                panic!("{args} ended before it sampled:\n{seen}");
            }
            seen.push_str(&line);
            if line.starts_with("prof-bpf: sampling ") {
                break;
            }
        }
        let mut out = child.stdout.take().unwrap();
        let stdout = thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = std::io::Read::read_to_end(&mut out, &mut bytes);
            bytes
        });
        let stderr = thread::spawn(move || {
            let mut all = seen;
            for line in stderr.lines() {
                all.push_str(&line.unwrap_or_default());
                all.push('\n');
            }
            all
        });
        Self {
            child,
            stdout: Some(stdout),
            stderr: Some(stderr),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until this recording's kernel program has `pid` among its targets (found by a
    /// scan, with `--all` or `--subprocesses`): from then on every sample of it is recorded.
    pub fn wait_registered(&self, pid: u32) {
        let started = Instant::now();
        while !crate::bpf::registered(self.pid(), pid) {
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "prof-bpf (pid {}) did not register pid {pid}",
                self.pid()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether prof-bpf is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Serves the go-file handshake (`cpu.wait_for_go_file` in the fixtures) of processes the
    /// test does not start itself, a pool's workers or an exec'd child, until prof-bpf ends:
    /// each writes `DIR/PID.ready` and waits for `DIR/PID.go`, created here once this
    /// recording has registered PID. Returns the pids served.
    pub fn serve_go_files(&mut self, dir: &Path) -> Vec<u32> {
        let mut served = Vec::new();
        let started = Instant::now();
        while self.running() {
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "the recording did not end in {}s",
                READY_TIMEOUT.as_secs()
            );
            for entry in std::fs::read_dir(dir).unwrap().filter_map(Result::ok) {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(pid) = name.strip_suffix(".ready").and_then(|p| p.parse().ok()) else {
                    continue;
                };
                if served.contains(&pid) {
                    continue;
                }
                self.wait_registered(pid);
                std::fs::write(dir.join(format!("{pid}.go")), b"").unwrap();
                served.push(pid);
            }
            thread::sleep(Duration::from_millis(2));
        }
        served
    }

    /// Sends `signal` and waits for the end.
    pub fn stop(self, signal: i32) -> Ended {
        // SAFETY: kill with the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        self.wait()
    }

    /// Waits for the end (the target exited or the duration ended).
    pub fn wait(mut self) -> Ended {
        let status = self.child.wait().unwrap();
        Ended {
            status,
            stdout: self.stdout.take().unwrap().join().unwrap(),
            stderr: self.stderr.take().unwrap().join().unwrap(),
        }
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        if self.stderr.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// CPU seconds `pid`'s live threads have used, to the nanosecond (`/proc/PID/task/*/schedstat`,
/// the same clock as `time.thread_time()`); 0 for a process that is gone.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum::<u64>() as f64
        / 1e9
}

/// Waits until `pid` has used `seconds` more CPU time than now: a measured amount of work to
/// sample, however loaded the machine is (not a sleep of wall time).
pub fn wait_for_cpu(pid: u32, seconds: f64) {
    let start = cpu_seconds(pid);
    let started = Instant::now();
    while cpu_seconds(pid) - start < seconds {
        assert!(
            started.elapsed() < READY_TIMEOUT,
            "pid {pid} used {:.2}s of CPU in {}s, not {seconds}s",
            cpu_seconds(pid) - start,
            READY_TIMEOUT.as_secs()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Seconds the hypervisor has taken from this machine's CPUs since boot, summed over them
/// (`steal` in /proc/stat), and the number of CPUs: time a thread on those CPUs could not run.
pub fn stolen_seconds() -> (f64, usize) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks = |line: &str| -> f64 {
        line.split_whitespace()
            .nth(8)
            .and_then(|t| t.parse().ok())
            .unwrap_or(0.0)
    };
    let all = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .map_or(0.0, ticks);
    let cpus = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .count();
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (all / hz, cpus.max(1))
}
