//! Native unwinding in userspace, for `dump --native`: the kernel's walk (`profiler-ebpf/src/
//! native.rs`) over the same tables, kept in this process instead of BPF maps. `LocalMaps`
//! receives what `NativeTables` would write into the kernel (so files, load biases and the vDSO
//! are handled by the same code), and `unwind` walks a thread's stack from its registers with
//! the same step (`profiler_common::unwind_step`). Generic over the memory, so it is tested
//! against a local buffer; it reads memory only through `ProcessMemory` and stops no thread.

use std::{collections::HashMap, io};

use profiler_common::{
    MAX_NATIVE_FRAMES, NativeMapping, NativeMappings, PageChunk, ROWS_PER_CHUNK, RowChunk, Stat,
    UnwindRow, unwind_step,
};

use super::{cfi, tables::UnwindMaps};
use crate::process::ProcessMemory;

/// The kernel's unwind maps, in this process: the shared row array and each pid's sorted
/// mappings. The page index is not kept: a search over a table's rows finds the same row
/// (`cfi::lookup_paged` is tested against `cfi::lookup`).
#[derive(Default)]
pub struct LocalMaps {
    rows: Vec<UnwindRow>,
    mappings: HashMap<u32, Vec<NativeMapping>>,
}

impl UnwindMaps for LocalMaps {
    fn write_chunk(&mut self, index: u32, chunk: &RowChunk) -> io::Result<()> {
        let start = index as usize * ROWS_PER_CHUNK;
        if self.rows.len() < start + ROWS_PER_CHUNK {
            self.rows
                .resize(start + ROWS_PER_CHUNK, UnwindRow::default());
        }
        self.rows[start..start + ROWS_PER_CHUNK].copy_from_slice(&chunk.rows);
        Ok(())
    }

    fn write_page_chunk(&mut self, _index: u32, _chunk: &PageChunk) -> io::Result<()> {
        Ok(())
    }

    fn write_mappings(&mut self, pid: u32, mappings: &NativeMappings) -> io::Result<()> {
        let n = (mappings.len as usize).min(mappings.mappings.len());
        self.mappings.insert(pid, mappings.mappings[..n].to_vec());
        Ok(())
    }

    fn unmapped(&self) -> u64 {
        0
    }
}

impl LocalMaps {
    /// `pid`'s mappings (sorted by start) and the row array they point into.
    pub fn tables(&self, pid: u32) -> Tables<'_> {
        Tables {
            mappings: self.mappings.get(&pid).map_or(&[], Vec::as_slice),
            rows: &self.rows,
        }
    }
}

/// One process's unwind tables, as the kernel sees them.
#[derive(Clone, Copy, Debug)]
pub struct Tables<'a> {
    /// Sorted by `start`.
    pub mappings: &'a [NativeMapping],
    pub rows: &'a [UnwindRow],
}

impl Tables<'_> {
    fn mapping(&self, pc: u64) -> Option<&NativeMapping> {
        let i = self.mappings.partition_point(|m| m.start <= pc);
        let m = self.mappings.get(i.checked_sub(1)?)?;
        (pc < m.end).then_some(m)
    }

    /// The row covering `lookup` in `m`'s table, or the stop reason.
    fn row(&self, m: &NativeMapping, lookup: u64) -> Result<Option<UnwindRow>, Stat> {
        if m.rows_len == 0 {
            // No table: the frame pointer chain.
            return Ok(None);
        }
        let rel = u32::try_from(lookup.wrapping_sub(m.bias)).map_err(|_| Stat::NativeNoRow)?;
        let start = m.rows_start as usize;
        let table = self
            .rows
            .get(start..start + m.rows_len as usize)
            .ok_or(Stat::NativeNoRow)?;
        cfi::lookup(table, rel)
            .copied()
            .map(Some)
            .ok_or(Stat::NativeNoRow)
    }
}

/// A thread's native stack: instruction pointers leaf first, and how the unwind ended (a
/// `Stat::Native*`, as the kernel records it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NativeStack {
    pub pcs: Vec<u64>,
    pub end: Stat,
}

