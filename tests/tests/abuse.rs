//! The abuse table: hostile devices against a real `omnisync-hub serve`
//! process in token mode (a JWKS with an EdDSA and an ES256 key, tokens from
//! the hub's own `enrol`). Every case must be refused with its reason, leave
//! the hub's state as it was, and never disturb the honest devices (two
//! tills, a back office and a shopper's app), which sync between cases.
//!
//! Rows, in order: forged, expired, not-yet-valid, wrong-audience,
//! wrong-issuer, wrong-tenant, `alg: none`, `HS256` and garbage tokens, no
//! token, a token for another device or store, a stolen replica; cross-store
//! and cross-customer subscriptions; cross-store, catalog, price, foreign
//! orders, foreign cart, hub-record and recommendation writes; a forged op
//! author and a forged change author; a malformed change; replayed ops;
//! oversized and malformed frames; a message flood; a device that stops
//! reading; a token expiring mid-session; a revoked device; the admin and
//! refresh endpoints without the right token.

use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::SinkExt as _;
use omnisync_core::protocol::message::{
    AckOutcome, ClientMessage, DocChange, ErrorCode, HubMessage, OpBody, RejectCode,
};
use omnisync_core::retail::orders::OrderLine;
use omnisync_core::vocab::goods::{Channel, Currency, Money, Sku};
use omnisync_core::vocab::layout;
use omnisync_core::{CustomerId, DocId, DocSetId, OpId, ReplicaId, StoreId};
use omnisync_tests::security::{Keys, RawClient, Refused, start_hub, token_mode_args};
use omnisync_tests::{
    DeviceOptions, SYNC_TIMEOUT, TestDevice, device_with, http, init_logs, wait_converged,
    wait_until,
};
use tokio_tungstenite::tungstenite::Message;

const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// One handshake row: case, device, store, replica, token, text the refusal names.
type HandshakeRow<'a> = (
    &'a str,
    &'a str,
    &'a str,
    ReplicaId,
    Option<String>,
    &'a str,
);
const CLOSE_POLICY: u16 = 1008;

/// The honest devices and how to check that they still sync.
struct Honest {
    tills: [TestDevice; 2],
    back_office: TestDevice,
    app: TestDevice,
    orders: u32,
}

impl Honest {
    /// The back office changes a price; both tills and the shopper's app
    /// must see it, and till-1's checkout must get the hub's decision.
    async fn still_sync(&mut self, case: &str) -> anyhow::Result<()> {
        self.orders += 1;
        let s1 = StoreId::new("s1")?;
        let sku = Sku::new("sku-1")?;
        let price = omnisync_core::vocab::goods::Money {
            amount_minor: 250 + self.orders as i64,
            currency: Currency::new("EUR")?,
        };
        self.back_office.client.write(|store| {
            store.set_price(&s1, &sku, Channel::Pos, 0, &price, omnisync_core::now_ms())
        })?;
        let doc = layout::prices_doc(&s1, &sku);
        wait_converged(
            &[
                &self.tills[0].client,
                &self.tills[1].client,
                &self.back_office.client,
                &self.app.client,
            ],
            std::slice::from_ref(&doc),
        )
        .await
        .with_context(|| format!("honest devices stopped syncing after: {case}"))?;
        let request = omnisync_core::retail::orders::CheckoutRequest {
            order_id: format!("order-{}", self.orders).parse().unwrap(),
            idempotency_key: None,
            lines: vec![OrderLine {
                sku: sku.clone(),
                quantity: 1,
                unit_price_minor: price.amount_minor,
            }],
            currency: price.currency,
            payment_ref: format!("card-{}", self.orders).parse().unwrap(),
            channel: Channel::Pos,
        };
        let op = self.tills[0].client.checkout(&request)?.op;
        wait_until(SYNC_TIMEOUT, "till-1's checkout to be decided", || {
            Ok(!matches!(
                self.tills[0].client.replica().op_status(&op)?,
                Some(omnisync_core::db::OpStatus::Pending) | None
            ))
        })
        .await
        .with_context(|| format!("the hub stopped deciding after: {case}"))?;
        for device in [&self.tills[0], &self.tills[1], &self.back_office, &self.app] {
            let status = device.client.status();
            anyhow::ensure!(
                status.refusal.is_none(),
                "after {case}: an honest device was refused: {status:?}"
            );
        }
        Ok(())
    }
}

