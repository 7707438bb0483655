//! `common::query::parse_query` and `common::normalize::normalize` (which parses and binds the filter) on
//! arbitrary JSON, against a fixed collection with a column of every kind.
//!
//! Input: `[selector, json...]`. The JSON must be an object (anything else is skipped); it is the `query` of
//! a subscribe message. The selector picks the access (admin, a permission rule with a row filter and a
//! field list, several rules), the `event` and the `item`. A `"row"` key (ignored by `parse_query`), an
//! object of column → PostgreSQL text, gives a row to evaluate the filter on.
//!
//! Checked: no panic in parsing, normalising, SQL generation or evaluation; and the canonical JSON of a
//! normalised query (what is registered in Redis) reads back as the same query with the same id, which is
//! what a worker checks before it accepts a registration (`matching::coordinator`, on `apply_ctl`).
#![no_main]

use common::filter::VarContext;
use common::normalize::{Access, NormalizeLimits, NormalizedQuery, ReadRule, normalize};
use common::protocol::EventKind;
use common::query::{QueryConfig, parse_query};
use common::schema::{Collection, Column};
use common::value::{Datum, Kind, Special, parse_datum};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value as Json, json};
use std::collections::HashMap;
use std::sync::OnceLock;

fn collection() -> Collection {
    let c = |n: &str, k: Kind| Column {
        name: n.into(),
        kind: k,
        special: Special::default(),
    };
    let mut cols = vec![
        c("id", Kind::Int4),
        c("title", Kind::Text),
        c("status", Kind::Varchar),
        c("code", Kind::Bpchar),
        c("author", Kind::Uuid),
        c("price", Kind::Float8),
        c("ratio", Kind::Float4),
        c("amount", Kind::Numeric),
        c("big", Kind::Int8),
        c("small", Kind::Int2),
        c("flag", Kind::Bool),
        c("born", Kind::Date),
        c("at", Kind::Time),
        c("attz", Kind::TimeTz),
        c("ts", Kind::Timestamp),
        c("tstz", Kind::TimestampTz),
        c("meta", Kind::Json),
        c("doc", Kind::Jsonb),
        c("blob", Kind::Bytea),
        c("tags", Kind::Array(Box::new(Kind::Text))),
        c("mood", Kind::Other),
        c("secret", Kind::Text),
        c("opts", Kind::Json),
    ];
    cols[21].special.conceal = true;
    cols[22].special.cast_json = true;
    let mut coll = Collection::new("articles", "public", "id", cols);
    coll.sort_field = Some("small".into());
    coll
}

