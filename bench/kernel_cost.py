#!/usr/bin/env python3
"""Kernel cost by stack depth: prof-bpf against py-spy, Austin and Tachyon, side by side in one run.

Usage (as root, from the repo root):  python3 bench/kernel_cost.py [ROUNDS]   (default 3)
Environment: DEPTHS (default 5,50,200,1000); PYTHONS, the fixture sets to run (default 3.11,3.15);
BENCHMARKS, the file the section goes into (default BENCHMARKS.md); PROF_BPF, the binary under
test (default target/release/prof-bpf, copied at the start).

For stacks of 5, 50, 200 and 1000 Python frames, each round runs two sets of configurations, each
in an order that rotates from round to round so drift in the machine's speed hits every
configuration alike:

- 3.11: bench/deep.py on pyenv's CPython 3.11, unprofiled, under prof-bpf at 1 and 10 kHz, under
  py-spy (from PyPI, its default blocking mode) at 1 and 10 kHz and under Austin (austin-dist from
  PyPI: 3.7.0, the newest whose binary runs on Debian bookworm's glibc; Austin 4's needs glibc
  2.38) at 1 and 10 kHz;
- 3.15: bench/deep.py on Debian forky's python3.15 in the forky root file system that
  scripts/setup-pythons makes (`chroot ROOT python3.15`, the fixture copied into the root's /tmp),
  unprofiled, under prof-bpf at 1 and 10 kHz and under Tachyon, CPython 3.15's own sampling
  profiler (`python3.15 -m profiling.sampling run`, inside the root: a separate process that
  starts the script as its child and reads its memory), at 1 and 10 kHz. Tachyon finds the
  target through /proc, so the root's /proc is mounted for the run if it is not already (and
  unmounted at the end). Skipped, with a message, if the root is missing.

Each set also runs the fixture under bench/cpu_clock.py at 1 and 10 kHz (`clock-only`): the
CPU-clock events prof-bpf's sampler opens, with nothing attached, so the table shows what the
timer interrupts alone cost the program, apart from what prof-bpf's programs add.

Per run it takes:

- the workload's own time (perf_counter around the work, not start-up or writing the profile);
  the slowdown is the median of per-round ratios to the unprofiled run of the same round;
- the CPU time of the whole command (the profiler and the target together, from wait4);
- the attribution error: the profile's share of `a` (samples whose leaf is `a` among those whose
  leaf is `a` or `b`) against the share the run measured itself, in percentage points;
- for prof-bpf, the BPF time per recorded sample it reports (the kernel's own accounting of its
  programs, `kernel.bpf_stats_enabled`);
- the CPU per sample: the command's CPU time beyond that of the same round's unprofiled run,
  divided by the samples recorded.

Then, with the 3.11 set, the start-up: wall time of `python -c pass` unprofiled, under `prof-bpf
record` and under `py-spy record`, interleaved the same way.

Prints a markdown section and writes it into BENCHMARKS.md under SECTION (only that section).
"""

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

SECTION = "## Kernel cost by stack depth, and start-up (issue 16)"
DEPTHS = [int(d) for d in os.environ.get("DEPTHS", "5,50,200,1000").split(",")]
PYTHONS = os.environ.get("PYTHONS", "3.11,3.15").split(",")
# The configurations of each fixture set, by the Python that runs bench/deep.py.
# `clock-only`: bench/cpu_clock.py, the CPU-clock events a sampler like prof-bpf opens with
# nothing attached: what the timer interrupts alone cost the program.
CONFIGS = {
    "3.11": ["unprofiled", "clock-only@1000", "clock-only@10000", "prof-bpf@1000",
             "prof-bpf@10000", "py-spy@1000", "py-spy@10000", "austin@1000", "austin@10000"],
    "3.15": ["unprofiled", "clock-only@1000", "clock-only@10000", "prof-bpf@1000",
             "prof-bpf@10000", "tachyon@1000", "tachyon@10000"],
}
# The root file system with Debian forky's python3.15 (scripts/setup-pythons).
FORKY = os.path.join(os.environ.get("PROF_BPF_CACHE", "/var/cache/prof-bpf"), "forky")
AUSTIN = "austin-dist==3.7.0"
STARTUP = ["unprofiled", "prof-bpf", "py-spy"]
# A run still going after this long is stopped and reported as such (py-spy on deep stacks).
RUN_TIMEOUT = 30
KERNEL_TIME = re.compile(r"kernel time: .*?, (\d+) ns per recorded sample")
# Tachyon's count of the samples it tried and could not read, in percent of all it tried.
TACHYON_ERRORS = re.compile(r"^Error rate: ([\d.]+)", re.MULTILINE)


