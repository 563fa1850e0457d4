//! Product metadata: a multi-value register per field.
//!
//! Each field of a product is its own key (`sku/field`) in the product's
//! catalog bucket. Concurrent edits of one field keep every value (automerge
//! keeps conflicting values of a key); the query tables show the value every
//! replica picks alike and list all values as a conflict until someone
//! resolves it by writing the field again, which supersedes every value the
//! writer has seen.

use std::collections::BTreeSet;

use automerge::{Automerge, ROOT, ReadDoc};
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};

use crate::db::{DbError, DocEdit, Replica};
use crate::retail::RetailError;
use crate::vocab::edit::{Edit, Value};
use crate::vocab::goods::Sku;
use crate::vocab::ids::{DocId, DocSetId, StoreId};
use crate::vocab::layout;

/// Longest accepted product field value.
pub const FIELD_BYTES_MAX: usize = 2048;
/// Most results of one product query.
pub const QUERY_LIMIT_MAX: usize = 1000;

/// A product field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "ffi", derive(uniffi::Enum))]
pub enum ProductField {
    /// Display name.
    Name,
    /// Category path, e.g. `coffee/beans`.
    Category,
    /// EAN/UPC barcode.
    Barcode,
    /// Brand.
    Brand,
    /// Long description.
    Description,
    /// `active` or `archived`.
    Status,
}

impl ProductField {
    /// Every field.
    pub const ALL: [ProductField; 6] = [
        ProductField::Name,
        ProductField::Category,
        ProductField::Barcode,
        ProductField::Brand,
        ProductField::Description,
        ProductField::Status,
    ];

    /// The key suffix and column name.
    pub fn as_str(&self) -> &'static str {
        match self {
            ProductField::Name => "name",
            ProductField::Category => "category",
            ProductField::Barcode => "barcode",
            ProductField::Brand => "brand",
            ProductField::Description => "description",
            ProductField::Status => "status",
        }
    }

    /// Parses the text form.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|field| field.as_str() == text)
    }
}

/// Fields to set on one product.
#[derive(Clone, Debug, PartialEq)]
pub struct ProductUpdate {
    /// The product.
    pub sku: Sku,
    /// New values.
    pub fields: Vec<(ProductField, String)>,
}

/// A field holding concurrent values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ffi", derive(uniffi::Record))]
pub struct FieldConflict {
    /// The field.
    pub field: ProductField,
    /// Every concurrent value, sorted.
    pub values: Vec<String>,
}

/// A product as the query tables show it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ffi", derive(uniffi::Record))]
pub struct Product {
    /// The SKU.
    pub sku: String,
    /// Display name.
    pub name: Option<String>,
    /// Category.
    pub category: Option<String>,
    /// Barcode.
    pub barcode: Option<String>,
    /// Brand.
    pub brand: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// `active`, `archived`, or unset.
    pub status: Option<String>,
    /// Fields with concurrent values, for a conflict screen.
    pub conflicts: Vec<FieldConflict>,
}

/// The document key of one product field.
pub fn field_key(sku: &Sku, field: ProductField) -> String {
    format!("{sku}/{}", field.as_str())
}

/// The edits that set product fields, grouped by catalog bucket.
pub fn product_edits(
    store: &StoreId,
    updates: &[ProductUpdate],
) -> Result<Vec<DocEdit>, RetailError> {
    let mut by_doc: std::collections::BTreeMap<DocId, Vec<Edit>> = Default::default();
    for update in updates {
        for (field, value) in &update.fields {
            if value.len() > FIELD_BYTES_MAX {
                return Err(RetailError::Invalid(format!(
                    "{} of {} is longer than {FIELD_BYTES_MAX} bytes",
                    field.as_str(),
                    update.sku
                )));
            }
            by_doc
                .entry(layout::catalog_doc(store, &update.sku))
                .or_default()
                .push(Edit::Put {
                    path: vec![field_key(&update.sku, *field)],
                    value: Value::Str(value.clone()),
                });
        }
    }
    Ok(by_doc
        .into_iter()
        .map(|(doc, edits)| DocEdit { doc, edits })
        .collect())
}

/// The edit that resolves a conflict: one value supersedes all it has seen.
pub fn resolve_edit(
    store: &StoreId,
    sku: &Sku,
    field: ProductField,
    value: &str,
) -> Result<DocEdit, RetailError> {
    let mut edits = product_edits(
        store,
        &[ProductUpdate {
            sku: sku.clone(),
            fields: vec![(field, value.to_owned())],
        }],
    )?;
    Ok(edits.remove(0))
}

