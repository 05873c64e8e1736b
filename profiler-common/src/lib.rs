//! Wire types shared by the BPF program (`profiler-ebpf`) and userspace (`profiler-userspace`).
//!
//! This is the only code both sides compile. Everything here is `#[repr(C)]` with explicit
//! padding and integer flags (no `bool`), so the two sides agree byte for byte. The kernel writes
//! raw values only (addresses, offsets, counters); decoding happens in userspace.
#![no_std]

/// Frames of one Python stack the kernel records before it marks the stack truncated: recursive
/// parsers, tree walkers and symbolic code go hundreds deep.
pub const MAX_PYTHON_FRAMES: usize = 1024;

/// Frames the walker program reads per run; it tail-calls itself for the next ones, so the
/// verifier checks a bounded loop and the depth costs only what it reads.
pub const FRAMES_PER_CALL: usize = 128;

/// A stack of at most this many frames is stored in `maps::STACKS_SMALL`, a deeper one in
/// `maps::STACKS_LARGE`: a map's memory follows the depth of what it holds.
pub const SMALL_STACK_FRAMES: usize = 64;

/// Thread states the kernel walks per run when a thread is not in `maps::THREADS` yet; it
/// tail-calls itself for the next ones, up to `MAX_THREAD_CALLS` runs.
pub const THREADS_PER_CALL: u32 = 128;
pub const MAX_THREAD_CALLS: u32 = 12;

/// Threads whose thread state the kernel keeps by thread id (a 1000-thread server fits many
/// times over); checked on every use, so a stale entry costs one read and a new walk.
pub const MAX_KNOWN_THREADS: u32 = 65536;

/// Bytes read at once from a frame (every field the walker needs lies in them, in every
/// version) and from a code object (its name, file name and first line).
pub const FRAME_READ: usize = 128;
pub const CODE_READ: usize = 248;

/// Processes that can be profiled at once.
pub const MAX_TARGETS: u32 = 1024;

/// Distinct stacks the kernel holds between two drains by userspace, by size.
pub const MAX_SMALL_STACKS: u32 = 16384;
pub const MAX_LARGE_STACKS: u32 = 512;
/// Distinct native-and-kernel stack parts (`--native`, `--kernel`) between two drains.
pub const MAX_EXTRA_STACKS: u32 = 8192;

/// Distinct (process, thread, stack) counters the kernel holds between two drains.
pub const MAX_COUNTS: u32 = 65536;

/// Map names, so userspace never spells one as a literal.
pub mod maps {
    pub const TARGETS: &str = "TARGETS";
    pub const STACKS_SMALL: &str = "STACKS_SMALL";
    pub const STACKS_LARGE: &str = "STACKS_LARGE";
    pub const EXTRA_STACKS: &str = "EXTRA_STACKS";
    pub const THREADS: &str = "THREADS";
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
    pub const UNWIND_ROWS: &str = "UNWIND_ROWS";
    pub const NATIVE_MAPPINGS: &str = "NATIVE_MAPPINGS";
    pub const PAGE_INDEX: &str = "PAGE_INDEX";
    pub const FOLLOWED: &str = "FOLLOWED";
    pub const PROCESS_EVENTS: &str = "PROCESS_EVENTS";
    pub const CODE_SNAPSHOTS: &str = "CODE_SNAPSHOTS";
    pub const CODES_SEEN: &str = "CODES_SEEN";
}

/// Processes whose children the kernel follows (`--subprocesses`): a forked child of one is
/// followed too, and profiled from its first instruction if its parent was.
pub const MAX_FOLLOWED: u32 = 16384;

/// Bytes of the ring buffer of fork, exec and exit events.
pub const PROCESS_EVENTS_BYTES: u32 = 256 * 1024;

/// What a `ProcessEvent` reports.
pub mod process_event {
    /// `pid` was forked by `parent`; if the parent is a target, the child is one already, with
    /// the parent's layout (a forked child has the same address space).
    pub const FORK: u32 = 0;
    /// `pid` exec'd a new program: it is no longer a target (its interpreter, if any, is
    /// another); userspace looks at what it runs now.
    pub const EXEC: u32 = 1;
    /// Target `pid`'s last thread exited: it is no longer a target (its pid may be reused);
    /// userspace retires it once its last counts are drained.
    pub const EXIT: u32 = 2;
}

/// A fork, exec or exit of a followed process, reported as it happens so userspace registers
/// new processes and retires ended ones within milliseconds instead of at the next /proc scan.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessEvent {
    /// `process_event::*`.
    pub kind: u32,
    /// The process (tgid) forked, exec'd or ended, in the initial pid namespace.
    pub pid: u32,
    /// Its parent (the forking process); 0 for an exec or exit.
    pub parent: u32,
    pub _pad: u32,
}

/// The fork, exec and exit programs (`--subprocesses`, `--all`).
pub const FORK_PROGRAM_NAME: &str = "on_process_fork";
pub const EXEC_PROGRAM_NAME: &str = "on_process_exec";
pub const EXIT_PROGRAM_NAME: &str = "on_process_exit";

/// Bytes of the ring buffer that announces new stacks.
pub const NEW_STACKS_BYTES: u32 = 256 * 1024;

/// Bytes of the ring buffer of code object copies (`CodeSnapshot`): about a thousand between
/// two reads by userspace, which wakes on the new stack that comes with them.
pub const CODE_SNAPSHOTS_BYTES: u32 = 2 * 1024 * 1024;

/// Code objects (per process, by address and tag) the kernel has copied and need not copy
/// again; one it forgot is copied once more.
pub const MAX_CODES_SEEN: u32 = 16384;

/// Bytes copied of a code object (its header: every field naming it lies within), of the
/// `str` object of its name, of that of its file name and of its line table's `bytes`
/// object, each from the object's start. A part that does not fit is read by userspace from the
/// live object, as any code object's parts were before.
pub const SNAPSHOT_CODE: usize = 256;
pub const SNAPSHOT_NAME: usize = 128;
pub const SNAPSHOT_FILENAME: usize = 384;
pub const SNAPSHOT_LINETABLE: usize = 2048;

/// `CodeSnapshot::parts` bits: which parts were copied.
pub mod snapshot_part {
    pub const CODE: u32 = 1;
    pub const NAME: u32 = 2;
    pub const FILENAME: u32 = 4;
    pub const LINETABLE: u32 = 8;
}

/// A code object as the kernel copied it the first time a new stack held it: in the sample's
/// interrupt, while the frame running it kept it alive. A module's body or an `exec`'d snippet
/// is freed as soon as it has run, often before userspace could read it; named from this copy,
/// its frames keep their names and lines.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CodeSnapshot {
    pub pid: u32,
    pub tag: u32,
    pub code: u64,
    /// Where the name, file name and line table objects were (their pointers in the code
    /// object), 0 if not copied.
    pub name_addr: u64,
    pub filename_addr: u64,
    pub linetable_addr: u64,
    /// Up to 3.10 (`TargetInfo::frame_first_local`): the first local of the frame that ran
    /// the code object when it was copied, and that object's type (a method's `self` or
    /// `cls`, and its class or metaclass), 0 where not read. The object may be gone by the
    /// time userspace looks; its type, a class, lives on.
    pub first_local: u64,
    pub first_local_type: u64,
    /// `snapshot_part::*` bits.
    pub parts: u32,
    /// Bytes copied of the name, file name and line table objects: the whole buffer, or less
    /// when that much could not be read (an object near the end of its mapping).
    pub name_len: u32,
    pub filename_len: u32,
    pub linetable_len: u32,
    pub header: [u8; SNAPSHOT_CODE],
    pub name: [u8; SNAPSHOT_NAME],
    pub filename: [u8; SNAPSHOT_FILENAME],
    pub linetable: [u8; SNAPSHOT_LINETABLE],
}

