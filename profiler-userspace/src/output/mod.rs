//! Writers, one per output format, behind one trait. They read a finished `Profile` and never
//! touch the kernel or the target.

mod collapsed;
pub mod file;
mod flamegraph;
pub mod otlp;
pub mod pprof;
mod speedscope;

use std::{
    fmt,
    io::{self, Write},
};

pub use collapsed::Collapsed;
pub use flamegraph::Flamegraph;
pub use otlp::Otlp;
pub use pprof::Pprof;
pub use speedscope::Speedscope;

use crate::profile::{Profile, store};

/// Writers return plain I/O errors: everything else about a profile is already valid.
pub trait ProfileWriter {
    fn write(&self, profile: &Profile, out: &mut dyn Write) -> io::Result<()>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// SVG flamegraph (inferno); open it in a browser.
    Flamegraph,
    /// Speedscope JSON; open it at https://www.speedscope.app or with the speedscope CLI.
    Speedscope,
    /// Collapsed stacks, one `frame;frame;frame count` per line.
    Raw,
    /// pprof protobuf, gzipped: `go tool pprof`, Pyroscope, Grafana.
    Pprof,
    /// prof-bpf's own lossless JSON: read it with `prof-bpf report FILE`, convert it later.
    Profbpf,
    /// OTLP profiles (an OpenTelemetry ExportProfilesServiceRequest, protobuf): what `agent`
    /// sends to a collector.
    Otlp,
}

impl Format {
    pub fn extension(self) -> &'static str {
        match self {
            Format::Flamegraph => "svg",
            Format::Speedscope => "speedscope.json",
            Format::Raw => "txt",
            Format::Pprof => "pb.gz",
            Format::Profbpf => "profbpf.json",
            Format::Otlp => "otlp.pb",
        }
    }

    pub fn writer(self, title: String) -> Box<dyn ProfileWriter> {
        match self {
            Format::Flamegraph => Box::new(Flamegraph { title }),
            Format::Speedscope => Box::new(Speedscope { name: title }),
            Format::Raw => Box::new(Collapsed),
            Format::Pprof => Box::new(Pprof { title }),
            Format::Profbpf => Box::new(ProfBpf),
            Format::Otlp => Box::new(Otlp::ending_now()),
        }
    }

    /// How to look at a file of this format, for the summary.
    pub fn how_to_open(self) -> &'static str {
        match self {
            Format::Flamegraph => "open it in a web browser",
            Format::Speedscope => "drop it on https://www.speedscope.app or run `speedscope FILE`",
            Format::Raw => "feed it to inferno-flamegraph or flamegraph.pl, or read it",
            Format::Pprof => "run `go tool pprof -http=: FILE`, or upload it to Pyroscope/Grafana",
            Format::Profbpf => "run `prof-bpf report FILE` (it converts to every other format too)",
            Format::Otlp => {
                "send it to an OpenTelemetry Collector (POST /v1development/profiles), or decode it with protoc"
            }
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Flamegraph => "flamegraph",
            Format::Speedscope => "speedscope",
            Format::Raw => "raw",
            Format::Pprof => "pprof",
            Format::Profbpf => "profbpf",
            Format::Otlp => "otlp",
        })
    }
}

/// The lossless format's writer; `profile::store` owns the format.
pub struct ProfBpf;

impl ProfileWriter for ProfBpf {
    fn write(&self, profile: &Profile, out: &mut dyn Write) -> io::Result<()> {
        store::write(profile, out)
    }
}

/// Golden files: each format's rendering of `profile::example()`, under `tests/data/<format>/`.
/// `UPDATE_GOLDEN=1 cargo test` rewrites them (no other value does, and never in CI); review the
/// diff before committing. scripts/test fails in CI if tests/data changed during the run.
#[cfg(test)]
pub(crate) mod golden {
    use std::{io::Read as _, path::PathBuf};

    use prost::Message as _;

    use super::*;
    use crate::profile::example;

    // What `report` titles a conversion of the example, so the e2e test can share the files.
    const TITLE: &str = "prof-bpf: python3.12 (pid 4242)";

    fn data(format: &str, file: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/data")
            .join(format)
            .join(file)
    }

    /// Whether golden files are rewritten, from `UPDATE_GOLDEN` and `CI`: only with
    /// `UPDATE_GOLDEN=1`, and an error in CI (any `CI` but empty, `false` or `0`), where a
    /// rewritten file would make the comparison pass whatever the output.
    fn rewrite(update: Option<&str>, ci: Option<&str>) -> Result<bool, String> {
        let update = update == Some("1");
        let ci = ci.is_some_and(|v| !v.is_empty() && v != "false" && v != "0");
        if update && ci {
            return Err("UPDATE_GOLDEN=1 in CI: golden files are only rewritten by hand".into());
        }
        Ok(update)
    }

