//! Finding the CPython interpreter in a process: the ELF file that holds `_PyRuntime`
//! (libpython, or the executable itself), the version and the runtime's address. Reads /proc and
//! ELF files through `process`; knows nothing of BPF.

use std::path::{Path, PathBuf};

use super::Version;
use crate::process::{
    self, Mapping, ProcessError,
    elf::{self, ElfError},
    namespace::{self, PidNamespace},
};

/// What was looked for, for the not-Python error.
const LOOKED_FOR: &str = "a mapped libpythonX.Y.so, or an executable that exports _PyRuntime";

/// The symbols read from an interpreter's ELF file: the runtime state, and (3.11+) the version.
const SYMBOLS: &[&str] = &["_PyRuntime", "Py_Version"];
/// The section that holds exactly `_PyRuntime` (3.13+ place it there for debuggers), for an
/// executable stripped of the symbol too.
const SECTIONS: &[&str] = &[".PyRuntime"];

/// How long `inspect` waits for a process named like Python to map its interpreter: the loader
/// takes milliseconds, so a pid taken right after a spawn is not called "not Python".
const LOADING_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum FindError {
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("pid {pid} ({exe}) is not a Python process: looked for {LOOKED_FOR}")]
    NotPython { pid: u32, exe: String },
}

/// A process with a CPython interpreter in it.
#[derive(Clone, Debug)]
pub struct PythonProcess {
    pub pid: u32,
    /// The process's name (`comm`), for labels.
    pub name: String,
    /// The ELF file that holds the interpreter, as /proc/PID/maps names it (for a process in a
    /// container, a path that may not exist in prof-bpf's mount namespace: for messages only).
    pub binary: PathBuf,
    /// The version as found (it may be one prof-bpf does not support).
    pub version: Version,
    /// Address of `_PyRuntime` in the process.
    pub runtime_addr: u64,
    /// `sizeof(_PyRuntimeState)` as the ELF file says (the `.PyRuntime` section's or the
    /// symbol's size), where it says: `_Py_DebugOffsets` must agree with it.
    pub runtime_size: Option<u64>,
    /// Start time in clock ticks since boot, to tell this process from a later one with its pid.
    pub start_time: u64,
    /// Its id inside its own pid namespace, when that is not prof-bpf's (a container).
    pub ns_pid: Option<u32>,
    /// Its pid namespace, when that is not prof-bpf's: the kernel matches its threads by their
    /// ids there.
    pub pid_namespace: Option<PidNamespace>,
}

impl PythonProcess {
    /// Whether it still runs (not exited, its pid not reused).
    pub fn is_alive(&self) -> bool {
        process::is_alive(self.pid, self.start_time)
    }
}

