//! Processes in another pid namespace (containers): their namespace, and their ids in it. The
//! kernel program sees every thread by its host id, but a containerised Python records the id
//! its own namespace gives the thread (`native_thread_id` is `gettid()` inside), so the kernel
//! is told the namespace and asks for the thread's id in it. Ids are mapped between the two
//! through the `NSpid` lines of /proc (host id first, innermost last).

use std::{collections::HashMap, fs, io, os::unix::fs::MetadataExt as _};

/// A pid namespace, as `bpf_get_ns_current_pid_tgid` names it: the device and inode of its
/// nsfs file (`/proc/PID/ns/pid`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PidNamespace {
    pub dev: u64,
    pub ino: u64,
}

fn namespace_of(path: &str) -> io::Result<PidNamespace> {
    let meta = fs::metadata(path)?;
    Ok(PidNamespace {
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

/// `pid`'s pid namespace when it is not prof-bpf's own (a container's); `None` when it is.
pub fn foreign_pid_namespace(pid: u32) -> io::Result<Option<PidNamespace>> {
    let theirs = namespace_of(&format!("/proc/{pid}/ns/pid"))?;
    let ours = namespace_of("/proc/self/ns/pid")?;
    Ok((theirs != ours).then_some(theirs))
}

/// The ids of a task in each pid namespace it is in, from its /proc status text: the `NSpid`
/// line, outermost (the one /proc was mounted in) first.
pub fn parse_nspid(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|ids| {
            ids.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The id of a task in its own innermost pid namespace, when that is not ours.
fn innermost(status_path: &str) -> Option<u32> {
    let ids = parse_nspid(&fs::read_to_string(status_path).ok()?);
    match ids[..] {
        [_, .., inner] => Some(inner),
        _ => None,
    }
}

/// Process `pid`'s id inside its container's pid namespace (`None`: it is in ours).
pub fn ns_pid(pid: u32) -> Option<u32> {
    innermost(&format!("/proc/{pid}/status"))
}

/// Thread `tid`'s (a host id) id inside its process's pid namespace (`None`: it is in ours).
pub fn ns_tid(pid: u32, tid: u32) -> Option<u32> {
    innermost(&format!("/proc/{pid}/task/{tid}/status"))
}

/// Host thread ids of `pid`'s threads by their ids inside its pid namespace (empty when the
/// process is in ours, or gone).
pub fn host_tids(pid: u32) -> HashMap<u32, u32> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return HashMap::new();
    };
    dir.filter_map(|e| {
        let tid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        Some((ns_tid(pid, tid)?, tid))
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nspid_lines() {
        let status = "Name:\tpython3.15\nNStgid:\t30305\t1\nNSpid:\t30305\t1\nNSpgid:\t30305\t0\n";
        assert_eq!(parse_nspid(status), [30305, 1]);
        assert_eq!(parse_nspid("NSpid:\t42\n"), [42]);
        assert_eq!(parse_nspid("Name:\tx\n"), Vec::<u32>::new());
    }

    #[test]
    fn this_process_is_in_our_namespace() {
        let pid = std::process::id();
        assert_eq!(foreign_pid_namespace(pid).unwrap(), None);
        assert_eq!(ns_pid(pid), None);
        assert!(host_tids(pid).is_empty());
    }
}
