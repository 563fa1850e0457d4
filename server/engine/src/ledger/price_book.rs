//! The hub's price book: the prices in force, kept from the price documents
//! the hub stores, so a checkout's seen prices can be checked without
//! loading documents on the hot path.

use std::collections::{BTreeMap, HashMap, HashSet};

use automerge::Automerge;

use omnisync_core::retail::prices::prices_in_doc;
use omnisync_core::vocab::goods::{Channel, Sku};
use omnisync_core::vocab::ids::{DocId, StoreId};
use omnisync_core::vocab::layout;

type Schedule = BTreeMap<u64, i64>;

/// Prices per (store, SKU, channel): effective-from time to amount.
#[derive(Debug, Default)]
pub struct PriceBook {
    docs: HashMap<DocId, Automerge>,
    loaded: HashSet<DocId>,
    prices: HashMap<(StoreId, Sku, Channel), Schedule>,
}

impl PriceBook {
    /// An empty book.
    pub fn new() -> Self {
        Self::default()
    }

    /// True for documents the book follows.
    pub fn follows(doc: &DocId) -> bool {
        layout::kind_of(doc) == layout::DocKind::Prices
    }

    /// Applies a stored change of a prices document. `load` gives the
    /// document as stored before this change, the first time it is needed.
    pub fn note_change(
        &mut self,
        doc: &DocId,
        bytes: &[u8],
        load: impl FnOnce() -> Option<Automerge>,
    ) {
        self.ensure_loaded(doc, load);
        let Some(loaded) = self.docs.get_mut(doc) else {
            return;
        };
        // The hub validated the change when it judged the op.
        if let Ok(change) = automerge::Change::from_bytes(bytes.to_vec())
            && loaded.apply_changes([change]).is_ok()
        {
            self.reindex(doc);
        }
    }

    /// The amount in force for `sku` on `channel` at `at_ms`, if any.
    /// `load` gives the stored prices document the first time it is needed.
    pub fn price(
        &mut self,
        store: &StoreId,
        sku: &Sku,
        channel: Channel,
        at_ms: u64,
        load: impl FnOnce(&DocId) -> Option<Automerge>,
    ) -> Option<i64> {
        let doc = layout::prices_doc(store, sku);
        self.ensure_loaded(&doc, || load(&doc));
        self.prices
            .get(&(store.clone(), sku.clone(), channel))?
            .range(..=at_ms)
            .next_back()
            .map(|(_, amount)| *amount)
    }

    fn ensure_loaded(&mut self, doc: &DocId, load: impl FnOnce() -> Option<Automerge>) {
        if !self.loaded.contains(doc) {
            self.loaded.insert(doc.clone());
            self.docs.insert(doc.clone(), load().unwrap_or_default());
            self.reindex(doc);
        }
    }

    fn reindex(&mut self, doc: &DocId) {
        let (Some(loaded), Some(store)) = (self.docs.get(doc), layout::store_of(doc)) else {
            return;
        };
        for (sku, channel, from, amount) in prices_in_doc(loaded) {
            self.prices
                .entry((store.clone(), sku, channel))
                .or_default()
                .insert(from, amount);
        }
    }
}