/// Looks for a CPython interpreter in `pid`. `Ok(None)` means the process has none (yet: a
/// launched command may still be loading it). Every ELF file is read as the process maps it
/// (`process::open_mapped`), so a Python in a container is found as one on the host is.
pub fn find_python(pid: u32) -> Result<Option<PythonProcess>, ProcessError> {
    let maps = process::read_maps(pid).map_err(|e| ProcessError::from_proc(pid, "maps", e))?;
    let start_time = process::start_time(pid)?;
    let name = process::comm(pid);

    // libpython first: with a shared interpreter the executable only has a stub.
    let lib = maps.iter().find(|m| is_libpython(m));
    let exe = process::exe_of(pid)?;
    let candidates = lib
        .and_then(|m| m.path.clone())
        .into_iter()
        .chain([exe.clone()]);

    for binary in candidates {
        // The file's first mapping (offset 0 holds the ELF header the bias is computed from).
        let Some(mapped) = maps
            .iter()
            .filter(|m| m.path.as_ref() == Some(&binary))
            .min_by_key(|m| m.offset)
        else {
            continue;
        };
        let opened = process::open_mapped(pid, mapped).map_err(|source| {
            // The mapping is gone: the process exited or exec'd meanwhile.
            if !process::is_alive(pid, start_time) {
                ProcessError::Exited { pid }
            } else {
                ProcessError::MappedFile {
                    pid,
                    path: binary.clone(),
                    source,
                }
            }
        })?;
        let info = match elf::inspect_file(&opened, SYMBOLS, SECTIONS) {
            Ok(info) => info,
            Err(ElfError::Io(source)) => {
                return Err(ProcessError::MappedFile {
                    pid,
                    path: binary.clone(),
                    source,
                });
            }
            Err(ElfError::Parse(source)) => {
                return Err(ProcessError::Elf {
                    path: binary.clone(),
                    source,
                });
            }
        };
        let (runtime, py_version) = (info.symbols[0], info.symbols[1]);
        let section = info.sections[0];
        // Py_Version is PY_VERSION_HEX: 0xMMmmPPRS.
        let published = py_version
            .and_then(|s| s.word)
            .map(|hex| Version::new((hex >> 24) as u8, (hex >> 16) as u8));
        let version = libpython_version(&binary)
            .or(published)
            .or_else(|| executable_version(&binary));
        let Some(version) = version else { continue };
        let ns_pid = namespace::ns_pid(pid);
        let pid_namespace = namespace::foreign_pid_namespace(pid)
            .map_err(|e| ProcessError::from_proc(pid, "ns/pid", e))?;
        // The symbol where it is exported; else the section made for it.
        let runtime = runtime
            .map(|s| (s.address, (s.size > 0).then_some(s.size)))
            .or(section.map(|s| (s.address, Some(s.size))));
        let Some((runtime, runtime_size)) = runtime else {
            if version < Version::new(3, 7) {
                // Pythons before 3.7 have no _PyRuntime. Report the version so the caller can
                // say it is unsupported.
                return Ok(Some(PythonProcess {
                    pid,
                    name,
                    binary,
                    version,
                    runtime_addr: 0,
                    runtime_size: None,
                    start_time,
                    ns_pid,
                    pid_namespace,
                }));
            }
            // An executable that loads libpython (not mapped yet, if we are early).
            continue;
        };
        let bias = process::load_bias(&maps, &binary, info.first_load_vaddr, info.is_pie_or_shared)
            .unwrap_or(mapped.start - mapped.offset);
        return Ok(Some(PythonProcess {
            pid,
            name,
            binary,
            version,
            runtime_addr: bias.wrapping_add(runtime),
            runtime_size,
            start_time,
            ns_pid,
            pid_namespace,
        }));
    }
    Ok(None)
}

/// `find_python` for polling a starting process: reads no ELF file until a libpython is mapped
/// or the executable is named like a Python.
pub fn find_python_cheaply(pid: u32) -> Result<Option<PythonProcess>, ProcessError> {
    let maps = process::read_maps(pid).map_err(|e| ProcessError::from_proc(pid, "maps", e))?;
    let has_lib = maps.iter().any(is_libpython);
    let exe = process::exe_of(pid)?;
    if has_lib || named_python(&exe) {
        find_python(pid)
    } else {
        Ok(None)
    }
}

/// Whether an executable's name says Python (`python3.12`, `python`, `pythonw`...): such a
/// process that shows no interpreter yet may still be loading it.
pub fn named_python(exe: &Path) -> bool {
    exe.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.contains("python"))
}

/// Like `find_python`, but a process without an interpreter is an error, and so is a pid that
/// names no process to profile (a kernel thread, a zombie), each with its own message.
pub fn inspect(pid: u32) -> Result<PythonProcess, FindError> {
    process::check_profilable(pid)?;
    let started = std::time::Instant::now();
    let mut found = find_python(pid)?;
    while found.is_none()
        && started.elapsed() < LOADING_GRACE
        && named_python(&process::exe_of(pid)?)
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
        found = find_python(pid)?;
    }
    match found {
        Some(p) => Ok(p),
        None => {
            let exe = process::exe_of(pid)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "unknown executable".into());
            Err(FindError::NotPython { pid, exe })
        }
    }
}

fn is_libpython(m: &Mapping) -> bool {
    m.path
        .as_deref()
        .is_some_and(|p| libpython_version(p).is_some())
}

/// `libpython3.12.so.1.0` -> 3.12, `libpython2.7.so` -> 2.7.
pub fn libpython_version(path: &Path) -> Option<Version> {
    let name = path.file_name()?.to_str()?;
    let rest = name.strip_prefix("libpython")?;
    let (ver, _) = rest.split_once(".so")?;
    Version::parse(ver.trim_end_matches(['d', 'm', 'u']))
}

/// `/usr/bin/python3.11` -> 3.11.
fn executable_version(path: &Path) -> Option<Version> {
    let name = path.file_name()?.to_str()?;
    Version::parse(name.strip_prefix("python")?)
}

#[cfg(test)]
mod tests {
    use super::*;

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
