//! Aggregation: named stacks and the kernel's counts, per process and thread, become a
//! `Profile`. Stacks arrive named (`naming`), once each; counts arrive at every drain. Nothing
//! here reads a process or the kernel. Memory stays bounded on long runs: frames and stacks are
//! interned (a stack seen again costs nothing), and the map from the kernel's stack ids to named
//! stacks forgets ids not seen for a long time.

use std::{collections::HashMap, time::Duration};

use profiler_common::{SampleKey, count_kind};

use super::{
    Frame, FrameTable, ProcessInfo, Profile, Sample, ThreadInfo, Unknown, naming::NamedFrame,
};
use crate::cache::BoundedCache;

/// Kernel stack ids remembered per run: far more than the distinct stacks of one drain interval;
/// an id forgotten and seen again is named again from the kernel's copy.
const STACK_IDS: usize = 256 * 1024;
/// Distinct frames or named stacks past which `take_window` forgets them all (the next window
/// names its stacks again): a long-running agent holds flat memory however much code it meets.
const MAX_INTERNED: usize = 256 * 1024;

/// How frames are labelled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameOptions {
    /// Group by function: every frame shows the function's first line (`-F`).
    pub function: bool,
    /// No line numbers at all (`--nolineno`).
    pub nolineno: bool,
    /// Put the thread under each stack as its root frame (`--threads`).
    pub threads: bool,
    /// Put the process under each stack as its root frame (several processes profiled).
    pub processes: bool,
    /// Show native frames (`--native`; `top`'s `n` hides them).
    pub native: bool,
    /// Root each sample of an asyncio task at `task NAME`, under the tasks awaiting it, in
    /// place of the event loop's frames (`--async-aware`, 3.14+).
    pub async_aware: bool,
}

/// What the kernel counted for one (process, thread, stack).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    /// CPU-clock samples.
    on_cpu: u64,
    /// Nanoseconds off the CPU (`--idle`).
    off_cpu_ns: u64,
}

/// Totals over a recording, for the summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub on_cpu_samples: u64,
    pub off_cpu: Duration,
    /// Samples counted for processes never registered, and how many processes.
    pub unattributed: (u64, usize),
}

/// What one window collected (`Collector::take_window`): CPU samples, and time off the CPU
/// (`--idle`) as nanoseconds in the sample counts.
pub struct Window {
    pub cpu: Profile,
    pub off_cpu_ns: Profile,
}

/// Accumulates named stacks and counts. Processes are kept in order of registration and never
/// forgotten, so a process that exits keeps its samples and names; the kernel counts by pid, and
/// `by_pid` says which registration a pid's counts belong to now, so a reused pid starts a new
/// process.
pub struct Collector {
    options: FrameOptions,
    processes: Vec<ProcessInfo>,
    by_pid: HashMap<u32, usize>,
    /// Every distinct frame, with its function's first line (for `-F`).
    frames: FrameTable,
    first_lines: Vec<u32>,
    /// Every distinct named stack (frame ids, root first), interned.
    stacks: Vec<Vec<u32>>,
    stack_index: HashMap<Vec<u32>, u32>,
    /// (registration, stack id: the kernel's, or `session::counted_stack`'s for a native
    /// leaf) -> named stack.
    by_stack_id: BoundedCache<(usize, u64), u32>,
    /// By (registration, thread id, named stack).
    counts: HashMap<(usize, u32, u32), Counts>,
    /// Thread names and ids in a container's namespace, taken when a thread is first counted
    /// (it may be gone by the end).
    threads: HashMap<(usize, u32), (String, Option<u32>)>,
    /// CPU-clock samples counted for pids never registered (gone before they could be), by pid:
    /// said in the summary, not dropped silently.
    unattributed: HashMap<u32, u64>,
}

impl Collector {
    pub fn new(options: FrameOptions) -> Self {
        Self {
            options,
            processes: Vec::new(),
            by_pid: HashMap::new(),
            frames: FrameTable::default(),
            first_lines: Vec::new(),
            stacks: Vec::new(),
            stack_index: HashMap::new(),
            by_stack_id: BoundedCache::new(STACK_IDS),
            counts: HashMap::new(),
            threads: HashMap::new(),
            unattributed: HashMap::new(),
        }
    }

