//! Which connections a committed change to Directus's access tables may affect.
//!
//! Workers see every commit in order, system tables included. For a transaction that touches the
//! tables a connection's rights are computed from, they send each gateway a *rights* entry at the
//! transaction's position, ahead of any later event (`delivery::EntryKind::Rights`); its body lists the
//! [`Dep`]s the change touches. A gateway keeps, per connection, the deps its identity was computed
//! from, and re-evaluates exactly the connections whose deps intersect (DESIGN §5).
//!
//! | table | deps of a changed row (old and new) |
//! |---|---|
//! | `directus_permissions` (action `read` only) | `p:<policy>` |
//! | `directus_policies` | `p:<id>` |
//! | `directus_access` | `r:<role>`, `u:<user>`, or `pub` when both are null (the public policies) |
//! | `directus_roles` | `r:<id>` (a parent change moves every role below it) |
//! | `directus_users` | `u:<id>`, unless only `last_access` / `last_page` changed |
//! | `directus_sessions` (deletes only: a logout, or sessions cleared for a suspended user) | `u:<user>` |
//!
//! A session's insert or refresh (its token rotated in place) changes nobody's rights: only its end
//! does, and the gateway then checks the sessions of that user's connections again.
//!
//! A value the change does not carry (an old row without `REPLICA IDENTITY FULL`) or a truncate gives
//! [`Dep::Everyone`]: erring on the side of re-evaluating more, never less.

use crate::change::{Cell, Change, MASK, Relation, TxChunk};

/// The tables rights are computed from.
pub const TABLES: [&str; 6] = [
    "directus_permissions",
    "directus_policies",
    "directus_access",
    "directus_roles",
    "directus_users",
    "directus_sessions",
];

/// User columns Directus writes on every login or page view; a change to only these changes no rights.
const USER_BOOKKEEPING: [&str; 2] = ["last_access", "last_page"];

/// Something a connection's rights depend on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dep {
    User(String),
    Role(String),
    Policy(String),
    /// The public policies (access rows without role and user): connections without a role.
    Public,
    /// Every connection.
    Everyone,
}

impl Dep {
    pub fn encode(&self) -> String {
        match self {
            Dep::User(id) => format!("u:{id}"),
            Dep::Role(id) => format!("r:{id}"),
            Dep::Policy(id) => format!("p:{id}"),
            Dep::Public => "pub".into(),
            Dep::Everyone => "all".into(),
        }
    }

    pub fn decode(text: &str) -> Option<Dep> {
        match text {
            "pub" => return Some(Dep::Public),
            "all" => return Some(Dep::Everyone),
            _ => {}
        }
        let (tag, id) = text.split_once(':')?;
        if id.is_empty() {
            return None;
        }
        let id = id.to_owned();
        match tag {
            "u" => Some(Dep::User(id)),
            "r" => Some(Dep::Role(id)),
            "p" => Some(Dep::Policy(id)),
            _ => None,
        }
    }
}

/// What a rights entry says: the deps the transaction touched, and the shards whose events up to it
/// the sending worker has all sent to this gateway (its loaded shards, on the live path; the shards a
/// catch-up replays, on a replay). A gateway moves a subscriber off its old query only once the old
/// query's shard has announced the change, so no event the old rights allowed is left behind.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Announcement {
    pub deps: Vec<Dep>,
    pub shards: Vec<u32>,
}

/// The body of a rights entry: `s:<shard>,<shard>,…` on the first line, then one encoded dep per line.
pub fn encode_announcement(a: &Announcement) -> Vec<u8> {
    let mut out = b"s:".to_vec();
    for (i, n) in a.shards.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(n.to_string().as_bytes());
    }
    for d in &a.deps {
        out.push(b'\n');
        out.extend_from_slice(d.encode().as_bytes());
    }
    out
}

/// Read a rights entry's body. An unreadable dep line counts as [`Dep::Everyone`]; unreadable shard
/// numbers are left out (the gateway then waits for another announcement).
pub fn decode_announcement(body: &[u8]) -> Announcement {
    let Ok(text) = std::str::from_utf8(body) else {
        return Announcement {
            deps: vec![Dep::Everyone],
            shards: Vec::new(),
        };
    };
    let mut lines = text.split('\n');
    let shards = lines
        .next()
        .and_then(|l| l.strip_prefix("s:"))
        .map(|list| {
            list.split(',')
                .filter_map(|n| n.parse::<u32>().ok())
                .collect()
        })
        .unwrap_or_default();
    let deps = lines
        .filter(|l| !l.is_empty())
        .map(|l| Dep::decode(l).unwrap_or(Dep::Everyone))
        .collect();
    Announcement { deps, shards }
}

