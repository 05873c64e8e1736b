//! What `record` tells the user: the progress line while it runs, and the summary at the end
//! (what was recorded, how well, where it went). Every kernel counter is reported by its
//! `StatClass`, the one definition in profiler-common.

use std::{
    collections::HashMap,
    io::{self, IsTerminal, Write},
    path::{Path, PathBuf},
    time::Duration,
};

use profiler_common::{Stat, StatClass};

use super::RecordError;
use crate::{
    bpf::{KernelFeatures, RunTime, Stats},
    output::{Format, file::SaveError},
    profile::ProcessInfo,
    session::StopReason,
    unwind::LoadStats,
};

/// Processes listed by name in the summary of a multi-process recording.
const SUMMARY_PROCESSES: usize = 10;

/// What the summary reports.
pub struct Summary {
    pub output: PathBuf,
    pub format: Format,
    /// Every Python process profiled, in order of registration.
    pub processes: Vec<ProcessInfo>,
    /// Samples (off-CPU time included) by pid.
    pub per_process: HashMap<u32, u64>,
    /// Python processes found but not profiled, and why.
    pub skipped: Vec<String>,
    /// Processes the watcher followed at the end (Python or not).
    pub followed: usize,
    /// CPU-clock samples.
    pub samples: u64,
    /// Samples the kernel counted for processes that ended before they could be registered,
    /// and how many such processes.
    pub unattributed: (u64, usize),
    /// Time off the CPU recorded (`--idle`).
    pub off_cpu: Option<Duration>,
    pub duration: Duration,
    pub rate_hz: u64,
    pub stats: Stats,
    pub unknown_frames: u64,
    pub stop: StopReason,
    pub run_time: Option<RunTime>,
    /// The path the kernel program took on this kernel (with or without `bpf_loop`).
    pub kernel: KernelFeatures,
    /// With `--native`: what loading unwind tables met, and native frames left unnamed.
    pub native: Option<(LoadStats, Vec<(String, u64)>)>,
    /// What ended the recording early, if an error did.
    pub failure: Option<RecordError>,
    /// Whether the profile went where it was asked to (else where it went instead).
    pub saved: Result<(), SaveError>,
}

impl Summary {
    /// Whether the run failed: the profile is not where it was asked to go, or sampling ended
    /// on an error.
    pub fn failed(&self) -> bool {
        self.failure.is_some() || self.saved.is_err()
    }

    /// The end-of-run report.
    pub fn print(&self, out: &mut impl Write) -> io::Result<()> {
        self.print_samples(out)?;
        for why in &self.skipped {
            writeln!(out, "prof-bpf: not profiled: {why}")?;
        }
        if self.unattributed.0 > 0 {
            writeln!(
                out,
                "prof-bpf: {} samples of {} processes could not be attributed: they ended before they could be registered",
                self.unattributed.0, self.unattributed.1
            )?;
        }
        self.print_time(out)?;
        self.print_fates(out)?;
        if let Some((load, unknown)) = &self.native {
            print_native(out, &self.stats, load, unknown)?;
        }
        writeln!(out, "prof-bpf: {}", self.kernel.describe())?;
        if let Some(rt) = self.run_time.filter(|rt| rt.runs > 0) {
            writeln!(
                out,
                "prof-bpf: kernel time: {:.0} ns per CPU sample over {} runs, {:.0} ns per recorded sample",
                rt.total.as_nanos() as f64 / rt.runs as f64,
                rt.runs,
                rt.total.as_nanos() as f64 / self.stats.get(Stat::Recorded).max(1) as f64,
            )?;
        }
        if self.unknown_frames > 0 {
            writeln!(
                out,
                "prof-bpf: {} frames could not be named (shown as [unknown])",
                self.unknown_frames
            )?;
        }
        self.print_stop(out)?;
        // Last; pasted into a bug report, it says which build recorded this.
        writeln!(out, "prof-bpf: prof-bpf {}", crate::VERSION)
    }