def log(msg):
    print(f"kernel-cost: {msg}", file=sys.stderr, flush=True)


def sh(*cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def run(cmd, timeout=None):
    """Runs `cmd` (killed, with its children, after `timeout` s); returns (exit status or None
    when it timed out, stdout, stderr, wall s). Its CPU time is in RUSAGE_CHILDREN once reaped."""
    start = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        return None, out, err, time.perf_counter() - start
    return p.returncode, out, err, time.perf_counter() - start


def children_cpu():
    r = os.times()
    return r.children_user + r.children_system


def shares(raw_path, name_of, counted):
    """Samples in `a`, and in `a` or `b` (a frame of either, wherever in the stack), in a profile
    of one stack per line: frames joined by `;`, then a space and the stack's count (`counted`),
    or a metric, each line then one sample. `name_of` takes a frame's function out of it."""
    a = ab = 0
    # Bytes that are not UTF-8 (Austin now and then writes some) are replaced: a profile is
    # not thrown away, nor the run, for a mangled name.
    with open(raw_path, errors="replace") as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            stack, _, last = line.rstrip("\n").rpartition(" ")
            names = {name_of(frame) for frame in stack.split(";")}
            n = int(last) if counted else 1
            if names & {"a", "b"}:
                ab += n
                a += n if "a" in names else 0
    return a, ab


def collapsed_name(frame):
    """prof-bpf's and py-spy's collapsed frames: `function (file:line)`."""
    return frame.split(" (", 1)[0]


def colon_name(frame):
    """Austin's and Tachyon's frames: `file:function:line` (their own frames, such as Tachyon's
    `<GC>`, are bare: no function)."""
    parts = frame.split(":")
    return parts[-2] if len(parts) >= 3 else None


# How each profiler's profile is read (`shares`), by the configuration's tool: Austin writes
# `P<pid>;T<tid>;file:function:line;... metric`, each line one sample (the metric its time in
# microseconds); Tachyon's `--collapsed`, `tid:<tid>;file:function:line;... count`, outermost
# frame first, the file's base name only; prof-bpf and py-spy collapsed stacks with counts.
PROFILES = {"austin": (colon_name, False), "tachyon": (colon_name, True)}
COLLAPSED = (collapsed_name, True)


def one(python, config, depth, tools, work):
    raw = os.path.join(work, "out.raw")
    if python == "3.15":
        # Paths as the chroot sees them: the fixture and Tachyon's output are in the root's /tmp.
        inroot = tools["inroot"]
        fixture = ["chroot", FORKY, "python3.15", f"{inroot}/deep.py", str(depth)]
    else:
        fixture = [tools["python"], "bench/deep.py", str(depth)]
    if config == "unprofiled":
        cmd = fixture
    elif config.startswith("clock-only"):
        cmd = [sys.executable, "bench/cpu_clock.py", config.split("@")[1], *fixture]
    elif config.startswith("tachyon"):
        rate = config.split("@")[1]
        # Tachyon runs the script as its child (through its own starter), waits for it and writes
        # its profile when it ends: one command tree, whose CPU wait4 gives whole.
        raw = f"{FORKY}{inroot}/out.collapsed"
        cmd = ["chroot", FORKY, "python3.15", "-m", "profiling.sampling", "run", "-r", rate,
               "--collapsed", "-o", f"{inroot}/out.collapsed", f"{inroot}/deep.py", str(depth)]
    elif config.startswith("austin"):
        rate = int(config.split("@")[1])
        # -t: Austin 3.7 gives up on a Python it cannot read within 100 ms of starting it, which
        # here was 1 run in 4.
        cmd = [tools["austin"], "-t", "1000", "-i", str(1_000_000 // rate), "-o", raw, *fixture]
    else:
        tool, rate = config.split("@")
        cmd = [tools[tool], "record", "-r", rate, "-f", "raw", "-o", raw, "--", *fixture]
    cpu0 = children_cpu()
    rc, out, err, wall = run(cmd, RUN_TIMEOUT)
    cpu = children_cpu() - cpu0
    row = {"python": python, "config": config, "depth": depth, "wall": wall, "cpu": cpu,
           "rc": rc}
    fixture_line = [line for line in out.splitlines() if line.startswith('{"elapsed_s"')]
    if rc is None:
        row["failed"] = f"stopped after {RUN_TIMEOUT} s"
        return row
    if rc != 0 or not fixture_line:
        row["failed"] = (err.strip().splitlines() or ["no output"])[-1][:200]
        return row
    measured = json.loads(fixture_line[-1])
    row["workload"] = measured["elapsed_s"]
    row["target_cpu"] = measured["process_cpu_s"]
    row["measured_a"] = 100 * measured["a_s"] / (measured["a_s"] + measured["b_s"])
    if config != "unprofiled" and not config.startswith("clock-only"):
        name_of, counted = PROFILES.get(config.split("@")[0], COLLAPSED)
        try:
            a, ab = shares(raw, name_of, counted)
        except (OSError, ValueError) as e:
            row["failed"] = f"unreadable profile: {e}"
            return row
        row["samples"] = ab
        row["error_pp"] = abs(100 * a / ab - row["measured_a"]) if ab else None
        m = KERNEL_TIME.search(err)
        row["bpf_ns"] = int(m.group(1)) if m else None
        if config.startswith("tachyon"):
            m = TACHYON_ERRORS.search(out)
            row["tachyon_errors"] = float(m.group(1)) if m else None
        os.unlink(raw)
    return row


def startup(config, tools, work):
    raw = os.path.join(work, "pass.raw")
    cmd = [tools["python"], "-c", "pass"]
    if config != "unprofiled":
        cmd = [tools[config], "record", "-f", "raw", "-o", raw, "--", *cmd]
    # py-spy now and then fails to attach to a Python that ends at once: tried again, then left
    # out of the medians (said in the log), not the end of the whole run.
    for _ in range(3):
        rc, _, err, wall = run(cmd)
        if rc == 0:
            return wall
        log(f"{' '.join(cmd)} failed: {err.strip().splitlines()[-1][:200] if err.strip() else rc}")
    return None


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, spec, missing="–"):
    return missing if x is None else format(x, spec)


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    unknown = [p for p in PYTHONS if p not in CONFIGS]
    if unknown:
        sys.exit(f"kernel-cost: PYTHONS: no fixture set for {', '.join(unknown)} "
                 f"(there are {', '.join(CONFIGS)})")
    pythons = [p for p in CONFIGS if p in PYTHONS]
    python, pyspy = prepare("kernel-cost", "3.11")
    if "3.15" in pythons and not os.path.exists(f"{FORKY}/usr/bin/python3.15"):
        log(f"no python3.15 in {FORKY} (scripts/setup-pythons makes it): skipping the CPython "
            "3.15 part")
        pythons.remove("3.15")
    if not pythons:
        sys.exit("kernel-cost: nothing to run")
    work = tempfile.mkdtemp(prefix="prof-bpf-kernel-cost.")
    # The root's scratch directory (as the host sees it) and its /proc if this run mounted it.
    root_work = root_proc = None
    try:
        # A copy, so a rebuild during the run cannot change the binary under test.
        shutil.copy(os.environ.get("PROF_BPF", "target/release/prof-bpf"), f"{work}/prof-bpf")
        tools = {"python": python, "prof-bpf": f"{work}/prof-bpf", "py-spy": pyspy}
        meta = {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "kernel": os.uname().release,
            "cpus": os.cpu_count(),
            "load_start": open("/proc/loadavg").read().split()[:3],
            "git": sh("git", "rev-parse", "--short", "HEAD"),
        }
        if "3.11" in pythons:
            tools["austin"] = austin()
            meta["python"] = sh(python, "-c", "import platform; print(platform.python_version())")
            meta["pyspy"] = sh(tools["py-spy"], "--version").split()[-1]
            meta["austin"] = sh(tools["austin"], "--version").split()[-1]
        if "3.15" in pythons:
            root_work = tempfile.mkdtemp(prefix="prof-bpf-kernel-cost.", dir=f"{FORKY}/tmp")
            tools["inroot"] = root_work[len(FORKY):]
            shutil.copy("bench/deep.py", f"{root_work}/deep.py")
            # Tachyon finds the target's interpreter through /proc (its memory maps), inside the
            # root; without it: "Failed to find the PyRuntime section".
            if not os.path.ismount(f"{FORKY}/proc"):
                subprocess.run(["mount", "-t", "proc", "proc", f"{FORKY}/proc"], check=True)
                root_proc = f"{FORKY}/proc"
            meta["python315"] = sh("chroot", FORKY, "python3.15", "-c",
                                   "import platform; print(platform.python_version())")
            meta["python315_deb"] = sh("dpkg-query", f"--admindir={FORKY}/var/lib/dpkg", "-W",
                                       "-f=${Version}", "python3.15")
        rows, starts = [], []
        for r in range(rounds):
            for depth in DEPTHS:
                for version in pythons:
                    configs = CONFIGS[version]
                    n = len(configs)
                    for k in range(n):
                        config = configs[(r + k) % n]
                        row = one(version, config, depth, tools, work)
                        row["round"] = r
                        rows.append(row)
                        log(f"round {r + 1}/{rounds} {version} depth {depth:4} {config:15} " + (
                            f"FAILED: {row['failed']}" if "failed" in row else
                            f"workload {row['workload']:.3f} s, cpu {row['cpu']:.2f} s"
                            + (f", {row['samples']} samples, error {fmt(row['error_pp'], '.2f')}"
                               f" pp, BPF {row['bpf_ns']} ns/sample" if "samples" in row else "")
                            + (f", Tachyon's error rate {fmt(row['tachyon_errors'], '.2f')}%"
                               if "tachyon_errors" in row else "")))
            if "3.11" in pythons:
                for k in range(len(STARTUP)):
                    config = STARTUP[(r + k) % len(STARTUP)]
                    for _ in range(3):
                        starts.append((r, config, startup(config, tools, work)))
        meta["load_end"] = open("/proc/loadavg").read().split()[:3]
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if root_work:
            shutil.rmtree(root_work, ignore_errors=True)
        if root_proc and subprocess.run(["umount", root_proc]).returncode != 0:
            log(f"could not unmount {root_proc} (mounted by this run): umount it by hand")
    section = report(rows, starts, rounds, meta, pythons)
    print(section)
    write_section(section)


def table(rows, version):
    """The markdown table of the fixture set run by `version`: a list of lines."""
    out = ["| depth | configuration | slowdown | CPU s | samples | error pp | BPF µs per sample "
           "| CPU µs per sample |",
           "|---|---|---|---|---|---|---|---|"]
    for depth in DEPTHS:
        mine = [r for r in rows if r["python"] == version and r["depth"] == depth]
        base = {r["round"]: r for r in mine if r["config"] == "unprofiled"}
        for config in CONFIGS[version]:
            rs = [r for r in mine if r["config"] == config]
            failed = [r for r in rs if "failed" in r]
            ok = [r for r in rs if "failed" not in r]
            if not ok:
                why = failed[0]["failed"]
                base_s = med([r["workload"] for r in base.values() if "workload" in r])
                slow = (f"> {RUN_TIMEOUT / base_s:.0f}x ({why})" if why.startswith("stopped")
                        else f"failed ({why})")
                out.append(f"| {depth} | {config} | {slow} | | | | | |")
                continue
            ratios = [r["workload"] / base[r["round"]]["workload"] for r in ok
                      if "workload" in base.get(r["round"], {})]
            slow = ("1.00 (baseline)" if config == "unprofiled" else
                    f"{med(ratios):.2f}x ({min(ratios):.2f}–{max(ratios):.2f})")
            bpf = med([r.get("bpf_ns") for r in ok])
            # The CPU the profiling added (its own and the target's), per recorded sample.
            per_sample = med([(r["cpu"] - base[r["round"]]["cpu"]) / r["samples"] for r in ok
                              if r.get("samples") and "workload" in base.get(r["round"], {})])
            note = f" ({len(failed)} of {len(rs)} runs failed)" if failed else ""
            out.append(
                f"| {depth} | {config}{note} | {slow} | {med([r['cpu'] for r in ok]):.2f} | "
                f"{fmt(med([r.get('samples') for r in ok]), '.0f')} | "
                f"{fmt(med([r.get('error_pp') for r in ok]), '.2f')} | "
                f"{fmt(bpf and bpf / 1000, '.1f')} | "
                f"{fmt(per_sample and per_sample * 1e6, '.1f')} |"
            )
    return out


def report(rows, starts, rounds, meta, pythons):
    out = [SECTION, ""]
    out.append(
        f"Median of {rounds} interleaved rounds on `bench/deep.py DEPTH`: fixed pure-Python work "
        "at the bottom of a stack of DEPTH frames, `a()` doing three times `b()`'s work, each "
        "timed by the program. *Slowdown*: median of per-round ratios of the workload's own time "
        "to the unprofiled run's (same Python). *CPU s*: the whole command, profiler and target "
        "together. *Samples*: those in `a` or `b`. *Error*: the profile's share of `a` against "
        "the share the run measured, in points. *BPF*: the kernel's time in prof-bpf's programs "
        "per recorded sample (charged to the sampled thread, so it is inside the slowdown, not on "
        "top of it). *clock-only*: the sampler's CPU-clock events with nothing attached "
        "(bench/cpu_clock.py), what the timer interrupts alone cost. *CPU per sample*: the command's CPU time beyond the same round's unprofiled "
        "run, over its samples: profiler and target together, the profiler's start-up included "
        "(at 1 kHz, on runs of about a second, mostly that and noise)."
    )
    if "3.11" in pythons:
        out.append("")
        out.append(f"CPython {meta['python']} (pyenv): prof-bpf against py-spy and Austin.")
        out.append("")
        out += table(rows, "3.11")
    if "3.15" in pythons:
        out.append("")
        out.append(
            f"CPython {meta['python315']} (Debian forky's python3.15 {meta['python315_deb']}, "
            "run as `chroot ROOT python3.15` in the forky root file system of "
            "scripts/setup-pythons): prof-bpf against Tachyon, CPython 3.15's own sampling "
            "profiler, `python3.15 -m profiling.sampling run -r RATE --collapsed -o FILE "
            "deep.py DEPTH` in the root: a separate process that starts the script as its child, "
            "through its own starter (five more frames under the script's `<module>`, two of them "
            "in its profile), and reads its memory, in its default wall-clock mode."
        )
        out.append("")
        out += table(rows, "3.15")
        # Tachyon counts the samples it tried and could not read, and prints it.
        failures = []
        for depth in DEPTHS:
            rates = []
            for config in CONFIGS["3.15"]:
                if config.startswith("tachyon"):
                    rate = med([r.get("tachyon_errors") for r in rows if r["python"] == "3.15"
                                and r["depth"] == depth and r["config"] == config])
                    khz = int(config.split("@")[1]) // 1000
                    rates.append(f"{fmt(rate and rate / 100, '.1%')} at {khz} kHz")
            failures.append(f"{depth} frames {', '.join(rates)}")
        out.append("")
        out.append("Samples Tachyon tried and could not read (its own \"Error rate\"; not in its "
                   f"profile), median: {'; '.join(failures)}.")
    if "3.11" in pythons:
        out.append("")
        out.append("Start-up: wall time of the whole command for `python -c pass` "
                   f"(median of {3 * rounds} runs, interleaved):")
        out.append("")
        out.append("| command | wall s | added to unprofiled |")
        out.append("|---|---|---|")
        base = med([w for _, c, w in starts if c == "unprofiled"])
        for config in STARTUP:
            w = med([w for _, c, w in starts if c == config])
            what = {"unprofiled": "`python -c pass`",
                    "prof-bpf": "`prof-bpf record -- python -c pass`",
                    "py-spy": "`py-spy record -- python -c pass`"}[config]
            out.append(f"| {what} | {w:.3f} | "
                       f"{'–' if config == 'unprofiled' else f'{w - base:+.3f}'} |")
    out.append("")
    env = "".join(f"{k}={os.environ[k]} " for k in ("DEPTHS", "PYTHONS") if k in os.environ)
    out.append(f"- Command: `sudo {env}python3 bench/kernel_cost.py {rounds}` (from the repo root)")
    out.append(f"- Date: {meta['date']}; kernel `{meta['kernel']}`, {meta['cpus']} CPUs; load "
               f"average at start / end: {' '.join(meta['load_start'])} / {' '.join(meta['load_end'])}")
    tools = []
    if "3.11" in pythons:
        tools.append(f"py-spy {meta['pyspy']} and Austin {meta['austin']} (PyPI)")
    if "3.15" in pythons:
        tools.append(f"Tachyon of CPython {meta['python315']} (python3.15 "
                     f"{meta['python315_deb']})")
    out.append(f"- {'; '.join(tools)}; prof-bpf at git {meta['git']}")
    return "\n".join(out)


def prepare(name, version):
    """What a bench needs first: root, the repo root as the current directory, pyenv's CPython
    `version`, py-spy from PyPI in target/bench-venv (made with it the first time) and prof-bpf
    built. Returns the interpreter's and py-spy's paths."""
    if os.geteuid() != 0:
        sys.exit(f"{name}: run as root (prof-bpf loads BPF programs, py-spy attaches)")
    os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    python = os.path.join(sh("pyenv", "prefix", version), "bin", "python3")
    venv = "target/bench-venv"
    if not os.path.exists(f"{venv}/bin/py-spy"):
        log(f"installing py-spy into {venv}")
        subprocess.run([python, "-m", "venv", venv], check=True)
        subprocess.run([f"{venv}/bin/pip", "install", "-q", "py-spy"], check=True)
    if not os.path.exists("target/release/prof-bpf"):
        subprocess.run(["cargo", "build", "--release"], check=True)
    return python, f"{venv}/bin/py-spy"


def austin():
    """Austin from PyPI in the bench venv (installed the first time): its path."""
    path = "target/bench-venv/bin/austin"
    ok = os.path.exists(path) and subprocess.run(
        [path, "--version"], capture_output=True, text=True).stdout.strip().endswith("3.7.0")
    if not ok:
        log(f"installing {AUSTIN} into target/bench-venv")
        subprocess.run(["target/bench-venv/bin/pip", "install", "-q", AUSTIN], check=True)
    return path


def write_section(section, title=SECTION):
    """Puts `section` (which starts with `title`) into BENCHMARKS.md (or the file the environment
    variable BENCHMARKS names), replacing the section of that title if there is one."""
    path = os.environ.get("BENCHMARKS", "BENCHMARKS.md")
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    start = text.find(title)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    else:
        end = text.find("\n## ", start + len(title))
        rest = "" if end < 0 else text[end:]
        text = text[:start] + section + "\n" + rest
    with open(path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
