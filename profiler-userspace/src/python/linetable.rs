//! Line numbers from a code object's line table, in each format CPython has used. Pure
//! functions over bytes read from the target; callers cache the results.

/// The line table formats, by the version that introduced them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineTableFormat {
    /// `co_lnotab` (up to 3.9): (byte increment, signed line increment) pairs.
    Lnotab,
    /// `co_linetable` in 3.10: (byte length, signed line delta) pairs, -128 for "no line".
    Linetable310,
    /// `co_linetable` from 3.11: the location table of Objects/locations.md, in code units.
    Locations,
}

/// The line of the instruction at byte offset `addr` in the bytecode, or `None` where the table
/// says the instruction has no line (or the offset is outside the table).
pub fn line_for(format: LineTableFormat, table: &[u8], firstlineno: u32, addr: u32) -> Option<u32> {
    match format {
        LineTableFormat::Lnotab => Some(lnotab(table, firstlineno, addr)),
        LineTableFormat::Linetable310 => linetable_310(table, firstlineno, addr),
        LineTableFormat::Locations => locations(table, firstlineno, addr / 2),
    }
}

fn lnotab(table: &[u8], firstlineno: u32, addr: u32) -> u32 {
    let mut line = firstlineno as i64;
    let mut at = 0u32;
    for pair in table.chunks_exact(2) {
        at += pair[0] as u32;
        if at > addr {
            break;
        }
        line += pair[1] as i8 as i64;
    }
    line.max(0) as u32
}

fn linetable_310(table: &[u8], firstlineno: u32, addr: u32) -> Option<u32> {
    let mut line = firstlineno as i64;
    let mut start = 0u32;
    for pair in table.chunks_exact(2) {
        let end = start + pair[0] as u32;
        let delta = pair[1] as i8;
        let current = if delta == -128 {
            None
        } else {
            line += delta as i64;
            Some(line.max(0) as u32)
        };
        if (start..end).contains(&addr) {
            return current;
        }
        start = end;
    }
    None
}

/// The 3.11+ location table; `unit` counts 2-byte code units.
fn locations(table: &[u8], firstlineno: u32, unit: u32) -> Option<u32> {
    let mut bytes = table.iter().copied();
    let mut line = firstlineno as i64;
    let mut start = 0u32;
    while let Some(first) = bytes.next() {
        if first & 0x80 == 0 {
            return None; // Not at an entry start: the table is corrupt.
        }
        let code = (first >> 3) & 15;
        let len = (first & 7) as u32 + 1;
        let delta = match code {
            15 => None, // no location
            14 => {
                let d = signed_varint(&mut bytes)?;
                for _ in 0..3 {
                    varint(&mut bytes)?; // end line delta, column + 1, end column + 1
                }
                Some(d)
            }
            13 => Some(signed_varint(&mut bytes)?), // no columns
            10..=12 => {
                bytes.nth(1)?; // column, end column
                Some((code - 10) as i64)
            }
            _ => {
                bytes.next()?; // short form: column bits
                Some(0)
            }
        };
        if let Some(d) = delta {
            line += d;
        }
        if (start..start + len).contains(&unit) {
            return delta.map(|_| line.max(0) as u32);
        }
        start += len;
    }
    None
}

fn varint(bytes: &mut impl Iterator<Item = u8>) -> Option<u64> {
    let mut b = bytes.next()?;
    let mut value = (b & 63) as u64;
    let mut shift = 6;
    while b & 64 != 0 && shift < 64 {
        b = bytes.next()?;
        value |= ((b & 63) as u64) << shift;
        shift += 6;
    }
    Some(value)
}

