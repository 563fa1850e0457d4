//! The hub's durable change log as a trait, with an in-memory backend.
//!
//! The hub runtime and the deterministic simulation both talk to storage
//! through [`HubLog`]. The SQLite backend lives in the hub crate; the memory
//! backend here serves the simulation. [`conformance`] is one test suite run
//! against every backend, so they cannot drift apart.

use std::collections::{BTreeMap, HashMap};

use crate::hub_session::{ChangePage, CommittedChanges, IncomingOp};
use crate::ledger::authority::{
    AuthorityConfig, LedgerChanges, LedgerSource, Reservation, UnitOfWork,
};
use crate::ledger::price_book::PriceBook;
use crate::ledger::sku_ledger::SkuLedger;
use omnisync_core::protocol::message::{Ack, AckOutcome, OpBody, RemoteChange};
use omnisync_core::vocab::goods::{Channel, Sku};
use omnisync_core::vocab::ids::{DocSetId, OpId, ReplicaId, StoreId};
use omnisync_core::vocab::intent::{Decision, Intent};
use omnisync_core::vocab::record::OrderRecord;

/// Why storage failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubLogError {
    /// The database failed.
    #[error("hub storage: {0}")]
    Storage(String),
}

/// What one group commit produced.
#[derive(Debug, Default)]
pub struct AppliedBatch {
    /// One ack per incoming op, in the same order.
    pub acks: Vec<Ack>,
    /// The changes newly stored (and records published), for fan-out.
    pub committed: CommittedChanges,
    /// Ops applied for the first time.
    pub stored: usize,
    /// Ops refused for the first time.
    pub rejected: usize,
    /// Intents decided for the first time.
    pub decided: usize,
    /// Ops answered with an earlier outcome (retries and duplicates).
    pub duplicates: usize,
}

/// Durable storage of ops and the numbered change log.
pub trait HubLog {
    /// Applies ops in one durable transaction. Each op id is applied once: a
    /// repeated id (in this batch or from before) gets its original answer and
    /// changes nothing. Intents are decided in op order in the same
    /// transaction. Returns after the commit is durable.
    fn apply(&mut self, ops: Vec<IncomingOp>) -> Result<AppliedBatch, HubLogError>;

    /// Periodic work of the authority (recalling idle allowances), in one
    /// durable transaction; returns the records it published.
    fn maintain(&mut self, now_ms: u64) -> Result<CommittedChanges, HubLogError>;

    /// The highest sequence number given so far.
    fn head_seq(&self) -> Result<u64, HubLogError>;
}

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
            },
        };
        txn.put_outcome(&id, &outcome, now_ms)?;
        decided.insert(id, outcome.clone());
        batch.acks.push(Ack { op: id, outcome });
    }
    publish(txn, head, hub_replica, work, &mut batch.committed)?;
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
    device: &omnisync_core::vocab::ids::DeviceId,
    intents: &[Intent],
    now_ms: u64,
) -> Result<(Vec<Decision>, CommittedChanges), HubLogError> {
    let mut work = UnitOfWork::new(config);
    let mut decisions = Vec::with_capacity(intents.len());
    for intent in intents {
        decisions.push(work.decide(txn, store, device, intent, now_ms)?);
    }
    let mut committed = CommittedChanges::default();
    publish(txn, head, hub_replica, work, &mut committed)?;
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
    publish(txn, head, hub_replica, work, &mut committed)?;
    Ok(committed)
}

