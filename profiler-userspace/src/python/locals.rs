//! A frame's local variables, for `dump --locals`: the names its code object gives its fast
//! locals and a short, typed description of each value (`Value`), read from the target's memory
//! as `ValueLayout` places them. Only a few types are read further than their type's name, and
//! every read is bounded (locals per frame, characters, digits); nothing is called in the target
//! (no `repr`), so a value is what its memory says at the moment it is read. Pure over
//! `ProcessMemory`; the writers render `Value`.

use std::{collections::HashMap, io, rc::Rc};

use super::{
    Layout, LocalNames,
    code::{CodeError, read_str_prefix},
};
use crate::process::ProcessMemory;

/// Locals shown per frame; the rest are counted (`FrameLocals::omitted`).
pub const MAX_LOCALS: usize = 64;
/// Slots of a frame looked at: a code object with more is read up to here.
const MAX_SLOTS: u64 = 4096;
/// Characters of a local's name.
const MAX_NAME_CHARS: u64 = 128;
/// Characters of a `str` value, and bytes of a `bytes` value, shown.
pub const MAX_STR_CHARS: u64 = 64;
/// Digits (30 bits each) of an int read: 600 bits, 180 decimal digits. A larger int is shown by
/// its size.
pub const MAX_INT_DIGITS: u64 = 20;
/// Bytes of a type's name.
const MAX_TYPE_NAME: usize = 128;
/// Types remembered per reader (their names and flags); past this the cache starts afresh.
const MAX_TYPES: usize = 1024;

// Include/object.h (3.8 to 3.15): PyTypeObject.tp_flags bits.
const TPFLAGS_HEAPTYPE: u64 = 1 << 9;
const TPFLAGS_LONG_SUBCLASS: u64 = 1 << 24;
const TPFLAGS_LIST_SUBCLASS: u64 = 1 << 25;
pub(super) const TPFLAGS_TUPLE_SUBCLASS: u64 = 1 << 26;
pub(super) const TPFLAGS_BYTES_SUBCLASS: u64 = 1 << 27;
pub(super) const TPFLAGS_UNICODE_SUBCLASS: u64 = 1 << 28;
const TPFLAGS_DICT_SUBCLASS: u64 = 1 << 29;

// Include/internal/pycore_code.h (3.11+): what a slot of `co_localspluskinds` says.
const CO_FAST_HIDDEN: u8 = 0x10;
const CO_FAST_CELL: u8 = 0x40;
const CO_FAST_FREE: u8 = 0x80;

// Include/internal/pycore_long.h (3.12+): lv_tag's sign bits and where the digit count starts.
const SIGN_MASK: u64 = 3;
const SIGN_NEGATIVE: u64 = 2;
const NON_SIZE_BITS: u32 = 3;

/// What a local refers to, as far as `dump` reads it.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    /// An int of at most `MAX_INT_DIGITS` digits: its 30-bit digits, least significant first.
    Int {
        negative: bool,
        digits: Vec<u32>,
    },
    /// A larger int, by its number of 30-bit digits.
    LargeInt {
        negative: bool,
        digits: u64,
    },
    Float(f64),
    /// A `str`: its first `MAX_STR_CHARS` characters and its length in characters.
    Str {
        prefix: String,
        chars: u64,
    },
    /// A `bytes`: its first `MAX_STR_CHARS` bytes and its length.
    Bytes {
        prefix: Vec<u8>,
        len: u64,
    },
    /// A list, tuple, dict, set or frozenset (or a class derived from list, tuple or dict), by
    /// its type's name and length.
    Sized {
        type_name: String,
        len: u64,
    },
    /// Any other object, by its type's name and address.
    Object {
        type_name: String,
        address: u64,
    },
    /// Its memory could not be read as what it claims to be.
    Unreadable(String),
}

impl Value {
    /// The Python type's name, as `type(value).__name__` would say for built-in types.
    pub fn type_name(&self) -> &str {
        match self {
            Value::None => "NoneType",
            Value::Bool(_) => "bool",
            Value::Int { .. } | Value::LargeInt { .. } => "int",
            Value::Float(_) => "float",
            Value::Str { .. } => "str",
            Value::Bytes { .. } => "bytes",
            Value::Sized { type_name, .. } | Value::Object { type_name, .. } => type_name,
            Value::Unreadable(_) => "?",
        }
    }

