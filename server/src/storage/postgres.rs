//! The hub log on PostgreSQL 15: the row-level primitives of the hub log
//! contract (`omnisync_hub_engine::log::contract`) over a database server,
//! so several hub processes can share one store.
//!
//! # Client
//!
//! The synchronous `postgres` crate (a blocking wrapper over
//! `tokio-postgres`). The storage contract is synchronous, like rusqlite,
//! and the writer runs on the committer's own thread; `tokio-postgres`
//! underneath still gives pipelining, binary COPY and LISTEN/NOTIFY, and
//! needs no database at compile time (unlike sqlx's checked queries). The
//! blocking client must not run on an async runtime's thread (it runs a
//! small runtime of its own): readers move there with [`off_runtime`].
//!
//! # Writes: one overlay, a few statements
//!
//! A round trip to the server costs tens of microseconds, about what a
//! whole decided checkout may cost in the group commit, so a write
//! transaction ([`PgTxn`]) never writes a row as it is asked to. Every write
//! goes into an in-memory overlay keyed like the tables; reads look there
//! first. [`LogRows::prefetch`] reads every row a group commit will need in
//! one statement (and remembers absent rows as absent). At commit, or before
//! a read the overlay cannot answer (changes, snapshots), one statement
//! writes everything pending with multi-row `INSERT … SELECT * FROM
//! unnest(…)` inside data-modifying CTEs. A group commit is then four round
//! trips whatever its size: `BEGIN` with the lock and the head, the
//! prefetch, the flush (with the notification), `COMMIT`.
//!
//! # Several writers
//!
//! Every write transaction takes `pg_advisory_xact_lock(`[`WRITER_LOCK_KEY`]`)`
//! right after `BEGIN` (READ COMMITTED, so each later statement sees what
//! the previous holder committed) and reads the head from the one-row
//! `log_head` table. Transactions of all processes on the database are thus
//! serialized: numbering stays dense and unique, each (store, SKU) is
//! decided against the latest committed ledger, and a retried op that
//! reaches another process finds its stored outcome. The shared writer
//! takes its head from the transaction (see `omnisync_hub_engine::log::store`).
//! A transaction that appended changes sends `pg_notify('`[`NOTIFY_CHANNEL`]`',
//! '<new head>')`, delivered on commit, for other processes' fan-out.
//!
//! # Durability and failures
//!
//! The writer's session sets `synchronous_commit = on`; [`WriteTxn::commit`]
//! returns only once `COMMIT` returned. A transaction dropped without commit
//! is rolled back. A lost connection fails the transaction (nothing is
//! acked: the committer answers the failure and devices push again) and the
//! next `begin` reconnects, backing off from 1 s doubling to 30 s.
//!
//! # Schema
//!
//! Numbered migrations (`pg_migrations/`), applied when a backend opens, in
//! one transaction under the writers' lock (two processes starting at once
//! migrate once); the version is in `omnisync_schema`. A database newer
//! than this build is refused.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use omnisync_core::OpId;
use omnisync_core::protocol::message::{AckOutcome, RemoteChange};
use omnisync_core::vocab::goods::Sku;
use omnisync_core::vocab::ids::{DocId, DocSetId, ReplicaId, StoreId};
use omnisync_core::vocab::intent::Decision;
use omnisync_core::vocab::record::OrderRecord;
use omnisync_hub_engine::ledger::authority::Reservation;
use omnisync_hub_engine::ledger::sku_ledger::SkuLedger;
use omnisync_hub_engine::log::shared::storage_error;
use omnisync_hub_engine::log::{
    Backend, HubLogError, HubStore, LogRows, PageCut, Prefetch, ReadBackend, WriteTxn,
};
use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, SimpleQueryMessage, Statement};

use super::{
    EventColumns, decode, decode_outcome, encode, encode_outcome, seq_param, stored_change,
};
use omnisync_hub_engine::events::{Event, EventFilter};

/// The migrations, in order; the schema version is their count.
const MIGRATIONS: &[&str] = &[
    include_str!("pg_migrations/0001_init.sql"),
    include_str!("pg_migrations/0002_devices.sql"),
    include_str!("pg_migrations/0003_events.sql"),
];
/// The schema version this build writes.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;
/// The advisory lock every write transaction (and the migration) holds:
/// one writer at a time across all processes on the database.
pub const WRITER_LOCK_KEY: i64 = 0x6f6d_6e69_7379_6e63; // "omnisync"
/// The channel a transaction that appended changes notifies, with the new
/// head as payload.
pub const NOTIFY_CHANNEL: &str = "omnisync_log";
/// Reads the committed head (for processes that listen on [`NOTIFY_CHANNEL`]).
pub const HEAD_SQL: &str = "SELECT seq FROM log_head WHERE id = 1";
/// Reader connections kept open for reuse.
pub const READER_POOL_LEN_MAX: usize = 8;
/// First wait before reconnecting after a failed connection.
pub const RECONNECT_DELAY_MIN: Duration = Duration::from_secs(1);
/// Longest wait between reconnection attempts.
pub const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(30);
/// How long one connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The hub log's writer over PostgreSQL.
pub type PgHubLog = HubStore<PgBackend>;

/// A database URL, with the form shown in logs and errors (password
/// replaced by `***`).
#[derive(Clone)]
pub struct PgUrl {
    config: postgres::Config,
    shown: String,
}

impl std::fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl std::fmt::Display for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl PgUrl {
    /// Parses `postgres://user:password@host:port/db` (or the key=value
    /// form); the error never holds the password.
    pub fn parse(url: &str) -> Result<Self, String> {
        let shown = redact(url);
        let mut config: postgres::Config = url
            .parse()
            .map_err(|_| format!("--database {shown}: not a PostgreSQL connection URL"))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("omnisync-hub");
        }
        Ok(Self { config, shown })
    }

    /// The URL as logs may show it.
    pub fn redacted(&self) -> &str {
        &self.shown
    }

    /// A new blocking connection (off any async runtime's thread: see
    /// [`off_runtime`]).
    pub fn connect(&self) -> Result<Client, postgres::Error> {
        self.config.connect(NoTls)
    }
}

/// `url` with any password replaced by `***`.
pub fn redact(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let (authority, tail) = match rest.find(['/', '?']) {
            Some(end) => rest.split_at(end),
            None => (rest, ""),
        };
        let authority = match authority.rsplit_once('@') {
            Some((user_info, host)) => match user_info.split_once(':') {
                Some((user, _)) => format!("{user}:***@{host}"),
                None => format!("{user_info}@{host}"),
            },
            None => authority.to_owned(),
        };
        let tail = redact_query_password(tail);
        return format!("{scheme}://{authority}{tail}");
    }
    // key=value form: hide the value of `password`.
    url.split_whitespace()
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn redact_query_password(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_owned();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{path}?{}", query.join("&"))
}

/// Why a backend could not open: `permanent` errors (wrong password,
/// missing privileges, unknown database, a newer schema) do not heal by
/// retrying; the others (server unreachable, starting up) may.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct PgOpenError {
    /// True when retrying cannot help.
    pub permanent: bool,
    /// One line saying what failed (never the password).
    pub message: String,
}

impl From<PgOpenError> for HubLogError {
    fn from(error: PgOpenError) -> Self {
        HubLogError::Storage(error.message)
    }
}

/// One line for a client error: the server's message when it sent one,
/// the cause otherwise.
pub fn describe(error: &postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        let mut line = format!("{}: {} ({})", db.severity(), db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            line.push_str(&format!("; {detail}"));
        }
        return line;
    }
    let mut line = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        line.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    line
}

fn pg_error(error: postgres::Error) -> HubLogError {
    HubLogError::Storage(describe(&error))
}

/// True for failures retrying does not heal: authentication, privileges,
/// an unknown database or role.
fn is_permanent(error: &postgres::Error) -> bool {
    let Some(code) = error.code() else {
        return false;
    };
    let code = code.code();
    code.starts_with("28") // invalid authorization / password
        || code == "42501" // insufficient privilege
        || code == "3D000" // unknown database
        || code == "42704" // undefined object (role)
}

fn open_error(url: &PgUrl, error: &postgres::Error) -> PgOpenError {
    PgOpenError {
        permanent: is_permanent(error),
        message: format!("database {url}: {}", describe(error)),
    }
}

/// Runs `work` where the blocking client may run: as is off any async
/// runtime; through `block_in_place` on a multi-threaded runtime's thread;
/// on a scoped thread of its own on a current-thread runtime (which cannot
/// block in place).
pub fn off_runtime<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    match tokio::runtime::Handle::try_current() {
        Err(_) => work(),
        Ok(handle) => match handle.runtime_flavor() {
            tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(work),
            _ => std::thread::scope(|scope| match scope.spawn(work).join() {
                Ok(value) => value,
                Err(panic) => std::panic::resume_unwind(panic),
            }),
        },
    }
}

/// A connection with its prepared statements.
struct PgConn {
    client: Client,
    st: Statements,
    /// A rollback failed: the connection's state is unknown; replace it.
    poisoned: bool,
}

impl PgConn {
    /// Connects, sets the session up and prepares every statement.
    fn open(url: &PgUrl) -> Result<Self, PgOpenError> {
        let mut client = url
            .config
            .connect(NoTls)
            .map_err(|error| open_error(url, &error))?;
        client
            .batch_execute("SET synchronous_commit = on")
            .map_err(|error| open_error(url, &error))?;
        let st = Statements::prepare(&mut client).map_err(|error| open_error(url, &error))?;
        Ok(Self {
            client,
            st,
            poisoned: false,
        })
    }

    fn usable(&self) -> bool {
        !self.poisoned && !self.client.is_closed()
    }

