//! The in-memory evaluator: a row against a bound [`Filter`] with SQL's three-valued semantics, the
//! same answer the snapshot SQL gives (`IN` with NULLs, `LIKE`, PostgreSQL's `lower()`).

use super::{Cond, Filter, Op};
use crate::value::Datum;
use std::cmp::Ordering;

impl Filter {
    /// Does the row satisfy the filter? `get` returns a column's datum (`Datum::Null` for NULL).
    /// Semantics are SQL's: a condition on NULL is unknown, and unknown is not a match.
    pub fn matches<'a>(&self, get: &impl Fn(&str) -> Option<&'a Datum>) -> bool {
        self.eval(get) == Some(true)
    }

    fn eval<'a>(&self, get: &impl Fn(&str) -> Option<&'a Datum>) -> Option<bool> {
        match self {
            Filter::And(parts) => {
                let mut result = Some(true);
                for p in parts {
                    match p.eval(get) {
                        Some(false) => return Some(false),
                        None => result = None,
                        Some(true) => {}
                    }
                }
                result
            }
            Filter::Or(parts) => {
                let mut result = Some(false);
                for p in parts {
                    match p.eval(get) {
                        Some(true) => return Some(true),
                        None => result = None,
                        Some(false) => {}
                    }
                }
                result
            }
            Filter::Cond(c) => c.resolved().eval(get(&c.field).unwrap_or(&Datum::Null)),
        }
    }
}

fn not3(v: Option<bool>) -> Option<bool> {
    v.map(|b| !b)
}

fn cmp3(a: &Datum, b: &Datum) -> Option<Ordering> {
    if a.is_null() || b.is_null() {
        return None;
    }
    a.compare(b)
}

impl Cond {
    fn eval(&self, v: &Datum) -> Option<bool> {
        let arg = || self.args.first().unwrap_or(&Datum::Null);
        match self.op {
            Op::IsNull => Some(v.is_null()),
            Op::IsNotNull => Some(!v.is_null()),
            Op::Empty => Some(v.is_null() || v.as_text() == Some("")),
            Op::NotEmpty => Some(!v.is_null() && v.as_text() != Some("")),
            Op::Eq => cmp3(v, arg()).map(|o| o == Ordering::Equal),
            Op::Neq => cmp3(v, arg()).map(|o| o != Ordering::Equal),
            Op::Lt => cmp3(v, arg()).map(|o| o == Ordering::Less),
            Op::Lte => cmp3(v, arg()).map(|o| o != Ordering::Greater),
            Op::Gt => cmp3(v, arg()).map(|o| o == Ordering::Greater),
            Op::Gte => cmp3(v, arg()).map(|o| o != Ordering::Less),
            Op::In => in_list(v, &self.args),
            Op::Nin => not3(in_list(v, &self.args)),
            Op::Between | Op::NotBetween => {
                let (lo, hi) = (self.args.first()?, self.args.get(1)?);
                let ge = cmp3(v, lo).map(|o| o != Ordering::Less);
                let le = cmp3(v, hi).map(|o| o != Ordering::Greater);
                let both = match (ge, le) {
                    (Some(false), _) | (_, Some(false)) => Some(false),
                    (Some(true), Some(true)) => Some(true),
                    _ => None,
                };
                if self.op == Op::Between {
                    both
                } else {
                    not3(both)
                }
            }
            Op::Like { negated, lower } => {
                let text = v.as_text()?;
                let Some(Datum::Text(pattern)) = self.args.first() else {
                    return None;
                };
                let matched = if lower {
                    like(&pg_lower(text), pattern)
                } else {
                    like(text, pattern)
                };
                Some(matched != negated)
            }
        }
    }
}

/// `v IN (list)` with SQL semantics: TRUE if equal to one, else NULL if the list holds a NULL.
fn in_list(v: &Datum, list: &[Datum]) -> Option<bool> {
    if v.is_null() {
        return None;
    }
    let mut saw_null = false;
    for item in list {
        match cmp3(v, item) {
            Some(Ordering::Equal) => return Some(true),
            None => saw_null = true,
            _ => {}
        }
    }
    if saw_null { None } else { Some(false) }
}

/// PostgreSQL `lower()` on a UTF-8 database: per-character simple lowercase mapping.
pub fn pg_lower(s: &str) -> String {
    s.chars()
        .map(|c| c.to_lowercase().next().unwrap_or(c))
        .collect()
}

/// SQL `LIKE` with `\` as the escape character: `%` matches any run, `_` any one character.
pub fn like(text: &str, pattern: &str) -> bool {
    let t: Vec<char> = text.chars().collect();
    // Tokenise the pattern: Some(c) = literal, None = '_' wildcard, and '%' boundaries.
    #[derive(Clone, Copy, PartialEq)]
    enum Tok {
        Lit(char),
        One,
        Any,
    }
    let mut toks = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        toks.push(match c {
            '\\' => match chars.next() {
                Some(e) => Tok::Lit(e),
                None => return false, // rejected when the filter is bound
            },
            '%' => Tok::Any,
            '_' => Tok::One,
            c => Tok::Lit(c),
        });
    }
    // Classic wildcard matching with backtracking to the last '%'.
    let (mut ti, mut pi) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match toks.get(pi) {
            Some(Tok::Any) => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(Tok::One) => {
                ti += 1;
                pi += 1;
            }
            Some(Tok::Lit(c)) if *c == t[ti] => {
                ti += 1;
                pi += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    toks[pi..].iter().all(|t| *t == Tok::Any)
}
