//! Unit tests of the local store, on in-memory and temporary-file SQLite.

use super::*;
use crate::protocol::message::{AckOutcome, RejectCode, RemoteChange};

fn ids() -> (DeviceId, StoreId) {
    (
        DeviceId::new("till-1").unwrap(),
        StoreId::new("s1").unwrap(),
    )
}

fn doc(name: &str) -> DocId {
    DocId::new(format!("store.s1/{name}")).unwrap()
}

fn put(doc_name: &str, key: &str, value: i64) -> DocEdit {
    DocEdit {
        doc: doc(doc_name),
        edits: vec![Edit::put(&[key], Value::Int(value))],
    }
}

#[test]
fn a_commit_is_readable_and_pending() {
    let (device, store_id) = ids();
    let mut store = Replica::open_in_memory(device, store_id).unwrap();
    let op = store.commit(&[put("stock", "sku-1", 5)], 1_000).unwrap();
    assert_eq!(op.seq, 1);
    assert_eq!(
        store.get(&doc("stock"), &["sku-1"]).unwrap(),
        Some(Value::Int(5))
    );
    assert_eq!(store.op_status(&op).unwrap(), Some(OpStatus::Pending));
    let stats = store.op_stats(1_500).unwrap();
    assert_eq!((stats.pending, stats.oldest_pending_age_ms), (1, 500));
    let pending = store.pending_ops(0, 10).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id, op);
}

#[test]
fn commits_survive_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("till.db");
    let (device, store_id) = ids();
    let replica;
    {
        let mut store = Replica::open(&path, device.clone(), store_id.clone()).unwrap();
        replica = store.replica();
        for n in 0..10 {
            store
                .commit(&[put("stock", &format!("sku-{n}"), n)], 1_000)
                .unwrap();
        }
        // Dropped without any shutdown call.
    }
    let mut store = Replica::open(&path, device, store_id).unwrap();
    assert_eq!(store.replica(), replica, "replica id is stable");
    assert_eq!(store.last_seq().unwrap(), 10);
    assert_eq!(
        store.get(&doc("stock"), &["sku-9"]).unwrap(),
        Some(Value::Int(9))
    );
    assert_eq!(store.pending_ops(0, 100).unwrap().len(), 10);
    let next = store.commit(&[put("stock", "sku-x", 1)], 2_000).unwrap();
    // Numbers reserved before the restart may have reached the hub in ops a
    // power cut rolled back: the sequence skips past the reservation.
    assert_eq!(next.seq, SEQ_RESERVE_BLOCK + 1);
}

#[test]
fn a_rolled_back_relaxed_commit_never_reuses_its_op_id_or_automerge_seq() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("till.db");
    let (device, store_id) = ids();
    let (first, first_change) = {
        let mut store = Replica::open(&path, device.clone(), store_id.clone()).unwrap();
        let op = store
            .commit_with(&[put("cart", "line", 1)], 1, Durability::AppCrash)
            .unwrap();
        let ops = store.pending_ops(0, 10).unwrap();
        let OpBody::Changes(changes) = &ops[0].body else {
            panic!("a document op")
        };
        // Simulate the power cut: the op was uploaded, then rolled back locally.
        store.db.execute("DELETE FROM ops", []).unwrap();
        store.db.execute("DELETE FROM doc_chunks", []).unwrap();
        store.db.execute("DELETE FROM docs", []).unwrap();
        (op, changes[0].bytes.clone())
    };
    let mut store = Replica::open(&path, device, store_id).unwrap();
    let again = store.commit(&[put("cart", "line", 2)], 2).unwrap();
    assert_ne!(again, first, "a new op id");
    let ops = store.pending_ops(0, 10).unwrap();
    let OpBody::Changes(changes) = &ops[0].body else {
        panic!("a document op")
    };
    let old = automerge::Change::from_bytes(first_change).unwrap();
    let new = automerge::Change::from_bytes(changes[0].bytes.clone()).unwrap();
    assert_ne!(
        old.actor_id(),
        new.actor_id(),
        "a new automerge actor epoch"
    );
    assert!(
        store.replica().owns_actor(new.actor_id()) && store.replica().owns_actor(old.actor_id())
    );
}

