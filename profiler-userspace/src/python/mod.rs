//! CPython knowledge: struct layouts per minor version (data, one file each), reading code
//! objects and strings from the target, and decoding line tables. Knows nothing of BPF.

pub mod asyncio;
pub mod code;
pub mod debug_offsets;
pub mod discover;
pub mod instance;
pub mod linetable;
pub mod locals;
pub mod methods;
pub mod objects;
#[cfg(test)]
mod test_heap;
pub mod thread_names;
pub mod threads;
mod v3_10;
mod v3_11;
mod v3_12;
mod v3_13;
mod v3_14;
mod v3_15;
mod v3_8;
mod v3_9;

use std::fmt;

use profiler_common::{NO_OFFSET, PyOffsets, TargetInfo};

use self::debug_offsets::Disagreement;
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
pub const SUPPORTED: &str = "3.8 to 3.15, free-threaded builds from 3.13, and newer versions whose _Py_DebugOffsets check out";

#[derive(Debug, thiserror::Error)]
pub enum UnsupportedVersion {
    #[error("python {0} is not supported (prof-bpf supports CPython {SUPPORTED})")]
    Version(Version),
    #[error(
        "python {version} is newer than prof-bpf's tables (up to {}), and its _Py_DebugOffsets \
         could not be used: {why}",
        debug_offsets::NEWEST
    )]
    Newer { version: Version, why: String },
    #[error(
        "python {version} is a free-threaded (no-GIL) build, whose layout prof-bpf reads from its \
         _Py_DebugOffsets, and those could not be used: {why}"
    )]
    FreeThreaded { version: Version, why: String },
    #[error(
        "python {0}'s layout puts a field the kernel walker reads beyond the {frame} bytes it \
         reads of a frame or the {code} of a code object, or at an offset not aligned to its size",
        frame = profiler_common::FRAME_READ,
        code = profiler_common::CODE_READ
    )]
    TooWide(Version),
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

/// How an object's header says it is alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectHeader {
    /// `ob_refcnt` at 0 (Include/object.h). From 3.14 its top 16 bits are `ob_flags`, which
    /// are not part of the count.
    Gil,
    /// The free-threaded header (Include/object.h, `Py_GIL_DISABLED`): `ob_tid` at 0, the
    /// owning thread's `ob_ref_local` (u32) at 12 and the others' `ob_ref_shared` at 16.
    FreeThreaded,
}

/// Where string and bytes objects keep their contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectLayout {
    pub header: ObjectHeader,
    /// `PyASCIIObject.length`.
    pub unicode_length: u16,
    /// `PyASCIIObject.state` (a bitfield: `kind` 3 bits from `unicode_kind_bit`, then
    /// `compact`, then `ascii`).
    pub unicode_state: u16,
    /// Where `kind` starts in `state`: 2, after the 2-bit `interned`; 8 in 3.14+ free-threaded
    /// builds, whose `interned` is a whole byte.
    pub unicode_kind_bit: u8,
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

/// How a code object names the slots of its frames' fast locals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalNames {
    /// Up to 3.10: `co_varnames` names the plain locals, `co_cellvars` the cells after them and
    /// `co_freevars` the free variables after those (tuples of `str`).
    Split {
        varnames: u16,
        cellvars: u16,
        freevars: u16,
    },
    /// 3.11+: `co_localsplusnames` (a tuple of `str`) names every slot and
    /// `co_localspluskinds` (`bytes`, one `CO_FAST_*` byte per slot) says what each is.
    Kinds { names: u16, kinds: u16 },
}

