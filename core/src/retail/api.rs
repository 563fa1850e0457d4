//! The typed retail API on [`Replica`]: each call validates its input, builds
//! the document edits its merge rule needs and commits them as one op.
//! Sales-grade writes (prices, catalog) commit with
//! [`Durability::Full`]; a shopper's cart, wishlist and history with
//! [`Durability::AppCrash`].

use crate::db::{DbError, Durability, Replica};
use crate::retail::catalog::{self, ProductField, ProductUpdate};
use crate::retail::{RetailError, customer, prices};
use crate::vocab::goods::{Channel, Money, Sku};
use crate::vocab::ids::{CustomerId, OpId, StoreId};

/// How a store's catalog is laid out, as the last import wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogManifest {
    /// Bucket documents per kind.
    pub buckets: u32,
    /// Products in the last import.
    pub products: u64,
    /// When it was imported, ms since the epoch.
    pub imported_ms: u64,
}

fn commit(
    store: &mut Replica,
    edits: &[crate::db::DocEdit],
    now_ms: u64,
    durability: Durability,
) -> Result<OpId, RetailError> {
    Ok(store.commit_with(edits, now_ms, durability)?)
}

impl Replica {
    /// Creates or updates products: one op per group of at most
    /// [`crate::db::OP_DOCS_MAX`] catalog buckets, each atomic.
    pub fn upsert_products(
        &mut self,
        store: &StoreId,
        updates: &[ProductUpdate],
        now_ms: u64,
    ) -> Result<Vec<OpId>, RetailError> {
        let edits = catalog::product_edits(store, updates)?;
        let mut ops = Vec::new();
        for group in edits.chunks(crate::db::OP_DOCS_MAX) {
            ops.push(commit(self, group, now_ms, Durability::Full)?);
        }
        Ok(ops)
    }

    /// Settles a product field conflict with one value.
    pub fn resolve_product_field(
        &mut self,
        store: &StoreId,
        sku: &Sku,
        field: ProductField,
        value: &str,
        now_ms: u64,
    ) -> Result<OpId, RetailError> {
        let edit = catalog::resolve_edit(store, sku, field, value)?;
        commit(self, &[edit], now_ms, Durability::Full)
    }

    /// Sets a price on a channel from `effective_from_ms` on.
    pub fn set_price(
        &mut self,
        store: &StoreId,
        sku: &Sku,
        channel: Channel,
        effective_from_ms: u64,
        money: &Money,
        now_ms: u64,
    ) -> Result<OpId, RetailError> {
        let edit =
            prices::set_price_edit(self, store, sku, channel, effective_from_ms, money, now_ms)?;
        commit(self, &[edit], now_ms, Durability::Full)
    }

    /// Adds a cart line; returns the op and the new line id.
    pub fn add_to_cart(
        &mut self,
        customer: &CustomerId,
        sku: &Sku,
        quantity: i64,
        now_ms: u64,
    ) -> Result<(OpId, String), RetailError> {
        let (line, edit) = customer::add_line_edit(customer, sku, quantity, now_ms)?;
        Ok((commit(self, &[edit], now_ms, Durability::AppCrash)?, line))
    }

    /// Changes a cart line's quantity by `delta`.
    pub fn change_cart_quantity(
        &mut self,
        customer: &CustomerId,
        line_id: &str,
        delta: i64,
        now_ms: u64,
    ) -> Result<OpId, RetailError> {
        let edit = customer::change_quantity_edit(customer, line_id, delta)?;
        commit(self, &[edit], now_ms, Durability::AppCrash).map_err(|error| match error {
            RetailError::Db(DbError::Edit { .. }) => {
                RetailError::NotFound(format!("cart line {line_id}"))
            }
            other => other,
        })
    }

    /// Removes a cart line.
    pub fn remove_cart_line(
        &mut self,
        customer: &CustomerId,
        line_id: &str,
        now_ms: u64,
    ) -> Result<OpId, RetailError> {
        let edit = customer::remove_line_edit(self, customer, line_id)?;
        commit(self, &[edit], now_ms, Durability::AppCrash)
    }

    /// Adds a product to a wishlist.
    pub fn wishlist_add(
        &mut self,
        customer: &CustomerId,
        sku: &Sku,
        now_ms: u64,
    ) -> Result<OpId, RetailError> {
        commit(
            self,
            &[customer::wishlist_add_edit(customer, sku)],
            now_ms,
            Durability::AppCrash,
        )
    }

    /// Removes a product from a wishlist (a concurrent add survives).
    pub fn wishlist_remove(
        &mut self,
        customer: &CustomerId,
        sku: &Sku,
        now_ms: u64,
    ) -> Result<OpId, RetailError> {
        let edit = customer::wishlist_remove_edit(self, customer, sku)?;
        commit(self, &[edit], now_ms, Durability::AppCrash)
    }

    /// Sets a profile field.
    pub fn set_profile_field(
        &mut self,
        customer: &CustomerId,
        field: &str,
        value: &str,
        now_ms: u64,
    ) -> Result<OpId, RetailError> {
        let edit = customer::profile_set_edit(self, customer, field, value, now_ms)?;
        commit(self, &[edit], now_ms, Durability::Full)
    }

    /// Records that the shopper looked at a product.
    pub fn record_view(
        &mut self,
        customer: &CustomerId,
        sku: &Sku,
        now_ms: u64,
    ) -> Result<OpId, RetailError> {
        let edit = customer::history_add_edit(self, customer, sku, now_ms)?;
        commit(self, &[edit], now_ms, Durability::AppCrash)
    }

    /// Replaces a customer's recommendations (back office).
    pub fn set_recommendations(
        &mut self,
        customer: &CustomerId,
        skus: &[Sku],
        now_ms: u64,
    ) -> Result<OpId, RetailError> {
        let edit = customer::recommendations_edit(self, customer, skus, now_ms)?;
        commit(self, &[edit], now_ms, Durability::AppCrash)
    }

    /// The catalog manifest of a store, once an import has written one.
    pub fn catalog_manifest(
        &mut self,
        store: &StoreId,
    ) -> Result<Option<CatalogManifest>, RetailError> {
        let doc = crate::vocab::layout::manifest_doc(store);
        let read = |store: &mut Replica, key: &str| -> Result<Option<i64>, RetailError> {
            Ok(store.get(&doc, &[key])?.and_then(|value| value.as_i64()))
        };
        let (Some(buckets), Some(products)) = (read(self, "buckets")?, read(self, "products")?)
        else {
            return Ok(None);
        };
        let imported_ms = read(self, "imported_ms")?.unwrap_or(0);
        Ok(Some(CatalogManifest {
            buckets: buckets as u32,
            products: products as u64,
            imported_ms: imported_ms as u64,
        }))
    }
}
