#!/usr/bin/env bash
# Libraries mapped mid-run (issue 16): how many `--native` samples stop "outside known mappings"
# because they landed in a library before its unwind table was loaded. Two prof-bpf builds, A and
# B, record the test suite's numpy fixture (tests/fixtures/numpy_fft.py: `import numpy`, then
# FFTs, whose pocketfft library numpy maps at the first call) in interleaved rounds, so both
# meet the same moments of the machine.
#
# Usage (as root, from the repo root):  bench/library_race.sh A B [ROUNDS]   (default 10)
#   e.g. build an earlier commit in a worktree and compare its target/release/prof-bpf with
#   this checkout's.
# Prints, per round and build, the samples stopped outside known mappings, those of them in
# pocketfft, and the samples recorded; then the medians and the median of B/A pair by pair.
# Needs the numpy venv scripts/setup makes (target/numpy-venv).
set -euo pipefail

[[ $# -ge 2 ]] || { echo "usage: $0 A B [ROUNDS]" >&2; exit 2; }
A="$1" B="$2" ROUNDS="${3:-10}"
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 A B [ROUNDS]" >&2; exit 2; }
[[ $EUID -eq 0 ]] || { echo "$0: must run as root" >&2; exit 1; }
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PY=target/numpy-venv/bin/python
[[ -x "$PY" ]] || { echo "$0: $PY is missing: run scripts/setup" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

for round in $(seq 1 "$ROUNDS"); do
  for build in A B; do
    bin=$A
    [[ $build == B ]] && bin=$B
    "$bin" record --native -r 1000 -f raw -o "$out/profile.txt" -- "$PY" tests/fixtures/numpy_fft.py \
      >/dev/null 2>"$out/stderr"
    outside=$(grep -o '[0-9]* address outside known mappings' "$out/stderr" | cut -d' ' -f1)
    samples=$(grep -o '(\([0-9]*\) of \([0-9]*\) samples reached' "$out/stderr" | awk '{print $3}')
    pocketfft=$(grep 'outside known mappings' "$out/profile.txt" | grep pocketfft \
      | awk '{s += $NF} END {print s + 0}')
    echo "$round $build ${outside:-0} $pocketfft ${samples:-0}"
  done
done | tee "$out/rounds" | awk '{printf "round %s %s: %s outside known mappings (%s in pocketfft) of %s samples\n", $1, $2, $3, $4, $5}'

python3 - "$out/rounds" <<'EOF'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
col = lambda build, i: [int(r[i]) for r in rows if r[1] == build]
for build in "AB":
    o, p = col(build, 2), col(build, 3)
    print(f"{build}: outside known mappings median {statistics.median(o)} ({min(o)}-{max(o)}), "
          f"in pocketfft median {statistics.median(p)} ({min(p)}-{max(p)})")
ratios = sorted(b / a for a, b in zip(col("A", 2), col("B", 2)) if a)
print("B/A pair by pair: median %.2f, %s" % (statistics.median(ratios),
      " ".join(f"{r:.2f}" for r in ratios)))
EOF
