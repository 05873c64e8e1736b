#!/usr/bin/env bash
# Overhead benchmark: how much does profiling slow a CPU-bound Python program?
#
# Usage (as root, from the repo root):  bench/overhead.sh [RUNS]   (default 5)
#
# What it measures
#   bench/cpu_bound.py does a FIXED amount of pure-Python work and prints, as
#   its last stdout line, JSON with its own elapsed time (time.perf_counter()
#   around the work only). That number is the "workload time": it excludes
#   interpreter start-up and the profiler's own start-up / attach / writing of
#   the output file, so it isolates the cost the profiler imposes on the
#   running program. The whole command's wall time is recorded separately.
#
#   Configurations (each run RUNS times):
#     unprofiled       python bench/cpu_bound.py
#     prof-bpf @100    prof-bpf record -r 100  -f raw -o FILE -- python bench/cpu_bound.py
#     prof-bpf @1000   prof-bpf record -r 1000 -f raw -o FILE -- python ...
#     py-spy @100      py-spy   record -r 100  -f raw -o FILE -- python ...
#     py-spy @1000     py-spy   record -r 1000 -f raw -o FILE -- python ...
#   py-spy runs with its defaults (it pauses the target to read each sample).
#
# Why the rounds are interleaved
#   On a small shared VM the speed of the machine drifts (CPU steal, frequency,
#   other jobs). Running all repetitions of one configuration, then all of the
#   next, would fold that drift into the comparison. Instead each round runs
#   every configuration once (round-robin, the starting configuration rotating
#   from round to round), so noise hits all configurations alike, and the
#   slowdown is reported as the median of per-round ratios against the
#   unprofiled run of the same round.
#
# Output: a markdown section printed to stdout and written into BENCHMARKS.md
# under "## Overhead: CPU-bound fixture (issue 3)" (only that section is
# replaced; the file is created with a short intro if missing).
set -euo pipefail

RUNS="${1:-5}"
if ! [[ "$RUNS" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [RUNS]   (RUNS a positive integer, default 5)" >&2
    exit 2
fi
CMDLINE="$0${*:+ $*}"

if [[ $EUID -ne 0 ]]; then
    echo "$0: must run as root (prof-bpf loads eBPF programs, py-spy ptraces)" >&2
    exit 1
fi

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

PY="$(pyenv prefix 3.12)/bin/python3"
VENV="target/bench-venv"
WORKLOAD="bench/cpu_bound.py"
SECTION="## Overhead: CPU-bound fixture (issue 3)"

log() { echo "overhead: $*" >&2; }

# --- set-up --------------------------------------------------------------
if [[ ! -x target/release/prof-bpf ]]; then
    log "building prof-bpf (release)"
    cargo build --release
fi
if [[ ! -x "$VENV/bin/py-spy" ]]; then
    log "installing py-spy into $VENV"
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install -q py-spy
fi

WORK="$(mktemp -d /tmp/prof-bpf-overhead.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

# Snapshot the binary so a concurrent rebuild cannot change it mid-benchmark.
cp target/release/prof-bpf "$WORK/prof-bpf"
PROF_BPF="$WORK/prof-bpf"
PYSPY="$VENV/bin/py-spy"

PYSPY_VERSION="$("$PYSPY" --version | awk '{print $2}')"
PY_VERSION="$("$PY" -c 'import platform; print(platform.python_version())')"
PROF_BPF_SHA="$(sha256sum "$PROF_BPF" | cut -c1-12)"
GIT_REV="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
    GIT_REV="$GIT_REV (working tree has uncommitted changes)"
fi
KERNEL="$(uname -r)"
NCPU="$(nproc)"
CPU_MODEL="$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n1)"
DATE="$(date -u '+%Y-%m-%d %H:%M UTC')"
LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg)"

# --- one measurement -----------------------------------------------------
CONFIGS=(unprofiled prof-bpf@100 prof-bpf@1000 py-spy@100 py-spy@1000)
RESULTS="$WORK/results.tsv"
printf 'round\tconfig\tworkload_s\twall_s\tprofiler_cpu_s\tbackground_cpus\tsamples\tns_per_recorded\n' >"$RESULTS"

CLK_TCK="$(getconf CLK_TCK)"
# busy_jiffies: CPU time spent non-idle by all CPUs since boot (user..steal).
busy_jiffies() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }

