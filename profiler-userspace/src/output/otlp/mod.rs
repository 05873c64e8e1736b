//! OTLP profiles (OpenTelemetry's profiles signal, opentelemetry-proto v1.9.0): the request the
//! agent sends to an OpenTelemetry Collector every interval, and the file `record -f otlp`
//! writes (the same `ExportProfilesServiceRequest`, protobuf, uncompressed). One
//! `ResourceProfiles` per process, its resource attributes given by the caller; one `Profile`
//! per process and measure (CPU samples; off-CPU nanoseconds with `--idle`); one dictionary for
//! the whole request. Frames become locations with a function and line and the OTel
//! `profile.frame.type` attribute (`cpython`, `native`, `kernel`); a native address that could
//! not be named keeps its module as a mapping (with its GNU build id when the caller knows it)
//! and its address in the file, so a backend can symbolize it. Threads are sample attributes
//! (`thread.id`, `thread.name`). It builds messages from a finished `Profile` and reads nothing.

pub mod proto;

use std::{
    collections::HashMap,
    io::{self, Write},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use prost::Message as _;

use super::ProfileWriter;
use crate::profile::{Frame, Profile, Unknown};
use proto::{
    AnyValue, ExportProfilesServiceRequest, Function, InstrumentationScope, KeyValue,
    KeyValueAndUnit, Line, Location, Mapping, ProfilesDictionary, Resource, ResourceProfiles,
    Sample, ScopeProfiles, Stack, ValueType,
};

/// The instrumentation scope of every profile prof-bpf sends.
pub const SCOPE_NAME: &str = "prof-bpf";

/// What a profile's values count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Measure {
    /// CPU-clock samples (`samples`/`count`; the period is CPU nanoseconds per sample).
    CpuSamples,
    /// Time off the CPU (`off_cpu`/`nanoseconds`), from `--idle`.
    OffCpuNanos,
}

/// A native module a process mapped, for the mapping of its unnamed addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Module {
    /// The file's path as the process mapped it.
    pub path: String,
    /// The GNU build id (`.note.gnu.build-id`), lower-case hex.
    pub build_id: Option<String>,
}

/// One process's part of a request: its resource and its profiles over one window.
pub struct ProcessProfiles<'a> {
    pub pid: u32,
    /// Resource attributes (`host.name`, `process.pid`, `service.name`, ...).
    pub resource: Vec<KeyValue>,
    /// The profiles of the window; only the samples of `pid` are taken from each.
    pub profiles: Vec<(Measure, &'a Profile)>,
    /// Modules by the file name an unnamed native frame carries.
    pub modules: HashMap<String, Module>,
}

/// The time a request covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start: SystemTime,
    pub duration: Duration,
    /// CPU-clock samples per second: the period of a CPU sample.
    pub rate_hz: u64,
}

/// Builds one request: the dictionary is shared, every table's entry 0 is the zero value and
/// nothing is in a table twice.
pub struct RequestBuilder {
    dict: ProfilesDictionary,
    strings: HashMap<String, i32>,
    functions: HashMap<Function, i32>,
    /// By (frame, mapping).
    locations: HashMap<(Frame, i32), i32>,
    stacks: HashMap<Vec<i32>, i32>,
    /// By (key, value as text).
    attributes: HashMap<(String, String), i32>,
    /// By (file, build id).
    mappings: HashMap<(String, Option<String>), i32>,
    resource_profiles: Vec<ResourceProfiles>,
    /// For profile ids: distinct within a request.
    profiles_built: u64,
    /// Attributes every profile carries (the agent's health).
    profile_attributes: Vec<i32>,
}

