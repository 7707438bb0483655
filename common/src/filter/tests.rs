//! Parsing, binding and evaluation with Directus's semantics and messages, on a small collection.

use super::*;
use crate::schema::{Collection, Column};
use crate::value::{self, Datum, Kind};
use serde_json::{Value as Json, json};
use std::collections::HashMap;

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
            c("score", Kind::Float8),
            c("price", Kind::Numeric),
            c("big", Kind::Int8),
            c("flag", Kind::Bool),
            c("author", Kind::Uuid),
            c("date_created", Kind::TimestampTz),
            c("day", Kind::Date),
            c("meta", Kind::Jsonb),
        ],
    )
}

fn ctx() -> VarContext {
    VarContext {
        now_micros: value::parse_timestamp("2024-06-15 12:00:00", true).unwrap(),
        user: Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()),
        ..Default::default()
    }
}

fn filter(j: Json) -> Result<Filter, QueryError> {
    bind(&parse(&j, &ctx(), Limits::default())?, &coll())
}

fn row(pairs: &[(&str, &str)]) -> HashMap<String, Datum> {
    let c = coll();
    c.columns
        .iter()
        .map(|col| {
            let text = pairs.iter().find(|(k, _)| *k == col.name).map(|(_, v)| *v);
            let d = match text {
                None | Some("NULL") => Datum::Null,
                Some(t) => value::parse_datum(&col.kind, t).unwrap(),
            };
            (col.name.clone(), d)
        })
        .collect()
}

fn m(f: &Filter, r: &HashMap<String, Datum>) -> bool {
    f.matches(&|k: &str| r.get(k))
}

#[test]
fn equality_and_null_semantics() {
    let f = filter(json!({"status": {"_neq": "draft"}})).unwrap();
    assert!(m(&f, &row(&[("status", "published")])));
    assert!(!m(&f, &row(&[("status", "draft")])));
    assert!(!m(&f, &row(&[])), "_neq excludes NULL like SQL");
    let f = filter(json!({"status": {"_eq": "null"}})).unwrap();
    assert!(m(&f, &row(&[])), "\"null\" is coerced to null → IS NULL");
    let f = filter(json!({"status": "published"})).unwrap();
    assert!(m(&f, &row(&[("status", "published")])));
    let f = filter(json!({"status": {"_nin": ["a", null]}})).unwrap();
    assert!(
        !m(&f, &row(&[("status", "b")])),
        "NOT IN with a NULL is never true"
    );
    let f = filter(json!({"status": {"_in": "a,b"}})).unwrap();
    assert!(m(&f, &row(&[("status", "b")])));
    assert!(!m(&f, &row(&[("status", "c")])));
}