    fn rows(
        &mut self,
        statement: Stmt,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, HubLogError> {
        self.client
            .query(self.st.get(statement), params)
            .map_err(pg_error)
    }
}

/// Drops a client where its blocking close may run (closing runs the
/// client's own runtime: never on an async runtime's thread).
fn drop_off_runtime(client: Client) {
    off_runtime(move || drop(client));
}

/// Names of the prepared statements.
#[derive(Clone, Copy, Debug)]
enum Stmt {
    Head,
    Meta,
    Outcome,
    ChangesAfter,
    ChangesBetween,
    DocChanges,
    LatestChange,
    SetDocs,
    Snapshot,
    SetSnapshot,
    SnapshotsAfter,
    Sku,
    Order,
    Key,
    Reservation,
    OrderNo,
    SkusWithRights,
    Prefetch,
    Flush,
    EventHead,
    StoreEventSeq,
}

const STATEMENTS: &[(Stmt, &str)] = &[
    (Stmt::Head, "SELECT seq FROM log_head WHERE id = 1"),
    (Stmt::Meta, "SELECT value FROM meta WHERE key = $1"),
    (
        Stmt::Outcome,
        "SELECT outcome FROM op_outcomes WHERE replica = $1 AND seq = $2",
    ),
    (
        Stmt::ChangesAfter,
        "SELECT hub_seq, doc_id, origin, bytes FROM changes
         WHERE set_id = $1 AND hub_seq > $2 ORDER BY hub_seq LIMIT $3",
    ),
    (
        Stmt::ChangesBetween,
        "SELECT hub_seq, doc_id, origin, bytes FROM changes
         WHERE hub_seq > $1 AND hub_seq <= $2 ORDER BY hub_seq",
    ),
    (
        Stmt::DocChanges,
        "SELECT bytes FROM changes WHERE doc_id = $1 AND hub_seq > $2 AND hub_seq <= $3
         ORDER BY hub_seq",
    ),
    (
        Stmt::LatestChange,
        "SELECT bytes FROM changes WHERE doc_id = $1 AND hub_seq <= $2
         ORDER BY hub_seq DESC LIMIT 1",
    ),
    (
        Stmt::SetDocs,
        "SELECT DISTINCT doc_id FROM changes WHERE set_id = $1 ORDER BY doc_id",
    ),
    (
        Stmt::Snapshot,
        "SELECT bytes, covers_seq FROM snapshots WHERE doc_id = $1",
    ),
    (
        Stmt::SetSnapshot,
        "SELECT covers_seq FROM set_snapshots WHERE set_id = $1",
    ),
    (
        Stmt::SnapshotsAfter,
        "SELECT doc_id, bytes FROM snapshots WHERE set_id = $1 AND doc_id > $2
         ORDER BY doc_id LIMIT $3",
    ),
    (
        Stmt::Sku,
        "SELECT state FROM ledger_skus WHERE store_id = $1 AND sku = $2",
    ),
    (
        Stmt::Order,
        "SELECT record FROM ledger_orders WHERE store_id = $1 AND order_id = $2",
    ),
    (
        Stmt::Key,
        "SELECT decision FROM ledger_keys WHERE store_id = $1 AND key = $2",
    ),
    (
        Stmt::Reservation,
        "SELECT state FROM ledger_reservations WHERE store_id = $1 AND key = $2",
    ),
    (
        Stmt::OrderNo,
        "SELECT last_order_no FROM ledger_stores WHERE store_id = $1",
    ),
    (
        Stmt::SkusWithRights,
        "SELECT store_id, sku FROM ledger_skus WHERE has_rights ORDER BY store_id, sku",
    ),
    (Stmt::Prefetch, PREFETCH_SQL),
    (Stmt::Flush, FLUSH_SQL),
    (Stmt::EventHead, "SELECT COALESCE(MAX(seq), 0) FROM events"),
    (
        Stmt::StoreEventSeq,
        "SELECT COALESCE(MAX(store_seq), 0) FROM events WHERE store_id = $1",
    ),
];

/// Every row a group commit names, from all tables in one statement:
/// (kind, replica, text key 1, text key 2, number, value). Each wanted key
/// probes its table's primary key: a lateral subquery with `LIMIT 1` cannot
/// be flattened into a join, so the planner never trades the probes for a
/// hash join over a whole (large) table.
const PREFETCH_SQL: &str = "
SELECT 0::int4, w.replica, NULL::text, NULL::text, w.seq, x.outcome
  FROM unnest($1::bytea[], $2::int8[]) AS w(replica, seq)
  CROSS JOIN LATERAL (SELECT o.outcome FROM op_outcomes o
                      WHERE o.replica = w.replica AND o.seq = w.seq LIMIT 1) AS x
UNION ALL
SELECT 1, NULL, w.a, w.b, NULL, x.state
  FROM unnest($3::text[], $4::text[]) AS w(a, b)
  CROSS JOIN LATERAL (SELECT l.state FROM ledger_skus l
                      WHERE l.store_id = w.a AND l.sku = w.b LIMIT 1) AS x
UNION ALL
SELECT 2, NULL, w.a, w.b, NULL, x.record
  FROM unnest($5::text[], $6::text[]) AS w(a, b)
  CROSS JOIN LATERAL (SELECT l.record FROM ledger_orders l
                      WHERE l.store_id = w.a AND l.order_id = w.b LIMIT 1) AS x
UNION ALL
SELECT 3, NULL, w.a, w.b, NULL, x.decision
  FROM unnest($7::text[], $8::text[]) AS w(a, b)
  CROSS JOIN LATERAL (SELECT l.decision FROM ledger_keys l
                      WHERE l.store_id = w.a AND l.key = w.b LIMIT 1) AS x
UNION ALL
SELECT 4, NULL, w.a, w.b, NULL, x.state
  FROM unnest($9::text[], $10::text[]) AS w(a, b)
  CROSS JOIN LATERAL (SELECT l.state FROM ledger_reservations l
                      WHERE l.store_id = w.a AND l.key = w.b LIMIT 1) AS x
UNION ALL
SELECT 5, NULL, w.a, NULL, x.last_order_no, NULL
  FROM unnest($11::text[]) AS w(a)
  CROSS JOIN LATERAL (SELECT l.last_order_no FROM ledger_stores l
                      WHERE l.store_id = w.a LIMIT 1) AS x";

/// Everything a transaction wrote since its last flush, in one statement:
/// data-modifying CTEs run once each, whatever the final query reads.
const FLUSH_SQL: &str = "
WITH
c AS (INSERT INTO changes (hub_seq, set_id, doc_id, origin, bytes)
      SELECT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::bytea[], $5::bytea[])),
o AS (INSERT INTO op_outcomes (replica, seq, outcome, decided_ms)
      SELECT * FROM unnest($6::bytea[], $7::int8[], $8::bytea[], $9::int8[])),
s AS (INSERT INTO ledger_skus (store_id, sku, state, has_rights)
      SELECT * FROM unnest($10::text[], $11::text[], $12::bytea[], $13::bool[])
      ON CONFLICT (store_id, sku) DO UPDATE
        SET state = EXCLUDED.state, has_rights = EXCLUDED.has_rights),
r AS (INSERT INTO ledger_orders (store_id, order_id, record)
      SELECT * FROM unnest($14::text[], $15::text[], $16::bytea[])
      ON CONFLICT (store_id, order_id) DO UPDATE SET record = EXCLUDED.record),
k AS (INSERT INTO ledger_keys (store_id, key, decision)
      SELECT * FROM unnest($17::text[], $18::text[], $19::bytea[])),
v AS (INSERT INTO ledger_reservations (store_id, key, state)
      SELECT * FROM unnest($20::text[], $21::text[], $22::bytea[])
      ON CONFLICT (store_id, key) DO UPDATE SET state = EXCLUDED.state),
n AS (INSERT INTO ledger_stores (store_id, last_order_no)
      SELECT * FROM unnest($23::text[], $24::int8[])
      ON CONFLICT (store_id) DO UPDATE SET last_order_no = EXCLUDED.last_order_no),
m AS (INSERT INTO meta (key, value)
      SELECT * FROM unnest($25::text[], $26::text[])
      ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value),
p AS (INSERT INTO snapshots (doc_id, set_id, covers_seq, bytes)
      SELECT * FROM unnest($27::text[], $28::text[], $29::int8[], $30::bytea[])
      ON CONFLICT (doc_id) DO UPDATE
        SET set_id = EXCLUDED.set_id, covers_seq = EXCLUDED.covers_seq, bytes = EXCLUDED.bytes),
q AS (INSERT INTO set_snapshots (set_id, covers_seq)
      SELECT * FROM unnest($31::text[], $32::int8[])
      ON CONFLICT (set_id) DO UPDATE SET covers_seq = EXCLUDED.covers_seq),
h AS (UPDATE log_head SET seq = $33::int8 WHERE id = 1 AND seq < $33::int8),
e AS (INSERT INTO events (seq, tenant, store_id, store_seq, type, time_ms, data)
      SELECT s, t, st, ss, ty, tm, d::jsonb
      FROM unnest($35::int8[], $36::text[], $37::text[], $38::int8[], $39::text[], $40::int8[],
                  $41::text[]) AS x(s, t, st, ss, ty, tm, d))
SELECT pg_notify('omnisync_log', $34::text) WHERE $34::text IS NOT NULL";

/// The prepared statements of one connection.
struct Statements(Vec<Statement>);

impl Statements {
    fn prepare(client: &mut Client) -> Result<Self, postgres::Error> {
        let mut prepared = Vec::with_capacity(STATEMENTS.len());
        for (index, (name, sql)) in STATEMENTS.iter().enumerate() {
            debug_assert_eq!(*name as usize, index, "STATEMENTS is in Stmt order");
            prepared.push(client.prepare(sql)?);
        }
        Ok(Self(prepared))
    }

    fn get(&self, statement: Stmt) -> &Statement {
        &self.0[statement as usize]
    }
}

/// Opens the database for writing: connects, applies the migrations under
/// the writers' lock and takes over the log.
pub fn open(url: &PgUrl) -> Result<PgHubLog, PgOpenError> {
    let backend = PgBackend::open(url)?;
    HubStore::open(backend).map_err(|error| PgOpenError {
        permanent: false,
        message: format!("database {url}: {error}"),
    })
}

