//! prof-bpf as people run it, with real `sudo` (issue 11): an unprivileged user whose sudoers
//! rule allows prof-bpf only runs it from a login shell. The launched program must run as that
//! user (uid, groups, HOME), the files prof-bpf writes must be theirs, and no file they could not
//! write themselves may be written, whatever symlink another user planted.
//!
//! Each test makes its own users, group and sudoers drop-in and removes them afterwards. The
//! binary and fixtures are copied to a directory every user can read (the checkout may be under
//! root's home), and the Python is Debian's /usr/bin/python3.11 for the same reason.

use std::{
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Output},
};

use prof_bpf_tests::*;
use serde_json::Value;

const PYTHON: &str = "/usr/bin/python3.11";

/// Users, a group, a sudoers drop-in and a shared directory, all removed on drop.
struct Sandbox {
    tag: String,
    dir: PathBuf,
    users: Vec<String>,
    group: String,
    sudoers: PathBuf,
}

impl Sandbox {
    fn new(test: &str) -> Self {
        let tag = format!("pbf{}{test}", std::process::id() % 100_000);
        let dir = PathBuf::from(format!("/tmp/{tag}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("fixtures")).unwrap();
        fs::copy(prof_bpf(), dir.join("prof-bpf")).unwrap();
        for f in ["split.py", "identity.py", "cpu.py"] {
            fs::copy(fixture(f), dir.join("fixtures").join(f)).unwrap();
        }
        for d in [dir.clone(), dir.join("fixtures")] {
            fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let group = format!("{tag}g");
        sh(Command::new("groupadd").arg(&group));
        let sudoers = PathBuf::from(format!("/etc/sudoers.d/{tag}"));
        Self {
            tag,
            dir,
            users: Vec::new(),
            group,
            sudoers,
        }
    }

    fn prof_bpf(&self) -> String {
        self.dir.join("prof-bpf").display().to_string()
    }

    fn fixture(&self, name: &str) -> String {
        self.dir.join("fixtures").join(name).display().to_string()
    }

    /// A new user with a home, its own primary group and this sandbox's group as a
    /// supplementary one; `sudo_rule` lets it run prof-bpf (and `env`, for `sudo env ...`) as
    /// root without a password.
    fn user(&mut self, suffix: &str, sudo_rule: bool) -> String {
        let name = format!("{}{suffix}", self.tag);
        sh(Command::new("useradd")
            .args(["-m", "-U", "-s", "/bin/bash", "-G", &self.group])
            .arg(&name));
        self.users.push(name.clone());
        if sudo_rule {
            let rule = format!(
                "{name} ALL=(root) NOPASSWD:SETENV: {}, /usr/bin/env\n",
                self.prof_bpf()
            );
            let mut all = fs::read_to_string(&self.sudoers).unwrap_or_default();
            all.push_str(&rule);
            fs::write(&self.sudoers, all).unwrap();
            fs::set_permissions(&self.sudoers, fs::Permissions::from_mode(0o440)).unwrap();
            sh(Command::new("visudo")
                .args(["-c", "-q", "-f"])
                .arg(&self.sudoers));
        }
        name
    }

    /// Runs `script` in `user`'s login shell.
    fn as_user(&self, user: &str, script: &str) -> Output {
        Command::new("runuser")
            .args(["-l", user, "-c", script])
            .env_remove("RUST_BACKTRACE")
            .output()
            .expect("running runuser")
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.sudoers);
        for user in &self.users {
            let _ = Command::new("pkill").args(["-KILL", "-u", user]).status();
            let _ = Command::new("userdel").args(["-r", "-f", user]).output();
        }
        let _ = Command::new("groupdel").arg(&self.group).output();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Runs a setup command that must succeed.
fn sh(cmd: &mut Command) {
    let out = cmd.output().expect("running a setup command");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `id -u NAME`, `id -g NAME`, `id -G NAME`, and the home directory.
fn identity(user: &str) -> (u64, u64, Vec<u64>, String) {
    let id = |flag: &str| -> Vec<u64> {
        let out = Command::new("id").args([flag, user]).output().unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect()
    };
    let home = String::from_utf8(
        Command::new("sh")
            .args(["-c", &format!("getent passwd {user} | cut -d: -f6")])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    let mut groups = id("-G");
    groups.sort_unstable();
    (id("-u")[0], id("-g")[0], groups, home)
}

fn stdout_json(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Asserts the launched fixture ran as `user` exactly: uid, primary group, every supplementary
/// group, and the user's HOME/USER/LOGNAME.
fn assert_ran_as(out: &Output, user: &str, how: &str) {
    let (uid, gid, groups, home) = identity(user);
    let lines = stdout_json(out);
    let me = lines.first().unwrap_or_else(|| {
        panic!(
            "{how}: the fixture printed nothing: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(me["uid"].as_u64(), Some(uid), "{how}: {me}");
    assert_eq!(me["euid"].as_u64(), Some(uid), "{how}: {me}");
    assert_eq!(me["gid"].as_u64(), Some(gid), "{how}: {me}");
    assert_eq!(me["egid"].as_u64(), Some(gid), "{how}: {me}");
    let got: Vec<u64> = me["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_u64().unwrap())
        .collect();
    assert_eq!(got, groups, "{how}: supplementary groups");
    assert!(groups.len() >= 2, "the test user has a supplementary group");
    assert_eq!(me["home"].as_str(), Some(home.as_str()), "{how}: {me}");
    assert_eq!(me["user"].as_str(), Some(user), "{how}: {me}");
    assert_eq!(me["logname"].as_str(), Some(user), "{how}: {me}");
}

#[test]
fn sudo_launches_the_command_as_the_user_and_gives_them_the_profile() {
    if !privileged() {
        return;
    }
    let mut sandbox = Sandbox::new("launch");
    let user = sandbox.user("u", true);
    let (uid, gid, _, home) = identity(&user);
    let out = sandbox.as_user(
        &user,
        &format!(
            "cd ~ && sudo -n {} record -r {RATE} -f raw -o profile.txt -- {PYTHON} {} 2",
            sandbox.prof_bpf(),
            sandbox.fixture("identity.py")
        ),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sudo prof-bpf record: {stderr}");
    assert_ran_as(&out, &user, "sudo");

    let profile_path = Path::new(&home).join("profile.txt");
    let meta = fs::metadata(&profile_path).unwrap();
    assert_eq!(
        (meta.uid() as u64, meta.gid() as u64),
        (uid, gid),
        "profile owner"
    );
    let profile = parse_folded(&fs::read_to_string(&profile_path).unwrap());
    let measured = measured_split(&String::from_utf8_lossy(&out.stdout));
    let work = split_work(&profile, measured);
    check_complete("sudo", &stderr, Some(&profile), work, LAUNCHED);
    check_split(&profile, measured, "sudo");
    // Nothing else was left in the home directory (no temporary file).
    let names: Vec<String> = fs::read_dir(&home)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with(".bash") && n != ".profile")
        .collect();
    assert_eq!(names, vec!["profile.txt"], "files in {home}");
}

#[test]
fn sudo_e_and_sudo_env_path_launch_as_the_user_too() {
    if !privileged() {
        return;
    }
    let mut sandbox = Sandbox::new("env");
    let user = sandbox.user("u", true);
    for (how, sudo) in [
        ("sudo -E", "sudo -n -E".to_string()),
        ("sudo env PATH", "sudo -n env PATH=\"$PATH\"".to_string()),
    ] {
        let out = sandbox.as_user(
            &user,
            &format!(
                "cd ~ && {sudo} {} record -f raw -o p.txt -- {PYTHON} {} 0.2",
                sandbox.prof_bpf(),
                sandbox.fixture("identity.py")
            ),
        );
        assert!(
            out.status.success(),
            "{how}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_ran_as(&out, &user, how);
    }
}

#[test]
fn a_planted_symlink_never_leads_to_a_root_file() {
    if !privileged() {
        return;
    }
    let mut sandbox = Sandbox::new("link");
    let runner = sandbox.user("r", true);
    let planter = sandbox.user("p", false);
    let (runner_uid, _, _, home) = identity(&runner);

    // A root-only file, the target of every planted link.
    let victim = sandbox.dir.join("root-only");
    fs::write(&victim, "root's secret\n").unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).unwrap();
    let untouched = |when: &str| {
        let meta = fs::metadata(&victim).unwrap();
        assert_eq!(
            fs::read_to_string(&victim).unwrap(),
            "root's secret\n",
            "{when}: content"
        );
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "{when}: owner");
        assert_eq!(meta.mode() & 0o7777, 0o600, "{when}: mode");
    };

    // 1. Another user's link in a world-writable sticky directory, named like the output.
    let sticky = sandbox.dir.join("sticky");
    fs::create_dir(&sticky).unwrap();
    fs::set_permissions(&sticky, fs::Permissions::from_mode(0o1777)).unwrap();
    let planted = sticky.join("out.txt");
    sh(Command::new("runuser")
        .args(["-u", &planter, "--", "ln", "-s"])
        .arg(&victim)
        .arg(&planted));
    let record = |output: &str| {
        sandbox.as_user(
            &runner,
            &format!(
                "cd ~ && sudo -n {} record -f raw -o {output} -- {PYTHON} {} 0.2",
                sandbox.prof_bpf(),
                sandbox.fixture("split.py")
            ),
        )
    };
    let out = record(&planted.display().to_string());
    let stderr = String::from_utf8_lossy(&out.stderr);
    untouched("a planted link in a sticky directory");
    // prof-bpf refuses before recording: the user may not replace another user's entry there.
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot write the profile to {}",
            planted.display()
        )) && stderr.contains("sticky directory"),
        "{stderr}"
    );
    assert!(fs::symlink_metadata(&planted).unwrap().is_symlink());

    // 2. The user's own link in their home to a file only root may write: the link is
    // replaced by the profile, the file it pointed at is not touched.
    let link = Path::new(&home).join("out.txt");
    sh(Command::new("runuser")
        .args(["-u", &runner, "--", "ln", "-s"])
        .arg(&victim)
        .arg(&link));
    let out = record("out.txt");
    let stderr = String::from_utf8_lossy(&out.stderr);
    untouched("a link in the user's home");
    assert!(out.status.success(), "{stderr}");
    let meta = fs::symlink_metadata(&link).unwrap();
    assert!(meta.is_file(), "the profile replaced the link");
    assert_eq!(meta.uid() as u64, runner_uid);
    assert!(total(&parse_folded(&fs::read_to_string(&link).unwrap())) > 0);

    // 3. A directory the user cannot write: refused up front, even though root could.
    let out = record(&sandbox.dir.join("p.txt").display().to_string());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("Permission denied"), "{stderr}");
    assert!(!sandbox.dir.join("p.txt").exists());
}
