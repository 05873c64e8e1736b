//! Keeps the kernel's unwind maps in step with a target's executable mappings: builds each
//! mapped file's table once (`cfi`), places it in the shared row array, and writes the process's
//! sorted mapping list. Synced again (`sync`), it picks up libraries mapped later (an `import
//! numpy` mid-run), and hands out their files one at a time, smallest first, to read without
//! the tables borrowed (`Unread::read`), so callers on two threads read while one places
//! (`session::tables`). Also remembers every mapping it saw, so native addresses can be
//! named after the process has exited. Files are read as the process maps them
//! (`process::open_mapped`): a process in a container unwinds through its own libraries (its
//! libc, not the host's), and nothing is opened by a path the container controls.

use std::{
    collections::{HashMap, HashSet},
    fs,
    io::{self, Read as _, Seek as _, SeekFrom},
    path::PathBuf,
    sync::Arc,
};

use object::{Object, ObjectSegment};

use profiler_common::{
    MAX_MAPPINGS, MAX_PAGE_CHUNKS, MAX_ROW_CHUNKS, NativeMapping, NativeMappings, PAGES_PER_CHUNK,
    PageChunk, ROWS_PER_CHUNK, RowChunk, UnwindRow,
};

use super::cfi;
use crate::process::{Mapping, ProcMem, ProcessMemory};

/// Where the kernel's maps are written: the `bpf` module implements it.
pub trait UnwindMaps {
    fn write_chunk(&mut self, index: u32, chunk: &RowChunk) -> io::Result<()>;
    fn write_page_chunk(&mut self, index: u32, chunk: &PageChunk) -> io::Result<()>;
    fn write_mappings(&mut self, pid: u32, mappings: &NativeMappings) -> io::Result<()>;
    /// Native unwinds so far that stopped at an address outside every mapping list written:
    /// the kernel's count (0 where nothing unwinds with these maps).
    fn unmapped(&self) -> u64;
}

/// A file mapped executable in a target, as the symbolizer needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownMapping {
    pub start: u64,
    pub end: u64,
    /// Address in the process minus address in the file.
    pub bias: u64,
    /// The file as the process names it (`[vdso]` for the vDSO).
    pub name: String,
    /// A path to the very file mapped, to read its symbols, even after the process exited:
    /// the file's own path where that is the same file in our mount namespace, else
    /// `/proc/self/fd/N` of a descriptor kept open for it (None for the vDSO).
    pub path: Option<PathBuf>,
    /// The vDSO's image, copied from the process (it has no file).
    pub image: Option<Arc<[u8]>>,
}

/// The mapping of `mappings` (every one a process was seen with, oldest first) that holds
/// address `at`: the newest, where memory was mapped again.
pub fn mapping_at(mappings: &[KnownMapping], at: u64) -> Option<&KnownMapping> {
    mappings.iter().rev().find(|m| m.start <= at && at < m.end)
}

/// A file's place in the row array.
#[derive(Clone, Copy, Debug)]
struct Placed {
    rows_start: u32,
    rows_len: u32,
    pages_start: u32,
    pages_len: u32,
    first_page: u32,
}

/// What is kept of a file once read: its table's place and its loadable segments
/// (file offset, file size, address), to place later mappings of it without reading it again.
#[derive(Clone, Debug)]
struct FileInfo {
    placed: Option<Placed>,
    segments: Vec<Segment>,
    /// The vDSO's image (kept to name its functions).
    image: Option<Arc<[u8]>>,
    /// Where its symbols are read from (see `KnownMapping::path`), and the descriptor that
    /// path needs kept open, if it needs one.
    path: Option<PathBuf>,
    _open: Option<Arc<fs::File>>,
    /// Where it lists the code of CPython's JIT, if it is a CPython whose JIT code runs under
    /// a frame pointer (`jit_descriptor`): the address in the file.
    jit_descriptor: Option<u64>,
}

/// What loading tables met, for the summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadStats {
    pub files: usize,
    pub rows: usize,
    /// Files without a usable table (unwound with frame pointers), with why.
    pub failed: Vec<(String, String)>,
    /// Executable mappings beyond `MAX_MAPPINGS`.
    pub dropped_mappings: usize,
}

#[derive(Default)]
pub struct NativeTables {
    /// By file identity (device, inode, size, mtime; the vDSO by its size): one table per file.
    files: HashMap<FileKey, FileInfo>,
    /// Files being read by a caller of `sync` (no borrow of the tables meanwhile).
    claimed: HashSet<FileKey>,
    next_chunk: u32,
    next_page_chunk: u32,
    /// The last `NativeMappings::generation` written (for any pid).
    generation: u32,
    /// Per pid: the mapping list last written, the files of its mappings (by start, end,
    /// offset, device and inode, as /proc/PID/maps gives them: not opened again), and every
    /// mapping ever seen.
    written: HashMap<u32, Vec<NativeMapping>>,
    identities: HashMap<u32, HashMap<MappingId, FileKey>>,
    /// Per pid: its executable mappings as last read, and its JIT's list as read then.
    listed: HashMap<u32, Vec<(Mapping, String)>>,
    jit: HashMap<u32, JitList>,
    seen: HashMap<u32, Vec<KnownMapping>>,
    pub stats: LoadStats,
}

/// A mapping as /proc/PID/maps tells it from another: start, end, offset, device, inode.
type MappingId = (u64, u64, u64, u64, u64);

fn mapping_id(m: &Mapping) -> MappingId {
    (m.start, m.end, m.offset, m.dev, m.inode)
}

/// What a `NativeTables::sync` did and left to do.
pub struct Synced {
    /// The process's mapping list was rewritten.
    pub changed: bool,
    /// The smallest of its new files no one reads yet, claimed for the caller to read
    /// (`Unread::read`) and place (`NativeTables::add`), or give back (`unclaim`).
    pub unread: Option<Unread>,
    /// The new files whose tables are not placed yet (the one claimed included).
    pub waiting: Vec<FileKey>,
}

/// A new file a process maps, to read without a borrow of the tables.
pub struct Unread {
    pid: u32,
    mapping: Mapping,
    name: String,
    file: FileKey,
    opened: Option<fs::File>,
}

/// A file read, with its table built (`Unread::read`), for `NativeTables::add`.
pub struct Read {
    file: FileKey,
    name: String,
    /// The table's rows, or why the file has none.
    rows: Result<Vec<UnwindRow>, String>,
    segments: Vec<Segment>,
    image: Option<Arc<[u8]>>,
    path: Option<PathBuf>,
    open: Option<Arc<fs::File>>,
    jit_descriptor: Option<u64>,
}

impl Read {
    /// A file with `rows` (or why it has none), and nothing else read from it.
    fn bare(file: FileKey, name: String, rows: Result<Vec<UnwindRow>, String>) -> Self {
        Read {
            file,
            name,
            rows,
            segments: Vec::new(),
            image: None,
            path: None,
            open: None,
            jit_descriptor: None,
        }
    }
}

impl Unread {
    /// The claim this holds, to give back if reading fails.
    pub fn file(&self) -> FileKey {
        self.file.clone()
    }

