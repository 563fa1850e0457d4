//! The single writer of a hub log over any [`Backend`]: the head, the log's
//! identity and hub replica, the price book (dropped after a failed commit),
//! group commits, and the import writes (hub-made changes, intents the hub
//! issues, snapshots of a set). Backends only store rows.
//!
//! Several writers, one store: a backend may let several processes write
//! one store in turn (PostgreSQL serializes their transactions with an
//! advisory lock). So every transaction takes the head from the backend
//! ([`LogRows::head_seq`] inside the transaction) rather than trusting the
//! head this writer left, and numbers from there. When the two differ,
//! another writer committed in between: its changes may have touched prices
//! documents, so the price book (a cache of them) is dropped and rebuilt
//! from storage on demand. With one writer (SQLite, memory) the heads always
//! agree and the extra read is one index probe per transaction.

use omnisync_core::protocol::message::RemoteChange;
use omnisync_core::vocab::ids::{DeviceId, DocId, DocSetId, ReplicaId, StoreId};
use omnisync_core::vocab::intent::{Decision, Intent};
use omnisync_core::vocab::record::is_record_doc;

use super::compact::{CompactPolicy, CompactStep, Compaction};
use super::contract::{Backend, LogRows, WriteTxn};
use super::shared::{
    EventNumbering, HubTxn, SharedTxn, apply_hub_intents, apply_ops, hub_replica, load_doc_at,
    maintain_ledger, storage_error,
};
use super::{AppliedBatch, HubLog, HubLogError};
use crate::events::{self, EventDraft};
use crate::hub_session::{CommittedChanges, IncomingOp};
use crate::ledger::authority::AuthorityConfig;
use crate::ledger::price_book::PriceBook;
use omnisync_core::vocab::ids::TenantId;

/// The metadata key of the log's identity.
pub const LOG_ID_KEY: &str = "log_id";
/// The device name the hub's own intents (import stock counts) are issued as.
pub const HUB_ISSUER: &str = "hub";
/// The tenant a log's events name until [`HubStore::set_tenant`] says
/// otherwise (the development hub's tenant).
pub const DEFAULT_TENANT: &str = "dev";
/// The metadata key of the tenant the log's events name.
pub const TENANT_KEY: &str = "tenant";
/// Most events one pruning transaction deletes.
pub const EVENTS_PRUNE_BATCH: u64 = 10_000;

/// The writer of a hub log: owns the backend, and is the only one to number
/// changes, so that sequence numbers are dense and never handed out twice.
#[derive(Debug)]
pub struct HubStore<B: Backend> {
    backend: B,
    head: u64,
    log_id: String,
    hub: ReplicaId,
    config: AuthorityConfig,
    prices: PriceBook,
    events: EventNumbering,
    /// Events older than this many ms are pruned (`None`: kept forever).
    events_retention_ms: Option<u64>,
    compaction: Compaction,
}

impl<B: Backend> HubStore<B> {
    /// Takes over `backend`: reads its head and its log id, making (and
    /// storing) a random one for a new log.
    pub fn open(mut backend: B) -> Result<Self, HubLogError> {
        let (head, log_id, tenant) = {
            let mut txn = backend.begin()?;
            let head = txn.head_seq()?;
            let log_id = match txn.meta(LOG_ID_KEY)? {
                Some(log_id) => log_id,
                None => {
                    let log_id = omnisync_core::ReplicaId::random().to_string();
                    txn.put_meta(LOG_ID_KEY, &log_id)?;
                    log_id
                }
            };
            let tenant = txn.meta(TENANT_KEY)?;
            txn.commit()?;
            (head, log_id, tenant)
        };
        let tenant = TenantId::new(tenant.as_deref().unwrap_or(DEFAULT_TENANT))
            .map_err(|error| storage_error(format!("the log's tenant: {error}")))?;
        Ok(Self {
            backend,
            head,
            hub: hub_replica(&log_id),
            log_id,
            config: AuthorityConfig::default(),
            prices: PriceBook::new(),
            events: EventNumbering::new(tenant),
            events_retention_ms: None,
            compaction: Compaction::off(),
        })
    }

    /// Sets the tenant (retail chain) the log's events name, and stores it
    /// with the log so tools writing to it later (imports) name it too.
    pub fn set_tenant(&mut self, tenant: TenantId) -> Result<(), HubLogError> {
        if &tenant == self.events.tenant() {
            return Ok(());
        }
        let mut txn = self.backend.begin()?;
        txn.put_meta(TENANT_KEY, tenant.as_str())?;
        txn.commit()?;
        let enabled = self.events.enabled();
        self.events = EventNumbering::new(tenant);
        self.events.set_enabled(enabled);
        Ok(())
    }

