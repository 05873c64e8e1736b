//! `_Py_DebugOffsets` (3.13+): the layout the interpreter publishes about itself at the start of
//! `_PyRuntime`, for debuggers and profilers. Read from the live process, validated (cookie,
//! version, build), turned into a `Layout`, and compared with the built-in table, which it
//! overrides. Pure over `ProcessMemory`; knows nothing of BPF.

use std::io;

use super::{Layout, Version};
use crate::process::ProcessMemory;

/// `_Py_Debug_Cookie`.
pub const COOKIE: &[u8; 8] = b"xdebugpy";

/// `sizeof(_Py_DebugOffsets)` in 3.13 (Include/internal/pycore_runtime.h).
const SIZE_3_13: usize = 584;
/// Byte positions in the 3.13 struct of the fields prof-bpf reads besides the offsets below.
const VERSION_AT: usize = 8;
const FREE_THREADED_AT: usize = 16;
const UNICODE_ASCII_SIZE_AT: usize = 560;

/// `sizeof(PyCompactUnicodeObject) - sizeof(PyASCIIObject)`: `utf8_length` and `utf8`. Not
/// published; the same in every version that publishes offsets.
const COMPACT_UNICODE_EXTRA: u16 = 16;

/// Which `Layout` field a published offset sets.
type Slot = fn(&mut Layout) -> Option<&mut u16>;

/// `interpreter_state.gil_runtime_state`: where the interpreter's own GIL state sits in it.
/// The published `locked` and `holder` offsets are of that embedded state's fields, so less
/// this they are offsets within any `_gil_runtime_state`, which is what the kernel follows
/// `ceval_gil` to.
const GIL_STATE_AT: usize = 120;

