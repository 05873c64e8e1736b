//! One frame of a profile, typed: Python code, native code, the kernel, the process or thread a
//! stack belongs to, a truncation, the garbage collector at work, or a frame that could not be
//! named and why. The writers render
//! it (`name`, `file`, `line`, `label`); no marker string lives in the model. `parse` reads the
//! rendered form back (a saved profile keeps frames as name, file and line).

use std::fmt;

/// Where a frame of code is: its function (qualified where the language has it), source file
/// and line (0 when not known or not wanted).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Location {
    pub function: String,
    pub file: String,
    pub line: u32,
}

/// Why a frame could not be named.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unknown {
    /// The code object was freed (its address reused) before userspace read it.
    CodeFreed,
    /// The process exited before its code objects were read.
    ProcessExited,
    /// The kernel's record of the stack was gone when its counts arrived.
    StackLost,
    /// Reading the code object failed, for this reason.
    Unreadable(String),
    /// A native address with no symbol: in `module` at `offset` (a file offset as linked), or,
    /// with no module, an address in no known mapping.
    NativeAddress { module: Option<String>, offset: u64 },
}

/// One frame as a profile holds it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Frame {
    Python(Location),
    /// C, C++ or Rust code (`--native`), named from its symbols.
    Native(Location),
    /// A kernel function (`--kernel`); `None` when no kernel symbol covers the address.
    Kernel(Option<String>),
    /// The root of a process's stacks when several processes are profiled; `ns_pid` is its id
    /// inside its own pid namespace (a container's), where that is not prof-bpf's.
    Process {
        pid: u32,
        ns_pid: Option<u32>,
        name: String,
    },
    /// The root of a thread's stacks (`--threads`); `ns_tid` as `ns_pid`.
    Thread {
        tid: u32,
        ns_tid: Option<u32>,
        name: String,
    },
    /// The stack went deeper than the kernel records: the frames nearest the root are missing.
    Truncated {
        limit: u32,
    },
    /// The interpreter's garbage collector was running, called from the frame below it (`<GC>`,
    /// as CPython's own sampling profiler names it).
    Gc,
    /// An asyncio task, by name (`--async-aware`): the root of its samples, under the tasks
    /// that await it (`task ?` for a task gone before it could be read).
    Task(String),
    /// The native unwind stopped here, for this reason (a `Stat` name); the Python frames of the
    /// stack's outer part stand above it.
    NativeStopped(String),
    Unknown(Unknown),
}

impl Frame {
    const GC: &str = "<GC>";
    const TASK: &str = "task ";

    pub fn python(function: impl Into<String>, file: impl Into<String>, line: u32) -> Self {
        Frame::Python(Location {
            function: function.into(),
            file: file.into(),
            line,
        })
    }

    pub fn native(function: impl Into<String>, file: impl Into<String>, line: u32) -> Self {
        Frame::Native(Location {
            function: function.into(),
            file: file.into(),
            line,
        })
    }

    /// The code location of a Python or native frame.
    pub fn location(&self) -> Option<&Location> {
        match self {
            Frame::Python(l) | Frame::Native(l) => Some(l),
            _ => None,
        }
    }

    /// What a writer shows as the frame's name: the function, or the marker.
    pub fn name(&self) -> String {
        match self {
            Frame::Python(l) | Frame::Native(l) => l.function.clone(),
            Frame::Kernel(Some(f)) => format!("{f}_[k]"),
            Frame::Kernel(None) => "[unknown]_[k]".into(),
            Frame::Process { pid, ns_pid, name } => {
                format!("process {pid} ({name}{})", in_namespace("pid", *ns_pid))
            }
            Frame::Thread { tid, ns_tid, name } => {
                format!("thread {tid} ({name}{})", in_namespace("tid", *ns_tid))
            }
            Frame::Truncated { limit } => format!("[truncated: deeper than {limit} frames]"),
            Frame::Gc => Self::GC.into(),
            Frame::Task(name) => format!("{}{name}", Self::TASK),
            Frame::NativeStopped(why) => format!("[native unwind stopped: {why}]"),
            Frame::Unknown(u) => format!("[unknown] ({u})"),
        }
    }

    /// The source file; empty for frames that are not code.
    pub fn file(&self) -> &str {
        self.location().map_or("", |l| l.file.as_str())
    }

    /// The line; 0 when not known, not wanted, or not code.
    pub fn line(&self) -> u32 {
        self.location().map_or(0, |l| l.line)
    }

    /// The same frame without its line (`-F`'s folding in `report`, `top` without lines).
    pub fn without_line(&self) -> Frame {
        match self {
            Frame::Python(l) => Frame::Python(Location {
                line: 0,
                ..l.clone()
            }),
            Frame::Native(l) => Frame::Native(Location {
                line: 0,
                ..l.clone()
            }),
            other => other.clone(),
        }
    }

