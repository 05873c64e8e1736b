//! What `top` shows, computed from two snapshots of the profile (the previous refresh's and this
//! one's): percentages over the last refresh interval, times over the whole run, as py-spy top
//! does. Pure: no terminal, no kernel, so it is unit tested.

use std::collections::HashMap;

use crate::{
    profile::{Frame, Profile},
    report::table::{SortKey, rows},
};

/// The sortable columns, in screen order (keys 1-4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Column {
    #[default]
    OwnPct,
    TotalPct,
    OwnTime,
    TotalTime,
}

impl Column {
    pub const ALL: [Column; 4] = [
        Column::OwnPct,
        Column::TotalPct,
        Column::OwnTime,
        Column::TotalTime,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Column::OwnPct => "%Own",
            Column::TotalPct => "%Total",
            Column::OwnTime => "OwnTime",
            Column::TotalTime => "TotalTime",
        }
    }

    /// Key `1`..`4`.
    pub fn from_key(c: char) -> Option<Column> {
        Column::ALL
            .get((c as usize).checked_sub('1' as usize)?)
            .copied()
    }
}

/// One line of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct TopRow {
    /// The function; line 0 when lines are off.
    pub frame: Frame,
    /// Share of the last interval's samples with this function as the leaf.
    pub own_pct: f64,
    /// Share of the last interval's samples with this function anywhere on the stack.
    pub total_pct: f64,
    /// Seconds of CPU as the leaf, over the whole run.
    pub own_time: f64,
    /// Seconds of CPU anywhere on the stack, over the whole run.
    pub total_time: f64,
}

/// The table for `now` against `before` (the previous refresh's snapshot of the same run).
pub fn table(before: &Profile, now: &Profile, lines: bool, sort: Column) -> Vec<TopRow> {
    let secs = |n: u64| n as f64 / now.rate_hz.max(1) as f64;
    let earlier: HashMap<Frame, (u64, u64)> = rows(before, !lines, SortKey::Location)
        .into_iter()
        .map(|r| (r.frame, (r.direct, r.cumulative)))
        .collect();
    let interval = now.total_samples().saturating_sub(before.total_samples());
    let pct = |n: u64| 100.0 * n as f64 / interval.max(1) as f64;
    let mut out: Vec<TopRow> = rows(now, !lines, SortKey::Location)
        .into_iter()
        .map(|r| {
            let (own0, total0) = earlier.get(&r.frame).copied().unwrap_or_default();
            TopRow {
                own_pct: pct(r.direct.saturating_sub(own0)),
                total_pct: pct(r.cumulative.saturating_sub(total0)),
                own_time: secs(r.direct),
                total_time: secs(r.cumulative),
                frame: r.frame,
            }
        })
        .collect();
    let key = |r: &TopRow| match sort {
        Column::OwnPct => (r.own_pct, r.own_time),
        Column::TotalPct => (r.total_pct, r.total_time),
        Column::OwnTime => (r.own_time, r.own_pct),
        Column::TotalTime => (r.total_time, r.total_pct),
    };
    // Highest first; ties by label, so rows do not jump around between refreshes.
    out.sort_by(|a, b| {
        let (ka, kb) = (key(a), key(b));
        kb.0.total_cmp(&ka.0)
            .then(kb.1.total_cmp(&ka.1))
            .then_with(|| a.frame.label().cmp(&b.frame.label()))
    });
    out
}

/// The header's numbers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Header {
    /// Samples recorded over the whole run.
    pub samples: u64,
    /// Recorded samples per second over the whole run.
    pub achieved_rate: f64,
    /// Threads of the process now (/proc/PID/task).
    pub threads: usize,
    /// Share of the process's thread time on a CPU over the last interval: samples divided by
    /// what every thread running all the time would have given.
    pub active_pct: f64,
    /// Share of the interval's recorded samples whose thread held the GIL, when there were any.
    pub gil_pct: Option<f64>,
    /// Every process watched is a free-threaded build: there is no GIL to share.
    pub free_threaded: bool,
}

/// `interval_samples` counts every sample of the target in the interval (inside Python or
/// not): the CPU-clock event fires only for threads on a CPU, so that is its CPU time.
pub fn header(
    samples: u64,
    elapsed_secs: f64,
    interval_samples: u64,
    interval_secs: f64,
    rate_hz: u64,
    threads: usize,
) -> Header {
    let possible = rate_hz as f64 * interval_secs * threads.max(1) as f64;
    Header {
        samples,
        achieved_rate: samples as f64 / elapsed_secs.max(1e-9),
        threads,
        active_pct: if possible > 0.0 {
            (100.0 * interval_samples as f64 / possible).min(100.0)
        } else {
            0.0
        },
        gil_pct: None,
        free_threaded: false,
    }
}

/// The GIL share over an interval from the kernel's tallies at its start and end: (samples
/// with the GIL held, samples recorded).
pub fn gil_pct(before: (u64, u64), now: (u64, u64)) -> Option<f64> {
    let held = now.0.saturating_sub(before.0);
    let recorded = now.1.saturating_sub(before.1);
    (recorded > 0).then(|| 100.0 * held as f64 / recorded as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::example;

    #[test]
    fn gil_share_is_of_the_interval() {
        assert_eq!(gil_pct((10, 100), (40, 200)), Some(30.0));
        assert_eq!(gil_pct((10, 100), (10, 100)), None);
    }

    #[test]
    fn percentages_cover_the_interval_and_times_the_run() {
        let before = example();
        let mut now = example();
        // In the interval: 40 more samples of work -> burn, 10 more of Helper.run -> burn.
        now.samples[0].count += 40;
        now.samples[3].count += 10;
        let t = table(&before, &now, true, Column::OwnPct);
        let burn = t.iter().find(|r| r.frame.name() == "burn").unwrap();
        assert_eq!(burn.own_pct, 100.0);
        assert_eq!(burn.total_pct, 100.0);
        assert!((burn.own_time - 1.38).abs() < 1e-9, "{}", burn.own_time);
        let work = t.iter().find(|r| r.frame.name() == "work").unwrap();
        assert_eq!((work.own_pct, work.total_pct), (0.0, 80.0));
        assert!((work.total_time - 1.10).abs() < 1e-9);
        assert_eq!(t[0].frame.name(), "burn");
        // By total time: burn (138 samples), then <module> and main (130, tie broken by label).
        let t = table(&before, &now, true, Column::TotalTime);
        let first: Vec<(String, f64)> = t[..3]
            .iter()
            .map(|r| (r.frame.name(), r.total_time))
            .collect();
        let expected = [("burn", 1.38), ("<module>", 1.3), ("main", 1.3)];
        assert_eq!(first, expected.map(|(n, t)| (n.to_string(), t)));
        // Without lines, the frame has line 0 (the label drops it).
        let t = table(&before, &now, false, Column::OwnPct);
        assert_eq!(t[0].frame.label(), "burn (app.py)");
    }

    #[test]
    fn keys_pick_columns_and_header_math() {
        assert_eq!(Column::from_key('1'), Some(Column::OwnPct));
        assert_eq!(Column::from_key('4'), Some(Column::TotalTime));
        assert_eq!(Column::from_key('5'), None);
        assert_eq!(Column::from_key('0'), None);
        let h = header(1000, 2.0, 450, 1.0, 1000, 2);
        assert_eq!((h.achieved_rate, h.active_pct), (500.0, 22.5));
    }
}
