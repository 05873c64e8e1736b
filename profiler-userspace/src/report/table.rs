//! The statistics behind `report` (and `top`): per location, the samples it was the leaf of
//! (direct, "own") and the samples it was anywhere on the stack of (cumulative, "total"), plus
//! the hot-spot and call-magnification summaries. Pure functions over a `Profile`.

use std::{cmp::Reverse, collections::HashMap, fmt::Write as _};

use crate::profile::{Frame, Profile};

/// One row: a location and its counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// The location; with `by_function` its line is 0.
    pub frame: Frame,
    /// Samples whose leaf is this location.
    pub direct: u64,
    /// Samples with this location anywhere on the stack, each sample counted once (a recursive
    /// function does not count a sample twice).
    pub cumulative: u64,
}

impl Row {
    /// Tachyon's `file:line(function)`; markers (`[unknown] ...`) as they are.
    pub fn location(&self) -> String {
        let f = &self.frame;
        match (f.file(), f.line()) {
            ("", _) => f.name(),
            (file, 0) => format!("{file}({})", f.name()),
            (file, line) => format!("{file}:{line}({})", f.name()),
        }
    }
}

/// How rows are ordered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SortKey {
    /// Direct (own) samples, highest first.
    #[default]
    Direct,
    /// Cumulative (total) samples, highest first.
    Cumulative,
    /// Location, alphabetically.
    Location,
}

/// The rows of `profile`, one per location (or per function with `by_function`), sorted by
/// `key`; ties go to the higher cumulative count, then the location, so output is stable.
pub fn rows(profile: &Profile, by_function: bool, key: SortKey) -> Vec<Row> {
    let keys: Vec<Frame> = profile
        .frames
        .iter()
        .map(|f| match by_function {
            true => f.without_line(),
            false => f.clone(),
        })
        .collect();
    let mut index: HashMap<&Frame, usize> = HashMap::new();
    let mut rows: Vec<Row> = Vec::new();
    let row_of: Vec<usize> = keys
        .iter()
        .map(|k| {
            *index.entry(k).or_insert_with(|| {
                rows.push(Row {
                    frame: k.clone(),
                    direct: 0,
                    cumulative: 0,
                });
                rows.len() - 1
            })
        })
        .collect();
    let mut seen: Vec<usize> = Vec::new();
    for s in &profile.samples {
        if let Some(&leaf) = s.frames.last() {
            rows[row_of[leaf as usize]].direct += s.count;
        }
        seen.clear();
        for &f in &s.frames {
            let r = row_of[f as usize];
            if !seen.contains(&r) {
                seen.push(r);
                rows[r].cumulative += s.count;
            }
        }
    }
    rows.retain(|r| r.cumulative > 0);
    sort(&mut rows, key);
    rows
}

pub fn sort(rows: &mut [Row], key: SortKey) {
    match key {
        SortKey::Direct => {
            rows.sort_by_cached_key(|r| (Reverse(r.direct), Reverse(r.cumulative), r.location()))
        }
        SortKey::Cumulative => {
            rows.sort_by_cached_key(|r| (Reverse(r.cumulative), Reverse(r.direct), r.location()))
        }
        SortKey::Location => rows.sort_by_cached_key(|r| r.location()),
    }
}

/// Options of the printed report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportOptions {
    pub sort: SortKey,
    /// Rows shown in the table; 0 for all.
    pub limit: usize,
    pub by_function: bool,
}

/// Entries shown in each summary.
const SUMMARY_ENTRIES: usize = 5;
/// A location below this share of the samples is left out of the summaries (one stray sample
/// of a leaf would otherwise be a "hot spot").
const SUMMARY_MIN_SHARE: f64 = 0.01;

/// The whole text report: header, table, hot spots and call magnification.
pub fn render(profile: &Profile, source: &str, opts: ReportOptions) -> String {
    let all = rows(profile, opts.by_function, opts.sort);
    let scale = Scale {
        total: profile.total_samples(),
        rate: profile.rate_hz.max(1) as f64,
    };
    let mut out = String::new();
    header(&mut out, profile, source, scale);
    table(&mut out, &all, opts.limit, scale);
    hot_spots(&mut out, &all, scale);
    magnification(&mut out, &all, scale);
    out
}

/// Turns sample counts into shares and seconds.
#[derive(Clone, Copy)]
struct Scale {
    total: u64,
    rate: f64,
}

impl Scale {
    fn secs(self, n: u64) -> f64 {
        n as f64 / self.rate
    }

    fn pct(self, n: u64) -> f64 {
        100.0 * n as f64 / self.total.max(1) as f64
    }

    /// Whether a row belongs in the summaries: code (markers such as `[unknown]` are in the
    /// table, not the summaries) with at least `SUMMARY_MIN_SHARE` of the samples.
    fn significant(self, r: &Row) -> bool {
        !r.frame.file().is_empty() && r.cumulative as f64 >= SUMMARY_MIN_SHARE * self.total as f64
    }
}