fn refused_with(
    case: &str,
    outcome: Result<RawClient, Refused>,
    code: ErrorCode,
    reason: &str,
) -> anyhow::Result<()> {
    let refused = match outcome {
        Ok(_) => anyhow::bail!("{case}: the hub accepted it"),
        Err(refused) => refused,
    };
    anyhow::ensure!(
        refused.code == Some(code),
        "{case}: expected {code:?}, got {refused:?}"
    );
    anyhow::ensure!(
        refused.reason.contains(reason),
        "{case}: the reason should mention {reason:?}: {refused:?}"
    );
    if matches!(code, ErrorCode::Unauthenticated | ErrorCode::Forbidden) {
        anyhow::ensure!(
            refused.close_code == Some(CLOSE_POLICY),
            "{case}: close code {refused:?}"
        );
    }
    Ok(())
}

/// A token with its header replaced by `header` and its signature by `signature`.
fn reheaded(token: &str, header: serde_json::Value, signature: &str) -> String {
    let payload = token.split('.').nth(1).unwrap_or_default();
    let header = URL_SAFE_NO_PAD.encode(header.to_string());
    format!("{header}.{payload}.{signature}")
}

async fn admin_doc_status(
    address: std::net::SocketAddr,
    token: &str,
    doc: &str,
) -> anyhow::Result<u16> {
    Ok(http::send(
        address,
        "GET",
        &format!("/v1/admin/docs/{doc}"),
        Some(token),
        "",
        HTTP_TIMEOUT,
    )
    .await?
    .status)
}

