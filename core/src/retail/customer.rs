//! A shopper's documents: cart, wishlist, profile and browsing history.
//!
//! - Cart: each line has a unique line id (`line/sku`, `line/quantity`,
//!   `line/added_ms`, `line/removed`), so adds from the phone, the web and
//!   the till never collide. Quantity is a counter: concurrent `+1`s add up.
//!   **Remove wins**: a removal sets a tombstone that no edit clears, so a
//!   quantity change made concurrently with the removal does not bring the
//!   line back; adding the item again makes a new line.
//! - Wishlist: an add-wins set. Each add writes a fresh tag (`sku/tag`); a
//!   remove deletes the tags it has seen, so a concurrent add survives.
//! - Profile: last-writer-wins per field (hybrid logical clock).
//! - History: the last [`HISTORY_LEN_MAX`] products viewed; best effort.

use std::collections::BTreeSet;

use automerge::{Automerge, ROOT, ReadDoc};
use rusqlite::{Transaction, params};
use serde::{Deserialize, Serialize};

use crate::db::{DbError, DocEdit, Replica};
use crate::retail::RetailError;
use crate::retail::register::{register_values, stamped_put};
use crate::vocab::edit::{Edit, Value};
use crate::vocab::goods::{Channel, Money, Sku};
use crate::vocab::hlc::winner;
use crate::vocab::ids::{CustomerId, DocId, StoreId, check_name};
use crate::vocab::layout;

/// Largest quantity on one cart line.
pub const LINE_QUANTITY_MAX: i64 = 10_000;
/// Most recommended products kept for a customer.
pub const RECOMMENDATIONS_LEN_MAX: usize = 50;
/// Entries kept in the browsing history.
pub const HISTORY_LEN_MAX: usize = 100;
/// Longest profile field value.
pub const PROFILE_VALUE_BYTES_MAX: usize = 1024;

/// A cart line as the query tables show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ffi", derive(uniffi::Record))]
pub struct CartLine {
    /// Unique line id.
    pub line_id: String,
    /// The product.
    pub sku: String,
    /// How many.
    pub quantity: i64,
    /// Product name, if the catalog has it.
    pub name: Option<String>,
    /// Current unit price on the channel, if priced.
    pub unit_price: Option<Money>,
}

/// A cart with totals at current prices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartView {
    /// Lines, oldest first.
    pub lines: Vec<CartLine>,
    /// Sum of priced lines, in the currency of the first priced line.
    pub total: Option<Money>,
    /// Lines without a price in force.
    pub unpriced_lines: usize,
}

/// A fresh random line id.
pub fn new_line_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The edit that adds a line; returns it with the new line id.
pub fn add_line_edit(
    customer: &CustomerId,
    sku: &Sku,
    quantity: i64,
    now_ms: u64,
) -> Result<(String, DocEdit), RetailError> {
    check_quantity(quantity)?;
    let line = new_line_id();
    let edits = vec![
        Edit::Put {
            path: vec![format!("{line}/sku")],
            value: Value::Str(sku.to_string()),
        },
        Edit::Put {
            path: vec![format!("{line}/quantity")],
            value: Value::Counter(quantity),
        },
        Edit::Put {
            path: vec![format!("{line}/added_ms")],
            value: Value::Int(now_ms as i64),
        },
    ];
    Ok((
        line.clone(),
        DocEdit {
            doc: layout::cart_doc(customer),
            edits,
        },
    ))
}

/// The edit that changes a line's quantity by `delta` (merges with concurrent changes).
pub fn change_quantity_edit(
    customer: &CustomerId,
    line_id: &str,
    delta: i64,
) -> Result<DocEdit, RetailError> {
    check_name("cart line id", line_id)?;
    if delta.unsigned_abs() > LINE_QUANTITY_MAX as u64 {
        return Err(RetailError::Invalid(format!(
            "a quantity change of {delta} is larger than {LINE_QUANTITY_MAX}"
        )));
    }
    Ok(DocEdit {
        doc: layout::cart_doc(customer),
        edits: vec![Edit::Increment {
            path: vec![format!("{line_id}/quantity")],
            by: delta,
        }],
    })
}

