//! Applying hub records on the device. Each record carries its entity's
//! version (the ledger entry's for stock and allowances, the order's status
//! version for orders), which only grows: a record replaces the row only if
//! it is newer, so records arriving late, twice or out of order (catch-up
//! snapshots) leave the newest state in place. One statement per record.

use rusqlite::Transaction;

use crate::db::DbError;
use crate::protocol::message::RemoteChange;
use crate::retail::{orders, stock};
use crate::vocab::record::{Record, RecordError};

/// Applies one record change; returns false when the row already held this
/// version or a newer one.
pub(crate) fn apply(tx: &Transaction<'_>, change: &RemoteChange) -> Result<bool, DbError> {
    let record = match Record::decode(&change.bytes) {
        Ok(record) => record,
        // A newer hub's kind of record: nothing here reads it yet.
        Err(RecordError::UnknownKind { kind }) => {
            tracing::debug!(doc = %change.doc, %kind, "skipped a record of unknown kind");
            return Ok(false);
        }
        Err(error) => {
            return Err(DbError::Corrupt {
                doc: change.doc.to_string(),
                detail: error.to_string(),
            });
        }
    };
    match &record {
        Record::Stock(stock) => stock::apply_stock_record(tx, &change.doc.set(), stock),
        Record::Allowance(allowance) => stock::apply_allowance_record(tx, allowance),
        Record::Order(order) => orders::apply_order_record(tx, order),
    }
}
