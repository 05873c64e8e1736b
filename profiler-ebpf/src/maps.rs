//! The maps the kernel program shares with userspace. Userspace writes `TARGETS`, flips
//! `ACTIVE_COUNTS` and zeroes the count entries it keeps; the kernel writes the rest, and
//! userspace drains it.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, ProgramArray, RingBuf},
};
use profiler_common::{
    CODE_SNAPSHOTS_BYTES, CodeSeen, ExtraStack, KnownThread, LargeStack, MAX_CODES_SEEN,
    MAX_COUNTS, MAX_EXTRA_STACKS, MAX_FOLLOWED, MAX_KNOWN_THREADS, MAX_LARGE_STACKS,
    MAX_OFF_CPU_THREADS, MAX_PAGE_CHUNKS, MAX_ROW_CHUNKS, MAX_SMALL_STACKS, MAX_TARGETS,
    NEW_STACKS_BYTES, NativeMappings, OffCpuStart, PROCESS_EVENTS_BYTES, PROGRAM_SLOTS, PageChunk,
    RowChunk, STAT_ENTRIES, SampleKey, SmallStack, Stat, TargetInfo, UnwindRow, config, stat_index,
};

use crate::user::Aligned;

/// Processes to profile, by tgid, with their interpreter's address and layout.
#[map]
pub static TARGETS: HashMap<u32, TargetInfo> = HashMap::with_max_entries(MAX_TARGETS, 0);

/// Processes whose forks and execs are followed (`--subprocesses`), by tgid. The fork program
/// adds each child of one.
#[map]
pub static FOLLOWED: HashMap<u32, u8> = HashMap::with_max_entries(MAX_FOLLOWED, 0);

/// `ProcessEvent`s: forks and execs of followed processes, for userspace to act on at once.
#[map]
pub static PROCESS_EVENTS: RingBuf = RingBuf::with_byte_size(PROCESS_EVENTS_BYTES, 0);

// Every hash map is preallocated as built: kernels before 6.1 let perf_event programs use no
// other kind. From 6.1 userspace makes the stack maps non-preallocated before loading
// (profiler-userspace's `bpf::object`): they are most of the maps' memory, and a short command
// then neither waits for nor locks room it does not use.

/// Distinct stacks by content hash, by size: up to `SMALL_STACK_FRAMES` frames, and deeper.
/// Userspace copies and deletes entries as it drains.
#[map]
pub static STACKS_SMALL: HashMap<u64, SmallStack> = HashMap::with_max_entries(MAX_SMALL_STACKS, 0);
#[map]
pub static STACKS_LARGE: HashMap<u64, LargeStack> = HashMap::with_max_entries(MAX_LARGE_STACKS, 0);

/// The native and kernel parts of stacks (`--native`, `--kernel`), by their own hash.
#[map]
pub static EXTRA_STACKS: HashMap<u64, ExtraStack> = HashMap::with_max_entries(MAX_EXTRA_STACKS, 0);

/// Where each thread's thread state is, by thread id, as the thread walk found it.
#[map]
pub static THREADS: LruHashMap<u32, KnownThread> =
    LruHashMap::with_max_entries(MAX_KNOWN_THREADS, 0);

/// `NewStack` notices: userspace wakes on them to read a new stack's code objects at once.
#[map]
pub static NEW_STACKS: RingBuf = RingBuf::with_byte_size(NEW_STACKS_BYTES, 0);

/// `CodeSnapshot`s: copies of code objects a new stack holds, made while they are alive.
#[map]
pub static CODE_SNAPSHOTS: RingBuf = RingBuf::with_byte_size(CODE_SNAPSHOTS_BYTES, 0);

/// The code objects copied already, per process, by address and tag.
#[map]
pub static CODES_SEEN: LruHashMap<CodeSeen, u8> = LruHashMap::with_max_entries(MAX_CODES_SEEN, 0);

/// Sample counts per (process, thread, stack). Two maps so userspace can drain one while the
/// kernel counts into the other: `ACTIVE_COUNTS[0]` says which one is live. An entry whose stack
/// userspace holds outlives the drain, zeroed: the kernel counts into it without storing the
/// stack again.
#[map]
pub static COUNTS_0: PerCpuHashMap<SampleKey, u64> = PerCpuHashMap::with_max_entries(MAX_COUNTS, 0);
#[map]
pub static COUNTS_1: PerCpuHashMap<SampleKey, u64> = PerCpuHashMap::with_max_entries(MAX_COUNTS, 0);
#[map]
pub static ACTIVE_COUNTS: Array<u32> = Array::with_max_entries(1, 0);

