"""Fixed-work astropy fixture for the native-stack benchmark (issue 16): the Lomb-Scargle
periodogram of 10^6 irregularly sampled points (`LombScargle(t, y).autopower()`, astropy from
PyPI), whose samples are deep mixed stacks: astropy's Python, numpy's C, and pocketfft's C++
under `np.fft`.

The last line of stdout is JSON: {"elapsed_s": ..., "process_cpu_s": ...}, elapsed_s being
time.perf_counter() around the work only (start-up, the imports and the profiler's attach and
write-out are excluded).

Usage: python bench/lomb_scargle.py [ROUNDS [POINTS]]   (default 1 round of 10^6 points, the
issue's case: about 75 s here; the benchmark takes 200,000)
"""

import json
import resource
import sys
import time

import numpy as np
from astropy.timeseries import LombScargle

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 1
POINTS = int(sys.argv[2]) if len(sys.argv) > 2 else 10**6


def main():
    rng = np.random.default_rng(1)
    t = np.sort(rng.uniform(0, 1000, POINTS))
    y = np.sin(2 * np.pi * t / 37.0) + rng.normal(0, 0.5, POINTS)
    start = time.perf_counter()
    for _ in range(ROUNDS):
        LombScargle(t, y).autopower()
    elapsed = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"elapsed_s": elapsed, "process_cpu_s": usage.ru_utime + usage.ru_stime}))


if __name__ == "__main__":
    main()
