//! SVG flamegraphs through inferno.

use std::io::{self, Write};

use inferno::flamegraph::{self, Options};

use super::ProfileWriter;
use crate::profile::Profile;

pub struct Flamegraph {
    pub title: String,
}

impl ProfileWriter for Flamegraph {
    fn write(&self, profile: &Profile, out: &mut dyn Write) -> io::Result<()> {
        let lines: Vec<String> = profile
            .folded()
            .into_iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect();
        let mut options = Options::default();
        options.title = self.title.clone();
        options.count_name = "samples".into();
        // Colors from a hash of the function name, not random: the same profile gives the same
        // SVG (golden files), and a function keeps its color from one recording to the next.
        options.hash = true;
        if lines.is_empty() {
            // inferno refuses an empty profile; an empty SVG still says what happened.
            writeln!(
                out,
                r#"<svg xmlns="http://www.w3.org/2000/svg" width="600" height="60"><text x="10" y="30">{}: no samples</text></svg>"#,
                escape(&self.title)
            )?;
            return Ok(());
        }
        flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), out)
            .map_err(|e| io::Error::other(e.to_string()))
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
