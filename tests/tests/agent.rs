//! `prof-bpf agent` end to end, as root, against a real OpenTelemetry Collector (0.141, built by
//! scripts/setup-collector, whose file exporter writes every profiles request it receives):
//! processes of two Python versions exported every interval with their resources and splits
//! (issue 20), Pythons that start after the agent profiled from their first moments, a
//! collector that goes away and comes back, and a Python in a container's cgroup.
//! Requests are read back from the collector's files with prof-bpf's own message types, and
//! compared with what each fixture measured of itself.

use std::{
    collections::BTreeMap,
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use prof_bpf_tests::*;
use profiler_userspace::output::otlp::{
    ResolvedSample,
    proto::{ExportProfilesServiceRequest, any_value},
    resolve,
};
use prost::Message as _;

/// The collector scripts/setup-collector builds, built now if it is missing.
fn collector_binary() -> PathBuf {
    let cache = std::env::var_os("PROF_BPF_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/prof-bpf"));
    let bin = cache.join("otelcol/otelcol-prof-bpf");
    if !bin.is_file() {
        let status = Command::new(root().join("scripts/setup-collector"))
            .status()
            .expect("running scripts/setup-collector");
        assert!(status.success(), "scripts/setup-collector failed");
    }
    assert!(bin.is_file(), "{} is missing", bin.display());
    bin
}

/// A running test collector writing each request to `dir/profiles-NNNNNN.pb`.
struct Collector {
    child: Child,
    log: PathBuf,
    http: String,
    grpc: String,
}

impl Collector {
    /// Starts it on `http_port` (0: one the system picks) and waits until it listens.
    fn start(dir: &Path, http_port: u16) -> Collector {
        let log = dir.join(format!("collector-{}.log", now_ms()));
        let child = Command::new(collector_binary())
            .args(["--config"])
            .arg(root().join("tests/collector/config.yaml"))
            .arg("--feature-gates=service.profilesSupport")
            .env("OTELCOL_GRPC_PORT", "0")
            .env("OTELCOL_HTTP_PORT", http_port.to_string())
            .env("OTELCOL_OUT_DIR", dir.join("received"))
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting the collector");
        // Owned (and so killed on a panic) before it is waited for.
        let mut collector = Collector {
            child,
            log,
            http: String::new(),
            grpc: String::new(),
        };
        let started = Instant::now();
        loop {
            let text = fs::read_to_string(&collector.log).unwrap_or_default();
            if text.contains("Everything is ready") {
                let endpoint = |server: &str| {
                    text.lines()
                        .find(|l| l.contains(&format!("Starting {server} server")))
                        .and_then(|l| l.split("\"endpoint\": \"").nth(1))
                        .and_then(|r| r.split('"').next())
                        .unwrap_or_else(|| panic!("the collector names no {server} endpoint"))
                        .to_string()
                };
                collector.http = endpoint("HTTP");
                collector.grpc = endpoint("GRPC");
                return collector;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the collector did not start: {text}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn port(&self) -> u16 {
        self.http.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// Kills it outright, as a crash or an OOM kill would.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// The requests the collector wrote so far, in arrival order.
fn received(dir: &Path) -> Vec<ExportProfilesServiceRequest> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir.join("received"))
        .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "pb"));
    files.sort();
    files
        .iter()
        .map(|f| {
            ExportProfilesServiceRequest::decode(fs::read(f).unwrap().as_slice())
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()))
        })
        .collect()
}