#[test]
fn the_file_refuses_another_owner_and_a_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("till.db");
    let (device, store_id) = ids();
    drop(Replica::open(&path, device.clone(), store_id.clone()).unwrap());
    let other = DeviceId::new("till-2").unwrap();
    assert!(matches!(
        Replica::open(&path, other, store_id.clone()),
        Err(DbError::WrongOwner {
            key: "device_id",
            ..
        })
    ));
    let db = Connection::open(&path).unwrap();
    db.pragma_update(None, "user_version", 99).unwrap();
    drop(db);
    assert!(matches!(
        Replica::open(&path, device, store_id),
        Err(DbError::SchemaTooNew { found: 99, .. })
    ));
}

#[test]
fn a_refused_edit_writes_nothing() {
    let (device, store_id) = ids();
    let mut store = Replica::open_in_memory(device, store_id).unwrap();
    store.commit(&[put("stock", "sku-1", 5)], 1).unwrap();
    let bad = DocEdit {
        doc: doc("stock"),
        edits: vec![
            Edit::put(&["sku-2"], Value::Int(1)),
            Edit::increment(&["sku-1"], -1),
        ],
    };
    assert!(matches!(store.commit(&[bad], 2), Err(DbError::Edit { .. })));
    assert_eq!(
        store.get(&doc("stock"), &["sku-2"]).unwrap(),
        None,
        "first edit rolled back"
    );
    assert_eq!(store.last_seq().unwrap(), 1);
    assert!(store.commit(&[], 3).is_err());
}

#[test]
fn acks_and_rejections_move_ops_through_their_lifecycle() {
    let (device, store_id) = ids();
    let mut store = Replica::open_in_memory(device, store_id).unwrap();
    let first = store.commit(&[put("a", "k", 1)], 1).unwrap();
    let second = store.commit(&[put("a", "k", 2)], 1).unwrap();
    let third = store.commit(&[put("a", "k", 3)], 1).unwrap();
    let summary = store
        .record_acks(
            &[
                Ack {
                    op: first,
                    outcome: AckOutcome::Applied { hub_seq: 7 },
                },
                Ack {
                    op: second,
                    outcome: AckOutcome::Rejected {
                        code: RejectCode::Forbidden,
                        detail: "no".into(),
                    },
                },
                Ack {
                    op: first,
                    outcome: AckOutcome::Applied { hub_seq: 7 },
                },
            ],
            50,
        )
        .unwrap();
    assert_eq!(
        summary,
        AckSummary {
            acknowledged: 1,
            rejected: 1,
            decided: Vec::new(),
        }
    );
    assert_eq!(
        store.op_status(&first).unwrap(),
        Some(OpStatus::Acknowledged { acked_ms: 50 })
    );
    assert!(matches!(
        store.op_status(&second).unwrap(),
        Some(OpStatus::Rejected { .. })
    ));
    let letters = store.dead_letters().unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].code, RejectCode::Forbidden);
    assert_eq!(letters[0].docs, vec![doc("a")], "the documents, typed");
    // Stored as its stable text; an unknown stored code is corrupt data.
    let stored: String = store
        .db
        .query_row(
            "SELECT reject_code FROM ops WHERE seq = ?1",
            [second.seq as i64],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(stored, "Forbidden");
    store
        .db
        .execute(
            "UPDATE ops SET reject_code = 'NoSuchCode' WHERE seq = ?1",
            [second.seq as i64],
        )
        .unwrap();
    assert!(matches!(
        store.op_status(&second),
        Err(DbError::Corrupt { .. })
    ));
    assert!(matches!(store.dead_letters(), Err(DbError::Corrupt { .. })));
    store
        .db
        .execute(
            "UPDATE ops SET reject_code = 'Forbidden' WHERE seq = ?1",
            [second.seq as i64],
        )
        .unwrap();
    // The dead letter does not block the op behind it.
    let pending = store.pending_ops(0, 10).unwrap();
    assert_eq!(
        pending.iter().map(|op| op.id).collect::<Vec<_>>(),
        vec![third]
    );
    let stats = store.op_stats(60).unwrap();
    assert_eq!(
        (
            stats.pending,
            stats.acknowledged,
            stats.rejected,
            stats.last_ack_ms
        ),
        (1, 1, 1, Some(50))
    );
}

