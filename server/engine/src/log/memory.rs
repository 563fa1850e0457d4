//! The in-memory backend, for simulations and tests: the contract's rows in
//! maps. It writes in place and cannot fail, so it needs no rollback.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::{Deref, DerefMut};

use omnisync_core::protocol::message::{AckOutcome, RemoteChange};
use omnisync_core::vocab::goods::Sku;
use omnisync_core::vocab::ids::{DocId, DocSetId, OpId, StoreId};
use omnisync_core::vocab::intent::Decision;
use omnisync_core::vocab::record::OrderRecord;

use super::HubLogError;
use super::contract::{Backend, LogRows, PageCut, ReadBackend, WriteTxn};
use super::store::{HubStore, LOG_ID_KEY};
use crate::events::{Event, EventFilter};
use crate::ledger::authority::{AuthorityConfig, Reservation};
use crate::ledger::sku_ledger::SkuLedger;

/// The log id of every memory log: fixed, so simulations are deterministic.
pub const MEMORY_LOG_ID: &str = "memory-hub-log";

/// A hub log kept in memory, for simulations and tests.
pub type MemoryHubLog = HubStore<MemoryBackend>;

/// The rows of a memory log.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    head: u64,
    meta: HashMap<String, String>,
    outcomes: HashMap<OpId, AckOutcome>,
    by_set: BTreeMap<DocSetId, Vec<RemoteChange>>,
    skus: HashMap<(StoreId, Sku), SkuLedger>,
    orders: HashMap<(StoreId, String), OrderRecord>,
    keys: HashMap<(StoreId, String), Decision>,
    reservations: HashMap<(StoreId, String), Reservation>,
    order_nos: HashMap<StoreId, u64>,
    snapshots: BTreeMap<DocSetId, BTreeMap<DocId, (u64, Vec<u8>)>>,
    set_snapshots: HashMap<DocSetId, u64>,
    events: Vec<Event>,
}

impl MemoryBackend {
    /// An empty memory log named [`MEMORY_LOG_ID`].
    pub fn new() -> Self {
        let mut backend = Self::default();
        backend
            .meta
            .insert(LOG_ID_KEY.to_owned(), MEMORY_LOG_ID.to_owned());
        backend
    }

    fn doc(&self, doc: &DocId) -> impl Iterator<Item = &RemoteChange> {
        self.by_set
            .get(&doc.set())
            .into_iter()
            .flatten()
            .filter(move |change| &change.doc == doc)
    }
}

impl HubStore<MemoryBackend> {
    /// An empty log.
    pub fn new() -> Self {
        Self::with_config(AuthorityConfig::default())
    }

    /// An empty log whose authority uses `config`.
    pub fn with_config(config: AuthorityConfig) -> Self {
        // Opening a memory backend cannot fail: it only reads its maps.
        let mut log = Self::open(MemoryBackend::new()).expect("opening a memory log");
        log.set_authority_config(config);
        log
    }

    /// Every change of a set, for convergence checks.
    pub fn all_changes(&self, set: &DocSetId) -> &[RemoteChange] {
        self.backend()
            .by_set
            .get(set)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Every ledger entry, for invariant checks.
    pub fn ledgers(&self) -> impl Iterator<Item = (&(StoreId, Sku), &SkuLedger)> {
        self.backend().skus.iter()
    }

    /// Every decided order, for invariant checks.
    pub fn orders(&self) -> impl Iterator<Item = &OrderRecord> {
        self.backend().orders.values()
    }
}

impl Default for HubStore<MemoryBackend> {
    fn default() -> Self {
        Self::new()
    }
}

/// A memory log's rows seen through a shared or an exclusive borrow: reads
/// through either, writes through the exclusive one.
pub struct MemoryRows<M>(M);

impl<M: Deref<Target = MemoryBackend>> LogRows for MemoryRows<M> {
    fn head_seq(&mut self) -> Result<u64, HubLogError> {
        Ok(self.0.head)
    }

