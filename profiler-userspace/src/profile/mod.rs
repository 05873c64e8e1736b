//! The profile model: interned frames and counted stacks (root first), plus what a writer and
//! the summary need to know about the recording. `collect` builds it from what the kernel
//! recorded.

pub mod collect;
pub mod frame;
pub mod merge;
pub mod naming;
pub mod store;

use std::{collections::HashMap, time::Duration};

pub use frame::{Frame, Location, Unknown};

/// A stack seen `count` times on one thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub pid: u32,
    pub tid: u32,
    /// Indices into `Profile::frames`, root first.
    pub frames: Vec<u32>,
    pub count: u64,
}

/// A process that was profiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub name: String,
    /// `3.12`, or `3.13t` for a free-threaded build.
    pub version: String,
    /// Its id inside its own pid namespace (a container's), when that is not prof-bpf's.
    pub ns_pid: Option<u32>,
}

impl ProcessInfo {
    /// The root frame a multi-process recording puts under a process's stacks.
    pub fn frame(&self) -> Frame {
        Frame::Process {
            pid: self.pid,
            ns_pid: self.ns_pid,
            name: self.name.clone(),
        }
    }

    /// A free-threaded build (its version is named with the build's `t`, as `python3.13t` is).
    pub fn free_threaded(&self) -> bool {
        self.version.ends_with('t')
    }

    /// `python3.12 (pid 42, CPython 3.12)`, with the pid inside a container where it has one.
    pub fn describe(&self) -> String {
        let ns = self
            .ns_pid
            .map(|n| format!(", pid {n} in its namespace"))
            .unwrap_or_default();
        format!(
            "{} (pid {}{ns}, CPython {})",
            self.name, self.pid, self.version
        )
    }
}

/// A thread that was sampled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadInfo {
    pub pid: u32,
    pub tid: u32,
    /// The kernel's name for the thread (`comm`), as `top` and `ps -L` show it.
    pub name: String,
    /// Its id inside its process's pid namespace (a container's), when that is not prof-bpf's.
    pub ns_tid: Option<u32>,
}

impl ThreadInfo {
    /// The root frame `--threads` puts under a thread's stacks.
    pub fn frame(&self) -> Frame {
        Frame::Thread {
            tid: self.tid,
            ns_tid: self.ns_tid,
            name: self.name.clone(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Profile {
    pub frames: Vec<Frame>,
    pub samples: Vec<Sample>,
    pub processes: Vec<ProcessInfo>,
    /// Every thread with samples, by (pid, tid).
    pub threads: Vec<ThreadInfo>,
    /// Samples per second asked of the kernel.
    pub rate_hz: u64,
    pub duration: Duration,
    /// Samples with at least one frame that could not be named (counted once per such frame).
    pub unknown_frames: u64,
    /// Native frames shown as `[unknown]`, by reason (per distinct stack frame).
    pub unknown_native: Vec<(String, u64)>,
}

impl Profile {
    /// The thread `tid` of process `pid`, if it was sampled.
    pub fn thread(&self, pid: u32, tid: u32) -> Option<&ThreadInfo> {
        self.threads
            .binary_search_by_key(&(pid, tid), |t| (t.pid, t.tid))
            .ok()
            .map(|i| &self.threads[i])
    }

    pub fn total_samples(&self) -> u64 {
        self.samples.iter().map(|s| s.count).sum()
    }

    /// `frame;frame;frame` labels root first, with counts, merged and sorted: the collapsed
    /// ("folded") form every flamegraph tool reads.
    pub fn folded(&self) -> Vec<(String, u64)> {
        let labels: Vec<String> = self
            .frames
            .iter()
            .map(|f| f.label().replace(';', ":"))
            .collect();
        let mut merged: HashMap<String, u64> = HashMap::new();
        for s in &self.samples {
            let line = s
                .frames
                .iter()
                .map(|&f| labels[f as usize].as_str())
                .collect::<Vec<_>>()
                .join(";");
            *merged.entry(line).or_default() += s.count;
        }
        let mut lines: Vec<_> = merged.into_iter().collect();
        lines.sort();
        lines
    }
}

/// Interns frames so each is stored once.
#[derive(Default)]
pub struct FrameTable {
    frames: Vec<Frame>,
    index: HashMap<Frame, u32>,
}

impl FrameTable {
    pub fn intern(&mut self, frame: Frame) -> u32 {
        if let Some(&i) = self.index.get(&frame) {
            return i;
        }
        let i = self.frames.len() as u32;
        self.index.insert(frame.clone(), i);
        self.frames.push(frame);
        i
    }

    pub fn frames(&self) -> &[Frame] {
        &self.frames
    }

    pub fn into_frames(self) -> Vec<Frame> {
        self.frames
    }
}

/// A small hand-made profile for unit and golden-file tests: two threads, recursion, a marker
/// frame, a frame without a line. Its file form is `tests/data/profbpf/two_threads.json`.
#[cfg(test)]
pub fn example() -> Profile {
    let f = |name: &str, file: &str, line| Frame::python(name, file, line);
    let s = |tid, frames: &[u32], count| Sample {
        pid: 4242,
        tid,
        frames: frames.to_vec(),
        count,
    };
    Profile {
        frames: vec![
            f("<module>", "app.py", 30),
            f("main", "app.py", 25),
            f("work", "app.py", 10),
            f("burn", "app.py", 4),
            f("recurse", "app.py", 15),
            Frame::Unknown(Unknown::CodeFreed),
            f("Helper.run", "lib/util.py", 0),
        ],
        samples: vec![
            s(4242, &[0, 1, 2, 3], 60),
            s(4242, &[0, 1, 2], 10),
            s(4242, &[0, 1, 4, 4, 4, 3], 20),
            s(4243, &[6, 3], 8),
            s(4243, &[5], 2),
        ],
        processes: vec![ProcessInfo {
            pid: 4242,
            name: "python3.12".into(),
            version: "3.12".into(),
            ns_pid: None,
        }],
        threads: vec![
            ThreadInfo {
                pid: 4242,
                tid: 4242,
                name: "python3.12".into(),
                ns_tid: None,
            },
            ThreadInfo {
                pid: 4242,
                tid: 4243,
                name: "worker".into(),
                ns_tid: None,
            },
        ],
        rate_hz: 100,
        duration: Duration::from_millis(1250),
        unknown_frames: 2,
        unknown_native: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_and_merges_root_first() {
        let mut t = FrameTable::default();
        let m = t.intern(Frame::python("<module>", "a.py", 9));
        let f = t.intern(Frame::python("f", "a.py", 3));
        let g = t.intern(Frame::python("g;x", "a.py", 0));
        assert_eq!(t.intern(Frame::python("f", "a.py", 3)), f);
        let p = Profile {
            frames: t.into_frames(),
            samples: vec![
                Sample {
                    pid: 1,
                    tid: 1,
                    frames: vec![m, f],
                    count: 2,
                },
                Sample {
                    pid: 1,
                    tid: 2,
                    frames: vec![m, f],
                    count: 3,
                },
                Sample {
                    pid: 1,
                    tid: 1,
                    frames: vec![m, g],
                    count: 1,
                },
            ],
            ..Profile::default()
        };
        assert_eq!(p.total_samples(), 6);
        assert_eq!(
            p.folded(),
            vec![
                ("<module> (a.py:9);f (a.py:3)".to_string(), 5),
                ("<module> (a.py:9);g:x (a.py)".to_string(), 1),
            ]
        );
    }
}
