//! Parameterised SQL for `init` snapshots and `meta` counts.
//!
//! Every value travels as a text parameter cast to its type (`$1::text::int8`), identifiers are quoted, and
//! every column is selected as `::text` so the snapshot is encoded by [`crate::value`] exactly like a change
//! captured from the WAL. The SQL for a [`Filter`] has the same three-valued semantics as
//! [`Filter::matches`]; `tests/filter_sql_agreement.rs` in the gateway checks that on random rows against
//! PostgreSQL.
//!
//! The connection running these statements must use `DateStyle=ISO, TimeZone=UTC`.

use crate::filter::{Cond, Filter, Op, compares_as_text};
use crate::normalize::{NormalizedQuery, SnapshotSpec};
use crate::schema::Collection;
use crate::value::{Datum, Kind};
use std::fmt::Write;

/// A statement and its text parameters (`None` = NULL).
#[derive(Debug, Clone, PartialEq)]
pub struct Sql {
    pub text: String,
    pub params: Vec<Option<String>>,
}

/// Quote an identifier: `"a""b"`.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

pub fn table(coll: &Collection) -> String {
    format!("{}.{}", ident(&coll.schema), ident(&coll.name))
}

/// `SELECT <columns as text> FROM <table> t WHERE <filter> ORDER BY .. LIMIT .. OFFSET ..`; the result
/// columns are the query's fields, in order, then the other columns their visibility conditions read
/// ([`crate::project::condition_columns`]). Field visibility is not decided here: the rows go through
/// [`crate::project::write_object`], like every event.
pub fn snapshot(coll: &Collection, q: &NormalizedQuery, spec: &SnapshotSpec) -> Sql {
    let mut params = Vec::new();
    let mut text = String::from("SELECT ");
    let columns = crate::project::read_columns(&q.fields);
    for (i, field) in columns.iter().enumerate() {
        if i > 0 {
            text.push_str(", ");
        }
        text.push_str(&select_expr(coll, field));
    }
    if columns.is_empty() {
        text.push_str("NULL");
    }
    let _ = write!(
        text,
        " FROM {} t WHERE {}",
        table(coll),
        filter(&q.filter, &mut params)
    );
    if !spec.sort.is_empty() {
        text.push_str(" ORDER BY ");
        for (i, (f, desc)) in spec.sort.iter().enumerate() {
            if i > 0 {
                text.push_str(", ");
            }
            let _ = write!(text, "t.{}{}", ident(f), if *desc { " DESC" } else { "" });
        }
    }
    if let Some(limit) = spec.limit {
        let _ = write!(text, " LIMIT {limit}");
    }
    if spec.offset > 0 {
        let _ = write!(text, " OFFSET {}", spec.offset);
    }
    Sql { text, params }
}

