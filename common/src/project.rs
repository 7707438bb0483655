//! The row projection: a query's fields, in its order, each shown only where its visibility condition
//! holds, each value in Directus's JSON encoding. One implementation for the `init` snapshot (rows from
//! PostgreSQL) and for every live event (rows from the WAL), so the two can never disagree on what a
//! subscriber sees.

use crate::filter::Filter;
use crate::normalize::{Projection, RelatedField};
use crate::value::{self, Datum, Kind};
use std::cell::OnceCell;
use std::collections::HashMap;

/// Placeholders for related items in encoded payloads, and the items once read.
///
/// A payload is encoded before its related items are known (a worker matches a change, then reads
/// the items of every matched relational query in one statement each). Each related item is written
/// as `NUL <n> NUL` — a byte no JSON text contains raw — and [`Marks::splice`] replaces it with the
/// item's object, or `null` for a key whose row is missing or not readable. Items reached from items
/// (`author.role.name`) are marked inside the objects and spliced recursively.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Marks {
    /// (relation index, key text, one-to-many), by mark number.
    requests: Vec<(u16, String, bool)>,
    by_request: HashMap<(u16, String), u32>,
    /// Many-to-one: the item's object.
    objects: HashMap<u32, Vec<u8>>,
    /// One-to-many: the items, in read order.
    lists: HashMap<u32, Vec<Vec<u8>>>,
    /// Requests before this one were handed out by [`Marks::wanted`].
    handed: usize,
}

impl Marks {
    pub fn new() -> Marks {
        Marks::default()
    }

    fn mark(&mut self, rel: u16, key: &str, many: bool, out: &mut Vec<u8>) {
        let n = match self.by_request.get(&(rel, key.to_owned())) {
            Some(&n) => n,
            None => {
                let n = self.requests.len() as u32;
                self.requests.push((rel, key.to_owned(), many));
                self.by_request.insert((rel, key.to_owned()), n);
                n
            }
        };
        out.push(0);
        out.extend_from_slice(n.to_string().as_bytes());
        out.push(0);
    }

    /// Whether any placeholder was written.
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    /// The keys to read, per relation, that were not asked for before (sorted, without repeats).
    pub fn wanted(&mut self) -> Vec<(u16, Vec<String>)> {
        let mut by_rel: Vec<(u16, Vec<String>)> = Vec::new();
        for (rel, key, _) in &self.requests[self.handed..] {
            match by_rel.iter_mut().find(|(r, _)| r == rel) {
                Some((_, keys)) => keys.push(key.clone()),
                None => by_rel.push((*rel, vec![key.clone()])),
            }
        }
        self.handed = self.requests.len();
        for (_, keys) in &mut by_rel {
            keys.sort();
            keys.dedup();
        }
        by_rel.sort_by_key(|(r, _)| *r);
        by_rel
    }

    /// A row read for relation `rel`: encode it with `rel`'s projection (marking its own related
    /// items). `cells` are in the order of [`RelatedField::columns`]; the first is the key.
    pub fn found(&mut self, rel: u16, related: &RelatedField, cells: &[Option<String>]) {
        // A one-to-many item belongs to the parent its foreign key names; a many-to-one item is
        // asked for by its own key.
        let key_at = match &related.foreign_key {
            Some(fk) => related.columns.iter().position(|(c, _)| c == fk),
            None => Some(0),
        };
        let Some(Some(key)) = key_at.and_then(|i| cells.get(i)) else {
            return;
        };
        let Some(&n) = self.by_request.get(&(rel, key.clone())) else {
            return;
        };
        let row = TextRow::new(&related.columns, cells);
        let mut item = Vec::with_capacity(64);
        if related.keys_only {
            let (kind, text) = row
                .cell(&related.primary_key)
                .unwrap_or((&Kind::Text, None));
            value::write_json_value(&mut item, kind, Default::default(), text);
        } else {
            write_object_marked(&mut item, &related.fields, &row, self);
        }
        if related.foreign_key.is_some() {
            self.lists.entry(n).or_default().push(item);
        } else {
            self.objects.insert(n, item);
        }
    }