impl Default for RequestBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestBuilder {
    pub fn new() -> Self {
        let mut b = Self {
            dict: ProfilesDictionary {
                mapping_table: vec![Mapping::default()],
                location_table: vec![Location::default()],
                function_table: vec![Function::default()],
                link_table: vec![proto::Link::default()],
                string_table: Vec::new(),
                attribute_table: vec![KeyValueAndUnit::default()],
                stack_table: vec![Stack::default()],
            },
            strings: HashMap::new(),
            functions: HashMap::new(),
            locations: HashMap::new(),
            stacks: HashMap::new(),
            attributes: HashMap::new(),
            mappings: HashMap::new(),
            resource_profiles: Vec::new(),
            profiles_built: 0,
            profile_attributes: Vec::new(),
        };
        b.string("");
        b
    }

    /// Whether no process was added.
    pub fn is_empty(&self) -> bool {
        self.resource_profiles.is_empty()
    }

    /// Samples added so far (over every profile).
    pub fn sample_count(&self) -> usize {
        self.resource_profiles
            .iter()
            .flat_map(|r| &r.scope_profiles)
            .flat_map(|s| &s.profiles)
            .map(|p| p.samples.len())
            .sum()
    }

    fn string(&mut self, s: &str) -> i32 {
        if let Some(&i) = self.strings.get(s) {
            return i;
        }
        let i = self.dict.string_table.len() as i32;
        self.dict.string_table.push(s.to_string());
        self.strings.insert(s.to_string(), i);
        i
    }

    fn attribute(&mut self, key: &str, value: AnyValue) -> i32 {
        let text = match &value.value {
            Some(proto::any_value::Value::StringValue(s)) => format!("s:{s}"),
            Some(proto::any_value::Value::IntValue(n)) => format!("i:{n}"),
            other => format!("{other:?}"),
        };
        let id = (key.to_string(), text);
        if let Some(&i) = self.attributes.get(&id) {
            return i;
        }
        let key_strindex = self.string(key);
        let i = self.dict.attribute_table.len() as i32;
        self.dict.attribute_table.push(KeyValueAndUnit {
            key_strindex,
            value: Some(value),
            unit_strindex: 0,
        });
        self.attributes.insert(id, i);
        i
    }

    fn function(&mut self, name: &str, file: &str) -> i32 {
        let f = Function {
            name_strindex: self.string(name),
            system_name_strindex: 0,
            filename_strindex: self.string(file),
            start_line: 0,
        };
        if let Some(&i) = self.functions.get(&f) {
            return i;
        }
        let i = self.dict.function_table.len() as i32;
        self.dict.function_table.push(f.clone());
        self.functions.insert(f, i);
        i
    }

    fn mapping(&mut self, module: &str, known: Option<&Module>) -> i32 {
        let file = known.map_or(module, |m| m.path.as_str()).to_string();
        let build_id = known.and_then(|m| m.build_id.clone());
        let key = (file, build_id);
        if let Some(&i) = self.mappings.get(&key) {
            return i;
        }
        let filename_strindex = self.string(&key.0);
        let attribute_indices = match &key.1 {
            Some(id) => {
                vec![self.attribute("process.executable.build_id.gnu", AnyValue::string(id))]
            }
            None => Vec::new(),
        };
        let i = self.dict.mapping_table.len() as i32;
        self.dict.mapping_table.push(Mapping {
            filename_strindex,
            attribute_indices,
            ..Mapping::default()
        });
        self.mappings.insert(key, i);
        i
    }

