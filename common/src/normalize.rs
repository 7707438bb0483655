//! A subscription becomes a canonical query.
//!
//! [`normalize`] takes the subscribe request, its parsed query, the collection and the caller's read access
//! and produces:
//! - a [`NormalizedQuery`]: what decides which changes a subscriber sees and what each event contains
//!   (collection, event mask, item, the complete row filter with permissions ANDed in and variables
//!   resolved, the projected fields with their permission conditions). Its hash is the [`QueryId`]:
//!   identical queries from any number of clients share one id, one index entry and one encoding.
//! - a [`SnapshotSpec`]: sort, limit, offset and meta, which only shape the `init` snapshot.

use crate::filter::{self, Filter, Limits, QueryError, VarContext};
use crate::protocol::EventKind;
use crate::query::{MetaKind, QueryParams};
use crate::schema::Collection;
use crate::value::{Datum, Kind};
use serde_json::Value as Json;
use std::fmt;

/// One read permission (a `directus_permissions` row, or several merged): a row filter and a field list.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadRule {
    /// The permission's row filter as JSON (`None` or `{}` = every row).
    pub filter: Option<Json>,
    /// Allowed fields; `None` = all (`*`).
    pub fields: Option<Vec<String>>,
}

/// What the caller may read in one collection.
#[derive(Debug, Clone, PartialEq)]
pub enum Access {
    /// Admin: everything, no permission filters.
    Admin,
    /// The read rules of the caller's policies for this collection; empty = no read access.
    Rules(Vec<ReadRule>),
}

/// An output field and the condition under which its value is visible (`None` = always).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Projection {
    pub field: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<Filter>,
    /// `directus_fields.special` casts and `conceal`, applied when encoding the value.
    #[serde(default, skip_serializing_if = "crate::value::Special::is_empty")]
    pub special: crate::value::Special,
}

/// The canonical form of a subscription, shared by everyone who subscribes to the same thing.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NormalizedQuery {
    pub collection: String,
    /// Bit set of [`EventKind::bit`].
    pub events: u8,
    /// `String(item)` for single-item subscriptions: events then carry one object, and deletes the item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<String>,
    /// The complete row predicate: user filter ∧ search ∧ item ∧ (OR of permission filters).
    pub filter: Filter,
    pub fields: Vec<Projection>,
    pub primary_key: String,
}

/// 128-bit stable hash of a [`NormalizedQuery`]'s canonical JSON (xxh3-128, seed 0).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueryId(pub u128);

impl fmt::Debug for QueryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QueryId({self})")
    }
}

impl fmt::Display for QueryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl std::str::FromStr for QueryId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<QueryId, Self::Err> {
        u128::from_str_radix(s, 16).map(QueryId)
    }
}

impl NormalizedQuery {
    /// The canonical JSON: what is registered in Redis and what the id hashes.
    pub fn canonical_json(&self) -> String {
        serde_json::to_string(self).expect("a query always serialises")
    }

    pub fn id(&self) -> QueryId {
        QueryId(xxhash_rust::xxh3::xxh3_128(
            self.canonical_json().as_bytes(),
        ))
    }

    pub fn wants(&self, event: EventKind) -> bool {
        self.events & event.bit() != 0
    }
}

/// How the `init` snapshot is read.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotSpec {
    /// (field, descending)
    pub sort: Vec<(String, bool)>,
    pub limit: Option<i64>,
    pub offset: i64,
    pub meta: Vec<MetaKind>,
    /// The permission-only filter, for `meta.total_count`.
    pub permission_filter: Filter,
}

/// Bounds applied while normalising.
#[derive(Debug, Clone, Copy, Default)]
pub struct NormalizeLimits {
    pub filter: Limits,
}

#[derive(Debug)]
pub struct Normalized {
    pub query: NormalizedQuery,
    pub snapshot: SnapshotSpec,
}

