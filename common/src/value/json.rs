//! The JSON Directus's REST API returns for one column value (the pg driver's default parsers plus
//! Directus's `processDates` and `special` casts), written straight into a byte buffer, and JavaScript's
//! number and string formatting.

use super::pgtext::{
    ArrayItem, INFINITY_MICROS, MICROS_PER_DAY, NEG_INFINITY_MICROS, format_date, format_datetime,
    format_iso_utc, parse_array_literal, parse_date, parse_timestamp,
};
use super::{Kind, Special};
use serde_json::Value as Json;
use std::fmt::Write as _;

/// Append the Directus JSON for one column value (`None` = SQL NULL) to `out`.
pub fn write_json_value(out: &mut Vec<u8>, kind: &Kind, special: Special, text: Option<&str>) {
    let Some(text) = text else {
        out.extend_from_slice(b"null");
        return;
    };
    if special.conceal {
        out.extend_from_slice(b"\"**********\"");
        return;
    }
    if special.cast_csv
        && matches!(
            kind,
            Kind::Text | Kind::Varchar | Kind::Bpchar | Kind::Other
        )
    {
        // Directus splits on ',' without trimming; '' is [].
        out.push(b'[');
        if !text.is_empty() {
            for (i, part) in text.split(',').enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json_string(out, part);
            }
        }
        out.push(b']');
        return;
    }
    if special.cast_json
        && matches!(
            kind,
            Kind::Text | Kind::Varchar | Kind::Bpchar | Kind::Other
        )
    {
        match serde_json::from_str::<Json>(text) {
            Ok(v) => serde_json::to_writer(&mut *out, &v).expect("writing to a Vec cannot fail"),
            Err(_) => write_json_string(out, text),
        }
        return;
    }
    if special.cast_boolean {
        match text {
            "t" | "true" | "1" => out.extend_from_slice(b"true"),
            "f" | "false" | "0" => out.extend_from_slice(b"false"),
            "" => out.extend_from_slice(b"null"),
            _ => write_json_string(out, text),
        }
        return;
    }
    write_plain(out, kind, text);
}

fn write_plain(out: &mut Vec<u8>, kind: &Kind, text: &str) {
    match kind {
        Kind::Bool => out.extend_from_slice(if text == "t" || text == "true" {
            b"true"
        } else {
            b"false"
        }),
        Kind::Int2 | Kind::Int4 => write_js_number(out, text),
        Kind::Float4 | Kind::Float8 => write_js_number(out, text),
        Kind::Int8 | Kind::Numeric => write_json_string(out, text),
        Kind::Json | Kind::Jsonb => match serde_json::from_str::<Json>(text) {
            // Re-serialise compactly, as JSON.stringify(JSON.parse(text)) would.
            Ok(v) => serde_json::to_writer(&mut *out, &v).expect("writing to a Vec cannot fail"),
            Err(_) => write_json_string(out, text),
        },
        Kind::Date => match parse_date(text) {
            Some(d) if d != i32::MAX && d != i32::MIN => write_json_string(out, &format_date(d)),
            _ => out.extend_from_slice(b"null"),
        },
        Kind::Timestamp => match parse_timestamp(text, false) {
            Some(us) if us != INFINITY_MICROS && us != NEG_INFINITY_MICROS => {
                write_json_string(out, &format_datetime(us))
            }
            _ => out.extend_from_slice(b"null"),
        },
        Kind::TimestampTz => match parse_timestamp(text, true) {
            Some(us) if us != INFINITY_MICROS && us != NEG_INFINITY_MICROS => {
                write_json_string(out, &format_iso_utc(us))
            }
            _ => out.extend_from_slice(b"null"),
        },
        Kind::Bytea => write_bytea(out, text),
        Kind::Array(elem) => write_array(out, elem, text),
        Kind::Text
        | Kind::Varchar
        | Kind::Bpchar
        | Kind::Uuid
        | Kind::Time
        | Kind::TimeTz
        | Kind::Other => write_json_string(out, text),
    }
}

