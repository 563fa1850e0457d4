//! Stock on the device: the hub's ledger as its records publish it, this
//! terminal's escrow allowance, and the back-office stock commands.
//!
//! Stock decisions are never CRDT merges (two offline "sell the last unit"
//! decrements would merge into -1). The hub owns the ledger; a terminal
//! reads the published levels and spends only the allowance the hub granted
//! it, in the same local transaction as the sale (see `orders`).

use rusqlite::{OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};

use crate::db::{DbError, Replica};
use crate::retail::RetailError;
use crate::vocab::goods::Sku;
use crate::vocab::ids::{DeviceId, DocSetId, OpId, StoreId};
use crate::vocab::intent::{
    Intent, OfflinePolicy, StockCommand, StockMode, StockPolicy, validate_reservation,
};
use crate::vocab::keys::ReservationKey;
use crate::vocab::record::{AllowanceRecord, StockRecord};

/// A SKU's stock as this device sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ffi", derive(uniffi::Record))]
pub struct StockView {
    /// The product.
    pub sku: Sku,
    /// Units on hand at the hub's last word.
    pub on_hand: u64,
    /// Units free at the hub.
    pub free: u64,
    /// Units held by all terminals' allowances.
    pub held: u64,
    /// Escrow (sell from allowance) or strong (the hub decides).
    pub mode: StockMode,
    /// The SKU's policy.
    pub policy: StockPolicy,
    /// Units this terminal may still sell on its own.
    pub allowance_left: u64,
    /// The hub asked for this terminal's allowance back.
    pub recalled: bool,
}

/// This device's allowance of a SKU: granted by the hub, spent and released,
/// recall asked.
pub(crate) struct Allowance {
    pub granted: u64,
    pub spent: u64,
    pub released: u64,
    pub recall: bool,
}

impl Allowance {
    pub fn left(&self) -> u64 {
        self.granted.saturating_sub(self.spent + self.released)
    }
}

/// This device's allowance of a SKU. Use is the larger of the local count
/// (which includes sales not yet at the hub) and the hub's (which survives a
/// reinstalled till whose local count started again from zero).
pub(crate) fn allowance(
    db: &rusqlite::Connection,
    device: &DeviceId,
    sku: &Sku,
) -> Result<Allowance, DbError> {
    let (granted, recall, hub_spent, hub_released) = db
        .prepare_cached(
            "SELECT granted, recall, spent, released FROM allowances WHERE device_id = ?1 AND sku = ?2",
        )?
        .query_row(params![device.as_str(), sku.as_str()], |row| {
            Ok((
                row.get::<_, i64>(0)? as u64,
                row.get::<_, i64>(1)? != 0,
                row.get::<_, i64>(2)? as u64,
                row.get::<_, i64>(3)? as u64,
            ))
        })
        .optional()?
        .unwrap_or((0, false, 0, 0));
    let (spent, released) = db
        .prepare_cached("SELECT spent, released FROM escrow_local WHERE sku = ?1")?
        .query_row([sku.as_str()], |row| {
            Ok((row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u64))
        })
        .optional()?
        .unwrap_or((0, 0));
    Ok(Allowance {
        granted,
        spent: spent.max(hub_spent),
        released: released.max(hub_released),
        recall,
    })
}

/// Adds to this device's local escrow use (negative to give back).
pub(crate) fn add_escrow_use(
    tx: &Transaction<'_>,
    sku: &Sku,
    spent: i64,
    released: i64,
) -> Result<(), DbError> {
    tx.prepare_cached(
        "INSERT INTO escrow_local (sku, spent, released) VALUES (?1, MAX(?2, 0), MAX(?3, 0))
         ON CONFLICT (sku) DO UPDATE SET spent = MAX(spent + ?2, 0), released = MAX(released + ?3, 0)",
    )?
    .execute(params![sku.as_str(), spent, released])?;
    Ok(())
}

/// Applies a stock record if it is newer than the row; true if it was.
pub(crate) fn apply_stock_record(
    tx: &Transaction<'_>,
    set: &DocSetId,
    record: &StockRecord,
) -> Result<bool, DbError> {
    let changed = tx
        .prepare_cached(
            "INSERT INTO stock_levels (set_id, sku, on_hand, free, reserved, held, mode, strong_at_or_below, offline_policy, version)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (set_id, sku) DO UPDATE SET on_hand = ?3, free = ?4, reserved = ?5, held = ?6,
                 mode = ?7, strong_at_or_below = ?8, offline_policy = ?9, version = ?10
             WHERE excluded.version > stock_levels.version",
        )?
    .execute(params![
        set.as_str(),
        record.sku.as_str(),
        record.on_hand as i64,
        record.free as i64,
        record.reserved as i64,
        record.held as i64,
        record.mode.as_str(),
        record.policy.strong_at_or_below.min(i64::MAX as u64) as i64,
        record.policy.offline.as_str(),
        record.version as i64,
    ])?;
    Ok(changed > 0)
}

/// Applies an allowance record if it is newer than the row; true if it was.
pub(crate) fn apply_allowance_record(
    tx: &Transaction<'_>,
    record: &AllowanceRecord,
) -> Result<bool, DbError> {
    let changed = tx
        .prepare_cached(
            "INSERT INTO allowances (device_id, sku, granted, spent, released, recall, version)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (device_id, sku) DO UPDATE SET granted = ?3, spent = ?4, released = ?5,
                 recall = ?6, version = ?7
             WHERE excluded.version > allowances.version",
        )?
        .execute(params![
            record.device.as_str(),
            record.sku.as_str(),
            record.granted as i64,
            record.spent as i64,
            record.released as i64,
            record.recall as i64,
            record.version as i64,
        ])?;
    Ok(changed > 0)
}

