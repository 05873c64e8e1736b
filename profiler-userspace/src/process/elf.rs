//! What prof-bpf needs from an interpreter's ELF file: `_PyRuntime`'s link-time address, the
//! version in `Py_Version` (3.11+), and how the file is loaded. Files are mapped, not read, and
//! what was found is cached by file identity: a libpython is 20-30 MB, `--all` meets the same
//! one in many processes, and a launched program must be registered before its first sleep.

use std::{
    collections::HashMap,
    fs::File,
    io,
    os::unix::fs::MetadataExt,
    path::Path,
    sync::{Arc, Mutex},
};

use object::{Object, ObjectKind, ObjectSection, ObjectSegment, ObjectSymbol};

use crate::python::Version;

#[derive(Clone, Debug)]
pub struct ElfInfo {
    pub runtime: Option<u64>,
    pub py_version: Option<Version>,
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

/// A file's identity: device, inode, size and modification time.
type FileKey = (u64, u64, u64, i64);

static CACHE: Mutex<Option<HashMap<FileKey, Arc<ElfInfo>>>> = Mutex::new(None);

/// `inspect` of the file at `path`, cached by the file's identity.
pub fn inspect_file(path: &Path) -> Result<Arc<ElfInfo>, ElfError> {
    let file = File::open(path)?;
    let meta = file.metadata()?;
    let key = (meta.dev(), meta.ino(), meta.size(), meta.mtime());
    if let Some(info) = CACHE
        .lock()
        .ok()
        .and_then(|c| c.as_ref()?.get(&key).cloned())
    {
        return Ok(info);
    }
    // SAFETY: the map is read-only and dropped before returning; a file changed under it
    // yields wrong bytes at worst, which parsing treats like any malformed file.
    let data = unsafe { memmap2::Mmap::map(&file)? };
    let info = Arc::new(inspect(&data)?);
    if let Ok(mut cache) = CACHE.lock() {
        cache.get_or_insert_default().insert(key, Arc::clone(&info));
    }
    Ok(info)
}

pub fn inspect(data: &[u8]) -> Result<ElfInfo, object::Error> {
    let file = object::File::parse(data)?;
    let mut runtime = None;
    let mut py_version_addr = None;
    // .dynsym is enough for pyenv's libpython and for Debian's stripped executable; .symtab
    // (far larger) only when it is not.
    for symbols in [file.dynamic_symbols(), file.symbols()] {
        for sym in symbols {
            match sym.name() {
                Ok("_PyRuntime") if runtime.is_none() => runtime = Some(sym.address()),
                Ok("Py_Version") if py_version_addr.is_none() => {
                    py_version_addr = Some(sym.address())
                }
                _ => {}
            }
            if runtime.is_some() && py_version_addr.is_some() {
                break;
            }
        }
        if runtime.is_some() {
            break;
        }
    }
    let py_version = py_version_addr.and_then(|addr| {
        let section = file
            .sections()
            .find(|s| s.address() <= addr && addr + 4 <= s.address() + s.size())?;
        let data = section.data().ok()?;
        let at = (addr - section.address()) as usize;
        let hex = u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?);
        Some(Version::new((hex >> 24) as u8, (hex >> 16) as u8))
    });
    let first_load_vaddr = file.segments().map(|s| s.address()).min().unwrap_or(0);
    Ok(ElfInfo {
        runtime,
        py_version,
        first_load_vaddr,
        is_pie_or_shared: file.kind() == ObjectKind::Dynamic,
    })
}