/// Build the canonical query and snapshot spec, or the error to send.
pub fn normalize(
    coll: &Collection,
    event: Option<EventKind>,
    item: Option<&str>,
    params: &QueryParams,
    access: &Access,
    vars: &VarContext,
    limits: NormalizeLimits,
) -> Result<Normalized, QueryError> {
    // Permission rules, bound against this collection. A rule that does not parse is the
    // administrator's error, not the subscriber's: FORBIDDEN, saying so.
    let rules: Vec<(Filter, Option<Vec<String>>)> = match access {
        Access::Admin => Vec::new(),
        Access::Rules(rules) if rules.is_empty() => {
            // No read permission at all: Directus's collection text, whatever the subscription asks for.
            return Err(QueryError::unknown_collection(&coll.name));
        }
        Access::Rules(rules) => rules
            .iter()
            .map(|r| {
                let f = match &r.filter {
                    None => Filter::TRUE,
                    Some(Json::Object(o)) if o.is_empty() => Filter::TRUE,
                    Some(j) => filter::parse(j, vars, limits.filter)
                        .and_then(|raw| filter::bind(&raw, coll))
                        .map_err(|e| broken_permission(coll, &e))?,
                };
                Ok((f, r.fields.clone()))
            })
            .collect::<Result<_, QueryError>>()?,
    };
    let is_admin = matches!(access, Access::Admin);
    let field_allowed = |field: &str| -> bool {
        is_admin
            || rules.iter().any(|(_, fields)| {
                fields
                    .as_ref()
                    .is_none_or(|fs| fs.iter().any(|f| f == "*" || f == field))
            })
    };

    // Fields: `*` expands to the readable columns in table order; explicit fields must exist and be readable.
    let mut names: Vec<String> = Vec::new();
    let mut unknown: Vec<String> = Vec::new();
    for f in &params.fields {
        if f.contains('.') || f.contains(':') {
            return Err(QueryError::invalid(format!(
                "Relational fields such as \"{f}\" are not supported in subscriptions yet"
            )));
        }
        if f.contains('(') {
            return Err(QueryError::invalid(format!(
                "Function fields such as \"{f}\" are not supported in subscriptions"
            )));
        }
        if f == "*" {
            for c in &coll.columns {
                if field_allowed(&c.name) && !names.contains(&c.name) {
                    names.push(c.name.clone());
                }
            }
        } else if coll.column(f).is_some() && field_allowed(f) {
            if !names.contains(f) {
                names.push(f.clone());
            }
        } else if !unknown.contains(f) {
            unknown.push(f.clone());
        }
    }

    // Sort fields must exist and be readable too.
    let sort: Vec<(String, bool)> = match &params.sort {
        Some(list) => list
            .iter()
            .map(|s| match s.strip_prefix('-') {
                Some(f) => (f.to_owned(), true),
                None => (s.clone(), false),
            })
            .collect(),
        None => {
            let default = coll
                .sort_field
                .clone()
                .filter(|f| coll.column(f).is_some())
                .unwrap_or_else(|| coll.primary_key.clone());
            if field_allowed(&default) {
                vec![(default, false)]
            } else {
                names
                    .first()
                    .map(|f| vec![(f.clone(), false)])
                    .unwrap_or_default()
            }
        }
    };
    for (f, _) in &sort {
        if f.contains('.') {
            return Err(QueryError::invalid(format!(
                "Sorting by relational fields such as \"{f}\" is not supported in subscriptions yet"
            )));
        }
        if (coll.column(f).is_none() || !field_allowed(f)) && !unknown.contains(f) {
            unknown.push(f.clone());
        }
    }

    // User filter: fields must exist and be readable.
    let user_filter = match &params.filter {
        None => Filter::TRUE,
        Some(j) => {
            let raw = filter::parse(j, vars, limits.filter)?;
            let bound = filter::bind(&raw, coll);
            match bound {
                Err(QueryError::Forbidden(_)) => {
                    collect_raw_fields(&raw, &mut |f| {
                        if (coll.column(f).is_none() || !field_allowed(f))
                            && !unknown.iter().any(|u| u == f)
                        {
                            unknown.push(f.to_owned());
                        }
                    });
                    Filter::TRUE
                }
                Err(e) => return Err(e),
                Ok(f) => {
                    for c in f.conditions() {
                        if !field_allowed(&c.field) && !unknown.contains(&c.field) {
                            unknown.push(c.field.clone());
                        }
                    }
                    f
                }
            }
        }
    };
    if !unknown.is_empty() {
        return Err(QueryError::unknown_fields(&coll.name, &unknown, ""));
    }

    let search_filter = match &params.search {
        Some(term) => search(coll, term, &field_allowed),
        None => Filter::TRUE,
    };
    let item_filter = match item {
        None => Filter::TRUE,
        Some(key) => {
            let pk = coll.pk_column();
            match filter::to_datum(&pk.kind, &filter::Val::Json(Json::String(key.to_owned()))) {
                Ok(d) => pk_eq(&pk.name, &pk.kind, d),
                // A key that cannot be a primary key value matches nothing (readOne → FORBIDDEN).
                Err(_) => Filter::Or(Vec::new()),
            }
        }
    };
    let permission_filter = if is_admin {
        Filter::TRUE
    } else {
        Filter::or(rules.iter().map(|(f, _)| f.clone()))
    };

    let mut row_filter = Filter::and([
        user_filter,
        search_filter,
        item_filter,
        permission_filter.clone(),
    ]);
    row_filter.canonicalize();

    let fields = names
        .iter()
        .map(|name| Projection {
            field: name.clone(),
            when: field_condition(name, &rules, is_admin),
            special: coll.column(name).map(|c| c.special).unwrap_or_default(),
        })
        .collect();

    let events = match event {
        Some(e) => e.bit(),
        None => EventKind::Create.bit() | EventKind::Update.bit() | EventKind::Delete.bit(),
    };
    Ok(Normalized {
        query: NormalizedQuery {
            collection: coll.name.clone(),
            events,
            item: item.map(str::to_owned),
            filter: row_filter,
            fields,
            primary_key: coll.primary_key.clone(),
        },
        snapshot: SnapshotSpec {
            sort,
            limit: params.limit,
            offset: params.offset,
            meta: params.meta.clone(),
            permission_filter,
        },
    })
}

