#!/usr/bin/env bash
# Native-stack benchmark (issues 5 and 16): what `--native` costs, against py-spy's `--native`,
# on the numpy FFT fixture (bench/numpy_fft.py: fixed work, most of it in C++ pocketfft) or, with
# FIXTURE=lomb_scargle, on astropy's Lomb-Scargle periodogram (bench/lomb_scargle.py: deep mixed
# stacks of astropy's Python, numpy's C and pocketfft's C++; astropy from PyPI, pinned, in the
# bench venv).
#
# Usage (as root, from the repo root):  [FIXTURE=numpy_fft|lomb_scargle] bench/native.sh [RUNS]
#   (default 3 runs of numpy_fft)
#
# Configurations, interleaved round-robin as in bench/overhead.sh (see there for why):
#   unprofiled          python bench/numpy_fft.py
#   prof-bpf            prof-bpf record -r 1000 -f raw            (Python frames only)
#   prof-bpf --native   prof-bpf record -r 1000 -f raw --native
#   py-spy --native     py-spy record -r 1000 -f raw --native     (pauses the program per sample)
# Reported: the fixture's own perf_counter time around the work and the slowdown against the
# unprofiled run of the same round (median of per-round ratios), samples, the BPF program's run
# time per recorded sample (from prof-bpf's summary: the kernel's own accounting) and, with
# --native, the share of complete native unwinds.
# Writes the section "## Native stacks: numpy FFT fixture (issue 5)" of BENCHMARKS.md.
set -euo pipefail

RUNS="${1:-3}"
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [RUNS]" >&2; exit 2; }
[[ $EUID -eq 0 ]] || { echo "$0: must run as root" >&2; exit 1; }
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
log() { echo "native-bench: $*" >&2; }

FIXTURE="${FIXTURE:-numpy_fft}"
PYSPY_VENV="target/bench-venv"
if [[ ! -x "$PYSPY_VENV/bin/py-spy" ]]; then
    log "installing py-spy into $PYSPY_VENV"
    "$(pyenv prefix 3.11)/bin/python3.11" -m venv "$PYSPY_VENV"
    "$PYSPY_VENV/bin/pip" install -q py-spy
fi
case "$FIXTURE" in
    numpy_fft)
        scripts/setup # the numpy venv
        PY="target/numpy-venv/bin/python"
        FIXTURE_ARGS=()
        SECTION="## Native stacks: numpy FFT fixture (issue 5)"
        ;;
    lomb_scargle)
        ASTROPY="astropy==8.0.2"
        PY="$PYSPY_VENV/bin/python"
        if ! "$PY" -c 'import astropy, sys; sys.exit(astropy.__version__ != "8.0.2")' 2>/dev/null; then
            log "installing $ASTROPY into $PYSPY_VENV"
            "$PY" -m pip install -q "$ASTROPY"
        fi
        # 2 x 10^5 points: the periodogram's grid grows with the points (10^6 take 75 s a run).
        FIXTURE_ARGS=(1 200000)
        SECTION="## Native stacks: astropy Lomb-Scargle (issue 16)"
        ;;
    *) echo "$0: FIXTURE is numpy_fft or lomb_scargle" >&2; exit 2 ;;
esac
FIX=(bench/"$FIXTURE".py "${FIXTURE_ARGS[@]}")
[[ -x target/release/prof-bpf ]] || cargo build --release

WORK="$(mktemp -d /tmp/prof-bpf-native.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
cp target/release/prof-bpf "$WORK/prof-bpf"
PROF_BPF="$WORK/prof-bpf"
PYSPY="$PYSPY_VENV/bin/py-spy"

CONFIGS=(unprofiled prof-bpf prof-bpf-native py-spy-native)
RESULTS="$WORK/results.tsv"
printf 'round\tconfig\tworkload_s\tsamples\tns_per_recorded\tcomplete_pct\tmedian_depth\n' >"$RESULTS"

# The median number of frames (Python and native) of a recorded sample, from a raw profile.
median_depth() {
    "$PY" - "$1" <<'PYEOF'
import sys
depths = []
for line in open(sys.argv[1]):
    stack, _, n = line.rstrip("\n").rpartition(" ")
    depths.append((stack.count(";") + 1, int(n)))
depths.sort()
half, seen = sum(n for _, n in depths) / 2, 0
for d, n in depths:
    seen += n
    if seen >= half:
        print(d)
        break
PYEOF
}

