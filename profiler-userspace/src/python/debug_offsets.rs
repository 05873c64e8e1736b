//! `_Py_DebugOffsets` (3.13+): the layout the interpreter publishes about itself at the start of
//! `_PyRuntime`, for debuggers and profilers. Read from the live process, validated (cookie,
//! version, the runtime's size, every offset inside the struct it belongs to), turned into a
//! `Layout`, and compared with the built-in table, which it overrides. The struct itself changes
//! between minor versions (3.14 and 3.15 insert members), so each version's member list is data
//! here; a version newer than any list is read with the newest one and must validate. Free-threaded
//! builds take their whole layout from here. Pure over `ProcessMemory`; knows nothing of BPF.

use std::io;

use profiler_common::NO_OFFSET;

use super::{Layout, LocalNames, ObjectHeader, Version};
use crate::process::ProcessMemory;

/// `_Py_Debug_Cookie`.
pub const COOKIE: &[u8; 8] = b"xdebugpy";

/// Where the members every version has kept in place are: the version (`PY_VERSION_HEX`) and
/// the free-threaded flag, right after the cookie.
const VERSION_AT: usize = 8;
const FREE_THREADED_AT: usize = 16;

/// `sizeof(PyCompactUnicodeObject) - sizeof(PyASCIIObject)`: `utf8_length` and `utf8`. Published
/// from 3.15 (`unicode_object.compactunicodeobject_size`); the same in every version before.
const COMPACT_UNICODE_EXTRA: u16 = 16;

/// Low bits of a `_PyStackRef` that are its tag (3.14+ `Include/internal/pycore_stackref.h`:
/// `Py_TAG_BITS` is 3 in the default build, 1 in the free-threaded one; code objects are 8-byte
/// aligned, so clearing 3 is right for both).
pub const STACK_REF_TAG_BITS: u16 = 3;

