//! The Directus filter language.
//!
//! Three stages, each pure:
//! 1. [`parse`]: JSON (already decoded from the string form) → [`RawFilter`], following Directus's
//!    `parseFilter`: logical operators hoisted, several keys ANDed, a bare value meaning `_eq`, dynamic
//!    variables (`$NOW(...)`, `$CURRENT_USER`, ...) resolved from a [`VarContext`], and the string
//!    coercions `"true"`/`"false"`/`"null"`.
//! 2. [`bind`]: checks fields against the collection and operators against the field's Directus type
//!    (`validateFilter` / `validateOperator`) and converts every value to a typed [`Datum`], giving a
//!    [`Filter`].
//! 3. [`Filter::matches`]: evaluates a row with the same three-valued semantics as the SQL [`crate::sql`]
//!    generates for the snapshot. A property test against PostgreSQL keeps the two in agreement.
//!
//! This module holds what the stages share: the refusal ([`QueryError`]), the size [`Limits`] and the
//! bound filter ([`Filter`], [`Cond`], [`Op`]) with its constructors. The stages live in
//! `vars` (dynamic variables and `$NOW` arithmetic), `parse`, `bind` (fields, operators and values
//! against the collection) and `eval` (the in-memory evaluator).

use crate::value::{Datum, Kind};

mod bind;
mod eval;
mod parse;
mod vars;

pub use bind::{bind, check_structure, compares_as_text, is_known_operator, to_datum};
pub use eval::{like, pg_lower};
pub use parse::{RawFilter, RawValue, parse};
pub use vars::{NowAdj, Val, VarContext, adjust_now, eval_now, required_lookups, with_now};

/// Why a filter or query was refused; maps onto the wire error codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// `INVALID_QUERY`: "Invalid query. <reason>."
    #[error("Invalid query. {0}.")]
    Invalid(String),
    /// `FORBIDDEN` with Directus's message (unknown or unreadable fields and collections).
    #[error("{0}")]
    Forbidden(String),
}

impl crate::error::Classify for QueryError {
    fn fault(&self) -> crate::error::Fault {
        crate::error::Fault::Client
    }
}

impl From<QueryError> for crate::error::RealtimeError {
    fn from(e: QueryError) -> crate::error::RealtimeError {
        crate::error::RealtimeError::new(e.code(), e.to_string())
    }
}

impl QueryError {
    pub fn invalid(reason: impl Into<String>) -> QueryError {
        QueryError::Invalid(reason.into())
    }

    pub fn code(&self) -> crate::protocol::ErrorCode {
        match self {
            QueryError::Invalid(_) => crate::protocol::ErrorCode::InvalidQuery,
            QueryError::Forbidden(_) => crate::protocol::ErrorCode::Forbidden,
        }
    }

    /// FORBIDDEN for fields (requested, filtered or sorted) that do not exist or may not be read, with
    /// Directus's exact text; `path` is the relational path they were queried in (`""` = root).
    pub fn unknown_fields(collection: &str, fields: &[String], path: &str) -> QueryError {
        QueryError::Forbidden(crate::protocol::msg_forbidden_fields(
            collection, fields, path,
        ))
    }

    /// FORBIDDEN for a collection that does not exist or that the caller may not read, with Directus's
    /// exact text.
    pub fn unknown_collection(collection: &str) -> QueryError {
        QueryError::Forbidden(crate::protocol::msg_forbidden_collection(collection, ""))
    }
}

/// Bounds on filter size, so a hostile filter cannot burn CPU or memory in every worker.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Maximum nesting of `_and`/`_or`.
    pub max_depth: usize,
    /// Maximum number of conditions plus list elements.
    pub max_nodes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_depth: 16,
            max_nodes: 1000,
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Bound, typed filters

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Op {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
    In,
    Nin,
    IsNull,
    IsNotNull,
    Empty,
    NotEmpty,
    /// `LIKE`; `negated` wraps it in `NOT`, `lower` compares `LOWER(col)`.
    Like {
        negated: bool,
        lower: bool,
    },
    Between,
    NotBetween,
}

/// One condition on one column.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Cond {
    pub field: String,
    pub kind: Kind,
    pub op: Op,
    /// Operands: one for comparisons, the list for `_in`/`_nin`, two for `_between`, the pattern (as
    /// `Datum::Text`) for `LIKE`, none for the null/empty checks.
    pub args: Vec<Datum>,
    /// Arguments that are `$NOW(...)` against a time column, by index: computed at evaluation time
    /// ([`vars::with_now`]); their entry in `args` is a placeholder.
    /// Boxed: almost every condition has none, and conditions are what matching walks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub now: Option<Box<Vec<(u8, NowAdj)>>>,
}

impl Cond {
    /// This condition with its `$NOW` arguments computed for "now" ([`vars::eval_now`]).
    pub fn resolved(&self) -> std::borrow::Cow<'_, Cond> {
        let Some(adjs) = &self.now else {
            return std::borrow::Cow::Borrowed(self);
        };
        let now = vars::eval_now();
        let mut c = self.clone();
        for (i, adj) in adjs.iter() {
            if let Some(a) = c.args.get_mut(*i as usize) {
                *a = adj.at(now).map_or(Datum::Null, Datum::TimestampTz);
            }
        }
        std::borrow::Cow::Owned(c)
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Filter {
    /// All must hold; the empty `And` is TRUE.
    And(Vec<Filter>),
    /// One must hold; the empty `Or` is FALSE.
    Or(Vec<Filter>),
    Cond(Cond),
}

impl Filter {
    pub const TRUE: Filter = Filter::And(Vec::new());

    pub fn is_true(&self) -> bool {
        matches!(self, Filter::And(v) if v.is_empty())
    }

    /// Conjunction that flattens nested ANDs and drops TRUE.
    pub fn and(parts: impl IntoIterator<Item = Filter>) -> Filter {
        let mut out = Vec::new();
        for p in parts {
            match p {
                Filter::And(inner) => out.extend(inner),
                other => out.push(other),
            }
        }
        if out.len() == 1 {
            out.pop().expect("one")
        } else {
            Filter::And(out)
        }
    }

    /// Disjunction that flattens nested ORs; any TRUE operand makes the whole TRUE.
    pub fn or(parts: impl IntoIterator<Item = Filter>) -> Filter {
        let mut out = Vec::new();
        for p in parts {
            if p.is_true() {
                return Filter::TRUE;
            }
            match p {
                Filter::Or(inner) => out.extend(inner),
                other => out.push(other),
            }
        }
        if out.len() == 1 {
            out.pop().expect("one")
        } else {
            Filter::Or(out)
        }
    }

    /// Sort operands recursively so equivalent filters serialise identically (better query sharing).
    pub fn canonicalize(&mut self) {
        match self {
            Filter::And(parts) | Filter::Or(parts) => {
                for p in parts.iter_mut() {
                    p.canonicalize();
                }
                parts.sort_by_cached_key(|p| serde_json::to_string(p).unwrap_or_default());
                parts.dedup();
            }
            Filter::Cond(_) => {}
        }
    }

    /// Visit every condition.
    pub fn conditions(&self) -> Vec<&Cond> {
        let mut out = Vec::new();
        fn walk<'a>(f: &'a Filter, out: &mut Vec<&'a Cond>) {
            match f {
                Filter::And(p) | Filter::Or(p) => p.iter().for_each(|x| walk(x, out)),
                Filter::Cond(c) => out.push(c),
            }
        }
        walk(self, &mut out);
        out
    }
}

#[cfg(test)]
mod tests;