/// Where a frame keeps its fast locals and where the objects they refer to keep what
/// `dump --locals` shows: only what userspace reads, never the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValueLayout {
    /// `PyFrameObject.f_localsplus` (up to 3.10) or `_PyInterpreterFrame.localsplus` (3.11+).
    pub frame_localsplus: u16,
    pub names: LocalNames,
    /// Low bits of a local's slot that tag a `_PyStackRef` (3.14+, and 3.13t); 0 where slots
    /// are plain `PyObject *`. With the default build's tags (3.14+), a slot tagged 3 holds an
    /// int in its other bits.
    pub stack_ref_tag: u16,
    /// `PyObject.ob_type`.
    pub ob_type: u16,
    /// `PyTypeObject.tp_name` and `.tp_flags`.
    pub tp_name: u16,
    pub tp_flags: u16,
    /// `ob_size` of a tuple and of a list, and the tuple's `ob_item` array.
    pub tuple_size: u16,
    pub tuple_items: u16,
    pub list_size: u16,
    /// `PyDictObject.ma_used`, `PySetObject.used`.
    pub dict_used: u16,
    pub set_used: u16,
    /// `PyFloatObject.ob_fval`.
    pub float_value: u16,
    /// An int's sign and digit count: `ob_size` (negative for a negative int) up to 3.11,
    /// `long_value.lv_tag` (sign in the low 2 bits, digit count above bit 3) from 3.12.
    pub long_size: u16,
    pub long_tagged: bool,
    /// `ob_digit`: 30-bit digits in 32-bit words, least significant first.
    pub long_digits: u16,
    /// `PyCellObject.ob_ref`: a cell or free variable's value.
    pub cell_ref: u16,
    /// Where dicts and instances keep their entries, for the thread names.
    pub dicts: DictLayout,
    /// What a method's class is found through, up to 3.10 (no `co_qualname`); None from 3.11.
    pub methods: Option<MethodLayout>,
}

/// Function and type objects, for a method's qualified name up to 3.10 (`python::methods`):
/// the class of its first argument, that class's method resolution order, each class's dict,
/// and the function in it whose code object the frame runs. Userspace only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MethodLayout {
    /// `PyFunctionObject.func_code`, `.func_qualname`.
    pub func_code: u16,
    pub func_qualname: u16,
    /// `classmethod.cm_callable` and `staticmethod.sm_callable` (Objects/funcobject.c): the
    /// function such a descriptor wraps.
    pub wrapped_callable: u16,
    /// `PyTypeObject.tp_dict`, `.tp_mro`.
    pub tp_dict: u16,
    pub tp_mro: u16,
}

/// What thread names are read through (`python::thread_names`): `sys.modules`, the entries of
/// a dict and the attributes of an instance. Userspace only. The type object's `tp_basicsize`
/// and `tp_dictoffset` are not here: every version keeps them 8 and 264 bytes after
/// `tp_name` (Include/cpython/object.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DictLayout {
    /// `PyInterpreterState.modules` (up to 3.11) or `.imports.modules` (3.12+): `sys.modules`.
    pub interp_modules: u16,
    pub keys: DictKeys,
    /// `PyDictValues.values`: 3.13 puts four bytes (capacity, size, embedded, valid) before it.
    pub values_items: u16,
    pub instance: InstanceDict,
    /// `PyHeapTypeObject.ht_cached_keys`: the keys a class's instances share.
    pub ht_cached_keys: u16,
}

/// `PyDictKeysObject` (Objects/dict-common.h up to 3.10, Include/internal/pycore_dict.h from
/// 3.11): how big its index table is, where its entries start and what they hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DictKeys {
    /// Up to 3.10: `dk_size` (8), `dk_nentries` (32), `dk_indices` (40) of 1 to 8 bytes each by
    /// the size; entries of hash, key and value.
    Sized,
    /// 3.11+: `dk_log2_size` (8), `dk_log2_index_bytes` (9), `dk_kind` (10), `dk_nentries`
    /// (24), `dk_indices` (32); entries of key and value only for a table of `str` keys.
    Log2,
}

/// Where an instance of a class defined in Python keeps its attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceDict {
    /// Up to 3.10: a dict at the type's `tp_dictoffset`.
    Offset,
    /// 3.11 (`Py_TPFLAGS_MANAGED_DICT`): the dict 3 words before the object, or, while it has
    /// none, its values 4 words before it (keys: the class's `ht_cached_keys`).
    Managed,
    /// 3.12: one word 3 before the object, the dict or (odd) the values' address less one.
    DictOrValues,
    /// 3.13+: the dict before the object (3 words, 1 in a free-threaded build), or, while it
    /// has none, the values inline after the object (`Py_TPFLAGS_INLINE_VALUES`, at
    /// `tp_basicsize`).
    InlineValues,
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
    /// Locals and the values `dump --locals` shows.
    pub values: ValueLayout,
    /// A free-threaded (no-GIL) build (`_Py_DebugOffsets.free_threaded`, 3.13t+): threads run
    /// Python in parallel, and no GIL is held.
    pub free_threaded: bool,
    /// Every thread's frame chain ends in a base frame inside its thread state (3.15+): a shim
    /// frame that stands for no eval call.
    pub base_frame: bool,
}

