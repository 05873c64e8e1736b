//! prof-bpf's own profile file: everything a `Profile` holds, as versioned JSON, so `record -f
//! profbpf` can keep a recording and `report` can read it back, print its statistics and convert
//! it to every other format. The last stage of `record` and the first of `report`; it knows
//! nothing of the kernel or of the target process.
//!
//! The schema is declared here apart from the in-memory model, so changing the model cannot
//! change the file format by accident: a change to the file is a new `VERSION`.

use std::{
    fs::File,
    io::{self, BufReader, Read, Write},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::{Frame, ProcessInfo, Profile, Sample, ThreadInfo};

/// The `format` field of every file: tells a prof-bpf profile from any other JSON.
pub const FORMAT: &str = "prof-bpf profile";
/// The version this build writes and the only one it reads.
pub const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{} is not a prof-bpf profile (write one with `prof-bpf record -f profbpf`): {why}", path.display())]
    NotAProfile { path: PathBuf, why: String },
    #[error("{} is a prof-bpf profile of format version {found}; this prof-bpf reads version {VERSION}", path.display())]
    WrongVersion { path: PathBuf, found: u64 },
    #[error("{} is damaged: {why}", path.display())]
    Damaged { path: PathBuf, why: String },
}

#[derive(Serialize, Deserialize)]
struct FileFrame {
    name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    file: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    line: u32,
}

#[derive(Serialize, Deserialize)]
struct FileSample {
    pid: u32,
    tid: u32,
    /// Indices into `frames`, root first.
    frames: Vec<u32>,
    count: u64,
}

#[derive(Serialize, Deserialize)]
struct FileProcess {
    pid: u32,
    name: String,
    version: String,
    /// Its id inside a container's pid namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ns_pid: Option<u32>,
}

#[derive(Serialize, Deserialize)]
struct FileThread {
    pid: u32,
    tid: u32,
    name: String,
    /// Its id inside a container's pid namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ns_tid: Option<u32>,
}