    /// Keeps events for `retention_ms` after they were written, or forever
    /// with `None` (the default). Pruning runs with compaction
    /// ([`HubLog::compact`]), a bounded batch at a time, and never deletes a
    /// store's newest event.
    pub fn set_events_retention(&mut self, retention_ms: Option<u64>) {
        self.events_retention_ms = retention_ms;
    }

    /// Deletes at most [`EVENTS_PRUNE_BATCH`] events older than the
    /// retention in one transaction, and records the highest position
    /// deleted (readers asking for older ones get
    /// [`HubLogError::EventsPruned`]). Returns how many were deleted.
    pub fn prune_events(&mut self, now_ms: u64) -> Result<u64, HubLogError> {
        let Some(retention_ms) = self.events_retention_ms else {
            return Ok(0);
        };
        let mut txn = self.backend.begin()?;
        let (deleted, highest) =
            txn.delete_events(now_ms.saturating_sub(retention_ms), EVENTS_PRUNE_BATCH)?;
        if deleted > 0 {
            let pruned = super::read::events_pruned(&mut txn)?.max(highest);
            txn.put_meta(super::read::EVENTS_PRUNED_KEY, &pruned.to_string())?;
            txn.commit()?;
        }
        Ok(deleted)
    }

    /// Turns the outbox on (the default) or off. Off, group commits write
    /// no events: for hubs nothing consumes events from, and to measure
    /// what the outbox costs.
    pub fn set_events(&mut self, enabled: bool) {
        self.events.set_enabled(enabled);
    }

    /// The tenant the log's events name.
    pub fn tenant(&self) -> &TenantId {
        self.events.tenant()
    }

    /// Turns compaction on with `policy`, or off with `None` (the default).
    pub fn set_compaction(&mut self, policy: Option<CompactPolicy>) {
        self.compaction.set_policy(policy);
    }

    /// The compaction policy, if compaction is on.
    pub fn compaction(&self) -> Option<CompactPolicy> {
        self.compaction.policy()
    }

    /// Sets the authority's settings (price tolerance).
    pub fn set_authority_config(&mut self, config: AuthorityConfig) {
        self.config = config;
    }

    /// The identity of this change log (random, made with the log).
    pub fn log_id(&self) -> &str {
        &self.log_id
    }

    /// The replica id the hub writes its own changes (imports, records) as.
    pub fn hub_replica(&self) -> ReplicaId {
        self.hub
    }

    /// The backend, for backend-specific reads (tests, simulations).
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, to switch backend-specific behaviour (test failpoints).
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Runs `work` in one write transaction and commits it if it succeeded;
    /// the head moves only then. On failure the price book may hold changes
    /// that rolled back: it is dropped and rebuilt from storage on demand.
    fn write<T>(
        &mut self,
        work: impl FnOnce(
            &mut dyn HubTxn,
            &mut u64,
            ReplicaId,
            AuthorityConfig,
        ) -> Result<T, HubLogError>,
    ) -> Result<T, HubLogError> {
        let result = {
            let mut txn = self.backend.begin()?;
            let head_before = catch_up(&mut self.head, &mut self.prices, &mut txn)?;
            let mut head = head_before;
            let result = self.events.catch_up(&mut txn).and_then(|()| {
                let mut shared =
                    SharedTxn::new(&mut txn, &mut self.prices, &mut self.events, head_before);
                work(&mut shared, &mut head, self.hub, self.config)
            });
            result.and_then(|value| {
                txn.commit()?;
                Ok((value, head))
            })
        };
        match result {
            Ok((value, head)) => {
                self.head = head;
                Ok(value)
            }
            Err(error) => {
                self.prices = PriceBook::new();
                self.events.forget();
                Err(error)
            }
        }
    }

    /// Decides intents the hub issues itself (import stock counts) in one
    /// durable transaction; returns the decisions.
    pub fn apply_hub_intents(
        &mut self,
        store: &StoreId,
        intents: &[Intent],
    ) -> Result<Vec<Decision>, HubLogError> {
        let now_ms = omnisync_core::now_ms();
        let issuer = DeviceId::new(HUB_ISSUER).map_err(storage_error)?;
        self.write(|txn, head, hub, config| {
            apply_hub_intents(txn, head, hub, config, store, &issuer, intents, now_ms)
        })
        .map(|(decisions, _)| decisions)
    }

