//! Each profiled process's OTel resource: `host.name`, `process.pid`,
//! `process.executable.name`/`.path`, `process.command_line`, `process.runtime.name` and
//! `.version` (`CPython 3.12.1`), `service.name` (the process's `OTEL_SERVICE_NAME`, else its
//! script or module) and `container.id` (from its cgroup). Read once per process (by pid and
//! start time) and forgotten when it is no longer profiled.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use crate::{
    output::otlp::proto::{AnyValue, KeyValue},
    process::{self, elf, identity},
    python::{Version, discover::PythonProcess},
};

/// Resources by pid, with the start time of the process they describe.
#[derive(Default)]
pub struct Resources {
    host: String,
    /// `OTEL_RESOURCE_ATTRIBUTES`: every resource has them unless it says otherwise.
    extra: Vec<(String, String)>,
    cache: HashMap<u32, (u64, Vec<KeyValue>)>,
}

impl Resources {
    pub fn new(host: String, extra: Vec<(String, String)>) -> Self {
        Self {
            host,
            extra,
            cache: HashMap::new(),
        }
    }

    /// New `OTEL_RESOURCE_ATTRIBUTES` (SIGHUP): resources are built again.
    pub fn set_extra(&mut self, extra: Vec<(String, String)>) {
        if extra != self.extra {
            self.extra = extra;
            self.cache.clear();
        }
    }

    /// The resource of `p`, read on first use.
    pub fn of(&mut self, p: &PythonProcess) -> &[KeyValue] {
        let fresh = self
            .cache
            .get(&p.pid)
            .is_some_and(|(start, _)| *start == p.start_time);
        if !fresh {
            let attrs = describe(&self.host, &self.extra, p);
            self.cache.insert(p.pid, (p.start_time, attrs));
        }
        &self.cache[&p.pid].1
    }

    /// The resource last read for `pid`, which may have exited since.
    pub fn last_known(&self, pid: u32) -> Option<&[KeyValue]> {
        self.cache.get(&pid).map(|(_, a)| a.as_slice())
    }

    /// Forgets every process but those whose pid is in `live`.
    pub fn retain(&mut self, live: &[u32]) {
        self.cache.retain(|pid, _| live.contains(pid));
    }

    /// Adds `OTEL_RESOURCE_ATTRIBUTES` to a resource made elsewhere (a process that ended
    /// before it was read).
    pub fn with_extra(&self, mut attrs: Vec<KeyValue>) -> Vec<KeyValue> {
        for (k, v) in &self.extra {
            if !attrs.iter().any(|a| &a.key == k) {
                attrs.push(KeyValue::new(k.clone(), AnyValue::string(v.clone())));
            }
        }
        attrs
    }

    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }
}

fn describe(host: &str, extra: &[(String, String)], p: &PythonProcess) -> Vec<KeyValue> {
    let argv = identity::cmdline(p.pid).unwrap_or_default();
    let exe = process::exe_of(p.pid).ok();
    let exe_name = exe
        .as_deref()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.name.clone());
    let service = identity::environ_var(p.pid, "OTEL_SERVICE_NAME")
        .ok()
        .flatten()
        .filter(|s| !s.trim().is_empty())
        .or_else(|| service_from_argv(&argv))
        .unwrap_or_else(|| exe_name.clone());
    let mut attrs = vec![
        KeyValue::new("host.name", AnyValue::string(host)),
        KeyValue::new("service.name", AnyValue::string(service)),
        KeyValue::new("process.pid", AnyValue::int(p.pid.into())),
        KeyValue::new("process.executable.name", AnyValue::string(&exe_name)),
    ];
    if let Some(exe) = &exe {
        attrs.push(KeyValue::new(
            "process.executable.path",
            AnyValue::string(exe.to_string_lossy()),
        ));
    }
    if !argv.is_empty() {
        attrs.push(KeyValue::new(
            "process.command_line",
            AnyValue::string(argv.join(" ")),
        ));
    }
    attrs.push(KeyValue::new(
        "process.runtime.name",
        AnyValue::string("CPython"),
    ));
    attrs.push(KeyValue::new(
        "process.runtime.version",
        AnyValue::string(full_version(&p.binary, p.version)),
    ));
    if let Ok(Some(id)) = identity::container_id(p.pid) {
        attrs.push(KeyValue::new("container.id", AnyValue::string(id)));
    }
    for (k, v) in extra {
        if !attrs.iter().any(|a| &a.key == k) {
            attrs.push(KeyValue::new(k.clone(), AnyValue::string(v.clone())));
        }
    }
    attrs
}