impl Layout {
    /// The version as users name it: `3.13t` for a free-threaded build.
    pub fn version_name(&self) -> String {
        match self.free_threaded {
            true => format!("{}t", self.version),
            false => self.version.to_string(),
        }
    }

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
            options: match self.free_threaded {
                true => profiler_common::target_options::FREE_THREADED,
                false => 0,
            },
            frame_read: self.frame_read(),
            code_read: self.code_read(),
            // Set by the session for a process in a container (`PythonProcess::pid_namespace`).
            tstate_running_task: NO_OFFSET,
            code_shown_name: self.code.qualname.unwrap_or(self.code.name),
            code_linetable: self.code.linetable,
            frame_first_local: match self.values.methods {
                Some(_) => self.values.frame_localsplus,
                None => NO_OFFSET,
            },
            pidns_dev: 0,
            pidns_ino: 0,
        }
    }

    /// Bytes the kernel reads of each frame: past every frame field it takes (the entry flag
    /// included), at least 8 more than the farthest offset, within `FRAME_READ`.
    pub fn frame_read(&self) -> u16 {
        let k = &self.kernel;
        let entry = if self.entry_flag == NO_OFFSET {
            0
        } else {
            self.entry_flag
        };
        let far = [
            k.frame_code,
            k.frame_previous,
            k.frame_instr,
            k.frame_owner,
            entry,
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
        (far + 8).min(profiler_common::FRAME_READ as u16)
    }

    /// Bytes the kernel reads of a code object: past its name, file name and first line.
    pub fn code_read(&self) -> u16 {
        let k = &self.kernel;
        let far = k.code_name.max(k.code_filename).max(k.code_firstlineno);
        (far + 8).min(profiler_common::CODE_READ as u16)
    }

    /// Whether the kernel's reads of `FRAME_READ` and `CODE_READ` bytes reach every field the
    /// walker takes (a layout published by a newer interpreter might not fit), and each field it
    /// takes as a word is aligned to its size (it loads them aligned: a pointer at a multiple of
    /// 8, an `int` of 4). CPython's structs are laid out by a C compiler, so theirs always are.
    pub fn fits_kernel_reads(&self) -> bool {
        let k = &self.kernel;
        let entry = if self.entry_flag == NO_OFFSET {
            0
        } else {
            self.entry_flag
        };
        let frame = [
            k.frame_code,
            k.frame_previous,
            k.frame_instr,
            k.frame_owner,
            entry,
        ];
        let instr_size = if k.instr_kind == profiler_common::instr_kind::POINTER {
            8
        } else {
            4
        };
        let aligned = [
            (k.frame_code, 8),
            (k.frame_previous, 8),
            (k.frame_instr, instr_size),
            (k.code_name, 8),
            (k.code_filename, 8),
            (k.code_firstlineno, 4),
        ]
        .iter()
        .all(|&(offset, size)| offset % size == 0);
        aligned
            && frame
                .iter()
                .all(|&o| o as usize + 8 <= profiler_common::FRAME_READ)
            && [k.code_name, k.code_filename, k.code_firstlineno]
                .iter()
                .all(|&o| o as usize + 8 <= profiler_common::CODE_READ)
    }
}

impl Layout {
    /// What the kernel needs to profile process `p`, whose interpreter has this layout: where
    /// its `_PyRuntime` is, and, for a process in a container, its pid namespace.
    pub fn target_info_of(&self, p: &discover::PythonProcess) -> TargetInfo {
        let mut info = self.target_info(p.runtime_addr);
        if let Some(ns) = p.pid_namespace {
            info.pidns_dev = ns.dev;
            info.pidns_ino = ns.ino;
        }
        info
    }
}

