//! Watching /proc for the processes a recording follows: one pid, a process and its
//! descendants (`--subprocesses`), or every process (`--all`). Each scan reports the processes a
//! classifier wants that appeared (started, forked, or exec'd into something it wants) and the
//! ones that ended (exited, or exec'd something else). A process is known by pid *and* start
//! time, so a reused pid is a new process. Reads /proc only, and knows nothing of what the
//! classifier looks for (the session asks `python::discover`); the caller registers what it
//! reports with the kernel.

use std::{
    collections::{HashMap, HashSet},
    fs,
    path::{Path, PathBuf},
};

use super::{ProcStat, comm, exe_of, proc_stat};

/// Which processes a watcher follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Just this process.
    One(u32),
    /// These processes and every descendant, however deep.
    Tree(Vec<u32>),
    /// Every process on the machine but prof-bpf itself.
    All,
}

/// What a classifier says of a process it is shown.
#[derive(Debug)]
pub enum Verdict<T> {
    /// Wanted, with what the classifier found in it.
    Wanted(T),
    /// Not wanted.
    No,
    /// Cannot tell yet (mid-exec, still loading): shown again at the next scans, a few times.
    NotYet,
    /// Looks like what is wanted but cannot be read, and why (after the retries, reported).
    Unreadable(String),
}

/// What a scan found changed.
#[derive(Clone, Debug)]
pub enum Change<T> {
    /// A process the classifier wants.
    Started(T),
    /// A process reported as `Started` is gone, or exec'd something else.
    Ended(u32),
    /// A process that looked wanted but could not be read, and why: said in the summary, not
    /// silently left out.
    Unreadable { pid: u32, name: String, why: String },
}

/// What the watcher remembers of a process it has looked at.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    start_time: u64,
    /// `/proc/PID/exe`: it changes when the process execs.
    exe: PathBuf,
    wanted: bool,
}

pub struct Watcher {
    scope: Scope,
    /// Processes in scope looked at so far, by pid.
    seen: HashMap<u32, Seen>,
    own_pid: u32,
    /// Processes in scope the classifier could not tell yet: how many scans have tried.
    retries: HashMap<u32, u32>,
}

/// Scans a process that could not be told yet is looked at again before it counts as unwanted.
const RETRIES: u32 = 3;

impl Watcher {
    pub fn new(scope: Scope) -> Self {
        Self {
            scope,
            seen: HashMap::new(),
            own_pid: std::process::id(),
            retries: HashMap::new(),
        }
    }

    /// Marks process `pid` (started at `start_time`) as already known and wanted (registered by
    /// the caller before watching began).
    pub fn know(&mut self, pid: u32, start_time: u64) {
        if let Ok(exe) = exe_of(pid) {
            self.seen.insert(
                pid,
                Seen {
                    start_time,
                    exe,
                    wanted: true,
                },
            );
        }
    }

    /// Forgets process `pid` (it ended, and the caller retired it already): a later scan does
    /// not report its end again.
    pub fn forget(&mut self, pid: u32) {
        self.seen.remove(&pid);
        self.retries.remove(&pid);
    }

    /// How many processes in scope are being followed now (wanted or not).
    pub fn followed(&self) -> usize {
        self.seen.len()
    }