    /// `data` with every placeholder replaced by its item (recursively), or `null`.
    pub fn splice(&self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() + 64 * self.objects.len());
        self.splice_into(data, &mut out, 0);
        out
    }

    fn splice_into(&self, data: &[u8], out: &mut Vec<u8>, depth: usize) {
        let mut rest = data;
        while let Some(start) = rest.iter().position(|&b| b == 0) {
            out.extend_from_slice(&rest[..start]);
            let after = &rest[start + 1..];
            let Some(len) = after.iter().position(|&b| b == 0) else {
                // Not a mark we wrote; keep the bytes.
                out.extend_from_slice(&rest[start..]);
                return;
            };
            let n: Option<u32> = std::str::from_utf8(&after[..len])
                .ok()
                .and_then(|t| t.parse().ok());
            let many = n
                .and_then(|n| self.requests.get(n as usize))
                .is_some_and(|(_, _, many)| *many);
            let deep_enough = depth >= crate::normalize::NESTING_LIMIT;
            if many {
                out.push(b'[');
                if !deep_enough {
                    let items = n
                        .and_then(|n| self.lists.get(&n))
                        .map_or(&[][..], Vec::as_slice);
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        self.splice_into(item, out, depth + 1);
                    }
                }
                out.push(b']');
            } else {
                match n.and_then(|n| self.objects.get(&n)) {
                    Some(object) if !deep_enough => self.splice_into(object, out, depth + 1),
                    _ => out.extend_from_slice(b"null"),
                }
            }
            rest = &after[len + 1..];
        }
        out.extend_from_slice(rest);
    }
}

/// A row of text cells (PostgreSQL's output) with known column kinds, as read for a related item.
pub struct TextRow<'a> {
    columns: &'a [(String, Kind)],
    cells: &'a [Option<String>],
    parsed: Vec<OnceCell<Datum>>,
}

impl<'a> TextRow<'a> {
    pub fn new(columns: &'a [(String, Kind)], cells: &'a [Option<String>]) -> TextRow<'a> {
        TextRow {
            columns,
            cells,
            parsed: (0..columns.len()).map(|_| OnceCell::new()).collect(),
        }
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|(n, _)| n == name)
    }
}

impl ProjectRow for TextRow<'_> {
    fn cell(&self, field: &str) -> Option<(&Kind, Option<&str>)> {
        let i = self.index(field)?;
        Some((&self.columns[i].1, self.cells.get(i)?.as_deref()))
    }

    fn holds(&self, when: &Filter) -> bool {
        static NULL: Datum = Datum::Null;
        when.matches(&|name: &str| {
            let Some(i) = self.index(name) else {
                return Some(&NULL);
            };
            Some(self.parsed[i].get_or_init(|| {
                self.cells
                    .get(i)
                    .and_then(|c| c.as_deref())
                    .and_then(|t| value::parse_datum(&self.columns[i].1, t).ok())
                    .unwrap_or(Datum::Null)
            }))
        })
    }
}

/// A row a projection reads from.
pub trait ProjectRow {
    /// The kind and text (PostgreSQL's output; `None` for NULL or a value the source does not have) of
    /// column `field`, or `None` if the row has no such column (sent as `null`).
    fn cell(&self, field: &str) -> Option<(&Kind, Option<&str>)>;

    /// Whether a field's visibility condition holds for this row. Unknown counts as no: a value is
    /// shown only when the permission is known to allow it.
    fn holds(&self, when: &Filter) -> bool;
}

/// `{"field":value,...}` for `fields`. A relational field writes its key as is: use
/// [`write_object_marked`] for a query with relations.
pub fn write_object(out: &mut Vec<u8>, fields: &[Projection], row: &impl ProjectRow) {
    write_fields(out, fields, row, None)
}

