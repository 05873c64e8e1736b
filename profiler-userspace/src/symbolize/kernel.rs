//! Kernel symbols for `--kernel`: /proc/kallsyms, read once, searched by address. Frames are
//! named `function_[k]`, the suffix flamegraph tools colour as kernel code.

use std::{fs, io};

/// Function symbols of the running kernel, sorted by address.
#[derive(Debug, Default)]
pub struct KernelSymbols {
    symbols: Vec<(u64, String)>,
}

impl KernelSymbols {
    pub fn load() -> io::Result<Self> {
        Ok(Self::parse(&fs::read_to_string("/proc/kallsyms")?))
    }

    /// Parses kallsyms text (`address type name [module]`), keeping text symbols.
    pub fn parse(text: &str) -> Self {
        let mut symbols: Vec<(u64, String)> = text
            .lines()
            .filter_map(|line| {
                let mut parts = line.split_whitespace();
                let addr = u64::from_str_radix(parts.next()?, 16).ok()?;
                let kind = parts.next()?;
                let name = parts.next()?;
                (addr != 0 && matches!(kind, "t" | "T" | "w" | "W"))
                    .then(|| (addr, name.to_string()))
            })
            .collect();
        symbols.sort_unstable();
        Self { symbols }
    }

    /// The kernel function `addr` is in, if a symbol covers it.
    pub fn name(&self, addr: u64) -> Option<&str> {
        let i = self.symbols.partition_point(|(a, _)| *a <= addr);
        i.checked_sub(1).map(|i| self.symbols[i].1.as_str())
    }

    /// Symbols loaded (none when /proc/kallsyms hides addresses).
    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_by_address() {
        let k = KernelSymbols::parse(
            "ffffffff81000000 T _stext\n\
             ffffffff81001000 t do_syscall_64\n\
             ffffffff81002000 d some_data\n\
             ffffffffc0000000 t mod_fn\t[ext4]\n",
        );
        assert_eq!(k.name(0xffffffff81001234), Some("do_syscall_64"));
        assert_eq!(k.name(0xffffffff81002004), Some("do_syscall_64"));
        assert_eq!(k.name(0xffffffffc0000010), Some("mod_fn"));
        assert_eq!(k.name(0x10), None);
    }
}
