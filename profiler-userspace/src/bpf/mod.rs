//! The kernel side's userspace half: loads the BPF object, attaches it to the CPU-clock event on
//! every online CPU, registers targets and drains the maps. The only module that makes BPF
//! syscalls.

pub mod btf;
mod clock;
mod object;

use std::{
    borrow::Borrow,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd},
    thread,
    time::Duration,
};

use aya::{
    Ebpf, EbpfError, EbpfLoader, include_bytes_aligned,
    maps::{
        Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues,
        ProgramArray, RingBuf,
    },
    programs::{Program, ProgramError, ProgramFd, RawTracePoint, perf_event::PerfEvent},
    util::online_cpus,
};
use profiler_common::{
    CodeSnapshot, ExtraStack, LargeStack, MAX_COUNTS, NativeMappings, NewStack, OffCpuStart,
    PageChunk, ProcessEvent, PyFrame, RowChunk, STACK_IN_GC, STACK_TRUNCATED, SampleKey,
    SmallStack, Stat, StatClass, TargetInfo, config, maps,
};

use crate::unwind::UnwindMaps;

static OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/profiler-ebpf"));

/// The hash maps made non-preallocated where the kernel allows it (`object::without_prealloc`):
/// the large ones, whose creation was most of the start-up.
const UNPREALLOCATED: [&str; 5] = [
    maps::STACKS_SMALL,
    maps::STACKS_LARGE,
    maps::EXTRA_STACKS,
    maps::COUNTS_0,
    maps::COUNTS_1,
];

/// How long a program run that read the old `ACTIVE_COUNTS` value may still be counting into
/// the map being drained. Runs take microseconds; this is generous.
const FLIP_GRACE: Duration = Duration::from_millis(2);

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("loading the BPF object: {0}")]
    Load(#[source] EbpfError),
    #[error("the kernel rejected the BPF program {program}: {error}\nverifier log:\n{log}")]
    Verifier {
        program: &'static str,
        error: std::io::Error,
        log: String,
    },
    #[error("BPF program: {0}")]
    Program(#[from] ProgramError),
    #[error("BPF map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("the BPF object has no {0} (it was built from other sources)")]
    Missing(&'static str),
    #[error("listing online CPUs: {0}")]
    Cpus(std::io::Error),
    #[error("the CPU-clock perf event on CPU {cpu}: {call}: {source}")]
    Attach {
        cpu: u32,
        call: &'static str,
        source: std::io::Error,
    },
    #[error("loading native unwind tables: {0}")]
    Native(#[source] std::io::Error),
    #[error(transparent)]
    Btf(#[from] btf::BtfError),
    #[error(
        "kernel {0}.{1} is older than 5.10, the oldest prof-bpf runs on (it needs BPF ring buffers, \
         5.8, and BPF programs on raw tracepoints that read the sampled task's pid namespace, 5.7; \
         it is tested on 5.10, 6.1, 6.12 and 6.18)"
    )]
    KernelTooOld(u32, u32),
}

impl BpfError {
    /// Whether more privileges would fix it: the kernel said EPERM or EACCES somewhere in the
    /// error's chain.
    pub fn is_permission(&self) -> bool {
        if let BpfError::Verifier { error, .. } = self {
            return is_permission_error(error);
        }
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = source {
            if let Some(io) = e.downcast_ref::<std::io::Error>()
                && is_permission_error(io)
            {
                return true;
            }
            source = e.source();
        }
        false
    }
}

fn is_permission_error(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES))
        || e.kind() == std::io::ErrorKind::PermissionDenied
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> BpfError {
    move |source| BpfError::Map { name, source }
}

/// Opens map `name` as `M` for writing.
fn map_mut<'a, M>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<M, BpfError>
where
    M: TryFrom<&'a mut Map, Error = MapError>,
{
    M::try_from(ebpf.map_mut(name).ok_or(BpfError::Missing(name))?).map_err(map_err(name))
}

/// Opens map `name` as `M` for reading.
fn map_ref<'a, M>(ebpf: &'a Ebpf, name: &'static str) -> Result<M, BpfError>
where
    M: TryFrom<&'a Map, Error = MapError>,
{
    M::try_from(ebpf.map(name).ok_or(BpfError::Missing(name))?).map_err(map_err(name))
}

/// Takes map `name` out of the object, for a handle that outlives borrows of it.
fn map_owned<M>(ebpf: &mut Ebpf, name: &'static str) -> Result<M, BpfError>
where
    M: TryFrom<Map, Error = MapError>,
{
    M::try_from(ebpf.take_map(name).ok_or(BpfError::Missing(name))?).map_err(map_err(name))
}

/// Whose forks and execs the kernel follows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Follow {
    /// Nobody's: the targets are registered by userspace alone.
    #[default]
    Nobody,
    /// The processes named with `Sampler::follow` and their descendants (`--subprocesses`).
    Named,
    /// Every process on the machine (`--all`).
    All,
}

/// What the kernel records besides CPU samples of every target thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SamplerOptions {
    /// Forks and execs to follow (`--subprocesses`, `--all`).
    pub follow: Follow,
    /// Off-CPU time (`--idle`): attaches the scheduler-switch program.
    pub idle: bool,
    /// Mixed stacks (`--native`): loads the native unwinder and its tables' maps.
    pub native: bool,
    /// Only samples of threads that hold the GIL (`--gil`).
    pub gil_only: bool,
    /// Kernel stacks for some target (`--kernel`): the native-and-kernel part's map is sized
    /// for them (as for `--native`).
    pub kernel: bool,
}

/// What the running kernel offers the BPF program, probed at load time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelFeatures {
    pub release: (u32, u32),
    /// `bpf_loop` (5.17) and `bpf_task_pt_regs` (5.15): the one-run frame walkers and native
    /// unwinder.
    pub bpf_loop: bool,
    /// Hash maps without preallocation in perf_event programs (6.1): the stack and count maps
    /// are then made so (`UNPREALLOCATED`).
    pub unpreallocated_maps: bool,
}