/// [`write_object`], with a [`Marks`] placeholder for each related item (filled in by
/// [`Marks::splice`] once the items are read).
pub fn write_object_marked(
    out: &mut Vec<u8>,
    fields: &[Projection],
    row: &impl ProjectRow,
    marks: &mut Marks,
) {
    write_fields(out, fields, row, Some(marks))
}

fn write_fields(
    out: &mut Vec<u8>,
    fields: &[Projection],
    row: &impl ProjectRow,
    mut marks: Option<&mut Marks>,
) {
    out.push(b'{');
    for (n, p) in fields.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        value::write_json_string(out, &p.field);
        out.push(b':');
        let visible = p.when.as_ref().is_none_or(|w| row.holds(w));
        // A one-to-many alias is keyed by this row's primary key; a many-to-one by its own column.
        let cell = row.cell(p.key.as_deref().unwrap_or(&p.field));
        match (cell, p.relation, marks.as_deref_mut()) {
            (Some((_, Some(key))), Some(rel), Some(marks)) if visible => {
                marks.mark(rel, key, p.key.is_some(), out)
            }
            (_, Some(_), _) if p.key.is_some() && visible => out.extend_from_slice(b"[]"),
            (Some((_, None)), Some(_), Some(_)) => out.extend_from_slice(b"null"),
            (Some((kind, text)), _, _) if visible => {
                value::write_json_value(out, kind, p.special, text)
            }
            _ => out.extend_from_slice(b"null"),
        }
    }
    out.push(b'}');
}

