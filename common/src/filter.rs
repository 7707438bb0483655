//! The Directus filter language.
//!
//! Three stages, each pure:
//! 1. [`parse`]: JSON (already decoded from the string form) → [`RawFilter`], following Directus's
//!    `parseFilter`: logical operators hoisted, several keys ANDed, a bare value meaning `_eq`, dynamic
//!    variables (`$NOW(...)`, `$CURRENT_USER`, ...) resolved from a [`VarContext`], and the string
//!    coercions `"true"`/`"false"`/`"null"`.
//! 2. [`bind`]: checks fields against the collection and operators against the field's Directus type
//!    (`validateFilter` / `validateOperator`) and converts every value to a typed [`Datum`], giving a
//!    [`Filter`].
//! 3. [`Filter::matches`]: evaluates a row with the same three-valued semantics as the SQL [`crate::sql`]
//!    generates for the snapshot. A property test against PostgreSQL keeps the two in agreement.

use crate::schema::Collection;
use crate::value::{self, Datum, Decimal, Kind};
use serde_json::{Map, Value as Json};
use std::cmp::Ordering;
use std::collections::HashMap;

/// Why a filter or query was refused; maps onto the wire error codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// `INVALID_QUERY`: "Invalid query. <reason>."
    #[error("Invalid query. {0}.")]
    Invalid(String),
    /// `FORBIDDEN` with Directus's message (unknown or unreadable fields and collections).
    #[error("{0}")]
    Forbidden(String),
}

impl QueryError {
    pub fn invalid(reason: impl Into<String>) -> QueryError {
        QueryError::Invalid(reason.into())
    }

    pub fn code(&self) -> crate::protocol::ErrorCode {
        match self {
            QueryError::Invalid(_) => crate::protocol::ErrorCode::InvalidQuery,
            QueryError::Forbidden(_) => crate::protocol::ErrorCode::Forbidden,
        }
    }

    /// FORBIDDEN for fields (requested, filtered or sorted) that do not exist or may not be read, with
    /// Directus's exact text; `path` is the relational path they were queried in (`""` = root).
    pub fn unknown_fields(collection: &str, fields: &[String], path: &str) -> QueryError {
        QueryError::Forbidden(crate::protocol::msg_forbidden_fields(
            collection, fields, path,
        ))
    }

    /// FORBIDDEN for a collection that does not exist or that the caller may not read, with Directus's
    /// exact text.
    pub fn unknown_collection(collection: &str) -> QueryError {
        QueryError::Forbidden(crate::protocol::msg_forbidden_collection(collection, ""))
    }
}

/// Bounds on filter size, so a hostile filter cannot burn CPU or memory in every worker.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Maximum nesting of `_and`/`_or`.
    pub max_depth: usize,
    /// Maximum number of conditions plus list elements.
    pub max_nodes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_depth: 16,
            max_nodes: 1000,
        }
    }
}

/// Values for dynamic variables, fixed at subscribe time.
#[derive(Debug, Clone, Default)]
pub struct VarContext {
    /// "Now" in microseconds since the Unix epoch.
    pub now_micros: i64,
    pub user: Option<String>,
    pub role: Option<String>,
    pub roles: Vec<String>,
    pub policies: Vec<String>,
    /// Values for `$CURRENT_USER.<field>`, `$CURRENT_ROLE.<field>`, keyed by the full variable text.
    pub lookups: HashMap<String, Json>,
}

/// A value after variable resolution: JSON, or an instant from `$NOW`.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Json(Json),
    Instant(i64),
}

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