fn remote_batch(from: &mut Replica, after: u64, cursor_base: u64) -> ChangeBatch {
    let ops = from.pending_ops(after, 1000).unwrap();
    let mut changes = Vec::new();
    for (index, op) in ops.iter().enumerate() {
        let OpBody::Changes(doc_changes) = &op.body else {
            continue;
        };
        for change in doc_changes {
            changes.push(RemoteChange {
                hub_seq: cursor_base + index as u64 + 1,
                doc: change.doc.clone(),
                origin: op.id.replica,
                bytes: change.bytes.clone(),
            });
        }
    }
    let cursor = changes.last().map_or(cursor_base, |change| change.hub_seq);
    ChangeBatch {
        set: DocSetId::new("store.s1").unwrap(),
        changes,
        cursor,
        caught_up: true,
    }
}

#[test]
fn remote_changes_merge_and_move_the_cursor() {
    let mut a =
        Replica::open_in_memory(DeviceId::new("a").unwrap(), StoreId::new("s1").unwrap()).unwrap();
    let mut b =
        Replica::open_in_memory(DeviceId::new("b").unwrap(), StoreId::new("s1").unwrap()).unwrap();
    a.commit(&[put("stock", "from-a", 1)], 1).unwrap();
    b.commit(&[put("stock", "from-b", 2)], 1).unwrap();
    let to_b = remote_batch(&mut a, 0, 0);
    let to_a = remote_batch(&mut b, 0, 10);
    assert_eq!(b.apply_remote(&to_b, 5).unwrap(), vec![doc("stock")]);
    a.apply_remote(&to_a, 5).unwrap();
    assert_eq!(
        a.doc_heads(&doc("stock")).unwrap(),
        b.doc_heads(&doc("stock")).unwrap()
    );
    assert_eq!(
        a.doc_json(&doc("stock")).unwrap(),
        serde_json::json!({"from-a": 1, "from-b": 2})
    );
    // Applying the same batch again changes nothing.
    assert!(b.apply_remote(&to_b, 6).unwrap().is_empty());
    assert_eq!(
        b.subscriptions().unwrap(),
        vec![(DocSetId::new("store.s1").unwrap(), 1)]
    );
}

#[test]
fn garbage_from_the_hub_is_refused_without_damage() {
    let (device, store_id) = ids();
    let mut store = Replica::open_in_memory(device, store_id).unwrap();
    store.commit(&[put("stock", "sku-1", 5)], 1).unwrap();
    let batch = ChangeBatch {
        set: DocSetId::new("store.s1").unwrap(),
        changes: vec![RemoteChange {
            hub_seq: 1,
            doc: doc("stock"),
            origin: ReplicaId([9; 16]),
            bytes: vec![0x85, 0x6f, 0x4a, 0x83, 1, 2, 3],
        }],
        cursor: 1,
        caught_up: true,
    };
    assert!(store.apply_remote(&batch, 2).is_err());
    assert_eq!(
        store.get(&doc("stock"), &["sku-1"]).unwrap(),
        Some(Value::Int(5))
    );
    assert!(
        store.subscriptions().unwrap().is_empty(),
        "cursor did not move"
    );
}

#[test]
fn compaction_keeps_every_change() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("till.db");
    let (device, store_id) = ids();
    let total = docs::COMPACT_CHUNKS_MAX * 2 + 7;
    {
        let mut store = Replica::open(&path, device.clone(), store_id.clone()).unwrap();
        for n in 0..total {
            store
                .commit(&[put("stock", &format!("k{n}"), n)], 1)
                .unwrap();
        }
    }
    let mut store = Replica::open(&path, device, store_id).unwrap();
    let keys = store.keys(&doc("stock"), &[]).unwrap();
    assert_eq!(keys.len() as i64, total);
    let chunks: i64 = store
        .db
        .query_row("SELECT COUNT(*) FROM doc_chunks", [], |row| row.get(0))
        .unwrap();
    assert!(
        chunks < docs::COMPACT_CHUNKS_MAX,
        "chunks were compacted ({chunks} left)"
    );
}

