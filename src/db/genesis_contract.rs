//! The Genesis contract as a checkable list: every table (or view) cpsync
//! reads or writes in the district's SIS, each column with the kind of type
//! it must have, and the two things beyond columns the engine relies on (a
//! unique vendor transaction id, and real tables where the outbox triggers
//! go). `check` compares a live database with it and names what is missing,
//! so `cpsync migrate --integration-only` can install beside a real Genesis
//! without creating or touching any Genesis object.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};

use super::{DbConnection, DbError};

/// The kind of SQL type a contract column must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Integer,
    Text,
    Date,
    Timestamp,
    Bool,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Integer => "an integer",
            Kind::Text => "text",
            Kind::Date => "a date",
            Kind::Timestamp => "a timestamp",
            Kind::Bool => "a boolean",
        }
    }

    /// Whether a declared type (as the database reports it) fits this kind.
    /// An empty type (a SQLite view's computed column) cannot be judged and
    /// is accepted.
    pub fn accepts(self, declared: &str) -> bool {
        let declared = declared.trim().to_ascii_lowercase();
        if declared.is_empty() {
            return true;
        }
        let base = declared.split('(').next().unwrap_or("").trim();
        match self {
            Kind::Integer => matches!(
                base,
                "bigint" | "integer" | "int" | "int8" | "int4" | "smallint" | "int2"
            ),
            Kind::Text => {
                base == "text"
                    || base.starts_with("character varying")
                    || base.starts_with("varchar")
                    || base.starts_with("character")
                    || base == "char"
            }
            Kind::Date => base == "date",
            Kind::Timestamp => {
                (declared.starts_with("timestamp") && !declared.contains("with time zone"))
                    || base == "datetime"
            }
            Kind::Bool => matches!(base, "boolean" | "bool"),
        }
    }
}

/// One relation of the contract.
pub struct Relation {
    pub name: &'static str,
    pub columns: &'static [(&'static str, Kind)],
    /// The outbox triggers are installed on it, so it must be a table.
    pub has_triggers: bool,
}

/// Every Genesis relation cpsync uses (see `migrations/*/…_genesis_contract`
/// and `db/schema.rs`).
pub const CONTRACT: &[Relation] = &[
    Relation {
        name: "schools",
        columns: &[
            ("code", Kind::Text),
            ("name", Kind::Text),
            ("low_grade", Kind::Text),
            ("high_grade", Kind::Text),
        ],
        has_triggers: false,
    },
    Relation {
        name: "students",
        columns: &[
            ("id", Kind::Integer),
            ("first_name", Kind::Text),
            ("last_name", Kind::Text),
            ("grade", Kind::Text),
            ("school_code", Kind::Text),
            ("status", Kind::Text),
            ("birth_date", Kind::Date),
            ("email", Kind::Text),
        ],
        has_triggers: false,
    },
    Relation {
        name: "guardians",
        columns: &[
            ("id", Kind::Integer),
            ("first_name", Kind::Text),
            ("last_name", Kind::Text),
            ("email", Kind::Text),
            ("phone", Kind::Text),
            ("portal_username", Kind::Text),
        ],
        has_triggers: false,
    },
    Relation {
        name: "student_guardians",
        columns: &[
            ("student_id", Kind::Integer),
            ("guardian_id", Kind::Integer),
            ("relationship", Kind::Text),
            ("household", Kind::Integer),
            ("portal_access", Kind::Bool),
            ("billing_contact", Kind::Bool),
        ],
        has_triggers: true,
    },
    Relation {
        name: "fee_categories",
        columns: &[
            ("code", Kind::Text),
            ("description", Kind::Text),
            ("default_amount_cents", Kind::Integer),
        ],
        has_triggers: false,
    },
    Relation {
        name: "student_fees",
        columns: &[
            ("id", Kind::Integer),
            ("student_id", Kind::Integer),
            ("category_code", Kind::Text),
            ("school_code", Kind::Text),
            ("description", Kind::Text),
            ("amount_cents", Kind::Integer),
            ("fee_date", Kind::Date),
            ("due_date", Kind::Date),
            ("status", Kind::Text),
            ("created_at", Kind::Timestamp),
            ("modified_at", Kind::Timestamp),
        ],
        has_triggers: true,
    },
    Relation {
        name: "fee_transactions",
        columns: &[
            ("id", Kind::Integer),
            ("fee_id", Kind::Integer),
            ("kind", Kind::Text),
            ("amount_cents", Kind::Integer),
            ("method", Kind::Text),
            ("source", Kind::Text),
            ("vendor_txn_id", Kind::Text),
            ("posted_at", Kind::Timestamp),
            ("note", Kind::Text),
        ],
        has_triggers: true,
    },
];

