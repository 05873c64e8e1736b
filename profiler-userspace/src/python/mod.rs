//! CPython knowledge: struct layouts per minor version (data, one file each), reading code
//! objects and strings from the target, and decoding line tables. Knows nothing of BPF.

pub mod code;
pub mod debug_offsets;
pub mod discover;
pub mod instance;
pub mod linetable;
pub mod threads;
mod v3_10;
mod v3_11;
mod v3_12;
mod v3_13;
mod v3_8;
mod v3_9;

use std::fmt;

use profiler_common::{NO_OFFSET, PyOffsets, TargetInfo};

use self::debug_offsets::{DebugOffsetsError, Disagreement};
use crate::process::ProcessMemory;

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
pub const SUPPORTED: &str = "3.8 to 3.13";

#[derive(Debug, thiserror::Error)]
pub enum UnsupportedVersion {
    #[error("python {0} is not supported (prof-bpf supports CPython {SUPPORTED})")]
    Version(Version),
    #[error("python {0} is a free-threaded (no-GIL) build, which prof-bpf does not support yet")]
    FreeThreaded(Version),
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
    /// Bytes per unit of an `instr_kind::INT` position: `f_lasti` counts bytes up to 3.9 and
    /// 2-byte code units in 3.10.
    pub instr_unit: u32,
}

/// What the thread state's `tstate_native_thread_id` field holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadId {
    /// The kernel's thread id (`native_thread_id`, 3.11+).
    Native,
    /// `pthread_self()` (`thread_id`, up to 3.10): the C library's thread descriptor, which
    /// holds the kernel's thread id at `crate::process::PTHREAD_TID_OFFSET`.
    Pthread,
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
    pub thread_id: ThreadId,
    /// The frame's byte that marks the first frame of an eval call (3.11's
    /// `_PyInterpreterFrame.is_entry`), or `NO_OFFSET` where the version marks calls otherwise
    /// (see `profile::merge::EntryMarking`). Read by the kernel for mixed stacks only.
    pub entry_flag: u16,
    pub code: CodeLayout,
    pub objects: ObjectLayout,
}

impl Layout {
    /// What the kernel needs to profile a process with this layout whose `_PyRuntime` is at
    /// `runtime_addr`.
    pub fn target_info(&self, runtime_addr: u64) -> TargetInfo {
        TargetInfo {
            runtime_addr,
            offsets: self.kernel,
            version: self.version.as_u16(),
            pthread_tid: match self.thread_id {
                ThreadId::Native => NO_OFFSET,
                ThreadId::Pthread => crate::process::PTHREAD_TID_OFFSET,
            },
            // Mixed stacks only (`Session` sets them): the kernel skips the reads otherwise.
            frame_is_entry: NO_OFFSET,
            options: 0,
        }
    }
}

/// Where a process's layout came from, for the summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayoutSource {
    /// The built-in table: the version publishes nothing.
    Builtin,
    /// `_Py_DebugOffsets` read from the process, with the fields where the built-in table
    /// differs (none, normally).
    Published(Vec<Disagreement>),
    /// The version should publish its layout, but what the process holds could not be used
    /// (the reason); the built-in table stands in.
    Fallback(String),
}

/// The layout of the interpreter in a process: the built-in table for `version`, overridden by
/// what the interpreter publishes about itself (3.13+) where that can be read and checks out.
pub fn layout_of(
    mem: &impl ProcessMemory,
    version: Version,
    runtime_addr: u64,
) -> Result<(Layout, LayoutSource), UnsupportedVersion> {
    let builtin = layout_for(version)?;
    if version < Version::new(3, 13) {
        return Ok((builtin, LayoutSource::Builtin));
    }
    match debug_offsets::read(mem, runtime_addr, &builtin) {
        Ok(published) => {
            let differences = debug_offsets::disagreements(&builtin, &published);
            Ok((published, LayoutSource::Published(differences)))
        }
        Err(DebugOffsetsError::FreeThreaded) => Err(UnsupportedVersion::FreeThreaded(version)),
        Err(e) => Ok((builtin, LayoutSource::Fallback(e.to_string()))),
    }
}

/// The built-in layout for `version`: the one place a version picks its table.
pub fn layout_for(version: Version) -> Result<Layout, UnsupportedVersion> {
    match (version.major, version.minor) {
        (3, 8) => Ok(v3_8::LAYOUT),
        (3, 9) => Ok(v3_9::LAYOUT),
        (3, 10) => Ok(v3_10::LAYOUT),
        (3, 11) => Ok(v3_11::LAYOUT),
        (3, 12) => Ok(v3_12::LAYOUT),
        (3, 13) => Ok(v3_13::LAYOUT),
        _ => Err(UnsupportedVersion::Version(version)),
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
            "python 2.7 is not supported (prof-bpf supports CPython 3.8 to 3.13)"
        );
        for minor in 8..=13 {
            let layout = layout_for(Version::new(3, minor)).unwrap();
            assert_eq!(layout.version, Version::new(3, minor));
        }
        for unsupported in [(2, 7), (3, 6), (3, 7), (3, 14), (4, 0)] {
            assert!(layout_for(Version::new(unsupported.0, unsupported.1)).is_err());
        }
    }

    /// The kernel's copy of a code object's offsets must match userspace's, or the tag the
    /// kernel computes never matches the one userspace checks.
    #[test]
    fn each_table_agrees_with_itself() {
        for minor in 8..=13 {
            let l = layout_for(Version::new(3, minor)).unwrap();
            let k = l.kernel;
            assert_eq!(
                (k.code_name, k.code_filename, k.code_firstlineno),
                (l.code.name, l.code.filename, l.code.firstlineno),
                "3.{minor}"
            );
            assert_eq!(
                l.code.qualname.is_some(),
                minor >= 11,
                "3.{minor}: co_qualname"
            );
            assert_eq!(l.thread_id == ThreadId::Pthread, minor <= 10, "3.{minor}");
            let pointer = k.instr_kind == profiler_common::instr_kind::POINTER;
            assert_eq!(pointer, minor >= 11, "3.{minor}: instruction kind");
            assert_eq!(
                pointer,
                l.code.code_adaptive > 0,
                "3.{minor}: co_code_adaptive"
            );
            // The entry flag is data for the versions whose merge reads it, and only for them.
            let flag = crate::profile::merge::EntryMarking::for_version(l.version)
                == crate::profile::merge::EntryMarking::EntryFlag;
            assert_eq!(l.entry_flag != NO_OFFSET, flag, "3.{minor}: entry flag");
            let info = l.target_info(0x1000);
            assert_eq!(info.pthread_tid != NO_OFFSET, minor <= 10, "3.{minor}");
            assert_eq!(info.version, 3 << 8 | minor as u16);
        }
    }
}
