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
    /// A many-to-one field shown as the related item: the index of its [`RelatedField`] in
    /// [`NormalizedQuery::relations`]. The column holds the related item's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relation: Option<u16>,
    /// A one-to-many alias field (not a column): the column of this row whose value the related items
    /// point at (the primary key). The field shows an array.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The related item a many-to-one field shows (`author.email`, `author.*`), read by key from its
/// collection with the subscriber's permissions there. Self-contained (table, columns and kinds), so a
/// worker that has no schema can read and encode it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RelatedField {
    pub collection: String,
    /// PostgreSQL schema of its table.
    pub schema: String,
    pub primary_key: String,
    /// The rows the subscriber may read there (OR of its read permissions; TRUE for an admin). A key
    /// whose row this excludes shows as `null`, as Directus returns it.
    pub filter: Filter,
    /// The related item's fields, in output order (nested relations point further into the list).
    pub fields: Vec<Projection>,
    /// The columns to read, primary key first, with their kinds: the fields and what their visibility
    /// conditions look at.
    pub columns: Vec<(String, Kind)>,
    /// One-to-many: the column of these rows that holds the parent's key (rows are read by it and
    /// shown as an array per parent). `None`: many-to-one, read by primary key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub foreign_key: Option<String>,
    /// One-to-many: the order of each parent's items (`deep._sort`, else `directus_relations.sort_field`,
    /// else the key), (field, descending).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sort: Vec<(String, bool)>,
    /// One-to-many: at most this many items per parent (`deep._limit`, else Directus's
    /// `QUERY_LIMIT_DEFAULT` for nested reads; `None` = all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// One-to-many: items skipped per parent (`deep._offset`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: u32,
    /// Each item is shown as its primary key (an alias field asked for by name or through `*`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub keys_only: bool,
}

/// Items per parent of a one-to-many field without `deep` (Directus's `QUERY_LIMIT_DEFAULT`).
pub const NESTED_LIMIT: u32 = 100;

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
    /// The related items the fields show, referenced by [`Projection::relation`]; empty for a query
    /// without relational fields (whose canonical form, and id, are as before relations existed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relations: Vec<RelatedField>,
    /// For a relational query: the PostgreSQL schema and the columns (primary key first, with kinds)
    /// of its own rows, so a worker can read the items a related row's change shows in.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub schema: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub root_columns: Vec<(String, Kind)>,
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

    /// Whether an event's payload needs related items read from the database.
    pub fn is_relational(&self) -> bool {
        !self.relations.is_empty()
    }
}

/// The other collections a relational field reaches, with the caller's read access there.
pub trait Related {
    fn get(&self, collection: &str) -> Option<(&Collection, &Access)>;
}

/// No related collections: relational fields are unknown fields.
pub struct NoRelated;

impl Related for NoRelated {
    fn get(&self, _: &str) -> Option<(&Collection, &Access)> {
        None
    }
}

impl Related for std::collections::HashMap<String, (Collection, Access)> {
    fn get(&self, collection: &str) -> Option<(&Collection, &Access)> {
        self.get(collection).map(|(c, a)| (c, a))
    }
}

/// A bound on relational nesting for the walks that recurse over it, whatever `MAX_RELATIONAL_DEPTH`
/// says (that setting is enforced where the query is parsed, `crate::query::parse_query`).
pub const NESTING_LIMIT: usize = 64;

