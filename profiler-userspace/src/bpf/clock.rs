//! The sample clock under the sampler: one CPU-clock perf event per CPU, re-armed at random
//! moments with a random period around the rate, so that samples never fall into step with the
//! scheduler tick (or any other periodic work) and miss a thread that runs at a fixed point of
//! it.
//!
//! A CPU-clock event fires every `1/rate` seconds of a CPU's wall time, always at the same
//! phase. A thread that shares its CPU and gives it up mid-tick (on a system call, when its
//! slice is used up) runs at the same point of every tick: at a rate in step with the tick
//! (100 Hz with HZ=250, 250, 1000) the samples fall at a phase where it never runs or always
//! does. Measured here (HZ=250; split.py sharing one CPU with two busy loops, at 250 Hz): 0.4 %
//! of the samples its CPU time implies in one run, 270 % in the next; at the default 100 Hz,
//! with four busy loops on two CPUs, 52-116 %. Re-arming every CPU's event at a random moment
//! with a period drawn per window moves the phase continually (97-107 % in the same runs), and
//! the expected number of samples per window stays exactly `rate * window`. The price: a thread
//! that shares its CPU gets each of that CPU's samples by chance, a binomial count, where the
//! fixed phase gave an exact one or a biased one.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    sync::mpsc::{self, RecvTimeoutError, Sender},
    thread::{self, JoinHandle},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// The mean window between two re-arms of one CPU's event, at rates of at least
/// `1 / (WINDOW / MIN_WINDOW_PERIODS)`; each window is drawn from half to one and a half of it.
const WINDOW: Duration = Duration::from_millis(50);
/// At low rates a window holds at least this many periods, so re-arming never dominates.
const MIN_WINDOW_PERIODS: f64 = 8.0;
/// The most samples a window's count may vary by (see `window_period`).
const MAX_SPREAD: f64 = 12.0;
/// The shortest period the kernel's CPU-clock event takes (it clamps shorter ones).
const MIN_PERIOD_NS: u64 = 10_000;

// perf_event_open(2): the first version of the attribute (PERF_ATTR_SIZE_VER0), which every
// kernel takes, and the requests used on it.
const PERF_TYPE_SOFTWARE: u32 = 1;
const PERF_COUNT_SW_CPU_CLOCK: u64 = 0;
const PERF_ATTR_SIZE_VER0: u32 = 64;
const ATTR_DISABLED: u64 = 1;
/// `exclude_idle`: a tick that finds the CPU idle runs no program (the idle task is never a
/// target, and the program's lookup of it cost every idle tick about as much as a short sample's
/// own work is worth; the timer itself still fires).
const ATTR_EXCLUDE_IDLE: u64 = 1 << 7;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
const PERF_EVENT_IOC_PERIOD: libc::c_ulong = 0x4008_2404;
const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;

/// `struct perf_event_attr` up to `config1` (version 0).
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

