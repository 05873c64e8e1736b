#!/usr/bin/env python3
"""prof-bpf's memory on a long `record --all` against programs that keep creating code (issue 13).

Usage (as root, from the repo root):
    bench/memory.py [SECONDS] [PROF_BPF ...]     (default 600 s, target/release/prof-bpf)

Four Python processes (3.11, 3.12, 3.13, 3.8) keep compiling and running new functions: every
iteration compiles a module from one of 200 sources (the same names and lines come back, in new
code objects at new addresses) and calls its functions, and every 30 s each process exits and a
new one starts (a new pid). Each prof-bpf given runs `record --all -r 1000` over the same
programs at the same time, side by side; the script samples each one's resident memory (VmRSS)
every 10 s and writes the series, and the growth after a one-minute warm-up, into BENCHMARKS.md
under SECTION. Give two binaries (an older build first) to compare.
"""
import os
import subprocess
import sys
import tempfile
import time

SECTION = "## Memory on a long --all run with code created all the time (issue 13)"
VERSIONS = ["3.11", "3.12", "3.13", "3.8"]
WARMUP = 60
EVERY = 10
LIFETIME = 30
PROGRAM = r'''
import random, sys, time
end = time.time() + float(sys.argv[1])
random.seed()
while time.time() < end:
    k = random.randrange(200)
    src = (
        "def work_%d(n):\n"
        "    s = 0\n"
        "    for i in range(n):\n"
        "        s += i * %d\n"
        "    return s\n"
        "def outer_%d():\n"
        "    return work_%d(2000)\n" % (k, k, k, k)
    )
    ns = {}
    exec(compile(src, "generated_%d.py" % k, "exec"), ns)
    for _ in range(20):
        ns["outer_%d" % k]()
'''


def python(version):
    prefix = subprocess.run(["pyenv", "prefix", version], capture_output=True, text=True,
                            check=True).stdout.strip()
    return os.path.join(prefix, "bin", "python" + version)


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def main():
    seconds = int(sys.argv[1]) if len(sys.argv) > 1 else 600
    binaries = sys.argv[2:] or ["target/release/prof-bpf"]
    pythons = [python(v) for v in VERSIONS]
    tmp = tempfile.mkdtemp(prefix="prof-bpf-memory-")
    script = os.path.join(tmp, "creates_code.py")
    with open(script, "w") as f:
        f.write(PROGRAM)
    profilers = [
        subprocess.Popen([b, "record", "--all", "-r", "1000", "-f", "raw", "-o",
                          os.path.join(tmp, f"profile-{i}.txt")],
                         stderr=open(os.path.join(tmp, f"summary-{i}.txt"), "w"))
        for i, b in enumerate(binaries)
    ]
    time.sleep(2)
    workers = {}
    series = [[] for _ in binaries]
    started = time.time()
    next_sample = started
    while time.time() - started < seconds:
        for py in pythons:
            w = workers.get(py)
            if w is None or w.poll() is not None:
                workers[py] = subprocess.Popen([py, script, str(LIFETIME)])
        if time.time() >= next_sample:
            for i, p in enumerate(profilers):
                series[i].append((round(time.time() - started), rss_kib(p.pid)))
            next_sample += EVERY
        time.sleep(0.5)
    for w in workers.values():
        w.kill()
        w.wait()
    for p in profilers:
        p.send_signal(2)
        p.wait()
    report(binaries, series, seconds, tmp)


def describe(binary):
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip()
    return out or binary


def report(binaries, series, seconds, tmp):
    lines = [SECTION, "",
             f"`bench/memory.py {seconds} {' '.join(binaries)}`: four Pythons (3.11, 3.12, "
             "3.13, 3.8) that compile and run a new module every few milliseconds (200 sources, "
             f"so names repeat in new code objects) and are replaced by new processes every "
             f"{LIFETIME} s; each prof-bpf records them all with `--all -r 1000`, side by side. "
             f"VmRSS every {EVERY} s.", "",
             "| build | RSS at 1 min | at the end | growth after warm-up | max |",
             "|---|---|---|---|---|"]
    for b, s in zip(binaries, series):
        values = [(t, v) for t, v in s if v is not None]
        warm = [v for t, v in values if t >= WARMUP]
        if not warm:
            continue
        lines.append(f"| {describe(b)} | {warm[0] / 1024:.1f} MiB | {warm[-1] / 1024:.1f} MiB "
                     f"| {(warm[-1] - warm[0]) / 1024:+.1f} MiB | {max(warm) / 1024:.1f} MiB |")
    lines.append("")
    for b, s in zip(binaries, series):
        lines.append(f"{describe(b)}, MiB by minute: " + ", ".join(
            f"{v / 1024:.1f}" for t, v in s if v is not None and t % 60 < EVERY))
    lines.append("")
    text = "\n".join(lines) + "\n"
    print(text)
    print(f"(profiles and summaries in {tmp})")
    with open("BENCHMARKS.md") as f:
        old = f.read()
    if SECTION in old:
        start = old.index(SECTION)
        end = old.find("\n## ", start + 1)
        old = old[:start] + text + ("" if end < 0 else old[end + 1:])
        new = old
    else:
        new = old.rstrip("\n") + "\n\n" + text
    with open("BENCHMARKS.md", "w") as f:
        f.write(new)


if __name__ == "__main__":
    main()
