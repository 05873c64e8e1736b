//! Writers, one per output format, behind one trait. They read a finished `Profile` and never
//! touch the kernel or the target.

mod collapsed;
mod flamegraph;
mod speedscope;

use std::{
    fmt,
    io::{self, Write},
};

pub use collapsed::Collapsed;
pub use flamegraph::Flamegraph;
pub use speedscope::Speedscope;

use crate::profile::Profile;

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
}

impl Format {
    pub fn extension(self) -> &'static str {
        match self {
            Format::Flamegraph => "svg",
            Format::Speedscope => "speedscope.json",
            Format::Raw => "txt",
        }
    }

    pub fn writer(self, title: String) -> Box<dyn ProfileWriter> {
        match self {
            Format::Flamegraph => Box::new(Flamegraph { title }),
            Format::Speedscope => Box::new(Speedscope { name: title }),
            Format::Raw => Box::new(Collapsed),
        }
    }

    /// How to look at a file of this format, for the summary.
    pub fn how_to_open(self) -> &'static str {
        match self {
            Format::Flamegraph => "open it in a web browser",
            Format::Speedscope => "drop it on https://www.speedscope.app or run `speedscope FILE`",
            Format::Raw => "feed it to inferno-flamegraph or flamegraph.pl, or read it",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Flamegraph => "flamegraph",
            Format::Speedscope => "speedscope",
            Format::Raw => "raw",
        })
    }
}