    /// Reads the file (the vDSO from the process's memory) and builds its table: the slow
    /// part (OpenBLAS's 100 ms), done without the tables.
    pub fn read(self) -> io::Result<Read> {
        let Unread {
            pid,
            mapping: m,
            name,
            file,
            opened,
        } = self;
        if let FileKey::Trampolines(size, arena) = file {
            // Rows made, not read; the arena's addresses are its offsets.
            let rows = Ok(trampoline_rows(size, arena));
            return Ok(Read {
                segments: vec![Segment::WHOLE],
                ..Read::bare(file, name, rows)
            });
        }
        let data = match &opened {
            None => read_memory(pid, m.start, m.end - m.start)?,
            Some(f) => {
                let mut data = Vec::new();
                if let Err(e) = (&*f).read_to_end(&mut data) {
                    return Ok(Read::bare(file, name, Err(e.to_string())));
                }
                data
            }
        };
        let rows = match cfi::table_for_elf(&data) {
            Ok(table) if !table.rows.is_empty() => Ok(table.rows),
            Ok(_) => Err("no call frame information".to_string()),
            Err(e) => Err(e.to_string()),
        };
        let segments = segments(&data);
        let jit_descriptor = jit_descriptor(&data, &segments);
        let (path, open) = match opened {
            None => (None, None),
            Some(f) => symbols_path(pid, &m, f, &data),
        };
        let image = path.is_none().then(|| Arc::from(data));
        Ok(Read {
            file,
            name,
            rows,
            segments,
            image,
            path,
            open,
            jit_descriptor,
        })
    }
}

impl NativeTables {
    /// Re-reads `pid`'s mappings and, if its executable mappings changed, loads the tables of
    /// new files and rewrites its mapping list. Returns whether anything changed.
    pub fn refresh(&mut self, pid: u32, maps: &mut impl UnwindMaps) -> io::Result<bool> {
        let (mut changed, mut reread) = (false, true);
        loop {
            let synced = self.sync(pid, reread, maps)?;
            reread = false;
            changed |= synced.changed;
            let Some(unread) = synced.unread else {
                return Ok(changed);
            };
            let file = unread.file();
            match unread.read() {
                Ok(read) => self.add(read, maps)?,
                Err(e) => {
                    self.unclaim(&file);
                    return Err(e);
                }
            }
        }
    }

    /// Writes `pid`'s mapping list with every file whose table is placed, if that list
    /// changed, and claims the smallest new file for the caller to read: one huge library
    /// (OpenBLAS) does not hold up the small ones mapped beside or after it, whose code runs
    /// first (a module's init). Its mappings are read again if `reread` (else as last read).
    pub fn sync(
        &mut self,
        pid: u32,
        reread: bool,
        maps: &mut impl UnwindMaps,
    ) -> io::Result<Synced> {
        if reread || !self.listed.contains_key(&pid) {
            let exec = exec_mappings(pid)?;
            self.listed.insert(pid, exec);
        }
        // Taken out while its mappings are placed, and put back.
        let exec = self.listed.remove(&pid).unwrap_or_default();
        let mut out = Vec::new();
        let mut new: Vec<(&Mapping, &String, FileKey)> = Vec::new();
        let mut waiting = Vec::new();
        let mut jit_descriptor = None;
        let mut anonymous = Vec::new();
        for (m, name) in &exec {
            if name == ANONYMOUS_CODE {
                anonymous.push(m);
                continue;
            }
            let id = mapping_id(m);
            let file = match self.identities.get(&pid).and_then(|ids| ids.get(&id)) {
                Some(file) => file.clone(),
                None => match identify(pid, m, name) {
                    Ok((file, _)) => {
                        let ids = self.identities.entry(pid).or_default();
                        ids.insert(id, file.clone());
                        file
                    }
                    Err(e) => {
                        self.note_failure(name, &e.to_string());
                        continue;
                    }
                },
            };
            if self.files.contains_key(&file) {
                let bias = self.add_mapping(pid, (m, name), &file, &mut out);
                if let (Some(at), Some(bias)) = (self.files[&file].jit_descriptor, bias) {
                    jit_descriptor = Some(at.wrapping_add(bias));
                }
            } else if !waiting.contains(&file) {
                waiting.push(file.clone());
                if !self.claimed.contains(&file) {
                    new.push((m, name, file));
                }
            }
        }
        if let Some(at) = jit_descriptor {
            if reread || !self.jit.contains_key(&pid) {
                let known = self.jit.remove(&pid).map(|j| j.entries).unwrap_or_default();
                let list = ProcMem::open(pid).map(|mem| jit_code(&mem, at, known));
                self.jit.insert(pid, list.unwrap_or_default());
            }
            self.files
                .entry(FileKey::JitCode)
                .or_insert_with(|| FileInfo {
                    placed: None,
                    segments: vec![Segment::WHOLE],
                    image: None,
                    path: None,
                    _open: None,
                    jit_descriptor: None,
                });
            let code = self
                .jit
                .get(&pid)
                .map(|j| j.code(&anonymous))
                .unwrap_or_default();
            for m in code {
                self.add_mapping(pid, (&m, JIT_CODE), &FileKey::JitCode, &mut out);
            }
        }
        out.sort_by_key(|m| m.start);
        let changed = self.written.get(&pid) != Some(&out);
        if changed {
            self.write_mappings(pid, &out, maps)?;
            self.written.insert(pid, out);
        }
        let unread = match new.into_iter().min_by_key(|(_, _, file)| file.size()) {
            // Opened now, as mapped: the file whose identity was kept, or, changed in place
            // since, the one mapped now, kept from now on. A process that unmapped it or ended
            // meanwhile is synced again later.
            Some((m, name, _)) => match identify(pid, m, name) {
                Ok((file, opened)) => {
                    let ids = self.identities.entry(pid).or_default();
                    ids.insert(mapping_id(m), file.clone());
                    let free = !self.files.contains_key(&file) && !self.claimed.contains(&file);
                    free.then(|| {
                        self.claimed.insert(file.clone());
                        Unread {
                            pid,
                            mapping: m.clone(),
                            name: name.clone(),
                            file,
                            opened,
                        }
                    })
                }
                Err(_) => None,
            },
            None => None,
        };
        self.listed.insert(pid, exec);
        Ok(Synced {
            changed,
            unread,
            waiting,
        })
    }

    /// Places a file read (`Unread::read`): its table goes into the kernel's array, and the
    /// next `sync` of a process mapping it lists it.
    pub fn add(&mut self, read: Read, maps: &mut impl UnwindMaps) -> io::Result<()> {
        self.claimed.remove(&read.file);
        let placed = match read.rows {
            Ok(rows) if rows.is_empty() => None,
            Ok(rows) => self.write(&rows, &read.name, maps)?,
            Err(why) => {
                self.note_failure(&read.name, &why);
                None
            }
        };
        self.files.insert(
            read.file,
            FileInfo {
                placed,
                segments: read.segments,
                image: read.image,
                path: read.path,
                _open: read.open,
                jit_descriptor: read.jit_descriptor,
            },
        );
        Ok(())
    }

    /// Drops what is kept to keep process `pid`'s list in step (it ended), not its mappings
    /// seen.
    pub fn forget(&mut self, pid: u32) {
        self.written.remove(&pid);
        self.identities.remove(&pid);
        self.listed.remove(&pid);
        self.jit.remove(&pid);
    }

