//! `dump --json`: the dumped processes as one JSON document, for scripts. Its schema (below, and
//! in README.md's dump section) is versioned by `schema_version`: a field is added without a
//! new version, any other change takes one. Every field is always present (null where not
//! known or not asked for), so a reader can check the shape without knowing the options.

use serde::Serialize;

use super::{FrameDump, ProcessDump, TaskDump, ThreadDump, repr::repr};
use crate::profile::{Frame, Unknown};

/// The version of the document's layout.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Serialize)]
struct Document<'a> {
    schema_version: u32,
    /// prof-bpf's version and commit, as `--version` prints them.
    prof_bpf_version: &'a str,
    processes: Vec<Process<'a>>,
}

#[derive(Serialize)]
struct Process<'a> {
    pid: u32,
    /// Its pid inside its own pid namespace, when that is not prof-bpf's (a container).
    ns_pid: Option<u32>,
    name: &'a str,
    /// The ELF file holding the interpreter, as the process maps it.
    executable: String,
    /// `3.12`, or `3.13t` for a free-threaded build.
    python_version: &'a str,
    threads: Vec<Thread<'a>>,
    /// With `--async-aware`: the asyncio tasks, in the interpreter's order (null without).
    tasks: Option<Vec<Task<'a>>>,
}

#[derive(Serialize)]
struct Task<'a> {
    name: &'a str,
    /// The task object's address.
    address: u64,
    /// The thread running it now (its `tid`), null when it waits.
    running_in: Option<u64>,
    /// Its coroutine chain, leaf first; a running task's down to its first coroutine.
    frames: Vec<JsonFrame<'a>>,
    /// The names of the tasks that await it.
    awaited_by: Vec<&'a str>,
}

#[derive(Serialize)]
struct Thread<'a> {
    tid: u64,
    ns_tid: Option<u64>,
    name: Option<&'a str>,
    /// The kernel's state: `running`, `sleeping`, `waiting for I/O`, ...
    state: Option<&'a str>,
    /// Not running nor ready to run.
    idle: Option<bool>,
    /// Null where unknown: a free-threaded build has no GIL.
    holds_gil: Option<bool>,
    /// Deeper than prof-bpf walks: the frames nearest the root are missing.
    truncated: bool,
    /// Leaf first.
    frames: Vec<JsonFrame<'a>>,
}

#[derive(Serialize)]
struct JsonFrame<'a> {
    /// `python`, `native` (C, C++, Rust: `--native`), `unknown` (a frame that could not be
    /// named; `function` says why) or `marker` (where the native unwind stopped).
    kind: &'static str,
    function: String,
    file: Option<&'a str>,
    line: Option<u32>,
    /// With `--locals`, for a Python frame whose locals could be read: the locals that are set.
    locals: Option<Vec<JsonLocal<'a>>>,
    /// Set locals beyond those listed (`--locals` lists at most 64 per frame).
    locals_omitted: Option<usize>,
    /// Why the locals could not be read.
    locals_error: Option<&'a str>,
}

#[derive(Serialize)]
struct JsonLocal<'a> {
    name: &'a str,
    /// The value's type: `int`, `str`, `list`, ... or a class's name.
    #[serde(rename = "type")]
    type_name: &'a str,
    /// As `dump` prints it: `repr` for None, bools, ints, floats, str and bytes (cut at 64
    /// characters), `<list, len 3>` for containers, `<Point object at 0x...>` for the rest.
    repr: String,
    /// The length of a str (characters), bytes, list, tuple, dict, set or frozenset.
    len: Option<u64>,
}

/// The document, pretty-printed, with a final newline.
pub fn render(dumps: &[ProcessDump]) -> String {
    let doc = Document {
        schema_version: SCHEMA_VERSION,
        prof_bpf_version: crate::VERSION,
        processes: dumps.iter().map(process).collect(),
    };
    let mut out = serde_json::to_string_pretty(&doc).expect("plain data serializes");
    out.push('\n');
    out
}

fn process(d: &ProcessDump) -> Process<'_> {
    let p = &d.process;
    Process {
        pid: p.pid,
        ns_pid: p.ns_pid,
        name: &p.name,
        executable: p.binary.display().to_string(),
        python_version: &d.version,
        threads: d.threads.iter().map(thread).collect(),
        tasks: d.tasks.as_ref().map(|t| t.iter().map(task).collect()),
    }
}

