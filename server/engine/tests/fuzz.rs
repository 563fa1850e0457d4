//! Fuzz target for the hub's side of the wire: frames a device sends, fed
//! through a real `HubSession` after a handshake, so the hub's judging of
//! pushed automerge changes is exercised too.
//!
//! `cargo test` runs it with bolero's random engine for a bounded time (1 s
//! by default; `BOLERO_RANDOM_TEST_TIME_MS` sets it), after replaying every
//! file under `tests/__fuzz__/hub_session_frames/{crashes,corpus}`.
//! Coverage-guided, on nightly: `cargo bolero test -p omnisync-hub-engine
//! fuzz_hub_session_frames --toolchain nightly -T 60s` (see `docs/security.md`).

use omnisync_core::protocol::message::{self, ClientMessage, Credentials, Hello};
use omnisync_core::{DeviceId, ReplicaId, StoreId, TenantId};
use omnisync_hub_engine::hub_session::{HubEvent, HubSession, Peer};

fn peer() -> Peer {
    Peer::from_identity(
        omnisync_hub_engine::authz::Identity {
            tenant: TenantId::new("acme").unwrap(),
            device: DeviceId::new("till-1").unwrap(),
            store: StoreId::new("s1").unwrap(),
            role: omnisync_hub_engine::authz::Role::Terminal,
            customer: None,
            expires_ms: None,
        },
        ReplicaId([1; 16]),
    )
    .unwrap()
}

fn ready_hub_session() -> HubSession {
    let peer = peer();
    let mut session = HubSession::new();
    session.handle_frame(&message::encode(&ClientMessage::Hello(Hello {
        device: peer.device.clone(),
        store: peer.store.clone(),
        replica: peer.replica,
        credentials: Credentials::default(),
        agent: "fuzz".into(),
        versions: None,
        probe: None,
    })));
    assert!(matches!(
        session.poll_event(),
        Some(HubEvent::Authenticate(_))
    ));
    session.handle_authenticated(Ok(peer), "hub", "log", 0);
    session
}

#[test]
fn fuzz_hub_session_frames() {
    bolero::check!()
        .with_type::<Vec<Vec<u8>>>()
        .for_each(|frames| {
            let mut session = ready_hub_session();
            for (index, body) in frames.iter().enumerate() {
                // Every other frame keeps its raw header bytes.
                let frame = if index % 2 == 0 {
                    framed(body)
                } else {
                    body.clone()
                };
                session.handle_frame(&frame);
                while session.poll_event().is_some() {}
                while session.poll_transmit().is_some() {}
                while session.poll_audit().is_some() {}
                let _ = session.poll_catch_up();
            }
        });
}

/// A frame body after the magic and version, so the fuzzer reaches the body
/// decoder.
fn framed(body: &[u8]) -> Vec<u8> {
    let mut frame = b"OS\x01".to_vec();
    frame.extend_from_slice(body);
    frame
}
