//! PostgreSQL column types, typed datums, and the JSON Directus's REST API returns for each type.
//!
//! Both paths that produce item JSON go through this module: the gateway's init snapshots (which select
//! every column as `::text`) and the capture pipeline (pgoutput sends text-format values). So a row reads
//! the same whether it arrived in an `init` or in an event.
//!
//! Encoding rules (Directus 11 on PostgreSQL; the pg driver's default parsers plus Directus's
//! `processDates`): int2/int4/float → numbers; int8 and numeric → strings (exactly PostgreSQL's text, scale
//! kept); timestamptz → `YYYY-MM-DDTHH:MM:SS.sssZ`; timestamp → `YYYY-MM-DDTHH:MM:SS`; date →
//! `YYYY-MM-DD`; time/timetz → PostgreSQL's text; json/jsonb → parsed; arrays → JSON arrays; everything else
//! → its text.
//!
//! The connection that produced the text must use `DateStyle=ISO` and `TimeZone=UTC` (both readers set
//! them); [`parse_datum`] rejects anything else rather than guessing.

use serde_json::Value as Json;
use std::cmp::Ordering;
use std::fmt::Write as _;

/// The kind of a column, as far as encoding and comparison care.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Numeric,
    /// text, name, citext, "char" (Directus type `text`)
    Text,
    /// varchar (Directus type `string`); otherwise identical to `Text`
    Varchar,
    /// char(n): blank-padded on output, padding insignificant in comparisons.
    Bpchar,
    Uuid,
    Json,
    Jsonb,
    Date,
    Time,
    TimeTz,
    Timestamp,
    TimestampTz,
    Bytea,
    Array(Box<Kind>),
    /// Enums, intervals, network types, ...: compared and encoded as their text.
    Other,
}

impl Kind {
    /// Kind from a built-in type OID. Non-built-in OIDs (enums, domains, extension types) need a catalog
    /// lookup: use [`Kind::from_type_name`] on the base type's name.
    pub fn from_oid(oid: u32) -> Option<Kind> {
        Some(match oid {
            16 => Kind::Bool,
            17 => Kind::Bytea,
            18 | 19 | 25 => Kind::Text,
            1043 => Kind::Varchar,
            20 | 26 => Kind::Int8,
            21 => Kind::Int2,
            23 => Kind::Int4,
            114 => Kind::Json,
            3802 => Kind::Jsonb,
            700 => Kind::Float4,
            701 => Kind::Float8,
            1042 => Kind::Bpchar,
            1082 => Kind::Date,
            1083 => Kind::Time,
            1114 => Kind::Timestamp,
            1184 => Kind::TimestampTz,
            1266 => Kind::TimeTz,
            1700 => Kind::Numeric,
            2950 => Kind::Uuid,
            1000 => Kind::Array(Box::new(Kind::Bool)),
            1001 => Kind::Array(Box::new(Kind::Bytea)),
            1002 | 1009 | 1015 | 1003 => Kind::Array(Box::new(Kind::Text)),
            1014 => Kind::Array(Box::new(Kind::Bpchar)),
            1005 => Kind::Array(Box::new(Kind::Int2)),
            1007 => Kind::Array(Box::new(Kind::Int4)),
            1016 | 1028 => Kind::Array(Box::new(Kind::Int8)),
            1021 => Kind::Array(Box::new(Kind::Float4)),
            1022 => Kind::Array(Box::new(Kind::Float8)),
            1231 => Kind::Array(Box::new(Kind::Numeric)),
            1182 => Kind::Array(Box::new(Kind::Date)),
            1183 => Kind::Array(Box::new(Kind::Time)),
            1115 => Kind::Array(Box::new(Kind::Timestamp)),
            1185 => Kind::Array(Box::new(Kind::TimestampTz)),
            1270 => Kind::Array(Box::new(Kind::TimeTz)),
            2951 => Kind::Array(Box::new(Kind::Uuid)),
            199 => Kind::Array(Box::new(Kind::Json)),
            3807 => Kind::Array(Box::new(Kind::Jsonb)),
            _ => return None,
        })
    }

    /// Kind from a (base) type name as in `pg_type.typname`. Array types are named `_elem`.
    pub fn from_type_name(name: &str) -> Kind {
        if let Some(elem) = name.strip_prefix('_') {
            return Kind::Array(Box::new(Kind::from_type_name(elem)));
        }
        match name {
            "bool" => Kind::Bool,
            "bytea" => Kind::Bytea,
            "char" | "name" | "text" | "citext" => Kind::Text,
            "varchar" => Kind::Varchar,
            "int8" | "oid" => Kind::Int8,
            "int2" => Kind::Int2,
            "int4" => Kind::Int4,
            "json" => Kind::Json,
            "jsonb" => Kind::Jsonb,
            "float4" => Kind::Float4,
            "float8" => Kind::Float8,
            "bpchar" => Kind::Bpchar,
            "date" => Kind::Date,
            "time" => Kind::Time,
            "timetz" => Kind::TimeTz,
            "timestamp" => Kind::Timestamp,
            "timestamptz" => Kind::TimestampTz,
            "numeric" => Kind::Numeric,
            "uuid" => Kind::Uuid,
            _ => Kind::Other,
        }
    }