    /// Appends changes made by the hub itself (catalog imports) in one
    /// durable transaction; returns the sequence number of the last one.
    pub fn append_hub_changes(
        &mut self,
        changes: Vec<(DocId, Vec<u8>)>,
    ) -> Result<u64, HubLogError> {
        let origin = self.hub;
        let mut touches_prices = false;
        let now_ms = omnisync_core::now_ms();
        let written = {
            let mut txn = self.backend.begin()?;
            let mut head = catch_up(&mut self.head, &mut self.prices, &mut txn)?;
            let write = || -> Result<(), HubLogError> {
                self.events.catch_up(&mut txn)?;
                let mut drafts: Vec<EventDraft> = Vec::new();
                for (doc, bytes) in changes {
                    head += 1;
                    touches_prices |= PriceBook::follows(&doc);
                    drafts.extend(events::from_document_change(&doc, &bytes));
                    txn.append(&RemoteChange {
                        hub_seq: head,
                        doc,
                        origin,
                        bytes,
                    })?;
                }
                self.events.write(&mut txn, drafts, now_ms)
            };
            write().and_then(|()| txn.commit()).map(|()| head)
        };
        let head = match written {
            Ok(head) => head,
            Err(error) => {
                self.events.forget();
                return Err(error);
            }
        };
        self.head = head;
        if touches_prices {
            // Cheaper than loading every imported prices document into it.
            self.prices = PriceBook::new();
        }
        Ok(head)
    }

    /// A page of the outbox as the writer's store has it now (see
    /// [`super::HubLogRead::events`]; for tools and tests that hold the
    /// writer rather than a reader).
    pub fn events(
        &mut self,
        after: u64,
        filter: &events::EventFilter,
        limit: usize,
    ) -> Result<events::EventPage, HubLogError> {
        let mut txn = self.backend.begin()?;
        let page = super::read::events_page(&mut txn, after, filter, limit);
        // Dropped without a commit: a read-only transaction.
        drop(txn);
        page
    }

    /// A document as the hub has it now, or `None` if it has no changes.
    pub fn load_doc(&mut self, doc: &DocId) -> Result<Option<automerge::Automerge>, HubLogError> {
        let mut txn = self.backend.begin()?;
        let head = txn.head_seq()?;
        let loaded = load_doc_at(&mut txn, doc, head)?;
        // Dropped without a commit: a read-only transaction.
        drop(txn);
        Ok((!loaded.get_heads().is_empty()).then_some(loaded))
    }

    /// Saves every document of `set` as a snapshot covering the current head,
    /// and records that point for the set. Returns the number of documents.
    pub fn snapshot_set(&mut self, set: &DocSetId) -> Result<usize, HubLogError> {
        let mut txn = self.backend.begin()?;
        let covers = txn.head_seq()?;
        let docs = txn.set_docs(set)?;
        for doc in &docs {
            // A record's snapshot is its newest version; a document's is its save.
            let bytes = if is_record_doc(doc) {
                txn.latest_change(doc, covers)?
                    .ok_or_else(|| storage_error(format!("record {doc} has no change")))?
            } else {
                load_doc_at(&mut txn, doc, covers)?.save()
            };
            txn.put_snapshot(doc, covers, &bytes)?;
        }
        txn.put_set_snapshot(set, covers)?;
        txn.commit()?;
        Ok(docs.len())
    }
}

/// The committed head as `txn` sees it; when another writer moved it since
/// this one's last commit (`known`), the price book is dropped (see the
/// module doc) and `known` follows.
fn catch_up(
    known: &mut u64,
    prices: &mut PriceBook,
    txn: &mut impl LogRows,
) -> Result<u64, HubLogError> {
    let head = txn.head_seq()?;
    if head != *known {
        *prices = PriceBook::new();
        *known = head;
    }
    Ok(head)
}

impl<B: Backend> HubLog for HubStore<B> {
    fn apply(&mut self, ops: Vec<IncomingOp>) -> Result<AppliedBatch, HubLogError> {
        let now_ms = omnisync_core::now_ms();
        self.write(|txn, head, hub, config| apply_ops(txn, head, hub, config, ops, now_ms))
    }

    fn maintain(&mut self, now_ms: u64) -> Result<CommittedChanges, HubLogError> {
        self.write(|txn, head, hub, config| maintain_ledger(txn, head, hub, config, now_ms))
    }

    fn head_seq(&self) -> Result<u64, HubLogError> {
        Ok(self.head)
    }

    fn compact(&mut self, now_ms: u64) -> Result<CompactStep, HubLogError> {
        let pruned = self.prune_events(now_ms)?;
        let pruning = pruned >= EVENTS_PRUNE_BATCH;
        if self.compaction.policy().is_none() {
            return Ok(CompactStep {
                more: pruning,
                ..CompactStep::default()
            });
        }
        let planned = {
            let mut txn = self.backend.begin()?;
            let planned = self.compaction.step(&mut txn, self.head, now_ms);
            planned.and_then(|planned| {
                txn.commit()?;
                Ok(planned)
            })
        };
        match planned {
            Ok(planned) => {
                let mut step = self.compaction.commit_step(planned);
                step.more |= pruning;
                Ok(step)
            }
            Err(error) => {
                self.compaction.fail_step();
                Err(error)
            }
        }
    }
}