/// Re-projects the products whose keys changed in a catalog document.
/// `fresh` means the document was empty before (a first sync): no rows of
/// it can exist yet, so the lookups of old rows are skipped.
pub(crate) fn project(
    tx: &Transaction<'_>,
    doc_id: &DocId,
    doc: &Automerge,
    keys: &BTreeSet<String>,
    fresh: bool,
) -> Result<(), DbError> {
    let set = doc_id.set();
    let skus: BTreeSet<&str> = keys
        .iter()
        .filter_map(|key| key.split_once('/').map(|(sku, _)| sku))
        .collect();
    let mut indexed: Vec<i64> = Vec::with_capacity(skus.len());
    for sku in skus {
        let mut row: [Option<String>; 6] = Default::default();
        if !fresh {
            tx.prepare_cached("DELETE FROM product_conflicts WHERE set_id = ?1 AND sku = ?2")?
                .execute(params![set.as_str(), sku])?;
        }
        for (index, field) in ProductField::ALL.iter().enumerate() {
            let key = format!("{sku}/{}", field.as_str());
            let mut values: Vec<String> = doc
                .get_all(ROOT, key.as_str())
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(value, _)| value.as_str().map(str::to_owned))
                .collect();
            row[index] = doc
                .get(ROOT, key.as_str())
                .ok()
                .flatten()
                .and_then(|(value, _)| value.as_str().map(str::to_owned));
            if values.len() > 1 {
                values.sort();
                values.dedup();
                let mut insert = tx.prepare_cached(
                    "INSERT INTO product_conflicts (set_id, sku, field, value) VALUES (?1, ?2, ?3, ?4)",
                )?;
                for value in values {
                    insert.execute(params![set.as_str(), sku, field.as_str(), value])?;
                }
            }
        }
        // The search index shares the product row's rowid: deleting by rowid
        // is a lookup, deleting by column would scan the whole index.
        let old_rowid: Option<i64> = if fresh {
            None
        } else {
            tx.prepare_cached("SELECT rowid FROM products WHERE set_id = ?1 AND sku = ?2")?
                .query_row(params![set.as_str(), sku], |row| row.get(0))
                .optional()?
        };
        if let Some(rowid) = old_rowid {
            tx.execute("DELETE FROM products_fts WHERE rowid = ?1", [rowid])?;
        }
        if row.iter().all(Option::is_none) {
            tx.execute(
                "DELETE FROM products WHERE set_id = ?1 AND sku = ?2",
                params![set.as_str(), sku],
            )?;
            continue;
        }
        let [name, category, barcode, brand, description, status] = row;
        let rowid: i64 = tx
            .prepare_cached(
                "INSERT INTO products (set_id, sku, name, category, barcode, brand, description, status)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (set_id, sku) DO UPDATE SET name = ?3, category = ?4, barcode = ?5, brand = ?6, description = ?7, status = ?8
                 RETURNING rowid",
            )?
            .query_row(params![set.as_str(), sku, name, category, barcode, brand, description, status], |row| row.get(0))?;
        indexed.push(rowid);
    }
    // One statement for the whole document: FTS5 flushes its pending terms
    // at every statement that writes it, so row-by-row inserts would write
    // thousands of tiny segments during a first sync.
    if !indexed.is_empty() {
        let rowids =
            serde_json::to_string(&indexed).map_err(|error| DbError::Encode(error.to_string()))?;
        tx.prepare_cached(
            "INSERT INTO products_fts (rowid, set_id, sku, name, brand, category)
             SELECT rowid, set_id, sku, COALESCE(name, ''), COALESCE(brand, ''), COALESCE(category, '')
             FROM products WHERE rowid IN (SELECT value FROM json_each(?1))",
        )?
        .execute([rowids])?;
    }
    Ok(())
}

const PRODUCT_COLUMNS: &str = "sku, name, category, barcode, brand, description, status";