    /// The location of `frame`, or None for the frames the resource and the sample attributes
    /// already say (the process and thread roots).
    fn location(&mut self, frame: &Frame, modules: &HashMap<String, Module>) -> Option<i32> {
        let mapping_index = match frame {
            Frame::Unknown(Unknown::NativeAddress {
                module: Some(m), ..
            }) => self.mapping(m, modules.get(m)),
            Frame::Process { .. } | Frame::Thread { .. } => return None,
            _ => 0,
        };
        if let Some(&i) = self.locations.get(&(frame.clone(), mapping_index)) {
            return Some(i);
        }
        let kind = match frame {
            Frame::Python(_) => Some("cpython"),
            Frame::Native(_) | Frame::Unknown(Unknown::NativeAddress { .. }) => Some("native"),
            Frame::Kernel(_) => Some("kernel"),
            _ => None,
        };
        let (address, lines) = match frame {
            // No name: the address is the data, for the backend to symbolize.
            Frame::Unknown(Unknown::NativeAddress { offset, .. }) => (*offset, Vec::new()),
            _ => {
                let function_index = self.function(&frame.name(), frame.file());
                let line = Line {
                    function_index,
                    line: frame.line() as i64,
                    column: 0,
                };
                (0, vec![line])
            }
        };
        let attribute_indices = kind
            .map(|k| vec![self.attribute("profile.frame.type", AnyValue::string(k))])
            .unwrap_or_default();
        let i = self.dict.location_table.len() as i32;
        self.dict.location_table.push(Location {
            mapping_index,
            address,
            lines,
            attribute_indices,
        });
        self.locations.insert((frame.clone(), mapping_index), i);
        Some(i)
    }

    fn stack(&mut self, leaf_first: Vec<i32>) -> i32 {
        if let Some(&i) = self.stacks.get(&leaf_first) {
            return i;
        }
        let i = self.dict.stack_table.len() as i32;
        self.dict.stack_table.push(Stack {
            location_indices: leaf_first.clone(),
        });
        self.stacks.insert(leaf_first, i);
        i
    }

    fn value_type(&mut self, kind: &str, unit: &str) -> ValueType {
        ValueType {
            type_strindex: self.string(kind),
            unit_strindex: self.string(unit),
        }
    }

    /// Attributes every profile added from now on carries (e.g. the exporter's own health).
    pub fn set_profile_attributes(&mut self, attributes: Vec<(String, AnyValue)>) {
        self.profile_attributes = attributes
            .into_iter()
            .map(|(k, v)| self.attribute(&k, v))
            .collect();
    }

    /// Adds a process: its resource and one profile per measure with samples. A process with
    /// no sample in the window adds nothing (a collector drops empty requests anyway).
    pub fn add(&mut self, process: &ProcessProfiles<'_>, window: &Window) {
        let mut profiles = Vec::new();
        for &(measure, profile) in &process.profiles {
            let mut samples = Vec::new();
            for s in profile.samples.iter().filter(|s| s.pid == process.pid) {
                let mut leaf_first = Vec::with_capacity(s.frames.len());
                for &f in s.frames.iter().rev() {
                    leaf_first.extend(self.location(&profile.frames[f as usize], &process.modules));
                }
                let stack_index = self.stack(leaf_first);
                let thread = profile.thread(s.pid, s.tid).map(|t| t.name.clone());
                let mut attribute_indices =
                    vec![self.attribute("thread.id", AnyValue::int(s.tid.into()))];
                if let Some(name) = thread {
                    attribute_indices.push(self.attribute("thread.name", AnyValue::string(name)));
                }
                samples.push(Sample {
                    stack_index,
                    values: vec![s.count as i64],
                    attribute_indices,
                    link_index: 0,
                    timestamps_unix_nano: Vec::new(),
                });
            }
            if samples.is_empty() {
                continue;
            }
            let (sample_type, period_type, period) = match measure {
                Measure::CpuSamples => (
                    self.value_type("samples", "count"),
                    Some(self.value_type("cpu", "nanoseconds")),
                    super::pprof::period_ns(window.rate_hz),
                ),
                Measure::OffCpuNanos => (self.value_type("off_cpu", "nanoseconds"), None, 0),
            };
            self.profiles_built += 1;
            let start = window
                .start
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64;
            profiles.push(proto::Profile {
                sample_type: Some(sample_type),
                samples,
                time_unix_nano: start,
                duration_nano: window.duration.as_nanos() as u64,
                period_type,
                period,
                profile_id: profile_id(process.pid, start, self.profiles_built),
                attribute_indices: self.profile_attributes.clone(),
                ..proto::Profile::default()
            });
        }
        if profiles.is_empty() {
            return;
        }
        self.resource_profiles.push(ResourceProfiles {
            resource: Some(Resource {
                attributes: process.resource.clone(),
                dropped_attributes_count: 0,
            }),
            scope_profiles: vec![ScopeProfiles {
                scope: Some(InstrumentationScope {
                    name: SCOPE_NAME.into(),
                    version: crate::VERSION.into(),
                    ..InstrumentationScope::default()
                }),
                profiles,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        });
    }

    pub fn finish(self) -> ExportProfilesServiceRequest {
        ExportProfilesServiceRequest {
            resource_profiles: self.resource_profiles,
            dictionary: Some(self.dict),
        }
    }
}

/// A profile id that is never all zeros (which means "no id") and differs between the
/// profiles of a request and between requests.
fn profile_id(pid: u32, start_ns: u64, n: u64) -> Vec<u8> {
    // Two rounds of splitmix64 over (pid, time, count): unique enough for an id that only has
    // to tell profiles apart.
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let a = mix(start_ns ^ (u64::from(pid) << 32) ^ n);
    let b = mix(a ^ n.rotate_left(17)) | 1;
    let mut id = a.to_be_bytes().to_vec();
    id.extend(b.to_be_bytes());
    id
}

/// The resource attributes of a process that `record` knows (it no longer reads the process
/// when it writes): the host, pid, executable name and interpreter. The agent adds more.
pub fn basic_resource(host: &str, pid: u32, name: &str, version: &str) -> Vec<KeyValue> {
    vec![
        KeyValue::new("host.name", AnyValue::string(host)),
        KeyValue::new("service.name", AnyValue::string(name)),
        KeyValue::new("process.pid", AnyValue::int(pid.into())),
        KeyValue::new("process.executable.name", AnyValue::string(name)),
        KeyValue::new("process.runtime.name", AnyValue::string("CPython")),
        KeyValue::new("process.runtime.version", AnyValue::string(version)),
    ]
}

/// This machine's name (`host.name`), as gethostname(2) gives it.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is ours and its length is passed; the name is NUL-terminated within it
    // or truncated, which the search for NUL below handles.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    if ok {
        String::from_utf8_lossy(&buf[..len]).into_owned()
    } else {
        String::new()
    }
}

