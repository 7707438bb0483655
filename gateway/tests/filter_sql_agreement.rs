//! The filter evaluator (used by workers on every change) and the SQL (used for snapshots) must agree:
//! for random rows and random filters, the rows PostgreSQL returns are exactly the rows the evaluator
//! accepts. Filters go through the same parse → bind pipeline a subscription does.

use common::filter::{self, Filter, Limits, VarContext};
use common::schema::{Collection, Column};
use common::value::{self, Datum, Kind};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value as Json, json};
use std::collections::{BTreeSet, HashMap};
use testkit::services::Postgres;

const COLUMNS: &[(&str, &str)] = &[
    ("i", "integer"),
    ("b", "bigint"),
    ("n", "numeric"),
    ("f", "double precision"),
    ("r", "real"),
    ("t", "text"),
    ("v", "varchar(20)"),
    ("c", "char(3)"),
    ("u", "uuid"),
    ("d", "date"),
    ("ts", "timestamp"),
    ("tz", "timestamptz"),
    ("bo", "boolean"),
    ("m", "mood"),
];

fn text_pool() -> Vec<&'static str> {
    vec![
        "", "a", "A", "ab", "abc", "ABC", "a%b", "a_b", "x\\y", "é", "É", "straße", "İx", "ǅ",
        "zz", "b",
    ]
}

/// A literal for column `col`, as PostgreSQL input text; `None` = NULL.
fn row_value(col: &str, rng: &mut impl rand::Rng) -> Option<String> {
    if rng.random_bool(0.15) {
        return None;
    }
    let texts = text_pool();
    Some(match col {
        "i" => rng.random_range(-5..=5).to_string(),
        "b" => [i64::MIN + 1, -3, 0, 2, 9_007_199_254_740_993][rng.random_range(0..5)].to_string(),
        "n" => ["0", "1.5", "1.50", "-2.25", "1000000000000000000000.1", "3"]
            [rng.random_range(0..6)]
        .into(),
        "f" => ["0", "0.1", "-1.5", "1e300", "NaN", "Infinity", "3"][rng.random_range(0..7)].into(),
        "r" => ["0", "0.1", "2.5", "-3"][rng.random_range(0..4)].into(),
        "t" | "v" => texts[rng.random_range(0..texts.len())].into(),
        "c" => ["a", "ab ", "abc", "A"][rng.random_range(0..4)].into(),
        "u" => [
            "00000000-0000-0000-0000-000000000001",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
        ][rng.random_range(0..3)]
        .into(),
        "d" => {
            ["2024-01-01", "2024-06-15", "1999-12-31", "2030-02-28"][rng.random_range(0..4)].into()
        }
        "ts" => [
            "2024-01-01 00:00:00",
            "2024-06-15 12:30:00.5",
            "1999-12-31 23:59:59",
        ][rng.random_range(0..3)]
        .into(),
        "tz" => [
            "2024-01-01 00:00:00+00",
            "2024-06-15 12:30:00+02",
            "1999-12-31 23:59:59.999+00",
        ][rng.random_range(0..3)]
        .into(),
        "bo" => ["true", "false"][rng.random_range(0..2)].into(),
        "m" => ["sad", "ok", "happy"][rng.random_range(0..3)].into(),
        _ => unreachable!(),
    })
}

