//! The `omnisync-hub` binary: run a regional hub from the command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use omnisync_hub::auth::{AuthConfig, TokenConfig};
use omnisync_hub::limits::{self, Limits, Rate};
use omnisync_hub::tls::TlsConfig;
use std::sync::Arc;

use omnisync_hub::token::{self, Algorithm, ClaimMapping, KeyCache, SigningKey, Validation};
use omnisync_hub::{Hub, HubConfig};

/// omnisync regional hub.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum KeyAlgorithm {
    Es256,
    Eddsa,
}

/// How devices authenticate: exactly one of `--jwks`, `--jwks-url` or
/// `--dev-auth`.
#[derive(Args)]
#[group(skip)]
struct AuthArgs {
    /// Verify signed device tokens against this JSON Web Key Set file
    /// (read again on SIGHUP).
    #[arg(long, group = "auth_mode", requires_all = ["issuer", "audience", "tenant"])]
    jwks: Option<PathBuf>,
    /// Verify signed device tokens against the identity provider's keys: an
    /// OpenID discovery URL (`https://…/.well-known/openid-configuration`)
    /// or a direct JWKS URL (https; http only to a loopback address).
    #[arg(long, group = "auth_mode", requires_all = ["issuer", "audience", "tenant"])]
    jwks_url: Option<String>,
    /// Development mode: trust every device's word (no tokens). Never in production.
    #[arg(long, group = "auth_mode")]
    dev_auth: bool,
    /// The token issuer (`iss`) to trust.
    #[arg(long)]
    issuer: Option<String>,
    /// This hub's audience (`aud`).
    #[arg(long)]
    audience: Option<String>,
    /// This hub's tenant.
    #[arg(long)]
    tenant: Option<String>,
    /// A private JWK to refresh tokens with (`POST /v1/auth/refresh`); with
    /// `--jwks` only.
    #[arg(long)]
    signing_key: Option<PathBuf>,
    /// Tolerated clock skew, seconds.
    #[arg(long, default_value_t = token::CLOCK_LEEWAY_S_DEFAULT)]
    token_leeway_s: u64,
    /// Lifetime of refreshed tokens, seconds.
    #[arg(long, default_value_t = token::TOKEN_TTL_S_DEFAULT)]
    refresh_ttl_s: u64,
    /// Accepted token algorithms, comma-separated (of RS256, ES256, ES384,
    /// EdDSA; `none` and HS* are always refused).
    #[arg(long, value_delimiter = ',', default_value = "RS256,ES256,ES384,EdDSA")]
    token_algs: Vec<Algorithm>,
    /// Claim holding the tenant (Entra ID: `tid`).
    #[arg(long, default_value = "tenant")]
    claim_tenant: String,
    /// Claim holding the store.
    #[arg(long, default_value = "store")]
    claim_store: String,
    /// Claim holding the role, a string or an array (Entra ID: `roles`).
    #[arg(long, default_value = "role")]
    claim_role: String,
    /// Claim holding the device id.
    #[arg(long, default_value = "sub")]
    claim_device: String,
    /// Claim holding a customer app's customer.
    #[arg(long, default_value = "customer")]
    claim_customer: String,
    /// A provider role value and the hub role it means, `VALUE=ROLE`
    /// (repeatable), e.g. `POS.Terminal=terminal`. With any given, only
    /// mapped values count; without, the hub's role names are expected.
    #[arg(long)]
    role_map: Vec<String>,
    /// Shortest time between two key set fetches caused by unknown `kid`s, ms.
    #[arg(long, default_value_t = token::JWKS_REFETCH_MIN_MS_DEFAULT)]
    jwks_refetch_min_ms: u64,
    /// Time between two scheduled fetches of a `--jwks-url` key set, ms.
    #[arg(long, default_value_t = token::JWKS_REFRESH_MS_DEFAULT)]
    jwks_refresh_ms: u64,
}

