//! Reading configuration from environment variables, validated all at once.
//!
//! [`EnvReader`] takes a map (tests pass exactly what they mean; binaries pass the process environment) and
//! collects every problem instead of stopping at the first, so an operator fixes a bad `.env` in one pass.

use std::collections::HashMap;
use std::time::Duration;

/// One problem with one variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub var: String,
    pub problem: String,
}

impl crate::error::Classify for ConfigError {
    /// The operator's configuration: fixed by them, never by retrying.
    fn fault(&self) -> crate::error::Fault {
        crate::error::Fault::Client
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.var, self.problem)
    }
}

pub struct EnvReader<'a> {
    vars: &'a HashMap<String, String>,
    pub errors: Vec<ConfigError>,
}

impl<'a> EnvReader<'a> {
    pub fn new(vars: &'a HashMap<String, String>) -> EnvReader<'a> {
        EnvReader {
            vars,
            errors: Vec::new(),
        }
    }

    /// Was the variable set (to something non-blank)?
    pub fn is_set(&self, name: &str) -> bool {
        self.raw(name).is_some()
    }

    pub fn raw(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
    }

    pub fn err(&mut self, name: &str, problem: impl Into<String>) {
        self.errors.push(ConfigError {
            var: name.into(),
            problem: problem.into(),
        });
    }

    pub fn string(&self, name: &str, default: &str) -> String {
        self.raw(name).unwrap_or(default).to_owned()
    }

    pub fn opt(&self, name: &str) -> Option<String> {
        self.raw(name).map(str::to_owned)
    }

    pub fn bool(&mut self, name: &str, default: bool) -> bool {
        match self.raw(name).map(str::to_ascii_lowercase).as_deref() {
            None => default,
            Some("true" | "1") => true,
            Some("false" | "0") => false,
            Some(other) => {
                let other = other.to_owned();
                self.err(name, format!("expected true or false, got {other:?}"));
                default
            }
        }
    }

    pub fn number<T>(&mut self, name: &str, default: T, min: T) -> T
    where
        T: std::str::FromStr + Copy + PartialOrd + std::fmt::Display,
    {
        match self.raw(name) {
            None => default,
            Some(s) => match s.parse::<T>() {
                Ok(v) if v >= min => v,
                Ok(_) => {
                    self.err(name, format!("must be at least {min}"));
                    default
                }
                Err(_) => {
                    let s = s.to_owned();
                    self.err(name, format!("expected a number, got {s:?}"));
                    default
                }
            },
        }
    }

    pub fn opt_number(&mut self, name: &str, min: i64) -> Option<i64> {
        self.raw(name)?;
        Some(self.number(name, min, min))
    }

    /// Directus `ms`-style durations: `15m`, `7d`, `10s`, `500` (milliseconds).
    pub fn ms_duration(&mut self, name: &str, default: &str) -> Duration {
        let text = self.string(name, default);
        match parse_ms(&text) {
            Some(d) if !d.is_zero() => d,
            _ => {
                self.err(
                    name,
                    format!("expected a duration like 15m, 7d, 30s or milliseconds, got {text:?}"),
                );
                parse_ms(default).expect("valid default")
            }
        }
    }

    /// Like [`EnvReader::ms_duration`], but `0` is allowed (to turn a wait off).
    pub fn ms_duration_or_zero(&mut self, name: &str, default: &str) -> Duration {
        let text = self.string(name, default);
        match parse_ms(&text) {
            Some(d) => d,
            None => {
                self.err(
                    name,
                    format!("expected a duration like 10s, 500ms or 0, got {text:?}"),
                );
                parse_ms(default).expect("valid default")
            }
        }
    }

    /// A whole number of seconds (the `WEBSOCKETS_*` timeouts and period).
    pub fn seconds(&mut self, name: &str, default: u64) -> Duration {
        match self.raw(name) {
            None => Duration::from_secs(default),
            Some(s) => match s.parse::<f64>() {
                Ok(v) if v > 0.0 && v.is_finite() => Duration::from_secs_f64(v),
                _ => {
                    let s = s.to_owned();
                    self.err(
                        name,
                        format!("expected a positive number of seconds, got {s:?}"),
                    );
                    Duration::from_secs(default)
                }
            },
        }
    }

    pub fn path(&mut self, name: &str, default: &str) -> String {
        let p = self.string(name, default);
        if !p.starts_with('/') {
            self.err(name, "must start with /");
        }
        p
    }
}

/// Parse a Directus/`ms` duration: a number with an optional unit (`ms`, `s`, `m`, `h`, `d`, `w`, `y` and
/// long forms); a bare number is milliseconds.
pub fn parse_ms(text: &str) -> Option<Duration> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let n: f64 = t[..split].parse().ok()?;
    let unit = t[split..].trim().to_ascii_lowercase();
    let ms = match unit.as_str() {
        "" | "ms" | "msec" | "msecs" | "millisecond" | "milliseconds" => 1.0,
        "s" | "sec" | "secs" | "second" | "seconds" => 1e3,
        "m" | "min" | "mins" | "minute" | "minutes" => 60e3,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3600e3,
        "d" | "day" | "days" => 86_400e3,
        "w" | "week" | "weeks" => 7.0 * 86_400e3,
        "y" | "yr" | "yrs" | "year" | "years" => 365.25 * 86_400e3,
        _ => return None,
    };
    let total = n * ms;
    (total.is_finite() && total >= 0.0).then(|| Duration::from_micros((total * 1000.0) as u64))
}

pub fn encode_component(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// The PostgreSQL connection string from Directus's `DB_*` variables (`DB_CONNECTION_STRING` wins).
pub fn db_url(r: &mut EnvReader) -> String {
    match r.raw("DB_CLIENT") {
        None | Some("pg") | Some("postgres") | Some("postgresql") => {}
        Some(other) => {
            let other = other.to_owned();
            r.err(
                "DB_CLIENT",
                format!("only pg (PostgreSQL) is supported, got {other:?}"),
            );
        }
    }
    if let Some(s) = r.opt("DB_CONNECTION_STRING") {
        return s;
    }
    let host = r.string("DB_HOST", "127.0.0.1");
    let port = r.number::<u16>("DB_PORT", 5432, 1);
    let database = r.string("DB_DATABASE", "directus");
    let user = r.string("DB_USER", "postgres");
    let auth = match r.opt("DB_PASSWORD") {
        Some(p) => format!("{}:{}", encode_component(&user), encode_component(&p)),
        None => encode_component(&user),
    };
    format!(
        "postgres://{auth}@{host}:{port}/{}",
        encode_component(&database)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ms_durations() {
        assert_eq!(parse_ms("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_ms("500"), Some(Duration::from_millis(500)));
        assert_eq!(parse_ms("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_ms("7 days"), Some(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_ms("abc"), None);
        assert_eq!(parse_ms("5 parsecs"), None);
    }

    #[test]
    fn errors_accumulate() {
        let vars: HashMap<String, String> = [("A", "x"), ("B", "maybe"), ("C", "-5")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut r = EnvReader::new(&vars);
        assert_eq!(r.number::<u16>("A", 7, 0), 7);
        assert!(r.bool("B", true));
        assert_eq!(r.number::<i64>("C", 1, 0), 1);
        assert_eq!(r.number::<i64>("MISSING", 3, 0), 3);
        let named: Vec<&str> = r.errors.iter().map(|e| e.var.as_str()).collect();
        assert_eq!(named, ["A", "B", "C"]);
    }
}
