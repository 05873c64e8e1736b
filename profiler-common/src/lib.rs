//! Wire types shared by the BPF program (`profiler-ebpf`) and userspace (`profiler-userspace`).
//!
//! This is the only code both sides compile. Everything here is `#[repr(C)]` with explicit
//! padding and integer flags (no `bool`), so the two sides agree byte for byte. The kernel writes
//! raw values only (addresses, offsets, counters); decoding happens in userspace.
#![no_std]

/// Frames of one Python stack the kernel records before it marks the stack truncated.
/// A recursion 150 deep plus the module and runner frames fits.
pub const MAX_PYTHON_FRAMES: usize = 192;

/// Python thread states the kernel walks to find the sampled thread's.
pub const MAX_THREADS: u32 = 128;

/// Processes that can be profiled at once.
pub const MAX_TARGETS: u32 = 1024;

/// Distinct stacks the kernel holds between two drains by userspace.
pub const MAX_STACKS: u32 = 32768;

/// Distinct (process, thread, stack) counters the kernel holds between two drains.
pub const MAX_COUNTS: u32 = 65536;

/// Map names, so userspace never spells one as a literal.
pub mod maps {
    pub const TARGETS: &str = "TARGETS";
    pub const STACKS: &str = "STACKS";
    pub const COUNTS_0: &str = "COUNTS_0";
    pub const COUNTS_1: &str = "COUNTS_1";
    pub const ACTIVE_COUNTS: &str = "ACTIVE_COUNTS";
    pub const STATS: &str = "STATS";
    pub const SCRATCH: &str = "SCRATCH";
    pub const CONFIG: &str = "CONFIG";
    pub const OFF_CPU_START: &str = "OFF_CPU_START";
    pub const SWITCH_PROGRAMS: &str = "SWITCH_PROGRAMS";
    pub const PROGRAMS: &str = "PROGRAMS";
    pub const NEW_STACKS: &str = "NEW_STACKS";
}

/// Bytes of the ring buffer that announces new stacks.
pub const NEW_STACKS_BYTES: u32 = 256 * 1024;

/// Announces a stack the kernel stored for the first time, so userspace reads its code objects
/// at once: an imported module's code object may be freed milliseconds later.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NewStack {
    pub pid: u32,
    pub _pad: u32,
    pub stack_id: u64,
}

/// The BPF program attached to the CPU-clock event: filters and finds the thread's frame.
pub const PROGRAM_NAME: &str = "on_cpu_sample";
/// The program `PROGRAM_NAME` tail-calls to walk the frames. Two programs, so the verifier
/// checks the thread-list loop and the frame loop apart instead of their product.
pub const WALK_PROGRAM_NAME: &str = "walk_python_stack";
/// `WALK_PROGRAM_NAME`'s slot in `maps::PROGRAMS`.
pub const WALK_PROGRAM_SLOT: u32 = 0;
/// The program on the `sched:sched_switch` tracepoint (`--idle`): ends a target thread's
/// off-CPU interval when it comes back, and records its stack when it blocks.
pub const SWITCH_PROGRAM_NAME: &str = "on_sched_switch";
/// The frame walker again, as a tracepoint program: a tail call stays within one program type.
pub const SWITCH_WALK_PROGRAM_NAME: &str = "walk_python_stack_on_switch";

/// Marks an offset the running CPython version does not have.
pub const NO_OFFSET: u16 = u16::MAX;

/// How the frame's instruction position is stored in this CPython version.
pub mod instr_kind {
    /// A pointer into the code object's inline bytecode (3.11+ `prev_instr` / `instr_ptr`); the
    /// kernel records it minus the code object's address.
    pub const POINTER: u16 = 0;
    /// A C `int` (`f_lasti` up to 3.10); the kernel records it as is.
    pub const INT: u16 = 1;
}