# run_one ROUND CONFIG: runs the configuration once, appends a row to $RESULTS.
run_one() {
    local round="$1" config="$2"
    local out="$WORK/$config.$round.raw" so="$WORK/$config.$round.stdout" se="$WORK/$config.$round.stderr"
    local -a cmd
    case "$config" in
        unprofiled)  cmd=("$PY" "$WORKLOAD") ;;
        prof-bpf@*)  cmd=("$PROF_BPF" record -r "${config#*@}" -f raw -o "$out" -- "$PY" "$WORKLOAD") ;;
        py-spy@*)    cmd=("$PYSPY" record -r "${config#*@}" -f raw -o "$out" -- "$PY" "$WORKLOAD") ;;
    esac

    # Wall and CPU time of the whole command (bash's `time` includes the
    # grandchildren), plus the machine's busy CPU time over the same interval:
    # the difference is CPU used by everything else ("background" load).
    local tf="$WORK/$config.$round.time" busy0 busy1 rc=0
    busy0="$(busy_jiffies)"
    { TIMEFORMAT='%3R %3U %3S'; time "${cmd[@]}" >"$so" 2>"$se"; } 2>"$tf" || rc=$?
    busy1="$(busy_jiffies)"
    if [[ $rc -ne 0 ]]; then
        log "round $round, $config FAILED (exit $rc): ${cmd[*]}"
        sed 's/^/    /' "$se" >&2
        exit 1
    fi

    local workload pycpu wall background profcpu samples="" nsrec=""
    # The fixture's JSON is its last line; py-spy also prints its banner to stdout.
    read -r workload pycpu < <(grep '"elapsed_s"' "$so" | tail -n1 |
        "$PY" -c 'import json,sys; d = json.load(sys.stdin); print(d["elapsed_s"], d["process_cpu_s"])')
    # profcpu: the command's CPU time minus the Python process's own = the profiler's.
    read -r wall background profcpu < <(awk -v b0="$busy0" -v b1="$busy1" -v hz="$CLK_TCK" -v py="$pycpu" \
        '{ printf "%.3f %.2f %.3f\n", $1, ((b1 - b0) / hz - $2 - $3) / $1, $2 + $3 - py }' "$tf")
    case "$config" in
        prof-bpf@*)
            # "prof-bpf: 2006 samples of python3 (pid ...) in ..."
            samples="$(sed -n 's/^prof-bpf: \([0-9][0-9]*\) samples of .*/\1/p' "$se" | head -n1)"
            # "prof-bpf: kernel time: 2131 ns per CPU sample over 4086 runs, 4341 ns per recorded sample"
            nsrec="$(sed -n 's/.*, \([0-9][0-9]*\) ns per recorded sample.*/\1/p' "$se" | head -n1)"
            ;;
        py-spy@*)
            # raw format: "frame;frame;... COUNT" per line
            samples="$(awk '{ s += $NF } END { print s + 0 }' "$out")"
            ;;
    esac
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$config" "$workload" "$wall" "$profcpu" "$background" "$samples" "$nsrec" >>"$RESULTS"
    log "round $round/$RUNS  $(printf '%-14s' "$config") workload ${workload}s  wall ${wall}s  profiler CPU ${profcpu}s  background ${background} CPUs${samples:+  samples $samples}${nsrec:+  ${nsrec} ns/recorded sample}"
    rm -f "$out"
}

