"""Fixed pure-Python work at a chosen stack depth, with a split it measures itself.

The kernel-cost benchmark (bench/kernel_cost.py) runs this under each profiler. The program
recurses until its stack holds DEPTH Python frames (counting `<module>`, `main` and the leaf), then
runs `a()` and `b()` in turn at that depth: `a` does three times `b`'s work. Each call is timed
with `perf_counter`, so the run knows its own split; a profiler's attribution error is its share
of `a` against this one.

The last line of stdout is JSON: elapsed_s (the work only, not start-up or the recursion's
descent), a_s and b_s (time inside each), process_cpu_s (this process's user+system CPU so far).

Usage: python bench/deep.py DEPTH [ROUNDS]
"""

import json
import resource
import sys
import time

ROUNDS = 400  # fixed work; about 1.6 s unprofiled on the bench VM, at any depth


def spin(n):
    x = 0
    for i in range(n):
        x = (x * 31 + i) & 0xFFFF
    return x


def a():
    return spin(30000)


def b():
    return spin(10000)


def leaf(rounds, times):
    for _ in range(rounds):
        t0 = time.perf_counter()
        a()
        t1 = time.perf_counter()
        b()
        t2 = time.perf_counter()
        times[0] += t1 - t0
        times[1] += t2 - t1


def descend(levels, rounds, times):
    if levels > 0:
        return descend(levels - 1, rounds, times)
    return leaf(rounds, times)


def main():
    depth = int(sys.argv[1])
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else ROUNDS
    if depth < 5:
        sys.exit("DEPTH must be at least 5: <module>, main, descend, leaf and a/b")
    sys.setrecursionlimit(depth + 100)
    times = [0.0, 0.0]
    start = time.perf_counter()
    # <module>, main, `depth - 4` descend frames, leaf, a or b: `depth` frames in all.
    descend(depth - 5, rounds, times)
    elapsed = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "elapsed_s": elapsed,
                "a_s": times[0],
                "b_s": times[1],
                "process_cpu_s": usage.ru_utime + usage.ru_stime,
            }
        )
    )


if __name__ == "__main__":
    main()
