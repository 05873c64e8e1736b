//! The kernel side's userspace half: loads the BPF object, attaches it to the CPU-clock event on
//! every online CPU, registers targets and drains the maps. The only module that makes BPF
//! syscalls.

pub mod btf;

use std::{
    os::fd::{AsRawFd as _, OwnedFd},
    thread,
    time::Duration,
};

use aya::{
    Ebpf, EbpfError, EbpfLoader, include_bytes_aligned,
    maps::{
        Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, ProgramArray, RingBuf,
    },
    programs::{
        ProgramError, ProgramFd, RawTracePoint,
        perf_event::{PerfEvent, PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
    util::online_cpus,
};
use profiler_common::{
    NativeMappings, NewStack, PageChunk, PyStack, RowChunk, SampleKey, Stat, TargetInfo, config,
    maps,
};

use crate::{profile::collect::Collector, unwind::UnwindMaps};

static OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/profiler-ebpf"));

/// How long a program run that read the old `ACTIVE_COUNTS` value may still be counting into
/// the map being drained. Runs take microseconds; this is generous.
const FLIP_GRACE: Duration = Duration::from_millis(2);

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("loading the BPF object: {0}")]
    Load(#[source] EbpfError),
    #[error("the kernel rejected the BPF program: {error}\nverifier log:\n{log}")]
    Verifier { error: std::io::Error, log: String },
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
    #[error("opening the CPU-clock perf event on CPU {cpu}: {source}")]
    Attach { cpu: u32, source: ProgramError },
    #[error("loading native unwind tables: {0}")]
    Native(#[source] std::io::Error),
    #[error(transparent)]
    Btf(#[from] btf::BtfError),
}

impl BpfError {
    /// Whether more privileges would fix it.
    pub fn is_permission(&self) -> bool {
        let text = format!("{self:?}");
        text.contains("PermissionDenied")
            || text.contains("EPERM")
            || text.contains("Operation not permitted")
    }
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

/// What the kernel records besides CPU samples of every target thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SamplerOptions {
    /// Off-CPU time (`--idle`): attaches the scheduler-switch program.
    pub idle: bool,
    /// Mixed stacks (`--native`): loads the native unwinder and its tables' maps.
    pub native: bool,
    /// Only samples of threads that hold the GIL (`--gil`).
    pub gil_only: bool,
}

/// The loaded, attached kernel program.
pub struct Sampler {
    ebpf: Ebpf,
    /// Hold the tail-call tables (and so the walkers) for as long as sampling runs.
    _programs: Vec<ProgramArray<MapData>>,
    /// Keeps the kernel's BPF run-time statistics on while held (None if the kernel refused).
    _stats: Option<OwnedFd>,
    /// Notices of stacks stored for the first time.
    new_stacks: RingBuf<MapData>,
    active: u32,
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
        let mut loader = EbpfLoader::new();
        if !options.native {
            // The row array and page index are 24 MiB of locked kernel memory: only mixed stacks
            // need them.
            loader.map_max_entries(maps::UNWIND_ROWS, 1);
            loader.map_max_entries(maps::PAGE_INDEX, 1);
        }
        let mut ebpf = loader.load(OBJECT).map_err(BpfError::Load)?;
        let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).ok();
        // With --idle the switch program reads the incoming thread's id from its task_struct.
        let task_pid_offset = match options.idle {
            true => btf::Btf::kernel()?.field_offset("task_struct", "pid")?,
            false => 0,
        };
        let mut switches: Array<&mut MapData, u32> = map_mut(&mut ebpf, maps::CONFIG)?;
        for (index, value) in [
            (config::IDLE, options.idle as u32),
            (config::GIL_ONLY, options.gil_only as u32),
            (config::TASK_PID_OFFSET, task_pid_offset),
        ] {
            switches
                .set(index, value, 0)
                .map_err(map_err(maps::CONFIG))?;
        }

        // Tail-call targets first: the first programs call them from their first run on.
        let mut programs: ProgramArray<MapData> = map_owned(&mut ebpf, maps::PROGRAMS)?;
        let walker: &mut PerfEvent = program(&mut ebpf, profiler_common::WALK_PROGRAM_NAME)?;
        load(walker.load())?;
        let fd = clone_fd(walker.fd()?)?;
        put(
            &mut programs,
            maps::PROGRAMS,
            profiler_common::WALK_PROGRAM_SLOT,
            &fd,
        )?;
        if options.native {
            let unwinder: &mut PerfEvent =
                program(&mut ebpf, profiler_common::UNWIND_PROGRAM_NAME)?;
            load(unwinder.load())?;
            let fd = clone_fd(unwinder.fd()?)?;
            put(
                &mut programs,
                maps::PROGRAMS,
                profiler_common::UNWIND_PROGRAM_SLOT,
                &fd,
            )?;
        }
        let mut programs = vec![programs];
        if options.idle {
            let mut switch_programs: ProgramArray<MapData> =
                map_owned(&mut ebpf, maps::SWITCH_PROGRAMS)?;
            let walker: &mut RawTracePoint =
                program(&mut ebpf, profiler_common::SWITCH_WALK_PROGRAM_NAME)?;
            load(walker.load())?;
            let fd = clone_fd(walker.fd()?)?;
            let slot = profiler_common::WALK_PROGRAM_SLOT;
            put(&mut switch_programs, maps::SWITCH_PROGRAMS, slot, &fd)?;
            programs.push(switch_programs);
            let switch: &mut RawTracePoint =
                program(&mut ebpf, profiler_common::SWITCH_PROGRAM_NAME)?;
            load(switch.load())?;
            // By name through the bpf syscall: no tracefs needed.
            switch.attach("sched_switch")?;
        }

        let new_stacks = map_owned(&mut ebpf, maps::NEW_STACKS)?;
        let sampler: &mut PerfEvent = program(&mut ebpf, profiler_common::PROGRAM_NAME)?;
        load(sampler.load())?;
        let cpus = online_cpus().map_err(|(_, e)| BpfError::Cpus(e))?;
        for cpu in cpus {
            sampler
                .attach(
                    PerfEventConfig::Software(SoftwareEvent::CpuClock),
                    PerfEventScope::AllProcessesOneCpu { cpu },
                    SamplePolicy::Frequency(rate_hz),
                    false,
                )
                .map_err(|source| BpfError::Attach { cpu, source })?;
        }
        Ok(Self {
            ebpf,
            _programs: programs,
            _stats: stats,
            new_stacks,
            active: 0,
        })
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

    /// Waits up to `timeout` for the kernel to announce new stacks, and reads the code objects of
    /// each at once, while they are surely alive. Returns early when notices arrive.
    pub fn wait_for_new_stacks(
        &mut self,
        timeout: Duration,
        collector: &mut Collector,
    ) -> Result<(), BpfError> {
        let mut fd = libc::pollfd {
            fd: self.new_stacks.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; a failed or interrupted poll just means no notice yet.
        unsafe { libc::poll(&mut fd, 1, timeout.as_millis() as i32) };
        let mut notices = Vec::new();
        while let Some(item) = self.new_stacks.next() {
            if item.len() >= size_of::<NewStack>() {
                // SAFETY: the kernel wrote a NewStack (repr(C), plain integers) into the item.
                notices.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<NewStack>()) });
            }
        }
        if notices.is_empty() {
            return Ok(());
        }
        let stacks: HashMap<&MapData, u64, PyStack> = map_ref(&self.ebpf, maps::STACKS)?;
        for notice in notices {
            if let Ok(stack) = stacks.get(&notice.stack_id, 0) {
                collector.add_stack(notice.stack_id, &stack);
            }
            // Resolved even when a drain took the stack out of the map first: an off-CPU stack
            // has no count to be resolved by until its thread wakes, which may be at exit.
            collector.resolve_stack(notice.pid, notice.stack_id);
        }
        Ok(())
    }

    /// Moves everything the kernel recorded since the last drain into `collector`: flips the
    /// count maps so the kernel counts into the other one, drains the idle one, then copies and
    /// deletes the stacks. No sample is lost between two drains.
    pub fn drain(&mut self, collector: &mut Collector) -> Result<(), BpfError> {
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
        let mut counts: PerCpuHashMap<&mut MapData, SampleKey, u64> =
            map_mut(&mut self.ebpf, name)?;
        let keys: Vec<SampleKey> = counts.keys().filter_map(Result::ok).collect();
        for key in keys {
            if let Ok(per_cpu) = counts.get(&key, 0) {
                collector.add_count(key, per_cpu.iter().sum());
            }
            let _ = counts.remove(&key);
        }

        let mut stacks: HashMap<&mut MapData, u64, PyStack> =
            map_mut(&mut self.ebpf, maps::STACKS)?;
        let ids: Vec<u64> = stacks.keys().filter_map(Result::ok).collect();
        for id in ids {
            if let Ok(stack) = stacks.get(&id, 0) {
                collector.add_stack(id, &stack);
            }
            let _ = stacks.remove(&id);
        }
        collector.resolve_new();
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

    /// The kernel's counters, summed over CPUs, indexed by `Stat`.
    pub fn stats(&self) -> Result<Stats, BpfError> {
        let stats: PerCpuArray<&MapData, u64> = map_ref(&self.ebpf, maps::STATS)?;
        let mut out = Stats::default();
        for stat in Stat::ALL {
            out.0[stat as usize] = stats
                .get(&(stat as u32), 0)
                .map(|v| v.iter().sum())
                .unwrap_or(0);
        }
        Ok(out)
    }
}

impl UnwindMaps for Sampler {
    fn write_chunk(&mut self, index: u32, chunk: &RowChunk) -> std::io::Result<()> {
        let mut rows: Array<&mut MapData, RowChunk> =
            map_mut(&mut self.ebpf, maps::UNWIND_ROWS).map_err(std::io::Error::other)?;
        rows.set(index, chunk, 0).map_err(std::io::Error::other)
    }

    fn write_page_chunk(&mut self, index: u32, chunk: &PageChunk) -> std::io::Result<()> {
        let mut pages: Array<&mut MapData, PageChunk> =
            map_mut(&mut self.ebpf, maps::PAGE_INDEX).map_err(std::io::Error::other)?;
        pages.set(index, chunk, 0).map_err(std::io::Error::other)
    }

    fn write_mappings(&mut self, pid: u32, mappings: &NativeMappings) -> std::io::Result<()> {
        let mut table: HashMap<&mut MapData, u32, NativeMappings> =
            map_mut(&mut self.ebpf, maps::NATIVE_MAPPINGS).map_err(std::io::Error::other)?;
        table
            .insert(pid, mappings, 0)
            .map_err(std::io::Error::other)
    }
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
fn load(result: Result<(), ProgramError>) -> Result<(), BpfError> {
    result.map_err(|e| match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => BpfError::Verifier {
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

/// Kernel counters by `Stat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats(pub [u64; Stat::COUNT as usize]);

impl Stats {
    pub fn get(&self, stat: Stat) -> u64 {
        self.0[stat as usize]
    }

    /// Samples lost to an error (not counting ones kept with a caveat).
    pub fn lost(&self) -> u64 {
        Stat::ALL
            .iter()
            .filter(|s| s.is_loss())
            .map(|&s| self.get(s))
            .sum()
    }
}