/// The running clock: the events, and the thread that re-arms them. Dropping it stops the
/// thread and closes the events, which detaches the program.
pub struct SampleClock {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// What went wrong on one CPU.
#[derive(Debug)]
pub struct ClockError {
    pub cpu: u32,
    pub call: &'static str,
    pub source: io::Error,
}

impl SampleClock {
    /// Opens the CPU-clock event of each of `cpus` at `rate_hz`, runs `program` (a loaded
    /// perf_event program) on it, and starts re-arming them.
    pub fn start(program: BorrowedFd<'_>, cpus: &[u32], rate_hz: u64) -> Result<Self, ClockError> {
        let period = 1_000_000_000 / rate_hz.max(1);
        let mut events = Vec::with_capacity(cpus.len());
        for &cpu in cpus {
            let fail = |call| move |source| ClockError { cpu, call, source };
            let event = open_cpu_clock(cpu, period).map_err(fail("perf_event_open"))?;
            ioctl(
                event.as_fd(),
                PERF_EVENT_IOC_SET_BPF,
                program.as_raw_fd() as libc::c_ulong,
            )
            .map_err(fail("PERF_EVENT_IOC_SET_BPF"))?;
            ioctl(event.as_fd(), PERF_EVENT_IOC_ENABLE, 0)
                .map_err(fail("PERF_EVENT_IOC_ENABLE"))?;
            events.push(event);
        }
        let (stop, stopped) = mpsc::channel::<()>();
        let mut draw = Draw::seeded();
        let mean = WINDOW.max(Duration::from_secs_f64(MIN_WINDOW_PERIODS / rate_hz as f64));
        let thread = thread::Builder::new()
            .name("sample-clock".into())
            .spawn(move || {
                loop {
                    let window = mean.mul_f64(0.5 + draw.unit());
                    for event in &events {
                        // A CPU that went offline refuses; its event no longer fires anyway.
                        let _ = rearm(event, rate_hz, window, draw.unit());
                    }
                    match stopped.recv_timeout(window) {
                        Err(RecvTimeoutError::Timeout) => {}
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
            })
            .map_err(|source| ClockError {
                cpu: 0,
                call: "spawning the sample clock's thread",
                source,
            })?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for SampleClock {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The period for one window of `window` at `rate_hz`, given a uniform draw `u` in [0, 1).
///
/// With `c = rate * window`, the window holds `floor(c + v)` samples, `v` uniform over an
/// interval of whole length `k` that starts at `(1 - k) / 2`, whose mean is `c` exactly. The
/// spread `k` (up to half of `c`, at most `MAX_SPREAD`) varies the period by up to a fifth or
/// so, so that the samples of one window drift across the tick whatever moment the window
/// started at: a thread woken on a busy CPU, as this one is, often runs right after a tick.
pub fn window_period(rate_hz: u64, window: Duration, u: f64) -> u64 {
    let c = window.as_secs_f64() * rate_hz as f64;
    let k = (c / 2.0).floor().clamp(1.0, MAX_SPREAD);
    let v = (1.0 - k) / 2.0 + u * k;
    ((window.as_nanos() as f64 / (c + v)) as u64).max(MIN_PERIOD_NS)
}

/// Sets the event's period: the kernel restarts its timer, the first sample one period from
/// now.
fn rearm(event: &OwnedFd, rate_hz: u64, window: Duration, u: f64) -> io::Result<()> {
    let period = window_period(rate_hz, window, u);
    ioctl(
        event.as_fd(),
        PERF_EVENT_IOC_PERIOD,
        &period as *const u64 as libc::c_ulong,
    )
}

fn open_cpu_clock(cpu: u32, period_ns: u64) -> io::Result<OwnedFd> {
    let attr = PerfEventAttr {
        kind: PERF_TYPE_SOFTWARE,
        size: PERF_ATTR_SIZE_VER0,
        config: PERF_COUNT_SW_CPU_CLOCK,
        sample_period: period_ns.max(MIN_PERIOD_NS),
        flags: ATTR_DISABLED | ATTR_EXCLUDE_IDLE,
        ..Default::default()
    };
    // SAFETY: perf_event_open with a valid attribute of the size it declares; pid -1 and a cpu:
    // every process on that CPU.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const PerfEventAttr,
            -1 as libc::pid_t,
            cpu as libc::c_int,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor the kernel just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

fn ioctl(fd: BorrowedFd<'_>, request: libc::c_ulong, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: a perf event request with an argument of the type it expects (an integer, or a
    // pointer to a u64 that outlives the call).
    if unsafe { libc::ioctl(fd.as_raw_fd(), request as _, arg) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A small pseudo-random source (xorshift64*): the draws only need to be independent of the
/// tick, not unpredictable.
struct Draw(u64);

impl Draw {
    fn seeded() -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        Self((now ^ (u64::from(std::process::id()) << 32)) | 1)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_holds_rate_times_its_length_on_average() {
        for (rate, ms) in [(100, 50), (499, 37), (997, 75), (1, 8000), (9973, 25)] {
            let window = Duration::from_millis(ms);
            let n = 1000;
            let samples: u64 = (0..n)
                .map(|k| {
                    let period = window_period(rate, window, (k as f64 + 0.5) / n as f64);
                    (window.as_nanos() as u64) / period
                })
                .sum();
            let expected = rate as f64 * window.as_secs_f64();
            let mean = samples as f64 / n as f64;
            assert!(
                (mean - expected).abs() < 0.01 * expected.max(1.0),
                "{rate} Hz, {ms} ms: {mean} samples a window, want {expected}"
            );
        }
    }

    #[test]
    fn draws_are_uniform_in_the_unit_interval() {
        let mut d = Draw(42);
        let mut bins = [0u32; 10];
        for _ in 0..100_000 {
            let u = d.unit();
            assert!((0.0..1.0).contains(&u));
            bins[(u * 10.0) as usize] += 1;
        }
        assert!(
            bins.iter().all(|&b| (9_500..10_500).contains(&b)),
            "{bins:?}"
        );
    }
}
