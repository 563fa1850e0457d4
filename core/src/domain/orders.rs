//! Orders: created by a till or an app in the device's own orders document,
//! immutable in content once written, with a versioned status.
//!
//! A status change names the version it is based on (optimistic concurrency):
//! it is refused locally if the order has moved on, and two devices changing
//! the same version concurrently leave both values in the document — the
//! order shows as conflicted (with the greatest `(version, status)` shown)
//! until the authority settles it.

use std::collections::BTreeSet;

use automerge::{Automerge, ROOT, ReadDoc};
use rusqlite::{OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};

use crate::domain::{DomainError, Money, Sku, layout};
use crate::edit::{Edit, Value};
use crate::ids::{DocId, DocSetId, StoreId, check_name};
use crate::store::{DocEdit, Store, StoreError};

/// Most lines in one order.
pub const ORDER_LINES_MAX: usize = 500;

/// One line of an order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    /// The product.
    pub sku: Sku,
    /// How many.
    pub quantity: i64,
    /// Unit price charged.
    pub unit_price_minor: i64,
}

/// A versioned order status.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OrderStatus {
    /// Starts at 1 and grows by one per change.
    pub version: u64,
    /// `completed`, `paid`, `fulfilled`, `returned`, ...
    pub status: String,
}

/// An order as the query tables show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderSummary {
    /// The order id.
    pub order_id: String,
    /// Current status.
    pub status: String,
    /// Current version.
    pub version: u64,
    /// Order total.
    pub total: Money,
    /// When it was created, ms since the epoch.
    pub created_ms: u64,
    /// True when concurrent status changes wait to be settled.
    pub conflicted: bool,
}

/// The edit that creates an order in the device's orders document.
pub fn create_order_edit(
    store: &Store,
    order_id: &str,
    lines: &[OrderLine],
    currency: crate::domain::Currency,
    now_ms: u64,
) -> Result<DocEdit, DomainError> {
    check_name("order id", order_id)?;
    if lines.is_empty() || lines.len() > ORDER_LINES_MAX {
        return Err(DomainError::Invalid(format!(
            "an order has 1 to {ORDER_LINES_MAX} lines"
        )));
    }
    let mut total: i64 = 0;
    for line in lines {
        if line.quantity <= 0 || line.unit_price_minor < 0 {
            return Err(DomainError::Invalid(format!(
                "line for {} has a bad quantity or price",
                line.sku
            )));
        }
        total = line
            .quantity
            .checked_mul(line.unit_price_minor)
            .and_then(|line_total| total.checked_add(line_total))
            .ok_or_else(|| DomainError::Invalid("order total overflows".into()))?;
    }
    let doc = layout::orders_doc(store.store_id(), store.device());
    let encoded_lines =
        postcard::to_stdvec(lines).map_err(|error| DomainError::Invalid(error.to_string()))?;
    let status = OrderStatus {
        version: 1,
        status: "completed".into(),
    };
    let edits = vec![
        Edit::Put {
            path: vec![format!("{order_id}/lines")],
            value: Value::Bytes(encoded_lines),
        },
        Edit::Put {
            path: vec![format!("{order_id}/total_minor")],
            value: Value::Int(total),
        },
        Edit::Put {
            path: vec![format!("{order_id}/currency")],
            value: Value::Str(currency.as_str().to_owned()),
        },
        Edit::Put {
            path: vec![format!("{order_id}/created_ms")],
            value: Value::Int(now_ms as i64),
        },
        Edit::Put {
            path: vec![format!("{order_id}/status")],
            value: Value::Bytes(encode_status(&status)),
        },
    ];
    Ok(DocEdit { doc, edits })
}

fn encode_status(status: &OrderStatus) -> Vec<u8> {
    // Plain data into a Vec: postcard cannot fail here.
    postcard::to_stdvec(status).expect("postcard encoding of an order status")
}

fn statuses(doc: &Automerge, order_id: &str) -> Vec<OrderStatus> {
    let mut values: Vec<OrderStatus> = doc
        .get_all(ROOT, format!("{order_id}/status").as_str())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(value, _)| {
            value
                .as_bytes()
                .and_then(|bytes| postcard::from_bytes(bytes).ok())
        })
        .collect();
    values.sort();
    values
}

