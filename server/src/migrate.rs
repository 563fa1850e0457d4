//! Moving a hub from its embedded SQLite store into PostgreSQL:
//! `omnisync-hub migrate --from DATA_DIR --to postgres://…`.
//!
//! Every row moves as it is stored (both backends keep the same tables and
//! the same row encodings), with the log's identity: devices' cursors are
//! positions in a log named by its `log_id`, so they carry on against the
//! PostgreSQL hub without starting over. The copy is one PostgreSQL
//! transaction: it lands whole or not at all. The source is locked for the
//! copy (no hub may write it meanwhile); the target must hold no hub log
//! yet. Afterwards the copy is checked: row counts and the head.

use std::path::Path;

use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{ToSql, Type};
use rusqlite::types::ValueRef;

use crate::storage::postgres::{PgBackend, PgUrl, describe};

/// One table's columns, in the order both schemas list them.
struct Table {
    name: &'static str,
    columns: &'static [(&'static str, Type)],
}

/// The hub log's tables (`log_head` is set from the copied changes).
const LOG_TABLES: &[Table] = &[
    Table {
        name: "meta",
        columns: &[("key", Type::TEXT), ("value", Type::TEXT)],
    },
    Table {
        name: "changes",
        columns: &[
            ("hub_seq", Type::INT8),
            ("set_id", Type::TEXT),
            ("doc_id", Type::TEXT),
            ("origin", Type::BYTEA),
            ("bytes", Type::BYTEA),
        ],
    },
    Table {
        name: "op_outcomes",
        columns: &[
            ("replica", Type::BYTEA),
            ("seq", Type::INT8),
            ("outcome", Type::BYTEA),
            ("decided_ms", Type::INT8),
        ],
    },
    Table {
        name: "snapshots",
        columns: &[
            ("doc_id", Type::TEXT),
            ("set_id", Type::TEXT),
            ("covers_seq", Type::INT8),
            ("bytes", Type::BYTEA),
        ],
    },
    Table {
        name: "set_snapshots",
        columns: &[("set_id", Type::TEXT), ("covers_seq", Type::INT8)],
    },
    Table {
        name: "ledger_skus",
        columns: &[
            ("store_id", Type::TEXT),
            ("sku", Type::TEXT),
            ("state", Type::BYTEA),
            ("has_rights", Type::BOOL),
        ],
    },
    Table {
        name: "ledger_orders",
        columns: &[
            ("store_id", Type::TEXT),
            ("order_id", Type::TEXT),
            ("record", Type::BYTEA),
        ],
    },
    Table {
        name: "ledger_keys",
        columns: &[
            ("store_id", Type::TEXT),
            ("key", Type::TEXT),
            ("decision", Type::BYTEA),
        ],
    },
    Table {
        name: "ledger_reservations",
        columns: &[
            ("store_id", Type::TEXT),
            ("key", Type::TEXT),
            ("state", Type::BYTEA),
        ],
    },
    Table {
        name: "ledger_stores",
        columns: &[("store_id", Type::TEXT), ("last_order_no", Type::INT8)],
    },
    Table {
        name: "events",
        columns: &[
            ("seq", Type::INT8),
            ("tenant", Type::TEXT),
            ("store_id", Type::TEXT),
            ("store_seq", Type::INT8),
            ("type", Type::TEXT),
            ("time_ms", Type::INT8),
            ("data", Type::JSONB),
        ],
    },
];

/// The device registry's tables (`devices.db` on SQLite).
const DEVICE_TABLES: &[Table] = &[
    Table {
        name: "replicas",
        columns: &[
            ("replica", Type::BYTEA),
            ("tenant", Type::TEXT),
            ("device", Type::TEXT),
            ("bound_ms", Type::INT8),
        ],
    },
    Table {
        name: "revocations",
        columns: &[
            ("tenant", Type::TEXT),
            ("device", Type::TEXT),
            ("revoked_ms", Type::INT8),
            ("reason", Type::TEXT),
        ],
    },
];