    /// Shows native frames in the snapshots from now on, or not (`top`'s `n`).
    pub fn show_native_frames(&mut self, show: bool) {
        self.options.native = show;
    }

    /// Registers a process. Drain the kernel's counts first if its pid was registered before:
    /// from here on that pid's counts are this process's.
    pub fn add_process(&mut self, info: ProcessInfo) {
        self.by_pid.insert(info.pid, self.processes.len());
        self.processes.push(info);
    }

    /// Ends a process's registration (it exited, or exec'd something else). Its samples and
    /// names stay. Drain the kernel's counts first.
    pub fn remove_process(&mut self, pid: u32) {
        self.by_pid.remove(&pid);
    }

    /// Processes registered so far, exited ones included.
    pub fn processes(&self) -> &[ProcessInfo] {
        &self.processes
    }

    /// Whether the stack `stack_id` of process `pid` has been named already.
    pub fn has_stack(&mut self, pid: u32, stack_id: u64) -> bool {
        match self.by_pid.get(&pid) {
            Some(&reg) => self.by_stack_id.get(&(reg, stack_id)).is_some(),
            None => true, // not registered (any more): nothing to name it for
        }
    }

    /// Adds stack `stack_id` of process `pid`, named (root first).
    pub fn add_stack(&mut self, pid: u32, stack_id: u64, frames: Vec<NamedFrame>) {
        let Some(&reg) = self.by_pid.get(&pid) else {
            return;
        };
        let ids: Vec<u32> = frames
            .into_iter()
            .map(|f| {
                let id = self.frames.intern(f.frame);
                if id as usize == self.first_lines.len() {
                    self.first_lines.push(f.first_line);
                }
                id
            })
            .collect();
        let stack = self.intern_stack(ids);
        self.by_stack_id.insert((reg, stack_id), stack);
    }

    fn intern_stack(&mut self, ids: Vec<u32>) -> u32 {
        if let Some(&i) = self.stack_index.get(&ids) {
            return i;
        }
        let i = self.stacks.len() as u32;
        self.stack_index.insert(ids.clone(), i);
        self.stacks.push(ids);
        i
    }

    /// Adds what the kernel counted for `key`: `n` samples, or `n` nanoseconds off the CPU.
    /// `thread_name` names a thread seen for the first time (and gives its id in a container's
    /// pid namespace, if it is in one). A stack never named (its record in the kernel was lost)
    /// counts as `[unknown] (stack lost)`.
    pub fn add_count(
        &mut self,
        key: SampleKey,
        n: u64,
        thread_name: impl FnOnce() -> (String, Option<u32>),
    ) {
        let Some(&reg) = self.by_pid.get(&key.pid) else {
            if key.kind == count_kind::ON_CPU {
                *self.unattributed.entry(key.pid).or_default() += n;
            }
            return;
        };
        let stack = match self.by_stack_id.get(&(reg, key.stack_id)) {
            Some(&stack) => stack,
            None => {
                let lost = self.frames.intern(Frame::Unknown(Unknown::StackLost));
                if lost as usize == self.first_lines.len() {
                    self.first_lines.push(0);
                }
                self.intern_stack(vec![lost])
            }
        };
        let counts = self.counts.entry((reg, key.tid, stack)).or_default();
        match key.kind {
            count_kind::OFF_CPU_NS => counts.off_cpu_ns += n,
            _ => counts.on_cpu += n,
        }
        self.threads
            .entry((reg, key.tid))
            .or_insert_with(thread_name);
    }

    /// Names thread `tid` of process `pid` anew, if it has been seen: Python's name, found after
    /// the kernel's was taken.
    pub fn rename_thread(&mut self, pid: u32, tid: u32, name: String) {
        if let Some(&reg) = self.by_pid.get(&pid)
            && let Some(thread) = self.threads.get_mut(&(reg, tid))
        {
            thread.0 = name;
        }
    }