/// Applies the migrations this build knows and the database lacks, in one
/// transaction under the writers' lock; refuses a newer database.
fn migrate(url: &PgUrl, client: &mut Client) -> Result<(), PgOpenError> {
    let fail = |error: postgres::Error| open_error(url, &error);
    let mut txn = client.transaction().map_err(fail)?;
    txn.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITER_LOCK_KEY])
        .map_err(fail)?;
    txn.batch_execute("CREATE TABLE IF NOT EXISTS omnisync_schema (version int NOT NULL)")
        .map_err(fail)?;
    let version: i32 = match txn
        .query_opt("SELECT version FROM omnisync_schema", &[])
        .map_err(fail)?
    {
        Some(row) => row.try_get(0).map_err(fail)?,
        None => {
            txn.execute("INSERT INTO omnisync_schema (version) VALUES (0)", &[])
                .map_err(fail)?;
            0
        }
    };
    if version > SCHEMA_VERSION {
        return Err(PgOpenError {
            permanent: true,
            message: format!(
                "database schema version {version} is newer than this omnisync-hub supports ({SCHEMA_VERSION}); upgrade omnisync-hub"
            ),
        });
    }
    let applied = usize::try_from(version).unwrap_or(0);
    for sql in MIGRATIONS.iter().skip(applied) {
        txn.batch_execute(sql).map_err(fail)?;
    }
    if version < SCHEMA_VERSION {
        txn.execute(
            "UPDATE omnisync_schema SET version = $1",
            &[&SCHEMA_VERSION],
        )
        .map_err(fail)?;
    }
    txn.commit().map_err(fail)
}

/// When to try connecting again after failures.
#[derive(Debug)]
struct Backoff {
    delay: Duration,
    next_try: Option<Instant>,
}

impl Backoff {
    fn new() -> Self {
        Self {
            delay: RECONNECT_DELAY_MIN,
            next_try: None,
        }
    }

    fn wait_left(&self) -> Option<Duration> {
        let next = self.next_try?;
        next.checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
    }

    fn failed(&mut self) {
        self.next_try = Some(Instant::now() + self.delay);
        self.delay = (self.delay * 2).min(RECONNECT_DELAY_MAX);
    }

    fn succeeded(&mut self) {
        *self = Self::new();
    }
}

/// The writer's connection to the database (any number of processes may
/// hold one: their transactions take turns, see the module doc).
pub struct PgBackend {
    url: PgUrl,
    conn: Option<PgConn>,
    backoff: Backoff,
}

impl std::fmt::Debug for PgBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBackend")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl PgBackend {
    /// Connects and migrates (see [`migrate`]).
    pub fn open(url: &PgUrl) -> Result<Self, PgOpenError> {
        let url = url.clone();
        let mut client = url
            .config
            .connect(NoTls)
            .map_err(|error| open_error(&url, &error))?;
        let migrated = migrate(&url, &mut client);
        drop_off_runtime(client);
        migrated?;
        let conn = PgConn::open(&url)?;
        Ok(Self {
            url,
            conn: Some(conn),
            backoff: Backoff::new(),
        })
    }

    /// The database, as logs may show it.
    pub fn url(&self) -> &PgUrl {
        &self.url
    }

    /// A usable connection: the one held, or a new one unless the last
    /// attempt failed less than the backoff delay ago.
    fn connection(&mut self) -> Result<&mut PgConn, HubLogError> {
        if !self.conn.as_ref().is_some_and(PgConn::usable) {
            self.conn = None;
            if let Some(left) = self.backoff.wait_left() {
                return Err(storage_error(format!(
                    "database {} unreachable; reconnecting in {:.1} s",
                    self.url,
                    left.as_secs_f64()
                )));
            }
            match PgConn::open(&self.url) {
                Ok(conn) => {
                    tracing::info!(database = %self.url, "reconnected to the database");
                    self.backoff.succeeded();
                    self.conn = Some(conn);
                }
                Err(error) => {
                    self.backoff.failed();
                    return Err(error.into());
                }
            }
        }
        self.conn
            .as_mut()
            .ok_or_else(|| storage_error("no database connection"))
    }
}

impl Backend for PgBackend {
    type Txn<'t> = PgTxn<'t>;

    fn begin(&mut self) -> Result<Self::Txn<'_>, HubLogError> {
        let conn = self.connection()?;
        // One round trip: the transaction, the writers' lock, then the head
        // as committed by whoever held the lock last.
        let sql = format!(
            "BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_xact_lock({WRITER_LOCK_KEY}); SELECT seq, (SELECT COALESCE(MAX(seq), 0) FROM events) FROM log_head WHERE id = 1"
        );
        let messages = match conn.client.simple_query(&sql) {
            Ok(messages) => messages,
            Err(error) => {
                // A failed BEGIN may leave the transaction open: start afresh.
                conn.poisoned = true;
                return Err(pg_error(error));
            }
        };
        let heads = simple_heads(&messages);
        let mut txn = PgTxn {
            conn,
            head: 0,
            appended: 0,
            event_head: 0,
            overlay: Overlay::default(),
            done: false,
        };
        (txn.head, txn.event_head) = heads?;
        txn.appended = txn.head;
        Ok(txn)
    }
}

/// The head and the outbox's head in the answer to `begin`'s query.
fn simple_heads(messages: &[SimpleQueryMessage]) -> Result<(u64, u64), HubLogError> {
    // The lock's row (void) comes first; the heads' is the last.
    let row = messages
        .iter()
        .rev()
        .find_map(|message| match message {
            SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .ok_or_else(|| storage_error("log_head has no row"))?;
    let number = |index: usize| -> Result<u64, HubLogError> {
        let text = row
            .get(index)
            .ok_or_else(|| storage_error("log_head has no row"))?;
        text.parse::<u64>()
            .map_err(|_| storage_error(format!("log_head holds {text:?}, not a sequence number")))
    };
    Ok((number(0)?, number(1)?))
}

impl Drop for PgBackend {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            off_runtime(move || drop(conn));
        }
    }
}

type Keyed<K, V> = HashMap<K, Option<V>>;

/// A transaction's rows not yet sent, and every row it read (absent ones
/// as `None`).
#[derive(Default)]
struct Overlay {
    outcomes: Keyed<OpId, AckOutcome>,
    new_outcomes: Vec<(OpId, Vec<u8>, i64)>,
    changes: Vec<RemoteChange>,
    skus: Keyed<(StoreId, Sku), SkuLedger>,
    dirty_skus: HashSet<(StoreId, Sku)>,
    orders: Keyed<(StoreId, String), OrderRecord>,
    dirty_orders: HashSet<(StoreId, String)>,
    keys: Keyed<(StoreId, String), Decision>,
    new_keys: HashSet<(StoreId, String)>,
    reservations: Keyed<(StoreId, String), Reservation>,
    dirty_reservations: HashSet<(StoreId, String)>,
    order_nos: HashMap<StoreId, u64>,
    dirty_order_nos: HashSet<StoreId>,
    meta: HashMap<String, String>,
    snapshots: HashMap<DocId, (u64, Vec<u8>)>,
    set_snapshots: HashMap<DocSetId, u64>,
    events: Vec<Event>,
    /// The head written by the last flush.
    flushed_head: u64,
}

impl Overlay {
    fn pending(&self) -> bool {
        !(self.new_outcomes.is_empty()
            && self.changes.is_empty()
            && self.dirty_skus.is_empty()
            && self.dirty_orders.is_empty()
            && self.new_keys.is_empty()
            && self.dirty_reservations.is_empty()
            && self.dirty_order_nos.is_empty()
            && self.meta.is_empty()
            && self.snapshots.is_empty()
            && self.set_snapshots.is_empty()
            && self.events.is_empty())
    }
}

/// One write transaction: the writers' lock held, writes kept in the
/// overlay until [`PgTxn::flush`]. Dropped without commit: rolled back.
pub struct PgTxn<'a> {
    conn: &'a mut PgConn,
    /// The committed head when the transaction began.
    head: u64,
    /// The highest sequence number appended (or `head`).
    appended: u64,
    /// The outbox's committed head when the transaction began.
    event_head: u64,
    overlay: Overlay,
    done: bool,
}

/// The columns of the flush statement, in parameter order.
#[derive(Default)]
struct FlushColumns {
    change_seq: Vec<i64>,
    change_set: Vec<String>,
    change_doc: Vec<String>,
    change_origin: Vec<Vec<u8>>,
    change_bytes: Vec<Vec<u8>>,
    outcome_replica: Vec<Vec<u8>>,
    outcome_seq: Vec<i64>,
    outcome_bytes: Vec<Vec<u8>>,
    outcome_ms: Vec<i64>,
    sku_store: Vec<String>,
    sku_sku: Vec<String>,
    sku_state: Vec<Vec<u8>>,
    sku_rights: Vec<bool>,
    order_store: Vec<String>,
    order_id: Vec<String>,
    order_record: Vec<Vec<u8>>,
    key_store: Vec<String>,
    key_key: Vec<String>,
    key_decision: Vec<Vec<u8>>,
    reservation_store: Vec<String>,
    reservation_key: Vec<String>,
    reservation_state: Vec<Vec<u8>>,
    order_no_store: Vec<String>,
    order_no_last: Vec<i64>,
    meta_key: Vec<String>,
    meta_value: Vec<String>,
    snapshot_doc: Vec<String>,
    snapshot_set: Vec<String>,
    snapshot_covers: Vec<i64>,
    snapshot_bytes: Vec<Vec<u8>>,
    set_snapshot_set: Vec<String>,
    set_snapshot_covers: Vec<i64>,
    event_seq: Vec<i64>,
    event_tenant: Vec<String>,
    event_store: Vec<String>,
    event_store_seq: Vec<i64>,
    event_type: Vec<String>,
    event_time: Vec<i64>,
    event_data: Vec<String>,
}

