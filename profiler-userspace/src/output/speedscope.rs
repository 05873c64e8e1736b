//! Speedscope's file format (https://www.speedscope.app/file-format-schema.json): one sampled
//! profile per thread, frames shared, weights in seconds.

use std::{
    collections::BTreeMap,
    io::{self, Write},
};

use serde_json::json;

use super::ProfileWriter;
use crate::profile::Profile;

pub struct Speedscope {
    pub name: String,
}

impl ProfileWriter for Speedscope {
    fn write(&self, profile: &Profile, out: &mut dyn Write) -> io::Result<()> {
        let seconds_per_sample = if profile.rate_hz > 0 {
            1.0 / profile.rate_hz as f64
        } else {
            1.0
        };
        let frames: Vec<_> = profile
            .frames
            .iter()
            .map(|f| {
                let mut v = json!({ "name": f.name() });
                if !f.file().is_empty() {
                    v["file"] = json!(f.file());
                }
                if f.line() != 0 {
                    v["line"] = json!(f.line());
                }
                v
            })
            .collect();
        let mut threads: BTreeMap<(u32, u32), Vec<_>> = BTreeMap::new();
        for s in &profile.samples {
            threads.entry((s.pid, s.tid)).or_default().push(s);
        }
        let names: BTreeMap<u32, &str> = profile
            .processes
            .iter()
            .map(|p| (p.pid, p.name.as_str()))
            .collect();
        let profiles: Vec<_> = threads
            .iter()
            .map(|(&(pid, tid), samples)| {
                let weights: Vec<f64> = samples
                    .iter()
                    .map(|s| s.count as f64 * seconds_per_sample)
                    .collect();
                let total: f64 = weights.iter().sum();
                json!({
                    "type": "sampled",
                    "name": format!(
                        "{} (pid {pid}) thread {tid} ({})",
                        names.get(&pid).copied().unwrap_or("process"),
                        profile.thread(pid, tid).map_or("?", |t| t.name.as_str())
                    ),
                    "unit": "seconds",
                    "startValue": 0.0,
                    "endValue": total,
                    "samples": samples.iter().map(|s| &s.frames).collect::<Vec<_>>(),
                    "weights": weights,
                })
            })
            .collect();
        let doc = json!({
            "$schema": "https://www.speedscope.app/file-format-schema.json",
            "name": self.name,
            "activeProfileIndex": 0,
            "exporter": concat!("prof-bpf ", env!("CARGO_PKG_VERSION")),
            "shared": { "frames": frames },
            "profiles": profiles,
        });
        serde_json::to_writer(&mut *out, &doc)?;
        writeln!(out)
    }
}