/// `_Py_DebugOffsets` of 3.13 (Include/internal/pycore_runtime.h).
const MEMBERS_3_13: &[&str] = &[
    "version",
    "free_threaded",
    "runtime_state.size",
    "runtime_state.finalizing",
    "runtime_state.interpreters_head",
    "interpreter_state.size",
    "interpreter_state.id",
    "interpreter_state.next",
    "interpreter_state.threads_head",
    "interpreter_state.gc",
    "interpreter_state.imports_modules",
    "interpreter_state.sysdict",
    "interpreter_state.builtins",
    "interpreter_state.ceval_gil",
    "interpreter_state.gil_runtime_state",
    "interpreter_state.gil_runtime_state_enabled",
    "interpreter_state.gil_runtime_state_locked",
    "interpreter_state.gil_runtime_state_holder",
    "thread_state.size",
    "thread_state.prev",
    "thread_state.next",
    "thread_state.interp",
    "thread_state.current_frame",
    "thread_state.thread_id",
    "thread_state.native_thread_id",
    "thread_state.datastack_chunk",
    "thread_state.status",
    "interpreter_frame.size",
    "interpreter_frame.previous",
    "interpreter_frame.executable",
    "interpreter_frame.instr_ptr",
    "interpreter_frame.localsplus",
    "interpreter_frame.owner",
    "code_object.size",
    "code_object.filename",
    "code_object.name",
    "code_object.qualname",
    "code_object.linetable",
    "code_object.firstlineno",
    "code_object.argcount",
    "code_object.localsplusnames",
    "code_object.localspluskinds",
    "code_object.co_code_adaptive",
    "pyobject.size",
    "pyobject.ob_type",
    "type_object.size",
    "type_object.tp_name",
    "type_object.tp_repr",
    "type_object.tp_flags",
    "tuple_object.size",
    "tuple_object.ob_item",
    "tuple_object.ob_size",
    "list_object.size",
    "list_object.ob_item",
    "list_object.ob_size",
    "dict_object.size",
    "dict_object.ma_keys",
    "dict_object.ma_values",
    "float_object.size",
    "float_object.ob_fval",
    "long_object.size",
    "long_object.lv_tag",
    "long_object.ob_digit",
    "bytes_object.size",
    "bytes_object.ob_size",
    "bytes_object.ob_sval",
    "unicode_object.size",
    "unicode_object.state",
    "unicode_object.length",
    "unicode_object.asciiobject_size",
    "gc.size",
    "gc.collecting",
];
/// `_Py_DebugOffsets` of 3.14 (Include/internal/pycore_debug_offsets.h).
const MEMBERS_3_14: &[&str] = &[
    "version",
    "free_threaded",
    "runtime_state.size",
    "runtime_state.finalizing",
    "runtime_state.interpreters_head",
    "interpreter_state.size",
    "interpreter_state.id",
    "interpreter_state.next",
    "interpreter_state.threads_head",
    "interpreter_state.threads_main",
    "interpreter_state.gc",
    "interpreter_state.imports_modules",
    "interpreter_state.sysdict",
    "interpreter_state.builtins",
    "interpreter_state.ceval_gil",
    "interpreter_state.gil_runtime_state",
    "interpreter_state.gil_runtime_state_enabled",
    "interpreter_state.gil_runtime_state_locked",
    "interpreter_state.gil_runtime_state_holder",
    "interpreter_state.code_object_generation",
    "interpreter_state.tlbc_generation",
    "thread_state.size",
    "thread_state.prev",
    "thread_state.next",
    "thread_state.interp",
    "thread_state.current_frame",
    "thread_state.thread_id",
    "thread_state.native_thread_id",
    "thread_state.datastack_chunk",
    "thread_state.status",
    "interpreter_frame.size",
    "interpreter_frame.previous",
    "interpreter_frame.executable",
    "interpreter_frame.instr_ptr",
    "interpreter_frame.localsplus",
    "interpreter_frame.owner",
    "interpreter_frame.stackpointer",
    "interpreter_frame.tlbc_index",
    "code_object.size",
    "code_object.filename",
    "code_object.name",
    "code_object.qualname",
    "code_object.linetable",
    "code_object.firstlineno",
    "code_object.argcount",
    "code_object.localsplusnames",
    "code_object.localspluskinds",
    "code_object.co_code_adaptive",
    "code_object.co_tlbc",
    "pyobject.size",
    "pyobject.ob_type",
    "type_object.size",
    "type_object.tp_name",
    "type_object.tp_repr",
    "type_object.tp_flags",
    "tuple_object.size",
    "tuple_object.ob_item",
    "tuple_object.ob_size",
    "list_object.size",
    "list_object.ob_item",
    "list_object.ob_size",
    "set_object.size",
    "set_object.used",
    "set_object.table",
    "set_object.mask",
    "dict_object.size",
    "dict_object.ma_keys",
    "dict_object.ma_values",
    "float_object.size",
    "float_object.ob_fval",
    "long_object.size",
    "long_object.lv_tag",
    "long_object.ob_digit",
    "bytes_object.size",
    "bytes_object.ob_size",
    "bytes_object.ob_sval",
    "unicode_object.size",
    "unicode_object.state",
    "unicode_object.length",
    "unicode_object.asciiobject_size",
    "gc.size",
    "gc.collecting",
    "gen_object.size",
    "gen_object.gi_name",
    "gen_object.gi_iframe",
    "gen_object.gi_frame_state",
    "llist_node.next",
    "llist_node.prev",
    "debugger_support.eval_breaker",
    "debugger_support.remote_debugger_support",
    "debugger_support.remote_debugging_enabled",
    "debugger_support.debugger_pending_call",
    "debugger_support.debugger_script_path",
    "debugger_support.debugger_script_path_size",
];
/// `_Py_DebugOffsets` of 3.15 (Include/internal/pycore_debug_offsets.h).
const MEMBERS_3_15: &[&str] = &[
    "version",
    "free_threaded",
    "runtime_state.size",
    "runtime_state.finalizing",
    "runtime_state.interpreters_head",
    "interpreter_state.size",
    "interpreter_state.id",
    "interpreter_state.next",
    "interpreter_state.threads_head",
    "interpreter_state.threads_main",
    "interpreter_state.gc",
    "interpreter_state.imports_modules",
    "interpreter_state.sysdict",
    "interpreter_state.builtins",
    "interpreter_state.ceval_gil",
    "interpreter_state.gil_runtime_state",
    "interpreter_state.gil_runtime_state_enabled",
    "interpreter_state.gil_runtime_state_locked",
    "interpreter_state.gil_runtime_state_holder",
    "interpreter_state.code_object_generation",
    "interpreter_state.tlbc_generation",
    "thread_state.size",
    "thread_state.prev",
    "thread_state.next",
    "thread_state.interp",
    "thread_state.current_frame",
    "thread_state.base_frame",
    "thread_state.last_profiled_frame",
    "thread_state.last_profiled_frame_seq",
    "thread_state.thread_id",
    "thread_state.native_thread_id",
    "thread_state.datastack_chunk",
    "thread_state.status",
    "thread_state.holds_gil",
    "thread_state.gil_requested",
    "thread_state.current_exception",
    "thread_state.exc_state",
    "err_stackitem.exc_value",
    "interpreter_frame.size",
    "interpreter_frame.previous",
    "interpreter_frame.executable",
    "interpreter_frame.instr_ptr",
    "interpreter_frame.localsplus",
    "interpreter_frame.owner",
    "interpreter_frame.stackpointer",
    "interpreter_frame.tlbc_index",
    "code_object.size",
    "code_object.filename",
    "code_object.name",
    "code_object.qualname",
    "code_object.linetable",
    "code_object.firstlineno",
    "code_object.argcount",
    "code_object.localsplusnames",
    "code_object.localspluskinds",
    "code_object.co_code_adaptive",
    "code_object.co_tlbc",
    "pyobject.size",
    "pyobject.ob_type",
    "type_object.size",
    "type_object.tp_name",
    "type_object.tp_repr",
    "type_object.tp_flags",
    "type_object.tp_basicsize",
    "type_object.tp_dictoffset",
    "heap_type_object.size",
    "heap_type_object.ht_cached_keys",
    "tuple_object.size",
    "tuple_object.ob_item",
    "tuple_object.ob_size",
    "list_object.size",
    "list_object.ob_item",
    "list_object.ob_size",
    "set_object.size",
    "set_object.used",
    "set_object.table",
    "set_object.mask",
    "dict_object.size",
    "dict_object.ma_keys",
    "dict_object.ma_values",
    "float_object.size",
    "float_object.ob_fval",
    "long_object.size",
    "long_object.lv_tag",
    "long_object.ob_digit",
    "bytes_object.size",
    "bytes_object.ob_size",
    "bytes_object.ob_sval",
    "unicode_object.size",
    "unicode_object.state",
    "unicode_object.length",
    "unicode_object.asciiobject_size",
    "unicode_object.compactunicodeobject_size",
    "gc.size",
    "gc.collecting",
    "gc.frame",
    "gc.generation_stats_size",
    "gc.generation_stats",
    "gen_object.size",
    "gen_object.gi_name",
    "gen_object.gi_iframe",
    "gen_object.gi_frame_state",
    "llist_node.next",
    "llist_node.prev",
    "debugger_support.eval_breaker",
    "debugger_support.remote_debugger_support",
    "debugger_support.remote_debugging_enabled",
    "debugger_support.debugger_pending_call",
    "debugger_support.debugger_script_path",
    "debugger_support.debugger_script_path_size",
];

