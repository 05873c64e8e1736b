#!/usr/bin/env python3
"""Frames of short-lived code: prof-bpf against py-spy, side by side in one run.

Usage (as root, from the repo root):  python3 bench/short_lived.py [ROUNDS]   (default 3)
With BASELINE=/path/to/an/older/prof-bpf, that build runs too (for a before/after).

Two workloads: tests/fixtures/short_lived_code.py (600 generated modules whose bodies burn 1 ms
each at import, then 600 snippets compiled, run once and dropped; CPython 3.12), and importing
astropy (the PyPI release pinned below, in the bench venv's CPython, whose module bodies are
freed once they have run). Each runs unprofiled, under prof-bpf and under py-spy (from PyPI, its
default blocking mode) at 1 and 10 kHz, in an order that rotates from round to round. Per run: the samples, the share of them with a frame left unnamed
(`[unknown]`, or py-spy's `<unknown>`), and the wall time of the whole command against the
unprofiled run of the same round.

Prints a markdown section and writes it into BENCHMARKS.md under SECTION (only that section).
"""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kernel_cost import prepare, run, sh, write_section  # noqa: E402

SECTION = "## Frames of short-lived code: module bodies and exec'd snippets (issue 15)"
FIXTURE = ["tests/fixtures/short_lived_code.py", "600", "0.001"]
ASTROPY = "astropy==8.0.2"
ASTROPY_IMPORT = [
    "-c",
    "import astropy.units, astropy.table, astropy.coordinates, astropy.io.fits, "
    "astropy.timeseries",
]
RATES = [1000, 10000]
WORKLOADS = ["generated", "astropy"]


def log(msg):
    print(f"short-lived: {msg}", file=sys.stderr, flush=True)


def unnamed(raw_path):
    """(samples, samples with a frame that has no name) in a collapsed-stack file."""
    total = bad = 0
    with open(raw_path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            n = int(count)
            total += n
            if "[unknown] (code object" in stack or "<unknown>" in stack:
                bad += n
    return total, bad


def one(workload, config, tools, work):
    out = f"{work}/profile.txt"
    if os.path.exists(out):
        os.remove(out)
    target = tools[workload]
    if config == "unprofiled":
        cmd = target
    else:
        tool, rate = config.split("@")
        if tool == "py-spy":
            cmd = [tools["py-spy"], "record", "-r", rate, "-f", "raw", "-o", out, "--", *target]
        else:
            cmd = [tools[tool], "record", "-r", rate, "-f", "raw", "-o", out, "--", *target]
    status, _, err, wall = run(cmd, timeout=120)
    if status != 0:
        log(f"{config}: exit {status}: {err[-500:]}")
        return {"workload": workload, "config": config, "wall": None}
    row = {"workload": workload, "config": config, "wall": wall}
    if config != "unprofiled":
        row["samples"], row["unnamed"] = unnamed(out)
    return row


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    python, pyspy = prepare("short-lived", "3.12")
    venv_python = os.path.join(os.path.dirname(pyspy), "python")
    if subprocess.run([venv_python, "-c", "import astropy"], capture_output=True).returncode:
        log(f"installing {ASTROPY} into the bench venv")
        subprocess.run([venv_python, "-m", "pip", "install", "-q", ASTROPY], check=True)
    # The first import writes the bytecode caches: not what is measured.
    subprocess.run([venv_python, *ASTROPY_IMPORT], check=True)
    work = tempfile.mkdtemp(prefix="prof-bpf-short-lived.")
    try:
        # Copies, so a rebuild during the run cannot change the binaries under test.
        shutil.copy("target/release/prof-bpf", f"{work}/prof-bpf")
        tools = {
            "generated": [python, *FIXTURE],
            "astropy": [venv_python, *ASTROPY_IMPORT],
            "prof-bpf": f"{work}/prof-bpf",
            "py-spy": pyspy,
        }
        tools_list = ["prof-bpf", "py-spy"]
        if os.environ.get("BASELINE"):
            shutil.copy(os.environ["BASELINE"], f"{work}/baseline")
            tools["baseline"] = f"{work}/baseline"
            tools_list.insert(1, "baseline")
        configs = ["unprofiled"] + [f"{t}@{r}" for r in RATES for t in tools_list]
        meta = {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "kernel": os.uname().release,
            "cpus": os.cpu_count(),
            "python": sh(python, "-c", "import platform; print(platform.python_version())"),
            "venv_python": sh(venv_python, "-c", "import platform; print(platform.python_version())"),
            "pyspy": sh(tools["py-spy"], "--version").split()[-1],
            "git": sh("git", "rev-parse", "--short", "HEAD"),
            "baseline": os.environ.get("BASELINE"),
        }
        rows = []
        for r in range(rounds):
            n = len(configs)
            for workload in WORKLOADS:
                for k in range(n):
                    row = one(workload, configs[(r + k) % n], tools, work)
                    row["round"] = r
                    rows.append(row)
                    log(f"round {r + 1}/{rounds}: {row}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    section = report(rows, configs, rounds, meta)
    print(section)
    write_section(section, SECTION)


def report(rows, configs, rounds, meta):
    out = [SECTION, "", f"`python3 bench/short_lived.py {rounds}` ({meta['date']}; "
           f"{'BASELINE=' + meta['baseline'] + '; ' if meta['baseline'] else ''}"
           f"{meta['cpus']} CPUs, kernel {meta['kernel']}; generated: CPython {meta['python']}, "
           f"astropy: {ASTROPY} importing units, table, coordinates, io.fits and timeseries, "
           f"CPython {meta['venv_python']}). "
           f"Medians over {rounds} interleaved rounds; unnamed: samples with a frame left "
           "without a name; slowdown: whole command's wall time over the unprofiled run's, "
           "same round.", "",
           "| workload | profiler @ rate | samples | unnamed | unnamed share | slowdown |",
           "|---|---|---:|---:|---:|---:|"]
    for workload in WORKLOADS:
        base = {r["round"]: r["wall"] for r in rows
                if r["workload"] == workload and r["config"] == "unprofiled" and r["wall"]}
        for config in configs[1:]:
            mine = [r for r in rows
                    if r["workload"] == workload and r["config"] == config and r["wall"]]
            if not mine:
                out.append(f"| {workload} | {config} | failed | | | |")
                continue
            samples = statistics.median(r["samples"] for r in mine)
            bad = statistics.median(r["unnamed"] for r in mine)
            share = statistics.median(100 * r["unnamed"] / max(r["samples"], 1) for r in mine)
            slow = statistics.median(
                r["wall"] / base[r["round"]] for r in mine if r["round"] in base)
            name = config.replace("baseline", "prof-bpf before the copies")
            out.append(f"| {workload} | {name} | {samples:.0f} | {bad:.0f} | {share:.2f} % "
                       f"| {slow:.2f}x |")
    out.append("")
    out.append(f"- py-spy {meta['pyspy']} (PyPI); prof-bpf at git {meta['git']}")
    return "\n".join(out)


if __name__ == "__main__":
    main()