/// `CODES_SEEN`'s key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CodeSeen {
    pub pid: u32,
    pub tag: u32,
    pub code: u64,
}

/// Announces a stack the kernel stored for the first time, so userspace reads its code objects
/// at once: an imported module's code object may be freed milliseconds later.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NewStack {
    pub pid: u32,
    /// Whether it was stored in `STACKS_LARGE` (1) or `STACKS_SMALL` (0).
    pub large: u32,
    pub stack_id: u64,
}

/// The BPF program attached to the CPU-clock event: filters and finds the thread's frame.
pub const PROGRAM_NAME: &str = "on_cpu_sample";
/// The program `PROGRAM_NAME` tail-calls to walk the frames. Two programs, so the verifier
/// checks the thread-list loop and the frame loop apart instead of their product.
pub const WALK_PROGRAM_NAME: &str = "walk_python_stack";
/// `WALK_PROGRAM_NAME`'s slot in `maps::PROGRAMS`.
pub const WALK_PROGRAM_SLOT: u32 = 0;
/// The program on the `sched_switch` raw tracepoint (`--idle`): ends a target thread's
/// off-CPU interval when it comes back, and records its stack when it blocks.
pub const SWITCH_PROGRAM_NAME: &str = "on_sched_switch";
/// The frame walker again, as a raw tracepoint program: a tail call stays within one program
/// type.
pub const SWITCH_WALK_PROGRAM_NAME: &str = "walk_python_stack_on_switch";
/// The frame walkers that walk a whole stack in one run with `bpf_loop` (5.17+), loaded in
/// `WALK_PROGRAM_SLOT` instead of the tail-called ones where the kernel has it: the verifier
/// checks their loop body once, not each of `FRAMES_PER_CALL` iterations.
pub const WALK_LOOP_PROGRAM_NAME: &str = "walk_python_stack_loop";
pub const SWITCH_WALK_LOOP_PROGRAM_NAME: &str = "walk_python_stack_on_switch_loop";
/// The program that unwinds the native stack (`--native`), tail-called before the walker.
pub const UNWIND_PROGRAM_NAME: &str = "unwind_native_stack";
/// `UNWIND_PROGRAM_NAME`'s slot in `maps::PROGRAMS`.
pub const UNWIND_PROGRAM_SLOT: u32 = 1;
/// The thread-list walker, in `maps::PROGRAMS` (and `SWITCH_PROGRAMS`) at this slot.
pub const THREADS_PROGRAM_SLOT: u32 = 2;
pub const THREADS_PROGRAM_NAME: &str = "find_thread_state";
pub const SWITCH_THREADS_PROGRAM_NAME: &str = "find_thread_state_on_switch";
/// The native unwinder for kernels without `bpf_loop` or `bpf_task_pt_regs` (before 5.17):
/// a few frames per run, tail-calling itself.
pub const UNWIND_COMPAT_PROGRAM_NAME: &str = "unwind_native_stack_compat";
/// The program that copies a new stack's code objects on kernels without `bpf_loop` (which
/// copy them in the walker's loop), a few per run, tail-calling itself; and its slot in
/// `maps::PROGRAMS` (and `SWITCH_PROGRAMS`, for `SWITCH_COPY_CODE_PROGRAM_NAME`).
pub const COPY_CODE_PROGRAM_NAME: &str = "copy_code_objects";
pub const SWITCH_COPY_CODE_PROGRAM_NAME: &str = "copy_code_objects_on_switch";
pub const COPY_CODE_PROGRAM_SLOT: u32 = 3;
/// Code objects `COPY_CODE_PROGRAM_NAME` copies per run, leaf first. The chain of tail calls
/// stops at the kernel's limit (33 programs a sample, shared with the walker, the thread walk
/// and the native unwinder): the outermost frames' code objects are then not copied
/// (`Stat::CodeCopiesCut`), and userspace reads them while the process lives.
pub const COPY_CODES_PER_CALL: u32 = 8;
/// Slots in `maps::PROGRAMS`.
pub const PROGRAM_SLOTS: u32 = 4;

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
    /// Frames whose owner byte is this or above are shims that run no code (3.12+): 3.12 and
    /// 3.13's `FRAME_OWNED_BY_CSTACK` (3), 3.14+'s `FRAME_OWNED_BY_INTERPRETER` (3) and
    /// `FRAME_OWNED_BY_CSTACK` (4, 3.14 only); `NO_CSTACK_OWNER` where the version has none.
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
    /// Low bits of the frame's code field that are a tag, not part of the address, cleared
    /// before use: 3 where `f_executable` is a `_PyStackRef` (3.14+, `Py_TAG_BITS`), else 0.
    pub frame_code_tag: u16,
    /// The garbage collector's `collecting` flag (an int, non-zero while a collection runs):
    /// at this offset in `PyInterpreterState` (`gc.collecting`, 3.9+), or `NO_OFFSET` where it
    /// sits in `_PyRuntime` at `gc_collecting_in_runtime` (`gc.collecting`, 3.8). Both
    /// `NO_OFFSET`: not known, no sample is marked.
    pub gc_collecting_in_interp: u16,
    pub gc_collecting_in_runtime: u16,
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
    /// Frame: a byte that is non-zero on the first frame of an eval call (3.11's
    /// `_PyInterpreterFrame.is_entry`), or `NO_OFFSET`. The kernel sets `PY_ENTRY_FRAME` in such
    /// a frame's `instr`, so userspace can match Python frames to native eval calls.
    pub frame_is_entry: u16,
    /// `target_options::*` bits.
    pub options: u16,
    /// Bytes the walker reads of each frame and of a code object: past every field it takes,
    /// at most `FRAME_READ` and `CODE_READ` (userspace refuses a layout that needs more).
    pub frame_read: u16,
    pub code_read: u16,
    /// `_PyThreadStateImpl.asyncio_running_task` (3.14+, `record --async-aware`): the kernel
    /// records the thread's running asyncio task with each stack. `NO_OFFSET`: not recorded.
    pub tstate_running_task: u16,
    /// Code object: the pointer to the name a frame is shown by (`co_qualname` from 3.11, else
    /// `co_name`) and to the line table (`co_linetable`, or `co_lnotab` up to 3.9), for the
    /// copy the kernel makes of a code object it has not met before (`CodeSnapshot`).
    pub code_shown_name: u16,
    pub code_linetable: u16,
    /// Frame: its first local (`PyFrameObject.f_localsplus[0]`, up to 3.10), which a method's
    /// code object names `self` or `cls`; copied with the code object (`CodeSnapshot`) so
    /// userspace can find the method's class where the code object has no `co_qualname`.
    /// `NO_OFFSET` from 3.11.
    pub frame_first_local: u16,
    /// The target's pid namespace (device and inode of its nsfs file) when it is not the one
    /// the kernel's own ids are in (a container), else 0 and 0. Its thread states name threads
    /// by their ids in that namespace, so the kernel asks for the sampled thread's id there.
    pub pidns_dev: u64,
    pub pidns_ino: u64,
}