    /// The length, for the values that have one.
    pub fn length(&self) -> Option<u64> {
        match self {
            Value::Str { chars, .. } => Some(*chars),
            Value::Bytes { len, .. } | Value::Sized { len, .. } => Some(*len),
            _ => None,
        }
    }
}

/// One local variable.
#[derive(Clone, Debug, PartialEq)]
pub struct Local {
    pub name: String,
    pub value: Value,
}

/// A frame's locals that are set, in the code object's order (arguments first), at most
/// `MAX_LOCALS`, and how many more are set.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FrameLocals {
    pub locals: Vec<Local>,
    pub omitted: usize,
}

/// What a slot is, for reading its value: a cell or free variable holds a cell object (3.11+:
/// once `MAKE_CELL` ran) whose contents are the value. A hidden slot (3.12+: a variable of a
/// comprehension inlined into the function) is not one of the function's locals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Plain,
    Cell,
    Hidden,
}

#[derive(Clone, Debug)]
struct TypeInfo {
    name: String,
    flags: u64,
}

impl TypeInfo {
    /// A built-in (static) type of this name: a class defined in Python is a heap type.
    fn is_builtin(&self, name: &str) -> bool {
        self.flags & TPFLAGS_HEAPTYPE == 0 && self.name == name
    }
}

/// Reads locals from one process, remembering the types it met.
pub struct LocalsReader<'a, M> {
    mem: &'a M,
    layout: &'a Layout,
    types: HashMap<u64, Rc<TypeInfo>>,
}

impl<'a, M: ProcessMemory> LocalsReader<'a, M> {
    pub fn new(mem: &'a M, layout: &'a Layout) -> Self {
        Self {
            mem,
            layout,
            types: HashMap::new(),
        }
    }

    /// The locals of the frame at `frame` (a `PyFrameObject` up to 3.10, an
    /// `_PyInterpreterFrame` from 3.11) running the code object at `code`.
    pub fn frame(&mut self, frame: u64, code: u64) -> Result<FrameLocals, CodeError> {
        let v = &self.layout.values;
        let slots = self.slot_names(code)?;
        let count = slots.len() as u64;
        let base = frame.wrapping_add(v.frame_localsplus as u64);
        let words = self.mem.read_vec(base, (count * 8) as usize)?;
        let mut out = FrameLocals::default();
        for (i, (name_addr, slot)) in slots.into_iter().enumerate() {
            let bits = u64::from_le_bytes(words[i * 8..i * 8 + 8].try_into().unwrap_or_default());
            if slot == Slot::Hidden || self.unset(bits) {
                continue;
            }
            if out.locals.len() == MAX_LOCALS {
                out.omitted += 1;
                continue;
            }
            let value = match self.slot_value(bits, slot) {
                Some(value) => value,
                // An empty cell: the variable is not bound yet.
                None => continue,
            };
            let name = match read_str_prefix(self.mem, self.layout, name_addr, MAX_NAME_CHARS) {
                Ok((name, _)) => name,
                Err(_) => format!("[slot {i}]"),
            };
            out.locals.push(Local { name, value });
        }
        Ok(out)
    }