async fn admin_op_status(
    address: std::net::SocketAddr,
    token: &str,
    op: OpId,
) -> anyhow::Result<http::HttpResponse> {
    http::send(
        address,
        "GET",
        &format!("/v1/admin/ops/{}/{}", op.replica, op.seq),
        Some(token),
        "",
        HTTP_TIMEOUT,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_table_against_a_real_hub_in_token_mode() -> anyhow::Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let keys = Keys::generate(dir.path(), "eddsa", "k-ed")?;
    let es_keys = Keys::generate(dir.path(), "es256", "k-es")?;
    let forger_dir = dir.path().join("forger");
    std::fs::create_dir_all(&forger_dir)?;
    // Same kid, another key: a forger who knows the key id.
    let forger = Keys::generate(&forger_dir, "eddsa", "k-ed")?;
    // The hub trusts both of the chain's keys.
    let mut jwks: serde_json::Value = serde_json::from_slice(&std::fs::read(&keys.jwks)?)?;
    let es_jwks: serde_json::Value = serde_json::from_slice(&std::fs::read(&es_keys.jwks)?)?;
    jwks["keys"]
        .as_array_mut()
        .context("keys")?
        .extend(es_jwks["keys"].as_array().cloned().unwrap_or_default());
    std::fs::write(&keys.jwks, jwks.to_string())?;
    let mut args = token_mode_args(&keys)?;
    args.extend(
        [
            "--device-messages-per-s",
            "200",
            "--device-messages-burst",
            "400",
            "--send-timeout-ms",
            "1000",
        ]
        .map(str::to_owned),
    );
    let hub = start_hub(dir.path(), &args).await?;
    let url = hub.sync_url();
    let address = hub.address;

    let terminal = |device: &str| keys.enrol(device, "s1", "terminal", &[]);
    let back_office_token = es_keys.enrol("bo-1", "s1", "back-office", &[])?;
    let app = |device: &str, customer: &str| {
        keys.enrol(device, "s1", "customer-app", &["--customer", customer])
    };
    let honest_device = |name: &str, token: String, sets: Vec<DocSetId>| {
        device_with(
            &url,
            name,
            "s1",
            DeviceOptions {
                token: Some(token),
                sets,
                ..DeviceOptions::default()
            },
        )
    };
    let c1 = CustomerId::new("c1")?;
    let mut honest = Honest {
        tills: [
            honest_device("till-1", terminal("till-1")?, vec![])?,
            honest_device("till-2", terminal("till-2")?, vec![])?,
        ],
        back_office: honest_device("bo-1", back_office_token.clone(), vec![])?,
        app: honest_device(
            "app-c1",
            app("app-c1", "c1")?,
            vec![DocSetId::customer(&c1)],
        )?,
        orders: 0,
    };
    for device in honest
        .tills
        .iter()
        .chain([&honest.back_office, &honest.app])
    {
        device.client.wait_synced(SYNC_TIMEOUT).await?;
    }
    // The back office prices a product; the shopper's app fills its cart.
    let sku = Sku::new("sku-1")?;
    let euro = Money {
        amount_minor: 250,
        currency: Currency::new("EUR")?,
    };
    let s1 = StoreId::new("s1")?;
    honest.back_office.client.write(|store| {
        store.set_price(&s1, &sku, Channel::App, 0, &euro, omnisync_core::now_ms())
    })?;
    honest
        .app
        .client
        .write(|store| store.add_to_cart(&c1, &sku, 1, omnisync_core::now_ms()))?;
    honest.still_sync("start").await?;
    let till_1_replica = honest.tills[0].client.replica().replica();

    // --- Handshakes -------------------------------------------------------
    let mallory = terminal("mallory")?;
    let now_s = omnisync_core::now_ms() / 1000;
    let expired = keys.enrol(
        "mallory",
        "s1",
        "terminal",
        &[
            "--issued-at-s",
            &(now_s - 7200).to_string(),
            "--ttl-s",
            "3600",
        ],
    )?;
    let future = keys.enrol(
        "mallory",
        "s1",
        "terminal",
        &["--issued-at-s", &(now_s + 3600).to_string()],
    )?;
    let handshakes: Vec<HandshakeRow> = vec![
        (
            "a forged signature",
            "mallory",
            "s1",
            ReplicaId::random(),
            Some(forger.enrol("mallory", "s1", "back-office", &[])?),
            "bad signature",
        ),
        (
            "an expired token",
            "mallory",
            "s1",
            ReplicaId::random(),
            Some(expired),
            "expired",
        ),
        (
            "a token not valid yet",
            "mallory",
            "s1",
            ReplicaId::random(),
            Some(future),
            "not valid before",
        ),
        (
            "a token for another hub",
            "mallory",
            "s1",
            ReplicaId::random(),
            Some(keys.enrol("mallory", "s1", "terminal", &["--audience", "another-hub"])?),
            "audience",
        ),
        (
            "a token from another issuer",
            "mallory",
            "s1",
            ReplicaId::random(),
            Some(keys.enrol(
                "mallory",
                "s1",
                "terminal",
                &["--issuer", "https://evil.test"],
            )?),
            "issuer",
        ),
        (
            "a token of another tenant",
            "mallory",
            "s1",
            ReplicaId::random(),
            Some(keys.enrol("mallory", "s1", "terminal", &["--tenant", "globex"])?),
            "tenant",
        ),
        (
            "alg none",
            "mallory",
            "s1",
            ReplicaId::random(),
            Some(reheaded(
                &mallory,
                serde_json::json!({"alg": "none", "typ": "JWT"}),
                "",
            )),
            "alg none",
        ),
        (
            "HS256 keyed with the public key",
            "mallory",
            "s1",
            ReplicaId::random(),
            Some(reheaded(
                &mallory,
                serde_json::json!({"alg": "HS256", "kid": "k-ed"}),
                "c2lnbmF0dXJl",
            )),
            "symmetric",
        ),
        (
            "a garbage token",
            "mallory",
            "s1",
            ReplicaId::random(),
            Some("customer:c1".into()),
            "malformed token",
        ),
        (
            "no token",
            "mallory",
            "s1",
            ReplicaId::random(),
            None,
            "requires a signed device token",
        ),
        (
            "a token for another device",
            "till-1",
            "s1",
            ReplicaId::random(),
            Some(mallory.clone()),
            "token is for device mallory",
        ),
        (
            "a token for another store",
            "mallory",
            "s2",
            ReplicaId::random(),
            Some(mallory.clone()),
            "token is for store s1",
        ),
        (
            "another device's replica",
            "mallory",
            "s1",
            till_1_replica,
            Some(mallory.clone()),
            "belongs to another device",
        ),
    ];
    let handshake_count = handshakes.len();
    for (case, device, store, replica, token, reason) in handshakes {
        let outcome = RawClient::connect(&url, device, store, replica, token.as_deref()).await?;
        refused_with(case, outcome, ErrorCode::Unauthenticated, reason)?;
        honest.still_sync(case).await?;
    }

    // --- Subscriptions ----------------------------------------------------
    let app_c2 = app("app-c2", "c2")?;
    let subscriptions = [
        (
            "a till reading another store",
            "mallory",
            mallory.clone(),
            "store.s2",
        ),
        (
            "a till reading a customer's cart",
            "mallory",
            mallory.clone(),
            "customer.c1",
        ),
        (
            "a shopper reading another customer's cart",
            "app-c2",
            app_c2.clone(),
            "customer.c1",
        ),
    ];
    for (case, device, token, set) in subscriptions {
        let mut client = RawClient::connect(&url, device, "s1", ReplicaId::random(), Some(&token))
            .await?
            .map_err(|refused| anyhow::anyhow!("{case}: handshake refused: {refused:?}"))?;
        client.subscribe(set).await?;
        let outcome = client.next_message().await?;
        let outcome = match outcome {
            Ok(message) => anyhow::bail!("{case}: expected a refusal, got {message:?}"),
            Err(refused) => Err(refused),
        };
        refused_with(
            case,
            outcome,
            ErrorCode::Forbidden,
            &format!("may not read {set}"),
        )?;
        honest.still_sync(case).await?;
    }
    // The shopper's app follows its store for prices, never for orders.
    wait_until(SYNC_TIMEOUT, "the app to hold the price", || {
        Ok(!honest
            .app
            .client
            .replica()
            .doc_heads(&layout::prices_doc(&s1, &sku))?
            .is_empty())
    })
    .await?;
    anyhow::ensure!(
        honest
            .app
            .client
            .replica()
            .doc_ids()?
            .iter()
            .all(|doc| doc.set() != omnisync_core::DocSetId::orders(&s1)
                && !doc.as_str().contains("/rec/allowance/")),
        "a shopper's app received the store's orders or a till's allowance"
    );

    // --- Ops: each bad op is rejected alone; the good op after it lands ---
    let mut mallory_client =
        RawClient::connect(&url, "mallory", "s1", ReplicaId::random(), Some(&mallory))
            .await?
            .map_err(|refused| anyhow::anyhow!("mallory's handshake: {refused:?}"))?;
    let mut app_c2_client =
        RawClient::connect(&url, "app-c2", "s1", ReplicaId::random(), Some(&app_c2))
            .await?
            .map_err(|refused| anyhow::anyhow!("app-c2's handshake: {refused:?}"))?;
    let mut back_office_client = RawClient::connect(
        &url,
        "bo-1",
        "s1",
        ReplicaId::random(),
        Some(&back_office_token),
    )
    .await?
    .map_err(|refused| anyhow::anyhow!("bo-1's handshake: {refused:?}"))?;
    enum Who {
        Mallory,
        AppC2,
        BackOffice,
    }
    let op_cases: Vec<(&str, Who, &str, RejectCode)> = vec![
        (
            "a till writing another store",
            Who::Mallory,
            "store.s2/till/mallory/b1",
            RejectCode::Forbidden,
        ),
        (
            "a till writing the catalog",
            Who::Mallory,
            "store.s1/catalog/b250",
            RejectCode::Forbidden,
        ),
        (
            "a till writing prices",
            Who::Mallory,
            "store.s1/prices/b250",
            RejectCode::Forbidden,
        ),
        (
            "a till writing another till's orders",
            Who::Mallory,
            "store.s1/orders/till-9",
            RejectCode::Forbidden,
        ),
        (
            "a till writing a hub record",
            Who::Mallory,
            "store.s1/rec/stock/sku-1",
            RejectCode::Forbidden,
        ),
        (
            "a shopper writing another customer's cart",
            Who::AppC2,
            "customer.c1/wishlist",
            RejectCode::Forbidden,
        ),
        (
            "a shopper writing prices",
            Who::AppC2,
            "store.s1/prices/b251",
            RejectCode::Forbidden,
        ),
        (
            "a shopper writing its recommendations",
            Who::AppC2,
            "customer.c2/recommendations",
            RejectCode::Forbidden,
        ),
        (
            "the back office writing a hub record",
            Who::BackOffice,
            "store.s1/rec/stock/sku-2",
            RejectCode::Forbidden,
        ),
    ];
    for (index, (case, who, doc, code)) in op_cases.into_iter().enumerate() {
        let (client, good_doc) = match who {
            Who::Mallory => (&mut mallory_client, "store.s1/till/mallory/b2"),
            Who::AppC2 => (&mut app_c2_client, "customer.c2/wishlist"),
            Who::BackOffice => (&mut back_office_client, "store.s1/notes/bo"),
        };
        let replica = client.replica;
        let bad = client.op(doc, &format!("k{index}"), replica)?;
        let good = client.op(good_doc, &format!("k{index}"), replica)?;
        let (bad_id, good_id) = (bad.id, good.id);
        let acks = client
            .push(vec![bad, good])
            .await?
            .map_err(|refused| anyhow::anyhow!("{case}: session closed: {refused:?}"))?;
        let outcome = |id| {
            acks.iter()
                .find(|ack| ack.op == id)
                .map(|ack| ack.outcome.clone())
        };
        anyhow::ensure!(
            matches!(outcome(bad_id), Some(AckOutcome::Rejected { code: got, .. }) if got == code),
            "{case}: expected {code:?}, got {acks:?}"
        );
        anyhow::ensure!(
            matches!(outcome(good_id), Some(AckOutcome::Applied { .. })),
            "{case}: the rest of the push must go on: {acks:?}"
        );
        anyhow::ensure!(
            admin_doc_status(address, &back_office_token, doc).await? == 404,
            "{case}: {doc} exists at the hub"
        );
        honest.still_sync(case).await?;
    }

    // A forged op author (another device's replica in the op id) and a
    // forged change author (another device's actor in the change).
    let forged_op = {
        let mut op = mallory_client.op("store.s1/till/mallory/b4", "forged", till_1_replica)?;
        op.id.replica = till_1_replica;
        op.id.seq = 999_999;
        op
    };
    let forged_id = forged_op.id;
    let forged_change = mallory_client.op("store.s1/till/mallory/b5", "forged", till_1_replica)?;
    let malformed = {
        let mut op = mallory_client.op("store.s1/till/mallory/b6", "x", mallory_client.replica)?;
        op.body = OpBody::Changes(vec![DocChange {
            doc: DocId::new("store.s1/till/mallory/b6")?,
            bytes: vec![0x85, 0x6f, 0x4a, 0x83, 1, 2, 3],
        }]);
        op
    };
    // A second, different change under the number of an accepted one (the
    // first change of its actor in a document every till follows): stored,
    // it would stop every replica that applies it.
    let conflicting = mallory_client.op_with(
        "store.s1/till/mallory/b2",
        omnisync_tests::security::change_bytes(mallory_client.replica, "conflict", 7)?,
    )?;
    for (case, op, code) in [
        ("a forged op author", forged_op, RejectCode::WrongAuthor),
        (
            "a forged change author",
            forged_change,
            RejectCode::WrongAuthor,
        ),
        ("a malformed change", malformed, RejectCode::MalformedChange),
        (
            "a different change under a taken number",
            conflicting,
            RejectCode::Invalid,
        ),
    ] {
        let acks = mallory_client
            .push(vec![op])
            .await?
            .map_err(|refused| anyhow::anyhow!("{case}: session closed: {refused:?}"))?;
        anyhow::ensure!(
            matches!(&acks[..], [ack] if matches!(ack.outcome, AckOutcome::Rejected { code: got, .. } if got == code)),
            "{case}: {acks:?}"
        );
        honest.still_sync(case).await?;
    }
    for doc in [
        "store.s1/till/mallory/b4",
        "store.s1/till/mallory/b5",
        "store.s1/till/mallory/b6",
    ] {
        anyhow::ensure!(
            admin_doc_status(address, &back_office_token, doc).await? == 404,
            "{doc} was stored"
        );
    }
    let forged_answer = admin_op_status(address, &back_office_token, forged_id).await?;
    anyhow::ensure!(
        forged_answer.status == 404,
        "a forged op id was stored: {forged_answer:?}"
    );

    // --- Replays ----------------------------------------------------------
    let original = mallory_client.op("store.s1/till/mallory/b7", "sold", mallory_client.replica)?;
    let first = mallory_client
        .push(vec![original.clone()])
        .await?
        .map_err(|r| anyhow::anyhow!("{r:?}"))?;
    let Some(AckOutcome::Applied { hub_seq }) = first.first().map(|ack| ack.outcome.clone()) else {
        anyhow::bail!("the original op: {first:?}")
    };
    let doc_before = http::send(
        address,
        "GET",
        "/v1/admin/docs/store.s1/till/mallory/b7?format=automerge",
        Some(&back_office_token),
        "",
        HTTP_TIMEOUT,
    )
    .await?;
    let again = mallory_client
        .push(vec![original.clone(), original.clone()])
        .await?
        .map_err(|r| anyhow::anyhow!("{r:?}"))?;
    anyhow::ensure!(
        again
            .iter()
            .all(|ack| ack.outcome == AckOutcome::Applied { hub_seq }),
        "a replayed op must get its original answer: {again:?}"
    );
    // Another device replaying the captured op, as is and under its own id.
    let replayer_token = terminal("replayer")?;
    let mut replayer = RawClient::connect(
        &url,
        "replayer",
        "s1",
        ReplicaId::random(),
        Some(&replayer_token),
    )
    .await?
    .map_err(|refused| anyhow::anyhow!("replayer: {refused:?}"))?;
    let mut rebadged = original.clone();
    rebadged.id = OpId {
        replica: replayer.replica,
        seq: 1,
    };
    // The forged id is answered at once, the re-badged op after judging:
    // two `Acks`.
    let mut replayed = replayer
        .push(vec![original.clone(), rebadged])
        .await?
        .map_err(|r| anyhow::anyhow!("{r:?}"))?;
    replayed.extend(
        replayer
            .next_acks()
            .await?
            .map_err(|r| anyhow::anyhow!("{r:?}"))?,
    );
    anyhow::ensure!(
        replayed.len() == 2
            && replayed
                .iter()
                .all(|ack| matches!(ack.outcome, AckOutcome::Rejected { .. })),
        "a replay from another device must be refused: {replayed:?}"
    );
    let doc_after = http::send(
        address,
        "GET",
        "/v1/admin/docs/store.s1/till/mallory/b7?format=automerge",
        Some(&back_office_token),
        "",
        HTTP_TIMEOUT,
    )
    .await?;
    anyhow::ensure!(
        doc_before.status == 200 && doc_before.body == doc_after.body,
        "replays changed the document"
    );
    honest.still_sync("replayed ops").await?;
    replayer.close().await;

    // --- Frames -------------------------------------------------------------
    let mut oversized =
        RawClient::connect(&url, "mallory", "s1", ReplicaId::random(), Some(&mallory))
            .await?
            .map_err(|refused| anyhow::anyhow!("{refused:?}"))?;
    oversized
        .send_raw(vec![
            0u8;
            omnisync_core::protocol::message::FRAME_BYTES_MAX + 1
        ])
        .await
        .ok();
    match oversized.next_message().await? {
        Err(refused) => anyhow::ensure!(
            refused.close_code == Some(1009) && refused.reason.contains("too-large"),
            "oversized frame: {refused:?}"
        ),
        Ok(message) => anyhow::bail!("oversized frame answered with {message:?}"),
    }
    honest.still_sync("an oversized frame").await?;
    let mut malformed_frame =
        RawClient::connect(&url, "mallory", "s1", ReplicaId::random(), Some(&mallory))
            .await?
            .map_err(|refused| anyhow::anyhow!("{refused:?}"))?;
    malformed_frame
        .send_raw(b"OS\x01\x02\xff\xff\xff\xff\xff\xff".to_vec())
        .await?;
    let outcome = match malformed_frame.next_message().await? {
        Ok(message) => anyhow::bail!("malformed frame answered with {message:?}"),
        Err(refused) => Err(refused),
    };
    refused_with(
        "a malformed frame",
        outcome,
        ErrorCode::Malformed,
        "malformed",
    )?;
    honest.still_sync("a malformed frame").await?;

    // --- A flood from one device ---------------------------------------------
    let mut flooder = RawClient::connect(
        &url,
        "flooder",
        "s1",
        ReplicaId::random(),
        Some(&terminal("flooder")?),
    )
    .await?
    .map_err(|refused| anyhow::anyhow!("{refused:?}"))?;
    let ping = omnisync_core::protocol::message::encode(&ClientMessage::Ping(1));
    for _ in 0..2_000 {
        if flooder
            .socket()
            .feed(Message::Binary(ping.clone().into()))
            .await
            .is_err()
        {
            break;
        }
    }
    let _ = flooder.socket().flush().await;
    let flood_end = loop {
        match flooder.next_message().await? {
            Ok(HubMessage::Pong(_)) => continue,
            Ok(other) => anyhow::bail!("flood answered with {other:?}"),
            Err(refused) => break refused,
        }
    };
    anyhow::ensure!(
        flood_end.code == Some(ErrorCode::LimitExceeded)
            && flood_end.reason.contains("too many messages"),
        "flood: {flood_end:?}"
    );
    honest.still_sync("a flood from one device").await?;

    // --- A device that stops reading ----------------------------------------
    let metrics_before = http::get(address, "/metrics", HTTP_TIMEOUT).await?.body;
    let limit_exceeded = "omnisync_audit_events_total{code=\"limit-exceeded\"}";
    let exceeded_before = http::metric_value(&metrics_before, limit_exceeded).unwrap_or(0.0);
    let small_window = tokio::net::TcpSocket::new_v4()?;
    small_window.set_recv_buffer_size(4096)?;
    let tcp = small_window.connect(address).await?;
    let mut sleeper = RawClient::connect_over(
        tcp,
        &url,
        "sleeper",
        "s1",
        ReplicaId::random(),
        Some(&terminal("sleeper")?),
    )
    .await?
    .map_err(|refused| anyhow::anyhow!("{refused:?}"))?;
    sleeper.subscribe("store.s1").await?;
    loop {
        if let Ok(HubMessage::Changes(batch)) = sleeper.next_message().await?
            && batch.caught_up
        {
            break;
        }
    }
    // The back office publishes ~3 MB the sleeper never reads.
    let big = "x".repeat(100 * 1024);
    for n in 0..30 {
        let doc = DocId::new(format!("store.s1/notes/n{n}"))?;
        honest.back_office.client.commit(&[omnisync_core::DocEdit {
            doc,
            edits: vec![omnisync_core::Edit::put(
                &["text"],
                omnisync_core::Value::Str(big.clone()),
            )],
        }])?;
    }
    let exceeded_after = async {
        let deadline = std::time::Instant::now() + SYNC_TIMEOUT;
        loop {
            let metrics = http::get(address, "/metrics", HTTP_TIMEOUT).await?.body;
            let now = http::metric_value(&metrics, limit_exceeded).unwrap_or(0.0);
            if now > exceeded_before {
                return anyhow::Ok(now);
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "the hub kept buffering for a device that stopped reading"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    .await?;
    anyhow::ensure!(exceeded_after > exceeded_before);
    drop(sleeper);
    honest.still_sync("a device that stopped reading").await?;

    // --- A token that expires mid-session --------------------------------------
    let short = keys.enrol("short-lived", "s1", "terminal", &["--ttl-s", "2"])?;
    let mut short_lived =
        RawClient::connect(&url, "short-lived", "s1", ReplicaId::random(), Some(&short))
            .await?
            .map_err(|refused| anyhow::anyhow!("{refused:?}"))?;
    let ended = loop {
        match short_lived.next_message().await? {
            Ok(_) => continue,
            Err(refused) => break refused,
        }
    };
    anyhow::ensure!(
        ended.code == Some(ErrorCode::Unauthenticated) && ended.reason.contains("expired"),
        "expiry: {ended:?}"
    );

    // --- Revocation and the HTTP endpoints ---------------------------------------
    let lost = terminal("lost-till")?;
    let mut lost_client =
        RawClient::connect(&url, "lost-till", "s1", ReplicaId::random(), Some(&lost))
            .await?
            .map_err(|refused| anyhow::anyhow!("{refused:?}"))?;
    let revoke_path = "/v1/admin/devices/lost-till/revoke";
    let body = r#"{"reason": "reported stolen"}"#;
    let no_token = http::send(address, "POST", revoke_path, None, body, HTTP_TIMEOUT).await?;
    anyhow::ensure!(
        no_token.status == 401,
        "revoke without a token: {no_token:?}"
    );
    let as_till = http::send(
        address,
        "POST",
        revoke_path,
        Some(&mallory),
        body,
        HTTP_TIMEOUT,
    )
    .await?;
    anyhow::ensure!(
        as_till.status == 403,
        "revoke with a till's token: {as_till:?}"
    );
    let read_as_till = admin_doc_status(address, &mallory, "store.s1/till/mallory/b7").await?;
    anyhow::ensure!(
        read_as_till == 403,
        "admin read with a till's token: {read_as_till}"
    );
    let revoked = http::send(
        address,
        "POST",
        revoke_path,
        Some(&back_office_token),
        body,
        HTTP_TIMEOUT,
    )
    .await?;
    anyhow::ensure!(revoked.status == 200, "revoke: {revoked:?}");
    let cut = loop {
        match lost_client.next_message().await? {
            Ok(_) => continue,
            Err(refused) => break refused,
        }
    };
    anyhow::ensure!(
        cut.code == Some(ErrorCode::Unauthenticated) && cut.reason.contains("revoked"),
        "a revoked device's session: {cut:?}"
    );
    let again =
        RawClient::connect(&url, "lost-till", "s1", ReplicaId::random(), Some(&lost)).await?;
    refused_with(
        "a revoked device reconnecting",
        again,
        ErrorCode::Unauthenticated,
        "reported stolen",
    )?;
    let refresh_revoked = http::send(
        address,
        "POST",
        "/v1/auth/refresh",
        Some(&lost),
        "",
        HTTP_TIMEOUT,
    )
    .await?;
    anyhow::ensure!(
        refresh_revoked.status == 401,
        "refresh of a revoked token: {refresh_revoked:?}"
    );
    let refresh_forged = http::send(
        address,
        "POST",
        "/v1/auth/refresh",
        Some(&forger.enrol("mallory", "s1", "terminal", &[])?),
        "",
        HTTP_TIMEOUT,
    )
    .await?;
    anyhow::ensure!(
        refresh_forged.status == 401,
        "refresh of a forged token: {refresh_forged:?}"
    );
    let refreshed = http::send(
        address,
        "POST",
        "/v1/auth/refresh",
        Some(&mallory),
        "",
        HTTP_TIMEOUT,
    )
    .await?;
    anyhow::ensure!(
        refreshed.status == 200 && refreshed.body.contains("\"token\""),
        "refresh: {refreshed:?}"
    );
    honest.still_sync("revocation").await?;

    // Every refusal was audited.
    let metrics = http::get(address, "/metrics", HTTP_TIMEOUT).await?.body;
    let audited = |code: &str| {
        http::metric_value(
            &metrics,
            &format!("omnisync_audit_events_total{{code=\"{code}\"}}"),
        )
        .unwrap_or(0.0)
    };
    anyhow::ensure!(
        audited("unauthenticated") >= (handshake_count + 3) as f64,
        "{metrics}"
    );
    anyhow::ensure!(audited("forbidden") >= 12.0, "{metrics}");
    // The two forged-author cases above at least (each asserted on its own).
    anyhow::ensure!(audited("wrong-author") >= 2.0, "{metrics}");
    anyhow::ensure!(audited("invalid") >= 1.0, "{metrics}");
    anyhow::ensure!(audited("malformed-change") >= 1.0, "{metrics}");
    anyhow::ensure!(audited("limit-exceeded") >= 2.0, "{metrics}");
    // The honest devices never saw a refusal, and nothing of theirs was rejected.
    for device in honest
        .tills
        .iter()
        .chain([&honest.back_office, &honest.app])
    {
        anyhow::ensure!(
            device.client.status().rejected == 0,
            "{:?}",
            device.client.status()
        );
    }
    honest.still_sync("the end").await?;
    Ok(())
}