/// `record -f otlp`: the recording as one `ExportProfilesServiceRequest`, a resource per
/// process, protobuf (what the agent would have sent for this window).
pub struct Otlp {
    pub host: String,
    /// When the recording ended; the window is the profile's duration before it.
    pub end: SystemTime,
}

impl Otlp {
    pub fn ending_now() -> Self {
        Self {
            host: host_name(),
            end: SystemTime::now(),
        }
    }

    pub fn build(&self, profile: &Profile) -> ExportProfilesServiceRequest {
        let window = Window {
            start: self.end.checked_sub(profile.duration).unwrap_or(self.end),
            duration: profile.duration,
            rate_hz: profile.rate_hz,
        };
        let mut b = RequestBuilder::new();
        for p in &profile.processes {
            b.add(
                &ProcessProfiles {
                    pid: p.pid,
                    resource: basic_resource(&self.host, p.pid, &p.name, &p.version),
                    profiles: vec![(Measure::CpuSamples, profile)],
                    modules: HashMap::new(),
                },
                &window,
            );
        }
        b.finish()
    }
}

impl ProfileWriter for Otlp {
    fn write(&self, profile: &Profile, out: &mut dyn Write) -> io::Result<()> {
        out.write_all(&self.build(profile).encode_to_vec())
    }
}

/// One sample of a request with every index resolved: what tests compare and `describe`
/// prints.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedSample {
    /// Resource attributes as text.
    pub resource: HashMap<String, String>,
    /// `type/unit` of the profile.
    pub sample_type: String,
    /// Frames root first, as `function (file:line)`; an unnamed native address as
    /// `[address FILE+0xADDR build_id=ID]`.
    pub frames: Vec<String>,
    /// Sample attributes as text.
    pub attributes: Vec<(String, String)>,
    pub value: i64,
}

