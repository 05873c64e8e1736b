//! Call frame information -> compact unwind rows. Reads an ELF file's `.eh_frame` (and the
//! `.debug_frame` parts `.eh_frame` does not cover) with gimli, evaluates every FDE's CFI
//! program into rows, and keeps per row only what the kernel evaluates: how to get the CFA
//! (rsp or rbp plus an offset, or the PLT rule) and where rbp was saved. Pure: bytes in, rows
//! out; loading them into the kernel is `super`'s job.

use gimli::{
    BaseAddresses, CfaRule, CieOrFde, DebugFrame, EhFrame, LittleEndian, Reader, Register,
    RegisterRule, UnwindContext, UnwindSection, UnwindTableRow,
};
use object::{Object, ObjectSection};
use profiler_common::{MAX_ROWS_PER_TABLE, PAGE_SHIFT, UnwindRow, row_kind};

/// x86-64 DWARF register numbers.
const RBP: Register = Register(6);
const RSP: Register = Register(7);
const RA: Register = Register(16);

/// The CFA expression of a lazy-binding PLT entry, as GCC and binutils emit it:
/// `rsp + 8 + ((rip & 15) >= 11 ? 8 : 0)`.
const PLT_EXPRESSION: [u8; 11] = [
    0x77, 0x08, // DW_OP_breg7 (rsp) +8
    0x80, 0x00, // DW_OP_breg16 (rip) +0
    0x3f, // DW_OP_lit15
    0x1a, // DW_OP_and
    0x3b, // DW_OP_lit11
    0x2a, // DW_OP_ge
    0x33, // DW_OP_lit3
    0x24, // DW_OP_shl
    0x22, // DW_OP_plus
];