/// A running agent, its stderr in a file.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        // A failed test must not leave it running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Agent {
    fn start(dir: &Path, endpoint: &str, args: &[&str]) -> Agent {
        Agent::start_with(dir, endpoint, args, "http/protobuf")
    }

    fn start_with(dir: &Path, endpoint: &str, args: &[&str], protocol: &str) -> Agent {
        let log = dir.join("agent.log");
        let child = Command::new(prof_bpf())
            .arg("agent")
            .args(args)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{endpoint}"))
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
            .env("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=e2e")
            .env_remove("RUST_BACKTRACE")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting prof-bpf agent");
        let agent = Agent { child, log };
        let started = Instant::now();
        while !agent.log().contains("profiling every Python process") {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the agent did not start: {}",
                agent.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
        // The first scan for processes follows at once.
        thread::sleep(Duration::from_millis(300));
        agent
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, as systemd stops it: the last window is exported. Returns the log.
    fn stop(mut self) -> String {
        // SAFETY: kill with the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().expect("waiting for the agent");
        let log = self.log();
        assert!(status.success(), "the agent failed: {log}");
        log
    }
}

/// The numbers of the agent's last line: (windows, samples, sent requests, sent samples,
/// dropped requests, dropped samples, rejected requests, rejected samples, failed attempts).
fn final_counts(log: &str) -> Vec<u64> {
    let line = log
        .lines()
        .find(|l| l.contains("prof-bpf agent: stopped after"))
        .unwrap_or_else(|| panic!("no final line in the agent's log: {log}"));
    let after = line.split_once(" s: ").unwrap().1;
    after
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect()
}

/// Every sample the collector received, resolved.
fn samples(requests: &[ExportProfilesServiceRequest]) -> Vec<ResolvedSample> {
    requests
        .iter()
        .flat_map(|r| resolve(r).unwrap_or_else(|e| panic!("a request does not resolve: {e}")))
        .collect()
}

/// The CPU samples of `pid`, as a collapsed profile.
fn folded_of(samples: &[ResolvedSample], pid: u32) -> Folded {
    let mut out = Folded::new();
    for s in samples
        .iter()
        .filter(|s| s.resource.get("process.pid") == Some(&pid.to_string()))
        .filter(|s| s.sample_type == "samples/count")
    {
        *out.entry(s.frames.clone()).or_default() += s.value as u64;
    }
    out
}

fn python_version(python: &Path) -> String {
    let out = Command::new(python)
        .args(["-c", "import platform; print(platform.python_version())"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn host_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

/// Issue 20: three Python processes of two versions for at least 30 s at `--interval 5`: five
/// exports or more reach the collector, and each process's profile carries its resource
/// attributes and the split it measured, within 3 points.
#[test]
fn agent_exports_each_process_with_its_resource_and_split() {
    if !privileged() {
        return;
    }
    let dir = scratch_dir("agent_exports");
    let collector = Collector::start(&dir, 0);
    let agent = Agent::start(&dir, &collector.http, &["--interval", "5", "-r", "1000"]);
    let started = Instant::now();
    let runs: Vec<(&str, Option<&str>)> =
        vec![("3.12", Some("checkout")), ("3.12", None), ("3.11", None)];
    let children: Vec<(Child, PathBuf, Option<&str>)> = runs
        .iter()
        .map(|&(version, service)| {
            let exe = python(version);
            let mut cmd = Command::new(&exe);
            cmd.arg(fixture("split.py")).arg("6").stdout(Stdio::piped());
            if let Some(s) = service {
                cmd.env("OTEL_SERVICE_NAME", s);
            }
            (cmd.spawn().expect("starting split.py"), exe, service)
        })
        .collect();
    let mut finished = Vec::new();
    for (child, exe, service) in children {
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        finished.push((pid, exe, service, measured_split(&stdout)));
    }
    // 30 s at least, and the fixtures' last samples in a window before the agent stops.
    let least = Duration::from_secs(30).max(started.elapsed() + Duration::from_secs(1));
    thread::sleep(least.saturating_sub(started.elapsed()));
    let log = agent.stop();
    let requests = received(&dir);
    eprintln!(
        "{} requests received in {:.1} s",
        requests.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        requests.len() >= 5,
        "only {} exports reached the collector: {log}",
        requests.len()
    );
    let all = samples(&requests);
    for (pid, exe, service, measured) in &finished {
        let what = format!("pid {pid} ({})", exe.display());
        let mine: Vec<&ResolvedSample> = all
            .iter()
            .filter(|s| s.resource.get("process.pid") == Some(&pid.to_string()))
            .collect();
        assert!(!mine.is_empty(), "{what}: no profile received");
        let r = &mine[0].resource;
        let name = exe.file_name().unwrap().to_string_lossy().into_owned();
        let expected = [
            ("host.name", host_name()),
            ("process.executable.name", name),
            (
                "process.executable.path",
                exe.to_string_lossy().into_owned(),
            ),
            ("process.runtime.name", "CPython".to_string()),
            ("process.runtime.version", python_version(exe)),
            ("service.name", service.unwrap_or("split").to_string()),
            ("deployment.environment", "e2e".to_string()),
        ];
        for (key, want) in expected {
            assert_eq!(
                r.get(key),
                Some(&want),
                "{what}: resource attribute {key}: {r:?}"
            );
        }
        let cmdline = &r["process.command_line"];
        assert!(cmdline.contains("split.py 6"), "{what}: {cmdline}");
        assert!(
            !r.contains_key("container.id"),
            "{what}: not in a container: {r:?}"
        );
        assert!(
            mine.iter()
                .all(|s| s.attributes.iter().any(|(k, _)| k == "thread.id")),
            "{what}: every sample names its thread"
        );
        check_split(&folded_of(&all, *pid), *measured, &what);
    }
    // The profiles say what they measure and when.
    let p = &requests[0].resource_profiles[0].scope_profiles[0].profiles[0];
    assert_eq!(p.period, 1_000_000, "1 kHz");
    assert!(p.duration_nano >= 1_000_000_000 && p.duration_nano <= 7_000_000_000);
    let health: Vec<&str> = p
        .attribute_indices
        .iter()
        .map(|&i| {
            let d = requests[0].dictionary.as_ref().unwrap();
            let a = &d.attribute_table[i as usize];
            d.string_table[a.key_strindex as usize].as_str()
        })
        .collect();
    assert!(
        health.contains(&"prof_bpf.agent.export.dropped_samples"),
        "the agent's health rides on each profile: {health:?}"
    );
    let counts = final_counts(&log);
    assert_eq!(counts[4], 0, "nothing dropped: {log}");
    drop(collector);
}

/// The collector is killed for 10 s and started again on its port: the agent samples on,
/// reconnects, and the outage's data is delivered afterwards or counted as dropped: every
/// sample the agent took is either in the collector's files or in its dropped count.
#[test]
fn agent_survives_a_collector_outage_and_loses_nothing_silently() {
    if !privileged() {
        return;
    }
    let dir = scratch_dir("agent_outage");
    let collector = Collector::start(&dir, 0);
    let port = collector.port();
    let agent = Agent::start(&dir, &collector.http, &["--interval", "2", "-r", "200"]);
    let busy = Killed(
        Command::new(python("3.12"))
            .arg(fixture("split.py"))
            .arg("1000")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let wait_for = |what: &str, ok: &dyn Fn() -> bool, within: Duration| {
        let t = Instant::now();
        while !ok() {
            assert!(t.elapsed() < within, "{what} within {within:?}");
            thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for(
        "two exports",
        &|| received(&dir).len() >= 2,
        Duration::from_secs(30),
    );
    collector.kill();
    let down = Instant::now();
    let before = received(&dir).len();
    thread::sleep(Duration::from_secs(10));
    let outage_log = agent.log();
    let collector = Collector::start(&dir, port);
    eprintln!("collector down for {:.1} s", down.elapsed().as_secs_f64());
    // Backoff is at most 8 s: the queued windows come within that and a few intervals.
    wait_for(
        "the outage's windows delivered",
        &|| received(&dir).len() >= before + 3,
        Duration::from_secs(30),
    );
    drop(busy);
    let log = agent.stop();
    // It sampled during the outage and said the exports failed.
    let outage_windows: Vec<&str> = outage_log
        .lines()
        .filter(|l| l.starts_with("prof-bpf agent: window:"))
        .skip(2)
        .collect();
    assert!(
        outage_windows
            .iter()
            .any(|l| !l.contains(" 0 samples") && !l.contains(" 0 failed attempts")),
        "no window with samples and failed exports during the outage: {outage_log}"
    );
    assert!(outage_log.contains("last export error"), "{outage_log}");
    let counts = final_counts(&log);
    let (taken, sent, dropped, rejected) = (counts[1], counts[3], counts[5], counts[7]);
    let requests = received(&dir);
    let arrived: i64 = samples(&requests)
        .iter()
        .filter(|s| s.sample_type == "samples/count")
        .map(|s| s.value)
        .sum();
    eprintln!(
        "{taken} samples taken, {sent} sent, {dropped} dropped, {rejected} rejected, {arrived} arrived in {} requests",
        requests.len()
    );
    assert_eq!(
        arrived as u64, sent,
        "what the agent counts as sent is what arrived"
    );
    assert_eq!(
        taken,
        sent + dropped + rejected,
        "every sample has one fate: {log}"
    );
    // The outage's windows arrived after the restart: profiles that began while it was down.
    let outage_start = now_ms() as u64 - down.elapsed().as_millis() as u64;
    let delivered_late = requests.iter().any(|r| {
        r.resource_profiles
            .iter()
            .flat_map(|rp| &rp.scope_profiles)
            .flat_map(|sp| &sp.profiles)
            .any(|p| {
                let start_ms = p.time_unix_nano / 1_000_000;
                start_ms > outage_start + 1000 && start_ms < outage_start + 9000
            })
    });
    assert!(
        delivered_late || dropped > 0,
        "the outage's data is neither delivered nor dropped"
    );
    // The health attributes of later profiles count the failed attempts.
    let failures = requests
        .iter()
        .flat_map(|r| {
            let d = r.dictionary.clone().unwrap();
            r.resource_profiles
                .iter()
                .flat_map(|rp| &rp.scope_profiles)
                .flat_map(|sp| &sp.profiles)
                .flat_map(|p| p.attribute_indices.clone())
                .filter_map(move |i| {
                    let a = &d.attribute_table[i as usize];
                    (d.string_table[a.key_strindex as usize] == "prof_bpf.agent.export.failures")
                        .then(|| match a.value.as_ref()?.value.as_ref()? {
                            any_value::Value::IntValue(n) => Some(*n),
                            _ => None,
                        })
                        .flatten()
                })
                .collect::<Vec<_>>()
        })
        .max()
        .unwrap_or(0);
    assert!(
        failures > 0,
        "the profiles after the outage report its failed exports"
    );
    drop(collector);
}

/// OTLP/gRPC (`OTEL_EXPORTER_OTLP_PROTOCOL=grpc`) to the collector's gRPC port, gzipped:
/// the process's profile arrives with its resource, and nothing is dropped.
#[test]
fn agent_exports_over_grpc() {
    if !privileged() {
        return;
    }
    let dir = scratch_dir("agent_grpc");
    let collector = Collector::start(&dir, 0);
    let agent = Agent::start_with(
        &dir,
        &collector.grpc,
        &["--interval", "1", "-r", "200"],
        "grpc",
    );
    assert!(agent.log().contains("(grpc, gzip)"), "{}", agent.log());
    let py = Killed(
        Command::new(python("3.12"))
            .arg(fixture("split.py"))
            .arg("1000")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = py.0.id();
    let started = Instant::now();
    let heavy = loop {
        let folded = folded_of(&samples(&received(&dir)), pid);
        let heavy = samples_in(&folded, "heavy");
        if heavy > 0 {
            break heavy;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "nothing of pid {pid} over gRPC"
        );
        thread::sleep(Duration::from_millis(200));
    };
    drop(py);
    let log = agent.stop();
    let counts = final_counts(&log);
    assert_eq!(
        (counts[4], counts[6]),
        (0, 0),
        "nothing dropped or rejected: {log}"
    );
    assert_eq!(counts[1], counts[3], "every sample sent: {log}");
    eprintln!("grpc: {heavy} samples in heavy() arrived; {log}");
    drop(collector);
}

/// Issue 20: Pythons that start after the agent are found from the kernel's exec and fork
/// reports as they happen, not by a /proc scan (the agent's is rare): one a shell starts and
/// the child it forks are each profiled from their first moments (at least 90 % of the CPU
/// each measured in its first function is in the exported profile), and each is out of the
/// kernel's targets soon after it ends.
#[test]
fn agent_profiles_pythons_started_after_it_from_their_first_moments() {
    if !privileged() {
        return;
    }
    let rate = 1000.0;
    let dir = scratch_dir("agent_newcomers");
    let collector = Collector::start(&dir, 0);
    let agent = Agent::start(&dir, &collector.http, &["--interval", "1", "-r", "1000"]);
    let profiler = agent.child.id();
    // `; true`: the shell forks and waits, the Python is its child.
    let out = Command::new("sh")
        .arg("-c")
        .arg("\"$0\" \"$1\" 0.3; true")
        .arg(python("3.12"))
        .arg(fixture("newcomer.py"))
        .output()
        .expect("starting the shell");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let measured = fixture_json(&out);
    let ended = Instant::now();
    let runs = [
        ("first_moments", &measured["pid"], &measured["cpu"]),
        (
            "child_first_moments",
            &measured["child_pid"],
            &measured["child_cpu"],
        ),
    ];
    let runs: Vec<(&str, u32, f64)> = runs
        .iter()
        .map(|(f, pid, cpu)| (*f, pid.as_u64().unwrap() as u32, cpu.as_f64().unwrap()))
        .collect();
    // Retired from the kernel's side when they exited, not at the next scan.
    for &(_, pid, _) in &runs {
        while registered(profiler, pid) {
            assert!(
                ended.elapsed() < Duration::from_secs(2),
                "pid {pid} still a target {:.1} s after it ended",
                ended.elapsed().as_secs_f64()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
    // Their last samples in a window before the agent stops.
    thread::sleep(Duration::from_millis(1500));
    let log = agent.stop();
    let all = samples(&received(&dir));
    for (function, pid, cpu) in runs {
        let got = samples_in(&folded_of(&all, pid), function) as f64;
        let expected = cpu * rate;
        eprintln!("newcomers: pid {pid}: {got} samples in {function}, {expected:.0} expected");
        assert!(
            got >= 0.9 * expected,
            "pid {pid}: {got} samples in {function}, but it measured {cpu:.3} s ({expected:.0} samples)\n{log}"
        );
    }
    drop(collector);
}

/// The cgroup v2 hierarchy's mount point.
fn cgroup2_mount() -> Option<PathBuf> {
    fs::read_to_string("/proc/self/mountinfo")
        .ok()?
        .lines()
        .find(|l| {
            l.split(" - ")
                .nth(1)
                .is_some_and(|r| r.starts_with("cgroup2 "))
        })
        .and_then(|l| l.split_whitespace().nth(4).map(PathBuf::from))
}

/// A Python moved into a cgroup named as Docker names a container's (under systemd,
/// `system.slice/docker-ID.scope`): its profile's resource has `container.id` = ID. A real
/// cgroup, made and entered as a runtime would; nothing stands in for the kernel.
#[test]
fn a_python_in_a_container_cgroup_has_its_container_id() {
    if !privileged() {
        return;
    }
    let Some(mount) = cgroup2_mount() else {
        panic!("no cgroup2 hierarchy mounted (/proc/self/mountinfo)");
    };
    let id: String = format!("{:016x}", now_ms() as u64)
        .repeat(4)
        .chars()
        .take(64)
        .collect();
    let slice = mount.join("system.slice");
    let scope = slice.join(format!("docker-{id}.scope"));
    fs::create_dir_all(&scope).expect("creating the container's cgroup");
    // Removed once its process is gone (declared before it, so dropped after it).
    struct Remove(PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = fs::remove_dir(&self.0);
        }
    }
    let _cgroup = Remove(scope.clone());
    let dir = scratch_dir("agent_container");
    let collector = Collector::start(&dir, 0);
    let agent = Agent::start(&dir, &collector.http, &["--interval", "1", "-r", "200"]);
    let py = Killed(
        Command::new(python("3.12"))
            .arg(fixture("split.py"))
            .arg("1000")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = py.0.id();
    fs::write(scope.join("cgroup.procs"), pid.to_string()).expect("moving the Python in");
    let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(cgroup.contains(&format!("docker-{id}.scope")), "{cgroup}");
    let started = Instant::now();
    let found = loop {
        let all = samples(&received(&dir));
        if let Some(s) = all
            .iter()
            .find(|s| s.resource.get("process.pid") == Some(&pid.to_string()))
        {
            break s.resource.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no profile of pid {pid}"
        );
        thread::sleep(Duration::from_millis(200));
    };
    drop(py);
    agent.stop();
    assert_eq!(found.get("container.id"), Some(&id), "{found:?}");
    drop(collector);
}

/// `record -f otlp` writes the request the agent would send, to a file: it decodes, resolves
/// and holds the split, and the real collector takes it as it is.
#[test]
fn record_writes_otlp_that_the_collector_accepts() {
    if !privileged() {
        return;
    }
    let dir = scratch_dir("record_otlp");
    let out = dir.join("split.otlp.pb");
    let result = record_fixture(
        &["-f", "otlp", "-r", "1000"],
        &out,
        &python("3.12"),
        "split.py",
        &["4"],
    );
    let bytes = fs::read(&out).unwrap();
    let request = ExportProfilesServiceRequest::decode(bytes.as_slice()).unwrap();
    let all = resolve(&request).unwrap();
    let pid: u32 = all[0].resource["process.pid"].parse().unwrap();
    let stdout = String::from_utf8_lossy(&result.stdout);
    check_split(
        &folded_of(&all, pid),
        measured_split(&stdout),
        "record -f otlp",
    );
    // POSTed as it is, the collector writes it out again: the same request, decoded.
    let collector = Collector::start(&dir, 0);
    let mut stream = std::net::TcpStream::connect(&collector.http).unwrap();
    use std::io::Write as _;
    write!(
        stream,
        "POST /v1development/profiles HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        bytes.len()
    )
    .unwrap();
    stream.write_all(&bytes).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let back = received(&dir);
    assert_eq!(back.len(), 1);
    let mut a: BTreeMap<Vec<String>, i64> = BTreeMap::new();
    for s in resolve(&back[0]).unwrap() {
        *a.entry(s.frames).or_default() += s.value;
    }
    let mut b: BTreeMap<Vec<String>, i64> = BTreeMap::new();
    for s in all {
        *b.entry(s.frames).or_default() += s.value;
    }
    assert_eq!(a, b, "the collector's copy holds the same samples");
    drop(collector);
}