fn any_text(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(proto::any_value::Value::StringValue(s)) => s.clone(),
        Some(proto::any_value::Value::IntValue(n)) => n.to_string(),
        Some(proto::any_value::Value::BoolValue(b)) => b.to_string(),
        Some(proto::any_value::Value::DoubleValue(x)) => x.to_string(),
        other => format!("{other:?}"),
    }
}

/// Every sample of `request`, resolved; an index out of range or a table whose entry 0 is not
/// the zero value is an error naming it.
pub fn resolve(request: &ExportProfilesServiceRequest) -> Result<Vec<ResolvedSample>, String> {
    let d = request.dictionary.as_ref().ok_or("no dictionary")?;
    fn at<'a, T>(table: &'a [T], i: i32, what: &str) -> Result<&'a T, String> {
        usize::try_from(i)
            .ok()
            .and_then(|i| table.get(i))
            .ok_or(format!("{what} index {i} out of range ({})", table.len()))
    }
    let zero_first = d.string_table.first().is_some_and(String::is_empty)
        && d.mapping_table.first() == Some(&Mapping::default())
        && d.location_table.first() == Some(&Location::default())
        && d.function_table.first() == Some(&Function::default())
        && d.attribute_table.first().is_some_and(|a| {
            // An empty value is the zero value too (the collector writes one).
            a.key_strindex == 0
                && a.unit_strindex == 0
                && a.value.as_ref().is_none_or(|v| v.value.is_none())
        })
        && d.stack_table.first() == Some(&Stack::default());
    if !zero_first {
        return Err("a dictionary table's entry 0 is not the zero value".into());
    }
    let s = |i: i32| at(&d.string_table, i, "string").cloned();
    let attr = |i: i32| -> Result<(String, String), String> {
        let a = at(&d.attribute_table, i, "attribute")?;
        Ok((s(a.key_strindex)?, any_text(a.value.as_ref())))
    };
    let mut out = Vec::new();
    for rp in &request.resource_profiles {
        let resource: HashMap<String, String> = rp
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .map(|kv| (kv.key.clone(), any_text(kv.value.as_ref())))
            .collect();
        for p in rp.scope_profiles.iter().flat_map(|sp| &sp.profiles) {
            let t = p.sample_type.clone().unwrap_or_default();
            let sample_type = format!("{}/{}", s(t.type_strindex)?, s(t.unit_strindex)?);
            for sample in &p.samples {
                let stack = at(&d.stack_table, sample.stack_index, "stack")?;
                let mut frames = Vec::new();
                for &li in stack.location_indices.iter().rev() {
                    let loc = at(&d.location_table, li, "location")?;
                    if loc.lines.is_empty() {
                        let m = at(&d.mapping_table, loc.mapping_index, "mapping")?;
                        let mut text =
                            format!("[address {}+{:#x}", s(m.filename_strindex)?, loc.address);
                        for &ai in &m.attribute_indices {
                            let (k, v) = attr(ai)?;
                            text += &format!(" {k}={v}");
                        }
                        frames.push(text + "]");
                    }
                    // The caller last: root-first order puts it first.
                    for line in loc.lines.iter().rev() {
                        let f = at(&d.function_table, line.function_index, "function")?;
                        let (name, file) = (s(f.name_strindex)?, s(f.filename_strindex)?);
                        frames.push(match (file.as_str(), line.line) {
                            ("", _) => name,
                            (file, 0) => format!("{name} ({file})"),
                            (file, n) => format!("{name} ({file}:{n})"),
                        });
                    }
                }
                let attributes = sample
                    .attribute_indices
                    .iter()
                    .map(|&i| attr(i))
                    .collect::<Result<_, _>>()?;
                for v in &sample.values {
                    out.push(ResolvedSample {
                        resource: resource.clone(),
                        sample_type: sample_type.clone(),
                        frames: frames.clone(),
                        attributes: Vec::clone(&attributes),
                        value: *v,
                    });
                }
            }
        }
    }
    Ok(out)
}

