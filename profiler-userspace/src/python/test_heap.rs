//! Test support for the readers of interpreter memory (threads, objects, locals, methods): a buffer that
//! stands for a process's heap, with a bump allocator, to build interpreter structures by hand.

use super::{DictKeys, Layout, ObjectLayout};
use crate::process::LocalMemory;

/// Where the heap starts.
pub const BASE: u64 = 0x10000;
/// Its size.
const SIZE: usize = 0x20000;
/// Bytes left free before each block: room for the words some versions keep at negative
/// offsets of an object (a managed dict's values).
const PREHEADER: u64 = 32;

pub struct Heap {
    pub bytes: Vec<u8>,
    next: u64,
}

impl Heap {
    pub fn new() -> Self {
        Self {
            bytes: vec![0; SIZE],
            next: BASE + 0x100,
        }
    }

    /// A block of `size` bytes, 16-aligned, with `PREHEADER` free bytes before it.
    pub fn alloc(&mut self, size: u64) -> u64 {
        let at = self.next + PREHEADER;
        self.next += (size + PREHEADER).next_multiple_of(16);
        at
    }

    pub fn put(&mut self, at: u64, bytes: &[u8]) {
        let i = (at - BASE) as usize;
        self.bytes[i..i + bytes.len()].copy_from_slice(bytes);
    }

    pub fn word(&mut self, at: u64, v: u64) {
        self.put(at, &v.to_le_bytes());
    }

    /// The fields of a compact ASCII `str` holding `s`, in the object at `at` (its header is the
    /// caller's).
    pub fn ascii(&mut self, at: u64, o: &ObjectLayout, s: &str) {
        assert!(s.is_ascii());
        self.word(at + o.unicode_length as u64, s.len() as u64);
        let k = o.unicode_kind_bit;
        let state: u32 = 1 << k | 1 << (k + 3) | 1 << (k + 4);
        self.put(at + o.unicode_state as u64, &state.to_le_bytes());
        self.put(at + o.unicode_ascii_data as u64, s.as_bytes());
    }

    /// A dict keys object of `str` keys holding `entries` (values inline unless `split`), as
    /// `layout`'s version lays it out.
    pub fn keys(&mut self, layout: &Layout, entries: &[(u64, u64)], split: bool) -> u64 {
        let k = self.alloc(256);
        match layout.values.dicts.keys {
            DictKeys::Sized => {
                self.word(k + 8, 8);
                self.word(k + 32, entries.len() as u64);
                for (i, &(key, value)) in entries.iter().enumerate() {
                    let e = k + 40 + 8 + 24 * i as u64;
                    self.word(e + 8, key);
                    self.word(e + 16, if split { 0 } else { value });
                }
            }
            DictKeys::Log2 => {
                // Eight 1-byte indices; DICT_KEYS_SPLIT (2) or UNICODE (1).
                self.put(k + 8, &[3, 3, if split { 2 } else { 1 }]);
                self.word(k + 24, entries.len() as u64);
                for (i, &(key, value)) in entries.iter().enumerate() {
                    let e = k + 32 + 8 + 16 * i as u64;
                    self.word(e, key);
                    self.word(e + 8, if split { 0 } else { value });
                }
            }
        }
        k
    }

    pub fn mem(&self) -> LocalMemory {
        LocalMemory {
            base: BASE,
            bytes: self.bytes.clone(),
        }
    }
}