/// Variable references (`$CURRENT_USER.email`, `$CURRENT_ROLE.name`) a filter needs looked up before
/// [`parse`] can resolve it.
pub fn required_lookups(filter: &Json) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(v: &Json, out: &mut Vec<String>) {
        match v {
            Json::String(s) => {
                for prefix in [
                    "$CURRENT_USER.",
                    "$CURRENT_ROLE.",
                    "$CURRENT_ROLES.",
                    "$CURRENT_POLICIES.",
                ] {
                    if s.starts_with(prefix) && !out.contains(s) {
                        out.push(s.clone());
                    }
                }
            }
            Json::Array(a) => a.iter().for_each(|v| walk(v, out)),
            Json::Object(o) => o.values().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(filter, &mut out);
    out
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
                value: RawValue::One(coerce(resolve(primitive, ctx))),
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
                    let items = to_list(arg, ctx);
                    spend(budget, 1 + items.len())?;
                    RawValue::List(items)
                } else {
                    spend(budget, 1)?;
                    RawValue::One(coerce(resolve(arg, ctx)))
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
fn to_list(arg: &Json, ctx: &VarContext) -> Vec<Val> {
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
        match resolve(item, ctx) {
            Val::Json(Json::Array(inner)) => {
                out.extend(inner.into_iter().map(|v| coerce(Val::Json(v))))
            }
            v => out.push(coerce(v)),
        }
    }
    out
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

/// Resolve a dynamic variable, or return the value unchanged.
fn resolve(v: &Json, ctx: &VarContext) -> Val {
    let Json::String(s) = v else {
        return Val::Json(v.clone());
    };
    if let Some(rest) = s.strip_prefix("$NOW") {
        if rest.is_empty() {
            return Val::Instant(ctx.now_micros);
        }
        if let Some(adj) = rest.strip_prefix('(').and_then(|r| r.strip_suffix(')')) {
            return Val::Instant(adjust_now(ctx.now_micros, adj).unwrap_or(ctx.now_micros));
        }
        return Val::Json(v.clone());
    }
    let strs = |v: &[String]| Json::Array(v.iter().cloned().map(Json::String).collect());
    match s.as_str() {
        "$CURRENT_USER" => Val::Json(ctx.user.clone().map_or(Json::Null, Json::String)),
        "$CURRENT_ROLE" => Val::Json(ctx.role.clone().map_or(Json::Null, Json::String)),
        "$CURRENT_ROLES" => Val::Json(strs(&ctx.roles)),
        "$CURRENT_POLICIES" => Val::Json(strs(&ctx.policies)),
        _ if s.starts_with("$CURRENT_") => {
            Val::Json(ctx.lookups.get(s).cloned().unwrap_or(Json::Null))
        }
        _ => Val::Json(v.clone()),
    }
}

/// `$NOW(<adjustment>)`: an optional sign, a number (decimals allowed), optional spaces and a unit
/// (`ms`, `s`, `m`, `h`, `d`, `w`, `mo`, `y` and their long forms); no unit means days.
pub fn adjust_now(now_micros: i64, adj: &str) -> Option<i64> {
    let adj = adj.trim();
    let (negative, rest) = match adj.as_bytes().first()? {
        b'-' => (true, &adj[1..]),
        b'+' => (false, &adj[1..]),
        _ => (false, adj),
    };
    let num_end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let number: f64 = rest[..num_end].parse().ok()?;
    let unit = rest[num_end..].trim_start().to_ascii_lowercase();
    let amount = if negative { -number } else { number };
    let ms_per = |ms: f64| Some(now_micros + (amount * ms * 1000.0) as i64);
    match unit.as_str() {
        "ms" | "msec" | "msecs" | "millisecond" | "milliseconds" => ms_per(1.0),
        "s" | "sec" | "secs" | "second" | "seconds" => ms_per(1000.0),
        "m" | "min" | "mins" | "minute" | "minutes" => ms_per(60_000.0),
        "h" | "hr" | "hrs" | "hour" | "hours" => ms_per(3_600_000.0),
        "" | "d" | "day" | "days" => ms_per(86_400_000.0),
        "w" | "week" | "weeks" => ms_per(7.0 * 86_400_000.0),
        "mo" | "mth" | "month" | "months" => add_months(now_micros, amount.trunc() as i64),
        "y" | "yr" | "yrs" | "year" | "years" => add_months(now_micros, amount.trunc() as i64 * 12),
        _ => None,
    }
}

/// Calendar month arithmetic, clamping the day to the end of the target month (date-fns `addMonths`).
fn add_months(us: i64, months: i64) -> Option<i64> {
    const DAY: i64 = 86_400_000_000;
    let days = us.div_euclid(DAY);
    let time = us.rem_euclid(DAY);
    let (y, m, d) = value::civil_from_days(days);
    let total = y.checked_mul(12)? + (m as i64 - 1) + months;
    let (ny, nm) = (total.div_euclid(12), (total.rem_euclid(12) + 1) as u32);
    let mut nd = d;
    while nd > 28 && value::civil_from_days(value::days_from_civil(ny, nm, nd)).1 != nm {
        nd -= 1;
    }
    Some(value::days_from_civil(ny, nm, nd) * DAY + time)
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
                    Val::Instant(_) | Val::Json(Json::Null | Json::Bool(_)) => {}
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

// ---------------------------------------------------------------------------------------------------------
// Bound, typed filters

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Op {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
    In,
    Nin,
    IsNull,
    IsNotNull,
    Empty,
    NotEmpty,
    /// `LIKE`; `negated` wraps it in `NOT`, `lower` compares `LOWER(col)`.
    Like {
        negated: bool,
        lower: bool,
    },
    Between,
    NotBetween,
}

/// One condition on one column.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Cond {
    pub field: String,
    pub kind: Kind,
    pub op: Op,
    /// Operands: one for comparisons, the list for `_in`/`_nin`, two for `_between`, the pattern (as
    /// `Datum::Text`) for `LIKE`, none for the null/empty checks.
    pub args: Vec<Datum>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Filter {
    /// All must hold; the empty `And` is TRUE.
    And(Vec<Filter>),
    /// One must hold; the empty `Or` is FALSE.
    Or(Vec<Filter>),
    Cond(Cond),
}

impl Filter {
    pub const TRUE: Filter = Filter::And(Vec::new());

    pub fn is_true(&self) -> bool {
        matches!(self, Filter::And(v) if v.is_empty())
    }

    /// Conjunction that flattens nested ANDs and drops TRUE.
    pub fn and(parts: impl IntoIterator<Item = Filter>) -> Filter {
        let mut out = Vec::new();
        for p in parts {
            match p {
                Filter::And(inner) => out.extend(inner),
                other => out.push(other),
            }
        }
        if out.len() == 1 {
            out.pop().expect("one")
        } else {
            Filter::And(out)
        }
    }

    /// Disjunction that flattens nested ORs; any TRUE operand makes the whole TRUE.
    pub fn or(parts: impl IntoIterator<Item = Filter>) -> Filter {
        let mut out = Vec::new();
        for p in parts {
            if p.is_true() {
                return Filter::TRUE;
            }
            match p {
                Filter::Or(inner) => out.extend(inner),
                other => out.push(other),
            }
        }
        if out.len() == 1 {
            out.pop().expect("one")
        } else {
            Filter::Or(out)
        }
    }

    /// Sort operands recursively so equivalent filters serialise identically (better query sharing).
    pub fn canonicalize(&mut self) {
        match self {
            Filter::And(parts) | Filter::Or(parts) => {
                for p in parts.iter_mut() {
                    p.canonicalize();
                }
                parts.sort_by_cached_key(|p| serde_json::to_string(p).unwrap_or_default());
                parts.dedup();
            }
            Filter::Cond(_) => {}
        }
    }

    /// Visit every condition.
    pub fn conditions(&self) -> Vec<&Cond> {
        let mut out = Vec::new();
        fn walk<'a>(f: &'a Filter, out: &mut Vec<&'a Cond>) {
            match f {
                Filter::And(p) | Filter::Or(p) => p.iter().for_each(|x| walk(x, out)),
                Filter::Cond(c) => out.push(c),
            }
        }
        walk(self, &mut out);
        out
    }

    /// Does the row satisfy the filter? `get` returns a column's datum (`Datum::Null` for NULL).
    /// Semantics are SQL's: a condition on NULL is unknown, and unknown is not a match.
    pub fn matches<'a>(&self, get: &impl Fn(&str) -> Option<&'a Datum>) -> bool {
        self.eval(get) == Some(true)
    }

    fn eval<'a>(&self, get: &impl Fn(&str) -> Option<&'a Datum>) -> Option<bool> {
        match self {
            Filter::And(parts) => {
                let mut result = Some(true);
                for p in parts {
                    match p.eval(get) {
                        Some(false) => return Some(false),
                        None => result = None,
                        Some(true) => {}
                    }
                }
                result
            }
            Filter::Or(parts) => {
                let mut result = Some(false);
                for p in parts {
                    match p.eval(get) {
                        Some(true) => return Some(true),
                        None => result = None,
                        Some(false) => {}
                    }
                }
                result
            }
            Filter::Cond(c) => c.eval(get(&c.field).unwrap_or(&Datum::Null)),
        }
    }
}

