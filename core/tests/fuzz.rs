//! Fuzz targets for every decoder in the core that reads bytes from outside:
//! frames the device reads (through the real device session; the hub's side
//! is fuzzed in `omnisync-hub-engine`), remote
//! document bytes as a device applies them, valid-but-hostile automerge
//! changes to every projected document kind, the hub's token-refresh answer,
//! tokens read back from storage, and CA certificate files.
//!
//! `cargo test` runs each target with bolero's random engine for a bounded
//! time (1 s by default; `BOLERO_RANDOM_TEST_TIME_MS` sets it, the CI's fuzz
//! step uses more), after replaying every file under
//! `tests/__fuzz__/<target without fuzz_>/crashes` and `.../corpus`. A crasher
//! found by any engine is kept as a file in `crashes/` and so stays a
//! regression test. Coverage-guided, on nightly: `cargo bolero test -p
//! omnisync-core <target> --toolchain nightly -T 60s` (see `docs/security.md`).

use automerge::transaction::Transactable as _;
use omnisync_core::protocol::device_session::{ClientIdentity, ClientSession};
use omnisync_core::protocol::message::{
    self, ChangeBatch, ClientMessage, Credentials, HubMessage, RemoteChange, Welcome,
};
use omnisync_core::{CustomerId, DeviceId, DocId, DocSetId, Replica, ReplicaId, StoreId};

/// A frame body after the magic and a version (the first byte's low bit
/// picks 1, postcard, or 2, MessagePack), so the fuzzer reaches the decoders.
fn framed(body: &[u8]) -> Vec<u8> {
    let (version, body) = match body.split_first() {
        Some((first, rest)) => (1 + (first & 1), rest),
        None => (2, body),
    };
    let mut frame = vec![b'O', b'S', version];
    frame.extend_from_slice(body);
    frame
}

#[test]
fn fuzz_client_session_frames() {
    bolero::check!()
        .with_type::<Vec<Vec<u8>>>()
        .for_each(|frames| {
            let identity = ClientIdentity {
                device: DeviceId::new("till-1").unwrap(),
                store: StoreId::new("s1").unwrap(),
                replica: ReplicaId([1; 16]),
                credentials: Credentials::default(),
                agent: "fuzz".into(),
            };
            let set = DocSetId::new("store.s1").unwrap();
            let mut session =
                ClientSession::new(identity, vec![(set.clone(), 0)], Some("log".into()), 0);
            let welcome = message::encode(&HubMessage::Welcome(Welcome {
                hub_id: "hub".into(),
                hub_time_ms: 0,
                allowed_sets: vec![set],
                log_id: "log".into(),
                probe_known: None,
            }));
            let _ = session.handle_frame(&welcome, 0);
            for (index, body) in frames.iter().enumerate() {
                let frame = if index % 2 == 0 {
                    framed(body)
                } else {
                    body.clone()
                };
                let _ = session.handle_frame(&frame, index as u64);
                while session.poll_transmit().is_some() {}
                while session.poll_event().is_some() {}
            }
        });
}

#[test]
fn fuzz_decode_frames() {
    bolero::check!().for_each(|bytes: &[u8]| {
        let _ = message::decode::<ClientMessage>(bytes);
        let _ = message::decode::<HubMessage>(bytes);
        let _ = message::decode::<ClientMessage>(&framed(bytes));
        let _ = message::decode::<HubMessage>(&framed(bytes));
    });
}

/// Documents of every projected kind a device follows.
const DOCS: &[&str] = &[
    "store.s1/catalog/b001",
    "store.s1/prices/b001",
    "store.s1/stock/b001",
    "store.s1/orders/till-2",
    "store.s1/manifest",
    "customer.c1/cart",
    "customer.c1/wishlist",
    "customer.c1/profile",
    "customer.c1/history",
    "customer.c1/recommendations",
    "store.s1/notes/x",
];

fn device_store() -> Replica {
    let mut store = Replica::open_in_memory(
        DeviceId::new("till-1").unwrap(),
        StoreId::new("s1").unwrap(),
    )
    .unwrap();
    store
        .subscribe(&DocSetId::store(&StoreId::new("s1").unwrap()))
        .unwrap();
    store
        .subscribe(&DocSetId::customer(&CustomerId::new("c1").unwrap()))
        .unwrap();
    store
}

fn batch(doc: &str, bytes: Vec<u8>, hub_seq: u64) -> ChangeBatch {
    let doc = DocId::new(doc).unwrap();
    ChangeBatch {
        set: doc.set(),
        changes: vec![RemoteChange {
            hub_seq,
            doc,
            origin: ReplicaId([9; 16]),
            bytes,
        }],
        cursor: hub_seq,
        caught_up: true,
    }
}

#[test]
fn fuzz_remote_document_bytes() {
    bolero::check!().for_each(|bytes: &[u8]| {
        let Some((selector, bytes)) = bytes.split_first() else {
            return;
        };
        let mut store = device_store();
        let doc = DOCS[*selector as usize % DOCS.len()];
        // Anything may be refused, nothing may panic.
        let _ = store.apply_remote(&batch(doc, bytes.to_vec(), 1), 0);
    });
}

/// One edit of a hostile but well-formed change: a path of keys and a value.
type HostileEdit = (Vec<String>, u8, i64, String);

#[test]
fn fuzz_valid_hostile_changes_to_projected_documents() {
    // The hub accepts any well-formed change an authorized device makes to
    // its documents; every other device must apply it and keep syncing.
    bolero::check!()
        .with_type::<(u8, Vec<HostileEdit>)>()
        .for_each(|(selector, edits)| {
            let doc_id = DOCS[*selector as usize % DOCS.len()];
            let mut doc = automerge::Automerge::new();
            doc.set_actor(ReplicaId([9; 16]).actor(1));
            let mut tx = doc.transaction();
            for (path, kind, number, text) in edits.iter().take(32) {
                let mut object = automerge::ROOT;
                for key in path.iter().take(3).skip(1) {
                    match tx.put_object(&object, key.as_str(), automerge::ObjType::Map) {
                        Ok(child) => object = child,
                        Err(_) => break,
                    }
                }
                let key = path.first().map_or("k", String::as_str);
                let _ = match kind % 6 {
                    0 => tx.put(&object, key, *number),
                    1 => tx.put(&object, key, text.as_str()),
                    2 => tx.put(&object, key, *number as f64),
                    3 => tx.put(&object, key, *number % 2 == 0),
                    4 => tx
                        .put(&object, key, automerge::ScalarValue::counter(*number))
                        .map(|_| ()),
                    _ => tx.delete(&object, key),
                };
            }
            tx.commit();
            let Some(change) = doc.get_last_local_change() else {
                return;
            };
            let mut store = device_store();
            let applied = store.apply_remote(&batch(doc_id, change.raw_bytes().to_vec(), 1), 0);
            assert!(
                applied.is_ok(),
                "a well-formed change to {doc_id} stopped the device: {applied:?}"
            );
        });
}

#[test]
fn fuzz_refresh_answers_and_stored_tokens() {
    bolero::check!().for_each(|bytes: &[u8]| {
        let _ = omnisync_core::client::refresh::parse_refresh_response(bytes);
        if let Ok(text) = std::str::from_utf8(bytes) {
            let _ = omnisync_core::client::refresh::token_times(text);
            let _ = omnisync_core::client::refresh::refresh_due_s(text);
        }
    });
}

#[test]
fn fuzz_ca_certificate_files() {
    bolero::check!().for_each(|bytes: &[u8]| {
        let _ = omnisync_core::client::tls::client_config(Some(bytes));
    });
}
