//! pprof's profile format (github.com/google/pprof, proto/profile.proto), gzipped, for `go tool
//! pprof`, Pyroscope and Grafana. Two values per sample: the sample count and the CPU time it
//! stands for (count times the sampling period). Each thread's samples carry `pid` and `tid`
//! labels. The messages are the subset of profile.proto prof-bpf writes, declared by hand with
//! prost's derive, so no protoc is needed to build.

use std::{
    collections::HashMap,
    io::{self, Write},
};

use flate2::{Compression, write::GzEncoder};
use prost::Message as _;

use super::ProfileWriter;
use crate::profile::Profile;

/// `perftools.profiles.Profile`, fields prof-bpf uses (same tags as profile.proto).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PprofProfile {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<PprofSample>,
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<Mapping>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    /// Index 0 must be "".
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    pub period: i64,
    #[prost(int64, repeated, tag = "13")]
    pub comment: Vec<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PprofSample {
    /// Leaf first.
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    #[prost(int64, tag = "1")]
    pub key: i64,
    #[prost(int64, tag = "2")]
    pub str: i64,
    #[prost(int64, tag = "3")]
    pub num: i64,
}

/// One mapping stands for the interpreter: it says the functions, files and lines are already
/// known, so pprof does not try to symbolize addresses.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Mapping {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "5")]
    pub filename: i64,
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
    #[prost(bool, tag = "8")]
    pub has_filenames: bool,
    #[prost(bool, tag = "9")]
    pub has_line_numbers: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    #[prost(int64, tag = "2")]
    pub line: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    /// Left empty: pprof "demangles" a function whose system name equals its name, as if it
    /// were C++, and would cut `<module>` down to nothing.
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    #[prost(int64, tag = "4")]
    pub filename: i64,
}

pub struct Pprof {
    pub title: String,
}

/// The string table under construction: index 0 is "".
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Self {
        let mut s = Self {
            table: Vec::new(),
            index: HashMap::new(),
        };
        s.get("");
        s
    }

    fn get(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.table.len() as i64;
        self.table.push(s.to_string());
        self.index.insert(s.to_string(), i);
        i
    }
}

/// The nanoseconds one sample stands for: the sampling period.
pub fn period_ns(rate_hz: u64) -> i64 {
    1_000_000_000 / rate_hz.max(1) as i64
}

/// Builds the pprof message for `profile` (ids are 1-based; 0 means none in pprof).
pub fn build(profile: &Profile, title: &str) -> PprofProfile {
    let mut strings = Strings::new();
    let mut functions: Vec<Function> = Vec::new();
    let mut function_ids: HashMap<(String, &str), u64> = HashMap::new();
    // One location per profile frame: frame i is location i + 1.
    let location: Vec<Location> = profile
        .frames
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let id = *function_ids.entry((f.name(), f.file())).or_insert_with(|| {
                let id = functions.len() as u64 + 1;
                functions.push(Function {
                    id,
                    name: strings.get(&f.name()),
                    system_name: 0,
                    filename: strings.get(f.file()),
                });
                id
            });
            Location {
                id: i as u64 + 1,
                mapping_id: 1,
                line: vec![Line {
                    function_id: id,
                    line: f.line() as i64,
                }],
            }
        })
        .collect();
    let period = period_ns(profile.rate_hz);
    let (pid_key, tid_key) = (strings.get("pid"), strings.get("tid"));
    let sample = profile
        .samples
        .iter()
        .map(|s| PprofSample {
            location_id: s.frames.iter().rev().map(|&f| f as u64 + 1).collect(),
            value: vec![s.count as i64, s.count as i64 * period],
            label: vec![
                Label {
                    key: pid_key,
                    str: 0,
                    num: s.pid as i64,
                },
                Label {
                    key: tid_key,
                    str: 0,
                    num: s.tid as i64,
                },
            ],
        })
        .collect();
    let mut value_type = |t: &str, u: &str| ValueType {
        r#type: strings.get(t),
        unit: strings.get(u),
    };
    let sample_type = vec![
        value_type("samples", "count"),
        value_type("cpu", "nanoseconds"),
    ];
    let period_type = Some(value_type("cpu", "nanoseconds"));
    let comment = vec![strings.get(title)];
    let interpreter = match profile.processes.as_slice() {
        [one] => one.name.clone(),
        _ => "python".to_string(),
    };
    let mapping = vec![Mapping {
        id: 1,
        filename: strings.get(&interpreter),
        has_functions: true,
        has_filenames: true,
        has_line_numbers: true,
    }];
    PprofProfile {
        sample_type,
        sample,
        mapping,
        location,
        function: functions,
        string_table: strings.table,
        time_nanos: 0,
        duration_nanos: profile.duration.as_nanos() as i64,
        period_type,
        period,
        comment,
    }
}

