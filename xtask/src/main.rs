//! `cargo xtask <chore>`: project chores that are not a plain cargo command.

use std::{env, path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result, bail};

const USAGE: &str = "usage: cargo xtask build-ebpf";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let root = workspace_root()?;
    match env::args().nth(1).as_deref() {
        Some("build-ebpf") => {
            let object = xtask::build_ebpf(&root)?;
            println!("{}", object.display());
            Ok(())
        }
        Some("-h" | "--help") => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown chore `{other}`\n{USAGE}"),
        None => bail!("{USAGE}"),
    }
}

fn workspace_root() -> Result<PathBuf> {
    let manifest = env::var("CARGO_MANIFEST_DIR").context("run me through `cargo xtask`")?;
    Ok(PathBuf::from(manifest)
        .parent()
        .context("xtask has a parent folder")?
        .to_path_buf())
}
