//! `top`'s keys: read from its terminal at most once a loop turn, never blocking, and turned
//! into the keys `top` acts on. crossterm's reader is not used: on a terminal that hangs up
//! while it reads (a window closed, an ssh session dropped right after a key), its read loop
//! takes each `read` of 0 bytes as "try again" and never returns, and top then spins, deaf to
//! the signals that would stop it.

use std::{
    fs::File,
    io::{self, IsTerminal as _},
    os::fd::{AsRawFd as _, BorrowedFd},
};

use ratatui::crossterm::event::{KeyCode, KeyModifiers};

/// Bytes read at most per loop turn: far more than a person types in one.
const READ_SIZE: usize = 1024;

/// What the terminal gave since the last look.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    Keys(Vec<(KeyCode, KeyModifiers)>),
    /// It hung up: its reads end (0 bytes) or fail, or poll says so.
    HungUp,
}

/// Where the keys come from: stdin when it is a terminal, else the controlling terminal
/// (`/dev/tty`), as crossterm does; nowhere if neither is there (no keys then, only signals).
pub enum Keyboard {
    Stdin,
    Tty(File),
    None,
}

impl Keyboard {
    pub fn open() -> Self {
        if io::stdin().is_terminal() {
            return Keyboard::Stdin;
        }
        File::open("/dev/tty").map_or(Keyboard::None, Keyboard::Tty)
    }

    /// The keys typed since the last call: one non-blocking look and at most one read.
    pub fn read(&self) -> Input {
        let fd = match self {
            Keyboard::Stdin => libc::STDIN_FILENO,
            Keyboard::Tty(f) => f.as_raw_fd(),
            Keyboard::None => return Input::Keys(Vec::new()),
        };
        // SAFETY: stdin, or our own file, open while `self` is.
        read_keys(unsafe { BorrowedFd::borrow_raw(fd) })
    }
}

/// One look at terminal `fd`: its keys, or whether it hung up.
fn read_keys(fd: BorrowedFd<'_>) -> Input {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, a zero timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    if n <= 0 {
        return Input::Keys(Vec::new());
    }
    if p.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
        return Input::HungUp;
    }
    let mut buf = [0u8; READ_SIZE];
    // SAFETY: reads into our own buffer, at most its length; poll said it will not block.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    match n {
        0 => Input::HungUp,
        n if n > 0 => Input::Keys(keys(&buf[..n as usize])),
        _ => match io::Error::last_os_error().kind() {
            io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock => Input::Keys(Vec::new()),
            _ => Input::HungUp,
        },
    }
}

/// The keys in `bytes`, as a terminal in raw mode sends them: a character each, Ctrl-C as
/// byte 3, Esc alone as byte 27. Escape sequences (arrows, function keys, Alt with a key) and
/// other control bytes are skipped: top has no use for them.
fn keys(bytes: &[u8]) -> Vec<(KeyCode, KeyModifiers)> {
    let mut out = Vec::new();
    let text = String::from_utf8_lossy(bytes);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => match chars.peek() {
                None => out.push((KeyCode::Esc, KeyModifiers::NONE)),
                // CSI: parameters and intermediates up to a final byte in @..~.
                Some('[') => {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // SS3 (`ESC O P`, F1): two more characters.
                Some('O') => {
                    chars.next();
                    chars.next();
                }
                // Alt with a key: one more.
                Some(_) => {
                    chars.next();
                }
            },
            '\x03' => out.push((KeyCode::Char('c'), KeyModifiers::CONTROL)),
            c if !c.is_control() => out.push((KeyCode::Char(c), KeyModifiers::NONE)),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::os::fd::{FromRawFd as _, OwnedFd};

    use super::*;

    const NONE: KeyModifiers = KeyModifiers::NONE;

    #[test]
    fn keys_of_a_raw_terminal() {
        assert_eq!(
            keys(b"q4l\x03"),
            [
                (KeyCode::Char('q'), NONE),
                (KeyCode::Char('4'), NONE),
                (KeyCode::Char('l'), NONE),
                (KeyCode::Char('c'), KeyModifiers::CONTROL),
            ]
        );
        assert_eq!(keys(b"\x1b"), [(KeyCode::Esc, NONE)]);
        // Up, F1, F5, Alt-q, then n: only n is a key.
        assert_eq!(
            keys(b"\x1b[A\x1bOP\x1b[15~\x1bqn"),
            [(KeyCode::Char('n'), NONE)]
        );
        assert_eq!(keys(b"\r\t\x7f"), []);
    }

    /// A pseudo-terminal pair: (the terminal top reads, the side a terminal emulator holds).
    fn pty() -> (OwnedFd, OwnedFd) {
        let (mut master, mut slave) = (0, 0);
        // SAFETY: openpty fills two descriptors; the name, termios and size are not asked for.
        let r = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(r, 0, "openpty: {}", io::Error::last_os_error());
        // SAFETY: both were just opened and are ours alone.
        unsafe { (OwnedFd::from_raw_fd(slave), OwnedFd::from_raw_fd(master)) }
    }

    fn raw(fd: &OwnedFd) {
        // SAFETY: termios of our own terminal, filled by tcgetattr before use.
        unsafe {
            let mut t = std::mem::zeroed::<libc::termios>();
            assert_eq!(libc::tcgetattr(fd.as_raw_fd(), &mut t), 0);
            libc::cfmakeraw(&mut t);
            assert_eq!(libc::tcsetattr(fd.as_raw_fd(), libc::TCSANOW, &t), 0);
        }
    }

    /// Keys typed are read once; nothing typed reads as no keys, at once; a terminal whose
    /// other side closed reads as hung up, at once, however often it is asked (it must never
    /// be read in a loop until it gives something).
    #[test]
    fn a_terminal_read_without_waiting_and_its_hang_up_seen() {
        let (tty, emulator) = pty();
        raw(&tty);
        let looked = |tty: &OwnedFd| read_keys(tty.as_fd());
        use std::os::fd::AsFd as _;
        assert_eq!(looked(&tty), Input::Keys(Vec::new()));
        // SAFETY: writes two bytes of ours to our own descriptor.
        let w = unsafe { libc::write(emulator.as_raw_fd(), b"q\x03".as_ptr().cast(), 2) };
        assert_eq!(w, 2);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(
            looked(&tty),
            Input::Keys(vec![
                (KeyCode::Char('q'), NONE),
                (KeyCode::Char('c'), KeyModifiers::CONTROL)
            ])
        );
        assert_eq!(looked(&tty), Input::Keys(Vec::new()));
        drop(emulator);
        for _ in 0..3 {
            assert_eq!(looked(&tty), Input::HungUp);
        }
    }
}
