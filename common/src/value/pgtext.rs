//! PostgreSQL's text forms, parsed and printed: array literals, floats, UUIDs, and dates, times and
//! timestamps (proleptic Gregorian, ISO DateStyle, BC years, ±infinity), with the day/civil-date
//! arithmetic they share.

use std::fmt::Write as _;

pub const INFINITY_MICROS: i64 = i64::MAX;
pub const NEG_INFINITY_MICROS: i64 = i64::MIN;
pub(super) const MICROS_PER_DAY: i64 = 86_400_000_000;

#[derive(Debug, PartialEq)]
pub(super) enum ArrayItem {
    Null,
    Value(String),
    Nested(Vec<ArrayItem>),
}

/// Parse PostgreSQL's array output (`{a,"b c",NULL,{1,2}}`), optionally with a dimension prefix.
pub(super) fn parse_array_literal(text: &str) -> Option<Vec<ArrayItem>> {
    let text = match text.find("={") {
        Some(pos) if text.starts_with('[') => &text[pos + 1..],
        _ => text,
    };
    let chars: Vec<char> = text.chars().collect();
    let mut pos = 0;
    let items = parse_array_level(&chars, &mut pos)?;
    (pos == chars.len()).then_some(items)
}

fn parse_array_level(chars: &[char], pos: &mut usize) -> Option<Vec<ArrayItem>> {
    if chars.get(*pos) != Some(&'{') {
        return None;
    }
    *pos += 1;
    let mut items = Vec::new();
    if chars.get(*pos) == Some(&'}') {
        *pos += 1;
        return Some(items);
    }
    loop {
        match chars.get(*pos)? {
            '{' => items.push(ArrayItem::Nested(parse_array_level(chars, pos)?)),
            '"' => {
                *pos += 1;
                let mut s = String::new();
                loop {
                    match chars.get(*pos)? {
                        '\\' => {
                            s.push(*chars.get(*pos + 1)?);
                            *pos += 2;
                        }
                        '"' => {
                            *pos += 1;
                            break;
                        }
                        c => {
                            s.push(*c);
                            *pos += 1;
                        }
                    }
                }
                items.push(ArrayItem::Value(s));
            }
            _ => {
                let start = *pos;
                while !matches!(chars.get(*pos), Some(',') | Some('}') | None) {
                    *pos += 1;
                }
                let s: String = chars[start..*pos].iter().collect();
                items.push(if s == "NULL" {
                    ArrayItem::Null
                } else {
                    ArrayItem::Value(s)
                });
            }
        }
        match chars.get(*pos)? {
            ',' => *pos += 1,
            '}' => {
                *pos += 1;
                return Some(items);
            }
            _ => return None,
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Numbers

pub(super) fn parse_pg_float(text: &str, single: bool) -> Option<f64> {
    let v = match text {
        "NaN" => f64::NAN,
        "Infinity" => f64::INFINITY,
        "-Infinity" => f64::NEG_INFINITY,
        _ => {
            if single {
                // A real is promoted to double precision for comparisons, so keep its binary value.
                text.trim().parse::<f32>().ok()? as f64
            } else {
                text.trim().parse::<f64>().ok()?
            }
        }
    };
    Some(v)
}

// ---------------------------------------------------------------------------------------------------------
// UUIDs

/// Parse a UUID in any form PostgreSQL accepts (hyphens optional between groups of 4, braces, any case).
pub fn parse_uuid(text: &str) -> Option<u128> {
    let t = text.trim();
    let t = t
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or(t);
    let mut v: u128 = 0;
    let mut n = 0;
    let mut prev_hyphen = true;
    for (i, c) in t.chars().enumerate() {
        if c == '-' {
            // PostgreSQL allows a hyphen after any group of four digits.
            if prev_hyphen || n % 4 != 0 || i + 1 == t.len() {
                return None;
            }
            prev_hyphen = true;
            continue;
        }
        prev_hyphen = false;
        v = (v << 4) | c.to_digit(16)? as u128;
        n += 1;
        if n > 32 {
            return None;
        }
    }
    (n == 32).then_some(v)
}

pub fn format_uuid(v: u128) -> String {
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

// ---------------------------------------------------------------------------------------------------------
// Dates and times (proleptic Gregorian, as PostgreSQL)

/// Days since 1970-01-01 for a civil date (year 0 = 1 BC).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Civil date for days since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// `YYYY-MM-DD[ BC]` → (days, rest-after-date). Years may have more than 4 digits.
fn parse_date_prefix(text: &str) -> Option<(i64, &str)> {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    if i < 4 || b.get(i) != Some(&b'-') {
        return None;
    }
    let year: i64 = text[..i].parse().ok()?;
    let m: u32 = text.get(i + 1..i + 3)?.parse().ok()?;
    if b.get(i + 3) != Some(&b'-') {
        return None;
    }
    let d: u32 = text.get(i + 4..i + 6)?.parse().ok()?;
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(year, m) {
        return None;
    }
    Some((days_from_civil(year, m, d), &text[i + 6..]))
}

/// Parse a `date` as PostgreSQL (ISO DateStyle) prints it.
pub fn parse_date(text: &str) -> Option<i32> {
    match text {
        "infinity" => return Some(i32::MAX),
        "-infinity" => return Some(i32::MIN),
        _ => {}
    }
    let (days, rest) = parse_date_prefix(text)?;
    let days = match rest {
        "" => days,
        " BC" => bc_days(text)?,
        _ => return None,
    };
    i32::try_from(days).ok()
}

/// Days for a `YYYY-MM-DD BC` date: year N BC is astronomical year 1-N.
fn bc_days(text: &str) -> Option<i64> {
    let (ymd, _) = text.split_once(' ')?;
    let mut parts = ymd.splitn(3, '-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: u32 = parts.next()?.parse().ok()?;
    let d: u32 = parts.next()?.parse().ok()?;
    Some(days_from_civil(1 - y, m, d))
}

/// `HH:MM[:SS[.ffffff]]` → microseconds, and the rest of the string.
fn parse_time_prefix(text: &str) -> Option<(i64, &str)> {
    let b = text.as_bytes();
    let h: i64 = text.get(0..2)?.parse().ok()?;
    if b.get(2) != Some(&b':') {
        return None;
    }
    let mi: i64 = text.get(3..5)?.parse().ok()?;
    let mut pos = 5;
    let mut s: i64 = 0;
    let mut us: i64 = 0;
    if b.get(5) == Some(&b':') {
        s = text.get(6..8)?.parse().ok()?;
        pos = 8;
        if b.get(8) == Some(&b'.') {
            let start = 9;
            let mut end = start;
            while end < b.len() && b[end].is_ascii_digit() {
                end += 1;
            }
            if end == start {
                return None;
            }
            let frac = &text[start..end];
            // Round to microseconds like PostgreSQL's input does.
            let mut digits: String = frac.chars().take(7).collect();
            while digits.len() < 7 {
                digits.push('0');
            }
            let v: i64 = digits.parse().ok()?;
            us = (v + 5) / 10;
            pos = end;
        }
    }
    if h > 24 || mi > 59 || s > 60 || (h == 24 && (mi > 0 || s > 0 || us > 0)) {
        return None;
    }
    Some((((h * 60 + mi) * 60 + s) * 1_000_000 + us, &text[pos..]))
}

pub fn parse_time(text: &str) -> Option<i64> {
    let (us, rest) = parse_time_prefix(text)?;
    rest.is_empty().then_some(us)
}

/// Parse `+HH[:MM[:SS]]` / `-HH...` / `Z` → offset in seconds east of UTC.
fn parse_offset(text: &str) -> Option<i64> {
    if text == "Z" || text == "z" {
        return Some(0);
    }
    let sign = match text.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let body = &text[1..];
    let mut secs = 0i64;
    if body.len() == 4 && body.bytes().all(|c| c.is_ascii_digit()) {
        secs = body[0..2].parse::<i64>().ok()? * 3600 + body[2..4].parse::<i64>().ok()? * 60;
    } else {
        for (i, part) in body.split(':').enumerate() {
            if part.len() != 2 || i > 2 {
                return None;
            }
            let v: i64 = part.parse().ok()?;
            secs += v * [3600, 60, 1][i];
        }
    }
    Some(sign * secs)
}

/// Parse a timestamp as PostgreSQL prints it (`YYYY-MM-DD HH:MM:SS[.ffffff][+TZ][ BC]`); also accepts a
/// `T` separator. With `with_tz`, a missing offset means UTC; without, an offset is ignored (as
/// PostgreSQL's `timestamp` input does).
pub fn parse_timestamp(text: &str, with_tz: bool) -> Option<i64> {
    match text {
        "infinity" => return Some(INFINITY_MICROS),
        "-infinity" => return Some(NEG_INFINITY_MICROS),
        _ => {}
    }
    let (mut text, bc) = match text.strip_suffix(" BC") {
        Some(t) => (t, true),
        None => (text, false),
    };
    text = text.trim();
    let (days, rest) = parse_date_prefix(text)?;
    let days = if bc {
        bc_days(&format!("{} BC", &text[..text.len() - rest.len()]))?
    } else {
        days
    };
    let rest = rest.strip_prefix([' ', 'T', 't']).unwrap_or(rest);
    let (time_us, rest) = if rest.is_empty() {
        (0, rest)
    } else {
        parse_time_prefix(rest)?
    };
    let offset = if rest.is_empty() {
        0
    } else {
        parse_offset(rest.trim_start())?
    };
    let local = days.checked_mul(MICROS_PER_DAY)?.checked_add(time_us)?;
    if with_tz {
        local.checked_sub(offset * 1_000_000)
    } else {
        Some(local)
    }
}

fn format_ymd(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    if y > 0 {
        format!("{y:04}-{m:02}-{d:02}")
    } else {
        format!("{:04}-{m:02}-{d:02} BC", 1 - y)
    }
}

pub fn format_date(days: i32) -> String {
    format_ymd(days as i64)
}

/// `YYYY-MM-DDTHH:MM:SS`, seconds truncated: Directus's `dateTime` output.
pub fn format_datetime(us: i64) -> String {
    let days = us.div_euclid(MICROS_PER_DAY);
    let rem = us.rem_euclid(MICROS_PER_DAY) / 1_000_000;
    format!(
        "{}T{:02}:{:02}:{:02}",
        format_ymd(days),
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// JavaScript's `Date#toISOString()`: milliseconds (truncated) and `Z`.
pub fn format_iso_utc(us: i64) -> String {
    let days = us.div_euclid(MICROS_PER_DAY);
    let rem_us = us.rem_euclid(MICROS_PER_DAY);
    let secs = rem_us / 1_000_000;
    let ms = rem_us % 1_000_000 / 1000;
    let (y, m, d) = civil_from_days(days);
    let year = if (0..=9999).contains(&y) {
        format!("{y:04}")
    } else if y < 0 {
        format!("-{:06}", -y)
    } else {
        format!("+{y:06}")
    };
    format!(
        "{year}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Text PostgreSQL accepts for a timestamp (UTC, microsecond precision).
pub fn timestamp_sql_text(us: i64) -> String {
    if us == INFINITY_MICROS {
        return "infinity".into();
    }
    if us == NEG_INFINITY_MICROS {
        return "-infinity".into();
    }
    let days = us.div_euclid(MICROS_PER_DAY);
    let rem = us.rem_euclid(MICROS_PER_DAY);
    format!("{} {}", format_ymd(days), time_sql_text(rem))
}

pub fn time_sql_text(us: i64) -> String {
    let secs = us / 1_000_000;
    let frac = us % 1_000_000;
    let mut s = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    if frac != 0 {
        let _ = write!(s, ".{frac:06}");
    }
    s
}

pub fn date_sql_text(days: i32) -> String {
    match days {
        i32::MAX => "infinity".into(),
        i32::MIN => "-infinity".into(),
        d => format_date(d),
    }
}