fn not3(v: Option<bool>) -> Option<bool> {
    v.map(|b| !b)
}

fn cmp3(a: &Datum, b: &Datum) -> Option<Ordering> {
    if a.is_null() || b.is_null() {
        return None;
    }
    a.compare(b)
}

impl Cond {
    fn eval(&self, v: &Datum) -> Option<bool> {
        let arg = || self.args.first().unwrap_or(&Datum::Null);
        match self.op {
            Op::IsNull => Some(v.is_null()),
            Op::IsNotNull => Some(!v.is_null()),
            Op::Empty => Some(v.is_null() || v.as_text() == Some("")),
            Op::NotEmpty => Some(!v.is_null() && v.as_text() != Some("")),
            Op::Eq => cmp3(v, arg()).map(|o| o == Ordering::Equal),
            Op::Neq => cmp3(v, arg()).map(|o| o != Ordering::Equal),
            Op::Lt => cmp3(v, arg()).map(|o| o == Ordering::Less),
            Op::Lte => cmp3(v, arg()).map(|o| o != Ordering::Greater),
            Op::Gt => cmp3(v, arg()).map(|o| o == Ordering::Greater),
            Op::Gte => cmp3(v, arg()).map(|o| o != Ordering::Less),
            Op::In => in_list(v, &self.args),
            Op::Nin => not3(in_list(v, &self.args)),
            Op::Between | Op::NotBetween => {
                let (lo, hi) = (self.args.first()?, self.args.get(1)?);
                let ge = cmp3(v, lo).map(|o| o != Ordering::Less);
                let le = cmp3(v, hi).map(|o| o != Ordering::Greater);
                let both = match (ge, le) {
                    (Some(false), _) | (_, Some(false)) => Some(false),
                    (Some(true), Some(true)) => Some(true),
                    _ => None,
                };
                if self.op == Op::Between {
                    both
                } else {
                    not3(both)
                }
            }
            Op::Like { negated, lower } => {
                let text = v.as_text()?;
                let Some(Datum::Text(pattern)) = self.args.first() else {
                    return None;
                };
                let matched = if lower {
                    like(&pg_lower(text), pattern)
                } else {
                    like(text, pattern)
                };
                Some(matched != negated)
            }
        }
    }
}

