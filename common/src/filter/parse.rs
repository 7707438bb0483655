//! Parsing a filter object into a [`RawFilter`], following Directus's `parseFilter`: logical operators
//! hoisted, several keys ANDed, a bare value meaning `_eq`, variables resolved, the string coercions
//! `"true"`/`"false"`/`"null"`, the size limits, and `validateFilter`'s checks on operator values.

use super::vars::resolve;
use super::{Limits, QueryError, Val, VarContext};
use serde_json::{Map, Value as Json};

/// A filter after parsing, before it is checked against a collection.
#[derive(Debug, Clone, PartialEq)]
pub enum RawFilter {
    And(Vec<RawFilter>),
    Or(Vec<RawFilter>),
    Cond {
        field: String,
        op: String,
        value: RawValue,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum RawValue {
    One(Val),
    List(Vec<Val>),
}

const LIST_OPS: [&str; 4] = ["_in", "_nin", "_between", "_nbetween"];
const BOOL_OPS: [&str; 4] = ["_null", "_nnull", "_empty", "_nempty"];

fn invalid_filter() -> QueryError {
    QueryError::invalid("Invalid filter object")
}

/// Parse a filter object. `value` is the decoded JSON (callers turn the string form into JSON first).
pub fn parse(value: &Json, ctx: &VarContext, limits: Limits) -> Result<RawFilter, QueryError> {
    let Json::Object(obj) = value else {
        return Err(invalid_filter());
    };
    let mut budget = limits.max_nodes;
    parse_object(obj, ctx, limits, 0, &mut budget)
}

fn and_of(mut parts: Vec<RawFilter>) -> RawFilter {
    if parts.len() == 1 {
        parts.pop().expect("one")
    } else {
        RawFilter::And(parts)
    }
}

fn spend(budget: &mut usize, n: usize) -> Result<(), QueryError> {
    if *budget < n {
        return Err(QueryError::invalid("Filter is too large"));
    }
    *budget -= n;
    Ok(())
}

fn parse_object(
    obj: &Map<String, Json>,
    ctx: &VarContext,
    limits: Limits,
    depth: usize,
    budget: &mut usize,
) -> Result<RawFilter, QueryError> {
    if depth > limits.max_depth {
        return Err(QueryError::invalid("Filter is nested too deeply"));
    }
    let mut parts = Vec::new();
    for (key, val) in obj {
        if is_ignored_key(key) {
            continue;
        }
        match key.as_str() {
            "_and" | "_or" => {
                let Json::Array(items) = val else {
                    return Err(invalid_filter());
                };
                let mut children = Vec::with_capacity(items.len());
                for item in items {
                    let Json::Object(o) = item else {
                        return Err(invalid_filter());
                    };
                    if o.is_empty() {
                        // Directus skips an `_or` containing `{}` entirely, and `{}` in `_and` is no-op.
                        if key == "_or" {
                            children.clear();
                            break;
                        }
                        continue;
                    }
                    children.push(parse_object(o, ctx, limits, depth + 1, budget)?);
                }
                if children.is_empty() {
                    continue;
                }
                parts.push(if key == "_and" {
                    RawFilter::And(children)
                } else {
                    RawFilter::Or(children)
                });
            }
            k if k.starts_with('_') => return Err(invalid_filter()),
            field => parts.push(parse_field(field, val, ctx, limits, depth, budget)?),
        }
    }
    if parts.is_empty() {
        return Ok(RawFilter::And(Vec::new()));
    }
    Ok(and_of(parts))
}

/// Keys Directus's JSON parser drops (prototype-pollution guard).
fn is_ignored_key(key: &str) -> bool {
    key == "__proto__" || key == "constructor"
}

fn parse_field(
    field: &str,
    val: &Json,
    ctx: &VarContext,
    limits: Limits,
    depth: usize,
    budget: &mut usize,
) -> Result<RawFilter, QueryError> {
    if field.contains('(') {
        return Err(QueryError::invalid(format!(
            "Function filters such as \"{field}\" are not supported in subscriptions"
        )));
    }
    let ops = match val {
        Json::Object(ops) => ops,
        Json::Null => return Err(invalid_filter()),
        primitive => {
            spend(budget, 1)?;
            return Ok(RawFilter::Cond {
                field: field.into(),
                op: "_eq".into(),
                value: RawValue::One(coerce(resolve(primitive, ctx)?)),
            });
        }
    };
    let mut parts = Vec::new();
    for (op, arg) in ops {
        if is_ignored_key(op) {
            continue;
        }
        match op.as_str() {
            // {field: {_or: [x, y]}} → {_or: [{field: x}, {field: y}]}
            "_and" | "_or" => {
                let Json::Array(items) = arg else {
                    return Err(invalid_filter());
                };
                let mut children = Vec::new();
                for item in items {
                    if depth + 1 > limits.max_depth {
                        return Err(QueryError::invalid("Filter is nested too deeply"));
                    }
                    children.push(parse_field(field, item, ctx, limits, depth + 1, budget)?);
                }
                if children.is_empty() {
                    continue;
                }
                parts.push(if op == "_and" {
                    RawFilter::And(children)
                } else {
                    RawFilter::Or(children)
                });
            }
            o if o.starts_with('_') => {
                let value = if LIST_OPS.contains(&o) {
                    let items = to_list(arg, ctx)?;
                    spend(budget, 1 + items.len())?;
                    RawValue::List(items)
                } else {
                    spend(budget, 1)?;
                    RawValue::One(coerce(resolve(arg, ctx)?))
                };
                validate_value(o, &value)?;
                parts.push(RawFilter::Cond {
                    field: field.into(),
                    op: o.into(),
                    value,
                });
            }
            sub => {
                return Err(QueryError::invalid(format!(
                    "Relational filters such as \"{field}.{sub}\" are not supported in subscriptions"
                )));
            }
        }
    }
    if parts.is_empty() {
        return Ok(RawFilter::And(Vec::new()));
    }
    Ok(and_of(parts))
}

/// `_in`/`_nin`/`_between` values: an array, an object's values, or a CSV string; variables resolving to
/// arrays are flattened in.
fn to_list(arg: &Json, ctx: &VarContext) -> Result<Vec<Val>, QueryError> {
    let items: Vec<Json> = match arg {
        Json::Array(a) => a.clone(),
        Json::Object(o) => o.values().cloned().collect(),
        Json::String(s) if !s.starts_with('$') => {
            s.split(',').map(|p| Json::String(p.into())).collect()
        }
        other => vec![other.clone()],
    };
    let mut out = Vec::with_capacity(items.len());
    for item in &items {
        match resolve(item, ctx)? {
            Val::Json(Json::Array(inner)) => {
                out.extend(inner.into_iter().map(|v| coerce(Val::Json(v))))
            }
            v => out.push(coerce(v)),
        }
    }
    Ok(out)
}

/// `"true"`, `"false"`, `"null"`, `"NULL"` become JSON values, everywhere in a filter.
fn coerce(v: Val) -> Val {
    match v {
        Val::Json(Json::String(s)) => Val::Json(match s.as_str() {
            "true" => Json::Bool(true),
            "false" => Json::Bool(false),
            "null" | "NULL" => Json::Null,
            _ => Json::String(s),
        }),
        other => other,
    }
}

/// Directus's `validateFilter` checks on operator values.
fn validate_value(op: &str, value: &RawValue) -> Result<(), QueryError> {
    match value {
        RawValue::List(items) => {
            if items.is_empty() {
                return Err(QueryError::invalid(format!(
                    "\"{op}\" has to be an array of values"
                )));
            }
        }
        RawValue::One(v) => {
            if BOOL_OPS.contains(&op) {
                if !matches!(v, Val::Json(Json::Bool(_) | Json::Null))
                    && *v != Val::Json(Json::String(String::new()))
                {
                    return Err(QueryError::invalid(format!("\"{op}\" has to be a boolean")));
                }
            } else {
                match v {
                    Val::Now(..) | Val::Json(Json::Null | Json::Bool(_)) => {}
                    Val::Json(Json::Number(n)) => {
                        let f = n.as_f64().unwrap_or(f64::NAN);
                        if !f.is_finite() || f.abs() > 9_007_199_254_740_991.0 {
                            return Err(QueryError::invalid(format!(
                                "The filter value for \"{op}\" is not a valid number"
                            )));
                        }
                    }
                    Val::Json(Json::String(s)) if s.is_empty() => {
                        return Err(QueryError::invalid(format!(
                            "You can't filter for an empty string in \"{op}\". Use \"_empty\" or \"_nempty\" instead"
                        )));
                    }
                    Val::Json(Json::String(_)) => {}
                    Val::Json(_) => {
                        return Err(QueryError::invalid(format!(
                            "The filter value for \"{op}\" has to be a string, number, or boolean"
                        )));
                    }
                }
            }
        }
    }
    Ok(())
}