    /// Whether a file is being read by a caller of `sync`.
    pub fn reading(&self) -> bool {
        !self.claimed.is_empty()
    }

    /// Gives back the claim on a file that could not be read (its process exited).
    pub fn unclaim(&mut self, file: &FileKey) {
        self.claimed.remove(file);
    }

    /// Adds mapping `m` named `name` of placed file `file` to `out`, and to what `pid` was
    /// seen with. Returns its load bias, if it has one.
    fn add_mapping(
        &mut self,
        pid: u32,
        (m, name): (&Mapping, &str),
        file: &FileKey,
        out: &mut Vec<NativeMapping>,
    ) -> Option<u64> {
        let info = &self.files[file];
        let placed = info.placed;
        let image = info.image.clone();
        let path = info.path.clone();
        let Some(bias) = load_bias(&info.segments, m, path.is_none()) else {
            self.note_failure(name, "no loadable segment covers the mapping");
            return None;
        };
        let seen = self.seen.entry(pid).or_default();
        if name == JIT_CODE {
            // JIT code comes and goes: the newest says what is there now, and the list does
            // not grow with every change of it.
            seen.retain(|k| k.name != JIT_CODE || k.end <= m.start || m.end <= k.start);
        }
        if !seen
            .iter()
            .any(|k| (k.start, k.end, k.bias, k.name.as_str()) == (m.start, m.end, bias, name))
        {
            seen.push(KnownMapping {
                start: m.start,
                end: m.end,
                bias,
                name: name.to_string(),
                path,
                image,
            });
        }
        out.push(NativeMapping {
            start: m.start,
            end: m.end,
            bias,
            rows_start: placed.map_or(0, |p| p.rows_start),
            rows_len: placed.map_or(0, |p| p.rows_len),
            pages_start: placed.map_or(0, |p| p.pages_start),
            pages_len: placed.map_or(0, |p| p.pages_len),
            first_page: placed.map_or(0, |p| p.first_page),
            _pad: 0,
        });
        Some(bias)
    }

    fn write_mappings(
        &mut self,
        pid: u32,
        out: &[NativeMapping],
        maps: &mut impl UnwindMaps,
    ) -> io::Result<()> {
        // A new generation for every write: rows the kernel memoized for this pid's old entry
        // (or for an earlier process with its pid) no longer match.
        self.generation = self.generation.checked_add(1).unwrap_or(1);
        let mut value = Box::new(NativeMappings {
            len: out.len().min(MAX_MAPPINGS) as u32,
            generation: self.generation,
            mappings: [NativeMapping::default(); MAX_MAPPINGS],
        });
        if out.len() > MAX_MAPPINGS {
            self.stats.dropped_mappings = out.len() - MAX_MAPPINGS;
        }
        let n = value.len as usize;
        value.mappings[..n].copy_from_slice(&out[..n]);
        maps.write_mappings(pid, &value)
    }

    /// Every executable mapping `pid` was seen with.
    pub fn mappings(&self, pid: u32) -> &[KnownMapping] {
        self.seen.get(&pid).map_or(&[], Vec::as_slice)
    }

    fn note_failure(&mut self, name: &str, why: &str) {
        if !self.stats.failed.iter().any(|(n, _)| n == name) {
            self.stats.failed.push((name.to_string(), why.to_string()));
        }
    }

    fn write(
        &mut self,
        rows: &[UnwindRow],
        name: &str,
        maps: &mut impl UnwindMaps,
    ) -> io::Result<Option<Placed>> {
        let (first_page, index) = cfi::page_index(rows);
        let chunks = rows.len().div_ceil(ROWS_PER_CHUNK) as u32;
        let page_chunks = index.len().div_ceil(PAGES_PER_CHUNK) as u32;
        if self.next_chunk + chunks > MAX_ROW_CHUNKS
            || self.next_page_chunk + page_chunks > MAX_PAGE_CHUNKS
        {
            self.note_failure(name, "the kernel's unwind row array is full");
            return Ok(None);
        }
        let first = self.next_chunk;
        let mut chunk = Box::new(RowChunk {
            rows: [UnwindRow::default(); ROWS_PER_CHUNK],
        });
        for (i, part) in rows.chunks(ROWS_PER_CHUNK).enumerate() {
            chunk.rows[..part.len()].copy_from_slice(part);
            chunk.rows[part.len()..].fill(UnwindRow::default());
            maps.write_chunk(first + i as u32, &chunk)?;
        }
        let first_pages = self.next_page_chunk;
        let mut pages = Box::new(PageChunk {
            rows: [0; PAGES_PER_CHUNK],
        });
        for (i, part) in index.chunks(PAGES_PER_CHUNK).enumerate() {
            pages.rows[..part.len()].copy_from_slice(part);
            pages.rows[part.len()..].fill(0);
            maps.write_page_chunk(first_pages + i as u32, &pages)?;
        }
        self.next_chunk += chunks;
        self.next_page_chunk += page_chunks;
        self.stats.files += 1;
        self.stats.rows += rows.len();
        Ok(Some(Placed {
            rows_start: first * ROWS_PER_CHUNK as u32,
            rows_len: rows.len() as u32,
            pages_start: first_pages * PAGES_PER_CHUNK as u32,
            pages_len: index.len() as u32,
            first_page,
        }))
    }
}

/// `pid`'s executable mappings of files, its vDSO, and its anonymous executable memory.
fn exec_mappings(pid: u32) -> io::Result<Vec<(Mapping, String)>> {
    let text = fs::read_to_string(crate::process::proc_dir(pid).join("maps"))?;
    let mut exec = Vec::new();
    // Opened at the first anonymous mapping, once for all of them: under 3.15's JIT there can
    // be many.
    let mut mem: Option<Option<ProcMem>> = None;
    for line in text.lines() {
        let Some(m) = crate::process::parse_maps(line).pop() else {
            continue;
        };
        if !m.perms.contains('x') {
            continue;
        }
        // The sixth field: a file's path, a name the kernel gives (`[vdso]`) or one a process
        // gave its memory (`[anon:cpython:jit]`, a debug or `-X dev` 3.14+), or nothing for
        // anonymous memory: CPython's perf trampolines (`-X perf`), or other code (a JIT's).
        let name = match (&m.path, line.split_whitespace().nth(5)) {
            (Some(path), _) => path.display().to_string(),
            (None, Some("[vdso]")) => "[vdso]".to_string(),
            (None, named) if named.is_none_or(|n| n.starts_with("[anon:")) => {
                let mem = mem.get_or_insert_with(|| ProcMem::open(pid).ok());
                anonymous_code(mem.as_ref(), &m).to_string()
            }
            (None, _) => continue,
        };
        exec.push((m, name));
    }
    Ok(exec)
}

/// What anonymous executable mapping `m` is listed as, from its process's memory `mem` (an
/// arena of perf trampolines is only known by what it holds: without `mem`, none is).
fn anonymous_code(mem: Option<&impl ProcessMemory>, m: &Mapping) -> &'static str {
    match mem.and_then(|mem| trampoline_arena(mem, m)) {
        Some(_) => PERF_TRAMPOLINES,
        None => ANONYMOUS_CODE,
    }
}