fn header(out: &mut String, profile: &Profile, source: &str, scale: Scale) {
    let total = scale.total;
    let threads = {
        let mut t: Vec<(u32, u32)> = profile.samples.iter().map(|s| (s.pid, s.tid)).collect();
        t.sort_unstable();
        t.dedup();
        t.len()
    };
    let _ = writeln!(out, "prof-bpf report of {source}");
    for p in &profile.processes {
        let _ = writeln!(
            out,
            "process: {} (pid {}, CPython {})",
            p.name, p.pid, p.version
        );
    }
    let duration = profile.duration.as_secs_f64();
    let _ = writeln!(
        out,
        "samples: {total} over {duration:.2}s from {threads} thread{} at --rate {} ({:.1} samples/s; each sample is {:.3} ms of CPU)",
        if threads == 1 { "" } else { "s" },
        profile.rate_hz,
        total as f64 / duration.max(1e-9),
        1000.0 / scale.rate,
    );
    if profile.unknown_frames > 0 {
        let _ = writeln!(
            out,
            "unknown frames: {} (shown as [unknown] with the reason)",
            profile.unknown_frames
        );
    }
}

fn table(out: &mut String, all: &[Row], limit: usize, scale: Scale) {
    let shown = if limit == 0 {
        all.len()
    } else {
        limit.min(all.len())
    };
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:>8} {:>8} {:>10} {:>8} {:>8} {:>10}  location",
        "direct", "direct%", "own time", "cumul", "cumul%", "cumul time"
    );
    for r in &all[..shown] {
        let _ = writeln!(
            out,
            "{:>8} {:>7.1}% {:>9.3}s {:>8} {:>7.1}% {:>9.3}s  {}",
            r.direct,
            scale.pct(r.direct),
            scale.secs(r.direct),
            r.cumulative,
            scale.pct(r.cumulative),
            scale.secs(r.cumulative),
            r.location()
        );
    }
    if shown < all.len() {
        let _ = writeln!(
            out,
            "... {} more location{} (--limit 0 shows all)",
            all.len() - shown,
            if all.len() - shown == 1 { "" } else { "s" }
        );
    }
}

/// Locations whose time is mostly their own.
fn hot_spots(out: &mut String, all: &[Row], scale: Scale) {
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "hot spots (locations that spend their time themselves: direct/cumulative, highest first):"
    );
    let mut hot: Vec<&Row> = all
        .iter()
        .filter(|r| scale.significant(r) && r.direct > 0)
        .collect();
    hot.sort_by(|a, b| {
        let ratio = |r: &Row| r.direct as f64 / r.cumulative as f64;
        ratio(b)
            .total_cmp(&ratio(a))
            .then(b.direct.cmp(&a.direct))
            .then_with(|| a.location().cmp(&b.location()))
    });
    if hot.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for r in hot.iter().take(SUMMARY_ENTRIES) {
        let _ = writeln!(
            out,
            "  {:>5.1}% own of {:>5.1}% total ({:>3.0}% of its time is its own)  {}",
            scale.pct(r.direct),
            scale.pct(r.cumulative),
            100.0 * r.direct as f64 / r.cumulative as f64,
            r.location()
        );
    }
}