#[derive(Serialize, Deserialize)]
struct FileProfile {
    format: String,
    version: u32,
    /// Samples per second asked of the kernel.
    rate_hz: u64,
    duration_ns: u64,
    unknown_frames: u64,
    processes: Vec<FileProcess>,
    #[serde(default)]
    threads: Vec<FileThread>,
    frames: Vec<FileFrame>,
    samples: Vec<FileSample>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Writes `profile` as a prof-bpf profile file (one sample per line, so it diffs well).
pub fn write(profile: &Profile, out: &mut dyn Write) -> io::Result<()> {
    let file = FileProfile {
        format: FORMAT.into(),
        version: VERSION,
        rate_hz: profile.rate_hz,
        duration_ns: profile.duration.as_nanos() as u64,
        unknown_frames: profile.unknown_frames,
        processes: profile
            .processes
            .iter()
            .map(|p| FileProcess {
                pid: p.pid,
                name: p.name.clone(),
                version: p.version.clone(),
                ns_pid: p.ns_pid,
            })
            .collect(),
        threads: profile
            .threads
            .iter()
            .map(|t| FileThread {
                pid: t.pid,
                tid: t.tid,
                name: t.name.clone(),
                ns_tid: t.ns_tid,
            })
            .collect(),
        frames: profile
            .frames
            .iter()
            .map(|f| FileFrame {
                name: f.name(),
                file: f.file().to_string(),
                line: f.line(),
            })
            .collect(),
        samples: profile
            .samples
            .iter()
            .map(|s| FileSample {
                pid: s.pid,
                tid: s.tid,
                frames: s.frames.clone(),
                count: s.count,
            })
            .collect(),
    };
    // serde_json's compact form, with a line break before each frame, sample and process.
    let v = serde_json::to_value(&file)?;
    let obj = v.as_object().expect("a struct serializes to an object");
    // The header first, in a fixed order, so `head` on a file shows what it is.
    const KEYS: [&str; 9] = [
        "format",
        "version",
        "rate_hz",
        "duration_ns",
        "unknown_frames",
        "processes",
        "threads",
        "frames",
        "samples",
    ];
    debug_assert_eq!(obj.len(), KEYS.len());
    writeln!(out, "{{")?;
    let n = KEYS.len();
    for (i, (key, value)) in KEYS
        .iter()
        .filter_map(|&k| Some((k, obj.get(k)?)))
        .enumerate()
    {
        write!(out, "  {}: ", serde_json::to_string(key)?)?;
        match value.as_array() {
            Some(items) if !items.is_empty() => {
                writeln!(out, "[")?;
                for (j, item) in items.iter().enumerate() {
                    let comma = if j + 1 < items.len() { "," } else { "" };
                    writeln!(out, "    {}{comma}", serde_json::to_string(item)?)?;
                }
                write!(out, "  ]")?;
            }
            _ => write!(out, "{}", serde_json::to_string(value)?)?,
        }
        writeln!(out, "{}", if i + 1 < n { "," } else { "" })?;
    }
    writeln!(out, "}}")
}

/// Reads a prof-bpf profile file.
pub fn read_file(path: &Path) -> Result<Profile, StoreError> {
    let io_err = |source| StoreError::Io {
        path: path.into(),
        source,
    };
    let mut text = String::new();
    BufReader::new(File::open(path).map_err(io_err)?)
        .read_to_string(&mut text)
        .map_err(|e| {
            if e.kind() == io::ErrorKind::InvalidData {
                StoreError::NotAProfile {
                    path: path.into(),
                    why: "it is not text".into(),
                }
            } else {
                io_err(e)
            }
        })?;
    parse(&text, path)
}

/// Parses the text of a prof-bpf profile file; `path` is for messages.
pub fn parse(text: &str, path: &Path) -> Result<Profile, StoreError> {
    let not = |why: String| StoreError::NotAProfile {
        path: path.into(),
        why,
    };
    // The header first, so another file or another version gets the right message rather
    // than a complaint about a missing field.
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| not(format!("not JSON ({e})")))?;
    if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
        return Err(not(format!("no \"format\": \"{FORMAT}\" field")));
    }
    let found = value.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
    if found != VERSION as u64 {
        return Err(StoreError::WrongVersion {
            path: path.into(),
            found,
        });
    }
    let damaged = |why: String| StoreError::Damaged {
        path: path.into(),
        why,
    };
    let file: FileProfile = serde_json::from_value(value).map_err(|e| damaged(e.to_string()))?;
    if let Some(s) = file
        .samples
        .iter()
        .find(|s| s.frames.iter().any(|&f| f as usize >= file.frames.len()))
    {
        return Err(damaged(format!(
            "a sample of thread {} refers to a frame that is not in the frame list",
            s.tid
        )));
    }
    Ok(Profile {
        frames: file
            .frames
            .into_iter()
            .map(|f| Frame::parse(&f.name, &f.file, f.line))
            .collect(),
        samples: file
            .samples
            .into_iter()
            .map(|s| Sample {
                pid: s.pid,
                tid: s.tid,
                frames: s.frames,
                count: s.count,
            })
            .collect(),
        processes: file
            .processes
            .into_iter()
            .map(|p| ProcessInfo {
                pid: p.pid,
                name: p.name,
                version: p.version,
                ns_pid: p.ns_pid,
            })
            .collect(),
        threads: file
            .threads
            .into_iter()
            .map(|t| ThreadInfo {
                pid: t.pid,
                tid: t.tid,
                name: t.name,
                ns_tid: t.ns_tid,
            })
            .collect(),
        rate_hz: file.rate_hz,
        duration: Duration::from_nanos(file.duration_ns),
        unknown_frames: file.unknown_frames,
        // What a recording's summary said about native symbols is not kept.
        unknown_native: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::example;

    #[test]
    fn round_trips_every_field() {
        let p = example();
        let mut out = Vec::new();
        write(&p, &mut out).unwrap();
        let back = parse(std::str::from_utf8(&out).unwrap(), Path::new("x")).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn other_files_and_versions_are_named() {
        let path = Path::new("p.json");
        let e = parse("{\"traceEvents\": []}", path).unwrap_err();
        assert!(matches!(e, StoreError::NotAProfile { .. }), "{e}");
        assert!(e.to_string().contains("not a prof-bpf profile"), "{e}");
        let e = parse("<svg/>", path).unwrap_err();
        assert!(e.to_string().contains("not JSON"), "{e}");
        let e = parse(
            &format!("{{\"format\": \"{FORMAT}\", \"version\": 7}}"),
            path,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "p.json is a prof-bpf profile of format version 7; this prof-bpf reads version 1"
        );
        let mut out = Vec::new();
        write(&example(), &mut out).unwrap();
        let text = String::from_utf8(out)
            .unwrap()
            .replace("\"frames\":[0,", "\"frames\":[99,");
        let e = parse(&text, path).unwrap_err();
        assert!(e.to_string().contains("is damaged"), "{e}");
        let e = read_file(Path::new("/nonexistent/p.json")).unwrap_err();
        assert!(
            e.to_string().starts_with("cannot read /nonexistent/p.json"),
            "{e}"
        );
    }
}