impl FlushColumns {
    /// Takes the pending rows out of `overlay` (the values read stay).
    fn take(overlay: &mut Overlay) -> Result<Self, HubLogError> {
        let mut columns = Self::default();
        for change in overlay.changes.drain(..) {
            columns.change_seq.push(seq_param(change.hub_seq));
            columns
                .change_set
                .push(change.doc.set().as_str().to_owned());
            columns.change_doc.push(change.doc.as_str().to_owned());
            columns.change_origin.push(change.origin.0.to_vec());
            columns.change_bytes.push(change.bytes);
        }
        for (op, outcome, now_ms) in overlay.new_outcomes.drain(..) {
            columns.outcome_replica.push(op.replica.0.to_vec());
            columns.outcome_seq.push(seq_param(op.seq));
            columns.outcome_bytes.push(outcome);
            columns.outcome_ms.push(now_ms);
        }
        for key in overlay.dirty_skus.drain() {
            if let Some(Some(ledger)) = overlay.skus.get(&key) {
                columns.sku_rights.push(ledger.held() > 0);
                columns.sku_state.push(encode(ledger)?);
                columns.sku_store.push(key.0.as_str().to_owned());
                columns.sku_sku.push(key.1.as_str().to_owned());
            }
        }
        for key in overlay.dirty_orders.drain() {
            if let Some(Some(order)) = overlay.orders.get(&key) {
                columns.order_record.push(encode(order)?);
                columns.order_store.push(key.0.as_str().to_owned());
                columns.order_id.push(key.1);
            }
        }
        for key in overlay.new_keys.drain() {
            if let Some(Some(decision)) = overlay.keys.get(&key) {
                columns.key_decision.push(encode(decision)?);
                columns.key_store.push(key.0.as_str().to_owned());
                columns.key_key.push(key.1);
            }
        }
        for key in overlay.dirty_reservations.drain() {
            if let Some(Some(reservation)) = overlay.reservations.get(&key) {
                columns.reservation_state.push(encode(reservation)?);
                columns.reservation_store.push(key.0.as_str().to_owned());
                columns.reservation_key.push(key.1);
            }
        }
        for store in overlay.dirty_order_nos.drain() {
            if let Some(last) = overlay.order_nos.get(&store) {
                columns.order_no_last.push(seq_param(*last));
                columns.order_no_store.push(store.as_str().to_owned());
            }
        }
        for (key, value) in overlay.meta.drain() {
            columns.meta_key.push(key);
            columns.meta_value.push(value);
        }
        for (doc, (covers, bytes)) in overlay.snapshots.drain() {
            columns.snapshot_set.push(doc.set().as_str().to_owned());
            columns.snapshot_doc.push(doc.as_str().to_owned());
            columns.snapshot_covers.push(seq_param(covers));
            columns.snapshot_bytes.push(bytes);
        }
        for (set, covers) in overlay.set_snapshots.drain() {
            columns.set_snapshot_set.push(set.as_str().to_owned());
            columns.set_snapshot_covers.push(seq_param(covers));
        }
        for event in overlay.events.drain(..) {
            columns.event_seq.push(seq_param(event.seq));
            columns.event_tenant.push(event.tenant.as_str().to_owned());
            columns.event_store.push(event.store.as_str().to_owned());
            columns.event_store_seq.push(seq_param(event.store_seq));
            columns.event_type.push(event.kind.as_str().to_owned());
            columns.event_time.push(seq_param(event.time_ms));
            columns.event_data.push(event.data.to_string());
        }
        Ok(columns)
    }
}

impl PgTxn<'_> {
    /// Sends every pending write in one statement, with the new head and
    /// (when `notify`) the notification of it.
    fn flush(&mut self, notify: bool) -> Result<(), HubLogError> {
        let notify = (notify && self.appended > self.head).then(|| self.appended.to_string());
        if !self.overlay.pending() && notify.is_none() {
            return Ok(());
        }
        let c = FlushColumns::take(&mut self.overlay)?;
        let head = seq_param(self.appended);
        self.conn.rows(
            Stmt::Flush,
            &[
                &c.change_seq,
                &c.change_set,
                &c.change_doc,
                &c.change_origin,
                &c.change_bytes,
                &c.outcome_replica,
                &c.outcome_seq,
                &c.outcome_bytes,
                &c.outcome_ms,
                &c.sku_store,
                &c.sku_sku,
                &c.sku_state,
                &c.sku_rights,
                &c.order_store,
                &c.order_id,
                &c.order_record,
                &c.key_store,
                &c.key_key,
                &c.key_decision,
                &c.reservation_store,
                &c.reservation_key,
                &c.reservation_state,
                &c.order_no_store,
                &c.order_no_last,
                &c.meta_key,
                &c.meta_value,
                &c.snapshot_doc,
                &c.snapshot_set,
                &c.snapshot_covers,
                &c.snapshot_bytes,
                &c.set_snapshot_set,
                &c.set_snapshot_covers,
                &head,
                &notify,
                &c.event_seq,
                &c.event_tenant,
                &c.event_store,
                &c.event_store_seq,
                &c.event_type,
                &c.event_time,
                &c.event_data,
            ],
        )?;
        self.overlay.flushed_head = self.appended;
        Ok(())
    }

    /// Flushes before a read of rows only the database can answer (the
    /// change log, snapshots), so the transaction sees its own writes.
    fn sync(&mut self) -> Result<(), HubLogError> {
        self.flush(false)
    }
}

impl Drop for PgTxn<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if self.conn.client.batch_execute("ROLLBACK").is_err() {
            // Unknown state (or a lost connection): the next begin reconnects.
            self.conn.poisoned = true;
        }
    }
}

/// A count or maximum a statement answers in its first column.
fn read_count(
    conn: &mut PgConn,
    statement: Stmt,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, HubLogError> {
    let rows = conn.rows(statement, params)?;
    let value: i64 = match rows.first() {
        Some(row) => row.try_get(0).map_err(pg_error)?,
        None => 0,
    };
    Ok(value as u64)
}

/// The outbox's events after `after` passing `filter` (one statement; the
/// filter's lists are arrays, empty for "all").
fn events_after(
    conn: &mut PgConn,
    after: u64,
    filter: &EventFilter,
    limit: usize,
    visit: &mut dyn FnMut(Event) -> Result<(), HubLogError>,
) -> Result<(), HubLogError> {
    let stores: Vec<&str> = filter.stores.iter().map(StoreId::as_str).collect();
    let types: Vec<&str> = filter.types.iter().map(|kind| kind.as_str()).collect();
    let rows = conn
        .client
        .query(
            "SELECT seq, tenant, store_id, store_seq, type, time_ms, data::text FROM events
             WHERE seq > $1
               AND (cardinality($2::text[]) = 0 OR store_id = ANY($2::text[]))
               AND (cardinality($3::text[]) = 0 OR type = ANY($3::text[]))
             ORDER BY seq LIMIT $4",
            &[
                &seq_param(after),
                &stores,
                &types,
                &(limit.min(i64::MAX as usize) as i64),
            ],
        )
        .map_err(pg_error)?;
    for row in rows {
        let columns = EventColumns {
            seq: row.try_get(0).map_err(pg_error)?,
            tenant: row.try_get(1).map_err(pg_error)?,
            store: row.try_get(2).map_err(pg_error)?,
            store_seq: row.try_get(3).map_err(pg_error)?,
            kind: row.try_get(4).map_err(pg_error)?,
            time_ms: row.try_get(5).map_err(pg_error)?,
            data: row.try_get(6).map_err(pg_error)?,
        };
        visit(columns.into_event()?)?;
    }
    Ok(())
}

/// Reads shared by the reader and the writer's transaction.
fn read_head(conn: &mut PgConn) -> Result<u64, HubLogError> {
    let rows = conn.rows(Stmt::Head, &[])?;
    let head: i64 = match rows.first() {
        Some(row) => row.try_get(0).map_err(pg_error)?,
        None => 0,
    };
    Ok(head.max(0) as u64)
}

fn opt_bytes(rows: &[Row]) -> Result<Option<Vec<u8>>, HubLogError> {
    rows.first()
        .map(|row| row.try_get::<_, Vec<u8>>(0).map_err(pg_error))
        .transpose()
}

fn text_pair(store: &StoreId, key: &str) -> [String; 2] {
    [store.as_str().to_owned(), key.to_owned()]
}

fn find_outcome(conn: &mut PgConn, op: &OpId) -> Result<Option<AckOutcome>, HubLogError> {
    let replica = op.replica.0.to_vec();
    let rows = conn.rows(Stmt::Outcome, &[&replica, &seq_param(op.seq)])?;
    opt_bytes(&rows)?
        .map(|bytes| decode_outcome(&bytes))
        .transpose()
}

fn meta(conn: &mut PgConn, key: &str) -> Result<Option<String>, HubLogError> {
    let rows = conn.rows(Stmt::Meta, &[&key])?;
    rows.first()
        .map(|row| row.try_get::<_, String>(0).map_err(pg_error))
        .transpose()
}

fn change_of(row: &Row) -> Result<RemoteChange, HubLogError> {
    let hub_seq: i64 = row.try_get(0).map_err(pg_error)?;
    let doc: String = row.try_get(1).map_err(pg_error)?;
    let origin: Vec<u8> = row.try_get(2).map_err(pg_error)?;
    let bytes: Vec<u8> = row.try_get(3).map_err(pg_error)?;
    stored_change(hub_seq, doc, &origin, bytes)
}

fn changes_after(
    conn: &mut PgConn,
    set: &DocSetId,
    after: u64,
    page: &mut PageCut,
) -> Result<(), HubLogError> {
    let limit = i64::try_from(page.rows_max()).unwrap_or(i64::MAX);
    let rows = conn.rows(
        Stmt::ChangesAfter,
        &[&set.as_str(), &seq_param(after), &limit],
    )?;
    for row in &rows {
        if page.full() {
            break;
        }
        page.push(change_of(row)?);
    }
    Ok(())
}

fn changes_between(
    conn: &mut PgConn,
    after: u64,
    upto: u64,
    visit: &mut dyn FnMut(RemoteChange) -> Result<(), HubLogError>,
) -> Result<(), HubLogError> {
    let rows = conn.rows(Stmt::ChangesBetween, &[&seq_param(after), &seq_param(upto)])?;
    for row in &rows {
        visit(change_of(row)?)?;
    }
    Ok(())
}

fn doc_changes(
    conn: &mut PgConn,
    doc: &DocId,
    after: u64,
    upto: u64,
    visit: &mut dyn FnMut(&[u8]) -> Result<(), HubLogError>,
) -> Result<(), HubLogError> {
    let rows = conn.rows(
        Stmt::DocChanges,
        &[&doc.as_str(), &seq_param(after), &seq_param(upto)],
    )?;
    for row in &rows {
        let bytes: &[u8] = row.try_get(0).map_err(pg_error)?;
        visit(bytes)?;
    }
    Ok(())
}

fn latest_change(
    conn: &mut PgConn,
    doc: &DocId,
    upto: u64,
) -> Result<Option<Vec<u8>>, HubLogError> {
    let rows = conn.rows(Stmt::LatestChange, &[&doc.as_str(), &seq_param(upto)])?;
    opt_bytes(&rows)
}

fn set_docs(conn: &mut PgConn, set: &DocSetId) -> Result<Vec<DocId>, HubLogError> {
    let rows = conn.rows(Stmt::SetDocs, &[&set.as_str()])?;
    rows.iter()
        .map(|row| {
            let doc: String = row.try_get(0).map_err(pg_error)?;
            DocId::new(doc).map_err(storage_error)
        })
        .collect()
}

/// Compaction's reads and delete: rare (one set per maintenance round), so
/// plain statements rather than prepared ones.
fn change_sets(conn: &mut PgConn) -> Result<Vec<DocSetId>, HubLogError> {
    // One index probe per set (a loose index scan) rather than a walk over
    // every change.
    let rows = conn
        .client
        .query(
            "WITH RECURSIVE sets(set_id) AS (
                 (SELECT set_id FROM changes ORDER BY set_id LIMIT 1)
                 UNION ALL
                 SELECT (SELECT c.set_id FROM changes c WHERE c.set_id > sets.set_id
                         ORDER BY c.set_id LIMIT 1)
                 FROM sets WHERE sets.set_id IS NOT NULL)
             SELECT set_id FROM sets WHERE set_id IS NOT NULL",
            &[],
        )
        .map_err(pg_error)?;
    rows.iter()
        .map(|row| {
            let set: String = row.try_get(0).map_err(pg_error)?;
            DocSetId::new(set).map_err(storage_error)
        })
        .collect()
}