/// What a target wants recorded besides its Python frames (`TargetInfo::options`).
pub mod target_options {
    /// Kernel frames of samples taken in the kernel (`--kernel`).
    pub const KERNEL_STACKS: u16 = 1;
    /// A free-threaded build: no thread holds a GIL, so a running collection marks the sample of
    /// any thread (the collector stops the world: no other thread runs Python code meanwhile).
    /// With a GIL, only the thread holding it is the collector's.
    pub const FREE_THREADED: u16 = 2;
    /// `--async-aware` on 3.11-3.13, which keep no thread's running task where the kernel can
    /// find it: the kernel records the outermost frame owned by a generator
    /// (`FRAME_OWNED_BY_GENERATOR`) in `PyStack::task`, the frame embedded in the running task's
    /// coroutine object, and userspace finds the task whose coroutine that is.
    pub const OUTERMOST_COROUTINE: u16 = 4;
    /// `--native`: the native stack is unwound where the target has a mapping table (so a
    /// sample of a target without this option skips the table's lookup).
    pub const NATIVE_STACKS: u16 = 8;
}

/// `_PyInterpreterFrame.owner` of a generator's or coroutine's frame, 3.11-3.13
/// (Include/internal/pycore_frame.h `FRAME_OWNED_BY_GENERATOR`).
pub const FRAME_OWNED_BY_GENERATOR: u8 = 1;

/// Set in `PyFrame::instr` on the first frame of an eval call (see `TargetInfo::frame_is_entry`).
/// Instruction offsets never reach it.
pub const PY_ENTRY_FRAME: u32 = 1 << 31;

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
/// The sample was taken while the interpreter's garbage collector ran in this thread
/// (`PyOffsets::gc_collecting_in_interp`): userspace shows a `<GC>` frame above its Python
/// frames. Part of the stack's id, so the same frames in and out of a collection count apart.
pub const STACK_IN_GC: u32 = 2;

/// One Python stack, leaf first, as stored by content hash: the first `len` of `N` frames, and
/// the id of its native and kernel part in `EXTRA_STACKS` (0: none).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PyStack<const N: usize> {
    pub len: u32,
    /// `STACK_TRUNCATED`, `STACK_IN_GC`.
    pub flags: u32,
    pub extra: u64,
    /// With `TargetInfo::tstate_running_task`: the address of the asyncio task the thread was
    /// running; with `target_options::OUTERMOST_COROUTINE`: the address of its outermost
    /// coroutine's frame; else 0. Part of the stack's id, as the flags are.
    pub task: u64,
    pub frames: [PyFrame; N],
}

/// A stack of up to `SMALL_STACK_FRAMES` frames (`STACKS_SMALL`).
pub type SmallStack = PyStack<SMALL_STACK_FRAMES>;
/// A stack of up to `MAX_PYTHON_FRAMES` frames (`STACKS_LARGE`, and the walker's scratch: its
/// first bytes are a `SmallStack`).
pub type LargeStack = PyStack<MAX_PYTHON_FRAMES>;

impl<const N: usize> PyStack<N> {
    /// A stack with no frames: userspace's starting point for building one (tests, `dump`).
    pub const EMPTY: Self = Self {
        len: 0,
        flags: 0,
        extra: 0,
        task: 0,
        frames: [PyFrame {
            code: 0,
            instr: 0,
            tag: 0,
        }; N],
    };
}

/// The native and kernel part of a sample (`--native`, `--kernel`), stored once per content in
/// `EXTRA_STACKS`, its id mixed into the stack's.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExtraStack {
    /// Native frames recorded (0 without `--native`).
    pub native_len: u32,
    /// How the native unwind ended: a `Stat::Native*` value (0 without `--native`).
    pub native_end: u32,
    /// Kernel frames recorded (`--kernel`; 0 when the sample was taken in user mode).
    pub kernel_len: u32,
    pub _pad: u32,
    /// Instruction pointers, leaf first: the one sampled when the part was first stored (a
    /// count's `SampleKey::leaf` stands in its place), then return addresses.
    pub native: [u64; MAX_NATIVE_FRAMES],
    /// Kernel instruction pointers, leaf first.
    pub kernel: [u64; MAX_KERNEL_FRAMES],
}

impl ExtraStack {
    pub const EMPTY: Self = Self {
        native_len: 0,
        native_end: 0,
        kernel_len: 0,
        _pad: 0,
        native: [0; MAX_NATIVE_FRAMES],
        kernel: [0; MAX_KERNEL_FRAMES],
    };
}

/// A thread the kernel found in its interpreter's thread list: where its thread state is, kept
/// by (host) thread id in `maps::THREADS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KnownThread {
    pub tstate: u64,
    pub interp: u64,
    /// The process it belongs to (a thread id reused by another process is not it).
    pub pid: u32,
    pub _pad: u32,
    /// The thread's CPU time its kept samples stand for, in ns of its own CPU clock
    /// (`cpu_credit`); 0 until its first sample.
    pub cpu_credit: u64,
}

/// How far the CPU time a thread's kept samples stand for may run ahead of the CPU time it
/// used: at least this many ns...
pub const CPU_CREDIT_SLACK_NS: u64 = 50_000_000;
/// ...and at least this many sample periods: a thread sharing its CPU gets a binomial count of
/// samples, which wanders about its CPU time by the square root of the count, and a bound
/// within reach of that wandering would cut its share.
pub const CPU_CREDIT_SLACK_PERIODS: u64 = 25;

/// Whether a sample of a thread whose CPU clock reads `runtime` ns is kept, and the thread's
/// credit after it (`KnownThread::cpu_credit`, 0 for its first sample), at one sample per
/// `period` ns of a CPU's time.
///
/// A CPU-clock sample stands for a period of its CPU's wall time and goes to the thread running
/// then, but the thread's CPU time leaves out time its CPU spent elsewhere: under a hypervisor,
/// time the host gave to another guest (steal), for which the first sample after it is charged.
/// There a thread gets more samples than its CPU time explains (1.6 to 1.8 times, measured here
/// while the host took much of the VM's time). The credit starts the slack behind the thread's
/// CPU time at its first sample; each kept sample adds `period`; a sample that would take it
/// more than the slack past the thread's CPU time is left out. So a thread never has more
/// samples than its CPU time explains, give or take twice the slack, and one whose samples
/// follow its CPU time keeps them all.
pub const fn cpu_credit(credit: u64, runtime: u64, period: u64) -> (u64, bool) {
    let slack = if CPU_CREDIT_SLACK_PERIODS * period > CPU_CREDIT_SLACK_NS {
        CPU_CREDIT_SLACK_PERIODS * period
    } else {
        CPU_CREDIT_SLACK_NS
    };
    // Never 0 once set, which would start it again.
    let credit = match credit {
        0 => {
            if runtime > slack {
                runtime - slack
            } else {
                1
            }
        }
        c => c,
    };
    if credit + period > runtime + slack {
        (credit, false)
    } else {
        (credit + period, true)
    }
}

