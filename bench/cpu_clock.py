#!/usr/bin/env python3
"""Runs a command under CPU-clock perf events with nothing attached: the floor of any sampler
that interrupts the program it samples.

Opens one software CPU-clock event per CPU (as prof-bpf's sampler does, with `exclude_idle`) at
RATE Hz, with no BPF program and no ring buffer, runs the command, and exits with its status. What
the command loses to this is the timer interrupts alone: on a virtual machine each can cost far
more than the sample a program takes in it.

Usage (as root):  python3 bench/cpu_clock.py RATE COMMAND...
"""

import ctypes
import os
import struct
import subprocess
import sys

PERF_TYPE_SOFTWARE = 1
PERF_COUNT_SW_CPU_CLOCK = 0
PERF_ATTR_SIZE_VER0 = 64
EXCLUDE_IDLE = 1 << 7
SYS_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}[os.uname().machine]
LIBC = ctypes.CDLL(None, use_errno=True)


def open_cpu_clock(cpu, rate):
    """A CPU-clock event on `cpu` firing `rate` times a second, enabled; its descriptor."""
    # struct perf_event_attr, version 0: type, size, config, sample_period, sample_type,
    # read_format, flags, wakeup_events, bp_type, config1.
    attr = struct.pack("IIQQQQQIIQ", PERF_TYPE_SOFTWARE, PERF_ATTR_SIZE_VER0,
                       PERF_COUNT_SW_CPU_CLOCK, 1_000_000_000 // rate, 0, 0, EXCLUDE_IDLE, 0, 0, 0)
    buf = ctypes.create_string_buffer(attr, len(attr))
    fd = LIBC.syscall(SYS_PERF_EVENT_OPEN, buf, -1, cpu, -1, 0)
    if fd < 0:
        sys.exit(f"cpu_clock: perf_event_open on CPU {cpu}: {os.strerror(ctypes.get_errno())}")
    return fd


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    rate = int(sys.argv[1])
    events = [open_cpu_clock(cpu, rate) for cpu in range(os.cpu_count())]
    status = subprocess.run(sys.argv[2:]).returncode
    for fd in events:
        os.close(fd)
    sys.exit(status)


if __name__ == "__main__":
    main()