fn count_changes(
    conn: &mut PgConn,
    set: &DocSetId,
    after: u64,
    upto: u64,
) -> Result<(u64, u64), HubLogError> {
    let row = conn
        .client
        .query_one(
            "SELECT count(*)::int8, COALESCE(sum(length(bytes)), 0)::int8 FROM changes
             WHERE set_id = $1 AND hub_seq > $2 AND hub_seq <= $3",
            &[&set.as_str(), &seq_param(after), &seq_param(upto)],
        )
        .map_err(pg_error)?;
    let count: i64 = row.try_get(0).map_err(pg_error)?;
    let bytes: i64 = row.try_get(1).map_err(pg_error)?;
    Ok((count.max(0) as u64, bytes.max(0) as u64))
}

fn changed_docs(
    conn: &mut PgConn,
    set: &DocSetId,
    after: u64,
    upto: u64,
) -> Result<Vec<DocId>, HubLogError> {
    let rows = conn
        .client
        .query(
            "SELECT DISTINCT doc_id FROM changes
             WHERE set_id = $1 AND hub_seq > $2 AND hub_seq <= $3 ORDER BY doc_id",
            &[&set.as_str(), &seq_param(after), &seq_param(upto)],
        )
        .map_err(pg_error)?;
    rows.iter()
        .map(|row| {
            let doc: String = row.try_get(0).map_err(pg_error)?;
            DocId::new(doc).map_err(storage_error)
        })
        .collect()
}

fn snapshot(conn: &mut PgConn, doc: &DocId) -> Result<Option<(Vec<u8>, u64)>, HubLogError> {
    let rows = conn.rows(Stmt::Snapshot, &[&doc.as_str()])?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let bytes: Vec<u8> = row.try_get(0).map_err(pg_error)?;
    let covers: i64 = row.try_get(1).map_err(pg_error)?;
    Ok(Some((bytes, covers.max(0) as u64)))
}

fn set_snapshot(conn: &mut PgConn, set: &DocSetId) -> Result<Option<u64>, HubLogError> {
    let rows = conn.rows(Stmt::SetSnapshot, &[&set.as_str()])?;
    rows.first()
        .map(|row| {
            row.try_get::<_, i64>(0)
                .map(|covers| covers.max(0) as u64)
                .map_err(pg_error)
        })
        .transpose()
}

fn snapshots_after(
    conn: &mut PgConn,
    set: &DocSetId,
    after: Option<&DocId>,
    page: &mut PageCut,
) -> Result<(), HubLogError> {
    let after = after.map(DocId::as_str).unwrap_or("");
    let limit = i64::try_from(page.rows_max()).unwrap_or(i64::MAX);
    let rows = conn.rows(Stmt::SnapshotsAfter, &[&set.as_str(), &after, &limit])?;
    for row in &rows {
        if page.full() {
            break;
        }
        let doc: String = row.try_get(0).map_err(pg_error)?;
        let bytes: Vec<u8> = row.try_get(1).map_err(pg_error)?;
        page.push_snapshot(DocId::new(doc).map_err(storage_error)?, bytes);
    }
    Ok(())
}

/// A reader's rows: one connection inside a read-only snapshot.
struct PgReadRows<'a>(&'a mut PgConn);

impl LogRows for PgReadRows<'_> {
    fn head_seq(&mut self) -> Result<u64, HubLogError> {
        read_head(self.0)
    }
    fn event_head(&mut self) -> Result<u64, HubLogError> {
        read_count(self.0, Stmt::EventHead, &[])
    }
    fn store_event_seq(&mut self, store: &StoreId) -> Result<u64, HubLogError> {
        read_count(self.0, Stmt::StoreEventSeq, &[&store.as_str()])
    }
    fn events_after(
        &mut self,
        after: u64,
        filter: &EventFilter,
        limit: usize,
        visit: &mut dyn FnMut(Event) -> Result<(), HubLogError>,
    ) -> Result<(), HubLogError> {
        events_after(self.0, after, filter, limit, visit)
    }
    fn meta(&mut self, key: &str) -> Result<Option<String>, HubLogError> {
        meta(self.0, key)
    }
    fn find_outcome(&mut self, op: &OpId) -> Result<Option<AckOutcome>, HubLogError> {
        find_outcome(self.0, op)
    }
    fn changes_after(
        &mut self,
        set: &DocSetId,
        after: u64,
        page: &mut PageCut,
    ) -> Result<(), HubLogError> {
        changes_after(self.0, set, after, page)
    }
    fn doc_changes(
        &mut self,
        doc: &DocId,
        after: u64,
        upto: u64,
        visit: &mut dyn FnMut(&[u8]) -> Result<(), HubLogError>,
    ) -> Result<(), HubLogError> {
        doc_changes(self.0, doc, after, upto, visit)
    }
    fn latest_change(&mut self, doc: &DocId, upto: u64) -> Result<Option<Vec<u8>>, HubLogError> {
        latest_change(self.0, doc, upto)
    }
    fn change_sets(&mut self) -> Result<Vec<DocSetId>, HubLogError> {
        change_sets(self.0)
    }
    fn count_changes(
        &mut self,
        set: &DocSetId,
        after: u64,
        upto: u64,
    ) -> Result<(u64, u64), HubLogError> {
        count_changes(self.0, set, after, upto)
    }
    fn changed_docs(
        &mut self,
        set: &DocSetId,
        after: u64,
        upto: u64,
    ) -> Result<Vec<DocId>, HubLogError> {
        changed_docs(self.0, set, after, upto)
    }
    fn set_docs(&mut self, set: &DocSetId) -> Result<Vec<DocId>, HubLogError> {
        set_docs(self.0, set)
    }
    fn snapshot(&mut self, doc: &DocId) -> Result<Option<(Vec<u8>, u64)>, HubLogError> {
        snapshot(self.0, doc)
    }
    fn set_snapshot(&mut self, set: &DocSetId) -> Result<Option<u64>, HubLogError> {
        set_snapshot(self.0, set)
    }
    fn snapshots_after(
        &mut self,
        set: &DocSetId,
        after: Option<&DocId>,
        page: &mut PageCut,
    ) -> Result<(), HubLogError> {
        snapshots_after(self.0, set, after, page)
    }
    fn changes_between(
        &mut self,
        after: u64,
        upto: u64,
        visit: &mut dyn FnMut(RemoteChange) -> Result<(), HubLogError>,
    ) -> Result<(), HubLogError> {
        changes_between(self.0, after, upto, visit)
    }
}

