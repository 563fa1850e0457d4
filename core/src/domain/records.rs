//! Applying hub records on the device: the newest record of a document (by
//! hub sequence number) replaces the older one in the query tables.

use rusqlite::{OptionalExtension, Transaction, params};

use crate::domain::{orders, stock};
use crate::ledger::record::Record;
use crate::protocol::message::RemoteChange;
use crate::store::StoreError;

/// Applies one record change; returns false when a newer record of the
/// document was already applied.
pub(crate) fn apply(tx: &Transaction<'_>, change: &RemoteChange) -> Result<bool, StoreError> {
    let newest: Option<i64> = tx
        .prepare_cached("SELECT hub_seq FROM hub_records WHERE doc_id = ?1")?
        .query_row([change.doc.as_str()], |row| row.get(0))
        .optional()?;
    if newest.is_some_and(|newest| newest as u64 >= change.hub_seq) {
        return Ok(false);
    }
    let record = Record::decode(&change.bytes).map_err(|error| StoreError::Corrupt {
        doc: change.doc.to_string(),
        detail: error.to_string(),
    })?;
    match &record {
        Record::Stock(stock) => stock::apply_stock_record(tx, &change.doc.set(), stock)?,
        Record::Allowance(allowance) => stock::apply_allowance_record(tx, allowance)?,
        Record::Order(order) => orders::apply_order_record(tx, order)?,
    }
    tx.prepare_cached(
        "INSERT INTO hub_records (doc_id, hub_seq) VALUES (?1, ?2)
         ON CONFLICT (doc_id) DO UPDATE SET hub_seq = ?2",
    )?
    .execute(params![change.doc.as_str(), change.hub_seq as i64])?;
    Ok(true)
}
