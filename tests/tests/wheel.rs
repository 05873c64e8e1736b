//! The wheel, end to end (issue 19: install it the way people install py-spy). `scripts/wheel`
//! builds it (or `PROF_BPF_WHEEL` names the one scripts/test built for the suite), pip installs
//! it from the file into a fresh venv, and the venv's `prof-bpf` records the split fixture with a
//! PATH that holds no cargo, rustc or bpf-linker. auditwheel, pypa's tool that knows the
//! manylinux rules, checks the wheel's platform tag.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use prof_bpf_tests::*;

/// The wheel under test, built once per run of this file.
fn wheel() -> &'static Path {
    static WHEEL: OnceLock<PathBuf> = OnceLock::new();
    WHEEL.get_or_init(|| {
        if let Some(path) = env::var_os("PROF_BPF_WHEEL") {
            return PathBuf::from(path);
        }
        let out = Command::new(root().join("scripts/wheel"))
            .output()
            .expect("running scripts/wheel");
        assert!(
            out.status.success(),
            "scripts/wheel failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).expect("utf-8 path");
        PathBuf::from(
            stdout
                .lines()
                .last()
                .expect("scripts/wheel printed the wheel's path"),
        )
    })
}

/// A tool from the venv scripts/setup makes for building and checking wheels.
fn wheel_tool(name: &str) -> PathBuf {
    let path = root().join("target/wheel-tools/bin").join(name);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/setup",
        path.display()
    );
    path
}

/// `prof-bpf 0.1.0 (` and the commit this tree is at: what the wheel's `--version` starts with.
fn version_prefix() -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(root())
        .args(["describe", "--always"])
        .output()
        .expect("running git");
    assert!(out.status.success(), "git describe failed");
    let commit = String::from_utf8(out.stdout).unwrap();
    format!("prof-bpf {} ({}", env!("CARGO_PKG_VERSION"), commit.trim())
}

/// The glibc version a manylinux platform tag promises to run on (`manylinux1_x86_64` is the
/// legacy name of `manylinux_2_5_x86_64`), or None for any other tag.
fn manylinux_glibc(tag: &str) -> Option<(u32, u32)> {
    let tag = tag.strip_suffix("_x86_64")?;
    let legacy = match tag {
        "manylinux1" => Some((2, 5)),
        "manylinux2010" => Some((2, 12)),
        "manylinux2014" => Some((2, 17)),
        _ => None,
    };
    legacy.or_else(|| {
        let (major, minor) = tag.strip_prefix("manylinux_")?.split_once('_')?;
        Some((major.parse().ok()?, minor.parse().ok()?))
    })
}