/// The table whose vendor transaction ids must be unique, and the column.
pub const UNIQUE_VENDOR_TXN: (&str, &str) = ("fee_transactions", "vendor_txn_id");

/// Something the live database lacks, in words an administrator can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    MissingRelation {
        relation: &'static str,
    },
    MissingColumn {
        relation: &'static str,
        column: &'static str,
        kind: Kind,
    },
    WrongType {
        relation: &'static str,
        column: &'static str,
        kind: Kind,
        found: String,
    },
    NotATable {
        relation: &'static str,
    },
    NotUnique {
        relation: &'static str,
        column: &'static str,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::MissingRelation { relation } => {
                write!(f, "{relation}: no such table or view")
            }
            Problem::MissingColumn {
                relation,
                column,
                kind,
            } => write!(f, "{relation}.{column}: missing (must be {})", kind.name()),
            Problem::WrongType {
                relation,
                column,
                kind,
                found,
            } => write!(
                f,
                "{relation}.{column}: is {found}, must be {}",
                kind.name()
            ),
            Problem::NotATable { relation } => write!(
                f,
                "{relation}: is a view, but cpsync's outbox triggers (instant pushes) \
                 need a table here"
            ),
            Problem::NotUnique { relation, column } => write!(
                f,
                "{relation}.{column}: needs a unique index (each vendor transaction is \
                 posted once; the database is the last guard)"
            ),
        }
    }
}

/// What the database says about one relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub is_table: bool,
    /// (column name, declared type)
    pub columns: Vec<(String, String)>,
}

/// Compares what was found (`None`: no such relation) with the contract.
/// Pure, so every rule is tested without a database.
pub fn compare(found: &dyn Fn(&str) -> Option<Found>, unique_vendor_txn: bool) -> Vec<Problem> {
    let mut problems = Vec::new();
    for relation in CONTRACT {
        let Some(found) = found(relation.name) else {
            problems.push(Problem::MissingRelation {
                relation: relation.name,
            });
            continue;
        };
        if relation.has_triggers && !found.is_table {
            problems.push(Problem::NotATable {
                relation: relation.name,
            });
        }
        for (column, kind) in relation.columns {
            match found.columns.iter().find(|(name, _)| name == column) {
                None => problems.push(Problem::MissingColumn {
                    relation: relation.name,
                    column,
                    kind: *kind,
                }),
                Some((_, declared)) if !kind.accepts(declared) => {
                    problems.push(Problem::WrongType {
                        relation: relation.name,
                        column,
                        kind: *kind,
                        found: declared.clone(),
                    })
                }
                Some(_) => {}
            }
        }
    }
    let (relation, column) = UNIQUE_VENDOR_TXN;
    let has_table = problems
        .iter()
        .all(|p| !matches!(p, Problem::MissingRelation { relation: r } if *r == relation));
    if has_table && !unique_vendor_txn {
        problems.push(Problem::NotUnique { relation, column });
    }
    problems
}