/// The edit that removes a line (wins over concurrent quantity changes).
pub fn remove_line_edit(
    store: &mut Replica,
    customer: &CustomerId,
    line_id: &str,
) -> Result<DocEdit, RetailError> {
    check_name("cart line id", line_id)?;
    let doc = layout::cart_doc(customer);
    let exists = store.with_doc(&doc, |loaded| {
        loaded
            .get(ROOT, format!("{line_id}/sku").as_str())
            .ok()
            .flatten()
            .is_some()
    })?;
    if !exists {
        return Err(RetailError::NotFound(format!("cart line {line_id}")));
    }
    Ok(DocEdit {
        doc,
        edits: vec![Edit::Put {
            path: vec![format!("{line_id}/removed")],
            value: Value::Bool(true),
        }],
    })
}

fn check_quantity(quantity: i64) -> Result<(), RetailError> {
    if !(1..=LINE_QUANTITY_MAX).contains(&quantity) {
        return Err(RetailError::Invalid(format!(
            "quantity {quantity} is outside 1..={LINE_QUANTITY_MAX}"
        )));
    }
    Ok(())
}

/// The edit that adds `sku` to a wishlist with a fresh tag.
pub fn wishlist_add_edit(customer: &CustomerId, sku: &Sku) -> DocEdit {
    let tag = new_line_id();
    DocEdit {
        doc: layout::wishlist_doc(customer),
        edits: vec![Edit::Put {
            path: vec![format!("{sku}/{tag}")],
            value: Value::Bool(true),
        }],
    }
}

/// The edit that removes every tag of `sku` the store has seen.
pub fn wishlist_remove_edit(
    store: &mut Replica,
    customer: &CustomerId,
    sku: &Sku,
) -> Result<DocEdit, RetailError> {
    let doc = layout::wishlist_doc(customer);
    let prefix = format!("{sku}/");
    let keys: Vec<String> = store.with_doc(&doc, |loaded| {
        loaded
            .keys(ROOT)
            .filter(|key| key.starts_with(&prefix))
            .collect()
    })?;
    if keys.is_empty() {
        return Err(RetailError::NotFound(format!(
            "{sku} is not on the wishlist"
        )));
    }
    Ok(DocEdit {
        doc,
        edits: keys
            .into_iter()
            .map(|key| Edit::Delete { path: vec![key] })
            .collect(),
    })
}

/// The edit that sets one profile field (last writer wins).
pub fn profile_set_edit(
    store: &mut Replica,
    customer: &CustomerId,
    field: &str,
    value: &str,
    now_ms: u64,
) -> Result<DocEdit, RetailError> {
    check_name("profile field", field)?;
    if value.len() > PROFILE_VALUE_BYTES_MAX {
        return Err(RetailError::Invalid(format!(
            "profile field {field} is longer than {PROFILE_VALUE_BYTES_MAX} bytes"
        )));
    }
    Ok(stamped_put(
        store,
        &layout::profile_doc(customer),
        field.to_owned(),
        value.to_owned(),
        now_ms,
    )?)
}

/// The edit that records a product view, dropping the oldest beyond the bound.
pub fn history_add_edit(
    store: &mut Replica,
    customer: &CustomerId,
    sku: &Sku,
    now_ms: u64,
) -> Result<DocEdit, RetailError> {
    let doc = layout::history_doc(customer);
    let mut keys: Vec<String> = store.with_doc(&doc, |loaded| loaded.keys(ROOT).collect())?;
    let mut edits = vec![Edit::Put {
        path: vec![format!("{now_ms:013}/{sku}")],
        value: Value::Bool(true),
    }];
    keys.sort();
    let excess = (keys.len() + 1).saturating_sub(HISTORY_LEN_MAX);
    edits.extend(
        keys.into_iter()
            .take(excess)
            .map(|key| Edit::Delete { path: vec![key] }),
    );
    Ok(DocEdit { doc, edits })
}

/// The edit that replaces a customer's recommendations (last writer wins).
pub fn recommendations_edit(
    store: &mut Replica,
    customer: &CustomerId,
    skus: &[Sku],
    now_ms: u64,
) -> Result<DocEdit, RetailError> {
    if skus.len() > RECOMMENDATIONS_LEN_MAX {
        return Err(RetailError::Invalid(format!(
            "more than {RECOMMENDATIONS_LEN_MAX} recommendations"
        )));
    }
    let skus: Vec<String> = skus.iter().map(ToString::to_string).collect();
    Ok(stamped_put(
        store,
        &layout::recommendations_doc(customer),
        "skus".to_owned(),
        skus,
        now_ms,
    )?)
}