impl KernelFeatures {
    /// The running kernel's, from its release (`/proc/sys/kernel/osrelease`).
    pub fn probe() -> Self {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut features = Self::of_release(&release);
        // The older kernels' path on a newer kernel: to test it where no old kernel is at
        // hand, or to step around a `bpf_loop` problem.
        if std::env::var_os("PROF_BPF_KERNEL_COMPAT").is_some_and(|v| !v.is_empty() && v != "0") {
            features.bpf_loop = false;
            features.unpreallocated_maps = false;
        }
        features
    }

    /// Refuses a kernel older than 5.10, before its verifier refuses the programs less clearly.
    /// An unreadable release ((0, 0)) is let through: loading will say what is wrong.
    pub fn check(&self) -> Result<(), BpfError> {
        match self.release {
            (0, 0) => Ok(()),
            (major, minor) if (major, minor) < (5, 10) => Err(BpfError::KernelTooOld(major, minor)),
            _ => Ok(()),
        }
    }

    /// From a release string as `uname -r` prints it (`5.10.0-46-amd64`).
    pub fn of_release(release: &str) -> Self {
        let mut parts = release
            .trim()
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|p| p.parse::<u32>().ok());
        let release = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        Self {
            release,
            bpf_loop: release >= (5, 17),
            unpreallocated_maps: release >= (6, 1),
        }
    }

    /// How the summary names the kernel path chosen: `kernel 6.18: bpf_loop walker and
    /// unwinder`, or `kernel 5.10: walker and unwinder without bpf_loop (...)`, which says what
    /// the other path costs.
    pub fn describe(&self) -> String {
        let (major, minor) = self.release;
        match self.bpf_loop {
            true => format!("kernel {major}.{minor}: bpf_loop walker and unwinder"),
            false => format!(
                "kernel {major}.{minor}: walker and unwinder without bpf_loop (tail calls, {} native frames at most)",
                profiler_common::COMPAT_NATIVE_FRAMES
            ),
        }
    }
}

/// The loaded, attached kernel program.
pub struct Sampler {
    ebpf: Ebpf,
    /// Hold the tail-call tables (and so the walkers) for as long as sampling runs.
    _programs: Vec<ProgramArray<MapData>>,
    /// The CPU-clock events that run the sampler, and what re-arms them.
    _clock: clock::SampleClock,
    /// Keeps the kernel's BPF run-time statistics on while held (None if the kernel refused).
    _stats: Option<OwnedFd>,
    /// Notices of stacks stored for the first time.
    new_stacks: RingBuf<MapData>,
    /// The kernel's copies of code objects new stacks hold.
    code_snapshots: RingBuf<MapData>,
    /// Forks and execs of followed processes (`--subprocesses`, `--all`).
    process_events: Option<RingBuf<MapData>>,
    active: u32,
    /// The count entries the last drain read, in the count map it drained, until
    /// `settle_counts` (or the next drain) keeps or deletes them.
    unsettled: Unsettled,
    pub features: KernelFeatures,
}

/// Count entries read by a drain and not yet kept (zeroed) or deleted.
#[derive(Default)]
struct Unsettled {
    map: &'static str,
    /// Each entry, and whether it counted anything since it was last drained.
    keys: Vec<(SampleKey, bool)>,
    /// Values per entry (one per possible CPU).
    cpus: usize,
}

/// Count entries kept across drains at most, per count map: a sixteenth of its room, so the
/// entries new in a drain period always find some, and the stacks of both maps' kept entries
/// fit in half the session's cache of raw stacks, which names their counts.
const KEPT_COUNTS: usize = MAX_COUNTS as usize / 16;

/// A Python stack as the kernel stored it: frames leaf first, and the id of its native and
/// kernel part (0: none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawStack {
    pub frames: Vec<PyFrame>,
    pub truncated: bool,
    /// Taken while the garbage collector ran in the thread (`STACK_IN_GC`).
    pub in_gc: bool,
    pub extra: u64,
    /// The asyncio task the thread ran (`record --async-aware`), or 0.
    pub task: u64,
}

impl RawStack {
    fn new<const N: usize>(stack: &profiler_common::PyStack<N>) -> Self {
        let len = (stack.len as usize).min(N);
        Self {
            frames: stack.frames[..len].to_vec(),
            truncated: stack.flags & STACK_TRUNCATED != 0,
            in_gc: stack.flags & STACK_IN_GC != 0,
            extra: stack.extra,
            task: stack.task,
        }
    }
}

/// The native and kernel part of stacks (`--native`, `--kernel`), leaf first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawExtra {
    pub native: Vec<u64>,
    /// How the native unwind ended: a `Stat::Native*` value.
    pub native_end: u32,
    pub kernel: Vec<u64>,
}

impl RawExtra {
    fn new(extra: &ExtraStack) -> Self {
        let native = (extra.native_len as usize).min(profiler_common::MAX_NATIVE_FRAMES);
        let kernel = (extra.kernel_len as usize).min(profiler_common::MAX_KERNEL_FRAMES);
        Self {
            native: extra.native[..native].to_vec(),
            native_end: extra.native_end,
            kernel: extra.kernel[..kernel].to_vec(),
        }
    }
}

/// A stack the kernel stored for the first time, announced so its code objects are read at
/// once; with its content (and its native and kernel part), unless a drain took it out of the
/// map first.
pub struct Announced {
    pub pid: u32,
    pub stack_id: u64,
    pub stack: Option<RawStack>,
    pub extra: Option<(u64, RawExtra)>,
}

/// What one drain moved out of the kernel's maps.
#[derive(Default)]
pub struct Drained {
    /// Per (process, thread, stack, native leaf, kind): samples, or nanoseconds off the CPU.
    pub counts: Vec<(SampleKey, u64)>,
    /// The stacks stored since the last drain, by id.
    pub stacks: Vec<(u64, RawStack)>,
    /// Their native and kernel parts, by id.
    pub extras: Vec<(u64, RawExtra)>,
}