    /// Compares `actual` with the golden file, showing the first differing lines.
    pub(crate) fn check(format: &str, file: &str, actual: &str) {
        let path = data(format, file);
        let var = |name: &str| std::env::var(name).ok();
        let update = rewrite(var("UPDATE_GOLDEN").as_deref(), var("CI").as_deref())
            .unwrap_or_else(|e| panic!("{e}"));
        if update {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, actual).unwrap();
            return;
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 creates it)", path.display()));
        if expected == actual {
            return;
        }
        let mut diff = String::new();
        let (e, a): (Vec<_>, Vec<_>) = (expected.lines().collect(), actual.lines().collect());
        let first = e
            .iter()
            .zip(&a)
            .position(|(x, y)| x != y)
            .unwrap_or(e.len().min(a.len()));
        for i in first.saturating_sub(2)..(first + 6).min(e.len().max(a.len())) {
            match (e.get(i), a.get(i)) {
                (Some(x), Some(y)) if x == y => diff += &format!("   {x}\n"),
                (x, y) => {
                    if let Some(x) = x {
                        diff += &format!(" - {x}\n");
                    }
                    if let Some(y) = y {
                        diff += &format!(" + {y}\n");
                    }
                }
            }
        }
        panic!(
            "{} differs from this build's output (- expected, + actual) from line {}:\n{diff}\
             UPDATE_GOLDEN=1 rewrites it if the change is intended",
            path.display(),
            first + 1
        );
    }

    fn render(format: Format) -> Vec<u8> {
        let mut out = Vec::new();
        format
            .writer(TITLE.into())
            .write(&example(), &mut out)
            .unwrap();
        out
    }

    fn text(format: Format) -> String {
        String::from_utf8(render(format)).unwrap()
    }

    /// Regression (issue 12): any UPDATE_GOLDEN, even `0`, rewrote the files and passed.
    #[test]
    fn only_update_golden_1_rewrites_and_never_in_ci() {
        assert_eq!(rewrite(None, None), Ok(false));
        assert_eq!(rewrite(Some("1"), None), Ok(true));
        for other in ["0", "", "yes", "true", "2"] {
            assert_eq!(
                rewrite(Some(other), None),
                Ok(false),
                "UPDATE_GOLDEN={other}"
            );
        }
        for ci in ["true", "1", "yes", "github"] {
            assert!(rewrite(Some("1"), Some(ci)).is_err(), "CI={ci}");
            assert_eq!(rewrite(None, Some(ci)), Ok(false));
        }
        for not_ci in ["", "false", "0"] {
            assert_eq!(rewrite(Some("1"), Some(not_ci)), Ok(true), "CI={not_ci}");
        }
    }

    #[test]
    fn raw() {
        check("raw", "two_threads.txt", &text(Format::Raw));
    }

    #[test]
    fn speedscope() {
        check("speedscope", "two_threads.json", &text(Format::Speedscope));
    }

    #[test]
    fn flamegraph() {
        check("flamegraph", "two_threads.svg", &text(Format::Flamegraph));
    }

    #[test]
    fn profbpf() {
        check("profbpf", "two_threads.json", &text(Format::Profbpf));
    }

    #[test]
    fn pprof() {
        let gz = render(Format::Pprof);
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(gz.as_slice())
            .read_to_end(&mut raw)
            .unwrap();
        let decoded = pprof::PprofProfile::decode(raw.as_slice()).unwrap();
        check(
            "pprof",
            "two_threads.txt",
            &pprof::describe(&decoded).unwrap(),
        );
    }
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum as _;

    use super::*;

    /// The summary names a format (`wrote raw to ...`) as `-f` spells it.
    #[test]
    fn formats_are_named_as_dash_f_takes_them() {
        for format in Format::value_variants() {
            let name = format.to_possible_value().unwrap();
            assert_eq!(format.to_string(), name.get_name(), "{format:?}");
            assert_eq!(Format::from_str(&format.to_string(), false), Ok(*format));
        }
    }

    /// Default file names (`NAME-PID-DATE-TIME.EXT`) of two formats never collide, and each
    /// ends as the tools that open it expect.
    #[test]
    fn each_format_has_its_own_extension() {
        let mut extensions: Vec<&str> = Format::value_variants()
            .iter()
            .map(|f| f.extension())
            .collect();
        extensions.sort_unstable();
        extensions.dedup();
        assert_eq!(extensions.len(), Format::value_variants().len());
        assert_eq!(Format::Flamegraph.extension(), "svg");
        assert!(Format::Speedscope.extension().ends_with(".json"));
        assert!(Format::Pprof.extension().ends_with(".gz"));
    }

    /// The summary's hint names the tool that opens each format.
    #[test]
    fn each_hint_names_its_tool() {
        for (format, tool) in [
            (Format::Flamegraph, "browser"),
            (Format::Speedscope, "speedscope"),
            (Format::Raw, "flamegraph"),
            (Format::Pprof, "pprof"),
            (Format::Profbpf, "prof-bpf report"),
            (Format::Otlp, "OpenTelemetry Collector"),
        ] {
            assert!(format.how_to_open().contains(tool), "{format:?}");
        }
    }
}
