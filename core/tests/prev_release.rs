//! A device database written by the previous release (postcard op bodies
//! and decisions, schema of that release) opens with this release: its ops,
//! decisions and query tables read back, and new ops (this release's
//! format) sit next to the old ones. The fixture and how it was made:
//! `tests/fixtures/prev-release/`.

use omnisync_core::db::oplog::OpStatus;
use omnisync_core::protocol::message::OpBody;
use omnisync_core::vocab::codec::STORED_MAGIC;
use omnisync_core::vocab::intent::{Decision, Intent};
use omnisync_core::vocab::keys::{OrderId, OrderStatus, OrderStatusName};
use omnisync_core::{DeviceId, DocSetId, Replica, Sku, StoreId};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/prev-release/till-1.db"
);

#[test]
fn a_till_database_of_the_previous_release_opens_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("till-1.db");
    std::fs::copy(FIXTURE, &path).unwrap();
    let store = StoreId::new("berlin-01").unwrap();
    let mut replica =
        Replica::open(&path, DeviceId::new("till-1").unwrap(), store.clone()).unwrap();

    // The op log: four checkouts, each confirmed with its stored decision.
    let ops = replica.op_ids().unwrap();
    assert_eq!(ops.len(), 4);
    let expected = [
        ("till-1-0001", 1),
        ("till-1-0004", 4),
        ("till-1-0007", 7),
        ("till-1-0013", 10),
    ];
    for (op, (order_id, order_no)) in ops.iter().zip(expected) {
        match replica.op_status(op).unwrap() {
            Some(OpStatus::Confirmed {
                decision: Decision::Confirmed { order_no: got },
            }) => assert_eq!(got, order_no, "op {op}"),
            other => panic!("op {op}: {other:?}"),
        }
        match replica.op_intent(op.seq).unwrap() {
            Some(Intent::Checkout(checkout)) => assert_eq!(checkout.order_id.as_str(), order_id),
            other => panic!("op {op}: {other:?}"),
        }
        // Query tables of that release.
        let order = replica.order(order_id).unwrap().expect("order row");
        assert_eq!(order.order_no, Some(order_no));
        assert_eq!(order.status, OrderStatus::Confirmed);
    }
    assert_eq!(
        replica
            .order("till-1-0001")
            .unwrap()
            .unwrap()
            .total
            .amount_minor,
        2397
    );
    assert_eq!(replica.product_count(&store).unwrap(), 10);
    let subscriptions = replica.subscriptions().unwrap();
    assert!(subscriptions.contains(&(DocSetId::store(&store), 97)));
    assert!(
        replica
            .stock(&store, &Sku::new("sku-001").unwrap())
            .unwrap()
            .is_some()
    );
    assert_eq!(
        replica.hub_log_id().unwrap().as_deref(),
        Some("13936a8b0806c3fcab209ce3d1eae382")
    );

    // A new op is written in this release's format, next to the old ones.
    let op = replica
        .update_order_status(
            &OrderId::new("till-1-0001").unwrap(),
            1,
            &OrderStatusName::new("paid").unwrap(),
            1_796_212_400_000,
        )
        .unwrap();
    let pending = replica.pending_ops(0, 10).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id, op);
    assert!(matches!(
        pending[0].body,
        OpBody::Intent(Intent::OrderStatus(_))
    ));
    drop(replica);
    let db = rusqlite_blob(&path, op.seq);
    assert_eq!(db[..2], STORED_MAGIC, "new ops use the evolvable format");
    let old = rusqlite_blob(&path, 1);
    assert_ne!(old[..2], STORED_MAGIC, "old ops are left as they were");
}

/// The raw `ops.body` of one op.
fn rusqlite_blob(path: &std::path::Path, seq: u64) -> Vec<u8> {
    let db = rusqlite::Connection::open(path).unwrap();
    db.query_row("SELECT body FROM ops WHERE seq = ?1", [seq as i64], |row| {
        row.get(0)
    })
    .unwrap()
}
