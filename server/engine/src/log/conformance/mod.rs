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
    changes_between_lists_every_set_in_order(fresh());
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
