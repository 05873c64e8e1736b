//! The BPF object as the loader gets it: the built object, with the stack and count maps made
//! non-preallocated where the kernel lets a perf_event program use such maps (6.1, whose
//! `bpf_mem_alloc` is safe in the sample's interrupt). A preallocated hash map is allocated
//! whole when it is created: the stack maps are about 30 MiB and the two per-CPU count maps
//! 65,536 entries each, and creating them was about 120 ms of the start-up of every command
//! here. A map without preallocation takes memory as stacks and counts are stored, so a short
//! command pays nothing for the room it does not use. The loader has no setting for a map's
//! flags, so they are set in the object's map definitions.

use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

/// `BPF_F_NO_PREALLOC` (include/uapi/linux/bpf.h).
const BPF_F_NO_PREALLOC: u32 = 1;

/// Where `map_flags` lies in a map's definition in the `maps` section (aya-ebpf's `#[map]`
/// writes a `bpf_map_def`: type, key size, value size, maximum entries, flags, ...).
const MAP_DEF_FLAGS: usize = 16;

/// An object's bytes, 8-byte aligned as the ELF parser wants them.
pub struct Aligned {
    words: Vec<u64>,
    len: usize,
}

impl Aligned {
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `words` holds at least `len` initialized bytes; u8 has no alignment needs.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, through a unique borrow.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast(), self.len) }
    }
}

/// Why the object's map definitions could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("parsing the BPF object: {0}")]
    Parse(#[from] object::Error),
    #[error("the BPF object has no definition of map {0} in its maps section")]
    NoMap(&'static str),
}

/// A copy of `object` in which the hash maps `names` are not preallocated.
pub fn without_prealloc(object: &[u8], names: &[&'static str]) -> Result<Aligned, ObjectError> {
    let mut offsets = Vec::with_capacity(names.len());
    {
        let file = object::File::parse(object)?;
        let maps = file.section_by_name("maps");
        for &name in names {
            let at = maps.as_ref().and_then(|maps| {
                let (start, size) = maps.file_range()?;
                let symbol = file
                    .symbols()
                    .find(|s| s.name() == Ok(name) && s.section_index() == Some(maps.index()))?;
                let offset = symbol.address().checked_sub(maps.address())?;
                (offset + MAP_DEF_FLAGS as u64 + 4 <= size).then_some((start + offset) as usize)
            });
            offsets.push(at.ok_or(ObjectError::NoMap(name))?);
        }
    }
    let mut out = Aligned {
        words: vec![0; object.len().div_ceil(8)],
        len: object.len(),
    };
    out.bytes_mut().copy_from_slice(object);
    let bytes = out.bytes_mut();
    for at in offsets {
        let field = &mut bytes[at + MAP_DEF_FLAGS..at + MAP_DEF_FLAGS + 4];
        let flags = u32::from_le_bytes(field.try_into().unwrap_or_default()) | BPF_F_NO_PREALLOC;
        field.copy_from_slice(&flags.to_le_bytes());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The built object's stack and count maps get the flag; nothing else changes.
    #[test]
    fn the_stack_maps_lose_their_preallocation_and_nothing_else_changes() {
        let names = super::super::UNPREALLOCATED;
        let patched = without_prealloc(super::super::OBJECT, &names).unwrap();
        let (before, after) = (super::super::OBJECT, patched.bytes());
        assert_eq!(before.len(), after.len());
        let changed: Vec<usize> = (0..before.len())
            .filter(|&i| before[i] != after[i])
            .collect();
        assert_eq!(
            changed.len(),
            names.len(),
            "one flag byte per map: {changed:?}"
        );
        let file = object::File::parse(after).unwrap();
        let maps_section = file.section_by_name("maps").unwrap();
        let (start, _) = maps_section.file_range().unwrap();
        for name in names {
            let symbol = file
                .symbols()
                .find(|s| s.name() == Ok(name))
                .unwrap_or_else(|| panic!("{name}"));
            let at = (start + symbol.address() - maps_section.address()) as usize;
            let flags = u32::from_le_bytes(after[at + 16..at + 20].try_into().unwrap());
            assert_eq!(flags & BPF_F_NO_PREALLOC, BPF_F_NO_PREALLOC, "{name}");
        }
        assert!(matches!(
            without_prealloc(super::super::OBJECT, &["NO_SUCH_MAP"]),
            Err(ObjectError::NoMap("NO_SUCH_MAP"))
        ));
    }
}
