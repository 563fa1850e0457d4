//! `wss://` and the token life cycle against a real hub process: a store CA
//! made with rcgen, devices that trust it sync over TLS, devices that do not
//! (the public roots, another CA, plain `ws://`) never connect; a device
//! refreshes its short-lived token before it expires and keeps syncing past
//! the old token's expiry, while a device that cannot refresh is cut off
//! with a typed, readable reason. A chain's identity provider (a test one
//! on 127.0.0.1:0 serving OpenID discovery and an RS256 key set) rotates its
//! keys while the hub runs: the new key is fetched on its first token, the
//! removed key stops working; a JWKS file is reloaded on SIGHUP.

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
    let status = till.client.replica().op_status(&op)?;
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
        till_1.client.replica().stored_token()?.as_deref() == Some(refreshed.as_str()),
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

/// An RSA key of the test identity provider. The private keys are test-only
/// fixtures in `tests/__idp__/` (made once with `openssl genrsa -traditional
/// 2048`): `ring` verifies RSA but cannot generate RSA keys, and generating
/// them with the pure-Rust `rsa` crate in an unoptimised test build takes
/// seconds per key.
struct RsaKey {
    kid: String,
    der: Vec<u8>,
    n: Vec<u8>,
    e: Vec<u8>,
}

impl RsaKey {
    fn load(file: &str, kid: &str) -> anyhow::Result<Self> {
        use base64::Engine as _;
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/__idp__")
            .join(file);
        let pem = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let body: String = pem
            .lines()
            .filter(|line| !line.starts_with("-----"))
            .collect();
        let der = base64::engine::general_purpose::STANDARD.decode(body)?;
        let pair = ring::signature::RsaKeyPair::from_der(&der)
            .map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))?;
        let public = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public());
        Ok(Self {
            kid: kid.to_owned(),
            der,
            n: public.n,
            e: public.e,
        })
    }

    /// The public JWK as Entra ID publishes it: no `alg`, `use` sig.
    fn jwk(&self) -> serde_json::Value {
        use base64::Engine as _;
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        serde_json::json!({
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "n": b64(&self.n),
            "e": b64(&self.e),
        })
    }

    fn sign(&self, claims: &serde_json::Value) -> anyhow::Result<String> {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(
            &header,
            claims,
            &jsonwebtoken::EncodingKey::from_rsa_der(&self.der),
        )?)
    }
}

/// Longest HTTP request the test identity provider reads, bytes.
const IDP_REQUEST_BYTES_MAX: usize = 16 * 1024;

/// A test identity provider on 127.0.0.1:0: OpenID discovery at
/// `/.well-known/openid-configuration` naming `/keys`, which serves the key
/// set held in `jwks` (replace it to rotate keys). Stops when dropped.
struct TestIdp {
    issuer: String,
    jwks: std::sync::Arc<std::sync::Mutex<serde_json::Value>>,
    key_fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    server: tokio::task::JoinHandle<()>,
}