run_one() {
    local round="$1" config="$2" out="$WORK/$2.$1.raw" so="$WORK/$2.$1.out" se="$WORK/$2.$1.err"
    local -a cmd
    case "$config" in
        unprofiled) cmd=("$PY" "${FIX[@]}") ;;
        prof-bpf) cmd=("$PROF_BPF" record -r 1000 -f raw -o "$out" -- "$PY" "${FIX[@]}") ;;
        prof-bpf-native) cmd=("$PROF_BPF" record -r 1000 -f raw --native -o "$out" -- "$PY" "${FIX[@]}") ;;
        py-spy-native) cmd=("$PYSPY" record -r 1000 -f raw --native -o "$out" -- "$PY" "${FIX[@]}") ;;
    esac
    "${cmd[@]}" >"$so" 2>"$se" || { log "$config failed"; cat "$se" >&2; exit 1; }
    local workload samples="" ns="" complete=""
    workload="$(grep '"elapsed_s"' "$so" | tail -n1 | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["elapsed_s"])')"
    case "$config" in
        prof-bpf*)
            samples="$(sed -n 's/^prof-bpf: \([0-9][0-9]*\) samples of .*/\1/p' "$se" | head -n1)"
            ns="$(sed -n 's/.*, \([0-9][0-9]*\) ns per recorded sample.*/\1/p' "$se" | head -n1)"
            complete="$(sed -n 's/.*native unwind: \([0-9.]*\)% complete.*/\1/p' "$se" | head -n1)"
            ;;
        py-spy*) samples="$(awk '{ s += $NF } END { print s + 0 }' "$out")" ;;
    esac
    local depth=""
    [[ "$config" == prof-bpf-native ]] && depth="$(median_depth "$out")"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$config" "$workload" "$samples" "$ns" "$complete" "$depth" >>"$RESULTS"
    log "round $round $config: workload ${workload}s samples ${samples:-?} ${ns:+${ns} ns/sample} ${complete:+${complete}% complete}"
}

