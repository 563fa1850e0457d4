//! One test suite for every hub log backend (feature `conformance`). Each
//! property takes a fresh, empty log and panics when it is violated; a
//! backend's tests call [`run_all`] (see [`super::contract`] for how to add
//! a backend).

pub mod failing;

use super::contract::Backend;
use super::memory::MemoryBackend;
use super::store::HubStore;
use super::*;
use crate::hub_session::Verdict;
use omnisync_core::protocol::message::OpBody;
use omnisync_core::protocol::message::{DocChange, Op, RejectCode};
use omnisync_core::vocab::ids::StoreId;
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

/// A log under test: the writer and a reader of the same store.
pub trait Conformant: HubLog + HubLogRead {
    /// The backend under test.
    type Backend: Backend;
    /// The writer, for the import writes (hub changes, hub intents, snapshots).
    fn store(&mut self) -> &mut HubStore<Self::Backend>;
}

/// A backend's writer and a reader of the same store, tested together, with
/// whatever must outlive them (a temporary directory, a test database
/// cluster) in `keep`. The SQLite and PostgreSQL tests use it as their log.
pub struct Paired<B: Backend, R, K> {
    /// The writer.
    pub writer: HubStore<B>,
    /// A reader of the same store.
    pub reader: R,
    /// Dropped with the pair.
    pub keep: K,
}

impl<B: Backend, R, K> HubLog for Paired<B, R, K> {
    fn apply(&mut self, ops: Vec<IncomingOp>) -> Result<AppliedBatch, HubLogError> {
        self.writer.apply(ops)
    }
    fn maintain(&mut self, now_ms: u64) -> Result<CommittedChanges, HubLogError> {
        self.writer.maintain(now_ms)
    }
    fn compact(&mut self, now_ms: u64) -> Result<CompactStep, HubLogError> {
        self.writer.compact(now_ms)
    }
    fn head_seq(&self) -> Result<u64, HubLogError> {
        self.writer.head_seq()
    }
}

impl<B: Backend, R: HubLogRead, K> HubLogRead for Paired<B, R, K> {
    fn changes_since(
        &self,
        set: &DocSetId,
        cursor: u64,
        len_max: usize,
        bytes_target: usize,
    ) -> Result<ChangePage, HubLogError> {
        self.reader
            .changes_since(set, cursor, len_max, bytes_target)
    }
    fn catch_up_page(
        &self,
        set: &DocSetId,
        cursor: u64,
        resume: Option<&DocId>,
        len_max: usize,
        bytes_target: usize,
    ) -> Result<ChangePage, HubLogError> {
        self.reader
            .catch_up_page(set, cursor, resume, len_max, bytes_target)
    }
    fn doc_changes(&self, doc: &DocId) -> Result<Vec<Vec<u8>>, HubLogError> {
        self.reader.doc_changes(doc)
    }
    fn outcome(&self, op: &OpId) -> Result<Option<AckOutcome>, HubLogError> {
        self.reader.outcome(op)
    }
    fn changes_between(&self, after: u64, upto: u64) -> Result<CommittedChanges, HubLogError> {
        self.reader.changes_between(after, upto)
    }
    fn head(&self) -> Result<u64, HubLogError> {
        self.reader.head()
    }
    fn events(
        &self,
        after: u64,
        filter: &crate::events::EventFilter,
        limit: usize,
    ) -> Result<crate::events::EventPage, HubLogError> {
        self.reader.events(after, filter, limit)
    }
}

impl<B: Backend, R: HubLogRead, K> Conformant for Paired<B, R, K> {
    type Backend = B;
    fn store(&mut self) -> &mut HubStore<B> {
        &mut self.writer
    }
}

impl Conformant for HubStore<MemoryBackend> {
    type Backend = MemoryBackend;
    fn store(&mut self) -> &mut HubStore<MemoryBackend> {
        self
    }
}

/// Runs every property against logs made by `fresh`.
pub fn run_all<L: Conformant>(mut fresh: impl FnMut() -> L) {
    intents_are_decided_once_and_published(fresh());
    duplicates_get_the_original_answer(fresh());
    rejections_are_remembered(fresh());
    pages_are_ordered_bounded_and_per_set(fresh());
    pages_are_cut_by_bytes(fresh());
    import_writes_are_the_hubs(fresh());
    a_far_behind_cursor_gets_snapshots_then_the_rest(fresh());
    compaction_keeps_every_document_and_record(fresh());
    compaction_waits_for_age_and_amount(fresh());
    compaction_never_drops_changes_waiting_for_dependencies(fresh());
    changes_between_lists_every_set_in_order(fresh());
    events_are_written_with_their_cause(fresh());
    old_events_are_pruned_but_numbering_goes_on(fresh());
}