/// Anonymous executable memory that is not an arena of perf trampolines, as `exec_mappings`
/// lists it: never listed for the kernel itself; CPython's JIT code in it is (`jit_code`).
const ANONYMOUS_CODE: &str = "[anonymous code]";

/// The name given to the code CPython's JIT placed, as its GDB JIT interface lists it
/// (`jit_code`): unwound by the frame pointer of the JIT's entry (`jit_descriptor`).
pub const JIT_CODE: &str = "[JIT code]";

/// Whether ELF file `data` (its `segments`) is a CPython whose JIT code runs under a frame
/// pointer, and if so where it lists that code: the address in the file of its
/// `__jit_debug_descriptor` (GDB's JIT interface). So it is when its `_PyJIT_Entry` (3.15+),
/// which calls the JIT code, starts with `push %rbp; mov %rsp, %rbp` (after `endbr64` where
/// built so): the JIT code leaves rbp alone, so from any of it the frame pointer leads to the
/// entry's caller (the eval loop). 3.14 emits its entry into the JIT code itself, without a
/// frame pointer: not unwound.
fn jit_descriptor(data: &[u8], segments: &[Segment]) -> Option<u64> {
    use object::ObjectSymbol as _;
    const PROLOGUE: [u8; 4] = [0x55, 0x48, 0x89, 0xe5];
    const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];
    let file = object::File::parse(data).ok()?;
    // Both exported (`PyAPI_FUNC`, and for GDB): the dynamic symbols, a tenth of a full symbol
    // table, suffice.
    let defined = |name: &str| {
        file.dynamic_symbols()
            .find(|s| s.is_definition() && s.name() == Ok(name))
            .map(|s| s.address())
    };
    let entry = defined("_PyJIT_Entry")?;
    let seg = segments
        .iter()
        .filter(|seg| seg.executable && seg.address <= entry)
        .max_by_key(|seg| seg.address)?;
    let offset = (entry - seg.address + seg.offset) as usize;
    let code = data.get(offset..offset + 8)?;
    let keeps_rbp = code.starts_with(&PROLOGUE)
        || (code.starts_with(&ENDBR64) && code[4..].starts_with(&PROLOGUE));
    if !keeps_rbp {
        return None;
    }
    defined("__jit_debug_descriptor")
}

/// At most this many entries of a JIT's list are read: past that (or in a list that loops) the
/// oldest code (CPython adds at the front) loses its frames, not the profile.
const MAX_JIT_ENTRIES: usize = 16384;

/// What a CPython JIT's list (GDB's JIT interface) says: each entry, by its address and its
/// object's, with the code it covers (whole pages), if it could be read. An entry never changes
/// once listed, so a new reading reads only the entries it has not seen.
#[derive(Default)]
struct JitList {
    entries: HashMap<(u64, u64), Option<(u64, u64)>>,
}

impl JitList {
    /// The JIT code in `anonymous` (the process's anonymous executable mappings, read with the
    /// list): in each mapping, from its first piece of code to its last, as one mapping (what
    /// lies between is the JIT's data, or code, not anything else's). A piece no such mapping
    /// holds (freed since, or garbage) is left out, as are mappings with none.
    fn code(&self, anonymous: &[&Mapping]) -> Vec<Mapping> {
        anonymous
            .iter()
            .filter_map(|m| {
                let (start, end) = self
                    .entries
                    .values()
                    .flatten()
                    .filter(|&&(start, end)| m.start <= start && end <= m.end)
                    .fold(None, |span: Option<(u64, u64)>, &(start, end)| {
                        Some(span.map_or((start, end), |(s, e)| (s.min(start), e.max(end))))
                    })?;
                Some(Mapping {
                    start,
                    end,
                    offset: 0,
                    perms: m.perms.clone(),
                    dev: 0,
                    inode: 0,
                    path: None,
                })
            })
            .collect()
    }
}

/// Reads the list of the code CPython's JIT has placed in a process (its memory `mem`), from its
/// GDB JIT interface at `descriptor` (a `jit_descriptor`, then `jit_code_entry`s, each an
/// in-memory ELF object whose code section is the code), reading again only the headers of
/// entries not in `known`. Empty as far as it cannot be read.
fn jit_code(
    mem: &impl ProcessMemory,
    descriptor: u64,
    known: HashMap<(u64, u64), Option<(u64, u64)>>,
) -> JitList {
    let mut list = JitList::default();
    // { u32 version; u32 action_flag; entry *relevant_entry; entry *first_entry; }
    let mut entry = match mem.read_u32(descriptor) {
        Ok(1) => mem.read_u64(descriptor + 16).unwrap_or(0),
        _ => 0,
    };
    for _ in 0..MAX_JIT_ENTRIES {
        if entry == 0 {
            break;
        }
        // { entry *next; entry *prev; const char *symfile_addr; u64 symfile_size; }
        let mut e = [0u8; 32];
        if mem.read(entry, &mut e).is_err() {
            break;
        }
        let field = |i: usize| u64::from_le_bytes(e[i * 8..i * 8 + 8].try_into().unwrap());
        let (next, symfile) = (field(0), field(2));
        let key = (entry, symfile);
        let code = match known.get(&key) {
            Some(code) => *code,
            None => object_code(mem, symfile),
        };
        list.entries.insert(key, code);
        entry = next;
    }
    list
}

/// The code an in-memory ELF object at `at` (an entry of GDB's JIT interface) covers, whole
/// pages, from its header and section headers alone: its executable section's address and size.
fn object_code(mem: &impl ProcessMemory, at: u64) -> Option<(u64, u64)> {
    const SHF_EXECINSTR: u64 = 0x4;
    let mut header = [0u8; 64];
    mem.read(at, &mut header).ok()?;
    if header[..4] != *b"\x7fELF" || header[4] != 2 {
        return None;
    }
    let u16_at = |b: &[u8], i: usize| u16::from_le_bytes([b[i], b[i + 1]]) as u64;
    let u64_at = |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
    let (shoff, shentsize, shnum) = (
        u64_at(&header, 0x28),
        u16_at(&header, 0x3a),
        u16_at(&header, 0x3c),
    );
    if shentsize < 64 || shnum > 64 {
        return None;
    }
    let sections = mem
        .read_vec(at.checked_add(shoff)?, (shentsize * shnum) as usize)
        .ok()?;
    sections.chunks_exact(shentsize as usize).find_map(|sh| {
        let (flags, addr, size) = (u64_at(sh, 8), u64_at(sh, 16), u64_at(sh, 32));
        if flags & SHF_EXECINSTR == 0 || size == 0 {
            return None;
        }
        let end = addr.checked_add(size)?.checked_next_multiple_of(PAGE)?;
        Some((addr & !(PAGE - 1), end))
    })
}

/// The name given to an arena of CPython's perf trampolines (`python -X perf`, 3.12+): copies of
/// `_Py_trampoline_func_start` that each Python call runs through on its way to the eval loop.
pub const PERF_TRAMPOLINES: &str = "[perf trampolines]";