/// The kernel's own accounting of the sampling program (the tail-called walker included).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunTime {
    /// Program runs: one per CPU-clock sample on any CPU, target or not.
    pub runs: u64,
    pub total: Duration,
}

impl Sampler {
    /// Loads the program and starts sampling every CPU at `rate_hz`. Nothing is recorded until
    /// a target is added. With `options.native`, the native unwinder is loaded too (a target gets
    /// native stacks once its mappings are written, see `UnwindMaps`).
    pub fn start(rate_hz: u64, options: SamplerOptions) -> Result<Self, BpfError> {
        let features = KernelFeatures::probe();
        features.check()?;
        // The kernel's field offsets, parsed beside aya's own parse of its BTF in `load`.
        let btf = thread::spawn(btf::Btf::kernel);
        let mut loader = EbpfLoader::new();
        if !options.native {
            // The row array, page index and mapping lists are 37 MiB of locked kernel memory:
            // only mixed stacks need them.
            loader.map_max_entries(maps::UNWIND_ROWS, 1);
            loader.map_max_entries(maps::PAGE_INDEX, 1);
            loader.map_max_entries(maps::NATIVE_MAPPINGS, 1);
        }
        if !options.native && !options.kernel {
            loader.map_max_entries(maps::EXTRA_STACKS, 1);
        }
        // A map the object lacks is said when it is opened; the object loads as built.
        let unpreallocated = features
            .unpreallocated_maps
            .then(|| object::without_prealloc(OBJECT, &UNPREALLOCATED).ok())
            .flatten();
        let object = unpreallocated.as_ref().map_or(OBJECT, |o| o.bytes());
        let mut ebpf = loader.load(object).map_err(BpfError::Load)?;
        let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).ok();
        let btf = btf
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        configure(&mut ebpf, rate_hz, options, features, btf)?;
        load_programs(&mut ebpf, &programs_to_load(options, features))?;
        // Tail-call targets first: the first programs call them from their first run on.
        let mut programs = vec![fill_sample_table(&mut ebpf, options.native, features)?];
        if options.idle {
            programs.push(attach_switch_programs(&mut ebpf, features)?);
        }
        let new_stacks = map_owned(&mut ebpf, maps::NEW_STACKS)?;
        let code_snapshots = map_owned(&mut ebpf, maps::CODE_SNAPSHOTS)?;
        let process_events = match options.follow {
            Follow::Nobody => None,
            Follow::Named | Follow::All => Some(attach_process_programs(&mut ebpf)?),
        };
        let clock = attach_sampler(&mut ebpf, rate_hz)?;
        Ok(Self {
            ebpf,
            _clock: clock,
            _programs: programs,
            _stats: stats,
            new_stacks,
            code_snapshots,
            process_events,
            active: 0,
            unsettled: Unsettled::default(),
            features,
        })
    }

    /// Follows process `pid`'s forks and execs, and its children's (`Follow::Named`).
    pub fn follow(&mut self, pid: u32) -> Result<(), BpfError> {
        let mut followed: HashMap<&mut MapData, u32, u8> = map_mut(&mut self.ebpf, maps::FOLLOWED)?;
        followed.insert(pid, 1, 0).map_err(map_err(maps::FOLLOWED))
    }

    /// `--idle`: records that thread `tid` has been off the CPU since `start.since_ns` in stack
    /// `start.stack_id`, as the scheduler program would have had it left the CPU while
    /// watched (a thread already blocked when recording starts).
    pub fn seed_off_cpu(&mut self, tid: u32, start: OffCpuStart) -> Result<(), BpfError> {
        let mut map: HashMap<&mut MapData, u32, OffCpuStart> =
            map_mut(&mut self.ebpf, maps::OFF_CPU_START)?;
        map.insert(tid, start, 0)
            .map_err(map_err(maps::OFF_CPU_START))
    }

    /// `--idle`: every thread off the CPU now, with where and since when.
    pub fn off_cpu_now(&self) -> Result<Vec<(u32, OffCpuStart)>, BpfError> {
        let map: HashMap<&MapData, u32, OffCpuStart> = map_ref(&self.ebpf, maps::OFF_CPU_START)?;
        Ok(map.iter().filter_map(Result::ok).collect())
    }

    /// The forks, execs and exits reported since the last call.
    pub fn process_events(&mut self) -> Vec<ProcessEvent> {
        let Some(ring) = &mut self.process_events else {
            return Vec::new();
        };
        read_ring(ring)
    }

    pub fn add_target(&mut self, pid: u32, info: TargetInfo) -> Result<(), BpfError> {
        let mut targets: HashMap<&mut MapData, u32, TargetInfo> =
            map_mut(&mut self.ebpf, maps::TARGETS)?;
        targets.insert(pid, info, 0).map_err(map_err(maps::TARGETS))
    }

    /// Stops profiling `pid` (it exited, or exec'd something else). Already gone is fine.
    pub fn remove_target(&mut self, pid: u32) -> Result<(), BpfError> {
        let mut targets: HashMap<&mut MapData, u32, TargetInfo> =
            map_mut(&mut self.ebpf, maps::TARGETS)?;
        match targets.remove(&pid) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(())
            }
            Err(e) => Err(map_err(maps::TARGETS)(e)),
        }
    }

    /// Waits up to `timeout` for the kernel to announce new stacks, or for `wake` to be
    /// readable; returns the notices at once, each with its stack if still stored, so the
    /// caller can read their code objects while they are surely alive, and whether `wake` was
    /// readable.
    pub fn wait_for_new_stacks(
        &mut self,
        timeout: Duration,
        wake: Option<BorrowedFd<'_>>,
    ) -> Result<(Vec<Announced>, bool), BpfError> {
        // Woken by a new stack or by a fork, exec or exit to act on.
        let mut fds = vec![libc::pollfd {
            fd: self.new_stacks.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if let Some(events) = &self.process_events {
            fds.push(libc::pollfd {
                fd: events.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        if let Some(fd) = wake {
            fds.push(libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // SAFETY: valid pollfds; a failed or interrupted poll just means no notice yet.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as _, timeout.as_millis() as i32) };
        let woken = wake.is_some() && fds.last().is_some_and(|f| f.revents != 0);
        let notices: Vec<NewStack> = read_ring(&mut self.new_stacks);
        if notices.is_empty() {
            return Ok((Vec::new(), woken));
        }
        let small: HashMap<&MapData, u64, SmallStack> = map_ref(&self.ebpf, maps::STACKS_SMALL)?;
        let large: HashMap<&MapData, u64, LargeStack> = map_ref(&self.ebpf, maps::STACKS_LARGE)?;
        let extras: HashMap<&MapData, u64, ExtraStack> = map_ref(&self.ebpf, maps::EXTRA_STACKS)?;
        let announced = notices
            .into_iter()
            .map(|notice| {
                // A drain may have taken it out of the map first: it came with that drain.
                let stack = match notice.large {
                    0 => small
                        .get(&notice.stack_id, 0)
                        .ok()
                        .map(|s| RawStack::new(&s)),
                    _ => large
                        .get(&notice.stack_id, 0)
                        .ok()
                        .map(|s| RawStack::new(&s)),
                };
                let extra = stack
                    .as_ref()
                    .filter(|s| s.extra != 0)
                    .and_then(|s| Some((s.extra, RawExtra::new(&extras.get(&s.extra, 0).ok()?))));
                Announced {
                    pid: notice.pid,
                    stack_id: notice.stack_id,
                    stack,
                    extra,
                }
            })
            .collect();
        Ok((announced, woken))
    }

    /// The code objects the kernel copied since the last call (`CodeSnapshot`): to be taken in
    /// before the stacks that hold them are named.
    pub fn code_snapshots(&mut self) -> Vec<CodeSnapshot> {
        read_ring(&mut self.code_snapshots)
    }

    /// Moves everything the kernel recorded since the last drain out of its maps: flips the
    /// count maps so the kernel counts into the other one, reads the idle one, then copies and
    /// deletes the stacks. No sample is lost between two drains. The count entries read stay
    /// until `settle_counts` (or, without it, the next drain deletes them).
    pub fn drain(&mut self) -> Result<Drained, BpfError> {
        // The map drained last becomes the live one: its entries must be settled first, or
        // their counts would be read again.
        self.settle_counts(|_| false)?;
        let idle = self.active;
        self.active ^= 1;
        let mut active: Array<&mut MapData, u32> = map_mut(&mut self.ebpf, maps::ACTIVE_COUNTS)?;
        active
            .set(0, self.active, 0)
            .map_err(map_err(maps::ACTIVE_COUNTS))?;
        thread::sleep(FLIP_GRACE);

        let name = if idle == 0 {
            maps::COUNTS_0
        } else {
            maps::COUNTS_1
        };
        let mut drained = Drained::default();
        let counts: PerCpuHashMap<&MapData, SampleKey, u64> = map_ref(&self.ebpf, name)?;
        let keys: Vec<SampleKey> = counts.keys().filter_map(Result::ok).collect();
        let mut unsettled = Unsettled {
            map: name,
            keys: Vec::with_capacity(keys.len()),
            cpus: 0,
        };
        for key in keys {
            let mut counted = false;
            if let Ok(per_cpu) = counts.get(&key, 0) {
                let n: u64 = per_cpu.iter().sum();
                // A kept entry nothing counted into since: nothing to report.
                if n != 0 {
                    drained.counts.push((key, n));
                }
                counted = n != 0;
                unsettled.cpus = per_cpu.len();
            }
            unsettled.keys.push((key, counted));
        }
        self.unsettled = unsettled;

        // Stacks before their native and kernel parts: a part a stack names was stored before
        // it, so it is here now or was taken by an earlier drain.
        drain_map::<SmallStack, _>(&mut self.ebpf, maps::STACKS_SMALL, |id, s| {
            drained.stacks.push((id, RawStack::new(s)))
        })?;
        drain_map::<LargeStack, _>(&mut self.ebpf, maps::STACKS_LARGE, |id, s| {
            drained.stacks.push((id, RawStack::new(s)))
        })?;
        drain_map::<ExtraStack, _>(&mut self.ebpf, maps::EXTRA_STACKS, |id, e| {
            drained.extras.push((id, RawExtra::new(e)))
        })?;
        Ok(drained)
    }

    /// Keeps, with a count of zero, the entries of the last drain that `keep` says to keep and
    /// that counted something since the drain before, and deletes the others. A kept entry is
    /// one the kernel counts the next samples of its (thread, stack, native leaf) into without
    /// storing the stack again (`python::finish`): keep only those whose stack the caller holds.
    pub fn settle_counts(
        &mut self,
        mut keep: impl FnMut(&SampleKey) -> bool,
    ) -> Result<(), BpfError> {
        if self.unsettled.keys.is_empty() {
            return Ok(());
        }
        // Left in place if the map cannot be had: the next drain deletes them before they
        // could be read again.
        let mut counts: PerCpuHashMap<&mut MapData, SampleKey, u64> =
            map_mut(&mut self.ebpf, self.unsettled.map)?;
        let Unsettled { keys, cpus, .. } = std::mem::take(&mut self.unsettled);
        let mut kept = 0;
        for (key, counted) in keys {
            if counted
                && kept < KEPT_COUNTS
                && cpus != 0
                && keep(&key)
                && let Ok(zeros) = PerCpuValues::try_from(vec![0u64; cpus])
                && counts.insert(key, zeros, 0).is_ok()
            {
                kept += 1;
                continue;
            }
            let _ = counts.remove(&key);
        }
        Ok(())
    }

    /// How long the kernel spent in the sampling program so far.
    pub fn run_time(&self) -> Option<RunTime> {
        let program: &PerfEvent = self
            .ebpf
            .program(profiler_common::PROGRAM_NAME)?
            .try_into()
            .ok()?;
        let info = program.info().ok()?;
        Some(RunTime {
            runs: info.run_count(),
            total: info.run_time(),
        })
    }

    /// The kernel's counters, summed over CPUs: the sampler's and the scheduler program's.
    pub fn stats(&self) -> Result<Stats, BpfError> {
        let stats: PerCpuArray<&MapData, u64> = map_ref(&self.ebpf, maps::STATS)?;
        let mut out = Stats::default();
        for &stat in Stat::ALL {
            out.sample[stat as usize] = summed_stat(&stats, stat, false);
            out.switch[stat as usize] = summed_stat(&stats, stat, true);
        }
        Ok(out)
    }

    /// Takes `--native`'s unwind maps out of the sampler, with a handle of its own on the
    /// counters: tables then load from another thread while this one drains.
    pub fn take_table_maps(&mut self) -> Result<TableMaps, BpfError> {
        let stats = match self.ebpf.map(maps::STATS) {
            Some(Map::PerCpuArray(data)) => data
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(BpfError::Native)?,
            _ => return Err(BpfError::Missing(maps::STATS)),
        };
        let stats = MapData::from_fd(stats).map_err(map_err(maps::STATS))?;
        Ok(TableMaps {
            rows: map_owned(&mut self.ebpf, maps::UNWIND_ROWS)?,
            pages: map_owned(&mut self.ebpf, maps::PAGE_INDEX)?,
            mappings: map_owned(&mut self.ebpf, maps::NATIVE_MAPPINGS)?,
            stats: PerCpuArray::try_from(Map::PerCpuArray(stats)).map_err(map_err(maps::STATS))?,
        })
    }
}

/// Counter `stat` of the sampler (or, `switch`, of the scheduler program), summed over CPUs; 0
/// if it cannot be read.
fn summed_stat<T: Borrow<MapData>>(stats: &PerCpuArray<T, u64>, stat: Stat, switch: bool) -> u64 {
    stats
        .get(&profiler_common::stat_index(stat, switch), 0)
        .map(|v| v.iter().sum())
        .unwrap_or(0)
}

/// `--native`'s unwind maps (rows, page index, each process's mapping list), apart from the
/// sampler, and the kernel's count of unwinds that stopped outside the mappings written.
pub struct TableMaps {
    rows: Array<MapData, RowChunk>,
    pages: Array<MapData, PageChunk>,
    mappings: HashMap<MapData, u32, NativeMappings>,
    stats: PerCpuArray<MapData, u64>,
}

impl UnwindMaps for TableMaps {
    fn write_chunk(&mut self, index: u32, chunk: &RowChunk) -> std::io::Result<()> {
        self.rows
            .set(index, chunk, 0)
            .map_err(std::io::Error::other)
    }

    fn write_page_chunk(&mut self, index: u32, chunk: &PageChunk) -> std::io::Result<()> {
        self.pages
            .set(index, chunk, 0)
            .map_err(std::io::Error::other)
    }

    fn write_mappings(&mut self, pid: u32, mappings: &NativeMappings) -> std::io::Result<()> {
        self.mappings
            .insert(pid, mappings, 0)
            .map_err(std::io::Error::other)
    }

    fn unmapped(&self) -> u64 {
        summed_stat(&self.stats, Stat::NativeNoMapping, false)
    }
}

/// Sets the kernel side's switches (`profiler_common::config`).
fn configure(
    ebpf: &mut Ebpf,
    rate_hz: u64,
    options: SamplerOptions,
    features: KernelFeatures,
    btf: Result<btf::Btf, btf::BtfError>,
) -> Result<(), BpfError> {
    // The switch program reads the incoming thread's id from its task_struct, the fork, exec
    // and exit programs the processes' ids: offsets from the kernel's BTF, which must then be
    // had.
    let following = options.follow != Follow::Nobody;
    let compat_regs = options.native && !features.bpf_loop;
    let btf = match options.idle || following || compat_regs {
        true => Some(btf?),
        false => btf.ok(),
    };
    let offset = |field: &str| -> Result<u32, BpfError> {
        match &btf {
            Some(btf) => Ok(btf.field_offset("task_struct", field)?),
            None => Ok(0),
        }
    };
    // Only a label (`Stat::ThreadExiting`): without BTF, samples of exiting threads keep the
    // label of the read that failed.
    let task_mm_offset = offset("mm").unwrap_or(0);
    // Without it, every sample is kept, even beyond its thread's CPU time.
    let task_runtime_offset = match &btf {
        Some(btf) => btf
            .field_offset("task_struct", "se")
            .and_then(|se| Ok(se + btf.field_offset("sched_entity", "sum_exec_runtime")?))
            .unwrap_or(0),
        None => 0,
    };
    let task_pid_offset = if options.idle { offset("pid")? } else { 0 };
    let task_tgid_offset = if following { offset("tgid")? } else { 0 };
    // The task's state is `__state` from 5.14, `state` before.
    let task_state_offset = match options.idle {
        true => offset("__state").or_else(|_| offset("state"))?,
        false => 0,
    };
    let task_stack_offset = if compat_regs { offset("stack")? } else { 0 };
    // The exit program tells a process's last thread by the live-thread count of its signal
    // struct.
    let (task_signal_offset, signal_live_offset) = match &btf {
        Some(btf) if following => (
            btf.field_offset("task_struct", "signal")?,
            btf.field_offset("signal_struct", "live")?,
        ),
        _ => (0, 0),
    };
    // The CPU time one sample stands for, against which a thread's samples are held.
    let sample_period = u32::try_from(1_000_000_000 / rate_hz.max(1)).unwrap_or(u32::MAX);
    let mut switches: Array<&mut MapData, u32> = map_mut(ebpf, maps::CONFIG)?;
    for (index, value) in [
        (config::IDLE, options.idle as u32),
        (config::GIL_ONLY, options.gil_only as u32),
        (config::TASK_PID_OFFSET, task_pid_offset),
        (config::FOLLOW_ALL, (options.follow == Follow::All) as u32),
        (config::TASK_TGID_OFFSET, task_tgid_offset),
        (config::TASK_STATE_OFFSET, task_state_offset),
        (config::TASK_STACK_OFFSET, task_stack_offset),
        (config::TASK_SIGNAL_OFFSET, task_signal_offset),
        (config::SIGNAL_LIVE_OFFSET, signal_live_offset),
        (config::TASK_MM_OFFSET, task_mm_offset),
        (config::TASK_RUNTIME_OFFSET, task_runtime_offset),
        (config::SAMPLE_PERIOD_NS, sample_period),
    ] {
        switches
            .set(index, value, 0)
            .map_err(map_err(maps::CONFIG))?;
    }
    Ok(())
}

/// The programs a session with `options` runs on a kernel with `features`: the variants it can
/// run, and only those its options need.
fn programs_to_load(options: SamplerOptions, features: KernelFeatures) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = sample_slots(options.native, features)
        .iter()
        .map(|(name, _)| *name)
        .collect();
    names.push(profiler_common::PROGRAM_NAME);
    if options.idle {
        names.extend(switch_slots(features).into_iter().map(|(name, _)| name));
        names.push(profiler_common::SWITCH_PROGRAM_NAME);
    }
    if options.follow != Follow::Nobody {
        names.extend(PROCESS_PROGRAMS.map(|(name, _)| name));
    }
    names
}

/// Loads the programs `names`, all at once: the kernel verifies each on the CPU that loads it,
/// and one after another the verifier was most of a command's start-up (40-55 ms for the thread
/// walk, 25-35 for a frame walker, 19 for the native unwinder, on this project's 2-CPU test
/// machine).
fn load_programs(ebpf: &mut Ebpf, names: &[&'static str]) -> Result<(), BpfError> {
    if let Some(missing) = names.iter().find(|n| ebpf.program(n).is_none()) {
        return Err(BpfError::Missing(missing));
    }
    let wanted: Vec<(&'static str, &mut Program)> = ebpf
        .programs_mut()
        .filter_map(|(name, program)| Some((*names.iter().find(|n| **n == name)?, program)))
        .collect();
    let mut loaded: Vec<(&'static str, Result<(), BpfError>)> = thread::scope(|scope| {
        let loads: Vec<_> = wanted
            .into_iter()
            .map(|(name, program)| (name, scope.spawn(move || load_one(name, program))))
            .collect();
        loads
            .into_iter()
            .map(|(name, load)| {
                let result = load.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
                (name, result)
            })
            .collect()
    });
    // The first refusal in `names`' order, whichever was verified first.
    loaded.sort_by_key(|(name, _)| names.iter().position(|n| n == name));
    loaded.into_iter().try_for_each(|(_, result)| result)
}

/// Loads one program of the kinds the object has.
fn load_one(name: &'static str, program: &mut Program) -> Result<(), BpfError> {
    match program {
        Program::PerfEvent(p) => load(name, p.load()),
        Program::RawTracePoint(p) => load(name, p.load()),
        _ => Err(BpfError::Program(ProgramError::UnexpectedProgramType)),
    }
}

/// The programs the CPU-clock sampler tail-calls, by slot: the walker the kernel can run, the
/// thread walk, without `bpf_loop` the code objects' copier, and with `native` the unwinder the
/// kernel can run.
fn sample_slots(native: bool, features: KernelFeatures) -> Vec<(&'static str, u32)> {
    let walker = match features.bpf_loop {
        true => profiler_common::WALK_LOOP_PROGRAM_NAME,
        false => profiler_common::WALK_PROGRAM_NAME,
    };
    let mut slots = vec![
        (walker, profiler_common::WALK_PROGRAM_SLOT),
        (
            profiler_common::THREADS_PROGRAM_NAME,
            profiler_common::THREADS_PROGRAM_SLOT,
        ),
    ];
    if !features.bpf_loop {
        slots.push((
            profiler_common::COPY_CODE_PROGRAM_NAME,
            profiler_common::COPY_CODE_PROGRAM_SLOT,
        ));
    }
    if native {
        let unwinder = match features.bpf_loop {
            true => profiler_common::UNWIND_PROGRAM_NAME,
            false => profiler_common::UNWIND_COMPAT_PROGRAM_NAME,
        };
        slots.push((unwinder, profiler_common::UNWIND_PROGRAM_SLOT));
    }
    slots
}

/// Puts the loaded programs the CPU-clock sampler tail-calls into their table, which the caller
/// holds while sampling runs.
fn fill_sample_table(
    ebpf: &mut Ebpf,
    native: bool,
    features: KernelFeatures,
) -> Result<ProgramArray<MapData>, BpfError> {
    let mut programs: ProgramArray<MapData> = map_owned(ebpf, maps::PROGRAMS)?;
    for (name, slot) in sample_slots(native, features) {
        let p: &mut PerfEvent = program(ebpf, name)?;
        let fd = clone_fd(p.fd()?)?;
        put(&mut programs, maps::PROGRAMS, slot, &fd)?;
    }
    Ok(programs)
}

/// The scheduler-switch walker the kernel can run, the switch's thread walk and, without
/// `bpf_loop`, its code objects' copier, by slot.
fn switch_slots(features: KernelFeatures) -> Vec<(&'static str, u32)> {
    let walker = match features.bpf_loop {
        true => profiler_common::SWITCH_WALK_LOOP_PROGRAM_NAME,
        false => profiler_common::SWITCH_WALK_PROGRAM_NAME,
    };
    let mut slots = vec![
        (walker, profiler_common::WALK_PROGRAM_SLOT),
        (
            profiler_common::SWITCH_THREADS_PROGRAM_NAME,
            profiler_common::THREADS_PROGRAM_SLOT,
        ),
    ];
    if !features.bpf_loop {
        slots.push((
            profiler_common::SWITCH_COPY_CODE_PROGRAM_NAME,
            profiler_common::COPY_CODE_PROGRAM_SLOT,
        ));
    }
    slots
}

/// `--idle`: puts the loaded switch walkers into their table and attaches the scheduler-switch
/// program to the `sched_switch` raw tracepoint, by name through the bpf syscall (no tracefs
/// needed).
fn attach_switch_programs(
    ebpf: &mut Ebpf,
    features: KernelFeatures,
) -> Result<ProgramArray<MapData>, BpfError> {
    let mut switch_programs: ProgramArray<MapData> = map_owned(ebpf, maps::SWITCH_PROGRAMS)?;
    for (name, slot) in switch_slots(features) {
        let p: &mut RawTracePoint = program(ebpf, name)?;
        let fd = clone_fd(p.fd()?)?;
        put(&mut switch_programs, maps::SWITCH_PROGRAMS, slot, &fd)?;
    }
    let switch: &mut RawTracePoint = program(ebpf, profiler_common::SWITCH_PROGRAM_NAME)?;
    switch.attach("sched_switch")?;
    Ok(switch_programs)
}

/// The fork, exec and exit programs, by the raw tracepoint each attaches to.
const PROCESS_PROGRAMS: [(&str, &str); 3] = [
    (profiler_common::FORK_PROGRAM_NAME, "sched_process_fork"),
    (profiler_common::EXEC_PROGRAM_NAME, "sched_process_exec"),
    (profiler_common::EXIT_PROGRAM_NAME, "sched_process_exit"),
];

/// `--subprocesses`, `--all`: attaches the loaded fork, exec and exit programs to their raw
/// tracepoints and returns the ring buffer they report into.
fn attach_process_programs(ebpf: &mut Ebpf) -> Result<RingBuf<MapData>, BpfError> {
    for (name, tracepoint) in PROCESS_PROGRAMS {
        let p: &mut RawTracePoint = program(ebpf, name)?;
        p.attach(tracepoint)?;
    }
    map_owned(ebpf, maps::PROCESS_EVENTS)
}

/// Runs the loaded sampler on the CPU-clock event of every online CPU.
fn attach_sampler(ebpf: &mut Ebpf, rate_hz: u64) -> Result<clock::SampleClock, BpfError> {
    let sampler: &mut PerfEvent = program(ebpf, profiler_common::PROGRAM_NAME)?;
    let cpus = online_cpus().map_err(|(_, e)| BpfError::Cpus(e))?;
    clock::SampleClock::start(sampler.fd()?.as_fd(), &cpus, rate_hz).map_err(|e| BpfError::Attach {
        cpu: e.cpu,
        call: e.call,
        source: e.source,
    })
}

/// Every record waiting in `ring`, each a `T` the kernel wrote whole (a shorter one is skipped).
fn read_ring<T: aya::Pod>(ring: &mut RingBuf<MapData>) -> Vec<T> {
    let mut records = Vec::new();
    while let Some(item) = ring.next() {
        if item.len() >= size_of::<T>() {
            // SAFETY: the item holds at least a `T`'s bytes, and any bit pattern is a valid
            // `T` (`Pod`: repr(C), integers and arrays of them, no padding).
            records.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<T>()) });
        }
    }
    records
}

/// Copies and deletes every entry of stack map `name`.
fn drain_map<V: aya::Pod, F: FnMut(u64, &V)>(
    ebpf: &mut Ebpf,
    name: &'static str,
    mut each: F,
) -> Result<(), BpfError> {
    let mut map: HashMap<&mut MapData, u64, V> = map_mut(ebpf, name)?;
    let ids: Vec<u64> = map.keys().filter_map(Result::ok).collect();
    for id in ids {
        if let Ok(value) = map.get(&id, 0) {
            each(id, &value);
        }
        let _ = map.remove(&id);
    }
    Ok(())
}

/// Program `name` of the object, as the type `P` it was built as.
fn program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, BpfError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    Ok(ebpf
        .program_mut(name)
        .ok_or(BpfError::Missing(name))?
        .try_into()?)
}

/// A program's load result, with a verifier rejection turned into an error carrying its log.
fn load(program: &'static str, result: Result<(), ProgramError>) -> Result<(), BpfError> {
    result.map_err(|e| match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => BpfError::Verifier {
            program,
            error: io_error,
            log: verifier_log.to_string(),
        },
        other => BpfError::Program(other),
    })
}

/// A descriptor of a loaded program that does not borrow the object.
fn clone_fd(fd: &ProgramFd) -> Result<ProgramFd, BpfError> {
    fd.try_clone()
        .map_err(|e| BpfError::Program(ProgramError::IOError(e)))
}

/// Puts a loaded program (`fd`) in `slot` of tail-call table `name`.
fn put(
    table: &mut ProgramArray<MapData>,
    name: &'static str,
    slot: u32,
    fd: &ProgramFd,
) -> Result<(), BpfError> {
    table.set(slot, fd, 0).map_err(map_err(name))
}

/// The kernel's counters by `Stat`: the CPU-clock sampler's, and the scheduler-switch
/// program's (`--idle`). What each counts is its `StatClass`, defined once in profiler-common.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    sample: [u64; Stat::COUNT as usize],
    switch: [u64; Stat::COUNT as usize],
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            sample: [0; Stat::COUNT as usize],
            switch: [0; Stat::COUNT as usize],
        }
    }
}