    /// Looks at /proc once; returns what changed since the last scan. `classify` is shown each
    /// new process in scope (pid, what /proc/PID/stat says, its executable).
    pub fn scan<T>(
        &mut self,
        mut classify: impl FnMut(u32, &ProcStat, &Path) -> Verdict<T>,
    ) -> Vec<Change<T>> {
        let stats = self.list();
        let in_scope = self.in_scope(&stats);
        let mut changes = Vec::new();

        // Gone, reused or exec'd: ends what was reported.
        let known: Vec<u32> = self.seen.keys().copied().collect();
        for pid in known {
            let same = in_scope.contains(&pid)
                && stats.get(&pid).map(|s| s.start_time) == Some(self.seen[&pid].start_time)
                && exe_of(pid).ok().as_ref() == Some(&self.seen[&pid].exe);
            if !same && let Some(old) = self.seen.remove(&pid) {
                self.retries.remove(&pid);
                if old.wanted {
                    changes.push(Change::Ended(pid));
                }
            }
        }

        let mut new: Vec<u32> = in_scope
            .iter()
            .copied()
            .filter(|pid| !self.seen.contains_key(pid))
            .collect();
        new.sort_unstable();
        for pid in new {
            let (Some(stat), Ok(exe)) = (stats.get(&pid), exe_of(pid)) else {
                continue; // a kernel thread, or gone already
            };
            let wanted = match classify(pid, stat, &exe) {
                Verdict::Wanted(found) => {
                    changes.push(Change::Started(found));
                    true
                }
                Verdict::No => false,
                verdict @ (Verdict::NotYet | Verdict::Unreadable(_)) => {
                    // Mid-exec or just gone: look again next time, a few times.
                    let tries = self.retries.entry(pid).or_default();
                    *tries += 1;
                    if *tries < RETRIES {
                        continue;
                    }
                    if let Verdict::Unreadable(why) = verdict {
                        changes.push(Change::Unreadable {
                            pid,
                            name: comm(pid),
                            why,
                        });
                    }
                    false
                }
            };
            self.retries.remove(&pid);
            self.seen.insert(
                pid,
                Seen {
                    start_time: stat.start_time,
                    exe,
                    wanted,
                },
            );
        }
        changes
    }

    /// The processes to look at, with their parent and start time.
    fn list(&self) -> HashMap<u32, ProcStat> {
        let pids: Vec<u32> = match &self.scope {
            Scope::One(pid) => vec![*pid],
            Scope::Tree(_) | Scope::All => fs::read_dir("/proc")
                .map(|dir| {
                    dir.filter_map(Result::ok)
                        .filter_map(|e| e.file_name().to_str()?.parse().ok())
                        .collect()
                })
                .unwrap_or_default(),
        };
        pids.into_iter()
            .filter(|&pid| pid != self.own_pid)
            .filter_map(|pid| Some((pid, proc_stat(pid).ok()?)))
            .collect()
    }

    fn in_scope(&self, stats: &HashMap<u32, ProcStat>) -> HashSet<u32> {
        match &self.scope {
            Scope::One(pid) => stats.keys().copied().filter(|p| p == pid).collect(),
            Scope::All => stats.keys().copied().collect(),
            Scope::Tree(roots) => {
                // Followed already (so an orphan re-parented to init stays followed), a root,
                // or a child of one in scope.
                let mut scope: HashSet<u32> = roots
                    .iter()
                    .chain(self.seen.keys())
                    .copied()
                    .filter(|pid| stats.contains_key(pid))
                    .collect();
                let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
                for (&pid, s) in stats {
                    children.entry(s.ppid).or_default().push(pid);
                }
                let mut todo: Vec<u32> = scope.iter().copied().collect();
                while let Some(pid) = todo.pop() {
                    for &child in children.get(&pid).map(Vec::as_slice).unwrap_or_default() {
                        if scope.insert(child) {
                            todo.push(child);
                        }
                    }
                }
                scope
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_scope_takes_in_children_and_grandchildren_only() {
        let stats: HashMap<u32, ProcStat> = [(10, 1), (11, 10), (12, 11), (20, 1), (21, 20)]
            .into_iter()
            .map(|(pid, ppid)| {
                (
                    pid,
                    ProcStat {
                        state: 'S',
                        ppid,
                        flags: 0,
                        start_time: 0,
                    },
                )
            })
            .collect();
        let watcher = Watcher::new(Scope::Tree(vec![10]));
        let mut scope: Vec<u32> = watcher.in_scope(&stats).into_iter().collect();
        scope.sort_unstable();
        assert_eq!(scope, [10, 11, 12]);
        let all = Watcher::new(Scope::All).in_scope(&stats);
        assert_eq!(all.len(), 5);
    }
}