/// Byte offsets into the interpreter's structures, for one CPython version. Userspace fills it
/// from a built-in table or from `_Py_DebugOffsets`; the kernel checks each offset before use.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyOffsets {
    /// `_PyRuntimeState.interpreters.head`
    pub runtime_interpreters_head: u16,
    /// `PyInterpreterState.threads.head`
    pub interp_threads_head: u16,
    /// `PyThreadState.next`
    pub tstate_next: u16,
    /// `PyThreadState.native_thread_id` (3.11+), or `PyThreadState.thread_id` (a `pthread_t`)
    /// up to 3.10: see `TargetInfo::pthread_tid`.
    pub tstate_native_thread_id: u16,
    /// The pointer in `PyThreadState` that leads to the current frame: `cframe` (3.11, 3.12),
    /// `current_frame` (3.13) or `frame` (up to 3.10).
    pub tstate_frame: u16,
    /// `_PyCFrame.current_frame` when `tstate_frame` points at a cframe, else `NO_OFFSET`.
    pub cframe_current_frame: u16,
    /// Frame: the code object (`f_code` / `f_executable`).
    pub frame_code: u16,
    /// Frame: the caller's frame (`previous` / `f_back`).
    pub frame_previous: u16,
    /// Frame: the instruction position (`prev_instr` / `instr_ptr` / `f_lasti`).
    pub frame_instr: u16,
    /// Frame: `owner` (3.11+). Always a readable offset (0 where the version has no owner):
    /// the kernel reads it unconditionally and compares it with `owner_cstack`.
    pub frame_owner: u16,
    /// Code object: `co_firstlineno`.
    pub code_firstlineno: u16,
    /// Code object: `co_name`.
    pub code_name: u16,
    /// Code object: `co_filename`.
    pub code_filename: u16,
    /// `instr_kind::POINTER` or `instr_kind::INT`.
    pub instr_kind: u16,
    /// Frames whose owner byte equals this are C-stack shims, not code (3.12+);
    /// `NO_CSTACK_OWNER` where the version has none.
    pub owner_cstack: u16,
    /// The GIL's state (`struct _gil_runtime_state`) is reached through a pointer at this
    /// offset in `PyInterpreterState` (`ceval.gil`, 3.12+); `NO_OFFSET` where it sits in
    /// `_PyRuntime` at `gil_in_runtime` (`ceval.gil`, up to 3.11).
    pub gil_ptr_in_interp: u16,
    pub gil_in_runtime: u16,
    /// `_gil_runtime_state.locked` (an int) and `.last_holder` (the holder's thread state, or
    /// the last holder's once released).
    pub gil_locked: u16,
    pub gil_last_holder: u16,
    pub _pad: u16,
}

/// An `owner_cstack` no owner byte can equal.
pub const NO_CSTACK_OWNER: u16 = 0x100;

/// One process the kernel profiles: where its interpreter lives and how it is laid out.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TargetInfo {
    /// Address of `_PyRuntime` in the process.
    pub runtime_addr: u64,
    pub offsets: PyOffsets,
    /// `major << 8 | minor`, for the record.
    pub version: u16,
    /// How the thread state names its thread. `NO_OFFSET`: `tstate_native_thread_id` holds the
    /// kernel's thread id (3.11+). Otherwise it holds a `pthread_t` (up to 3.10), the address of
    /// the C library's thread descriptor, and this is the offset of the thread id in it.
    pub pthread_tid: u16,
    pub _pad: [u8; 4],
}

/// One Python frame as the kernel saw it. Userspace turns `code` + `instr` into a function and a
/// line; `tag` tells a code object from another one allocated later at the same address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PyFrame {
    /// Address of the code object.
    pub code: u64,
    /// `instr_kind::POINTER`: the instruction pointer minus `code`. `instr_kind::INT`: `f_lasti`.
    pub instr: u32,
    /// A hash of the code object's name and file pointers and first line.
    pub tag: u32,
}

/// One step of FxHash over 64-bit words: cheap in BPF, and good enough to key stacks.
#[inline(always)]
pub const fn mix(hash: u64, word: u64) -> u64 {
    (hash.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95)
}

/// `PyFrame::tag` for a code object: the kernel computes it from what it reads, userspace from
/// what it reads later; a difference means the address now holds another code object.
#[inline(always)]
pub const fn code_tag(name: u64, filename: u64, firstlineno: i32) -> u32 {
    (mix(mix(mix(0, name), filename), firstlineno as u64) >> 32) as u32
}

/// A stack is truncated: it was deeper than `MAX_PYTHON_FRAMES`.
pub const STACK_TRUNCATED: u32 = 1;

/// One Python stack, leaf first. Stored once per distinct content in `STACKS`, keyed by its hash.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PyStack {
    pub len: u32,
    /// `STACK_TRUNCATED`, ...
    pub flags: u32,
    pub frames: [PyFrame; MAX_PYTHON_FRAMES],
}

/// What a count in `COUNTS_*` is for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SampleKey {
    /// Process id (tgid) in the initial pid namespace.
    pub pid: u32,
    /// Thread id in the initial pid namespace.
    pub tid: u32,
    /// Key into `STACKS`.
    pub stack_id: u64,
    /// `count_kind::ON_CPU` or `count_kind::OFF_CPU_NS`: what the count counts.
    pub kind: u32,
    pub _pad: u32,
}

/// What the value of a `COUNTS_*` entry counts.
pub mod count_kind {
    /// CPU-clock samples taken while the thread ran this stack.
    pub const ON_CPU: u32 = 0;
    /// Nanoseconds the thread spent off the CPU, asleep or blocked, after leaving it in this
    /// stack (`--idle`).
    pub const OFF_CPU_NS: u32 = 1;
}

/// Switches userspace sets in `maps::CONFIG` (an array of u32, indexed by these).
pub mod config {
    /// Record off-CPU time (`--idle`): the scheduler-switch program stores the stack of a
    /// target thread that blocks and counts its time off the CPU when it comes back.
    pub const IDLE: u32 = 0;
    /// Count only samples of threads that hold the GIL (`--gil`).
    pub const GIL_ONLY: u32 = 1;
    pub const COUNT: u32 = 2;
}