/// Re-projects the recommendations (one register).
pub(crate) fn project_recommendations(
    tx: &Transaction<'_>,
    doc_id: &DocId,
    doc: &Automerge,
) -> Result<(), DbError> {
    tx.execute(
        "DELETE FROM recommendations WHERE doc_id = ?1",
        [doc_id.as_str()],
    )?;
    if let Some(stamped) = winner(register_values::<Vec<String>>(doc, "skus")) {
        for (position, sku) in stamped
            .value
            .iter()
            .take(RECOMMENDATIONS_LEN_MAX)
            .enumerate()
        {
            tx.execute(
                "INSERT INTO recommendations (doc_id, position, sku) VALUES (?1, ?2, ?3)",
                params![doc_id.as_str(), position as i64, sku],
            )?;
        }
    }
    Ok(())
}

fn root_str(doc: &Automerge, key: &str) -> Option<String> {
    doc.get(ROOT, key)
        .ok()
        .flatten()
        .and_then(|(value, _)| value.as_str().map(str::to_owned))
}

fn root_i64(doc: &Automerge, key: &str) -> Option<i64> {
    doc.get(ROOT, key)
        .ok()
        .flatten()
        .and_then(|(value, _)| value.as_i64())
}

/// Re-projects cart lines whose keys changed.
pub(crate) fn project_cart(
    tx: &Transaction<'_>,
    doc_id: &DocId,
    doc: &Automerge,
    keys: &BTreeSet<String>,
) -> Result<(), DbError> {
    let lines: BTreeSet<&str> = keys
        .iter()
        .filter_map(|key| key.split_once('/').map(|(line, _)| line))
        .collect();
    for line in lines {
        let sku = root_str(doc, &format!("{line}/sku"));
        let quantity = root_i64(doc, &format!("{line}/quantity")).unwrap_or(0);
        let removed = doc
            .get(ROOT, format!("{line}/removed").as_str())
            .ok()
            .flatten()
            .is_some();
        let added_ms = root_i64(doc, &format!("{line}/added_ms")).unwrap_or(0);
        match sku {
            Some(sku) if !removed && quantity > 0 => {
                tx.execute(
                    "INSERT INTO cart_lines (doc_id, line_id, sku, quantity, added_ms) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (doc_id, line_id) DO UPDATE SET sku = ?3, quantity = ?4, added_ms = ?5",
                    params![doc_id.as_str(), line, sku, quantity, added_ms],
                )?;
            }
            _ => {
                tx.execute(
                    "DELETE FROM cart_lines WHERE doc_id = ?1 AND line_id = ?2",
                    params![doc_id.as_str(), line],
                )?;
            }
        }
    }
    Ok(())
}

/// Re-projects wishlist items whose keys changed.
pub(crate) fn project_wishlist(
    tx: &Transaction<'_>,
    doc_id: &DocId,
    doc: &Automerge,
    keys: &BTreeSet<String>,
) -> Result<(), DbError> {
    let skus: BTreeSet<&str> = keys
        .iter()
        .filter_map(|key| key.split_once('/').map(|(sku, _)| sku))
        .collect();
    for sku in skus {
        let prefix = format!("{sku}/");
        let present = doc.keys(ROOT).any(|key| key.starts_with(&prefix));
        if present {
            tx.execute(
                "INSERT OR IGNORE INTO wishlist_items (doc_id, sku) VALUES (?1, ?2)",
                params![doc_id.as_str(), sku],
            )?;
        } else {
            tx.execute(
                "DELETE FROM wishlist_items WHERE doc_id = ?1 AND sku = ?2",
                params![doc_id.as_str(), sku],
            )?;
        }
    }
    Ok(())
}

/// Re-projects profile fields whose keys changed.
pub(crate) fn project_profile(
    tx: &Transaction<'_>,
    doc_id: &DocId,
    doc: &Automerge,
    keys: &BTreeSet<String>,
) -> Result<(), DbError> {
    for field in keys {
        match winner(register_values::<String>(doc, field)) {
            Some(stamped) => {
                tx.execute(
                    "INSERT INTO profile_fields (doc_id, field, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT (doc_id, field) DO UPDATE SET value = ?3",
                    params![doc_id.as_str(), field, stamped.value],
                )?;
            }
            None => {
                tx.execute(
                    "DELETE FROM profile_fields WHERE doc_id = ?1 AND field = ?2",
                    params![doc_id.as_str(), field],
                )?;
            }
        }
    }
    Ok(())
}