    /// The headline (samples, what of, how fast) and, with several processes, each one's.
    fn print_samples(&self, out: &mut impl Write) -> io::Result<()> {
        let secs = self.duration.as_secs_f64();
        let what = match &self.processes[..] {
            [] => format!("no Python process ({} processes followed)", self.followed),
            [p] => p.describe(),
            ps => format!("{} Python processes", ps.len()),
        };
        // With --idle the profile's samples include the time off the CPU, counted as the samples
        // the clock would have taken in it: the headline counts what the profile holds.
        let total: u64 = self.per_process.values().sum::<u64>().max(self.samples);
        let split = match self.off_cpu {
            Some(_) => format!(
                " ({} on the CPU, {} for time off it)",
                self.samples,
                total - self.samples
            ),
            None => String::new(),
        };
        writeln!(
            out,
            "prof-bpf: {total} samples{split} of {what} in {secs:.2}s: {:.1} samples/s at --rate {}",
            self.stats.get(Stat::Recorded) as f64 / secs.max(1e-9),
            self.rate_hz,
        )?;
        if self.processes.len() > 1 {
            let mut by_samples: Vec<&ProcessInfo> = self.processes.iter().collect();
            by_samples.sort_by_key(|p| std::cmp::Reverse(self.per_process.get(&p.pid)));
            for p in by_samples.iter().take(SUMMARY_PROCESSES) {
                writeln!(
                    out,
                    "prof-bpf:   {}: {} samples",
                    p.describe(),
                    self.per_process.get(&p.pid).copied().unwrap_or(0)
                )?;
            }
            if by_samples.len() > SUMMARY_PROCESSES {
                writeln!(
                    out,
                    "prof-bpf:   and {} more",
                    by_samples.len() - SUMMARY_PROCESSES
                )?;
            }
        }
        Ok(())
    }

    /// Time off the CPU (`--idle`) and the GIL share.
    fn print_time(&self, out: &mut impl Write) -> io::Result<()> {
        if let Some(off_cpu) = self.off_cpu {
            let total: u64 = self.per_process.values().sum::<u64>().max(self.samples);
            writeln!(
                out,
                "prof-bpf: idle: {:.2}s off the CPU recorded; active {:.1}% of the time",
                off_cpu.as_secs_f64(),
                100.0 * self.samples as f64 / total.max(1) as f64
            )?;
        }
        let recorded = self.stats.get(Stat::Recorded);
        let share = 100.0 * self.stats.get(Stat::GilHeld) as f64
            / (recorded + self.stats.get(Stat::GilNotHeld)).max(1) as f64;
        match self.processes.iter().filter(|p| p.free_threaded()).count() {
            0 => writeln!(out, "prof-bpf: GIL held in {share:.1}% of samples"),
            n if n == self.processes.len() => writeln!(out, "prof-bpf: free-threaded: no GIL"),
            // The kernel counts a free-threaded process's samples as without the GIL.
            _ => writeln!(
                out,
                "prof-bpf: GIL held in {share:.1}% of samples (free-threaded processes have no GIL)"
            ),
        }
    }

    /// What became of the samples that were not recorded plainly: outside Python code, left
    /// out on request, lost (the errors), kept with a caveat.
    fn print_fates(&self, out: &mut impl Write) -> io::Result<()> {
        let list = |class| counted(self.stats.of_class(class));
        let outside = list(StatClass::OutsidePython);
        if !outside.is_empty() {
            writeln!(out, "prof-bpf: outside Python code: {}", outside.join(", "))?;
        }
        let left_out = list(StatClass::LeftOut);
        if !left_out.is_empty() {
            writeln!(out, "prof-bpf: left out: {}", left_out.join(", "))?;
        }
        let mut errors = list(StatClass::Lost);
        errors.extend(list(StatClass::EventLost));
        let intervals: Vec<(Stat, u64)> = Stat::ALL
            .iter()
            .filter(|s| s.class().is_error())
            .map(|&s| (s, self.stats.switch(s)))
            .collect();
        let lost_intervals: u64 = intervals.iter().map(|(_, n)| n).sum();
        if lost_intervals > 0 {
            errors.push(format!(
                "{lost_intervals} off-CPU intervals lost ({})",
                counted(intervals.into_iter()).join(", ")
            ));
        }
        if errors.is_empty() {
            writeln!(out, "prof-bpf: errors: none")?;
        } else {
            writeln!(out, "prof-bpf: errors: {}", errors.join(", "))?;
        }
        let caveats = list(StatClass::Caveat);
        if !caveats.is_empty() {
            writeln!(out, "prof-bpf: kept with a caveat: {}", caveats.join(", "))?;
        }
        Ok(())
    }