fn signed_varint(bytes: &mut impl Iterator<Item = u8>) -> Option<i64> {
    let v = varint(bytes)?;
    Some(if v & 1 != 0 {
        -((v >> 1) as i64)
    } else {
        (v >> 1) as i64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // `f.__code__.co_linetable` and `[p[0] for p in co_positions()]` (one line per code unit)
    // from real interpreters, for a loop with an if/else (def on line 2).
    const TABLE_3_11: &[u8] = &[
        128, 0, 216, 12, 13, 128, 69, 221, 13, 18, 144, 49, 137, 88, 140, 88, 240, 0, 4, 5, 23,
        240, 0, 4, 5, 23, 136, 1, 216, 11, 12, 136, 113, 137, 53, 144, 65, 138, 58, 136, 58, 216,
        12, 17, 144, 81, 137, 74, 136, 69, 136, 69, 224, 12, 17, 144, 81, 137, 74, 136, 69, 136,
        69, 216, 11, 16, 128, 76,
    ];
    const LINES_3_11: &[u32] = &[
        2, 3, 3, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5, 5, 6,
        6, 6, 6, 6, 6, 8, 8, 8, 8, 8, 8, 9, 9,
    ];
    const TABLE_3_12: &[u8] = &[
        128, 0, 216, 12, 13, 128, 69, 220, 13, 18, 144, 49, 139, 88, 242, 0, 4, 5, 23, 136, 1, 216,
        11, 12, 136, 113, 137, 53, 144, 65, 138, 58, 216, 12, 17, 144, 81, 137, 74, 137, 69, 224,
        12, 17, 144, 81, 137, 74, 137, 69, 240, 9, 4, 5, 23, 240, 10, 0, 12, 17, 128, 76,
    ];
    const LINES_3_12: &[u32] = &[
        2, 3, 3, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5, 6, 6, 6, 6, 6,
        6, 8, 8, 8, 8, 8, 8, 4, 9, 9,
    ];

    #[test]
    fn location_tables_match_co_positions() {
        for (table, lines) in [(TABLE_3_11, LINES_3_11), (TABLE_3_12, LINES_3_12)] {
            for (unit, &want) in lines.iter().enumerate() {
                let got = line_for(LineTableFormat::Locations, table, 2, unit as u32 * 2);
                assert_eq!(got, Some(want), "code unit {unit}");
            }
            let past = lines.len() as u32 * 2;
            assert_eq!(line_for(LineTableFormat::Locations, table, 2, past), None);
        }
    }

    /// A table read from the wrong place (here one byte into 3.12's) does not start at an entry
    /// (the first byte's top bit is clear): no line, rather than lines decoded from garbage.
    #[test]
    fn a_table_not_at_an_entry_start_gives_no_line() {
        let misaligned = &TABLE_3_12[1..];
        assert_eq!(misaligned[0] & 0x80, 0);
        for unit in 0..LINES_3_12.len() as u32 {
            assert_eq!(
                line_for(LineTableFormat::Locations, misaligned, 2, unit * 2),
                None,
                "code unit {unit}"
            );
        }
    }

    #[test]
    fn location_table_long_and_no_location_entries() {
        // Long form (code 14): line delta +300 (svarint 600 = 0b1001011000: 24 | 64, 9),
        // end line 0, columns 1 and 2; then one unit with no location (code 15).
        let table = [0x80 | 14 << 3, 24 | 64, 9, 0, 1, 2, 0x80 | 15 << 3];
        assert_eq!(
            line_for(LineTableFormat::Locations, &table, 10, 0),
            Some(310)
        );
        assert_eq!(line_for(LineTableFormat::Locations, &table, 10, 2), None);
        // A delta of three varint bytes (a function thousands of lines long, as generated code
        // has): +5000 is svarint 10000 = 16 | 28 << 6 | 2 << 12.
        let table = [0x80 | 14 << 3, 16 | 64, 28 | 64, 2, 0, 1, 2];
        assert_eq!(
            line_for(LineTableFormat::Locations, &table, 10, 0),
            Some(5010)
        );
        // A no-location entry is the one byte: the entry after it (one-line form, +1, columns 1
        // and 2) decodes from the next byte.
        let table = [0x80 | 15 << 3, 0x80 | 11 << 3, 1, 2];
        assert_eq!(line_for(LineTableFormat::Locations, &table, 10, 0), None);
        assert_eq!(
            line_for(LineTableFormat::Locations, &table, 10, 2),
            Some(11)
        );
        // No-columns form (code 13) with a negative delta: svarint 3 = -1.
        let table = [0x80 | 13 << 3 | 1, 3];
        assert_eq!(line_for(LineTableFormat::Locations, &table, 10, 2), Some(9));
    }

    #[test]
    fn linetable_310_ranges_and_missing_lines() {
        // bytes 0-5 on line 1 (+0), 6-9 on line 3 (+2), 10-11 none, 12-19 on line 2 (-1).
        let table = [6, 0, 4, 2, 2, 0x80, 8, 0xff];
        let at = |addr| line_for(LineTableFormat::Linetable310, &table, 1, addr);
        assert_eq!(
            (at(0), at(5), at(6), at(9)),
            (Some(1), Some(1), Some(3), Some(3))
        );
        assert_eq!(
            (at(10), at(12), at(19), at(20)),
            (None, Some(2), Some(2), None)
        );
    }

    #[test]
    fn lnotab_increments() {
        // Python 3.8: +6 bytes -> +1 line, +8 bytes -> +2 lines, +4 bytes -> -1 line.
        let table = [6, 1, 8, 2, 4, 0xff];
        for (addr, want) in [
            (0, 10),
            (5, 10),
            (6, 11),
            (13, 11),
            (14, 13),
            (18, 12),
            (100, 12),
        ] {
            assert_eq!(
                line_for(LineTableFormat::Lnotab, &table, 10, addr),
                Some(want),
                "byte {addr}"
            );
        }
    }
}
