//! A backend wrapper whose next commit fails (the transaction is dropped,
//! so a backend that rolls back stores nothing), for the conformance
//! property that the shared writer forgets what a failed commit taught it.

use omnisync_core::protocol::message::{AckOutcome, RemoteChange};
use omnisync_core::vocab::goods::Sku;
use omnisync_core::vocab::ids::{DocId, DocSetId, OpId, StoreId};
use omnisync_core::vocab::intent::Decision;
use omnisync_core::vocab::record::OrderRecord;

use crate::events::{Event, EventFilter};
use crate::ledger::authority::Reservation;
use crate::ledger::sku_ledger::SkuLedger;
use crate::log::HubLogError;
use crate::log::contract::{Backend, LogRows, PageCut, Prefetch, WriteTxn};

/// `B` with a switch that makes the next transaction's commit fail.
#[derive(Debug)]
pub struct FailingCommits<B> {
    inner: B,
    /// The next transaction begun fails to commit (then this resets).
    pub fail_next: bool,
}

impl<B> FailingCommits<B> {
    /// Wraps `inner`; commits succeed until `fail_next` is set.
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            fail_next: false,
        }
    }
}

/// A transaction of [`FailingCommits`].
pub struct FailingTxn<T> {
    inner: T,
    fail: bool,
}

impl<B: Backend> Backend for FailingCommits<B> {
    type Txn<'t>
        = FailingTxn<B::Txn<'t>>
    where
        Self: 't;

    fn begin(&mut self) -> Result<Self::Txn<'_>, HubLogError> {
        let fail = std::mem::take(&mut self.fail_next);
        Ok(FailingTxn {
            inner: self.inner.begin()?,
            fail,
        })
    }
}

impl<T: WriteTxn> LogRows for FailingTxn<T> {
    fn head_seq(&mut self) -> Result<u64, HubLogError> {
        self.inner.head_seq()
    }
    fn meta(&mut self, key: &str) -> Result<Option<String>, HubLogError> {
        self.inner.meta(key)
    }
    fn event_head(&mut self) -> Result<u64, HubLogError> {
        self.inner.event_head()
    }
    fn store_event_seq(&mut self, store: &StoreId) -> Result<u64, HubLogError> {
        self.inner.store_event_seq(store)
    }
    fn events_after(
        &mut self,
        after: u64,
        filter: &EventFilter,
        limit: usize,
        visit: &mut dyn FnMut(Event) -> Result<(), HubLogError>,
    ) -> Result<(), HubLogError> {
        self.inner.events_after(after, filter, limit, visit)
    }
    fn find_outcome(&mut self, op: &OpId) -> Result<Option<AckOutcome>, HubLogError> {
        self.inner.find_outcome(op)
    }
    fn changes_after(
        &mut self,
        set: &DocSetId,
        after: u64,
        page: &mut PageCut,
    ) -> Result<(), HubLogError> {
        self.inner.changes_after(set, after, page)
    }
    fn doc_changes(
        &mut self,
        doc: &DocId,
        after: u64,
        upto: u64,
        visit: &mut dyn FnMut(&[u8]) -> Result<(), HubLogError>,
    ) -> Result<(), HubLogError> {
        self.inner.doc_changes(doc, after, upto, visit)
    }
    fn latest_change(&mut self, doc: &DocId, upto: u64) -> Result<Option<Vec<u8>>, HubLogError> {
        self.inner.latest_change(doc, upto)
    }
    fn set_docs(&mut self, set: &DocSetId) -> Result<Vec<DocId>, HubLogError> {
        self.inner.set_docs(set)
    }
    fn snapshot(&mut self, doc: &DocId) -> Result<Option<(Vec<u8>, u64)>, HubLogError> {
        self.inner.snapshot(doc)
    }
    fn set_snapshot(&mut self, set: &DocSetId) -> Result<Option<u64>, HubLogError> {
        self.inner.set_snapshot(set)
    }
    fn snapshots_after(
        &mut self,
        set: &DocSetId,
        after: Option<&DocId>,
        page: &mut PageCut,
    ) -> Result<(), HubLogError> {
        self.inner.snapshots_after(set, after, page)
    }
    fn changes_between(
        &mut self,
        after: u64,
        upto: u64,
        visit: &mut dyn FnMut(RemoteChange) -> Result<(), HubLogError>,
    ) -> Result<(), HubLogError> {
        self.inner.changes_between(after, upto, visit)
    }
    fn prefetch(&mut self, want: &Prefetch) -> Result<(), HubLogError> {
        self.inner.prefetch(want)
    }
    fn change_sets(&mut self) -> Result<Vec<DocSetId>, HubLogError> {
        self.inner.change_sets()
    }
    fn count_changes(
        &mut self,
        set: &DocSetId,
        after: u64,
        upto: u64,
    ) -> Result<(u64, u64), HubLogError> {
        self.inner.count_changes(set, after, upto)
    }
    fn changed_docs(
        &mut self,
        set: &DocSetId,
        after: u64,
        upto: u64,
    ) -> Result<Vec<DocId>, HubLogError> {
        self.inner.changed_docs(set, after, upto)
    }
}