impl LogRows for PgTxn<'_> {
    fn head_seq(&mut self) -> Result<u64, HubLogError> {
        Ok(self.appended)
    }
    fn event_head(&mut self) -> Result<u64, HubLogError> {
        Ok(self.event_head)
    }
    fn store_event_seq(&mut self, store: &StoreId) -> Result<u64, HubLogError> {
        let pending = self
            .overlay
            .events
            .iter()
            .rev()
            .find(|event| &event.store == store)
            .map(|event| event.store_seq);
        match pending {
            Some(last) => Ok(last),
            None => read_count(self.conn, Stmt::StoreEventSeq, &[&store.as_str()]),
        }
    }
    fn events_after(
        &mut self,
        after: u64,
        filter: &EventFilter,
        limit: usize,
        visit: &mut dyn FnMut(Event) -> Result<(), HubLogError>,
    ) -> Result<(), HubLogError> {
        self.sync()?;
        events_after(self.conn, after, filter, limit, visit)
    }
    fn meta(&mut self, key: &str) -> Result<Option<String>, HubLogError> {
        match self.overlay.meta.get(key) {
            Some(value) => Ok(Some(value.clone())),
            None => meta(self.conn, key),
        }
    }
    fn find_outcome(&mut self, op: &OpId) -> Result<Option<AckOutcome>, HubLogError> {
        if let Some(known) = self.overlay.outcomes.get(op) {
            return Ok(known.clone());
        }
        let found = find_outcome(self.conn, op)?;
        self.overlay.outcomes.insert(*op, found.clone());
        Ok(found)
    }
    fn changes_after(
        &mut self,
        set: &DocSetId,
        after: u64,
        page: &mut PageCut,
    ) -> Result<(), HubLogError> {
        self.sync()?;
        changes_after(self.conn, set, after, page)
    }
    fn doc_changes(
        &mut self,
        doc: &DocId,
        after: u64,
        upto: u64,
        visit: &mut dyn FnMut(&[u8]) -> Result<(), HubLogError>,
    ) -> Result<(), HubLogError> {
        self.sync()?;
        doc_changes(self.conn, doc, after, upto, visit)
    }
    fn latest_change(&mut self, doc: &DocId, upto: u64) -> Result<Option<Vec<u8>>, HubLogError> {
        self.sync()?;
        latest_change(self.conn, doc, upto)
    }
    fn change_sets(&mut self) -> Result<Vec<DocSetId>, HubLogError> {
        self.sync()?;
        change_sets(self.conn)
    }
    fn count_changes(
        &mut self,
        set: &DocSetId,
        after: u64,
        upto: u64,
    ) -> Result<(u64, u64), HubLogError> {
        self.sync()?;
        count_changes(self.conn, set, after, upto)
    }
    fn changed_docs(
        &mut self,
        set: &DocSetId,
        after: u64,
        upto: u64,
    ) -> Result<Vec<DocId>, HubLogError> {
        self.sync()?;
        changed_docs(self.conn, set, after, upto)
    }
    fn set_docs(&mut self, set: &DocSetId) -> Result<Vec<DocId>, HubLogError> {
        self.sync()?;
        set_docs(self.conn, set)
    }
    fn snapshot(&mut self, doc: &DocId) -> Result<Option<(Vec<u8>, u64)>, HubLogError> {
        self.sync()?;
        snapshot(self.conn, doc)
    }
    fn set_snapshot(&mut self, set: &DocSetId) -> Result<Option<u64>, HubLogError> {
        self.sync()?;
        set_snapshot(self.conn, set)
    }
    fn snapshots_after(
        &mut self,
        set: &DocSetId,
        after: Option<&DocId>,
        page: &mut PageCut,
    ) -> Result<(), HubLogError> {
        self.sync()?;
        snapshots_after(self.conn, set, after, page)
    }
    fn changes_between(
        &mut self,
        after: u64,
        upto: u64,
        visit: &mut dyn FnMut(RemoteChange) -> Result<(), HubLogError>,
    ) -> Result<(), HubLogError> {
        self.sync()?;
        changes_between(self.conn, after, upto, visit)
    }

    fn prefetch(&mut self, want: &Prefetch) -> Result<(), HubLogError> {
        let overlay = &self.overlay;
        let ops: Vec<&OpId> = want
            .ops
            .iter()
            .filter(|op| !overlay.outcomes.contains_key(op))
            .collect();
        let skus = unknown_pairs(&want.skus, &overlay.skus, |(store, sku)| {
            (store.as_str(), sku.as_str())
        });
        let orders = unknown_pairs(&want.orders, &overlay.orders, |(store, id)| {
            (store.as_str(), id.as_str())
        });
        let keys = unknown_pairs(&want.keys, &overlay.keys, |(store, key)| {
            (store.as_str(), key.as_str())
        });
        let reservations = unknown_pairs(&want.reservations, &overlay.reservations, |(s, k)| {
            (s.as_str(), k.as_str())
        });
        let stores: Vec<&str> = want
            .stores
            .iter()
            .filter(|store| !overlay.order_nos.contains_key(*store))
            .map(StoreId::as_str)
            .collect();
        let replicas: Vec<&[u8]> = ops.iter().map(|op| &op.replica.0[..]).collect();
        let seqs: Vec<i64> = ops.iter().map(|op| seq_param(op.seq)).collect();
        let rows = self.conn.rows(
            Stmt::Prefetch,
            &[
                &replicas,
                &seqs,
                &skus.0,
                &skus.1,
                &orders.0,
                &orders.1,
                &keys.0,
                &keys.1,
                &reservations.0,
                &reservations.1,
                &stores,
            ],
        )?;
        // Everything asked for is known now: absent unless a row came back.
        let overlay = &mut self.overlay;
        for op in ops {
            overlay.outcomes.insert(*op, None);
        }
        absent(&want.skus, &mut overlay.skus);
        absent(&want.orders, &mut overlay.orders);
        absent(&want.keys, &mut overlay.keys);
        absent(&want.reservations, &mut overlay.reservations);
        let mut last_order_nos: HashMap<StoreId, u64> = HashMap::new();
        for row in &rows {
            prefetched(overlay, row, &mut last_order_nos)?;
        }
        for store in &want.stores {
            let last = last_order_nos.get(store).copied().unwrap_or(0);
            overlay.order_nos.entry(store.clone()).or_insert(last);
        }
        Ok(())
    }
}

/// The keys of `want` the overlay does not know yet, as two text columns.
fn unknown_pairs<'w, K: Eq + std::hash::Hash, V>(
    want: &'w [K],
    known: &Keyed<K, V>,
    split: impl Fn(&'w K) -> (&'w str, &'w str),
) -> (Vec<&'w str>, Vec<&'w str>) {
    want.iter()
        .filter(|key| !known.contains_key(key))
        .map(split)
        .unzip()
}

/// Marks every key of `want` not known yet as absent (rows found replace it).
fn absent<K: Eq + std::hash::Hash + Clone, V>(want: &[K], known: &mut Keyed<K, V>) {
    for key in want {
        known.entry(key.clone()).or_insert(None);
    }
}

/// Files one row of the prefetch statement into the overlay, replacing the
/// absence just recorded but never a value the transaction wrote.
fn prefetched(
    overlay: &mut Overlay,
    row: &Row,
    last_order_nos: &mut HashMap<StoreId, u64>,
) -> Result<(), HubLogError> {
    let kind: i32 = row.try_get(0).map_err(pg_error)?;
    let text = |index: usize| -> Result<String, HubLogError> {
        row.try_get::<_, Option<String>>(index)
            .map_err(pg_error)?
            .ok_or_else(|| storage_error("prefetch row without its key"))
    };
    let value = || -> Result<Vec<u8>, HubLogError> {
        row.try_get::<_, Option<Vec<u8>>>(5)
            .map_err(pg_error)?
            .ok_or_else(|| storage_error("prefetch row without its value"))
    };
    let store =
        || -> Result<StoreId, HubLogError> { StoreId::new(text(2)?).map_err(storage_error) };
    match kind {
        0 => {
            let replica: Vec<u8> = row
                .try_get::<_, Option<Vec<u8>>>(1)
                .map_err(pg_error)?
                .unwrap_or_default();
            let seq: i64 = row
                .try_get::<_, Option<i64>>(4)
                .map_err(pg_error)?
                .unwrap_or(-1);
            let op = OpId {
                replica: ReplicaId::from_slice(&replica)
                    .ok_or_else(|| storage_error("stored replica is not 16 bytes"))?,
                seq: u64::try_from(seq).map_err(|_| storage_error("stored op seq is negative"))?,
            };
            let outcome = decode_outcome(&value()?)?;
            fill(&mut overlay.outcomes, op, outcome);
        }
        1 => {
            let key = (store()?, Sku::new(text(3)?).map_err(storage_error)?);
            let ledger = decode(&value()?, "ledger entry")?;
            fill(&mut overlay.skus, key, ledger);
        }
        2 => fill(
            &mut overlay.orders,
            (store()?, text(3)?),
            decode(&value()?, "order")?,
        ),
        3 => fill(
            &mut overlay.keys,
            (store()?, text(3)?),
            decode(&value()?, "decision")?,
        ),
        4 => fill(
            &mut overlay.reservations,
            (store()?, text(3)?),
            decode(&value()?, "reservation")?,
        ),
        5 => {
            let last: i64 = row
                .try_get::<_, Option<i64>>(4)
                .map_err(pg_error)?
                .unwrap_or(0);
            last_order_nos.insert(store()?, last.max(0) as u64);
        }
        other => {
            return Err(storage_error(format!(
                "prefetch row of unknown kind {other}"
            )));
        }
    }
    Ok(())
}

/// Sets `key` to the stored `value` where only its absence was recorded.
fn fill<K: Eq + std::hash::Hash, V>(known: &mut Keyed<K, V>, key: K, value: V) {
    let slot = known.entry(key).or_insert(None);
    if slot.is_none() {
        *slot = Some(value);
    }
}

impl PgTxn<'_> {
    /// A ledger row: from the overlay, else one query (remembered).
    fn keyed<K, V>(
        &mut self,
        pick: impl Fn(&mut Overlay) -> &mut Keyed<K, V>,
        key: K,
        statement: Stmt,
        params: [String; 2],
        what: &str,
    ) -> Result<Option<V>, HubLogError>
    where
        K: Eq + std::hash::Hash,
        V: Clone + serde::de::DeserializeOwned,
    {
        if let Some(known) = pick(&mut self.overlay).get(&key) {
            return Ok(known.clone());
        }
        let rows = self.conn.rows(statement, &[&params[0], &params[1]])?;
        let found: Option<V> = opt_bytes(&rows)?
            .map(|bytes| decode(&bytes, what))
            .transpose()?;
        pick(&mut self.overlay).insert(key, found.clone());
        Ok(found)
    }
}

