//! Opening the files a process maps (its executable, libpython, the libraries to unwind and
//! name). A process in a container has its own root and mount namespace: the path
//! /proc/PID/maps shows may not exist in prof-bpf's namespace, or name another file there, and
//! any path inside the container's root is the container's to change (a symlink in it that
//! points at `/etc/shadow` would be followed on the host by a root that opened it by path). So
//! a mapped file is opened as the mapping itself, `/proc/PID/map_files/START-END`, which is the
//! very file the process mapped whatever its name. Where the kernel does not allow that
//! (map_files needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE), the path is opened without
//! following any symlink and kept only if it is the mapped file (same device and inode).
//!
//! Files a process does not map but prof-bpf wants from its root file system (the debug
//! symbols of a library, installed in the container) are opened by a path resolved inside
//! that root (`openat2` with `RESOLVE_IN_ROOT`): a symlink in the container points within the
//! container, never at the host's files.

use std::{
    ffi::CString,
    fs::File,
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    },
    path::{Path, PathBuf},
};

use super::Mapping;

/// The file mapping `m` of process `pid` maps, opened read-only.
pub fn open_mapped(pid: u32, m: &Mapping) -> io::Result<File> {
    let link = map_files_entry(pid, m);
    match File::open(&link) {
        Ok(file) => Ok(file),
        Err(e) if is_not_permitted(&e) => open_by_path_checked(m),
        Err(e) => Err(e),
    }
}

/// `/proc/PID/map_files/START-END`: the entry for one mapping (of a live thread's directory
/// when the main thread has exited).
pub fn map_files_entry(pid: u32, m: &Mapping) -> PathBuf {
    super::proc_dir(pid)
        .join("map_files")
        .join(format!("{:x}-{:x}", m.start, m.end))
}

/// Opens `path` (absolute, as the process sees it) in process `pid`'s root file system, every
/// symlink resolved inside that root.
pub fn open_in_root(pid: u32, path: &Path) -> io::Result<File> {
    let root = File::open(super::proc_dir(pid).join("root"))?;
    let relative = path.strip_prefix("/").unwrap_or(path);
    openat2(
        root.as_raw_fd(),
        relative,
        libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    )
}

fn is_not_permitted(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES))
}

/// Opens `m`'s path without following a symlink anywhere in it (`openat2` with
/// `RESOLVE_NO_SYMLINKS`, Linux 5.6+), and only if the file there is the one mapped.
fn open_by_path_checked(m: &Mapping) -> io::Result<File> {
    let path = m
        .path
        .as_ref()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "anonymous mapping"))?;
    let file = openat2(
        libc::AT_FDCWD,
        path,
        libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    )?;
    let meta = file.metadata()?;
    if (meta.dev(), meta.ino()) != (m.dev, m.inode) {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} is not the file the process maps", path.display()),
        ));
    }
    Ok(file)
}

/// `openat2(dir, path, O_RDONLY | O_CLOEXEC, resolve)` (Linux 5.6+).
fn openat2(dir: RawFd, path: &Path, resolve: u64) -> io::Result<File> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path with a NUL byte"))?;
    // SAFETY: open_how is plain data; zeroed is a valid value, then the fields are set.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC) as u64;
    how.resolve = resolve;
    // SAFETY: a valid NUL-terminated path and a valid open_how of the size passed; `dir` is a
    // descriptor the caller holds open (or AT_FDCWD); the kernel returns a new descriptor or an
    // error.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            c_path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This test's own executable, found through its own mappings: both ways open the file
    /// mapped (root takes map_files; the checked path is what others get).
    #[test]
    fn opens_a_mapping_as_the_file_mapped() {
        let pid = std::process::id();
        let maps = super::super::read_maps(pid).unwrap();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let m = maps.iter().find(|m| m.path.as_ref() == Some(&exe)).unwrap();
        let want = std::fs::metadata(&exe).unwrap();
        let by_path = open_by_path_checked(m).unwrap().metadata().unwrap();
        assert_eq!((by_path.dev(), by_path.ino()), (want.dev(), want.ino()));
        let opened = open_mapped(pid, m).unwrap().metadata().unwrap();
        assert_eq!((opened.dev(), opened.ino()), (want.dev(), want.ino()));

        // Another file at the path: refused.
        let mut other = m.clone();
        other.inode += 1;
        assert!(open_by_path_checked(&other).is_err());
    }

    /// A symlink on the way is not followed, even to the right file.
    #[test]
    fn a_symlink_in_the_path_is_not_followed() {
        let dir = std::env::temp_dir().join(format!("prof-bpf-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let link = dir.join("exe");
        std::os::unix::fs::symlink(&exe, &link).unwrap();
        let meta = std::fs::metadata(&exe).unwrap();
        let m = Mapping {
            start: 0,
            end: 0,
            offset: 0,
            perms: "r-xp".into(),
            dev: meta.dev(),
            inode: meta.ino(),
            path: Some(link),
        };
        let err = open_by_path_checked(&m).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Inside a process's root, an absolute symlink stays in that root. (Our own root is `/`,
    /// so the test builds a root: a chroot is not needed to see `RESOLVE_IN_ROOT` at work.)
    #[test]
    fn paths_in_a_root_stay_in_it() {
        let dir = std::env::temp_dir().join(format!("prof-bpf-root-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(dir.join("etc/inside"), "inside").unwrap();
        std::os::unix::fs::symlink("/etc/inside", dir.join("link")).unwrap();
        let root = File::open(&dir).unwrap();
        let resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut openat2(root.as_raw_fd(), Path::new("link"), resolve).unwrap(),
            &mut text,
        )
        .unwrap();
        assert_eq!(text, "inside");
        let escape = openat2(
            root.as_raw_fd(),
            Path::new("../../../etc/hostname"),
            resolve,
        );
        assert!(escape.is_err(), "no way out of the root");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