/// `wss://`: both or neither.
#[derive(Args)]
struct TlsArgs {
    /// PEM certificate chain; serves wss:// (with --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of the certificate.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

/// When the change log is compacted into snapshots (see ARCHITECTURE.md,
/// storage): on by default.
#[derive(Args)]
struct CompactArgs {
    /// Compact only changes at least this old: a number with a unit (`ms`,
    /// `s`, `m`, `h`, `d`), e.g. `7d`, `36h`; `0s` compacts up to the head.
    #[arg(long, default_value = "7d", value_parser = parse_duration_ms)]
    compact_after_age: u64,
    /// Compact a set once this many of its changes are old enough.
    #[arg(long, default_value_t = omnisync_hub_engine::log::compact::COMPACT_MIN_CHANGES_DEFAULT, value_parser = clap::value_parser!(u64).range(1..))]
    compact_min_changes: u64,
    /// ...or once its old enough changes hold this many bytes (a number,
    /// optionally with `K`, `M` or `G`, powers of 1024).
    #[arg(long, default_value = "64M", value_parser = parse_bytes)]
    compact_min_bytes: u64,
    /// Keep every change forever (no compaction).
    #[arg(long, conflicts_with_all = ["compact_after_age", "compact_min_changes", "compact_min_bytes"])]
    no_compact: bool,
}

impl CompactArgs {
    fn policy(&self) -> Option<omnisync_hub_engine::log::CompactPolicy> {
        (!self.no_compact).then_some(omnisync_hub_engine::log::CompactPolicy {
            after_age_ms: self.compact_after_age,
            min_changes: self.compact_min_changes,
            min_bytes: self.compact_min_bytes,
        })
    }
}

/// A duration such as `7d`, `36h`, `15m`, `30s` or `500ms`, in milliseconds.
fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit; write e.g. 7d, 36h, 15m, 30s or 500ms"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a whole number"))?;
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}; use ms, s, m, h or d"
            ));
        }
    };
    number
        .checked_mul(unit_ms)
        .ok_or_else(|| format!("{text:?} is too long"))
}

/// A byte count such as `1048576`, `512K`, `64M` or `1G` (powers of 1024).
fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, shift) = match text.strip_suffix(['K', 'k']) {
        Some(number) => (number, 10),
        None => match text.strip_suffix(['M', 'm']) {
            Some(number) => (number, 20),
            None => match text.strip_suffix(['G', 'g']) {
                Some(number) => (number, 30),
                None => (text, 0),
            },
        },
    };
    let number: u64 = number.parse().map_err(|_| {
        format!("{text:?} is not a byte count; write e.g. 1048576, 512K, 64M or 1G")
    })?;
    match number.checked_mul(1 << shift) {
        Some(0) | None => Err(format!("{text:?} must be between 1 byte and 16 EiB")),
        Some(bytes) => Ok(bytes),
    }
}

