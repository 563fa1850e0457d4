//! The logic every backend shares on the write path: exactly-once outcomes,
//! numbering of changes, intents decided by the authority with its records
//! appended last, and the price book the authority checks prices against,
//! all over the primitives of [`super::contract`].

use std::collections::HashMap;

use omnisync_core::protocol::message::{Ack, AckOutcome, OpBody, RejectCode, RemoteChange};
use omnisync_core::vocab::goods::{Channel, Sku};
use omnisync_core::vocab::ids::{DeviceId, DocId, OpId, ReplicaId, StoreId};
use omnisync_core::vocab::intent::{Decision, Intent, StockCommand};
use omnisync_core::vocab::record::OrderRecord;

use super::contract::{LogRows, Prefetch, WriteTxn};
use super::{AppliedBatch, HubLogError};
use crate::events::{self, Event, EventDraft};
use crate::hub_session::{CommittedChanges, IncomingOp};
use crate::ledger::authority::{
    self, AuthorityConfig, LedgerChanges, LedgerSource, Reservation, UnitOfWork,
};
use crate::ledger::price_book::PriceBook;
use crate::ledger::sku_ledger::SkuLedger;

/// One open transaction of a backend, as [`apply_ops`] sees it.
pub trait HubTxn: LedgerSource {
    /// The stored answer for an op.
    fn find_outcome(&mut self, op: &OpId) -> Result<Option<AckOutcome>, HubLogError>;
    /// Stores an op's answer.
    fn put_outcome(
        &mut self,
        op: &OpId,
        outcome: &AckOutcome,
        now_ms: u64,
    ) -> Result<(), HubLogError>;
    /// Appends a numbered change (or record) to the log.
    fn append(&mut self, change: &RemoteChange) -> Result<(), HubLogError>;
    /// Persists what the authority changed.
    fn persist_ledger(&mut self, changes: &LedgerChanges) -> Result<(), HubLogError>;
    /// Names the rows the batch is about to look up ([`LogRows::prefetch`]).
    fn prefetch(&mut self, want: &Prefetch) -> Result<(), HubLogError>;
    /// Numbers `drafts` and writes them to the outbox, stamped `now_ms`.
    fn emit(&mut self, drafts: Vec<EventDraft>, now_ms: u64) -> Result<(), HubLogError>;
}

/// Every row deciding `ops` will look up: their outcomes and, for intents,
/// the idempotency keys, orders, reservations, ledger entries and order
/// numbers of their stores.
pub fn prefetch_for(ops: &[IncomingOp]) -> Prefetch {
    let mut want = Prefetch::default();
    for incoming in ops {
        want.ops.push(incoming.op.id);
        let OpBody::Intent(intent) = &incoming.op.body else {
            continue;
        };
        if incoming.rejection().is_some() {
            continue;
        }
        let store = &incoming.store;
        if let Some(key) = authority::intent_key(intent) {
            want.keys.push((store.clone(), key));
        }
        match intent {
            Intent::Checkout(checkout) => {
                want.orders
                    .push((store.clone(), checkout.order_id.as_str().to_owned()));
                for line in &checkout.lines {
                    want.skus.push((store.clone(), line.sku.clone()));
                }
                want.stores.push(store.clone());
            }
            Intent::Stock(
                StockCommand::Receive { sku, .. }
                | StockCommand::StockTake { sku, .. }
                | StockCommand::Adjust { sku, .. }
                | StockCommand::SetPolicy { sku, .. },
            ) => want.skus.push((store.clone(), sku.clone())),
            Intent::OrderStatus(change) => want
                .orders
                .push((store.clone(), change.order_id.as_str().to_owned())),
            Intent::Reserve { key, sku, .. } => {
                want.reservations
                    .push((store.clone(), key.as_str().to_owned()));
                want.skus.push((store.clone(), sku.clone()));
            }
            Intent::CommitReservation { key } | Intent::CancelReservation { key } => want
                .reservations
                .push((store.clone(), key.as_str().to_owned())),
            Intent::ReleaseAllowance { sku, .. } => want.skus.push((store.clone(), sku.clone())),
        }
    }
    dedup(&mut want.ops);
    dedup(&mut want.skus);
    dedup(&mut want.orders);
    dedup(&mut want.keys);
    dedup(&mut want.reservations);
    dedup(&mut want.stores);
    want
}

fn dedup<T: Ord>(items: &mut Vec<T>) {
    items.sort_unstable();
    items.dedup();
}

