//! Stock levels, read side: the on-hand count of each SKU as last published
//! by the authority (the back office today, the hub's ledger once escrow
//! lands). A last-writer-wins register per SKU: stock decisions are never
//! CRDT merges (two offline "sell the last unit" decrements would merge
//! into -1), so devices only read these.

use std::collections::BTreeSet;

use automerge::Automerge;
use rusqlite::{OptionalExtension, Transaction, params};

use crate::domain::hlc::winner;
use crate::domain::register::{register_values, stamped_put};
use crate::domain::{DomainError, Sku, layout};
use crate::ids::{DocId, DocSetId, StoreId};
use crate::store::{DocEdit, Store, StoreError};

/// The edit that publishes the on-hand count of a SKU.
pub fn publish_level_edit(
    store: &mut Store,
    store_id: &StoreId,
    sku: &Sku,
    on_hand: i64,
    now_ms: u64,
) -> Result<DocEdit, DomainError> {
    if on_hand < 0 {
        return Err(DomainError::Invalid(format!(
            "stock of {sku} cannot be negative"
        )));
    }
    Ok(stamped_put(
        store,
        &layout::stock_doc(store_id, sku),
        sku.to_string(),
        on_hand,
        now_ms,
    )?)
}

/// Re-projects the levels whose keys changed.
pub(crate) fn project(
    tx: &Transaction<'_>,
    doc_id: &DocId,
    doc: &Automerge,
    keys: &BTreeSet<String>,
) -> Result<(), StoreError> {
    let set = doc_id.set();
    for sku in keys {
        match winner(register_values::<i64>(doc, sku)) {
            Some(stamped) => {
                tx.prepare_cached(
                    "INSERT INTO stock_levels (set_id, sku, on_hand) VALUES (?1, ?2, ?3)
                     ON CONFLICT (set_id, sku) DO UPDATE SET on_hand = ?3",
                )?
                .execute(params![set.as_str(), sku, stamped.value])?;
            }
            None => {
                tx.execute(
                    "DELETE FROM stock_levels WHERE set_id = ?1 AND sku = ?2",
                    params![set.as_str(), sku],
                )?;
            }
        }
    }
    Ok(())
}

/// Stock queries.
impl Store {
    /// The last published on-hand count of a SKU.
    pub fn stock_level(&self, store: &StoreId, sku: &Sku) -> Result<Option<i64>, StoreError> {
        let set = DocSetId::store(store);
        let level = self
            .db
            .prepare_cached("SELECT on_hand FROM stock_levels WHERE set_id = ?1 AND sku = ?2")?
            .query_row(params![set.as_str(), sku.as_str()], |row| row.get(0))
            .optional()?;
        Ok(level)
    }
}
