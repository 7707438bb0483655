//! Dynamic variables: the values fixed at subscribe time ([`VarContext`]), the lookups a filter needs
//! (`$CURRENT_USER.<field>`, ...), their resolution, and `$NOW(<adjustment>)` arithmetic.

use crate::value;
use serde_json::Value as Json;
use std::collections::HashMap;

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

/// Variable references (`$CURRENT_USER.email`, `$CURRENT_ROLE.name`) a filter needs looked up before
/// [`parse`](super::parse) can resolve it.
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

/// Resolve a dynamic variable, or return the value unchanged. A `$NOW(...)` whose adjustment does not
/// parse is an error naming it (it would otherwise silently mean "now").
pub(super) fn resolve(v: &Json, ctx: &VarContext) -> Result<Val, super::QueryError> {
    let Json::String(s) = v else {
        return Ok(Val::Json(v.clone()));
    };
    if let Some(rest) = s.strip_prefix("$NOW") {
        if rest.is_empty() {
            return Ok(Val::Instant(ctx.now_micros));
        }
        if let Some(adj) = rest.strip_prefix('(').and_then(|r| r.strip_suffix(')')) {
            return adjust_now(ctx.now_micros, adj).map(Val::Instant).ok_or_else(|| {
                super::QueryError::invalid(format!("Invalid \"$NOW\" adjustment \"{adj}\" in \"{s}\""))
            });
        }
        return Ok(Val::Json(v.clone()));
    }
    let strs = |v: &[String]| Json::Array(v.iter().cloned().map(Json::String).collect());
    Ok(match s.as_str() {
        "$CURRENT_USER" => Val::Json(ctx.user.clone().map_or(Json::Null, Json::String)),
        "$CURRENT_ROLE" => Val::Json(ctx.role.clone().map_or(Json::Null, Json::String)),
        "$CURRENT_ROLES" => Val::Json(strs(&ctx.roles)),
        "$CURRENT_POLICIES" => Val::Json(strs(&ctx.policies)),
        _ if s.starts_with("$CURRENT_") => {
            Val::Json(ctx.lookups.get(s).cloned().unwrap_or(Json::Null))
        }
        _ => Val::Json(v.clone()),
    })
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