DATE="$(date -u '+%Y-%m-%d %H:%M UTC')"
LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg)"
for ((round = 1; round <= RUNS; round++)); do
    n=${#CONFIGS[@]}
    for ((k = 0; k < n; k++)); do
        run_one "$round" "${CONFIGS[$(((round - 1 + k) % n))]}"
    done
done
LOAD_END="$(cut -d' ' -f1-3 /proc/loadavg)"

MD="$WORK/section.md"
RESULTS="$RESULTS" SECTION="$SECTION" RUNS="$RUNS" DATE="$DATE" LOAD="$LOAD_START / $LOAD_END" \
KERNEL="$(uname -r)" NCPU="$(nproc)" FIXTURE="$FIXTURE" FIXTURE_ARGS="${FIXTURE_ARGS[*]}" PYSPY_VERSION="$("$PYSPY" --version | awk '{print $2}')" \
NUMPY="$("$PY" -c 'import numpy, platform; print(numpy.__version__, "on Python", platform.python_version())')" \
ASTROPY_VERSION="$("$PY" -c 'import astropy; print(astropy.__version__)' 2>/dev/null || true)" \
VENV="$(dirname "$(dirname "$PY")")" GIT_REV="$(git rev-parse --short HEAD)" "$PY" - >"$MD" <<'PYEOF'
import csv, os, statistics as st
from collections import defaultdict
E = os.environ
rows = list(csv.DictReader(open(E["RESULTS"]), delimiter="\t"))
by = defaultdict(dict)
for r in rows:
    by[r["config"]][r["round"]] = r
label = {"unprofiled": "unprofiled", "prof-bpf": "prof-bpf `-r 1000`",
         "prof-bpf-native": "prof-bpf `-r 1000 --native`", "py-spy-native": "py-spy `-r 1000 --native`"}
base = by["unprofiled"]
what = {
    "numpy_fft": "`bench/numpy_fft.py` (fixed work: FFTs of 65536 complex points in numpy's C++ "
                 "pocketfft, and some pure Python)",
    "lomb_scargle": f"`bench/lomb_scargle.py {E['FIXTURE_ARGS']}` (astropy {E['ASTROPY_VERSION']}'s "
                    "`LombScargle(t, y).autopower()` on 200,000 irregularly sampled points: "
                    "astropy's Python over numpy's C and pocketfft's C++)",
}[E["FIXTURE"]]
out = [E["SECTION"], "",
       f"Median of {E['RUNS']} interleaved rounds of {what}. *Workload s* is the fixture's "
       "own `perf_counter` time around the work; *slowdown* is the median of per-round ratios to the "
       "unprofiled run of the same round; *BPF ns per recorded sample* is the kernel's accounting of "
       "the sampling programs (sampler, native unwinder, Python walker) divided by recorded samples; "
       "*frames* is the median depth of a recorded sample with `--native` (Python and native frames).", "",
       "| configuration | workload s (min–max) | slowdown vs unprofiled | samples | BPF ns per recorded sample | complete native unwinds | frames |",
       "|---|---|---|---|---|---|---|"]
med = lambda xs: st.median(xs) if xs else None
for c in ["unprofiled", "prof-bpf", "prof-bpf-native", "py-spy-native"]:
    rs = list(by[c].values())
    w = [float(r["workload_s"]) for r in rs]
    ratios = [float(r["workload_s"]) / float(base[k]["workload_s"]) for k, r in by[c].items()]
    smp = [int(r["samples"]) for r in rs if r["samples"]]
    ns = [int(r["ns_per_recorded"]) for r in rs if r["ns_per_recorded"]]
    cp = [float(r["complete_pct"]) for r in rs if r["complete_pct"]]
    dp = [int(r["median_depth"]) for r in rs if r.get("median_depth")]
    out.append(f"| {label[c]} | {med(w):.3f} ({min(w):.3f}–{max(w):.3f}) | "
               + ("1.000 (baseline)" if c == "unprofiled" else f"{med(ratios):.3f} ({min(ratios):.3f}–{max(ratios):.3f})")
               + " | " + (f"{med(smp):.0f}" if smp else "–")
               + " | " + (f"{med(ns):.0f} ({min(ns)}–{max(ns)})" if ns else "–")
               + " | " + (f"{med(cp):.1f} % (min {min(cp):.1f} %)" if cp else "–")
               + " | " + (f"{med(dp):.0f}" if dp else "–") + " |")
out += ["",
        f"- Command: `FIXTURE={E['FIXTURE']} bench/native.sh {E['RUNS']}` (as root); date {E['DATE']}; kernel `{E['KERNEL']}`, "
        f"{E['NCPU']} CPUs; load average at start / end {E['LOAD']}",
        f"- numpy {E['NUMPY']} ({E['VENV']}); py-spy {E['PYSPY_VERSION']} from PyPI; prof-bpf at git {E['GIT_REV']}"]
if E["FIXTURE"] == "numpy_fft":
    out += [
        "- Where the BPF time goes (stages timed with `bpf_ktime_get_ns` in a throwaway build, "
        "3 runs, per sample, timing included): finding the thread and its frame 2.3 µs, the "
        "native unwind of about 23 frames 3.5 µs (of which 0.9 µs the 3-4 reads of a 2 KiB "
        "stack window), the Python walk 1.9 µs, counting 0.95 µs (one per-CPU hash lookup), "
        "storing on a count entry's miss 1.5 µs, new stacks' code copies 0.6 µs. The same "
        "stages of a 5-frame Python-only loop (bench/deep.py 5) take a quarter as long: the FFT "
        "leaves the program's maps and the thread's memory out of the caches, so each line "
        "touched costs a miss. Two changes made this half: a per-CPU memo of each address's "
        "unwind row (96 % of frames hit it; the mapping and row searches cost 64 and 193 ns a "
        "frame, cold), and the sampled instruction kept in the count's key rather than in the "
        "stored stack (57 % of samples stored a new stack, 4.6 µs each, because the leaf "
        "address varies). Tried earlier and not kept: an LRU-hash cache of resolved rows (a "
        "hash lookup costs what the searches do); the last frame's mapping tried before the "
        "search; four frames per `bpf_loop` call (5 %, for 0.3 s more verification at every "
        "start). The Python-only column is the same fixture without `--native`.",
        "- py-spy's sample count covers every thread it saw (numpy starts OpenBLAS threads), so it "
        "is not comparable with prof-bpf's, which counts samples of threads running Python.",
        "- The few incomplete unwinds are samples taken in a library numpy had just mapped, before "
        "its table was loaded (prof-bpf loads it as soon as such a sample arrives)."]
else:
    out += [
        "- Issue 16's case is 10^6 points (`python bench/lomb_scargle.py`, one round of about 75 s "
        "here): the benchmark takes 200,000, whose frequency grid is a fifth of the size, so that "
        "py-spy's runs end in minutes. The stacks are the same calls.",
        "- py-spy's sample count covers every thread it saw, so it is not comparable with "
        "prof-bpf's, which counts samples of threads running Python."]
print("\n".join(out))
PYEOF
cat "$MD"
MD="$MD" SECTION="$SECTION" "$PY" - <<'PYEOF'
import os, re
path, section = "BENCHMARKS.md", open(os.environ["MD"]).read().rstrip("\n") + "\n"
head = os.environ["SECTION"]
text = open(path).read() if os.path.exists(path) else "# Benchmarks\n\n"
m = re.search(r"^" + re.escape(head) + r"[ \t]*\n.*?(?=^## |\Z)", text, re.M | re.S)
if m:
    text = text[: m.start()] + section + ("\n" if m.end() < len(text) else "") + text[m.end():]
else:
    text = text.rstrip("\n") + "\n\n" + section
open(path, "w").write(text)
PYEOF
log "wrote \"$SECTION\" to BENCHMARKS.md"