/// Per-CPU counters indexed by `profiler_common::stat_index`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_ENTRIES, 0);

/// Switches set by userspace, indexed by `profiler_common::config`.
#[map]
pub static CONFIG: Array<u32> = Array::with_max_entries(config::COUNT, 0);

/// Whether userspace turned switch `index` of `profiler_common::config` on.
#[inline(always)]
pub fn enabled(index: u32) -> bool {
    config_value(index) != 0
}

/// Value `index` of `profiler_common::config` as userspace set it (0 if unset).
#[inline(always)]
pub fn config_value(index: u32) -> u32 {
    CONFIG.get(index).copied().unwrap_or(0)
}

/// Target threads off the CPU, by thread id: where and when they left. LRU, so threads that
/// exit while off the CPU do not fill it.
#[map]
pub static OFF_CPU_START: LruHashMap<u32, OffCpuStart> =
    LruHashMap::with_max_entries(MAX_OFF_CPU_THREADS, 0);

/// Bytes of a thread's data stack read at once (a power of two), `Scratch::window`.
pub const WINDOW: usize = 2048;

/// Slots of `Scratch::code_memo` (a power of two).
pub const CODE_MEMO_SLOTS: usize = 16;

/// A code object's tag, as one sample read it.
///
/// Only within one sample: while the sampled thread is stopped, each of its frames holds a
/// reference to its code object, so an address cannot be freed and reused by another code object
/// before the walk ends. Across samples it can (import time frees and reuses them within
/// milliseconds), which is why there is no longer-lived cache.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CodeMemo {
    pub code: u64,
    pub tag: u32,
    pub sample_seq: u32,
}

/// Slots of `ROW_MEMO` (a power of two).
pub const ROW_MEMO_SLOTS: usize = 512;

/// The unwind row that covers address `pc` of process `pid`, as found in the process's
/// mapping table of `generation` (`NativeMappings::generation`, never 0: a zeroed slot matches
/// nothing); `tabled` 0: the address's file has no table (frame pointers).
///
/// Unlike code objects (`CodeMemo`), an address's row holds across samples: it changes only
/// when the process's mappings do, and userspace then writes the table anew, with a new
/// generation.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RowMemo {
    pub pc: u64,
    pub pid: u32,
    pub generation: u32,
    pub row: UnwindRow,
    pub tabled: u32,
    pub _pad: u32,
}

/// The value of `ROW_MEMO`: rows by address, direct-mapped.
#[repr(C)]
pub struct RowMemos {
    pub slots: [RowMemo; ROW_MEMO_SLOTS],
}

/// Per CPU: the rows the native unwinder found lately (`native::step_frame`). Most of a
/// sample's native frames are return addresses the samples before it met too (the
/// interpreter's own calls), whose row is then one read away instead of two binary searches
/// over tables far larger than the CPU's caches.
#[map]
pub static ROW_MEMO: PerCpuArray<RowMemos> = PerCpuArray::with_max_entries(1, 0);

