//! What prof-bpf reads of an ELF file a process maps: the addresses of named symbols (with the
//! first word of their contents) and named sections, and how the file is loaded. Files are mapped, not read, and
//! what was found is cached by file identity: a libpython is 20-30 MB, `--all` meets the same one
//! in many processes, and a launched program must be registered before its first sleep.

use std::{
    collections::HashMap,
    fs::File,
    io,
    os::unix::fs::MetadataExt,
    sync::{Arc, Mutex},
};

use object::{Object, ObjectKind, ObjectSection, ObjectSegment, ObjectSymbol};

/// A symbol found: its link-time address, and the first 4 bytes of its contents where the file
/// holds them (little-endian), for a symbol that is a version number or a flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Symbol {
    pub address: u64,
    pub size: u64,
    pub word: Option<u32>,
}

/// A section found by name: its link-time address and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Section {
    pub address: u64,
    pub size: u64,
}

#[derive(Clone, Debug)]
pub struct ElfInfo {
    /// The symbols asked for, in the order asked, where the file defines them.
    pub symbols: Vec<Option<Symbol>>,
    /// The sections asked for, in the order asked, where the file has them (a stripped file
    /// keeps its section headers).
    pub sections: Vec<Option<Section>>,
    pub first_load_vaddr: u64,
    /// A shared object or PIE: mapped at a bias.
    pub is_pie_or_shared: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Parse(#[from] object::Error),
}

/// A file's identity (device, inode, size and modification time) and the symbols and sections
/// asked for.
type FileKey = (
    u64,
    u64,
    u64,
    i64,
    &'static [&'static str],
    &'static [&'static str],
);

static CACHE: Mutex<Option<HashMap<FileKey, Arc<ElfInfo>>>> = Mutex::new(None);

/// `inspect` of an open file (see `process::open_mapped`), cached by the file's identity.
pub fn inspect_file(
    file: &File,
    names: &'static [&'static str],
    sections: &'static [&'static str],
) -> Result<Arc<ElfInfo>, ElfError> {
    let meta = file.metadata()?;
    let key = (
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        names,
        sections,
    );
    if let Some(info) = CACHE
        .lock()
        .ok()
        .and_then(|c| c.as_ref()?.get(&key).cloned())
    {
        return Ok(info);
    }
    // SAFETY: the map is read-only and dropped before returning; a file changed under it
    // yields wrong bytes at worst, which parsing treats like any malformed file.
    let data = unsafe { memmap2::Mmap::map(file)? };
    let info = Arc::new(inspect(&data, names, sections)?);
    if let Ok(mut cache) = CACHE.lock() {
        cache.get_or_insert_default().insert(key, Arc::clone(&info));
    }
    Ok(info)
}

/// The GNU build id of an ELF image, as the hex string debug file names use.
pub fn build_id(data: &[u8]) -> Option<String> {
    let file = object::File::parse(data).ok()?;
    let id = file.build_id().ok()??;
    Some(id.iter().map(|b| format!("{b:02x}")).collect())
}

/// The symbols `names` of an ELF image (first from `.dynsym`, then `.symtab`), the sections
/// `sections`, and its load layout.
pub fn inspect(data: &[u8], names: &[&str], sections: &[&str]) -> Result<ElfInfo, object::Error> {
    let file = object::File::parse(data)?;
    let mut addresses: Vec<Option<(u64, u64)>> = vec![None; names.len()];
    // .dynsym is enough for a shared library and for most stripped executables; .symtab (far
    // larger) only when it is not.
    for symbols in [file.dynamic_symbols(), file.symbols()] {
        for sym in symbols {
            let Ok(name) = sym.name() else { continue };
            if let Some(i) = names.iter().position(|&n| n == name)
                && addresses[i].is_none()
            {
                addresses[i] = Some((sym.address(), sym.size()));
            }
            if addresses.iter().all(Option::is_some) {
                break;
            }
        }
        if addresses.first().is_some_and(Option::is_some) {
            break;
        }
    }
    let word_at = |addr: u64| -> Option<u32> {
        let section = file
            .sections()
            .find(|s| s.address() <= addr && addr + 4 <= s.address() + s.size())?;
        let data = section.data().ok()?;
        let at = (addr - section.address()) as usize;
        Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
    };
    let symbols = addresses
        .into_iter()
        .map(|a| {
            a.map(|(address, size)| Symbol {
                address,
                size,
                word: word_at(address),
            })
        })
        .collect();
    let sections = sections
        .iter()
        .map(|&name| {
            file.section_by_name(name).map(|s| Section {
                address: s.address(),
                size: s.size(),
            })
        })
        .collect();
    let first_load_vaddr = file.segments().map(|s| s.address()).min().unwrap_or(0);
    Ok(ElfInfo {
        symbols,
        sections,
        first_load_vaddr,
        is_pie_or_shared: file.kind() == ObjectKind::Dynamic,
    })
}