/// Limits; defaults are the named constants in `omnisync_hub::limits`.
#[derive(Args)]
struct LimitArgs {
    /// Largest WebSocket message, bytes.
    #[arg(long, default_value_t = omnisync_core::protocol::message::FRAME_BYTES_MAX)]
    frame_bytes_max: usize,
    /// Most ops per push.
    #[arg(long, default_value_t = omnisync_core::protocol::message::PUSH_OPS_MAX)]
    push_ops_max: usize,
    /// Most subscriptions per connection.
    #[arg(long, default_value_t = omnisync_core::protocol::message::SUBSCRIPTIONS_MAX)]
    subscriptions_max: usize,
    /// Bytes queued for a device before it is dropped as not reading.
    #[arg(long, default_value_t = limits::OUTBOUND_BYTES_MAX)]
    outbound_bytes_max: usize,
    /// Time a device may take to accept a batch of frames, ms.
    #[arg(long, default_value_t = limits::SEND_TIMEOUT_MS)]
    send_timeout_ms: u64,
    /// Messages per second per device.
    #[arg(long, default_value_t = limits::DEVICE_MESSAGES_PER_S)]
    device_messages_per_s: u32,
    /// Message burst per device.
    #[arg(long, default_value_t = limits::DEVICE_MESSAGES_BURST)]
    device_messages_burst: u32,
    /// Messages per second per address.
    #[arg(long, default_value_t = limits::ADDRESS_MESSAGES_PER_S)]
    address_messages_per_s: u32,
    /// Message burst per address.
    #[arg(long, default_value_t = limits::ADDRESS_MESSAGES_BURST)]
    address_messages_burst: u32,
    /// New connections per second per device.
    #[arg(long, default_value_t = limits::DEVICE_CONNECTIONS_PER_S)]
    device_connections_per_s: u32,
    /// New connection burst per device.
    #[arg(long, default_value_t = limits::DEVICE_CONNECTIONS_BURST)]
    device_connections_burst: u32,
    /// New connections per second per address.
    #[arg(long, default_value_t = limits::ADDRESS_CONNECTIONS_PER_S)]
    address_connections_per_s: u32,
    /// New connection burst per address.
    #[arg(long, default_value_t = limits::ADDRESS_CONNECTIONS_BURST)]
    address_connections_burst: u32,
}

impl LimitArgs {
    fn limits(&self) -> Limits {
        Limits {
            frame_bytes_max: self.frame_bytes_max,
            push_ops_max: self.push_ops_max,
            subscriptions_max: self.subscriptions_max,
            outbound_bytes_max: self.outbound_bytes_max,
            send_timeout_ms: self.send_timeout_ms,
            device_connections: Rate::new(
                self.device_connections_per_s,
                self.device_connections_burst,
            ),
            address_connections: Rate::new(
                self.address_connections_per_s,
                self.address_connections_burst,
            ),
            device_messages: Rate::new(self.device_messages_per_s, self.device_messages_burst),
            address_messages: Rate::new(self.address_messages_per_s, self.address_messages_burst),
        }
    }
}

impl AuthArgs {
    fn config(&self) -> anyhow::Result<AuthConfig> {
        if self.jwks.is_none() && self.jwks_url.is_none() {
            anyhow::ensure!(
                self.signing_key.is_none(),
                "--signing-key needs --jwks or --jwks-url"
            );
            tracing::warn!(
                "development authentication: every device is trusted on its word (--dev-auth)"
            );
            return Ok(AuthConfig::Development);
        }
        // clap's `requires_all` guarantees these with --jwks and --jwks-url.
        let required = |value: &Option<String>, name: &str| {
            value
                .clone()
                .with_context(|| format!("token mode needs --{name}"))
        };
        let issuer = required(&self.issuer, "issuer")?;
        anyhow::ensure!(
            self.jwks_url.is_none() || self.signing_key.is_none(),
            "--signing-key (refresh) needs --jwks: with --jwks-url devices refresh at their identity provider"
        );
        let keys = match (&self.jwks, &self.jwks_url) {
            (Some(path), _) => {
                KeyCache::from_file(path).with_context(|| format!("--jwks {}", path.display()))?
            }
            (None, Some(url)) => KeyCache::from_url(url, Some(&issuer), self.jwks_refetch_min_ms)
                .with_context(|| format!("--jwks-url {url}"))?,
            (None, None) => anyhow::bail!("token mode needs --jwks or --jwks-url"),
        };
        let keys = Arc::new(keys);
        keys.spawn_refresher(self.jwks_refresh_ms)?;
        tracing::info!(kids = ?keys.keys().kids(), source = ?keys.source(), "trusting token keys");
        anyhow::ensure!(
            !self.token_algs.is_empty(),
            "--token-algs names no algorithm"
        );
        let claims = ClaimMapping {
            tenant: self.claim_tenant.clone(),
            store: self.claim_store.clone(),
            role: self.claim_role.clone(),
            device: self.claim_device.clone(),
            customer: self.claim_customer.clone(),
            roles: self
                .role_map
                .iter()
                .map(|entry| ClaimMapping::parse_role(entry))
                .collect::<Result<_, _>>()
                .context("--role-map")?,
        };
        let validation = Validation {
            issuer,
            audience: required(&self.audience, "audience")?,
            tenant: omnisync_core::TenantId::new(required(&self.tenant, "tenant")?)
                .context("--tenant")?,
            leeway_s: self.token_leeway_s,
            algorithms: self.token_algs.clone(),
            claims,
        };
        let mut config = TokenConfig::new(keys, validation);
        config.refresh_ttl_s = self.refresh_ttl_s.min(token::TOKEN_TTL_S_MAX);
        if let Some(path) = &self.signing_key {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            config.signing = Some(
                SigningKey::from_jwk(&bytes)
                    .with_context(|| format!("--signing-key {}", path.display()))?,
            );
        }
        Ok(AuthConfig::Tokens(Box::new(config)))
    }
}