/// The related items of `rel` with the given keys that the subscriber may read: `SELECT <rel.columns
/// as text> FROM <table> t WHERE t.<pk> = ANY(<keys>) AND <rel.filter>`, one statement for any number
/// of keys. Result columns are `rel.columns`, in order (the key first), for [`crate::project::Marks::found`].
pub fn related(rel: &crate::normalize::RelatedField, keys: &[String]) -> Sql {
    let mut params = vec![Some(array_literal(keys))];
    // Many-to-one items are read by their key, one-to-many items by the column pointing at the parent.
    let by = rel.foreign_key.as_deref().unwrap_or(&rel.primary_key);
    let matches = any_of(&rel.columns, by);
    let table = format!("{}.{}", ident(&rel.schema), ident(&rel.collection));
    let filter = filter(&rel.filter, &mut params);
    let mut text = String::from("SELECT ");
    select_text(&rel.columns, &mut text);
    match (&rel.foreign_key, rel.limit) {
        (Some(fk), limit) => {
            // Each parent's items in order, at most `limit` of them.
            let order = if rel.sort.is_empty() {
                format!("t.{}", ident(&rel.primary_key))
            } else {
                rel.sort
                    .iter()
                    .map(|(f, desc)| format!("t.{}{}", ident(f), if *desc { " DESC" } else { "" }))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = write!(
                text,
                " FROM (SELECT t.*, row_number() OVER (PARTITION BY t.{fk} ORDER BY {order}) AS rt_n FROM {table} t WHERE {matches} AND {filter}) t",
                fk = ident(fk),
            );
            let offset = rel.offset as u64;
            match limit {
                Some(limit) => {
                    let _ = write!(
                        text,
                        " WHERE t.rt_n > {offset} AND t.rt_n <= {}",
                        offset + limit as u64
                    );
                }
                None if offset > 0 => {
                    let _ = write!(text, " WHERE t.rt_n > {offset}");
                }
                None => {}
            }
            let _ = write!(text, " ORDER BY t.{}, t.rt_n", ident(fk));
        }
        (None, _) => {
            let _ = write!(text, " FROM {table} t WHERE {matches} AND {filter}");
        }
    }
    Sql { text, params }
}

/// The rows of relational query `q` whose column `by` holds one of `keys` and that pass its filter:
/// the items a related row's change shows in. Result columns are `q.root_columns`, in order, then the
/// row version's `xmin` (which transaction wrote it: the caller leaves out versions written after the
/// change it follows).
pub fn follow(q: &NormalizedQuery, by: &str, keys: &[String]) -> Sql {
    let mut params = vec![Some(array_literal(keys))];
    let mut text = String::from("SELECT ");
    select_text(&q.root_columns, &mut text);
    let matches = any_of(&q.root_columns, by);
    let _ = write!(
        text,
        ", t.xmin::text FROM {}.{} t WHERE {matches} AND {} ORDER BY t.{}",
        ident(&q.schema),
        ident(&q.collection),
        filter(&q.filter, &mut params),
        ident(&q.primary_key)
    );
    Sql { text, params }
}

/// `t.<a>::text, t.<b>::text, ...` for `columns` (`char(n)` as is, like [`select_expr`]).
fn select_text(columns: &[(String, Kind)], text: &mut String) {
    for (i, (name, kind)) in columns.iter().enumerate() {
        if i > 0 {
            text.push_str(", ");
        }
        match kind {
            Kind::Bpchar => {
                let _ = write!(text, "t.{}", ident(name));
            }
            _ => {
                let _ = write!(text, "t.{}::text", ident(name));
            }
        }
    }
}

/// `t.<by> = ANY($1)` with `$1` the text array literal of keys, cast to `by`'s type so an index on it
/// serves (compared as text for the kinds that are).
fn any_of(columns: &[(String, Kind)], by: &str) -> String {
    let kind = columns
        .iter()
        .find(|(c, _)| c == by)
        .map(|(_, k)| k.clone())
        .unwrap_or(Kind::Text);
    if compares_as_text(&kind) || kind == Kind::Bpchar {
        format!("t.{}::text = ANY($1::text::text[])", ident(by))
    } else {
        format!("t.{} = ANY($1::text::{}[])", ident(by), kind.sql_cast())
    }
}

/// A PostgreSQL array literal of text elements: `{"a","b\"c"}`.
fn array_literal(items: &[String]) -> String {
    let mut out = String::from("{");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        for ch in item.chars() {
            if ch == '"' || ch == '\\' {
                out.push('\\');
            }
            out.push(ch);
        }
        out.push('"');
    }
    out.push('}');
    out
}

/// A column as text the way its output function prints it. `char(n)` is selected as is: a cast to text
/// would strip the padding that Directus (and the WAL) keep.
fn select_expr(coll: &Collection, field: &str) -> String {
    match coll.column(field).map(|c| &c.kind) {
        Some(Kind::Bpchar) => format!("t.{}", ident(field)),
        _ => format!("t.{}::text", ident(field)),
    }
}

/// `SELECT count(*) FROM <table> t WHERE <filter>`.
pub fn count(coll: &Collection, f: &Filter) -> Sql {
    let mut params = Vec::new();
    let text = format!(
        "SELECT count(*)::text FROM {} t WHERE {}",
        table(coll),
        filter(f, &mut params)
    );
    Sql { text, params }
}

/// The WHERE expression for a filter; values are appended to `params`.
pub fn filter(f: &Filter, params: &mut Vec<Option<String>>) -> String {
    match f {
        Filter::And(parts) if parts.is_empty() => "TRUE".into(),
        Filter::Or(parts) if parts.is_empty() => "FALSE".into(),
        Filter::And(parts) => join(parts, " AND ", params),
        Filter::Or(parts) => join(parts, " OR ", params),
        Filter::Cond(c) => cond(&c.resolved(), params),
    }
}