    fn meta(&mut self, key: &str) -> Result<Option<String>, HubLogError> {
        Ok(self.0.meta.get(key).cloned())
    }

    fn event_head(&mut self) -> Result<u64, HubLogError> {
        Ok(self.0.events.last().map_or(0, |event| event.seq))
    }

    fn store_event_seq(&mut self, store: &StoreId) -> Result<u64, HubLogError> {
        Ok(self
            .0
            .events
            .iter()
            .rev()
            .find(|event| &event.store == store)
            .map_or(0, |event| event.store_seq))
    }

    fn events_after(
        &mut self,
        after: u64,
        filter: &EventFilter,
        limit: usize,
        visit: &mut dyn FnMut(Event) -> Result<(), HubLogError>,
    ) -> Result<(), HubLogError> {
        let start = self.0.events.partition_point(|event| event.seq <= after);
        for event in self.0.events[start..]
            .iter()
            .filter(|event| filter.admits(event))
            .take(limit)
        {
            visit(event.clone())?;
        }
        Ok(())
    }

    fn find_outcome(&mut self, op: &OpId) -> Result<Option<AckOutcome>, HubLogError> {
        Ok(self.0.outcomes.get(op).cloned())
    }

    fn changes_after(
        &mut self,
        set: &DocSetId,
        after: u64,
        page: &mut PageCut,
    ) -> Result<(), HubLogError> {
        let all = self.0.by_set.get(set).map(Vec::as_slice).unwrap_or(&[]);
        let start = all.partition_point(|change| change.hub_seq <= after);
        for change in &all[start..] {
            if page.full() {
                break;
            }
            page.push(change.clone());
        }
        Ok(())
    }

    fn doc_changes(
        &mut self,
        doc: &DocId,
        after: u64,
        upto: u64,
        visit: &mut dyn FnMut(&[u8]) -> Result<(), HubLogError>,
    ) -> Result<(), HubLogError> {
        for change in self.0.doc(doc) {
            if change.hub_seq > after && change.hub_seq <= upto {
                visit(&change.bytes)?;
            }
        }
        Ok(())
    }

    fn latest_change(&mut self, doc: &DocId, upto: u64) -> Result<Option<Vec<u8>>, HubLogError> {
        Ok(self
            .0
            .doc(doc)
            .filter(|change| change.hub_seq <= upto)
            .last()
            .map(|change| change.bytes.clone()))
    }

    fn set_docs(&mut self, set: &DocSetId) -> Result<Vec<DocId>, HubLogError> {
        let docs: BTreeSet<&DocId> = self
            .0
            .by_set
            .get(set)
            .into_iter()
            .flatten()
            .map(|change| &change.doc)
            .collect();
        Ok(docs.into_iter().cloned().collect())
    }

    fn snapshot(&mut self, doc: &DocId) -> Result<Option<(Vec<u8>, u64)>, HubLogError> {
        Ok(self
            .0
            .snapshots
            .get(&doc.set())
            .and_then(|docs| docs.get(doc))
            .map(|(covers, bytes)| (bytes.clone(), *covers)))
    }

    fn set_snapshot(&mut self, set: &DocSetId) -> Result<Option<u64>, HubLogError> {
        Ok(self.0.set_snapshots.get(set).copied())
    }

    fn change_sets(&mut self) -> Result<Vec<DocSetId>, HubLogError> {
        Ok(self.0.by_set.keys().cloned().collect())
    }

    fn count_changes(
        &mut self,
        set: &DocSetId,
        after: u64,
        upto: u64,
    ) -> Result<(u64, u64), HubLogError> {
        let all = self.0.by_set.get(set).map(Vec::as_slice).unwrap_or(&[]);
        Ok(all
            .iter()
            .filter(|change| change.hub_seq > after && change.hub_seq <= upto)
            .fold((0, 0), |(count, bytes), change| {
                (count + 1, bytes + change.bytes.len() as u64)
            }))
    }