/// Kernel frames recorded with `--kernel`.
pub const MAX_KERNEL_FRAMES: usize = 64;

/// Native frames the kernel unwinds before it stops (counted as `Stat::NativeTruncated`).
pub const MAX_NATIVE_FRAMES: usize = 256;

/// The unwinder for kernels without `bpf_loop` (before 5.17) unwinds `COMPAT_FRAMES_PER_CALL`
/// frames per run and tail-calls itself for up to `COMPAT_MAX_CALLS` runs: it stops after
/// `COMPAT_NATIVE_FRAMES`, fewer than `MAX_NATIVE_FRAMES`, as each run's frames are unrolled.
pub const COMPAT_FRAMES_PER_CALL: usize = 8;
pub const COMPAT_MAX_CALLS: u32 = 8;
pub const COMPAT_NATIVE_FRAMES: usize = COMPAT_FRAMES_PER_CALL * COMPAT_MAX_CALLS as usize;

/// Executable mappings of one process the kernel can unwind through.
pub const MAX_MAPPINGS: usize = 256;
/// Steps of the kernel's binary search over one process's mappings (2^8 = `MAX_MAPPINGS`).
pub const MAPPING_SEARCH_STEPS: usize = 8;

/// Unwind rows per element of `maps::UNWIND_ROWS` (one map update writes this many).
pub const ROWS_PER_CHUNK: usize = 1024;
/// Elements of `maps::UNWIND_ROWS`: 2048 * 1024 rows of 8 bytes, 16 MiB.
pub const MAX_ROW_CHUNKS: u32 = 2048;
/// Rows one ELF file's table may hold; the kernel's binary search takes this many steps' log2.
pub const MAX_ROWS_PER_TABLE: usize = 1 << ROW_SEARCH_STEPS;
pub const ROW_SEARCH_STEPS: usize = 21;

/// How a row finds the caller's frame (`UnwindRow::kind`).
pub mod row_kind {
    /// CFA = rsp + 8 * `cfa_offset`.
    pub const CFA_RSP: u8 = 0;
    /// CFA = rbp + 8 * `cfa_offset`.
    pub const CFA_RBP: u8 = 1;
    /// A PLT entry: CFA = rsp + 8 * `cfa_offset` (+ 8 once the entry has pushed its argument).
    pub const PLT: u8 = 2;
    /// The return address is undefined: the outermost frame (`_start`, `clone3`).
    pub const END: u8 = 3;
    /// A rule the kernel does not evaluate (a DWARF expression, another CFA register).
    pub const UNSUPPORTED: u8 = 4;
    /// No call frame information covers these addresses.
    pub const NONE: u8 = 5;
}

/// One row of a compact unwind table: from `pc` (an address in the ELF file, as linked) up to the
/// next row's, how to find the caller. The return address is always at CFA - 8 (rows where the
/// CFI says otherwise are `UNSUPPORTED`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindRow {
    pub pc: u32,
    /// In 8-byte units (frames up to 512 KiB; x86-64 CFA offsets are multiples of 8).
    pub cfa_offset: u16,
    /// `row_kind::*`.
    pub kind: u8,
    /// The caller's rbp is saved at CFA + 8 * `rbp_offset`; 0: rbp is unchanged.
    pub rbp_offset: i8,
}

/// One native unwind step, as both the kernel (`profiler-ebpf/src/native.rs`) and `dump --native`
/// take it: from the frame at (`pc`, `rsp`, `rbp`) to its caller's (return address, CFA, rbp).
/// `row` is the row covering the frame's pc, or `None` when its file has no table (the frame
/// pointer chain is trusted then); `pc` is the frame's own pc (the PLT rule looks at its low
/// bits). `read` reads a word of the thread's stack.
#[inline(always)]
pub fn unwind_step(
    row: Option<UnwindRow>,
    pc: u64,
    rsp: u64,
    rbp: u64,
    mut read: impl FnMut(u64) -> Option<u64>,
) -> Result<(u64, u64, u64), Stat> {
    let (cfa, rbp_slot) = match row {
        None => (rbp.wrapping_add(16), -2i64),
        Some(row) => {
            let offset = (row.cfa_offset as u64) * 8;
            let cfa = match row.kind {
                row_kind::CFA_RSP => rsp.wrapping_add(offset),
                row_kind::CFA_RBP => rbp.wrapping_add(offset),
                // The PLT entry pushes once it is 11 bytes in.
                row_kind::PLT => rsp.wrapping_add(offset + (((pc & 15) >= 11) as u64) * 8),
                row_kind::END => return Err(Stat::NativeComplete),
                row_kind::UNSUPPORTED => return Err(Stat::NativeUnsupported),
                _ => return Err(Stat::NativeNoRow),
            };
            (cfa, row.rbp_offset as i64)
        }
    };
    if cfa <= rsp {
        return Err(Stat::NativeBadFrame);
    }
    let ra = read(cfa - 8).ok_or(Stat::NativeReadFault)?;
    let new_rbp = if rbp_slot != 0 {
        read(cfa.wrapping_add((rbp_slot * 8) as u64)).ok_or(Stat::NativeReadFault)?
    } else {
        rbp
    };
    Ok((ra, cfa, new_rbp))
}

/// A table's page index: for each 4 KiB page of code from the table's first row's, the row that
/// covers the page's first byte. The kernel searches only the rows between a page's entry and the
/// next page's (a cache line or two) instead of the whole table.
pub const PAGE_SHIFT: u32 = 12;
/// Page index entries per element of `maps::PAGE_INDEX`.
pub const PAGES_PER_CHUNK: usize = 2048;
/// Elements of `maps::PAGE_INDEX`: 1024 * 2048 pages, 8 GiB of code, 8 MiB of map.
pub const MAX_PAGE_CHUNKS: u32 = 1024;

/// `PAGES_PER_CHUNK` page index entries (row numbers within the file's table).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PageChunk {
    pub rows: [u32; PAGES_PER_CHUNK],
}

/// `ROWS_PER_CHUNK` rows: one element of `maps::UNWIND_ROWS`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RowChunk {
    pub rows: [UnwindRow; ROWS_PER_CHUNK],
}

/// One executable mapping of a process and where its unwind table is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NativeMapping {
    pub start: u64,
    pub end: u64,
    /// Address in the process minus address in the ELF file.
    pub bias: u64,
    /// First row of the file's table in `maps::UNWIND_ROWS` (chunk * `ROWS_PER_CHUNK` + slot).
    pub rows_start: u32,
    /// Rows in the table; 0: no table, unwind with frame pointers.
    pub rows_len: u32,
    /// First entry of the table's page index in `maps::PAGE_INDEX`.
    pub pages_start: u32,
    /// Entries in the page index: one per page from `first_page` to the last row's page.
    pub pages_len: u32,
    /// The page (ELF address >> `PAGE_SHIFT`) of the table's first row.
    pub first_page: u32,
    pub _pad: u32,
}