/// Reloads the key set (file read again, or URL fetched again) on every
/// SIGHUP, for key rotation without a restart.
fn reload_keys_on_sighup(keys: Arc<KeyCache>) -> anyhow::Result<()> {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            let keys = keys.clone();
            match tokio::task::spawn_blocking(move || keys.reload()).await {
                Ok(Ok(set)) => tracing::info!(kids = ?set.kids(), "SIGHUP: key set reloaded"),
                Ok(Err(error)) => {
                    tracing::warn!(%error, "SIGHUP: key set not reloaded; keeping the keys held")
                }
                Err(error) => tracing::warn!(%error, "SIGHUP: the reload task failed"),
            }
        }
    });
    Ok(())
}

#[derive(Subcommand)]
enum Command {
    /// Serve the sync endpoint, health, metrics and admin reads. Choose how
    /// devices authenticate: `--jwks` or `--jwks-url` (signed tokens) or `--dev-auth`.
    #[command(group = clap::ArgGroup::new("auth_mode").required(true).multiple(false))]
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7878")]
        listen: SocketAddr,
        /// Directory for the hub's database (SQLite, one hub process).
        #[arg(long, default_value = "./omnisync-data", conflicts_with = "database")]
        data_dir: PathBuf,
        /// Keep the hub log in this PostgreSQL database instead of
        /// `--data-dir`, e.g. `postgres://hub:PASSWORD@db:5432/omnisync`.
        /// Several hub processes may serve one database. Waits for an
        /// unreachable server (retrying after 1 s, doubling to 30 s).
        #[arg(long)]
        database: Option<String>,
        /// Name of this hub in logs and handshakes.
        #[arg(long, default_value = "hub")]
        hub_id: String,
        /// Most ops per durable commit; 1 commits every op on its own.
        #[arg(long, default_value_t = omnisync_hub::committer::GROUP_OPS_MAX as u32, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        group_ops_max: u32,
        /// How far (in basis points, 100 = 1%) a checkout's seen price may be
        /// from the price in force before the hub refuses it.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=10_000))]
        price_tolerance_bp: u32,
        #[command(flatten)]
        auth: Box<AuthArgs>,
        #[command(flatten)]
        tls: TlsArgs,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        compact: CompactArgs,
        /// Write no typed events (no outbox: the event feed stays empty and
        /// exporters have nothing to send). For hubs nothing reads events
        /// from, and to measure what the outbox costs.
        #[arg(long)]
        no_events: bool,
        /// How long the outbox keeps events (a number with a unit: `ms`,
        /// `s`, `m`, `h`, `d`), e.g. `30d`; a feed consumer further behind is
        /// told it lost events (HTTP 410). `0s` keeps them forever.
        #[arg(long, default_value = "30d", value_parser = parse_duration_ms)]
        events_retention: u64,
    },
    /// Make a signing key pair: a private JWK for `enrol` (and `serve
    /// --signing-key`), and a public JSON Web Key Set for `serve --jwks`.
    /// The hub signs with ES256 or EdDSA; RS256 and ES384 tokens come from an
    /// identity provider.
    Keygen {
        /// ES256 (P-256) or EdDSA (Ed25519).
        #[arg(long, value_enum, default_value_t = KeyAlgorithm::Eddsa)]
        alg: KeyAlgorithm,
        /// Key id, named in every token's header.
        #[arg(long)]
        kid: String,
        /// Where to write the private JWK (created with mode 0600).
        #[arg(long)]
        private: PathBuf,
        /// Where to write the public key set.
        #[arg(long)]
        jwks: PathBuf,
    },
    /// Enrol a device: print a signed token for it (development and tests;
    /// production tokens come from the chain's own issuer).
    Enrol {
        /// The private JWK from `keygen`.
        #[arg(long)]
        signing_key: PathBuf,
        /// Issuer claim (`iss`).
        #[arg(long)]
        issuer: String,
        /// Audience claim (`aud`): the hub's `--audience`.
        #[arg(long)]
        audience: String,
        /// Tenant (retail chain).
        #[arg(long)]
        tenant: String,
        /// The device's store.
        #[arg(long)]
        store: String,
        /// The device id (`sub`).
        #[arg(long)]
        device: String,
        /// terminal, customer-app, back-office, hub-peer or event-consumer.
        #[arg(long)]
        role: String,
        /// The shopper (customer-app only).
        #[arg(long)]
        customer: Option<String>,
        /// The stores an event-consumer token may read events of,
        /// comma-separated (event-consumer only; without it: every store of
        /// the tenant on the hub).
        #[arg(long, value_delimiter = ',')]
        stores: Option<Vec<String>>,
        /// Lifetime in seconds (at most 30 days).
        #[arg(long, default_value_t = token::TOKEN_TTL_S_DEFAULT)]
        ttl_s: u64,
        /// Issue the token as if at this unix time (tests of expiry).
        #[arg(long)]
        issued_at_s: Option<u64>,
    },
    /// Import products, prices and stock from a CSV or JSON Lines file into a
    /// store's documents (the hub must not be running on the directory).
    ImportCatalog {
        /// The file (.csv with a header row, or .jsonl).
        file: PathBuf,
        /// The store the catalog belongs to.
        #[arg(long)]
        store: String,
        /// Directory of the hub's database.
        #[arg(long, default_value = "./omnisync-data", conflicts_with = "database")]
        data_dir: PathBuf,
        /// Import into this PostgreSQL database instead of `--data-dir`
        /// (hubs serving it may keep running).
        #[arg(long)]
        database: Option<String>,
        /// Currency for rows that name none.
        #[arg(long, default_value = "EUR")]
        currency: String,
    },
    /// Copy a hub's SQLite data directory into an empty PostgreSQL database
    /// (change log, outcomes, ledger, snapshots, device registry), keeping
    /// the log's identity so devices carry on where they were. Stop the hub
    /// on the directory first; afterwards serve with `--database`.
    Migrate {
        /// The hub's data directory (holding hub.db).
        #[arg(long)]
        from: PathBuf,
        /// The PostgreSQL database, e.g. `postgres://hub:PASSWORD@db:5432/omnisync`.
        #[arg(long)]
        to: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    match cli.log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async {
        match cli.command {
            Command::Serve {
                listen,
                data_dir,
                database,
                hub_id,
                group_ops_max,
                price_tolerance_bp,
                auth,
                tls,
                limits,
                compact,
                no_events,
                events_retention,
            } => {
                let tls = match (&tls.tls_cert, &tls.tls_key) {
                    (Some(cert), Some(key)) => Some(TlsConfig::from_files(cert, key)?),
                    _ => None,
                };
                let auth = auth.config()?;
                if let omnisync_hub::auth::AuthConfig::Tokens(tokens) = &auth {
                    reload_keys_on_sighup(tokens.keys.clone())?;
                }
                let config = HubConfig {
                    listen,
                    data_dir,
                    database,
                    hub_id,
                    group_ops_max: group_ops_max as usize,
                    price_tolerance_bp,
                    auth,
                    limits: limits.limits(),
                    tls,
                    compaction: compact.policy(),
                    events: !no_events,
                    events_retention_ms: (events_retention > 0).then_some(events_retention),
                };
                let hub = Hub::start(config).await?;
                println!(
                    "omnisync-hub listening on {} (sync at {})",
                    hub.address(),
                    hub.sync_url()
                );
                wait_for_signal().await?;
                tracing::info!("shutting down: closing connections and flushing commits");
                hub.stop().await?;
                tracing::info!("hub stopped cleanly");
                Ok(())
            }
            Command::Keygen {
                alg,
                kid,
                private,
                jwks,
            } => {
                let algorithm = match alg {
                    KeyAlgorithm::Es256 => Algorithm::Es256,
                    KeyAlgorithm::Eddsa => Algorithm::EdDsa,
                };
                let key = SigningKey::generate(algorithm, kid).context("keygen")?;
                write_private(&private, &serde_json::to_string_pretty(&key.private_jwk())?)?;
                std::fs::write(&jwks, key.public_jwks())
                    .with_context(|| format!("writing {}", jwks.display()))?;
                println!(
                    "wrote {} key {:?}: private {}, public key set {}",
                    algorithm.as_str(),
                    key.kid(),
                    private.display(),
                    jwks.display()
                );
                Ok(())
            }
            Command::Enrol {
                signing_key,
                issuer,
                audience,
                tenant,
                store,
                device,
                role,
                customer,
                stores,
                ttl_s,
                issued_at_s,
            } => {
                let bytes = std::fs::read(&signing_key)
                    .with_context(|| format!("reading {}", signing_key.display()))?;
                let key = SigningKey::from_jwk(&bytes).context("--signing-key")?;
                let identity = omnisync_hub_engine::authz::Identity {
                    tenant: omnisync_core::TenantId::new(tenant).context("--tenant")?,
                    device: omnisync_core::DeviceId::new(device).context("--device")?,
                    store: omnisync_core::StoreId::new(store).context("--store")?,
                    role: role.parse().context("--role")?,
                    customer: customer
                        .map(omnisync_core::CustomerId::new)
                        .transpose()
                        .context("--customer")?,
                    expires_ms: None,
                };
                if (identity.role == omnisync_hub_engine::authz::Role::CustomerApp)
                    != identity.customer.is_some()
                {
                    anyhow::bail!("--customer is required for, and only for, --role customer-app");
                }
                if stores.is_some()
                    && identity.role != omnisync_hub_engine::authz::Role::EventConsumer
                {
                    anyhow::bail!("--stores is for --role event-consumer only");
                }
                let stores = stores
                    .map(|stores| {
                        stores
                            .into_iter()
                            .map(|store| {
                                omnisync_core::StoreId::new(&store)
                                    .map(|store| store.to_string())
                                    .with_context(|| format!("--stores: {store:?}"))
                            })
                            .collect::<anyhow::Result<Vec<_>>>()
                    })
                    .transpose()?;
                let now_s = issued_at_s.unwrap_or_else(|| omnisync_core::now_ms() / 1000);
                let mut claims =
                    token::claims_for(&identity, &issuer, &audience, now_s, ttl_s, now_s);
                claims.stores = stores;
                println!("{}", key.sign(&claims).context("signing the token")?);
                Ok(())
            }
            Command::Migrate { from, to } => {
                let url = omnisync_hub::storage::postgres::PgUrl::parse(&to)
                    .map_err(anyhow::Error::msg)?;
                let migrated = tokio::task::spawn_blocking(move || {
                    omnisync_hub::migrate::migrate(&from, &url)
                })
                .await??;
                for (table, rows) in &migrated.rows {
                    println!("{table}: {rows} rows");
                }
                println!(
                    "migrated: log {} at head {} into {}",
                    migrated.log_id,
                    migrated.head,
                    omnisync_hub::storage::postgres::redact(&to)
                );
                Ok(())
            }
            Command::ImportCatalog {
                file,
                store,
                data_dir,
                database,
                currency,
            } => {
                let target = match database {
                    Some(url) => omnisync_hub::storage::LogTarget::Database(Box::new(
                        omnisync_hub::storage::postgres::PgUrl::parse(&url)
                            .map_err(anyhow::Error::msg)?,
                    )),
                    None => omnisync_hub::storage::LogTarget::DataDir(data_dir),
                };
                let store = omnisync_core::StoreId::new(store).context("--store")?;
                let currency =
                    omnisync_core::vocab::goods::Currency::new(&currency).context("--currency")?;
                let started = std::time::Instant::now();
                let report = tokio::task::spawn_blocking(move || {
                    omnisync_hub::import::import_file_into(&target, &store, &file, None, currency)
                })
                .await??;
                println!(
                    "imported {} products into {} documents in {:.1} s (log head {})",
                    report.products,
                    report.documents,
                    started.elapsed().as_secs_f64(),
                    report.head_seq
                );
                if report.rejected_count > 0 {
                    println!("rejected {} rows:", report.rejected_count);
                    for row in &report.rejected {
                        println!("  line {}: {}", row.line, row.reason);
                    }
                    if report.rejected_count > report.rejected.len() as u64 {
                        println!(
                            "  ... and {} more",
                            report.rejected_count - report.rejected.len() as u64
                        );
                    }
                }
                Ok(())
            }
        }
    })
}

