//! Typed datums: decoding PostgreSQL's text output for a column kind ([`parse_datum`]), comparing with
//! PostgreSQL's semantics (floats, the exact [`Decimal`], dates against timestamps), and the canonical
//! SQL text of a datum for query parameters.

use super::Kind;
use super::pgtext::{
    INFINITY_MICROS, MICROS_PER_DAY, NEG_INFINITY_MICROS, date_sql_text, format_uuid, parse_date,
    parse_pg_float, parse_time, parse_timestamp, parse_uuid, time_sql_text, timestamp_sql_text,
};
use serde_json::Value as Json;
use std::cmp::Ordering;

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

impl crate::error::Classify for ParseError {
    /// Datums are PostgreSQL's own text output: one we cannot read means our decoder and the server
    /// disagree.
    fn fault(&self) -> crate::error::Fault {
        crate::error::Fault::Bug
    }
}

fn perr(kind: &'static str, text: &str) -> ParseError {
    ParseError {
        kind,
        text: text.chars().take(64).collect(),
    }
}

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
