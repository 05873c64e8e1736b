#!/usr/bin/env python3
"""The agent's own cost over a long run (issue 20): CPU and memory of `prof-bpf agent`.

Usage (as root, from the repo root):
    bench/agent.py [SECONDS] [--baseline BINARY] [--rounds N]   (default 600 s per run)

Ten busy Python processes (pure-Python loops, across the installed CPython versions) run for the
whole benchmark while `prof-bpf agent --interval 10` profiles the machine and exports to the test
OpenTelemetry Collector (scripts/setup-collector) on 127.0.0.1, for SECONDS at each of 100 and
1000 samples/s. Every 10 s it reads the agent's CPU time and resident memory from /proc; the
collector's file exporter counts what arrived. CPU is the agent process's user + system time
(its userspace: naming, aggregation, encoding, export), as a share of one CPU; the kernel time
the profiled processes pay per sample is the agent's own BPF measure, from its log.

With --baseline, another prof-bpf binary (say, main's) is run the same way, interleaved with
this tree's: each round runs both at each rate, the order swapped every round (A B, then B A),
so a change in the machine's load over the benchmark weighs on both alike. --rounds repeats
that.

Writes a markdown section into BENCHMARKS.md under SECTION (only that section is replaced).
"""
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

SECTION = "## agent: CPU and memory, 10 busy processes (issue 20)"
RATES = (100, 1000)
INTERVAL = 10
VERSIONS = ["3.8", "3.9", "3.10", "3.11", "3.12", "3.13", "3.12", "3.11", "3.10", "3.13"]
BUSY = (
    "def busy_{i}():\n"
    "    x = 0\n"
    "    while True:\n"
    "        for i in range(1000):\n"
    "            x += i * i\n"
    "busy_{i}()\n"
)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("PROF_BPF_CACHE", "/var/cache/prof-bpf")


def log(msg):
    print(f"agent bench: {msg}", file=sys.stderr, flush=True)


def pyenv_python(version):
    prefix = subprocess.run(["pyenv", "prefix", version], capture_output=True, text=True, check=True)
    return os.path.join(prefix.stdout.strip(), "bin", f"python{version}")


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_collector(work):
    collector = os.path.join(CACHE, "otelcol/otelcol-prof-bpf")
    if not os.access(collector, os.X_OK):
        subprocess.run([os.path.join(REPO, "scripts/setup-collector")], check=True)
    out = os.path.join(work, "received")
    logf = os.path.join(work, "collector.log")
    env = dict(os.environ, OTELCOL_GRPC_PORT="0", OTELCOL_HTTP_PORT="0", OTELCOL_OUT_DIR=out)
    p = subprocess.Popen(
        [collector, "--config", os.path.join(REPO, "tests/collector/config.yaml"),
         "--feature-gates=service.profilesSupport"],
        stdout=subprocess.DEVNULL, stderr=open(logf, "w"), env=env,
    )
    for _ in range(1000):
        text = open(logf).read()
        m = re.search(r'Starting HTTP server.*"endpoint": "([0-9.:]+)"', text)
        if m and "Everything is ready" in text:
            return p, m.group(1), out
        time.sleep(0.02)
    raise SystemExit(f"the collector did not start:\n{open(logf).read()}")


def run_agent(prof_bpf, rate, seconds, endpoint, work):
    logf = os.path.join(work, f"agent-{rate}.log")
    p = subprocess.Popen(
        [prof_bpf, "agent", "--interval", str(INTERVAL), "-r", str(rate)],
        stdout=subprocess.DEVNULL, stderr=open(logf, "w"),
        env=dict(os.environ, OTEL_EXPORTER_OTLP_ENDPOINT=f"http://{endpoint}"),
    )
    while "profiling every Python process" not in open(logf).read():
        if p.poll() is not None:
            raise SystemExit(f"the agent failed:\n{open(logf).read()}")
        time.sleep(0.05)
    start, cpu0 = time.monotonic(), cpu_seconds(p.pid)
    series = []  # (seconds since start, RSS MiB)
    while time.monotonic() - start < seconds:
        time.sleep(INTERVAL)
        series.append((time.monotonic() - start, rss_mib(p.pid)))
    cpu, wall = cpu_seconds(p.pid) - cpu0, time.monotonic() - start
    p.send_signal(signal.SIGTERM)
    p.wait()
    text = open(logf).read()
    if p.returncode != 0:
        raise SystemExit(f"the agent failed:\n{text}")
    bpf = [float(x) for x in re.findall(r"BPF ([0-9.]+) us/sample", text)]
    m = re.search(r"(\d+) windows, (\d+) samples; (\d+) requests sent \((\d+) samples\), (\d+) dropped \((\d+) samples\)", text)
    windows, samples, sent, _, dropped, _ = (int(g) for g in m.groups())
    return {
        "cpu": cpu, "wall": wall, "series": series, "bpf_us": statistics.median(bpf) if bpf else None,
        "windows": windows, "samples": samples, "sent": sent, "dropped": dropped,
    }


