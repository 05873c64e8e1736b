//! The session's `--native` unwind tables, loaded from a thread of their own: a library mapped
//! mid-run (numpy's pocketfft at its first FFT) gets its table within milliseconds of its
//! first sample stopping in it, however long the session's loop spends draining and naming.

use std::{
    collections::{HashMap, HashSet},
    io,
    panic::AssertUnwindSafe,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::{
    bpf::TableMaps,
    unwind::{KnownMapping, LoadStats, NativeTables, UnwindMaps, tables::FileKey},
};

/// How often the loader reads the kernel's count of native unwinds that stopped outside the
/// mappings written (one lookup of a per-CPU counter).
const POLL: Duration = Duration::from_millis(2);
/// How long the session's loop waits for a file the loader thread reads, to name a stack that
/// stopped in it (OpenBLAS, the largest seen, takes about 100 ms).
const READ_WAIT: Duration = Duration::from_millis(500);
/// How long the loader leaves that count alone after it grew and no registered process had
/// mapped anything new: samples in code no file maps (a JIT's) would otherwise have every
/// process's mappings read at each poll.
const QUIET: Duration = Duration::from_millis(100);

/// The tables, their maps and the processes they are kept for, behind one lock: the session's
/// loop takes it to register a process or to name a stack that stopped in a new library, the
/// loader thread when the kernel says an unwind left the mappings it knows. Neither holds it
/// while it reads a file, but for a registration, which has its first tables read before the
/// kernel samples the process.
struct State<M> {
    tables: NativeTables,
    maps: M,
    pids: HashSet<u32>,
    /// The kernel's count of unwinds outside known mappings, as last acted on.
    unmapped: u64,
    /// When the loader may next refresh (`QUIET`).
    quiet_until: Instant,
    /// What a refresh on the loader thread failed with, for the session's next call.
    failed: Option<io::Error>,
    /// The processes whose mapping lists are to be written again, and whether their mappings
    /// are to be read again (not only the tables placed since).
    stale: HashMap<u32, bool>,
    /// The files each process waits for (`Synced::waiting`).
    waiting: HashMap<u32, Vec<FileKey>>,
}

struct Shared<M> {
    state: Mutex<State<M>>,
    /// Every mapping seen per process, as of its last refresh, for naming: read without waiting
    /// for a table being built.
    mappings: Mutex<HashMap<u32, Arc<[KnownMapping]>>>,
    stop: AtomicBool,
}

impl<M: UnwindMaps> Shared<M> {
    fn state(&self) -> MutexGuard<'_, State<M>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads the tables of `pid`'s newly mapped files and publishes its mappings, under the
    /// lock throughout; a process that has exited is not an error.
    fn refresh(&self, state: &mut State<M>, pid: u32) -> io::Result<()> {
        let State { tables, maps, .. } = state;
        let refreshed = gone_is_fine(tables.refresh(pid, maps));
        // Published even if it ended meanwhile: what it mapped names what it counted.
        self.publish(state, pid);
        refreshed.map(drop)
    }

    /// Publishes every mapping `pid` was seen with, for naming.
    fn publish(&self, state: &State<M>, pid: u32) {
        let seen = Arc::from(state.tables.mappings(pid));
        let mut mappings = self.mappings.lock().unwrap_or_else(|e| e.into_inner());
        mappings.insert(pid, seen);
    }

    /// Brings the mapping lists of the processes waiting for a table up to date with the
    /// tables placed, and reads one new file, the smallest no one reads yet, with the lock
    /// released meanwhile: the session's loop and this thread each read one while the other
    /// places one. A process's mappings are read again when the kernel's count of unwinds
    /// outside known mappings rose since its last reading. Returns whether a list changed and
    /// whether a file was read (there may be more).
    fn step(&self) -> io::Result<(bool, bool)> {
        let mut changed = false;
        let unread = {
            let mut state = self.state();
            let count = state.maps.unmapped();
            if count > state.unmapped {
                state.unmapped = count;
                state.stale = state.pids.iter().map(|&pid| (pid, true)).collect();
            }
            let mut found = None;
            while let Some((&pid, &reread)) = state.stale.iter().next() {
                state.stale.remove(&pid);
                let State { tables, maps, .. } = &mut *state;
                let Some(synced) = gone_is_fine(tables.sync(pid, reread, maps))? else {
                    continue;
                };
                if synced.changed {
                    changed = true;
                    self.publish(&state, pid);
                }
                match synced.waiting.is_empty() {
                    true => state.waiting.remove(&pid),
                    false => state.waiting.insert(pid, synced.waiting),
                };
                if synced.unread.is_some() {
                    found = synced.unread;
                    break;
                }
            }
            found
        };
        let Some(unread) = unread else {
            return Ok((changed, false));
        };
        let file = unread.file();
        let read = unread.read();
        let mut state = self.state();
        let State { tables, maps, .. } = &mut *state;
        let read = match gone_is_fine(read) {
            Ok(read) => read,
            Err(e) => {
                tables.unclaim(&file);
                return Err(e);
            }
        };
        match read {
            Some(read) => tables.add(read, maps)?,
            None => tables.unclaim(&file),
        }
        // The processes waiting for it list it, and claim their next file.
        let waiting: Vec<u32> = (state.waiting.iter())
            .filter(|(_, files)| files.contains(&file))
            .map(|(&pid, _)| pid)
            .collect();
        for pid in waiting {
            state.stale.entry(pid).or_insert(false);
        }
        Ok((changed, true))
    }

    /// `step` until no new file is left to read, every process's mappings read again first.
    /// Returns whether any list changed.
    fn catch_up(&self) -> io::Result<bool> {
        {
            let mut state = self.state();
            state.stale = state.pids.iter().map(|&pid| (pid, true)).collect();
        }
        let mut changed = false;
        while !self.stop.load(Ordering::Relaxed) {
            let (c, read) = self.step()?;
            changed |= c;
            if !read {
                break;
            }
        }
        Ok(changed)
    }

    /// The loader thread: at each `POLL`, a rise in the kernel's count of unwinds outside
    /// known mappings has it read the new files of every registered process, the smallest
    /// first, re-reading the mappings after each (a library mapped meanwhile goes before the
    /// big ones left).
    fn run(&self) {
        while !self.stop.load(Ordering::Relaxed) {
            thread::park_timeout(POLL);
            {
                let mut state = self.state();
                if state.failed.is_some() || Instant::now() < state.quiet_until {
                    continue;
                }
                let count = state.maps.unmapped();
                if count <= state.unmapped {
                    continue;
                }
                state.unmapped = count;
            }
            // A panic (a file no parser expected) is said by the session's next call, as an
            // error, rather than leaving the tables unloaded in silence.
            let caught_up = std::panic::catch_unwind(AssertUnwindSafe(|| self.catch_up()))
                .unwrap_or_else(|_| Err(io::Error::other("the unwind table loader panicked")));
            let mut state = self.state();
            match caught_up {
                Ok(true) => {}
                Ok(false) => state.quiet_until = Instant::now() + QUIET,
                Err(e) => state.failed = Some(e),
            }
        }
    }
}

/// `result`, with an error that says the process exited (its /proc files gone, its memory
/// unreadable) as None.
fn gone_is_fine<T>(result: io::Result<T>) -> io::Result<Option<T>> {
    match result {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// `--native`'s tables and the thread that keeps them in step with the registered processes.
pub struct TableLoader<M: UnwindMaps + Send + 'static = TableMaps> {
    shared: Arc<Shared<M>>,
    thread: Option<JoinHandle<()>>,
}

impl<M: UnwindMaps + Send + 'static> TableLoader<M> {
    /// Starts the loader thread over the kernel's unwind maps.
    pub fn start(maps: M) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                unmapped: maps.unmapped(),
                tables: NativeTables::default(),
                maps,
                pids: HashSet::new(),
                quiet_until: Instant::now(),
                failed: None,
                stale: HashMap::new(),
                waiting: HashMap::new(),
            }),
            mappings: Mutex::new(HashMap::new()),
            stop: AtomicBool::new(false),
        });
        let thread = thread::Builder::new()
            .name("prof-bpf-tables".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || shared.run()
            })?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Loads the tables of process `pid`, registered now, and keeps them in step from now on.
    pub fn add(&self, pid: u32) -> io::Result<()> {
        let mut state = self.shared.state();
        failed(&mut state)?;
        state.pids.insert(pid);
        self.shared.refresh(&mut state, pid)?;
        // A file the loader thread reads now is listed for this process at its next step.
        if state.tables.reading() {
            state.stale.entry(pid).or_insert(false);
        }
        Ok(())
    }

    /// Stops keeping `pid`'s tables in step (its mappings are kept, to name what it counted).
    pub fn remove(&self, pid: u32) {
        let mut state = self.shared.state();
        state.pids.remove(&pid);
        state.stale.remove(&pid);
        state.waiting.remove(&pid);
        state.tables.forget(pid);
    }

    /// Loads the tables of the libraries the registered processes mapped since the last
    /// refresh (an `import numpy`), with the loader thread, before stacks that stopped in one
    /// are named (their leaf is named from its library's mapping): then waits, up to
    /// `READ_WAIT`, for the file the thread reads.
    pub fn refresh_all(&self) -> io::Result<()> {
        failed(&mut self.shared.state())?;
        self.shared.catch_up()?;
        let since = Instant::now();
        while self.shared.state().tables.reading() && since.elapsed() < READ_WAIT {
            thread::sleep(POLL / 2);
        }
        self.shared.catch_up().map(drop)
    }

    /// What the loader thread failed with since the last call, if anything.
    pub fn check(&self) -> io::Result<()> {
        failed(&mut self.shared.state())
    }

    /// Every executable mapping `pid` was seen with.
    pub fn mappings(&self, pid: u32) -> Option<Arc<[KnownMapping]>> {
        let mappings = self
            .shared
            .mappings
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        mappings.get(&pid).cloned()
    }

    /// What loading tables met, for the summary.
    pub fn stats(&self) -> LoadStats {
        self.shared.state().tables.stats.clone()
    }
}

