//! The collections (tables) the server knows: columns, their kinds, primary keys.
//!
//! Loaded from PostgreSQL's catalog by the gateway and the worker (I/O lives there); this is the pure model.

use crate::value::{Kind, Special};
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Column {
    pub name: String,
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Special::is_empty")]
    pub special: Special,
}

impl Column {
    /// A column without `directus_fields.special` casts.
    pub fn new(name: &str, kind: Kind) -> Column {
        Column {
            name: name.to_owned(),
            kind,
            special: Special::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Collection {
    pub name: String,
    /// PostgreSQL schema the table lives in.
    pub schema: String,
    pub primary_key: String,
    /// Columns in table order (the order `*` expands to).
    pub columns: Vec<Column>,
    /// `directus_collections.sort_field`, used as the default snapshot sort.
    pub sort_field: Option<String>,
    /// Many-to-one relations: a column of this collection → the collection it points at (a foreign key,
    /// or a `directus_relations` row with `many_collection` = this one).
    pub m2o: BTreeMap<String, String>,
    /// One-to-many alias fields (not columns): alias → the collection whose column points back here
    /// (a `directus_relations` row with `one_field` = the alias). A many-to-many is one of these onto
    /// the junction collection, whose own many-to-one leads on.
    pub o2m: BTreeMap<String, O2m>,
    index: HashMap<String, usize>,
}

/// The far side of a one-to-many alias field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct O2m {
    pub collection: String,
    /// The column of `collection` holding this collection's key.
    pub foreign_key: String,
    /// `directus_relations.sort_field`: the order of the related items (else their key).
    pub sort_field: Option<String>,
}

impl Collection {
    pub fn new(name: &str, schema: &str, primary_key: &str, columns: Vec<Column>) -> Collection {
        let index = columns
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), i))
            .collect();
        Collection {
            name: name.into(),
            schema: schema.into(),
            primary_key: primary_key.into(),
            columns,
            sort_field: None,
            m2o: BTreeMap::new(),
            o2m: BTreeMap::new(),
            index,
        }
    }

    /// The one-to-many relation of alias field `field`.
    pub fn o2m_target(&self, field: &str) -> Option<&O2m> {
        self.o2m.get(field)
    }

    /// The collection column `field` points at, if it is a many-to-one relation.
    pub fn m2o_target(&self, field: &str) -> Option<&str> {
        self.m2o.get(field).map(String::as_str)
    }

    pub fn column(&self, name: &str) -> Option<&Column> {
        self.index.get(name).map(|&i| &self.columns[i])
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    pub fn pk_column(&self) -> &Column {
        self.column(&self.primary_key)
            .expect("primary key is a column")
    }

    pub fn is_system(&self) -> bool {
        self.name.starts_with("directus_")
    }
}

/// Collections by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Schema {
    collections: BTreeMap<String, Collection>,
}

impl Schema {
    pub fn new(collections: impl IntoIterator<Item = Collection>) -> Schema {
        Schema {
            collections: collections
                .into_iter()
                .map(|c| (c.name.clone(), c))
                .collect(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Collection> {
        self.collections.get(name)
    }

    pub fn collections(&self) -> impl Iterator<Item = &Collection> {
        self.collections.values()
    }

    pub fn len(&self) -> usize {
        self.collections.len()
    }

    pub fn is_empty(&self) -> bool {
        self.collections.is_empty()
    }
}

/// System collections a subscription may never target: no change events exist for them, and sessions hold
/// refresh tokens.
pub fn is_unsubscribable(collection: &str) -> bool {
    matches!(
        collection,
        "directus_sessions" | "directus_migrations" | "directus_extensions"
    )
}

/// The read permissions Directus grants every user whose policies give app access (its
/// `app-access-permissions.yaml`, added to the user's own), for `collection`: (row filter, fields;
/// `None` = all fields). Their variables resolve like any permission's.
pub fn app_minimal_read(
    collection: &str,
) -> Vec<(serde_json::Value, Option<&'static [&'static str]>)> {
    use serde_json::json;
    match collection {
        "directus_activity" => vec![(json!({"user": {"_eq": "$CURRENT_USER"}}), None)],
        "directus_comments" => vec![(json!({"user_created": {"_eq": "$CURRENT_USER"}}), None)],
        "directus_presets" => vec![(
            json!({"_or": [
                {"user": {"_eq": "$CURRENT_USER"}},
                {"_and": [{"user": {"_null": true}}, {"role": {"_eq": "$CURRENT_ROLE"}}]},
                {"_and": [{"user": {"_null": true}}, {"role": {"_null": true}}]}
            ]}),
            None,
        )],
        "directus_roles" => vec![(json!({"id": {"_in": "$CURRENT_ROLES"}}), None)],
        "directus_settings" | "directus_translations" => vec![(json!({}), None)],
        "directus_notifications" => vec![(json!({"recipient": {"_eq": "$CURRENT_USER"}}), None)],
        "directus_shares" => vec![(json!({"user_created": {"_eq": "$CURRENT_USER"}}), None)],
        "directus_users" => vec![(
            json!({"id": {"_eq": "$CURRENT_USER"}}),
            Some(&[
                "id",
                "first_name",
                "last_name",
                "last_page",
                "email",
                "password",
                "location",
                "title",
                "description",
                "tags",
                "preferences_divider",
                "avatar",
                "language",
                "appearance",
                "theme_light",
                "theme_dark",
                "tfa_secret",
                "status",
                "role",
            ]),
        )],
        _ => Vec::new(),
    }
}

/// Directus's many-to-one relations between system collections (its `system-data` relations, which are
/// not rows of `directus_relations`): (collection, field, related collection). A relation applies where
/// both tables and the column exist.
pub const SYSTEM_M2O: &[(&str, &str, &str)] = &[
    ("directus_users", "role", "directus_roles"),
    ("directus_users", "avatar", "directus_files"),
    ("directus_roles", "parent", "directus_roles"),
    ("directus_access", "role", "directus_roles"),
    ("directus_access", "user", "directus_users"),
    ("directus_access", "policy", "directus_policies"),
    ("directus_permissions", "policy", "directus_policies"),
    ("directus_activity", "user", "directus_users"),
    ("directus_revisions", "activity", "directus_activity"),
    ("directus_comments", "user_created", "directus_users"),
    ("directus_comments", "user_updated", "directus_users"),
    ("directus_notifications", "recipient", "directus_users"),
    ("directus_notifications", "sender", "directus_users"),
    ("directus_presets", "user", "directus_users"),
    ("directus_presets", "role", "directus_roles"),
    ("directus_files", "uploaded_by", "directus_users"),
    ("directus_files", "modified_by", "directus_users"),
    ("directus_files", "folder", "directus_folders"),
    ("directus_folders", "parent", "directus_folders"),
    ("directus_shares", "user_created", "directus_users"),
    ("directus_shares", "role", "directus_roles"),
    ("directus_shares", "collection", "directus_collections"),
];
