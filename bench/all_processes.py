#!/usr/bin/env python3
"""The profiler's own cost when it profiles every Python process at once (issue 6).

Usage (as root, from the repo root):  bench/all_processes.py [ROUNDS]   (default 3)

Ten busy Python processes (pure-Python loops, across the installed CPython versions) run for the
whole benchmark. Each configuration profiles all ten for DURATION seconds:

  prof-bpf --all -r R      one prof-bpf for the whole machine
  py-spy x10 -r R          one `py-spy record --pid` per process (py-spy has no --all)

at R = 100 and 1000 samples/s. Rounds are interleaved (each round runs every configuration once,
the order rotating), so the machine's drift hits them alike. For each run it measures, with GNU
time around every profiler process: the CPU seconds (user + system) the profilers used, their
peak memory (max RSS, summed over the py-spy processes), and the samples they wrote. For
prof-bpf it also takes the BPF time per recorded sample from prof-bpf's own summary (kernel time
the busy processes pay, which is not in prof-bpf's CPU seconds).

Writes a markdown section into BENCHMARKS.md under SECTION (only that section is replaced).
"""
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

SECTION = "## --all: the profiler's own CPU and memory, 10 busy processes (issue 6)"
DURATION = 10
RATES = (100, 1000)
VERSIONS = ["3.8", "3.9", "3.10", "3.11", "3.12", "3.13", "3.12", "3.11", "3.10", "3.13"]
BUSY = (
    "import time\n"
    "def busy_{i}():\n"
    "    x = 0\n"
    "    while True:\n"
    "        for i in range(1000):\n"
    "            x += i * i\n"
    "busy_{i}()\n"
)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(msg):
    print(f"all_processes: {msg}", file=sys.stderr, flush=True)


def pyenv_python(version):
    prefix = subprocess.run(["pyenv", "prefix", version], capture_output=True, text=True, check=True)
    return os.path.join(prefix.stdout.strip(), "bin", f"python{version}")


def timed(cmd, stdout_path):
    """Starts `cmd` under GNU time; returns (process, path of time's report)."""
    report = stdout_path + ".time"
    p = subprocess.Popen(
        ["/usr/bin/time", "-f", "%e %U %S %M", "-o", report] + cmd,
        stdout=open(stdout_path, "w"),
        stderr=open(stdout_path + ".err", "w"),
    )
    return p, report


def read_time(report):
    wall, user, system, max_rss_kb = open(report).read().split()[-4:]
    return float(wall), float(user) + float(system), int(max_rss_kb)


def count_samples(raw_path):
    total = 0
    with open(raw_path, errors="replace") as f:
        for line in f:
            count = line.rsplit(" ", 1)[-1]
            if count.strip().isdigit():
                total += int(count)
    return total


def run_prof_bpf(prof_bpf, rate, work):
    out = os.path.join(work, f"prof-bpf-{rate}.txt")
    p, report = timed([prof_bpf, "record", "--all", "-r", str(rate), "-d", str(DURATION), "-f", "raw", "-o", out], out + ".log")
    p.wait()
    summary = open(out + ".log.err").read()
    if p.returncode != 0:
        raise SystemExit(f"prof-bpf failed:\n{summary}")
    wall, cpu, rss = read_time(report)
    m = re.search(r"(\d+) ns per recorded sample", summary)
    return {"cpu": cpu, "wall": wall, "rss_kb": rss, "samples": count_samples(out), "bpf_ns": int(m.group(1)) if m else None}