/// What a value of a row says about a dep: the id, null, or not carried by the change.
enum Val<'a> {
    Id(&'a str),
    Null,
    Unknown,
}

fn val<'a>(rel: &Relation, cells: &'a [Cell], key_only: bool, column: &str) -> Val<'a> {
    let Some(i) = rel.column_index(column) else {
        return Val::Null;
    };
    if key_only && !rel.columns[i].key {
        return Val::Unknown;
    }
    match cells.get(i) {
        Some(Cell::Text(t)) => Val::Id(t),
        Some(Cell::Null) => Val::Null,
        Some(Cell::Unchanged) | None => Val::Unknown,
    }
}

/// The deps one row (old or new) of `rel` touches.
fn row_deps(rel: &Relation, cells: &[Cell], key_only: bool, out: &mut Vec<Dep>) {
    let id_dep = |column: &str, make: fn(String) -> Dep, out: &mut Vec<Dep>| match val(
        rel, cells, key_only, column,
    ) {
        Val::Id(id) => out.push(make(id.to_owned())),
        Val::Null => {}
        Val::Unknown => out.push(Dep::Everyone),
    };
    match rel.table.as_str() {
        "directus_permissions" => id_dep("policy", Dep::Policy, out),
        "directus_sessions" => id_dep("user", Dep::User, out),
        "directus_policies" | "directus_roles" | "directus_users" => {
            let make = match rel.table.as_str() {
                "directus_policies" => Dep::Policy,
                "directus_roles" => Dep::Role,
                _ => Dep::User,
            };
            id_dep("id", make, out)
        }
        "directus_access" => {
            let role = val(rel, cells, key_only, "role");
            let user = val(rel, cells, key_only, "user");
            match (role, user) {
                (Val::Unknown, _) | (_, Val::Unknown) => out.push(Dep::Everyone),
                (Val::Null, Val::Null) => out.push(Dep::Public),
                (role, user) => {
                    if let Val::Id(r) = role {
                        out.push(Dep::Role(r.to_owned()));
                    }
                    if let Val::Id(u) = user {
                        out.push(Dep::User(u.to_owned()));
                    }
                }
            }
        }
        _ => {}
    }
}

/// A `directus_permissions` row that is not about reading changes nobody's read rights.
fn is_read_permission(rel: &Relation, cells: &[Cell], key_only: bool) -> bool {
    !matches!(val(rel, cells, key_only, "action"), Val::Id(a) if a != "read")
}

/// Whether an update of a user changed more than the bookkeeping columns. A static token is masked in
/// the stream, so a user with one counts as changed: the gateway compares the token itself.
fn user_update_matters(rel: &Relation, old: &[Cell], new: &[Cell]) -> bool {
    rel.columns.iter().enumerate().any(|(i, c)| {
        if USER_BOOKKEEPING.contains(&c.name.as_str()) {
            return false;
        }
        if c.name == "token" && matches!(new.get(i), Some(Cell::Text(t)) if t == MASK) {
            return true;
        }
        match (old.get(i), new.get(i)) {
            (_, Some(Cell::Unchanged)) => false,
            (Some(a), Some(b)) => a != b,
            _ => true,
        }
    })
}