fn collect_raw_fields(raw: &filter::RawFilter, f: &mut impl FnMut(&str)) {
    match raw {
        filter::RawFilter::And(p) | filter::RawFilter::Or(p) => {
            p.iter().for_each(|x| collect_raw_fields(x, f))
        }
        filter::RawFilter::Cond { field, .. } => f(field),
    }
}

fn pk_eq(field: &str, kind: &Kind, d: Datum) -> Filter {
    Filter::Cond(filter::Cond {
        field: field.into(),
        kind: kind.clone(),
        op: filter::Op::Eq,
        args: vec![d],
    })
}

/// When is `field` visible? Only when a rule granting it matches the row. If every rule grants it (or one
/// with no row filter does), it is visible whenever the row is.
fn field_condition(
    field: &str,
    rules: &[(Filter, Option<Vec<String>>)],
    admin: bool,
) -> Option<Filter> {
    if admin {
        return None;
    }
    let grants = |fields: &Option<Vec<String>>| {
        fields
            .as_ref()
            .is_none_or(|fs| fs.iter().any(|f| f == "*" || f == field))
    };
    let granting: Vec<&Filter> = rules
        .iter()
        .filter(|(_, fs)| grants(fs))
        .map(|(f, _)| f)
        .collect();
    if granting.len() == rules.len() || granting.iter().any(|f| f.is_true()) {
        return None;
    }
    let mut cond = Filter::or(granting.into_iter().cloned());
    cond.canonicalize();
    Some(cond)
}

