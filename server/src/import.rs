//! Catalog import on the hub: products, prices and stock levels from a CSV or
//! JSON Lines file (or any row source), written as the hub's own changes to
//! the store's bucketed documents, then snapshotted so that a new terminal
//! downloads one saved document per bucket instead of the history.
//!
//! Each row is checked on its own: a bad row is reported with its line number
//! and reason and the rest of the file is imported.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;

use automerge::transaction::Transactable as _;
use automerge::{Automerge, ROOT};
use omnisync_core::retail::catalog::{ProductField, field_key};
use omnisync_core::retail::prices::{PriceValue, price_key};
use omnisync_core::vocab::goods::{Channel, Currency, Sku};
use omnisync_core::vocab::hlc::{Hlc, Stamped};
use omnisync_core::vocab::ids::{DocId, DocSetId, StoreId};
use omnisync_core::vocab::intent::{Intent, StockCommand};
use omnisync_core::vocab::layout;
use omnisync_hub_engine::log::HubLogError;
use serde::Deserialize;

/// Rows kept in memory per import (a chain's catalog fits; larger files are
/// split by the caller).
pub const IMPORT_ROWS_MAX: usize = 2_000_000;
/// Rejected rows listed one by one in the report; the rest are counted.
pub const REJECTED_LISTED_MAX: usize = 100;

/// One catalog row as it appears in a file.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogRow {
    /// SKU (required).
    pub sku: String,
    /// Display name (required).
    pub name: String,
    /// Category.
    #[serde(default)]
    pub category: Option<String>,
    /// Barcode.
    #[serde(default)]
    pub barcode: Option<String>,
    /// Brand.
    #[serde(default)]
    pub brand: Option<String>,
    /// Description.
    #[serde(default)]
    pub description: Option<String>,
    /// Till price in minor units.
    #[serde(default)]
    pub price_minor: Option<i64>,
    /// ISO currency of the price (defaults to the import's currency).
    #[serde(default)]
    pub currency: Option<String>,
    /// On-hand stock.
    #[serde(default)]
    pub stock: Option<i64>,
}

/// A row that was not imported.
#[derive(Clone, Debug, PartialEq)]
pub struct RejectedRow {
    /// 1-based line number in the file (the header is line 1 in CSV).
    pub line: u64,
    /// Why.
    pub reason: String,
}

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImportReport {
    /// Rows imported.
    pub products: u64,
    /// Rows refused (at most [`REJECTED_LISTED_MAX`] listed).
    pub rejected: Vec<RejectedRow>,
    /// Rows refused in total.
    pub rejected_count: u64,
    /// Documents written.
    pub documents: usize,
    /// Stock counts given to the ledger (as stock-takes).
    pub stock_counts: u64,
    /// The log's head after the import.
    pub head_seq: u64,
}

/// Stock-takes decided per ledger transaction during an import.
pub const STOCK_TAKES_PER_COMMIT: usize = 5_000;

/// Why an import failed as a whole (nothing was written).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file's extension names no known format.
    #[error("unknown format for {0}: name the file .csv, .jsonl or .ndjson")]
    UnknownFormat(String),
    /// Too many rows for one import.
    #[error("more than {IMPORT_ROWS_MAX} rows; split the file")]
    TooManyRows,
    /// The hub storage failed.
    #[error(transparent)]
    Storage(#[from] HubLogError),
    /// A bad argument.
    #[error("{0}")]
    Invalid(String),
}

/// File formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Comma-separated with a header row naming the columns.
    Csv,
    /// One JSON object per line.
    JsonLines,
}

impl Format {
    /// The format implied by a file name.
    pub fn from_path(path: &Path) -> Option<Format> {
        match path.extension().and_then(|ext| ext.to_str()) {
            Some("csv") => Some(Format::Csv),
            Some("jsonl" | "ndjson") => Some(Format::JsonLines),
            _ => None,
        }
    }
}

