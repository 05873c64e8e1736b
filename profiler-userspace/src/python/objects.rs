//! A dict's entries, an instance's attributes and a set's keys, read from the target's memory
//! as `DictLayout` places them: what `thread_names` walks from `sys.modules` to each `Thread`'s
//! name, and `asyncio` to the task registries of 3.11-3.13. Addresses in, addresses out: the
//! values are read by the caller (`code::read_str_prefix`, `locals::LocalsReader::value`).
//! Every read is bounded (entries per dict); nothing is called in the target. Pure over
//! `ProcessMemory`.

use super::{DictKeys, InstanceDict, Layout, code::CodeError, code::read_str_prefix};
use crate::process::ProcessMemory;

/// Entries read of one dict: `sys.modules` of a large program, `threading._active` of a
/// server with thousands of threads.
pub const MAX_ENTRIES: u64 = 1 << 16;

// Include/object.h (3.11+): PyTypeObject.tp_flags bits.
const TPFLAGS_INLINE_VALUES: u64 = 1 << 2;
const TPFLAGS_MANAGED_DICT: u64 = 1 << 4;

/// `tp_basicsize` and `tp_dictoffset`, from `tp_name` (Include/cpython/object.h, 3.8 to 3.15).
const TP_BASICSIZE_AFTER_NAME: u64 = 8;
const TP_DICTOFFSET_AFTER_NAME: u64 = 264;

/// The live (key, value) pairs of the dict at `dict`, in entry order.
pub fn dict_items(
    mem: &impl ProcessMemory,
    layout: &Layout,
    dict: u64,
) -> Result<Vec<(u64, u64)>, CodeError> {
    let used = layout.values.dict_used as u64;
    // Include/cpython/dictobject.h: ma_used, ma_version_tag (3.14: _ma_watcher_tag), ma_keys,
    // ma_values.
    let keys = mem.read_u64(dict.wrapping_add(used + 16))?;
    let values = mem.read_u64(dict.wrapping_add(used + 24))?;
    keys_items(mem, layout, keys, (values != 0).then_some(values))
}

/// The entries of the keys object at `keys`, their values from the split table `values` (a
/// `PyDictValues`) where there is one.
fn keys_items(
    mem: &impl ProcessMemory,
    layout: &Layout,
    keys: u64,
    values: Option<u64>,
) -> Result<Vec<(u64, u64)>, CodeError> {
    let d = &layout.values.dicts;
    let (count, entries, entry_size, key_at) = match d.keys {
        DictKeys::Sized => {
            let size = mem.read_u64(keys.wrapping_add(8))?;
            let count = mem.read_u64(keys.wrapping_add(32))?;
            let index_bytes = match size {
                0..=0xff => 1,
                0x100..=0xffff => 2,
                0x1_0000..=0xffff_ffff => 4,
                _ => 8,
            };
            if size > 1 << 40 {
                return Err(CodeError::Malformed("dict keys size"));
            }
            (count, keys + 40 + size * index_bytes, 24, 8)
        }
        DictKeys::Log2 => {
            let head = mem.read_vec(keys.wrapping_add(8), 3)?;
            let (log2_index_bytes, kind) = (head[1], head[2]);
            let count = mem.read_u64(keys.wrapping_add(24))?;
            if log2_index_bytes >= 40 {
                return Err(CodeError::Malformed("dict keys size"));
            }
            // DICT_KEYS_GENERAL (0) entries hold the hash too; UNICODE (1) and SPLIT (2) not.
            let (size, key_at) = match kind {
                0 => (24, 8),
                _ => (16, 0),
            };
            (count, keys + 32 + (1u64 << log2_index_bytes), size, key_at)
        }
    };
    let count = count.min(MAX_ENTRIES);
    let bytes = mem.read_vec(entries, (count * entry_size) as usize)?;
    let word =
        |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default());
    let split = match values {
        Some(v) => Some(mem.read_vec(v.wrapping_add(d.values_items as u64), (count * 8) as usize)?),
        None => None,
    };
    Ok(bytes
        .chunks_exact(entry_size as usize)
        .enumerate()
        .filter_map(|(i, e)| {
            let key = word(e, key_at as usize);
            let value = match &split {
                Some(s) => word(s, i * 8),
                None => word(e, key_at as usize + 8),
            };
            (key != 0 && value != 0).then_some((key, value))
        })
        .collect())
}