/// The op loop every backend shares: exactly-once outcomes, numbering of
/// changes, intents decided by the authority, its records appended last.
/// `head` is advanced only as far as the transaction got; the caller keeps it
/// only if the transaction commits.
pub fn apply_ops(
    txn: &mut dyn HubTxn,
    head: &mut u64,
    hub_replica: ReplicaId,
    config: AuthorityConfig,
    ops: Vec<IncomingOp>,
    now_ms: u64,
) -> Result<AppliedBatch, HubLogError> {
    let mut batch = AppliedBatch::default();
    txn.prefetch(&prefetch_for(&ops))?;
    let mut work = UnitOfWork::new(config);
    // Outcomes decided earlier in this same batch (a duplicate inside one push).
    let mut decided: HashMap<OpId, AckOutcome> = HashMap::new();
    for incoming in ops {
        let id = incoming.op.id;
        let earlier = match decided.get(&id) {
            Some(outcome) => Some(outcome.clone()),
            None => txn.find_outcome(&id)?,
        };
        if let Some(outcome) = earlier {
            batch.acks.push(Ack { op: id, outcome });
            batch.duplicates += 1;
            continue;
        }
        let outcome = match incoming.rejection() {
            Some(rejected) => {
                batch.rejected += 1;
                rejected
            }
            None => match incoming.op.body {
                OpBody::Changes(changes) => {
                    batch.stored += 1;
                    let drafts: Vec<EventDraft> = changes
                        .iter()
                        .flat_map(|change| events::from_document_change(&change.doc, &change.bytes))
                        .collect();
                    if !drafts.is_empty() {
                        txn.emit(drafts, now_ms)?;
                    }
                    for change in changes {
                        *head += 1;
                        let remote = RemoteChange {
                            hub_seq: *head,
                            doc: change.doc,
                            origin: id.replica,
                            bytes: change.bytes,
                        };
                        txn.append(&remote)?;
                        batch
                            .committed
                            .by_set
                            .entry(remote.doc.set())
                            .or_default()
                            .push(remote);
                    }
                    AckOutcome::Applied { hub_seq: *head }
                }
                OpBody::Intent(intent) => {
                    batch.decided += 1;
                    let decision: Decision =
                        work.decide(txn, &incoming.store, &incoming.device, &intent, now_ms)?;
                    AckOutcome::Decided(decision)
                }
                // The session's verdict rejects these first; never stored as applied.
                OpBody::Unknown(unknown) => {
                    batch.rejected += 1;
                    AckOutcome::Rejected {
                        code: RejectCode::Invalid,
                        detail: format!("unknown op kind `{}`", unknown.kind),
                    }
                }
            },
        };
        txn.put_outcome(&id, &outcome, now_ms)?;
        decided.insert(id, outcome.clone());
        batch.acks.push(Ack { op: id, outcome });
    }
    publish(txn, head, hub_replica, work, &mut batch.committed, now_ms)?;
    Ok(batch)
}

/// Intents the hub itself issues (a catalog import's stock counts), decided
/// like a device's but without an op: `device` names the issuer in the
/// ledger. Returns the decisions and the records published.
#[allow(clippy::too_many_arguments)]
pub fn apply_hub_intents(
    txn: &mut dyn HubTxn,
    head: &mut u64,
    hub_replica: ReplicaId,
    config: AuthorityConfig,
    store: &StoreId,
    device: &DeviceId,
    intents: &[Intent],
    now_ms: u64,
) -> Result<(Vec<Decision>, CommittedChanges), HubLogError> {
    let mut work = UnitOfWork::new(config);
    let mut decisions = Vec::with_capacity(intents.len());
    for intent in intents {
        decisions.push(work.decide(txn, store, device, intent, now_ms)?);
    }
    let mut committed = CommittedChanges::default();
    publish(txn, head, hub_replica, work, &mut committed, now_ms)?;
    Ok((decisions, committed))
}

/// [`HubLog::maintain`] for every backend.
pub fn maintain_ledger(
    txn: &mut dyn HubTxn,
    head: &mut u64,
    hub_replica: ReplicaId,
    config: AuthorityConfig,
    now_ms: u64,
) -> Result<CommittedChanges, HubLogError> {
    let mut work = UnitOfWork::new(config);
    work.recall_idle(txn, now_ms)?;
    let mut committed = CommittedChanges::default();
    publish(txn, head, hub_replica, work, &mut committed, now_ms)?;
    Ok(committed)
}

