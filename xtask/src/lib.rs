//! The one way the BPF object is built. `cargo xtask build-ebpf` and profiler-userspace's
//! build.rs both call `build_ebpf`, into the same target directory, so they share one
//! incremental build and cannot drift apart.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// The BPF crate's package and binary name.
pub const EBPF_PACKAGE: &str = "profiler-ebpf";
const TARGET: &str = "bpfel-unknown-none";
const TOOLCHAIN: &str = "nightly";

/// Where the BPF build keeps its artefacts, below the workspace's target directory.
pub fn ebpf_target_dir(workspace_root: &Path) -> PathBuf {
    workspace_root.join("target").join("bpf")
}

/// Builds the BPF object (release: the verifier wants optimised code) and returns its path.
pub fn build_ebpf(workspace_root: &Path) -> Result<PathBuf> {
    check_toolchain()?;
    let target_dir = ebpf_target_dir(workspace_root);
    let rustflags = [
        r#"--cfg=bpf_target_arch="x86_64""#,
        "-Cdebuginfo=2",
        "-Clink-arg=--btf",
    ]
    .join("\x1f");
    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        TOOLCHAIN,
        "cargo",
        "build",
        "--release",
        "-Z",
        "build-std=core",
    ])
    .args([
        "--package",
        EBPF_PACKAGE,
        "--bin",
        EBPF_PACKAGE,
        "--target",
        TARGET,
    ])
    .arg("--target-dir")
    .arg(&target_dir)
    .current_dir(workspace_root)
    .env("CARGO_ENCODED_RUSTFLAGS", rustflags);
    // A build script inherits the outer build's compiler settings; none of them fit BPF.
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "RUSTUP_TOOLCHAIN",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_MAKEFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .context("running `rustup run nightly cargo build` for the BPF object")?;
    if !status.success() {
        bail!("building the BPF object failed ({status}); see the compiler output above");
    }
    let object = target_dir.join(TARGET).join("release").join(EBPF_PACKAGE);
    if !object.is_file() {
        bail!(
            "the BPF build succeeded but left no object at {}",
            object.display()
        );
    }
    Ok(object)
}

/// Fails with the fix when the BPF toolchain is not installed.
fn check_toolchain() -> Result<()> {
    let has_linker = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let has_src = Command::new("rustup")
        .args(["component", "list", "--toolchain", TOOLCHAIN, "--installed"])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.starts_with("rust-src"))
        });
    match (has_linker, has_src) {
        (true, true) => Ok(()),
        _ => bail!(
            "the BPF toolchain is incomplete ({}{}): run scripts/setup, which installs it",
            if has_src {
                ""
            } else {
                "no rust-src for nightly; "
            },
            if has_linker {
                ""
            } else {
                "no bpf-linker on PATH"
            },
        ),
    }
}