    /// Each slot's name (a `str` address) and kind, in order.
    fn slot_names(&self, code: u64) -> Result<Vec<(u64, Slot)>, CodeError> {
        let mem = self.mem;
        let (names, kinds) = match self.layout.values.names {
            LocalNames::Split {
                varnames,
                cellvars,
                freevars,
            } => {
                let mut out = Vec::new();
                for (field, slot) in [
                    (varnames, Slot::Plain),
                    (cellvars, Slot::Cell),
                    (freevars, Slot::Cell),
                ] {
                    let tuple = mem.read_u64(code.wrapping_add(field as u64))?;
                    let room = MAX_SLOTS - out.len() as u64;
                    out.extend(
                        self.tuple_items(tuple, room)?
                            .into_iter()
                            .map(|n| (n, slot)),
                    );
                }
                return Ok(out);
            }
            LocalNames::Kinds { names, kinds } => {
                let names = mem.read_u64(code.wrapping_add(names as u64))?;
                let kinds = mem.read_u64(code.wrapping_add(kinds as u64))?;
                let names = self.tuple_items(names, MAX_SLOTS)?;
                let o = &self.layout.objects;
                let len = mem.read_u64(kinds.wrapping_add(o.bytes_size as u64))?;
                if len < names.len() as u64 {
                    return Err(CodeError::Malformed("co_localspluskinds"));
                }
                let kinds = mem.read_vec(kinds.wrapping_add(o.bytes_data as u64), names.len())?;
                (names, kinds)
            }
        };
        Ok(names
            .into_iter()
            .zip(kinds)
            .map(|(name, kind)| {
                let slot = if kind & CO_FAST_HIDDEN != 0 {
                    Slot::Hidden
                } else if kind & (CO_FAST_CELL | CO_FAST_FREE) != 0 {
                    Slot::Cell
                } else {
                    Slot::Plain
                };
                (name, slot)
            })
            .collect())
    }

    /// Up to `max` item pointers of the tuple at `tuple`.
    fn tuple_items(&self, tuple: u64, max: u64) -> Result<Vec<u64>, CodeError> {
        let v = &self.layout.values;
        let len = self.mem.read_u64(tuple.wrapping_add(v.tuple_size as u64))? as i64;
        if len < 0 {
            return Err(CodeError::Malformed("tuple size"));
        }
        let n = (len as u64).min(max);
        let bytes = self
            .mem
            .read_vec(tuple.wrapping_add(v.tuple_items as u64), (n * 8) as usize)?;
        Ok(bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect())
    }

    /// Whether a slot holds no value (NULL: an unbound local, or one not set yet).
    fn unset(&self, bits: u64) -> bool {
        let tag = self.layout.values.stack_ref_tag as u64;
        !self.tagged_int(bits) && bits & !tag == 0
    }

    /// A `_PyStackRef` holding an int in its bits rather than a pointer (3.14+'s `Py_INT_TAG`).
    fn tagged_int(&self, bits: u64) -> bool {
        self.layout.values.stack_ref_tag == 3 && bits & 3 == 3
    }

    /// The value of a slot holding `bits`; None for an empty cell.
    fn slot_value(&mut self, bits: u64, slot: Slot) -> Option<Value> {
        if self.tagged_int(bits) {
            let n = (bits as i64) >> 2;
            return Some(small_int(n));
        }
        let addr = bits & !(self.layout.values.stack_ref_tag as u64);
        if slot == Slot::Cell {
            match self.type_of(addr) {
                Ok(t) if t.is_builtin("cell") => {
                    let inner = self
                        .mem
                        .read_u64(addr.wrapping_add(self.layout.values.cell_ref as u64));
                    return match inner {
                        Ok(0) => None,
                        Ok(inner) => Some(self.value(inner)),
                        Err(e) => Some(Value::Unreadable(e.to_string())),
                    };
                }
                // 3.11+: a cell variable not made a cell yet (an argument before MAKE_CELL).
                _ => {}
            }
        }
        Some(self.value(addr))
    }

    /// What the object at `addr` is.
    pub fn value(&mut self, addr: u64) -> Value {
        match self.read_value(addr) {
            Ok(v) => v,
            Err(e) => Value::Unreadable(e.to_string()),
        }
    }