    fn print_stop(&self, out: &mut impl Write) -> io::Result<()> {
        let why = match self.stop {
            StopReason::TargetExited => "the program exited",
            StopReason::Duration => "the duration ended",
            StopReason::Signal => "interrupted",
            StopReason::Error => "an error",
        };
        let to_stdout = self.output == Path::new("-");
        match (&self.saved, to_stdout) {
            (Err(_), true) => writeln!(
                out,
                "prof-bpf: stopped ({why}); could not write {} to stdout",
                self.format
            ),
            (Err(_), false) => writeln!(
                out,
                "prof-bpf: stopped ({why}); could not write {} to {}",
                self.format,
                self.output.display()
            ),
            (Ok(()), true) => writeln!(
                out,
                "prof-bpf: stopped ({why}); wrote {} to stdout",
                self.format
            ),
            (Ok(()), false) => writeln!(
                out,
                "prof-bpf: stopped ({why}); wrote {} to {}: {}",
                self.format,
                self.output.display(),
                self.format.how_to_open()
            ),
        }
    }
}

/// `N name` for each counter with a count.
fn counted(stats: impl Iterator<Item = (Stat, u64)>) -> Vec<String> {
    stats
        .filter(|&(_, n)| n > 0)
        .map(|(s, n)| format!("{n} {}", s.name()))
        .collect()
}

/// How complete the native unwinds were, and what loading the tables met.
fn print_native(
    out: &mut impl Write,
    stats: &Stats,
    load: &LoadStats,
    unknown: &[(String, u64)],
) -> io::Result<()> {
    let unwinds: u64 = stats
        .of_class(StatClass::NativeOutcome)
        .map(|(_, n)| n)
        .sum();
    let complete = stats.get(Stat::NativeComplete);
    let failures = counted(
        stats
            .of_class(StatClass::NativeOutcome)
            .filter(|&(s, _)| s != Stat::NativeComplete),
    );
    writeln!(
        out,
        "prof-bpf: native unwind: {:.1}% complete ({complete} of {unwinds} samples reached the outermost frame){}",
        100.0 * complete as f64 / unwinds.max(1) as f64,
        if failures.is_empty() {
            String::new()
        } else {
            format!("; stopped early: {}", failures.join(", "))
        },
    )?;
    let failed: Vec<String> = load
        .failed
        .iter()
        .map(|(f, why)| format!("{f} ({why})"))
        .collect();
    writeln!(
        out,
        "prof-bpf: native unwind tables: {} rows for {} files{}",
        load.rows,
        load.files,
        if failed.is_empty() {
            String::new()
        } else {
            format!("; frame pointers only for: {}", failed.join(", "))
        },
    )?;
    if !unknown.is_empty() {
        let reasons: Vec<String> = unknown
            .iter()
            .map(|(why, n)| format!("{n} {why}"))
            .collect();
        writeln!(
            out,
            "prof-bpf: native frames not named: {}",
            reasons.join(", ")
        )?;
    }
    Ok(())
}

/// The one-line progress display, on a terminal only.
pub struct Progress {
    tty: bool,
}

impl Progress {
    pub fn new() -> Self {
        Self {
            tty: io::stderr().is_terminal(),
        }
    }

    /// `errors` are the samples and intervals lost (`Stats::lost`), as the summary counts them.
    pub fn show(&self, samples: u64, errors: u64, elapsed: Duration) {
        if self.tty {
            let _ = write!(
                io::stderr(),
                "\r\x1b[Kprof-bpf: {samples} samples, {errors} errors, {:.1}s (Ctrl-C to stop and write)",
                elapsed.as_secs_f64()
            );
        }
    }