/// Checks a layout against the live process before it is trusted without a table (a version
/// newer than any): its thread list must name threads the process has, and the frames of its
/// threads must lead to code objects that read as such. An interpreter that has not started yet
/// passes (there is nothing to check). A process that is starting changes its frames under the
/// read: a failed look is tried again, `LIVE_CHECKS` times in all, `LIVE_CHECK_PAUSE` apart; a
/// layout that is wrong fails every time.
pub fn check_live(
    mem: &impl ProcessMemory,
    layout: &Layout,
    p: &discover::PythonProcess,
) -> Result<(), String> {
    let mut result = check_live_once(mem, layout, p);
    for _ in 1..LIVE_CHECKS {
        if result.is_ok() {
            break;
        }
        std::thread::sleep(LIVE_CHECK_PAUSE);
        result = check_live_once(mem, layout, p);
    }
    result
}

/// Looks at the live process this many times at most, this far apart (`check_live`).
const LIVE_CHECKS: usize = 5;
const LIVE_CHECK_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

fn check_live_once(
    mem: &impl ProcessMemory,
    layout: &Layout,
    p: &discover::PythonProcess,
) -> Result<(), String> {
    let threads = match threads::walk_threads(mem, &layout.target_info_of(p)) {
        Ok(t) => t,
        Err(threads::WalkError::NoInterpreter) => return Ok(()),
        Err(e) => return Err(e.to_string()),
    };
    if threads.is_empty() {
        return Ok(());
    }
    let tids: Vec<u64> = match p.pid_namespace {
        Some(_) => crate::process::namespace::host_tids(p.pid)
            .into_keys()
            .map(u64::from)
            .collect(),
        None => std::fs::read_dir(format!("/proc/{}/task", p.pid))
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default(),
    };
    if !threads.iter().any(|t| tids.contains(&t.tid)) {
        return Err(format!(
            "no thread state names one of the process's threads (read {:?})",
            threads.iter().map(|t| t.tid).collect::<Vec<_>>()
        ));
    }
    // A frame may be popped and its code freed while this runs: one code object that reads
    // right is enough, none at all is not.
    let mut failure = None;
    for frame in threads
        .iter()
        .flat_map(|t| &t.frames)
        .filter(|f| f.code != 0)
    {
        match code::read_code(mem, layout, frame.code, frame.tag) {
            Ok(_) => return Ok(()),
            Err(e) => failure = Some(e),
        }
    }
    match failure {
        Some(e) => Err(format!("no frame's code object reads as one: {e}")),
        None => Ok(()),
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
    /// `_Py_DebugOffsets` of a free-threaded build: its layout comes from there alone (no
    /// built-in table describes its objects).
    FreeThreaded,
    /// `_Py_DebugOffsets` of a version newer than any built-in table, read with the newest
    /// table's member list and checked: used, with a warning.
    Newer,
    /// The version should publish its layout, but what the process holds could not be used
    /// (the reason); the built-in table stands in.
    Fallback(String),
}

/// The newest version with a built-in table.
pub const NEWEST: Version = Version::new(3, 15);

/// The layout of the interpreter in a process: the built-in table for `version`, overridden by
/// what the interpreter publishes about itself (3.13+) where that can be read and checks out.
/// A free-threaded build, or a version newer than any table, must publish a layout that checks
/// out. `runtime_size` is `_PyRuntime`'s size as the ELF file says, where it says.
pub fn layout_of(
    mem: &impl ProcessMemory,
    version: Version,
    runtime_addr: u64,
    runtime_size: Option<u64>,
) -> Result<(Layout, LayoutSource), UnsupportedVersion> {
    if version < Version::new(3, 13) {
        return Ok((layout_for(version)?, LayoutSource::Builtin));
    }
    let newer = version > NEWEST;
    let builtin = if newer {
        layout_for(NEWEST)?
    } else {
        layout_for(version)?
    };
    let published = debug_offsets::read(mem, runtime_addr, version, runtime_size)
        .and_then(|p| Ok((debug_offsets::apply(&p, &builtin)?, p.header.free_threaded)));
    if let Ok((layout, _)) = &published
        && !layout.fits_kernel_reads()
    {
        return Err(UnsupportedVersion::TooWide(version));
    }
    match published {
        Ok((layout, true)) => Ok((layout, LayoutSource::FreeThreaded)),
        Ok((layout, false)) if newer => Ok((layout, LayoutSource::Newer)),
        Ok((layout, false)) => {
            let differences = debug_offsets::disagreements(&builtin, &layout);
            Ok((layout, LayoutSource::Published(differences)))
        }
        Err(e) => {
            let why = e.to_string();
            // The build flag sits where every version keeps it: a free-threaded build has no
            // table to fall back on.
            let free_threaded =
                debug_offsets::read_header(mem, runtime_addr).is_ok_and(|h| h.free_threaded);
            if free_threaded {
                Err(UnsupportedVersion::FreeThreaded { version, why })
            } else if newer {
                Err(UnsupportedVersion::Newer { version, why })
            } else {
                Ok((builtin, LayoutSource::Fallback(why)))
            }
        }
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
        (3, 14) => Ok(v3_14::LAYOUT),
        (3, 15) => Ok(v3_15::LAYOUT),
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
            format!("python 2.7 is not supported (prof-bpf supports CPython {SUPPORTED})")
        );
        for minor in 8..=15 {
            let layout = layout_for(Version::new(3, minor)).unwrap();
            assert_eq!(layout.version, Version::new(3, minor));
        }
        for unsupported in [(2, 7), (3, 6), (3, 7), (3, 16), (4, 0)] {
            assert!(layout_for(Version::new(unsupported.0, unsupported.1)).is_err());
        }
    }

    /// The kernel loads a frame's and a code object's words aligned: a layout (published by a
    /// newer interpreter, say) with a pointer or an `int` off its alignment is refused.
    #[test]
    fn a_misaligned_field_does_not_fit_the_kernel_reads() {
        let layout = layout_for(Version::new(3, 12)).unwrap();
        let mut previous = layout;
        previous.kernel.frame_previous += 4;
        assert!(!previous.fits_kernel_reads());
        let mut firstlineno = layout;
        firstlineno.kernel.code_firstlineno += 2;
        assert!(!firstlineno.fits_kernel_reads());
        let mut lasti = layout_for(Version::new(3, 10)).unwrap();
        assert!(lasti.fits_kernel_reads());
        lasti.kernel.frame_instr += 4;
        assert!(
            lasti.fits_kernel_reads(),
            "an int needs 4-byte alignment only"
        );
        lasti.kernel.frame_instr += 1;
        assert!(!lasti.fits_kernel_reads());
    }

    /// The kernel reads a fixed number of bytes of each frame and code object: every built-in
    /// table's fields lie within them.
    #[test]
    fn every_table_fits_the_kernel_reads() {
        for minor in 8..=15 {
            let layout = layout_for(Version::new(3, minor)).unwrap();
            assert!(layout.fits_kernel_reads(), "3.{minor}");
            assert!(layout.frame_read() as usize <= profiler_common::FRAME_READ);
            assert!(layout.code_read() > layout.kernel.code_name);
            // The kernel's copy of a code object holds every field `read_code` takes.
            let c = &layout.code;
            let far = [
                c.name,
                c.qualname.unwrap_or(0),
                c.filename,
                c.firstlineno,
                c.linetable,
            ];
            assert!(
                far.iter()
                    .all(|&o| o as usize + 8 <= profiler_common::SNAPSHOT_CODE),
                "3.{minor}"
            );
        }
    }

    /// The kernel's copy of a code object's offsets must match userspace's, or the tag the
    /// kernel computes never matches the one userspace checks.
    #[test]
    fn each_table_agrees_with_itself() {
        for minor in 8..=15 {
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
            // A tagged code field from 3.14 (_PyStackRef); owners from 3 up are shims from 3.12.
            assert_eq!(k.frame_code_tag != 0, minor >= 14, "3.{minor}: tag bits");
            assert_eq!(
                k.owner_cstack == 3,
                minor >= 12,
                "3.{minor}: first owner without code"
            );
            assert_eq!(l.base_frame, minor >= 15, "3.{minor}: base frame");
            assert!(!l.free_threaded);
            assert_eq!(l.objects.header, ObjectHeader::Gil);
        }
    }
}