/// Filter values a client might send for a column (JSON, including string forms and variables).
fn values_for(col: &'static str) -> Vec<Json> {
    let texts: Vec<Json> = text_pool()
        .into_iter()
        .filter(|s| !s.is_empty())
        .map(Json::from)
        .collect();
    match col {
        "i" | "b" => vec![
            json!(0),
            json!(2),
            json!(-3),
            json!("4"),
            json!(1.5),
            json!("null"),
            json!(9_007_199_254_740_991i64),
        ],
        "n" => vec![
            json!("1.5"),
            json!(1.5),
            json!(3),
            json!("-2.250"),
            json!("1000000000000000000000"),
        ],
        "f" | "r" => vec![json!(0.1), json!(0), json!(-1.5), json!("3"), json!(2.5)],
        "t" | "v" => texts,
        "c" => vec![json!("ab"), json!("ab "), json!("a"), json!("abc")],
        "u" => vec![
            json!("00000000-0000-0000-0000-000000000001"),
            json!("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"),
        ],
        "d" | "ts" | "tz" => vec![
            json!("2024-01-01"),
            json!("2024-06-15T12:30:00"),
            json!("2024-06-15T10:30:00Z"),
            json!("$NOW"),
            json!("$NOW(-30 years)"),
            json!("1999-12-31 23:59:59"),
        ],
        "bo" => vec![json!(true), json!(false), json!("true")],
        "m" => vec![json!("ok"), json!("happy"), json!("x")],
        _ => unreachable!(),
    }
}

fn ops_for(col: &str) -> Vec<&'static str> {
    match col {
        "t" | "v" | "c" => vec![
            "_eq",
            "_neq",
            "_in",
            "_nin",
            "_null",
            "_nnull",
            "_empty",
            "_nempty",
            "_contains",
            "_ncontains",
            "_icontains",
            "_nicontains",
            "_starts_with",
            "_nstarts_with",
            "_istarts_with",
            "_ends_with",
            "_niends_with",
        ],
        "u" => vec!["_eq", "_neq", "_in", "_nin", "_null", "_nnull"],
        "bo" => vec!["_eq", "_neq", "_null", "_nnull"],
        "m" => vec![
            "_eq",
            "_neq",
            "_lt",
            "_gte",
            "_in",
            "_nin",
            "_contains",
            "_empty",
            "_between",
            "_null",
        ],
        _ => vec![
            "_eq",
            "_neq",
            "_lt",
            "_lte",
            "_gt",
            "_gte",
            "_in",
            "_nin",
            "_null",
            "_nnull",
            "_between",
            "_nbetween",
        ],
    }
}

fn leaf() -> impl Strategy<Value = Json> {
    (0..COLUMNS.len()).prop_flat_map(|ci| {
        let col = COLUMNS[ci].0;
        let ops = ops_for(col);
        let vals = values_for(col);
        (
            Just(col),
            proptest::sample::select(ops),
            proptest::sample::select(vals.clone()),
            proptest::collection::vec(proptest::sample::select(vals), 1..4),
        )
            .prop_map(|(col, op, v, list)| {
                let value = match op {
                    "_in" | "_nin" => Json::Array(list),
                    "_between" | "_nbetween" => {
                        let mut l = list;
                        l.truncate(2);
                        if l.len() < 2 {
                            l.push(l[0].clone());
                        }
                        Json::Array(l)
                    }
                    "_null" | "_nnull" | "_empty" | "_nempty" => json!(true),
                    _ => v,
                };
                json!({ col: { op: value } })
            })
    })
}

fn filters() -> impl Strategy<Value = Json> {
    leaf().prop_recursive(3, 12, 3, |inner| {
        (
            prop_oneof![Just("_and"), Just("_or")],
            proptest::collection::vec(inner, 1..4),
        )
            .prop_map(|(op, items)| json!({ op: items }))
    })
}

