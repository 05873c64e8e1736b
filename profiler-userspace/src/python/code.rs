//! Reading code objects and the strings and bytes they point to from the target's memory.
//! Unbounded work (strings, line tables) happens here, never in the kernel; the caller caches.

use std::io;

use profiler_common::{CodeSnapshot, code_tag, snapshot_part};

use super::{Layout, ObjectHeader};
use crate::process::{Copies, ProcessMemory};

/// Longest string read, in characters: names and paths longer than this are cut.
const MAX_STRING_CHARS: u64 = 4096;
/// Largest line table read.
const MAX_LINETABLE_BYTES: u64 = 1 << 20;

/// What a frame's code object says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeInfo {
    /// `co_qualname` where the version has it, else `co_name`.
    pub name: String,
    pub filename: String,
    pub firstlineno: u32,
    pub linetable: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum CodeError {
    #[error("reading memory: {0}")]
    Io(#[from] io::Error),
    /// The address holds another code object than the one the kernel saw.
    #[error("code object was freed and its address reused")]
    Stale,
    #[error("malformed {0}")]
    Malformed(&'static str),
}

/// Reads the code object at `addr`; `tag` is what the kernel computed when it sampled it.
pub fn read_code(
    mem: &impl ProcessMemory,
    layout: &Layout,
    addr: u64,
    tag: u32,
) -> Result<CodeInfo, CodeError> {
    let header = read_live_header(mem, layout, addr, Some(tag))?;
    let info = CodeInfo {
        name: read_str(mem, layout, header.qualname.unwrap_or(header.name))?,
        filename: read_str(mem, layout, header.filename)?,
        firstlineno: header.firstlineno.max(0) as u32,
        linetable: read_bytes(mem, layout, header.linetable)?,
    };
    // Freed while we read its strings? Then they may belong to something else by now.
    if read_live_header(mem, layout, addr, None)? != header {
        return Err(CodeError::Stale);
    }
    Ok(info)
}

/// Reads a code object from the kernel's copy of it (`CodeSnapshot`) as `read_code` reads it
/// from the live process. With `cut`, a line table longer than the copy is taken as the part
/// copied (its `bytes` object's size set to what was copied): it then gives the lines of the
/// instructions that part covers, and the first line for the rest.
pub fn read_snapshot(
    snap: &CodeSnapshot,
    layout: &Layout,
    cut: bool,
) -> Result<CodeInfo, CodeError> {
    let part = |bit: u32| snap.parts & bit != 0;
    if !part(snapshot_part::CODE) {
        return Err(CodeError::Malformed("copy without its code object"));
    }
    let len = |n: u32, of: &[u8]| (n as usize).min(of.len());
    let mut copies = Copies::default();
    copies.add(snap.code, &snap.header);
    if part(snapshot_part::NAME) {
        copies.add(snap.name_addr, &snap.name[..len(snap.name_len, &snap.name)]);
    }
    if part(snapshot_part::FILENAME) {
        let filename = &snap.filename[..len(snap.filename_len, &snap.filename)];
        copies.add(snap.filename_addr, filename);
    }
    if part(snapshot_part::LINETABLE) {
        let mut table = snap.linetable[..len(snap.linetable_len, &snap.linetable)].to_vec();
        let o = &layout.objects;
        let size = o.bytes_size as usize;
        if cut
            && let Some(data) = table.len().checked_sub(o.bytes_data as usize)
            && let Some(field) = table.get_mut(size..size + 8)
        {
            field.copy_from_slice(&(data as u64).to_le_bytes());
        }
        copies.add(snap.linetable_addr, &table);
    }
    read_code(&copies, layout, snap.code, snap.tag)
}

/// The fields of a code object's header that `read_code` follows.
#[derive(Debug, PartialEq, Eq)]
struct Header {
    name: u64,
    qualname: Option<u64>,
    filename: u64,
    linetable: u64,
    firstlineno: i32,
}

/// The code object's header, if the object at `addr` is alive and is the one the kernel saw:
/// the tag matches (any live object with `tag` None), and the reference count is plausible. When pymalloc frees a block it
/// writes its free-list link (a pointer, or zero for the last block) over `ob_refcnt`.
fn read_live_header(
    mem: &impl ProcessMemory,
    layout: &Layout,
    addr: u64,
    tag: Option<u32>,
) -> Result<Header, CodeError> {
    let c = &layout.code;
    let bytes = mem.read_vec(addr, (c.linetable.max(c.firstlineno) as usize + 8).max(24))?;
    let field = |off: u16, len: usize| {
        bytes
            .get(off as usize..off as usize + len)
            .ok_or(CodeError::Malformed("layout"))
    };
    let word =
        |off: u16| field(off, 8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
    let header = Header {
        name: word(c.name)?,
        qualname: c.qualname.map(word).transpose()?,
        filename: word(c.filename)?,
        linetable: word(c.linetable)?,
        firstlineno: field(c.firstlineno, 4)
            .map(|b| i32::from_le_bytes(b.try_into().unwrap_or_default()))?,
    };
    if !alive(layout.objects.header, &bytes)
        || tag.is_some_and(|tag| code_tag(header.name, header.filename, header.firstlineno) != tag)
    {
        return Err(CodeError::Stale);
    }
    Ok(header)
}

/// Whether the object whose header is `head` (its first 24 bytes at least) is alive.
///
/// With the GIL: live objects have a positive count far below any heap address (3.12's immortal
/// objects use 2^32 - 1, 3.14's 3 << 30). When pymalloc frees a block it writes its free-list link
/// (a pointer, or zero for the last block) over `ob_refcnt`. 3.14 keeps `ob_flags` in the word's
/// top 16 bits, which user-space pointers never reach: they are dropped.
///
/// Free-threaded: `ob_tid` at 0 is the owning thread's id, or mimalloc's free-list link once
/// freed; a live object holds a reference, counted in `ob_ref_local` (immortal: all ones) or
/// `ob_ref_shared` (the count shifted left by 2 over two flag bits).
fn alive(header: ObjectHeader, head: &[u8]) -> bool {
    let word = |at: usize| {
        head.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    match header {
        ObjectHeader::Gil => {
            word(0).is_some_and(|refcnt| (1..1 << 40).contains(&(refcnt & 0xffff_ffff_ffff)))
        }
        ObjectHeader::FreeThreaded => {
            let local = head
                .get(12..16)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_le_bytes);
            let shared = word(16).map(|w| w as i64);
            matches!((local, shared), (Some(l), Some(s)) if l != 0 || s >> 2 > 0)
        }
    }
}

/// Reads a `str` object: compact ASCII, compact latin-1/UCS-2/UCS-4, or a legacy string.
pub fn read_str(mem: &impl ProcessMemory, layout: &Layout, addr: u64) -> Result<String, CodeError> {
    read_str_prefix(mem, layout, addr, MAX_STRING_CHARS).map(|(text, _)| text)
}

/// The first `max_chars` characters of a `str` object, and its length in characters.
pub fn read_str_prefix(
    mem: &impl ProcessMemory,
    layout: &Layout,
    addr: u64,
    max_chars: u64,
) -> Result<(String, u64), CodeError> {
    let o = &layout.objects;
    if !alive(o.header, &mem.read_vec(addr, 24)?) {
        return Err(CodeError::Malformed("string (freed)"));
    }
    let length = mem.read_u64(addr + o.unicode_length as u64)?;
    let state = mem.read_u32(addr + o.unicode_state as u64)?;
    let kind = (state >> o.unicode_kind_bit) & 7;
    let compact = state & (1 << (o.unicode_kind_bit + 3)) != 0;
    let ascii = state & (1 << (o.unicode_kind_bit + 4)) != 0;
    let chars = length.min(max_chars);
    let data = match (compact, ascii) {
        (true, true) => addr + o.unicode_ascii_data as u64,
        (true, false) => addr + o.unicode_compact_data as u64,
        (false, _) => mem.read_u64(addr + o.unicode_compact_data as u64)?,
    };
    let width = match kind {
        1 | 2 | 4 => kind as u64,
        _ => return Err(CodeError::Malformed("string kind")),
    };
    let raw = mem.read_vec(data, (chars * width) as usize)?;
    let decoded = match width {
        1 => raw.iter().map(|&b| b as char).collect(),
        2 => char::decode_utf16(
            raw.chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]])),
        )
        .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect(),
        _ => raw
            .chunks_exact(4)
            .map(|c| {
                char::from_u32(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .unwrap_or(char::REPLACEMENT_CHARACTER)
            })
            .collect(),
    };
    Ok((decoded, length))
}

