//! Keeps the query tables in step with the documents.
//!
//! Architecture invariant: every document change, local or remote, updates
//! the query tables in the same SQLite transaction, so a reader never sees a
//! document and its projection disagree. Only the keys the new changes wrote
//! are re-projected.

use std::collections::BTreeSet;

use automerge::legacy::{Key, ObjectId};
use automerge::{Automerge, ChangeHash};
use rusqlite::Transaction;

use crate::db::DbError;
use crate::retail::{catalog, customer, prices};
use crate::vocab::ids::DocId;
use crate::vocab::layout::{DocKind, kind_of};

/// Root keys written by every change the document gained since `before`
/// (including changes that were waiting for dependencies and got applied).
///
/// A diff of visible values would not do: a concurrent value that loses
/// automerge's own pick changes no visible value, yet it can win an
/// hybrid-clock register or join a multi-value conflict.
pub(crate) fn changed_root_keys(doc: &Automerge, before: &[ChangeHash]) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for change in doc.get_changes(before) {
        for op in change.decode().operations {
            if let (ObjectId::Root, Key::Map(key)) = (op.obj, op.key) {
                keys.insert(key.to_string());
            }
        }
    }
    keys
}

/// Updates the query tables for a document that changed since `before`.
pub(crate) fn project(
    tx: &Transaction<'_>,
    doc_id: &DocId,
    doc: &Automerge,
    before: &[ChangeHash],
) -> Result<(), DbError> {
    let kind = kind_of(doc_id);
    if matches!(kind, DocKind::Other | DocKind::Record) {
        return Ok(());
    }
    let keys = changed_root_keys(doc, before);
    if keys.is_empty() {
        return Ok(());
    }
    match kind {
        DocKind::Catalog => catalog::project(tx, doc_id, doc, &keys, before.is_empty()),
        DocKind::Prices => prices::project(tx, doc_id, doc, &keys),
        DocKind::Cart => customer::project_cart(tx, doc_id, doc, &keys),
        DocKind::Wishlist => customer::project_wishlist(tx, doc_id, doc, &keys),
        DocKind::Profile => customer::project_profile(tx, doc_id, doc, &keys),
        DocKind::History => customer::project_history(tx, doc_id, doc),
        DocKind::Recommendations => customer::project_recommendations(tx, doc_id, doc),
        DocKind::Record | DocKind::Other => Ok(()),
    }
}