/// Writes a secret file readable by its owner only.
fn write_private(path: &std::path::Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("waiting for SIGINT")?,
        _ = terminate.recv() => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_byte_counts_parse_with_clear_errors() {
        assert_eq!(parse_duration_ms("7d"), Ok(7 * 86_400_000));
        assert_eq!(parse_duration_ms("36h"), Ok(36 * 3_600_000));
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("0s"), Ok(0));
        assert!(parse_duration_ms("7").unwrap_err().contains("no unit"));
        assert!(
            parse_duration_ms("7w")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(parse_duration_ms("d").is_err());
        assert!(parse_duration_ms("99999999999999999999d").is_err());
        assert_eq!(parse_bytes("64M"), Ok(64 << 20));
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert_eq!(parse_bytes("2k"), Ok(2048));
        assert!(parse_bytes("0").is_err());
        assert!(
            parse_bytes("lots")
                .unwrap_err()
                .contains("not a byte count")
        );
    }

    #[test]
    fn compaction_is_on_by_default_and_off_with_no_compact() {
        let serve = |extra: &[&str]| {
            let mut args = vec!["omnisync-hub", "serve", "--dev-auth"];
            args.extend_from_slice(extra);
            match Cli::try_parse_from(args).map(|cli| cli.command) {
                Ok(Command::Serve { compact, .. }) => Ok(compact.policy()),
                Ok(_) => panic!("parsed as another command"),
                Err(error) => Err(error.to_string()),
            }
        };
        let default = serve(&[]).unwrap().expect("on by default");
        assert_eq!(default.after_age_ms, 7 * 86_400_000);
        assert_eq!(serve(&["--no-compact"]).unwrap(), None);
        let custom = serve(&["--compact-after-age", "2h", "--compact-min-changes", "50"])
            .unwrap()
            .unwrap();
        assert_eq!((custom.after_age_ms, custom.min_changes), (7_200_000, 50));
        assert!(serve(&["--compact-after-age", "2 weeks"]).is_err());
        assert!(serve(&["--no-compact", "--compact-min-changes", "5"]).is_err());
    }
}