log "$RUNS rounds x ${#CONFIGS[@]} configurations; workload: $PY $WORKLOAD"
for ((round = 1; round <= RUNS; round++)); do
    n=${#CONFIGS[@]}
    for ((k = 0; k < n; k++)); do
        run_one "$round" "${CONFIGS[$(((round - 1 + k) % n))]}"
    done
done
LOAD_END="$(cut -d' ' -f1-3 /proc/loadavg)"

# --- summary -------------------------------------------------------------
MD="$WORK/section.md"
RESULTS="$RESULTS" SECTION="$SECTION" CMDLINE="$CMDLINE" DATE="$DATE" KERNEL="$KERNEL" \
NCPU="$NCPU" CPU_MODEL="$CPU_MODEL" PYSPY_VERSION="$PYSPY_VERSION" PY_VERSION="$PY_VERSION" \
PY="$PY" GIT_REV="$GIT_REV" PROF_BPF_SHA="$PROF_BPF_SHA" RUNS="$RUNS" \
LOAD_START="$LOAD_START" LOAD_END="$LOAD_END" \
"$PY" - >"$MD" <<'EOF'
import csv, os, statistics as st
from collections import defaultdict

E = os.environ
rows = list(csv.DictReader(open(E["RESULTS"]), delimiter="\t"))
by = defaultdict(dict)  # config -> round -> row
for r in rows:
    by[r["config"]][r["round"]] = r
configs = ["unprofiled", "prof-bpf@100", "prof-bpf@1000", "py-spy@100", "py-spy@1000"]
label = {
    "unprofiled": "unprofiled",
    "prof-bpf@100": "prof-bpf `-r 100`",
    "prof-bpf@1000": "prof-bpf `-r 1000`",
    "py-spy@100": "py-spy `-r 100`",
    "py-spy@1000": "py-spy `-r 1000`",
}
base = by["unprofiled"]

def med(xs):
    return st.median(xs) if xs else None

out = [E["SECTION"], ""]
out.append(
    f"Median of {E['RUNS']} interleaved rounds. *Workload s* is the fixture's own "
    "`perf_counter` time around the work (excludes interpreter start-up and the "
    "profiler's attach / write-out); *slowdown* is the median of per-round ratios "
    "to the unprofiled run of the same round; *command wall s* is the whole command "
    "including start-up and writing the profile; *profiler CPU s* is the CPU time "
    "(user+system) used by the profiler process itself, i.e. the command's total minus the "
    "Python process's own (on this 2-CPU machine it runs on the other CPU, so it costs "
    "the program little wall time); *samples/s* is samples collected "
    "divided by workload seconds (the sample count also covers interpreter start-up, "
    "so this slightly overstates the in-workload rate); *background CPUs* is the CPU "
    "time used by other processes during the run, divided by its wall time (machine-wide "
    "busy time from `/proc/stat` minus the command's own user+system time; values within ±0.05 are accounting noise)."
)
out.append("")
out.append("| configuration | workload s (min–max) | slowdown vs unprofiled (min–max) | command wall s | profiler CPU s "
           "| samples | samples/s | BPF ns per recorded sample | background CPUs |")
out.append("|---|---|---|---|---|---|---|---|---|")
for c in configs:
    rs = list(by[c].values())
    w = [float(r["workload_s"]) for r in rs]
    wall = [float(r["wall_s"]) for r in rs]
    ratios = [float(r["workload_s"]) / float(base[k]["workload_s"]) for k, r in by[c].items()]
    smp = [int(r["samples"]) for r in rs if r["samples"]]
    rate = [int(r["samples"]) / float(r["workload_s"]) for r in rs if r["samples"]]
    ns = [int(r["ns_per_recorded"]) for r in rs if r["ns_per_recorded"]]
    bg = [float(r["background_cpus"]) for r in rs]
    pcpu = [float(r["profiler_cpu_s"]) for r in rs]
    out.append(
        f"| {label[c]} | {med(w):.3f} ({min(w):.3f}–{max(w):.3f}) | "
        + ("1.000 (baseline)" if c == "unprofiled"
           else f"{med(ratios):.3f} ({min(ratios):.3f}–{max(ratios):.3f})")
        + f" | {med(wall):.3f} | "
        + ("–" if c == "unprofiled" else f"{med(pcpu):.3f}") + " | "
        + (f"{med(smp):.0f}" if smp else "–") + " | "
        + (f"{med(rate):.0f}" if rate else "–") + " | "
        + (f"{med(ns):.0f}" if ns else "–") + " | "
        + f"{med(bg):.2f} (max {max(bg):.2f})" + " |"
    )
bg_all = [float(r["background_cpus"]) for r in rows]
if max(bg_all) > 0.25:
    busy = sum(b > 0.25 for b in bg_all)
    out.append("")
    out.append(f"**Warning:** other processes used more than 0.25 CPU during {busy} of "
               f"{len(bg_all)} runs (max {max(bg_all):.2f} of {E['NCPU']} CPUs); "
               "those runs are perturbed and the slowdowns above are less reliable.")
out.append("")
out.append(f"- Command: `{E['CMDLINE']}` (as root, from the repo root)")
out.append(f"- Date: {E['DATE']}")
out.append(f"- Kernel: `{E['KERNEL']}`; CPUs: {E['NCPU']} ({E['CPU_MODEL'] or 'unknown model'}); "
           f"load average at start / end: {E['LOAD_START']} / {E['LOAD_END']}")
out.append(f"- Python: {E['PY_VERSION']} (`{E['PY']}`)")
out.append(f"- py-spy: {E['PYSPY_VERSION']} (from PyPI, default blocking mode)")
out.append(f"- prof-bpf: `target/release/prof-bpf` at git {E['GIT_REV']}, binary sha256 {E['PROF_BPF_SHA']}…")
print("\n".join(out))
EOF

cat "$MD"

# --- write BENCHMARKS.md (replace only our section) ----------------------
MD="$MD" SECTION="$SECTION" "$PY" - <<'EOF'
import os, re
path, section = "BENCHMARKS.md", open(os.environ["MD"]).read().rstrip("\n") + "\n"
head = os.environ["SECTION"]
if os.path.exists(path):
    text = open(path).read()
else:
    text = (
        "# Benchmarks\n\n"
        "How much prof-bpf slows down the program it profiles, compared with running\n"
        "unprofiled and with py-spy. `bench/overhead.sh` runs a fixed amount of\n"
        "CPU-bound pure-Python work (`bench/cpu_bound.py`) unprofiled and under each\n"
        "profiler at 100 and 1000 samples/s, interleaving the configurations round-robin\n"
        "so machine noise hits them alike, and times the workload from inside the\n"
        "program (so profiler start-up and output writing are excluded). For prof-bpf\n"
        "it also reports the time the BPF program spends in the kernel per recorded\n"
        "sample, as measured by prof-bpf itself. Regenerate with\n"
        "`sudo bench/overhead.sh [RUNS]`.\n\n"
    )
# Our section runs from its heading to the next "## " heading (or end of file).
m = re.search(r"^" + re.escape(head) + r"[ \t]*\n.*?(?=^## |\Z)", text, re.M | re.S)
if m:
    text = text[: m.start()] + section + ("\n" if m.end() < len(text) else "") + text[m.end():]
else:
    text = text.rstrip("\n") + "\n\n" + section
open(path, "w").write(text)
EOF
log "wrote section \"$SECTION\" to $REPO/BENCHMARKS.md"