impl Stats {
    /// A sampler counter.
    pub fn get(&self, stat: Stat) -> u64 {
        self.sample[stat as usize]
    }

    /// A scheduler-switch program counter (`--idle`).
    pub fn switch(&self, stat: Stat) -> u64 {
        self.switch[stat as usize]
    }

    /// Sets a sampler counter (for tests of what reports them).
    pub fn set(&mut self, stat: Stat, n: u64) {
        self.sample[stat as usize] = n;
    }

    /// Sets a scheduler-switch counter (for tests of what reports them).
    pub fn set_switch(&mut self, stat: Stat, n: u64) {
        self.switch[stat as usize] = n;
    }

    /// The sampler's counters of one class, with their counts, in `Stat` order (zeros too).
    pub fn of_class(&self, class: StatClass) -> impl Iterator<Item = (Stat, u64)> + '_ {
        Stat::ALL
            .iter()
            .filter(move |s| s.class() == class)
            .map(|&s| (s, self.get(s)))
    }

    /// Samples of target threads, by their fates: recorded, outside Python, left out, lost.
    pub fn fates(&self) -> u64 {
        Stat::ALL
            .iter()
            .filter(|s| s.class().is_fate())
            .map(|&s| self.get(s))
            .sum()
    }

    /// Samples lost to a fault or a limit, and off-CPU intervals lost: every error.
    pub fn lost(&self) -> u64 {
        Stat::ALL
            .iter()
            .filter(|s| s.class().is_error())
            .map(|&s| self.get(s) + self.switch(s))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_program_a_session_loads_is_in_the_object_once() {
        use ::object::{Object as _, ObjectSymbol as _};
        let file = ::object::File::parse(OBJECT).expect("the built BPF object parses");
        let symbols: Vec<&str> = file.symbols().filter_map(|s| s.name().ok()).collect();
        for bpf_loop in [true, false] {
            let features = KernelFeatures {
                release: (6, 1),
                bpf_loop,
                unpreallocated_maps: true,
            };
            for (native, idle, follow) in [
                (false, false, Follow::Nobody),
                (true, false, Follow::Nobody),
                (false, true, Follow::Nobody),
                (true, true, Follow::Named),
                (false, false, Follow::All),
            ] {
                let options = SamplerOptions {
                    native,
                    idle,
                    follow,
                    ..SamplerOptions::default()
                };
                let names = programs_to_load(options, features);
                for name in &names {
                    assert!(symbols.contains(name), "{name} is not in the object");
                    let times = names.iter().filter(|n| n == &name).count();
                    assert_eq!(times, 1, "{name} loaded {times} times");
                }
                // The ones the tables and attachments take.
                let slots = sample_slots(native, features);
                assert!(slots.iter().all(|(name, _)| names.contains(name)));
                assert!(names.contains(&profiler_common::PROGRAM_NAME));
                let switch = switch_slots(features);
                assert_eq!(idle, switch.iter().all(|(name, _)| names.contains(name)));
                let switch_program = names.contains(&profiler_common::SWITCH_PROGRAM_NAME);
                assert_eq!(idle, switch_program);
                let process = PROCESS_PROGRAMS
                    .iter()
                    .all(|(name, _)| names.contains(name));
                assert_eq!(follow != Follow::Nobody, process);
            }
        }
    }

    #[test]
    fn the_kernel_path_follows_the_release() {
        assert!(matches!(
            KernelFeatures::of_release("5.4.0-216-generic").check(),
            Err(BpfError::KernelTooOld(5, 4))
        ));
        assert!(KernelFeatures::of_release("").check().is_ok());
        let bullseye = KernelFeatures::of_release("5.10.0-46-amd64\n");
        assert!(bullseye.check().is_ok());
        assert_eq!(bullseye.release, (5, 10));
        assert!(!bullseye.bpf_loop);
        assert!(
            bullseye
                .describe()
                .starts_with("kernel 5.10: walker and unwinder without bpf_loop (")
        );
        let last_without = KernelFeatures::of_release("5.16.20");
        assert!(!last_without.bpf_loop);
        let first_with = KernelFeatures::of_release("5.17.0-rc1");
        assert!(first_with.bpf_loop);
        let host = KernelFeatures::of_release("6.18.3+deb14-amd64");
        assert_eq!(host.describe(), "kernel 6.18: bpf_loop walker and unwinder");
    }

    #[test]
    fn permission_is_found_in_the_error_chain_not_in_its_text() {
        let syscall = |errno| BpfError::Attach {
            cpu: 0,
            call: "perf_event_open",
            source: std::io::Error::from_raw_os_error(errno),
        };
        assert!(syscall(libc::EPERM).is_permission());
        assert!(syscall(libc::EACCES).is_permission());
        assert!(!syscall(libc::EINVAL).is_permission());
        let verifier = |errno| BpfError::Verifier {
            program: "on_cpu_sample",
            error: std::io::Error::from_raw_os_error(errno),
            log: "EPERM in a log is not a refusal".into(),
        };
        assert!(!verifier(libc::EINVAL).is_permission());
        assert!(verifier(libc::EPERM).is_permission());
    }

    #[test]
    fn fates_and_losses_follow_the_classes() {
        let mut s = Stats::default();
        for (stat, n) in [
            (Stat::TargetSample, 112),
            (Stat::Recorded, 100),
            (Stat::NoThreadState, 5),
            (Stat::GilNotHeld, 4),
            (Stat::StackMapFull, 2),
            (Stat::NoFrame, 1),
            // Notes on top of recorded samples, not fates.
            (Stat::ReadFrame, 7),
            (Stat::Truncated, 3),
            (Stat::NativeComplete, 99),
            (Stat::GilHeld, 60),
        ] {
            s.set(stat, n);
        }
        s.set_switch(Stat::OffCpuMapFull, 1);
        s.set_switch(Stat::NoThreadState, 40);
        assert_eq!(s.fates(), 112, "each sample has one fate");
        assert_eq!(s.fates(), s.get(Stat::TargetSample));
        assert_eq!(s.lost(), 2 + 1 + 1, "sample losses and the lost interval");
        let lost: Vec<_> = s
            .of_class(StatClass::Lost)
            .filter(|&(_, n)| n > 0)
            .collect();
        assert_eq!(lost, vec![(Stat::StackMapFull, 2), (Stat::NoFrame, 1)]);
    }
}