impl ProfileWriter for Pprof {
    fn write(&self, profile: &Profile, out: &mut dyn Write) -> io::Result<()> {
        let bytes = build(profile, &self.title).encode_to_vec();
        // GzEncoder writes mtime 0: the same profile gives the same bytes.
        let mut gz = GzEncoder::new(out, Compression::default());
        gz.write_all(&bytes)?;
        gz.finish()?;
        Ok(())
    }
}

/// A readable rendering of a pprof profile with every id resolved: what a golden file holds,
/// and how a test shows the profile decoded independently of how it was built.
pub fn describe(p: &PprofProfile) -> Result<String, String> {
    use std::fmt::Write as _;
    let s = |i: i64| {
        p.string_table
            .get(usize::try_from(i).map_err(|_| format!("negative string index {i}"))?)
            .cloned()
            .ok_or(format!("string index {i} out of range"))
    };
    if p.string_table.first().map(String::as_str) != Some("") {
        return Err("string_table[0] is not empty".into());
    }
    let functions: HashMap<u64, &Function> = p.function.iter().map(|f| (f.id, f)).collect();
    let locations: HashMap<u64, &Location> = p.location.iter().map(|l| (l.id, l)).collect();
    let mut out = String::new();
    let types: Vec<String> = p
        .sample_type
        .iter()
        .map(|t| Ok(format!("{}/{}", s(t.r#type)?, s(t.unit)?)))
        .collect::<Result<_, String>>()?;
    let _ = writeln!(out, "sample types: {}", types.join(", "));
    if let Some(t) = &p.period_type {
        let _ = writeln!(out, "period: {} {}/{}", p.period, s(t.r#type)?, s(t.unit)?);
    }
    let _ = writeln!(out, "duration: {} ns", p.duration_nanos);
    for c in &p.comment {
        let _ = writeln!(out, "comment: {}", s(*c)?);
    }
    for sample in &p.sample {
        let labels: Vec<String> = sample
            .label
            .iter()
            .map(|l| Ok(format!("{}={}", s(l.key)?, l.num)))
            .collect::<Result<_, String>>()?;
        let mut frames = Vec::new();
        for id in &sample.location_id {
            let loc = locations
                .get(id)
                .ok_or(format!("no location with id {id}"))?;
            for line in &loc.line {
                let f = functions
                    .get(&line.function_id)
                    .ok_or(format!("no function with id {}", line.function_id))?;
                let file = s(f.filename)?;
                frames.push(if file.is_empty() {
                    s(f.name)?
                } else {
                    format!("{} {file}:{}", s(f.name)?, line.line)
                });
            }
        }
        let values: Vec<String> = sample.value.iter().map(i64::to_string).collect();
        let _ = writeln!(
            out,
            "{} [{}]\n    {}",
            values.join(" "),
            labels.join(" "),
            frames.join("\n    ")
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;
    use crate::profile::example;

    fn decode(gz: &[u8]) -> PprofProfile {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_end(&mut raw)
            .unwrap();
        PprofProfile::decode(raw.as_slice()).unwrap()
    }

    #[test]
    fn counts_and_times_survive_encoding() {
        let p = example();
        let mut gz = Vec::new();
        Pprof { title: "t".into() }.write(&p, &mut gz).unwrap();
        assert_eq!(&gz[..2], &[0x1f, 0x8b], "gzip magic");
        let d = decode(&gz);
        assert_eq!(d.period, 10_000_000);
        let counts: i64 = d.sample.iter().map(|s| s.value[0]).sum();
        let nanos: i64 = d.sample.iter().map(|s| s.value[1]).sum();
        assert_eq!(counts as u64, p.total_samples());
        assert_eq!(nanos, counts * 10_000_000);
        // Leaf first: the first sample's leaf is burn.
        let leaf = d.location[d.sample[0].location_id[0] as usize - 1].line[0].function_id;
        let name = d.function[leaf as usize - 1].name;
        assert_eq!(d.string_table[name as usize], "burn");
        assert!(describe(&d).is_ok());
    }
}
