//! prof-bpf's library: the pipeline from kernel samples to profile files, bottom layer first.
//!
//! processes (`process`) -> their interpreters (`python`) and native code (`unwind`,
//! `symbolize`) -> the kernel program (`bpf`) -> named stacks and the profile (`profile`) ->
//! files (`output`) -> the sampling session (`session`) -> the commands (`record`, `top`,
//! `dump`, `report`, `agent`) -> arguments (`cli`, used by main). A module imports only from the layers
//! below it; `privilege` and `cache` are leaves any layer may use.

/// Prints a line to stderr, ignoring failure: a closed terminal (after SIGHUP) must not stop
/// prof-bpf from writing the profile, as `eprintln!`'s panic would.
#[macro_export]
macro_rules! note {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::writeln!(::std::io::stderr(), $($arg)*);
    }};
}

pub mod agent;
pub mod bpf;
pub mod cache;
pub mod cli;
pub mod dump;
pub mod output;
pub mod privilege;
pub mod process;
pub mod profile;
pub mod python;
pub mod record;
pub mod report;
pub mod session;
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