/// What a migration copied.
#[derive(Debug, Default)]
pub struct Migrated {
    /// Rows per table, in copy order.
    pub rows: Vec<(&'static str, u64)>,
    /// The log's head (its highest sequence number).
    pub head: u64,
    /// The log's identity, kept.
    pub log_id: String,
}

/// Why a migration did not happen.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The source could not be read.
    #[error("reading {0}")]
    Source(String),
    /// The target could not be written.
    #[error("writing {0}")]
    Target(String),
    /// The target already holds a hub log.
    #[error("{0}")]
    NotEmpty(String),
    /// The copy does not match its source.
    #[error("the copy does not match its source: {0}")]
    Mismatch(String),
}

/// Copies the SQLite hub in `from` into the PostgreSQL database at `to`.
pub fn migrate(from: &Path, to: &PgUrl) -> Result<Migrated, MigrateError> {
    let db_path = from.join(crate::storage::DB_FILE_NAME);
    if !db_path.exists() {
        return Err(MigrateError::Source(format!(
            "{}: no hub database there",
            db_path.display()
        )));
    }
    // The hub's lock: no hub may write the source while it is copied.
    let _lock = crate::storage::lock_data_dir(from)
        .map_err(|error| MigrateError::Source(error.to_string()))?;
    // Opening the target migrates its schema (an empty database gets every
    // table) and refuses one from a newer release.
    drop(PgBackend::open(to).map_err(|error| MigrateError::Target(error.to_string()))?);
    // Read-write (the lock is ours): a hub that stopped uncleanly left its
    // last commits in the WAL, which a read-only connection may not replay.
    let source = rusqlite::Connection::open_with_flags(
        &db_path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE,
    )
    .map_err(|error| MigrateError::Source(format!("{}: {error}", db_path.display())))?;
    let devices_path = from.join("devices.db");
    let devices = if devices_path.exists() {
        Some(
            rusqlite::Connection::open_with_flags(
                &devices_path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE,
            )
            .map_err(|error| {
                MigrateError::Source(format!("{}: {error}", devices_path.display()))
            })?,
        )
    } else {
        None
    };
    let mut target = to.connect().map_err(|error| {
        MigrateError::Target(format!("{}: {}", to.redacted(), describe(&error)))
    })?;
    let mut txn = target
        .transaction()
        .map_err(|error| MigrateError::Target(describe(&error)))?;
    let target_error = |error: postgres::Error| MigrateError::Target(describe(&error));
    // The writers' lock: no hub on the target writes during the copy.
    txn.batch_execute(&format!(
        "SELECT pg_advisory_xact_lock({})",
        crate::storage::postgres::WRITER_LOCK_KEY
    ))
    .map_err(target_error)?;
    let existing: i64 = txn
        .query_one("SELECT count(*) FROM changes", &[])
        .map_err(target_error)?
        .get(0);
    let log_id: Option<String> = txn
        .query_opt("SELECT value FROM meta WHERE key = 'log_id'", &[])
        .map_err(target_error)?
        .map(|row| row.get(0));
    if existing > 0 || log_id.is_some() {
        return Err(MigrateError::NotEmpty(format!(
            "{} already holds a hub log{}: migrate into an empty database",
            to.redacted(),
            log_id
                .map(|id| format!(" (log id {id})"))
                .unwrap_or_default()
        )));
    }
    let mut migrated = Migrated::default();
    for table in LOG_TABLES {
        // A hub store from before the outbox has no events table: none to copy.
        let rows = if source_has_table(&source, table.name)? {
            copy_table(&source, &mut txn, table)?
        } else {
            0
        };
        migrated.rows.push((table.name, rows));
    }
    if let Some(devices) = &devices {
        for table in DEVICE_TABLES {
            let rows = copy_table(devices, &mut txn, table)?;
            migrated.rows.push((table.name, rows));
        }
    }
    let head: i64 = source
        .query_row("SELECT coalesce(max(hub_seq), 0) FROM changes", [], |row| {
            row.get(0)
        })
        .map_err(|error| MigrateError::Source(error.to_string()))?;
    txn.execute("UPDATE log_head SET seq = $1 WHERE id = 1", &[&head])
        .map_err(target_error)?;
    // Check before committing: every table holds what its source holds.
    for (name, rows) in &migrated.rows {
        let copied: i64 = txn
            .query_one(&format!("SELECT count(*) FROM {name}"), &[])
            .map_err(target_error)?
            .get(0);
        if copied as u64 != *rows {
            return Err(MigrateError::Mismatch(format!(
                "{name}: {rows} rows read, {copied} in the target"
            )));
        }
    }
    migrated.log_id = txn
        .query_one("SELECT value FROM meta WHERE key = 'log_id'", &[])
        .map_err(target_error)?
        .get(0);
    txn.commit().map_err(target_error)?;
    migrated.head = head.max(0) as u64;
    Ok(migrated)
}

