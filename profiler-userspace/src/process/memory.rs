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