/// Re-projects the (small, bounded) history document whole.
pub(crate) fn project_history(
    tx: &Transaction<'_>,
    doc_id: &DocId,
    doc: &Automerge,
) -> Result<(), DbError> {
    tx.execute(
        "DELETE FROM history_entries WHERE doc_id = ?1",
        [doc_id.as_str()],
    )?;
    for key in doc.keys(ROOT) {
        let Some((at, sku)) = key.split_once('/') else {
            continue;
        };
        let Ok(at) = at.parse::<i64>() else { continue };
        tx.execute(
            "INSERT OR IGNORE INTO history_entries (doc_id, at_ms, sku) VALUES (?1, ?2, ?3)",
            params![doc_id.as_str(), at, sku],
        )?;
    }
    Ok(())
}

/// Customer queries.
impl Replica {
    /// A cart with names and totals at the prices in force on `channel` in `store` at `at_ms`.
    pub fn cart(
        &self,
        customer: &CustomerId,
        store: &StoreId,
        channel: Channel,
        at_ms: u64,
    ) -> Result<CartView, DbError> {
        let doc = layout::cart_doc(customer);
        let mut statement = self.db.prepare_cached(
            "SELECT line_id, sku, quantity FROM cart_lines WHERE doc_id = ?1 ORDER BY added_ms, line_id",
        )?;
        let rows: Vec<(String, String, i64)> = statement
            .query_map([doc.as_str()], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })?
            .collect::<Result<_, _>>()?;
        let mut lines = Vec::with_capacity(rows.len());
        let mut total: Option<Money> = None;
        let mut unpriced_lines = 0;
        for (line_id, sku, quantity) in rows {
            let parsed = Sku::new(sku.clone()).ok();
            let name = match &parsed {
                Some(parsed) => self
                    .product(store, parsed)?
                    .and_then(|product| product.name),
                None => None,
            };
            let unit_price = match &parsed {
                Some(parsed) => self
                    .price_in_force(store, parsed, channel, at_ms)?
                    .map(|price| price.money),
                None => None,
            };
            match (&unit_price, &mut total) {
                (Some(price), None) => {
                    total = Some(Money {
                        amount_minor: price.amount_minor * quantity,
                        currency: price.currency,
                    })
                }
                (Some(price), Some(sum)) if sum.currency == price.currency => {
                    sum.amount_minor += price.amount_minor * quantity
                }
                _ => unpriced_lines += 1,
            }
            lines.push(CartLine {
                line_id,
                sku,
                quantity,
                name,
                unit_price,
            });
        }
        Ok(CartView {
            lines,
            total,
            unpriced_lines,
        })
    }

    /// The SKUs on a wishlist, sorted.
    pub fn wishlist(&self, customer: &CustomerId) -> Result<Vec<String>, DbError> {
        let doc = layout::wishlist_doc(customer);
        let mut statement = self
            .db
            .prepare_cached("SELECT sku FROM wishlist_items WHERE doc_id = ?1 ORDER BY sku")?;
        let skus = statement
            .query_map([doc.as_str()], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(skus)
    }

    /// A profile's fields, sorted by name.
    pub fn profile(&self, customer: &CustomerId) -> Result<Vec<(String, String)>, DbError> {
        let doc = layout::profile_doc(customer);
        let mut statement = self.db.prepare_cached(
            "SELECT field, value FROM profile_fields WHERE doc_id = ?1 ORDER BY field",
        )?;
        let fields = statement
            .query_map([doc.as_str()], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<Result<_, _>>()?;
        Ok(fields)
    }

    /// Products recommended to a customer, best first.
    pub fn recommendations(&self, customer: &CustomerId) -> Result<Vec<String>, DbError> {
        let doc = layout::recommendations_doc(customer);
        let mut statement = self.db.prepare_cached(
            "SELECT sku FROM recommendations WHERE doc_id = ?1 ORDER BY position",
        )?;
        let skus = statement
            .query_map([doc.as_str()], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(skus)
    }

    /// Recently viewed SKUs, newest first.
    pub fn history(&self, customer: &CustomerId) -> Result<Vec<String>, DbError> {
        let doc = layout::history_doc(customer);
        let mut statement = self.db.prepare_cached(
            "SELECT sku FROM history_entries WHERE doc_id = ?1 ORDER BY at_ms DESC LIMIT ?2",
        )?;
        let skus = statement
            .query_map(params![doc.as_str(), HISTORY_LEN_MAX as i64], |row| {
                row.get(0)
            })?
            .collect::<Result<_, _>>()?;
        Ok(skus)
    }
}