/// True when the SQLite source has table `name`.
fn source_has_table(source: &rusqlite::Connection, name: &str) -> Result<bool, MigrateError> {
    source
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [name],
            |row| row.get::<_, i64>(0),
        )
        .map(|count| count > 0)
        .map_err(|error| MigrateError::Source(error.to_string()))
}

/// Copies one table with binary COPY; returns the rows copied.
fn copy_table(
    source: &rusqlite::Connection,
    txn: &mut postgres::Transaction<'_>,
    table: &Table,
) -> Result<u64, MigrateError> {
    let names: Vec<&str> = table.columns.iter().map(|(name, _)| *name).collect();
    let types: Vec<Type> = table.columns.iter().map(|(_, ty)| ty.clone()).collect();
    let source_error =
        |error: rusqlite::Error| MigrateError::Source(format!("table {}: {error}", table.name));
    let mut select = source
        .prepare(&format!("SELECT {} FROM {}", names.join(", "), table.name))
        .map_err(source_error)?;
    let sink = txn
        .copy_in(&format!(
            "COPY {} ({}) FROM STDIN BINARY",
            table.name,
            names.join(", ")
        ))
        .map_err(|error| {
            MigrateError::Target(format!("table {}: {}", table.name, describe(&error)))
        })?;
    let mut writer = BinaryCopyInWriter::new(sink, &types);
    let mut rows = select.query([]).map_err(source_error)?;
    let mut count = 0u64;
    while let Some(row) = rows.next().map_err(source_error)? {
        let mut values: Vec<Box<dyn ToSql + Sync>> = Vec::with_capacity(types.len());
        for (index, ty) in types.iter().enumerate() {
            let value = row.get_ref(index).map_err(source_error)?;
            values.push(convert(table.name, names[index], ty, value)?);
        }
        let refs: Vec<&(dyn ToSql + Sync)> = values.iter().map(|value| &**value).collect();
        writer.write(&refs).map_err(|error| {
            MigrateError::Target(format!("table {}: {}", table.name, describe(&error)))
        })?;
        count += 1;
    }
    writer.finish().map_err(|error| {
        MigrateError::Target(format!("table {}: {}", table.name, describe(&error)))
    })?;
    Ok(count)
}

/// One SQLite value as the PostgreSQL column's type.
fn convert(
    table: &str,
    column: &str,
    ty: &Type,
    value: ValueRef<'_>,
) -> Result<Box<dyn ToSql + Sync>, MigrateError> {
    let wrong = || {
        MigrateError::Source(format!(
            "table {table}, column {column}: a {} value where {ty} was expected",
            value.data_type()
        ))
    };
    Ok(match (ty, value) {
        (&Type::INT8, ValueRef::Integer(n)) => Box::new(n),
        (&Type::BOOL, ValueRef::Integer(n)) => Box::new(n != 0),
        (&Type::TEXT, ValueRef::Text(text)) => {
            Box::new(std::str::from_utf8(text).map_err(|_| wrong())?.to_owned())
        }
        (&Type::BYTEA, ValueRef::Blob(bytes)) => Box::new(bytes.to_vec()),
        (&Type::JSONB, ValueRef::Text(text)) => Box::new(
            serde_json::from_slice::<serde_json::Value>(text).map_err(|error| {
                MigrateError::Source(format!(
                    "table {table}, column {column}: not JSON ({error})"
                ))
            })?,
        ),
        _ => return Err(wrong()),
    })
}