/// A readable rendering of a request, every index resolved: resources, their profiles (type,
/// period, window) and samples, root first. What the golden file holds.
pub fn describe(request: &ExportProfilesServiceRequest) -> Result<String, String> {
    use std::fmt::Write as _;
    let d = request.dictionary.as_ref().ok_or("no dictionary")?;
    let s = |i: i32| d.string_table.get(i as usize).cloned().unwrap_or_default();
    let samples = resolve(request)?;
    let mut out = String::new();
    let mut next = samples.iter();
    for rp in &request.resource_profiles {
        let mut attrs: Vec<String> = rp
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .map(|kv| format!("{}={}", kv.key, any_text(kv.value.as_ref())))
            .collect();
        attrs.sort();
        let _ = writeln!(out, "resource: {}", attrs.join(" "));
        for sp in &rp.scope_profiles {
            let scope = sp.scope.clone().unwrap_or_default();
            let _ = writeln!(out, "  scope: {}", scope.name);
            for p in &sp.profiles {
                let t = p.sample_type.clone().unwrap_or_default();
                let pt = p.period_type.clone().unwrap_or_default();
                let _ = writeln!(
                    out,
                    "  profile: {}/{} period {} {}/{} duration {} ns, {} samples",
                    s(t.type_strindex),
                    s(t.unit_strindex),
                    p.period,
                    s(pt.type_strindex),
                    s(pt.unit_strindex),
                    p.duration_nano,
                    p.samples.len()
                );
                for sample in next
                    .by_ref()
                    .take(p.samples.iter().map(|s| s.values.len()).sum())
                {
                    let attrs: Vec<String> = sample
                        .attributes
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    let _ = writeln!(
                        out,
                        "    {} [{}]\n      {}",
                        sample.value,
                        attrs.join(" "),
                        sample.frames.join("\n      ")
                    );
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{Sample, example};

    fn fixed() -> Otlp {
        Otlp {
            host: "testhost".into(),
            end: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        }
    }

    #[test]
    fn round_trips_with_counts_stacks_and_threads() {
        let p = example();
        let req = fixed().build(&p);
        let bytes = req.encode_to_vec();
        let back = ExportProfilesServiceRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(back, req);
        let samples = resolve(&back).unwrap();
        assert_eq!(
            samples.iter().map(|s| s.value).sum::<i64>() as u64,
            p.total_samples()
        );
        let first = &samples[0];
        assert_eq!(first.resource["process.pid"], "4242");
        assert_eq!(first.resource["process.runtime.version"], "3.12");
        assert_eq!(first.resource["host.name"], "testhost");
        assert_eq!(first.sample_type, "samples/count");
        assert_eq!(
            first.frames,
            [
                "<module> (app.py:30)",
                "main (app.py:25)",
                "work (app.py:10)",
                "burn (app.py:4)"
            ],
            "root first once resolved: the stack table holds it leaf first"
        );
        assert!(
            first
                .attributes
                .contains(&("thread.name".into(), "python3.12".into()))
        );
        let d = back.dictionary.unwrap();
        let leaf = d.stack_table[1].location_indices[0];
        let f = d.location_table[leaf as usize].lines[0].function_index;
        assert_eq!(
            d.string_table[d.function_table[f as usize].name_strindex as usize],
            "burn"
        );
        let p = &back.resource_profiles[0].scope_profiles[0].profiles[0];
        assert_eq!(p.period, 10_000_000);
        assert_eq!(p.duration_nano, 1_250_000_000);
        assert_eq!(p.time_unix_nano, 1_700_000_000_000_000_000 - 1_250_000_000);
        assert_eq!(p.profile_id.len(), 16);
    }

    #[test]
    fn tables_hold_nothing_twice_and_start_with_zero_values() {
        let req = fixed().build(&example());
        let d = req.dictionary.clone().unwrap();
        let unique = |n: usize, set: usize, what: &str| assert_eq!(n, set, "{what} has duplicates");
        let strings: std::collections::HashSet<_> = d.string_table.iter().collect();
        unique(d.string_table.len(), strings.len(), "string_table");
        let stacks: std::collections::HashSet<_> = d.stack_table.iter().collect();
        unique(d.stack_table.len(), stacks.len(), "stack_table");
        let functions: std::collections::HashSet<_> = d.function_table.iter().collect();
        unique(d.function_table.len(), functions.len(), "function_table");
        assert!(resolve(&req).is_ok());
        let mut broken = req.clone();
        broken.dictionary.as_mut().unwrap().string_table[0] = "x".into();
        assert!(resolve(&broken).unwrap_err().contains("entry 0"));
    }

    #[test]
    fn unnamed_native_addresses_keep_module_address_and_build_id() {
        let mut p = Profile {
            frames: vec![
                Frame::python("main", "app.py", 3),
                Frame::native("PyObject_Call", "call.c", 7),
                Frame::Unknown(Unknown::NativeAddress {
                    module: Some("libfoo.so".into()),
                    offset: 0x1234,
                }),
                Frame::Process {
                    pid: 9,
                    ns_pid: None,
                    name: "py".into(),
                },
            ],
            samples: vec![Sample {
                pid: 9,
                tid: 10,
                frames: vec![3, 0, 1, 2],
                count: 4,
            }],
            rate_hz: 1000,
            ..Profile::default()
        };
        p.processes.push(crate::profile::ProcessInfo {
            pid: 9,
            name: "py".into(),
            version: "3.12".into(),
            ns_pid: None,
        });
        let modules = HashMap::from([(
            "libfoo.so".to_string(),
            Module {
                path: "/opt/lib/libfoo.so".into(),
                build_id: Some("abcd01".into()),
            },
        )]);
        let mut b = RequestBuilder::new();
        let window = Window {
            start: UNIX_EPOCH,
            duration: Duration::from_secs(5),
            rate_hz: 1000,
        };
        b.add(
            &ProcessProfiles {
                pid: 9,
                resource: basic_resource("h", 9, "py", "3.12"),
                profiles: vec![(Measure::CpuSamples, &p), (Measure::OffCpuNanos, &p)],
                modules,
            },
            &window,
        );
        let req = b.finish();
        let samples = resolve(&req).unwrap();
        assert_eq!(samples.len(), 2, "one per measure");
        assert_eq!(
            samples[0].frames,
            [
                "main (app.py:3)",
                "PyObject_Call (call.c:7)",
                "[address /opt/lib/libfoo.so+0x1234 process.executable.build_id.gnu=abcd01]"
            ],
            "the process root is the resource's, not a frame"
        );
        assert_eq!(samples[1].sample_type, "off_cpu/nanoseconds");
        let profiles = &req.resource_profiles[0].scope_profiles[0].profiles;
        assert_eq!(profiles[0].period, 1_000_000);
        assert_ne!(profiles[0].profile_id, profiles[1].profile_id);
        let d = req.dictionary.unwrap();
        let types: Vec<String> = d
            .location_table
            .iter()
            .skip(1)
            .map(|l| {
                let a = &d.attribute_table[l.attribute_indices[0] as usize];
                any_text(a.value.as_ref())
            })
            .collect();
        assert_eq!(
            types,
            ["native", "native", "cpython"],
            "interned leaf first"
        );
    }

    #[test]
    fn a_process_without_samples_adds_nothing() {
        let p = Profile::default();
        let mut b = RequestBuilder::new();
        b.add(
            &ProcessProfiles {
                pid: 1,
                resource: Vec::new(),
                profiles: vec![(Measure::CpuSamples, &p)],
                modules: HashMap::new(),
            },
            &Window {
                start: UNIX_EPOCH,
                duration: Duration::ZERO,
                rate_hz: 100,
            },
        );
        assert!(b.is_empty());
    }

    #[test]
    fn golden() {
        let req = fixed().build(&example());
        crate::output::golden::check("otlp", "two_threads.txt", &describe(&req).unwrap());
    }
}