/// Pruning deletes events older than the retention, except each store's
/// newest; a reader asking for pruned positions is told where to resume,
/// and numbering (overall and per store) goes on where it was.
pub fn old_events_are_pruned_but_numbering_goes_on<L: Conformant>(mut log: L) {
    use crate::events::{EventFilter, EventType};
    use omnisync_core::vocab::goods::Sku;
    use omnisync_core::vocab::intent::{Intent, StockCommand};
    let receive = |store: &str, n: u64| {
        let mut op = intent(
            9,
            n,
            Intent::Stock(StockCommand::Receive {
                key: format!("delivery-{n}").parse().unwrap(),
                sku: Sku::new("tea").expect("sku"),
                quantity: 1,
            }),
        );
        op.store = StoreId::new(store).expect("store");
        op
    };
    // One commit each: a commit writes one stock event per SKU.
    for n in 1..=5 {
        log.apply(vec![receive(if n <= 3 { "a" } else { "b" }, n)])
            .expect("apply");
    }
    let all = EventFilter::default();
    let before = log.events(0, &all, 100).expect("events");
    assert_eq!(before.events.len(), 5);
    let now = omnisync_core::now_ms();
    log.store().set_events_retention(Some(1_000));
    assert_eq!(log.store().prune_events(now).expect("nothing old yet"), 0);
    let deleted = log.store().prune_events(now + 60_000).expect("prune");
    assert_eq!(deleted, 3, "all but the newest of a (3) and of b (5)");
    match log.events(0, &all, 100) {
        Err(HubLogError::EventsPruned {
            after: 0,
            pruned: 4,
        }) => {}
        other => panic!("expected EventsPruned up to 4, got {other:?}"),
    }
    let kept = log.events(4, &all, 100).expect("after the pruned point");
    assert_eq!(
        kept.events
            .iter()
            .map(|event| event.seq)
            .collect::<Vec<_>>(),
        vec![5]
    );
    log.apply(vec![receive("a", 6)]).expect("apply");
    let next = log.events(5, &all, 100).expect("new");
    assert_eq!(next.events.len(), 1);
    assert_eq!(next.events[0].seq, 6, "numbering goes on");
    assert_eq!(next.events[0].store_seq, 4, "and per store");
    assert_eq!(next.events[0].kind, EventType::StockLevelChanged);
}

/// A group commit writes the events of what it decided and stored, in the
/// same transaction: dense outbox positions, dense positions per store,
/// typed payloads; readers page and filter them.
pub fn events_are_written_with_their_cause<L: Conformant>(mut log: L) {
    use crate::events::{EventFilter, EventType, OrderConfirmedData, StockLevelData};
    use omnisync_core::vocab::goods::{Channel, Currency, Sku};
    use omnisync_core::vocab::intent::{
        CheckoutIntent, Intent, IntentLine, LineSource, StockCommand,
    };
    use omnisync_core::vocab::layout;
    let sku = Sku::new("tea").expect("sku");
    let checkout = |order: &str, quantity| {
        Intent::Checkout(CheckoutIntent {
            order_id: order.parse().unwrap(),
            idempotency_key: order.parse().unwrap(),
            lines: vec![IntentLine {
                sku: sku.clone(),
                quantity,
                unit_price_minor: 100,
                source: LineSource::Hub,
            }],
            currency: Currency::new("EUR").expect("currency"),
            payment_ref: "card".parse().unwrap(),
            channel: Channel::Pos,
        })
    };
    let receive = |key: &str| {
        Intent::Stock(StockCommand::Receive {
            key: key.parse().unwrap(),
            sku: sku.clone(),
            quantity: 3,
        })
    };
    assert_eq!(
        log.events(0, &EventFilter::default(), 10)
            .expect("events")
            .head,
        0
    );
    let mut in_b = intent(4, 4, receive("delivery-b"));
    in_b.store = StoreId::new("b").expect("store");
    log.apply(vec![
        intent(4, 1, receive("delivery-a")),
        intent(4, 2, checkout("o-1", 2)),
        intent(4, 3, checkout("o-2", 2)),
        in_b,
    ])
    .expect("apply");
    // A retry changes nothing and writes no event.
    log.apply(vec![intent(4, 2, checkout("o-1", 2))])
        .expect("retry");
    // Product fields written by a catalog change.
    let catalog = layout::catalog_doc(&StoreId::new("a").expect("store"), &sku);
    let mut doc = automerge::Automerge::new();
    let change = {
        use automerge::transaction::Transactable as _;
        let mut tx = doc.transaction();
        tx.put(automerge::ROOT, "tea/name", "Green tea")
            .expect("put");
        tx.commit();
        doc.get_last_local_change()
            .expect("change")
            .raw_bytes()
            .to_vec()
    };
    log.store()
        .append_hub_changes(vec![(catalog, change)])
        .expect("import");

    let page = log.events(0, &EventFilter::default(), 100).expect("events");
    let seqs: Vec<u64> = page.events.iter().map(|event| event.seq).collect();
    assert_eq!(
        seqs,
        (1..=page.events.len() as u64).collect::<Vec<_>>(),
        "dense positions"
    );
    assert_eq!(page.head, page.events.len() as u64);
    assert_eq!(page.next, page.head);
    for store in ["a", "b"] {
        let store_seqs: Vec<u64> = page
            .events
            .iter()
            .filter(|event| event.store.as_str() == store)
            .map(|event| event.store_seq)
            .collect();
        assert_eq!(
            store_seqs,
            (1..=store_seqs.len() as u64).collect::<Vec<_>>(),
            "dense positions in store {store}"
        );
    }
    let kinds = |store: &str| -> Vec<EventType> {
        page.events
            .iter()
            .filter(|event| event.store.as_str() == store)
            .map(|event| event.kind)
            .collect()
    };
    let a = kinds("a");
    assert_eq!(
        a.iter()
            .filter(|kind| **kind == EventType::OrderConfirmed)
            .count(),
        1,
        "{a:?}"
    );
    assert_eq!(
        a.iter()
            .filter(|kind| **kind == EventType::OrderRefused)
            .count(),
        1,
        "{a:?}"
    );
    assert_eq!(a.last(), Some(&EventType::ProductChanged), "{a:?}");
    assert!(a.contains(&EventType::StockLevelChanged), "{a:?}");
    assert_eq!(kinds("b"), vec![EventType::StockLevelChanged]);
    let confirmed = page
        .events
        .iter()
        .find(|event| event.kind == EventType::OrderConfirmed)
        .expect("confirmed");
    let order: OrderConfirmedData =
        serde_json::from_value(confirmed.data.clone()).expect("typed payload");
    assert_eq!(
        (order.order_id.as_str(), order.order_no, order.total_minor),
        ("o-1", 1, 200)
    );
    let last_stock = page
        .events
        .iter()
        .rfind(|event| event.kind == EventType::StockLevelChanged && event.store.as_str() == "a")
        .expect("stock");
    let level: StockLevelData = serde_json::from_value(last_stock.data.clone()).expect("stock");
    assert_eq!(level.on_hand, 1, "3 received, 2 sold");
    assert_eq!(confirmed.tenant.as_str(), log.store().tenant().as_str());

    // Paging: a full page ends at its last event; the filter skips the rest.
    let first = log.events(0, &EventFilter::default(), 2).expect("page");
    assert_eq!(first.events.len(), 2);
    assert_eq!(first.next, 2);
    let only_b = EventFilter {
        stores: vec![StoreId::new("b").expect("store")],
        types: Vec::new(),
    };
    let b = log.events(0, &only_b, 100).expect("store b");
    assert_eq!(b.events.len(), 1);
    assert_eq!(b.next, page.head, "every position was looked at");
    let refused = EventFilter {
        stores: Vec::new(),
        types: vec![EventType::OrderRefused],
    };
    let r = log.events(0, &refused, 100).expect("refused");
    assert_eq!(r.events.len(), 1);
    assert_eq!(r.events[0].kind, EventType::OrderRefused);
    let rest = log
        .events(first.next, &EventFilter::default(), 100)
        .expect("rest");
    assert_eq!(rest.events.first().map(|event| event.seq), Some(3));
    assert_eq!(rest.events.len() + 2, page.events.len());
    assert!(
        log.events(page.head, &EventFilter::default(), 100)
            .expect("none")
            .events
            .is_empty()
    );
}