/// The attributes of the instance at `obj` (of a class defined in Python): its `__dict__`'s
/// entries, or the values it keeps without one. Empty for an object with neither.
pub fn attributes(
    mem: &impl ProcessMemory,
    layout: &Layout,
    obj: u64,
) -> Result<Vec<(u64, u64)>, CodeError> {
    let v = &layout.values;
    let ty = mem.read_u64(obj.wrapping_add(v.ob_type as u64))?;
    let flags = mem.read_u64(ty.wrapping_add(v.tp_flags as u64))?;
    let name_at = ty.wrapping_add(v.tp_name as u64);
    let cached_keys = || mem.read_u64(ty.wrapping_add(v.dicts.ht_cached_keys as u64));
    let managed = flags & TPFLAGS_MANAGED_DICT != 0;
    // The managed dict's place before the object: 3 words, 1 in a free-threaded build
    // (Include/internal/pycore_object.h, MANAGED_DICT_OFFSET).
    let before = if layout.free_threaded { 8 } else { 24 };
    let dict = if !managed || v.dicts.instance == InstanceDict::Offset {
        let offset = mem.read_u64(name_at + TP_DICTOFFSET_AFTER_NAME)? as i64;
        if offset <= 0 {
            return Ok(Vec::new());
        }
        mem.read_u64(obj.wrapping_add(offset as u64))?
    } else {
        match v.dicts.instance {
            InstanceDict::Offset => 0,
            InstanceDict::Managed => match mem.read_u64(obj.wrapping_sub(24))? {
                0 => {
                    let values = mem.read_u64(obj.wrapping_sub(32))?;
                    if values == 0 {
                        return Ok(Vec::new());
                    }
                    return keys_items(mem, layout, cached_keys()?, Some(values));
                }
                dict => dict,
            },
            InstanceDict::DictOrValues => match mem.read_u64(obj.wrapping_sub(24))? {
                // The values' address less one (Include/internal/pycore_object.h,
                // _PyDictOrValues_GetValues): odd, as no dict's address is.
                tagged if tagged & 1 != 0 => {
                    return keys_items(mem, layout, cached_keys()?, Some(tagged + 1));
                }
                dict => dict,
            },
            InstanceDict::InlineValues => match mem.read_u64(obj.wrapping_sub(before))? {
                0 if flags & TPFLAGS_INLINE_VALUES != 0 => {
                    let size = mem.read_u64(name_at + TP_BASICSIZE_AFTER_NAME)?;
                    let values = obj.wrapping_add(size);
                    // PyDictValues.valid: cleared once the values moved into a dict.
                    if mem.read_vec(values + 3, 1)?[0] == 0 {
                        return Ok(Vec::new());
                    }
                    return keys_items(mem, layout, cached_keys()?, Some(values));
                }
                dict => dict,
            },
        }
    };
    match dict {
        0 => Ok(Vec::new()),
        dict => dict_items(mem, layout, dict),
    }
}

/// The value of the entry of `items` whose key is the `str` `name`.
pub fn lookup(
    mem: &impl ProcessMemory,
    layout: &Layout,
    items: &[(u64, u64)],
    name: &str,
) -> Option<u64> {
    let want = name.chars().count() as u64;
    items.iter().find_map(|&(key, value)| {
        let (text, chars) = read_str_prefix(mem, layout, key, want + 1).ok()?;
        (chars == want && text == name).then_some(value)
    })
}

/// Where a set keeps its table (`PySetObject`): the count of keys, the mask (slots less one)
/// and the table of (key, hash) entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetLayout {
    pub used: u64,
    pub mask: u64,
    pub table: u64,
}

impl SetLayout {
    /// Include/setobject.h, 3.8-3.13 with the GIL.
    pub const CLASSIC: Self = Self {
        used: 24,
        mask: 32,
        table: 40,
    };
}

/// The largest set table read (slots): a registry of every task of a large server.
pub const MAX_SET_SLOTS: u64 = 1 << 20;

/// The keys of the set at `set`, at most `max`; a removed key's marker (the `dummy` object) is
/// among them: the caller tells its keys by their type.
pub fn set_keys(
    mem: &impl ProcessMemory,
    s: SetLayout,
    set: u64,
    max: usize,
) -> Result<Vec<u64>, CodeError> {
    let used = mem.read_u64(set.wrapping_add(s.used))?;
    let mask = mem.read_u64(set.wrapping_add(s.mask))?;
    let table = mem.read_u64(set.wrapping_add(s.table))?;
    if mask >= MAX_SET_SLOTS || used > mask + 1 {
        return Err(CodeError::Malformed("set table"));
    }
    // setentry: the key, then its hash.
    let entries = mem.read_vec(table, (mask as usize + 1) * 16)?;
    Ok(entries
        .chunks_exact(16)
        .map(|e| u64::from_le_bytes(e[..8].try_into().unwrap_or_default()))
        .filter(|&key| key != 0)
        .take(max)
        .collect())
}

