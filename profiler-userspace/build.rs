//! Builds the BPF object through xtask (the same function `cargo xtask build-ebpf` runs) and
//! hands it to the crate as `$OUT_DIR/profiler-ebpf`. `PROF_BPF_EBPF_OBJECT` names a prebuilt
//! object instead.
//!
//! Also names the commit the binary is built from, as `PROF_BPF_COMMIT` (`git describe
//! --always`, `-dirty` when the sources below differ from it, `unknown commit` outside a git
//! checkout): `--version` and every recording's summary print it, for bug reports.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

/// What the binary is built from, relative to the workspace root: a change to any of them
/// reruns this script, which rebuilds the BPF object (incrementally) and re-reads the commit.
const SOURCES: &[&str] = &[
    "Cargo.toml",
    "Cargo.lock",
    "rust-toolchain.toml",
    "profiler-common",
    "profiler-ebpf",
    "profiler-userspace",
    "xtask",
];

fn main() -> Result<()> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest
        .parent()
        .context("profiler-userspace sits in the workspace")?;
    let out = PathBuf::from(env::var("OUT_DIR")?).join(xtask::EBPF_PACKAGE);

    for source in SOURCES {
        println!("cargo:rerun-if-changed={}", root.join(source).display());
    }
    println!(
        "cargo:rustc-env=PROF_BPF_COMMIT={}",
        commit(root).unwrap_or_else(|| "unknown commit".to_string())
    );

    println!("cargo:rerun-if-env-changed=PROF_BPF_EBPF_OBJECT");
    let object = match env::var_os("PROF_BPF_EBPF_OBJECT") {
        Some(path) => PathBuf::from(path),
        None => xtask::build_ebpf(root)?,
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

/// `git describe --always` of HEAD, with `-dirty` when `SOURCES` differ from it; `None` when
/// the workspace is not a git checkout of its own (a source archive) or git is missing or
/// refuses the directory.
/// Asks cargo to rerun when HEAD moves: a commit, a checkout, a reset.
fn commit(root: &Path) -> Option<String> {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    // A source archive unpacked inside some other repository must not take that one's commit.
    let top = PathBuf::from(git(&["rev-parse", "--show-toplevel"])?);
    if top.canonicalize().ok()? != root.canonicalize().ok()? {
        return None;
    }
    // HEAD itself, the branch it names (a loose ref, or packed-refs once git packs it), and
    // HEAD's reflog, which every commit, checkout and reset appends to (it catches a commit that
    // writes a loose ref where there was only a packed one), each where git keeps it: a
    // worktree's HEAD and reflog live apart from the shared refs.
    let mut watch = vec![
        "HEAD".to_string(),
        "logs/HEAD".to_string(),
        "packed-refs".to_string(),
    ];
    watch.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for name in watch {
        if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
            let path = root.join(path);
            // A missing file would make cargo rerun this script on every build.
            if path.is_file() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    let described = git(&["describe", "--always"])?;
    // `git diff --quiet` exits 1 when the files differ, 0 when not (and 128 on errors).
    let dirty = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["diff", "--quiet", "HEAD", "--"])
        .args(SOURCES)
        .status()
        .ok()?
        .code()
        == Some(1);
    Some(if dirty {
        format!("{described}-dirty")
    } else {
        described
    })
}