    fn changed_docs(
        &mut self,
        set: &DocSetId,
        after: u64,
        upto: u64,
    ) -> Result<Vec<DocId>, HubLogError> {
        let docs: BTreeSet<&DocId> = self
            .0
            .by_set
            .get(set)
            .into_iter()
            .flatten()
            .filter(|change| change.hub_seq > after && change.hub_seq <= upto)
            .map(|change| &change.doc)
            .collect();
        Ok(docs.into_iter().cloned().collect())
    }

    fn snapshots_after(
        &mut self,
        set: &DocSetId,
        after: Option<&DocId>,
        page: &mut PageCut,
    ) -> Result<(), HubLogError> {
        let Some(docs) = self.0.snapshots.get(set) else {
            return Ok(());
        };
        let from = match after {
            Some(after) => std::ops::Bound::Excluded(after),
            None => std::ops::Bound::Unbounded,
        };
        for (doc, (_, bytes)) in docs.range::<DocId, _>((from, std::ops::Bound::Unbounded)) {
            if page.full() {
                break;
            }
            page.push_snapshot(doc.clone(), bytes.clone());
        }
        Ok(())
    }

    fn changes_between(
        &mut self,
        after: u64,
        upto: u64,
        visit: &mut dyn FnMut(RemoteChange) -> Result<(), HubLogError>,
    ) -> Result<(), HubLogError> {
        let mut found: Vec<&RemoteChange> = self
            .0
            .by_set
            .values()
            .flatten()
            .filter(|change| change.hub_seq > after && change.hub_seq <= upto)
            .collect();
        found.sort_by_key(|change| change.hub_seq);
        for change in found {
            visit(change.clone())?;
        }
        Ok(())
    }
}

impl<M: DerefMut<Target = MemoryBackend>> WriteTxn for MemoryRows<M> {
    fn delete_changes(
        &mut self,
        set: &DocSetId,
        upto: u64,
        limit: u64,
    ) -> Result<u64, HubLogError> {
        let Some(changes) = self.0.by_set.get_mut(set) else {
            return Ok(0);
        };
        let below = changes.partition_point(|change| change.hub_seq <= upto);
        let deleted = below.min(usize::try_from(limit).unwrap_or(usize::MAX));
        changes.drain(..deleted);
        if changes.is_empty() {
            self.0.by_set.remove(set);
        }
        Ok(deleted as u64)
    }

    fn append_event(&mut self, event: &Event) -> Result<(), HubLogError> {
        self.0.events.push(event.clone());
        Ok(())
    }

    fn delete_events(&mut self, before_ms: u64, limit: u64) -> Result<(u64, u64), HubLogError> {
        let mut newest: HashMap<StoreId, u64> = HashMap::new();
        for event in &self.0.events {
            newest.insert(event.store.clone(), event.seq);
        }
        let doomed: BTreeSet<u64> = self
            .0
            .events
            .iter()
            .filter(|event| event.time_ms < before_ms && newest[&event.store] != event.seq)
            .map(|event| event.seq)
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .collect();
        self.0.events.retain(|event| !doomed.contains(&event.seq));
        Ok((doomed.len() as u64, doomed.last().copied().unwrap_or(0)))
    }

    fn put_meta(&mut self, key: &str, value: &str) -> Result<(), HubLogError> {
        self.0.meta.insert(key.to_owned(), value.to_owned());
        Ok(())
    }

    fn put_outcome(
        &mut self,
        op: &OpId,
        outcome: &AckOutcome,
        _now_ms: u64,
    ) -> Result<(), HubLogError> {
        self.0.outcomes.insert(*op, outcome.clone());
        Ok(())
    }

    fn append(&mut self, change: &RemoteChange) -> Result<(), HubLogError> {
        self.0.head = self.0.head.max(change.hub_seq);
        self.0
            .by_set
            .entry(change.doc.set())
            .or_default()
            .push(change.clone());
        Ok(())
    }