/// Unwinds from the registers (`rip`, `rsp`, `rbp`) as the kernel does: the frame's pc is
/// recorded, its mapping and row found (a return address is looked up one byte back, at the
/// call), and `unwind_step` gives the caller's registers, until a row says the frame is the
/// outermost, something is missing, or `MAX_NATIVE_FRAMES` are recorded.
pub fn unwind(
    tables: Tables<'_>,
    (rip, rsp, rbp): (u64, u64, u64),
    mem: &impl ProcessMemory,
) -> NativeStack {
    let (mut pc, mut rsp, mut rbp) = (rip, rsp, rbp);
    let mut pcs = Vec::new();
    let end = loop {
        if pcs.len() >= MAX_NATIVE_FRAMES {
            break Stat::NativeTruncated;
        }
        let first = pcs.is_empty();
        pcs.push(pc);
        if pc == 0 {
            break Stat::NativeComplete;
        }
        let lookup = if first { pc } else { pc - 1 };
        let step = tables
            .mapping(lookup)
            .ok_or(Stat::NativeNoMapping)
            .and_then(|m| tables.row(m, lookup))
            .and_then(|row| unwind_step(row, pc, rsp, rbp, |addr| mem.read_u64(addr).ok()));
        match step {
            Ok((ra, cfa, new_rbp)) => (pc, rsp, rbp) = (ra, cfa, new_rbp),
            Err(end) => break end,
        }
    };
    NativeStack { pcs, end }
}

#[cfg(test)]
mod tests {
    use profiler_common::row_kind;

    use super::*;
    use crate::process::LocalMemory;

    const STACK: u64 = 0x7000_0000;

    fn row(pc: u32, kind: u8, cfa_offset: u16, rbp_offset: i8) -> UnwindRow {
        UnwindRow {
            pc,
            cfa_offset,
            kind,
            rbp_offset,
        }
    }

    fn mapping(start: u64, end: u64, bias: u64, rows_start: u32, rows_len: u32) -> NativeMapping {
        NativeMapping {
            start,
            end,
            bias,
            rows_start,
            rows_len,
            ..NativeMapping::default()
        }
    }