/// Where the scheduler-switch program left a thread that went off the CPU, by thread id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct OffCpuStart {
    pub pid: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns()` when it left.
    pub since_ns: u64,
    pub stack_id: u64,
}

/// Threads that can be off the CPU with a stack recorded at once.
pub const MAX_OFF_CPU_THREADS: u32 = 16384;

/// Per-CPU counters in `STATS`, indexed by this enum. Every sample of a target lands in exactly
/// one of `Recorded` or an error; nothing is dropped silently.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Samples of a target thread recorded into the count maps.
    Recorded = 0,
    /// The sampled thread has no Python thread state (a thread that never ran Python).
    NoThreadState = 1,
    /// Reading the interpreter or thread list failed.
    ReadThreadState = 2,
    /// Reading a frame or code object failed mid-stack (the stack is kept, cut at the fault).
    ReadFrame = 3,
    /// The stack was deeper than `MAX_PYTHON_FRAMES` (the stack is kept, truncated).
    Truncated = 4,
    /// `STACKS` was full: the sample was lost.
    StackMapFull = 5,
    /// The count map was full: the sample was lost.
    CountMapFull = 6,
    /// A target entry had an offset outside the kernel's bounds.
    BadOffsets = 7,
    /// The thread was idle in Python: the thread state had no frame.
    EmptyStack = 8,
    /// The tail call to the frame walker failed (the walker is not loaded).
    TailCall = 9,
    /// `--gil`: the thread did not hold the GIL, so the sample was left out by request.
    GilNotHeld = 10,
    /// Not a sample's fate but a tally: recorded samples whose thread held the GIL.
    GilHeld = 11,
    /// Not a sample's fate but a tally (`--idle`): off-CPU intervals of target threads ended
    /// and counted.
    OffCpu = 12,
    /// `--idle`: the map of threads off the CPU was full: an interval was lost.
    OffCpuMapFull = 13,
}

impl Stat {
    pub const COUNT: u32 = 14;
    pub const ALL: [Stat; Self::COUNT as usize] = [
        Stat::Recorded,
        Stat::NoThreadState,
        Stat::ReadThreadState,
        Stat::ReadFrame,
        Stat::Truncated,
        Stat::StackMapFull,
        Stat::CountMapFull,
        Stat::BadOffsets,
        Stat::EmptyStack,
        Stat::TailCall,
        Stat::GilNotHeld,
        Stat::GilHeld,
        Stat::OffCpu,
        Stat::OffCpuMapFull,
    ];

    /// Whether the sample found the thread outside Python code (no thread state, or no
    /// frame): an honest answer, not a fault.
    pub const fn is_outside_python(self) -> bool {
        matches!(self, Stat::NoThreadState | Stat::EmptyStack)
    }

    /// Whether the counter is a tally alongside the samples' fates, not one of them.
    pub const fn is_tally(self) -> bool {
        matches!(self, Stat::GilHeld | Stat::OffCpu)
    }

    /// Whether the sample was lost to a fault or a limit (as opposed to kept, kept with a
    /// caveat, left out on request, or a tally).
    pub const fn is_loss(self) -> bool {
        !matches!(
            self,
            Stat::Recorded | Stat::ReadFrame | Stat::Truncated | Stat::GilNotHeld
        ) && !self.is_tally()
    }

    pub const fn name(self) -> &'static str {
        match self {
            Stat::Recorded => "recorded",
            Stat::NoThreadState => "no thread state",
            Stat::ReadThreadState => "thread state read fault",
            Stat::ReadFrame => "frame read fault",
            Stat::Truncated => "truncated stack",
            Stat::StackMapFull => "stack map full",
            Stat::CountMapFull => "count map full",
            Stat::BadOffsets => "bad offsets",
            Stat::EmptyStack => "no python frame",
            Stat::TailCall => "tail call failed",
            Stat::GilNotHeld => "without the GIL (left out by --gil)",
            Stat::GilHeld => "with the GIL held",
            Stat::OffCpu => "off-CPU intervals",
            Stat::OffCpuMapFull => "off-CPU map full",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), Copy, made of integers with explicit padding: every bit pattern
    // is valid and there are no implicit padding bytes.
    unsafe impl aya::Pod for super::TargetInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PyStack {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SampleKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OffCpuStart {}
}

// Layout checks: both sides compile these, so a drift breaks the build, not the profile.
const _: () = assert!(core::mem::size_of::<PyOffsets>() == 40);
const _: () = assert!(core::mem::size_of::<TargetInfo>() == 56);
const _: () = assert!(core::mem::size_of::<OffCpuStart>() == 24);
const _: () = assert!(core::mem::size_of::<PyFrame>() == 16);
const _: () = assert!(core::mem::size_of::<SampleKey>() == 24);
const _: () = assert!(core::mem::size_of::<PyStack>() == 8 + 16 * MAX_PYTHON_FRAMES);
