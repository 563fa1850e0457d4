//! A quick throughput comparison of the two frame formats, printed (run
//! with `--nocapture`; build with optimizations for meaningful numbers):
//! a `ChangeBatch` of 100 changes and a `Push` of 100 ops, version 1
//! (postcard) against version 2 (MessagePack with named fields).

use std::time::Instant;

use omnisync_core::protocol::message::{
    self, ChangeBatch, ClientMessage, DocChange, HubMessage, Op, OpBody, RemoteChange, WireMessage,
};
use omnisync_core::{DocId, DocSetId, OpId, ReplicaId};

/// Frames per second of `work`, run for about `millis`.
fn rate(millis: u128, mut work: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut runs = 0u64;
    while start.elapsed().as_millis() < millis {
        work();
        runs += 1;
    }
    runs as f64 / start.elapsed().as_secs_f64()
}

fn compare<M: WireMessage + PartialEq + std::fmt::Debug>(name: &str, value: &M) {
    for version in [1, 2] {
        let frame = message::encode_version(value, version).unwrap();
        let decoded: M = message::decode(&frame).unwrap();
        assert_eq!(&decoded, value);
        let encode = rate(300, || {
            std::hint::black_box(message::encode_version(value, version).unwrap());
        });
        let decode = rate(300, || {
            std::hint::black_box(message::decode::<M>(&frame).unwrap());
        });
        println!(
            "{name} v{version}: {} bytes, encode {encode:.0} frames/s, decode {decode:.0} frames/s",
            frame.len()
        );
    }
}

#[test]
fn frame_formats_throughput() {
    let set = DocSetId::new("store.berlin-01").unwrap();
    let batch = HubMessage::Changes(ChangeBatch {
        set,
        changes: (0..100)
            .map(|i| RemoteChange {
                hub_seq: 1_000_000 + i,
                doc: DocId::new(format!("store.berlin-01/catalog/sku-{i:05}")).unwrap(),
                origin: ReplicaId([7; 16]),
                bytes: vec![i as u8; 200],
            })
            .collect(),
        cursor: 1_000_099,
        caught_up: true,
    });
    compare("ChangeBatch of 100 changes x 200 B", &batch);
    let push = ClientMessage::Push(
        (0..100)
            .map(|seq| Op {
                id: OpId {
                    replica: ReplicaId([7; 16]),
                    seq,
                },
                created_ms: 1_700_000_000_000,
                body: OpBody::Changes(vec![DocChange {
                    doc: DocId::new(format!("store.berlin-01/cart/{seq}")).unwrap(),
                    bytes: vec![1; 200],
                }]),
            })
            .collect(),
    );
    compare("Push of 100 ops x 200 B", &push);
}
