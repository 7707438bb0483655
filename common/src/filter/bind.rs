//! Binding a parsed filter to a collection: fields checked against its columns, operators against the
//! field's Directus type (`getFilterOperatorsForType`, `conceal`), and every value converted to a
//! [`Datum`] comparable with its column.

use super::{Cond, Filter, Op, QueryError, RawFilter, RawValue, Val};
use crate::schema::Collection;
use crate::value::{self, Datum, Decimal, Kind};
use serde_json::Value as Json;

/// Does a LIKE pattern end with an unescaped `\`? PostgreSQL rejects such a pattern.
fn ends_with_escape(pattern: &str) -> bool {
    let trailing = pattern.chars().rev().take_while(|c| *c == '\\').count();
    trailing % 2 == 1
}

/// Operators Directus allows per field type (`getFilterOperatorsForType`), without the leading `_`.
fn allowed_ops(directus_type: &str) -> &'static [&'static str] {
    const STRING: &[&str] = &[
        "contains",
        "ncontains",
        "icontains",
        "nicontains",
        "starts_with",
        "nstarts_with",
        "istarts_with",
        "nistarts_with",
        "ends_with",
        "nends_with",
        "iends_with",
        "niends_with",
        "eq",
        "neq",
        "empty",
        "nempty",
        "null",
        "nnull",
        "in",
        "nin",
    ];
    const NUMERIC: &[&str] = &[
        "eq", "neq", "lt", "lte", "gt", "gte", "between", "nbetween", "null", "nnull", "in", "nin",
    ];
    const DEFAULT: &[&str] = &[
        "contains",
        "ncontains",
        "eq",
        "neq",
        "lt",
        "lte",
        "gt",
        "gte",
        "between",
        "nbetween",
        "empty",
        "nempty",
        "null",
        "nnull",
        "in",
        "nin",
    ];
    match directus_type {
        "string" | "text" | "csv" => STRING,
        "uuid" => &["eq", "neq", "null", "nnull", "in", "nin"],
        "json" => &["null", "nnull"],
        "boolean" => &["eq", "neq", "null", "nnull"],
        "bigInteger" | "integer" | "decimal" | "float" | "dateTime" | "date" | "time"
        | "timestamp" => NUMERIC,
        _ => DEFAULT,
    }
}

/// Whether `op` (with its leading underscore) is a filter operator for some field type: what can be
/// said of a permission's filter without the collection's columns (see [`check_structure`]).
pub fn is_known_operator(op: &str) -> bool {
    let name = op.strip_prefix('_').unwrap_or(op);
    ["string", "integer", "uuid", "json", "boolean", "other"]
        .iter()
        .any(|t| allowed_ops(t).contains(&name))
}

/// Check what a filter's shape alone can break: it parses, and every operator exists. Binding against
/// the collection (field names, operator per type, value types) is left to whoever has its columns.
pub fn check_structure(value: &serde_json::Value) -> Result<(), QueryError> {
    let raw = super::parse(
        value,
        &super::VarContext::default(),
        super::Limits::default(),
    )?;
    fn walk(f: &super::RawFilter) -> Result<(), QueryError> {
        match f {
            super::RawFilter::And(parts) | super::RawFilter::Or(parts) => {
                parts.iter().try_for_each(walk)
            }
            super::RawFilter::Cond { op, field, .. } if !is_known_operator(op) => {
                Err(QueryError::invalid(format!(
                    "Unknown filter operator \"{op}\" on field \"{field}\""
                )))
            }
            super::RawFilter::Cond { .. } => Ok(()),
        }
    }
    walk(&raw)
}

/// Kinds compared through their text output (`col::text` in SQL).
pub fn compares_as_text(kind: &Kind) -> bool {
    matches!(
        kind,
        Kind::TimeTz | Kind::Bytea | Kind::Array(_) | Kind::Other | Kind::Json | Kind::Jsonb
    )
}

