//! Who prof-bpf acts for. Root (or CAP_BPF + CAP_PERFMON) is needed to load and attach the
//! kernel program; everything else is done with the rights of the user who ran `sudo`: a
//! launched command runs as that user, and every file prof-bpf writes is opened with that user's
//! file-system identity, so it can only go where the user could write anyway.

use std::{
    ffi::{CStr, CString},
    fs, io,
    os::unix::process::CommandExt,
    path::PathBuf,
    process::Command,
    sync::OnceLock,
};

/// Capability bits in /proc/self/status's CapEff (include/uapi/linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[derive(Debug, thiserror::Error)]
#[error(
    "prof-bpf needs root, or the CAP_BPF and CAP_PERFMON capabilities (and CAP_SYS_PTRACE to read \
     another user's process): run it with sudo"
)]
pub struct NotPrivileged;

pub fn check() -> Result<(), NotPrivileged> {
    if is_root() {
        return Ok(());
    }
    let caps = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:").map(|v| v.trim().to_string()))
        })
        .and_then(|v| u64::from_str_radix(&v, 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| caps & (1 << cap) != 0;
    if (has(CAP_BPF) && has(CAP_PERFMON)) || has(CAP_SYS_ADMIN) {
        Ok(())
    } else {
        Err(NotPrivileged)
    }
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The user who ran `sudo prof-bpf` (`sudo`, `sudo -E` and `sudo env ...` all set `SUDO_UID`,
/// `SUDO_GID` and `SUDO_USER`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvokingUser {
    pub uid: u32,
    /// Primary group.
    pub gid: u32,
    /// Supplementary groups, as `id` lists them (the primary group among them).
    pub groups: Vec<u32>,
    /// Login name and home directory, from the password database.
    pub name: Option<String>,
    pub home: Option<PathBuf>,
}

/// The invoking user when prof-bpf runs as root under sudo for someone else, else `None`
/// (plain root, or a user with capabilities: files are theirs already).
pub fn invoking_user() -> Option<&'static InvokingUser> {
    static USER: OnceLock<Option<InvokingUser>> = OnceLock::new();
    USER.get_or_init(|| {
        // SAFETY: getuid has no preconditions.
        if unsafe { libc::getuid() } != 0 {
            return None;
        }
        let var = |name| std::env::var(name).ok();
        from_sudo(
            var("SUDO_UID").as_deref(),
            var("SUDO_GID").as_deref(),
            var("SUDO_USER").as_deref(),
            lookup_user,
        )
    })
    .as_ref()
}

/// What the password and group databases say of a user: (uid, home, groups given the primary
/// group).
type Lookup = fn(&str, u32) -> Option<(u32, PathBuf, Vec<u32>)>;

/// The invoking user from sudo's variables. `SUDO_UID`/`SUDO_GID` are authoritative; the name
/// is used for the supplementary groups and the home only when the database agrees on the uid.
fn from_sudo(
    uid: Option<&str>,
    gid: Option<&str>,
    name: Option<&str>,
    lookup: Lookup,
) -> Option<InvokingUser> {
    let uid: u32 = uid?.parse().ok()?;
    let gid: u32 = gid?.parse().ok()?;
    if uid == 0 {
        return None; // root ran sudo: nobody to drop to.
    }
    let known = name.and_then(|n| lookup(n, gid).filter(|(u, _, _)| *u == uid));
    let (name, home, groups) = match known {
        Some((_, home, groups)) => (name.map(String::from), Some(home), groups),
        None => (None, None, vec![gid]),
    };
    Some(InvokingUser {
        uid,
        gid,
        groups,
        name,
        home,
    })
}

/// The password database's uid and home for `name`, and its group list with `gid` (getpwnam_r,
/// getgrouplist).
fn lookup_user(name: &str, gid: u32) -> Option<(u32, PathBuf, Vec<u32>)> {
    let c_name = CString::new(name).ok()?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: zeroed passwd is a valid out-parameter; getpwnam_r fills it with pointers into
    // `buf`, which outlives their use below.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the sizes given.
    let rc = unsafe {
        libc::getpwnam_r(
            c_name.as_ptr(),
            &mut pw,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() {
        return None;
    }
    // SAFETY: pw_dir points at a NUL-terminated string inside `buf`.
    let home = PathBuf::from(
        unsafe { CStr::from_ptr(pw.pw_dir) }
            .to_string_lossy()
            .into_owned(),
    );
    let mut groups = vec![0 as libc::gid_t; 64];
    for _ in 0..4 {
        let mut n = groups.len() as libc::c_int;
        // SAFETY: `groups` has room for `n` entries; getgrouplist writes at most that many and
        // sets `n` to the count (or to the size needed when it returns -1).
        let rc = unsafe { libc::getgrouplist(c_name.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        if rc >= 0 {
            groups.truncate(n.max(0) as usize);
            return Some((pw.pw_uid, home, groups));
        }
        groups.resize((n.max(0) as usize).max(groups.len() * 2), 0);
    }
    Some((pw.pw_uid, home, vec![gid]))
}

/// Under sudo, makes `cmd` run as the invoking user: their supplementary groups, primary group
/// and uid, set in that order (groups can only be changed while still root), and their HOME,
/// USER and LOGNAME.
pub fn run_as_invoking_user(cmd: &mut Command) {
    let Some(user) = invoking_user() else {
        return;
    };
    if let Some(name) = &user.name {
        cmd.env("USER", name).env("LOGNAME", name);
    }
    if let Some(home) = &user.home {
        cmd.env("HOME", home);
    }
    let (uid, gid, groups) = (user.uid, user.gid, user.groups.clone());
    // SAFETY: the hook runs in the forked child, which has one thread; it makes raw system calls
    // only (no allocation, no locks), and a failure aborts the spawn with that error.
    unsafe {
        cmd.pre_exec(move || {
            drop_to(uid, gid, &groups)?;
            Ok(())
        });
    }
}

/// Sets groups, gid and uid of the calling thread, in the order the kernel allows.
fn drop_to(uid: u32, gid: u32, groups: &[u32]) -> io::Result<()> {
    let check = |rc: libc::c_long| {
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    // SAFETY: raw system calls with a valid group array; they change only credentials.
    unsafe {
        check(libc::syscall(
            libc::SYS_setgroups,
            groups.len(),
            groups.as_ptr(),
        ))?;
        check(libc::syscall(libc::SYS_setresgid, gid, gid, gid))?;
        check(libc::syscall(libc::SYS_setresuid, uid, uid, uid))?;
    }
    Ok(())
}

/// Runs `f` with this thread's file-system identity (fsuid, fsgid and supplementary groups) set
/// to the invoking user's, so that what `f` opens, creates or renames is checked, and owned, as
/// if that user did it. Without an invoking user it just runs `f`. Linux keeps credentials per
/// thread, and the raw system calls used here change the calling thread's only.
pub fn as_invoking_user<T>(f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let Some(user) = invoking_user() else {
        return f();
    };
    let saved = current_groups()?;
    // SAFETY: raw credential system calls on this thread; each is undone below.
    unsafe {
        if libc::syscall(libc::SYS_setgroups, user.groups.len(), user.groups.as_ptr()) != 0 {
            return Err(io::Error::last_os_error());
        }
        libc::syscall(libc::SYS_setfsgid, user.gid);
        libc::syscall(libc::SYS_setfsuid, user.uid);
    }
    // setfsuid reports no error: ask what it is now (an invalid id changes nothing).
    // SAFETY: as above; -1 is never a valid id.
    let switched = unsafe { libc::syscall(libc::SYS_setfsuid, u32::MAX) } == user.uid as i64;
    let result = if switched {
        f()
    } else {
        Err(io::Error::other(format!(
            "could not take the file rights of uid {}",
            user.uid
        )))
    };
    // SAFETY: restores root's identity on this thread.
    unsafe {
        libc::syscall(libc::SYS_setfsuid, 0);
        libc::syscall(libc::SYS_setfsgid, 0);
        libc::syscall(libc::SYS_setgroups, saved.len(), saved.as_ptr());
    }
    result
}

fn current_groups() -> io::Result<Vec<libc::gid_t>> {
    // SAFETY: a null list with size 0 asks for the count only.
    let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut groups = vec![0; n as usize];
    // SAFETY: `groups` has room for `n` entries.
    let n = unsafe { libc::getgroups(n, groups.as_mut_ptr()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    groups.truncate(n as usize);
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice(name: &str, gid: u32) -> Option<(u32, PathBuf, Vec<u32>)> {
        (name == "alice").then(|| (1000, PathBuf::from("/home/alice"), vec![gid, 27, 100]))
    }

    #[test]
    fn sudo_variables_give_uid_groups_and_home() {
        let u = from_sudo(Some("1000"), Some("1000"), Some("alice"), alice).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(u.groups, vec![1000, 27, 100]);
        assert_eq!(u.name.as_deref(), Some("alice"));
        assert_eq!(u.home, Some(PathBuf::from("/home/alice")));
    }

    #[test]
    fn a_name_the_database_disagrees_with_is_not_trusted() {
        // SUDO_USER names someone whose uid is not SUDO_UID: uid and gid only.
        let u = from_sudo(Some("1001"), Some("1001"), Some("alice"), alice).unwrap();
        assert_eq!(u.groups, vec![1001]);
        assert_eq!((u.name, u.home), (None, None));
        let u = from_sudo(Some("1000"), Some("50"), None, alice).unwrap();
        assert_eq!((u.uid, u.gid, u.groups), (1000, 50, vec![50]));
    }

    #[test]
    fn root_or_missing_variables_mean_nobody_to_drop_to() {
        assert_eq!(from_sudo(Some("0"), Some("0"), Some("root"), alice), None);
        assert_eq!(from_sudo(None, Some("1000"), Some("alice"), alice), None);
        assert_eq!(from_sudo(Some("1000"), None, Some("alice"), alice), None);
        assert_eq!(
            from_sudo(Some("x"), Some("1000"), Some("alice"), alice),
            None
        );
    }
}