/// The edit that moves an order to `status`, based on `expected_version`.
pub fn update_status_edit(
    store: &mut Store,
    orders_doc: &DocId,
    order_id: &str,
    expected_version: u64,
    status: &str,
) -> Result<DocEdit, DomainError> {
    check_name("order id", order_id)?;
    check_name("order status", status)?;
    let current = store.with_doc(orders_doc, |doc| statuses(doc, order_id))?;
    let Some(latest) = current.last() else {
        return Err(DomainError::NotFound(format!("order {order_id}")));
    };
    if current.len() > 1 || latest.version != expected_version {
        return Err(DomainError::VersionConflict {
            expected: expected_version,
            found: latest.version,
        });
    }
    let next = OrderStatus {
        version: expected_version + 1,
        status: status.to_owned(),
    };
    Ok(DocEdit {
        doc: orders_doc.clone(),
        edits: vec![Edit::Put {
            path: vec![format!("{order_id}/status")],
            value: Value::Bytes(encode_status(&next)),
        }],
    })
}

/// Re-projects orders whose keys changed.
pub(crate) fn project(
    tx: &Transaction<'_>,
    doc_id: &DocId,
    doc: &Automerge,
    keys: &BTreeSet<String>,
) -> Result<(), StoreError> {
    let set = doc_id.set();
    let orders: BTreeSet<&str> = keys
        .iter()
        .filter_map(|key| key.split_once('/').map(|(order, _)| order))
        .collect();
    for order_id in orders {
        let all = statuses(doc, order_id);
        let total = doc
            .get(ROOT, format!("{order_id}/total_minor").as_str())
            .ok()
            .flatten()
            .and_then(|(v, _)| v.as_i64());
        let currency = doc
            .get(ROOT, format!("{order_id}/currency").as_str())
            .ok()
            .flatten()
            .and_then(|(v, _)| v.as_str().map(str::to_owned));
        let created = doc
            .get(ROOT, format!("{order_id}/created_ms").as_str())
            .ok()
            .flatten()
            .and_then(|(v, _)| v.as_i64());
        let (Some(status), Some(total), Some(currency)) = (all.last(), total, currency) else {
            tx.execute(
                "DELETE FROM orders WHERE set_id = ?1 AND order_id = ?2",
                params![set.as_str(), order_id],
            )?;
            continue;
        };
        tx.execute(
            "INSERT INTO orders (set_id, order_id, doc_id, status, version, total_minor, currency, created_ms, conflicted)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (set_id, order_id) DO UPDATE SET status = ?4, version = ?5, total_minor = ?6, currency = ?7, created_ms = ?8, conflicted = ?9",
            params![
                set.as_str(),
                order_id,
                doc_id.as_str(),
                status.status,
                status.version as i64,
                total,
                currency,
                created.unwrap_or(0),
                i64::from(all.len() > 1)
            ],
        )?;
    }
    Ok(())
}

/// Order queries.
impl Store {
    /// Orders of a store with a status, newest first.
    pub fn orders_by_status(
        &self,
        store: &StoreId,
        status: &str,
        limit: usize,
    ) -> Result<Vec<OrderSummary>, StoreError> {
        let set = DocSetId::store(store);
        let mut statement = self.db.prepare_cached(
            "SELECT order_id, status, version, total_minor, currency, created_ms, conflicted FROM orders
             WHERE set_id = ?1 AND status = ?2 ORDER BY created_ms DESC, order_id LIMIT ?3",
        )?;
        let rows = statement
            .query_map(
                params![set.as_str(), status, limit.min(10_000) as i64],
                read_summary,
            )?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows.into_iter().flatten().collect())
    }

    /// One order of a store.
    pub fn order(
        &self,
        store: &StoreId,
        order_id: &str,
    ) -> Result<Option<OrderSummary>, StoreError> {
        let set = DocSetId::store(store);
        let row = self
            .db
            .prepare_cached(
                "SELECT order_id, status, version, total_minor, currency, created_ms, conflicted FROM orders
                 WHERE set_id = ?1 AND order_id = ?2",
            )?
            .query_row(params![set.as_str(), order_id], read_summary)
            .optional()?;
        Ok(row.flatten())
    }
}

fn read_summary(row: &rusqlite::Row<'_>) -> rusqlite::Result<Option<OrderSummary>> {
    let currency: String = row.get(4)?;
    let Ok(currency) = crate::domain::Currency::new(&currency) else {
        return Ok(None);
    };
    Ok(Some(OrderSummary {
        order_id: row.get(0)?,
        status: row.get(1)?,
        version: row.get::<_, i64>(2)? as u64,
        total: Money {
            amount_minor: row.get(3)?,
            currency,
        },
        created_ms: row.get::<_, i64>(5)? as u64,
        conflicted: row.get::<_, i64>(6)? != 0,
    }))
}