#[test]
fn evaluator_agrees_with_postgres() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pg = rt.block_on(Postgres::start()).unwrap();
    let client = rt.block_on(pg.connect("postgres")).unwrap();
    let ddl = format!(
        "SET TimeZone = 'UTC'; SET DateStyle = ISO; CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy'); CREATE TABLE p (id int PRIMARY KEY, {})",
        COLUMNS
            .iter()
            .map(|(n, t)| format!("{n} {t}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    rt.block_on(client.batch_execute(&ddl)).unwrap();

    // Rows: deterministic pseudo-random values, many NULLs and duplicates so filters hit.
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7);
    for id in 0..150 {
        let values: Vec<Option<String>> = COLUMNS
            .iter()
            .map(|(c, _)| row_value(c, &mut rng))
            .collect();
        let placeholders: Vec<String> = COLUMNS
            .iter()
            .enumerate()
            .map(|(i, (_, t))| format!("${}::text::{}", i + 2, t.split('(').next().unwrap()))
            .collect();
        let sql = format!(
            "INSERT INTO p (id, {}) VALUES ($1, {})",
            COLUMNS.iter().map(|c| c.0).collect::<Vec<_>>().join(", "),
            placeholders.join(", ")
        );
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&id];
        for v in &values {
            params.push(v);
        }
        rt.block_on(client.execute(&sql, &params)).unwrap();
    }

    // The collection as the gateway's schema loader would see it.
    let kind = |t: &str| match t {
        "integer" => Kind::Int4,
        "bigint" => Kind::Int8,
        "numeric" => Kind::Numeric,
        "double precision" => Kind::Float8,
        "real" => Kind::Float4,
        "text" => Kind::Text,
        "boolean" => Kind::Bool,
        "uuid" => Kind::Uuid,
        "date" => Kind::Date,
        "timestamp" => Kind::Timestamp,
        "timestamptz" => Kind::TimestampTz,
        "mood" => Kind::Other,
        t if t.starts_with("varchar") => Kind::Varchar,
        t if t.starts_with("char") => Kind::Bpchar,
        _ => unreachable!(),
    };
    let mut cols = vec![Column {
        name: "id".into(),
        kind: Kind::Int4,
        special: Default::default(),
    }];
    cols.extend(COLUMNS.iter().map(|(n, t)| Column {
        name: (*n).into(),
        kind: kind(t),
        special: Default::default(),
    }));
    let coll = Collection::new("p", "public", "id", cols.clone());

    // Rows as the evaluator sees them: text output parsed per kind (as captured changes are).
    let select = format!(
        "SELECT {} FROM p",
        cols.iter()
            .map(|c| if c.kind == Kind::Bpchar {
                c.name.clone()
            } else {
                format!("{}::text", c.name)
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
    let rows: Vec<HashMap<String, Datum>> = rt
        .block_on(client.query(&select, &[]))
        .unwrap()
        .iter()
        .map(|r| {
            cols.iter()
                .enumerate()
                .map(|(i, c)| {
                    let text: Option<&str> = r.get(i);
                    (
                        c.name.clone(),
                        text.map_or(Datum::Null, |t| value::parse_datum(&c.kind, t).unwrap()),
                    )
                })
                .collect()
        })
        .collect();

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    let vars = VarContext {
        now_micros: now,
        ..Default::default()
    };
    let checked = std::cell::Cell::new(0usize);
    let mut runner = TestRunner::new(Config {
        cases: 400,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&filters(), |raw| {
            let bound: Filter = match filter::parse(&raw, &vars, Limits::default())
                .and_then(|f| filter::bind(&f, &coll))
            {
                Ok(f) => f,
                Err(_) => return Ok(()), // refused filters never reach either side
            };
            let mut params = Vec::new();
            // `$NOW` at one instant on both sides.
            let where_sql = filter::with_now(now, || common::sql::filter(&bound, &mut params));
            let sql = format!("SELECT id FROM public.p t WHERE {where_sql}");
            let p: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                .iter()
                .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            let from_sql: BTreeSet<i32> = match rt.block_on(client.query(&sql, &p)) {
                Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
                Err(e) => {
                    return Err(TestCaseError::fail(format!(
                        "PostgreSQL refused a bound filter {raw}: {e}\n{sql}"
                    )));
                }
            };
            let from_eval: BTreeSet<i32> = rows
                .iter()
                .filter(|r| filter::with_now(now, || bound.matches(&|k: &str| r.get(k))))
                .map(|r| match r["id"] {
                    Datum::Int(i) => i as i32,
                    _ => unreachable!(),
                })
                .collect();
            checked.set(checked.get() + 1);
            prop_assert_eq!(from_sql, from_eval, "filter {} → {}", raw, sql);
            Ok(())
        })
        .unwrap();
    assert!(
        checked.get() > 200,
        "too few filters were valid ({}); the generator is off",
        checked.get()
    );
}
