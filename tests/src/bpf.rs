//! Readiness from the kernel's side: whether a running prof-bpf has registered a process, read
//! from the `TARGETS` map that prof-bpf's own kernel program filters samples with. `--all` and
//! `--subprocesses` find processes by scanning; a test starts its fixture's work only once the
//! scan found it, instead of guessing how long a scan takes. Three `bpf(2)` commands, root only.

use std::{fs, os::fd::FromRawFd as _, os::fd::OwnedFd};

use profiler_common::{TargetInfo, maps};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// `bpf(cmd, attr, sizeof attr)`.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> libc::c_long {
    // SAFETY: attr is a live, initialized value of the size passed; the kernel reads (and for
    // OBJ_GET_INFO writes) at most that many bytes and the buffers its pointers name.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>(),
        )
    }
}

/// The ids of the BPF maps process `pid` holds open (`map_id:` in its fdinfo).
fn map_ids(pid: u32) -> Vec<u32> {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.filter_map(Result::ok)
        .filter(|fd| {
            fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == "anon_inode:bpf-map")
        })
        .filter_map(|fd| {
            fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_str()?))
                .ok()?
                .lines()
                .find_map(|l| l.strip_prefix("map_id:"))?
                .trim()
                .parse()
                .ok()
        })
        .collect()
}

/// A map by id, and its name.
fn open_map(id: u32) -> Option<(OwnedFd, String)> {
    let mut attr = [id, 0, 0];
    let fd = bpf(BPF_MAP_GET_FD_BY_ID, &mut attr);
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // struct bpf_map_info: type, id, key_size, value_size, max_entries, map_flags, name[16], ...
    let mut info = [0u8; 64];
    #[repr(C)]
    struct GetInfo {
        fd: u32,
        len: u32,
        info: u64,
    }
    let mut attr = GetInfo {
        fd: std::os::fd::AsRawFd::as_raw_fd(&fd) as u32,
        len: info.len() as u32,
        info: info.as_mut_ptr() as u64,
    };
    if bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) != 0 {
        return None;
    }
    let name = &info[24..40];
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Some((fd, String::from_utf8_lossy(&name[..end]).into_owned()))
}

/// Whether the prof-bpf process `profiler` has `pid` in its `TARGETS` map.
pub fn registered(profiler: u32, pid: u32) -> bool {
    map_ids(profiler)
        .into_iter()
        .filter_map(open_map)
        .filter(|(_, name)| name == maps::TARGETS)
        .any(|(fd, _)| {
            let key = pid;
            let mut value = [0u8; std::mem::size_of::<TargetInfo>()];
            #[repr(C)]
            struct Lookup {
                fd: u32,
                _pad: u32,
                key: u64,
                value: u64,
                flags: u64,
            }
            let mut attr = Lookup {
                fd: std::os::fd::AsRawFd::as_raw_fd(&fd) as u32,
                _pad: 0,
                key: &key as *const u32 as u64,
                value: value.as_mut_ptr() as u64,
                flags: 0,
            };
            bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) == 0
        })
}