/// Each version's member list, oldest first. The last one also reads newer versions.
const STRUCTS: &[(Version, &[&str])] = &[
    (Version::new(3, 13), MEMBERS_3_13),
    (Version::new(3, 14), MEMBERS_3_14),
    (Version::new(3, 15), MEMBERS_3_15),
];

/// The newest version whose `_Py_DebugOffsets` prof-bpf knows member by member.
pub const NEWEST: Version = Version::new(3, 15);

/// Which `Layout` field a published offset sets.
type Slot = fn(&mut Layout) -> Option<&mut u16>;

/// Every published offset prof-bpf uses: its member, the member it is relative to (if any), and
/// the `Layout` field it sets. One list serves reading and comparing.
///
/// The GIL's `locked` and `holder` are published as offsets in the interpreter of its own GIL
/// state's fields; less `gil_runtime_state` they are offsets within any `_gil_runtime_state`,
/// which is what the kernel follows `ceval_gil` to.
const FIELDS: &[(&str, Option<&str>, Slot)] = &[
    ("runtime_state.interpreters_head", None, |l| {
        Some(&mut l.kernel.runtime_interpreters_head)
    }),
    ("interpreter_state.threads_head", None, |l| {
        Some(&mut l.kernel.interp_threads_head)
    }),
    ("thread_state.next", None, |l| {
        Some(&mut l.kernel.tstate_next)
    }),
    ("thread_state.current_frame", None, |l| {
        Some(&mut l.kernel.tstate_frame)
    }),
    ("thread_state.native_thread_id", None, |l| {
        Some(&mut l.kernel.tstate_native_thread_id)
    }),
    ("interpreter_frame.previous", None, |l| {
        Some(&mut l.kernel.frame_previous)
    }),
    ("interpreter_frame.executable", None, |l| {
        Some(&mut l.kernel.frame_code)
    }),
    ("interpreter_frame.instr_ptr", None, |l| {
        Some(&mut l.kernel.frame_instr)
    }),
    ("interpreter_frame.owner", None, |l| {
        Some(&mut l.kernel.frame_owner)
    }),
    ("interpreter_state.ceval_gil", None, |l| {
        Some(&mut l.kernel.gil_ptr_in_interp)
    }),
    (
        "interpreter_state.gil_runtime_state_locked",
        Some("interpreter_state.gil_runtime_state"),
        |l| Some(&mut l.kernel.gil_locked),
    ),
    (
        "interpreter_state.gil_runtime_state_holder",
        Some("interpreter_state.gil_runtime_state"),
        |l| Some(&mut l.kernel.gil_last_holder),
    ),
    ("code_object.filename", None, |l| {
        Some(&mut l.kernel.code_filename)
    }),
    ("code_object.filename", None, |l| Some(&mut l.code.filename)),
    ("code_object.name", None, |l| Some(&mut l.kernel.code_name)),
    ("code_object.name", None, |l| Some(&mut l.code.name)),
    ("code_object.qualname", None, |l| l.code.qualname.as_mut()),
    ("code_object.linetable", None, |l| {
        Some(&mut l.code.linetable)
    }),
    ("code_object.firstlineno", None, |l| {
        Some(&mut l.kernel.code_firstlineno)
    }),
    ("code_object.firstlineno", None, |l| {
        Some(&mut l.code.firstlineno)
    }),
    ("code_object.co_code_adaptive", None, |l| {
        Some(&mut l.code.code_adaptive)
    }),
    ("bytes_object.ob_size", None, |l| {
        Some(&mut l.objects.bytes_size)
    }),
    ("bytes_object.ob_sval", None, |l| {
        Some(&mut l.objects.bytes_data)
    }),
    ("unicode_object.state", None, |l| {
        Some(&mut l.objects.unicode_state)
    }),
    ("unicode_object.length", None, |l| {
        Some(&mut l.objects.unicode_length)
    }),
    ("unicode_object.asciiobject_size", None, |l| {
        Some(&mut l.objects.unicode_ascii_data)
    }),
    ("interpreter_frame.localsplus", None, |l| {
        Some(&mut l.values.frame_localsplus)
    }),
    ("code_object.localsplusnames", None, |l| {
        match &mut l.values.names {
            LocalNames::Kinds { names, .. } => Some(names),
            LocalNames::Split { .. } => None,
        }
    }),
    ("code_object.localspluskinds", None, |l| {
        match &mut l.values.names {
            LocalNames::Kinds { kinds, .. } => Some(kinds),
            LocalNames::Split { .. } => None,
        }
    }),
    ("pyobject.ob_type", None, |l| Some(&mut l.values.ob_type)),
    ("interpreter_state.imports_modules", None, |l| {
        Some(&mut l.values.dicts.interp_modules)
    }),
    ("type_object.tp_name", None, |l| Some(&mut l.values.tp_name)),
    ("type_object.tp_flags", None, |l| {
        Some(&mut l.values.tp_flags)
    }),
    ("tuple_object.ob_size", None, |l| {
        Some(&mut l.values.tuple_size)
    }),
    ("tuple_object.ob_item", None, |l| {
        Some(&mut l.values.tuple_items)
    }),
    ("list_object.ob_size", None, |l| {
        Some(&mut l.values.list_size)
    }),
    ("float_object.ob_fval", None, |l| {
        Some(&mut l.values.float_value)
    }),
    ("long_object.lv_tag", None, |l| {
        Some(&mut l.values.long_size)
    }),
    ("long_object.ob_digit", None, |l| {
        Some(&mut l.values.long_digits)
    }),
];