/// Reads a `bytes` object's contents.
pub fn read_bytes(
    mem: &impl ProcessMemory,
    layout: &Layout,
    addr: u64,
) -> Result<Vec<u8>, CodeError> {
    let o = &layout.objects;
    let size = mem.read_u64(addr + o.bytes_size as u64)?;
    if size > MAX_LINETABLE_BYTES {
        return Err(CodeError::Malformed("line table size"));
    }
    Ok(mem.read_vec(addr + o.bytes_data as u64, size as usize)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        process::LocalMemory,
        python::{ObjectLayout, Version, layout_for},
    };

    const BASE: u64 = 0x1000;

    fn put(mem: &mut [u8], at: u64, bytes: &[u8]) {
        let at = (at - BASE) as usize;
        mem[at..at + bytes.len()].copy_from_slice(bytes);
    }

    /// Writes a compact string object at `at` the way CPython 3.12 lays it out.
    fn put_str(mem: &mut [u8], layout: &Layout, at: u64, s: &str) {
        let o = &layout.objects;
        match o.header {
            ObjectHeader::Gil => put(mem, at, &1u64.to_le_bytes()), // ob_refcnt: alive
            ObjectHeader::FreeThreaded => put(mem, at + 12, &1u32.to_le_bytes()), // ob_ref_local
        }
        let chars: Vec<u32> = s.chars().map(|c| c as u32).collect();
        let max = chars.iter().copied().max().unwrap_or(0);
        let (kind, ascii) = match max {
            0..=0x7f => (1, true),
            0x80..=0xff => (1, false),
            0x100..=0xffff => (2, false),
            _ => (4, false),
        };
        put(
            mem,
            at + o.unicode_length as u64,
            &(chars.len() as u64).to_le_bytes(),
        );
        let k = o.unicode_kind_bit;
        let state: u32 = kind << k | 1 << (k + 3) | (ascii as u32) << (k + 4);
        put(mem, at + o.unicode_state as u64, &state.to_le_bytes());
        let data = at
            + if ascii {
                o.unicode_ascii_data
            } else {
                o.unicode_compact_data
            } as u64;
        let bytes: Vec<u8> = match kind {
            1 => chars.iter().map(|&c| c as u8).collect(),
            2 => chars
                .iter()
                .flat_map(|&c| (c as u16).to_le_bytes())
                .collect(),
            _ => chars.iter().flat_map(|&c| c.to_le_bytes()).collect(),
        };
        put(mem, data, &bytes);
    }

    #[test]
    fn reads_every_compact_string_kind() {
        let layout = layout_for(Version::new(3, 12)).unwrap();
        let mut bytes = vec![0; 0x1000];
        let cases = ["hot_loop", "café", "größe_Ω", "emoji_🐍"];
        for (i, s) in cases.iter().enumerate() {
            put_str(&mut bytes, &layout, BASE + 0x100 * i as u64, s);
        }
        let mem = LocalMemory { base: BASE, bytes };
        for (i, s) in cases.iter().enumerate() {
            assert_eq!(
                read_str(&mem, &layout, BASE + 0x100 * i as u64).unwrap(),
                *s
            );
        }
    }

    /// 3.14t's strings: the free-threaded header, and `kind` after a whole-byte `interned`.
    #[test]
    fn reads_free_threaded_strings() {
        let mut layout = layout_for(Version::new(3, 14)).unwrap();
        layout.objects = ObjectLayout {
            header: ObjectHeader::FreeThreaded,
            unicode_length: 32,
            unicode_state: 48,
            unicode_kind_bit: 8,
            unicode_ascii_data: 56,
            unicode_compact_data: 72,
            ..layout.objects
        };
        let mut bytes = vec![0; 0x1000];
        let cases = ["worker", "naïve", "größe_Ω", "emoji_🐍"];
        for (i, s) in cases.iter().enumerate() {
            put_str(&mut bytes, &layout, BASE + 0x100 * i as u64, s);
            // ob_tid: the owning thread, a pointer-like value.
            put(
                &mut bytes,
                BASE + 0x100 * i as u64,
                &0x7f12_3456_7000u64.to_le_bytes(),
            );
        }
        let mem = LocalMemory { base: BASE, bytes };
        for (i, s) in cases.iter().enumerate() {
            assert_eq!(
                read_str(&mem, &layout, BASE + 0x100 * i as u64).unwrap(),
                *s
            );
        }
    }

    /// Whether an object's header says it is alive, in each build.
    #[test]
    fn liveness_by_header() {
        let gil = |word: u64| {
            alive(
                ObjectHeader::Gil,
                &[word.to_le_bytes(), [0; 8], [0; 8]].concat(),
            )
        };
        assert!(gil(1));
        assert!(gil(u32::MAX as u64), "3.12 immortal");
        assert!(
            gil(1 << 48 | 3 << 30),
            "3.14 immortal: ob_flags in the top 16 bits"
        );
        assert!(!gil(0), "pymalloc's last free block");
        assert!(!gil(0x7f12_3456_7890), "pymalloc's free-list link");
        let ft = |local: u32, shared: i64| {
            let mut b = vec![0u8; 24];
            b[..8].copy_from_slice(&0x7f12_3456_7000u64.to_le_bytes());
            b[12..16].copy_from_slice(&local.to_le_bytes());
            b[16..24].copy_from_slice(&shared.to_le_bytes());
            alive(ObjectHeader::FreeThreaded, &b)
        };
        assert!(ft(1, 0));
        assert!(ft(u32::MAX, 0), "immortal");
        assert!(ft(0, 2 << 2), "shared references only");
        assert!(!ft(0, 0), "freed");
        assert!(!ft(0, 1), "a flag, no reference");
    }

    /// Writes a live code object's header at `code`: the addresses of its name, qualified name,
    /// file name and line table, and its first line.
    fn put_code(mem: &mut [u8], layout: &Layout, code: u64, at: [u64; 4], firstlineno: i32) {
        let c = &layout.code;
        put(mem, code, &3u64.to_le_bytes()); // ob_refcnt: alive
        let [name, qualname, file, table] = at;
        put(mem, code + c.name as u64, &name.to_le_bytes());
        put(
            mem,
            code + c.qualname.unwrap() as u64,
            &qualname.to_le_bytes(),
        );
        put(mem, code + c.filename as u64, &file.to_le_bytes());
        put(mem, code + c.linetable as u64, &table.to_le_bytes());
        put(mem, code + c.firstlineno as u64, &firstlineno.to_le_bytes());
    }

    #[test]
    fn code_object_with_a_stale_tag_is_refused() {
        let layout = layout_for(Version::new(3, 11)).unwrap();
        let mut bytes = vec![0; 0x1000];
        let (code, name, qualname, file, table) =
            (BASE, BASE + 0x200, BASE + 0x300, BASE + 0x400, BASE + 0x500);
        put_code(&mut bytes, &layout, code, [name, qualname, file, table], 7);
        put_str(&mut bytes, &layout, name, "run");
        put_str(&mut bytes, &layout, qualname, "Worker.run");
        put_str(&mut bytes, &layout, file, "/tmp/w.py");
        put(&mut bytes, table + 16, &2u64.to_le_bytes());
        put(&mut bytes, table + 32, &[0x80, 0]);
        let mem = LocalMemory { base: BASE, bytes };

        let tag = code_tag(name, file, 7);
        let info = read_code(&mem, &layout, code, tag).unwrap();
        assert_eq!(
            info,
            CodeInfo {
                name: "Worker.run".into(),
                filename: "/tmp/w.py".into(),
                firstlineno: 7,
                linetable: vec![0x80, 0]
            }
        );
        // A tag the kernel read that the object does not match: another object ran there.
        assert!(matches!(
            read_code(&mem, &layout, code, tag ^ 2),
            Err(CodeError::Stale)
        ));
    }

    /// The kernel's copy of a code object reads as the live object did: whole, or with a line
    /// table cut short where it was longer than the copy, or not at all without its file name.
    #[test]
    fn a_code_object_reads_from_the_kernels_copy() {
        let layout = layout_for(Version::new(3, 12)).unwrap();
        let o = layout.objects;
        let mut bytes = vec![0; 0x1000];
        let (code, name, file, table) = (BASE, BASE + 0x200, BASE + 0x300, BASE + 0x800);
        put_code(&mut bytes, &layout, code, [name, name, file, table], 1);
        put_str(&mut bytes, &layout, name, "<module>");
        put_str(&mut bytes, &layout, file, "/tmp/short_lived_7.py");
        put(&mut bytes, table, &1u64.to_le_bytes());
        let entries: Vec<u8> = (0..40u8).collect();
        put(
            &mut bytes,
            table + o.bytes_size as u64,
            &(entries.len() as u64).to_le_bytes(),
        );
        put(&mut bytes, table + o.bytes_data as u64, &entries);
        let mem = LocalMemory { base: BASE, bytes };
        let tag = code_tag(name, file, 1);
        let live = read_code(&mem, &layout, code, tag).unwrap();

        let at = |addr: u64, n: usize| mem.read_vec(addr, n).unwrap();
        let mut snap = CodeSnapshot {
            pid: 1,
            tag,
            code,
            name_addr: name,
            filename_addr: file,
            linetable_addr: table,
            first_local: 0,
            first_local_type: 0,
            parts: snapshot_part::CODE
                | snapshot_part::NAME
                | snapshot_part::FILENAME
                | snapshot_part::LINETABLE,
            name_len: 128,
            filename_len: 384,
            linetable_len: 2048,
            header: at(code, 256).try_into().unwrap(),
            name: at(name, 128).try_into().unwrap(),
            filename: at(file, 384).try_into().unwrap(),
            linetable: [0; profiler_common::SNAPSHOT_LINETABLE],
        };
        snap.linetable[..1024].copy_from_slice(&at(table, 1024));
        assert_eq!(read_snapshot(&snap, &layout, false).unwrap(), live);

        // Only the first 10 entries were copied: the whole table cannot be read, the cut one
        // can, and holds those 10.
        snap.linetable_len = o.bytes_data as u32 + 10;
        assert!(read_snapshot(&snap, &layout, false).is_err());
        let cut = read_snapshot(&snap, &layout, true).unwrap();
        assert_eq!(cut.linetable, entries[..10]);
        assert_eq!(
            (cut.name, cut.filename),
            (live.name.clone(), live.filename.clone())
        );

        // The file name's string could not be copied: left to the live read.
        snap.parts &= !snapshot_part::FILENAME;
        assert!(read_snapshot(&snap, &layout, true).is_err());
        // Nor can a copy of a string that ends before its characters do.
        snap.parts |= snapshot_part::FILENAME;
        snap.filename_len = o.unicode_ascii_data as u32 + 4;
        assert!(read_snapshot(&snap, &layout, true).is_err());
    }
}