struct Fixture {
    coll: Collection,
    vars: VarContext,
    rules: Access,
    multi: Access,
    /// Rows every filter is evaluated on (besides the input's own `row`).
    rows: Vec<HashMap<String, Datum>>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let coll = collection();
        let mut lookups = HashMap::new();
        lookups.insert("$CURRENT_USER.email".into(), json!("a@example.com"));
        lookups.insert("$CURRENT_ROLE.name".into(), json!("editor"));
        let vars = VarContext {
            now_micros: 1_700_000_000_000_000,
            user: Some("3f0c2b8e-9d1e-4c55-a2a4-4bbd1c7a9e11".into()),
            role: Some("7d1c5b9a-0e4f-4a9b-8c3d-2e6f1a0b9c8d".into()),
            roles: vec!["7d1c5b9a-0e4f-4a9b-8c3d-2e6f1a0b9c8d".into()],
            policies: vec!["abf8a154-5b1c-4a46-ac9c-7300570f4f17".into()],
            lookups,
        };
        let rules = Access::Rules(vec![ReadRule {
            filter: Some(json!({"_or": [{"status": {"_eq": "published"}}, {"author": {"_eq": "$CURRENT_USER"}}]})),
            fields: Some(vec!["id".into(), "title".into(), "status".into(), "price".into(), "ts".into()]),
        }]);
        let multi = Access::Rules(vec![
            ReadRule {
                filter: Some(json!({"status": {"_eq": "published"}})),
                fields: Some(vec!["*".into()]),
            },
            ReadRule {
                filter: Some(json!({"price": {"_gt": 10}})),
                fields: Some(vec!["id".into(), "secret".into()]),
            },
            ReadRule {
                filter: None,
                fields: Some(vec!["id".into()]),
            },
        ]);
        let texts: [&[(&str, &str)]; 3] = [
            &[],
            &[
                ("id", "1"),
                ("title", "Hello World"),
                ("status", "published"),
                ("code", "ab  "),
                ("author", "3f0c2b8e-9d1e-4c55-a2a4-4bbd1c7a9e11"),
                ("price", "12.5"),
                ("ratio", "0.25"),
                ("amount", "1234.5678"),
                ("big", "9007199254740993"),
                ("small", "-3"),
                ("flag", "t"),
                ("born", "2001-02-03"),
                ("at", "12:34:56.789"),
                ("attz", "12:34:56+02"),
                ("ts", "2023-11-14 22:13:20"),
                ("tstz", "2023-11-14 22:13:20.5+00"),
                ("meta", "{\"a\": [1, 2]}"),
                ("doc", "[]"),
                ("blob", "\\xdeadbeef"),
                ("tags", "{a,b}"),
                ("mood", "happy"),
                ("secret", "s3cret"),
                ("opts", "{}"),
            ],
            &[
                ("id", "2147483647"),
                ("price", "NaN"),
                ("ratio", "-Infinity"),
                ("amount", "NaN"),
                ("big", "-9223372036854775808"),
                ("born", "infinity"),
                ("ts", "-infinity"),
                ("tstz", "infinity"),
                ("title", ""),
            ],
        ];
        let rows = texts
            .iter()
            .map(|row| {
                row.iter()
                    .filter_map(|(name, text)| {
                        let kind = &coll.column(name)?.kind;
                        Some(((*name).to_owned(), parse_datum(kind, text).ok()?))
                    })
                    .collect()
            })
            .collect();
        Fixture {
            coll,
            vars,
            rules,
            multi,
            rows,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let [selector, json @ ..] = data else {
        return;
    };
    let Ok(Json::Object(raw)) = serde_json::from_slice::<Json>(json) else {
        return;
    };
    let f = fixture();
    let access = match selector & 3 {
        0 | 3 => &Access::Admin,
        1 => &f.rules,
        _ => &f.multi,
    };
    let event = match (selector >> 2) & 3 {
        0 => None,
        1 => Some(EventKind::Create),
        2 => Some(EventKind::Update),
        _ => Some(EventKind::Delete),
    };
    let item = match (selector >> 4) & 3 {
        0 | 3 => None,
        1 => Some("42"),
        _ => raw.get("item").and_then(Json::as_str),
    };
    let cfg = if selector & 0x40 != 0 {
        QueryConfig {
            limit_default: 10,
            limit_max: Some(50),
            max_relational_depth: 3,
        }
    } else {
        QueryConfig::default()
    };

    let Ok(params) = parse_query(Some(&raw), &cfg) else {
        return;
    };
    let Ok(n) = normalize(
        &f.coll,
        event,
        item,
        &params,
        access,
        &f.vars,
        NormalizeLimits::default(),
    ) else {
        return;
    };

    // The registration a worker reads back must be the same query with the same id.
    let canonical = n.query.canonical_json();
    let back: NormalizedQuery = match serde_json::from_str(&canonical) {
        Ok(q) => q,
        Err(e) => panic!("canonical JSON does not read back ({e}): {canonical}"),
    };
    assert_eq!(back.id(), n.query.id(), "id changes through Redis: {canonical}");
    assert_eq!(back.canonical_json(), canonical);

    // SQL for the snapshot and the counts.
    let _ = common::sql::snapshot(&f.coll, &n.query, &n.snapshot);
    let _ = common::sql::count(&f.coll, &n.snapshot.permission_filter);

    // Evaluate the filter (and the field conditions) on fixed rows and the input's row.
    let mut own: HashMap<String, Datum> = HashMap::new();
    if let Some(Json::Object(row)) = raw.get("row") {
        for (name, v) in row {
            if let (Some(col), Some(text)) = (f.coll.column(name), v.as_str())
                && let Ok(d) = parse_datum(&col.kind, text)
            {
                own.insert(name.clone(), d);
            }
        }
    }
    for row in f.rows.iter().chain([&own]) {
        let get = |name: &str| row.get(name);
        let _ = n.query.filter.matches(&get);
        let _ = n.snapshot.permission_filter.matches(&get);
        for p in &n.query.fields {
            if let Some(w) = &p.when {
                let _ = w.matches(&get);
            }
        }
    }
});
