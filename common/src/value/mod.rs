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
//!
//! - `kind`: column kinds (the PostgreSQL type OID and type-name map, Directus's field type, the SQL cast)
//!   and the per-column `special` transforms.
//! - `datum`: typed datums: decoding PostgreSQL's text per kind, PostgreSQL's comparison semantics, the
//!   exact [`Decimal`], and the SQL text of a datum.
//! - `json`: the JSON Directus's REST API returns for a column value.
//! - `pgtext`: parsers and formatters for PostgreSQL's text forms (arrays, UUIDs, dates, times,
//!   timestamps, floats).

mod datum;
mod json;
mod kind;
mod pgtext;

pub use datum::{Datum, Decimal, ParseError, cmp_float, parse_datum};
pub use json::{write_js_f64, write_json_string, write_json_value};
pub use kind::{Kind, Special};
pub use pgtext::{
    INFINITY_MICROS, NEG_INFINITY_MICROS, civil_from_days, date_sql_text, days_from_civil,
    format_date, format_datetime, format_iso_utc, format_uuid, parse_date, parse_time,
    parse_timestamp, parse_uuid, time_sql_text, timestamp_sql_text,
};

#[cfg(test)]
mod tests;