/// `v IN (list)` with SQL semantics: TRUE if equal to one, else NULL if the list holds a NULL.
fn in_list(v: &Datum, list: &[Datum]) -> Option<bool> {
    if v.is_null() {
        return None;
    }
    let mut saw_null = false;
    for item in list {
        match cmp3(v, item) {
            Some(Ordering::Equal) => return Some(true),
            None => saw_null = true,
            _ => {}
        }
    }
    if saw_null { None } else { Some(false) }
}

/// PostgreSQL `lower()` on a UTF-8 database: per-character simple lowercase mapping.
pub fn pg_lower(s: &str) -> String {
    s.chars()
        .map(|c| c.to_lowercase().next().unwrap_or(c))
        .collect()
}

/// SQL `LIKE` with `\` as the escape character: `%` matches any run, `_` any one character.
pub fn like(text: &str, pattern: &str) -> bool {
    let t: Vec<char> = text.chars().collect();
    // Tokenise the pattern: Some(c) = literal, None = '_' wildcard, and '%' boundaries.
    #[derive(Clone, Copy, PartialEq)]
    enum Tok {
        Lit(char),
        One,
        Any,
    }
    let mut toks = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        toks.push(match c {
            '\\' => match chars.next() {
                Some(e) => Tok::Lit(e),
                None => return false, // rejected when the filter is bound
            },
            '%' => Tok::Any,
            '_' => Tok::One,
            c => Tok::Lit(c),
        });
    }
    // Classic wildcard matching with backtracking to the last '%'.
    let (mut ti, mut pi) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match toks.get(pi) {
            Some(Tok::Any) => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(Tok::One) => {
                ti += 1;
                pi += 1;
            }
            Some(Tok::Lit(c)) if *c == t[ti] => {
                ti += 1;
                pi += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    toks[pi..].iter().all(|t| *t == Tok::Any)
}

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
    let cond = |op: Op, args: Vec<Datum>| {
        Filter::Cond(Cond {
            field: field.into(),
            kind: kind.clone(),
            op,
            args,
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
        Val::Instant(us) => value::format_iso_utc(*us),
        Val::Json(Json::Null) => return None,
        Val::Json(_) => return None,
    })
}

fn bad_value(kind: &Kind, v: &Val) -> QueryError {
    let shown = match v {
        Val::Json(j) => j.to_string(),
        Val::Instant(us) => value::format_iso_utc(*us),
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
            Val::Instant(us) => Datum::TimestampTz(*us),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Column;
    use serde_json::json;

    fn coll() -> Collection {
        let c = |n: &str, k: Kind| Column {
            name: n.into(),
            kind: k,
            special: Default::default(),
        };
        Collection::new(
            "articles",
            "public",
            "id",
            vec![
                c("id", Kind::Int4),
                c("title", Kind::Text),
                c("status", Kind::Text),
                c("score", Kind::Float8),
                c("price", Kind::Numeric),
                c("big", Kind::Int8),
                c("flag", Kind::Bool),
                c("author", Kind::Uuid),
                c("date_created", Kind::TimestampTz),
                c("day", Kind::Date),
                c("meta", Kind::Jsonb),
            ],
        )
    }

    fn ctx() -> VarContext {
        VarContext {
            now_micros: value::parse_timestamp("2024-06-15 12:00:00", true).unwrap(),
            user: Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()),
            ..Default::default()
        }
    }

    fn filter(j: Json) -> Result<Filter, QueryError> {
        bind(&parse(&j, &ctx(), Limits::default())?, &coll())
    }

    fn row(pairs: &[(&str, &str)]) -> HashMap<String, Datum> {
        let c = coll();
        c.columns
            .iter()
            .map(|col| {
                let text = pairs.iter().find(|(k, _)| *k == col.name).map(|(_, v)| *v);
                let d = match text {
                    None | Some("NULL") => Datum::Null,
                    Some(t) => value::parse_datum(&col.kind, t).unwrap(),
                };
                (col.name.clone(), d)
            })
            .collect()
    }

    fn m(f: &Filter, r: &HashMap<String, Datum>) -> bool {
        f.matches(&|k: &str| r.get(k))
    }

    #[test]
    fn equality_and_null_semantics() {
        let f = filter(json!({"status": {"_neq": "draft"}})).unwrap();
        assert!(m(&f, &row(&[("status", "published")])));
        assert!(!m(&f, &row(&[("status", "draft")])));
        assert!(!m(&f, &row(&[])), "_neq excludes NULL like SQL");
        let f = filter(json!({"status": {"_eq": "null"}})).unwrap();
        assert!(m(&f, &row(&[])), "\"null\" is coerced to null → IS NULL");
        let f = filter(json!({"status": "published"})).unwrap();
        assert!(m(&f, &row(&[("status", "published")])));
        let f = filter(json!({"status": {"_nin": ["a", null]}})).unwrap();
        assert!(
            !m(&f, &row(&[("status", "b")])),
            "NOT IN with a NULL is never true"
        );
        let f = filter(json!({"status": {"_in": "a,b"}})).unwrap();
        assert!(m(&f, &row(&[("status", "b")])));
        assert!(!m(&f, &row(&[("status", "c")])));
    }

    #[test]
    fn numbers_dates_and_logic() {
        let f = filter(json!({"_or": [{"id": {"_gt": "10"}}, {"score": {"_lte": 1.5}}]})).unwrap();
        assert!(m(&f, &row(&[("id", "11")])));
        assert!(m(&f, &row(&[("id", "1"), ("score", "1.5")])));
        assert!(!m(&f, &row(&[("id", "1"), ("score", "2")])));
        let f = filter(json!({"id": {"_gt": 5.5}})).unwrap();
        assert!(m(&f, &row(&[("id", "6")])) && !m(&f, &row(&[("id", "5")])));
        let f = filter(json!({"price": {"_between": ["1.0", "2.50"]}})).unwrap();
        assert!(m(&f, &row(&[("price", "2.5")])) && !m(&f, &row(&[("price", "2.51")])));
        let f = filter(json!({"date_created": {"_gte": "$NOW(-1 day)"}})).unwrap();
        assert!(m(&f, &row(&[("date_created", "2024-06-15 00:00:00+00")])));
        assert!(!m(&f, &row(&[("date_created", "2024-06-14 11:59:59+00")])));
        let f = filter(json!({"day": {"_lt": "$NOW"}})).unwrap();
        assert!(
            m(&f, &row(&[("day", "2024-06-15")])),
            "date promotes to midnight vs timestamptz"
        );
        let f = filter(json!({"author": {"_eq": "$CURRENT_USER"}})).unwrap();
        assert!(m(
            &f,
            &row(&[("author", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")])
        ));
        let f = filter(json!({"big": {"_in": [1, "2"]}})).unwrap();
        assert!(m(&f, &row(&[("big", "2")])));
        let f = filter(json!({"flag": {"_eq": "true"}, "id": {"_gt": 0, "_lt": 3}})).unwrap();
        assert!(m(&f, &row(&[("flag", "t"), ("id", "2")])));
        assert!(!m(&f, &row(&[("flag", "t"), ("id", "3")])));
    }

    #[test]
    fn like_family() {
        let f = filter(json!({"title": {"_contains": "b_c"}})).unwrap();
        assert!(
            m(&f, &row(&[("title", "abxcd")])),
            "_ is a wildcard, as Directus does not escape"
        );
        let f = filter(json!({"title": {"_icontains": "HELLO"}})).unwrap();
        assert!(m(&f, &row(&[("title", "say Hello!")])));
        let f = filter(json!({"title": {"_nstarts_with": "a"}})).unwrap();
        assert!(
            !m(&f, &row(&[("title", "abc")]))
                && m(&f, &row(&[("title", "bc")]))
                && !m(&f, &row(&[]))
        );
        assert!(like("100%", "100\\%"));
        assert!(!like("1000", "100\\%"));
        assert!(like("", "%"));
        assert!(like("abc", "a%c"));
        assert!(!like("ab", "a_c"));
        assert!(like("aXbXc", "%b%c"));
        assert!(filter(json!({"title": {"_ends_with": "x\\"}})).is_err());
    }

    #[test]
    fn validation_messages() {
        let err = |j| filter(j).unwrap_err().to_string();
        assert_eq!(
            err(json!({"title": {"_gt": "a"}})),
            "Invalid query. \"text\" field type does not contain the \"_gt\" filter operator."
        );
        assert_eq!(
            err(json!({"nope": {"_eq": 1}})),
            "You don't have permission to access field \"nope\" in collection \"articles\" or it does not exist. Queried in root."
        );
        assert_eq!(
            err(json!({"title": {"_in": []}})),
            "Invalid query. \"_in\" has to be an array of values."
        );
        assert_eq!(
            err(json!({"title": {"_eq": ""}})),
            "Invalid query. You can't filter for an empty string in \"_eq\". Use \"_empty\" or \"_nempty\" instead."
        );
        assert_eq!(
            err(json!({"title": {"_null": "x"}})),
            "Invalid query. \"_null\" has to be a boolean."
        );
        assert_eq!(
            err(json!({"title": {"_eq": {"a": 1}}})),
            "Invalid query. The filter value for \"_eq\" has to be a string, number, or boolean."
        );
        assert_eq!(
            err(json!({"title": null})),
            "Invalid query. Invalid filter object."
        );
        assert_eq!(
            err(json!({"_and": {"a": 1}})),
            "Invalid query. Invalid filter object."
        );
        assert!(err(json!({"id": {"_eq": "abc"}})).contains("Invalid numeric value"));
        assert!(err(json!({"author": {"name": {"_eq": "x"}}})).contains("Relational filters"));
        assert!(err(json!({"meta": {"_eq": "x"}})).contains("\"json\" field type"));
        let deep = (0..40).fold(json!({"id": {"_eq": 1}}), |acc, _| json!({"_and": [acc]}));
        assert!(err(deep).contains("nested too deeply"));
        let many: Vec<Json> = (0..2000).map(Json::from).collect();
        assert!(err(json!({"id": {"_in": many}})).contains("too large"));
    }

    #[test]
    fn between_with_wrong_arity_is_dropped() {
        let f = filter(json!({"id": {"_between": [1, 2, 3]}})).unwrap();
        assert!(f.is_true());
    }

    #[test]
    fn now_adjustments() {
        let base = 0;
        let day = 86_400_000_000;
        assert_eq!(adjust_now(base, "-7 days"), Some(-7 * day));
        assert_eq!(adjust_now(base, "+1 month"), Some(31 * day));
        assert_eq!(adjust_now(base, "2h"), Some(2 * 3_600_000_000));
        assert_eq!(adjust_now(base, "3"), Some(3 * day));
        assert_eq!(adjust_now(base, "1.5 s"), Some(1_500_000));
        assert_eq!(adjust_now(base, "nonsense"), None);
        // Jan 31 + 1 month clamps to Feb 29 (2024 is a leap year)
        let jan31 = value::parse_timestamp("2024-01-31 10:00:00", true).unwrap();
        assert_eq!(
            value::format_iso_utc(adjust_now(jan31, "1 mo").unwrap()),
            "2024-02-29T10:00:00.000Z"
        );
    }

    #[test]
    fn canonical_form_is_order_independent() {
        let mut a =
            filter(json!({"_and": [{"id": {"_eq": 1}}, {"status": {"_eq": "x"}}]})).unwrap();
        let mut b =
            filter(json!({"_and": [{"status": {"_eq": "x"}}, {"id": {"_eq": 1}}]})).unwrap();
        a.canonicalize();
        b.canonicalize();
        assert_eq!(a, b);
    }

    #[test]
    fn lookups_are_collected() {
        let j =
            json!({"team": {"_eq": "$CURRENT_USER.team"}, "x": {"_in": ["$CURRENT_ROLE.name"]}});
        assert_eq!(
            required_lookups(&j),
            vec![
                "$CURRENT_USER.team".to_string(),
                "$CURRENT_ROLE.name".to_string()
            ]
        );
    }
}