    fn read_value(&mut self, addr: u64) -> Result<Value, CodeError> {
        let t = self.type_of(addr)?;
        let v = self.layout.values;
        let mem = self.mem;
        let word = |off: u16| mem.read_u64(addr.wrapping_add(off as u64));
        let sized = |off: u16| -> Result<Value, CodeError> {
            Ok(Value::Sized {
                type_name: t.name.clone(),
                len: word(off)?,
            })
        };
        let builtin = t.flags & TPFLAGS_HEAPTYPE == 0;
        let flag = |f: u64| t.flags & f != 0;
        Ok(match t.name.as_str() {
            "NoneType" if builtin => Value::None,
            "bool" if builtin => {
                let (_, digits) = self.int_digits(addr, 1)?;
                Value::Bool(match digits {
                    Digits::Read(d) => d.iter().any(|&d| d != 0),
                    Digits::TooMany(_) => true,
                })
            }
            "int" if builtin && flag(TPFLAGS_LONG_SUBCLASS) => {
                let (negative, digits) = self.int_digits(addr, MAX_INT_DIGITS)?;
                match digits {
                    Digits::Read(digits) => Value::Int { negative, digits },
                    Digits::TooMany(digits) => Value::LargeInt { negative, digits },
                }
            }
            "float" if builtin => Value::Float(f64::from_bits(word(v.float_value)?)),
            "str" if builtin && flag(TPFLAGS_UNICODE_SUBCLASS) => {
                let (prefix, chars) = read_str_prefix(mem, self.layout, addr, MAX_STR_CHARS)?;
                Value::Str { prefix, chars }
            }
            "bytes" if builtin && flag(TPFLAGS_BYTES_SUBCLASS) => {
                let o = &self.layout.objects;
                let len = word(o.bytes_size)?;
                let prefix = mem.read_vec(
                    addr.wrapping_add(o.bytes_data as u64),
                    len.min(MAX_STR_CHARS) as usize,
                )?;
                Value::Bytes { prefix, len }
            }
            "set" | "frozenset" if builtin => sized(v.set_used)?,
            // Classes derived from these keep their layout.
            _ if flag(TPFLAGS_LIST_SUBCLASS) => sized(v.list_size)?,
            _ if flag(TPFLAGS_TUPLE_SUBCLASS) => sized(v.tuple_size)?,
            _ if flag(TPFLAGS_DICT_SUBCLASS) => sized(v.dict_used)?,
            _ => Value::Object {
                type_name: t.name.clone(),
                address: addr,
            },
        })
    }

    /// The sign and, up to `max` of them, the digits of the int (or bool) at `addr`.
    fn int_digits(&self, addr: u64, max: u64) -> Result<(bool, Digits), CodeError> {
        let v = &self.layout.values;
        let size = self.mem.read_u64(addr.wrapping_add(v.long_size as u64))?;
        let (negative, count) = match v.long_tagged {
            true => (size & SIGN_MASK == SIGN_NEGATIVE, size >> NON_SIZE_BITS),
            false => ((size as i64) < 0, (size as i64).unsigned_abs()),
        };
        if count > max {
            return Ok((negative, Digits::TooMany(count)));
        }
        let bytes = self.mem.read_vec(
            addr.wrapping_add(v.long_digits as u64),
            (count * 4) as usize,
        )?;
        let digits = bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect();
        Ok((negative, Digits::Read(digits)))
    }

    /// The type of the object at `addr`: its name and flags, read once per type.
    fn type_of(&mut self, addr: u64) -> Result<Rc<TypeInfo>, CodeError> {
        let v = &self.layout.values;
        let ty = self.mem.read_u64(addr.wrapping_add(v.ob_type as u64))?;
        if let Some(t) = self.types.get(&ty) {
            return Ok(t.clone());
        }
        let name = self.mem.read_u64(ty.wrapping_add(v.tp_name as u64))?;
        let flags = self.mem.read_u64(ty.wrapping_add(v.tp_flags as u64))?;
        let info = Rc::new(TypeInfo {
            name: read_c_string(self.mem, name, MAX_TYPE_NAME)?,
            flags,
        });
        if self.types.len() >= MAX_TYPES {
            self.types.clear();
        }
        self.types.insert(ty, info.clone());
        Ok(info)
    }
}

/// An int's digits as read, or how many there are when there are too many to read.
#[derive(Debug, PartialEq)]
enum Digits {
    Read(Vec<u32>),
    TooMany(u64),
}

/// `n` as an int value.
fn small_int(n: i64) -> Value {
    let mut magnitude = n.unsigned_abs();
    let mut digits = Vec::new();
    while magnitude != 0 {
        digits.push((magnitude & ((1 << 30) - 1)) as u32);
        magnitude >>= 30;
    }
    Value::Int {
        negative: n < 0,
        digits,
    }
}