/// A row read from a file: its line number, and the row or why it is bad.
pub type ReadRow = (u64, Result<CatalogRow, String>);

/// Reads rows from a file: each with its line number, or the reason it is bad.
pub fn read_rows(path: &Path, format: Format) -> Result<Vec<ReadRow>, ImportError> {
    let read_error = |source| ImportError::Read {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut rows = Vec::new();
    match format {
        Format::Csv => {
            let mut reader = csv::ReaderBuilder::new()
                .trim(csv::Trim::All)
                .from_reader(file);
            for (index, record) in reader.deserialize::<CatalogRow>().enumerate() {
                if rows.len() >= IMPORT_ROWS_MAX {
                    return Err(ImportError::TooManyRows);
                }
                rows.push((index as u64 + 2, record.map_err(|error| error.to_string())));
            }
        }
        Format::JsonLines => {
            for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
                let line = line.map_err(read_error)?;
                if line.trim().is_empty() {
                    continue;
                }
                if rows.len() >= IMPORT_ROWS_MAX {
                    return Err(ImportError::TooManyRows);
                }
                rows.push((
                    index as u64 + 1,
                    serde_json::from_str::<CatalogRow>(&line).map_err(|error| error.to_string()),
                ));
            }
        }
    }
    Ok(rows)
}

struct CheckedRow {
    sku: Sku,
    fields: Vec<(ProductField, String)>,
    price: Option<(i64, Currency)>,
    stock: Option<i64>,
}

fn check_row(row: CatalogRow, default_currency: Currency) -> Result<CheckedRow, String> {
    let sku = Sku::new(row.sku).map_err(|error| error.to_string())?;
    if row.name.trim().is_empty() {
        return Err("name is empty".into());
    }
    let mut fields = vec![(ProductField::Name, row.name)];
    for (field, value) in [
        (ProductField::Category, row.category),
        (ProductField::Barcode, row.barcode),
        (ProductField::Brand, row.brand),
        (ProductField::Description, row.description),
    ] {
        if let Some(value) = value.filter(|value| !value.is_empty()) {
            fields.push((field, value));
        }
    }
    fields.push((ProductField::Status, "active".into()));
    if let Some((field, _)) = fields
        .iter()
        .find(|(_, value)| value.len() > omnisync_core::retail::catalog::FIELD_BYTES_MAX)
    {
        return Err(format!("{} is too long", field.as_str()));
    }
    let currency = match row.currency.as_deref() {
        Some(code) => Currency::new(code).map_err(|error| error.to_string())?,
        None => default_currency,
    };
    let price = match row.price_minor {
        Some(amount) if amount < 0 => return Err(format!("price_minor {amount} is negative")),
        Some(amount) => Some((amount, currency)),
        None => None,
    };
    if let Some(stock) = row.stock
        && stock < 0
    {
        return Err(format!("stock {stock} is negative"));
    }
    Ok(CheckedRow {
        sku,
        fields,
        price,
        stock: row.stock,
    })
}

/// Imports rows into the store's documents in the hub at `data_dir` (which
/// must not be served by a running hub: the storage lock refuses it).
/// `progress` is called with the number of rows handled so far.
pub fn import_rows(
    data_dir: &Path,
    store: &StoreId,
    rows: Vec<ReadRow>,
    default_currency: Currency,
    progress: impl FnMut(u64),
) -> Result<ImportReport, ImportError> {
    let mut log = crate::storage::open(data_dir)?;
    import_rows_into(&mut log, store, rows, default_currency, progress)
}