/// Offsets that must lie inside the struct whose size is published beside them, with the bytes
/// read there: a struct misread (a newer version that moved members) fails these.
const INSIDE: &[(&str, &str, u64)] = &[
    ("runtime_state.interpreters_head", "runtime_state.size", 8),
    (
        "interpreter_state.threads_head",
        "interpreter_state.size",
        8,
    ),
    ("interpreter_state.ceval_gil", "interpreter_state.size", 8),
    (
        "interpreter_state.gil_runtime_state_holder",
        "interpreter_state.size",
        8,
    ),
    (
        "interpreter_state.gil_runtime_state_locked",
        "interpreter_state.size",
        4,
    ),
    ("thread_state.next", "thread_state.size", 8),
    ("thread_state.current_frame", "thread_state.size", 8),
    ("thread_state.native_thread_id", "thread_state.size", 8),
    ("interpreter_frame.previous", "interpreter_frame.size", 8),
    ("interpreter_frame.executable", "interpreter_frame.size", 8),
    ("interpreter_frame.instr_ptr", "interpreter_frame.size", 8),
    ("interpreter_frame.owner", "interpreter_frame.size", 1),
    ("code_object.filename", "code_object.size", 8),
    ("code_object.name", "code_object.size", 8),
    ("code_object.qualname", "code_object.size", 8),
    ("code_object.linetable", "code_object.size", 8),
    ("code_object.firstlineno", "code_object.size", 4),
    ("code_object.co_code_adaptive", "code_object.size", 1),
    ("pyobject.ob_type", "pyobject.size", 8),
    ("bytes_object.ob_size", "bytes_object.size", 8),
    ("bytes_object.ob_sval", "bytes_object.size", 1),
    ("unicode_object.state", "unicode_object.size", 4),
    ("unicode_object.length", "unicode_object.size", 8),
    ("unicode_object.asciiobject_size", "unicode_object.size", 0),
    ("interpreter_frame.localsplus", "interpreter_frame.size", 8),
    ("code_object.localsplusnames", "code_object.size", 8),
    ("code_object.localspluskinds", "code_object.size", 8),
    ("type_object.tp_name", "type_object.size", 8),
    ("type_object.tp_flags", "type_object.size", 8),
    ("tuple_object.ob_size", "tuple_object.size", 8),
    ("tuple_object.ob_item", "tuple_object.size", 8),
    ("list_object.ob_size", "list_object.size", 8),
    ("float_object.ob_fval", "float_object.size", 8),
    ("long_object.lv_tag", "long_object.size", 8),
    ("long_object.ob_digit", "long_object.size", 4),
    ("interpreter_state.gc", "interpreter_state.size", 0),
    ("gc.collecting", "gc.size", 4),
];