fn task(t: &TaskDump) -> Task<'_> {
    Task {
        name: &t.name,
        address: t.addr,
        running_in: t.running_in,
        frames: t.frames.iter().map(frame).collect(),
        awaited_by: t.awaited_by.iter().map(String::as_str).collect(),
    }
}

fn thread(t: &ThreadDump) -> Thread<'_> {
    Thread {
        tid: t.tid,
        ns_tid: t.ns_tid,
        name: t.name.as_deref(),
        state: t.state.as_deref(),
        idle: t.idle,
        holds_gil: t.holds_gil,
        truncated: t.truncated,
        frames: t.frames.iter().map(frame).collect(),
    }
}

fn frame(f: &FrameDump) -> JsonFrame<'_> {
    let kind = match &f.frame {
        Frame::Python(_) => "python",
        Frame::Native(_) | Frame::Unknown(Unknown::NativeAddress { .. }) => "native",
        Frame::Unknown(_) => "unknown",
        _ => "marker",
    };
    let (function, file, line) = match f.frame.location() {
        Some(l) => (
            l.function.clone(),
            Some(l.file.as_str()),
            (l.line > 0).then_some(l.line),
        ),
        None => (f.frame.name(), None, None),
    };
    let (locals, omitted, error) = match &f.locals {
        None => (None, None, None),
        Some(Err(why)) => (None, None, Some(why.as_str())),
        Some(Ok(l)) => (
            Some(
                l.locals
                    .iter()
                    .map(|local| JsonLocal {
                        name: &local.name,
                        type_name: local.value.type_name(),
                        repr: repr(&local.value),
                        len: local.value.length(),
                    })
                    .collect(),
            ),
            Some(l.omitted),
            None,
        ),
    };
    JsonFrame {
        kind,
        function,
        file,
        line,
        locals,
        locals_omitted: omitted,
        locals_error: error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::{
        self,
        discover::PythonProcess,
        locals::{FrameLocals, Local, Value},
    };

    #[test]
    fn every_field_is_present() {
        let p = PythonProcess {
            pid: 10,
            name: "python3".into(),
            binary: "/usr/bin/python3.11".into(),
            version: python::Version::new(3, 11),
            runtime_addr: 0,
            runtime_size: None,
            start_time: 0,
            ns_pid: None,
            pid_namespace: None,
        };
        let locals = FrameLocals {
            locals: vec![Local {
                name: "n".into(),
                value: Value::Int {
                    negative: false,
                    digits: vec![42],
                },
            }],
            omitted: 0,
        };
        let dumps = [ProcessDump {
            process: p,
            version: "3.11".into(),
            threads: vec![ThreadDump {
                tid: 10,
                ns_tid: None,
                name: Some("python3".into()),
                state: Some("sleeping".into()),
                idle: Some(true),
                holds_gil: Some(false),
                frames: vec![
                    FrameDump {
                        frame: Frame::python("wait", "a.py", 3),
                        locals: Some(Ok(locals)),
                    },
                    FrameDump {
                        frame: Frame::native("clone3", "clone3.S", 0),
                        locals: None,
                    },
                ],
                truncated: false,
            }],
            tasks: Some(vec![TaskDump {
                name: "worker".into(),
                addr: 0x1000,
                running_in: None,
                frames: vec![FrameDump {
                    frame: Frame::python("work", "a.py", 7),
                    locals: None,
                }],
                awaited_by: vec!["main".into()],
            }]),
        }];
        let v: serde_json::Value = serde_json::from_str(&render(&dumps)).unwrap();
        assert_eq!(v["schema_version"], 1);
        let t = &v["processes"][0]["threads"][0];
        assert_eq!(t["holds_gil"], false);
        assert_eq!(
            t["frames"][0]["locals"][0],
            serde_json::json!({"name": "n", "type": "int", "repr": "42", "len": null})
        );
        assert_eq!(t["frames"][1]["kind"], "native");
        assert_eq!(t["frames"][1]["line"], serde_json::Value::Null);
        let keys: Vec<&str> = t["frames"][1]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys.len(), 7, "every frame field, null or not: {keys:?}");
        let task = &v["processes"][0]["tasks"][0];
        assert_eq!(task["name"], "worker");
        assert_eq!(task["running_in"], serde_json::Value::Null);
        assert_eq!(task["frames"][0]["function"], "work");
        assert_eq!(task["awaited_by"], serde_json::json!(["main"]));
    }
}