impl WriteTxn for PgTxn<'_> {
    fn delete_events(&mut self, before_ms: u64, limit: u64) -> Result<(u64, u64), HubLogError> {
        self.sync()?;
        let row = self
            .conn
            .client
            .query_one(
                "WITH d AS (
                     DELETE FROM events WHERE seq IN (
                         SELECT e.seq FROM events e
                         WHERE e.time_ms < $1
                           AND e.store_seq < (SELECT MAX(x.store_seq) FROM events x
                                              WHERE x.store_id = e.store_id)
                         ORDER BY e.seq LIMIT $2)
                     RETURNING seq)
                 SELECT COUNT(*), COALESCE(MAX(seq), 0) FROM d",
                &[&seq_param(before_ms), &seq_param(limit)],
            )
            .map_err(pg_error)?;
        let count: i64 = row.try_get(0).map_err(pg_error)?;
        let highest: i64 = row.try_get(1).map_err(pg_error)?;
        Ok((count as u64, highest as u64))
    }

    fn append_event(&mut self, event: &Event) -> Result<(), HubLogError> {
        self.overlay.events.push(event.clone());
        Ok(())
    }

    fn put_meta(&mut self, key: &str, value: &str) -> Result<(), HubLogError> {
        self.overlay.meta.insert(key.to_owned(), value.to_owned());
        Ok(())
    }

    fn put_outcome(
        &mut self,
        op: &OpId,
        outcome: &AckOutcome,
        now_ms: u64,
    ) -> Result<(), HubLogError> {
        self.overlay
            .new_outcomes
            .push((*op, encode_outcome(outcome)?, seq_param(now_ms)));
        self.overlay.outcomes.insert(*op, Some(outcome.clone()));
        Ok(())
    }

    fn append(&mut self, change: &RemoteChange) -> Result<(), HubLogError> {
        self.appended = self.appended.max(change.hub_seq);
        self.overlay.changes.push(change.clone());
        Ok(())
    }

    fn get_sku(&mut self, store: &StoreId, sku: &Sku) -> Result<Option<SkuLedger>, HubLogError> {
        self.keyed(
            |overlay| &mut overlay.skus,
            (store.clone(), sku.clone()),
            Stmt::Sku,
            text_pair(store, sku.as_str()),
            "ledger entry",
        )
    }

    fn put_sku(
        &mut self,
        store: &StoreId,
        sku: &Sku,
        ledger: &SkuLedger,
    ) -> Result<(), HubLogError> {
        let key = (store.clone(), sku.clone());
        self.overlay.skus.insert(key.clone(), Some(ledger.clone()));
        self.overlay.dirty_skus.insert(key);
        Ok(())
    }

    fn get_order(
        &mut self,
        store: &StoreId,
        order_id: &str,
    ) -> Result<Option<OrderRecord>, HubLogError> {
        self.keyed(
            |overlay| &mut overlay.orders,
            (store.clone(), order_id.to_owned()),
            Stmt::Order,
            text_pair(store, order_id),
            "order",
        )
    }

    fn put_order(&mut self, store: &StoreId, order: &OrderRecord) -> Result<(), HubLogError> {
        let key = (store.clone(), order.order_id.to_string());
        self.overlay.orders.insert(key.clone(), Some(order.clone()));
        self.overlay.dirty_orders.insert(key);
        Ok(())
    }

    fn get_key(&mut self, store: &StoreId, key: &str) -> Result<Option<Decision>, HubLogError> {
        self.keyed(
            |overlay| &mut overlay.keys,
            (store.clone(), key.to_owned()),
            Stmt::Key,
            text_pair(store, key),
            "decision",
        )
    }

    fn put_key(
        &mut self,
        store: &StoreId,
        key: &str,
        decision: &Decision,
    ) -> Result<(), HubLogError> {
        let key = (store.clone(), key.to_owned());
        self.overlay
            .keys
            .insert(key.clone(), Some(decision.clone()));
        self.overlay.new_keys.insert(key);
        Ok(())
    }

    fn get_reservation(
        &mut self,
        store: &StoreId,
        key: &str,
    ) -> Result<Option<Reservation>, HubLogError> {
        self.keyed(
            |overlay| &mut overlay.reservations,
            (store.clone(), key.to_owned()),
            Stmt::Reservation,
            text_pair(store, key),
            "reservation",
        )
    }

    fn put_reservation(
        &mut self,
        store: &StoreId,
        key: &str,
        reservation: &Reservation,
    ) -> Result<(), HubLogError> {
        let key = (store.clone(), key.to_owned());
        self.overlay
            .reservations
            .insert(key.clone(), Some(reservation.clone()));
        self.overlay.dirty_reservations.insert(key);
        Ok(())
    }

    fn get_last_order_no(&mut self, store: &StoreId) -> Result<u64, HubLogError> {
        if let Some(last) = self.overlay.order_nos.get(store) {
            return Ok(*last);
        }
        let rows = self.conn.rows(Stmt::OrderNo, &[&store.as_str()])?;
        let last: i64 = match rows.first() {
            Some(row) => row.try_get(0).map_err(pg_error)?,
            None => 0,
        };
        let last = last.max(0) as u64;
        self.overlay.order_nos.insert(store.clone(), last);
        Ok(last)
    }

    fn put_order_no(&mut self, store: &StoreId, last: u64) -> Result<(), HubLogError> {
        self.overlay.order_nos.insert(store.clone(), last);
        self.overlay.dirty_order_nos.insert(store.clone());
        Ok(())
    }

    fn skus_with_rights(&mut self) -> Result<Vec<(StoreId, Sku)>, HubLogError> {
        self.sync()?;
        let rows = self.conn.rows(Stmt::SkusWithRights, &[])?;
        rows.iter()
            .map(|row| {
                let store: String = row.try_get(0).map_err(pg_error)?;
                let sku: String = row.try_get(1).map_err(pg_error)?;
                Ok((
                    StoreId::new(store).map_err(storage_error)?,
                    Sku::new(sku).map_err(storage_error)?,
                ))
            })
            .collect()
    }

    fn put_snapshot(&mut self, doc: &DocId, covers: u64, bytes: &[u8]) -> Result<(), HubLogError> {
        self.overlay
            .snapshots
            .insert(doc.clone(), (covers, bytes.to_vec()));
        Ok(())
    }

    fn put_set_snapshot(&mut self, set: &DocSetId, covers: u64) -> Result<(), HubLogError> {
        self.overlay.set_snapshots.insert(set.clone(), covers);
        Ok(())
    }

    fn delete_changes(
        &mut self,
        set: &DocSetId,
        upto: u64,
        limit: u64,
    ) -> Result<u64, HubLogError> {
        // Pending appends go first: the delete must see them. The head is
        // its own row (`log_head`), so deleting the newest changes never
        // lowers it.
        self.sync()?;
        let deleted = self
            .conn
            .client
            .execute(
                "DELETE FROM changes WHERE hub_seq IN (
                     SELECT hub_seq FROM changes WHERE set_id = $1 AND hub_seq <= $2
                     ORDER BY hub_seq LIMIT $3)",
                &[&set.as_str(), &seq_param(upto), &seq_param(limit)],
            )
            .map_err(pg_error)?;
        Ok(deleted)
    }

    fn commit(mut self) -> Result<(), HubLogError> {
        self.flush(true)?;
        let committed = self.conn.client.batch_execute("COMMIT");
        // Committed or not, the transaction is over; after a failed COMMIT
        // the connection's state is unknown and it is replaced.
        self.done = true;
        committed.map_err(|error| {
            self.conn.poisoned = true;
            pg_error(error)
        })
    }
}

/// A pool of connections reading the database, each read in one
/// `REPEATABLE READ, READ ONLY` transaction (one consistent snapshot); a
/// [`omnisync_hub_engine::log::HubLogRead`] through the shared read code.
pub struct PgReader {
    url: PgUrl,
    pool: std::sync::Mutex<Vec<PgConn>>,
}

