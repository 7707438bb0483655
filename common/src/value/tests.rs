//! Encodings, decimal order, date and UUID parsing, and comparisons, against PostgreSQL's and Directus's
//! behaviour.

use super::pgtext::MICROS_PER_DAY;
use super::*;
use serde_json::Value as Json;
use std::cmp::Ordering;

fn enc(kind: Kind, text: Option<&str>) -> String {
    let mut out = Vec::new();
    write_json_value(&mut out, &kind, Special::default(), text);
    String::from_utf8(out).unwrap()
}

#[test]
fn directus_encodings() {
    assert_eq!(enc(Kind::Int4, Some("42")), "42");
    assert_eq!(enc(Kind::Int2, Some("-7")), "-7");
    assert_eq!(
        enc(Kind::Int8, Some("9007199254740993")),
        "\"9007199254740993\""
    );
    assert_eq!(enc(Kind::Numeric, Some("12.50")), "\"12.50\"");
    assert_eq!(enc(Kind::Float8, Some("0.1")), "0.1");
    assert_eq!(enc(Kind::Float8, Some("1e+21")), "1e+21");
    assert_eq!(enc(Kind::Float8, Some("3")), "3");
    assert_eq!(enc(Kind::Float8, Some("NaN")), "null");
    assert_eq!(enc(Kind::Float4, Some("-Infinity")), "null");
    assert_eq!(enc(Kind::Bool, Some("t")), "true");
    assert_eq!(enc(Kind::Bool, Some("f")), "false");
    assert_eq!(enc(Kind::Text, Some("a\"b")), "\"a\\\"b\"");
    assert_eq!(enc(Kind::Bpchar, Some("ab  ")), "\"ab  \"");
    assert_eq!(
        enc(Kind::Uuid, Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")),
        "\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\""
    );
    assert_eq!(enc(Kind::Jsonb, Some("{\"a\": [1, 2]}")), "{\"a\":[1,2]}");
    assert_eq!(enc(Kind::Date, Some("2024-01-02")), "\"2024-01-02\"");
    assert_eq!(enc(Kind::Time, Some("03:04:05.123")), "\"03:04:05.123\"");
    assert_eq!(enc(Kind::TimeTz, Some("03:04:05+00")), "\"03:04:05+00\"");
    assert_eq!(
        enc(Kind::Timestamp, Some("2024-01-02 03:04:05.987654")),
        "\"2024-01-02T03:04:05\""
    );
    assert_eq!(
        enc(Kind::TimestampTz, Some("2024-01-02 03:04:05.987654+00")),
        "\"2024-01-02T03:04:05.987Z\""
    );
    assert_eq!(
        enc(Kind::TimestampTz, Some("2024-01-02 05:04:05+02")),
        "\"2024-01-02T03:04:05.000Z\""
    );
    assert_eq!(enc(Kind::Int4, None), "null");
    assert_eq!(
        enc(Kind::Array(Box::new(Kind::Int8)), Some("{1,NULL,3}")),
        "[\"1\",null,\"3\"]"
    );
    assert_eq!(
        enc(Kind::Array(Box::new(Kind::Numeric)), Some("{1.50,2}")),
        "[1.5,2]"
    );
    assert_eq!(
        enc(
            Kind::Array(Box::new(Kind::Text)),
            Some("{a,\"b c\",\"d\\\"e\"}")
        ),
        "[\"a\",\"b c\",\"d\\\"e\"]"
    );
    assert_eq!(
        enc(Kind::Array(Box::new(Kind::Int4)), Some("{{1,2},{3,4}}")),
        "[[1,2],[3,4]]"
    );
    assert_eq!(enc(Kind::Array(Box::new(Kind::Int4)), Some("{}")), "[]");
    assert_eq!(
        enc(Kind::Bytea, Some("\\x0102ff")),
        "{\"type\":\"Buffer\",\"data\":[1,2,255]}"
    );
    assert_eq!(enc(Kind::Other, Some("1 day")), "\"1 day\"");
}

#[test]
fn specials() {
    let mut out = Vec::new();
    write_json_value(
        &mut out,
        &Kind::Text,
        Special::from_csv("cast-csv"),
        Some("a, b"),
    );
    assert_eq!(out, b"[\"a\",\" b\"]");
    out.clear();
    write_json_value(
        &mut out,
        &Kind::Text,
        Special::from_csv("conceal"),
        Some("secret"),
    );
    assert_eq!(out, b"\"**********\"");
    out.clear();
    write_json_value(
        &mut out,
        &Kind::Text,
        Special::from_csv("cast-json"),
        Some("{\"x\":1}"),
    );
    assert_eq!(out, b"{\"x\":1}");
}

#[test]
fn decimal_order_and_normalisation() {
    let d = |s| Decimal::parse(s).unwrap();
    assert_eq!(d("12.50"), d("12.5"));
    assert_eq!(d("-0.0"), d("0"));
    assert_eq!(d("1e3"), d("1000"));
    assert_eq!(d("1.5E-2").to_text(), "0.015");
    assert!(d("-2") < d("-1.5"));
    assert!(d("9.99") < d("10"));
    assert!(d("Infinity") < d("NaN"));
    assert!(d("-Infinity") < d("-1e30"));
    assert!(Decimal::parse("1..2").is_none());
    assert!(Decimal::parse("abc").is_none());
    assert!(Decimal::parse("").is_none());
    assert!(Decimal::parse("-").is_none());
}

#[test]
fn dates_round_trip() {
    for days in [-800_000i64, -1, 0, 1, 19_000, 2_932_896] {
        let (y, m, d) = civil_from_days(days);
        assert_eq!(days_from_civil(y, m, d), days);
    }
    assert_eq!(parse_date("1970-01-01"), Some(0));
    assert_eq!(parse_date("2024-02-30"), None);
    assert_eq!(
        parse_date("0001-01-01 BC"),
        Some(days_from_civil(0, 1, 1) as i32)
    );
    assert_eq!(
        format_date(days_from_civil(0, 1, 1) as i32),
        "0001-01-01 BC"
    );
    assert_eq!(
        parse_timestamp("1970-01-01 00:00:01.5", false),
        Some(1_500_000)
    );
    assert_eq!(parse_timestamp("1970-01-01T00:00:00Z", true), Some(0));
    assert_eq!(parse_timestamp("1970-01-01 01:00:00+01", true), Some(0));
    assert_eq!(
        parse_timestamp("1970-01-01 00:00:00+05:30", true),
        Some(-19_800_000_000)
    );
    assert_eq!(parse_timestamp("1970-01-01 00:00:00+05:30", false), Some(0));
    assert_eq!(parse_time("24:00:00"), Some(86_400_000_000));
    assert_eq!(parse_time("25:00:00"), None);
    assert_eq!(format_iso_utc(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(format_iso_utc(-1), "1969-12-31T23:59:59.999Z");
    assert_eq!(timestamp_sql_text(1_000_001), "1970-01-01 00:00:01.000001");
}

#[test]
fn uuids() {
    let canonical = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
    let v = parse_uuid(canonical).unwrap();
    assert_eq!(format_uuid(v), canonical);
    assert_eq!(parse_uuid("A0EEBC999C0B4EF8BB6D6BB9BD380A11"), Some(v));
    assert_eq!(parse_uuid("{a0eebc99-9c0b4ef8-bb6d6bb9-bd380a11}"), Some(v));
    assert_eq!(parse_uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1"), None);
    assert_eq!(parse_uuid("a0eebc99--9c0b-4ef8-bb6d-6bb9bd380a11"), None);
    assert_eq!(parse_uuid("g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), None);
}

#[test]
fn comparisons_follow_postgres() {
    assert_eq!(
        Datum::Float(f64::NAN).compare(&Datum::Float(f64::NAN)),
        Some(Ordering::Equal)
    );
    assert_eq!(
        Datum::Float(f64::NAN).compare(&Datum::Float(1e300)),
        Some(Ordering::Greater)
    );
    assert_eq!(
        Datum::Float(-0.0).compare(&Datum::Float(0.0)),
        Some(Ordering::Equal)
    );
    assert_eq!(
        Datum::Int(5).compare(&Datum::Numeric(Decimal::parse("5.5").unwrap())),
        Some(Ordering::Less)
    );
    assert_eq!(
        Datum::Date(1).compare(&Datum::TimestampTz(MICROS_PER_DAY)),
        Some(Ordering::Equal)
    );
    assert_eq!(
        Datum::Text("b".into()).compare(&Datum::Text("B".into())),
        Some(Ordering::Greater)
    );
    // real 0.1 is not double 0.1, as in PostgreSQL
    let real = parse_datum(&Kind::Float4, "0.1").unwrap();
    assert_ne!(real.compare(&Datum::Float(0.1)), Some(Ordering::Equal));
}

#[test]
fn malformed_text_is_an_error_not_a_panic() {
    for kind in [
        Kind::Bool,
        Kind::Int4,
        Kind::Float8,
        Kind::Numeric,
        Kind::Uuid,
        Kind::Date,
        Kind::Time,
        Kind::Timestamp,
        Kind::TimestampTz,
        Kind::Json,
    ] {
        for text in [
            "",
            "x",
            "99999999999999999999999",
            "2024-13-01",
            "12:",
            "-",
            "{",
            "\u{0}",
        ] {
            let _ = parse_datum(&kind, text);
            let mut out = Vec::new();
            write_json_value(&mut out, &kind, Special::default(), Some(text));
            assert!(
                serde_json::from_slice::<Json>(&out).is_ok(),
                "{kind:?} {text:?}"
            );
        }
    }
}