/// The interpreter's full version (`3.12.1`, `3.13.0rc2`): `Py_Version` (3.11+, the
/// `PY_VERSION_HEX` the interpreter was built with) from its file, else a `X.Y.Z` directory in
/// its path (pyenv's `versions/3.10.13/`), else the minor version found.
pub fn full_version(binary: &Path, version: Version) -> String {
    let word = std::fs::File::open(binary)
        .ok()
        .and_then(|file| elf::inspect_file(&file, &["Py_Version"], &[]).ok())
        .and_then(|info| info.symbols.first().copied().flatten())
        .and_then(|s| s.word);
    if let Some(v) = word.and_then(|w| version_from_hex(w, version)) {
        return v;
    }
    version_in_path(binary, version).unwrap_or_else(|| version.to_string())
}

/// `PY_VERSION_HEX` (major, minor, micro, release level, serial: one byte, one byte, one byte,
/// a nibble each) as Python writes it; None if it is not `version`'s.
fn version_from_hex(hex: u32, version: Version) -> Option<String> {
    let (major, minor, micro) = (hex >> 24, (hex >> 16) & 0xff, (hex >> 8) & 0xff);
    let (level, serial) = ((hex >> 4) & 0xf, hex & 0xf);
    if (major, minor) != (version.major.into(), version.minor.into()) {
        return None;
    }
    let suffix = match level {
        0xa => format!("a{serial}"),
        0xb => format!("b{serial}"),
        0xc => format!("rc{serial}"),
        0xf => String::new(),
        _ => return None,
    };
    Some(format!("{major}.{minor}.{micro}{suffix}"))
}

fn version_in_path(binary: &Path, version: Version) -> Option<String> {
    let prefix = format!("{version}.");
    binary.components().find_map(|c| {
        let s = c.as_os_str().to_str()?;
        let micro = s.strip_prefix(&prefix)?;
        (!micro.is_empty() && micro.bytes().all(|b| b.is_ascii_digit())).then(|| s.to_string())
    })
}

/// The service a Python command line runs: the module of `-m`, else the script's name without
/// `.py`; None for `-c`, stdin or no argument. A program that is not a Python executable
/// (an embedding server) is named by itself.
pub fn service_from_argv(argv: &[String]) -> Option<String> {
    let program = Path::new(argv.first()?)
        .file_name()?
        .to_string_lossy()
        .into_owned();
    if !program.starts_with("python") {
        return Some(program);
    }
    let mut args = argv[1..].iter();
    while let Some(arg) = args.next() {
        if arg == "--" {
            return args.next().and_then(|s| script_name(s));
        }
        if arg == "-" {
            return None;
        }
        let Some(flags) = arg.strip_prefix('-') else {
            return script_name(arg);
        };
        if flags.starts_with('-') {
            continue; // --version, --help and the like
        }
        for (i, c) in flags.char_indices() {
            let rest = &flags[i + 1..];
            match c {
                'c' => return None,
                'm' if rest.is_empty() => return args.next().cloned(),
                'm' => return Some(rest.to_string()),
                // Options with a value: the rest of this argument, or the next one.
                'W' | 'X' => {
                    if rest.is_empty() {
                        args.next();
                    }
                    break;
                }
                _ => {}
            }
        }
    }
    None
}

fn script_name(path: &str) -> Option<String> {
    let name = PathBuf::from(path)
        .file_name()?
        .to_string_lossy()
        .into_owned();
    Some(name.strip_suffix(".py").unwrap_or(&name).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn service_names_from_command_lines() {
        let cases = [
            ("python3 app.py --port 80", Some("app")),
            (
                "/usr/bin/python3.12 -u -X dev /srv/shop/checkout.py",
                Some("checkout"),
            ),
            ("python3 -m http.server 8000", Some("http.server")),
            ("python3 -OOmgunicorn app:app", Some("gunicorn")),
            ("python3 -W ignore -m celery worker", Some("celery")),
            ("python3 -Wignore tool", Some("tool")),
            ("python3 -c print(1)", None),
            ("python3 -", None),
            ("python3", None),
            ("python3 -- -weird.py", Some("-weird")),
            ("/usr/local/bin/uwsgi --ini app.ini", Some("uwsgi")),
        ];
        for (line, want) in cases {
            assert_eq!(service_from_argv(&argv(line)).as_deref(), want, "{line}");
        }
    }

    #[test]
    fn full_versions_from_the_version_word_and_paths() {
        let v = Version::new(3, 12);
        assert_eq!(version_from_hex(0x030c01f0, v).as_deref(), Some("3.12.1"));
        assert_eq!(
            version_from_hex(0x030c00c2, v).as_deref(),
            Some("3.12.0rc2")
        );
        assert_eq!(
            version_from_hex(0x030f00a1, Version::new(3, 15)).as_deref(),
            Some("3.15.0a1")
        );
        assert_eq!(
            version_from_hex(0x030b01f0, v),
            None,
            "another version's word"
        );
        let p = Path::new("/root/.pyenv/versions/3.10.13/lib/libpython3.10.so.1.0");
        assert_eq!(
            version_in_path(p, Version::new(3, 10)).as_deref(),
            Some("3.10.13")
        );
        assert_eq!(
            version_in_path(Path::new("/usr/bin/python3.10"), Version::new(3, 10)),
            None
        );
    }
}