/// What an arena of CPython's perf trampolines holds: which of `TRAMPOLINES` was copied, and
/// the distance between the copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TrampolineArena {
    shape: u8,
    stride: u32,
}

/// One form `_Py_trampoline_func_start` takes on x86-64 (Python/asm_trampoline.S), and its
/// unwind rows: (offset in the copy, CFA as rsp + 8 * n, the caller's rbp at CFA + 8 * k or
/// unchanged for 0). Each copy calls the eval loop through `%rcx`.
struct TrampolineShape {
    code: &'static [u8],
    rows: &'static [(u32, u16, i8)],
}

/// Its two forms, each also with `endbr64` first, as a build with `-fcf-protection` assembles it
/// (Debian's 3.14 and 3.15 are built so):
/// - 3.12 and 3.13: `sub $8, %rsp; call *%rcx; add $8, %rsp; ret`;
/// - 3.14 and later: `push %rbp; mov %rsp, %rbp; call *%rcx; pop %rbp; ret`.
const TRAMPOLINES: [TrampolineShape; 4] = [
    TrampolineShape {
        code: &[
            0x48, 0x83, 0xec, 0x08, 0xff, 0xd1, 0x48, 0x83, 0xc4, 0x08, 0xc3,
        ],
        rows: &[(0, 1, 0), (4, 2, 0), (10, 1, 0)],
    },
    TrampolineShape {
        code: &[
            0xf3, 0x0f, 0x1e, 0xfa, 0x48, 0x83, 0xec, 0x08, 0xff, 0xd1, 0x48, 0x83, 0xc4, 0x08,
            0xc3,
        ],
        rows: &[(0, 1, 0), (8, 2, 0), (14, 1, 0)],
    },
    TrampolineShape {
        code: &[0x55, 0x48, 0x89, 0xe5, 0xff, 0xd1, 0x5d, 0xc3],
        rows: &[(0, 1, 0), (1, 2, -2), (7, 1, 0)],
    },
    TrampolineShape {
        code: &[
            0xf3, 0x0f, 0x1e, 0xfa, 0x55, 0x48, 0x89, 0xe5, 0xff, 0xd1, 0x5d, 0xc3,
        ],
        rows: &[(0, 1, 0), (5, 2, -2), (11, 1, 0)],
    },
];

/// The furthest apart two copies are looked for (3.12.1 packs them every 11 bytes; Debian's
/// 3.14 pads them to 32, and to 96 under `-X perf_jit`).
const MAX_TRAMPOLINE_STRIDE: usize = 256;

/// What anonymous mapping `m` holds (read from its process's memory `mem`), if it is an arena
/// of perf trampolines: it starts with a copy of one of `TRAMPOLINES`, and another copy follows.
fn trampoline_arena(mem: &impl ProcessMemory, m: &Mapping) -> Option<TrampolineArena> {
    let mut head = [0u8; 2 * MAX_TRAMPOLINE_STRIDE];
    mem.read(m.start, &mut head).ok()?;
    arena_of(&head)
}

/// The arena whose first bytes are `head`.
fn arena_of(head: &[u8]) -> Option<TrampolineArena> {
    let (shape, code) = TRAMPOLINES
        .iter()
        .enumerate()
        .find(|(_, t)| head.starts_with(t.code))
        .map(|(i, t)| (i as u8, t.code))?;
    let stride = (code.len()..=MAX_TRAMPOLINE_STRIDE)
        .find(|&at| head.get(at..at + code.len()) == Some(code))?;
    Some(TrampolineArena {
        shape,
        stride: stride as u32,
    })
}

/// The size of the arenas CPython maps for its trampolines (Python/perf_trampoline.c), each
/// filled with copies from its start. Arenas mapped next to each other make one mapping.
const TRAMPOLINE_ARENA: u64 = 16 * 4096;

/// The unwind rows of `size` bytes of arenas, addresses from their start: each copy's, from its
/// shape. At the return address of a copy's call (where every caller of the eval loop is found)
/// the CFA is rsp + 16.
fn trampoline_rows(size: u64, arena: TrampolineArena) -> Vec<UnwindRow> {
    let shape = &TRAMPOLINES[arena.shape as usize];
    let stride = arena.stride as u64;
    (0..size.div_ceil(TRAMPOLINE_ARENA))
        .flat_map(|block| {
            let start = block * TRAMPOLINE_ARENA;
            let copies = TRAMPOLINE_ARENA.min(size - start) / stride;
            (0..copies).map(move |i| start + i * stride)
        })
        .flat_map(|at| {
            shape.rows.iter().map(move |&(pc, cfa, rbp)| UnwindRow {
                pc: at as u32 + pc,
                cfa_offset: cfa,
                kind: profiler_common::row_kind::CFA_RSP,
                rbp_offset: rbp,
            })
        })
        .collect()
}

/// A loadable segment: file offset, address, and whether it is executable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    offset: u64,
    address: u64,
    executable: bool,
}

impl Segment {
    /// Memory with no file whose addresses are its offsets (trampolines, JIT code).
    const WHOLE: Segment = Segment {
        offset: 0,
        address: 0,
        executable: true,
    };
}

const PAGE: u64 = 4096;

/// An ELF file's loadable segments.
fn segments(data: &[u8]) -> Vec<Segment> {
    let Ok(file) = object::File::parse(data) else {
        return Vec::new();
    };
    file.segments()
        .map(|seg| Segment {
            offset: seg.file_range().0,
            address: seg.address(),
            executable: matches!(
                seg.flags(),
                object::SegmentFlags::Elf { p_flags, .. } if p_flags.0 & object::elf::PF_X.0 != 0
            ),
        })
        .collect()
}

/// Address in the process minus address in the file. The loader maps a segment from its file
/// offset rounded down to a page, at its address rounded down; the segment is found by that
/// offset (the executable one when several share the page: lld starts the code segment in
/// the read-only one's last page). The vDSO is mapped whole from its first byte.
fn load_bias(segments: &[Segment], m: &Mapping, whole_image: bool) -> Option<u64> {
    let offset = if whole_image { 0 } else { m.offset };
    let matching = || segments.iter().filter(|s| s.offset & !(PAGE - 1) == offset);
    let seg = matching()
        .find(|s| s.executable)
        .or_else(|| matching().next())?;
    Some(m.start.wrapping_sub(seg.address & !(PAGE - 1)))
}

/// A file's identity: (device, inode, size, mtime), or the vDSO's size.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum FileKey {
    File(u64, u64, u64, i64),
    Vdso(u64),
    /// An arena of perf trampolines, by its size and what it holds: arenas alike share one
    /// table.
    Trampolines(u64, TrampolineArena),
    /// Code of CPython's JIT (`jit_code`): one for all, with no table, never read.
    JitCode,
}

impl FileKey {
    fn size(&self) -> u64 {
        match self {
            FileKey::File(_, _, size, _) | FileKey::Vdso(size) | FileKey::Trampolines(size, _) => {
                *size
            }
            FileKey::JitCode => 0,
        }
    }
}