    /// `function (file:line)`, as py-spy writes it; a marker alone.
    pub fn label(&self) -> String {
        match (self.file(), self.line()) {
            ("", _) => self.name(),
            (file, 0) => format!("{} ({file})", self.name()),
            (file, line) => format!("{} ({file}:{line})", self.name()),
        }
    }

    /// The frame a saved profile wrote as `name`, `file` and `line` (see `profile::store`):
    /// `parse(f.name(), f.file(), f.line()) == f` for every frame prof-bpf makes, so reading a
    /// file back and writing it again changes nothing.
    pub fn parse(name: &str, file: &str, line: u32) -> Frame {
        if !file.is_empty() {
            let location = Location {
                function: name.into(),
                file: file.into(),
                line,
            };
            // The file says which: Python's are sources, frozen modules or exec'd strings.
            return if is_python_file(file) {
                Frame::Python(location)
            } else {
                Frame::Native(location)
            };
        }
        parse_marker(name).unwrap_or_else(|| Frame::python(name, "", line))
    }
}

/// `, pid 1 in its namespace` after a process or thread name: its id in a container.
fn in_namespace(what: &str, id: Option<u32>) -> String {
    id.map(|id| format!(", {what} {id} in its namespace"))
        .unwrap_or_default()
}

/// A process or thread label back into its name and namespace id.
fn parse_in_namespace(what: &str, label: &str) -> (String, Option<u32>) {
    let parsed = label
        .rsplit_once(&format!(", {what} "))
        .and_then(|(name, rest)| {
            let id = canonical_number(rest.strip_suffix(" in its namespace")?)?;
            Some((name.to_string(), Some(id)))
        });
    parsed.unwrap_or_else(|| (label.to_string(), None))
}

/// Whether a frame's file is Python code: a source, a frozen module (`<frozen ...>`) or source
/// given as a string (`<string>`, `<stdin>`).
fn is_python_file(file: &str) -> bool {
    file.ends_with(".py") || file.ends_with(".pyw") || file.starts_with('<')
}

fn parse_marker(name: &str) -> Option<Frame> {
    if name == Frame::GC {
        return Some(Frame::Gc);
    }
    if let Some(task) = name.strip_prefix(Frame::TASK) {
        return Some(Frame::Task(task.into()));
    }
    if name == "[unknown]_[k]" {
        return Some(Frame::Kernel(None));
    }
    if let Some(f) = name.strip_suffix("_[k]") {
        return Some(Frame::Kernel(Some(f.into())));
    }
    if let Some(rest) = name.strip_prefix("[truncated: deeper than ") {
        let limit = canonical_number(rest.strip_suffix(" frames]")?)?;
        return Some(Frame::Truncated { limit });
    }
    if let Some(why) = name
        .strip_prefix("[native unwind stopped: ")
        .and_then(|r| r.strip_suffix(']'))
    {
        return Some(Frame::NativeStopped(why.into()));
    }
    if let Some(why) = name
        .strip_prefix("[unknown] (")
        .and_then(|r| r.strip_suffix(')'))
    {
        return Some(Frame::Unknown(Unknown::parse(why)));
    }
    let (kind, rest) = name.split_once(' ')?;
    let (id, rest) = rest.split_once(" (")?;
    let id = canonical_number(id)?;
    let label = rest.strip_suffix(')')?.to_string();
    match kind {
        "process" => {
            let (name, ns_pid) = parse_in_namespace("pid", &label);
            Some(Frame::Process {
                pid: id,
                ns_pid,
                name,
            })
        }
        "thread" => {
            let (name, ns_tid) = parse_in_namespace("tid", &label);
            Some(Frame::Thread {
                tid: id,
                ns_tid,
                name,
            })
        }
        _ => None,
    }
}

/// A number as `Display` writes it (no sign, no leading zeros), so it renders back the same.
fn canonical_number(s: &str) -> Option<u32> {
    let n: u32 = s.parse().ok()?;
    (n.to_string() == s).then_some(n)
}

impl Unknown {
    const CODE_FREED: &str = "code object freed before it was read";
    const PROCESS_EXITED: &str = "process exited before its code was read";
    const STACK_LOST: &str = "stack lost";

    fn parse(why: &str) -> Unknown {
        match why {
            Self::CODE_FREED => Unknown::CodeFreed,
            Self::PROCESS_EXITED => Unknown::ProcessExited,
            Self::STACK_LOST => Unknown::StackLost,
            _ => {
                let native = |module: Option<&str>, hex: &str| {
                    let digits = hex.strip_prefix("0x")?;
                    // Only the form `Display` writes: lower-case hex, no leading zeros.
                    let offset = u64::from_str_radix(digits, 16).ok()?;
                    (format!("{offset:#x}") == hex).then(|| Unknown::NativeAddress {
                        module: module.map(String::from),
                        offset,
                    })
                };
                match why.rsplit_once('+') {
                    Some((module, hex)) if !module.is_empty() => native(Some(module), hex),
                    _ => native(None, why),
                }
                .unwrap_or_else(|| Unknown::Unreadable(why.into()))
            }
        }
    }
}

