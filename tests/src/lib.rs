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

/// The split fixture (`split.py`): heavy() and light() burn CPU 3:1 and measure it.
/// How far a profiled share may be from the measured share, in percentage points.
pub const SPLIT_TOLERANCE_PP: f64 = 3.0;

/// The fixture's own measurement: CPU seconds spent in heavy() and light().
pub fn measured_split(stdout: &str) -> (f64, f64) {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.contains("heavy"))
        .expect("fixture printed its split");
    let v: serde_json::Value = serde_json::from_str(line).expect("fixture split is JSON");
    (v["heavy"].as_f64().unwrap(), v["light"].as_f64().unwrap())
}

/// Asserts the profile's heavy:light split matches the measured one, with enough samples, and
/// that burn's hot line is the hottest line.
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

/// CPU time `pid` has used (user + system, /proc/PID/stat fields 14 and 15).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (field(11) + field(12)) / ticks
}

/// Waits until `pid` has used `seconds` more CPU time than now: a measured amount of work to
/// sample, however loaded the machine is (not a sleep of wall time). Gives up after a minute.
pub fn wait_for_cpu(pid: u32, seconds: f64) {
    let start = cpu_seconds(pid);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while cpu_seconds(pid) - start < seconds && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Where `scripts/setup` caches the interpreters bookworm lacks (`scripts/setup-pythons`).
pub fn cache_dir() -> PathBuf {
    env::var_os("PROF_BPF_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/prof-bpf"))
}

/// An interpreter a test runs its fixtures with, and how it is run.
#[derive(Clone, Debug)]
pub enum Interp {
    /// An executable on the host: pyenv's, Debian's, the free-threaded 3.13t.
    Host(PathBuf),
    /// An executable inside a root file system (Debian forky's python3.14 and python3.15), run
    /// the way a container runs it: its own pid and mount namespace (`unshare --pid --mount
    /// --fork`), its own /proc, the fixtures bind-mounted at /mnt, chroot. The Python is pid 1
    /// there and a grandchild of the command started.
    Container { root: PathBuf, exe: String },
}

/// An interpreter by name: what `python()` knows, "3.13t" (free-threaded, built by
/// scripts/setup-pythons), and "forky-3.14" / "forky-3.15" (Debian forky's, in a container).
/// A missing interpreter fails the test with what to run: these are not optional.
pub fn interpreter(which: &str) -> Interp {
    let missing = |path: &Path| -> ! {
        panic!(
            "{} is missing: run scripts/setup (as root), which installs it with scripts/setup-pythons",
            path.display()
        )
    };
    match which.strip_prefix("forky-") {
        Some(version) => {
            let root = cache_dir().join("forky");
            let exe = format!("python{version}");
            let path = root.join("usr/bin").join(&exe);
            if !path.is_file() {
                missing(&path);
            }
            Interp::Container { root, exe }
        }
        None if which == "3.13t" => {
            let path = cache_dir().join("python3.13t/bin/python3.13t");
            if !path.is_file() {
                missing(&path);
            }
            Interp::Host(path)
        }
        None => Interp::Host(python(which)),
    }
}

impl Interp {
    /// The command that runs fixture `name` with `args` under this interpreter.
    pub fn command(&self, name: &str, args: &[&str]) -> Command {
        match self {
            Interp::Host(path) => {
                let mut c = Command::new(path);
                c.arg(fixture(name)).args(args);
                c
            }
            Interp::Container { root, exe } => {
                let script = format!(
                    "mount --bind '{}' '{root}/mnt' && mount -t proc proc '{root}/proc' && exec chroot '{root}' \"$@\"",
                    crate::root().join("tests/fixtures").display(),
                    root = root.display(),
                );
                let mut c = Command::new("unshare");
                c.args(["--pid", "--mount", "--fork", "--kill-child", "sh", "-c"])
                    .arg(script)
                    .args(["sh", exe])
                    .arg(self.fixture_path(name))
                    .args(args);
                c
            }
        }
    }

    /// Fixture `name` as the interpreter sees it (the file names in its frames).
    pub fn fixture_path(&self, name: &str) -> PathBuf {
        match self {
            Interp::Host(_) => fixture(name),
            Interp::Container { .. } => Path::new("/mnt").join(name),
        }
    }

    pub fn is_container(&self) -> bool {
        matches!(self, Interp::Container { .. })
    }

    /// The host pid of the Python that `started` (the command from `command`) runs: the process
    /// itself on the host, its Python descendant in a container. Waits up to 10 s for it.
    pub fn python_pid(&self, started: u32) -> u32 {
        let Interp::Container { exe, .. } = self else {
            return started;
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Some(pid) = descendants(started).into_iter().find(|&p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim_end() == exe)
            }) {
                return pid;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {exe} under pid {started} after 10 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Whether `frame`, a thread root frame of a profile (`--threads`), is the thread the
    /// fixture knows as `tid` (`threading.get_native_id()`: inside a container, its id there).
    pub fn is_thread_root(&self, frame: &str, tid: u64) -> bool {
        match self {
            Interp::Host(_) => frame.starts_with(&format!("thread {tid} (")),
            Interp::Container { .. } => {
                frame.starts_with("thread ")
                    && frame.ends_with(&format!(", tid {tid} in its namespace)"))
            }
        }
    }
}

/// Every descendant of `pid` (children, grandchildren, ...).
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parent = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        if let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
        {
            parent.insert(p, ppid);
        }
    }
    let mut out: Vec<u32> = parent
        .keys()
        .copied()
        .filter(|&p| {
            let mut at = p;
            while let Some(&up) = parent.get(&at) {
                if up == pid {
                    return true;
                }
                if up <= 1 {
                    return false;
                }
                at = up;
            }
            false
        })
        .collect();
    out.sort_unstable();
    out
}

/// Runs `prof-bpf record ARGS -o OUT -- COMMAND` to the end, COMMAND being fixture `name` with
/// `args` under `interp`, and asserts it succeeded. The fixture's stdout is the output's stdout;
/// prof-bpf's summary its stderr.
pub fn record_under(
    interp: &Interp,
    args: &[&str],
    out: &Path,
    name: &str,
    fixture_args: &[&str],
) -> Output {
    let command = interp.command(name, fixture_args);
    let result = Command::new(prof_bpf())
        .arg("record")
        .args(args)
        .arg("-o")
        .arg(out)
        .arg("--")
        .arg(command.get_program())
        .args(command.get_args())
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("running prof-bpf");
    assert!(
        result.status.success(),
        "prof-bpf record {args:?} -- {name} ({interp:?}) failed: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    result
}