/// The columns a projection reads, once each: its fields that are columns, then the keys its
/// one-to-many aliases are read by, then what its visibility conditions look at.
pub fn read_columns(fields: &[Projection]) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for p in fields.iter().filter(|p| p.key.is_none()) {
        if !out.contains(&p.field.as_str()) {
            out.push(&p.field);
        }
    }
    for k in fields.iter().filter_map(|p| p.key.as_deref()) {
        if !out.contains(&k) {
            out.push(k);
        }
    }
    for c in condition_columns(fields) {
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

/// The columns a projection reads beyond its fields: those its visibility conditions look at, once each,
/// in first-use order.
pub fn condition_columns(fields: &[Projection]) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for p in fields {
        for c in p.when.iter().flat_map(|w| w.conditions()) {
            let name = c.field.as_str();
            if !fields.iter().any(|f| f.field == name) && !out.contains(&name) {
                out.push(name);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::{Datum, Special};
    use std::collections::HashMap;

    struct Row(HashMap<&'static str, (Kind, Option<&'static str>)>);

    impl ProjectRow for Row {
        fn cell(&self, field: &str) -> Option<(&Kind, Option<&str>)> {
            self.0.get(field).map(|(k, t)| (k, *t))
        }
        fn holds(&self, when: &Filter) -> bool {
            let datums: HashMap<&str, Datum> = self
                .0
                .iter()
                .map(|(n, (k, t))| {
                    let d = t.map_or(Datum::Null, |t| value::parse_datum(k, t).unwrap());
                    (*n, d)
                })
                .collect();
            when.matches(&|name: &str| datums.get(name))
        }
    }

    fn proj(field: &str, when: Option<Filter>) -> Projection {
        Projection {
            field: field.into(),
            when,
            special: Special::default(),
            relation: None,
            key: None,
        }
    }

    fn status_is(v: &str) -> Filter {
        Filter::Cond(crate::filter::Cond {
            field: "status".into(),
            kind: Kind::Text,
            op: crate::filter::Op::Eq,
            args: vec![Datum::Text(v.into())],
            now: None,
        })
    }

    #[test]
    fn fields_in_order_hidden_where_the_condition_fails() {
        let row = Row(HashMap::from([
            ("id", (Kind::Int8, Some("7"))),
            ("title", (Kind::Text, Some("a \"b\""))),
            ("status", (Kind::Text, Some("draft"))),
            ("secret", (Kind::Text, Some("s"))),
            ("empty", (Kind::Text, None)),
        ]));
        let fields = [
            proj("title", None),
            proj("id", None),
            proj("secret", Some(status_is("published"))),
            proj("empty", Some(status_is("draft"))),
            proj("gone", None),
        ];
        let mut out = Vec::new();
        write_object(&mut out, &fields, &row);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"title":"a \"b\"","id":"7","secret":null,"empty":null,"gone":null}"#
        );
        assert_eq!(condition_columns(&fields), ["status"]);
        assert!(condition_columns(&fields[..2]).is_empty());
    }

    #[test]
    fn related_items_are_marked_read_once_and_spliced_recursively() {
        use crate::normalize::RelatedField;
        let text = |f: &str| Projection {
            field: f.into(),
            when: None,
            special: Special::default(),
            relation: None,
            key: None,
        };
        let roles = RelatedField {
            collection: "roles".into(),
            schema: "public".into(),
            primary_key: "id".into(),
            filter: Filter::TRUE,
            fields: vec![text("name")],
            columns: vec![("id".into(), Kind::Int4), ("name".into(), Kind::Text)],
            foreign_key: None,
            sort: Vec::new(),
            limit: None,
            offset: 0,
            keys_only: false,
        };
        let users = RelatedField {
            collection: "users".into(),
            schema: "public".into(),
            primary_key: "id".into(),
            filter: Filter::TRUE,
            fields: vec![
                text("email"),
                Projection {
                    relation: Some(0),
                    ..text("role")
                },
            ],
            columns: vec![
                ("id".into(), Kind::Int4),
                ("email".into(), Kind::Text),
                ("role".into(), Kind::Int4),
            ],
            foreign_key: None,
            sort: Vec::new(),
            limit: None,
            offset: 0,
            keys_only: false,
        };
        let fields = vec![
            text("id"),
            Projection {
                relation: Some(1),
                ..text("author")
            },
        ];
        let row = |id: &'static str, author: Option<&'static str>| {
            Row([
                ("id", (Kind::Int4, Some(id))),
                ("author", (Kind::Int4, author)),
            ]
            .into_iter()
            .collect())
        };
        let mut marks = Marks::new();
        let mut data = b"[".to_vec();
        for (i, r) in [
            row("1", Some("7")),
            row("2", Some("7")),
            row("3", None),
            row("4", Some("9")),
        ]
        .iter()
        .enumerate()
        {
            if i > 0 {
                data.push(b',');
            }
            write_object_marked(&mut data, &fields, r, &mut marks);
        }
        data.push(b']');
        // One read per relation and level, each key once.
        assert_eq!(
            marks.wanted(),
            vec![(1, vec!["7".to_owned(), "9".to_owned()])]
        );
        assert!(marks.wanted().is_empty());
        // User 9 is not readable (the read does not return it); user 7 shows role 5.
        marks.found(
            1,
            &users,
            &[Some("7".into()), Some("a@x".into()), Some("5".into())],
        );
        assert_eq!(marks.wanted(), vec![(0, vec!["5".to_owned()])]);
        marks.found(
            0,
            &roles,
            &[Some("5".into()), Some("editor \u{0}\"quoted\"".into())],
        );
        let out: serde_json::Value = serde_json::from_slice(&marks.splice(&data)).unwrap();
        assert_eq!(
            out,
            serde_json::json!([
                {"id": 1, "author": {"email": "a@x", "role": {"name": "editor \u{0}\"quoted\""}}},
                {"id": 2, "author": {"email": "a@x", "role": {"name": "editor \u{0}\"quoted\""}}},
                {"id": 3, "author": null},
                {"id": 4, "author": null}
            ])
        );
    }
}