    /// A stack of four frames built by hand in a local buffer, over two files with tables and
    /// one without (frame pointers), ending at an `END` row:
    ///
    /// leaf in lib A at 0x1010 (CFA = rsp + 16, rbp untouched) -> lib A 0x1105 (CFA = rbp + 16,
    /// rbp saved at CFA - 16) -> no-table file 0x2_0050 (frame pointers) -> lib B PLT entry ->
    /// lib B 0x3_0200 (`END`).
    #[test]
    fn unwinds_a_hand_built_stack_like_the_kernel() {
        let (a, b, fp) = (0x1000_0000u64, 0x3000_0000u64, 0x2000_0000u64);
        let rows = vec![
            // lib A (bias a - 0x0): rows 0..4
            row(0x1000, row_kind::CFA_RSP, 2, 0),
            row(0x1100, row_kind::CFA_RBP, 2, -2),
            row(0x1200, row_kind::NONE, 0, 0),
            row(0x1300, row_kind::UNSUPPORTED, 0, 0),
            // lib B: rows 4..7
            row(0x3_0000, row_kind::PLT, 1, 0),
            row(0x3_0100, row_kind::CFA_RSP, 1, 0),
            row(0x3_0200, row_kind::END, 0, 0),
        ];
        let mappings = vec![
            mapping(a + 0x1000, a + 0x2000, a, 0, 4),
            mapping(fp + 0x2_0000, fp + 0x3_0000, fp, 0, 0),
            mapping(b + 0x3_0000, b + 0x4_0000, b, 4, 3),
        ];
        let tables = Tables {
            mappings: &mappings,
            rows: &rows,
        };
        let mut stack = vec![0u8; 0x200];
        let mut word = |addr: u64, v: u64| {
            let i = (addr - STACK) as usize;
            stack[i..i + 8].copy_from_slice(&v.to_le_bytes());
        };
        // Frame 0 (leaf, A+0x1010): rsp = STACK, CFA = STACK + 16, return address at +8.
        word(STACK + 8, a + 0x1105);
        // Frame 1 (A+0x1105, CFA = rbp + 16): rbp = STACK + 0x20, so CFA = STACK + 0x30;
        // return address at 0x28, caller's rbp at CFA - 16 = 0x20.
        word(STACK + 0x28, fp + 0x2_0050);
        word(STACK + 0x20, STACK + 0x60);
        // Frame 2 (no table): CFA = rbp + 16 = 0x70; return address at 0x68 (into B's PLT
        // entry, 11+ bytes in: it has pushed once more), caller's rbp at 0x60.
        word(STACK + 0x68, b + 0x3_001c);
        word(STACK + 0x60, STACK + 0x100);
        // Frame 3 (the PLT row; the pc's low bits are 12, past the push at 11: CFA = rsp + 8 +
        // 8 = 0x80): return address at 0x78.
        word(STACK + 0x78, b + 0x3_0201);
        let mem = LocalMemory {
            base: STACK,
            bytes: stack,
        };
        let got = unwind(tables, (a + 0x1010, STACK, STACK + 0x20), &mem);
        assert_eq!(
            got,
            NativeStack {
                pcs: vec![
                    a + 0x1010,
                    a + 0x1105,
                    fp + 0x2_0050,
                    b + 0x3_001c,
                    b + 0x3_0201
                ],
                end: Stat::NativeComplete,
            }
        );

        // The stop reasons, each as the kernel counts it.
        let end = |rip, rsp, rbp| unwind(tables, (rip, rsp, rbp), &mem).end;
        assert_eq!(end(a + 0x1210, STACK, 0), Stat::NativeNoRow);
        assert_eq!(end(a + 0x1310, STACK, 0), Stat::NativeUnsupported);
        assert_eq!(end(0x5000, STACK, 0), Stat::NativeNoMapping);
        // rbp below rsp: the CFA would not be above the stack pointer.
        assert_eq!(end(a + 0x1105, STACK + 0x40, STACK), Stat::NativeBadFrame);
        // Outside the copied stack.
        assert_eq!(end(a + 0x1010, STACK + 0x1000, 0), Stat::NativeReadFault);
    }

    #[test]
    fn a_self_referencing_frame_pointer_chain_stops() {
        let mappings = vec![mapping(0x1000, 0x2000, 0, 0, 0)];
        let tables = Tables {
            mappings: &mappings,
            rows: &[],
        };
        // rbp points at itself: the CFA does not grow, so the walk stops on the next frame.
        let mut stack = vec![0u8; 0x40];
        stack[0..8].copy_from_slice(&STACK.to_le_bytes());
        stack[8..16].copy_from_slice(&0x1500u64.to_le_bytes());
        let mem = LocalMemory {
            base: STACK,
            bytes: stack,
        };
        let got = unwind(tables, (0x1100, STACK - 8, STACK), &mem);
        assert_eq!(got.pcs, vec![0x1100, 0x1500]);
        assert_eq!(got.end, Stat::NativeBadFrame);
    }

    #[test]
    fn local_maps_hold_what_the_kernel_would() {
        let mut maps = LocalMaps::default();
        let mut chunk = Box::new(RowChunk {
            rows: [UnwindRow::default(); ROWS_PER_CHUNK],
        });
        chunk.rows[0] = row(0x10, row_kind::CFA_RSP, 1, 0);
        maps.write_chunk(1, &chunk).unwrap();
        let mut value = Box::new(NativeMappings {
            len: 1,
            generation: 1,
            mappings: [NativeMapping::default(); profiler_common::MAX_MAPPINGS],
        });
        value.mappings[0] = mapping(0x1000, 0x2000, 0x1000, ROWS_PER_CHUNK as u32, 1);
        maps.write_mappings(9, &value).unwrap();
        let t = maps.tables(9);
        assert_eq!(t.mappings.len(), 1);
        assert_eq!(
            t.row(&t.mappings[0], 0x1010),
            Ok(Some(row(0x10, row_kind::CFA_RSP, 1, 0)))
        );
        assert!(maps.tables(10).mappings.is_empty());
    }
}
