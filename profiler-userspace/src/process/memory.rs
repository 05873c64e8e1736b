//! Reading another process's memory. The Python reader is generic over `ProcessMemory`, so it is
//! tested against local buffers.

use std::{fs::File, io, os::unix::fs::FileExt};

pub trait ProcessMemory {
    /// Fills `buf` from `addr` in the target, or fails.
    fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()>;

    fn read_u64(&self, addr: u64) -> io::Result<u64> {
        let mut b = [0; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn read_u32(&self, addr: u64) -> io::Result<u32> {
        let mut b = [0; 4];
        self.read(addr, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn read_vec(&self, addr: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut v = vec![0; len];
        self.read(addr, &mut v)?;
        Ok(v)
    }
}

/// /proc/PID/mem: one pread per read, no ptrace stop.
pub struct ProcMem {
    file: File,
}

impl ProcMem {
    pub fn open(pid: u32) -> io::Result<Self> {
        Ok(Self {
            file: File::open(super::proc_dir(pid).join("mem"))?,
        })
    }
}

impl ProcessMemory for ProcMem {
    fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, addr)
    }
}

/// Copies of a few parts of a process's memory, made earlier (the kernel's copy of a code
/// object and what it points to): a read is served when it lies within one part, else fails as
/// a read past a mapping would.
#[derive(Default)]
pub struct Copies {
    parts: Vec<(u64, Vec<u8>)>,
}

impl Copies {
    /// Adds the bytes that were at `addr`.
    pub fn add(&mut self, addr: u64, bytes: &[u8]) {
        if addr != 0 && !bytes.is_empty() {
            self.parts.push((addr, bytes.to_vec()));
        }
    }
}

impl ProcessMemory for Copies {
    fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        let src = self.parts.iter().find_map(|(base, bytes)| {
            let start = usize::try_from(addr.checked_sub(*base)?).ok()?;
            bytes.get(start..start.checked_add(buf.len())?)
        });
        buf.copy_from_slice(src.ok_or(io::ErrorKind::UnexpectedEof)?);
        Ok(())
    }
}

/// A buffer that stands for memory starting at `base`: for tests.
pub struct LocalMemory {
    pub base: u64,
    pub bytes: Vec<u8>,
}

impl ProcessMemory for LocalMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        let start = addr
            .checked_sub(self.base)
            .ok_or(io::ErrorKind::InvalidInput)? as usize;
        let src = self
            .bytes
            .get(start..start + buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}