/// What a sample's programs hand each other across tail calls, and room to build a stack in
/// (far larger than the 512-byte BPF stack).
#[repr(C)]
pub struct Scratch {
    pub pid: u32,
    pub tid: u32,
    /// The thread's id as its thread state knows it (in a container's pid namespace).
    pub python_tid: u32,
    /// Runs of the thread walk so far (`MAX_THREAD_CALLS` at most).
    pub thread_calls: u32,
    /// The next frame to read: the thread's current `_PyInterpreterFrame` (or
    /// `PyFrameObject`) at first.
    pub frame: u64,
    /// The thread walk's next thread state, and the interpreter it walks.
    pub cursor: u64,
    pub interp: u64,
    /// The stack's content hash so far, in two lanes that the walk mixes side by side (code
    /// objects; instruction positions and tags), so a frame waits on one multiply, not three.
    pub hash: u64,
    pub hash2: u64,
    /// Whether the thread held the GIL (1) or not (0).
    pub gil_held: u32,
    /// Whether the walk met a frame that runs code (1) or only shims (0: 3.15's base frame
    /// alone, an eval call that has not pushed its frame yet): no Python frame to record.
    pub code_seen: u32,
    /// How the native unwind ended (a `Stat::Native*`).
    pub native_end: u32,
    /// Read faults of the walk so far (non-zero: stop, and count one `ReadFrame`).
    pub faults: u32,
    /// The native and kernel frames' hash (0 without `--native` or `--kernel`).
    pub native_hash: u64,
    /// The native unwinder's registers, carried from one frame to the next.
    pub rip: u64,
    pub rsp: u64,
    pub rbp: u64,
    /// Native unwinder runs so far (the compatible unwinder's bound).
    pub unwind_calls: u32,
    /// This sample's number on this CPU: a `CodeMemo` of another sample is stale.
    pub sample_seq: u32,
    /// Whether this sample stored its stack for the first time (1): its code objects are then
    /// copied (`snapshot_code`).
    pub new_stack: u32,
    /// The next frame whose code object `python::copy_codes_step` copies (kernels without
    /// `bpf_loop`).
    pub copy_next: u32,
    /// The `NativeMappings::generation` of the target's table when its native unwind began.
    pub native_generation: u32,
    /// The sampled target, copied when the sample starts: its layout and options for every
    /// program of the sample, and for `bpf_loop`'s walk callback (which sees only this entry).
    pub target: profiler_common::TargetInfo,
    /// The code tags this sample has read, by code address (direct-mapped).
    pub code_memo: [CodeMemo; CODE_MEMO_SLOTS],
    /// One frame's or code object's bytes, read at once; twice `FRAME_READ` so an offset masked
    /// below it plus the field's size stays inside.
    pub bytes: Aligned<{ 2 * profiler_common::FRAME_READ + 16 }>,
    /// 3.11+: the bytes of `[window_start, window_end)` of the thread's data stack, read at
    /// once (`python::load_frame`); empty when `window_end` is 0. One more `FRAME_READ` of room
    /// so a frame at a masked offset stays inside.
    pub window: Aligned<{ WINDOW + profiler_common::FRAME_READ }>,
    pub window_start: u64,
    pub window_end: u64,
    pub stack: LargeStack,
    /// Where each frame of `stack` was, for `snapshot_code`'s read of a frame's first local.
    pub frame_addrs: [u64; profiler_common::MAX_PYTHON_FRAMES],
    pub extra: ExtraStack,
}

/// Which `SCRATCH` entry a program uses: CPU-clock samples and scheduler switches each have
/// their own, so neither can see the other's half-built stack.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Slot {
    Sample = 0,
    Switch = 1,
}

#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(2, 0);

/// The tail-call table of the CPU-clock programs: `WALK_PROGRAM_SLOT` holds the frame walker
/// the kernel can run, `UNWIND_PROGRAM_SLOT` the native unwinder, `THREADS_PROGRAM_SLOT`
/// `find_thread_state` and, without `bpf_loop`, `COPY_CODE_PROGRAM_SLOT` `copy_code_objects`.
#[map]
pub static PROGRAMS: ProgramArray = ProgramArray::with_max_entries(PROGRAM_SLOTS, 0);

/// Unwind tables of every file userspace loaded, one after another (`NativeMapping` says where
/// a file's rows are).
#[map]
pub static UNWIND_ROWS: Array<RowChunk> = Array::with_max_entries(MAX_ROW_CHUNKS, 0);

/// Page indexes of the tables in `UNWIND_ROWS` (`NativeMapping` says where a file's is).
#[map]
pub static PAGE_INDEX: Array<PageChunk> = Array::with_max_entries(MAX_PAGE_CHUNKS, 0);

/// Per target with `--native`: its executable mappings and their tables.
#[map]
pub static NATIVE_MAPPINGS: HashMap<u32, NativeMappings> =
    HashMap::with_max_entries(MAX_TARGETS, 0);

/// The tail-call table of the scheduler-switch programs (a table serves one program type):
/// slot `WALK_PROGRAM_SLOT` holds the frame walker the kernel can run, `THREADS_PROGRAM_SLOT`
/// `find_thread_state_on_switch` and, without `bpf_loop`, `COPY_CODE_PROGRAM_SLOT`
/// `copy_code_objects_on_switch`.
#[map]
pub static SWITCH_PROGRAMS: ProgramArray = ProgramArray::with_max_entries(PROGRAM_SLOTS, 0);

/// Counts `stat` for the program using scratch `slot` (each kind of program has its own set of
/// counters, `profiler_common::stat_index`).
#[inline(always)]
pub fn count(slot: Slot, stat: Stat) {
    if let Some(slot) = STATS.get_ptr_mut(stat_index(stat, slot == Slot::Switch)) {
        // SAFETY: a per-CPU slot is only touched by this CPU, and programs do not nest on the
        // same CPU for one perf event.
        unsafe { *slot += 1 };
    }
}
