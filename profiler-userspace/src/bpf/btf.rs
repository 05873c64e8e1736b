//! The kernel's own type information (BTF, /sys/kernel/btf/vmlinux): the byte offsets of the
//! kernel struct fields the BPF programs read, found by name at load time so one build runs on
//! every kernel. Pure parsing over bytes; `Sampler::start` hands the offsets to the kernel side.

use std::{fs, io, path::Path};

/// Where the running kernel describes its types.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
/// Bytes of one type's fixed part: name offset, info, size or type.
const TYPE_HEADER: usize = 12;

// Type kinds (include/uapi/linux/btf.h).
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "reading {VMLINUX}: {0} (prof-bpf needs a kernel built with BTF, CONFIG_DEBUG_INFO_BTF)"
    )]
    Read(#[source] io::Error),
    #[error("{VMLINUX} is not BTF data: {0}")]
    Malformed(&'static str),
    #[error("the kernel's BTF has no field {0} (a kernel prof-bpf does not know)")]
    NoField(String),
}

/// One type as BTF encodes it.
#[derive(Clone, Copy, Debug)]
struct Type {
    name_off: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    /// Size of a struct or union; the referenced type of a typedef or qualifier.
    size_or_type: u32,
    /// Where its trailing data (a struct's members) starts in the type section.
    data: usize,
}

/// The types and strings of one BTF blob.
pub struct Btf {
    types: Vec<Type>,
    type_section: Vec<u8>,
    strings: Vec<u8>,
}

impl Btf {
    /// The running kernel's BTF.
    pub fn kernel() -> Result<Self, BtfError> {
        Self::parse(&fs::read(Path::new(VMLINUX)).map_err(BtfError::Read)?)
    }

    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let u32_at = |at: usize| -> Result<u32, BtfError> {
            data.get(at..at + 4)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
                .ok_or(BtfError::Malformed("truncated header"))
        };
        if data.get(0..2) != Some(&MAGIC.to_le_bytes()) {
            return Err(BtfError::Malformed("no BTF magic (or not little-endian)"));
        }
        let header_len = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
        let section = |off: usize, len: usize| {
            let start = header_len.checked_add(off)?;
            data.get(start..start.checked_add(len)?)
        };
        let type_section = section(type_off, type_len)
            .ok_or(BtfError::Malformed("type section out of bounds"))?
            .to_vec();
        let strings = section(str_off, str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?
            .to_vec();
        let types = parse_types(&type_section)?;
        Ok(Self {
            types,
            type_section,
            strings,
        })
    }

    /// The byte offset of field `field` in `struct name`, looking through anonymous struct and
    /// union members as C does.
    pub fn field_offset(&self, name: &str, field: &str) -> Result<u32, BtfError> {
        let missing = || BtfError::NoField(format!("{name}.{field}"));
        let id = self
            .types
            .iter()
            .position(|t| t.kind == KIND_STRUCT && self.name(t.name_off) == Some(name))
            .ok_or_else(missing)?;
        self.find_member(id, field, 0).ok_or_else(missing)
    }

    /// Depth-limited search of struct or union `index` (0-based) for `field`; `base` is the
    /// byte offset of that struct in the outer one.
    fn find_member(&self, index: usize, field: &str, depth: u32) -> Option<u32> {
        let t = self.types.get(index)?;
        if !matches!(t.kind, KIND_STRUCT | KIND_UNION) || depth > 8 {
            return None;
        }
        for m in 0..t.vlen {
            let at = t.data + m * 12;
            let word = |i: usize| {
                let b = &self.type_section[at + i * 4..at + i * 4 + 4];
                u32::from_le_bytes(b.try_into().expect("4 bytes"))
            };
            let (name_off, member_type, offset) = (word(0), word(1), word(2));
            // With kind_flag set the offset word holds the bitfield size in its top 8 bits.
            let bits = if t.kind_flag {
                offset & 0xff_ffff
            } else {
                offset
            };
            if bits % 8 != 0 {
                continue; // A bitfield: never what a BPF program reads by address.
            }
            match self.name(name_off) {
                Some(n) if n == field => return Some(bits / 8),
                Some("") | None => {
                    let inner = self.resolve(member_type)?;
                    if let Some(o) = self.find_member(inner, field, depth + 1) {
                        return Some(bits / 8 + o);
                    }
                }
                Some(_) => {}
            }
        }
        None
    }

    /// The 0-based index of the type `id` names once typedefs and qualifiers are looked
    /// through.
    fn resolve(&self, mut id: u32) -> Option<usize> {
        for _ in 0..16 {
            let t = self.types.get((id as usize).checked_sub(1)?)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => return Some(id as usize - 1),
            }
        }
        None
    }

    fn name(&self, off: u32) -> Option<&str> {
        let rest = self.strings.get(off as usize..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        std::str::from_utf8(&rest[..end]).ok()
    }
}

/// Walks the type section: each type's fixed part, then kind-specific data whose size the
/// kind and `vlen` give.
fn parse_types(section: &[u8]) -> Result<Vec<Type>, BtfError> {
    let mut types = Vec::new();
    let mut at = 0;
    while at < section.len() {
        let word = |i: usize| -> Result<u32, BtfError> {
            section
                .get(at + i * 4..at + i * 4 + 4)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
                .ok_or(BtfError::Malformed("truncated type"))
        };
        let (name_off, info, size_or_type) = (word(0)?, word(1)?, word(2)?);
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        let extra = match kind {
            1 | 14 | 17 => 4,             // INT, VAR, DECL_TAG: one word
            3 => 12,                      // ARRAY
            4 | 5 | 15 | 19 => vlen * 12, // STRUCT, UNION, DATASEC, ENUM64
            6 | 13 => vlen * 8,           // ENUM, FUNC_PROTO
            2 | 7..=12 | 16 | 18 => 0,    // PTR, FWD, TYPEDEF, qualifiers, FUNC, FLOAT, TYPE_TAG
            _ => return Err(BtfError::Malformed("unknown type kind")),
        };
        types.push(Type {
            name_off,
            kind,
            vlen,
            kind_flag: info >> 31 != 0,
            size_or_type,
            data: at + TYPE_HEADER,
        });
        at += TYPE_HEADER + extra;
    }
    if at != section.len() {
        return Err(BtfError::Malformed("type section ends inside a type"));
    }
    Ok(types)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob from types (each as words) and a string table.
    fn blob(types: &[Vec<u32>], strings: &[u8]) -> Vec<u8> {
        let type_bytes: Vec<u8> = types
            .iter()
            .flatten()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]); // version, flags
        for w in [
            24u32,
            0,
            type_bytes.len() as u32,
            type_bytes.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&type_bytes);
        out.extend_from_slice(strings);
        out
    }

    fn info(kind: u32, vlen: u32, kind_flag: bool) -> u32 {
        (kind << 24) | vlen | ((kind_flag as u32) << 31)
    }

    #[test]
    fn fields_direct_through_anonymous_members_and_typedefs() {
        // Strings: 0 "", 1 "int", 5 "task", 10 "pid", 14 "state", 20 "anon_t"
        let strings = b"\0int\0task\0pid\0state\0anon_t\0";
        let types = vec![
            // 1: int
            vec![1, info(1, 0, false), 4, 32],
            // 2: union { int state (at bit 0) }
            vec![0, info(KIND_UNION, 1, false), 4, 14, 1, 0],
            // 3: typedef anon_t -> 2
            vec![20, info(KIND_TYPEDEF, 0, false), 2],
            // 4: struct task { int a:3 (bitfield, kind_flag); int pid @ 64 bits; anon_t @ 128 }
            vec![
                5,
                info(KIND_STRUCT, 3, true),
                24,
                10,
                1,
                (3 << 24) | 3, // a bitfield named "pid" at bit 3: skipped
                10,
                1,
                64,
                0,
                3,
                128,
            ],
        ];
        let btf = Btf::parse(&blob(&types, strings)).unwrap();
        assert_eq!(btf.field_offset("task", "pid").unwrap(), 8);
        assert_eq!(btf.field_offset("task", "state").unwrap(), 16);
        assert!(matches!(
            btf.field_offset("task", "tgid"),
            Err(BtfError::NoField(f)) if f == "task.tgid"
        ));
        assert!(btf.field_offset("nope", "pid").is_err());
    }

    #[test]
    fn damaged_blobs_are_refused() {
        assert!(matches!(
            Btf::parse(b"\x9f\xeb"),
            Err(BtfError::Malformed(_))
        ));
        assert!(matches!(
            Btf::parse(b"ELF...."),
            Err(BtfError::Malformed(_))
        ));
        let mut bad = blob(&[vec![1, info(1, 0, false), 4, 32]], b"\0int\0");
        bad.truncate(bad.len() - 8);
        assert!(Btf::parse(&bad).is_err());
    }

    /// The running kernel: `pid` and `tgid` are adjacent `pid_t`s in `task_struct`, as in every
    /// kernel since 2.6.
    #[test]
    fn this_kernel_task_struct() {
        let btf = Btf::kernel().unwrap();
        let pid = btf.field_offset("task_struct", "pid").unwrap();
        let tgid = btf.field_offset("task_struct", "tgid").unwrap();
        assert_eq!(tgid, pid + 4);
        assert!(pid > 0 && pid < 16384);
    }
}