/// Every published offset prof-bpf uses: its name in `_Py_DebugOffsets`, its byte position in
/// the 3.13 struct, the position of a published offset it is relative to (if any), and the
/// `Layout` field it sets. One list serves reading and comparing.
const FIELDS: &[(&str, usize, Option<usize>, Slot)] = &[
    ("runtime_state.interpreters_head", 40, None, |l| {
        Some(&mut l.kernel.runtime_interpreters_head)
    }),
    ("interpreter_state.threads_head", 72, None, |l| {
        Some(&mut l.kernel.interp_threads_head)
    }),
    ("thread_state.next", 168, None, |l| {
        Some(&mut l.kernel.tstate_next)
    }),
    ("thread_state.current_frame", 184, None, |l| {
        Some(&mut l.kernel.tstate_frame)
    }),
    ("thread_state.native_thread_id", 200, None, |l| {
        Some(&mut l.kernel.tstate_native_thread_id)
    }),
    ("interpreter_frame.previous", 232, None, |l| {
        Some(&mut l.kernel.frame_previous)
    }),
    ("interpreter_frame.executable", 240, None, |l| {
        Some(&mut l.kernel.frame_code)
    }),
    ("interpreter_frame.instr_ptr", 248, None, |l| {
        Some(&mut l.kernel.frame_instr)
    }),
    ("interpreter_frame.owner", 264, None, |l| {
        Some(&mut l.kernel.frame_owner)
    }),
    ("interpreter_state.ceval_gil", 112, None, |l| {
        Some(&mut l.kernel.gil_ptr_in_interp)
    }),
    (
        "interpreter_state.gil_runtime_state_locked",
        136,
        Some(GIL_STATE_AT),
        |l| Some(&mut l.kernel.gil_locked),
    ),
    (
        "interpreter_state.gil_runtime_state_holder",
        144,
        Some(GIL_STATE_AT),
        |l| Some(&mut l.kernel.gil_last_holder),
    ),
    ("code_object.filename", 280, None, |l| {
        Some(&mut l.kernel.code_filename)
    }),
    ("code_object.filename", 280, None, |l| {
        Some(&mut l.code.filename)
    }),
    ("code_object.name", 288, None, |l| {
        Some(&mut l.kernel.code_name)
    }),
    ("code_object.name", 288, None, |l| Some(&mut l.code.name)),
    ("code_object.qualname", 296, None, |l| {
        l.code.qualname.as_mut()
    }),
    ("code_object.linetable", 304, None, |l| {
        Some(&mut l.code.linetable)
    }),
    ("code_object.firstlineno", 312, None, |l| {
        Some(&mut l.kernel.code_firstlineno)
    }),
    ("code_object.firstlineno", 312, None, |l| {
        Some(&mut l.code.firstlineno)
    }),
    ("code_object.co_code_adaptive", 344, None, |l| {
        Some(&mut l.code.code_adaptive)
    }),
    ("bytes_object.ob_size", 520, None, |l| {
        Some(&mut l.objects.bytes_size)
    }),
    ("bytes_object.ob_sval", 528, None, |l| {
        Some(&mut l.objects.bytes_data)
    }),
    ("unicode_object.state", 544, None, |l| {
        Some(&mut l.objects.unicode_state)
    }),
    ("unicode_object.length", 552, None, |l| {
        Some(&mut l.objects.unicode_length)
    }),
    (
        "unicode_object.asciiobject_size",
        UNICODE_ASCII_SIZE_AT,
        None,
        |l| Some(&mut l.objects.unicode_ascii_data),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum DebugOffsetsError {
    #[error("reading _Py_DebugOffsets: {0}")]
    Io(#[from] io::Error),
    #[error("_PyRuntime does not start with the _Py_DebugOffsets cookie \"xdebugpy\"")]
    NoCookie,
    #[error("_Py_DebugOffsets describes python {published}, but the process is python {found}")]
    VersionMismatch { published: Version, found: Version },
    #[error("free-threaded (no-GIL) CPython builds are not supported")]
    FreeThreaded,
    #[error("_Py_DebugOffsets {field} = {value} is out of range")]
    OutOfRange { field: &'static str, value: u64 },
    #[error("python {0} publishes a _Py_DebugOffsets layout prof-bpf cannot read yet")]
    UnknownStruct(Version),
}

/// A field where the published layout and the built-in table differ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disagreement {
    pub field: &'static str,
    pub builtin: u16,
    pub published: u16,
}

/// Reads `_Py_DebugOffsets` at `runtime_addr` and returns `builtin` with every published offset
/// in place of its own.
pub fn read(
    mem: &impl ProcessMemory,
    runtime_addr: u64,
    builtin: &Layout,
) -> Result<Layout, DebugOffsetsError> {
    if (builtin.version.major, builtin.version.minor) != (3, 13) {
        return Err(DebugOffsetsError::UnknownStruct(builtin.version));
    }
    let bytes = mem.read_vec(runtime_addr, SIZE_3_13)?;
    parse(&bytes, builtin)
}

/// `read` over the struct's bytes.
pub fn parse(bytes: &[u8], builtin: &Layout) -> Result<Layout, DebugOffsetsError> {
    let word = |at: usize| -> u64 {
        bytes
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_le_bytes)
    };
    if bytes.get(..8) != Some(COOKIE.as_slice()) {
        return Err(DebugOffsetsError::NoCookie);
    }
    // PY_VERSION_HEX: 0xMMmmPPLS.
    let hex = word(VERSION_AT);
    let published = Version::new((hex >> 24) as u8, (hex >> 16) as u8);
    if published != builtin.version {
        return Err(DebugOffsetsError::VersionMismatch {
            published,
            found: builtin.version,
        });
    }
    if word(FREE_THREADED_AT) != 0 {
        return Err(DebugOffsetsError::FreeThreaded);
    }
    let mut layout = *builtin;
    for &(field, at, relative_to, slot) in FIELDS {
        let value = word(at).wrapping_sub(relative_to.map_or(0, word));
        let value =
            u16::try_from(value).map_err(|_| DebugOffsetsError::OutOfRange { field, value })?;
        if let Some(v) = slot(&mut layout) {
            *v = value;
        }
    }
    layout.objects.unicode_compact_data = layout.objects.unicode_ascii_data + COMPACT_UNICODE_EXTRA;
    Ok(layout)
}

/// The fields where `published` differs from `builtin`.
pub fn disagreements(builtin: &Layout, published: &Layout) -> Vec<Disagreement> {
    let (mut b, mut p) = (*builtin, *published);
    FIELDS
        .iter()
        .filter_map(|&(field, _, _, slot)| {
            let (builtin, published) = (*slot(&mut b)?, *slot(&mut p)?);
            (builtin != published).then_some(Disagreement {
                field,
                builtin,
                published,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::layout_for;

    /// A 3.13 `_Py_DebugOffsets` block holding `layout`'s offsets, as the interpreter writes it.
    pub(crate) fn block(layout: &Layout) -> Vec<u8> {
        let mut bytes = vec![0; SIZE_3_13];
        bytes[..8].copy_from_slice(COOKIE);
        let hex = (layout.version.major as u64) << 24 | (layout.version.minor as u64) << 16 | 0xf0;
        bytes[VERSION_AT..VERSION_AT + 8].copy_from_slice(&hex.to_le_bytes());
        let mut l = *layout;
        // The interpreter's own GIL state, somewhere inside it.
        let gil_state: u64 = 0x1e48;
        bytes[GIL_STATE_AT..GIL_STATE_AT + 8].copy_from_slice(&gil_state.to_le_bytes());
        for &(_, at, relative_to, slot) in FIELDS {
            if let Some(v) = slot(&mut l) {
                let base = relative_to.map_or(0, |_| gil_state);
                bytes[at..at + 8].copy_from_slice(&(*v as u64 + base).to_le_bytes());
            }
        }
        bytes
    }

    #[test]
    fn a_faithful_block_reproduces_the_table() {
        let builtin = layout_for(Version::new(3, 13)).unwrap();
        let read = parse(&block(&builtin), &builtin).unwrap();
        assert_eq!(read, builtin);
        assert!(disagreements(&builtin, &read).is_empty());
    }

    #[test]
    fn published_offsets_win_and_differences_are_named() {
        let builtin = layout_for(Version::new(3, 13)).unwrap();
        let mut moved = builtin;
        moved.kernel.interp_threads_head += 8;
        moved.objects.unicode_ascii_data = 48;
        let read = parse(&block(&moved), &builtin).unwrap();
        assert_eq!(
            read.kernel.interp_threads_head,
            builtin.kernel.interp_threads_head + 8
        );
        assert_eq!(read.objects.unicode_compact_data, 64);
        let fields: Vec<_> = disagreements(&builtin, &read)
            .into_iter()
            .map(|d| d.field)
            .collect();
        assert_eq!(
            fields,
            [
                "interpreter_state.threads_head",
                "unicode_object.asciiobject_size"
            ]
        );
    }

    #[test]
    fn bad_blocks_are_refused() {
        let builtin = layout_for(Version::new(3, 13)).unwrap();
        let good = block(&builtin);

        let mut no_cookie = good.clone();
        no_cookie[0] = b'y';
        assert!(matches!(
            parse(&no_cookie, &builtin),
            Err(DebugOffsetsError::NoCookie)
        ));

        let mut other_version = good.clone();
        other_version[VERSION_AT + 2] = 14;
        assert_eq!(
            parse(&other_version, &builtin).unwrap_err().to_string(),
            "_Py_DebugOffsets describes python 3.14, but the process is python 3.13"
        );

        let mut free_threaded = good.clone();
        free_threaded[FREE_THREADED_AT] = 1;
        assert!(matches!(
            parse(&free_threaded, &builtin),
            Err(DebugOffsetsError::FreeThreaded)
        ));

        let mut huge = good;
        huge[72 + 3] = 1;
        assert!(matches!(
            parse(&huge, &builtin),
            Err(DebugOffsetsError::OutOfRange {
                field: "interpreter_state.threads_head",
                ..
            })
        ));
    }
}