/// Directus's `search`: OR over readable string fields (`LOWER(col) LIKE %term%`), numeric fields when the
/// term is a number, uuid fields when it is a uuid. Nothing qualifying matches nothing.
fn search(coll: &Collection, term: &str, allowed: &impl Fn(&str) -> bool) -> Filter {
    let mut parts = Vec::new();
    let lowered = term.to_lowercase();
    for c in &coll.columns {
        if !allowed(&c.name) || c.special.conceal {
            continue;
        }
        let cond = |op, args| {
            Filter::Cond(filter::Cond {
                field: c.name.clone(),
                kind: c.kind.clone(),
                op,
                args,
            })
        };
        match &c.kind {
            Kind::Text | Kind::Varchar | Kind::Bpchar => {
                // `%term%` never ends in a bare escape, so PostgreSQL always accepts the pattern.
                parts.push(cond(
                    filter::Op::Like {
                        negated: false,
                        lower: true,
                    },
                    vec![Datum::Text(format!("%{lowered}%"))],
                ));
            }
            k @ (Kind::Int2
            | Kind::Int4
            | Kind::Int8
            | Kind::Float4
            | Kind::Float8
            | Kind::Numeric) => {
                if let Ok(d) =
                    filter::to_datum(k, &filter::Val::Json(Json::String(term.to_owned())))
                    && !(k.is_integer() && matches!(d, Datum::Numeric(_)))
                {
                    parts.push(cond(filter::Op::Eq, vec![d]));
                }
            }
            Kind::Uuid => {
                if let Some(u) = crate::value::parse_uuid(term) {
                    parts.push(cond(filter::Op::Eq, vec![Datum::Uuid(u)]));
                }
            }
            _ => {}
        }
    }
    if parts.is_empty() {
        Filter::Or(Vec::new())
    } else {
        Filter::or(parts)
    }
}

