//! Watching /proc for the processes a recording follows: one pid, a process and its
//! descendants (`--subprocesses`), or every process (`--all`). Each scan reports the Python
//! processes that appeared (started, forked, or exec'd into Python) and the ones that ended
//! (exited, or exec'd something else). A process is known by pid *and* start time, so a reused
//! pid is a new process. Reads /proc only; the caller registers what it reports with the
//! kernel.

use std::{
    collections::{HashMap, HashSet},
    fs,
    path::PathBuf,
};

use super::{
    ProcStat, ProcessError, PythonProcess, exe_of, find_python_cheaply, named_python, proc_stat,
};

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

/// What a scan found changed.
#[derive(Clone, Debug)]
pub enum Change {
    /// A Python process to profile (its version may still be one prof-bpf cannot profile).
    Started(PythonProcess),
    /// A process reported as `Started` is gone, or no longer runs that interpreter.
    Ended(u32),
    /// A process that looks like Python (named so, or with a libpython mapped) whose
    /// interpreter could not be read, and why: said in the summary, not silently left out.
    Unreadable { pid: u32, name: String, why: String },
}

/// What the watcher remembers of a process it has looked at.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    start_time: u64,
    /// `/proc/PID/exe`: it changes when the process execs.
    exe: PathBuf,
    python: bool,
}

pub struct Watcher {
    scope: Scope,
    /// Processes in scope looked at so far, by pid.
    seen: HashMap<u32, Seen>,
    own_pid: u32,
    /// Processes in scope whose interpreter could not be read yet (say, an exec in progress):
    /// how many scans have tried.
    retries: HashMap<u32, u32>,
}

/// Scans a process that looked half-started is looked at again before it counts as not
/// Python.
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

    /// Marks `p` as already known (registered by the caller before watching began).
    pub fn know(&mut self, p: &PythonProcess) {
        if let Ok(exe) = exe_of(p.pid) {
            self.seen.insert(
                p.pid,
                Seen {
                    start_time: p.start_time,
                    exe,
                    python: true,
                },
            );
        }
    }

    /// How many processes in scope are being followed now (Python or not).
    pub fn followed(&self) -> usize {
        self.seen.len()
    }

    /// Looks at /proc once; returns what changed since the last scan.
    pub fn scan(&mut self) -> Vec<Change> {
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
                if old.python {
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
            let found = find_python_cheaply(pid);
            let python = match found {
                Ok(Some(p)) if p.start_time == stat.start_time => {
                    changes.push(Change::Started(p));
                    true
                }
                // A Python executable whose libpython is not mapped yet (the loader is still
                // at work) is looked at again like one mid-exec.
                Ok(None) if !named_python(&exe) => false,
                Ok(_) | Err(_) => {
                    // Mid-exec or just gone: look again next time, a few times.
                    let tries = self.retries.entry(pid).or_default();
                    *tries += 1;
                    if *tries < RETRIES {
                        continue;
                    }
                    let why = match found {
                        Err(ProcessError::Exited { .. } | ProcessError::NoSuchProcess { .. }) => {
                            None
                        }
                        Err(e) => Some(e.to_string()),
                        Ok(None) => Some(format!(
                            "named like Python but no interpreter found in it ({})",
                            exe.display()
                        )),
                        Ok(Some(_)) => None, // a reused pid: the next scan sees the new one
                    };
                    if let Some(why) = why {
                        changes.push(Change::Unreadable {
                            pid,
                            name: super::comm(pid),
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
                    python,
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
