//! The zod v4 issue model ([`ZodIssue`]), the schema checks Directus's message schemas are built from
//! (`z.object`, `z.string`, `z.union`, ...), and the text zod-validation-error renders for the issues
//! ([`zod_message`]).

use serde_json::{Map, Value as Json};

// ---------------------------------------------------------------------------------------------------------
// Zod v4 issues and their text as zod-validation-error renders them.
//
// Directus 11.17.4 validates with zod 4.1.12 and sends `fromZodError(error).message` (zod-validation-error
// 4.0.2, default options). The rules, read from those two libraries' sources:
// - zod (`packages/zod/src/v4/locales/en.ts`, `core/schemas.ts`):
//   - `invalid_type`: `Invalid input: expected <expected>, received <type>`. `<expected>` is the schema kind
//     (`string`, `number`, `object`, `array`, and `record` for `z.record`). `<type>` is `typeof` refined:
//     `array`, `null`, `undefined` (a missing key), `number`, `boolean`, `string`, `object`.
//   - `invalid_value` (a literal): `Invalid input: expected "<value>"`; with several values
//     `Invalid option: expected one of "a"|"b"`.
//   - `invalid_union`: when every option fails and they all abort (type and value issues always do), one
//     issue carrying each option's issues; its own text is `Invalid input`.
//   - An object reports every failing key, in the schema's key order; an array every failing element.
//     Issue paths are prefixed with the key or index as they bubble up; the issues inside a union stay
//     relative to the union.
// - zod-validation-error (`lib/v4/MessageBuilder.ts`, `lib/utils/joinPath.ts`):
//   - `Validation error: ` + the issues joined with `; `.
//   - An issue: its message with the first letter upper-cased, then ` at index <n>` for a one-element
//     numeric path, or ` at "<path>"` for any other non-empty path.
//   - A union: each option's issues rendered with the union's path prepended, joined with `; `; the
//     options' texts de-duplicated and joined with ` or `.
//   - `<path>`: one key as it is (`""` when empty); longer paths join keys with `.`, indices as `[n]`,
//     keys containing `"` as `["..."]` (quotes escaped) and keys without any identifier character as
//     `["..."]`.

/// A key in an issue path.
#[derive(Debug, Clone, PartialEq)]
pub enum PathKey {
    Key(String),
    Index(usize),
}

impl From<&str> for PathKey {
    fn from(k: &str) -> PathKey {
        PathKey::Key(k.to_owned())
    }
}

impl From<usize> for PathKey {
    fn from(i: usize) -> PathKey {
        PathKey::Index(i)
    }
}

