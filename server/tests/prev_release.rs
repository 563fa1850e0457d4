//! A hub data directory written by the previous release (postcard outcomes
//! and ledger rows, `R1` records) opens with this release: it serves the
//! same documents and outcomes, and its ledger keeps deciding. The fixture
//! and how it was made: `tests/fixtures/prev-release/`.

use omnisync_core::protocol::message::{AckOutcome, Op, OpBody};
use omnisync_core::vocab::intent::{Decision, Intent, OrderStatusChange};
use omnisync_core::vocab::record::Record;
use omnisync_core::{DeviceId, DocId, DocSetId, OpId, ReplicaId, StoreId};
use omnisync_hub::storage::SqliteReader;
use omnisync_hub_engine::hub_session::{IncomingOp, Verdict};
use omnisync_hub_engine::log::{HubLog, HubLogRead};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/prev-release/hub"
);

fn till_1(seq: u64) -> OpId {
    let mut replica = [0; 16];
    hex::decode_to_slice("cac681a0488a59448d3ddf2758917901", &mut replica).unwrap();
    OpId {
        replica: ReplicaId(replica),
        seq,
    }
}

#[test]
fn a_hub_of_the_previous_release_serves_the_same_documents_and_outcomes() {
    let dir = tempfile::tempdir().unwrap();
    for file in ["hub.db", "devices.db"] {
        std::fs::copy(format!("{FIXTURE}/{file}"), dir.path().join(file)).unwrap();
    }
    let mut log = omnisync_hub::storage::open(dir.path()).unwrap();
    assert_eq!(log.log_id(), "13936a8b0806c3fcab209ce3d1eae382");
    let reader = SqliteReader::new(dir.path());

    // Outcomes stored by the previous release.
    for (seq, order_no) in [(1, 1), (2, 4), (3, 7), (4, 10)] {
        assert_eq!(
            reader.outcome(&till_1(seq)).unwrap(),
            Some(AckOutcome::Decided(Decision::Confirmed { order_no })),
            "op {seq}"
        );
    }

    // Documents: the catalog and the records, `R1` encoded.
    let set = DocSetId::new("orders.berlin-01").unwrap();
    let page = reader.changes_since(&set, 0, 512, 1 << 20).unwrap();
    assert_eq!(page.changes.len(), 16);
    let order = DocId::new("orders.berlin-01/rec/order/till-1-0001").unwrap();
    let newest = reader.doc_changes(&order).unwrap();
    match Record::decode(newest.last().unwrap()).unwrap() {
        Record::Order(order) => {
            assert_eq!(order.order_no, 1);
            assert_eq!(order.total_minor, 2397);
        }
        other => panic!("{other:?}"),
    }
    let catalog = DocId::new("store.berlin-01/catalog/b030").unwrap();
    assert!(log.load_doc(&catalog).unwrap().is_some());

    // The ledger keeps deciding on rows of the previous release: a retried
    // op gets its stored outcome, a status change reads the old order row.
    let store = StoreId::new("berlin-01").unwrap();
    let device = DeviceId::new("till-1").unwrap();
    let status = Op {
        id: till_1(5),
        created_ms: 1_796_212_400_000,
        body: OpBody::Intent(Intent::OrderStatus(OrderStatusChange {
            order_id: "till-1-0001".parse().unwrap(),
            expected_version: 1,
            status: "paid".parse().unwrap(),
        })),
    };
    let retried = Op {
        id: till_1(1),
        created_ms: 0,
        body: status.body.clone(),
    };
    let batch = log
        .apply(
            [retried, status]
                .into_iter()
                .map(|op| IncomingOp {
                    op,
                    device: device.clone(),
                    store: store.clone(),
                    verdict: Verdict::Accept,
                })
                .collect(),
        )
        .unwrap();
    assert_eq!(
        batch.acks[0].outcome,
        AckOutcome::Decided(Decision::Confirmed { order_no: 1 })
    );
    assert_eq!(
        batch.acks[1].outcome,
        AckOutcome::Decided(Decision::Applied { version: 2 })
    );
    drop(log);
    let reader = SqliteReader::new(dir.path());
    assert_eq!(
        reader.outcome(&till_1(5)).unwrap(),
        Some(AckOutcome::Decided(Decision::Applied { version: 2 }))
    );
    let newest = reader.doc_changes(&order).unwrap();
    let record = newest.last().unwrap();
    assert_eq!(&record[..2], b"R2", "new records use the evolvable format");
    match Record::decode(record).unwrap() {
        Record::Order(order) => assert_eq!((order.status.as_str(), order.version), ("paid", 2)),
        other => panic!("{other:?}"),
    }
}
