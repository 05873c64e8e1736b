//! CPython knowledge: struct layouts per minor version (data, one file each), reading code
//! objects and strings from the target, and decoding line tables. Knows nothing of BPF.

pub mod code;
pub mod linetable;
pub mod threads;
mod v3_11;
mod v3_12;

use std::fmt;

use profiler_common::PyOffsets;

pub use linetable::LineTableFormat;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u8,
    pub minor: u8,
}

impl Version {
    pub const fn new(major: u8, minor: u8) -> Self {
        Self { major, minor }
    }

    /// "3.12" -> 3.12.
    pub fn parse(s: &str) -> Option<Self> {
        let (major, minor) = s.split_once('.')?;
        let minor = minor.split(|c: char| !c.is_ascii_digit()).next()?;
        Some(Self::new(major.parse().ok()?, minor.parse().ok()?))
    }

    pub const fn as_u16(self) -> u16 {
        (self.major as u16) << 8 | self.minor as u16
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The versions prof-bpf can profile, for messages.
pub const SUPPORTED: &str = "3.11 to 3.12";

#[derive(Debug, thiserror::Error)]
#[error("python {version} is not supported (prof-bpf supports CPython {SUPPORTED})")]
pub struct UnsupportedVersion {
    pub version: Version,
}

/// Where a code object keeps what userspace reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodeLayout {
    pub filename: u16,
    pub name: u16,
    /// `co_qualname`, from 3.11.
    pub qualname: Option<u16>,
    pub firstlineno: u16,
    pub linetable: u16,
    pub linetable_format: LineTableFormat,
    /// Offset of the inline bytecode (`co_code_adaptive`, 3.11+): a frame's instruction pointer
    /// minus the code object's address minus this is the byte offset of the instruction.
    pub code_adaptive: u16,
}

/// Where string and bytes objects keep their contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectLayout {
    /// `PyASCIIObject.length`.
    pub unicode_length: u16,
    /// `PyASCIIObject.state` (a bitfield: kind bits 2-4, compact bit 5, ascii bit 6).
    pub unicode_state: u16,
    /// `sizeof(PyASCIIObject)`: compact ASCII data follows it.
    pub unicode_ascii_data: u16,
    /// `sizeof(PyCompactUnicodeObject)`: other compact data follows it; a legacy string keeps
    /// a data pointer there.
    pub unicode_compact_data: u16,
    /// `PyVarObject.ob_size` of a bytes object.
    pub bytes_size: u16,
    /// `PyBytesObject.ob_sval`.
    pub bytes_data: u16,
}

/// Everything prof-bpf knows about one CPython minor version's memory layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub version: Version,
    /// What the kernel needs to walk threads and frames.
    pub kernel: PyOffsets,
    pub code: CodeLayout,
    pub objects: ObjectLayout,
}

/// The built-in layout for `version`.
pub fn layout_for(version: Version) -> Result<Layout, UnsupportedVersion> {
    match (version.major, version.minor) {
        (3, 11) => Ok(v3_11::LAYOUT),
        (3, 12) => Ok(v3_12::LAYOUT),
        _ => Err(UnsupportedVersion { version }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert_eq!(Version::parse("3.12"), Some(Version::new(3, 12)));
        assert_eq!(Version::parse("3.13.0"), Some(Version::new(3, 13)));
        assert_eq!(Version::parse("3"), None);
        assert_eq!(Version::new(3, 9).to_string(), "3.9");
    }

    #[test]
    fn unsupported_versions_are_named() {
        let e = layout_for(Version::new(2, 7)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "python 2.7 is not supported (prof-bpf supports CPython 3.11 to 3.12)"
        );
        assert!(layout_for(Version::new(3, 11)).is_ok());
        assert!(layout_for(Version::new(3, 12)).is_ok());
    }
}
