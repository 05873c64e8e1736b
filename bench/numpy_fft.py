"""Fixed-work numpy fixture for the native-stack benchmark (issue 5): FFTs (C++ pocketfft
under one Python function) and some pure Python, about 3:1.

The last line of stdout is JSON: {"elapsed_s": ..., "process_cpu_s": ...}, elapsed_s being
time.perf_counter() around the work only (start-up, `import numpy` and the profiler's attach
and write-out are excluded).

Usage: python bench/numpy_fft.py [ROUNDS]
"""

import json
import resource
import sys
import time

import numpy as np

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 40


def fft_work(data):
    for _ in range(30):
        np.fft.fft(data)


def python_work():
    x = 0
    for i in range(60000):
        x += i * i
    return x


def main():
    data = np.random.default_rng(1).random(1 << 16) + 0j
    t = time.perf_counter()
    for _ in range(ROUNDS):
        fft_work(data)
        python_work()
    elapsed = time.perf_counter() - t
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"elapsed_s": elapsed, "process_cpu_s": ru.ru_utime + ru.ru_stime}), flush=True)


if __name__ == "__main__":
    main()
