//! The subscription `query` object, accepted in native JSON and in the REST string forms the SDK sends
//! (`fields` CSV, `filter` JSON string, `sort` CSV, `limit` "10", `meta` CSV), following Directus's
//! `sanitizeQuery` and `validateQuery`.

use crate::filter::QueryError;
use serde_json::{Map, Value as Json};

/// Server-wide query settings (`QUERY_LIMIT_DEFAULT`, `QUERY_LIMIT_MAX`, `MAX_RELATIONAL_DEPTH`).
#[derive(Debug, Clone, Copy)]
pub struct QueryConfig {
    pub limit_default: i64,
    pub limit_max: Option<i64>,
    pub max_relational_depth: usize,
}

impl Default for QueryConfig {
    fn default() -> QueryConfig {
        QueryConfig {
            limit_default: 100,
            limit_max: None,
            max_relational_depth: 10,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKind {
    TotalCount,
    FilterCount,
}

/// A sanitised query, not yet checked against a collection.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QueryParams {
    /// Field paths; `["*"]` when absent.
    pub fields: Vec<String>,
    /// The filter as JSON (string form already decoded); `None` when absent or falsy.
    pub filter: Option<Json>,
    /// `None` = the default sort (sort field, else primary key). A `-` prefix means descending.
    pub sort: Option<Vec<String>>,
    /// `None` = unlimited.
    pub limit: Option<i64>,
    pub offset: i64,
    pub meta: Vec<MetaKind>,
    pub search: Option<String>,
    /// `deep`: per-relation queries for nested items, keyed by relational field (string form decoded).
    pub deep: Option<Map<String, Json>>,
}

/// Query parameters Directus supports that subscriptions here do not (yet): refused with a clear error
/// instead of being silently ignored.
const UNSUPPORTED: [&str; 5] = ["aggregate", "groupBy", "alias", "version", "versionRaw"];

pub fn parse_query(
    raw: Option<&Map<String, Json>>,
    cfg: &QueryConfig,
) -> Result<QueryParams, QueryError> {
    let empty = Map::new();
    let raw = raw.unwrap_or(&empty);
    for key in UNSUPPORTED {
        if raw.contains_key(key) {
            return Err(QueryError::invalid(format!(
                "\"{key}\" is not supported in subscriptions by this server"
            )));
        }
    }
    let mut q = QueryParams {
        fields: vec!["*".into()],
        ..Default::default()
    };

    if let Some(f) = raw.get("fields") {
        let list: Vec<String> = match f {
            Json::String(s) => split_fields(s),
            Json::Array(items) => {
                let mut out = Vec::new();
                for item in items {
                    match item {
                        Json::String(s) => out.extend(split_fields(s)),
                        _ => {
                            return Err(QueryError::invalid(
                                "\"fields\" must be a string or array",
                            ));
                        }
                    }
                }
                out
            }
            _ => return Err(QueryError::invalid("\"fields\" must be a string or array")),
        };
        q.fields = list
            .into_iter()
            .map(|f| f.trim().to_owned())
            .filter(|f| !f.is_empty())
            .collect();
        if q.fields.is_empty() {
            q.fields = vec!["*".into()];
        }
    }
    if q.fields
        .iter()
        .any(|f| f.split('.').count() > cfg.max_relational_depth)
    {
        return Err(QueryError::invalid("Max relational depth exceeded"));
    }

    if let Some(d) = raw.get("deep") {
        let value = match d {
            Json::String(s) if s.is_empty() => Json::Null,
            Json::String(s) => serde_json::from_str(s)
                .map_err(|_| QueryError::invalid("\"deep\" must be a valid JSON object"))?,
            other => other.clone(),
        };
        match value {
            Json::Null => {}
            Json::Object(o) => q.deep = Some(o),
            _ => return Err(QueryError::invalid("\"deep\" must be a valid JSON object")),
        }
    }

    if let Some(s) = raw.get("sort") {
        let list: Vec<String> = match s {
            Json::String(s) => s.split(',').map(|p| p.trim().to_owned()).collect(),
            Json::Array(items) => items
                .iter()
                .filter_map(|i| i.as_str().map(|s| s.trim().to_owned()))
                .collect(),
            _ => Vec::new(),
        };
        let list: Vec<String> = list.into_iter().filter(|s| !s.is_empty()).collect();
        if !list.is_empty() {
            q.sort = Some(list);
        }
    }

    q.limit = Some(
        cfg.limit_max
            .map_or(cfg.limit_default, |m| cfg.limit_default.min(m)),
    );
    if let Some(l) = raw.get("limit")
        && !l.is_null()
    {
        let n = js_number(l, "limit")?;
        if n < -1 {
            return Err(QueryError::invalid(
                "\"limit\" must be greater than or equal to -1",
            ));
        }
        if let Some(max) = cfg.limit_max
            && n > max
        {
            return Err(QueryError::invalid(format!(
                "\"limit\" must be less than or equal to {max}"
            )));
        }
        q.limit = if n == -1 { cfg.limit_max } else { Some(n) };
    }

    if let Some(o) = raw.get("offset")
        && !o.is_null()
    {
        let n = js_number(o, "offset")?;
        if n < 0 {
            return Err(QueryError::invalid(
                "\"offset\" must be greater than or equal to 0",
            ));
        }
        q.offset = n;
    }
    if let Some(p) = raw.get("page") {
        let truthy = !matches!(p, Json::Null | Json::Bool(false))
            && p.as_f64() != Some(0.0)
            && p.as_str() != Some("");
        if truthy {
            let page = js_number(p, "page")?;
            if page < 0 {
                return Err(QueryError::invalid(
                    "\"page\" must be greater than or equal to 0",
                ));
            }
            if let Some(limit) = q.limit
                && page > 0
            {
                q.offset = limit * (page - 1);
            }
        }
    }

    if let Some(m) = raw.get("meta") {
        let items: Vec<String> = match m {
            Json::String(s) if s == "*" => vec!["total_count".into(), "filter_count".into()],
            Json::String(s) => s.split(',').map(str::to_owned).collect(),
            Json::Array(a) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| v.to_string())
                })
                .collect(),
            other => vec![
                other
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| other.to_string()),
            ],
        };
        for (i, item) in items.iter().enumerate() {
            let kind = match item.as_str() {
                "total_count" => MetaKind::TotalCount,
                "filter_count" => MetaKind::FilterCount,
                _ => {
                    return Err(QueryError::invalid(format!(
                        "\"meta[{i}]\" must be one of [total_count, filter_count]"
                    )));
                }
            };
            if !q.meta.contains(&kind) {
                q.meta.push(kind);
            }
        }
    }

    if let Some(Json::String(s)) = raw.get("search")
        && !s.is_empty()
    {
        q.search = Some(s.clone());
    }

    if let Some(f) = raw.get("filter") {
        q.filter = match f {
            Json::Null | Json::Bool(false) => None,
            Json::String(s) if s.is_empty() => None,
            Json::Number(n) if n.as_f64() == Some(0.0) => None,
            Json::String(s) => Some(
                serde_json::from_str::<Json>(s)
                    .map_err(|_| QueryError::invalid("Invalid JSON for filter object"))?,
            ),
            other => Some(other.clone()),
        };
        if let Some(f) = &q.filter
            && !f.is_object()
        {
            return Err(QueryError::invalid("Invalid filter object"));
        }
    }
    Ok(q)
}

