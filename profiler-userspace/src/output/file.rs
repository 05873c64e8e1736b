//! Where a rendered profile goes, safely: with the invoking user's rights (under sudo), into a
//! new file under an unpredictable name beside the target that is then renamed into place (a
//! symlink at the target is replaced, never followed), and, when that fails, into a fallback file
//! that the error names. A finished recording is never thrown away for want of a place to put it.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Write},
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use crate::privilege::{self, as_invoking_user};

/// Why the profile is not where it was asked to go, and where it is instead.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the profile to {}: {source}; {}", display(path), match fallback {
    Ok(saved) => format!("saved it to {} instead", saved.display()),
    Err(e) => format!("saving it elsewhere failed too ({e}): the profile is lost"),
})]
pub struct SaveError {
    pub path: PathBuf,
    pub source: io::Error,
    pub fallback: Result<PathBuf, io::Error>,
}

fn display(path: &Path) -> String {
    if path == Path::new("-") {
        "stdout".into()
    } else {
        path.display().to_string()
    }
}

/// Fails now if the profile could not be written to `path` later, without changing anything
/// there: a directory, a directory the user cannot write, or an entry another user owns in a
/// sticky directory (it could not be replaced) are refused before any recording.
pub fn check_writable(path: &Path) -> io::Result<()> {
    if path == Path::new("-") {
        return Ok(());
    }
    as_invoking_user(|| match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => Err(io::Error::other("it is a directory")),
        Ok(meta) if is_special(&meta) => open_special(path).map(drop),
        existing => {
            if let Ok(meta) = &existing {
                check_replaceable(path, meta)?;
            }
            let (tmp, file) = create_beside(path)?;
            drop(file);
            fs::remove_file(tmp)
        }
    })
}

/// Writes what `render` produces to `path` (`-` for stdout): a device or pipe is written into,
/// anything else is replaced by a complete new file. When that fails, the same rendering goes to
/// a new file in the temporary directory (or the home or current directory), and the error says
/// where. `extension` names the fallback file's type.
pub fn save(
    path: &Path,
    extension: &str,
    render: impl Fn(&mut dyn Write) -> io::Result<()>,
) -> Result<(), SaveError> {
    let written = if path == Path::new("-") {
        to_stdout(&render)
    } else {
        as_invoking_user(|| to_path(path, &render))
    };
    let Err(source) = written else {
        return Ok(());
    };
    let fallback = as_invoking_user(|| to_fallback(extension, &render));
    Err(SaveError {
        path: path.into(),
        source,
        fallback,
    })
}

/// A closed stdout pipe (`| head`) is the reader's choice, not an error.
fn to_stdout(render: &impl Fn(&mut dyn Write) -> io::Result<()>) -> io::Result<()> {
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    match render(&mut out).and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

fn to_path(path: &Path, render: &impl Fn(&mut dyn Write) -> io::Result<()>) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => return Err(io::Error::other("it is a directory")),
        Ok(meta) if is_special(&meta) => {
            let mut out = BufWriter::new(open_special(path)?);
            render(&mut out)?;
            return out.flush();
        }
        Ok(meta) => check_replaceable(path, &meta)?,
        Err(_) => {}
    }
    let (tmp, file) = create_beside(path)?;
    let written = write_whole(file, render).and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Renders into `file`, flushed and synced, so a full disk shows here and not after a rename.
fn write_whole(file: File, render: &impl Fn(&mut dyn Write) -> io::Result<()>) -> io::Result<()> {
    let mut out = BufWriter::new(file);
    render(&mut out)?;
    out.flush()?;
    out.get_ref().sync_all()
}

fn to_fallback(
    extension: &str,
    render: &impl Fn(&mut dyn Write) -> io::Result<()>,
) -> io::Result<PathBuf> {
    let home = privilege::invoking_user().and_then(|u| u.home.clone());
    let dirs = [
        Some(std::env::temp_dir()),
        home,
        std::env::current_dir().ok(),
    ];
    let mut last = io::Error::other("no directory to save it in");
    for dir in dirs.into_iter().flatten() {
        let name = format!(
            "prof-bpf-{}-{}.{extension}",
            std::process::id(),
            random_suffix()
        );
        let path = dir.join(name);
        match create_new(&path).and_then(|f| write_whole(f, render)) {
            Ok(()) => return Ok(path),
            Err(e) => {
                let _ = fs::remove_file(&path);
                last = e;
            }
        }
    }
    Err(last)
}