#[test]
fn numbers_dates_and_logic() {
    let f = filter(json!({"_or": [{"id": {"_gt": "10"}}, {"score": {"_lte": 1.5}}]})).unwrap();
    assert!(m(&f, &row(&[("id", "11")])));
    assert!(m(&f, &row(&[("id", "1"), ("score", "1.5")])));
    assert!(!m(&f, &row(&[("id", "1"), ("score", "2")])));
    let f = filter(json!({"id": {"_gt": 5.5}})).unwrap();
    assert!(m(&f, &row(&[("id", "6")])) && !m(&f, &row(&[("id", "5")])));
    let f = filter(json!({"price": {"_between": ["1.0", "2.50"]}})).unwrap();
    assert!(m(&f, &row(&[("price", "2.5")])) && !m(&f, &row(&[("price", "2.51")])));
    // `$NOW` is evaluated at the moment given (a change's commit time), not when the filter was bound.
    let at = value::parse_timestamp("2024-06-15 12:00:00", true).unwrap();
    let f = filter(json!({"date_created": {"_gte": "$NOW(-1 day)"}})).unwrap();
    with_now(at, || {
        assert!(m(&f, &row(&[("date_created", "2024-06-15 00:00:00+00")])));
        assert!(!m(&f, &row(&[("date_created", "2024-06-14 11:59:59+00")])));
    });
    let week_later = at + 7 * 86_400_000_000;
    with_now(week_later, || {
        assert!(
            !m(&f, &row(&[("date_created", "2024-06-15 00:00:00+00")])),
            "a week later the same filter means the day before then"
        );
        assert!(m(&f, &row(&[("date_created", "2024-06-21 13:00:00+00")])));
    });
    let f2 = filter(json!({"date_created": {"_gte": "$NOW(-1 day)"}})).unwrap();
    assert_eq!(
        f, f2,
        "the bound filter does not depend on when it was bound"
    );
    let f = filter(json!({"day": {"_lt": "$NOW"}})).unwrap();
    with_now(at, || {
        assert!(
            m(&f, &row(&[("day", "2024-06-15")])),
            "date promotes to midnight vs timestamptz"
        )
    });
    let f = filter(json!({"date_created": {"_gte": "$NOW(-1 month)"}})).unwrap();
    let march31 = value::parse_timestamp("2024-03-31 00:00:00", true).unwrap();
    with_now(march31, || {
        assert!(
            m(&f, &row(&[("date_created", "2024-02-29 00:00:00+00")])),
            "calendar months clamp"
        );
        assert!(!m(&f, &row(&[("date_created", "2024-02-28 23:59:59+00")])));
    });
    let f = filter(json!({"author": {"_eq": "$CURRENT_USER"}})).unwrap();
    assert!(m(
        &f,
        &row(&[("author", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")])
    ));
    let f = filter(json!({"big": {"_in": [1, "2"]}})).unwrap();
    assert!(m(&f, &row(&[("big", "2")])));
    let f = filter(json!({"flag": {"_eq": "true"}, "id": {"_gt": 0, "_lt": 3}})).unwrap();
    assert!(m(&f, &row(&[("flag", "t"), ("id", "2")])));
    assert!(!m(&f, &row(&[("flag", "t"), ("id", "3")])));
}

#[test]
fn like_family() {
    let f = filter(json!({"title": {"_contains": "b_c"}})).unwrap();
    assert!(
        m(&f, &row(&[("title", "abxcd")])),
        "_ is a wildcard, as Directus does not escape"
    );
    let f = filter(json!({"title": {"_icontains": "HELLO"}})).unwrap();
    assert!(m(&f, &row(&[("title", "say Hello!")])));
    let f = filter(json!({"title": {"_nstarts_with": "a"}})).unwrap();
    assert!(
        !m(&f, &row(&[("title", "abc")])) && m(&f, &row(&[("title", "bc")])) && !m(&f, &row(&[]))
    );
    assert!(like("100%", "100\\%"));
    assert!(!like("1000", "100\\%"));
    assert!(like("", "%"));
    assert!(like("abc", "a%c"));
    assert!(!like("ab", "a_c"));
    assert!(like("aXbXc", "%b%c"));
    assert!(filter(json!({"title": {"_ends_with": "x\\"}})).is_err());
}

#[test]
fn validation_messages() {
    let err = |j| filter(j).unwrap_err().to_string();
    assert_eq!(
        err(json!({"title": {"_gt": "a"}})),
        "Invalid query. \"text\" field type does not contain the \"_gt\" filter operator."
    );
    assert_eq!(
        err(json!({"nope": {"_eq": 1}})),
        "You don't have permission to access field \"nope\" in collection \"articles\" or it does not exist. Queried in root."
    );
    assert_eq!(
        err(json!({"title": {"_in": []}})),
        "Invalid query. \"_in\" has to be an array of values."
    );
    assert_eq!(
        err(json!({"title": {"_eq": ""}})),
        "Invalid query. You can't filter for an empty string in \"_eq\". Use \"_empty\" or \"_nempty\" instead."
    );
    assert_eq!(
        err(json!({"title": {"_null": "x"}})),
        "Invalid query. \"_null\" has to be a boolean."
    );
    assert_eq!(
        err(json!({"title": {"_eq": {"a": 1}}})),
        "Invalid query. The filter value for \"_eq\" has to be a string, number, or boolean."
    );
    assert_eq!(
        err(json!({"title": null})),
        "Invalid query. Invalid filter object."
    );
    assert_eq!(
        err(json!({"_and": {"a": 1}})),
        "Invalid query. Invalid filter object."
    );
    assert!(err(json!({"id": {"_eq": "abc"}})).contains("Invalid numeric value"));
    assert!(err(json!({"author": {"name": {"_eq": "x"}}})).contains("Relational filters"));
    assert!(err(json!({"meta": {"_eq": "x"}})).contains("\"json\" field type"));
    let deep = (0..40).fold(json!({"id": {"_eq": 1}}), |acc, _| json!({"_and": [acc]}));
    assert!(err(deep).contains("nested too deeply"));
    let many: Vec<Json> = (0..2000).map(Json::from).collect();
    assert!(err(json!({"id": {"_in": many}})).contains("too large"));
}

#[test]
fn between_with_wrong_arity_is_dropped() {
    let f = filter(json!({"id": {"_between": [1, 2, 3]}})).unwrap();
    assert!(f.is_true());
}

#[test]
fn now_adjustments() {
    let base = 0;
    let day = 86_400_000_000;
    assert_eq!(adjust_now(base, "-7 days"), Some(-7 * day));
    assert_eq!(adjust_now(base, "+1 month"), Some(31 * day));
    assert_eq!(adjust_now(base, "2h"), Some(2 * 3_600_000_000));
    assert_eq!(adjust_now(base, "3"), Some(3 * day));
    assert_eq!(adjust_now(base, "1.5 s"), Some(1_500_000));
    assert_eq!(adjust_now(base, "nonsense"), None);
    // Jan 31 + 1 month clamps to Feb 29 (2024 is a leap year)
    let jan31 = value::parse_timestamp("2024-01-31 10:00:00", true).unwrap();
    assert_eq!(
        value::format_iso_utc(adjust_now(jan31, "1 mo").unwrap()),
        "2024-02-29T10:00:00.000Z"
    );
}

#[test]
fn canonical_form_is_order_independent() {
    let mut a = filter(json!({"_and": [{"id": {"_eq": 1}}, {"status": {"_eq": "x"}}]})).unwrap();
    let mut b = filter(json!({"_and": [{"status": {"_eq": "x"}}, {"id": {"_eq": 1}}]})).unwrap();
    a.canonicalize();
    b.canonicalize();
    assert_eq!(a, b);
}

#[test]
fn lookups_are_collected() {
    let j = json!({"team": {"_eq": "$CURRENT_USER.team"}, "x": {"_in": ["$CURRENT_ROLE.name"]}});
    assert_eq!(
        required_lookups(&j),
        vec![
            "$CURRENT_USER.team".to_string(),
            "$CURRENT_ROLE.name".to_string()
        ]
    );
}

#[test]
fn a_now_adjustment_that_does_not_parse_is_invalid_and_named() {
    let ctx = VarContext::default();
    let e = parse(
        &json!({"at": {"_gte": "$NOW(-7 dayz)"}}),
        &ctx,
        Limits::default(),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "Invalid query. Invalid \"$NOW\" adjustment \"-7 dayz\" in \"$NOW(-7 dayz)\"."
    );
    let e = parse(
        &json!({"at": {"_in": ["$NOW(soon)"]}}),
        &ctx,
        Limits::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("\"soon\""), "{e}");
    assert!(
        parse(
            &json!({"at": {"_gte": "$NOW(-7 days)"}}),
            &ctx,
            Limits::default()
        )
        .is_ok()
    );
}
