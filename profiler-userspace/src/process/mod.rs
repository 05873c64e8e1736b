//! Finding a Python interpreter in a process: its memory maps, the ELF file that holds
//! `_PyRuntime` (libpython or the executable itself), the CPython version and the runtime's
//! address. Reads /proc and ELF files only; never touches BPF.

mod elf;
mod maps;
mod memory;
pub mod ptrace;
pub mod watch;

use std::{fs, io, path::PathBuf};

pub use maps::{Mapping, parse_maps, read_maps};
pub use memory::{LocalMemory, ProcMem, ProcessMemory};

use crate::python::Version;

/// Where glibc's thread descriptor (`struct pthread`, nptl/descr.h), which `pthread_self()`
/// points at, keeps the kernel's thread id on x86_64. Python up to 3.10 records only
/// `pthread_self()` in its thread states; the kernel follows it here to match the sampled
/// thread. Checked with ctypes against `threading.get_native_id()` on glibc 2.36.
pub const PTHREAD_TID_OFFSET: u16 = 720;

/// What was looked for, for the not-Python error.
const LOOKED_FOR: &str = "a mapped libpythonX.Y.so, or an executable that exports _PyRuntime";

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("no process with pid {pid}")]
    NoSuchProcess { pid: u32 },
    #[error("process {pid} exited")]
    Exited { pid: u32 },
    #[error("permission denied reading /proc/{pid}/{what}")]
    PermissionDenied { pid: u32, what: &'static str },
    #[error(
        "the kernel does not let even root read /proc/{pid}/{what}: process {pid} is protected \
         (not dumpable, in a user namespace root does not own, or guarded by a security module)"
    )]
    Protected { pid: u32, what: &'static str },
    #[error("pid {pid} ({name}) is a kernel thread, not a program with a Python interpreter")]
    KernelThread { pid: u32, name: String },
    #[error(
        "pid {pid} ({name}) is a zombie: it has exited and waits for its parent (pid {ppid}) to \
         collect its exit status"
    )]
    Zombie { pid: u32, name: String, ppid: u32 },
    #[error("pid {pid} ({exe}) is not a Python process: looked for {LOOKED_FOR}")]
    NotPython { pid: u32, exe: String },
    #[error("reading {path}: {source}")]
    Elf {
        path: PathBuf,
        source: object::Error,
    },
    #[error("reading /proc/{pid}/{what}: {source}")]
    Io {
        pid: u32,
        what: &'static str,
        source: io::Error,
    },
}

impl ProcessError {
    pub(crate) fn from_proc(pid: u32, what: &'static str, e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::NotFound => ProcessError::NoSuchProcess { pid },
            io::ErrorKind::PermissionDenied if crate::privilege::is_root() => {
                ProcessError::Protected { pid, what }
            }
            io::ErrorKind::PermissionDenied => ProcessError::PermissionDenied { pid, what },
            _ if e.raw_os_error() == Some(libc::ESRCH) => ProcessError::Exited { pid },
            _ => ProcessError::Io {
                pid,
                what,
                source: e,
            },
        }
    }
}

/// A process with a CPython interpreter in it.
#[derive(Clone, Debug)]
pub struct PythonProcess {
    pub pid: u32,
    /// The process's name (`comm`), for labels.
    pub name: String,
    /// The ELF file that holds the interpreter.
    pub binary: PathBuf,
    /// The version as found (it may be one prof-bpf does not support).
    pub version: Version,
    /// Address of `_PyRuntime` in the process.
    pub runtime_addr: u64,
    /// Start time in clock ticks since boot, to tell this process from a later one with its pid.
    pub start_time: u64,
}

