//! Builds the BPF object through xtask (the same function `cargo xtask build-ebpf` runs) and
//! hands it to the crate as `$OUT_DIR/profiler-ebpf`. `PROF_BPF_EBPF_OBJECT` names a prebuilt
//! object instead.

use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, Result};

fn main() -> Result<()> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest
        .parent()
        .context("profiler-userspace sits in the workspace")?;
    let out = PathBuf::from(env::var("OUT_DIR")?).join(xtask::EBPF_PACKAGE);

    println!("cargo:rerun-if-env-changed=PROF_BPF_EBPF_OBJECT");
    let object = match env::var_os("PROF_BPF_EBPF_OBJECT") {
        Some(path) => PathBuf::from(path),
        None => {
            for dir in [
                "profiler-ebpf/src",
                "profiler-ebpf/Cargo.toml",
                "profiler-common/src",
            ] {
                println!("cargo:rerun-if-changed={}", root.join(dir).display());
            }
            xtask::build_ebpf(root)?
        }
    };
    println!("cargo:rerun-if-changed={}", object.display());
    fs::copy(&object, &out).with_context(|| {
        format!(
            "copying the BPF object {} to {}",
            object.display(),
            out.display()
        )
    })?;
    Ok(())
}