/// A NUL-terminated C string of at most `max` bytes, read a page at a time so a short string
/// near the end of a mapping is not a failed read; cut where it reaches `max`.
pub fn read_c_string(mem: &impl ProcessMemory, addr: u64, max: usize) -> io::Result<String> {
    const PAGE: u64 = 4096;
    let mut out = Vec::new();
    let mut at = addr;
    while out.len() < max {
        let room = (PAGE - at % PAGE).min((max - out.len()) as u64);
        let chunk = mem.read_vec(at, room as usize)?;
        match chunk.iter().position(|&b| b == 0) {
            Some(end) => {
                out.extend_from_slice(&chunk[..end]);
                break;
            }
            None => out.extend_from_slice(&chunk),
        }
        at += room;
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        process::LocalMemory,
        python::{Version, layout_for},
    };

    use crate::python::test_heap::{BASE, Objects};

    /// An int object holding `n`, as the version lays ints out.
    fn int(h: &mut Objects, n: i64) -> u64 {
        let v = h.layout.values;
        let o = h.object("int", TPFLAGS_LONG_SUBCLASS, 64);
        let Value::Int { digits, negative } = small_int(n) else {
            unreachable!()
        };
        let size = match v.long_tagged {
            true => {
                let sign = match (n, negative) {
                    (0, _) => 1,
                    (_, true) => SIGN_NEGATIVE,
                    _ => 0,
                };
                (digits.len() as u64) << NON_SIZE_BITS | sign
            }
            false if negative => (-(digits.len() as i64)) as u64,
            false => digits.len() as u64,
        };
        h.word(o + v.long_size as u64, size);
        for (i, d) in digits.iter().enumerate() {
            h.put(o + v.long_digits as u64 + 4 * i as u64, &d.to_le_bytes());
        }
        o
    }

    /// A frame of a function `f(n, s, items, mapping, obj, unset, cell)` on every version: its
    /// locals as the version lays them out, one of them a cell variable.
    fn check(layout: Layout) {
        let v = layout.values;
        let minor = layout.version.minor;
        let mut h = Objects::new(layout);
        let n = int(&mut h, -1_234_567_890_123);
        let s = h.str("hello");
        let list = h.object("list", TPFLAGS_LIST_SUBCLASS, 64);
        h.word(list + v.list_size as u64, 3);
        let dict = h.object("dict", TPFLAGS_DICT_SUBCLASS, 64);
        h.word(dict + v.dict_used as u64, 2);
        let obj = h.object("Point", TPFLAGS_HEAPTYPE, 64);
        let blob = h.bytes(b"a\x00b");
        let half = h.object("float", 0, 64);
        h.word(half + v.float_value as u64, 0.5f64.to_bits());
        let cell = h.object("cell", 0, 64);
        h.word(cell + v.cell_ref as u64, n);
        let plain = ["n", "s", "items", "mapping", "obj", "unset", "blob", "half"];
        let values = [n, s, list, dict, obj, 0, blob, half];
        let names: Vec<u64> = plain.iter().chain(&["shared"]).map(|n| h.str(n)).collect();
        let code = h.alloc(256);
        let frame = h.alloc(v.frame_localsplus as u64 + 8 * 16);
        match v.names {
            LocalNames::Split {
                varnames,
                cellvars,
                freevars,
            } => {
                let (plain_names, cells) = (h.tuple(&names[..8]), h.tuple(&names[8..]));
                let empty = h.tuple(&[]);
                h.word(code + varnames as u64, plain_names);
                h.word(code + cellvars as u64, cells);
                h.word(code + freevars as u64, empty);
            }
            LocalNames::Kinds { names: at, kinds } => {
                let all = h.tuple(&names);
                let mut k = vec![0x20u8; 8];
                k.push(CO_FAST_CELL);
                let kinds_obj = h.bytes(&k);
                h.word(code + at as u64, all);
                h.word(code + kinds as u64, kinds_obj);
            }
        }
        for (i, &value) in values.iter().chain(&[cell]).enumerate() {
            // 3.14+: a borrowed reference carries a tag bit.
            let tag = match (v.stack_ref_tag, i % 2) {
                (0, _) | (_, 0) => 0,
                _ => 1,
            };
            let bits = if value == 0 { tag } else { value | tag };
            h.word(frame + v.frame_localsplus as u64 + 8 * i as u64, bits);
        }
        let mem = h.mem();
        let got = LocalsReader::new(&mem, &layout).frame(frame, code).unwrap();
        let want = [
            ("n", small_int(-1_234_567_890_123)),
            (
                "s",
                Value::Str {
                    prefix: "hello".into(),
                    chars: 5,
                },
            ),
            (
                "items",
                Value::Sized {
                    type_name: "list".into(),
                    len: 3,
                },
            ),
            (
                "mapping",
                Value::Sized {
                    type_name: "dict".into(),
                    len: 2,
                },
            ),
            (
                "obj",
                Value::Object {
                    type_name: "Point".into(),
                    address: obj,
                },
            ),
            (
                "blob",
                Value::Bytes {
                    prefix: b"a\x00b".to_vec(),
                    len: 3,
                },
            ),
            ("half", Value::Float(0.5)),
            ("shared", small_int(-1_234_567_890_123)),
        ];
        let want: Vec<Local> = want
            .into_iter()
            .map(|(name, value)| Local {
                name: name.into(),
                value,
            })
            .collect();
        assert_eq!(got.locals, want, "3.{minor}");
        assert_eq!(got.omitted, 0);
    }

    #[test]
    fn reads_the_locals_of_every_built_in_layout() {
        for minor in 8..=15 {
            check(layout_for(Version::new(3, minor)).unwrap());
        }
    }

    /// 3.14+: an int tagged into the slot itself (`Py_INT_TAG`), and a NULL slot (`PyStackRef_NULL`
    /// is the tag bit alone).
    #[test]
    fn tagged_ints_and_null_stack_refs() {
        let layout = layout_for(Version::new(3, 14)).unwrap();
        let mem = LocalMemory {
            base: BASE,
            bytes: vec![0; 16],
        };
        let mut r = LocalsReader::new(&mem, &layout);
        assert!(r.unset(1));
        assert!(!r.unset((-7i64 << 2) as u64 | 3));
        assert_eq!(
            r.slot_value((-7i64 << 2) as u64 | 3, Slot::Plain),
            Some(small_int(-7))
        );
        let old = layout_for(Version::new(3, 13)).unwrap();
        let r = LocalsReader::new(&mem, &old);
        assert!(r.unset(0) && !r.unset(3));
    }

    #[test]
    fn large_ints_and_bools() {
        let layout = layout_for(Version::new(3, 12)).unwrap();
        let mut h = Objects::new(layout);
        let big = h.object("int", TPFLAGS_LONG_SUBCLASS, 256);
        let v = layout.values;
        h.word(
            big + v.long_size as u64,
            (MAX_INT_DIGITS + 1) << NON_SIZE_BITS,
        );
        let yes = h.object("bool", TPFLAGS_LONG_SUBCLASS, 64);
        h.word(yes + v.long_size as u64, 1 << NON_SIZE_BITS);
        h.put(yes + v.long_digits as u64, &1u32.to_le_bytes());
        let no = h.object("bool", TPFLAGS_LONG_SUBCLASS, 64);
        h.word(no + v.long_size as u64, 1); // SIGN_ZERO, no digits
        let fake = h.object("NoneType", TPFLAGS_HEAPTYPE, 64);
        let mem = h.mem();
        let mut r = LocalsReader::new(&mem, &layout);
        assert_eq!(
            r.value(big),
            Value::LargeInt {
                negative: false,
                digits: MAX_INT_DIGITS + 1
            }
        );
        assert_eq!(r.value(yes), Value::Bool(true));
        assert_eq!(r.value(no), Value::Bool(false));
        // A class of that name defined in Python is not None.
        assert!(matches!(r.value(fake), Value::Object { .. }));
        assert!(matches!(r.value(BASE + 0x30000), Value::Unreadable(_)));
    }

    #[test]
    fn c_strings_end_at_nul_or_the_bound() {
        let mut bytes = vec![b'x'; 0x2000];
        bytes[0x1ffe] = 0;
        let mem = LocalMemory { base: BASE, bytes };
        // Starts near the end of a page and ends on the next.
        assert_eq!(read_c_string(&mem, BASE + 0x1ff0, 100).unwrap().len(), 14);
        assert_eq!(read_c_string(&mem, BASE, 10).unwrap(), "x".repeat(10));
        assert!(read_c_string(&mem, BASE + 0x3000, 10).is_err());
    }
}
