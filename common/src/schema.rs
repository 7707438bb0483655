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
    index: HashMap<String, usize>,
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
            index,
        }
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