/// The related collections `fields` reach from `coll` through many-to-one relations (first part of each
/// dotted path, recursively), so a caller can look up its access there before [`normalize_with`].
pub fn related_collections(
    coll: &Collection,
    fields: &[String],
    schema: &impl Fn(&str) -> Option<Collection>,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    fn walk(
        coll: &Collection,
        paths: Vec<&str>,
        schema: &dyn Fn(&str) -> Option<Collection>,
        out: &mut Vec<String>,
        depth: usize,
    ) {
        if depth > NESTING_LIMIT {
            return;
        }
        let mut by_root: Vec<(&str, Vec<&str>)> = Vec::new();
        for p in &paths {
            let (root, rest) = match p.split_once('.') {
                Some((root, rest)) => (root, Some(rest)),
                None => (*p, None),
            };
            // `*` and a bare alias reach one-to-many collections too (their keys are shown).
            let roots: Vec<&str> = if root == "*" && rest.is_none() {
                coll.o2m.keys().map(String::as_str).collect()
            } else {
                vec![root]
            };
            for root in roots {
                match by_root.iter_mut().find(|(r, _)| *r == root) {
                    Some((_, rests)) => rests.extend(rest),
                    None => by_root.push((root, rest.into_iter().collect())),
                }
            }
        }
        for (root, rests) in by_root {
            let Some(target) = coll
                .m2o_target(root)
                .or_else(|| coll.o2m_target(root).map(|o| o.collection.as_str()))
            else {
                continue;
            };
            if !out.iter().any(|c| c == target) {
                out.push(target.to_owned());
            }
            if let Some(next) = schema(target) {
                walk(&next, rests, schema, out, depth + 1);
            }
        }
    }
    walk(
        coll,
        fields.iter().map(String::as_str).collect(),
        schema,
        &mut out,
        1,
    );
    out
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

/// Build the canonical query and snapshot spec, or the error to send (no relational fields).
pub fn normalize(
    coll: &Collection,
    event: Option<EventKind>,
    item: Option<&str>,
    params: &QueryParams,
    access: &Access,
    vars: &VarContext,
    limits: NormalizeLimits,
) -> Result<Normalized, QueryError> {
    normalize_with(coll, event, item, params, access, vars, limits, &NoRelated)
}

/// [`normalize`], with the collections relational fields reach.
#[allow(clippy::too_many_arguments)]
pub fn normalize_with(
    coll: &Collection,
    event: Option<EventKind>,
    item: Option<&str>,
    params: &QueryParams,
    access: &Access,
    vars: &VarContext,
    limits: NormalizeLimits,
    related: &dyn Related,
) -> Result<Normalized, QueryError> {
    let rules = bind_rules(coll, access, vars, limits, "")?;
    let is_admin = matches!(access, Access::Admin);
    let field_allowed = |field: &str| may_read(&rules, is_admin, field);

    // Fields: `*` expands to the readable columns in table order; explicit fields must exist and be
    // readable; `a.b` shows the related item of many-to-one `a`.
    let mut relations: Vec<RelatedField> = Vec::new();
    let mut unknown: Vec<String> = Vec::new();
    let fields = project_fields(
        coll,
        &rules,
        is_admin,
        &params.fields,
        params.deep.as_ref(),
        "",
        1,
        &mut Level {
            related,
            vars,
            limits,
            relations: &mut relations,
        },
        &mut unknown,
    )?;
    let names: Vec<String> = fields.iter().map(|p| p.field.clone()).collect();
    let root_columns = if relations.is_empty() {
        Vec::new()
    } else {
        root_columns(coll, &fields)
    };

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
            schema: if relations.is_empty() {
                String::new()
            } else {
                coll.schema.clone()
            },
            root_columns,
            relations,
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

/// What a `deep` entry asks of one relation's items.
struct DeepQuery {
    filter: Filter,
    sort: Option<Vec<(String, bool)>>,
    /// `Some(None)`: `_limit: -1` (all items).
    limit: Option<Option<u32>>,
    offset: u32,
}

/// Read `_filter`, `_sort`, `_limit` and `_offset` of a `deep` entry for `coll` (fields checked
/// against the subscriber's read access there, like the top-level query's).
fn deep_query(
    coll: &Collection,
    deep: Option<&serde_json::Map<String, Json>>,
    rules: &Rules,
    is_admin: bool,
    level: &Level<'_>,
    path: &str,
) -> Result<DeepQuery, QueryError> {
    let mut q = DeepQuery {
        filter: Filter::TRUE,
        sort: None,
        limit: None,
        offset: 0,
    };
    let Some(deep) = deep else { return Ok(q) };
    let allowed = |f: &str| coll.column(f).is_some() && may_read(rules, is_admin, f);
    let mut unknown: Vec<String> = Vec::new();
    for (key, value) in deep.iter().filter(|(k, _)| k.starts_with('_')) {
        let bad = |what: &str| QueryError::invalid(format!("\"deep.{path}.{key}\" {what}"));
        match key.as_str() {
            "_filter" => {
                let value = match value {
                    Json::String(s) => {
                        serde_json::from_str(s).map_err(|_| bad("must be a valid JSON object"))?
                    }
                    v => v.clone(),
                };
                if value.is_null() {
                    continue;
                }
                let raw = filter::parse(&value, level.vars, level.limits.filter)?;
                match filter::bind(&raw, coll) {
                    Ok(f) => {
                        for c in f.conditions() {
                            if !allowed(&c.field) && !unknown.contains(&c.field) {
                                unknown.push(c.field.clone());
                            }
                        }
                        q.filter = f;
                    }
                    Err(QueryError::Forbidden(_)) => collect_raw_fields(&raw, &mut |f| {
                        if !allowed(f) && !unknown.iter().any(|u| u == f) {
                            unknown.push(f.to_owned());
                        }
                    }),
                    Err(e) => return Err(e),
                }
            }
            "_sort" => {
                let list: Vec<String> = match value {
                    Json::String(s) => s.split(',').map(|p| p.trim().to_owned()).collect(),
                    Json::Array(a) => a
                        .iter()
                        .filter_map(|v| v.as_str().map(|s| s.trim().to_owned()))
                        .collect(),
                    _ => return Err(bad("must be a string or array")),
                };
                let mut sort = Vec::new();
                for s in list.into_iter().filter(|s| !s.is_empty()) {
                    let (f, desc) = match s.strip_prefix('-') {
                        Some(f) => (f.to_owned(), true),
                        None => (s, false),
                    };
                    if !allowed(&f) && !unknown.contains(&f) {
                        unknown.push(f.clone());
                    }
                    sort.push((f, desc));
                }
                if !sort.is_empty() {
                    q.sort = Some(sort);
                }
            }
            "_limit" | "_offset" => {
                let n = match value {
                    Json::Number(n) => n.as_i64(),
                    Json::String(s) => s.trim().parse().ok(),
                    _ => None,
                }
                .ok_or_else(|| bad("must be a number"))?;
                if key == "_limit" {
                    q.limit = Some(match n {
                        -1 => None,
                        n if (0..=u32::MAX as i64).contains(&n) => Some(n as u32),
                        _ => return Err(bad("must be greater than or equal to -1")),
                    });
                } else {
                    q.offset =
                        u32::try_from(n).map_err(|_| bad("must be greater than or equal to 0"))?;
                }
            }
            _ => {
                return Err(bad("is not supported in subscriptions by this server"));
            }
        }
    }
    if !unknown.is_empty() {
        return Err(QueryError::unknown_fields(&coll.name, &unknown, path));
    }
    Ok(q)
}

/// The primary key, then the columns `fields` reads, with their kinds.
fn root_columns(coll: &Collection, fields: &[Projection]) -> Vec<(String, Kind)> {
    let mut out = vec![(coll.primary_key.clone(), coll.pk_column().kind.clone())];
    for name in crate::project::read_columns(fields) {
        if !out.iter().any(|(n, _)| n == name)
            && let Some(c) = coll.column(name)
        {
            out.push((name.to_owned(), c.kind.clone()));
        }
    }
    out
}

type Rules = Vec<(Filter, Option<Vec<String>>)>;

/// The caller's read rules for `coll`, bound against it. A rule that does not parse is the
/// administrator's error, not the subscriber's: FORBIDDEN, saying so. No rule at all: Directus's
/// collection text (`path`: where the collection was reached).
fn bind_rules(
    coll: &Collection,
    access: &Access,
    vars: &VarContext,
    limits: NormalizeLimits,
    path: &str,
) -> Result<Rules, QueryError> {
    match access {
        Access::Admin => Ok(Vec::new()),
        Access::Rules(rules) if rules.is_empty() => Err(QueryError::Forbidden(
            crate::protocol::msg_forbidden_collection(&coll.name, path),
        )),
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
            .collect(),
    }
}

fn may_read(rules: &Rules, is_admin: bool, field: &str) -> bool {
    is_admin
        || rules.iter().any(|(_, fields)| {
            fields
                .as_ref()
                .is_none_or(|fs| fs.iter().any(|f| f == "*" || f == field))
        })
}

/// What every level of a relational projection shares.
struct Level<'a> {
    related: &'a dyn Related,
    vars: &'a VarContext,
    limits: NormalizeLimits,
    relations: &'a mut Vec<RelatedField>,
}

/// The projection of `fields` on `coll` (reached at `path`, `depth` parts deep). Plain fields that do
/// not exist or may not be read go to `unknown` (the caller reports them with its sort and filter
/// fields); a relational field's problems are reported at once, with the path they were queried in.
#[allow(clippy::too_many_arguments)]
fn project_fields(
    coll: &Collection,
    rules: &Rules,
    is_admin: bool,
    fields: &[String],
    deep: Option<&serde_json::Map<String, Json>>,
    path: &str,
    depth: usize,
    level: &mut Level<'_>,
    unknown: &mut Vec<String>,
) -> Result<Vec<Projection>, QueryError> {
    let allowed = |f: &str| may_read(rules, is_admin, f);
    let mut plain: Vec<String> = Vec::new();
    // Relational fields in order of first mention, with the sub-paths asked of each (none: an alias
    // shown as its items' keys).
    let mut nested: Vec<(String, Vec<String>)> = Vec::new();
    let mut add_nested =
        |root: &str, rest: Option<&str>| match nested.iter_mut().find(|(r, _)| r == root) {
            Some((_, rests)) => rests.extend(rest.map(str::to_owned)),
            None => nested.push((
                root.to_owned(),
                rest.map(str::to_owned).into_iter().collect(),
            )),
        };
    let is_relation = |root: &str| {
        (coll.column(root).is_some() && coll.m2o_target(root).is_some())
            || coll.o2m_target(root).is_some()
    };
    for f in fields {
        if depth > NESTING_LIMIT {
            return Err(QueryError::invalid("Max relational depth exceeded"));
        }
        if f.contains(':') {
            return Err(QueryError::invalid(format!(
                "Many-to-any fields such as \"{f}\" are not supported in subscriptions yet"
            )));
        }
        if f.contains('(') {
            return Err(QueryError::invalid(format!(
                "Function fields such as \"{f}\" are not supported in subscriptions"
            )));
        }
        if let Some((root, rest)) = f.split_once('.') {
            if is_relation(root) {
                if !allowed(root) {
                    if !unknown.iter().any(|u| u == root) {
                        unknown.push(root.to_owned());
                    }
                    continue;
                }
                add_nested(root, Some(rest));
            } else if !unknown.contains(f) {
                // Not a relation here: Directus looks for a field of that whole name.
                unknown.push(f.clone());
            }
            continue;
        }
        if f == "*" {
            for c in &coll.columns {
                if allowed(&c.name) && !plain.contains(&c.name) {
                    plain.push(c.name.clone());
                }
            }
            // One-to-many aliases, as their items' keys, where their collection is readable at all.
            for (alias, o) in &coll.o2m {
                let readable = level
                    .related
                    .get(&o.collection)
                    .is_some_and(|(_, a)| !matches!(a, Access::Rules(r) if r.is_empty()));
                if allowed(alias) && readable {
                    add_nested(alias, None);
                }
            }
        } else if coll.o2m_target(f).is_some() && allowed(f) {
            add_nested(f, None);
        } else if coll.column(f).is_some() && allowed(f) {
            if !plain.contains(f) {
                plain.push(f.clone());
            }
        } else if !unknown.contains(f) {
            unknown.push(f.clone());
        }
    }
    if !path.is_empty() && !unknown.is_empty() {
        return Err(QueryError::unknown_fields(&coll.name, unknown, path));
    }
    // `deep` names relational fields of this level (its `_` keys belong to the level above).
    for key in deep.into_iter().flat_map(|d| d.keys()) {
        if !key.starts_with('_') && !is_relation(key) {
            return Err(QueryError::invalid(format!(
                "\"deep\" names \"{key}\", which is not a relational field of \"{}\"",
                coll.name
            )));
        }
    }
    // A relational field takes the place of the column it expands (`*` then `author.*`), else comes
    // after the plain fields, in order of first mention.
    let mut names: Vec<(String, Option<Vec<String>>)> =
        plain.into_iter().map(|n| (n, None)).collect();
    for (root, rests) in nested {
        match names.iter_mut().find(|(n, _)| *n == root) {
            Some((_, sub)) => *sub = Some(rests),
            None => names.push((root, Some(rests))),
        }
    }
    let mut out = Vec::with_capacity(names.len());
    for (name, sub) in names {
        let (relation, key) = match sub {
            None => (None, None),
            Some(rests) => {
                let sub_path = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}.{name}")
                };
                let (target, via) = match coll.o2m_target(&name) {
                    Some(o) => (o.collection.as_str(), Some(o)),
                    None => (coll.m2o_target(&name).expect("checked above"), None),
                };
                let sub_deep = deep.and_then(|d| d.get(&name));
                let sub_deep = match sub_deep {
                    None | Some(Json::Null) => None,
                    Some(Json::Object(o)) => Some(o),
                    Some(_) => {
                        return Err(QueryError::invalid(format!(
                            "\"deep.{name}\" must be an object"
                        )));
                    }
                };
                let rel =
                    related_field(target, &rests, sub_deep, &sub_path, depth + 1, level, via)?;
                (Some(rel), via.map(|_| coll.primary_key.clone()))
            }
        };
        out.push(Projection {
            when: field_condition(&name, rules, is_admin),
            special: coll.column(&name).map(|c| c.special).unwrap_or_default(),
            field: name,
            relation,
            key,
        });
    }
    Ok(out)
}