fn read_product(
    db: &Connection,
    set: &DocSetId,
    row: &rusqlite::Row<'_>,
) -> rusqlite::Result<Product> {
    let sku: String = row.get(0)?;
    let mut conflicts: Vec<FieldConflict> = Vec::new();
    let mut statement = db.prepare_cached(
        "SELECT field, value FROM product_conflicts WHERE set_id = ?1 AND sku = ?2 ORDER BY field, value",
    )?;
    let mut rows = statement.query(params![set.as_str(), sku])?;
    while let Some(conflict) = rows.next()? {
        let field: String = conflict.get(0)?;
        let value: String = conflict.get(1)?;
        let Some(field) = ProductField::parse(&field) else {
            continue;
        };
        match conflicts.last_mut() {
            Some(last) if last.field == field => last.values.push(value),
            _ => conflicts.push(FieldConflict {
                field,
                values: vec![value],
            }),
        }
    }
    Ok(Product {
        sku,
        name: row.get(1)?,
        category: row.get(2)?,
        barcode: row.get(3)?,
        brand: row.get(4)?,
        description: row.get(5)?,
        status: row.get(6)?,
        conflicts,
    })
}

fn query_products(
    db: &Connection,
    set: &DocSetId,
    sql: &str,
    args: impl rusqlite::Params,
) -> Result<Vec<Product>, DbError> {
    let mut statement = db.prepare_cached(sql)?;
    let mut rows = statement.query(args)?;
    let mut products = Vec::new();
    while let Some(row) = rows.next()? {
        products.push(read_product(db, set, row)?);
    }
    Ok(products)
}

/// Product queries over the local query tables.
impl Replica {
    /// One product of a store.
    pub fn product(&self, store: &StoreId, sku: &Sku) -> Result<Option<Product>, DbError> {
        let set = DocSetId::store(store);
        let sql = format!("SELECT {PRODUCT_COLUMNS} FROM products WHERE set_id = ?1 AND sku = ?2");
        let mut statement = self.db.prepare_cached(&sql)?;
        let product = statement
            .query_row(params![set.as_str(), sku.as_str()], |row| {
                read_product(&self.db, &set, row)
            })
            .optional()?;
        Ok(product)
    }

    /// Products with this barcode.
    pub fn products_by_barcode(
        &self,
        store: &StoreId,
        barcode: &str,
    ) -> Result<Vec<Product>, DbError> {
        let set = DocSetId::store(store);
        let sql = format!(
            "SELECT {PRODUCT_COLUMNS} FROM products WHERE barcode = ?2 AND set_id = ?1 ORDER BY sku LIMIT {QUERY_LIMIT_MAX}"
        );
        query_products(&self.db, &set, &sql, params![set.as_str(), barcode])
    }

    /// Products of a category (exact), by SKU.
    pub fn products_in_category(
        &self,
        store: &StoreId,
        category: &str,
        limit: usize,
    ) -> Result<Vec<Product>, DbError> {
        let set = DocSetId::store(store);
        let sql = format!(
            "SELECT {PRODUCT_COLUMNS} FROM products WHERE set_id = ?1 AND category = ?2 ORDER BY sku LIMIT ?3"
        );
        query_products(
            &self.db,
            &set,
            &sql,
            params![set.as_str(), category, limit.min(QUERY_LIMIT_MAX) as i64],
        )
    }

    /// Full-text search over name, brand and category (prefix match on each word).
    pub fn search_products(
        &self,
        store: &StoreId,
        text: &str,
        limit: usize,
    ) -> Result<Vec<Product>, DbError> {
        let set = DocSetId::store(store);
        // Quote every word: user text never reaches FTS5's query syntax. The
        // last word is a prefix (the cashier may still be typing it).
        let words: Vec<String> = text
            .split_whitespace()
            .take(8)
            .map(|word| word.replace('"', ""))
            .filter(|word| !word.is_empty())
            .collect();
        let query: Vec<String> = words
            .iter()
            .enumerate()
            .map(|(index, word)| {
                if index + 1 == words.len() {
                    format!("\"{word}\"*")
                } else {
                    format!("\"{word}\"")
                }
            })
            .collect();
        if query.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {} FROM products_fts f JOIN products p ON p.rowid = f.rowid
             WHERE products_fts MATCH ?2 AND p.set_id = ?1 ORDER BY p.name, p.sku LIMIT ?3",
            PRODUCT_COLUMNS
                .split(", ")
                .map(|column| format!("p.{column}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        query_products(
            &self.db,
            &set,
            &sql,
            params![
                set.as_str(),
                query.join(" "),
                limit.min(QUERY_LIMIT_MAX) as i64
            ],
        )
    }

    /// Number of products of a store in the query tables.
    pub fn product_count(&self, store: &StoreId) -> Result<u64, DbError> {
        let set = DocSetId::store(store);
        let count: i64 = self.db.query_row(
            "SELECT COUNT(*) FROM products WHERE set_id = ?1",
            [set.as_str()],
            |row| row.get(0),
        )?;
        Ok(count as u64)
    }
}