impl TestIdp {
    async fn start(keys: &[&RsaKey]) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let issuer = format!("http://{}", listener.local_addr()?);
        let idp_jwks = std::sync::Arc::new(std::sync::Mutex::new(serde_json::Value::Null));
        let key_fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (jwks, fetches, base) = (idp_jwks.clone(), key_fetches.clone(), issuer.clone());
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (jwks, fetches, base) = (jwks.clone(), fetches.clone(), base.clone());
                tokio::spawn(async move {
                    let _ = serve_idp_request(stream, &jwks, &fetches, &base).await;
                });
            }
        });
        let idp = Self {
            issuer,
            jwks: idp_jwks,
            key_fetches,
            server,
        };
        idp.publish(keys);
        Ok(idp)
    }

    /// Serves exactly `keys` from now on.
    fn publish(&self, keys: &[&RsaKey]) {
        let set =
            serde_json::json!({ "keys": keys.iter().map(|key| key.jwk()).collect::<Vec<_>>() });
        *self
            .jwks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = set;
    }

    fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer)
    }

    fn key_fetches(&self) -> usize {
        self.key_fetches.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for TestIdp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn serve_idp_request(
    mut stream: tokio::net::TcpStream,
    jwks: &std::sync::Mutex<serde_json::Value>,
    fetches: &std::sync::atomic::AtomicUsize,
    issuer: &str,
) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut request = Vec::new();
    let mut buffer = [0u8; 1024];
    while !request.windows(4).any(|window| window == b"\r\n\r\n") {
        let read = stream.read(&mut buffer).await?;
        anyhow::ensure!(
            read > 0 && request.len() + read <= IDP_REQUEST_BYTES_MAX,
            "bad request"
        );
        request.extend_from_slice(&buffer[..read]);
    }
    let request = String::from_utf8_lossy(&request);
    let path = request.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = match path {
        "/.well-known/openid-configuration" => (
            "200 OK",
            serde_json::json!({
                "issuer": issuer,
                "jwks_uri": format!("{issuer}/keys"),
                "id_token_signing_alg_values_supported": ["RS256"],
            })
            .to_string(),
        ),
        "/keys" => {
            fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let set = jwks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .to_string();
            ("200 OK", set)
        }
        _ => ("404 Not Found", "{}".to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await?;
    Ok(())
}

/// Claims as an Entra-style provider names them: `tid`, `store_id`, a
/// `roles` array holding unrelated roles too, the device in `device_id`.
fn provider_claims(issuer: &str, device: &str, roles: &[&str]) -> serde_json::Value {
    let now_s = omnisync_core::now_ms() / 1000;
    serde_json::json!({
        "iss": issuer,
        "aud": ["api://omnisync-hub", "other-api"],
        "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ",
        "tid": omnisync_tests::security::TENANT,
        "store_id": "s1",
        "device_id": device,
        "roles": roles,
        "iat": now_s - 5,
        "nbf": now_s - 5,
        "exp": now_s + 3600,
    })
}

/// Polls `check` every 100 ms until it holds, for at most `SYNC_TIMEOUT`.
async fn eventually<F, Fut>(what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + SYNC_TIMEOUT;
    while !check().await {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Whether the hub admits `device` of store s1 with `token`: `Err` holds
/// the refusal's reason.
async fn admitted(url: &str, device: &str, token: &str) -> anyhow::Result<Result<(), String>> {
    use omnisync_core::ReplicaId;
    use omnisync_tests::security::RawClient;
    Ok(
        match RawClient::connect(url, device, "s1", ReplicaId::random(), Some(token)).await? {
            Ok(client) => {
                client.close().await;
                Ok(())
            }
            Err(refused) => Err(refused.reason),
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_providers_rs256_keys_rotate_without_a_hub_restart() -> anyhow::Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let old = RsaKey::load("rsa-2048-a.pem", "2026-old")?;
    let new = RsaKey::load("rsa-2048-b.pem", "2026-new")?;
    let idp = TestIdp::start(&[&old]).await?;
    let args: Vec<String> = [
        "--jwks-url",
        &idp.discovery_url(),
        "--issuer",
        &idp.issuer,
        "--audience",
        "api://omnisync-hub",
        "--tenant",
        omnisync_tests::security::TENANT,
        "--token-algs",
        "RS256,ES256",
        "--claim-tenant",
        "tid",
        "--claim-store",
        "store_id",
        "--claim-role",
        "roles",
        "--claim-device",
        "device_id",
        "--role-map",
        "Omnisync.Terminal=terminal",
        "--role-map",
        "Omnisync.BackOffice=back-office",
        "--jwks-refetch-min-ms",
        "300",
        "--jwks-refresh-ms",
        "2000",
        "--token-leeway-s",
        "0",
    ]
    .iter()
    .map(|arg| (*arg).to_owned())
    .collect();
    let hub = start_hub(dir.path(), &args).await?;
    let url = hub.sync_url();
    let terminal = |key: &RsaKey, device: &str| {
        key.sign(&provider_claims(
            &idp.issuer,
            device,
            &["Directory.Reader", "Omnisync.Terminal"],
        ))
    };

    // Before the rotation: the old key works, the not yet published one not.
    assert_eq!(
        admitted(&url, "till-1", &terminal(&old, "till-1")?).await?,
        Ok(())
    );
    let early = admitted(&url, "till-2", &terminal(&new, "till-2")?).await?;
    assert!(
        early
            .as_ref()
            .is_err_and(|reason| reason.contains("no key")),
        "{early:?}"
    );

    // The provider publishes the new key beside the old one. The first token
    // signed with it makes the hub fetch the key set again (the refetch
    // interval has passed), without a restart.
    idp.publish(&[&old, &new]);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let fetches = idp.key_fetches();
    assert_eq!(
        admitted(&url, "till-2", &terminal(&new, "till-2")?).await?,
        Ok(())
    );
    assert!(
        idp.key_fetches() > fetches,
        "the unknown kid caused a fetch"
    );
    assert_eq!(
        admitted(&url, "till-1", &terminal(&old, "till-1")?).await?,
        Ok(())
    );

    // The provider removes the old key: after the hub's next scheduled fetch
    // a token signed with it is refused, while the new key keeps working.
    idp.publish(&[&new]);
    let removed = terminal(&old, "till-1")?;
    eventually("the removed key to be refused", || async {
        admitted(&url, "till-1", &removed)
            .await
            .is_ok_and(|outcome| outcome.is_err())
    })
    .await?;
    let refused = admitted(&url, "till-1", &removed).await?;
    assert!(
        refused
            .as_ref()
            .is_err_and(|reason| reason.contains("no key")),
        "{refused:?}"
    );
    assert_eq!(
        admitted(&url, "till-2", &terminal(&new, "till-2")?).await?,
        Ok(())
    );

    // Claim mapping: a token whose roles map to no hub role, or to two, is
    // refused; one of another tenant too.
    let no_role = new.sign(&provider_claims(
        &idp.issuer,
        "till-3",
        &["Directory.Reader"],
    ))?;
    let outcome = admitted(&url, "till-3", &no_role).await?;
    assert!(
        outcome
            .as_ref()
            .is_err_and(|reason| reason.contains("no role")),
        "{outcome:?}"
    );
    let two_roles = new.sign(&provider_claims(
        &idp.issuer,
        "till-3",
        &["Omnisync.Terminal", "Omnisync.BackOffice"],
    ))?;
    assert!(admitted(&url, "till-3", &two_roles).await?.is_err());
    let mut other_tenant = provider_claims(&idp.issuer, "till-3", &["Omnisync.Terminal"]);
    other_tenant["tid"] = "globex".into();
    assert!(
        admitted(&url, "till-3", &new.sign(&other_tenant)?)
            .await?
            .is_err()
    );
    // A symmetric token keyed with the public modulus is refused by name.
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &provider_claims(&idp.issuer, "till-3", &["Omnisync.Terminal"]),
        &jsonwebtoken::EncodingKey::from_secret(&new.n),
    )?;
    let outcome = admitted(&url, "till-3", &hs).await?;
    assert!(
        outcome
            .as_ref()
            .is_err_and(|reason| reason.contains("symmetric")),
        "{outcome:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_file_is_reloaded_on_sighup() -> anyhow::Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let keys = Keys::generate(dir.path(), "eddsa", "k-1")?;
    let next_dir = dir.path().join("next");
    std::fs::create_dir_all(&next_dir)?;
    let next = Keys::generate(&next_dir, "es256", "k-2")?;
    let hub = start_hub(dir.path(), &token_mode_args(&keys)?).await?;
    let url = hub.sync_url();
    let token = next.enrol("till-9", "s1", "terminal", &[])?;
    let before = admitted(&url, "till-9", &token).await?;
    assert!(before.is_err(), "{before:?}");

    // Rotation: the file now holds both keys; SIGHUP reloads it.
    let mut jwks: serde_json::Value = serde_json::from_slice(&std::fs::read(&keys.jwks)?)?;
    let added: serde_json::Value = serde_json::from_slice(&std::fs::read(&next.jwks)?)?;
    jwks["keys"]
        .as_array_mut()
        .context("keys")?
        .extend(added["keys"].as_array().cloned().unwrap_or_default());
    std::fs::write(&keys.jwks, jwks.to_string())?;
    let status = std::process::Command::new("kill")
        .args(["-HUP", &hub.child.id().to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -HUP failed");
    eventually("the new key to be trusted after SIGHUP", || async {
        admitted(&url, "till-9", &token)
            .await
            .is_ok_and(|outcome| outcome.is_ok())
    })
    .await?;
    Ok(())
}