    pub fn clear(&self) {
        if self.tty {
            let _ = write!(io::stderr(), "\r\x1b[K");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(stats: Stats) -> Summary {
        Summary {
            output: PathBuf::from("p.txt"),
            format: Format::Raw,
            processes: vec![ProcessInfo {
                pid: 42,
                name: "python3.12".into(),
                version: "3.12".into(),
                ns_pid: None,
            }],
            per_process: HashMap::new(),
            skipped: Vec::new(),
            followed: 1,
            samples: 1000,
            unattributed: (0, 0),
            off_cpu: None,
            duration: Duration::from_secs(2),
            rate_hz: 500,
            stats,
            unknown_frames: 0,
            stop: StopReason::TargetExited,
            run_time: None,
            kernel: KernelFeatures::of_release("6.18.3"),
            native: None,
            failure: None,
            saved: Ok(()),
        }
    }

    fn text(s: &Summary) -> String {
        let mut out = Vec::new();
        s.print(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find_map(|l| l.strip_prefix(prefix))
    }

    #[test]
    fn a_clean_run_says_so() {
        let mut stats = Stats::default();
        stats.set(Stat::Recorded, 1000);
        stats.set(Stat::GilHeld, 900);
        let t = text(&summary(stats));
        assert_eq!(
            t.lines().next(),
            Some(
                "prof-bpf: 1000 samples of python3.12 (pid 42, CPython 3.12) in 2.00s: 500.0 samples/s at --rate 500"
            )
        );
        assert_eq!(line(&t, "prof-bpf: errors: "), Some("none"));
        assert_eq!(line(&t, "prof-bpf: GIL held in "), Some("90.0% of samples"));
        assert!(line(&t, "prof-bpf: kept with a caveat: ").is_none());
        assert!(t.contains("stopped (the program exited); wrote raw to p.txt"));
        assert!(t.lines().last().unwrap().starts_with("prof-bpf: prof-bpf "));
        assert_eq!(
            line(&t, "prof-bpf: kernel 6.18: "),
            Some("bpf_loop walker and unwinder")
        );
    }

    /// Every counter a sample can meet lands on exactly one line, by its class.
    #[test]
    fn every_counter_is_reported_once_by_its_class() {
        for &stat in Stat::ALL {
            let mut stats = Stats::default();
            stats.set(stat, 7);
            stats.set_switch(stat, 11);
            let t = text(&summary(stats));
            let lines: Vec<&str> = t
                .lines()
                .filter(|l| l.contains(&format!("7 {}", stat.name())))
                .collect();
            let expected = match stat.class() {
                StatClass::OutsidePython => Some("prof-bpf: outside Python code: "),
                StatClass::LeftOut => Some("prof-bpf: left out: "),
                StatClass::Lost | StatClass::EventLost => Some("prof-bpf: errors: "),
                StatClass::Caveat => Some("prof-bpf: kept with a caveat: "),
                // Native outcomes only with --native; tallies feed other figures.
                StatClass::NativeOutcome | StatClass::Tally | StatClass::Recorded => None,
                // The scheduler program's own error, said only from its counters.
                StatClass::IntervalLost => None,
            };
            match expected {
                Some(prefix) => {
                    assert_eq!(lines.len(), 1, "{stat:?}: {t}");
                    assert!(lines[0].starts_with(prefix), "{stat:?}: {t}");
                }
                None => assert!(lines.is_empty(), "{stat:?}: {t}"),
            }
            // The scheduler program's errors are errors too, said as intervals lost.
            let said = t.contains("11 off-CPU intervals lost");
            assert_eq!(said, stat.class().is_error(), "{stat:?}: {t}");
        }
    }

    #[test]
    fn a_failed_write_is_said_in_the_last_lines() {
        let mut s = summary(Stats::default());
        s.saved = Err(SaveError {
            path: "/dev/full".into(),
            source: io::Error::from_raw_os_error(libc::ENOSPC),
            fallback: Ok("/tmp/x.txt".into()),
        });
        assert!(s.failed());
        let t = text(&s);
        assert!(
            t.contains("stopped (the program exited); could not write raw to p.txt"),
            "{t}"
        );
    }

    #[test]
    fn native_unwinds_are_counted_once_per_sample() {
        let mut stats = Stats::default();
        stats.set(Stat::Recorded, 100);
        stats.set(Stat::NativeComplete, 99);
        stats.set(Stat::NativeNoRow, 1);
        let mut s = summary(stats);
        s.native = Some((LoadStats::default(), vec![("no symbol".into(), 2)]));
        let t = text(&s);
        assert_eq!(
            line(&t, "prof-bpf: native unwind: "),
            Some(
                "99.0% complete (99 of 100 samples reached the outermost frame); stopped early: 1 no unwind info"
            )
        );
        assert_eq!(
            line(&t, "prof-bpf: native frames not named: "),
            Some("2 no symbol")
        );
        assert_eq!(line(&t, "prof-bpf: errors: "), Some("none"));
    }
}