def parse_args():
    import argparse

    ap = argparse.ArgumentParser(description="the agent's CPU and memory over a long run")
    ap.add_argument("seconds", nargs="?", type=float, default=600, help="seconds per run")
    ap.add_argument("--baseline", help="another prof-bpf binary, run interleaved with this tree's")
    ap.add_argument("--rounds", type=int, default=1, help="runs of each binary at each rate")
    return ap.parse_args()


def main():
    args = parse_args()
    seconds = args.seconds
    if os.geteuid() != 0:
        raise SystemExit("agent bench: run as root (prof-bpf loads BPF)")
    os.chdir(REPO)
    built = os.path.join(REPO, "target/release/prof-bpf")
    if not os.access(built, os.X_OK):
        subprocess.run(["cargo", "build", "--release"], check=True)
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    work = tempfile.mkdtemp(prefix="prof-bpf-agent.")
    # Snapshots of the binaries, so a rebuild during the benchmark cannot change them.
    builds = []
    for label, source in [("baseline", args.baseline), (f"this tree ({git})", built)]:
        if source is None:
            continue
        copy = os.path.join(work, f"prof-bpf-{len(builds)}")
        shutil.copy(source, copy)
        builds.append((label, copy))
    collector, endpoint, received = start_collector(work)
    busy = [subprocess.Popen([pyenv_python(v), "-c", BUSY.format(i=i)]) for i, v in enumerate(VERSIONS)]
    load_start = open("/proc/loadavg").read().split()[:3]
    results = {}  # (label, rate) -> [run]
    try:
        time.sleep(1.0)
        for round_ in range(args.rounds):
            for rate in RATES:
                order = builds if round_ % 2 == 0 else builds[::-1]
                for label, prof_bpf in order:
                    log(f"round {round_ + 1}: {label}, -r {rate} for {seconds:.0f} s")
                    results.setdefault((label, rate), []).append(
                        run_agent(prof_bpf, rate, seconds, endpoint, work))
    finally:
        for p in busy:
            p.kill()
            p.wait()
        collector.terminate()
        collector.wait()
    load_end = open("/proc/loadavg").read().split()[:3]
    files = len(os.listdir(received))

    versions = ", ".join(sorted(set(VERSIONS), key=lambda v: tuple(map(int, v.split(".")))))
    runs = "one run" if args.rounds == 1 and len(builds) == 1 else (
        f"{args.rounds} run{'s' if args.rounds > 1 else ''} of each build, interleaved")
    lines = [
        SECTION,
        "",
        f"Ten busy pure-Python processes (CPython {versions}) "
        f"on this {os.cpu_count()}-CPU machine, profiled by one `prof-bpf agent --interval {INTERVAL}` for "
        f"{seconds / 60:g} minutes per run ({runs}, per rate), exporting OTLP/HTTP (gzip) to the test "
        "OpenTelemetry Collector on 127.0.0.1. *Agent CPU* is the agent process's user + system time over "
        "the run as a share of one CPU (its userspace: draining, naming, aggregating, encoding, sending); "
        "*BPF us per sample* is the kernel time the profiled processes pay per sample (the agent's own "
        "measure, median over windows), not in the agent's CPU. *RSS* is the agent's resident memory read "
        "every 10 s: at the end of the run and the largest seen.",
        "",
        "| rate | prof-bpf | agent CPU % of one CPU, each run | agent CPU s (%), all runs | BPF us per sample | samples | exports sent / dropped | RSS MiB end / max |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rate in RATES:
        for label, _ in builds:
            rs = results[(label, rate)]
            cpu, wall = sum(r["cpu"] for r in rs), sum(r["wall"] for r in rs)
            each = " ".join(f"{100 * r['cpu'] / r['wall']:.2f}" for r in rs)
            bpf = [r["bpf_us"] for r in rs if r["bpf_us"] is not None]
            lines.append(
                f"| {rate} Hz | {label} | {each} | {cpu:.1f} ({100 * cpu / wall:.2f} %) | "
                f"{statistics.median(bpf):.1f} | {sum(r['samples'] for r in rs)} | "
                f"{sum(r['sent'] for r in rs)} / {sum(r['dropped'] for r in rs)} | "
                f"{rs[-1]['series'][-1][1]:.1f} / {max(m for r in rs for _, m in r['series']):.1f} |"
            )
    command = f"bench/agent.py {seconds:.0f}"
    if args.baseline:
        command += f" --baseline {args.baseline}"
    if args.rounds != 1:
        command += f" --rounds {args.rounds}"
    lines += [
        "",
        f"- The collector wrote {files} requests in all.",
        f"- Command: `{command}` (as root, from the repo root)",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; kernel `{os.uname().release}`; "
        f"load average at start / end: {' '.join(load_start)} / {' '.join(load_end)}",
        f"- prof-bpf at git {git}" + (f"; baseline: `{args.baseline}`" if args.baseline else ""),
        "",
    ]
    section = "\n".join(lines)
    print(section)
    path = os.path.join(REPO, "BENCHMARKS.md")
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n\n"
    start = text.find(SECTION)
    if start >= 0:
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    open(path, "w").write(text)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