fn publish(
    txn: &mut dyn HubTxn,
    head: &mut u64,
    hub_replica: ReplicaId,
    work: UnitOfWork,
    committed: &mut CommittedChanges,
) -> Result<(), HubLogError> {
    let changes = work.finish();
    if changes.is_empty() {
        return Ok(());
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

/// Reads of the hub's log; safe to call from many threads while a
/// [`HubLog`] writes.
pub trait HubLogRead {
    /// Reads changes of `set` with a sequence number above `cursor`: at most
    /// `len_max` changes, stopping early once `bytes_target` is passed.
    fn changes_since(
        &self,
        set: &DocSetId,
        cursor: u64,
        len_max: usize,
        bytes_target: usize,
    ) -> Result<ChangePage, HubLogError>;

    /// The next page for a catching-up subscription. Backends with snapshots
    /// send a device far behind the saved documents of the set instead of its
    /// whole history: while `resume` is set (or the device starts far behind
    /// the set's snapshot point) the page holds snapshots, documents after
    /// `resume` in id order, and the cursor does not move until the last one.
    fn catch_up_page(
        &self,
        set: &DocSetId,
        cursor: u64,
        resume: Option<&omnisync_core::vocab::ids::DocId>,
        len_max: usize,
        bytes_target: usize,
    ) -> Result<ChangePage, HubLogError> {
        let _ = resume;
        self.changes_since(set, cursor, len_max, bytes_target)
    }

    /// Every stored change of one document, in order (for admin reads).
    fn doc_changes(
        &self,
        doc: &omnisync_core::vocab::ids::DocId,
    ) -> Result<Vec<Vec<u8>>, HubLogError>;

    /// The stored answer for an op, if it was ever applied or rejected.
    fn outcome(&self, op: &OpId) -> Result<Option<AckOutcome>, HubLogError>;
}

/// The replica id a memory log publishes its records as.
pub const MEMORY_HUB_REPLICA: ReplicaId = ReplicaId([0xee; 16]);

/// A hub log kept in memory, for simulations and tests.
#[derive(Debug, Default)]
pub struct MemoryHubLog {
    state: MemoryState,
    head: u64,
    config: AuthorityConfig,
}

#[derive(Debug, Default)]
struct MemoryState {
    outcomes: HashMap<OpId, AckOutcome>,
    by_set: BTreeMap<DocSetId, Vec<RemoteChange>>,
    skus: HashMap<(StoreId, Sku), SkuLedger>,
    orders: HashMap<(StoreId, String), OrderRecord>,
    keys: HashMap<(StoreId, String), Decision>,
    reservations: HashMap<(StoreId, String), Reservation>,
    order_nos: HashMap<StoreId, u64>,
    prices: PriceBook,
}

impl MemoryHubLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty log whose authority uses `config`.
    pub fn with_config(config: AuthorityConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// Every change of a set, for convergence checks.
    pub fn all_changes(&self, set: &DocSetId) -> &[RemoteChange] {
        self.state.by_set.get(set).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Every ledger entry, for invariant checks.
    pub fn ledgers(&self) -> impl Iterator<Item = (&(StoreId, Sku), &SkuLedger)> {
        self.state.skus.iter()
    }

    /// Every decided order, for invariant checks.
    pub fn orders(&self) -> impl Iterator<Item = &OrderRecord> {
        self.state.orders.values()
    }
}

impl LedgerSource for MemoryState {
    fn sku(&mut self, store: &StoreId, sku: &Sku) -> Result<Option<SkuLedger>, HubLogError> {
        Ok(self.skus.get(&(store.clone(), sku.clone())).cloned())
    }

    fn order(
        &mut self,
        store: &StoreId,
        order_id: &str,
    ) -> Result<Option<OrderRecord>, HubLogError> {
        Ok(self
            .orders
            .get(&(store.clone(), order_id.to_owned()))
            .cloned())
    }

    fn key(&mut self, store: &StoreId, key: &str) -> Result<Option<Decision>, HubLogError> {
        Ok(self.keys.get(&(store.clone(), key.to_owned())).cloned())
    }

    fn reservation(
        &mut self,
        store: &StoreId,
        key: &str,
    ) -> Result<Option<Reservation>, HubLogError> {
        Ok(self
            .reservations
            .get(&(store.clone(), key.to_owned()))
            .cloned())
    }

    fn last_order_no(&mut self, store: &StoreId) -> Result<u64, HubLogError> {
        Ok(self.order_nos.get(store).copied().unwrap_or(0))
    }

    fn price(
        &mut self,
        store: &StoreId,
        sku: &Sku,
        channel: Channel,
        at_ms: u64,
    ) -> Result<Option<i64>, HubLogError> {
        let by_set = &self.by_set;
        Ok(self.prices.price(store, sku, channel, at_ms, |doc| {
            load_memory_doc(by_set, doc)
        }))
    }

    fn skus_with_rights(&mut self) -> Result<Vec<(StoreId, Sku)>, HubLogError> {
        let mut keys: Vec<(StoreId, Sku)> = self
            .skus
            .iter()
            .filter(|(_, ledger)| ledger.held() > 0)
            .map(|(key, _)| key.clone())
            .collect();
        keys.sort();
        Ok(keys)
    }
}

fn load_memory_doc(
    by_set: &BTreeMap<DocSetId, Vec<RemoteChange>>,
    doc: &omnisync_core::vocab::ids::DocId,
) -> Option<automerge::Automerge> {
    let mut loaded = automerge::Automerge::new();
    for change in by_set.get(&doc.set())?.iter().filter(|c| &c.doc == doc) {
        loaded.load_incremental(&change.bytes).ok()?;
    }
    Some(loaded)
}

impl HubTxn for MemoryState {
    fn find_outcome(&mut self, op: &OpId) -> Result<Option<AckOutcome>, HubLogError> {
        Ok(self.outcomes.get(op).cloned())
    }

    fn put_outcome(
        &mut self,
        op: &OpId,
        outcome: &AckOutcome,
        _now_ms: u64,
    ) -> Result<(), HubLogError> {
        self.outcomes.insert(*op, outcome.clone());
        Ok(())
    }

    fn append(&mut self, change: &RemoteChange) -> Result<(), HubLogError> {
        if PriceBook::follows(&change.doc) {
            let by_set = &self.by_set;
            self.prices.note_change(&change.doc, &change.bytes, || {
                load_memory_doc(by_set, &change.doc)
            });
        }
        self.by_set
            .entry(change.doc.set())
            .or_default()
            .push(change.clone());
        Ok(())
    }

    fn persist_ledger(&mut self, changes: &LedgerChanges) -> Result<(), HubLogError> {
        for (store, sku, ledger) in &changes.skus {
            self.skus
                .insert((store.clone(), sku.clone()), ledger.clone());
        }
        for (store, order) in &changes.orders {
            self.orders
                .insert((store.clone(), order.order_id.to_string()), order.clone());
        }
        for (store, key, decision) in &changes.keys {
            self.keys
                .insert((store.clone(), key.clone()), decision.clone());
        }
        for (store, key, reservation) in &changes.reservations {
            self.reservations
                .insert((store.clone(), key.clone()), reservation.clone());
        }
        for (store, last) in &changes.order_nos {
            self.order_nos.insert(store.clone(), *last);
        }
        Ok(())
    }
}

impl HubLog for MemoryHubLog {
    fn apply(&mut self, ops: Vec<IncomingOp>) -> Result<AppliedBatch, HubLogError> {
        let now_ms = omnisync_core::now_ms();
        apply_ops(
            &mut self.state,
            &mut self.head,
            MEMORY_HUB_REPLICA,
            self.config,
            ops,
            now_ms,
        )
    }

    fn maintain(&mut self, now_ms: u64) -> Result<CommittedChanges, HubLogError> {
        maintain_ledger(
            &mut self.state,
            &mut self.head,
            MEMORY_HUB_REPLICA,
            self.config,
            now_ms,
        )
    }

    fn head_seq(&self) -> Result<u64, HubLogError> {
        Ok(self.head)
    }
}

impl HubLogRead for MemoryHubLog {
    fn changes_since(
        &self,
        set: &DocSetId,
        cursor: u64,
        len_max: usize,
        bytes_target: usize,
    ) -> Result<ChangePage, HubLogError> {
        let all = self.all_changes(set);
        let start = all.partition_point(|change| change.hub_seq <= cursor);
        let mut changes = Vec::new();
        let mut bytes = 0;
        for change in &all[start..] {
            if changes.len() >= len_max || (bytes >= bytes_target && !changes.is_empty()) {
                break;
            }
            bytes += change.bytes.len();
            changes.push(change.clone());
        }
        let caught_up = start + changes.len() == all.len();
        let cursor = if caught_up {
            self.head.max(cursor)
        } else {
            changes.last().map_or(cursor, |change| change.hub_seq)
        };
        Ok(ChangePage {
            changes,
            cursor,
            caught_up,
            resume: None,
        })
    }

    fn doc_changes(
        &self,
        doc: &omnisync_core::vocab::ids::DocId,
    ) -> Result<Vec<Vec<u8>>, HubLogError> {
        Ok(self
            .all_changes(&doc.set())
            .iter()
            .filter(|change| &change.doc == doc)
            .map(|change| change.bytes.clone())
            .collect())
    }

    fn outcome(&self, op: &OpId) -> Result<Option<AckOutcome>, HubLogError> {
        Ok(self.state.outcomes.get(op).cloned())
    }
}

/// One test suite for every [`HubLog`] backend. Each function takes a fresh,
/// empty log and panics on a violated property.
#[cfg(feature = "conformance")]
pub mod conformance {
    use super::*;
    use crate::hub_session::Verdict;
    use omnisync_core::protocol::message::{DocChange, Op, RejectCode};
    use omnisync_core::vocab::ids::{DocId, ReplicaId};

    fn op(replica: u8, seq: u64, doc: &str, bytes: &[u8]) -> IncomingOp {
        IncomingOp {
            op: Op {
                id: OpId {
                    replica: ReplicaId([replica; 16]),
                    seq,
                },
                created_ms: 0,
                body: OpBody::Changes(vec![DocChange {
                    doc: DocId::new(doc).expect("test doc id"),
                    bytes: bytes.to_vec(),
                }]),
            },
            device: omnisync_core::vocab::ids::DeviceId::new("till-1").expect("device id"),
            store: StoreId::new("a").expect("store id"),
            verdict: Verdict::Accept,
        }
    }

    fn intent(replica: u8, seq: u64, intent: omnisync_core::vocab::intent::Intent) -> IncomingOp {
        let mut incoming = op(replica, seq, "store.a/x", b"");
        incoming.op.body = OpBody::Intent(intent);
        incoming
    }

    /// Runs every property against logs made by `fresh`.
    pub fn run_all<L: HubLog + HubLogRead>(mut fresh: impl FnMut() -> L) {
        intents_are_decided_once_and_published(fresh());
        duplicates_get_the_original_answer(fresh());
        rejections_are_remembered(fresh());
        pages_are_ordered_bounded_and_per_set(fresh());
    }

    /// Intents are decided in op order, once: a retry gets the stored
    /// decision, the ledger never sells what it does not hold, and the stock
    /// is published as a record in the store's set.
    pub fn intents_are_decided_once_and_published<L: HubLog + HubLogRead>(mut log: L) {
        use omnisync_core::vocab::goods::{Channel, Currency, Sku};
        use omnisync_core::vocab::intent::{
            CheckoutIntent, Decision, Intent, IntentLine, LineSource, Refusal, StockCommand,
        };
        use omnisync_core::vocab::record::Record;
        let sku = Sku::new("tea").expect("sku");
        let checkout = |order: &str| {
            Intent::Checkout(CheckoutIntent {
                order_id: order.parse().expect("a valid order id"),
                idempotency_key: order.parse().expect("a valid key"),
                lines: vec![IntentLine {
                    sku: sku.clone(),
                    quantity: 2,
                    unit_price_minor: 100,
                    source: LineSource::Hub,
                }],
                currency: Currency::new("EUR").expect("currency"),
                payment_ref: "card".parse().expect("a valid reference"),
                channel: Channel::Pos,
            })
        };
        let receive = Intent::Stock(StockCommand::Receive {
            key: "delivery-1".parse().expect("a valid key"),
            sku: sku.clone(),
            quantity: 3,
        });
        let first = log
            .apply(vec![
                intent(4, 1, receive),
                intent(4, 2, checkout("o-1")),
                intent(4, 3, checkout("o-2")),
            ])
            .expect("apply");
        let decisions: Vec<AckOutcome> = first.acks.iter().map(|ack| ack.outcome.clone()).collect();
        assert_eq!(
            decisions[1],
            AckOutcome::Decided(Decision::Confirmed { order_no: 1 })
        );
        assert!(matches!(
            &decisions[2],
            AckOutcome::Decided(Decision::Refused(Refusal::OutOfStock { available: 1, .. }))
        ));
        assert_eq!(first.decided, 3);
        let retry = log
            .apply(vec![intent(4, 2, checkout("o-1"))])
            .expect("apply");
        assert_eq!(retry.acks[0].outcome, decisions[1]);
        assert_eq!(retry.duplicates, 1);
        let page = log
            .changes_since(&DocSetId::new("store.a").expect("set"), 0, 100, 1 << 20)
            .expect("page");
        let stock = page
            .changes
            .iter()
            .rev()
            .find(|change| change.doc.as_str() == "store.a/rec/stock/tea")
            .expect("a stock record");
        match Record::decode(&stock.bytes).expect("record") {
            Record::Stock(record) => assert_eq!((record.on_hand, record.free), (1, 1)),
            other => panic!("expected a stock record, got {other:?}"),
        }
    }

    /// A repeated op id changes nothing and gets its original answer.
    pub fn duplicates_get_the_original_answer<L: HubLog + HubLogRead>(mut log: L) {
        let first = log
            .apply(vec![op(1, 1, "store.a/x", b"one")])
            .expect("apply");
        let again = log
            .apply(vec![
                op(1, 1, "store.a/x", b"one"),
                op(1, 1, "store.a/x", b"one"),
            ])
            .expect("apply");
        assert_eq!(again.acks[0], first.acks[0]);
        assert_eq!(again.acks[1], first.acks[0], "duplicate inside one batch");
        assert!(again.committed.by_set.is_empty());
        assert_eq!((first.stored, again.stored, again.duplicates), (1, 0, 2));
        let page = log
            .changes_since(&DocSetId::new("store.a").unwrap(), 0, 100, 1 << 20)
            .unwrap();
        assert_eq!(page.changes.len(), 1);
        assert_eq!(log.head_seq().unwrap(), 1);
    }

    /// A rejected op stores nothing, and a retry gets the same rejection even
    /// if the retry would now be accepted.
    pub fn rejections_are_remembered<L: HubLog + HubLogRead>(mut log: L) {
        let mut rejected = op(2, 1, "store.a/x", b"bad");
        rejected.verdict = Verdict::Reject {
            code: RejectCode::Forbidden,
            detail: "no".into(),
        };
        let first = log.apply(vec![rejected]).unwrap();
        assert!(matches!(
            first.acks[0].outcome,
            AckOutcome::Rejected {
                code: RejectCode::Forbidden,
                ..
            }
        ));
        let retry = log.apply(vec![op(2, 1, "store.a/x", b"bad")]).unwrap();
        assert_eq!(retry.acks[0], first.acks[0]);
        assert_eq!(log.head_seq().unwrap(), 0);
        assert!(log.outcome(&first.acks[0].op).unwrap().is_some());
    }

    /// Pages respect the cursor, the set, the length limit, and end at the head.
    pub fn pages_are_ordered_bounded_and_per_set<L: HubLog + HubLogRead>(mut log: L) {
        let mut ops = Vec::new();
        for seq in 1..=10 {
            let doc = if seq % 2 == 0 {
                "store.a/x"
            } else {
                "store.b/y"
            };
            ops.push(op(3, seq, doc, &[seq as u8]));
        }
        log.apply(ops).unwrap();
        let set_a = DocSetId::new("store.a").unwrap();
        let page = log.changes_since(&set_a, 0, 3, 1 << 20).unwrap();
        let seqs: Vec<u64> = page.changes.iter().map(|c| c.hub_seq).collect();
        assert_eq!(seqs, vec![2, 4, 6]);
        assert!(!page.caught_up);
        assert_eq!(page.cursor, 6);
        let rest = log
            .changes_since(&set_a, page.cursor, 100, 1 << 20)
            .unwrap();
        let seqs: Vec<u64> = rest.changes.iter().map(|c| c.hub_seq).collect();
        assert_eq!(seqs, vec![8, 10]);
        assert!(rest.caught_up);
        assert_eq!(rest.cursor, 10);
        let none = log
            .changes_since(&DocSetId::new("store.c").unwrap(), 0, 100, 1 << 20)
            .unwrap();
        assert!(none.changes.is_empty() && none.caught_up);
        assert_eq!(none.cursor, 10, "an empty set is caught up to the head");
        assert!(rest.changes.iter().all(|c| c.origin == ReplicaId([3; 16])));
        let doc = DocId::new("store.a/x").unwrap();
        assert_eq!(
            log.doc_changes(&doc).unwrap(),
            vec![vec![2], vec![4], vec![6], vec![8], vec![10]]
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_log_conforms() {
        super::conformance::run_all(super::MemoryHubLog::new);
    }
}