/// FORBIDDEN for a permission filter that does not parse or bind (`e` says why).
fn broken_permission(coll: &Collection, e: &QueryError) -> QueryError {
    let reason = match e {
        QueryError::Invalid(r) | QueryError::Forbidden(r) => r.trim_end_matches('.'),
    };
    QueryError::Forbidden(crate::protocol::msg_broken_permission(&coll.name, reason))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::{QueryConfig, parse_query};
    use crate::schema::Column;
    use serde_json::json;

    fn coll() -> Collection {
        let c = Column::new;
        Collection::new(
            "articles",
            "public",
            "id",
            vec![
                c("id", Kind::Int4),
                c("title", Kind::Text),
                c("status", Kind::Text),
                c("author", Kind::Uuid),
            ],
        )
    }

    fn norm(q: Json, access: &Access) -> Result<Normalized, QueryError> {
        let params = parse_query(q.as_object(), &QueryConfig::default())?;
        normalize(
            &coll(),
            None,
            None,
            &params,
            access,
            &VarContext::default(),
            NormalizeLimits::default(),
        )
    }

    #[test]
    fn identical_queries_share_an_id() {
        let a = norm(
            json!({"filter": {"status": {"_eq": "x"}, "id": {"_gt": 1}}, "fields": "id,title"}),
            &Access::Admin,
        )
        .unwrap();
        let b = norm(json!({"filter": "{\"id\":{\"_gt\":\"1\"},\"status\":{\"_eq\":\"x\"}}", "fields": ["id", "title"], "sort": "-id", "limit": 5}), &Access::Admin).unwrap();
        assert_eq!(
            a.query.id(),
            b.query.id(),
            "sort/limit only shape the snapshot"
        );
        let c = norm(
            json!({"filter": {"status": {"_eq": "y"}}, "fields": "id,title"}),
            &Access::Admin,
        )
        .unwrap();
        assert_ne!(a.query.id(), c.query.id());
        assert_eq!(b.snapshot.sort, vec![("id".to_string(), true)]);
    }

    #[test]
    fn star_expands_to_permitted_fields_and_filters_are_anded() {
        let access = Access::Rules(vec![ReadRule {
            filter: Some(json!({"status": {"_eq": "published"}})),
            fields: Some(vec!["id".into(), "title".into()]),
        }]);
        let n = norm(json!({}), &access).unwrap();
        let names: Vec<_> = n.query.fields.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(names, ["id", "title"]);
        assert!(n.query.fields.iter().all(|p| p.when.is_none()));
        assert!(!n.query.filter.is_true());
        let err = norm(json!({"fields": "status"}), &access).unwrap_err();
        assert!(matches!(err, QueryError::Forbidden(_)));
        let err = norm(json!({"filter": {"status": {"_eq": "x"}}}), &access).unwrap_err();
        assert!(
            matches!(err, QueryError::Forbidden(_)),
            "filtering on an unreadable field is forbidden"
        );
        assert_eq!(
            err.to_string(),
            "You don't have permission to access field \"status\" in collection \"articles\" or it does not exist. Queried in root."
        );
        assert_eq!(
            norm(json!({}), &Access::Rules(vec![])).unwrap_err(),
            QueryError::Forbidden(
                "You don't have permission to access collection \"articles\" or it does not exist. Queried in root."
                    .into()
            ),
            "no read permission names the collection"
        );
        assert_eq!(
            norm(json!({"sort": "-status"}), &access)
                .unwrap_err()
                .to_string(),
            "You don't have permission to access field \"status\" in collection \"articles\" or it does not exist. Queried in root.",
            "sorting on an unreadable field names it"
        );
        // With an `event` (no init data) the permission is still checked, with the same text.
        let params = parse_query(None, &QueryConfig::default()).unwrap();
        let err = normalize(
            &coll(),
            Some(EventKind::Create),
            None,
            &params,
            &Access::Rules(vec![]),
            &VarContext::default(),
            NormalizeLimits::default(),
        )
        .unwrap_err();
        assert_eq!(err, QueryError::unknown_collection("articles"));
    }

    #[test]
    fn fields_from_narrower_policies_are_conditional() {
        let access = Access::Rules(vec![
            ReadRule {
                filter: None,
                fields: Some(vec!["id".into(), "title".into()]),
            },
            ReadRule {
                filter: Some(json!({"status": {"_eq": "mine"}})),
                fields: Some(vec!["*".into()]),
            },
        ]);
        let n = norm(json!({}), &access).unwrap();
        let status = n.query.fields.iter().find(|p| p.field == "status").unwrap();
        assert!(status.when.is_some());
        let title = n.query.fields.iter().find(|p| p.field == "title").unwrap();
        assert!(title.when.is_none());
        assert!(n.query.filter.is_true(), "one rule has no row filter");
    }

    #[test]
    fn unknown_fields_are_listed_together() {
        let err = norm(
            json!({"fields": "nope,also", "sort": "zzz"}),
            &Access::Admin,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "You don't have permission to access fields \"nope\", \"also\", \"zzz\" in collection \"articles\" or they do not exist. Queried in root."
        );
        assert!(
            norm(json!({"fields": "author.name"}), &Access::Admin)
                .unwrap_err()
                .to_string()
                .contains("Relational")
        );
    }

    #[test]
    fn item_and_events() {
        let params = parse_query(None, &QueryConfig::default()).unwrap();
        let n = normalize(
            &coll(),
            Some(EventKind::Update),
            Some("7"),
            &params,
            &Access::Admin,
            &VarContext::default(),
            Default::default(),
        )
        .unwrap();
        assert!(n.query.wants(EventKind::Update) && !n.query.wants(EventKind::Create));
        assert_eq!(n.query.item.as_deref(), Some("7"));
        let id7 = Datum::Int(7);
        assert!(
            n.query
                .filter
                .matches(&|f: &str| if f == "id" { Some(&id7) } else { None })
        );
        let n = normalize(
            &coll(),
            None,
            Some("x"),
            &params,
            &Access::Admin,
            &VarContext::default(),
            Default::default(),
        )
        .unwrap();
        assert!(
            !n.query.filter.matches(&|_: &str| Some(&id7)),
            "a non-integer key matches nothing"
        );
    }

    #[test]
    fn query_id_is_pinned() {
        // The id crosses processes (gateways and workers hash independently): pin the algorithm.
        let n = norm(
            json!({"fields": "id", "filter": {"status": {"_eq": "published"}}}),
            &Access::Admin,
        )
        .unwrap();
        assert_eq!(
            n.query.canonical_json(),
            r#"{"collection":"articles","events":7,"filter":{"Cond":{"field":"status","kind":"Text","op":"Eq","args":[{"Text":"published"}]}},"fields":[{"field":"id"}],"primary_key":"id"}"#
        );
        assert_eq!(
            n.query.id().to_string(),
            format!(
                "{:032x}",
                xxhash_rust::xxh3::xxh3_128(n.query.canonical_json().as_bytes())
            )
        );
    }
}
