//! Scenario: the event feed of a real hub process.
//!
//! Tills of two stores sell; one sale is refused. The feed from position 0
//! holds every decision as a typed event, with dense outbox positions and
//! dense positions per store; filters by store and type, a long poll woken
//! by a new sale, and a Server-Sent Events stream resumed with
//! `Last-Event-ID` all agree with it. After `kill -9` and a restart the
//! same events are there, byte for byte. A token hub scopes the feed: an
//! event-consumer token for one store reads that store only and gets 403 for
//! another; a terminal token and no token are refused.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use omnisync_core::now_ms;
use omnisync_core::retail::orders::{CheckoutRequest, OrderLine};
use omnisync_core::vocab::goods::{Channel, Currency, Sku};
use omnisync_core::vocab::intent::StockCommand;
use omnisync_hub_engine::events::{CloudEvent, EventType};
use omnisync_tests::process::{HubProcess, free_port, hub_binary};
use omnisync_tests::security::{Keys, start_hub, token_mode_args};
use omnisync_tests::{SYNC_TIMEOUT, TestDevice, device, events, http, init_logs};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

fn tea() -> Sku {
    Sku::new("tea").expect("sku")
}

fn sale(order: &str, quantity: u64) -> CheckoutRequest {
    CheckoutRequest {
        order_id: order.parse().unwrap(),
        idempotency_key: None,
        lines: vec![OrderLine {
            sku: tea(),
            quantity,
            unit_price_minor: 250,
        }],
        currency: Currency::new("EUR").expect("currency"),
        payment_ref: format!("card-{order}").parse().unwrap(),
        channel: Channel::Pos,
    }
}

async fn stock_up(office: &TestDevice, units: u64) -> anyhow::Result<()> {
    office.client.write(|store| {
        store.stock_command(
            StockCommand::Receive {
                key: "delivery-1".parse().unwrap(),
                sku: tea(),
                quantity: units,
            },
            now_ms(),
        )
    })?;
    office.client.wait_synced(SYNC_TIMEOUT).await?;
    Ok(())
}

/// Dense positions overall and per store, as the feed promises.
fn assert_dense(all: &[CloudEvent]) {
    let seqs: Vec<u64> = all.iter().map(|event| event.sequence).collect();
    assert_eq!(seqs, (1..=all.len() as u64).collect::<Vec<_>>());
    let mut per_store: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for event in all {
        assert_eq!(event.id, event.sequence.to_string());
        per_store
            .entry(event.store.as_str())
            .or_default()
            .push(event.storesequence);
    }
    for (store, seqs) in per_store {
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "store {store}"
        );
    }
}

