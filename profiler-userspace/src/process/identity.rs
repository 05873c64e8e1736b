//! Who a process is, as OpenTelemetry's resource attributes describe it: its command line, a
//! variable of its environment (`OTEL_SERVICE_NAME`), the container it runs in (the id in its
//! cgroup path), and the GNU build id of a file it maps. Reads /proc and files; knows nothing of
//! Python.

use std::{fs, io, path::Path};

/// The arguments the process was started with (`/proc/PID/cmdline`), lossily decoded.
pub fn cmdline(pid: u32) -> io::Result<Vec<String>> {
    let raw = fs::read(format!("/proc/{pid}/cmdline"))?;
    Ok(split_nul(&raw))
}

/// The value of `name` in the process's initial environment (`/proc/PID/environ`).
pub fn environ_var(pid: u32, name: &str) -> io::Result<Option<String>> {
    let raw = fs::read(format!("/proc/{pid}/environ"))?;
    Ok(find_var(&raw, name))
}

fn split_nul(raw: &[u8]) -> Vec<String> {
    raw.split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

fn find_var(environ: &[u8], name: &str) -> Option<String> {
    environ.split(|&b| b == 0).find_map(|entry| {
        let rest = entry.strip_prefix(name.as_bytes())?.strip_prefix(b"=")?;
        Some(String::from_utf8_lossy(rest).into_owned())
    })
}

/// The id of the container `pid` runs in, from the cgroup path the runtime put it under, or
/// None outside a container.
pub fn container_id(pid: u32) -> io::Result<Option<String>> {
    Ok(container_id_from_cgroup(&fs::read_to_string(format!(
        "/proc/{pid}/cgroup"
    ))?))
}

/// The container id in `/proc/PID/cgroup` text: a 64-digit hex id that ends a path component,
/// after the runtime's prefix (`docker-ID.scope` under systemd, `/docker/ID` with cgroupfs,
/// `cri-containerd-ID.scope`, `crio-ID.scope`, `libpod-ID.scope` and its `/container` child,
/// Kubernetes' `/kubepods/.../ID`). The component nearest the leaf wins; a conmon scope
/// (`libpod-conmon-ID.scope`) is podman's monitor, not a container.
pub fn container_id_from_cgroup(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        // hierarchy-ID:controllers:path (cgroup v2: `0::/path`).
        let path = line.splitn(3, ':').nth(2)?;
        path.rsplit('/').find_map(|component| {
            let name = component.strip_suffix(".scope").unwrap_or(component);
            if name.contains("conmon") {
                return None;
            }
            let id = name.rsplit(['-', ':']).next()?;
            (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| id.to_ascii_lowercase())
        })
    })
}

/// The GNU build id of an ELF file (`.note.gnu.build-id`), lower-case hex.
pub fn build_id(path: &Path) -> Option<String> {
    use object::Object as _;
    let file = fs::File::open(path).ok()?;
    // SAFETY: read-only map dropped before returning; a file changed under it gives wrong bytes
    // at worst, which parsing treats like a malformed file.
    let data = unsafe { memmap2::Mmap::map(&file) }.ok()?;
    let elf = object::File::parse(&*data).ok()?;
    let id = elf.build_id().ok()??;
    Some(id.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4a9c2d1e0b8a7f6e5d4c3b2a1908f7e6d5c4b3a29180f7e6d5c4b3a2918070";

    #[test]
    fn container_ids_from_every_runtime_layout() {
        let cases = [
            // Docker on cgroup v2 with the systemd driver.
            (format!("0::/system.slice/docker-{ID}.scope\n"), Some(ID)),
            // Docker with the cgroupfs driver, v2 and v1.
            (format!("0::/docker/{ID}\n"), Some(ID)),
            (
                format!(
                    "12:pids:/docker/{ID}\n11:memory:/docker/{ID}\n0::/system.slice/containerd.service\n"
                ),
                Some(ID),
            ),
            // containerd under Kubernetes (systemd driver), and cgroupfs.
            (
                format!(
                    "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c3d4e_5f60_4a7b_8c9d_0e1f2a3b4c5d.slice/cri-containerd-{ID}.scope\n"
                ),
                Some(ID),
            ),
            (
                format!("0::/kubepods/besteffort/pod1b2c3d4e-5f60-4a7b-8c9d-0e1f2a3b4c5d/{ID}\n"),
                Some(ID),
            ),
            // CRI-O.
            (
                format!("0::/kubepods.slice/kubepods-pod1.slice/crio-{ID}.scope\n"),
                Some(ID),
            ),
            // Podman, rootless (its payload sits in a `container` child) and rootful.
            (
                format!(
                    "0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container\n"
                ),
                Some(ID),
            ),
            (format!("0::/machine.slice/libpod-{ID}.scope\n"), Some(ID)),
            // Podman's monitor is not the container.
            (
                format!("0::/machine.slice/libpod-conmon-{ID}.scope\n"),
                None,
            ),
            // Not in a container: a login session, a service, the root.
            (
                "0::/user.slice/user-1000.slice/session-2.scope\n".to_string(),
                None,
            ),
            ("0::/system.slice/ssh.service\n".to_string(), None),
            ("0::/\n".to_string(), None),
            // Hex that is not 64 digits long.
            ("0::/system.slice/docker-abc123.scope\n".to_string(), None),
        ];
        for (text, want) in cases {
            assert_eq!(container_id_from_cgroup(&text).as_deref(), want, "{text}");
        }
    }

    #[test]
    fn environment_and_arguments_split_on_nul() {
        let env = b"PATH=/bin\0OTEL_SERVICE_NAME=checkout\0OTEL_SERVICE_NAME_X=no\0";
        assert_eq!(
            find_var(env, "OTEL_SERVICE_NAME").as_deref(),
            Some("checkout")
        );
        assert_eq!(find_var(env, "OTEL"), None);
        assert_eq!(find_var(env, "HOME"), None);
        assert_eq!(
            split_nul(b"python3\0app.py\0--x\0"),
            ["python3", "app.py", "--x"]
        );
    }

    #[test]
    fn this_process_has_a_command_line_and_a_build_id() {
        let me = std::process::id();
        assert!(!cmdline(me).unwrap().is_empty());
        assert!(container_id(me).is_ok());
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let id = build_id(&exe);
        assert!(id.is_none_or(|id| id.len() >= 16 && id.bytes().all(|b| b.is_ascii_hexdigit())));
    }
}
