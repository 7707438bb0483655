//! The row projection: a query's fields, in its order, each shown only where its visibility condition
//! holds, each value in Directus's JSON encoding. One implementation for the `init` snapshot (rows from
//! PostgreSQL) and for every live event (rows from the WAL), so the two can never disagree on what a
//! subscriber sees.

use crate::filter::Filter;
use crate::normalize::Projection;
use crate::value::{self, Kind};

/// A row a projection reads from.
pub trait ProjectRow {
    /// The kind and text (PostgreSQL's output; `None` for NULL or a value the source does not have) of
    /// column `field`, or `None` if the row has no such column (sent as `null`).
    fn cell(&self, field: &str) -> Option<(&Kind, Option<&str>)>;

    /// Whether a field's visibility condition holds for this row. Unknown counts as no: a value is
    /// shown only when the permission is known to allow it.
    fn holds(&self, when: &Filter) -> bool;
}

/// `{"field":value,...}` for `fields`.
pub fn write_object(out: &mut Vec<u8>, fields: &[Projection], row: &impl ProjectRow) {
    out.push(b'{');
    for (n, p) in fields.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        value::write_json_string(out, &p.field);
        out.push(b':');
        let visible = p.when.as_ref().is_none_or(|w| row.holds(w));
        match row.cell(&p.field) {
            Some((kind, text)) if visible => value::write_json_value(out, kind, p.special, text),
            _ => out.extend_from_slice(b"null"),
        }
    }
    out.push(b'}');
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
        }
    }

    fn status_is(v: &str) -> Filter {
        Filter::Cond(crate::filter::Cond {
            field: "status".into(),
            kind: Kind::Text,
            op: crate::filter::Op::Eq,
            args: vec![Datum::Text(v.into())],
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
}
