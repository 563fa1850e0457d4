//! Prices: last-writer-wins registers ordered by hybrid logical clock, one per
//! (SKU, channel, effective-from time) in the store's price buckets.
//!
//! The price in force for a channel at time `t` is the register with the
//! latest effective-from time not after `t`; within a register the greatest
//! `(hlc, writer)` wins on every replica alike.

use std::collections::BTreeSet;

use automerge::Automerge;
use rusqlite::{OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};

use crate::db::{DbError, DocEdit, Replica};
use crate::retail::RetailError;
use crate::retail::register::{register_values, stamped_put};
use crate::vocab::goods::{Channel, Currency, Money, Sku};
use crate::vocab::hlc::{Hlc, winner};
use crate::vocab::ids::{DocId, DocSetId, StoreId};
use crate::vocab::layout;

/// The stored value of a price register.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PriceValue {
    /// Minor units.
    pub amount_minor: i64,
    /// ISO 4217 code.
    pub currency: String,
}

/// A price as the query tables show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ffi", derive(uniffi::Record))]
pub struct Price {
    /// The product.
    pub sku: String,
    /// The channel.
    pub channel: Channel,
    /// From when it applies, ms since the epoch.
    pub effective_from_ms: u64,
    /// The amount.
    pub money: Money,
    /// When it was written (hybrid logical clock).
    pub written_at: Hlc,
}

/// The document key of the price register for (sku, channel, effective-from).
pub fn price_key(sku: &Sku, channel: Channel, effective_from_ms: u64) -> String {
    // Zero-padded so keys sort by time.
    format!("{sku}/{}/{effective_from_ms:013}", channel.as_str())
}

/// The edit that sets a price.
pub fn set_price_edit(
    store: &mut Replica,
    store_id: &StoreId,
    sku: &Sku,
    channel: Channel,
    effective_from_ms: u64,
    money: &Money,
    now_ms: u64,
) -> Result<DocEdit, RetailError> {
    if money.amount_minor < 0 {
        return Err(RetailError::Invalid(format!("price of {sku} is negative")));
    }
    let doc = layout::prices_doc(store_id, sku);
    let value = PriceValue {
        amount_minor: money.amount_minor,
        currency: money.currency.as_str().to_owned(),
    };
    Ok(stamped_put(
        store,
        &doc,
        price_key(sku, channel, effective_from_ms),
        value,
        now_ms,
    )?)
}

/// Re-projects the registers whose keys changed.
pub(crate) fn project(
    tx: &Transaction<'_>,
    doc_id: &DocId,
    doc: &Automerge,
    keys: &BTreeSet<String>,
) -> Result<(), DbError> {
    let set = doc_id.set();
    for key in keys {
        let mut parts = key.split('/');
        let (Some(sku), Some(channel), Some(from), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Ok(from) = from.parse::<u64>() else {
            continue;
        };
        match winner(register_values::<PriceValue>(doc, key)) {
            Some(stamped) => {
                tx.prepare_cached(
                    "INSERT INTO prices (set_id, sku, channel, effective_from_ms, amount_minor, currency, hlc_wall_ms, hlc_counter)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT (set_id, sku, channel, effective_from_ms)
                     DO UPDATE SET amount_minor = ?5, currency = ?6, hlc_wall_ms = ?7, hlc_counter = ?8",
                )?
                .execute(params![
                        set.as_str(),
                        sku,
                        channel,
                        from as i64,
                        stamped.value.amount_minor,
                        stamped.value.currency,
                        stamped.hlc.wall_ms as i64,
                        stamped.hlc.counter
                    ])?;
            }
            None => {
                tx.execute(
                    "DELETE FROM prices WHERE set_id = ?1 AND sku = ?2 AND channel = ?3 AND effective_from_ms = ?4",
                    params![set.as_str(), sku, channel, from as i64],
                )?;
            }
        }
    }
    Ok(())
}

/// Price queries.
impl Replica {
    /// The price of `sku` in force on `channel` at `at_ms`.
    pub fn price_in_force(
        &self,
        store: &StoreId,
        sku: &Sku,
        channel: Channel,
        at_ms: u64,
    ) -> Result<Option<Price>, DbError> {
        let set = DocSetId::store(store);
        let row = self
            .db
            .prepare_cached(
                "SELECT effective_from_ms, amount_minor, currency, hlc_wall_ms, hlc_counter FROM prices
                 WHERE set_id = ?1 AND sku = ?2 AND channel = ?3 AND effective_from_ms <= ?4
                 ORDER BY effective_from_ms DESC LIMIT 1",
            )?
            .query_row(params![set.as_str(), sku.as_str(), channel.as_str(), at_ms as i64], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?, row.get::<_, String>(2)?, row.get::<_, i64>(3)?, row.get::<_, u32>(4)?))
            })
            .optional()?;
        Ok(row.and_then(|(from, amount, currency, wall, counter)| {
            Some(Price {
                sku: sku.to_string(),
                channel,
                effective_from_ms: from as u64,
                money: Money {
                    amount_minor: amount,
                    currency: Currency::new(&currency).ok()?,
                },
                written_at: Hlc {
                    wall_ms: wall as u64,
                    counter,
                },
            })
        }))
    }
}

/// Every price register in a prices document with its winning value:
/// `(sku, channel, effective_from_ms, amount_minor)`. Used by the hub's
/// price book, which checks the prices a checkout saw.
pub fn prices_in_doc(doc: &Automerge) -> Vec<(Sku, Channel, u64, i64)> {
    let mut prices = Vec::new();
    for key in automerge::ReadDoc::keys(doc, automerge::ROOT) {
        let mut parts = key.split('/');
        let (Some(sku), Some(channel), Some(from), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (Ok(sku), Some(channel), Ok(from)) =
            (Sku::new(sku), Channel::parse(channel), from.parse::<u64>())
        else {
            continue;
        };
        if let Some(stamped) = winner(register_values::<PriceValue>(doc, &key)) {
            prices.push((sku, channel, from, stamped.value.amount_minor));
        }
    }
    prices
}
