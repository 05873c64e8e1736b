//! What prof-bpf needs from an interpreter's ELF file: `_PyRuntime`'s link-time address, the
//! version in `Py_Version` (3.11+), and how the file is loaded.

use object::{Object, ObjectKind, ObjectSection, ObjectSegment, ObjectSymbol};

use crate::python::Version;

pub struct ElfInfo {
    pub runtime: Option<u64>,
    pub py_version: Option<Version>,
    pub first_load_vaddr: u64,
    /// A shared object or PIE: mapped at a bias.
    pub is_pie_or_shared: bool,
}

pub fn inspect(data: &[u8]) -> Result<ElfInfo, object::Error> {
    let file = object::File::parse(data)?;
    let mut runtime = None;
    let mut py_version_addr = None;
    // .dynsym is enough for pyenv's libpython and for Debian's stripped executable.
    for sym in file.dynamic_symbols().chain(file.symbols()) {
        match sym.name() {
            Ok("_PyRuntime") if runtime.is_none() => runtime = Some(sym.address()),
            Ok("Py_Version") if py_version_addr.is_none() => py_version_addr = Some(sym.address()),
            _ => {}
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
