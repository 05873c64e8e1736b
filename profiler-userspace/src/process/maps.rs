//! Parsing /proc/PID/maps.

use std::{fs, io, path::PathBuf};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    pub perms: String,
    /// The backing file's device (`makedev(major, minor)`) and inode; 0 for an anonymous
    /// mapping.
    pub dev: u64,
    pub inode: u64,
    /// The backing file, if the mapping has one, as the kernel names it from prof-bpf's root:
    /// for a process in another mount namespace it may not exist here, or be another file
    /// (open it with `process::open_mapped`, never by this path).
    pub path: Option<PathBuf>,
}

pub fn read_maps(pid: u32) -> io::Result<Vec<Mapping>> {
    Ok(parse_maps(&fs::read_to_string(
        super::proc_dir(pid).join("maps"),
    )?))
}

pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mapping> {
    let mut parts = line.splitn(6, char::is_whitespace);
    let range = parts.next()?;
    let perms = parts.next()?.to_string();
    let offset = u64::from_str_radix(parts.next()?, 16).ok()?;
    let (major, minor) = parts.next()?.split_once(':')?;
    let dev = libc::makedev(
        u32::from_str_radix(major, 16).ok()?,
        u32::from_str_radix(minor, 16).ok()?,
    );
    let inode = parts.next()?.parse().ok()?;
    let path = parts
        .next()
        .map(str::trim)
        .filter(|p| p.starts_with('/'))
        .map(PathBuf::from);
    let (start, end) = range.split_once('-')?;
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        offset,
        perms,
        dev,
        inode,
        path,
    })
}

/// Whether a process that just exec'd a dynamically linked program is still being set up by
/// glibc's dynamic loader: the loader is mapped but the C library not yet, so the program's
/// other libraries (a libpython among them) may still come. A static program, or one whose
/// libraries are in, says what it is.
pub fn loader_at_work(maps: &[Mapping]) -> bool {
    let named = |m: &Mapping, prefixes: &[&str]| {
        m.path
            .as_deref()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .is_some_and(|n| prefixes.iter().any(|p| n.starts_with(p)))
    };
    // `ld-linux-x86-64.so.2` (`ld-2.31.so` before glibc 2.34), and the C library beside it.
    let loader = maps.iter().any(|m| named(m, &["ld-linux", "ld-2."]));
    loader && !maps.iter().any(|m| named(m, &["libc.so", "libc-2."]))
}

/// The difference between the addresses the ELF file was linked at and where it is mapped.
pub fn load_bias(
    maps: &[Mapping],
    binary: &PathBuf,
    first_load_vaddr: u64,
    relocatable: bool,
) -> Option<u64> {
    if !relocatable {
        return Some(0);
    }
    let first = maps
        .iter()
        .filter(|m| m.path.as_ref() == Some(binary))
        .min_by_key(|m| m.offset)?;
    Some((first.start - first.offset).wrapping_sub(first_load_vaddr & !0xfff))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_file_and_anonymous_mappings() {
        let maps = parse_maps(
            "7f00a000-7f00b000 r--p 00000000 fe:01 123 /usr/lib/libpython3.12.so.1.0\n\
             7f00b000-7f00c000 r-xp 00001000 fe:01 123 /usr/lib/libpython3.12.so.1.0\n\
             7ffd0000-7ffd1000 rw-p 00000000 00:00 0 [stack]\n\
             7ffe0000-7ffe1000 rw-p 00000000 00:00 0\n",
        );
        assert_eq!(maps.len(), 4);
        assert_eq!(maps[1].offset, 0x1000);
        assert_eq!(maps[2].path, None);
        assert_eq!((maps[0].dev, maps[0].inode), (libc::makedev(0xfe, 1), 123));
        let lib = PathBuf::from("/usr/lib/libpython3.12.so.1.0");
        assert_eq!(load_bias(&maps, &lib, 0, true), Some(0x7f00a000));
        assert_eq!(load_bias(&maps, &lib, 0x400000, false), Some(0));
    }

    #[test]
    fn the_loader_is_at_work_until_the_c_library_is_mapped() {
        let exe = "55d000000000-55d000001000 r--p 00000000 fe:01 7 /usr/bin/uwsgi\n";
        let ld = "7f0000000000-7f0000001000 r--p 00000000 fe:01 8 /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2\n";
        let libc =
            "7f0000100000-7f0000101000 r--p 00000000 fe:01 9 /usr/lib/x86_64-linux-gnu/libc.so.6\n";
        let old_ld =
            "7f0000000000-7f0000001000 r--p 00000000 fe:01 8 /lib/x86_64-linux-gnu/ld-2.31.so\n";
        let old_libc =
            "7f0000100000-7f0000101000 r--p 00000000 fe:01 9 /lib/x86_64-linux-gnu/libc-2.31.so\n";
        let at_work = |text: String| loader_at_work(&parse_maps(&text));
        assert!(at_work(format!("{exe}{ld}")));
        assert!(!at_work(format!("{exe}{ld}{libc}")));
        assert!(at_work(format!("{exe}{old_ld}")));
        assert!(!at_work(format!("{exe}{old_ld}{old_libc}")));
        // A static program: nothing more will be mapped by a loader.
        assert!(!at_work(exe.to_string()));
    }
}