/// A character or block device, a pipe or a socket: written into, never replaced.
fn is_special(meta: &fs::Metadata) -> bool {
    let t = meta.file_type();
    !(t.is_file() || t.is_dir() || t.is_symlink())
}

fn open_special(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// An entry another user owns in a sticky directory cannot be replaced by this user (the
/// kernel refuses the rename): say so now rather than after the recording.
fn check_replaceable(path: &Path, meta: &fs::Metadata) -> io::Result<()> {
    let Some(user) = privilege::invoking_user() else {
        return Ok(()); // root may replace anything; a user with capabilities learns at rename.
    };
    let dir = parent(path);
    let dir_meta = fs::metadata(&dir)?;
    let sticky = dir_meta.mode() & libc::S_ISVTX != 0;
    if sticky && meta.uid() != user.uid && dir_meta.uid() != user.uid {
        return Err(io::Error::other(format!(
            "it belongs to uid {} in {}, a sticky directory, so uid {} may not replace it",
            meta.uid(),
            dir.display(),
            user.uid
        )));
    }
    Ok(())
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A new file beside `path` under a name nobody can guess: `.NAME.XXXXXXXXXXXXXXXX.tmp`.
fn create_beside(path: &Path) -> io::Result<(PathBuf, File)> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("it names no file"))?
        .to_string_lossy();
    let tmp = parent(path).join(format!(".{name}.{}.tmp", random_suffix()));
    let file = create_new(&tmp)?;
    Ok((tmp, file))
}

/// Creates `path`, which must not exist (not even as a symlink).
fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o666)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// 16 hex digits from the kernel's random source.
fn random_suffix() -> String {
    let mut bytes = [0u8; 8];
    // SAFETY: `bytes` is a valid buffer of its length.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        // The random source cannot fail for 8 bytes once the kernel has booted; if it did, the
        // clock still makes a name O_EXCL will not confuse with another file.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        bytes = nanos.to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("prof-bpf-file-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn hello(out: &mut dyn Write) -> io::Result<()> {
        out.write_all(b"hello\n")
    }

    #[test]
    fn a_new_file_then_a_replaced_one_and_no_temporary_left() {
        let d = dir("new");
        let p = d.join("p.txt");
        check_writable(&p).unwrap();
        assert!(!p.exists(), "the check leaves nothing behind");
        save(&p, "txt", hello).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "hello\n");
        fs::write(&p, "old and longer\n").unwrap();
        save(&p, "txt", hello).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "hello\n");
        let names: Vec<_> = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["p.txt"]);
    }

    #[test]
    fn a_symlink_at_the_target_is_replaced_not_followed() {
        let d = dir("link");
        let victim = d.join("victim");
        fs::write(&victim, "keep me\n").unwrap();
        let p = d.join("p.txt");
        symlink(&victim, &p).unwrap();
        save(&p, "txt", hello).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep me\n");
        assert!(!fs::symlink_metadata(&p).unwrap().file_type().is_symlink());
        assert_eq!(fs::read_to_string(&p).unwrap(), "hello\n");
    }

    #[test]
    fn a_failed_write_goes_to_a_fallback_named_in_the_error() {
        let e = save(Path::new("/dev/full"), "txt", hello).unwrap_err();
        assert_eq!(e.source.raw_os_error(), Some(libc::ENOSPC));
        let saved = e.fallback.as_ref().unwrap();
        assert_eq!(fs::read_to_string(saved).unwrap(), "hello\n");
        assert!(e.to_string().contains(&saved.display().to_string()), "{e}");
        fs::remove_file(saved).unwrap();
        // A directory that does not exist: nothing was created there, the fallback has it.
        let e = save(Path::new("/nonexistent-dir/p.txt"), "txt", hello).unwrap_err();
        fs::remove_file(e.fallback.unwrap()).unwrap();
    }

    #[test]
    fn directories_are_refused_up_front() {
        let d = dir("isdir");
        assert!(
            check_writable(&d)
                .unwrap_err()
                .to_string()
                .contains("directory")
        );
        assert!(check_writable(&d.join("missing/p.txt")).is_err());
        check_writable(Path::new("/dev/null")).unwrap();
        check_writable(Path::new("-")).unwrap();
    }

    #[test]
    fn names_are_unpredictable() {
        let (a, b) = (random_suffix(), random_suffix());
        assert_eq!(a.len(), 16);
        assert_ne!(a, b);
    }
}
