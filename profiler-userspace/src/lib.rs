//! prof-bpf's library: the pipeline from kernel samples to profile files.
//!
//! kernel sample (`bpf`) -> raw stack + code objects read from the target (`process`, `python`)
//! -> profile (`profile`) -> file (`output`). `record` drives it; `cli` turns arguments into
//! configs.

pub mod bpf;
pub mod cli;
pub mod output;
pub mod privilege;
pub mod process;
pub mod profile;
pub mod python;
pub mod record;
pub mod symbolize;
pub mod unwind;