/// Whether any Genesis contract relation exists in the database.
pub fn any_present(conn: &mut DbConnection) -> Result<bool, DbError> {
    for relation in CONTRACT {
        if describe(conn, relation.name)?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Checks the live database against the contract.
pub fn check(conn: &mut DbConnection) -> Result<Vec<Problem>, DbError> {
    let mut found = std::collections::HashMap::new();
    for relation in CONTRACT {
        found.insert(relation.name, describe(conn, relation.name)?);
    }
    let (table, column) = UNIQUE_VENDOR_TXN;
    let unique = found.get(table).is_some_and(|f| f.is_some()) && is_unique(conn, table, column)?;
    Ok(compare(&|name| found.get(name).cloned().flatten(), unique))
}

#[derive(QueryableByName)]
struct RelationRow {
    #[diesel(sql_type = Text)]
    kind: String,
}

#[derive(QueryableByName)]
struct ColumnRow {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    declared: String,
}

#[derive(QueryableByName)]
struct CountRow {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

/// The relation named `name` as this connection sees it (PostgreSQL: on
/// the search path), or `None`.
fn describe(conn: &mut DbConnection, name: &str) -> Result<Option<Found>, DbError> {
    let (kinds, columns): (Vec<RelationRow>, Vec<ColumnRow>) = match conn {
        DbConnection::Sqlite(c) => (
            diesel::sql_query("SELECT type AS kind FROM sqlite_master WHERE name = $1 AND type IN ('table', 'view')")
                .bind::<Text, _>(name)
                .load(c)?,
            diesel::sql_query("SELECT name, COALESCE(type, '') AS declared FROM pragma_table_info($1)")
                .bind::<Text, _>(name)
                .load(c)?,
        ),
        DbConnection::Pg(c) => (
            diesel::sql_query(
                "SELECT CASE WHEN c.relkind IN ('r', 'p') THEN 'table' ELSE 'view' END AS kind \
                 FROM pg_catalog.pg_class c WHERE c.oid = to_regclass($1) \
                 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
            )
            .bind::<Text, _>(name)
            .load(c)?,
            diesel::sql_query(
                "SELECT a.attname::text AS name, format_type(a.atttypid, a.atttypmod) AS declared \
                 FROM pg_catalog.pg_attribute a \
                 WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
            )
            .bind::<Text, _>(name)
            .load(c)?,
        ),
    };
    Ok(kinds.first().map(|row| Found {
        is_table: row.kind == "table",
        columns: columns.into_iter().map(|c| (c.name, c.declared)).collect(),
    }))
}

/// Whether `table.column` alone carries a unique index or constraint.
fn is_unique(conn: &mut DbConnection, table: &str, column: &str) -> Result<bool, DbError> {
    let rows: Vec<CountRow> = match conn {
        DbConnection::Sqlite(c) => diesel::sql_query(
            "SELECT COUNT(*) AS count FROM pragma_index_list($1) AS l \
             WHERE l.\"unique\" = 1 \
             AND (SELECT COUNT(*) FROM pragma_index_info(l.name)) = 1 \
             AND (SELECT name FROM pragma_index_info(l.name)) = $2",
        )
        .bind::<Text, _>(table)
        .bind::<Text, _>(column)
        .load(c)?,
        DbConnection::Pg(c) => diesel::sql_query(
            "SELECT COUNT(*) AS count FROM pg_catalog.pg_index i \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
             WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indnkeyatts = 1 \
             AND a.attname = $2",
        )
        .bind::<Text, _>(table)
        .bind::<Text, _>(column)
        .load(c)?,
    };
    Ok(rows.first().is_some_and(|r| r.count > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(name: &str) -> Option<Found> {
        let relation = CONTRACT.iter().find(|r| r.name == name)?;
        Some(Found {
            is_table: true,
            columns: relation
                .columns
                .iter()
                .map(|(c, k)| {
                    let declared = match k {
                        Kind::Integer => "bigint",
                        Kind::Text => "text",
                        Kind::Date => "date",
                        Kind::Timestamp => "timestamp without time zone",
                        Kind::Bool => "boolean",
                    };
                    (c.to_string(), declared.to_string())
                })
                .collect(),
        })
    }

    #[test]
    fn the_whole_contract_has_no_problems() {
        assert_eq!(compare(&whole, true), vec![]);
    }

    #[test]
    fn each_gap_is_named() {
        let gaps = |name: &str| -> Option<Found> {
            match name {
                "schools" => None,
                "student_fees" => whole(name).map(|mut f| {
                    f.columns.retain(|(c, _)| c != "due_date");
                    f.is_table = false;
                    f
                }),
                "students" => whole(name).map(|mut f| {
                    for (c, declared) in &mut f.columns {
                        if c == "birth_date" {
                            *declared = "integer".to_string();
                        }
                    }
                    f
                }),
                other => whole(other),
            }
        };
        let shown: Vec<String> = compare(&gaps, false)
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(
            shown,
            vec![
                "schools: no such table or view",
                "students.birth_date: is integer, must be a date",
                "student_fees: is a view, but cpsync's outbox triggers (instant pushes) need a table here",
                "student_fees.due_date: missing (must be a date)",
                "fee_transactions.vendor_txn_id: needs a unique index (each vendor transaction is posted once; the database is the last guard)",
            ]
        );
    }

    #[test]
    fn a_view_is_fine_where_no_trigger_goes() {
        let views = |name: &str| {
            whole(name).map(|mut f| {
                f.is_table = name != "students";
                f
            })
        };
        assert_eq!(compare(&views, true), vec![]);
    }

    #[test]
    fn declared_types_are_judged_by_kind() {
        assert!(Kind::Text.accepts("character varying(80)"));
        assert!(Kind::Text.accepts("VARCHAR(20)"));
        assert!(Kind::Integer.accepts("INTEGER"));
        assert!(Kind::Integer.accepts("int4"));
        assert!(Kind::Timestamp.accepts("timestamp(0) without time zone"));
        assert!(Kind::Bool.accepts(""), "a SQLite view's computed column");
        assert!(!Kind::Integer.accepts("text"));
        assert!(!Kind::Date.accepts("timestamp without time zone"));
        assert!(!Kind::Timestamp.accepts("timestamp with time zone"));
        assert!(!Kind::Timestamp.accepts("timestamp(3) with time zone"));
    }
}