/// Imports rows into the store's documents through an open writer of any
/// backend (a SQLite directory, or a PostgreSQL database that running hubs
/// may share: their write transactions take turns).
pub fn import_rows_into<B: omnisync_hub_engine::log::Backend>(
    log: &mut omnisync_hub_engine::log::HubStore<B>,
    store: &StoreId,
    rows: Vec<ReadRow>,
    default_currency: Currency,
    mut progress: impl FnMut(u64),
) -> Result<ImportReport, ImportError> {
    let actor = log.hub_replica().actor(0);
    let writer = log.hub_replica().0;
    let now_ms = omnisync_core::now_ms();
    let mut report = ImportReport::default();
    let mut by_doc: BTreeMap<DocId, Vec<(String, automerge::ScalarValue)>> = BTreeMap::new();
    let mut stock_takes = Vec::new();
    let mut counter = 0u32;
    for (handled, (line, row)) in rows.into_iter().enumerate() {
        if handled % 1000 == 0 {
            progress(handled as u64);
        }
        let checked = match row.and_then(|row| check_row(row, default_currency)) {
            Ok(checked) => checked,
            Err(reason) => {
                report.rejected_count += 1;
                if report.rejected.len() < REJECTED_LISTED_MAX {
                    report.rejected.push(RejectedRow { line, reason });
                }
                continue;
            }
        };
        let catalog = by_doc
            .entry(layout::catalog_doc(store, &checked.sku))
            .or_default();
        for (field, value) in checked.fields {
            catalog.push((
                field_key(&checked.sku, field),
                automerge::ScalarValue::Str(value.into()),
            ));
        }
        // One clock reading per register write, all stamped by the hub.
        counter = counter.wrapping_add(1);
        let hlc = Hlc {
            wall_ms: now_ms,
            counter,
        };
        if let Some((amount_minor, currency)) = checked.price {
            let value = PriceValue {
                amount_minor,
                currency: currency.as_str().to_owned(),
            };
            let stamped = Stamped { hlc, writer, value };
            by_doc
                .entry(layout::prices_doc(store, &checked.sku))
                .or_default()
                .push((
                    price_key(&checked.sku, Channel::Pos, 0),
                    automerge::ScalarValue::Bytes(stamped.encode()),
                ));
        }
        if let Some(on_hand) = checked.stock {
            // Stock is the ledger's: the import's count is a stock-take (it
            // sets the on-hand count; running an import again is a new count).
            stock_takes.push(Intent::Stock(StockCommand::StockTake {
                // A SKU (at most 64 bytes) and a number: a valid key.
                key: format!("import-{now_ms}-{}", checked.sku)
                    .parse()
                    .expect("an import's stock-take key is valid by construction"),
                sku: checked.sku.clone(),
                counted: on_hand.max(0) as u64,
            }));
        }
        report.products += 1;
    }
    let set = DocSetId::store(store);
    let mut changes = Vec::with_capacity(by_doc.len());
    for (doc_id, puts) in by_doc {
        // Build on the document as the hub has it, so a re-import supersedes.
        let mut doc = match log.load_doc(&doc_id)? {
            Some(doc) => doc,
            None => Automerge::new(),
        };
        doc.set_actor(actor.clone());
        let mut tx = doc.transaction();
        for (key, value) in puts {
            tx.put(ROOT, key, value)
                .map_err(|error| ImportError::Invalid(error.to_string()))?;
        }
        tx.commit();
        if let Some(change) = doc.get_last_local_change() {
            changes.push((doc_id, change.raw_bytes().to_vec()));
        }
    }
    // The manifest tells devices how the catalog is laid out and how big the
    // last import was (for progress on a first sync).
    let manifest_id = layout::manifest_doc(store);
    let mut manifest = log.load_doc(&manifest_id)?.unwrap_or_default();
    manifest.set_actor(actor.clone());
    let mut tx = manifest.transaction();
    for (key, value) in [
        ("buckets", i64::from(omnisync_core::vocab::goods::BUCKETS)),
        ("products", report.products as i64),
        ("imported_ms", now_ms as i64),
    ] {
        tx.put(ROOT, key, value)
            .map_err(|error| ImportError::Invalid(error.to_string()))?;
    }
    tx.commit();
    if let Some(change) = manifest.get_last_local_change() {
        changes.push((manifest_id, change.raw_bytes().to_vec()));
    }
    report.documents = changes.len();
    log.append_hub_changes(changes)?;
    for chunk in stock_takes.chunks(STOCK_TAKES_PER_COMMIT) {
        log.apply_hub_intents(store, chunk)?;
    }
    report.stock_counts = stock_takes.len() as u64;
    report.head_seq = omnisync_hub_engine::log::HubLog::head_seq(log)?;
    log.snapshot_set(&set)?;
    Ok(report)
}