    /// Kind from the catalog: the base type's `typname` and `typtype` (domains already resolved to their
    /// base type). Enums, ranges and composites compare as text.
    pub fn from_catalog(typname: &str, typtype: &str) -> Kind {
        if typtype == "b" {
            Kind::from_type_name(typname)
        } else {
            Kind::Other
        }
    }

    /// Directus's field type for this kind (`get-local-type.ts`); it decides the allowed filter operators.
    pub fn directus_type(&self) -> &'static str {
        match self {
            Kind::Bool => "boolean",
            Kind::Int2 | Kind::Int4 => "integer",
            Kind::Int8 => "bigInteger",
            Kind::Float4 | Kind::Float8 => "float",
            Kind::Numeric => "decimal",
            Kind::Text => "text",
            Kind::Varchar | Kind::Bpchar => "string",
            Kind::Uuid => "uuid",
            Kind::Json | Kind::Jsonb => "json",
            Kind::Date => "date",
            Kind::Time | Kind::TimeTz => "time",
            Kind::Timestamp => "dateTime",
            Kind::TimestampTz => "timestamp",
            Kind::Bytea | Kind::Array(_) | Kind::Other => "unknown",
        }
    }

    /// The SQL type a filter parameter is cast to when compared with a column of this kind.
    pub fn sql_cast(&self) -> &'static str {
        match self {
            Kind::Bool => "boolean",
            Kind::Int2 | Kind::Int4 | Kind::Int8 => "int8",
            Kind::Float4 | Kind::Float8 => "float8",
            Kind::Numeric => "numeric",
            Kind::Uuid => "uuid",
            Kind::Date => "date",
            Kind::Time => "time",
            Kind::Timestamp => "timestamp",
            Kind::TimestampTz => "timestamptz",
            _ => "text",
        }
    }

    pub fn is_integer(&self) -> bool {
        matches!(self, Kind::Int2 | Kind::Int4 | Kind::Int8)
    }
}

/// A decoded value, comparable with PostgreSQL's semantics for its kind.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Datum {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Numeric(Decimal),
    Text(String),
    Uuid(u128),
    /// Days since 1970-01-01 (proleptic Gregorian); ±infinity are `i32::MAX`/`i32::MIN`.
    Date(i32),
    /// Microseconds since midnight (`24:00:00` is allowed, as in PostgreSQL).
    Time(i64),
    /// Microseconds since 1970-01-01 00:00:00, wall clock.
    Timestamp(i64),
    /// Microseconds since the Unix epoch, UTC.
    TimestampTz(i64),
    Json(Json),
    /// Text of a value this module does not interpret (enums, intervals, arrays, ...).
    Other(String),
}

/// Why a text value could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} value {text:?}")]
pub struct ParseError {
    pub kind: &'static str,
    pub text: String,
}

fn perr(kind: &'static str, text: &str) -> ParseError {
    ParseError {
        kind,
        text: text.chars().take(64).collect(),
    }
}

pub const INFINITY_MICROS: i64 = i64::MAX;
pub const NEG_INFINITY_MICROS: i64 = i64::MIN;
const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Decode PostgreSQL's text output for a column of `kind`.
pub fn parse_datum(kind: &Kind, text: &str) -> Result<Datum, ParseError> {
    Ok(match kind {
        Kind::Bool => match text {
            "t" | "true" => Datum::Bool(true),
            "f" | "false" => Datum::Bool(false),
            _ => return Err(perr("boolean", text)),
        },
        Kind::Int2 | Kind::Int4 | Kind::Int8 => {
            Datum::Int(text.parse().map_err(|_| perr("integer", text))?)
        }
        Kind::Float4 => Datum::Float(parse_pg_float(text, true).ok_or_else(|| perr("real", text))?),
        Kind::Float8 => {
            Datum::Float(parse_pg_float(text, false).ok_or_else(|| perr("double", text))?)
        }
        Kind::Numeric => Datum::Numeric(Decimal::parse(text).ok_or_else(|| perr("numeric", text))?),
        Kind::Text | Kind::Varchar => Datum::Text(text.to_owned()),
        Kind::Bpchar => Datum::Text(text.trim_end_matches(' ').to_owned()),
        Kind::Uuid => Datum::Uuid(parse_uuid(text).ok_or_else(|| perr("uuid", text))?),
        Kind::Json | Kind::Jsonb => {
            Datum::Json(serde_json::from_str(text).map_err(|_| perr("json", text))?)
        }
        Kind::Date => Datum::Date(parse_date(text).ok_or_else(|| perr("date", text))?),
        Kind::Time => Datum::Time(parse_time(text).ok_or_else(|| perr("time", text))?),
        Kind::Timestamp => {
            Datum::Timestamp(parse_timestamp(text, false).ok_or_else(|| perr("timestamp", text))?)
        }
        Kind::TimestampTz => Datum::TimestampTz(
            parse_timestamp(text, true).ok_or_else(|| perr("timestamptz", text))?,
        ),
        Kind::TimeTz | Kind::Bytea | Kind::Array(_) | Kind::Other => Datum::Other(text.to_owned()),
    })
}