/// The changes of every set in a sequence range, grouped by set, each set's
/// in order, and the head as readers see it.
pub fn changes_between_lists_every_set_in_order<L: HubLog + HubLogRead>(mut log: L) {
    let ops = (1..=6)
        .map(|seq| {
            let doc = if seq % 3 == 0 {
                "store.b/y"
            } else {
                "store.a/x"
            };
            op(8, seq, doc, &[seq as u8])
        })
        .collect();
    log.apply(ops).expect("apply");
    assert_eq!(log.head().expect("head"), 6);
    let committed = log.changes_between(1, 5).expect("changes between");
    let seqs = |set: &str| -> Vec<u64> {
        committed
            .by_set
            .get(&DocSetId::new(set).expect("set"))
            .map(|changes| changes.iter().map(|change| change.hub_seq).collect())
            .unwrap_or_default()
    };
    assert_eq!(seqs("store.a"), vec![2, 4, 5]);
    assert_eq!(seqs("store.b"), vec![3]);
    assert_eq!(committed.by_set.len(), 2);
    let all = log.changes_between(0, u64::MAX).expect("everything");
    assert_eq!(all.by_set.values().map(Vec::len).sum::<usize>(), 6);
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
            order_id: order.parse().unwrap(),
            idempotency_key: order.parse().unwrap(),
            lines: vec![IntentLine {
                sku: sku.clone(),
                quantity: 2,
                unit_price_minor: 100,
                source: LineSource::Hub,
            }],
            currency: Currency::new("EUR").expect("currency"),
            payment_ref: "card".parse().unwrap(),
            channel: Channel::Pos,
        })
    };
    let receive = Intent::Stock(StockCommand::Receive {
        key: "delivery-1".parse().unwrap(),
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

/// A page stops once its bytes pass the target, but never comes back empty.
pub fn pages_are_cut_by_bytes<L: HubLog + HubLogRead>(mut log: L) {
    let ops: Vec<IncomingOp> = (1..=5)
        .map(|seq| op(5, seq, "store.a/x", &[seq as u8; 100]))
        .collect();
    log.apply(ops).unwrap();
    let set = DocSetId::new("store.a").unwrap();
    let page = log.changes_since(&set, 0, 100, 250).unwrap();
    let seqs: Vec<u64> = page.changes.iter().map(|c| c.hub_seq).collect();
    assert_eq!(seqs, vec![1, 2, 3], "stops after passing 250 bytes");
    assert_eq!((page.cursor, page.caught_up), (3, false));
    let one = log.changes_since(&set, 3, 100, 0).unwrap();
    assert_eq!(
        one.changes.len(),
        1,
        "a page is never empty while more exists"
    );
    assert_eq!((one.cursor, one.caught_up), (4, false));
    let exact = log.changes_since(&set, 3, 2, 1 << 20).unwrap();
    assert_eq!(exact.changes.len(), 2);
    assert!(exact.caught_up, "the last row fills the page exactly");
    assert_eq!(exact.cursor, 5);
    let caught_up = log.catch_up_page(&set, 0, None, 100, 1 << 20).unwrap();
    assert_eq!(caught_up.changes.len(), 5, "no snapshots: the history");
}

/// Changes the hub makes itself (an import) are numbered after the head and
/// come from the hub's replica, derived from the log id; the hub's intents
/// are decided and published like a device's.
pub fn import_writes_are_the_hubs<L: Conformant>(mut log: L) {
    use omnisync_core::vocab::goods::Sku;
    use omnisync_core::vocab::intent::{Decision, Intent, StockCommand};
    log.apply(vec![op(6, 1, "store.a/x", b"device")]).unwrap();
    let hub = log.store().hub_replica();
    assert_eq!(hub, hub_replica(log.store().log_id()));
    let doc = DocId::new("store.a/d").unwrap();
    let last = log
        .store()
        .append_hub_changes(vec![
            (doc.clone(), saved_doc(1)),
            (doc.clone(), saved_doc(2)),
        ])
        .unwrap();
    assert_eq!((last, log.head_seq().unwrap()), (3, 3));
    let store = StoreId::new("a").unwrap();
    let decisions = log
        .store()
        .apply_hub_intents(
            &store,
            &[Intent::Stock(StockCommand::StockTake {
                key: "count-1".parse().unwrap(),
                sku: Sku::new("tea").unwrap(),
                counted: 7,
            })],
        )
        .unwrap();
    assert!(
        !matches!(decisions[0], Decision::Refused(_)),
        "{decisions:?}"
    );
    let page = log
        .changes_since(&DocSetId::new("store.a").unwrap(), 1, 100, 1 << 20)
        .unwrap();
    assert!(page.changes.len() >= 3, "two changes and a stock record");
    assert!(page.changes.iter().all(|change| change.origin == hub));
    assert_eq!(page.cursor, log.head_seq().unwrap());
    let loaded = log.store().load_doc(&doc).unwrap().expect("stored");
    assert_eq!(loaded.get_heads().len(), 2, "both saves, concurrent");
    assert!(
        log.store()
            .load_doc(&DocId::new("store.a/none").unwrap())
            .unwrap()
            .is_none()
    );
}

/// After a snapshot of a set, a cursor far behind gets each document's
/// snapshot (a record's is its newest version) in pages with a resume
/// point, the cursor moving only with the last; then the later history. A
/// cursor near the snapshot point gets the history.
pub fn a_far_behind_cursor_gets_snapshots_then_the_rest<L: Conformant>(mut log: L) {
    use omnisync_core::vocab::goods::Sku;
    use omnisync_core::vocab::intent::{Intent, StockCommand};
    let set = DocSetId::new("store.a").unwrap();
    let changes = (0..3)
        .map(|n| (DocId::new(format!("store.a/d{n}")).unwrap(), saved_doc(n)))
        .collect();
    log.store().append_hub_changes(changes).unwrap();
    let store = StoreId::new("a").unwrap();
    for (key, counted) in [("count-1", 4), ("count-2", 9)] {
        log.store()
            .apply_hub_intents(
                &store,
                &[Intent::Stock(StockCommand::StockTake {
                    key: key.parse().unwrap(),
                    sku: Sku::new("tea").unwrap(),
                    counted,
                })],
            )
            .unwrap();
    }
    let record = DocId::new("store.a/rec/stock/tea").unwrap();
    let newest = log.doc_changes(&record).unwrap().pop().expect("a record");
    let covers = log.head_seq().unwrap();
    assert_eq!(log.store().snapshot_set(&set).unwrap(), 4);
    // A change after the snapshot point, to a snapshotted document.
    log.apply(vec![op(7, 1, "store.a/d0", &saved_doc(9))])
        .unwrap();
    let first = log.catch_up_page(&set, 0, None, 2, 1 << 20).unwrap();
    assert_eq!(first.changes.len(), 2);
    assert_eq!(
        (first.cursor, first.caught_up),
        (0, false),
        "the cursor waits for the last snapshot"
    );
    assert!(first.changes.iter().all(|change| change.hub_seq == covers));
    let hub = log.store().hub_replica();
    assert!(first.changes.iter().all(|change| change.origin == hub));
    let resume = first.resume.clone().expect("more snapshots follow");
    let second = log
        .catch_up_page(&set, first.cursor, Some(&resume), 2, 1 << 20)
        .unwrap();
    assert_eq!(second.changes.len(), 2);
    assert_eq!((second.cursor, second.resume.is_none()), (covers, true));
    let docs: Vec<&str> = first
        .changes
        .iter()
        .chain(&second.changes)
        .map(|change| change.doc.as_str())
        .collect();
    assert_eq!(
        docs,
        vec![
            "store.a/d0",
            "store.a/d1",
            "store.a/d2",
            "store.a/rec/stock/tea"
        ]
    );
    assert_eq!(
        second.changes[1].bytes, newest,
        "a record's snapshot is its newest version"
    );
    let rest = log
        .catch_up_page(&set, second.cursor, None, 100, 1 << 20)
        .unwrap();
    assert_eq!(rest.changes.len(), 1, "the change after the snapshot point");
    assert!(rest.caught_up);
    let near = log.catch_up_page(&set, 1, None, 100, 1 << 20).unwrap();
    assert!(
        near.resume.is_none() && near.caught_up,
        "near the point: history"
    );
    assert_eq!(near.changes.first().map(|change| change.hub_seq), Some(2));
    // A document loads from its snapshot plus the changes after it.
    let d0 = log
        .store()
        .load_doc(&DocId::new("store.a/d0").unwrap())
        .unwrap()
        .expect("stored");
    assert_eq!(d0.get_heads().len(), 2);
}

/// A saved automerge document with one change, distinct per `n`.
fn saved_doc(n: i64) -> Vec<u8> {
    let mut doc = automerge::Automerge::new();
    let mut tx = doc.transaction();
    automerge::transaction::Transactable::put(&mut tx, automerge::ROOT, "n", n)
        .expect("put into a fresh document");
    tx.commit();
    doc.save()
}

/// A price the shared writer learned inside a transaction that then failed
/// to commit is forgotten: the next checkout is checked against the stored
/// price. For backends that roll back (every one but memory).
pub fn price_book_forgets_a_failed_commit<B: Backend>(backend: B) {
    use failing::FailingCommits;
    use omnisync_core::vocab::goods::{Channel, Currency, Sku};
    use omnisync_core::vocab::intent::{
        CheckoutIntent, Decision, Intent, IntentLine, LineSource, Refusal, StockCommand,
    };
    use omnisync_core::vocab::layout;
    let mut log = HubStore::open(FailingCommits::new(backend)).unwrap();
    let store = StoreId::new("a").unwrap();
    let sku = Sku::new("tea").unwrap();
    let prices = layout::prices_doc(&store, &sku);
    let mut doc = automerge::Automerge::new();
    let first = price_change(&mut doc, &sku, 100, 1);
    log.append_hub_changes(vec![(prices.clone(), first)])
        .unwrap();
    let receive = Intent::Stock(StockCommand::Receive {
        key: "delivery-1".parse().unwrap(),
        sku: sku.clone(),
        quantity: 10,
    });
    let checkout = |order: &str| {
        Intent::Checkout(CheckoutIntent {
            order_id: order.parse().unwrap(),
            idempotency_key: order.parse().unwrap(),
            lines: vec![IntentLine {
                sku: sku.clone(),
                quantity: 1,
                unit_price_minor: 100,
                source: LineSource::Hub,
            }],
            currency: Currency::new("EUR").expect("currency"),
            payment_ref: "card".parse().unwrap(),
            channel: Channel::Pos,
        })
    };
    let before = log
        .apply(vec![intent(8, 1, receive), intent(8, 2, checkout("o-1"))])
        .unwrap();
    assert!(
        matches!(
            before.acks[1].outcome,
            AckOutcome::Decided(Decision::Confirmed { .. })
        ),
        "{:?}",
        before.acks[1]
    );
    // A price change the book learns, in a batch whose commit fails.
    let raised = price_change(&mut doc, &sku, 500, 2);
    let head = log.head_seq().unwrap();
    log.backend_mut().fail_next = true;
    let mut change = op(8, 3, prices.as_str(), &raised);
    change.store = store.clone();
    assert!(log.apply(vec![change]).is_err());
    assert_eq!(log.head_seq().unwrap(), head, "nothing was committed");
    let after = log.apply(vec![intent(8, 4, checkout("o-2"))]).unwrap();
    assert!(
        !matches!(
            after.acks[0].outcome,
            AckOutcome::Decided(Decision::Refused(Refusal::PriceChanged { .. }))
        ),
        "the stored price is 100, not the rolled-back 500: {:?}",
        after.acks[0]
    );
    // The rolled-back price has no event, and numbering went on without a gap.
    let events = log
        .events(0, &crate::events::EventFilter::default(), 1000)
        .unwrap()
        .events;
    let seqs: Vec<u64> = events.iter().map(|event| event.seq).collect();
    assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());
    let amounts: Vec<i64> = events
        .iter()
        .filter(|event| event.kind == crate::events::EventType::PriceChanged)
        .map(|event| event.data["amount_minor"].as_i64().unwrap())
        .collect();
    assert_eq!(amounts, vec![100], "only the committed price: {events:?}");
}

/// After the prices documents were compacted (their changes deleted), a
/// price book rebuilt from storage (dropped by a failed commit) still
/// checks checkouts against the price in force: read from the snapshot and
/// the changes after it.
pub fn price_book_rebuilds_from_compacted_prices<B: Backend>(backend: B) {
    use failing::FailingCommits;
    use omnisync_core::vocab::goods::{Channel, Currency, Sku};
    use omnisync_core::vocab::intent::{
        CheckoutIntent, Decision, Intent, IntentLine, LineSource, Refusal, StockCommand,
    };
    use omnisync_core::vocab::layout;
    let mut log = HubStore::open(FailingCommits::new(backend)).unwrap();
    let store = StoreId::new("a").unwrap();
    let sku = Sku::new("tea").unwrap();
    let prices = layout::prices_doc(&store, &sku);
    let mut doc = automerge::Automerge::new();
    let mut seq = 0;
    let mut next = || {
        seq += 1;
        seq
    };
    for (amount, counter) in [(100, 1), (300, 2)] {
        let mut change = op(
            11,
            next(),
            prices.as_str(),
            &price_change(&mut doc, &sku, amount, counter),
        );
        change.store = store.clone();
        log.apply(vec![change]).unwrap();
    }
    let receive = Intent::Stock(StockCommand::Receive {
        key: "delivery-1".parse().unwrap(),
        sku: sku.clone(),
        quantity: 10,
    });
    log.apply(vec![intent(11, next(), receive)]).unwrap();
    log.set_compaction(Some(CompactPolicy {
        after_age_ms: 0,
        min_changes: 1,
        min_bytes: u64::MAX,
    }));
    let compacted = compact_fully(&mut log, 1);
    assert!(compacted.deleted >= 2, "{compacted:?}");
    // A failed commit drops the price book: the next check rebuilds it.
    log.backend_mut().fail_next = true;
    assert!(log.apply(vec![]).is_err());
    let checkout = |order: &str, unit_price_minor: i64| {
        Intent::Checkout(CheckoutIntent {
            order_id: order.parse().unwrap(),
            idempotency_key: order.parse().unwrap(),
            lines: vec![IntentLine {
                sku: sku.clone(),
                quantity: 1,
                unit_price_minor,
                source: LineSource::Hub,
            }],
            currency: Currency::new("EUR").expect("currency"),
            payment_ref: "card".parse().unwrap(),
            channel: Channel::Pos,
        })
    };
    let decided = log
        .apply(vec![
            intent(11, next(), checkout("o-old", 100)),
            intent(11, next(), checkout("o-new", 300)),
        ])
        .unwrap();
    assert!(
        matches!(
            decided.acks[0].outcome,
            AckOutcome::Decided(Decision::Refused(Refusal::PriceChanged { .. }))
        ),
        "the old price is no longer in force: {:?}",
        decided.acks[0]
    );
    assert!(
        matches!(
            decided.acks[1].outcome,
            AckOutcome::Decided(Decision::Confirmed { .. })
        ),
        "the compacted price is: {:?}",
        decided.acks[1]
    );
}

/// The change that sets the till price of `sku` to `amount_minor` in the
/// prices document `doc` (a later `counter` wins).
fn price_change(
    doc: &mut automerge::Automerge,
    sku: &omnisync_core::vocab::goods::Sku,
    amount_minor: i64,
    counter: u32,
) -> Vec<u8> {
    use automerge::transaction::Transactable as _;
    use omnisync_core::retail::prices::{PriceValue, price_key};
    use omnisync_core::vocab::goods::Channel;
    use omnisync_core::vocab::hlc::{Hlc, Stamped};
    let stamped = Stamped {
        hlc: Hlc {
            wall_ms: 1,
            counter,
        },
        writer: [0xff; 16],
        value: PriceValue {
            amount_minor,
            currency: "EUR".into(),
        },
    };
    let mut tx = doc.transaction();
    tx.put(
        automerge::ROOT,
        price_key(sku, Channel::Pos, 0),
        automerge::ScalarValue::Bytes(stamped.encode()),
    )
    .expect("put into a prices document");
    tx.commit();
    doc.get_last_local_change()
        .expect("a change was made")
        .raw_bytes()
        .to_vec()
}

/// A device as the conformance suite models one: automerge documents fed
/// every change or snapshot it receives, records replaced by each newer
/// version, and a cursor per set moved the way `HubSession` moves it.
#[derive(Default)]
struct Follower {
    cursors: std::collections::BTreeMap<DocSetId, u64>,
    docs: std::collections::BTreeMap<DocId, automerge::Automerge>,
    records: std::collections::BTreeMap<DocId, Vec<u8>>,
}

/// What a follower holds: each document's heads and each record's bytes.
type FollowerView = (
    std::collections::BTreeMap<DocId, Vec<automerge::ChangeHash>>,
    std::collections::BTreeMap<DocId, Vec<u8>>,
);

impl Follower {
    /// Reads `set` through catch-up pages (small ones, to cross page and
    /// snapshot-transfer boundaries) until caught up.
    fn catch_up(&mut self, log: &impl HubLogRead, set: &DocSetId) {
        let mut cursor = self.cursors.get(set).copied().unwrap_or(0);
        let mut resume: Option<DocId> = None;
        for _ in 0..10_000 {
            let page = log
                .catch_up_page(set, cursor, resume.as_ref(), 3, 1 << 20)
                .unwrap_or_else(|error| panic!("catch-up of {set} from {cursor}: {error}"));
            for change in page.changes.iter().filter(|change| change.hub_seq > cursor) {
                self.apply(change);
            }
            cursor = cursor.max(page.cursor);
            resume = page.resume;
            if page.caught_up && resume.is_none() {
                self.cursors.insert(set.clone(), cursor);
                return;
            }
        }
        panic!("catching up on {set} never ended");
    }

    fn apply(&mut self, change: &omnisync_core::protocol::message::RemoteChange) {
        if omnisync_core::vocab::record::is_record_doc(&change.doc) {
            self.records
                .insert(change.doc.clone(), change.bytes.clone());
        } else {
            self.docs
                .entry(change.doc.clone())
                .or_default()
                .load_incremental(&change.bytes)
                .unwrap_or_else(|error| panic!("{} does not load: {error}", change.doc));
        }
    }

    fn view(&mut self) -> FollowerView {
        let docs = self
            .docs
            .iter_mut()
            .map(|(doc, loaded)| {
                let mut heads = loaded.get_heads();
                heads.sort();
                (doc.clone(), heads)
            })
            .collect();
        (docs, self.records.clone())
    }
}

/// Runs compaction steps at `now_ms` until no work is left; returns the
/// steps' totals.
fn compact_fully<B: Backend>(store: &mut HubStore<B>, now_ms: u64) -> CompactStep {
    let mut total = CompactStep::default();
    for _ in 0..10_000 {
        let step = store.compact(now_ms).expect("compaction step");
        total.snapshots += step.snapshots;
        total.deleted += step.deleted;
        if step.compacted.is_some() {
            total.compacted = step.compacted;
        }
        if !step.more {
            return total;
        }
    }
    panic!("compaction never ended");
}

/// The change that sets `key` to `value` in `doc`.
fn edit(doc: &mut automerge::Automerge, key: &str, value: i64) -> Vec<u8> {
    use automerge::transaction::Transactable as _;
    let mut tx = doc.transaction();
    tx.put(automerge::ROOT, key, value)
        .expect("put into a document");
    tx.commit();
    doc.get_last_local_change()
        .expect("a change was made")
        .raw_bytes()
        .to_vec()
}

/// After compaction, devices that start from nothing or from a cursor in
/// the deleted range hold the same documents and records as one that
/// followed live, for a document set and a records set (`orders.S`); the
/// changes after the compacted point still come; a compacted document that
/// changes again loads right; a second compaction snapshots only the
/// documents changed since the first; a read below the compacted point
/// through `changes_since` is refused rather than silently short.
pub fn compaction_keeps_every_document_and_record<L: Conformant>(mut log: L) {
    use omnisync_core::vocab::goods::{Channel, Currency, Sku};
    use omnisync_core::vocab::intent::{
        CheckoutIntent, Decision, Intent, IntentLine, LineSource, OrderStatusChange, StockCommand,
    };
    let store = StoreId::new("a").unwrap();
    let set = DocSetId::new("store.a").unwrap();
    let orders = DocSetId::orders(&store);
    let sku = Sku::new("tea").unwrap();
    let receive = |key: &str| {
        Intent::Stock(StockCommand::Receive {
            key: key.parse().unwrap(),
            sku: sku.clone(),
            quantity: 5,
        })
    };
    let checkout = |order: &str| {
        Intent::Checkout(CheckoutIntent {
            order_id: order.parse().unwrap(),
            idempotency_key: order.parse().unwrap(),
            lines: vec![IntentLine {
                sku: sku.clone(),
                quantity: 1,
                unit_price_minor: 100,
                source: LineSource::Hub,
            }],
            currency: Currency::new("EUR").unwrap(),
            payment_ref: "card".parse().unwrap(),
            channel: Channel::Pos,
        })
    };
    let status = |order: &str, expected_version: u64, status: &str| {
        Intent::OrderStatus(OrderStatusChange {
            order_id: order.parse().unwrap(),
            expected_version,
            status: status.parse().unwrap(),
        })
    };
    let confirmed = |batch: &AppliedBatch| {
        for ack in &batch.acks {
            assert!(
                !matches!(ack.outcome, AckOutcome::Decided(Decision::Refused(_))),
                "{ack:?}"
            );
        }
    };
    // Two actors edit two documents concurrently.
    let mut one = automerge::Automerge::new();
    one.set_actor(automerge::ActorId::from(vec![1u8; 16]));
    let mut two = one.fork();
    two.set_actor(automerge::ActorId::from(vec![2u8; 16]));
    let mut other = automerge::Automerge::new();
    other.set_actor(automerge::ActorId::from(vec![3u8; 16]));
    let mut third = automerge::Automerge::new();
    third.set_actor(automerge::ActorId::from(vec![4u8; 16]));
    let mut seq = 0;
    let mut next = || {
        seq += 1;
        seq
    };
    let mut ops = Vec::new();
    for value in 0..4 {
        ops.push(op(9, next(), "store.a/d0", &edit(&mut one, "one", value)));
        ops.push(op(9, next(), "store.a/d0", &edit(&mut two, "two", value)));
        ops.push(op(9, next(), "store.a/d1", &edit(&mut other, "n", value)));
    }
    ops.push(intent(9, next(), receive("delivery-1")));
    ops.push(intent(9, next(), checkout("o-1")));
    confirmed(&log.apply(ops).unwrap());
    let mut early = Follower::default();
    early.catch_up(&log, &set);
    early.catch_up(&log, &orders);
    let mut ops = vec![
        op(9, next(), "store.a/d0", &edit(&mut one, "one", 10)),
        op(9, next(), "store.a/d2", &edit(&mut third, "m", 1)),
        intent(9, next(), receive("delivery-2")),
        intent(9, next(), status("o-1", 1, "paid")),
        intent(9, next(), checkout("o-2")),
    ];
    ops.push(intent(9, next(), status("o-1", 2, "fulfilled")));
    confirmed(&log.apply(ops).unwrap());
    let mut live = Follower::default();
    live.catch_up(&log, &set);
    live.catch_up(&log, &orders);
    assert!(
        early.cursors[&set] < live.cursors[&set],
        "the early device stopped in what compaction deletes"
    );
    let head = log.head_seq().unwrap();

    log.store().set_compaction(Some(CompactPolicy {
        after_age_ms: 0,
        min_changes: 1,
        min_bytes: u64::MAX,
    }));
    let first = compact_fully(log.store(), 1);
    assert!(first.deleted > 0 && first.snapshots > 0, "{first:?}");
    assert_eq!(log.head_seq().unwrap(), head, "the head never moves back");
    for deleted_range in [0, early.cursors[&set]] {
        assert!(
            matches!(
                log.changes_since(&set, deleted_range, 100, 1 << 20),
                Err(HubLogError::Compacted { .. })
            ),
            "changes_since below the compacted point must fail, not skip"
        );
    }
    let kept = log.changes_since(&set, head, 100, 1 << 20).unwrap();
    assert!(kept.changes.is_empty() && kept.caught_up && kept.cursor == head);
    let d0 = DocId::new("store.a/d0").unwrap();
    assert_eq!(
        log.doc_changes(&d0).unwrap().len(),
        1,
        "only the snapshot is left of d0"
    );

    // Changes after the compacted point: a compacted document changes again.
    confirmed(
        &log.apply(vec![
            op(9, next(), "store.a/d0", &edit(&mut two, "two", 20)),
            intent(9, next(), receive("delivery-3")),
            intent(9, next(), status("o-2", 1, "paid")),
        ])
        .unwrap(),
    );
    let mut fresh = Follower::default();
    for follower in [&mut live, &mut early, &mut fresh] {
        follower.catch_up(&log, &set);
        follower.catch_up(&log, &orders);
    }
    let expected = live.view();
    assert_eq!(expected.0.len(), 3, "three documents");
    assert!(expected.1.len() >= 3, "a stock record and two orders");
    assert_eq!(fresh.view(), expected, "a fresh device");
    assert_eq!(early.view(), expected, "a device in the deleted range");
    assert_eq!(fresh.cursors, live.cursors);

    // The document loads from its snapshot and the change after it.
    let mut d0_heads = log.store().load_doc(&d0).unwrap().expect("d0").get_heads();
    d0_heads.sort();
    assert_eq!(d0_heads, expected.0[&d0]);
    let mut from_reads = automerge::Automerge::new();
    for bytes in log.doc_changes(&d0).unwrap() {
        from_reads.load_incremental(&bytes).unwrap();
    }
    let mut read_heads = from_reads.get_heads();
    read_heads.sort();
    assert_eq!(read_heads, expected.0[&d0]);

    // Incremental: only d0, the stock record and order o-2 changed since.
    let second = compact_fully(log.store(), 2);
    assert_eq!(second.snapshots, 3, "{second:?}");
    assert_eq!(second.deleted, 3);
    let mut again = Follower::default();
    again.catch_up(&log, &set);
    again.catch_up(&log, &orders);
    assert_eq!(again.view(), expected, "after the second compaction");
}

/// Compaction touches only changes older than the age (dated by the marks
/// the writer keeps) and only sets with enough of them.
pub fn compaction_waits_for_age_and_amount<L: Conformant>(mut log: L) {
    let set = DocSetId::new("store.a").unwrap();
    let mut doc = automerge::Automerge::new();
    let day = 86_400_000;
    log.store().set_compaction(Some(CompactPolicy {
        after_age_ms: day,
        min_changes: 3,
        min_bytes: u64::MAX,
    }));
    let old: Vec<IncomingOp> = (1..=3)
        .map(|seq| op(10, seq, "store.a/x", &edit(&mut doc, "n", seq as i64)))
        .collect();
    log.apply(old).unwrap();
    let dated = log.head_seq().unwrap();
    // The first step dates the log: nothing is old yet.
    assert_eq!(compact_fully(log.store(), day), CompactStep::default());
    let young: Vec<IncomingOp> = (4..=5)
        .map(|seq| op(10, seq, "store.a/x", &edit(&mut doc, "n", seq as i64)))
        .collect();
    log.apply(young).unwrap();
    assert_eq!(
        compact_fully(log.store(), 2 * day - 1).deleted,
        0,
        "not a day old yet"
    );
    let step = compact_fully(log.store(), 2 * day);
    assert_eq!(step.deleted, 3, "the three changes older than a day");
    assert_eq!(step.compacted, Some((set.clone(), dated)));
    let rest = log.changes_since(&set, dated, 100, 1 << 20).unwrap();
    assert_eq!(rest.changes.len(), 2, "the young changes stay");
    // Two changes older than a day are not enough for another compaction.
    assert_eq!(compact_fully(log.store(), 4 * day).deleted, 0);
    let mut follower = Follower::default();
    follower.catch_up(&log, &set);
    let mut heads = follower.docs[&DocId::new("store.a/x").unwrap()].get_heads();
    heads.sort();
    assert_eq!(heads, doc.get_heads());
}

/// A document holding a change whose dependency the log lacks (the change
/// it builds on was refused) is never compacted: its save would leave that
/// change out, and deleting it would lose it. The step fails, nothing is
/// deleted, and the other sets are still compacted.
pub fn compaction_never_drops_changes_waiting_for_dependencies<L: Conformant>(mut log: L) {
    let set = DocSetId::new("store.a").unwrap();
    let mut doc = automerge::Automerge::new();
    let _refused = edit(&mut doc, "n", 1);
    let waiting = edit(&mut doc, "n", 2);
    let mut other = automerge::Automerge::new();
    let mut fine = op(12, 2, "store.b/y", &edit(&mut other, "n", 1));
    fine.store = StoreId::new("b").unwrap();
    log.apply(vec![op(12, 1, "store.a/x", &waiting), fine])
        .unwrap();
    log.store().set_compaction(Some(CompactPolicy {
        after_age_ms: 0,
        min_changes: 1,
        min_bytes: u64::MAX,
    }));
    let mut failed = false;
    for _ in 0..100 {
        match log.store().compact(1) {
            Ok(step) if !step.more => break,
            Ok(_) => {}
            Err(_) => failed = true,
        }
    }
    assert!(failed, "the step that met the waiting change failed");
    let kept = log.changes_since(&set, 0, 10, 1 << 20).unwrap();
    assert_eq!(kept.changes.len(), 1, "the waiting change is kept");
    assert!(
        log.changes_since(&DocSetId::new("store.b").unwrap(), 0, 10, 1 << 20)
            .is_err(),
        "the other set was compacted"
    );
}