impl std::fmt::Debug for PgReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgReader")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl PgReader {
    /// Readers of the database at `url` (connected on first use).
    pub fn new(url: &PgUrl) -> Self {
        Self {
            url: url.clone(),
            pool: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn take(&self) -> Result<PgConn, HubLogError> {
        let pooled = self
            .pool
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop();
        match pooled {
            Some(conn) if conn.usable() => Ok(conn),
            _ => PgConn::open(&self.url).map_err(Into::into),
        }
    }

    fn give_back(&self, conn: PgConn) {
        if !conn.usable() {
            return;
        }
        let mut pool = self
            .pool
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if pool.len() < READER_POOL_LEN_MAX {
            pool.push(conn);
        }
    }

    fn read_blocking<T>(
        &self,
        read: impl FnOnce(&mut dyn LogRows) -> Result<T, HubLogError>,
    ) -> Result<T, HubLogError> {
        let mut conn = self.take()?;
        let result = match conn
            .client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        {
            Ok(()) => {
                let result = read(&mut PgReadRows(&mut conn));
                if conn.client.batch_execute("COMMIT").is_err() {
                    conn.poisoned = true;
                }
                result
            }
            Err(error) => {
                conn.poisoned = true;
                Err(pg_error(error))
            }
        };
        self.give_back(conn);
        result
    }
}

impl ReadBackend for PgReader {
    fn read<T: Send>(
        &self,
        read: impl FnOnce(&mut dyn LogRows) -> Result<T, HubLogError> + Send,
    ) -> Result<T, HubLogError> {
        off_runtime(|| self.read_blocking(read))
    }
}

impl Drop for PgReader {
    fn drop(&mut self) {
        let pool = std::mem::take(
            self.pool
                .get_mut()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        off_runtime(move || drop(pool));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg_cluster::PgCluster;
    use omnisync_core::protocol::message::{Op, OpBody};
    use omnisync_core::vocab::goods::{Channel, Currency};
    use omnisync_core::vocab::ids::DeviceId;
    use omnisync_core::vocab::intent::{
        CheckoutIntent, Intent, IntentLine, LineSource, OfflinePolicy, StockCommand, StockPolicy,
    };
    use omnisync_hub_engine::hub_session::{IncomingOp, Verdict};
    use omnisync_hub_engine::log::conformance::Paired;
    use omnisync_hub_engine::log::{HubLog, HubLogRead};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static NEXT_DB: AtomicUsize = AtomicUsize::new(0);

    /// A fresh database on this binary's cluster (held by the returned Arc).
    fn fresh_db() -> (Arc<PgCluster>, PgUrl) {
        let cluster = PgCluster::shared().expect("a PostgreSQL test cluster");
        let name = format!("t{}", NEXT_DB.fetch_add(1, Ordering::Relaxed));
        let url = cluster.create_database(&name).expect("creating a database");
        (cluster, PgUrl::parse(&url).expect("cluster URL"))
    }

    /// Writer and reader of one database, so the shared conformance suite
    /// can run.
    type Both = Paired<PgBackend, PgReader, Arc<PgCluster>>;

    fn fresh() -> Both {
        let (cluster, url) = fresh_db();
        Paired {
            writer: open(&url).expect("opening the database"),
            reader: PgReader::new(&url),
            keep: cluster,
        }
    }

    #[test]
    fn postgres_log_conforms() {
        omnisync_hub_engine::log::conformance::run_all(fresh);
    }

    #[test]
    fn postgres_price_book_forgets_a_failed_commit() {
        let (_cluster, url) = fresh_db();
        omnisync_hub_engine::log::conformance::price_book_forgets_a_failed_commit(
            PgBackend::open(&url).expect("opening the database"),
        );
    }

    fn store() -> StoreId {
        StoreId::new("a").expect("store id")
    }

    fn intent_op(replica: u8, seq: u64, device: &str, intent: Intent) -> IncomingOp {
        IncomingOp {
            op: Op {
                id: OpId {
                    replica: ReplicaId([replica; 16]),
                    seq,
                },
                created_ms: 0,
                body: OpBody::Intent(intent),
            },
            device: DeviceId::new(device).expect("device id"),
            store: store(),
            verdict: Verdict::Accept,
        }
    }

    fn checkout(order: &str, sku: &Sku) -> Intent {
        Intent::Checkout(CheckoutIntent {
            order_id: order.parse().expect("order id"),
            idempotency_key: order.parse().expect("key"),
            lines: vec![IntentLine {
                sku: sku.clone(),
                quantity: 1,
                unit_price_minor: 100,
                source: LineSource::Hub,
            }],
            currency: Currency::new("EUR").expect("currency"),
            payment_ref: "card".parse().expect("payment ref"),
            channel: Channel::Pos,
        })
    }

    /// Every change from 1 to the head, numbered densely, read back.
    fn all_seqs(reader: &PgReader) -> Vec<u64> {
        let head = reader.head().expect("head");
        let committed = reader.changes_between(0, head).expect("changes");
        let mut seqs: Vec<u64> = committed
            .by_set
            .values()
            .flatten()
            .map(|change| change.hub_seq)
            .collect();
        seqs.sort_unstable();
        seqs
    }

    #[test]
    fn two_writers_share_one_database() {
        const STOCK: u64 = 60;
        const PER_WRITER: u64 = 50;
        let (_cluster, url) = fresh_db();
        let sku = Sku::new("tea").expect("sku");
        let mut first = open(&url).expect("first writer");
        let mut second = open(&url).expect("second writer");
        assert_eq!(first.log_id(), second.log_id(), "one log, one id");
        // Strong mode throughout: every unit is the hub's to sell, none
        // set aside as a till's allowance.
        let strong = Intent::Stock(StockCommand::SetPolicy {
            sku: sku.clone(),
            policy: StockPolicy {
                strong_at_or_below: 10 * STOCK,
                offline: OfflinePolicy::Block,
            },
        });
        first
            .apply(vec![intent_op(9, 2, "office", strong)])
            .expect("policy");
        let received = first
            .apply(vec![intent_op(
                9,
                1,
                "office",
                Intent::Stock(StockCommand::Receive {
                    key: "delivery".parse().expect("key"),
                    sku: sku.clone(),
                    quantity: STOCK,
                }),
            )])
            .expect("receive");
        assert_eq!(received.decided, 1);
        // A retried op reaching the other writer gets the stored answer.
        let retried = second
            .apply(vec![intent_op(
                9,
                1,
                "office",
                Intent::Stock(StockCommand::Receive {
                    key: "delivery".parse().expect("key"),
                    sku: sku.clone(),
                    quantity: STOCK,
                }),
            )])
            .expect("retry");
        assert_eq!((retried.duplicates, retried.decided), (1, 0));
        assert_eq!(retried.acks[0], received.acks[0]);
        // Both sell the same SKU at once, in small group commits.
        let sell = |mut writer: PgHubLog, replica: u8| {
            let sku = sku.clone();
            std::thread::spawn(move || {
                let mut confirmed = 0;
                for seq in 1..=PER_WRITER {
                    let order = format!("o-{replica}-{seq}");
                    let applied = writer
                        .apply(vec![intent_op(
                            replica,
                            seq,
                            "till",
                            checkout(&order, &sku),
                        )])
                        .expect("checkout");
                    if matches!(
                        applied.acks[0].outcome,
                        AckOutcome::Decided(Decision::Confirmed { .. })
                    ) {
                        confirmed += 1;
                    }
                }
                (writer, confirmed)
            })
        };
        let one = sell(first, 1);
        let two = sell(second, 2);
        let (first, sold_one) = one.join().expect("first writer thread");
        let (_second, sold_two) = two.join().expect("second writer thread");
        assert_eq!(
            sold_one + sold_two,
            STOCK,
            "every unit sold once, none oversold ({sold_one} + {sold_two})"
        );
        assert!(sold_one > 0 && sold_two > 0, "both writers decided sales");
        let reader = PgReader::new(&url);
        let seqs = all_seqs(&reader);
        let head = reader.head().expect("head");
        assert_eq!(
            seqs,
            (1..=head).collect::<Vec<_>>(),
            "dense, unique numbers"
        );
        assert!(
            head > 2 * PER_WRITER,
            "records of every decision were appended"
        );
        drop(first);
    }

    #[test]
    fn a_lost_connection_fails_the_commit_and_the_next_one_reconnects() {
        let (cluster, url) = fresh_db();
        let name = url
            .redacted()
            .rsplit('/')
            .next()
            .expect("db name")
            .to_owned();
        let mut log = open(&url).expect("open");
        let sku = Sku::new("tea").expect("sku");
        let receive = |seq: u64, key: &str| {
            intent_op(
                5,
                seq,
                "office",
                Intent::Stock(StockCommand::Receive {
                    key: key.parse().expect("key"),
                    sku: sku.clone(),
                    quantity: 1,
                }),
            )
        };
        log.apply(vec![receive(1, "d-1")]).expect("first commit");
        cluster
            .execute(
                "postgres",
                &format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                     WHERE datname = '{name}' AND pid <> pg_backend_pid()"
                ),
            )
            .expect("terminating the hub's connection");
        let lost = log.apply(vec![receive(2, "d-2")]);
        assert!(lost.is_err(), "nothing is acked on a lost connection");
        let again = log
            .apply(vec![receive(2, "d-2")])
            .expect("the next commit reconnects");
        assert_eq!(
            (again.decided, again.duplicates),
            (1, 0),
            "the failed commit stored nothing"
        );
        assert_eq!(PgReader::new(&url).head().expect("head"), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hub_serves_from_postgres_and_stops_cleanly() {
        let (_cluster, url) = tokio::task::spawn_blocking(|| {
            let cluster = PgCluster::shared().expect("a PostgreSQL test cluster");
            let name = format!("t{}", NEXT_DB.fetch_add(1, Ordering::Relaxed));
            let url = cluster.create_database(&name).expect("creating a database");
            (cluster, url)
        })
        .await
        .expect("cluster");
        let devices = tempfile::tempdir().expect("devices dir");
        let mut config = crate::HubConfig::new(
            "127.0.0.1:0".parse().expect("address"),
            devices.path().to_path_buf(),
        );
        config.database = Some(url);
        let hub = crate::Hub::start(config).await.expect("hub on PostgreSQL");
        // Reads straight from an async task: the blocking client moves off it.
        let reader = hub.reader();
        assert_eq!(reader.head().expect("head"), 0);
        assert!(
            reader
                .outcome(&OpId {
                    replica: ReplicaId([1; 16]),
                    seq: 1
                })
                .expect("outcome")
                .is_none()
        );
        drop(reader);
        hub.stop().await.expect("stopping");
        // The device registry is in the database, not in a local file.
        assert!(!devices.path().join("devices.db").exists());
    }

    #[test]
    fn a_commit_that_appended_notifies_its_new_head() {
        use postgres::fallible_iterator::FallibleIterator as _;
        let (cluster, url) = fresh_db();
        let name = url
            .redacted()
            .rsplit('/')
            .next()
            .expect("db name")
            .to_owned();
        let mut log = open(&url).expect("open");
        let mut listener =
            postgres::Client::connect(&cluster.url_of(&name), NoTls).expect("listener connection");
        listener
            .batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
            .expect("listen");
        log.apply(vec![]).expect("an empty group commit");
        let sku = Sku::new("tea").expect("sku");
        let applied = log
            .apply(vec![intent_op(
                6,
                1,
                "office",
                Intent::Stock(StockCommand::Receive {
                    key: "d-1".parse().expect("key"),
                    sku,
                    quantity: 3,
                }),
            )])
            .expect("a commit that appends a record");
        assert_eq!(applied.decided, 1);
        let mut notifications = listener.notifications();
        let mut heard = notifications.timeout_iter(Duration::from_secs(5));
        let first = heard.next().expect("listening").expect("a notification");
        assert_eq!(first.channel(), NOTIFY_CHANNEL);
        assert_eq!(
            first.payload(),
            "1",
            "the new head; nothing for the empty commit"
        );
    }

    #[test]
    fn two_processes_opening_at_once_migrate_once() {
        let (_cluster, url) = fresh_db();
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let url = url.clone();
                std::thread::spawn(move || open(&url).map(|log| log.log_id().to_owned()))
            })
            .collect();
        let ids: Vec<String> = threads
            .into_iter()
            .map(|thread| thread.join().expect("thread").expect("open"))
            .collect();
        assert!(ids.windows(2).all(|pair| pair[0] == pair[1]), "{ids:?}");
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let (cluster, url) = fresh_db();
        drop(open(&url).expect("first open migrates"));
        let name = url
            .redacted()
            .rsplit('/')
            .next()
            .expect("db name")
            .to_owned();
        cluster
            .execute(&name, "UPDATE omnisync_schema SET version = 5")
            .expect("bumping the version");
        let error = open(&url).expect_err("a newer schema must be refused");
        assert!(error.permanent);
        assert_eq!(
            error.message,
            format!(
                "database schema version 5 is newer than this omnisync-hub supports ({SCHEMA_VERSION}); upgrade omnisync-hub"
            )
        );
    }

    #[test]
    fn a_wrong_password_is_one_clear_permanent_line() {
        let (cluster, _url) = fresh_db();
        let url = format!(
            "postgres://{}:not-the-password@127.0.0.1:{}/omnisync",
            crate::pg_cluster::SUPERUSER,
            cluster.port()
        );
        let error = open(&PgUrl::parse(&url).expect("url")).expect_err("wrong password");
        assert!(error.permanent, "{}", error.message);
        assert!(
            error.message.contains("password authentication failed"),
            "{}",
            error.message
        );
        assert!(
            !error.message.contains("not-the-password"),
            "{}",
            error.message
        );
        assert!(!error.message.contains('\n'), "{}", error.message);
    }

    #[test]
    fn an_unreachable_server_is_a_transient_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a port")
            .port();
        let url = PgUrl::parse(&format!("postgres://u:secret@127.0.0.1:{port}/db")).expect("url");
        let error = open(&url).expect_err("nobody listens");
        assert!(!error.permanent, "{}", error.message);
        assert!(!error.message.contains("secret"), "{}", error.message);
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://hub:s3cret@db.example:5432/omnisync?sslmode=disable"),
            "postgres://hub:***@db.example:5432/omnisync?sslmode=disable"
        );
        assert_eq!(
            redact("postgresql://hub@db/omnisync?password=s3cret"),
            "postgresql://hub@db/omnisync?password=***"
        );
        assert_eq!(
            redact("host=db user=hub password=s3cret dbname=omnisync"),
            "host=db user=hub password=*** dbname=omnisync"
        );
    }

    #[test]
    fn a_reader_inside_a_current_thread_runtime_does_not_panic() {
        let (_cluster, url) = fresh_db();
        drop(open(&url).expect("migrate"));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let head = runtime.block_on(async {
            let reader = PgReader::new(&url);
            let head = reader.head();
            drop(reader);
            head
        });
        assert_eq!(head.expect("head"), 0);
    }
}