/// Optional per-column transforms that Directus applies from `directus_fields.special`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Special {
    pub cast_json: bool,
    pub cast_csv: bool,
    pub cast_boolean: bool,
    pub conceal: bool,
}

impl Special {
    pub fn from_csv(special: &str) -> Special {
        let mut s = Special::default();
        for flag in special.split(',').map(str::trim) {
            match flag {
                "cast-json" => s.cast_json = true,
                "cast-csv" => s.cast_csv = true,
                "cast-boolean" => s.cast_boolean = true,
                "conceal" => s.conceal = true,
                _ => {}
            }
        }
        s
    }

    pub fn is_empty(&self) -> bool {
        *self == Special::default()
    }
}

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

#[derive(Debug, PartialEq)]
enum ArrayItem {
    Null,
    Value(String),
    Nested(Vec<ArrayItem>),
}

/// Parse PostgreSQL's array output (`{a,"b c",NULL,{1,2}}`), optionally with a dimension prefix.
fn parse_array_literal(text: &str) -> Option<Vec<ArrayItem>> {
    let text = match text.find("={") {
        Some(pos) if text.starts_with('[') => &text[pos + 1..],
        _ => text,
    };
    let chars: Vec<char> = text.chars().collect();
    let mut pos = 0;
    let items = parse_array_level(&chars, &mut pos)?;
    (pos == chars.len()).then_some(items)
}