/// The deps a chunk touches, sorted and without repeats; empty for a chunk of ordinary tables.
/// `schema` is the PostgreSQL schema the Directus tables live in.
pub fn chunk_deps(chunk: &TxChunk, schema: &str) -> Vec<Dep> {
    // The common case, decided per chunk rather than per change: no access table in it.
    if !chunk
        .relations
        .iter()
        .any(|r| r.schema == schema && TABLES.contains(&r.table.as_str()))
    {
        return Vec::new();
    }
    let mut out = Vec::new();
    let system = |rel: u32| {
        chunk
            .relation(rel)
            .filter(|r| r.schema == schema && TABLES.contains(&r.table.as_str()))
    };
    for change in &chunk.changes {
        match change {
            Change::Insert { rel, new } => {
                if let Some(r) = system(*rel)
                    && r.table != "directus_sessions"
                    && (r.table != "directus_permissions" || is_read_permission(r, new, false))
                {
                    row_deps(r, new, false, &mut out);
                }
            }
            Change::Update { rel, old, new } => {
                let Some(r) = system(*rel) else { continue };
                if r.table == "directus_sessions" {
                    continue;
                }
                if r.table == "directus_permissions"
                    && !is_read_permission(r, new, false)
                    && old
                        .as_ref()
                        .is_some_and(|o| !is_read_permission(r, &o.cells, o.key_only))
                {
                    continue;
                }
                if r.table == "directus_users"
                    && let Some(o) = old
                    && !o.key_only
                    && !user_update_matters(r, &o.cells, new)
                {
                    continue;
                }
                row_deps(r, new, false, &mut out);
                match old {
                    Some(o) => row_deps(r, &o.cells, o.key_only, &mut out),
                    // No old row: the key did not change, but the old values are unknown.
                    None if matches!(
                        r.table.as_str(),
                        "directus_permissions" | "directus_access"
                    ) =>
                    {
                        out.push(Dep::Everyone)
                    }
                    None => {}
                }
            }
            Change::Delete { rel, old } => {
                if let Some(r) = system(*rel)
                    && (r.table != "directus_permissions"
                        || is_read_permission(r, &old.cells, old.key_only))
                {
                    row_deps(r, &old.cells, old.key_only, &mut out);
                }
            }
            Change::Truncate { rels } => {
                if rels.iter().any(|r| system(*r).is_some()) {
                    out.push(Dep::Everyone);
                }
            }
        }
    }
    out.sort();
    out.dedup();
    if out.contains(&Dep::Everyone) {
        return vec![Dep::Everyone];
    }
    out
}

/// A permission row whose filter cannot work: the worker logs it, so the administrator learns which
/// row to fix (the subscriptions it governs end with FORBIDDEN saying why, on the gateways).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenPermission {
    pub id: String,
    pub policy: String,
    pub collection: String,
    pub action: String,
    /// Which filter (`permissions` or `validation`) and what is wrong with it.
    pub reason: String,
}