/// The identity of mapping `m`'s file and the file opened as mapped (None for the vDSO, which
/// has no file and is known by its size, and for an arena of perf trampolines, known by its size
/// and what it holds).
fn identify(pid: u32, m: &Mapping, name: &str) -> io::Result<(FileKey, Option<fs::File>)> {
    use std::os::unix::fs::MetadataExt as _;
    if name == "[vdso]" {
        return Ok((FileKey::Vdso(m.end - m.start), None));
    }
    if name == PERF_TRAMPOLINES {
        let arena = ProcMem::open(pid)
            .ok()
            .and_then(|mem| trampoline_arena(&mem, m))
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "perf trampolines unmapped"))?;
        return Ok((FileKey::Trampolines(m.end - m.start, arena), None));
    }
    let file = crate::process::open_mapped(pid, m)?;
    let md = file.metadata()?;
    Ok((
        FileKey::File(md.dev(), md.ino(), md.size(), md.mtime()),
        Some(file),
    ))
}

/// Where the symbols of `file` (opened as mapping `m` of `pid` maps it, its contents `data`)
/// are read from:
/// - its debug file (`/usr/lib/debug/.build-id/XX/YYYY.debug`, by its build id) in the
///   process's own root file system, where one is installed: a Debian interpreter or libc is
///   stripped to its exported symbols, and the eval loop's `.cold` part or `list_sort_impl`
///   are only in there. Opened inside that root (a container's), kept open;
/// - else its own path when that names the same file in our mount namespace (a process on the
///   host);
/// - else `/proc/self/fd/N` of `file`, kept open (a container's file, or one replaced since).
fn symbols_path(
    pid: u32,
    m: &Mapping,
    file: fs::File,
    data: &[u8],
) -> (Option<PathBuf>, Option<Arc<fs::File>>) {
    use std::os::{fd::AsRawFd as _, unix::fs::MetadataExt as _};
    let kept = |f: fs::File| {
        let path = PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
        (Some(path), Some(Arc::new(f)))
    };
    let debug = crate::process::elf::build_id(data)
        .filter(|id| id.len() > 2)
        .and_then(|id| {
            let path = format!("/usr/lib/debug/.build-id/{}/{}.debug", &id[..2], &id[2..]);
            crate::process::open_in_root(pid, std::path::Path::new(&path)).ok()
        });
    if let Some(debug) = debug {
        return kept(debug);
    }
    let same = |p: &PathBuf| {
        let (here, mapped) = (fs::metadata(p).ok()?, file.metadata().ok()?);
        Some((here.dev(), here.ino()) == (mapped.dev(), mapped.ino()))
    };
    match &m.path {
        Some(p) if same(p) == Some(true) => (Some(p.clone()), None),
        _ => kept(file),
    }
}

/// Reads `len` bytes at `addr` of `pid`'s memory. A read of /proc/PID/mem ends at once, with
/// no error, when the process no longer has its memory (it exited after the file was opened, as
/// a short-lived process does while a slow machine still loads its tables): that is ESRCH,
/// which the caller takes as the process gone, not as a failure.
fn read_memory(pid: u32, addr: u64, len: u64) -> io::Result<Vec<u8>> {
    let mut f = fs::File::open(crate::process::proc_dir(pid).join("mem"))?;
    f.seek(SeekFrom::Start(addr))?;
    let mut buf = vec![0; len as usize];
    f.read_exact(&mut buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => io::Error::from_raw_os_error(libc::ESRCH),
        _ => e,
    })?;
    Ok(buf)
}

