//! Native symbols: names the raw instruction pointers the kernel recorded, with blazesym, from
//! the ELF files the process had mapped (so it works after the process exited): function,
//! file:line where DWARF is present, demangled C++ and Rust names. An address that cannot be
//! named is `NativeSymbol::Unnamed`, with the reason counted. `kernel` names kernel
//! frames (`--kernel`).

pub mod kernel;

use std::{collections::HashMap, path::Path};

use blazesym::symbolize::{
    Input, Symbolized, Symbolizer,
    source::{Elf, Source},
};

use crate::{
    cache::BoundedCache,
    unwind::{KnownMapping, tables::mapping_at},
};

/// What the symbols say of a native address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NativeSymbol {
    /// The function (demangled), its source file where DWARF says (else the module's name) and
    /// line (0 when unknown).
    Named {
        function: String,
        file: String,
        line: u32,
    },
    /// No symbol: the address in `module` at `offset` (as linked), or, with no module, in no
    /// known mapping; `reason` says why.
    Unnamed {
        module: Option<String>,
        offset: u64,
        reason: String,
    },
}

/// Native addresses whose names are kept: the hot code of a program, bounded however long the
/// run.
const SYMBOL_CACHE: usize = 64 * 1024;

/// Names addresses, caching by (file, address in the file).
pub struct NativeSymbolizer {
    symbolizer: Symbolizer,
    cache: BoundedCache<(String, u64), NativeSymbol>,
    /// `[unknown]` frames by reason.
    pub unknown_reasons: HashMap<String, u64>,
}

impl Default for NativeSymbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl NativeSymbolizer {
    pub fn new() -> Self {
        Self {
            symbolizer: Symbolizer::builder().enable_demangling(true).build(),
            cache: BoundedCache::new(SYMBOL_CACHE),
            unknown_reasons: HashMap::new(),
        }
    }

    /// Names `addr` (a return address when `is_return`: the call is one byte before it) of a
    /// process whose executable mappings were `mappings`.
    pub fn symbolize(
        &mut self,
        mappings: &[KnownMapping],
        addr: u64,
        is_return: bool,
    ) -> NativeSymbol {
        let lookup = if is_return {
            addr.wrapping_sub(1)
        } else {
            addr
        };
        let Some(m) = mapping_at(mappings, lookup) else {
            return self.unnamed(None, addr, "address in no known mapping");
        };
        let vaddr = lookup.wrapping_sub(m.bias);
        let module = Path::new(&m.name)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| m.name.clone());
        let key = (m.name.clone(), vaddr);
        if let Some(sym) = self.cache.get(&key).cloned() {
            if let NativeSymbol::Unnamed { reason, .. } = &sym {
                *self.unknown_reasons.entry(reason.clone()).or_default() += 1;
            }
            return sym;
        }
        let result = match &m.path {
            Some(path) => {
                let src = Source::Elf(Elf::new(path));
                self.symbolizer
                    .symbolize(&src, Input::VirtOffset(&[vaddr][..]))
                    .map_err(|e| e.to_string())
            }
            None => {
                return match m.image.as_deref().and_then(|img| image_symbol(img, vaddr)) {
                    Some(function) => {
                        let sym = NativeSymbol::Named {
                            function,
                            file: module,
                            line: 0,
                        };
                        self.cache.insert(key, sym.clone());
                        sym
                    }
                    None => self.unnamed(Some(module), vaddr, "no symbol in the vDSO"),
                };
            }
        };
        let sym = match result.as_ref().map(|v| v.first()) {
            Ok(Some(Symbolized::Sym(sym))) => {
                let (file, line) = sym
                    .code_info
                    .as_ref()
                    .map(|ci| {
                        let file = ci.file.to_string_lossy().into_owned();
                        (file, ci.line.unwrap_or(0))
                    })
                    .unwrap_or_default();
                NativeSymbol::Named {
                    function: sym.name.to_string(),
                    file: if file.is_empty() {
                        module.clone()
                    } else {
                        file
                    },
                    line,
                }
            }
            Ok(Some(Symbolized::Unknown(reason))) => {
                unknown_symbol(&module, vaddr, &reason.to_string())
            }
            Ok(None) => unknown_symbol(&module, vaddr, "no result"),
            Err(e) => unknown_symbol(&module, vaddr, e),
        };
        if let NativeSymbol::Unnamed { reason, .. } = &sym {
            *self.unknown_reasons.entry(reason.clone()).or_default() += 1;
        }
        self.cache.insert(key, sym.clone());
        sym
    }

    fn unnamed(&mut self, module: Option<String>, offset: u64, reason: &str) -> NativeSymbol {
        *self.unknown_reasons.entry(reason.to_string()).or_default() += 1;
        NativeSymbol::Unnamed {
            module,
            offset,
            reason: reason.to_string(),
        }
    }
}

/// The function of an in-memory ELF image (the vDSO) that holds `vaddr`, from its symbols.
fn image_symbol(image: &[u8], vaddr: u64) -> Option<String> {
    use object::{Object as _, ObjectSymbol as _};
    let file = object::File::parse(image).ok()?;
    file.dynamic_symbols()
        .chain(file.symbols())
        .filter(|s| s.address() <= vaddr && vaddr < s.address() + s.size().max(1))
        .find_map(|s| s.name().ok().map(str::to_string))
}

/// `[unknown] (libfoo.so+0x1234)`; the reason rides in `file` (not shown) for the count.
fn unknown_symbol(module: &str, vaddr: u64, reason: &str) -> NativeSymbol {
    NativeSymbol::Unnamed {
        module: Some(module.to_string()),
        offset: vaddr,
        reason: reason.to_string(),
    }
}