/// The error a refresh on the loader thread met, taken: said once, by the session's next call.
fn failed<M>(state: &mut State<M>) -> io::Result<()> {
    state.failed.take().map_or(Ok(()), Err)
}

impl<M: UnwindMaps + Send + 'static> Drop for TableLoader<M> {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use profiler_common::{NativeMappings, PageChunk, RowChunk};

    use super::*;

    /// The kernel's maps, in memory, with the count of unwinds outside them set by the test.
    struct Maps {
        written: Arc<Mutex<Option<Box<NativeMappings>>>>,
        unmapped: Arc<AtomicU64>,
    }

    impl UnwindMaps for Maps {
        fn write_chunk(&mut self, _index: u32, _chunk: &RowChunk) -> io::Result<()> {
            Ok(())
        }

        fn write_page_chunk(&mut self, _index: u32, _chunk: &PageChunk) -> io::Result<()> {
            Ok(())
        }

        fn write_mappings(&mut self, _pid: u32, mappings: &NativeMappings) -> io::Result<()> {
            *self.written.lock().unwrap() = Some(Box::new(*mappings));
            Ok(())
        }

        fn unmapped(&self) -> u64 {
            self.unmapped.load(Ordering::Relaxed)
        }
    }

    /// This process maps a library after it was registered: nothing lists it until the count
    /// of unwinds outside known mappings rises; then the loader thread lists it, with its
    /// table, with no call from the session.
    #[test]
    fn the_loader_lists_a_library_mapped_later_once_an_unwind_stops_outside() {
        let _mapping = crate::unwind::tables::MAPPING
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        assert!(!maps.contains("libz.so"), "libz is mapped already");
        let written = Arc::new(Mutex::new(None));
        let unmapped = Arc::new(AtomicU64::new(0));
        let loader = TableLoader::start(Maps {
            written: Arc::clone(&written),
            unmapped: Arc::clone(&unmapped),
        })
        .unwrap();
        let pid = std::process::id();
        loader.add(pid).unwrap();

        // SAFETY: loads zlib (no initializer with effects) and looks up a function of it.
        let crc32 = unsafe {
            let lib = libc::dlopen(c"libz.so.1".as_ptr(), libc::RTLD_NOW);
            assert!(!lib.is_null(), "libz.so.1 could not be loaded");
            libc::dlsym(lib, c"crc32".as_ptr()) as u64
        };
        assert_ne!(crc32, 0);
        let listed = || {
            written.lock().unwrap().as_ref().is_some_and(|m| {
                m.mappings[..m.len as usize]
                    .iter()
                    .any(|x| x.start <= crc32 && crc32 < x.end && x.rows_len > 0)
            })
        };
        thread::sleep(POLL * 20);
        assert!(!listed(), "listed before any unwind stopped outside");

        unmapped.fetch_add(1, Ordering::Relaxed);
        let published = || {
            loader.mappings(pid).is_some_and(|seen| {
                seen.iter()
                    .any(|m| m.name.contains("libz.so") && m.start <= crc32 && crc32 < m.end)
            })
        };
        let since = Instant::now();
        while !(listed() && published()) && since.elapsed() < Duration::from_secs(10) {
            thread::sleep(POLL);
        }
        assert!(
            listed(),
            "not listed {:?} after the count rose",
            since.elapsed()
        );
        let seen = loader.mappings(pid).unwrap();
        assert!(published(), "{seen:#?}");
    }
}