/// The permission rows a chunk inserts or updates whose `permissions` or `validation` filter does
/// not parse or names an unknown operator. Field names and per-type operators are checked where the
/// collection's columns are known (the gateway's `normalize`); this catches what needs no schema.
pub fn broken_permissions(chunk: &TxChunk, schema: &str) -> Vec<BrokenPermission> {
    let mut out = Vec::new();
    if !chunk
        .relations
        .iter()
        .any(|r| r.schema == schema && r.table == "directus_permissions")
    {
        return out;
    }
    for change in &chunk.changes {
        let (rel, new) = match change {
            Change::Insert { rel, new } | Change::Update { rel, new, .. } => (*rel, new),
            _ => continue,
        };
        let Some(r) = chunk
            .relation(rel)
            .filter(|r| r.schema == schema && r.table == "directus_permissions")
        else {
            continue;
        };
        let text = |column: &str| match val(r, new, false, column) {
            Val::Id(t) => t.to_owned(),
            _ => String::new(),
        };
        for column in ["permissions", "validation"] {
            let Val::Id(json) = val(r, new, false, column) else {
                continue;
            };
            let problem = match serde_json::from_str::<serde_json::Value>(json) {
                Err(e) => Some(format!("not JSON ({e})")),
                Ok(serde_json::Value::Null) => None,
                Ok(serde_json::Value::Object(o)) if o.is_empty() => None,
                Ok(v) => crate::filter::check_structure(&v).err().map(|e| match e {
                    crate::filter::QueryError::Invalid(r)
                    | crate::filter::QueryError::Forbidden(r) => r,
                }),
            };
            if let Some(problem) = problem {
                out.push(BrokenPermission {
                    id: text("id"),
                    policy: text("policy"),
                    collection: text("collection"),
                    action: text("action"),
                    reason: format!("{column}: {problem}"),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{OldRow, RelColumn};
    use crate::value::Kind;

    fn rel(id: u32, table: &str, cols: &[&str]) -> Relation {
        Relation {
            id,
            schema: "public".into(),
            table: table.into(),
            identity: 'f',
            columns: cols
                .iter()
                .map(|c| RelColumn {
                    name: (*c).into(),
                    kind: Kind::Text,
                    key: *c == "id",
                })
                .collect(),
        }
    }

    fn t(s: &str) -> Cell {
        Cell::Text(s.into())
    }

    fn chunk(relations: Vec<Relation>, changes: Vec<Change>) -> TxChunk {
        TxChunk {
            lsn: 1,
            end_lsn: 2,
            xid: 1,
            commit_time: 0,
            seq: 0,
            last: true,
            relations,
            changes,
        }
    }

    fn full(cells: Vec<Cell>) -> Option<OldRow> {
        Some(OldRow {
            key_only: false,
            cells,
        })
    }

    #[test]
    fn each_table_names_what_it_touches() {
        let perms = rel(1, "directus_permissions", &["id", "policy", "action"]);
        let access = rel(2, "directus_access", &["id", "role", "user", "policy"]);
        let users = rel(
            3,
            "directus_users",
            &["id", "role", "status", "last_access"],
        );
        let roles = rel(4, "directus_roles", &["id", "parent"]);
        let articles = rel(5, "articles", &["id", "title"]);
        let c = chunk(
            vec![perms, access, users, roles, articles],
            vec![
                Change::Update {
                    rel: 1,
                    old: full(vec![t("1"), t("P1"), t("read")]),
                    new: vec![t("1"), t("P2"), t("read")],
                },
                Change::Insert {
                    rel: 2,
                    new: vec![t("a"), t("R1"), Cell::Null, t("P1")],
                },
                Change::Delete {
                    rel: 2,
                    old: OldRow {
                        key_only: false,
                        cells: vec![t("b"), Cell::Null, Cell::Null, t("P3")],
                    },
                },
                Change::Update {
                    rel: 3,
                    old: full(vec![t("U1"), t("R1"), t("active"), t("yesterday")]),
                    new: vec![t("U1"), t("R1"), t("suspended"), t("yesterday")],
                },
                Change::Update {
                    rel: 4,
                    old: full(vec![t("R2"), Cell::Null]),
                    new: vec![t("R2"), t("R1")],
                },
                Change::Insert {
                    rel: 5,
                    new: vec![t("9"), t("x")],
                },
            ],
        );
        assert_eq!(
            chunk_deps(&c, "public"),
            vec![
                Dep::User("U1".into()),
                Dep::Role("R1".into()),
                Dep::Role("R2".into()),
                Dep::Policy("P1".into()),
                Dep::Policy("P2".into()),
                Dep::Public,
            ]
        );
        assert!(
            chunk_deps(&c, "other").is_empty(),
            "another schema's tables"
        );
    }

    #[test]
    fn bookkeeping_and_other_actions_touch_nothing() {
        let perms = rel(1, "directus_permissions", &["id", "policy", "action"]);
        let users = rel(
            3,
            "directus_users",
            &["id", "role", "last_access", "last_page"],
        );
        let c = chunk(
            vec![perms, users],
            vec![
                Change::Insert {
                    rel: 1,
                    new: vec![t("1"), t("P1"), t("create")],
                },
                Change::Update {
                    rel: 3,
                    old: full(vec![t("U1"), t("R1"), t("monday"), t("/a")]),
                    new: vec![t("U1"), t("R1"), t("tuesday"), t("/b")],
                },
            ],
        );
        assert!(chunk_deps(&c, "public").is_empty());
        // The same user update with a TOASTed column left out is still bookkeeping.
        let users = rel(3, "directus_users", &["id", "avatar", "last_access"]);
        let c = chunk(
            vec![users],
            vec![Change::Update {
                rel: 3,
                old: full(vec![t("U1"), t("big"), t("monday")]),
                new: vec![t("U1"), Cell::Unchanged, t("tuesday")],
            }],
        );
        assert!(chunk_deps(&c, "public").is_empty());
    }

    #[test]
    fn what_the_change_does_not_carry_touches_everyone() {
        let access = rel(2, "directus_access", &["id", "role", "user", "policy"]);
        let c = chunk(
            vec![access.clone()],
            vec![Change::Delete {
                rel: 2,
                old: OldRow {
                    key_only: true,
                    cells: vec![t("a"), Cell::Null, Cell::Null, Cell::Null],
                },
            }],
        );
        assert_eq!(chunk_deps(&c, "public"), vec![Dep::Everyone]);
        let c = chunk(vec![access], vec![Change::Truncate { rels: vec![2] }]);
        assert_eq!(chunk_deps(&c, "public"), vec![Dep::Everyone]);
    }

    #[test]
    fn announcements_round_trip_and_bad_lines_widen() {
        let a = Announcement {
            deps: vec![
                Dep::User("u-1".into()),
                Dep::Role("r:2".into()),
                Dep::Policy("p".into()),
                Dep::Public,
                Dep::Everyone,
            ],
            shards: vec![0, 7, 255],
        };
        assert_eq!(decode_announcement(&encode_announcement(&a)), a);
        let none = Announcement::default();
        assert_eq!(decode_announcement(&encode_announcement(&none)), none);
        let deps = |b: &[u8]| decode_announcement(b).deps;
        assert_eq!(deps(b"s:1\nx:1"), vec![Dep::Everyone]);
        assert_eq!(deps(b"s:\nu:"), vec![Dep::Everyone]);
        assert_eq!(deps(&[0xff]), vec![Dep::Everyone]);
        assert_eq!(decode_announcement(b"s:1,x,3").shards, vec![1, 3]);
        assert!(decode_announcement(b"").deps.is_empty());
    }

    #[test]
    fn a_user_with_a_static_token_counts_as_changed() {
        let users = rel(3, "directus_users", &["id", "token", "last_access"]);
        let c = chunk(
            vec![users],
            vec![Change::Update {
                rel: 3,
                old: full(vec![t("U1"), t(MASK), t("monday")]),
                new: vec![t("U1"), t(MASK), t("tuesday")],
            }],
        );
        assert_eq!(chunk_deps(&c, "public"), vec![Dep::User("U1".into())]);
    }

    #[test]
    fn only_a_sessions_end_touches_its_user() {
        let sessions = rel(1, "directus_sessions", &["id", "user", "expires"]);
        let change = |c: Change| chunk_deps(&chunk(vec![sessions.clone()], vec![c]), "public");
        // A login and a refresh (token rotated in place) change nobody's rights.
        assert!(
            change(Change::Insert {
                rel: 1,
                new: vec![t("tok"), t("U1"), t("tomorrow")],
            })
            .is_empty()
        );
        assert!(
            change(Change::Update {
                rel: 1,
                old: full(vec![t("tok"), t("U1"), t("tomorrow")]),
                new: vec![t("tok2"), t("U1"), t("later")],
            })
            .is_empty()
        );
        assert_eq!(
            change(Change::Delete {
                rel: 1,
                old: OldRow {
                    key_only: false,
                    cells: vec![t("tok"), t("U1"), t("tomorrow")],
                },
            }),
            vec![Dep::User("U1".into())]
        );
        // Without the old row's user, every connection is checked again.
        assert_eq!(
            change(Change::Delete {
                rel: 1,
                old: OldRow {
                    key_only: true,
                    cells: vec![t("tok"), Cell::Unchanged, Cell::Unchanged],
                },
            }),
            vec![Dep::Everyone]
        );
    }

    #[test]
    fn broken_permission_filters_are_named_with_their_row() {
        let perms = rel(
            1,
            "directus_permissions",
            &[
                "id",
                "policy",
                "collection",
                "action",
                "permissions",
                "validation",
            ],
        );
        let row = |id: &str, filter: Cell, validation: Cell| Change::Insert {
            rel: 1,
            new: vec![t(id), t("P1"), t("articles"), t("read"), filter, validation],
        };
        let c = chunk(
            vec![perms],
            vec![
                row("1", t(r#"{"status":{"_eq":"published"}}"#), Cell::Null),
                row("2", t(r#"{"status":{"_bogus":1}}"#), Cell::Null),
                row("3", t("{}"), t(r#"{"_and": 5}"#)),
                row("4", t("{not json"), t("null")),
                row("5", Cell::Null, Cell::Null),
            ],
        );
        let broken = broken_permissions(&c, "public");
        let got: Vec<(&str, &str)> = broken
            .iter()
            .map(|b| (b.id.as_str(), b.reason.as_str()))
            .collect();
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0].0, "2");
        assert!(
            got[0]
                .1
                .starts_with("permissions: Unknown filter operator \"_bogus\""),
            "{}",
            got[0].1
        );
        assert_eq!(got[1].0, "3");
        assert!(got[1].1.starts_with("validation: "), "{}", got[1].1);
        assert_eq!(got[2].0, "4");
        assert!(
            got[2].1.starts_with("permissions: not JSON"),
            "{}",
            got[2].1
        );
        assert!(
            broken
                .iter()
                .all(|b| b.policy == "P1" && b.collection == "articles" && b.action == "read")
        );
        // Another schema's table of the same name is not Directus's.
        assert!(broken_permissions(&c, "other").is_empty());
    }
}