    /// CPU-clock samples collected so far.
    pub fn samples(&self) -> u64 {
        self.counts.values().map(|c| c.on_cpu).sum()
    }

    pub fn totals(&self) -> Totals {
        Totals {
            on_cpu_samples: self.samples(),
            off_cpu: Duration::from_nanos(self.counts.values().map(|c| c.off_cpu_ns).sum()),
            unattributed: (self.unattributed.values().sum(), self.unattributed.len()),
        }
    }

    /// Distinct frames and stacks held, for the memory benchmark's report.
    pub fn sizes(&self) -> (usize, usize, usize) {
        (
            self.first_lines.len(),
            self.stacks.len(),
            self.by_stack_id.len(),
        )
    }

    /// Builds the profile. Frames are root first: the process (`processes`), the thread
    /// (`threads`), then the stack. Off-CPU time counts as the samples the CPU clock would have
    /// taken in it at `rate_hz`.
    pub fn finish(mut self, rate_hz: u64, duration: Duration) -> Profile {
        self.snapshot(rate_hz, duration)
    }

    /// The profile of everything collected so far, leaving the collector able to go on (`top`
    /// takes one per refresh).
    pub fn snapshot(&mut self, rate_hz: u64, duration: Duration) -> Profile {
        self.profile_of(rate_hz, duration, |c| {
            c.on_cpu + off_cpu_samples(c.off_cpu_ns, rate_hz)
        })
    }

    /// What was collected since the last window (or the start), then forgets it: the counts and
    /// thread names, the processes that ended, and past `MAX_INTERNED` the frames and stacks
    /// (named again as they come). The agent takes one per export interval.
    pub fn take_window(&mut self, rate_hz: u64, duration: Duration) -> Window {
        let window = Window {
            cpu: self.profile_of(rate_hz, duration, |c| c.on_cpu),
            off_cpu_ns: self.profile_of(rate_hz, duration, |c| c.off_cpu_ns),
        };
        self.counts.clear();
        self.threads.clear();
        self.compact();
        window
    }

    /// Drops ended processes (renumbering the live ones in registration order) and, when the
    /// interned frames or stacks passed their bound, all of them. Only between windows: no count
    /// refers to a registration then.
    fn compact(&mut self) {
        let ended = self.processes.len() > self.by_pid.len();
        let big = self.first_lines.len() > MAX_INTERNED || self.stacks.len() > MAX_INTERNED;
        if big {
            self.frames = FrameTable::default();
            self.first_lines.clear();
            self.stacks.clear();
            self.stack_index.clear();
            self.by_stack_id = BoundedCache::new(STACK_IDS);
        }
        if !ended {
            return;
        }
        let mut live: Vec<(usize, u32)> = self.by_pid.iter().map(|(&p, &r)| (r, p)).collect();
        live.sort_unstable();
        let mut renumbered = HashMap::new();
        let mut processes = Vec::with_capacity(live.len());
        for (reg, pid) in live {
            renumbered.insert(reg, processes.len());
            self.by_pid.insert(pid, processes.len());
            processes.push(self.processes[reg].clone());
        }
        self.processes = processes;
        self.by_stack_id
            .rekey(|&(reg, id)| renumbered.get(&reg).map(|&r| (r, id)));
    }