/// Imports a file (CSV or JSON Lines) into the hub at `data_dir`, with a
/// progress bar on a terminal.
pub fn import_file(
    data_dir: &Path,
    store: &StoreId,
    path: &Path,
    format: Option<Format>,
    default_currency: Currency,
) -> Result<ImportReport, ImportError> {
    let target = crate::storage::LogTarget::DataDir(data_dir.to_path_buf());
    import_file_into(&target, store, path, format, default_currency)
}

/// Imports a file (CSV or JSON Lines) into the hub log at `target`, with a
/// progress bar on a terminal.
pub fn import_file_into(
    target: &crate::storage::LogTarget,
    store: &StoreId,
    path: &Path,
    format: Option<Format>,
    default_currency: Currency,
) -> Result<ImportReport, ImportError> {
    let format = format
        .or_else(|| Format::from_path(path))
        .ok_or_else(|| ImportError::UnknownFormat(path.display().to_string()))?;
    let rows = read_rows(path, format)?;
    let bar = indicatif::ProgressBar::new(rows.len() as u64);
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} importing {pos}/{len} rows [{bar:40}] {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let progress = |handled| bar.set_position(handled);
    let report = match target {
        crate::storage::LogTarget::DataDir(data_dir) => {
            import_rows(data_dir, store, rows, default_currency, progress)
        }
        crate::storage::LogTarget::Database(url) => {
            let mut log = crate::storage::postgres::open(url).map_err(HubLogError::from)?;
            import_rows_into(&mut log, store, rows, default_currency, progress)
        }
    };
    bar.finish_and_clear();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_rows_are_imported_and_bad_rows_reported() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("catalog.csv");
        std::fs::write(
            &file,
            "sku,name,category,barcode,brand,description,price_minor,currency,stock\n\
             sku-1,Espresso,coffee,4006381333931,Acme,,1899,EUR,40\n\
             bad sku,Broken,,,,,,,\n\
             sku-2,,tea,,,,,,\n\
             sku-3,Green tea,tea,,,,-5,,\n\
             sku-4,Mug,home,,,,1200,,3\n",
        )
        .unwrap();
        let data = dir.path().join("hub");
        let store = StoreId::new("s1").unwrap();
        let report =
            import_file(&data, &store, &file, None, Currency::new("EUR").unwrap()).unwrap();
        assert_eq!(report.products, 2);
        assert_eq!(report.rejected_count, 3);
        assert_eq!(
            report
                .rejected
                .iter()
                .map(|row| row.line)
                .collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        assert!(
            report.rejected[0].reason.contains("sku"),
            "{:?}",
            report.rejected[0]
        );
        assert!(report.rejected[2].reason.contains("negative"));
        // A second import of the same rows supersedes instead of conflicting.
        let again = import_file(&data, &store, &file, None, Currency::new("EUR").unwrap()).unwrap();
        assert_eq!(again.products, 2);
    }

    #[test]
    fn json_lines_with_unknown_fields_are_rejected_per_row() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("catalog.jsonl");
        std::fs::write(&file, "{\"sku\":\"a\",\"name\":\"A\"}\n{\"sku\":\"b\",\"name\":\"B\",\"colour\":\"red\"}\nnot json\n").unwrap();
        let report = import_file(
            &dir.path().join("hub"),
            &StoreId::new("s1").unwrap(),
            &file,
            None,
            Currency::new("EUR").unwrap(),
        )
        .unwrap();
        assert_eq!((report.products, report.rejected_count), (1, 2));
    }
}
