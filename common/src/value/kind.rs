//! The kind of a column as far as encoding and comparison care: the map from PostgreSQL type OIDs and
//! catalog type names, Directus's field type and the SQL cast a filter parameter gets; and the
//! per-column transforms Directus applies from `directus_fields.special`.

/// The kind of a column, as far as encoding and comparison care.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Numeric,
    /// text, name, citext, "char" (Directus type `text`)
    Text,
    /// varchar (Directus type `string`); otherwise identical to `Text`
    Varchar,
    /// char(n): blank-padded on output, padding insignificant in comparisons.
    Bpchar,
    Uuid,
    Json,
    Jsonb,
    Date,
    Time,
    TimeTz,
    Timestamp,
    TimestampTz,
    Bytea,
    Array(Box<Kind>),
    /// Enums, intervals, network types, ...: compared and encoded as their text.
    Other,
}

impl Kind {
    /// Kind from a built-in type OID. Non-built-in OIDs (enums, domains, extension types) need a catalog
    /// lookup: use [`Kind::from_type_name`] on the base type's name.
    pub fn from_oid(oid: u32) -> Option<Kind> {
        Some(match oid {
            16 => Kind::Bool,
            17 => Kind::Bytea,
            18 | 19 | 25 => Kind::Text,
            1043 => Kind::Varchar,
            20 | 26 => Kind::Int8,
            21 => Kind::Int2,
            23 => Kind::Int4,
            114 => Kind::Json,
            3802 => Kind::Jsonb,
            700 => Kind::Float4,
            701 => Kind::Float8,
            1042 => Kind::Bpchar,
            1082 => Kind::Date,
            1083 => Kind::Time,
            1114 => Kind::Timestamp,
            1184 => Kind::TimestampTz,
            1266 => Kind::TimeTz,
            1700 => Kind::Numeric,
            2950 => Kind::Uuid,
            1000 => Kind::Array(Box::new(Kind::Bool)),
            1001 => Kind::Array(Box::new(Kind::Bytea)),
            1002 | 1009 | 1015 | 1003 => Kind::Array(Box::new(Kind::Text)),
            1014 => Kind::Array(Box::new(Kind::Bpchar)),
            1005 => Kind::Array(Box::new(Kind::Int2)),
            1007 => Kind::Array(Box::new(Kind::Int4)),
            1016 | 1028 => Kind::Array(Box::new(Kind::Int8)),
            1021 => Kind::Array(Box::new(Kind::Float4)),
            1022 => Kind::Array(Box::new(Kind::Float8)),
            1231 => Kind::Array(Box::new(Kind::Numeric)),
            1182 => Kind::Array(Box::new(Kind::Date)),
            1183 => Kind::Array(Box::new(Kind::Time)),
            1115 => Kind::Array(Box::new(Kind::Timestamp)),
            1185 => Kind::Array(Box::new(Kind::TimestampTz)),
            1270 => Kind::Array(Box::new(Kind::TimeTz)),
            2951 => Kind::Array(Box::new(Kind::Uuid)),
            199 => Kind::Array(Box::new(Kind::Json)),
            3807 => Kind::Array(Box::new(Kind::Jsonb)),
            _ => return None,
        })
    }

    /// Kind from a (base) type name as in `pg_type.typname`. Array types are named `_elem`.
    pub fn from_type_name(name: &str) -> Kind {
        if let Some(elem) = name.strip_prefix('_') {
            return Kind::Array(Box::new(Kind::from_type_name(elem)));
        }
        match name {
            "bool" => Kind::Bool,
            "bytea" => Kind::Bytea,
            "char" | "name" | "text" | "citext" => Kind::Text,
            "varchar" => Kind::Varchar,
            "int8" | "oid" => Kind::Int8,
            "int2" => Kind::Int2,
            "int4" => Kind::Int4,
            "json" => Kind::Json,
            "jsonb" => Kind::Jsonb,
            "float4" => Kind::Float4,
            "float8" => Kind::Float8,
            "bpchar" => Kind::Bpchar,
            "date" => Kind::Date,
            "time" => Kind::Time,
            "timetz" => Kind::TimeTz,
            "timestamp" => Kind::Timestamp,
            "timestamptz" => Kind::TimestampTz,
            "numeric" => Kind::Numeric,
            "uuid" => Kind::Uuid,
            _ => Kind::Other,
        }
    }

    /// Kind from the catalog: the base type's `typname` and `typtype` (domains already resolved to their
    /// base type). Enums, ranges and composites compare as text.
    pub fn from_catalog(typname: &str, typtype: &str) -> Kind {
        if typtype == "b" {
            Kind::from_type_name(typname)
        } else {
            Kind::Other
        }
    }

    /// Directus's field type for this kind (`get-local-type.ts`); it decides the allowed filter operators.
    pub fn directus_type(&self) -> &'static str {
        match self {
            Kind::Bool => "boolean",
            Kind::Int2 | Kind::Int4 => "integer",
            Kind::Int8 => "bigInteger",
            Kind::Float4 | Kind::Float8 => "float",
            Kind::Numeric => "decimal",
            Kind::Text => "text",
            Kind::Varchar | Kind::Bpchar => "string",
            Kind::Uuid => "uuid",
            Kind::Json | Kind::Jsonb => "json",
            Kind::Date => "date",
            Kind::Time | Kind::TimeTz => "time",
            Kind::Timestamp => "dateTime",
            Kind::TimestampTz => "timestamp",
            Kind::Bytea | Kind::Array(_) | Kind::Other => "unknown",
        }
    }

    /// The SQL type a filter parameter is cast to when compared with a column of this kind.
    pub fn sql_cast(&self) -> &'static str {
        match self {
            Kind::Bool => "boolean",
            Kind::Int2 | Kind::Int4 | Kind::Int8 => "int8",
            Kind::Float4 | Kind::Float8 => "float8",
            Kind::Numeric => "numeric",
            Kind::Uuid => "uuid",
            Kind::Date => "date",
            Kind::Time => "time",
            Kind::Timestamp => "timestamp",
            Kind::TimestampTz => "timestamptz",
            _ => "text",
        }
    }

    pub fn is_integer(&self) -> bool {
        matches!(self, Kind::Int2 | Kind::Int4 | Kind::Int8)
    }
}

/// Optional per-column transforms that Directus applies from `directus_fields.special`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Special {
    pub cast_json: bool,
    pub cast_csv: bool,
    pub cast_boolean: bool,
    pub conceal: bool,
}

impl Special {
    pub fn from_csv(special: &str) -> Special {
        let mut s = Special::default();
        for flag in special.split(',').map(str::trim) {
            match flag {
                "cast-json" => s.cast_json = true,
                "cast-csv" => s.cast_csv = true,
                "cast-boolean" => s.cast_boolean = true,
                "conceal" => s.conceal = true,
                _ => {}
            }
        }
        s
    }

    pub fn is_empty(&self) -> bool {
        *self == Special::default()
    }
}