#[test]
fn counters_need_to_exist_before_they_are_incremented() {
    let (device, store_id) = ids();
    let mut store = Replica::open_in_memory(device, store_id).unwrap();
    let missing = DocEdit {
        doc: doc("stock"),
        edits: vec![Edit::increment(&["sku"], -1)],
    };
    assert!(store.commit(std::slice::from_ref(&missing), 1).is_err());
    let create = DocEdit {
        doc: doc("stock"),
        edits: vec![Edit::put(&["sku"], Value::Counter(10))],
    };
    store.commit(&[create], 1).unwrap();
    store.commit(&[missing], 2).unwrap();
    assert_eq!(
        store.get(&doc("stock"), &["sku"]).unwrap(),
        Some(Value::Counter(9))
    );
}

#[test]
fn an_interrupted_snapshot_batch_does_not_move_the_cursor() {
    let (device, store_id) = ids();
    let mut store = Replica::open_in_memory(device, store_id).unwrap();
    // More snapshots than one transaction takes, all covering #50, and the
    // last one broken: the first transaction commits, the second fails.
    let mut changes: Vec<RemoteChange> = (0..REMOTE_APPLY_BATCH_MAX + 2)
        .map(|n| {
            let mut doc = automerge::Automerge::new();
            let mut tx = doc.transaction();
            automerge::transaction::Transactable::put(&mut tx, automerge::ROOT, "n", n as i64)
                .unwrap();
            tx.commit();
            RemoteChange {
                hub_seq: 50,
                doc: doc_named(n),
                origin: ReplicaId([9; 16]),
                bytes: doc.save(),
            }
        })
        .collect();
    changes.last_mut().unwrap().bytes = vec![1, 2, 3];
    let batch = ChangeBatch {
        set: DocSetId::new("store.s1").unwrap(),
        changes,
        cursor: 50,
        caught_up: false,
    };
    assert!(store.apply_remote(&batch, 1).is_err());
    assert!(
        store.get(&doc_named(0), &["n"]).unwrap().is_some(),
        "the first transaction committed"
    );
    assert_eq!(
        store.subscriptions().unwrap(),
        vec![],
        "but the cursor did not claim #50"
    );
}

fn doc_named(n: usize) -> DocId {
    DocId::new(format!("store.s1/d{n}")).unwrap()
}

/// A store with `count` ops the hub acknowledged, op `n` at hub number
/// `10 * n`, following `store.s1` with its cursor at `cursor`.
fn acknowledged_store(count: u64, cursor: u64) -> Replica {
    let (device, store_id) = ids();
    let mut store = Replica::open_in_memory(device, store_id).unwrap();
    let set = DocSetId::new("store.s1").unwrap();
    store.subscribe(&set).unwrap();
    store.set_cursor(&set, cursor).unwrap();
    let acks: Vec<Ack> = (1..=count)
        .map(|n| {
            let op = store.commit(&[put("a", "k", n as i64)], n).unwrap();
            Ack {
                op,
                outcome: AckOutcome::Applied { hub_seq: 10 * n },
            }
        })
        .collect();
    store.record_acks(&acks, 5_000).unwrap();
    store
}

#[test]
fn the_probe_holds_the_newest_answered_ops_exponentially_spaced() {
    let mut store = acknowledged_store(40, 400);
    store.commit(&[put("a", "k", 99)], 6_000).unwrap(); // pending: not probed
    let probe = store.restore_probe().unwrap();
    let seqs: Vec<(u64, u64)> = probe
        .iter()
        .map(|probed| (probed.op.seq, probed.hub_seq))
        .collect();
    assert_eq!(
        seqs,
        vec![
            (40, 400),
            (39, 390),
            (37, 370),
            (33, 330),
            (25, 250),
            (9, 90)
        ]
    );
}