/// Held by the unit tests that map a library into this process and by those that expect its
/// mappings to stay as they are: the tests of one binary run in parallel threads.
#[cfg(test)]
pub(crate) static MAPPING: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, ffi::c_void, os::unix::fs::FileExt as _};

    use super::*;

    /// The kernel's maps, in memory.
    #[derive(Default)]
    struct Maps {
        chunks: HashMap<u32, Box<RowChunk>>,
        pages: HashMap<u32, Box<PageChunk>>,
        mappings: Option<Box<NativeMappings>>,
    }

    impl UnwindMaps for Maps {
        fn write_chunk(&mut self, index: u32, chunk: &RowChunk) -> io::Result<()> {
            self.chunks.insert(index, Box::new(*chunk));
            Ok(())
        }

        fn write_page_chunk(&mut self, index: u32, chunk: &PageChunk) -> io::Result<()> {
            self.pages.insert(index, Box::new(*chunk));
            Ok(())
        }

        fn write_mappings(&mut self, _pid: u32, mappings: &NativeMappings) -> io::Result<()> {
            self.mappings = Some(Box::new(*mappings));
            Ok(())
        }

        fn unmapped(&self) -> u64 {
            0
        }
    }

    impl Maps {
        fn rows(&self, m: &NativeMapping) -> Vec<UnwindRow> {
            (m.rows_start..m.rows_start + m.rows_len)
                .map(|i| {
                    self.chunks[&(i / ROWS_PER_CHUNK as u32)].rows[i as usize % ROWS_PER_CHUNK]
                })
                .collect()
        }

        fn pages(&self, m: &NativeMapping) -> Vec<u32> {
            (m.pages_start..m.pages_start + m.pages_len)
                .map(|i| {
                    self.pages[&(i / PAGES_PER_CHUNK as u32)].rows[i as usize % PAGES_PER_CHUNK]
                })
                .collect()
        }
    }

    fn read_u64(mem: &fs::File, addr: u64) -> Option<u64> {
        let mut b = [0; 8];
        mem.read_exact_at(&mut b, addr).ok()?;
        Some(u64::from_le_bytes(b))
    }

    /// The kernel's unwind (profiler-ebpf/src/native.rs) over the in-memory maps, reading this
    /// process's stack. Returns the frames and whether it reached the outermost one.
    fn unwind(maps: &Maps, regs: (u64, u64, u64)) -> (Vec<u64>, bool) {
        let (frames, complete) = unwind_regs(maps, regs);
        (frames.into_iter().map(|(pc, _)| pc).collect(), complete)
    }

    /// Frames as (pc, rbp), and whether the unwind reached the outermost one.
    type Unwound = (Vec<(u64, u64)>, bool);

    /// `unwind`, with each frame's rbp as the unwind recovered it.
    fn unwind_regs(maps: &Maps, (mut pc, mut rsp, mut rbp): (u64, u64, u64)) -> Unwound {
        let mem = fs::File::open("/proc/self/mem").unwrap();
        let list = maps.mappings.as_ref().unwrap();
        let list = &list.mappings[..list.len as usize];
        let mut frames = Vec::new();
        for i in 0..profiler_common::MAX_NATIVE_FRAMES {
            frames.push((pc, rbp));
            let lookup = if i == 0 { pc } else { pc - 1 };
            let Some(m) = list.iter().find(|m| m.start <= lookup && lookup < m.end) else {
                return (frames, false);
            };
            let (rows, pages) = (maps.rows(m), maps.pages(m));
            let Some(row) =
                cfi::lookup_paged(&rows, (m.first_page, &pages), (lookup - m.bias) as u32)
            else {
                return (frames, false);
            };
            match profiler_common::unwind_step(Some(row), pc, rsp, rbp, |a| read_u64(&mem, a)) {
                Ok((ra, cfa, caller_rbp)) => (pc, rsp, rbp) = (ra, cfa, caller_rbp),
                Err(end) => return (frames, end == profiler_common::Stat::NativeComplete),
            }
            if pc == 0 {
                return (frames, true);
            }
        }
        (frames, false)
    }

    unsafe extern "C" {
        /// glibc's backtrace(3): libgcc's unwinder over the same .eh_frame.
        fn backtrace(buffer: *mut *mut c_void, size: i32) -> i32;
    }

    /// Our unwind from this function's registers, and glibc's backtrace, both taken here
    /// while the frames above are live.
    #[inline(never)]
    fn capture(maps: &Maps) -> ((Vec<u64>, bool), Vec<u64>) {
        let regs = registers();
        let mut buf = [std::ptr::null_mut(); 256];
        // SAFETY: the buffer holds the 256 entries backtrace may write.
        let n = unsafe { backtrace(buf.as_mut_ptr(), buf.len() as i32) };
        let reference = buf[..n.max(0) as usize].iter().map(|&p| p as u64).collect();
        (unwind(maps, regs), reference)
    }

    /// This function's pc, rsp and rbp, where it is inlined.
    #[inline(always)]
    fn registers() -> (u64, u64, u64) {
        let (rip, rsp, rbp): (u64, u64, u64);
        // SAFETY: reads three registers, writes nothing else.
        unsafe {
            std::arch::asm!(
                "lea {0}, [rip]",
                "mov {1}, rsp",
                "mov {2}, rbp",
                out(reg) rip,
                out(reg) rsp,
                out(reg) rbp,
            )
        };
        (rip, rsp, rbp)
    }

    #[inline(never)]
    fn nested(maps: &Maps, depth: u32) -> ((Vec<u64>, bool), Vec<u64>) {
        let r = if depth == 0 {
            capture(maps)
        } else {
            nested(maps, depth - 1)
        };
        std::hint::black_box(r)
    }

    /// A sync writes the list of the files placed and claims the smallest new one; one while
    /// that is out claims the next, never the same; placed, the file is listed.
    #[test]
    fn sync_claims_new_files_smallest_first_and_once() {
        let _mapping = MAPPING.lock().unwrap_or_else(|e| e.into_inner());
        let (mut maps, mut tables) = (Maps::default(), NativeTables::default());
        let pid = std::process::id();
        let listed = |maps: &Maps, at: u64| {
            maps.mappings.as_ref().is_some_and(|m| {
                m.mappings[..m.len as usize]
                    .iter()
                    .any(|x| x.start <= at && at < x.end)
            })
        };

        let first = tables.sync(pid, true, &mut maps).unwrap();
        let a = first.unread.expect("a new file");
        assert!(first.waiting.len() >= 3, "{:?}", first.waiting);
        let smallest = first.waiting.iter().map(FileKey::size).min();
        assert_eq!(Some(a.file.size()), smallest);
        assert!(!listed(&maps, a.mapping.start));

        let second = tables.sync(pid, false, &mut maps).unwrap();
        let b = second.unread.expect("another new file");
        assert_ne!(a.file, b.file);
        assert!(b.file.size() >= a.file.size());

        let at = a.mapping.start;
        tables.add(a.read().unwrap(), &mut maps).unwrap();
        let b_file = b.file();
        tables.unclaim(&b_file);
        let third = tables.sync(pid, false, &mut maps).unwrap();
        assert!(listed(&maps, at));
        assert_eq!(third.unread.map(|u| u.file), Some(b_file));
    }

    /// lld's layout: the code segment starts inside the read-only segment's last page.
    #[test]
    fn bias_from_the_segment_the_mapping_starts() {
        let segs = [
            Segment {
                offset: 0,
                address: 0,
                executable: false,
            },
            Segment {
                offset: 0x64050,
                address: 0x65050,
                executable: true,
            },
            Segment {
                offset: 0x19d690,
                address: 0x19f690,
                executable: false,
            },
        ];
        let m = |start, offset| Mapping {
            start,
            end: start + 0x1000,
            offset,
            perms: "r-xp".into(),
            dev: 0,
            inode: 0,
            path: None,
        };
        assert_eq!(
            load_bias(&segs, &m(0x7000_0006_5000, 0x64000), false),
            Some(0x7000_0000_0000)
        );
        assert_eq!(
            load_bias(&segs, &m(0x7000_0000_0000, 0), false),
            Some(0x7000_0000_0000)
        );
        assert_eq!(load_bias(&segs, &m(0x7000_0000_0000, 0x5000), false), None);
    }

    /// Tables for this very process, then the kernel's algorithm over them on this thread's
    /// stack: the same return addresses as the system unwinder, up to the outermost frame.
    #[test]
    fn unwinds_this_thread_like_the_system_unwinder() {
        let _mapping = MAPPING.lock().unwrap_or_else(|e| e.into_inner());
        let mut maps = Maps::default();
        let mut tables = NativeTables::default();
        assert!(tables.refresh(std::process::id(), &mut maps).unwrap());
        assert!(tables.stats.files >= 3, "{:?}", tables.stats);
        {
            let list = maps.mappings.as_ref().unwrap();
            let list = &list.mappings[..list.len as usize];
            assert!(list.windows(2).all(|w| w[0].end <= w[1].start));
        }
        // Nothing changed: no rewrite.
        assert!(!tables.refresh(std::process::id(), &mut maps).unwrap());

        let ((ours, complete), reference) = nested(&maps, 5);
        assert!(
            complete,
            "stopped early: ours {ours:x?}\nreference {reference:x?}"
        );
        // reference[0] is the return into `capture` after backtrace(); ours[0] the asm.
        let n = reference.len().min(ours.len());
        assert!(n > 8, "ours {ours:x?}\nreference {reference:x?}");
        assert_eq!(
            ours[1..n],
            reference[1..n],
            "ours {ours:x?}\nreference {reference:x?}"
        );
    }

    /// What the eval loop, called through a trampoline copy, hands back to the test (a panic
    /// caught there: one across the C frames would abort the tests).
    struct ThroughTrampoline<'a> {
        maps: &'a Maps,
        unwound: Option<std::thread::Result<Unwound>>,
    }

    /// Stands for the eval loop a trampoline calls (`ts`, `frame`, `throwflag`): unwinds from
    /// here.
    #[inline(never)]
    extern "C" fn evaluator(ts: *mut c_void, _frame: *mut c_void, _throw: i32) -> *mut c_void {
        // SAFETY: the test passes its `ThroughTrampoline` as `ts` and waits for the call.
        let ctx = unsafe { &mut *(ts as *mut ThroughTrampoline) };
        let regs = registers();
        let maps = ctx.maps;
        let unwound =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unwind_regs(maps, regs)));
        ctx.unwound = Some(unwound);
        std::hint::black_box(ts)
    }

    /// Each form of CPython's perf trampoline, copied into anonymous executable memory as
    /// CPython copies it (from each 64 KiB arena's start, every `stride` bytes; two arenas
    /// side by side, one mapping), recognized, and run: the unwind from the function it calls
    /// goes through the copy to the outermost frame, and gives the caller back its rbp (which
    /// 3.14's form saves, and the older one leaves alone).
    #[test]
    fn unwinds_through_each_form_of_perf_trampoline() {
        let _mapping = MAPPING.lock().unwrap_or_else(|e| e.into_inner());
        // Two arenas side by side, as the kernel merges them into one mapping.
        const ARENA: usize = 2 * 16 * 4096;
        // As CPython's builds copy them: 3.12.1 (pyenv's), the same with endbr64, 3.14 without
        // endbr64, and Debian's 3.14 and 3.15 (under `-X perf`, then `-X perf_jit`).
        let forms: [(&[u8], usize); 5] = [
            (b"\x48\x83\xec\x08\xff\xd1\x48\x83\xc4\x08\xc3", 11),
            (
                b"\xf3\x0f\x1e\xfa\x48\x83\xec\x08\xff\xd1\x48\x83\xc4\x08\xc3",
                16,
            ),
            (b"\x55\x48\x89\xe5\xff\xd1\x5d\xc3", 16),
            (b"\xf3\x0f\x1e\xfa\x55\x48\x89\xe5\xff\xd1\x5d\xc3", 32),
            (b"\xf3\x0f\x1e\xfa\x55\x48\x89\xe5\xff\xd1\x5d\xc3", 96),
        ];
        for (code, stride) in forms {
            // SAFETY: a fresh private anonymous mapping, unmapped at the end of the iteration.
            let arena = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    ARENA,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(arena, libc::MAP_FAILED);
            // SAFETY: the copies are written inside the mapping, which is then made executable.
            unsafe {
                let bytes = std::slice::from_raw_parts_mut(arena as *mut u8, ARENA);
                for one in bytes.chunks_exact_mut(ARENA / 2) {
                    for copy in one.chunks_exact_mut(stride) {
                        copy[..code.len()].copy_from_slice(code);
                    }
                }
                assert_eq!(
                    libc::mprotect(arena, ARENA, libc::PROT_READ | libc::PROT_EXEC),
                    0
                );
            }
            let start = arena as u64;
            let mut maps = Maps::default();
            let mut tables = NativeTables::default();
            tables.refresh(std::process::id(), &mut maps).unwrap();
            let listed = maps.mappings.as_ref().unwrap();
            assert!(
                listed.mappings[..listed.len as usize]
                    .iter()
                    .any(|m| m.start == start),
                "{code:x?} every {stride}: the arena was not recognized"
            );

            // A copy in the second arena: 11 and 96 do not divide its size.
            let copy = start + (ARENA / 2) as u64 + 7 * stride as u64;
            let mut ctx = ThroughTrampoline {
                maps: &maps,
                unwound: None,
            };
            let ctx_ptr = &mut ctx as *mut ThroughTrampoline as u64;
            let (caller_rbp, after_call): (u64, u64);
            // SAFETY: calls the copy as CPython does (`trampoline(ts, frame, throwflag,
            // evaluator)`), with the registers a C call may change marked clobbered; r12, which
            // the call keeps, holds this frame's rbp as the copy saw it.
            unsafe {
                std::arch::asm!(
                    "mov r12, rbp",
                    "call {copy}",
                    "2:",
                    "lea r13, [rip + 2b]",
                    copy = in(reg) copy,
                    out("r13") after_call,
                    out("r12") caller_rbp,
                    inout("rdi") ctx_ptr => _,
                    inout("rsi") 0u64 => _,
                    inout("rdx") 0u64 => _,
                    inout("rcx") evaluator as *const () as u64 => _,
                    clobber_abi("C"),
                );
            }
            let unwound = ctx.unwound.take().expect("the copy called the evaluator");
            let (frames, complete) = unwound.expect("the unwind from the evaluator panicked");
            // SAFETY: the mapping made above, no longer used.
            unsafe { libc::munmap(arena, ARENA) };
            let form = format!("{code:x?} every {stride}");
            assert!(complete, "{form}: stopped early: {frames:x?}");
            let at = frames
                .iter()
                .position(|&(pc, _)| (start + 1..=start + ARENA as u64).contains(&pc))
                .unwrap_or_else(|| panic!("{form}: no frame in the copy: {frames:x?}"));
            // The return address of the copy's `call *%rcx`.
            let returns_at = code.windows(2).position(|w| w == [0xff, 0xd1]).unwrap() + 2;
            assert_eq!(
                frames[at].0,
                copy + returns_at as u64,
                "{form}: {frames:x?}"
            );
            assert_eq!(
                frames[at + 1],
                (after_call, caller_rbp),
                "{form}: not back in the caller with its rbp: {frames:x?}"
            );
        }
    }

    /// The JIT code listed for the kernel: in each anonymous executable mapping, one span from
    /// its first piece of code to its last; pieces outside them (freed, or a garbage entry)
    /// and mappings without any are left out.
    #[test]
    fn jit_code_is_clipped_to_anonymous_mappings() {
        let m = |start: u64, end: u64| Mapping {
            start,
            end,
            offset: 0,
            perms: "r-xp".into(),
            dev: 0,
            inode: 0,
            path: None,
        };
        let list = JitList {
            entries: HashMap::from([
                ((1, 1), Some((0x10000, 0x11000))),
                ((2, 2), Some((0x13000, 0x15000))),
                ((3, 3), None),
                ((4, 4), Some((0x40000, 0x41000))),
                ((5, 5), Some((0x1f000, 0x21000))),
            ]),
        };
        let (a, b, c) = (
            m(0x10000, 0x20000),
            m(0x30000, 0x38000),
            m(0x20000, 0x28000),
        );
        let spans: Vec<(u64, u64)> = list
            .code(&[&a, &b, &c])
            .iter()
            .map(|m| (m.start, m.end))
            .collect();
        assert_eq!(spans, [(0x10000, 0x15000)]);
    }

    /// An entry's code, from an in-memory ELF object's header and section headers: its
    /// executable section, in whole pages; anything else is no code.
    #[test]
    fn jit_entry_code_from_its_object_headers() {
        let mut object = vec![0u8; 64 + 3 * 64];
        object[..5].copy_from_slice(b"\x7fELF\x02");
        object[0x28..0x30].copy_from_slice(&64u64.to_le_bytes());
        object[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        object[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        // Section 1: data; section 2: code at 0x7f00_0000_1010, 0x2000 bytes.
        let section = |object: &mut Vec<u8>, i: usize, flags: u64, addr: u64, size: u64| {
            let at = 64 + i * 64;
            object[at + 8..at + 16].copy_from_slice(&flags.to_le_bytes());
            object[at + 16..at + 24].copy_from_slice(&addr.to_le_bytes());
            object[at + 32..at + 40].copy_from_slice(&size.to_le_bytes());
        };
        section(&mut object, 1, 0x2, 0x7f00_0000_0000, 0x100);
        section(&mut object, 2, 0x6, 0x7f00_0000_1010, 0x2000);
        let base = 0x5000u64;
        let mem = |bytes: &[u8]| crate::process::LocalMemory {
            base,
            bytes: bytes.to_vec(),
        };
        assert_eq!(
            object_code(&mem(&object), base),
            Some((0x7f00_0000_1000, 0x7f00_0000_4000))
        );
        let mut not_elf = object.clone();
        not_elf[1] = b'X';
        assert_eq!(object_code(&mem(&not_elf), base), None);
    }
}