fn parse_array_level(chars: &[char], pos: &mut usize) -> Option<Vec<ArrayItem>> {
    if chars.get(*pos) != Some(&'{') {
        return None;
    }
    *pos += 1;
    let mut items = Vec::new();
    if chars.get(*pos) == Some(&'}') {
        *pos += 1;
        return Some(items);
    }
    loop {
        match chars.get(*pos)? {
            '{' => items.push(ArrayItem::Nested(parse_array_level(chars, pos)?)),
            '"' => {
                *pos += 1;
                let mut s = String::new();
                loop {
                    match chars.get(*pos)? {
                        '\\' => {
                            s.push(*chars.get(*pos + 1)?);
                            *pos += 2;
                        }
                        '"' => {
                            *pos += 1;
                            break;
                        }
                        c => {
                            s.push(*c);
                            *pos += 1;
                        }
                    }
                }
                items.push(ArrayItem::Value(s));
            }
            _ => {
                let start = *pos;
                while !matches!(chars.get(*pos), Some(',') | Some('}') | None) {
                    *pos += 1;
                }
                let s: String = chars[start..*pos].iter().collect();
                items.push(if s == "NULL" {
                    ArrayItem::Null
                } else {
                    ArrayItem::Value(s)
                });
            }
        }
        match chars.get(*pos)? {
            ',' => *pos += 1,
            '}' => {
                *pos += 1;
                return Some(items);
            }
            _ => return None,
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Numbers

fn parse_pg_float(text: &str, single: bool) -> Option<f64> {
    let v = match text {
        "NaN" => f64::NAN,
        "Infinity" => f64::INFINITY,
        "-Infinity" => f64::NEG_INFINITY,
        _ => {
            if single {
                // A real is promoted to double precision for comparisons, so keep its binary value.
                text.trim().parse::<f32>().ok()? as f64
            } else {
                text.trim().parse::<f64>().ok()?
            }
        }
    };
    Some(v)
}

/// PostgreSQL's float ordering: NaN equals NaN and sorts above everything; -0 equals 0.
pub fn cmp_float(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ => a.partial_cmp(&b).expect("no NaN here"),
    }
}

/// An exact decimal number (PostgreSQL `numeric`), kept as normalised digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Decimal {
    NegInfinity,
    /// `negative` is never set for zero. `int` has no leading zeros ("" for zero), `frac` no trailing zeros.
    Finite {
        negative: bool,
        int: String,
        frac: String,
    },
    Infinity,
    NaN,
}

impl Decimal {
    /// Parse a decimal literal (`-12.50`, `1e3`, `.5`, `NaN`, `Infinity`).
    pub fn parse(text: &str) -> Option<Decimal> {
        let t = text.trim();
        match t {
            "NaN" | "nan" | "NAN" => return Some(Decimal::NaN),
            "Infinity" | "+Infinity" | "infinity" | "inf" => return Some(Decimal::Infinity),
            "-Infinity" | "-infinity" | "-inf" => return Some(Decimal::NegInfinity),
            _ => {}
        }
        let (negative, rest) = match t.as_bytes().first()? {
            b'-' => (true, &t[1..]),
            b'+' => (false, &t[1..]),
            _ => (false, t),
        };
        let (mantissa, exp) = match rest.find(['e', 'E']) {
            Some(i) => (&rest[..i], rest[i + 1..].parse::<i32>().ok()?),
            None => (rest, 0),
        };
        if !(-100_000..=100_000).contains(&exp) {
            return None;
        }
        let (ip, fp) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if ip.is_empty() && fp.is_empty() {
            return None;
        }
        if !ip.bytes().all(|b| b.is_ascii_digit()) || !fp.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let mut digits: String = format!("{ip}{fp}");
        let mut point = ip.len() as i64 + exp as i64;
        if point < 0 {
            digits = "0".repeat((-point) as usize) + &digits;
            point = 0;
        }
        if point as usize > digits.len() {
            digits.push_str(&"0".repeat(point as usize - digits.len()));
        }
        let (i, f) = digits.split_at(point as usize);
        let int = i.trim_start_matches('0').to_owned();
        let frac = f.trim_end_matches('0').to_owned();
        let zero = int.is_empty() && frac.is_empty();
        Some(Decimal::Finite {
            negative: negative && !zero,
            int,
            frac,
        })
    }

    pub fn from_i64(v: i64) -> Decimal {
        Decimal::parse(&v.to_string()).expect("integers are decimals")
    }

    /// Canonical text, accepted by PostgreSQL's numeric input.
    pub fn to_text(&self) -> String {
        match self {
            Decimal::NaN => "NaN".into(),
            Decimal::Infinity => "Infinity".into(),
            Decimal::NegInfinity => "-Infinity".into(),
            Decimal::Finite {
                negative,
                int,
                frac,
            } => {
                let mut s = String::new();
                if *negative {
                    s.push('-');
                }
                s.push_str(if int.is_empty() { "0" } else { int });
                if !frac.is_empty() {
                    s.push('.');
                    s.push_str(frac);
                }
                s
            }
        }
    }

    fn rank(&self) -> u8 {
        match self {
            Decimal::NegInfinity => 0,
            Decimal::Finite { .. } => 1,
            Decimal::Infinity => 2,
            Decimal::NaN => 3,
        }
    }
}

impl Ord for Decimal {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (
                Decimal::Finite {
                    negative: an,
                    int: ai,
                    frac: af,
                },
                Decimal::Finite {
                    negative: bn,
                    int: bi,
                    frac: bf,
                },
            ) => {
                let magnitude = ai
                    .len()
                    .cmp(&bi.len())
                    .then_with(|| ai.cmp(bi))
                    .then_with(|| af.as_str().cmp(bf.as_str()));
                match (an, bn) {
                    (false, false) => magnitude,
                    (true, true) => magnitude.reverse(),
                    (true, false) => Ordering::Less,
                    (false, true) => Ordering::Greater,
                }
            }
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

// ---------------------------------------------------------------------------------------------------------
// UUIDs

/// Parse a UUID in any form PostgreSQL accepts (hyphens optional between groups of 4, braces, any case).
pub fn parse_uuid(text: &str) -> Option<u128> {
    let t = text.trim();
    let t = t
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or(t);
    let mut v: u128 = 0;
    let mut n = 0;
    let mut prev_hyphen = true;
    for (i, c) in t.chars().enumerate() {
        if c == '-' {
            // PostgreSQL allows a hyphen after any group of four digits.
            if prev_hyphen || n % 4 != 0 || i + 1 == t.len() {
                return None;
            }
            prev_hyphen = true;
            continue;
        }
        prev_hyphen = false;
        v = (v << 4) | c.to_digit(16)? as u128;
        n += 1;
        if n > 32 {
            return None;
        }
    }
    (n == 32).then_some(v)
}

pub fn format_uuid(v: u128) -> String {
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

// ---------------------------------------------------------------------------------------------------------
// Dates and times (proleptic Gregorian, as PostgreSQL)

/// Days since 1970-01-01 for a civil date (year 0 = 1 BC).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Civil date for days since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// `YYYY-MM-DD[ BC]` → (days, rest-after-date). Years may have more than 4 digits.
fn parse_date_prefix(text: &str) -> Option<(i64, &str)> {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    if i < 4 || b.get(i) != Some(&b'-') {
        return None;
    }
    let year: i64 = text[..i].parse().ok()?;
    let m: u32 = text.get(i + 1..i + 3)?.parse().ok()?;
    if b.get(i + 3) != Some(&b'-') {
        return None;
    }
    let d: u32 = text.get(i + 4..i + 6)?.parse().ok()?;
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(year, m) {
        return None;
    }
    Some((days_from_civil(year, m, d), &text[i + 6..]))
}

/// Parse a `date` as PostgreSQL (ISO DateStyle) prints it.
pub fn parse_date(text: &str) -> Option<i32> {
    match text {
        "infinity" => return Some(i32::MAX),
        "-infinity" => return Some(i32::MIN),
        _ => {}
    }
    let (days, rest) = parse_date_prefix(text)?;
    let days = match rest {
        "" => days,
        " BC" => bc_days(text)?,
        _ => return None,
    };
    i32::try_from(days).ok()
}

/// Days for a `YYYY-MM-DD BC` date: year N BC is astronomical year 1-N.
fn bc_days(text: &str) -> Option<i64> {
    let (ymd, _) = text.split_once(' ')?;
    let mut parts = ymd.splitn(3, '-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: u32 = parts.next()?.parse().ok()?;
    let d: u32 = parts.next()?.parse().ok()?;
    Some(days_from_civil(1 - y, m, d))
}

/// `HH:MM[:SS[.ffffff]]` → microseconds, and the rest of the string.
fn parse_time_prefix(text: &str) -> Option<(i64, &str)> {
    let b = text.as_bytes();
    let h: i64 = text.get(0..2)?.parse().ok()?;
    if b.get(2) != Some(&b':') {
        return None;
    }
    let mi: i64 = text.get(3..5)?.parse().ok()?;
    let mut pos = 5;
    let mut s: i64 = 0;
    let mut us: i64 = 0;
    if b.get(5) == Some(&b':') {
        s = text.get(6..8)?.parse().ok()?;
        pos = 8;
        if b.get(8) == Some(&b'.') {
            let start = 9;
            let mut end = start;
            while end < b.len() && b[end].is_ascii_digit() {
                end += 1;
            }
            if end == start {
                return None;
            }
            let frac = &text[start..end];
            // Round to microseconds like PostgreSQL's input does.
            let mut digits: String = frac.chars().take(7).collect();
            while digits.len() < 7 {
                digits.push('0');
            }
            let v: i64 = digits.parse().ok()?;
            us = (v + 5) / 10;
            pos = end;
        }
    }
    if h > 24 || mi > 59 || s > 60 || (h == 24 && (mi > 0 || s > 0 || us > 0)) {
        return None;
    }
    Some((((h * 60 + mi) * 60 + s) * 1_000_000 + us, &text[pos..]))
}

pub fn parse_time(text: &str) -> Option<i64> {
    let (us, rest) = parse_time_prefix(text)?;
    rest.is_empty().then_some(us)
}

/// Parse `+HH[:MM[:SS]]` / `-HH...` / `Z` → offset in seconds east of UTC.
fn parse_offset(text: &str) -> Option<i64> {
    if text == "Z" || text == "z" {
        return Some(0);
    }
    let sign = match text.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let body = &text[1..];
    let mut secs = 0i64;
    if body.len() == 4 && body.bytes().all(|c| c.is_ascii_digit()) {
        secs = body[0..2].parse::<i64>().ok()? * 3600 + body[2..4].parse::<i64>().ok()? * 60;
    } else {
        for (i, part) in body.split(':').enumerate() {
            if part.len() != 2 || i > 2 {
                return None;
            }
            let v: i64 = part.parse().ok()?;
            secs += v * [3600, 60, 1][i];
        }
    }
    Some(sign * secs)
}

/// Parse a timestamp as PostgreSQL prints it (`YYYY-MM-DD HH:MM:SS[.ffffff][+TZ][ BC]`); also accepts a
/// `T` separator. With `with_tz`, a missing offset means UTC; without, an offset is ignored (as
/// PostgreSQL's `timestamp` input does).
pub fn parse_timestamp(text: &str, with_tz: bool) -> Option<i64> {
    match text {
        "infinity" => return Some(INFINITY_MICROS),
        "-infinity" => return Some(NEG_INFINITY_MICROS),
        _ => {}
    }
    let (mut text, bc) = match text.strip_suffix(" BC") {
        Some(t) => (t, true),
        None => (text, false),
    };
    text = text.trim();
    let (days, rest) = parse_date_prefix(text)?;
    let days = if bc {
        bc_days(&format!("{} BC", &text[..text.len() - rest.len()]))?
    } else {
        days
    };
    let rest = rest.strip_prefix([' ', 'T', 't']).unwrap_or(rest);
    let (time_us, rest) = if rest.is_empty() {
        (0, rest)
    } else {
        parse_time_prefix(rest)?
    };
    let offset = if rest.is_empty() {
        0
    } else {
        parse_offset(rest.trim_start())?
    };
    let local = days.checked_mul(MICROS_PER_DAY)?.checked_add(time_us)?;
    if with_tz {
        local.checked_sub(offset * 1_000_000)
    } else {
        Some(local)
    }
}

fn format_ymd(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    if y > 0 {
        format!("{y:04}-{m:02}-{d:02}")
    } else {
        format!("{:04}-{m:02}-{d:02} BC", 1 - y)
    }
}

pub fn format_date(days: i32) -> String {
    format_ymd(days as i64)
}

/// `YYYY-MM-DDTHH:MM:SS`, seconds truncated: Directus's `dateTime` output.
pub fn format_datetime(us: i64) -> String {
    let days = us.div_euclid(MICROS_PER_DAY);
    let rem = us.rem_euclid(MICROS_PER_DAY) / 1_000_000;
    format!(
        "{}T{:02}:{:02}:{:02}",
        format_ymd(days),
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// JavaScript's `Date#toISOString()`: milliseconds (truncated) and `Z`.
pub fn format_iso_utc(us: i64) -> String {
    let days = us.div_euclid(MICROS_PER_DAY);
    let rem_us = us.rem_euclid(MICROS_PER_DAY);
    let secs = rem_us / 1_000_000;
    let ms = rem_us % 1_000_000 / 1000;
    let (y, m, d) = civil_from_days(days);
    let year = if (0..=9999).contains(&y) {
        format!("{y:04}")
    } else if y < 0 {
        format!("-{:06}", -y)
    } else {
        format!("+{y:06}")
    };
    format!(
        "{year}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Text PostgreSQL accepts for a timestamp (UTC, microsecond precision).
pub fn timestamp_sql_text(us: i64) -> String {
    if us == INFINITY_MICROS {
        return "infinity".into();
    }
    if us == NEG_INFINITY_MICROS {
        return "-infinity".into();
    }
    let days = us.div_euclid(MICROS_PER_DAY);
    let rem = us.rem_euclid(MICROS_PER_DAY);
    format!("{} {}", format_ymd(days), time_sql_text(rem))
}

pub fn time_sql_text(us: i64) -> String {
    let secs = us / 1_000_000;
    let frac = us % 1_000_000;
    let mut s = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    if frac != 0 {
        let _ = write!(s, ".{frac:06}");
    }
    s
}

pub fn date_sql_text(days: i32) -> String {
    match days {
        i32::MAX => "infinity".into(),
        i32::MIN => "-infinity".into(),
        d => format_date(d),
    }
}

// ---------------------------------------------------------------------------------------------------------
// Datum comparison

impl Datum {
    /// Instant of a date/time datum in microseconds (session time zone UTC), for cross-type comparisons
    /// the way PostgreSQL promotes `date` to `timestamp[tz]` at midnight.
    fn instant(&self) -> Option<i64> {
        match self {
            Datum::Date(d) => Some(match *d {
                i32::MAX => INFINITY_MICROS,
                i32::MIN => NEG_INFINITY_MICROS,
                d => d as i64 * MICROS_PER_DAY,
            }),
            Datum::Timestamp(us) | Datum::TimestampTz(us) => Some(*us),
            _ => None,
        }
    }

    /// Compare two non-null datums with PostgreSQL's semantics. `None` when the kinds are not comparable.
    pub fn compare(&self, other: &Datum) -> Option<Ordering> {
        use Datum::*;
        Some(match (self, other) {
            (Bool(a), Bool(b)) => a.cmp(b),
            (Int(a), Int(b)) => a.cmp(b),
            (Int(a), Numeric(b)) => Decimal::from_i64(*a).cmp(b),
            (Numeric(a), Int(b)) => a.cmp(&Decimal::from_i64(*b)),
            (Int(a), Float(b)) => cmp_float(*a as f64, *b),
            (Float(a), Int(b)) => cmp_float(*a, *b as f64),
            (Float(a), Float(b)) => cmp_float(*a, *b),
            (Numeric(a), Numeric(b)) => a.cmp(b),
            (Text(a), Text(b)) => a.as_bytes().cmp(b.as_bytes()),
            (Uuid(a), Uuid(b)) => a.cmp(b),
            (Time(a), Time(b)) => a.cmp(b),
            (Json(a), Json(b)) => {
                if a == b {
                    Ordering::Equal
                } else {
                    return None;
                }
            }
            (Other(a), Other(b)) => a.as_bytes().cmp(b.as_bytes()),
            (a, b) => a.instant()?.cmp(&b.instant()?),
        })
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Datum::Null)
    }

    /// The text used when a string operator (`LIKE`) or a `::text` comparison applies to this datum.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Datum::Text(s) | Datum::Other(s) => Some(s),
            _ => None,
        }
    }

    /// Canonical text PostgreSQL accepts as input for this datum (used for SQL parameters).
    pub fn sql_text(&self) -> Option<String> {
        Some(match self {
            Datum::Null => return None,
            Datum::Bool(b) => if *b { "true" } else { "false" }.into(),
            Datum::Int(i) => i.to_string(),
            Datum::Float(f) => {
                if f.is_nan() {
                    "NaN".into()
                } else if f.is_infinite() {
                    if *f > 0.0 {
                        "Infinity".into()
                    } else {
                        "-Infinity".into()
                    }
                } else {
                    format!("{f:?}")
                }
            }
            Datum::Numeric(d) => d.to_text(),
            Datum::Text(s) | Datum::Other(s) => s.clone(),
            Datum::Uuid(u) => format_uuid(*u),
            Datum::Date(d) => date_sql_text(*d),
            Datum::Time(t) => time_sql_text(*t),
            Datum::Timestamp(us) => timestamp_sql_text(*us),
            Datum::TimestampTz(us) => {
                let mut s = timestamp_sql_text(*us);
                if *us != INFINITY_MICROS && *us != NEG_INFINITY_MICROS {
                    s.push_str("+00");
                }
                s
            }
            Datum::Json(v) => v.to_string(),
        })
    }

    /// The SQL type of [`Datum::sql_text`].
    pub fn sql_type(&self) -> &'static str {
        match self {
            Datum::Null | Datum::Text(_) | Datum::Other(_) => "text",
            Datum::Bool(_) => "boolean",
            Datum::Int(_) => "int8",
            Datum::Float(_) => "float8",
            Datum::Numeric(_) => "numeric",
            Datum::Uuid(_) => "uuid",
            Datum::Date(_) => "date",
            Datum::Time(_) => "time",
            Datum::Timestamp(_) => "timestamp",
            Datum::TimestampTz(_) => "timestamptz",
            Datum::Json(_) => "jsonb",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(kind: Kind, text: Option<&str>) -> String {
        let mut out = Vec::new();
        write_json_value(&mut out, &kind, Special::default(), text);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn directus_encodings() {
        assert_eq!(enc(Kind::Int4, Some("42")), "42");
        assert_eq!(enc(Kind::Int2, Some("-7")), "-7");
        assert_eq!(
            enc(Kind::Int8, Some("9007199254740993")),
            "\"9007199254740993\""
        );
        assert_eq!(enc(Kind::Numeric, Some("12.50")), "\"12.50\"");
        assert_eq!(enc(Kind::Float8, Some("0.1")), "0.1");
        assert_eq!(enc(Kind::Float8, Some("1e+21")), "1e+21");
        assert_eq!(enc(Kind::Float8, Some("3")), "3");
        assert_eq!(enc(Kind::Float8, Some("NaN")), "null");
        assert_eq!(enc(Kind::Float4, Some("-Infinity")), "null");
        assert_eq!(enc(Kind::Bool, Some("t")), "true");
        assert_eq!(enc(Kind::Bool, Some("f")), "false");
        assert_eq!(enc(Kind::Text, Some("a\"b")), "\"a\\\"b\"");
        assert_eq!(enc(Kind::Bpchar, Some("ab  ")), "\"ab  \"");
        assert_eq!(
            enc(Kind::Uuid, Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")),
            "\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\""
        );
        assert_eq!(enc(Kind::Jsonb, Some("{\"a\": [1, 2]}")), "{\"a\":[1,2]}");
        assert_eq!(enc(Kind::Date, Some("2024-01-02")), "\"2024-01-02\"");
        assert_eq!(enc(Kind::Time, Some("03:04:05.123")), "\"03:04:05.123\"");
        assert_eq!(enc(Kind::TimeTz, Some("03:04:05+00")), "\"03:04:05+00\"");
        assert_eq!(
            enc(Kind::Timestamp, Some("2024-01-02 03:04:05.987654")),
            "\"2024-01-02T03:04:05\""
        );
        assert_eq!(
            enc(Kind::TimestampTz, Some("2024-01-02 03:04:05.987654+00")),
            "\"2024-01-02T03:04:05.987Z\""
        );
        assert_eq!(
            enc(Kind::TimestampTz, Some("2024-01-02 05:04:05+02")),
            "\"2024-01-02T03:04:05.000Z\""
        );
        assert_eq!(enc(Kind::Int4, None), "null");
        assert_eq!(
            enc(Kind::Array(Box::new(Kind::Int8)), Some("{1,NULL,3}")),
            "[\"1\",null,\"3\"]"
        );
        assert_eq!(
            enc(Kind::Array(Box::new(Kind::Numeric)), Some("{1.50,2}")),
            "[1.5,2]"
        );
        assert_eq!(
            enc(
                Kind::Array(Box::new(Kind::Text)),
                Some("{a,\"b c\",\"d\\\"e\"}")
            ),
            "[\"a\",\"b c\",\"d\\\"e\"]"
        );
        assert_eq!(
            enc(Kind::Array(Box::new(Kind::Int4)), Some("{{1,2},{3,4}}")),
            "[[1,2],[3,4]]"
        );
        assert_eq!(enc(Kind::Array(Box::new(Kind::Int4)), Some("{}")), "[]");
        assert_eq!(
            enc(Kind::Bytea, Some("\\x0102ff")),
            "{\"type\":\"Buffer\",\"data\":[1,2,255]}"
        );
        assert_eq!(enc(Kind::Other, Some("1 day")), "\"1 day\"");
    }

    #[test]
    fn specials() {
        let mut out = Vec::new();
        write_json_value(
            &mut out,
            &Kind::Text,
            Special::from_csv("cast-csv"),
            Some("a, b"),
        );
        assert_eq!(out, b"[\"a\",\" b\"]");
        out.clear();
        write_json_value(
            &mut out,
            &Kind::Text,
            Special::from_csv("conceal"),
            Some("secret"),
        );
        assert_eq!(out, b"\"**********\"");
        out.clear();
        write_json_value(
            &mut out,
            &Kind::Text,
            Special::from_csv("cast-json"),
            Some("{\"x\":1}"),
        );
        assert_eq!(out, b"{\"x\":1}");
    }

    #[test]
    fn decimal_order_and_normalisation() {
        let d = |s| Decimal::parse(s).unwrap();
        assert_eq!(d("12.50"), d("12.5"));
        assert_eq!(d("-0.0"), d("0"));
        assert_eq!(d("1e3"), d("1000"));
        assert_eq!(d("1.5E-2").to_text(), "0.015");
        assert!(d("-2") < d("-1.5"));
        assert!(d("9.99") < d("10"));
        assert!(d("Infinity") < d("NaN"));
        assert!(d("-Infinity") < d("-1e30"));
        assert!(Decimal::parse("1..2").is_none());
        assert!(Decimal::parse("abc").is_none());
        assert!(Decimal::parse("").is_none());
        assert!(Decimal::parse("-").is_none());
    }

    #[test]
    fn dates_round_trip() {
        for days in [-800_000i64, -1, 0, 1, 19_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2024-02-30"), None);
        assert_eq!(
            parse_date("0001-01-01 BC"),
            Some(days_from_civil(0, 1, 1) as i32)
        );
        assert_eq!(
            format_date(days_from_civil(0, 1, 1) as i32),
            "0001-01-01 BC"
        );
        assert_eq!(
            parse_timestamp("1970-01-01 00:00:01.5", false),
            Some(1_500_000)
        );
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z", true), Some(0));
        assert_eq!(parse_timestamp("1970-01-01 01:00:00+01", true), Some(0));
        assert_eq!(
            parse_timestamp("1970-01-01 00:00:00+05:30", true),
            Some(-19_800_000_000)
        );
        assert_eq!(parse_timestamp("1970-01-01 00:00:00+05:30", false), Some(0));
        assert_eq!(parse_time("24:00:00"), Some(86_400_000_000));
        assert_eq!(parse_time("25:00:00"), None);
        assert_eq!(format_iso_utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_iso_utc(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(timestamp_sql_text(1_000_001), "1970-01-01 00:00:01.000001");
    }

    #[test]
    fn uuids() {
        let canonical = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
        let v = parse_uuid(canonical).unwrap();
        assert_eq!(format_uuid(v), canonical);
        assert_eq!(parse_uuid("A0EEBC999C0B4EF8BB6D6BB9BD380A11"), Some(v));
        assert_eq!(parse_uuid("{a0eebc99-9c0b4ef8-bb6d6bb9-bd380a11}"), Some(v));
        assert_eq!(parse_uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1"), None);
        assert_eq!(parse_uuid("a0eebc99--9c0b-4ef8-bb6d-6bb9bd380a11"), None);
        assert_eq!(parse_uuid("g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), None);
    }

    #[test]
    fn comparisons_follow_postgres() {
        assert_eq!(
            Datum::Float(f64::NAN).compare(&Datum::Float(f64::NAN)),
            Some(Ordering::Equal)
        );
        assert_eq!(
            Datum::Float(f64::NAN).compare(&Datum::Float(1e300)),
            Some(Ordering::Greater)
        );
        assert_eq!(
            Datum::Float(-0.0).compare(&Datum::Float(0.0)),
            Some(Ordering::Equal)
        );
        assert_eq!(
            Datum::Int(5).compare(&Datum::Numeric(Decimal::parse("5.5").unwrap())),
            Some(Ordering::Less)
        );
        assert_eq!(
            Datum::Date(1).compare(&Datum::TimestampTz(MICROS_PER_DAY)),
            Some(Ordering::Equal)
        );
        assert_eq!(
            Datum::Text("b".into()).compare(&Datum::Text("B".into())),
            Some(Ordering::Greater)
        );
        // real 0.1 is not double 0.1, as in PostgreSQL
        let real = parse_datum(&Kind::Float4, "0.1").unwrap();
        assert_ne!(real.compare(&Datum::Float(0.1)), Some(Ordering::Equal));
    }

    #[test]
    fn malformed_text_is_an_error_not_a_panic() {
        for kind in [
            Kind::Bool,
            Kind::Int4,
            Kind::Float8,
            Kind::Numeric,
            Kind::Uuid,
            Kind::Date,
            Kind::Time,
            Kind::Timestamp,
            Kind::TimestampTz,
            Kind::Json,
        ] {
            for text in [
                "",
                "x",
                "99999999999999999999999",
                "2024-13-01",
                "12:",
                "-",
                "{",
                "\u{0}",
            ] {
                let _ = parse_datum(&kind, text);
                let mut out = Vec::new();
                write_json_value(&mut out, &kind, Special::default(), Some(text));
                assert!(
                    serde_json::from_slice::<Json>(&out).is_ok(),
                    "{kind:?} {text:?}"
                );
            }
        }
    }
}