/// Resolve the related item `target` shows for `fields` (relative to it), reached at `path`.
fn related_field(
    target: &str,
    fields: &[String],
    deep: Option<&serde_json::Map<String, Json>>,
    path: &str,
    depth: usize,
    level: &mut Level<'_>,
    o2m: Option<&crate::schema::O2m>,
) -> Result<u16, QueryError> {
    let Some((coll, access)) = level.related.get(target) else {
        return Err(QueryError::Forbidden(
            crate::protocol::msg_forbidden_collection(target, path),
        ));
    };
    if crate::schema::is_unsubscribable(target) {
        return Err(QueryError::Forbidden(
            crate::protocol::msg_forbidden_collection(target, path),
        ));
    }
    let rules = bind_rules(coll, access, level.vars, level.limits, path)?;
    let is_admin = matches!(access, Access::Admin);
    let mut unknown = Vec::new();
    let projection = project_fields(
        coll,
        &rules,
        is_admin,
        fields,
        deep,
        path,
        depth,
        level,
        &mut unknown,
    )?;
    let q = deep_query(coll, deep, &rules, is_admin, level, path)?;
    let mut filter = Filter::and([
        q.filter,
        if is_admin {
            Filter::TRUE
        } else {
            Filter::or(rules.iter().map(|(f, _)| f.clone()))
        },
    ]);
    filter.canonicalize();
    let mut columns: Vec<(String, Kind)> =
        vec![(coll.primary_key.clone(), coll.pk_column().kind.clone())];
    let mut add = |name: &str| {
        if !columns.iter().any(|(n, _)| n == name)
            && let Some(c) = coll.column(name)
        {
            columns.push((name.to_owned(), c.kind.clone()));
        }
    };
    for c in crate::project::read_columns(&projection) {
        add(c);
    }
    let mut sort: Vec<(String, bool)> = match (o2m, q.sort) {
        (None, _) => Vec::new(),
        (Some(_), Some(s)) => s,
        (Some(o), None) => vec![(
            o.sort_field
                .clone()
                .filter(|s| coll.column(s).is_some())
                .unwrap_or_else(|| coll.primary_key.clone()),
            false,
        )],
    };
    if o2m.is_some() && !sort.iter().any(|(f, _)| *f == coll.primary_key) {
        // Ties broken by key, so the order (and the limit's cut) is the same on every read.
        sort.push((coll.primary_key.clone(), false));
    }
    if let Some(o) = o2m {
        add(&o.foreign_key);
    }
    for (s, _) in &sort {
        add(s);
    }
    let index = level.relations.len();
    if index >= u16::MAX as usize {
        return Err(QueryError::invalid("Too many relational fields"));
    }
    level.relations.push(RelatedField {
        collection: coll.name.clone(),
        schema: coll.schema.clone(),
        primary_key: coll.primary_key.clone(),
        filter,
        keys_only: fields.is_empty(),
        fields: projection,
        columns,
        foreign_key: o2m.map(|o| o.foreign_key.clone()),
        sort,
        limit: if o2m.is_some() {
            q.limit.unwrap_or(Some(NESTED_LIMIT))
        } else {
            None
        },
        offset: if o2m.is_some() { q.offset } else { 0 },
    });
    Ok(index as u16)
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
        now: None,
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
                now: None,
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
        // Without a relation, a dotted field is a field of that whole name (as in Directus).
        assert_eq!(
            norm(json!({"fields": "author.name"}), &Access::Admin)
                .unwrap_err()
                .to_string(),
            "You don't have permission to access field \"author.name\" in collection \"articles\" or it does not exist. Queried in root."
        );
    }

    fn users() -> Collection {
        let c = Column::new;
        let mut u = Collection::new(
            "directus_users",
            "public",
            "id",
            vec![
                c("id", Kind::Uuid),
                c("email", Kind::Text),
                c("first_name", Kind::Text),
                c("role", Kind::Uuid),
                c("status", Kind::Text),
            ],
        );
        u.m2o.insert("role".into(), "directus_roles".into());
        u
    }

    fn roles() -> Collection {
        let c = Column::new;
        Collection::new(
            "directus_roles",
            "public",
            "id",
            vec![c("id", Kind::Uuid), c("name", Kind::Text)],
        )
    }

    fn rel_norm(
        q: Json,
        access: &Access,
        users_access: Access,
        roles_access: Access,
    ) -> Result<Normalized, QueryError> {
        let mut articles = coll();
        articles
            .m2o
            .insert("author".into(), "directus_users".into());
        let related: std::collections::HashMap<String, (Collection, Access)> = [
            ("directus_users".to_owned(), (users(), users_access)),
            ("directus_roles".to_owned(), (roles(), roles_access)),
        ]
        .into_iter()
        .collect();
        let params = parse_query(q.as_object(), &QueryConfig::default())?;
        normalize_with(
            &articles,
            None,
            None,
            &params,
            access,
            &VarContext::default(),
            NormalizeLimits::default(),
            &related,
        )
    }

    /// (field, relation index) of a projection.
    fn shown(fields: &[Projection]) -> Vec<(&str, Option<u16>)> {
        fields
            .iter()
            .map(|p| (p.field.as_str(), p.relation))
            .collect()
    }

    #[test]
    fn many_to_one_fields_show_the_related_item() {
        let n = rel_norm(
            json!({"fields": ["id", "title", "author.email"]}),
            &Access::Admin,
            Access::Admin,
            Access::Admin,
        )
        .unwrap();
        let names = shown(&n.query.fields);
        assert_eq!(names, [("id", None), ("title", None), ("author", Some(0))]);
        let r = &n.query.relations[0];
        assert_eq!(r.collection, "directus_users");
        assert!(r.filter.is_true());
        assert_eq!(
            r.fields
                .iter()
                .map(|p| p.field.as_str())
                .collect::<Vec<_>>(),
            ["email"]
        );
        assert_eq!(
            r.columns,
            vec![
                ("id".to_owned(), Kind::Uuid),
                ("email".to_owned(), Kind::Text)
            ]
        );
        assert!(n.query.canonical_json().contains("\"relations\""));

        // `*` then `author.*`: the relation keeps the column's place; nested relations chain.
        let n = rel_norm(
            json!({"fields": ["*", "author.*", "author.role.name"]}),
            &Access::Admin,
            Access::Admin,
            Access::Admin,
        )
        .unwrap();
        let names = shown(&n.query.fields);
        assert_eq!(
            names,
            [
                ("id", None),
                ("title", None),
                ("status", None),
                ("author", Some(1))
            ]
        );
        let author = &n.query.relations[1];
        let inner = shown(&author.fields);
        assert_eq!(
            inner,
            [
                ("id", None),
                ("email", None),
                ("first_name", None),
                ("role", Some(0)),
                ("status", None)
            ]
        );
        assert_eq!(n.query.relations[0].collection, "directus_roles");

        // A query without relations serialises as before relations existed (same ids).
        let flat = rel_norm(
            json!({"fields": ["id"]}),
            &Access::Admin,
            Access::Admin,
            Access::Admin,
        )
        .unwrap();
        assert!(!flat.query.canonical_json().contains("relation"));
    }

    #[test]
    fn related_permissions_decide_rows_fields_and_errors() {
        let rule = |filter: Option<Json>, fields: &[&str]| ReadRule {
            filter,
            fields: Some(fields.iter().map(|f| f.to_string()).collect()),
        };
        let users_rules = Access::Rules(vec![rule(
            Some(json!({"status": {"_eq": "active"}})),
            &["id", "first_name"],
        )]);
        let n = rel_norm(
            json!({"fields": ["id", "author.first_name"]}),
            &Access::Admin,
            users_rules.clone(),
            Access::Rules(vec![]),
        )
        .unwrap();
        let r = &n.query.relations[0];
        assert!(!r.filter.is_true(), "only the rows the subscriber may read");
        assert!(r.columns.iter().any(|(c, _)| c == "first_name"));

        let err = rel_norm(
            json!({"fields": ["id", "author.email"]}),
            &Access::Admin,
            users_rules.clone(),
            Access::Rules(vec![]),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "You don't have permission to access field \"email\" in collection \"directus_users\" or it does not exist. Queried in \"author\"."
        );
        let err = rel_norm(
            json!({"fields": ["author.role.name"]}),
            &Access::Admin,
            Access::Admin,
            Access::Rules(vec![]),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "You don't have permission to access collection \"directus_roles\" or it does not exist. Queried in \"author.role\"."
        );
        // The relation's own column must be readable in the root collection.
        let err = rel_norm(
            json!({"fields": ["id", "author.first_name"]}),
            &Access::Rules(vec![rule(None, &["id", "title"])]),
            users_rules,
            Access::Rules(vec![]),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("field \"author\" in collection \"articles\""),
            "{err}"
        );
        // Too deep.
        let deep = vec!["author"; 11].join(".");
        let err = rel_norm(
            json!({"fields": [deep]}),
            &Access::Admin,
            Access::Admin,
            Access::Admin,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Invalid query. Max relational depth exceeded."
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