fn join(parts: &[Filter], sep: &str, params: &mut Vec<Option<String>>) -> String {
    let inner: Vec<String> = parts.iter().map(|p| filter(p, params)).collect();
    format!("({})", inner.join(sep))
}

/// A parameter compared with column `c`. NULL takes the column's type (a bare text NULL would not compare
/// with, say, an integer column).
fn param(c: &Cond, d: &Datum, params: &mut Vec<Option<String>>) -> String {
    params.push(d.sql_text());
    let n = params.len();
    let ty = match d {
        Datum::Null if compares_as_text(&c.kind) || c.kind == Kind::Bpchar => "text",
        Datum::Null => c.kind.sql_cast(),
        d => d.sql_type(),
    };
    match ty {
        "text" => format!("${n}::text"),
        ty => format!("${n}::text::{ty}"),
    }
}

fn column(c: &Cond) -> String {
    let col = format!("t.{}", ident(&c.field));
    if compares_as_text(&c.kind) || c.kind == Kind::Bpchar {
        format!("{col}::text")
    } else {
        col
    }
}

fn cond(c: &Cond, params: &mut Vec<Option<String>>) -> String {
    let col = column(c);
    let arg = |i: usize, params: &mut Vec<Option<String>>| {
        param(c, c.args.get(i).unwrap_or(&Datum::Null), params)
    };
    match c.op {
        Op::IsNull => format!("{col} IS NULL"),
        Op::IsNotNull => format!("{col} IS NOT NULL"),
        Op::Empty => format!("({col} IS NULL OR {col}::text = '')"),
        Op::NotEmpty => format!("({col} IS NOT NULL AND {col}::text <> '')"),
        Op::Eq => format!("{col} = {}", arg(0, params)),
        Op::Neq => format!("NOT ({col} = {})", arg(0, params)),
        Op::Lt => format!("{col} < {}", arg(0, params)),
        Op::Lte => format!("{col} <= {}", arg(0, params)),
        Op::Gt => format!("{col} > {}", arg(0, params)),
        Op::Gte => format!("{col} >= {}", arg(0, params)),
        Op::In | Op::Nin => {
            let items: Vec<String> = (0..c.args.len()).map(|i| arg(i, params)).collect();
            let not = if c.op == Op::Nin { "NOT " } else { "" };
            format!("{col} {not}IN ({})", items.join(", "))
        }
        Op::Between => format!("{col} BETWEEN {} AND {}", arg(0, params), arg(1, params)),
        Op::NotBetween => format!(
            "{col} NOT BETWEEN {} AND {}",
            arg(0, params),
            arg(1, params)
        ),
        Op::Like { negated, lower } => {
            let subject = if lower {
                format!("lower({col}::text)")
            } else {
                format!("{col}::text")
            };
            let not = if negated { "NOT " } else { "" };
            format!("{not}{subject} LIKE {}", arg(0, params))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::{Limits, VarContext};
    use crate::normalize::{Access, normalize};
    use crate::query::{QueryConfig, parse_query};
    use crate::schema::Column;
    use serde_json::json;

    #[test]
    fn snapshot_sql_is_parameterised() {
        let c = Column::new;
        let coll = Collection::new(
            "my \"table\"",
            "public",
            "id",
            vec![c("id", Kind::Int4), c("title", Kind::Text)],
        );
        let params = parse_query(
            json!({"filter": {"title": {"_icontains": "x'; DROP TABLE t; --"}, "id": {"_in": [1, 2]}}, "sort": "-id", "limit": 5, "offset": 2}).as_object(),
            &QueryConfig::default(),
        )
        .unwrap();
        let n = normalize(
            &coll,
            None,
            None,
            &params,
            &Access::Admin,
            &VarContext::default(),
            crate::normalize::NormalizeLimits {
                filter: Limits::default(),
            },
        )
        .unwrap();
        let sql = snapshot(&coll, &n.query, &n.snapshot);
        assert_eq!(
            sql.text,
            "SELECT t.\"id\"::text, t.\"title\"::text FROM \"public\".\"my \"\"table\"\"\" t WHERE (t.\"id\" IN ($1::text::int8, $2::text::int8) AND lower(t.\"title\"::text) LIKE $3::text) ORDER BY t.\"id\" DESC LIMIT 5 OFFSET 2"
        );
        assert_eq!(
            sql.params,
            vec![
                Some("1".into()),
                Some("2".into()),
                Some("%x'; drop table t; --%".into())
            ]
        );
    }
}
