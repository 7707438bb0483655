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
    /// `$NOW(<adjustment>)`: the instant at resolution time, and the adjustment, so a time column's
    /// condition can follow the clock.
    Now(i64, NowAdj),
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
            return Ok(Val::Now(ctx.now_micros, NowAdj::NONE));
        }
        if let Some(adj) = rest.strip_prefix('(').and_then(|r| r.strip_suffix(')')) {
            let parsed = NowAdj::parse(adj).and_then(|a| Some(Val::Now(a.at(ctx.now_micros)?, a)));
            return parsed.ok_or_else(|| {
                super::QueryError::invalid(format!(
                    "Invalid \"$NOW\" adjustment \"{adj}\" in \"{s}\""
                ))
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

/// A `$NOW` adjustment kept in a filter, so the instant is computed when a change is matched: a fixed
/// offset, or whole calendar months (`mo`, `y`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct NowAdj {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub micros: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub months: i64,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

impl NowAdj {
    /// `$NOW` itself.
    pub const NONE: NowAdj = NowAdj {
        micros: 0,
        months: 0,
    };

    /// `$NOW(<adjustment>)`: an optional sign, a number (decimals allowed), optional spaces and a unit
    /// (`ms`, `s`, `m`, `h`, `d`, `w`, `mo`, `y` and their long forms); no unit means days.
    pub fn parse(adj: &str) -> Option<NowAdj> {
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
        let fixed = |ms: f64| {
            Some(NowAdj {
                micros: (amount * ms * 1000.0) as i64,
                months: 0,
            })
        };
        match unit.as_str() {
            "ms" | "msec" | "msecs" | "millisecond" | "milliseconds" => fixed(1.0),
            "s" | "sec" | "secs" | "second" | "seconds" => fixed(1000.0),
            "m" | "min" | "mins" | "minute" | "minutes" => fixed(60_000.0),
            "h" | "hr" | "hrs" | "hour" | "hours" => fixed(3_600_000.0),
            "" | "d" | "day" | "days" => fixed(86_400_000.0),
            "w" | "week" | "weeks" => fixed(7.0 * 86_400_000.0),
            "mo" | "mth" | "month" | "months" => Some(NowAdj {
                micros: 0,
                months: amount.trunc() as i64,
            }),
            "y" | "yr" | "yrs" | "year" | "years" => Some(NowAdj {
                micros: 0,
                months: amount.trunc() as i64 * 12,
            }),
            _ => None,
        }
    }

    /// The instant this adjustment names at `now_micros`.
    pub fn at(self, now_micros: i64) -> Option<i64> {
        if self.months != 0 {
            add_months(now_micros, self.months)
        } else {
            now_micros.checked_add(self.micros)
        }
    }
}

/// `$NOW(<adjustment>)` at `now_micros` (see [`NowAdj::parse`]).
pub fn adjust_now(now_micros: i64, adj: &str) -> Option<i64> {
    NowAdj::parse(adj)?.at(now_micros)
}

thread_local! {
    static EVAL_NOW: std::cell::Cell<Option<i64>> = const { std::cell::Cell::new(None) };
}

/// Run `f` with "now" fixed at `micros` for every `$NOW` a filter evaluates or renders to SQL (the
/// commit time of the change being matched, or the moment of a snapshot).
pub fn with_now<R>(micros: i64, f: impl FnOnce() -> R) -> R {
    let before = EVAL_NOW.with(|n| n.replace(Some(micros)));
    let out = f();
    EVAL_NOW.with(|n| n.set(before));
    out
}

/// The "now" of [`with_now`], else the system clock.
pub fn eval_now() -> i64 {
    EVAL_NOW.with(|n| n.get()).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64)
    })
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