/// A process's executable mappings, sorted by `start`: the value of `maps::NATIVE_MAPPINGS`.
/// A target with an entry there gets native stacks.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NativeMappings {
    pub len: u32,
    /// Which write of this process's entry this is (never 0, different from the last write's):
    /// the kernel's memo of rows found (`maps::ROW_MEMO`) holds only for the same generation.
    pub generation: u32,
    pub mappings: [NativeMapping; MAX_MAPPINGS],
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
    /// With native frames: the address of the first (the instruction sampled), which the
    /// stack's native part (`STACKS`' `extra`) leaves out of its hash, so a stack is stored
    /// once, not once for every instruction of a hot loop it was sampled at. Its stored
    /// native part holds the address it was first sampled at: this one replaces it. 0 without
    /// native frames.
    pub leaf: u64,
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
    /// Byte offset of `pid` (the thread id) in the kernel's `struct task_struct`, read from its
    /// BTF by userspace: the scheduler-switch program reads the incoming thread's id there.
    pub const TASK_PID_OFFSET: u32 = 2;
    /// Follow every process's forks and execs (`--all`), not just the `FOLLOWED` ones.
    pub const FOLLOW_ALL: u32 = 3;
    /// Byte offset of `tgid` in `struct task_struct` (from BTF): the fork program reads the
    /// parent's and the child's process ids there.
    pub const TASK_TGID_OFFSET: u32 = 4;
    /// Byte offset of the task's state (`__state`, or `state` before 5.14) in `struct
    /// task_struct`, from BTF: the switch program reads whether the outgoing thread blocked.
    pub const TASK_STATE_OFFSET: u32 = 5;
    // 6 was the generation of a code-tag cache, removed: every frame's tag is read.
    /// Byte offset of `stack` (the kernel stack's base) in `struct task_struct`, from BTF, for
    /// kernels without `bpf_task_pt_regs` (before 5.15): the user registers of a sample taken in
    /// the kernel are at the top of that stack.
    pub const TASK_STACK_OFFSET: u32 = 7;
    /// Byte offset of `signal` (the process's shared `struct signal_struct *`) in `struct
    /// task_struct`, from BTF: the exit program reads whether a process's last thread exited.
    pub const TASK_SIGNAL_OFFSET: u32 = 8;
    /// Byte offset of `live` (its threads not yet exiting) in `struct signal_struct`, from BTF.
    pub const SIGNAL_LIVE_OFFSET: u32 = 9;
    /// Byte offset of `mm` (the task's memory, NULL once an exiting thread let it go) in
    /// `struct task_struct`, from BTF: a sample whose user reads failed tells an exiting thread
    /// by it. 0 if the BTF could not be read (such samples keep the label of what failed).
    pub const TASK_MM_OFFSET: u32 = 10;
    /// Byte offset of the task's CPU time (`se.sum_exec_runtime`, ns) in `struct task_struct`,
    /// from BTF: a sample beyond its thread's CPU time is left out (`cpu_credit`). 0 if the
    /// BTF could not be read (every sample is kept).
    pub const TASK_RUNTIME_OFFSET: u32 = 11;
    /// The CPU-clock event's mean period in ns (`1e9 / --rate`): the CPU time one sample
    /// stands for.
    pub const SAMPLE_PERIOD_NS: u32 = 12;
    pub const COUNT: u32 = 13;
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

/// What a kernel counter counts, so every place that reports counters (the progress line, the
/// summary, `top`, the profile file) reads one definition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatClass {
    /// A sample's fate: it was recorded. Exactly one fate is counted per sample of a target
    /// thread (`Stat::TargetSample`).
    Recorded,
    /// A sample's fate: the thread was outside Python code (no thread state, no frame). Not
    /// recorded, and not an error.
    OutsidePython,
    /// A sample's fate: left out on request (`--gil`), or as more than its thread's CPU time
    /// explains (`cpu_credit`).
    LeftOut,
    /// A sample's fate: lost to a fault or a limit. An error.
    Lost,
    /// A note on a recorded sample, counted on top of its fate (cut at a fault, truncated).
    Caveat,
    /// How a sample's native unwind ended (`--native`), counted on top of its fate.
    NativeOutcome,
    /// A tally beside the fates (target samples seen, the GIL held, off-CPU intervals).
    Tally,
    /// `--idle`: an off-CPU interval was lost (the scheduler program's error).
    IntervalLost,
    /// A fork, exec or exit event could not be reported (its ring buffer was full): the
    /// process is still found (or found ended) by the /proc scan, later.
    EventLost,
}

impl StatClass {
    /// Whether this class is a sample's fate (exactly one per sample of a target thread).
    pub const fn is_fate(self) -> bool {
        matches!(
            self,
            StatClass::Recorded | StatClass::OutsidePython | StatClass::LeftOut | StatClass::Lost
        )
    }

    /// Whether a counter of this class is an error the summary reports as one.
    pub const fn is_error(self) -> bool {
        matches!(
            self,
            StatClass::Lost | StatClass::IntervalLost | StatClass::EventLost
        )
    }
}

