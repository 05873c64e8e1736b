//! The `dump` command: prints the current Python stack of every thread of a process once, like
//! `py-spy dump`. No BPF: a blocked thread never runs on a CPU, so the CPU-clock sampler cannot
//! see it; the thread list and frame chains are read from /proc/PID/mem (`python::threads`),
//! code objects and line tables as `record` reads them. It ties those stages together and holds
//! none of their logic.

use std::{
    fmt::Write as _,
    fs,
    io::{self, Write},
};

use crate::{
    process::{self, ProcMem, ProcessError, PythonProcess},
    profile::{
        Frame,
        collect::{FrameOptions, frame_for},
    },
    python::{
        self, Layout, UnsupportedVersion,
        code::read_code,
        threads::{ThreadStack, WalkError, walk_threads},
    },
};

/// Reads of a running process can race with it (a frame popped while we follow it); a failed
/// walk is tried again this many times.
const ATTEMPTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("pid {pid}: {source}")]
    Unsupported {
        pid: u32,
        source: UnsupportedVersion,
    },
    #[error("pid {pid}: {source}")]
    Walk { pid: u32, source: WalkError },
    #[error("writing the dump: {0}")]
    Write(#[from] io::Error),
}

impl DumpError {
    pub fn is_permission(&self) -> bool {
        matches!(
            self,
            DumpError::Process(ProcessError::PermissionDenied { .. })
        )
    }
}

/// A validated `dump` invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpConfig {
    pub pid: u32,
    /// Native frames asked for (not available in this build: a notice says so).
    pub native: bool,
    pub frames: FrameOptions,
}

/// One thread as printed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadDump {
    pub tid: u64,
    /// `/proc/PID/task/TID/comm`, if the thread still exists.
    pub name: Option<String>,
    /// The kernel's state letter and its meaning (`S sleeping`, `R running`, ...).
    pub state: Option<String>,
    /// Leaf first.
    pub frames: Vec<Frame>,
    pub truncated: bool,
}

pub fn run(cfg: &DumpConfig, out: &mut impl Write) -> Result<(), DumpError> {
    let p = process::inspect(cfg.pid)?;
    let mem = ProcMem::open(p.pid).map_err(|e| ProcessError::from_proc(p.pid, "mem", e))?;
    // Where the interpreter publishes its layout (3.13+), that one.
    let (layout, _) = python::layout_of(&mem, p.version, p.runtime_addr)
        .map_err(|source| DumpError::Unsupported { pid: p.pid, source })?;
    if cfg.native {
        eprintln!(
            "prof-bpf: --native: native frames are not available in this build; showing Python frames"
        );
    }
    let threads = dump(&p, &layout, cfg.frames)?;
    out.write_all(render(&p, &threads).as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Every thread's stack, main thread first.
pub fn dump(
    p: &PythonProcess,
    layout: &Layout,
    options: FrameOptions,
) -> Result<Vec<ThreadDump>, DumpError> {
    let mem = ProcMem::open(p.pid).map_err(|e| ProcessError::from_proc(p.pid, "mem", e))?;
    let mut attempt = 0;
    let stacks = loop {
        attempt += 1;
        match walk_threads(&mem, &layout.target_info(p.runtime_addr)) {
            Ok(s) => break s,
            Err(_) if attempt < ATTEMPTS && process::is_alive(p) => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(source) if process::is_alive(p) => {
                return Err(DumpError::Walk { pid: p.pid, source });
            }
            Err(_) => return Err(ProcessError::Exited { pid: p.pid }.into()),
        }
    };
    let mut threads: Vec<ThreadDump> = stacks
        .iter()
        .map(|t| name_thread(&mem, p.pid, layout, options, t))
        .collect();
    threads.sort_by_key(|t| t.tid);
    Ok(threads)
}

fn name_thread(
    mem: &ProcMem,
    pid: u32,
    layout: &Layout,
    options: FrameOptions,
    t: &ThreadStack,
) -> ThreadDump {
    let task = format!("/proc/{pid}/task/{}", t.tid);
    let name = fs::read_to_string(format!("{task}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string());
    let state = fs::read_to_string(format!("{task}/stat"))
        .ok()
        .and_then(|s| Some(state_name(s.rsplit_once(')')?.1.split_whitespace().next()?)));
    let frames = t
        .frames
        .iter()
        .map(|f| match read_code(mem, layout, f.code, f.tag) {
            Ok(code) => frame_for(options, layout, f, &code),
            Err(e) => Frame::marker(format!("[unknown] ({e})")),
        })
        .collect();
    ThreadDump {
        tid: t.tid,
        name,
        state,
        frames,
        truncated: t.truncated,
    }
}

/// `S` -> `sleeping`, as ps(1) documents the letters.
fn state_name(letter: &str) -> String {
    match letter {
        "R" => "running",
        "S" => "sleeping",
        "D" => "waiting for I/O",
        "T" | "t" => "stopped",
        "Z" => "zombie",
        other => return other.to_string(),
    }
    .to_string()
}

/// py-spy's layout: a line per process, then per thread its id, name and state, and its frames
/// leaf first, indented.
pub fn render(p: &PythonProcess, threads: &[ThreadDump]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Process {}: {} ({}, CPython {})",
        p.pid,
        p.name,
        p.binary.display(),
        p.version
    );
    for t in threads {
        let _ = writeln!(out);
        let _ = write!(out, "Thread {}", t.tid);
        if let Some(name) = &t.name {
            let _ = write!(out, " \"{name}\"");
        }
        if let Some(state) = &t.state {
            let _ = write!(out, " ({state})");
        }
        let _ = writeln!(out);
        if t.frames.is_empty() {
            let _ = writeln!(out, "    (no Python frame: idle or outside Python code)");
        }
        for f in &t.frames {
            let _ = writeln!(out, "    {}", f.label());
        }
        if t.truncated {
            let _ = writeln!(
                out,
                "    [truncated: deeper than {} frames]",
                profiler_common::MAX_PYTHON_FRAMES
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_py_spy() {
        let p = PythonProcess {
            pid: 10,
            name: "python3".into(),
            binary: "/usr/bin/python3.11".into(),
            version: python::Version::new(3, 11),
            runtime_addr: 0,
            start_time: 0,
        };
        let f = |name: &str, line| Frame {
            name: name.into(),
            file: "a.py".into(),
            line,
        };
        let threads = vec![
            ThreadDump {
                tid: 10,
                name: Some("python3".into()),
                state: Some(state_name("S")),
                frames: vec![f("wait", 3), f("<module>", 9)],
                truncated: false,
            },
            ThreadDump {
                tid: 11,
                name: None,
                state: None,
                frames: vec![],
                truncated: false,
            },
        ];
        assert_eq!(
            render(&p, &threads),
            "Process 10: python3 (/usr/bin/python3.11, CPython 3.11)\n\n\
             Thread 10 \"python3\" (sleeping)\n    wait (a.py:3)\n    <module> (a.py:9)\n\n\
             Thread 11\n    (no Python frame: idle or outside Python code)\n"
        );
    }
}