/// Check a parsed filter against a collection and type every value.
pub fn bind(raw: &RawFilter, coll: &Collection) -> Result<Filter, QueryError> {
    let mut unknown = Vec::new();
    collect_unknown(raw, coll, &mut unknown);
    if !unknown.is_empty() {
        return Err(QueryError::unknown_fields(&coll.name, &unknown, ""));
    }
    bind_node(raw, coll)
}

fn collect_unknown(raw: &RawFilter, coll: &Collection, out: &mut Vec<String>) {
    match raw {
        RawFilter::And(p) | RawFilter::Or(p) => {
            p.iter().for_each(|x| collect_unknown(x, coll, out))
        }
        RawFilter::Cond { field, .. } => {
            if coll.column(field).is_none() && !out.contains(field) {
                out.push(field.clone());
            }
        }
    }
}

fn bind_node(raw: &RawFilter, coll: &Collection) -> Result<Filter, QueryError> {
    Ok(match raw {
        RawFilter::And(p) => Filter::and(
            p.iter()
                .map(|x| bind_node(x, coll))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        RawFilter::Or(p) => {
            let parts = p
                .iter()
                .map(|x| bind_node(x, coll))
                .collect::<Result<Vec<_>, _>>()?;
            if parts.is_empty() {
                Filter::TRUE
            } else {
                Filter::or(parts)
            }
        }
        RawFilter::Cond { field, op, value } => {
            let column = coll.column(field).expect("checked by collect_unknown");
            bind_cond(field, &column.kind, column.special.conceal, op, value)?
        }
    })
}

fn bind_cond(
    field: &str,
    kind: &Kind,
    conceal: bool,
    op: &str,
    value: &RawValue,
) -> Result<Filter, QueryError> {
    let dtype = kind.directus_type();
    let name = op.strip_prefix('_').unwrap_or(op);
    if !allowed_ops(dtype).contains(&name) {
        return Err(QueryError::invalid(format!(
            "\"{dtype}\" field type does not contain the \"{op}\" filter operator"
        )));
    }
    if conceal && !matches!(name, "empty" | "nempty" | "null" | "nnull") {
        return Err(QueryError::invalid(format!(
            "Field with \"conceal\" special does not allow the \"{op}\" filter operator"
        )));
    }
    // `$NOW` against a time column follows the clock: the argument is kept as its adjustment (and a
    // placeholder, so the canonical query does not depend on when it was subscribed).
    let now: Vec<(u8, super::NowAdj)> =
        if matches!(kind, Kind::Date | Kind::Timestamp | Kind::TimestampTz) {
            let items: Vec<&Val> = match value {
                RawValue::One(v) => vec![v],
                RawValue::List(l) => l.iter().collect(),
            };
            items
                .iter()
                .enumerate()
                .filter_map(|(i, v)| match v {
                    Val::Now(_, adj) => Some((u8::try_from(i).ok()?, *adj)),
                    _ => None,
                })
                .collect()
        } else {
            Vec::new()
        };
    let cond = |op: Op, mut args: Vec<Datum>| {
        for (i, _) in &now {
            if let Some(a) = args.get_mut(*i as usize) {
                *a = Datum::TimestampTz(0);
            }
        }
        Filter::Cond(Cond {
            field: field.into(),
            kind: kind.clone(),
            op,
            args,
            now: (!now.is_empty()).then(|| Box::new(now.clone())),
        })
    };
    let one = || match value {
        RawValue::One(v) => v,
        RawValue::List(_) => unreachable!("list operators handled separately"),
    };
    // The null/empty family: any value but `false` means the positive form.
    let flag = || !matches!(one(), Val::Json(Json::Bool(false)));
    Ok(match name {
        "null" => cond(if flag() { Op::IsNull } else { Op::IsNotNull }, vec![]),
        "nnull" => cond(if flag() { Op::IsNotNull } else { Op::IsNull }, vec![]),
        "empty" => cond(if flag() { Op::Empty } else { Op::NotEmpty }, vec![]),
        "nempty" => cond(if flag() { Op::NotEmpty } else { Op::Empty }, vec![]),
        "eq" | "neq" => {
            let d = to_datum(kind, one())?;
            match (name, d.is_null()) {
                ("eq", true) => cond(Op::IsNull, vec![]),
                ("neq", true) => cond(Op::IsNotNull, vec![]),
                ("eq", false) => cond(Op::Eq, vec![d]),
                _ => cond(Op::Neq, vec![d]),
            }
        }
        "lt" | "lte" | "gt" | "gte" => {
            let op = match name {
                "lt" => Op::Lt,
                "lte" => Op::Lte,
                "gt" => Op::Gt,
                _ => Op::Gte,
            };
            cond(op, vec![to_datum(kind, one())?])
        }
        "in" | "nin" => {
            let RawValue::List(items) = value else {
                unreachable!("list op")
            };
            let args = items
                .iter()
                .map(|v| to_datum(kind, v))
                .collect::<Result<Vec<_>, _>>()?;
            cond(if name == "in" { Op::In } else { Op::Nin }, args)
        }
        "between" | "nbetween" => {
            let RawValue::List(items) = value else {
                unreachable!("list op")
            };
            if items.len() != 2 {
                // Directus drops a between with anything but two values.
                return Ok(Filter::TRUE);
            }
            let args = items
                .iter()
                .map(|v| to_datum(kind, v))
                .collect::<Result<Vec<_>, _>>()?;
            cond(
                if name == "between" {
                    Op::Between
                } else {
                    Op::NotBetween
                },
                args,
            )
        }
        like_op => {
            let negated = like_op.starts_with('n');
            let base = like_op.trim_start_matches('n');
            let lower = base.starts_with('i');
            let base = base.trim_start_matches('i');
            let mut text = js_string(one()).ok_or_else(|| {
                QueryError::invalid(format!(
                    "The filter value for \"{op}\" has to be a string, number, or boolean"
                ))
            })?;
            if lower {
                text = text.to_lowercase();
            }
            let pattern = match base {
                "contains" => format!("%{text}%"),
                "starts_with" => format!("{text}%"),
                "ends_with" => format!("%{text}"),
                _ => {
                    return Err(QueryError::invalid(format!(
                        "\"{dtype}\" field type does not contain the \"{op}\" filter operator"
                    )));
                }
            };
            if ends_with_escape(&pattern) {
                return Err(QueryError::invalid(
                    "LIKE pattern must not end with escape character",
                ));
            }
            cond(Op::Like { negated, lower }, vec![Datum::Text(pattern)])
        }
    })
}

/// JavaScript `String(v)` for a filter value (how knex/pg send non-string values to text columns).
fn js_string(v: &Val) -> Option<String> {
    Some(match v {
        Val::Json(Json::String(s)) => s.clone(),
        Val::Json(Json::Number(n)) => crate::protocol::Uid::Num(n.clone()).to_js_string(),
        Val::Json(Json::Bool(b)) => b.to_string(),
        Val::Now(us, _) => value::format_iso_utc(*us),
        Val::Json(Json::Null) => return None,
        Val::Json(_) => return None,
    })
}

fn bad_value(kind: &Kind, v: &Val) -> QueryError {
    let shown = match v {
        Val::Json(j) => j.to_string(),
        Val::Now(us, _) => value::format_iso_utc(*us),
    };
    let shown: String = shown.chars().take(64).collect();
    QueryError::invalid(format!(
        "{shown} is not a valid {} value",
        kind.directus_type()
    ))
}

/// Convert a filter value to a datum comparable with a column of `kind`.
pub fn to_datum(kind: &Kind, v: &Val) -> Result<Datum, QueryError> {
    if matches!(v, Val::Json(Json::Null)) {
        return Ok(Datum::Null);
    }
    let bad = || bad_value(kind, v);
    Ok(match kind {
        Kind::Int2 | Kind::Int4 | Kind::Int8 | Kind::Float4 | Kind::Float8 | Kind::Numeric => {
            let text = match v {
                Val::Json(Json::Number(n)) => n.to_string(),
                Val::Json(Json::String(s)) => s.trim().to_owned(),
                Val::Json(Json::Bool(b)) => if *b { "1" } else { "0" }.to_owned(),
                _ => return Err(QueryError::invalid("Invalid numeric value")),
            };
            let dec = Decimal::parse(&text)
                .ok_or_else(|| QueryError::invalid("Invalid numeric value"))?;
            match kind {
                Kind::Float4 | Kind::Float8 => Datum::Float(
                    text.parse::<f64>()
                        .map_err(|_| QueryError::invalid("Invalid numeric value"))?,
                ),
                Kind::Numeric => Datum::Numeric(dec),
                _ => match &dec {
                    Decimal::Finite { frac, .. } if frac.is_empty() => Datum::Int(
                        dec.to_text()
                            .parse()
                            .map_err(|_| QueryError::invalid("Invalid numeric value"))?,
                    ),
                    Decimal::Finite { .. } => Datum::Numeric(dec),
                    _ => return Err(QueryError::invalid("Invalid numeric value")),
                },
            }
        }
        Kind::Bool => match v {
            Val::Json(Json::Bool(b)) => Datum::Bool(*b),
            Val::Json(Json::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
                "t" | "true" | "y" | "yes" | "on" | "1" => Datum::Bool(true),
                "f" | "false" | "n" | "no" | "off" | "0" => Datum::Bool(false),
                _ => return Err(bad()),
            },
            Val::Json(Json::Number(n)) if n.as_i64() == Some(1) => Datum::Bool(true),
            Val::Json(Json::Number(n)) if n.as_i64() == Some(0) => Datum::Bool(false),
            _ => return Err(bad()),
        },
        Kind::Uuid => {
            Datum::Uuid(value::parse_uuid(&js_string(v).ok_or_else(bad)?).ok_or_else(bad)?)
        }
        Kind::Text | Kind::Varchar => Datum::Text(js_string(v).ok_or_else(bad)?),
        Kind::Bpchar => Datum::Text(
            js_string(v)
                .ok_or_else(bad)?
                .trim_end_matches(' ')
                .to_owned(),
        ),
        Kind::Date | Kind::Timestamp | Kind::TimestampTz => match v {
            Val::Now(us, _) => Datum::TimestampTz(*us),
            Val::Json(Json::String(s)) => parse_datetime_value(s).ok_or_else(bad)?,
            _ => return Err(bad()),
        },
        Kind::Time => match v {
            Val::Json(Json::String(s)) => Datum::Time(value::parse_time(s.trim()).ok_or_else(bad)?),
            _ => return Err(bad()),
        },
        Kind::TimeTz | Kind::Bytea | Kind::Array(_) | Kind::Other | Kind::Json | Kind::Jsonb => {
            Datum::Other(js_string(v).ok_or_else(bad)?)
        }
    })
}

/// A date/time filter value: `YYYY-MM-DD` → date, with a time and offset → timestamptz, with a time and no
/// offset → timestamp (read in the session time zone, UTC).
fn parse_datetime_value(s: &str) -> Option<Datum> {
    let s = s.trim();
    if let Some(d) = value::parse_date(s) {
        return Some(Datum::Date(d));
    }
    let time_part = s.get(10..).unwrap_or("");
    let has_offset = time_part.ends_with(['Z', 'z'])
        || time_part.get(1..).is_some_and(|t| t.contains(['+', '-']));
    if has_offset {
        value::parse_timestamp(s, true).map(Datum::TimestampTz)
    } else {
        value::parse_timestamp(s, false).map(Datum::Timestamp)
    }
}