/// The globals of module `name` (`sys.modules[name].__dict__`'s entries) of the main
/// interpreter of the runtime at `runtime`; None where no such module is imported.
pub fn module_globals(
    mem: &impl ProcessMemory,
    layout: &Layout,
    runtime: u64,
    name: &str,
) -> Result<Option<Vec<(u64, u64)>>, CodeError> {
    let interp =
        mem.read_u64(runtime.wrapping_add(layout.kernel.runtime_interpreters_head as u64))?;
    if interp == 0 {
        return Err(CodeError::Malformed("interpreter (not started)"));
    }
    let modules = mem.read_u64(interp.wrapping_add(layout.values.dicts.interp_modules as u64))?;
    let modules = dict_items(mem, layout, modules)?;
    match lookup(mem, layout, &modules, name) {
        Some(module) => attributes(mem, layout, module).map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::{Version, layout_for};

    use crate::python::test_heap::Objects;

    /// One version's objects, built by hand.
    fn heap(minor: u8) -> Objects {
        Objects::new(layout_for(Version::new(3, minor)).unwrap())
    }

    /// A dict holding `_name` and `_native_id` (two `str`s here) in its own table, and an
    /// instance whose attributes are those, kept as the version keeps them: both read back.
    fn check(minor: u8) {
        let mut h = heap(minor);
        let v = h.layout.values;
        let (name_key, id_key) = (h.str("_name"), h.str("_native_id"));
        let (name, id) = (h.str("worker"), h.str("17"));
        let entries = [(name_key, name), (id_key, id)];
        let dict = h.alloc(64);
        let keys = h.keys(&entries, false);
        h.word(dict + v.dict_used as u64 + 16, keys);
        let mem = h.mem();
        let items = dict_items(&mem, &h.layout, dict).unwrap();
        assert_eq!(items, entries, "3.{minor}: a dict");
        assert_eq!(lookup(&mem, &h.layout, &items, "_native_id"), Some(id));
        assert_eq!(lookup(&mem, &h.layout, &items, "_nam"), None);

        // The class: its flags, tp_basicsize 16 + header, tp_dictoffset and shared keys.
        let ty = h.alloc(1024);
        let obj = h.alloc(128);
        h.word(obj + v.ob_type as u64, ty);
        let name_at = ty + v.tp_name as u64;
        let shared = h.keys(&entries, true);
        h.word(ty + v.dicts.ht_cached_keys as u64, shared);
        let values = match v.dicts.instance {
            InstanceDict::Offset => {
                h.word(name_at + TP_DICTOFFSET_AFTER_NAME, 16);
                h.word(obj + 16, dict);
                None
            }
            InstanceDict::Managed => {
                h.word(ty + v.tp_flags as u64, TPFLAGS_MANAGED_DICT);
                let values = h.alloc(16);
                h.word(obj - 32, values);
                Some(values)
            }
            InstanceDict::DictOrValues => {
                h.word(ty + v.tp_flags as u64, TPFLAGS_MANAGED_DICT);
                let values = h.alloc(16);
                h.word(obj - 24, values - 1);
                Some(values)
            }
            InstanceDict::InlineValues => {
                h.word(
                    ty + v.tp_flags as u64,
                    TPFLAGS_MANAGED_DICT | TPFLAGS_INLINE_VALUES,
                );
                h.word(name_at + TP_BASICSIZE_AFTER_NAME, 16);
                h.put(obj + 16, &[2, 2, 1, 1]);
                Some(obj + 16)
            }
        };
        if let Some(values) = values {
            h.word(values + v.dicts.values_items as u64, name);
            h.word(values + v.dicts.values_items as u64 + 8, id);
        }
        let mem = h.mem();
        assert_eq!(
            attributes(&mem, &h.layout, obj).unwrap(),
            entries,
            "3.{minor}: an instance"
        );
    }

    #[test]
    fn reads_dicts_and_instances_of_every_built_in_layout() {
        for minor in 8..=15 {
            check(minor);
        }
    }
}