/// Looks for a CPython interpreter in `pid`. `Ok(None)` means the process has none (yet: a
/// launched command may still be loading it).
pub fn find_python(pid: u32) -> Result<Option<PythonProcess>, ProcessError> {
    let maps = read_maps(pid).map_err(|e| ProcessError::from_proc(pid, "maps", e))?;
    let start_time = start_time(pid)?;
    let name = fs::read_to_string(format!("/proc/{pid}/comm"))
        .map_err(|e| ProcessError::from_proc(pid, "comm", e))?
        .trim_end()
        .to_string();

    // libpython first: with a shared interpreter the executable only has a stub.
    let lib = maps.iter().find(|m| is_libpython(m));
    let exe = exe_of(pid)?;
    let candidates = lib
        .and_then(|m| m.path.clone())
        .into_iter()
        .chain([exe.clone()]);

    for binary in candidates {
        let Some(mapped) = maps.iter().find(|m| m.path.as_ref() == Some(&binary)) else {
            continue;
        };
        let path_in_ns = proc_dir(pid)
            .join("root")
            .join(binary.strip_prefix("/").unwrap_or(&binary));
        let info = match elf::inspect_file(&path_in_ns) {
            Ok(info) => info,
            Err(elf::ElfError::Io(e)) => return Err(ProcessError::from_proc(pid, "root", e)),
            Err(elf::ElfError::Parse(source)) => {
                return Err(ProcessError::Elf {
                    path: binary.clone(),
                    source,
                });
            }
        };
        let version = libpython_version(&binary)
            .or(info.py_version)
            .or_else(|| executable_version(&binary));
        let Some(version) = version else { continue };
        let Some(runtime_vaddr) = info.runtime else {
            if version < Version::new(3, 7) {
                // Pythons before 3.7 have no _PyRuntime. Report the version so the caller can
                // say it is unsupported.
                return Ok(Some(PythonProcess {
                    pid,
                    name,
                    binary,
                    version,
                    runtime_addr: 0,
                    start_time,
                }));
            }
            // An executable that loads libpython (not mapped yet, if we are early).
            continue;
        };
        let bias = maps::load_bias(&maps, &binary, info.first_load_vaddr, info.is_pie_or_shared)
            .unwrap_or(mapped.start - mapped.offset);
        return Ok(Some(PythonProcess {
            pid,
            name,
            binary,
            version,
            runtime_addr: bias.wrapping_add(runtime_vaddr),
            start_time,
        }));
    }
    Ok(None)
}

/// `find_python` for polling a starting process: reads no ELF file until a libpython is mapped
/// or the executable is named like a Python.
pub fn find_python_cheaply(pid: u32) -> Result<Option<PythonProcess>, ProcessError> {
    let maps = read_maps(pid).map_err(|e| ProcessError::from_proc(pid, "maps", e))?;
    let has_lib = maps.iter().any(is_libpython);
    let exe = exe_of(pid)?;
    if has_lib || named_python(&exe) {
        find_python(pid)
    } else {
        Ok(None)
    }
}

/// Whether an executable's name says Python (`python3.12`, `python`, `pythonw`...): such a
/// process that shows no interpreter yet may still be loading it.
pub fn named_python(exe: &std::path::Path) -> bool {
    exe.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.contains("python"))
}

/// How long `inspect` waits for a process named like Python to map its interpreter: the loader
/// takes milliseconds, so a pid taken right after a spawn is not called "not Python".
const LOADING_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Like `find_python`, but a process without an interpreter is an error, and so is a pid that
/// names no process to profile (a kernel thread, a zombie), each with its own message.
pub fn inspect(pid: u32) -> Result<PythonProcess, ProcessError> {
    let stat = proc_stat(pid).map_err(|e| ProcessError::from_proc(pid, "stat", e))?;
    if stat.flags & PF_KTHREAD != 0 {
        return Err(ProcessError::KernelThread {
            pid,
            name: comm(pid),
        });
    }
    if stat.state == 'Z' && live_thread(pid).is_none() {
        return Err(ProcessError::Zombie {
            pid,
            name: comm(pid),
            ppid: stat.ppid,
        });
    }
    let started = std::time::Instant::now();
    let mut found = find_python(pid)?;
    while found.is_none() && started.elapsed() < LOADING_GRACE && named_python(&exe_of(pid)?) {
        std::thread::sleep(std::time::Duration::from_millis(10));
        found = find_python(pid)?;
    }
    match found {
        Some(p) => Ok(p),
        None => {
            let exe = exe_of(pid)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "unknown executable".into());
            Err(ProcessError::NotPython { pid, exe })
        }
    }
}

/// The /proc directory to read `pid`'s memory, maps and files through: `/proc/PID`, or, when
/// its main thread has exited while other threads run on, `/proc/PID/task/TID` of a live
/// thread (the exited leader's own entries are empty).
pub fn proc_dir(pid: u32) -> PathBuf {
    let base = PathBuf::from(format!("/proc/{pid}"));
    if !proc_stat(pid).is_ok_and(|s| s.state == 'Z') {
        return base;
    }
    match live_thread(pid) {
        Some(tid) => base.join("task").join(tid.to_string()),
        None => base,
    }
}

/// A thread of `pid` other than its exited main thread that still runs.
fn live_thread(pid: u32) -> Option<u32> {
    let mut tids: Vec<u32> = fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&tid| tid != pid)
        .collect();
    tids.sort_unstable();
    tids.into_iter().find(|tid| {
        fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"))
            .ok()
            .and_then(|s| parse_stat(&s))
            .is_some_and(|s| !matches!(s.state, 'Z' | 'X'))
    })
}

/// `pid`'s memory, with the error saying which process and why (gone, not permitted).
pub fn open_memory(pid: u32) -> Result<ProcMem, ProcessError> {
    ProcMem::open(pid).map_err(|e| ProcessError::from_proc(pid, "mem", e))
}