#[test]
fn a_restored_hub_lowers_cursors_and_gets_back_only_what_it_may_lack() {
    use crate::protocol::device_session::probe_verdict;
    let mut store = acknowledged_store(40, 400);
    let waiting = store.commit(&[put("a", "k", 99)], 6_000).unwrap();
    let probe = store.restore_probe().unwrap();
    // The hub was restored from a backup taken at hub number 300: it holds
    // ops 1 to 30.
    let known: Vec<bool> = probe.iter().map(|probed| probed.hub_seq <= 300).collect();
    let behind = probe_verdict(&probe, &known).expect("the hub is behind");
    assert_eq!(
        (behind.known_through, behind.known_op_seq, behind.unknown),
        (250, 25, 4)
    );
    let flagged = store.requeue_for_restored_hub(&behind).unwrap();
    assert_eq!(flagged, 15, "ops 26 to 40");
    assert_eq!(
        store.subscriptions().unwrap(),
        vec![(DocSetId::new("store.s1").unwrap(), 250)]
    );
    // Pushed again in order with the pending op; their status stays.
    let to_push: Vec<u64> = store
        .pending_ops(0, 100)
        .unwrap()
        .iter()
        .map(|op| op.id.seq)
        .collect();
    assert_eq!(to_push, (26..=40).chain([waiting.seq]).collect::<Vec<_>>());
    let replica = store.replica();
    let again = |seq: u64| OpId { replica, seq };
    assert_eq!(
        store.op_status(&again(30)).unwrap(),
        Some(OpStatus::Acknowledged { acked_ms: 5_000 })
    );
    assert_eq!(store.op_stats(7_000).unwrap().pending, 16);
    // Ops the hub lacked are probed again only once it has answered them.
    assert!(
        store
            .restore_probe()
            .unwrap()
            .iter()
            .all(|probed| probed.op.seq <= 25)
    );
    // The restored hub answers: the ones it held with their stored number,
    // the others with new numbers.
    let acks: Vec<Ack> = (26..=40)
        .map(|seq| Ack {
            op: again(seq),
            outcome: AckOutcome::Applied {
                hub_seq: if seq <= 30 { 10 * seq } else { 300 + seq },
            },
        })
        .collect();
    let summary = store.record_acks(&acks, 8_000).unwrap();
    assert_eq!(summary.acknowledged, 0, "nothing newly acknowledged");
    assert_eq!(
        store.op_status(&again(40)).unwrap(),
        Some(OpStatus::Acknowledged { acked_ms: 5_000 }),
        "the first answer stands"
    );
    assert_eq!(
        store
            .pending_ops(0, 100)
            .unwrap()
            .iter()
            .map(|op| op.id.seq)
            .collect::<Vec<_>>(),
        vec![waiting.seq]
    );
    let newest = store.restore_probe().unwrap()[0];
    assert_eq!((newest.op.seq, newest.hub_seq), (40, 340));
    // The hub now holds everything probed: nothing more to do.
    let all_known = vec![true; store.restore_probe().unwrap().len()];
    assert_eq!(
        probe_verdict(&store.restore_probe().unwrap(), &all_known),
        None
    );
}

#[test]
fn a_hub_that_holds_none_of_the_probe_gets_every_answered_op_back() {
    use crate::protocol::device_session::probe_verdict;
    let mut store = acknowledged_store(20, 200);
    let probe = store.restore_probe().unwrap();
    let behind = probe_verdict(&probe, &vec![false; probe.len()]).unwrap();
    assert_eq!((behind.known_through, behind.known_op_seq), (0, 0));
    assert_eq!(store.requeue_for_restored_hub(&behind).unwrap(), 20);
    assert_eq!(
        store.subscriptions().unwrap(),
        vec![(DocSetId::new("store.s1").unwrap(), 0)]
    );
}

#[test]
fn ops_answered_by_an_earlier_hub_log_are_neither_probed_nor_uploaded_again() {
    use crate::protocol::device_session::probe_verdict;
    let mut store = acknowledged_store(10, 100);
    store.set_hub_log_id("log-1").unwrap();
    assert_eq!(store.restore_probe().unwrap().len(), 4);
    // A replaced hub: a new log. The ops answered so far stay with the old one.
    store.set_hub_log_id("log-2").unwrap();
    assert!(store.restore_probe().unwrap().is_empty());
    let op = store.commit(&[put("a", "k", 11)], 9_000).unwrap();
    store
        .record_acks(
            &[Ack {
                op,
                outcome: AckOutcome::Applied { hub_seq: 3 },
            }],
            9_100,
        )
        .unwrap();
    let probe = store.restore_probe().unwrap();
    assert_eq!(
        probe.iter().map(|probed| probed.op.seq).collect::<Vec<_>>(),
        vec![op.seq]
    );
    // Restored from a backup of the new log that lacks the new op: only it
    // comes back.
    let behind = probe_verdict(&probe, &[false]).unwrap();
    assert_eq!(store.requeue_for_restored_hub(&behind).unwrap(), 1);
}