#[derive(Debug, thiserror::Error)]
pub enum DebugOffsetsError {
    #[error("reading _Py_DebugOffsets: {0}")]
    Io(#[from] io::Error),
    #[error("_PyRuntime does not start with the _Py_DebugOffsets cookie \"xdebugpy\"")]
    NoCookie,
    #[error("_Py_DebugOffsets describes python {published}, but the process is python {found}")]
    VersionMismatch { published: Version, found: Version },
    #[error("_Py_DebugOffsets {field} = {value} is out of range")]
    OutOfRange { field: &'static str, value: u64 },
    #[error("_Py_DebugOffsets {field} = {value} lies outside its struct ({size_field} = {size})")]
    Outside {
        field: &'static str,
        value: u64,
        size_field: &'static str,
        size: u64,
    },
    #[error("_Py_DebugOffsets says _PyRuntime is {published} bytes, but the executable's is {elf}")]
    RuntimeSize { published: u64, elf: u64 },
    #[error("python {0} publishes no _Py_DebugOffsets (it has them from 3.13)")]
    TooOld(Version),
}

/// The start of the struct: what every version keeps in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: Version,
    /// The full `PY_VERSION_HEX`.
    pub hex: u64,
    pub free_threaded: bool,
}

/// A `_Py_DebugOffsets` as read: its header, the member list it was read with, and the words.
#[derive(Clone, Debug)]
pub struct Published {
    pub header: Header,
    /// The version whose member list read it (`NEWEST` for a newer version).
    pub read_as: Version,
    members: &'static [&'static str],
    bytes: Vec<u8>,
}

impl Published {
    /// The published value of member `name`, if this version has it.
    pub fn get(&self, name: &str) -> Option<u64> {
        let at = 8 + 8 * self.members.iter().position(|m| *m == name)?;
        let b = self.bytes.get(at..at + 8)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }

    /// Whether the version has member `name`.
    pub fn has(&self, name: &str) -> bool {
        self.members.contains(&name)
    }
}

/// The member list of version `v`: its own, or the newest one for a newer version.
fn members_for(v: Version) -> Option<(Version, &'static [&'static str])> {
    STRUCTS
        .iter()
        .rev()
        .find(|(known, _)| *known <= v)
        .filter(|(known, _)| *known == v || v > NEWEST)
        .copied()
}

/// The cookie, version and build flag at `runtime_addr`.
pub fn read_header(
    mem: &impl ProcessMemory,
    runtime_addr: u64,
) -> Result<Header, DebugOffsetsError> {
    parse_header(&mem.read_vec(runtime_addr, 24)?)
}

