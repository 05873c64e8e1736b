//! Python's own names for its threads (`threading.Thread.name`: `MainThread`, `Thread-3
//! (worker)`, whatever the program set), for every place a thread is shown. Read from the
//! threading module's registry, as py-spy reads it: `sys.modules['threading']._active` maps
//! each running `Thread`'s ident to the object, whose `_name` is the name and `_native_id` the
//! kernel's id for the thread (in the process's own pid namespace). Kept per process (at most
//! `MAX_NAMES`), and read again when a thread it does not know turns up, at most every
//! `REFRESH`; a name read stays after its thread ends, so a thread that ran and ended between two
//! reads of the samples keeps it. A thread never seen there (started without `threading`, or
//! started and ended between two reads of the registry) has no name here: the callers fall back
//! to the kernel's. Pure over `ProcessMemory`.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use super::{
    Layout,
    code::{CodeError, read_str_prefix},
    locals::{LocalsReader, Value},
    objects::{attributes, dict_items, lookup, module_globals},
};
use crate::process::{PTHREAD_TID_OFFSET, ProcessMemory};

/// How often, at most, an unknown thread id makes the registry be read again: names change
/// rarely, threads come and go.
pub const REFRESH: Duration = Duration::from_millis(250);

/// Names kept per process: past this they are forgotten and read again.
pub const MAX_NAMES: usize = 1 << 16;

/// Characters of a name kept.
const MAX_NAME_CHARS: u64 = 256;

/// One process's thread names, by the interpreter's thread id.
#[derive(Debug, Default)]
pub struct ThreadNames {
    names: HashMap<u64, String>,
    /// `threading._active`, once found: the dict lives as long as the module does.
    active: Option<u64>,
    read_at: Option<Instant>,
}

impl ThreadNames {
    /// The name of the thread the interpreter numbers `tid` (`threading.get_native_id()`),
    /// reading the registry again if `tid` is new and the last read is older than `REFRESH`.
    pub fn get(
        &mut self,
        mem: &impl ProcessMemory,
        layout: &Layout,
        runtime: u64,
        tid: u64,
    ) -> Option<String> {
        if let Some(name) = self.names.get(&tid) {
            return Some(name.clone());
        }
        if self.read_at.is_some_and(|t| t.elapsed() < REFRESH) {
            return None;
        }
        self.refresh(mem, layout, runtime);
        self.names.get(&tid).cloned()
    }

    /// Reads the registry now, on top of the names read before (a thread's new name replaces
    /// its old one).
    pub fn refresh(&mut self, mem: &impl ProcessMemory, layout: &Layout, runtime: u64) {
        self.read_at = Some(Instant::now());
        match read_names(mem, layout, runtime, &mut self.active) {
            Ok(names) => {
                if self.names.len() + names.len() > MAX_NAMES {
                    self.names.clear();
                }
                self.names.extend(names);
            }
            Err(_) => self.active = None,
        }
    }
}

/// Every thread in `threading._active`, by its native id. `active` is where the dict was last
/// found, checked before it is used again.
pub fn read_names(
    mem: &impl ProcessMemory,
    layout: &Layout,
    runtime: u64,
    active: &mut Option<u64>,
) -> Result<HashMap<u64, String>, CodeError> {
    let mut reader = LocalsReader::new(mem, layout);
    let is_dict = |reader: &mut LocalsReader<'_, _>, addr| matches!(reader.value(addr), Value::Sized { type_name, .. } if type_name == "dict");
    let dict = match *active {
        Some(d) if is_dict(&mut reader, d) => d,
        _ => {
            let d = find_active(mem, layout, runtime)?;
            if !is_dict(&mut reader, d) {
                return Err(CodeError::Malformed("threading._active"));
            }
            *active = Some(d);
            d
        }
    };
    let mut names = HashMap::new();
    for (ident, thread) in dict_items(mem, layout, dict)? {
        let Ok(attrs) = attributes(mem, layout, thread) else {
            continue;
        };
        let Some(Ok((name, _))) = lookup(mem, layout, &attrs, "_name")
            .map(|n| read_str_prefix(mem, layout, n, MAX_NAME_CHARS))
        else {
            continue;
        };
        let tid = lookup(mem, layout, &attrs, "_native_id")
            .and_then(|id| int_value(&reader.value(id)))
            // Without a native id: the ident is `pthread_self()`, glibc's thread descriptor,
            // which holds the kernel's id.
            .or_else(|| {
                let ident = int_value(&reader.value(ident))?;
                let tid = mem.read_u32(ident.checked_add(PTHREAD_TID_OFFSET as u64)?);
                tid.ok().map(u64::from)
            });
        if let Some(tid) = tid {
            names.insert(tid, name);
        }
    }
    Ok(names)
}

/// `sys.modules['threading'].__dict__['_active']`.
fn find_active(mem: &impl ProcessMemory, layout: &Layout, runtime: u64) -> Result<u64, CodeError> {
    let globals = module_globals(mem, layout, runtime, "threading")?
        .ok_or(CodeError::Malformed("sys.modules (no threading module)"))?;
    lookup(mem, layout, &globals, "_active").ok_or(CodeError::Malformed("threading (no _active)"))
}

/// A non-negative int that fits 64 bits.
fn int_value(v: &Value) -> Option<u64> {
    let Value::Int {
        negative: false,
        digits,
    } = v
    else {
        return None;
    };
    digits.iter().rev().try_fold(0u64, |acc, &d| {
        acc.checked_mul(1 << 30).map(|a| a | d as u64)
    })
}