/// The kernel's name for process `pid` (its `comm`), or `?` if it is gone.
pub fn comm(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// The kernel's name for thread `tid` of `pid` (its `comm`), or `?` if it is gone.
pub fn thread_name(pid: u32, tid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// `PF_KTHREAD` in /proc/PID/stat's flags (include/linux/sched.h): a kernel thread.
const PF_KTHREAD: u32 = 0x0020_0000;

/// What prof-bpf reads from /proc/PID/stat: the state letter, the parent, the flags and the
/// start time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProcStat {
    pub state: char,
    pub ppid: u32,
    /// The kernel's `PF_*` flags.
    pub flags: u32,
    /// Clock ticks since boot: with the pid, it tells a process from a later one with its pid.
    pub start_time: u64,
}

/// /proc/PID/stat's fields 3, 4, 9 and 22.
pub(crate) fn proc_stat(pid: u32) -> io::Result<ProcStat> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&stat).ok_or_else(|| io::Error::other("malformed /proc/PID/stat"))
}

fn parse_stat(stat: &str) -> Option<ProcStat> {
    // The name (field 2) may hold spaces and parentheses: parse after the last ')'.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let flags = fields.nth(4)?.parse().ok()?;
    let start_time = fields.nth(12)?.parse().ok()?;
    Some(ProcStat {
        state,
        ppid,
        flags,
        start_time,
    })
}

/// The process's start time (field 22 of /proc/PID/stat).
pub fn start_time(pid: u32) -> Result<u64, ProcessError> {
    proc_stat(pid)
        .map(|s| s.start_time)
        .map_err(|e| ProcessError::from_proc(pid, "stat", e))
}

/// Whether `p` is still the same running process (not exited, pid not reused, not a zombie; a
/// process whose main thread exited lives on in its other threads).
pub fn is_alive(p: &PythonProcess) -> bool {
    proc_stat(p.pid).is_ok_and(|s| {
        s.start_time == p.start_time
            && (!matches!(s.state, 'Z' | 'X') || live_thread(p.pid).is_some())
    })
}

fn is_libpython(m: &Mapping) -> bool {
    m.path
        .as_deref()
        .is_some_and(|p| libpython_version(p).is_some())
}

/// The process's executable, as it was when it started (a deleted file keeps its path).
pub(crate) fn exe_of(pid: u32) -> Result<PathBuf, ProcessError> {
    let exe = fs::read_link(proc_dir(pid).join("exe"))
        .map_err(|e| ProcessError::from_proc(pid, "exe", e))?;
    Ok(strip_deleted(exe))
}

fn strip_deleted(p: PathBuf) -> PathBuf {
    match p.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(s) => PathBuf::from(s),
        None => p,
    }
}

/// `libpython3.12.so.1.0` -> 3.12, `libpython2.7.so` -> 2.7.
pub fn libpython_version(path: &std::path::Path) -> Option<Version> {
    let name = path.file_name()?.to_str()?;
    let rest = name.strip_prefix("libpython")?;
    let (ver, _) = rest.split_once(".so")?;
    Version::parse(ver.trim_end_matches(['d', 'm', 'u']))
}

/// `/usr/bin/python3.11` -> 3.11.
fn executable_version(path: &std::path::Path) -> Option<Version> {
    let name = path.file_name()?.to_str()?;
    Version::parse(name.strip_prefix("python")?)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn stat_fields_after_a_name_with_spaces_and_parentheses() {
        let line = "42 (a (b) c) S 7 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 123456 1 2";
        assert_eq!(
            parse_stat(line),
            Some(ProcStat {
                state: 'S',
                ppid: 7,
                flags: 4194560,
                start_time: 123456
            })
        );
        assert_eq!(parse_stat("42 (x"), None);
        let me = proc_stat(std::process::id()).unwrap();
        assert_eq!(me.ppid, std::os::unix::process::parent_id());
        assert_ne!(me.start_time, 0);
        assert_eq!(me.flags & PF_KTHREAD, 0);
        // kthreadd, the parent of every kernel thread.
        assert_ne!(proc_stat(2).unwrap().flags & PF_KTHREAD, 0);
    }

    #[test]
    fn versions_from_file_names() {
        assert_eq!(
            libpython_version(Path::new("/x/libpython3.12.so.1.0")),
            Some(Version::new(3, 12))
        );
        assert_eq!(
            libpython_version(Path::new("libpython2.7.so")),
            Some(Version::new(2, 7))
        );
        assert_eq!(
            libpython_version(Path::new("libpython3.7m.so.1.0")),
            Some(Version::new(3, 7))
        );
        assert_eq!(libpython_version(Path::new("libc.so.6")), None);
        assert_eq!(
            executable_version(Path::new("/usr/bin/python3.11")),
            Some(Version::new(3, 11))
        );
        assert_eq!(executable_version(Path::new("/usr/bin/python3")), None);
    }
}