impl fmt::Display for Unknown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unknown::CodeFreed => f.write_str(Self::CODE_FREED),
            Unknown::ProcessExited => f.write_str(Self::PROCESS_EXITED),
            Unknown::StackLost => f.write_str(Self::STACK_LOST),
            Unknown::Unreadable(why) => f.write_str(why),
            Unknown::NativeAddress {
                module: Some(m),
                offset,
            } => write!(f, "{m}+{offset:#x}"),
            Unknown::NativeAddress {
                module: None,
                offset,
            } => write!(f, "{offset:#x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind() -> Vec<Frame> {
        vec![
            Frame::python("main", "app.py", 25),
            Frame::python("<module>", "<frozen importlib._bootstrap>", 1),
            Frame::python("Helper.run", "lib/util.py", 0),
            Frame::python("exec'd", "<string>", 3),
            Frame::native("PyObject_Vectorcall", "call.c", 325),
            Frame::native("clock_nanosleep", "libc.so.6", 0),
            Frame::Kernel(Some("do_syscall_64".into())),
            Frame::Kernel(None),
            Frame::Process {
                pid: 42,
                ns_pid: None,
                name: "python3.12".into(),
            },
            Frame::Process {
                pid: 7,
                ns_pid: None,
                name: "my (odd) name".into(),
            },
            Frame::Process {
                pid: 30305,
                ns_pid: Some(1),
                name: "python3.15".into(),
            },
            Frame::Thread {
                tid: 43,
                ns_tid: None,
                name: "worker".into(),
            },
            Frame::Thread {
                tid: 30309,
                ns_tid: Some(2),
                name: "worker-1".into(),
            },
            Frame::Truncated { limit: 192 },
            Frame::Gc,
            Frame::NativeStopped("no unwind info".into()),
            Frame::Unknown(Unknown::CodeFreed),
            Frame::Unknown(Unknown::ProcessExited),
            Frame::Unknown(Unknown::StackLost),
            Frame::Unknown(Unknown::Unreadable("reading memory: bad address".into())),
            Frame::Unknown(Unknown::NativeAddress {
                module: Some("libfoo.so".into()),
                offset: 0x1234,
            }),
            Frame::Unknown(Unknown::NativeAddress {
                module: None,
                offset: 0x7f00_0000_1000,
            }),
        ]
    }

    #[test]
    fn labels_are_what_prof_bpf_always_wrote() {
        let labels: Vec<String> = every_kind().iter().map(Frame::label).collect();
        assert_eq!(
            labels,
            [
                "main (app.py:25)",
                "<module> (<frozen importlib._bootstrap>:1)",
                "Helper.run (lib/util.py)",
                "exec'd (<string>:3)",
                "PyObject_Vectorcall (call.c:325)",
                "clock_nanosleep (libc.so.6)",
                "do_syscall_64_[k]",
                "[unknown]_[k]",
                "process 42 (python3.12)",
                "process 7 (my (odd) name)",
                "process 30305 (python3.15, pid 1 in its namespace)",
                "thread 43 (worker)",
                "thread 30309 (worker-1, tid 2 in its namespace)",
                "[truncated: deeper than 192 frames]",
                "<GC>",
                "[native unwind stopped: no unwind info]",
                "[unknown] (code object freed before it was read)",
                "[unknown] (process exited before its code was read)",
                "[unknown] (stack lost)",
                "[unknown] (reading memory: bad address)",
                "[unknown] (libfoo.so+0x1234)",
                "[unknown] (0x7f0000001000)",
            ]
        );
    }

    #[test]
    fn parsing_what_was_written_gives_the_frame_back() {
        for f in every_kind() {
            assert_eq!(
                Frame::parse(&f.name(), f.file(), f.line()),
                f,
                "{}",
                f.label()
            );
        }
    }

    proptest::proptest! {
        /// Whatever a file holds, reading it and writing it again changes no byte.
        #[test]
        fn any_name_file_and_line_round_trip(
            name in proptest::prop_oneof![
                ".{0,40}",
                "(process|thread) [+0-9]{0,4} \\(.{0,6}\\).{0,3}",
                "\\[(unknown|truncated: deeper than|native unwind stopped:)[] (0-9a-z+x.]{0,20}",
                ".{0,6}_\\[k\\]",
            ],
            file in ".{0,12}",
            line in 0u32..5,
        ) {
            let f = Frame::parse(&name, &file, line);
            proptest::prop_assert_eq!((f.name(), f.file(), f.line() == line || file.is_empty()),
                (name.clone(), file.as_str(), true));
        }
    }
}