fn parse_header(bytes: &[u8]) -> Result<Header, DebugOffsetsError> {
    let word = |at: usize| {
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
    Ok(Header {
        version: Version::new((hex >> 24) as u8, (hex >> 16) as u8),
        hex,
        free_threaded: word(FREE_THREADED_AT) != 0,
    })
}

/// Reads `_Py_DebugOffsets` at `runtime_addr` of a process running python `found`, whose ELF
/// file says `_PyRuntime` is `runtime_size` bytes (where it says), and checks it.
pub fn read(
    mem: &impl ProcessMemory,
    runtime_addr: u64,
    found: Version,
    runtime_size: Option<u64>,
) -> Result<Published, DebugOffsetsError> {
    let (_, members) = members_for(found).ok_or(DebugOffsetsError::TooOld(found))?;
    let bytes = mem.read_vec(runtime_addr, 8 + 8 * members.len())?;
    parse(bytes, found, runtime_size)
}

/// `read` over the struct's bytes.
pub fn parse(
    bytes: Vec<u8>,
    found: Version,
    runtime_size: Option<u64>,
) -> Result<Published, DebugOffsetsError> {
    let header = parse_header(&bytes)?;
    if header.version != found {
        return Err(DebugOffsetsError::VersionMismatch {
            published: header.version,
            found,
        });
    }
    let (read_as, members) = members_for(found).ok_or(DebugOffsetsError::TooOld(found))?;
    let published = Published {
        header,
        read_as,
        members,
        bytes,
    };
    let value = |name: &'static str| {
        published.get(name).ok_or(DebugOffsetsError::OutOfRange {
            field: name,
            value: 0,
        })
    };
    if let Some(elf) = runtime_size {
        let size = value("runtime_state.size")?;
        if size != elf {
            return Err(DebugOffsetsError::RuntimeSize {
                published: size,
                elf,
            });
        }
    }
    for &(field, size_field, width) in INSIDE {
        let (offset, size) = (value(field)?, value(size_field)?);
        if offset.checked_add(width).is_none_or(|end| end > size) {
            return Err(DebugOffsetsError::Outside {
                field,
                value: offset,
                size_field,
                size,
            });
        }
    }
    Ok(published)
}

/// `base` (the version's built-in table, or the newest one for a newer version) with every
/// published offset in place of its own, and what the build says of itself (free-threaded, a
/// base frame per thread).
pub fn apply(published: &Published, base: &Layout) -> Result<Layout, DebugOffsetsError> {
    let mut layout = *base;
    layout.version = published.header.version;
    for &(field, relative_to, slot) in FIELDS {
        let value = published
            .get(field)
            .ok_or(DebugOffsetsError::OutOfRange { field, value: 0 })?;
        let value = value.wrapping_sub(relative_to.and_then(|r| published.get(r)).unwrap_or(0));
        let value =
            u16::try_from(value).map_err(|_| DebugOffsetsError::OutOfRange { field, value })?;
        if let Some(v) = slot(&mut layout) {
            *v = value;
        }
    }
    let compact = published
        .get("unicode_object.compactunicodeobject_size")
        .and_then(|v| u16::try_from(v).ok());
    layout.objects.unicode_compact_data =
        compact.unwrap_or(layout.objects.unicode_ascii_data + COMPACT_UNICODE_EXTRA);
    // What follows the object header in a dict (`ma_used`), a set (`fill`, then `used`) and a
    // cell (`ob_ref`): 3.14 publishes the set's; the header's size places the others.
    let head = published
        .get("pyobject.size")
        .and_then(|v| u16::try_from(v).ok())
        .ok_or(DebugOffsetsError::OutOfRange {
            field: "pyobject.size",
            value: 0,
        })?;
    layout.values.dict_used = head;
    // A class's shared keys, published from 3.14; before, the built-in table's place moved by
    // how much longer this build's object header is (a type object starts with one).
    layout.values.dicts.ht_cached_keys = match published.get("heap_type_object.ht_cached_keys") {
        Some(v) => u16::try_from(v).map_err(|_| DebugOffsetsError::OutOfRange {
            field: "heap_type_object.ht_cached_keys",
            value: v,
        })?,
        None => base.values.dicts.ht_cached_keys + head.saturating_sub(base.values.dict_used),
    };
    layout.values.cell_ref = head;
    layout.values.set_used = published
        .get("set_object.used")
        .and_then(|v| u16::try_from(v).ok())
        .unwrap_or(head + 8);
    // The collector's flag: its state's place in the interpreter plus the flag's in the state.
    let field = "gc.collecting";
    let collecting = published
        .get("interpreter_state.gc")
        .zip(published.get(field))
        .ok_or(DebugOffsetsError::OutOfRange { field, value: 0 })
        .map(|(gc, flag)| gc.wrapping_add(flag))?;
    layout.kernel.gc_collecting_in_interp = u16::try_from(collecting)
        .ok()
        .filter(|&v| v != NO_OFFSET)
        .ok_or(DebugOffsetsError::OutOfRange {
            field,
            value: collecting,
        })?;
    layout.kernel.gc_collecting_in_runtime = NO_OFFSET;
    layout.free_threaded = published.header.free_threaded;
    if layout.free_threaded {
        // Locals are _PyStackRef from 3.13 in free-threaded builds (Py_TAG_DEFERRED, 1).
        layout.values.stack_ref_tag = STACK_REF_TAG_BITS;
        layout.objects.header = ObjectHeader::FreeThreaded;
        // 3.14+ free-threaded builds make `interned` a whole byte (it is read atomically):
        // `cpython/unicodeobject.h`, `#ifdef Py_GIL_DISABLED`.
        if layout.version >= Version::new(3, 14) {
            layout.objects.unicode_kind_bit = 8;
        }
    }
    // 3.15's threads end their frame chain in a base frame inside the thread state.
    layout.base_frame = published.has("thread_state.base_frame");
    Ok(layout)
}