/// Declares `Stat` from one table: discriminant, class, name and doc of each counter, so `ALL`,
/// `COUNT`, `name` and `class` cannot drift apart.
macro_rules! stats {
    ($( $(#[$doc:meta])* $stat:ident = $n:literal, $class:ident, $name:literal; )*) => {
        /// Per-CPU counters in `STATS`, indexed by this enum (and by `Stat::COUNT` more for the
        /// scheduler-switch program's own, see `stat_index`). Every sample of a target thread
        /// gets exactly one fate (`StatClass::is_fate`); nothing is dropped silently.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Stat {
            $( $(#[$doc])* $stat = $n, )*
        }

        impl Stat {
            /// Every counter, in discriminant order.
            pub const ALL: &'static [Stat] = &[$(Stat::$stat),*];
            pub const COUNT: u32 = Self::ALL.len() as u32;

            pub const fn name(self) -> &'static str {
                match self { $(Stat::$stat => $name,)* }
            }

            pub const fn class(self) -> StatClass {
                match self { $(Stat::$stat => StatClass::$class,)* }
            }
        }
    };
}

stats! {
    /// Samples of a target thread recorded into the count maps.
    Recorded = 0, Recorded, "recorded";
    /// The sampled thread has no Python thread state (a thread that never ran Python).
    NoThreadState = 1, OutsidePython, "no thread state";
    /// Reading the interpreter or thread list failed.
    ReadThreadState = 2, Lost, "thread state read fault";
    /// Reading a frame or code object failed mid-stack: the stack is kept, cut at the fault.
    ReadFrame = 3, Caveat, "frame read fault";
    /// The stack was deeper than `MAX_PYTHON_FRAMES`: it is kept, truncated.
    Truncated = 4, Caveat, "truncated stack";
    /// `STACKS` was full: the sample was lost.
    StackMapFull = 5, Lost, "stack map full";
    /// The count map was full: the sample was lost.
    CountMapFull = 6, Lost, "count map full";
    /// A target entry had an offset outside the kernel's bounds.
    BadOffsets = 7, Lost, "bad offsets";
    /// The thread was idle in Python: the thread state had no frame, or only shim frames that
    /// run no code (3.15's base frame).
    EmptyStack = 8, OutsidePython, "no python frame";
    /// The tail call to the frame walker failed (the walker is not loaded).
    TailCall = 9, Lost, "tail call failed";
    /// `--gil`: the thread did not hold the GIL, so the sample was left out by request.
    GilNotHeld = 10, LeftOut, "without the GIL (left out by --gil)";
    /// Recorded samples whose thread held the GIL.
    GilHeld = 11, Tally, "with the GIL held";
    /// `--idle`: off-CPU intervals of target threads ended and counted.
    OffCpu = 12, Tally, "off-CPU intervals";
    /// `--idle`: the map of threads off the CPU was full: an interval was lost.
    OffCpuMapFull = 13, IntervalLost, "off-CPU map full";
    /// Native unwind (`--native`): reached the thread's outermost frame.
    NativeComplete = 14, NativeOutcome, "complete";
    /// Native unwind stopped at an address in no known executable mapping.
    NativeNoMapping = 15, NativeOutcome, "address outside known mappings";
    /// Native unwind stopped at an address no call frame information covers.
    NativeNoRow = 16, NativeOutcome, "no unwind info";
    /// Native unwind stopped at a CFI rule the kernel does not evaluate.
    NativeUnsupported = 17, NativeOutcome, "unsupported unwind rule";
    /// Native unwind stopped: reading the stack faulted.
    NativeReadFault = 18, NativeOutcome, "stack read fault";
    /// Native unwind stopped after `MAX_NATIVE_FRAMES` frames (`COMPAT_NATIVE_FRAMES` on a
    /// kernel without `bpf_loop`).
    NativeTruncated = 19, NativeOutcome, "deeper than the frame limit";
    /// Native unwind stopped at an implausible frame (the stack did not grow toward the root).
    NativeBadFrame = 20, NativeOutcome, "implausible frame";
    /// `--kernel`: the kernel stack could not be read (the sample is kept without it).
    KernelStack = 21, Caveat, "kernel stack read fault";
    /// Not even the first frame could be read: the sample was lost.
    NoFrame = 22, Lost, "first frame read fault";
    /// Samples of a target thread: the sum of every fate.
    TargetSample = 23, Tally, "target samples";
    /// The target was removed between the sample's two programs: the sample was lost.
    TargetGone = 24, Lost, "target removed mid-sample";
    /// `_PyRuntime` could not be read: its page is not in memory yet, so the interpreter has not
    /// started (a just-launched program). Outside Python code, not a fault.
    RuntimeNotReady = 25, OutsidePython, "interpreter not started";
    /// Forks of followed processes seen (`--subprocesses`, `--all`).
    Fork = 26, Tally, "forks followed";
    /// Execs of followed processes seen.
    Exec = 27, Tally, "execs followed";
    /// A fork, exec or exit event was lost: the ring buffer was full.
    ProcessEventLost = 28, EventLost, "process event lost";
    /// The sampled thread's id in its container's pid namespace could not be had (its
    /// namespace is not the target's): the sample was lost.
    NamespaceId = 29, Lost, "namespace thread id unavailable";
    /// The thread was not among the first `THREADS_PER_CALL * MAX_THREAD_CALLS` thread states
    /// of its interpreter's list: the sample was lost.
    ThreadWalkLimit = 30, Lost, "thread list longer than the walk";
    /// Targets whose last thread exited, seen by the exit program (`--subprocesses`, `--all`).
    Exit = 31, Tally, "target exits seen";
    /// Code objects copied the first time a new stack held them (`CodeSnapshot`).
    CodeSnapshot = 32, Tally, "code objects copied";
    /// A code object could not be copied (the ring buffer was full, or its header could not be
    /// read): its frames are named from the live object, if it still is by then.
    CodeSnapshotLost = 33, Tally, "code object copies dropped";
    /// The thread was exiting: it had let go of the process's memory (its `mm`), so nothing of
    /// its Python state could be read. Outside Python code, not a fault.
    ThreadExiting = 34, OutsidePython, "thread exiting";
    /// The sample would have given its thread more samples than its CPU time explains (its CPU
    /// was busy elsewhere for part of the period, as when a hypervisor runs another guest):
    /// left out (`cpu_credit`).
    BeyondCpuTime = 35, LeftOut, "beyond their thread's CPU time";
    /// On a kernel without `bpf_loop`, the chain of tail calls that copies a new stack's code
    /// objects reached the kernel's limit: those of its outermost frames that had not been
    /// copied before are named from the live objects, if they still are by then.
    CodeCopiesCut = 36, Tally, "code object copies cut short";
}

// `ALL` lists every counter in discriminant order, 0 to COUNT - 1, so `stat as usize` indexes
// tables built from it.
const _: () = {
    let mut i = 0;
    while i < Stat::ALL.len() {
        assert!(Stat::ALL[i] as usize == i);
        i += 1;
    }
};

/// Where the counters of each program live in `STATS`: the CPU-clock sampler's at `stat`, the
/// scheduler-switch program's (`--idle`) at `Stat::COUNT + stat`, so a blocked thread's walk
/// never counts as a sample's fate.
#[inline(always)]
pub const fn stat_index(stat: Stat, switch: bool) -> u32 {
    stat as u32 + switch as u32 * Stat::COUNT
}

/// Entries of `STATS`: one set of counters per program kind.
pub const STAT_ENTRIES: u32 = 2 * Stat::COUNT;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), Copy, made of integers with explicit padding: every bit pattern
    // is valid and there are no implicit padding bytes.
    unsafe impl aya::Pod for super::TargetInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SmallStack {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::LargeStack {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ExtraStack {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::KnownThread {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SampleKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OffCpuStart {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RowChunk {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PageChunk {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NativeMappings {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProcessEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NewStack {}
    // SAFETY: as above (integers, then byte arrays of multiples of 8 bytes).
    unsafe impl aya::Pod for super::CodeSnapshot {}
}

// Layout checks: both sides compile these, so a drift breaks the build, not the profile.
const _: () = assert!(core::mem::size_of::<PyOffsets>() == 44);
const _: () = assert!(core::mem::size_of::<TargetInfo>() == 88);
const _: () = assert!(core::mem::size_of::<OffCpuStart>() == 24);
const _: () = assert!(core::mem::size_of::<PyFrame>() == 16);
const _: () = assert!(core::mem::size_of::<SampleKey>() == 32);
const _: () = assert!(core::mem::size_of::<SmallStack>() == 24 + 16 * SMALL_STACK_FRAMES);
const _: () = assert!(core::mem::size_of::<LargeStack>() == 24 + 16 * MAX_PYTHON_FRAMES);
const _: () = assert!(
    core::mem::size_of::<ExtraStack>() == 16 + 8 * MAX_NATIVE_FRAMES + 8 * MAX_KERNEL_FRAMES
);
const _: () = assert!(core::mem::size_of::<KnownThread>() == 32);
const _: () = assert!(MAX_PYTHON_FRAMES.is_multiple_of(FRAMES_PER_CALL));
const _: () = assert!(MAX_PYTHON_FRAMES.is_power_of_two() && FRAMES_PER_CALL.is_power_of_two());
const _: () = assert!(core::mem::size_of::<UnwindRow>() == 8);
const _: () = assert!(core::mem::size_of::<NativeMapping>() == 48);
const _: () = assert!(core::mem::size_of::<NativeMappings>() == 8 + 48 * MAX_MAPPINGS);
const _: () = assert!(MAX_MAPPINGS == 1 << MAPPING_SEARCH_STEPS);
const _: () = assert!(MAX_NATIVE_FRAMES.is_power_of_two());
// The kernel makes a ring buffer only of a power of two pages.
const _: () = assert!(PROCESS_EVENTS_BYTES.is_power_of_two() && PROCESS_EVENTS_BYTES >= 4096);
const _: () = assert!(NEW_STACKS_BYTES.is_power_of_two() && NEW_STACKS_BYTES >= 4096);
const _: () = assert!(CODE_SNAPSHOTS_BYTES.is_power_of_two() && CODE_SNAPSHOTS_BYTES >= 4096);
const _: () = assert!(
    core::mem::size_of::<CodeSnapshot>()
        == 72 + SNAPSHOT_CODE + SNAPSHOT_NAME + SNAPSHOT_FILENAME + SNAPSHOT_LINETABLE
);
const _: () = assert!(core::mem::size_of::<CodeSeen>() == 16);
// The entry mark is one bit above any instruction offset (code objects stay far below 16 MiB),
// so userspace can mask it off.
const _: () = assert!(PY_ENTRY_FRAME.is_power_of_two() && PY_ENTRY_FRAME >= 1 << 24);
// A table the kernel's binary search covers fits the row map.
const _: () = assert!(
    MAX_ROWS_PER_TABLE.is_power_of_two()
        && MAX_ROWS_PER_TABLE <= MAX_ROW_CHUNKS as usize * ROWS_PER_CHUNK
);

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    /// The counters the kernel adds on top of a sample's fate (`Recorded`) for the same sample:
    /// were one a fate, a sample would have two and the fates would add up to more than the
    /// target samples.
    const ON_TOP_OF_A_FATE: &[Stat] = &[
        Stat::ReadFrame,
        Stat::Truncated,
        Stat::KernelStack,
        Stat::GilHeld,
        Stat::NativeComplete,
        Stat::NativeNoMapping,
        Stat::NativeNoRow,
        Stat::NativeUnsupported,
        Stat::NativeReadFault,
        Stat::NativeTruncated,
        Stat::NativeBadFrame,
    ];

    #[test]
    fn a_counter_counted_beside_recorded_is_no_fate() {
        for stat in ON_TOP_OF_A_FATE {
            assert!(!stat.class().is_fate(), "{stat:?}");
            assert!(!stat.class().is_error(), "{stat:?}");
        }
        // The caveats are what the summary lists as `kept with a caveat`.
        for stat in [Stat::ReadFrame, Stat::Truncated, Stat::KernelStack] {
            assert_eq!(stat.class(), StatClass::Caveat, "{stat:?}");
        }
        // What the sample's fate is counted as, once each.
        assert_eq!(Stat::Recorded.class(), StatClass::Recorded);
        assert!(Stat::Recorded.class().is_fate() && !Stat::Recorded.class().is_error());
        // Every sample of a target thread counts as one; it is none itself.
        assert!(!Stat::TargetSample.class().is_fate());
    }

    #[test]
    fn fates_and_errors_by_class() {
        let fates = [
            StatClass::Recorded,
            StatClass::OutsidePython,
            StatClass::LeftOut,
            StatClass::Lost,
        ];
        let others = [
            StatClass::Caveat,
            StatClass::NativeOutcome,
            StatClass::Tally,
            StatClass::IntervalLost,
            StatClass::EventLost,
        ];
        assert!(fates.iter().all(|c| c.is_fate()));
        assert!(others.iter().all(|c| !c.is_fate()));
        // Errors: samples, off-CPU intervals and process events lost. Outside Python code and
        // left out by --gil are no errors.
        let errors: Vec<StatClass> = fates
            .iter()
            .chain(&others)
            .copied()
            .filter(|c| c.is_error())
            .collect();
        assert_eq!(
            errors,
            [
                StatClass::Lost,
                StatClass::IntervalLost,
                StatClass::EventLost
            ]
        );
        // A sample lost in the kernel is a fate and an error; the program not loaded is one.
        for stat in [
            Stat::StackMapFull,
            Stat::CountMapFull,
            Stat::TailCall,
            Stat::NoFrame,
        ] {
            assert!(
                stat.class().is_fate() && stat.class().is_error(),
                "{stat:?}"
            );
        }
        for stat in [
            Stat::NoThreadState,
            Stat::EmptyStack,
            Stat::RuntimeNotReady,
            Stat::ThreadExiting,
        ] {
            assert_eq!(stat.class(), StatClass::OutsidePython, "{stat:?}");
        }
        assert_eq!(Stat::GilNotHeld.class(), StatClass::LeftOut);
        assert_eq!(Stat::OffCpuMapFull.class(), StatClass::IntervalLost);
    }

    #[test]
    fn names_are_distinct() {
        let mut names: Vec<&str> = Stat::ALL.iter().map(|s| s.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Stat::ALL.len());
        assert!(names.iter().all(|n| !n.is_empty()));
    }

    /// Runs `cpu_credit` over `samples` samples, the thread's CPU clock reading `runtime(i)` at
    /// the `i`th; returns how many were kept.
    fn kept(samples: u64, period: u64, mut runtime: impl FnMut(u64) -> u64) -> u64 {
        let (mut credit, mut kept) = (0, 0);
        for i in 0..samples {
            let (c, keep) = cpu_credit(credit, runtime(i), period);
            credit = c;
            kept += keep as u64;
        }
        kept
    }

    /// xorshift64: a repeatable draw for the tests, uniform in [0, 1).
    fn draw(state: &mut u64) -> f64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        (*state >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A thread whose samples come as its CPU time grows keeps every one, whenever it was
    /// first seen and whatever the rate.
    #[test]
    fn samples_within_the_cpu_time_are_all_kept() {
        for period in [100_000, 1_000_000, 10_101_010] {
            for start in [0, 7_000_000_000] {
                // Its clock read a little late or early (it moves at the scheduler's ticks).
                let n = kept(20_000, period, |i| {
                    start + (i + 1) * period - (i % 4) * period.min(4_000_000) / 4
                });
                assert_eq!(n, 20_000, "period {period}, start {start}");
            }
        }
    }

    /// A host that takes 40 % of the CPU: the thread's clock moves 0.6 of a period per sample;
    /// it keeps 0.6 of its samples, give or take the slack.
    #[test]
    fn samples_beyond_the_cpu_time_are_left_out() {
        let period = 1_000_000;
        let samples = 10_000;
        let n = kept(samples, period, |i| {
            5_000_000_000 + (i + 1) * period * 6 / 10
        });
        // The credit starts the slack behind and may end the slack ahead.
        let slack = 2 * CPU_CREDIT_SLACK_NS / period;
        assert!((6_000..=6_000 + slack + 1).contains(&n), "{n}");
        // Taken in bursts (100 ms of every 250 ms gone): the same.
        let runtime = |i: u64| {
            let t = (i + 1) * period;
            (t / 250_000_000) * 150_000_000 + (t % 250_000_000).min(150_000_000)
        };
        let n = kept(samples, period, runtime);
        assert!((6_000..=6_000 + slack + 1).contains(&n), "{n}");
    }

    /// A thread sharing its CPU gets each of its CPU's samples by chance, a binomial count
    /// around its CPU time: the bound leaves out no more than a fraction of a percent of it.
    #[test]
    fn a_thread_sharing_its_cpu_keeps_its_samples() {
        for (period, share) in [(1_000_000u64, 0.5), (10_101_010, 0.3), (100_000, 0.5)] {
            let mut state = 0x2545_f491_4f6c_dd1d;
            let (mut credit, mut kept, mut sampled, mut runtime) = (0, 0u64, 0u64, 0u64);
            for _ in 0..400_000 {
                // One period of the CPU's time: the thread runs `share` of it on average...
                runtime += (2.0 * share * draw(&mut state) * period as f64) as u64;
                // ...and the sample at its end is the thread's with that chance.
                if draw(&mut state) < share {
                    sampled += 1;
                    let (c, keep) = cpu_credit(credit, runtime, period);
                    credit = c;
                    kept += keep as u64;
                }
            }
            let left_out = (sampled - kept) as f64 / sampled as f64;
            assert!(left_out < 0.005, "period {period}: {left_out}");
        }
    }

    /// The switch program's counters sit after every sampler counter, so neither counts into
    /// the other's.
    #[test]
    fn stat_indices_of_the_two_programs_are_apart() {
        let mut seen = Vec::new();
        for &stat in Stat::ALL {
            let (sample, switch) = (stat_index(stat, false), stat_index(stat, true));
            assert_eq!(sample, stat as u32);
            assert!(sample < Stat::COUNT, "{stat:?}");
            assert!((Stat::COUNT..STAT_ENTRIES).contains(&switch), "{stat:?}");
            seen.extend([sample, switch]);
        }
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len() as u32, STAT_ENTRIES);
    }

    /// A code object's tag changes with each of its name, file and first line (a reused address
    /// holding another function), and with their order.
    #[test]
    fn code_tags_tell_code_objects_apart() {
        let tag = code_tag(0x7f00_1000, 0x7f00_2000, 12);
        assert_ne!(tag, 0);
        assert_eq!(tag, code_tag(0x7f00_1000, 0x7f00_2000, 12));
        for other in [
            code_tag(0x7f00_1010, 0x7f00_2000, 12),
            code_tag(0x7f00_1000, 0x7f00_2010, 12),
            code_tag(0x7f00_1000, 0x7f00_2000, 13),
            code_tag(0x7f00_2000, 0x7f00_1000, 12),
        ] {
            assert_ne!(tag, other);
        }
        // Stack ids: the same frames in another order are another stack.
        assert_ne!(mix(mix(0, 1), 2), mix(mix(0, 2), 1));
        assert_ne!(mix(0, 1), mix(0, 0));
    }

    /// A stack as the x86-64 ABI lays it out, growing down from 0x8000: the caller's frame
    /// pointer saved at CFA - 16, the return address at CFA - 8.
    fn stack(cfa: u64, ra: u64, saved_rbp: u64) -> impl FnMut(u64) -> Option<u64> {
        move |addr| match addr {
            a if a == cfa - 8 => Some(ra),
            a if a == cfa - 16 => Some(saved_rbp),
            a if (0x7000..0x8000).contains(&a) => Some(0),
            _ => None,
        }
    }

    fn row(kind: u8, cfa_offset: u16, rbp_offset: i8) -> Option<UnwindRow> {
        Some(UnwindRow {
            pc: 0,
            cfa_offset,
            kind,
            rbp_offset,
        })
    }

    #[test]
    fn unwind_step_by_each_rule() {
        let (rsp, rbp) = (0x7f00, 0x7f40);
        // Frame pointers (no table): CFA = rbp + 16, the caller's rbp saved at rbp.
        assert_eq!(
            unwind_step(None, 0x1000, rsp, rbp, stack(rbp + 16, 0x4444, 0x7f80)),
            Ok((0x4444, rbp + 16, 0x7f80))
        );
        // CFA = rsp + 8 * 3, rbp not saved by this frame: it is the caller's too.
        assert_eq!(
            unwind_step(
                row(row_kind::CFA_RSP, 3, 0),
                0x1000,
                rsp,
                rbp,
                stack(rsp + 24, 0x5555, 1)
            ),
            Ok((0x5555, rsp + 24, rbp))
        );
        // CFA = rbp + 16, the caller's rbp at CFA - 16.
        assert_eq!(
            unwind_step(
                row(row_kind::CFA_RBP, 2, -2),
                0x1000,
                rsp,
                rbp,
                stack(rbp + 16, 0x6666, 0x7fc0)
            ),
            Ok((0x6666, rbp + 16, 0x7fc0))
        );
        // A PLT entry: 11 bytes in it has pushed one more word.
        for (pc, cfa) in [(0x1000 + 10, rsp + 8), (0x1000 + 11, rsp + 16)] {
            assert_eq!(
                unwind_step(
                    row(row_kind::PLT, 1, 0),
                    pc,
                    rsp,
                    rbp,
                    stack(cfa, 0x7777, 1)
                ),
                Ok((0x7777, cfa, rbp)),
                "pc {pc:#x}"
            );
        }
        let never = |_| -> Option<u64> { panic!("no read for a row that ends the unwind") };
        for (kind, end) in [
            (row_kind::END, Stat::NativeComplete),
            (row_kind::UNSUPPORTED, Stat::NativeUnsupported),
            (row_kind::NONE, Stat::NativeNoRow),
        ] {
            assert_eq!(
                unwind_step(row(kind, 1, 0), 0x1000, rsp, rbp, never),
                Err(end)
            );
        }
    }

    #[test]
    fn unwind_step_refuses_what_cannot_be_a_caller() {
        let (rsp, rbp) = (0x7f00, 0x7f40);
        // A CFA at or below the stack pointer: the stack did not grow toward the root.
        assert_eq!(
            unwind_step(row(row_kind::CFA_RSP, 0, 0), 0x1000, rsp, rbp, |_| Some(1)),
            Err(Stat::NativeBadFrame)
        );
        assert_eq!(
            unwind_step(None, 0x1000, rsp, rsp - 16, |_| Some(1)),
            Err(Stat::NativeBadFrame)
        );
        // The return address, or the saved rbp, cannot be read.
        assert_eq!(
            unwind_step(row(row_kind::CFA_RSP, 2, 0), 0x1000, rsp, rbp, |_| None),
            Err(Stat::NativeReadFault)
        );
        let cfa = rsp + 16;
        assert_eq!(
            unwind_step(row(row_kind::CFA_RSP, 2, -2), 0x1000, rsp, rbp, |a| (a
                == cfa - 8)
                .then_some(0x4444)),
            Err(Stat::NativeReadFault)
        );
    }
}