/// A stored stock mode; text that is neither `escrow` nor `strong` is
/// corrupt data, never a guess.
fn parse_mode(set: &DocSetId, sku: &Sku, text: &str) -> Result<StockMode, DbError> {
    StockMode::parse(text).ok_or_else(|| DbError::Corrupt {
        doc: format!("stock level {sku} of {set}"),
        detail: format!("unknown stock mode {text:?}"),
    })
}

/// A stored offline policy; unknown text is corrupt data, never a default.
fn parse_offline_policy(set: &DocSetId, sku: &Sku, text: &str) -> Result<OfflinePolicy, DbError> {
    OfflinePolicy::parse(text).ok_or_else(|| DbError::Corrupt {
        doc: format!("stock level {sku} of {set}"),
        detail: format!("unknown offline policy {text:?}"),
    })
}

/// Stock reads and back-office stock commands.
impl Replica {
    /// A SKU's stock as the hub last published it, with this terminal's
    /// allowance. `None` if the hub never published the SKU.
    pub fn stock(&self, store: &StoreId, sku: &Sku) -> Result<Option<StockView>, DbError> {
        let set = DocSetId::store(store);
        let row = self
            .db
            .prepare_cached(
                "SELECT on_hand, free, held, mode, strong_at_or_below, offline_policy
                 FROM stock_levels WHERE set_id = ?1 AND sku = ?2",
            )?
            .query_row(params![set.as_str(), sku.as_str()], |row| {
                Ok((
                    row.get::<_, i64>(0)? as u64,
                    row.get::<_, i64>(1)? as u64,
                    row.get::<_, i64>(2)? as u64,
                    row.get::<_, String>(3)?,
                    row.get::<_, i64>(4)? as u64,
                    row.get::<_, String>(5)?,
                ))
            })
            .optional()?;
        let Some((on_hand, free, held, mode, threshold, offline)) = row else {
            return Ok(None);
        };
        let allowance = allowance(&self.db, self.device(), sku)?;
        Ok(Some(StockView {
            sku: sku.clone(),
            on_hand,
            free,
            held,
            mode: parse_mode(&set, sku, &mode)?,
            policy: StockPolicy {
                strong_at_or_below: threshold,
                offline: parse_offline_policy(&set, sku, &offline)?,
            },
            allowance_left: allowance.left(),
            recalled: allowance.recall,
        }))
    }

    /// The on-hand count of every SKU the hub published for a store, by SKU.
    pub fn stock_levels(
        &self,
        store: &StoreId,
    ) -> Result<std::collections::HashMap<String, u64>, DbError> {
        let set = DocSetId::store(store);
        let mut statement = self
            .db
            .prepare_cached("SELECT sku, on_hand FROM stock_levels WHERE set_id = ?1")?;
        let rows = statement.query_map([set.as_str()], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)? as u64))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The on-hand count the hub last published for a SKU.
    pub fn stock_level(&self, store: &StoreId, sku: &Sku) -> Result<Option<i64>, DbError> {
        Ok(self
            .stock(store, sku)?
            .map(|view| view.on_hand.min(i64::MAX as u64) as i64))
    }

    /// Sends a stock command (receipt, stock-take, adjustment, policy) to the
    /// hub. `key` fields make a command idempotent.
    pub fn stock_command(
        &mut self,
        command: StockCommand,
        now_ms: u64,
    ) -> Result<OpId, RetailError> {
        command.validate()?;
        Ok(self.commit_intent(&Intent::Stock(command), now_ms, |_, _| Ok(()))?)
    }

    /// Asks the hub to set `quantity` units aside under `key` (a web
    /// checkout, click and collect); decided like a checkout line.
    pub fn reserve(
        &mut self,
        key: &ReservationKey,
        sku: &Sku,
        quantity: u64,
        now_ms: u64,
    ) -> Result<OpId, RetailError> {
        validate_reservation(quantity)?;
        let intent = Intent::Reserve {
            key: key.clone(),
            sku: sku.clone(),
            quantity,
        };
        Ok(self.commit_intent(&intent, now_ms, |_, _| Ok(()))?)
    }

    /// Sells the units of the open reservation `key`.
    pub fn commit_reservation(
        &mut self,
        key: &ReservationKey,
        now_ms: u64,
    ) -> Result<OpId, RetailError> {
        let intent = Intent::CommitReservation { key: key.clone() };
        Ok(self.commit_intent(&intent, now_ms, |_, _| Ok(()))?)
    }

    /// Gives the units of the open reservation `key` back.
    pub fn cancel_reservation(
        &mut self,
        key: &ReservationKey,
        now_ms: u64,
    ) -> Result<OpId, RetailError> {
        let intent = Intent::CancelReservation { key: key.clone() };
        Ok(self.commit_intent(&intent, now_ms, |_, _| Ok(()))?)
    }

    /// Gives back the unspent allowance of every SKU the hub recalled.
    /// Returns the release ops recorded (none while nothing is recalled).
    pub fn answer_recalls(&mut self, now_ms: u64) -> Result<Vec<OpId>, DbError> {
        let recalled: Vec<String> = self
            .db
            .prepare_cached("SELECT sku FROM allowances WHERE device_id = ?1 AND recall = 1")?
            .query_map([self.device().as_str()], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        let mut ops = Vec::new();
        for sku in recalled {
            let Ok(sku) = Sku::new(sku) else { continue };
            let left = allowance(&self.db, self.device(), &sku)?.left();
            if left == 0 {
                continue;
            }
            let intent = Intent::ReleaseAllowance {
                sku: sku.clone(),
                quantity: left,
            };
            ops.push(self.commit_intent(&intent, now_ms, |tx, _| {
                add_escrow_use(tx, &sku, 0, left as i64)
            })?);
        }
        Ok(ops)
    }
}