/// Locations whose time is mostly in what they call.
fn magnification(out: &mut String, all: &[Row], scale: Scale) {
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "call magnification (time in callees: cumulative/direct, highest first):"
    );
    let mut magnified: Vec<&Row> = all
        .iter()
        .filter(|r| scale.significant(r) && r.cumulative > r.direct)
        .collect();
    // No direct samples at all is the largest magnification; then larger totals first.
    let factor = |r: &Row| {
        if r.direct == 0 {
            f64::INFINITY
        } else {
            r.cumulative as f64 / r.direct as f64
        }
    };
    magnified.sort_by(|a, b| {
        factor(b)
            .total_cmp(&factor(a))
            .then(b.cumulative.cmp(&a.cumulative))
            .then_with(|| a.location().cmp(&b.location()))
    });
    if magnified.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for r in magnified.iter().take(SUMMARY_ENTRIES) {
        let shown = if r.direct == 0 {
            "all in callees".to_string()
        } else {
            format!("{:.1}x", factor(r))
        };
        let _ = writeln!(
            out,
            "  {shown:>14}: {:>5.1}% total, {:>5.1}% own  {}",
            scale.pct(r.cumulative),
            scale.pct(r.direct),
            r.location()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::example;

    fn find<'a>(rows: &'a [Row], name: &str) -> &'a Row {
        rows.iter().find(|r| r.frame.name() == name).unwrap()
    }

    #[test]
    fn direct_and_cumulative_count_each_sample_once() {
        let rows = rows(&example(), false, SortKey::Direct);
        // burn is the leaf of 60 + 20 + 8 samples.
        assert_eq!(
            (find(&rows, "burn").direct, find(&rows, "burn").cumulative),
            (88, 88)
        );
        // recurse appears three times on 20 samples' stacks: counted 20 times, not 60.
        assert_eq!(
            (
                find(&rows, "recurse").direct,
                find(&rows, "recurse").cumulative
            ),
            (0, 20)
        );
        assert_eq!(
            (find(&rows, "work").direct, find(&rows, "work").cumulative),
            (10, 70)
        );
        assert_eq!(find(&rows, "<module>").cumulative, 90);
        assert_eq!(rows[0].frame.name(), "burn");
        let total: u64 = rows.iter().map(|r| r.direct).sum();
        assert_eq!(total, example().total_samples());
    }

    /// The lines of the report section that starts with `title`, up to the blank line.
    fn section<'a>(text: &'a str, title: &str) -> Vec<&'a str> {
        text.lines()
            .skip_while(|l| !l.starts_with(title))
            .skip(1)
            .take_while(|l| !l.is_empty())
            .collect()
    }

    /// The summaries rank by the share of a location's time that is its own (hot spots) or in
    /// its callees (magnification), leave out what is below 1 % of the samples, and a leaf
    /// that calls nothing is no magnification; a report with nothing unknown and every row
    /// shown says neither.
    #[test]
    fn summaries_rank_by_share_and_leave_out_the_rare() {
        let f = |name: &str, line| Frame::python(name, "app.py", line);
        let s = |frames: &[u32], count| crate::profile::Sample {
            pid: 1,
            tid: 1,
            frames: frames.to_vec(),
            count,
        };
        let mut p = example();
        p.frames = vec![f("<module>", 1), f("hot", 2), f("mixed", 3), f("rare", 4)];
        // mixed: 600 own of 900 (67 %); hot: 300 of 300 (100 %); rare: 5 of 905 (0.6 %).
        p.samples = vec![s(&[0, 2], 600), s(&[0, 2, 1], 300), s(&[0, 3], 5)];
        p.unknown_frames = 0;
        let opts = ReportOptions {
            sort: SortKey::Direct,
            limit: 0,
            by_function: false,
        };
        let text = render(&p, "t.json", opts);
        let located = |lines: &[&str]| -> Vec<String> {
            lines
                .iter()
                .map(|l| l.rsplit("  ").next().unwrap().to_string())
                .collect()
        };
        assert_eq!(
            located(&section(&text, "hot spots")),
            ["app.py:2(hot)", "app.py:3(mixed)"],
            "{text}"
        );
        assert_eq!(
            located(&section(&text, "call magnification")),
            ["app.py:1(<module>)", "app.py:3(mixed)"],
            "{text}"
        );
        assert_eq!(section(&text, "  direct").len(), 4, "{text}");
        assert!(!text.contains("more location"), "{text}");
        assert!(!text.contains("unknown frames"), "{text}");
    }

    /// A frame of the profile's table that no sample refers to is no row of the report.
    #[test]
    fn frames_without_samples_are_no_rows() {
        let mut p = example();
        p.frames.push(Frame::python("never_sampled", "app.py", 99));
        let rows = rows(&p, false, SortKey::Location);
        assert!(rows.iter().all(|r| r.frame.name() != "never_sampled"));
        assert!(rows.iter().all(|r| r.cumulative > 0));
    }

    #[test]
    fn by_function_merges_lines() {
        let mut p = example();
        p.frames.push(Frame::python("burn", "app.py", 5));
        p.samples[0].frames = vec![0, 1, 2, 7];
        let by_line = rows(&p, false, SortKey::Direct);
        assert_eq!(
            by_line.iter().filter(|r| r.frame.name() == "burn").count(),
            2
        );
        let by_fn = rows(&p, true, SortKey::Direct);
        let burn = find(&by_fn, "burn");
        assert_eq!(
            (burn.direct, burn.frame.line(), burn.location()),
            (88, 0, "app.py(burn)".into())
        );
    }

    #[test]
    fn golden_report() {
        let opts = ReportOptions {
            sort: SortKey::Direct,
            limit: 5,
            by_function: false,
        };
        let text = render(&example(), "two_threads.json", opts);
        crate::output::golden::check("report", "two_threads.txt", &text);
    }

    #[test]
    fn sort_keys_order_rows() {
        let p = example();
        let names = |k| {
            rows(&p, false, k)
                .iter()
                .map(|r| r.frame.name())
                .collect::<Vec<_>>()
        };
        // <module> and main tie at 90 cumulative, 0 direct: the location decides.
        assert_eq!(
            names(SortKey::Cumulative)[..3],
            ["main", "<module>", "burn"]
        );
        assert_eq!(
            names(SortKey::Location)[0],
            "[unknown] (code object freed before it was read)"
        );
    }
}