/// One zod issue; `path` is relative to the schema that raised it (the root, or the enclosing union).
#[derive(Debug, Clone, PartialEq)]
pub struct ZodIssue {
    pub path: Vec<PathKey>,
    pub kind: IssueKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum IssueKind {
    /// `invalid_type`: the schema kind expected and the type received.
    InvalidType {
        expected: &'static str,
        received: &'static str,
    },
    /// `invalid_value`: the string literals allowed.
    InvalidValue { values: Vec<&'static str> },
    /// `invalid_union`: each option's issues.
    InvalidUnion { errors: Vec<Vec<ZodIssue>> },
}

impl IssueKind {
    /// zod's English message for the issue.
    fn message(&self) -> String {
        match self {
            IssueKind::InvalidType { expected, received } => {
                format!("Invalid input: expected {expected}, received {received}")
            }
            IssueKind::InvalidValue { values } if values.len() == 1 => {
                format!("Invalid input: expected \"{}\"", values[0])
            }
            IssueKind::InvalidValue { values } => format!(
                "Invalid option: expected one of {}",
                values
                    .iter()
                    .map(|v| format!("\"{v}\""))
                    .collect::<Vec<_>>()
                    .join("|")
            ),
            IssueKind::InvalidUnion { .. } => "Invalid input".to_owned(),
        }
    }
}

/// zod-validation-error's message for a failed parse (at most 99 issues, as its default).
pub fn zod_message(issues: &[ZodIssue]) -> String {
    let body = issues
        .iter()
        .take(99)
        .map(|i| render_issue(i, &[]))
        .collect::<Vec<_>>()
        .join("; ");
    if body.is_empty() {
        "Validation error".to_owned()
    } else {
        format!("Validation error: {body}")
    }
}

fn render_issue(issue: &ZodIssue, prefix: &[PathKey]) -> String {
    let path: Vec<PathKey> = prefix.iter().chain(&issue.path).cloned().collect();
    if let IssueKind::InvalidUnion { errors } = &issue.kind
        && !errors.is_empty()
    {
        let mut texts: Vec<String> = Vec::with_capacity(errors.len());
        for option in errors {
            let text = option
                .iter()
                .map(|i| render_issue(i, &path))
                .collect::<Vec<_>>()
                .join("; ");
            if !texts.contains(&text) {
                texts.push(text);
            }
        }
        return texts.join(" or ");
    }
    let mut out = upper_first(&issue.kind.message());
    match path.as_slice() {
        [] => {}
        [PathKey::Index(i)] => out.push_str(&format!(" at index {i}")),
        _ => out.push_str(&format!(" at \"{}\"", join_path(&path))),
    }
    out
}

fn upper_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// zod-validation-error's `joinPath`.
fn join_path(path: &[PathKey]) -> String {
    if let [one] = path {
        return match one {
            PathKey::Key(k) if k.is_empty() => "\"\"".to_owned(),
            PathKey::Key(k) => k.clone(),
            PathKey::Index(i) => i.to_string(),
        };
    }
    let mut out = String::new();
    for key in path {
        match key {
            PathKey::Index(i) => out.push_str(&format!("[{i}]")),
            PathKey::Key(k) if k.contains('"') => {
                out.push_str(&format!("[\"{}\"]", k.replace('"', "\\\"")))
            }
            // Its identifier test is an unanchored regex: one identifier-start character anywhere
            // passes. `ID_Start` is approximated by Unicode `Alphabetic`.
            PathKey::Key(k) if !k.chars().any(|c| c == '$' || c == '_' || c.is_alphabetic()) => {
                out.push_str(&format!("[\"{k}\"]"))
            }
            PathKey::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
        }
    }
    out
}

/// zod's `parsedType`, for JSON values (`None` is a missing key, `undefined` in JavaScript).
fn received(v: Option<&Json>) -> &'static str {
    match v {
        None => "undefined",
        Some(Json::Null) => "null",
        Some(Json::Bool(_)) => "boolean",
        Some(Json::Number(_)) => "number",
        Some(Json::String(_)) => "string",
        Some(Json::Array(_)) => "array",
        Some(Json::Object(_)) => "object",
    }
}

fn invalid_type(expected: &'static str, v: Option<&Json>) -> Vec<ZodIssue> {
    vec![ZodIssue {
        path: Vec::new(),
        kind: IssueKind::InvalidType {
            expected,
            received: received(v),
        },
    }]
}

/// Prefix issues with the key they were found under (what a zod object or array does).
pub(super) fn at(key: impl Into<PathKey>, mut issues: Vec<ZodIssue>) -> Vec<ZodIssue> {
    let key = key.into();
    for i in &mut issues {
        i.path.insert(0, key.clone());
    }
    issues
}

/// `z.object(...)`: the value must be a (non-array, non-null) object.
pub(super) fn z_object(v: Option<&Json>) -> Result<&Map<String, Json>, Vec<ZodIssue>> {
    match v {
        Some(Json::Object(o)) => Ok(o),
        _ => Err(invalid_type("object", v)),
    }
}

pub(super) fn z_string(v: Option<&Json>) -> Vec<ZodIssue> {
    match v {
        Some(Json::String(_)) => Vec::new(),
        _ => invalid_type("string", v),
    }
}

fn z_number(v: Option<&Json>) -> Vec<ZodIssue> {
    match v {
        Some(Json::Number(_)) => Vec::new(),
        _ => invalid_type("number", v),
    }
}

/// `z.record(z.string(), z.any())`: a plain object; every key is a string and any value passes.
pub(super) fn z_record(v: Option<&Json>) -> Vec<ZodIssue> {
    match v {
        Some(Json::Object(_)) => Vec::new(),
        _ => invalid_type("record", v),
    }
}

pub(super) fn z_literal(v: Option<&Json>, literal: &'static str) -> Vec<ZodIssue> {
    match v {
        Some(Json::String(s)) if s == literal => Vec::new(),
        _ => vec![ZodIssue {
            path: Vec::new(),
            kind: IssueKind::InvalidValue {
                values: vec![literal],
            },
        }],
    }
}

/// `.optional()`: a missing key passes (JSON has no `undefined` otherwise).
pub(super) fn z_optional(
    v: Option<&Json>,
    inner: impl Fn(Option<&Json>) -> Vec<ZodIssue>,
) -> Vec<ZodIssue> {
    match v {
        None => Vec::new(),
        Some(_) => inner(v),
    }
}

pub(super) fn z_array(
    v: Option<&Json>,
    element: impl Fn(Option<&Json>) -> Vec<ZodIssue>,
) -> Vec<ZodIssue> {
    match v {
        Some(Json::Array(items)) => items
            .iter()
            .enumerate()
            .flat_map(|(i, item)| at(i, element(Some(item))))
            .collect(),
        _ => invalid_type("array", v),
    }
}

/// `z.union([...])`: passes if one option passes; otherwise one `invalid_union` issue with every option's
/// issues.
/// A schema: the issues a value (`None` = a missing key) raises.
type Schema<'a> = &'a dyn Fn(Option<&Json>) -> Vec<ZodIssue>;

pub(super) fn z_union(v: Option<&Json>, options: &[Schema]) -> Vec<ZodIssue> {
    union_of(options.iter().map(|option| option(v)))
}

/// The outcome of a union from its options' issues. Every issue built here aborts (zod sets `continue`
/// only on refinement checks), so zod's fallback to a single non-aborted option never applies.
pub(super) fn union_of(results: impl IntoIterator<Item = Vec<ZodIssue>>) -> Vec<ZodIssue> {
    let mut errors = Vec::new();
    for issues in results {
        if issues.is_empty() {
            return Vec::new();
        }
        errors.push(issues);
    }
    vec![ZodIssue {
        path: Vec::new(),
        kind: IssueKind::InvalidUnion { errors },
    }]
}

/// `z.union([z.string(), z.number()])`, Directus's `zodStringOrNumber`.
pub(super) fn z_string_or_number(v: Option<&Json>) -> Vec<ZodIssue> {
    z_union(v, &[&z_string, &z_number])
}