    /// The profile of what was collected, each (process, thread, stack) counting `value` of
    /// its counts.
    fn profile_of(
        &mut self,
        rate_hz: u64,
        duration: Duration,
        value: impl Fn(&Counts) -> u64,
    ) -> Profile {
        let frames = self.frames.frames();
        let mut table = FrameTable::default();
        // Each stored frame as these options label it (or hidden), interned once per snapshot.
        let mut shown: Vec<Option<Option<u32>>> = vec![None; frames.len()];
        let mut show = |id: u32, table: &mut FrameTable| -> Option<u32> {
            *shown[id as usize].get_or_insert_with(|| {
                let frame = &frames[id as usize];
                self.labelled(frame, self.first_lines[id as usize])
                    .map(|f| table.intern(f))
            })
        };
        let mut merged: HashMap<(u32, u32, Vec<u32>), u64> = HashMap::new();
        let mut unknown_frames = 0;
        for (&(reg, tid, stack), counts) in &self.counts {
            let count = value(counts);
            if count == 0 {
                continue;
            }
            let p = &self.processes[reg];
            let mut ids = Vec::new();
            if self.options.processes {
                ids.push(table.intern(p.frame()));
            }
            if self.options.threads {
                ids.push(table.intern(thread_info(&self.threads, reg, p.pid, tid).frame()));
            }
            for &id in &self.stacks[stack as usize] {
                if is_unnamed_python(&frames[id as usize]) {
                    unknown_frames += count;
                }
                ids.extend(show(id, &mut table));
            }
            *merged.entry((p.pid, tid, ids)).or_default() += count;
        }
        let mut samples: Vec<Sample> = merged
            .into_iter()
            .map(|((pid, tid, frames), count)| Sample {
                pid,
                tid,
                frames,
                count,
            })
            .collect();
        samples.sort_by(|a, b| (a.pid, a.tid, &a.frames).cmp(&(b.pid, b.tid, &b.frames)));
        Profile {
            frames: table.into_frames(),
            samples,
            processes: self.process_list(),
            threads: self.thread_list(),
            rate_hz,
            duration,
            unknown_frames,
            unknown_native: Vec::new(),
        }
    }

    /// A stored frame as the options show it: `-F` puts a Python frame on its function's first
    /// line, `--nolineno` drops lines, and native frames are hidden unless shown.
    fn labelled(&self, frame: &Frame, first_line: u32) -> Option<Frame> {
        let o = self.options;
        match frame {
            Frame::Native(_) | Frame::NativeStopped(_) if !o.native => None,
            Frame::Unknown(Unknown::NativeAddress { .. }) if !o.native => None,
            _ if o.nolineno => Some(frame.without_line()),
            Frame::Python(l) if o.function => Some(Frame::Python(super::Location {
                line: first_line,
                ..l.clone()
            })),
            _ => Some(frame.clone()),
        }
    }

    fn process_list(&self) -> Vec<ProcessInfo> {
        let mut processes = self.processes.clone();
        processes.sort_by_key(|p| p.pid);
        processes.dedup();
        processes
    }

    fn thread_list(&self) -> Vec<ThreadInfo> {
        let mut threads: Vec<ThreadInfo> = self
            .threads
            .keys()
            .map(|&(reg, tid)| thread_info(&self.threads, reg, self.processes[reg].pid, tid))
            .collect();
        threads.sort_by_key(|t| (t.pid, t.tid));
        threads.dedup_by_key(|t| (t.pid, t.tid));
        threads
    }
}

/// A Python frame that could not be named (counted in the summary).
fn is_unnamed_python(frame: &Frame) -> bool {
    matches!(
        frame,
        Frame::Unknown(Unknown::CodeFreed | Unknown::ProcessExited | Unknown::Unreadable(_))
    )
}

/// Off-CPU time as the number of CPU-clock samples `rate_hz` would have taken in it.
fn off_cpu_samples(ns: u64, rate_hz: u64) -> u64 {
    ((ns as u128 * rate_hz as u128 + 500_000_000) / 1_000_000_000) as u64
}

