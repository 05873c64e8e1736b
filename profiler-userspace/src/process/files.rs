//! Opening the files a process maps (its executable, libpython, the libraries to unwind and
//! name). A process in a container has its own root and mount namespace: the path
//! /proc/PID/maps shows may not exist in prof-bpf's namespace, or name another file there, and
//! any path inside the container's root is the container's to change (a symlink in it that
//! points at `/etc/shadow` would be followed on the host by a root that opened it by path). So
//! a mapped file is opened as the mapping itself, `/proc/PID/map_files/START-END`, which is the
//! very file the process mapped whatever its name. Where that cannot be had (map_files needs
//! CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE, and a process whose main thread has exited has
//! none), the path is opened inside the process's own root, every symlink resolved within that
//! root (`openat2` with `RESOLVE_IN_ROOT`), and kept only if it is the mapped file (same device
//! and inode).
//!
//! Files a process does not map but prof-bpf wants from its root file system (the debug
//! symbols of a library, installed in the container) are opened the same way, inside its root.

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
    match File::open(map_files_entry(pid, m)) {
        Ok(file) => Ok(file),
        Err(e) => open_in_root_checked(pid, m).map_err(|fallback| {
            io::Error::new(
                e.kind(),
                format!("{e} (map_files), and inside the process's root: {fallback}"),
            )
        }),
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

/// Opens `m`'s path inside `pid`'s root, and only if the file there is the one mapped. The
/// path /proc/PID/maps shows is as seen from prof-bpf's root: the process's root as seen from
/// ours (/proc/PID/root's link) is taken off it first.
fn open_in_root_checked(pid: u32, m: &Mapping) -> io::Result<File> {
    let path = m
        .path
        .as_ref()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "anonymous mapping"))?;
    let root = std::fs::read_link(super::proc_dir(pid).join("root"))?;
    let inside = path.strip_prefix(&root).map_err(|_| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "{} is not under the process's root {}",
                path.display(),
                root.display()
            ),
        )
    })?;
    let file = open_in_root(pid, &Path::new("/").join(inside))?;
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
        let by_path = open_in_root_checked(pid, m).unwrap().metadata().unwrap();
        assert_eq!((by_path.dev(), by_path.ino()), (want.dev(), want.ino()));
        let opened = open_mapped(pid, m).unwrap().metadata().unwrap();
        assert_eq!((opened.dev(), opened.ino()), (want.dev(), want.ino()));

        // Another file at the path: refused.
        let mut other = m.clone();
        other.inode += 1;
        assert!(open_in_root_checked(pid, &other).is_err());
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
