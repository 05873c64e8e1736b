//! Test support for the readers of interpreter memory (threads, objects, locals, methods): a buffer that
//! stands for a process's heap, with a bump allocator, to build interpreter structures by hand,
//! and one version's objects on it (`Objects`).

use std::{
    collections::HashMap,
    ops::{Deref, DerefMut},
};

use super::{
    DictKeys, Layout, ObjectLayout,
    locals::{TPFLAGS_BYTES_SUBCLASS, TPFLAGS_TUPLE_SUBCLASS, TPFLAGS_UNICODE_SUBCLASS},
};
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

/// A heap of one version's objects: type objects (made once per name) and live objects of
/// them, laid out as `layout` says.
pub struct Objects {
    pub heap: Heap,
    pub layout: Layout,
    types: HashMap<String, u64>,
}

impl Deref for Objects {
    type Target = Heap;
    fn deref(&self) -> &Heap {
        &self.heap
    }
}

impl DerefMut for Objects {
    fn deref_mut(&mut self) -> &mut Heap {
        &mut self.heap
    }
}

impl Objects {
    pub fn new(layout: Layout) -> Self {
        Self {
            heap: Heap::new(),
            layout,
            types: HashMap::new(),
        }
    }

    /// A type object named `name` with `flags`, made once.
    pub fn ty(&mut self, name: &str, flags: u64) -> u64 {
        if let Some(&t) = self.types.get(name) {
            return t;
        }
        let v = self.layout.values;
        let t = self.alloc(1024);
        let s = self.alloc(name.len() as u64 + 1);
        self.put(s, name.as_bytes());
        self.word(t + v.tp_name as u64, s);
        self.word(t + v.tp_flags as u64, flags);
        self.types.insert(name.into(), t);
        t
    }

    /// A live object (refcount 1) of the type at `ty`, `size` bytes.
    pub fn instance(&mut self, ty: u64, size: u64) -> u64 {
        let o = self.alloc(size.max(64));
        self.word(o, 1);
        let ob_type = self.layout.values.ob_type as u64;
        self.word(o + ob_type, ty);
        o
    }

    /// A live object of type `name` (refcount 1), `size` bytes.
    pub fn object(&mut self, name: &str, flags: u64, size: u64) -> u64 {
        let t = self.ty(name, flags);
        self.instance(t, size)
    }

    /// A compact ASCII `str`.
    pub fn str(&mut self, s: &str) -> u64 {
        let o = self.object("str", TPFLAGS_UNICODE_SUBCLASS, 64 + s.len() as u64);
        let ob = self.layout.objects;
        self.heap.ascii(o, &ob, s);
        o
    }

    pub fn tuple(&mut self, items: &[u64]) -> u64 {
        let v = self.layout.values;
        let o = self.object("tuple", TPFLAGS_TUPLE_SUBCLASS, 64 + 8 * items.len() as u64);
        self.word(o + v.tuple_size as u64, items.len() as u64);
        for (i, &item) in items.iter().enumerate() {
            self.word(o + v.tuple_items as u64 + 8 * i as u64, item);
        }
        o
    }

    pub fn bytes(&mut self, b: &[u8]) -> u64 {
        let ob = self.layout.objects;
        let o = self.object("bytes", TPFLAGS_BYTES_SUBCLASS, 64 + b.len() as u64);
        self.word(o + ob.bytes_size as u64, b.len() as u64);
        self.put(o + ob.bytes_data as u64, b);
        o
    }

    /// A dict keys object of `str` keys holding `entries`, as this version lays it out.
    pub fn keys(&mut self, entries: &[(u64, u64)], split: bool) -> u64 {
        let layout = self.layout;
        self.heap.keys(&layout, entries, split)
    }
}