/// `Number(v)` then Joi's integer check.
fn js_number(v: &Json, name: &str) -> Result<i64, QueryError> {
    let f = match v {
        Json::Number(n) => n.as_f64().unwrap_or(f64::NAN),
        Json::String(s) if s.trim().is_empty() => 0.0,
        Json::String(s) => s.trim().parse::<f64>().unwrap_or(f64::NAN),
        Json::Bool(b) => f64::from(u8::from(*b)),
        _ => f64::NAN,
    };
    if !f.is_finite() {
        return Err(QueryError::invalid(format!("\"{name}\" must be a number")));
    }
    if f.fract() != 0.0 || f.abs() > 9_007_199_254_740_991.0 {
        return Err(QueryError::invalid(format!(
            "\"{name}\" must be an integer"
        )));
    }
    Ok(f as i64)
}

/// Split a CSV field list on commas outside parentheses (`json(a, b),title`).
pub fn split_fields(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => {
                depth += 1;
                cur.push(c);
            }
            ')' => {
                depth = depth.saturating_sub(1);
                cur.push(c);
            }
            ',' if depth == 0 => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter().map(|f| f.trim().to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(v: Json) -> Result<QueryParams, QueryError> {
        parse_query(v.as_object(), &QueryConfig::default())
    }

    #[test]
    fn string_forms_equal_native_forms() {
        let native = p(json!({"fields": ["id", "title"], "filter": {"a": {"_eq": 1}}, "sort": ["-id"], "limit": 10})).unwrap();
        let strings = p(json!({"fields": "id,title", "filter": "{\"a\":{\"_eq\":1}}", "sort": "-id", "limit": "10"})).unwrap();
        assert_eq!(native, strings);
        assert_eq!(native.limit, Some(10));
    }

    #[test]
    fn defaults_and_limits() {
        let q = p(json!({})).unwrap();
        assert_eq!(q.fields, vec!["*"]);
        assert_eq!(q.limit, Some(100));
        assert_eq!(p(json!({"limit": -1})).unwrap().limit, None);
        let cfg = QueryConfig {
            limit_max: Some(50),
            ..Default::default()
        };
        assert_eq!(
            parse_query(json!({"limit": -1}).as_object(), &cfg)
                .unwrap()
                .limit,
            Some(50)
        );
        assert_eq!(
            parse_query(json!({}).as_object(), &cfg).unwrap().limit,
            Some(50)
        );
        assert_eq!(
            parse_query(json!({"limit": 51}).as_object(), &cfg)
                .unwrap_err()
                .to_string(),
            "Invalid query. \"limit\" must be less than or equal to 50."
        );
        assert_eq!(
            p(json!({"limit": "abc"})).unwrap_err().to_string(),
            "Invalid query. \"limit\" must be a number."
        );
        assert_eq!(
            p(json!({"limit": 1.5})).unwrap_err().to_string(),
            "Invalid query. \"limit\" must be an integer."
        );
        assert_eq!(
            p(json!({"limit": -2})).unwrap_err().to_string(),
            "Invalid query. \"limit\" must be greater than or equal to -1."
        );
        assert_eq!(
            p(json!({"offset": -1})).unwrap_err().to_string(),
            "Invalid query. \"offset\" must be greater than or equal to 0."
        );
        assert_eq!(p(json!({"limit": 10, "page": 3})).unwrap().offset, 20);
    }

    #[test]
    fn meta_and_filter() {
        assert_eq!(
            p(json!({"meta": "*"})).unwrap().meta,
            vec![MetaKind::TotalCount, MetaKind::FilterCount]
        );
        assert_eq!(
            p(json!({"meta": "filter_count"})).unwrap().meta,
            vec![MetaKind::FilterCount]
        );
        assert_eq!(
            p(json!({"meta": "foo"})).unwrap_err().to_string(),
            "Invalid query. \"meta[0]\" must be one of [total_count, filter_count]."
        );
        assert_eq!(
            p(json!({"filter": "{ \"a\": }"})).unwrap_err().to_string(),
            "Invalid query. Invalid JSON for filter object."
        );
        assert_eq!(
            p(json!({"filter": "[1]"})).unwrap_err().to_string(),
            "Invalid query. Invalid filter object."
        );
        assert_eq!(p(json!({"filter": ""})).unwrap().filter, None);
        assert!(p(json!({"fields": 5})).is_err());
        assert!(
            p(json!({"aggregate": {"count": "*"}}))
                .unwrap_err()
                .to_string()
                .contains("aggregate")
        );
        assert!(
            p(json!({"fields": "a.b.c.d.e.f.g.h.i.j.k"}))
                .unwrap_err()
                .to_string()
                .contains("depth")
        );
    }

    #[test]
    fn field_splitting() {
        assert_eq!(
            split_fields("a, b,json(c, d)"),
            vec!["a", "b", "json(c, d)"]
        );
        assert_eq!(
            p(json!({"fields": ["id,title", "status"]})).unwrap().fields,
            vec!["id", "title", "status"]
        );
    }
}