#[derive(Debug, thiserror::Error)]
pub enum CfiError {
    #[error("not a readable ELF file: {0}")]
    Elf(#[from] object::Error),
    #[error("bad call frame information: {0}")]
    Dwarf(#[from] gimli::Error),
    #[error("code at {0:#x} is above 4 GiB, beyond the compact table's 32-bit addresses")]
    AddressTooHigh(u64),
    #[error("{0} unwind rows, more than one table may hold ({MAX_ROWS_PER_TABLE})")]
    TooManyRows(usize),
}

/// One file's unwind table, sorted by `pc`, and what the conversion met.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    pub rows: Vec<UnwindRow>,
    /// FDEs read from `.eh_frame` and `.debug_frame`.
    pub fdes: usize,
    /// FDEs skipped because gimli could not parse or evaluate them.
    pub bad_fdes: usize,
    /// Rows the kernel cannot evaluate (`row_kind::UNSUPPORTED`), before merging equal rows.
    pub unsupported_rows: usize,
}

/// Builds the unwind table of the ELF file `data`.
pub fn table_for_elf(data: &[u8]) -> Result<Table, CfiError> {
    let file = object::File::parse(data)?;
    let address = |name: &str| file.section_by_name(name).map(|s| s.address());
    let mut bases = BaseAddresses::default();
    if let Some(a) = address(".text") {
        bases = bases.set_text(a);
    }
    if let Some(a) = address(".got") {
        bases = bases.set_got(a);
    }
    if let Some(a) = address(".eh_frame_hdr") {
        bases = bases.set_eh_frame_hdr(a);
    }

    let mut builder = Builder::default();
    let mut covered: Vec<(u64, u64)> = Vec::new();
    if let Some(section) = file.section_by_name(".eh_frame") {
        let bases = bases.clone().set_eh_frame(section.address());
        let eh_frame = EhFrame::new(section.data()?, LittleEndian);
        builder.add_section(&eh_frame, &bases, &[], &mut covered)?;
    }
    if let Some(section) = file.section_by_name(".debug_frame") {
        let data = section.uncompressed_data()?;
        let mut debug_frame = DebugFrame::new(&data, LittleEndian);
        debug_frame.set_address_size(8);
        covered.sort_unstable();
        let eh_ranges = covered.clone();
        builder.add_section(&debug_frame, &bases, &eh_ranges, &mut covered)?;
    }
    builder.finish()
}

#[derive(Default)]
struct Builder {
    rows: Vec<UnwindRow>,
    fdes: usize,
    bad_fdes: usize,
    unsupported_rows: usize,
}

impl Builder {
    /// Adds the rows of every FDE in `section` that overlaps none of `skip` (sorted ranges);
    /// records each FDE's range in `covered`.
    fn add_section<R: Reader<Offset = usize>, S: UnwindSection<R>>(
        &mut self,
        section: &S,
        bases: &BaseAddresses,
        skip: &[(u64, u64)],
        covered: &mut Vec<(u64, u64)>,
    ) -> Result<(), CfiError> {
        let mut ctx = UnwindContext::new();
        let mut entries = section.entries(bases);
        while let Some(entry) = entries.next()? {
            let CieOrFde::Fde(partial) = entry else {
                continue;
            };
            self.fdes += 1;
            let Ok(fde) = partial.parse(S::cie_from_offset) else {
                self.bad_fdes += 1;
                continue;
            };
            let (start, end) = (fde.initial_address(), fde.end_address());
            if start >= end || overlaps(skip, start, end) {
                continue;
            }
            if end > u32::MAX as u64 {
                return Err(CfiError::AddressTooHigh(end));
            }
            let before = self.rows.len();
            let mut ok = true;
            match fde.rows(section, bases, &mut ctx) {
                Ok(mut table) => loop {
                    match table.next_row() {
                        Ok(Some(row)) => {
                            let r = convert(row, section);
                            self.unsupported_rows += (r.kind == row_kind::UNSUPPORTED) as usize;
                            self.rows.push(r);
                        }
                        Ok(None) => break,
                        Err(_) => {
                            ok = false;
                            break;
                        }
                    }
                },
                Err(_) => ok = false,
            }
            if !ok {
                self.rows.truncate(before);
                self.bad_fdes += 1;
                continue;
            }
            // Where this FDE ends and no other begins, nothing covers the code.
            self.rows.push(UnwindRow {
                pc: end as u32,
                kind: row_kind::NONE,
                ..UnwindRow::default()
            });
            covered.push((start, end));
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Table, CfiError> {
        // At one address, a row that describes code wins over another FDE's end marker; among
        // real rows the last one evaluated (the FDE's final state at that address) wins.
        self.rows.sort_by_key(|r| (r.pc, r.kind != row_kind::NONE));
        let mut rows: Vec<UnwindRow> = Vec::with_capacity(self.rows.len());
        for r in self.rows {
            match rows.last_mut() {
                Some(last) if last.pc == r.pc => *last = r,
                _ => rows.push(r),
            }
        }
        // A row equal to its predecessor but for the address adds nothing.
        rows.dedup_by(|r, prev| same_rule(r, prev));
        if rows.len() > MAX_ROWS_PER_TABLE {
            return Err(CfiError::TooManyRows(rows.len()));
        }
        Ok(Table {
            rows,
            fdes: self.fdes,
            bad_fdes: self.bad_fdes,
            unsupported_rows: self.unsupported_rows,
        })
    }
}

fn same_rule(a: &UnwindRow, b: &UnwindRow) -> bool {
    (a.kind, a.cfa_offset, a.rbp_offset) == (b.kind, b.cfa_offset, b.rbp_offset)
}

/// Whether [start, end) overlaps a range in the sorted, non-overlapping `ranges`.
fn overlaps(ranges: &[(u64, u64)], start: u64, end: u64) -> bool {
    let i = ranges.partition_point(|&(_, e)| e <= start);
    ranges.get(i).is_some_and(|&(s, _)| s < end)
}

/// One gimli row as the kernel evaluates it.
fn convert<R: Reader<Offset = usize>, S: UnwindSection<R>>(
    row: &UnwindTableRow<usize>,
    section: &S,
) -> UnwindRow {
    let mut out = UnwindRow {
        pc: row.start_address() as u32,
        ..UnwindRow::default()
    };
    let unsupported = UnwindRow {
        kind: row_kind::UNSUPPORTED,
        ..out
    };
    match row.register(RA) {
        Some(RegisterRule::Offset(-8)) => {}
        Some(RegisterRule::Undefined) => {
            out.kind = row_kind::END;
            return out;
        }
        _ => return unsupported,
    }
    match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } => {
            if *offset % 8 != 0 {
                return unsupported;
            }
            let Ok(offset) = u16::try_from(*offset / 8) else {
                return unsupported;
            };
            out.cfa_offset = offset;
            out.kind = match *register {
                RSP => row_kind::CFA_RSP,
                RBP => row_kind::CFA_RBP,
                _ => return unsupported,
            };
        }
        CfaRule::Expression(e) => {
            let is_plt = e
                .get(section)
                .ok()
                .and_then(|expr| expr.0.to_slice().ok().map(|b| *b == PLT_EXPRESSION))
                .unwrap_or(false);
            if !is_plt {
                return unsupported;
            }
            out.kind = row_kind::PLT;
            out.cfa_offset = 1;
        }
    }
    match row.register(RBP) {
        None | Some(RegisterRule::SameValue) | Some(RegisterRule::Undefined) => {}
        Some(RegisterRule::Offset(n)) if n % 8 == 0 && n != 0 => match i8::try_from(n / 8) {
            Ok(slots) => out.rbp_offset = slots,
            Err(_) => return unsupported,
        },
        _ => return unsupported,
    }
    out
}

/// The row that covers `pc` (an ELF address): the last one at or below it. The kernel's binary
/// search finds the same row.
pub fn lookup(rows: &[UnwindRow], pc: u32) -> Option<&UnwindRow> {
    let i = rows.partition_point(|r| r.pc <= pc);
    i.checked_sub(1).map(|i| &rows[i])
}

/// The page index of sorted `rows` (see `profiler_common::PAGE_SHIFT`): the first page, and for
/// each page up to the last row's, the number of the row covering the page's first byte (0 when
/// none does: the search then rejects addresses below the first row).
pub fn page_index(rows: &[UnwindRow]) -> (u32, Vec<u32>) {
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return (0, Vec::new());
    };
    let (first_page, last_page) = (first.pc >> PAGE_SHIFT, last.pc >> PAGE_SHIFT);
    let mut index = Vec::with_capacity((last_page - first_page + 1) as usize);
    let mut row = 0usize;
    for page in first_page..=last_page {
        let start = page << PAGE_SHIFT;
        while row + 1 < rows.len() && rows[row + 1].pc <= start {
            row += 1;
        }
        index.push(row as u32);
    }
    (first_page, index)
}