fn count(all: &[CloudEvent], store: &str, kind: EventType) -> usize {
    all.iter()
        .filter(|event| event.store == store && event.kind == kind)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_holds_every_decision_in_order_and_survives_a_kill() -> anyhow::Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let binary = hub_binary()?;
    let port = free_port()?;
    let mut hub = HubProcess::start(&binary, port, dir.path()).await?;
    let address = hub.address;

    let mut tills = Vec::new();
    for store in ["s1", "s2"] {
        let office = device(&hub.sync_url(), &format!("office-{store}"), store)?;
        stock_up(&office, 20).await?;
        tills.push((
            store,
            device(&hub.sync_url(), &format!("till-{store}"), store)?,
        ));
    }
    for (store, till) in &tills {
        for n in 0..5 {
            till.client.checkout(&sale(&format!("{store}-{n}"), 1))?;
        }
    }
    // More than the store holds: the hub refuses it.
    tills[0].1.client.checkout(&sale("s1-too-many", 500))?;
    for (_, till) in &tills {
        till.client.wait_synced(SYNC_TIMEOUT).await?;
    }

    let all = events::read_all(address, "", None).await?;
    assert_dense(&all);
    for store in ["s1", "s2"] {
        assert_eq!(count(&all, store, EventType::OrderConfirmed), 5, "{store}");
        assert!(
            count(&all, store, EventType::StockLevelChanged) >= 1,
            "{store}"
        );
    }
    assert_eq!(count(&all, "s1", EventType::OrderRefused), 1);
    assert_eq!(count(&all, "s2", EventType::OrderRefused), 0);
    let refused = all
        .iter()
        .find(|event| event.kind == EventType::OrderRefused)
        .context("a refusal")?;
    assert_eq!(refused.data["order_id"], "s1-too-many");
    assert!(
        refused.data["reason"]["OutOfStock"].is_object(),
        "{refused:?}"
    );
    let confirmed = all
        .iter()
        .find(|event| event.kind == EventType::OrderConfirmed)
        .context("an order")?;
    assert_eq!(confirmed.data["total_minor"], 250);
    assert_eq!(confirmed.specversion, "1.0");
    assert_eq!(confirmed.tenant, "dev");
    assert!(confirmed.time.ends_with('Z'), "{}", confirmed.time);

    // Filters agree with the whole.
    let s2 = events::read_all(address, "store=s2", None).await?;
    let expected: Vec<&CloudEvent> = all.iter().filter(|event| event.store == "s2").collect();
    assert_eq!(s2.iter().collect::<Vec<_>>(), expected);
    let refusals = events::read_all(address, "type=omnisync.order.refused", None).await?;
    assert_eq!(refusals.len(), 1);

    // A long poll at the head returns when the next sale is decided.
    let head = all.len() as u64;
    let poll = tokio::spawn(async move {
        events::page(
            address,
            &format!("after={head}&wait=30&type=omnisync.order.confirmed"),
            None,
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished(), "the long poll waits for an event");
    let waited = std::time::Instant::now();
    tills[1].1.client.checkout(&sale("s2-late", 1))?;
    let woken = tokio::time::timeout(Duration::from_secs(10), poll).await???;
    assert_eq!(woken.events.len(), 1);
    assert_eq!(woken.events[0].data["order_id"], "s2-late");
    assert!(waited.elapsed() < Duration::from_secs(5));

    // Server-Sent Events, resumed after the first three events.
    let streamed = read_stream(address, 3, 4).await?;
    let all = events::read_all(address, "", None).await?;
    let expected: Vec<String> = all[3..7].iter().map(|event| event.id.clone()).collect();
    assert_eq!(
        streamed
            .iter()
            .map(|event| event.id.clone())
            .collect::<Vec<_>>(),
        expected
    );
    assert_eq!(streamed[..], all[3..7]);

    // Bad parameters get one clear line each.
    for (query, says) in [
        ("after=x", "after must be"),
        ("type=omnisync.nope", "unknown event type"),
        ("limit=0", "limit must be"),
    ] {
        let response = http::get(
            address,
            &format!("/v1/events?{query}"),
            events::FEED_TIMEOUT,
        )
        .await?;
        assert_eq!(response.status, 400, "{query}");
        assert!(response.body.contains(says), "{query}: {}", response.body);
    }

    // kill -9, restart: the outbox is durable with its causes.
    hub.kill()?;
    let hub = HubProcess::start(&binary, free_port()?, dir.path()).await?;
    let after_restart = events::read_all(hub.address, "", None).await?;
    assert_eq!(after_restart, all);
    Ok(())
}

/// Reads `want` events from `/v1/events/stream` resuming after position
/// `last` (the `Last-Event-ID` header).
async fn read_stream(
    address: std::net::SocketAddr,
    last: u64,
    want: usize,
) -> anyhow::Result<Vec<CloudEvent>> {
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    let request = format!(
        "GET /v1/events/stream HTTP/1.1\r\nHost: {address}\r\nAccept: text/event-stream\r\nLast-Event-ID: {last}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut lines = tokio::io::BufReader::new(stream).lines();
    let mut got = Vec::new();
    let read = async {
        while got.len() < want {
            let Some(line) = lines.next_line().await? else {
                anyhow::bail!("the stream ended after {} events", got.len());
            };
            if let Some(data) = line
                .strip_prefix("data: ")
                .or_else(|| line.strip_prefix("data:"))
            {
                // Chunked transfer: a data line is whole within its chunk.
                got.push(serde_json::from_str::<CloudEvent>(data.trim())?);
            }
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .context("the event stream took longer than 20 s")??;
    Ok(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_scope_the_feed_to_their_stores() -> anyhow::Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let keys = Keys::generate(dir.path(), "eddsa", "k1")?;
    let hub = start_hub(dir.path(), &token_mode_args(&keys)?).await?;
    let address = hub.address;
    for store in ["s1", "s2"] {
        let token = keys.enrol(&format!("office-{store}"), store, "back-office", &[])?;
        let office = omnisync_tests::device_with(
            &hub.sync_url(),
            &format!("office-{store}"),
            store,
            omnisync_tests::DeviceOptions {
                token: Some(token),
                ..Default::default()
            },
        )?;
        stock_up(&office, 5).await?;
    }
    let s1_only = keys.enrol("erp", "s1", "event-consumer", &["--stores", "s1"])?;
    let everything = keys.enrol("analytics", "s1", "event-consumer", &[])?;
    let terminal = keys.enrol("till-1", "s1", "terminal", &[])?;

    let mine = events::read_all(address, "", Some(&s1_only)).await?;
    assert!(!mine.is_empty());
    assert!(mine.iter().all(|event| event.store == "s1"), "{mine:?}");
    let all = events::read_all(address, "", Some(&everything)).await?;
    assert!(all.iter().any(|event| event.store == "s2"));
    assert!(
        all.iter()
            .all(|event| event.tenant == omnisync_tests::security::TENANT)
    );

    for (bearer, query, status) in [
        (Some(s1_only.as_str()), "store=s2", 403),
        (Some(terminal.as_str()), "", 403),
        (None, "", 401),
        (Some("not-a-token"), "", 401),
    ] {
        let response = http::send(
            address,
            "GET",
            &format!("/v1/events?{query}"),
            bearer,
            "",
            events::FEED_TIMEOUT,
        )
        .await?;
        assert_eq!(response.status, status, "{query} {:?}", response.body);
    }
    Ok(())
}
