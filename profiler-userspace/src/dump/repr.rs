//! A local's value as `dump` prints it: like Python's `repr` for the types it reads (None,
//! bools, ints, floats, strings, bytes), a type and length for containers, a type and address
//! for anything else. Pure: a `Value` in, text out.

use std::fmt::Write as _;

use crate::python::locals::Value;

pub fn repr(value: &Value) -> String {
    match value {
        Value::None => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Int { negative, digits } => {
            let sign = if *negative && digits.iter().any(|&d| d != 0) {
                "-"
            } else {
                ""
            };
            format!("{sign}{}", decimal(digits))
        }
        Value::LargeInt { negative, digits } => {
            let sign = if *negative { "-" } else { "" };
            format!("<int, {sign}{} bits>", digits * 30)
        }
        Value::Float(x) => float(*x),
        Value::Str { prefix, chars } => {
            let mut out = quoted(prefix);
            if *chars > prefix.chars().count() as u64 {
                let _ = write!(out, "... ({chars} characters)");
            }
            out
        }
        Value::Bytes { prefix, len } => {
            let mut out = bytes(prefix);
            if *len > prefix.len() as u64 {
                let _ = write!(out, "... ({len} bytes)");
            }
            out
        }
        Value::Sized { type_name, len } => format!("<{type_name}, len {len}>"),
        Value::Object { type_name, address } => format!("<{type_name} object at {address:#x}>"),
        Value::Unreadable(why) => format!("[unreadable: {why}]"),
    }
}

/// The decimal digits of a magnitude held in 30-bit digits, least significant first.
fn decimal(digits: &[u32]) -> String {
    const BASE: u64 = 1_000_000_000;
    // Most significant first, for long division by 10^9.
    let mut n: Vec<u32> = digits.iter().rev().copied().collect();
    let mut chunks = Vec::new();
    while n.iter().any(|&d| d != 0) {
        let mut rem = 0u64;
        for d in n.iter_mut() {
            let cur = (rem << 30) | *d as u64;
            *d = (cur / BASE) as u32;
            rem = cur % BASE;
        }
        chunks.push(rem as u32);
    }
    match chunks.split_last() {
        None => "0".into(),
        Some((top, rest)) => {
            let mut out = top.to_string();
            for c in rest.iter().rev() {
                let _ = write!(out, "{c:09}");
            }
            out
        }
    }
}

/// A float as Python's `repr` writes it: the shortest digits that read back the same, fixed
/// point for exponents from -4 up to 15, else scientific with a signed two-digit exponent.
fn float(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    // `{:e}` writes the shortest round-trip digits: `-1.2345e-5`.
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    let sign = if x.is_sign_negative() { "-" } else { "" };
    let point = exp + 1; // digits before the decimal point
    let body = if (-3..=16).contains(&point) {
        let n = digits.len() as i32;
        if point <= 0 {
            format!("0.{}{digits}", "0".repeat((-point) as usize))
        } else if point >= n {
            format!("{digits}{}.0", "0".repeat((point - n) as usize))
        } else {
            let (int, frac) = digits.split_at(point as usize);
            format!("{int}.{frac}")
        }
    } else {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{first}{frac}e{esign}{:02}", exp.abs())
    };
    format!("{sign}{body}")
}

/// A string in single quotes, escaped as Python's `repr` escapes it.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Bytes as Python's `repr` writes them: `b'...'`, printable ASCII as is.
fn bytes(b: &[u8]) -> String {
    let mut out = String::from("b'");
    for &c in b {
        match c {
            b'\'' => out.push_str("\\'"),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x20..=0x7e => out.push(c as char),
            c => {
                let _ = write!(out, "\\x{c:02x}");
            }
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(n: i128) -> Value {
        let mut m = n.unsigned_abs();
        let mut digits = Vec::new();
        while m != 0 {
            digits.push((m & ((1 << 30) - 1)) as u32);
            m >>= 30;
        }
        Value::Int {
            negative: n < 0,
            digits,
        }
    }

    #[test]
    fn ints_in_decimal() {
        for n in [
            0i128,
            7,
            -7,
            1 << 30,
            (1 << 30) - 1,
            1_000_000_000,
            999_999_999,
            -1_234_567_890_123_456_789,
            i128::MAX,
            i128::MIN + 1,
        ] {
            assert_eq!(repr(&int(n)), n.to_string());
        }
        assert_eq!(
            repr(&Value::LargeInt {
                negative: true,
                digits: 40
            }),
            "<int, -1200 bits>"
        );
    }

    /// As CPython's `repr(float)` writes them.
    #[test]
    fn floats_like_python() {
        for (x, want) in [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (0.5, "0.5"),
            (3.25, "3.25"),
            (0.1, "0.1"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (123456789012345678.0, "1.2345678901234568e+17"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (-2.5e300, "-2.5e+300"),
            (100.0, "100.0"),
            (f64::INFINITY, "inf"),
            (f64::NAN, "nan"),
        ] {
            assert_eq!(repr(&Value::Float(x)), want, "{x:?}");
        }
    }

    #[test]
    fn strings_and_bytes_escaped_and_cut() {
        let s = |prefix: &str, chars| Value::Str {
            prefix: prefix.into(),
            chars,
        };
        assert_eq!(repr(&s("it's\n", 5)), r"'it\'s\n'");
        assert_eq!(repr(&s("größe", 5)), "'größe'");
        assert_eq!(repr(&s("abc", 1000)), "'abc'... (1000 characters)");
        let b = Value::Bytes {
            prefix: b"a\x00\xff'".to_vec(),
            len: 4,
        };
        assert_eq!(repr(&b), r"b'a\x00\xff\''");
        assert_eq!(
            repr(&Value::Sized {
                type_name: "dict".into(),
                len: 2
            }),
            "<dict, len 2>"
        );
        assert_eq!(
            repr(&Value::Object {
                type_name: "Point".into(),
                address: 0x7f00
            }),
            "<Point object at 0x7f00>"
        );
        assert_eq!(repr(&Value::None), "None");
        assert_eq!(repr(&Value::Bool(true)), "True");
    }
}