fn thread_info(
    names: &HashMap<(usize, u32), (String, Option<u32>)>,
    reg: usize,
    pid: u32,
    tid: u32,
) -> ThreadInfo {
    let (name, ns_tid) = names.get(&(reg, tid)).cloned().unwrap_or_default();
    ThreadInfo {
        pid,
        tid,
        name,
        ns_tid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(pid: u32, name: &str) -> ProcessInfo {
        ProcessInfo {
            pid,
            name: name.into(),
            version: "3.12".into(),
            ns_pid: None,
        }
    }

    fn key(pid: u32, tid: u32, stack_id: u64) -> SampleKey {
        SampleKey {
            pid,
            tid,
            stack_id,
            leaf: 0,
            kind: count_kind::ON_CPU,
            _pad: 0,
        }
    }

    fn named(frames: &[(&str, u32, u32)]) -> Vec<NamedFrame> {
        frames
            .iter()
            .map(|&(f, line, first_line)| NamedFrame {
                frame: Frame::python(f, "t.py", line),
                first_line,
            })
            .collect()
    }

    #[test]
    fn counts_aggregate_by_thread_and_stack_and_options_label_them() {
        let mut c = Collector::new(FrameOptions::default());
        c.add_process(process(7, "py"));
        c.add_stack(7, 1, named(&[("main", 9, 8), ("f", 3, 2)]));
        c.add_stack(7, 2, named(&[("main", 9, 8), ("f", 4, 2)]));
        c.add_count(key(7, 7, 1), 5, || ("py".into(), None));
        c.add_count(key(7, 7, 2), 2, || ("py".into(), None));
        c.add_count(key(7, 8, 1), 1, || ("worker".into(), None));
        let p = c.snapshot(100, Duration::from_secs(1));
        assert_eq!(p.total_samples(), 8);
        assert_eq!(p.samples.len(), 3);
        assert_eq!(p.threads.len(), 2);
        assert_eq!(p.threads[1].name, "worker");
        assert_eq!(p.unknown_frames, 0);

        c.options.function = true;
        let folded = c.snapshot(100, Duration::from_secs(1)).folded();
        assert_eq!(
            folded,
            vec![("main (t.py:8);f (t.py:2)".to_string(), 8)],
            "-F folds both lines of f into its first line"
        );
        c.options = FrameOptions {
            nolineno: true,
            threads: true,
            processes: true,
            ..FrameOptions::default()
        };
        let folded = c.snapshot(100, Duration::from_secs(1)).folded();
        assert!(
            folded.contains(&(
                "process 7 (py);thread 8 (worker);main (t.py);f (t.py)".to_string(),
                1
            )),
            "{folded:?}"
        );
    }

    /// A pid that ends and comes back as another process (reused) starts a new process in the
    /// profile: its stacks are its own, never the old process's.
    #[test]
    fn a_reused_pid_is_a_new_process() {
        let mut c = Collector::new(FrameOptions {
            processes: true,
            ..FrameOptions::default()
        });
        c.add_process(process(7, "old"));
        c.add_stack(7, 1, named(&[("f", 3, 3)]));
        c.add_count(key(7, 7, 1), 2, || ("old".into(), None));
        c.remove_process(7);
        c.add_process(process(7, "new"));
        assert!(
            !c.has_stack(7, 1),
            "the new process's stack 1 is named anew"
        );
        c.add_stack(7, 1, named(&[("g", 3, 3)]));
        c.add_count(key(7, 7, 1), 3, || ("new".into(), None));
        let folded = c.finish(100, Duration::from_secs(1)).folded();
        assert!(
            folded.contains(&("process 7 (old);f (t.py:3)".to_string(), 2)),
            "{folded:?}"
        );
        assert!(
            folded.contains(&("process 7 (new);g (t.py:3)".to_string(), 3)),
            "{folded:?}"
        );
    }

    #[test]
    fn native_frames_show_only_when_asked_and_lost_stacks_are_said() {
        let mut c = Collector::new(FrameOptions::default());
        c.add_process(process(7, "py"));
        let mut frames = named(&[("main", 9, 8)]);
        frames.push(NamedFrame {
            frame: Frame::native("memcpy", "libc.so.6", 0),
            first_line: 0,
        });
        c.add_stack(7, 1, frames);
        c.add_count(key(7, 7, 1), 1, Default::default);
        c.add_count(key(7, 7, 99), 1, Default::default);
        let labels = |c: &mut Collector| c.snapshot(100, Duration::ZERO).folded();
        assert_eq!(
            labels(&mut c),
            vec![
                ("[unknown] (stack lost)".to_string(), 1),
                ("main (t.py:9)".to_string(), 1)
            ]
        );
        c.show_native_frames(true);
        assert!(labels(&mut c).contains(&("main (t.py:9);memcpy (libc.so.6)".to_string(), 1)));
    }

    #[test]
    fn memory_stays_bounded_when_stacks_repeat() {
        let mut c = Collector::new(FrameOptions::default());
        c.add_process(process(7, "py"));
        // New code objects (new kernel stack ids) for the same function: one named stack.
        for id in 0..10_000 {
            c.add_stack(7, id, named(&[("main", 9, 8), ("f", 3, 2)]));
            c.add_count(key(7, 7, id), 1, Default::default);
        }
        assert_eq!(c.sizes().0, 2, "two distinct frames");
        assert_eq!(c.sizes().1, 1, "one distinct stack");
        assert_eq!(c.counts.len(), 1);
    }

    /// Each window holds what was counted since the last one; names carry over; a process that
    /// ended is in the window of its last counts and then forgotten.
    #[test]
    fn windows_partition_the_counts_and_forget_ended_processes() {
        let mut c = Collector::new(FrameOptions::default());
        c.add_process(process(7, "a"));
        c.add_process(process(8, "b"));
        c.add_stack(7, 1, named(&[("f", 3, 3)]));
        c.add_stack(8, 1, named(&[("g", 4, 4)]));
        c.add_count(key(7, 7, 1), 5, || ("a".into(), None));
        c.add_count(key(8, 8, 1), 2, || ("b".into(), None));
        c.add_count(
            SampleKey {
                kind: count_kind::OFF_CPU_NS,
                ..key(8, 8, 1)
            },
            3_000,
            || ("b".into(), None),
        );
        c.remove_process(7);
        let w = c.take_window(100, Duration::from_secs(5));
        assert_eq!(w.cpu.total_samples(), 7);
        assert_eq!(
            w.off_cpu_ns.total_samples(),
            3_000,
            "nanoseconds, not samples"
        );
        assert_eq!(c.processes().len(), 1, "the ended process is forgotten");
        assert_eq!(c.samples(), 0);
        // The live process's stacks stay named across the window (renumbered registration).
        assert!(c.has_stack(8, 1));
        c.add_count(key(8, 8, 1), 4, || ("b".into(), None));
        let w = c.take_window(100, Duration::from_secs(5));
        assert_eq!(w.cpu.folded(), vec![("g (t.py:4)".to_string(), 4)]);
        assert_eq!(w.cpu.threads.len(), 1);
        assert_eq!(w.off_cpu_ns.total_samples(), 0);
    }

    /// Weeks of processes coming and going with code never seen twice: what is held stays
    /// bounded across windows.
    #[test]
    fn windows_keep_memory_bounded_under_churn() {
        let mut c = Collector::new(FrameOptions::default());
        for round in 0..40u32 {
            for i in 0..10_000u32 {
                let pid = 1000 + round * 10_000 + i;
                c.add_process(process(pid, "p"));
                let f = format!("f{round}_{i}");
                c.add_stack(pid, 1, named(&[("main", 1, 1), (&f, 2, 2)]));
                c.add_count(key(pid, pid, 1), 1, || (String::new(), None));
                c.remove_process(pid);
            }
            let w = c.take_window(100, Duration::from_secs(1));
            assert_eq!(w.cpu.total_samples(), 10_000);
            let (frames, stacks, ids) = c.sizes();
            assert!(frames <= MAX_INTERNED + 10_001 && stacks <= MAX_INTERNED + 10_000);
            assert!(ids <= STACK_IDS);
            assert!(c.processes().is_empty() && c.threads.is_empty());
        }
    }

    #[test]
    fn off_cpu_time_counts_as_the_samples_it_would_have_had() {
        assert_eq!(off_cpu_samples(5_000_000_000, 100), 500);
        assert_eq!(off_cpu_samples(5_000_000_000, 1000), 5000);
        assert_eq!(off_cpu_samples(1_499_999, 1000), 1);
        assert_eq!(off_cpu_samples(1_500_000, 1000), 2);
        assert_eq!(off_cpu_samples(0, 1000), 0);
    }
}