fn publish(
    txn: &mut dyn HubTxn,
    head: &mut u64,
    hub_replica: ReplicaId,
    work: UnitOfWork,
    committed: &mut CommittedChanges,
    now_ms: u64,
) -> Result<(), HubLogError> {
    let mut changes = work.finish();
    if changes.is_empty() {
        return Ok(());
    }
    let drafts = std::mem::take(&mut changes.events);
    if !drafts.is_empty() {
        txn.emit(drafts, now_ms)?;
    }
    for (doc, bytes) in &changes.records {
        *head += 1;
        let remote = RemoteChange {
            hub_seq: *head,
            doc: doc.clone(),
            origin: hub_replica,
            bytes: bytes.clone(),
        };
        txn.append(&remote)?;
        committed
            .by_set
            .entry(remote.doc.set())
            .or_default()
            .push(remote);
    }
    txn.persist_ledger(&changes)
}

/// A backend's write transaction as the shared logic sees it: the rows of
/// the transaction plus the writer's price book, kept in step with the
/// prices documents it appends.
pub struct SharedTxn<'a, T: WriteTxn> {
    rows: &'a mut T,
    prices: &'a mut PriceBook,
    events: &'a mut EventNumbering,
    /// The head before this transaction (documents are loaded up to it).
    head_before: u64,
}

impl<'a, T: WriteTxn> SharedTxn<'a, T> {
    /// Wraps `rows`; `head_before` is the head the transaction started at,
    /// `events` numbers the outbox from where the transaction found it.
    pub fn new(
        rows: &'a mut T,
        prices: &'a mut PriceBook,
        events: &'a mut EventNumbering,
        head_before: u64,
    ) -> Self {
        Self {
            rows,
            prices,
            events,
            head_before,
        }
    }
}

/// How the writer numbers the outbox: the position last given and, per
/// store, the store's last position (a cache of [`LogRows::store_event_seq`],
/// dropped whenever another writer may have written events).
#[derive(Debug)]
pub struct EventNumbering {
    tenant: omnisync_core::vocab::ids::TenantId,
    head: u64,
    stores: HashMap<StoreId, u64>,
    /// False when the hub writes no events (`serve --no-events`).
    enabled: bool,
}

impl EventNumbering {
    /// Numbering for events of `tenant`, from nothing known.
    pub fn new(tenant: omnisync_core::vocab::ids::TenantId) -> Self {
        Self {
            tenant,
            head: 0,
            stores: HashMap::new(),
            enabled: true,
        }
    }

    /// Turns the outbox on (the default) or off: off, drafts are dropped
    /// and nothing is written.
    pub fn set_enabled(&mut self, enabled: bool) {
        self.enabled = enabled;
    }

    /// True when events are written.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The tenant events are written for.
    pub fn tenant(&self) -> &omnisync_core::vocab::ids::TenantId {
        &self.tenant
    }

    /// Takes the outbox's committed position as `rows` sees it at the start
    /// of a write transaction; when it is not where this writer left it,
    /// another writer wrote events and the per-store cache is dropped.
    pub fn catch_up(&mut self, rows: &mut impl LogRows) -> Result<(), HubLogError> {
        let head = rows.event_head()?;
        if head != self.head {
            self.stores.clear();
            self.head = head;
        }
        Ok(())
    }

    /// Forgets everything (after a failed commit): the next transaction
    /// reads the positions from storage again.
    pub fn forget(&mut self) {
        self.stores.clear();
        self.head = u64::MAX;
    }

    /// Numbers and writes `drafts` through `rows`.
    pub fn write(
        &mut self,
        rows: &mut impl WriteTxn,
        drafts: Vec<EventDraft>,
        now_ms: u64,
    ) -> Result<(), HubLogError> {
        if !self.enabled {
            return Ok(());
        }
        for draft in drafts {
            let store_seq = match self.stores.get(&draft.store) {
                Some(last) => *last,
                None => rows.store_event_seq(&draft.store)?,
            } + 1;
            self.head += 1;
            let event = Event {
                seq: self.head,
                tenant: self.tenant.clone(),
                store: draft.store,
                store_seq,
                kind: draft.kind,
                time_ms: now_ms,
                data: draft.data,
            };
            rows.append_event(&event)?;
            self.stores.insert(event.store, store_seq);
        }
        Ok(())
    }
}