/// The kernel's search (profiler-ebpf/src/native.rs `find_row`): through the page index, then
/// over the rows between a page's entry and the next page's.
pub fn lookup_paged(
    rows: &[UnwindRow],
    (first_page, index): (u32, &[u32]),
    pc: u32,
) -> Option<UnwindRow> {
    let page = (pc >> PAGE_SHIFT).checked_sub(first_page)? as usize;
    let lo = *index.get(page)? as usize;
    let hi = index.get(page + 1).map_or(rows.len() - 1, |&r| r as usize);
    lookup(rows.get(lo..=hi)?, pc).copied()
}

#[cfg(test)]
mod tests {
    use std::{path::PathBuf, process::Command};

    use gimli::{EhFrameHdr, UnwindContext};

    use super::*;

    fn libpython(version: &str) -> Option<PathBuf> {
        let out = Command::new("pyenv")
            .args(["prefix", version])
            .output()
            .ok()?;
        let prefix = String::from_utf8(out.stdout).ok()?;
        let lib = PathBuf::from(prefix.trim()).join(format!("lib/libpython{version}.so.1.0"));
        if lib.is_file() {
            Some(lib)
        } else if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("pyenv's {version} with a shared libpython is needed in CI");
        } else {
            eprintln!("SKIPPED: no pyenv {version} with a shared libpython");
            None
        }
    }

    /// The kernel's evaluation of a row, as (CFA register, CFA offset, rbp slot) or a kind.
    fn expected(row: &UnwindTableRow<usize>) -> (u8, u16, i8) {
        if row.register(RA) == Some(RegisterRule::Undefined) {
            return (row_kind::END, 0, 0);
        }
        let rbp = match row.register(RBP) {
            Some(RegisterRule::Offset(n)) => (n / 8) as i8,
            _ => 0,
        };
        match row.cfa() {
            CfaRule::RegisterAndOffset { offset, .. } if offset % 8 != 0 => {
                (row_kind::UNSUPPORTED, 0, 0)
            }
            CfaRule::RegisterAndOffset { register, offset } if *register == RSP => {
                (row_kind::CFA_RSP, (*offset / 8) as u16, rbp)
            }
            CfaRule::RegisterAndOffset { register, offset } if *register == RBP => {
                (row_kind::CFA_RBP, (*offset / 8) as u16, rbp)
            }
            CfaRule::Expression(_) => (row_kind::PLT, 1, rbp),
            _ => (row_kind::UNSUPPORTED, 0, 0),
        }
    }

    /// Every 7th byte of libpython's code: the row our table gives must be the one gimli's
    /// own evaluation (through `.eh_frame_hdr`'s search table) gives.
    #[test]
    fn libpython_3_12_table_matches_gimli() {
        let Some(path) = libpython("3.12") else {
            return;
        };
        let data = std::fs::read(&path).unwrap();
        let table = table_for_elf(&data).unwrap();
        eprintln!(
            "{}: {} rows from {} FDEs ({} bad, {} unsupported rows)",
            path.display(),
            table.rows.len(),
            table.fdes,
            table.bad_fdes,
            table.unsupported_rows
        );
        assert!(table.rows.windows(2).all(|w| w[0].pc < w[1].pc));
        assert!(table.fdes > 1000 && table.bad_fdes == 0);
        // Rows differing only in registers the kernel does not restore (rbx, r12, ...) are one.
        let rule = |r: &UnwindRow| (r.kind, r.cfa_offset, r.rbp_offset);
        assert!(table.rows.windows(2).all(|w| rule(&w[0]) != rule(&w[1])));

        let file = object::File::parse(&*data).unwrap();
        let section = |name| file.section_by_name(name).unwrap();
        let (eh, hdr, text) = (
            section(".eh_frame"),
            section(".eh_frame_hdr"),
            section(".text"),
        );
        let bases = BaseAddresses::default()
            .set_eh_frame(eh.address())
            .set_eh_frame_hdr(hdr.address())
            .set_text(text.address());
        let eh_frame = EhFrame::new(eh.data().unwrap(), LittleEndian);
        let parsed = EhFrameHdr::new(hdr.data().unwrap(), LittleEndian)
            .parse(&bases, 8)
            .unwrap();
        let search = parsed.table().unwrap();
        let mut ctx = UnwindContext::new();
        let (first_page, index) = page_index(&table.rows);
        let (mut checked, mut uncovered, mut plt) = (0, 0, 0);
        for pc in (text.address()..text.address() + text.size()).step_by(7) {
            let ours = lookup(&table.rows, pc as u32).copied().unwrap_or_default();
            let paged = lookup_paged(&table.rows, (first_page, &index), pc as u32);
            assert_eq!(
                paged.unwrap_or_default(),
                ours,
                "pc {pc:#x}: the page index disagrees"
            );
            match search.unwind_info_for_address(
                &eh_frame,
                &bases,
                &mut ctx,
                pc,
                EhFrame::cie_from_offset,
            ) {
                Ok(row) => {
                    let want = expected(row);
                    plt += (want.0 == row_kind::PLT) as usize;
                    assert_eq!(
                        (ours.kind, ours.cfa_offset, ours.rbp_offset),
                        want,
                        "pc {pc:#x}: ours {ours:?}, gimli {row:?}"
                    );
                    checked += 1;
                }
                Err(gimli::Error::NoUnwindInfoForAddress) => {
                    assert_eq!(ours.kind, row_kind::NONE, "pc {pc:#x}: {ours:?}");
                    uncovered += 1;
                }
                Err(e) => panic!("gimli at {pc:#x}: {e}"),
            }
        }
        eprintln!("checked {checked} addresses ({uncovered} without CFI, {plt} in PLT rows)");
        assert!(checked > 100_000);
    }

    /// A library built with only .debug_frame (no .eh_frame): its rows come from there, and
    /// match gimli's evaluation of the .debug_frame at every byte.
    #[test]
    fn debug_frame_only_library() {
        let dir = std::env::temp_dir().join(format!("prof-bpf-cfi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (src, lib) = (dir.join("f.c"), dir.join("libf.so"));
        std::fs::write(
            &src,
            "int g(int*);\n\
             int f(int n) { int a[64]; for (int i = 0; i < 64; i++) a[i] = n + i; return g(a); }\n\
             int h(int n) { return f(n) * 3 + f(n + 1); }\n",
        )
        .unwrap();
        let built = Command::new("cc")
            .args(["-O2", "-g", "-shared", "-fPIC"])
            .args([
                "-fno-asynchronous-unwind-tables",
                "-fno-unwind-tables",
                "-o",
            ])
            .arg(&lib)
            .arg(&src)
            .status();
        if !built.is_ok_and(|s| s.success()) {
            assert!(std::env::var("CI").is_err(), "cc is needed in CI");
            eprintln!("SKIPPED: no C compiler");
            return;
        }
        let data = std::fs::read(&lib).unwrap();
        let file = object::File::parse(&*data).unwrap();
        assert!(file.section_by_name(".debug_frame").is_some());
        let table = table_for_elf(&data).unwrap();
        assert!(table.fdes >= 2 && table.rows.len() >= 4, "{table:?}");

        let section = file.section_by_name(".debug_frame").unwrap();
        let mut debug_frame = DebugFrame::new(section.data().unwrap(), LittleEndian);
        debug_frame.set_address_size(8);
        let bases = BaseAddresses::default();
        let mut ctx = UnwindContext::new();
        let text = file.section_by_name(".text").unwrap();
        let mut checked = 0;
        for pc in text.address()..text.address() + text.size() {
            // No row at all (below the first) means no CFI, like a NONE row.
            let ours = lookup(&table.rows, pc as u32)
                .copied()
                .unwrap_or(UnwindRow {
                    kind: row_kind::NONE,
                    ..UnwindRow::default()
                });
            match debug_frame.unwind_info_for_address(
                &bases,
                &mut ctx,
                pc,
                DebugFrame::cie_from_offset,
            ) {
                Ok(row) => {
                    assert_eq!(
                        (ours.kind, ours.cfa_offset, ours.rbp_offset),
                        expected(row),
                        "pc {pc:#x}"
                    );
                    checked += 1;
                }
                Err(_) => assert_eq!(ours.kind, row_kind::NONE, "pc {pc:#x}: {ours:?}"),
            }
        }
        assert!(checked > 20);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A library bound lazily has a PLT whose CFI is the linker's expression (the entry pushes
    /// a word 11 bytes in): its rows are PLT rows, and every byte of the PLT and the code gets
    /// gimli's row. No row repeats the rule of the one before it.
    #[test]
    fn lazy_plt_rows_match_gimli() {
        let dir = std::env::temp_dir().join(format!("prof-bpf-cfi-plt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (src, lib) = (dir.join("f.c"), dir.join("libplt.so"));
        std::fs::write(
            &src,
            "int g(int);\nint f(int n) { return g(n) + g(n + 1); }\n",
        )
        .unwrap();
        let built = Command::new("cc")
            .args(["-O2", "-shared", "-fPIC", "-Wl,-z,lazy", "-o"])
            .arg(&lib)
            .arg(&src)
            .status();
        if !built.is_ok_and(|s| s.success()) {
            assert!(std::env::var("CI").is_err(), "cc is needed in CI");
            eprintln!("SKIPPED: no C compiler");
            return;
        }
        let data = std::fs::read(&lib).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let table = table_for_elf(&data).unwrap();
        let rule = |r: &UnwindRow| (r.kind, r.cfa_offset, r.rbp_offset);
        assert!(
            table.rows.windows(2).all(|w| rule(&w[0]) != rule(&w[1])),
            "{table:?}"
        );
        let file = object::File::parse(&*data).unwrap();
        let section = |name| file.section_by_name(name).unwrap();
        let eh = section(".eh_frame");
        let bases = BaseAddresses::default()
            .set_eh_frame(eh.address())
            .set_text(section(".text").address());
        let eh_frame = EhFrame::new(eh.data().unwrap(), LittleEndian);
        let mut ctx = UnwindContext::new();
        let mut plt = 0;
        for name in [".plt", ".text"] {
            let s = section(name);
            for pc in s.address()..s.address() + s.size() {
                let ours = lookup(&table.rows, pc as u32).copied().unwrap_or_default();
                match eh_frame.unwind_info_for_address(
                    &bases,
                    &mut ctx,
                    pc,
                    EhFrame::cie_from_offset,
                ) {
                    Ok(row) => {
                        let want = expected(row);
                        plt += (want.0 == row_kind::PLT) as usize;
                        assert_eq!(
                            (ours.kind, ours.cfa_offset, ours.rbp_offset),
                            want,
                            "{name} at {pc:#x}"
                        );
                    }
                    Err(_) => assert_eq!(ours.kind, row_kind::NONE, "{name} at {pc:#x}"),
                }
            }
        }
        assert!(plt > 0, "no PLT row in {table:?}");
    }

    /// Rows hold 32-bit ELF addresses: a library linked above 4 GiB is refused, not described
    /// by rows for the addresses its own would wrap to.
    #[test]
    fn code_linked_above_4_gib_is_refused() {
        let dir = std::env::temp_dir().join(format!("prof-bpf-cfi-high-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (src, lib) = (dir.join("f.c"), dir.join("libhigh.so"));
        std::fs::write(&src, "int f(int n) { return n * 3; }\n").unwrap();
        let built = Command::new("cc")
            .args([
                "-O2",
                "-shared",
                "-fPIC",
                "-Wl,-Ttext-segment=0x100000000",
                "-o",
            ])
            .arg(&lib)
            .arg(&src)
            .status();
        if !built.is_ok_and(|s| s.success()) {
            assert!(std::env::var("CI").is_err(), "cc is needed in CI");
            eprintln!("SKIPPED: no C compiler");
            return;
        }
        let data = std::fs::read(&lib).unwrap();
        let result = table_for_elf(&data);
        let _ = std::fs::remove_dir_all(&dir);
        match result {
            Err(CfiError::AddressTooHigh(end)) => assert!(end > u32::MAX as u64, "{end:#x}"),
            other => panic!("a library at 4 GiB gave {other:?}"),
        }
    }

    #[test]
    fn gaps_and_overlaps() {
        assert!(overlaps(&[(10, 20), (30, 40)], 15, 16));
        assert!(!overlaps(&[(10, 20), (30, 40)], 20, 30));
        assert!(overlaps(&[(10, 20), (30, 40)], 25, 31));
        assert!(!overlaps(&[], 0, 100));
        let rows = [
            UnwindRow {
                pc: 10,
                ..Default::default()
            },
            UnwindRow {
                pc: 20,
                kind: row_kind::NONE,
                ..Default::default()
            },
        ];
        assert_eq!(lookup(&rows, 5), None);
        assert_eq!(lookup(&rows, 10).unwrap().pc, 10);
        assert_eq!(lookup(&rows, 19).unwrap().pc, 10);
        assert_eq!(lookup(&rows, 25).unwrap().kind, row_kind::NONE);

        // Rows over three pages, the middle one without a row of its own.
        let at = |pc| UnwindRow {
            pc,
            ..Default::default()
        };
        let rows = [at(0x1800), at(0x1900), at(0x3010), at(0x3020)];
        let (first, index) = page_index(&rows);
        assert_eq!((first, index.as_slice()), (1, &[0, 1, 1][..]));
        for pc in [
            0x17ff, 0x1800, 0x18ff, 0x1900, 0x2000, 0x2fff, 0x3010, 0x301f, 0x3500,
        ] {
            assert_eq!(
                lookup_paged(&rows, (first, &index), pc),
                lookup(&rows, pc).copied(),
                "{pc:#x}"
            );
        }
        assert_eq!(lookup_paged(&rows, (first, &index), 0x4000), None);

        // Code that ends at a page boundary: the end marker is the first byte of the last page.
        let end = UnwindRow {
            pc: 0x4000,
            kind: row_kind::NONE,
            ..Default::default()
        };
        let rows = [at(0x1800), at(0x3010), end];
        let (first, index) = page_index(&rows);
        assert_eq!((first, index.as_slice()), (1, &[0, 0, 0, 2][..]));
        for pc in [0x1800, 0x3fff, 0x4000, 0x4fff] {
            assert_eq!(
                lookup_paged(&rows, (first, &index), pc),
                lookup(&rows, pc).copied(),
                "{pc:#x}"
            );
        }
    }
}
