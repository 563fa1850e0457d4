//! `wss://` and the token life cycle against a real hub process: a store CA
//! made with rcgen, devices that trust it sync over TLS, devices that do not
//! (the public roots, another CA, plain `ws://`) never connect; a device
//! refreshes its short-lived token before it expires and keeps syncing past
//! the old token's expiry, while a device that cannot refresh is cut off
//! with a typed, readable reason.

use std::time::Duration;

use anyhow::Context as _;
use omnisync_core::client::Link;
use omnisync_core::db::OpStatus;
use omnisync_core::protocol::message::ErrorCode;
use omnisync_core::retail::orders::{CheckoutRequest, OrderLine};
use omnisync_core::vocab::goods::Currency;
use omnisync_core::vocab::goods::{Channel, Sku};
use omnisync_tests::security::{Keys, start_hub, token_mode_args};
use omnisync_tests::{DeviceOptions, SYNC_TIMEOUT, TestDevice, device_with, init_logs, wait_until};

/// A CA and a hub certificate for `localhost` and 127.0.0.1 signed by it.
struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn store_pki(name: &str) -> anyhow::Result<Pki> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} store CA"));
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let hub_key = rcgen::KeyPair::generate()?;
    let hub_params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    let hub_cert = hub_params.signed_by(&hub_key, &issuer)?;
    Ok(Pki {
        ca_pem: ca_cert.pem(),
        cert_pem: hub_cert.pem(),
        key_pem: hub_key.serialize_pem(),
    })
}

/// A checkout the hub must decide (there is no stock, so it is refused as out
/// of stock): the intent goes up and the decision comes back through wss://.
async fn sell(till: &TestDevice, order: &str) -> anyhow::Result<()> {
    let request = CheckoutRequest {
        order_id: order.parse().unwrap(),
        idempotency_key: None,
        lines: vec![OrderLine {
            sku: Sku::new("sku-1")?,
            quantity: 1,
            unit_price_minor: 100,
        }],
        currency: Currency::new("EUR")?,
        payment_ref: format!("card-{order}").parse().unwrap(),
        channel: Channel::Pos,
    };
    let op = till.client.checkout(&request)?.op;
    till.client
        .wait_for(SYNC_TIMEOUT, "the sale's decision", |status| {
            status.pending == 0
        })
        .await?;
    let status = till.client.store().op_status(&op)?;
    anyhow::ensure!(
        matches!(
            status,
            Some(OpStatus::Refused { .. } | OpStatus::Confirmed { .. })
        ),
        "{order}: {status:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_with_a_store_ca_and_tokens_that_refresh_before_they_expire() -> anyhow::Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let pki = store_pki("berlin")?;
    let stranger = store_pki("elsewhere")?;
    let cert = dir.path().join("hub.pem");
    let key = dir.path().join("hub.key");
    std::fs::write(&cert, &pki.cert_pem)?;
    std::fs::write(&key, &pki.key_pem)?;
    let keys = Keys::generate(dir.path(), "es256", "k1")?;
    let mut args = token_mode_args(&keys)?;
    args.extend(
        [
            "--tls-cert",
            cert.to_str().context("path")?,
            "--tls-key",
            key.to_str().context("path")?,
            "--refresh-ttl-s",
            "4",
        ]
        .map(str::to_owned),
    );
    let hub = start_hub(dir.path(), &args).await?;
    let url = format!("wss://localhost:{}/v1/sync", hub.address.port());
    let trusted = |name: &str, token: String, no_refresh: bool| {
        device_with(
            &url,
            name,
            "s1",
            DeviceOptions {
                token: Some(token),
                hub_ca_pem: Some(pki.ca_pem.clone().into_bytes()),
                no_refresh,
                ..DeviceOptions::default()
            },
        )
    };
    // Two tills over wss:// that trust the store's CA; till-1's token lives
    // 4 s and is refreshed three quarters into its life.
    let short = keys.enrol("till-1", "s1", "terminal", &["--ttl-s", "4"])?;
    let first_exp_s = omnisync_core::client::refresh::token_times(&short)
        .context("the token's times")?
        .1;
    let till_1 = trusted("till-1", short.clone(), false)?;
    let till_2 = trusted(
        "till-2",
        keys.enrol("till-2", "s1", "terminal", &[])?,
        false,
    )?;
    // A till whose token expires and that may not refresh it.
    let lapsing = trusted(
        "till-3",
        keys.enrol("till-3", "s1", "terminal", &["--ttl-s", "2"])?,
        true,
    )?;
    for till in [&till_1, &till_2, &lapsing] {
        till.client.wait_synced(SYNC_TIMEOUT).await?;
    }
    sell(&till_1, "order-1").await?;
    sell(&till_2, "order-1b").await?;

    // Devices that do not trust the hub's certificate never get in.
    let untrusting = [
        ("the public web roots", None),
        (
            "another store's CA",
            Some(stranger.ca_pem.clone().into_bytes()),
        ),
    ];
    for (case, ca) in untrusting {
        let device = device_with(
            &url,
            "till-9",
            "s1",
            DeviceOptions {
                token: Some(keys.enrol("till-9", "s1", "terminal", &[])?),
                hub_ca_pem: ca,
                ..DeviceOptions::default()
            },
        )?;
        wait_until(SYNC_TIMEOUT, "a certificate error", || {
            let status = device.client.status();
            anyhow::ensure!(
                status.link != Link::Online,
                "{case}: connected to an untrusted hub"
            );
            Ok(status
                .last_error
                .is_some_and(|error| error.to_lowercase().contains("certificate")))
        })
        .await
        .with_context(|| format!("trusting {case}"))?;
        device.client.stop().await;
    }
    let plain =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/v1/sync", hub.address.port()));
    let plain = tokio::time::timeout(Duration::from_secs(5), plain).await;
    anyhow::ensure!(
        !matches!(plain, Ok(Ok(_))),
        "plain ws:// must not reach a TLS hub"
    );

    // till-1 refreshes, stores the new token, and keeps syncing after its
    // first token has expired.
    wait_until(SYNC_TIMEOUT, "till-1 to refresh its token", || {
        Ok(till_1.client.credentials().token.as_deref() != Some(short.as_str()))
    })
    .await?;
    let refreshed = till_1.client.credentials().token.context("a token")?;
    anyhow::ensure!(
        till_1.client.store().stored_token()?.as_deref() == Some(refreshed.as_str()),
        "the refreshed token is stored"
    );
    wait_until(SYNC_TIMEOUT, "the first token to expire", || {
        Ok(omnisync_core::now_ms() / 1000 > first_exp_s + 1)
    })
    .await?;
    sell(&till_1, "order-2").await?;
    till_1.client.wait_synced(SYNC_TIMEOUT).await?;

    // till-3 could not refresh: the hub cut it off, and it says why.
    wait_until(SYNC_TIMEOUT, "till-3 to be refused", || {
        Ok(lapsing.client.status().refusal.is_some_and(|refusal| {
            refusal.code == ErrorCode::Unauthenticated && refusal.detail.contains("expired")
        }))
    })
    .await?;
    anyhow::ensure!(lapsing.client.status().link != Link::Online);
    Ok(())
}