impl<T: WriteTxn> LedgerSource for SharedTxn<'_, T> {
    fn sku(&mut self, store: &StoreId, sku: &Sku) -> Result<Option<SkuLedger>, HubLogError> {
        self.rows.get_sku(store, sku)
    }

    fn order(
        &mut self,
        store: &StoreId,
        order_id: &str,
    ) -> Result<Option<OrderRecord>, HubLogError> {
        self.rows.get_order(store, order_id)
    }

    fn key(&mut self, store: &StoreId, key: &str) -> Result<Option<Decision>, HubLogError> {
        self.rows.get_key(store, key)
    }

    fn reservation(
        &mut self,
        store: &StoreId,
        key: &str,
    ) -> Result<Option<Reservation>, HubLogError> {
        self.rows.get_reservation(store, key)
    }

    fn last_order_no(&mut self, store: &StoreId) -> Result<u64, HubLogError> {
        self.rows.get_last_order_no(store)
    }

    fn price(
        &mut self,
        store: &StoreId,
        sku: &Sku,
        channel: Channel,
        at_ms: u64,
    ) -> Result<Option<i64>, HubLogError> {
        let rows = &mut *self.rows;
        let head = self.head_before;
        Ok(self.prices.price(store, sku, channel, at_ms, |doc| {
            // Changes appended earlier in this batch went through note_change.
            load_doc_at(rows, doc, head).ok()
        }))
    }

    fn skus_with_rights(&mut self) -> Result<Vec<(StoreId, Sku)>, HubLogError> {
        self.rows.skus_with_rights()
    }
}

impl<T: WriteTxn> HubTxn for SharedTxn<'_, T> {
    fn find_outcome(&mut self, op: &OpId) -> Result<Option<AckOutcome>, HubLogError> {
        self.rows.find_outcome(op)
    }

    fn put_outcome(
        &mut self,
        op: &OpId,
        outcome: &AckOutcome,
        now_ms: u64,
    ) -> Result<(), HubLogError> {
        self.rows.put_outcome(op, outcome, now_ms)
    }

    fn append(&mut self, change: &RemoteChange) -> Result<(), HubLogError> {
        self.rows.append(change)?;
        if PriceBook::follows(&change.doc) {
            let rows = &mut *self.rows;
            let head = self.head_before;
            self.prices.note_change(&change.doc, &change.bytes, || {
                load_doc_at(rows, &change.doc, head).ok()
            });
        }
        Ok(())
    }

    fn persist_ledger(&mut self, changes: &LedgerChanges) -> Result<(), HubLogError> {
        for (store, sku, ledger) in &changes.skus {
            self.rows.put_sku(store, sku, ledger)?;
        }
        for (store, order) in &changes.orders {
            self.rows.put_order(store, order)?;
        }
        for (store, key, decision) in &changes.keys {
            self.rows.put_key(store, key, decision)?;
        }
        for (store, key, reservation) in &changes.reservations {
            self.rows.put_reservation(store, key, reservation)?;
        }
        for (store, last) in &changes.order_nos {
            self.rows.put_order_no(store, *last)?;
        }
        Ok(())
    }

    fn prefetch(&mut self, want: &Prefetch) -> Result<(), HubLogError> {
        if want.is_empty() {
            return Ok(());
        }
        self.rows.prefetch(want)
    }

    fn emit(&mut self, drafts: Vec<EventDraft>, now_ms: u64) -> Result<(), HubLogError> {
        self.events.write(&mut *self.rows, drafts, now_ms)
    }
}

/// A document from its snapshot (if any) and its changes up to `upto`.
pub fn load_doc_at(
    rows: &mut (impl LogRows + ?Sized),
    doc: &DocId,
    upto: u64,
) -> Result<automerge::Automerge, HubLogError> {
    let (mut loaded, after) = match rows.snapshot(doc)? {
        Some((bytes, covers)) => (
            automerge::Automerge::load(&bytes).map_err(storage_error)?,
            covers,
        ),
        None => (automerge::Automerge::new(), 0),
    };
    rows.doc_changes(doc, after, upto, &mut |bytes| {
        loaded
            .load_incremental(bytes)
            .map(|_| ())
            .map_err(storage_error)
    })?;
    Ok(loaded)
}

/// The hub's own replica id for a change log: derived from the log id so it
/// is stable for the log and distinct between hubs.
pub fn hub_replica(log_id: &str) -> ReplicaId {
    let mut bytes = [0u8; 16];
    for (index, byte) in log_id.bytes().enumerate() {
        bytes[index % 16] ^= byte.rotate_left((index / 16) as u32);
    }
    bytes[0] = 0xff; // Never a random device replica by accident in practice.
    ReplicaId(bytes)
}

/// A storage error from anything displayable.
pub fn storage_error(error: impl std::fmt::Display) -> HubLogError {
    HubLogError::Storage(error.to_string())
}