/// Every platform tag the wheel claims must be one auditwheel finds its binary consistent with:
/// a manylinux tag no older than the policy auditwheel reports (newer glibcs keep the old
/// symbols). The static musl binary needs no shared library at all, so it runs on any x86_64
/// Linux: the oldest policy, manylinux_2_5.
#[test]
fn issue_19_wheel_tags_are_what_auditwheel_finds() {
    let wheel = wheel();
    let out = Command::new(wheel_tool("auditwheel"))
        .arg("show")
        .arg(wheel)
        .output()
        .expect("running auditwheel");
    let report = String::from_utf8_lossy(&out.stdout).replace('\n', " ");
    assert!(
        out.status.success(),
        "auditwheel show failed: {report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{report}");
    let found = report
        .split("consistent with the following platform tag: \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("auditwheel names no platform tag: {report}"));
    let floor = manylinux_glibc(found)
        .unwrap_or_else(|| panic!("auditwheel finds the wheel is not manylinux: {found}"));
    assert_eq!(
        floor,
        (2, 5),
        "the binary needs glibc {floor:?} ({report}); the wheel is meant to be static"
    );
    assert!(
        report.contains("requires no external shared libraries"),
        "{report}"
    );
    // name-version-python-abi-platform.whl; the platform part lists each tag, dot-separated.
    let name = wheel.file_name().unwrap().to_string_lossy();
    let platforms = name
        .strip_suffix(".whl")
        .and_then(|n| n.rsplit('-').next())
        .expect("a wheel file name");
    for tag in platforms.split('.') {
        let claimed = manylinux_glibc(tag)
            .unwrap_or_else(|| panic!("{name} claims {tag}, which auditwheel does not vouch for"));
        assert!(
            claimed >= floor,
            "{name} claims {tag} but auditwheel finds it needs {found}"
        );
    }
}

/// pip installs the wheel from the file into a fresh venv (no index), and its `prof-bpf`, found
/// on a PATH of only the venv and /usr/bin:/bin, prints its version with the commit and records
/// the split fixture as well as the development build does.
#[test]
fn issue_19_wheel_installs_and_records_without_toolchain() {
    if !privileged() {
        return;
    }
    let wheel = wheel();
    let dir = scratch_dir("wheel");
    let venv = dir.join("venv");
    let made = Command::new(python("3.12"))
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .expect("running python -m venv");
    assert!(made.success(), "python3.12 -m venv failed");
    let pip = Command::new(venv.join("bin/pip"))
        .args(["install", "--no-index", "--disable-pip-version-check"])
        .arg(wheel)
        .output()
        .expect("running pip");
    assert!(
        pip.status.success(),
        "pip install {} failed: {}{}",
        wheel.display(),
        String::from_utf8_lossy(&pip.stdout),
        String::from_utf8_lossy(&pip.stderr)
    );

    // Nothing of the build is reachable: no cargo, rustc or bpf-linker on PATH, no rustup or
    // cargo variables in the environment (env_clear), only what a user's shell would have.
    let bin = venv.join("bin");
    let path = format!("{}:/usr/bin:/bin", bin.display());
    let lookup = |tool: &str| {
        let out = Command::new("/bin/sh")
            .args(["-c", "command -v \"$0\"", tool])
            .env_clear()
            .env("PATH", &path)
            .output()
            .expect("running sh");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    for tool in ["cargo", "rustc", "rustup", "bpf-linker"] {
        assert_eq!(lookup(tool), None, "{tool} is on the test's PATH {path}");
    }
    let installed = bin.join("prof-bpf");
    assert_eq!(
        lookup("prof-bpf").as_deref(),
        Some(installed.to_str().unwrap()),
        "pip did not put prof-bpf on the venv's PATH"
    );
    let run = |args: &[&str]| {
        Command::new(&installed)
            .args(args)
            .env_clear()
            .env("PATH", &path)
            .output()
            .expect("running the venv's prof-bpf")
    };

    let version = run(&["--version"]);
    assert!(version.status.success(), "prof-bpf --version failed");
    let version = String::from_utf8(version.stdout).expect("utf-8 version");
    let version = version.trim_end();
    let prefix = version_prefix();
    assert!(
        version.starts_with(&prefix) && version.ends_with(')'),
        "--version says {version:?}, want {prefix}...)"
    );

    let out = dir.join("profile.txt");
    let result = run(&[
        "record",
        "-r",
        "1000",
        "-f",
        "raw",
        "-o",
        out.to_str().unwrap(),
        "--",
        venv.join("bin/python").to_str().unwrap(),
        fixture("split.py").to_str().unwrap(),
        "2",
    ]);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        result.status.success(),
        "the wheel's prof-bpf failed: {stderr}"
    );
    eprintln!("{}", stderr.trim_end());
    assert!(stderr.contains("stopped (the program exited)"), "{stderr}");
    assert!(
        stderr.contains(&format!("prof-bpf: {version}\n")),
        "the summary does not name the version {version:?}: {stderr}"
    );
    let profile = parse_folded(&std::fs::read_to_string(&out).unwrap());
    check_split(
        &profile,
        measured_split(&String::from_utf8_lossy(&result.stdout)),
        "wheel",
    );
}