    fn get_sku(&mut self, store: &StoreId, sku: &Sku) -> Result<Option<SkuLedger>, HubLogError> {
        Ok(self.0.skus.get(&(store.clone(), sku.clone())).cloned())
    }

    fn put_sku(
        &mut self,
        store: &StoreId,
        sku: &Sku,
        ledger: &SkuLedger,
    ) -> Result<(), HubLogError> {
        self.0
            .skus
            .insert((store.clone(), sku.clone()), ledger.clone());
        Ok(())
    }

    fn get_order(
        &mut self,
        store: &StoreId,
        order_id: &str,
    ) -> Result<Option<OrderRecord>, HubLogError> {
        Ok(self
            .0
            .orders
            .get(&(store.clone(), order_id.to_owned()))
            .cloned())
    }

    fn put_order(&mut self, store: &StoreId, order: &OrderRecord) -> Result<(), HubLogError> {
        self.0
            .orders
            .insert((store.clone(), order.order_id.to_string()), order.clone());
        Ok(())
    }

    fn get_key(&mut self, store: &StoreId, key: &str) -> Result<Option<Decision>, HubLogError> {
        Ok(self.0.keys.get(&(store.clone(), key.to_owned())).cloned())
    }

    fn put_key(
        &mut self,
        store: &StoreId,
        key: &str,
        decision: &Decision,
    ) -> Result<(), HubLogError> {
        self.0
            .keys
            .insert((store.clone(), key.to_owned()), decision.clone());
        Ok(())
    }

    fn get_reservation(
        &mut self,
        store: &StoreId,
        key: &str,
    ) -> Result<Option<Reservation>, HubLogError> {
        Ok(self
            .0
            .reservations
            .get(&(store.clone(), key.to_owned()))
            .cloned())
    }

    fn put_reservation(
        &mut self,
        store: &StoreId,
        key: &str,
        reservation: &Reservation,
    ) -> Result<(), HubLogError> {
        self.0
            .reservations
            .insert((store.clone(), key.to_owned()), reservation.clone());
        Ok(())
    }

    fn get_last_order_no(&mut self, store: &StoreId) -> Result<u64, HubLogError> {
        Ok(self.0.order_nos.get(store).copied().unwrap_or(0))
    }

    fn put_order_no(&mut self, store: &StoreId, last: u64) -> Result<(), HubLogError> {
        self.0.order_nos.insert(store.clone(), last);
        Ok(())
    }

    fn skus_with_rights(&mut self) -> Result<Vec<(StoreId, Sku)>, HubLogError> {
        let mut keys: Vec<(StoreId, Sku)> = self
            .0
            .skus
            .iter()
            .filter(|(_, ledger)| ledger.held() > 0)
            .map(|(key, _)| key.clone())
            .collect();
        keys.sort();
        Ok(keys)
    }

    fn put_snapshot(&mut self, doc: &DocId, covers: u64, bytes: &[u8]) -> Result<(), HubLogError> {
        self.0
            .snapshots
            .entry(doc.set())
            .or_default()
            .insert(doc.clone(), (covers, bytes.to_vec()));
        Ok(())
    }

    fn put_set_snapshot(&mut self, set: &DocSetId, covers: u64) -> Result<(), HubLogError> {
        self.0.set_snapshots.insert(set.clone(), covers);
        Ok(())
    }

    fn commit(self) -> Result<(), HubLogError> {
        Ok(())
    }
}

impl Backend for MemoryBackend {
    type Txn<'t> = MemoryRows<&'t mut MemoryBackend>;

    fn begin(&mut self) -> Result<Self::Txn<'_>, HubLogError> {
        Ok(MemoryRows(self))
    }
}

impl ReadBackend for MemoryHubLog {
    fn read<T: Send>(
        &self,
        read: impl FnOnce(&mut dyn LogRows) -> Result<T, HubLogError> + Send,
    ) -> Result<T, HubLogError> {
        read(&mut MemoryRows(self.backend()))
    }
}
