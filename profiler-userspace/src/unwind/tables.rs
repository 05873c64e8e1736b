//! Keeps the kernel's unwind maps in step with a target's executable mappings: builds each
//! mapped file's table once (`cfi`), places it in the shared row array, and writes the process's
//! sorted mapping list. Called again on every drain, it picks up libraries mapped later (an
//! `import numpy` mid-run). Also remembers every mapping it saw, so native addresses can be
//! named after the process has exited. Files are read as the process maps them
//! (`process::open_mapped`): a process in a container unwinds through its own libraries (its
//! libc, not the host's), and nothing is opened by a path the container controls.

use std::{
    collections::HashMap,
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
use crate::process::Mapping;

/// Where the kernel's maps are written: the `bpf` module implements it.
pub trait UnwindMaps {
    fn write_chunk(&mut self, index: u32, chunk: &RowChunk) -> io::Result<()>;
    fn write_page_chunk(&mut self, index: u32, chunk: &PageChunk) -> io::Result<()>;
    fn write_mappings(&mut self, pid: u32, mappings: &NativeMappings) -> io::Result<()>;
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
    next_chunk: u32,
    next_page_chunk: u32,
    /// The last `NativeMappings::generation` written (for any pid).
    generation: u32,
    /// Per pid: the executable mappings last written, and every one ever seen.
    current: HashMap<u32, Vec<(u64, u64, String)>>,
    seen: HashMap<u32, Vec<KnownMapping>>,
    pub stats: LoadStats,
}

impl NativeTables {
    /// Re-reads `pid`'s mappings and, if its executable mappings changed, loads the tables of
    /// new files and rewrites its mapping list. Returns whether anything changed.
    pub fn refresh(&mut self, pid: u32, maps: &mut impl UnwindMaps) -> io::Result<bool> {
        let text = fs::read_to_string(crate::process::proc_dir(pid).join("maps"))?;
        let all = crate::process::parse_maps(&text);
        let mut exec: Vec<(Mapping, String)> = all
            .into_iter()
            .filter(|m| m.perms.contains('x'))
            .filter_map(|m| {
                let name = m.path.as_ref()?.display().to_string();
                Some((m, name))
            })
            .collect();
        if let Some(vdso) = text.lines().find(|l| l.ends_with("[vdso]"))
            && let Some(m) = crate::process::parse_maps(vdso).pop()
        {
            exec.push((m, "[vdso]".to_string()));
        }
        let key: Vec<(u64, u64, String)> = exec
            .iter()
            .map(|(m, n)| (m.start, m.end, n.clone()))
            .collect();
        if self.current.get(&pid) == Some(&key) {
            return Ok(false);
        }

        // Mappings of files already placed first, then each new file's as soon as its table is
        // in: samples in the libraries loaded so far unwind while a big one is still parsed.
        let mut ready = Vec::new();
        let mut pending = Vec::new();
        for (m, name) in &exec {
            match identify(pid, m, name) {
                Ok((file, opened)) if self.files.contains_key(&file) => {
                    ready.push((m, name, file, opened))
                }
                Ok((file, opened)) => pending.push((m, name, file, opened)),
                Err(e) => self.note_failure(name, &e.to_string()),
            }
        }
        let mut out = Vec::new();
        for (m, name, file, opened) in ready {
            self.add_mapping(pid, (m, name), file, opened, maps, &mut out)?;
        }
        self.write_mappings(pid, &mut out, maps)?;
        for (m, name, file, opened) in pending {
            if self.add_mapping(pid, (m, name), file, opened, maps, &mut out)? {
                self.write_mappings(pid, &mut out, maps)?;
            }
        }
        self.current.insert(pid, key);
        Ok(true)
    }

    /// Places mapping `m` named `name` (its file's identity `file`, the file opened as mapped
    /// unless it is the vDSO), building the file's table if new, and adds it to `out`. Returns
    /// whether it was added.
    fn add_mapping(
        &mut self,
        pid: u32,
        (m, name): (&Mapping, &str),
        file: FileKey,
        opened: Option<fs::File>,
        maps: &mut impl UnwindMaps,
        out: &mut Vec<NativeMapping>,
    ) -> io::Result<bool> {
        if !self.files.contains_key(&file) {
            let data = match &opened {
                None => read_memory(pid, m.start, m.end - m.start)?,
                Some(f) => {
                    let mut data = Vec::new();
                    if let Err(e) = (&*f).read_to_end(&mut data) {
                        self.note_failure(name, &e.to_string());
                        return Ok(false);
                    }
                    data
                }
            };
            let segments = segments(&data);
            let placed = self.place(&data, name, maps)?;
            let (path, open) = match opened {
                None => (None, None),
                Some(f) => symbols_path(pid, m, f, &data),
            };
            let image = path.is_none().then(|| Arc::from(data));
            self.files.insert(
                file.clone(),
                FileInfo {
                    placed,
                    segments,
                    image,
                    path,
                    _open: open,
                },
            );
        }
        let info = &self.files[&file];
        let placed = info.placed;
        let image = info.image.clone();
        let path = info.path.clone();
        let Some(bias) = load_bias(&info.segments, m, path.is_none()) else {
            self.note_failure(name, "no loadable segment covers the mapping");
            return Ok(false);
        };
        let known = KnownMapping {
            start: m.start,
            end: m.end,
            bias,
            name: name.to_string(),
            path,
            image,
        };
        let seen = self.seen.entry(pid).or_default();
        if !seen.contains(&known) {
            seen.push(known);
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
        Ok(true)
    }

    fn write_mappings(
        &mut self,
        pid: u32,
        out: &mut [NativeMapping],
        maps: &mut impl UnwindMaps,
    ) -> io::Result<()> {
        out.sort_by_key(|m| m.start);
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

    /// Builds the file's table and writes it into the kernel's array.
    fn place(
        &mut self,
        data: &[u8],
        name: &str,
        maps: &mut impl UnwindMaps,
    ) -> io::Result<Option<Placed>> {
        match cfi::table_for_elf(data) {
            Ok(table) if !table.rows.is_empty() => self.write(&table.rows, name, maps),
            Ok(_) => {
                self.note_failure(name, "no call frame information");
                Ok(None)
            }
            Err(e) => {
                self.note_failure(name, &e.to_string());
                Ok(None)
            }
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

/// A loadable segment: file offset, address, and whether it is executable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    offset: u64,
    address: u64,
    executable: bool,
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
enum FileKey {
    File(u64, u64, u64, i64),
    Vdso(u64),
}

/// The identity of mapping `m`'s file and the file opened as mapped (None for the vDSO, which
/// has no file and is known by its size).
fn identify(pid: u32, m: &Mapping, name: &str) -> io::Result<(FileKey, Option<fs::File>)> {
    use std::os::unix::fs::MetadataExt as _;
    if name == "[vdso]" {
        return Ok((FileKey::Vdso(m.end - m.start), None));
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

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, ffi::c_void, os::unix::fs::FileExt as _};

    use profiler_common::row_kind;

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
    fn unwind(maps: &Maps, (mut pc, mut rsp, mut rbp): (u64, u64, u64)) -> (Vec<u64>, bool) {
        let mem = fs::File::open("/proc/self/mem").unwrap();
        let list = maps.mappings.as_ref().unwrap();
        let list = &list.mappings[..list.len as usize];
        let mut frames = Vec::new();
        for i in 0..profiler_common::MAX_NATIVE_FRAMES {
            frames.push(pc);
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
            let offset = row.cfa_offset as u64 * 8;
            let cfa = match row.kind {
                row_kind::CFA_RSP => rsp + offset,
                row_kind::CFA_RBP => rbp + offset,
                row_kind::PLT => rsp + offset + ((pc & 15 >= 11) as u64) * 8,
                row_kind::END => return (frames, true),
                _ => return (frames, false),
            };
            let Some(ra) = read_u64(&mem, cfa - 8) else {
                return (frames, false);
            };
            if row.rbp_offset != 0 {
                rbp = read_u64(&mem, cfa.wrapping_add((row.rbp_offset as i64 * 8) as u64)).unwrap();
            }
            (pc, rsp) = (ra, cfa);
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
        let mut buf = [std::ptr::null_mut(); 256];
        // SAFETY: the buffer holds the 256 entries backtrace may write.
        let n = unsafe { backtrace(buf.as_mut_ptr(), buf.len() as i32) };
        let reference = buf[..n.max(0) as usize].iter().map(|&p| p as u64).collect();
        (unwind(maps, (rip, rsp, rbp)), reference)
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
}