def run_py_spy(py_spy, rate, pids, work):
    runs = []
    for pid in pids:
        out = os.path.join(work, f"py-spy-{rate}-{pid}.txt")
        runs.append((out,) + timed([py_spy, "record", "-r", str(rate), "-d", str(DURATION), "-f", "raw", "-o", out, "--pid", str(pid)], out + ".log"))
    cpu = rss = samples = 0
    wall = 0.0
    for out, p, report in runs:
        p.wait()
        if p.returncode != 0:
            raise SystemExit(f"py-spy failed:\n{open(out + '.log.err').read()}")
        w, c, r = read_time(report)
        wall, cpu, rss, samples = max(wall, w), cpu + c, rss + r, samples + count_samples(out)
    return {"cpu": cpu, "wall": wall, "rss_kb": rss, "samples": samples, "bpf_ns": None}


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    if os.geteuid() != 0:
        raise SystemExit("all_processes: run as root (prof-bpf loads BPF, py-spy attaches)")
    os.chdir(REPO)
    prof_bpf_built = os.path.join(REPO, "target/release/prof-bpf")
    if not os.access(prof_bpf_built, os.X_OK):
        subprocess.run(["cargo", "build", "--release"], check=True)
    venv = os.path.join(REPO, "target/bench-venv")
    if not os.access(os.path.join(venv, "bin/py-spy"), os.X_OK):
        log("installing py-spy into target/bench-venv")
        subprocess.run([pyenv_python("3.12"), "-m", "venv", venv], check=True)
        subprocess.run([os.path.join(venv, "bin/pip"), "install", "-q", "py-spy"], check=True)
    py_spy = os.path.join(venv, "bin/py-spy")
    work = tempfile.mkdtemp(prefix="prof-bpf-all.")
    # A snapshot of the binary, so a rebuild during the benchmark cannot change it.
    prof_bpf = os.path.join(work, "prof-bpf")
    shutil.copy(prof_bpf_built, prof_bpf)

    busy = [
        subprocess.Popen([pyenv_python(v), "-c", BUSY.format(i=i)]) for i, v in enumerate(VERSIONS)
    ]
    pids = [p.pid for p in busy]
    time.sleep(1.0)
    configs = [("prof-bpf", r) for r in RATES] + [("py-spy", r) for r in RATES]
    results = {c: [] for c in configs}
    load_start = open("/proc/loadavg").read().split()[:3]
    try:
        for round_ in range(rounds):
            order = configs[round_ % len(configs):] + configs[: round_ % len(configs)]
            for tool, rate in order:
                log(f"round {round_ + 1}/{rounds}: {tool} -r {rate}")
                if tool == "prof-bpf":
                    results[(tool, rate)].append(run_prof_bpf(prof_bpf, rate, work))
                else:
                    results[(tool, rate)].append(run_py_spy(py_spy, rate, pids, work))
    finally:
        for p in busy:
            p.kill()
            p.wait()
    load_end = open("/proc/loadavg").read().split()[:3]

    def med(config, key):
        values = [r[key] for r in results[config] if r[key] is not None]
        return statistics.median(values) if values else None

    lines = [
        SECTION,
        "",
        f"Ten busy pure-Python processes (CPython {', '.join(sorted(set(VERSIONS), key=lambda v: tuple(map(int, v.split('.')))))}) "
        f"on this {os.cpu_count()}-CPU machine, all profiled for {DURATION} s; median of {rounds} interleaved rounds. "
        "*Profiler CPU* is the user + system CPU time of the profiler processes (one prof-bpf; ten py-spy, summed) "
        "as a share of one CPU over the run; *peak RSS* is their maximum resident memory (summed over the py-spy "
        "processes); *samples* are those written to the profile; *BPF ns per sample* is the kernel time the "
        "profiled processes pay per recorded sample (prof-bpf's own measure; py-spy's cost to the targets is its "
        "pauses instead). The sample counts differ by design: prof-bpf takes CPU-clock samples, at most "
        "CPUs x rate x seconds for the whole machine, of whichever process is on a CPU; each py-spy samples "
        "its process at the rate by wall clock, running or waiting for a CPU.",
        "",
        "| configuration | profiler CPU s (% of one CPU) | peak RSS MiB | samples | BPF ns per sample | CPU ratio vs py-spy | RSS ratio vs py-spy |",
        "|---|---|---|---|---|---|---|",
    ]
    for tool, rate in configs:
        cpu, rss, samples, bpf = (med((tool, rate), k) for k in ("cpu", "rss_kb", "samples", "bpf_ns"))
        spy_cpu, spy_rss = med(("py-spy", rate), "cpu"), med(("py-spy", rate), "rss_kb")
        name = f"prof-bpf `--all -r {rate}`" if tool == "prof-bpf" else f"py-spy `-r {rate}` x10 (`--pid` each)"
        ratio = lambda a, b: f"{a / b:.2f}x" if b else "–"
        lines.append(
            f"| {name} | {cpu:.2f} ({100 * cpu / DURATION:.1f} %) | {rss / 1024:.1f} | {samples:.0f} | "
            f"{f'{bpf:.0f}' if bpf else '–'} | {ratio(cpu, spy_cpu)} | {ratio(rss, spy_rss)} |"
        )
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    spy_version = subprocess.run([py_spy, "--version"], capture_output=True, text=True).stdout.split()[-1]
    lines += [
        "",
        f"- Command: `bench/all_processes.py {rounds}` (as root, from the repo root)",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; kernel `{os.uname().release}`; "
        f"load average at start / end: {' '.join(load_start)} / {' '.join(load_end)}",
        f"- py-spy {spy_version} (PyPI); prof-bpf at git {git}",
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
