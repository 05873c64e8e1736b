"""CPU-bound pure-Python fixture for the profiler overhead benchmark.

Does a FIXED amount of work (not a fixed duration), so a profiler's overhead
shows up as a longer elapsed time. The work goes through a few nested
functions so sampled stacks are 5-10 frames deep, like real code.

The last line of stdout is JSON: {"elapsed_s": ..., "process_cpu_s": ...,
"checksum": ...}, where elapsed_s is time.perf_counter() around the work only
(interpreter start-up and the profiler's attach/write costs are not included)
and process_cpu_s is this process's whole user+system CPU time so far (lets the
benchmark tell the profiler's own CPU use apart from the program's).

Usage: python bench/cpu_bound.py [ITERATIONS]
"""

import json
import resource
import sys
import time

ITERATIONS = 12000  # fixed work; tuned to ~3 s unprofiled on the bench VM


def mix(a, b):
    return (a * 31 + b) & 0xFFFFFFFF


def hash_row(row):
    h = 17
    for v in row:
        h = mix(h, v)
    return h


def make_row(seed, width):
    return [(seed * i + 7) % 1009 for i in range(width)]


def fill_table(seed, rows, width):
    return [hash_row(make_row(seed + r, width)) for r in range(rows)]


def reduce_table(table):
    total = 0
    for i, v in enumerate(table):
        total = mix(total, v ^ i)
    return total


def step(seed):
    return reduce_table(fill_table(seed, 20, 40))


def run(iterations):
    acc = 0
    for i in range(iterations):
        acc = mix(acc, step(i))
    return acc


def main():
    iterations = int(sys.argv[1]) if len(sys.argv) > 1 else ITERATIONS
    t0 = time.perf_counter()
    checksum = run(iterations)
    elapsed = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"elapsed_s": round(elapsed, 6),
                      "process_cpu_s": round(ru.ru_utime + ru.ru_stime, 6),
                      "checksum": checksum, "iterations": iterations}))


if __name__ == "__main__":
    main()