/// A number the way `JSON.stringify(parseFloat(text))` writes it: NaN and infinities become `null`.
fn write_js_number(out: &mut Vec<u8>, text: &str) {
    match text.parse::<f64>() {
        Ok(f) if f.is_finite() => write_js_f64(out, f),
        _ => out.extend_from_slice(b"null"),
    }
}

/// JavaScript's Number-to-string for finite values: integers without a fraction, shortest round-trip
/// digits otherwise, exponent form outside [1e-7, 1e21).
pub fn write_js_f64(out: &mut Vec<u8>, f: f64) {
    if f == 0.0 {
        out.push(b'0');
        return;
    }
    let abs = f.abs();
    if !(1e-6..1e21).contains(&abs) {
        // ryu-style shortest digits, then JS exponent formatting: 1e+21, 1.5e-7
        let s = format!("{:e}", f);
        let (mantissa, exp) = s.split_once('e').expect("exponent form");
        out.extend_from_slice(mantissa.as_bytes());
        out.push(b'e');
        if !exp.starts_with('-') {
            out.push(b'+');
        }
        out.extend_from_slice(exp.as_bytes());
    } else if f.fract() == 0.0 && abs < 9.007_199_254_740_992e15 {
        let _ = write!(VecWriter(out), "{}", f as i64);
    } else {
        let _ = write!(VecWriter(out), "{}", f);
    }
}

struct VecWriter<'a>(&'a mut Vec<u8>);
impl std::fmt::Write for VecWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Append a JSON string literal.
pub fn write_json_string(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
}

fn write_bytea(out: &mut Vec<u8>, text: &str) {
    // pg's parser gives a Node Buffer, which JSON.stringify writes as {"type":"Buffer","data":[...]}.
    out.extend_from_slice(b"{\"type\":\"Buffer\",\"data\":[");
    if let Some(hex) = text.strip_prefix("\\x") {
        let bytes = hex.as_bytes();
        let mut first = true;
        for pair in bytes.chunks(2) {
            if pair.len() != 2 {
                break;
            }
            let hi = (pair[0] as char).to_digit(16);
            let lo = (pair[1] as char).to_digit(16);
            if let (Some(hi), Some(lo)) = (hi, lo) {
                if !first {
                    out.push(b',');
                }
                first = false;
                let _ = write!(VecWriter(out), "{}", hi * 16 + lo);
            }
        }
    }
    out.extend_from_slice(b"]}");
}

/// Arrays: pg's default parsers per element type, then JSON.stringify.
fn write_array(out: &mut Vec<u8>, elem: &Kind, text: &str) {
    let Some(items) = parse_array_literal(text) else {
        write_json_string(out, text);
        return;
    };
    write_array_items(out, elem, &items);
}

fn write_array_items(out: &mut Vec<u8>, elem: &Kind, items: &[ArrayItem]) {
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match item {
            ArrayItem::Null => out.extend_from_slice(b"null"),
            ArrayItem::Nested(inner) => write_array_items(out, elem, inner),
            ArrayItem::Value(v) => match elem {
                Kind::Int2 | Kind::Int4 | Kind::Float4 | Kind::Float8 | Kind::Numeric => {
                    write_js_number(out, v)
                }
                Kind::Bool => out.extend_from_slice(if v == "t" { b"true" } else { b"false" }),
                Kind::Json | Kind::Jsonb => write_plain(out, elem, v),
                // date[] / timestamp[] elements become JS Dates (server time zone UTC) and serialise as ISO.
                Kind::Date => match parse_date(v) {
                    Some(d) if d != i32::MAX && d != i32::MIN => {
                        write_json_string(out, &format_iso_utc(d as i64 * MICROS_PER_DAY))
                    }
                    _ => out.extend_from_slice(b"null"),
                },
                Kind::Timestamp | Kind::TimestampTz => {
                    match parse_timestamp(v, *elem == Kind::TimestampTz) {
                        Some(us) if us != INFINITY_MICROS && us != NEG_INFINITY_MICROS => {
                            write_json_string(out, &format_iso_utc(us))
                        }
                        _ => out.extend_from_slice(b"null"),
                    }
                }
                _ => write_json_string(out, v),
            },
        }
    }
    out.push(b']');
}