/// A field where the published layout and the built-in table differ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disagreement {
    pub field: &'static str,
    pub builtin: u16,
    pub published: u16,
}

/// The fields where `published` differs from `builtin`.
pub fn disagreements(builtin: &Layout, published: &Layout) -> Vec<Disagreement> {
    let (mut b, mut p) = (*builtin, *published);
    let mut out: Vec<Disagreement> = FIELDS
        .iter()
        .filter_map(|&(field, _, slot)| {
            let (builtin, published) = (*slot(&mut b)?, *slot(&mut p)?);
            (builtin != published).then_some(Disagreement {
                field,
                builtin,
                published,
            })
        })
        .collect();
    if builtin.kernel.gc_collecting_in_interp != published.kernel.gc_collecting_in_interp {
        out.push(Disagreement {
            field: "gc.collecting",
            builtin: builtin.kernel.gc_collecting_in_interp,
            published: published.kernel.gc_collecting_in_interp,
        });
    }
    if builtin.objects.unicode_compact_data != published.objects.unicode_compact_data {
        out.push(Disagreement {
            field: "unicode_object.compactunicodeobject_size",
            builtin: builtin.objects.unicode_compact_data,
            published: published.objects.unicode_compact_data,
        });
    }
    out.dedup_by_key(|d| d.field);
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::python::layout_for;

    /// The words an interpreter printed of its own `_Py_DebugOffsets`, as
    /// `tests/data/debug_offsets/*.txt` keep them (`  POS name = VALUE ...`).
    pub(crate) fn captured(name: &str) -> Vec<u8> {
        captured_with_names(name).0
    }

    /// `captured`, and the member names the interpreter's header gave, in order.
    fn captured_with_names(name: &str) -> (Vec<u8>, Vec<String>) {
        let path = format!(
            "{}/../tests/data/debug_offsets/{name}.txt",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut bytes = Vec::new();
        let mut names = Vec::new();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let (Some(pos), Some(member), Some("="), Some(value)) =
                (words.next(), words.next(), words.next(), words.next())
            else {
                continue;
            };
            let Ok(pos) = pos.parse::<usize>() else {
                continue;
            };
            if pos == 0 {
                bytes.extend_from_slice(COOKIE);
                continue;
            }
            assert_eq!(pos, bytes.len(), "{name}: members in order");
            bytes.extend_from_slice(&value.parse::<u64>().unwrap().to_le_bytes());
            names.push(member.to_string());
        }
        (bytes, names)
    }

    /// Each member list is the one the version's own header declares, member for member.
    #[test]
    fn member_lists_are_the_headers() {
        for (name, members) in [
            ("3.13.0-pyenv", MEMBERS_3_13),
            ("3.13t", MEMBERS_3_13),
            ("3.14", MEMBERS_3_14),
            ("3.15", MEMBERS_3_15),
        ] {
            assert_eq!(captured_with_names(name).1, members, "{name}");
        }
    }

    /// Each version's member list reads what that version's interpreter published into its
    /// built-in table exactly, field by field; 3.13t's into 3.13's table with its own object
    /// layout.
    #[test]
    fn captured_offsets_equal_the_built_in_tables() {
        for (name, minor, size) in [
            ("3.13.0-pyenv", 13, 283320),
            ("3.14", 14, 316616),
            ("3.15", 15, 346568),
        ] {
            let v = Version::new(3, minor);
            let builtin = layout_for(v).unwrap();
            let published = parse(captured(name), v, Some(size)).unwrap();
            assert!(!published.header.free_threaded);
            let layout = apply(&published, &builtin).unwrap();
            assert_eq!(disagreements(&builtin, &layout), [], "{name}");
            assert_eq!(layout, builtin, "{name}");
        }
        let v = Version::new(3, 13);
        let published = parse(captured("3.13t"), v, Some(328320)).unwrap();
        assert!(published.header.free_threaded);
        let layout = apply(&published, &layout_for(v).unwrap()).unwrap();
        assert!(layout.free_threaded);
        assert_eq!(layout.objects.header, ObjectHeader::FreeThreaded);
        assert_eq!(
            (layout.code.filename, layout.code.name, layout.code.qualname),
            (128, 136, Some(144))
        );
        assert_eq!(
            (layout.code.firstlineno, layout.code.code_adaptive),
            (84, 216)
        );
        assert_eq!(
            (
                layout.objects.unicode_ascii_data,
                layout.objects.unicode_compact_data
            ),
            (56, 72)
        );
        assert_eq!(layout.objects.unicode_kind_bit, 2);
        assert_eq!(layout.kernel.tstate_native_thread_id, 160);
        // interpreter_state.gc 7400 + gc.collecting 200, as in the default build.
        assert_eq!(layout.kernel.gc_collecting_in_interp, 7600);
    }

    /// The runtime's size is checked against the ELF file's, and the struct's offsets against
    /// the sizes of their structs.
    #[test]
    fn bad_blocks_are_refused() {
        let v = Version::new(3, 15);
        let good = captured("3.15");
        assert!(matches!(
            parse(good.clone(), v, Some(1000)),
            Err(DebugOffsetsError::RuntimeSize {
                published: 346568,
                elf: 1000
            })
        ));

        let mut no_cookie = good.clone();
        no_cookie[0] = b'y';
        assert!(matches!(
            parse(no_cookie, v, None),
            Err(DebugOffsetsError::NoCookie)
        ));

        assert_eq!(
            parse(good.clone(), Version::new(3, 14), None)
                .unwrap_err()
                .to_string(),
            "_Py_DebugOffsets describes python 3.15, but the process is python 3.14"
        );

        // The 3.15 block read with the 3.14 list (as if 3.15 were 3.14): caught.
        let mut as_314 = good.clone();
        as_314[VERSION_AT + 2] = 14;
        let err = parse(as_314, Version::new(3, 14), None).unwrap_err();
        assert!(matches!(err, DebugOffsetsError::Outside { .. }), "{err}");
    }

    /// A version newer than any list is read with the newest one, and validated like it.
    #[test]
    fn a_newer_version_reads_with_the_newest_list() {
        let mut block = captured("3.15");
        block[VERSION_AT + 2] = 16;
        let v = Version::new(3, 16);
        let published = parse(block, v, Some(346568)).unwrap();
        assert_eq!(published.read_as, NEWEST);
        let layout = apply(&published, &layout_for(NEWEST).unwrap()).unwrap();
        assert_eq!(layout.version, v);
        assert_eq!(layout.kernel.tstate_native_thread_id, 184);
        assert!(layout.base_frame);
        assert!(matches!(
            parse(captured("3.15"), Version::new(3, 12), None),
            Err(DebugOffsetsError::VersionMismatch { .. })
        ));
        assert!(members_for(Version::new(3, 12)).is_none());
    }

    #[test]
    fn published_offsets_win_and_differences_are_named() {
        let v = Version::new(3, 14);
        let builtin = layout_for(v).unwrap();
        let mut block = captured("3.14");
        // interpreter_state.threads_head, 8 bytes further.
        let at = 8 + 8 * MEMBERS_3_14
            .iter()
            .position(|m| *m == "interpreter_state.threads_head")
            .unwrap();
        let moved = u64::from_le_bytes(block[at..at + 8].try_into().unwrap()) + 8;
        block[at..at + 8].copy_from_slice(&moved.to_le_bytes());
        let layout = apply(&parse(block, v, None).unwrap(), &builtin).unwrap();
        assert_eq!(layout.kernel.interp_threads_head, moved as u16);
        let fields: Vec<_> = disagreements(&builtin, &layout)
            .into_iter()
            .map(|d| d.field)
            .collect();
        assert_eq!(fields, ["interpreter_state.threads_head"]);
    }
}