impl<T: WriteTxn> WriteTxn for FailingTxn<T> {
    fn append_event(&mut self, event: &Event) -> Result<(), HubLogError> {
        self.inner.append_event(event)
    }
    fn delete_events(&mut self, before_ms: u64, limit: u64) -> Result<(u64, u64), HubLogError> {
        self.inner.delete_events(before_ms, limit)
    }
    fn put_meta(&mut self, key: &str, value: &str) -> Result<(), HubLogError> {
        self.inner.put_meta(key, value)
    }
    fn put_outcome(
        &mut self,
        op: &OpId,
        outcome: &AckOutcome,
        now_ms: u64,
    ) -> Result<(), HubLogError> {
        self.inner.put_outcome(op, outcome, now_ms)
    }
    fn append(&mut self, change: &RemoteChange) -> Result<(), HubLogError> {
        self.inner.append(change)
    }
    fn get_sku(&mut self, store: &StoreId, sku: &Sku) -> Result<Option<SkuLedger>, HubLogError> {
        self.inner.get_sku(store, sku)
    }
    fn put_sku(
        &mut self,
        store: &StoreId,
        sku: &Sku,
        ledger: &SkuLedger,
    ) -> Result<(), HubLogError> {
        self.inner.put_sku(store, sku, ledger)
    }
    fn get_order(
        &mut self,
        store: &StoreId,
        order_id: &str,
    ) -> Result<Option<OrderRecord>, HubLogError> {
        self.inner.get_order(store, order_id)
    }
    fn put_order(&mut self, store: &StoreId, order: &OrderRecord) -> Result<(), HubLogError> {
        self.inner.put_order(store, order)
    }
    fn get_key(&mut self, store: &StoreId, key: &str) -> Result<Option<Decision>, HubLogError> {
        self.inner.get_key(store, key)
    }
    fn put_key(
        &mut self,
        store: &StoreId,
        key: &str,
        decision: &Decision,
    ) -> Result<(), HubLogError> {
        self.inner.put_key(store, key, decision)
    }
    fn get_reservation(
        &mut self,
        store: &StoreId,
        key: &str,
    ) -> Result<Option<Reservation>, HubLogError> {
        self.inner.get_reservation(store, key)
    }
    fn put_reservation(
        &mut self,
        store: &StoreId,
        key: &str,
        reservation: &Reservation,
    ) -> Result<(), HubLogError> {
        self.inner.put_reservation(store, key, reservation)
    }
    fn get_last_order_no(&mut self, store: &StoreId) -> Result<u64, HubLogError> {
        self.inner.get_last_order_no(store)
    }
    fn put_order_no(&mut self, store: &StoreId, last: u64) -> Result<(), HubLogError> {
        self.inner.put_order_no(store, last)
    }
    fn skus_with_rights(&mut self) -> Result<Vec<(StoreId, Sku)>, HubLogError> {
        self.inner.skus_with_rights()
    }
    fn put_snapshot(&mut self, doc: &DocId, covers: u64, bytes: &[u8]) -> Result<(), HubLogError> {
        self.inner.put_snapshot(doc, covers, bytes)
    }
    fn put_set_snapshot(&mut self, set: &DocSetId, covers: u64) -> Result<(), HubLogError> {
        self.inner.put_set_snapshot(set, covers)
    }
    fn delete_changes(
        &mut self,
        set: &DocSetId,
        upto: u64,
        limit: u64,
    ) -> Result<u64, HubLogError> {
        self.inner.delete_changes(set, upto, limit)
    }
    fn commit(self) -> Result<(), HubLogError> {
        if self.fail {
            // Dropped uncommitted: rolled back by a backend that can.
            drop(self.inner);
            return Err(HubLogError::Storage(
                "commit failed (test failpoint)".into(),
            ));
        }
        self.inner.commit()
    }
}
