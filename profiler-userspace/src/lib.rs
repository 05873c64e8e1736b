//! prof-bpf's library: the pipeline from kernel samples to profile files.
//!
//! kernel sample (`bpf`) -> raw stack + code objects read from the target (`process`, `python`)
//! -> profile (`profile`) -> file (`output`). `record` drives it; `report` reads a saved
//! profile back; `cli` turns arguments into configs.

/// Prints a line to stderr, ignoring failure: a closed terminal (after SIGHUP) must not stop
/// prof-bpf from writing the profile, as `eprintln!`'s panic would.
#[macro_export]
macro_rules! note {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::writeln!(::std::io::stderr(), $($arg)*);
    }};
}

pub mod bpf;
pub mod cli;
pub mod dump;
pub mod output;
pub mod privilege;
pub mod process;
pub mod profile;
pub mod python;
pub mod record;
pub mod report;
pub mod symbolize;
pub mod top;
pub mod unwind;

/// `0.1.0 (2e383aa)`: the package version and the commit this binary was built from (with
/// `-dirty` when its sources differed from that commit, `unknown commit` when it was built
/// outside a git checkout; see build.rs). `--version` and every recording's summary print it,
/// so a pasted summary says which build it came from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("PROF_BPF_COMMIT"),
    ")"
);
