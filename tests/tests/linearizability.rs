//! Linearizability of the hub's stock decisions, checked with stateright.
//!
//! Six clients drive one real hub (in-process `omnisync_hub::Hub`, SQLite in
//! a temp dir) over real WebSockets for 15 rounds: four web shops reserve,
//! commit and cancel reservations (and now and then receive goods), two
//! tills (real `Client`s) check out. Each round every client issues its
//! operation at the same time; now and then one client is offline for a
//! round, recording its operations locally, and sends them when it is back.
//! Stock is small, so refusals happen.
//!
//! Each operation is *invoked* when the client records it (before it can
//! reach the hub; offline, that is long before) and *returns* when the
//! client hears the hub's decision (a web shop's ack; a till's
//! `Notice::Verdicts`, checked against `op_status`). The history of each
//! (store, SKU) must be linearizable with respect to [`SkuSpec`]: free units
//! and open reservations by key.
//!
//! stateright's tester searches interleavings without memoising, which
//! explodes on long histories. Rounds end at quiescent points (no operation
//! of the SKU in flight), and every operation's effect on [`SkuSpec`]
//! depends only on the operation and what it returned, not on the order,
//! so a history is linearizable exactly when each segment between quiescent
//! points is, starting from the state the previous segments leave. Each
//! segment is checked with its own `LinearizabilityTester`.
//!
//! Why web shops speak the sans-I/O session directly: `Client`/`Replica` have
//! no public call that records a reservation intent (only checkouts, stock
//! commands, order status changes and releases), so a web shop is a real
//! WebSocket with a `ClientSession` and an in-memory op log.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use futures_util::{SinkExt as _, StreamExt as _};
use omnisync_core::client::{Link, Notice};
use omnisync_core::db::OpStatus;
use omnisync_core::protocol::device_session::{ClientEvent, ClientIdentity, ClientSession};
use omnisync_core::protocol::message::{AckOutcome, Credentials, Op, OpBody};
use omnisync_core::retail::orders::{CheckoutRequest, OrderLine};
use omnisync_core::vocab::goods::{Channel, Currency, Sku};
use omnisync_core::vocab::intent::{
    Decision, Intent, LineSource, OfflinePolicy, Refusal, StockCommand, StockPolicy,
};
use omnisync_core::{DeviceId, OpId, ReplicaId, StoreId, now_ms};
use omnisync_tests::{SYNC_TIMEOUT, TestDevice, TestHub, device, init_logs, wait_until};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom as _;
use rand::{Rng as _, SeedableRng as _};
use stateright::semantics::{ConsistencyTester as _, LinearizabilityTester, SequentialSpec};
use tokio_tungstenite::tungstenite::Message;

const STORE: &str = "s1";
/// The SKUs; each has its own history.
const SKUS: [&str; 2] = ["lamp", "vase"];
/// Units of each SKU before the history starts: few, so refusals happen.
const STOCK_START: u64 = 8;
/// Clients that reserve, commit and cancel.
const WEB_SHOPS: usize = 4;
/// Tills that check out through `Client`.
const TILLS: usize = 2;
/// Rounds; every client issues one operation per round (two while offline).
const ROUNDS: usize = 15;
/// Chance that a round takes one client offline (never two rounds running).
const OFFLINE_PROBABILITY: f64 = 0.6;
/// Seed of the first plan (`OMNISYNC_LIN_SEED=<n>` runs that plan alone).
const SEED_DEFAULT: u64 = 20_251_126;
/// Plans run, each against a fresh hub, with consecutive seeds.
const HISTORIES: u64 = 5;

// --- The sequential specification ---------------------------------------

/// An operation on one SKU's ledger.
#[derive(Clone, Debug, PartialEq)]
enum LedgerOp {
    /// Goods received (a stock command).
    Receive { quantity: u64 },
    /// Set units aside under a key.
    Reserve { key: String, quantity: u64 },
    /// Sell an open reservation.
    Commit { key: String },
    /// Give an open reservation back.
    Cancel { key: String },
    /// An online checkout: the hub decides it.
    Sell { quantity: u64 },
    /// An offline checkout under a `provisional` policy: the hub covers
    /// what it can and reports the rest short.
    SellProvisional { quantity: u64 },
}

/// What the hub answered, as the specification sees it.
#[derive(Clone, Debug, PartialEq)]
enum LedgerRet {
    Done,
    OutOfStock,
    /// Commit or cancel of a reservation that is not open.
    NotOpen,
    /// A reservation key used before.
    Duplicate,
    /// Units of a provisional sale the hub could not cover.
    Short(u64),
    /// Anything the specification never answers.
    Unexpected(String),
}

/// One SKU's ledger as the hub must behave: free units, open reservations.
#[derive(Clone, Debug, Default, PartialEq)]
struct SkuSpec {
    free: u64,
    open: BTreeMap<String, u64>,
    /// Keys of every reservation ever made (a key is used once).
    reserved_ever: BTreeSet<String>,
}

impl SequentialSpec for SkuSpec {
    type Op = LedgerOp;
    type Ret = LedgerRet;

    fn invoke(&mut self, op: &LedgerOp) -> LedgerRet {
        match op {
            LedgerOp::Receive { quantity } => {
                self.free += quantity;
                LedgerRet::Done
            }
            LedgerOp::Reserve { key, .. } if self.reserved_ever.contains(key) => {
                LedgerRet::Duplicate
            }
            LedgerOp::Reserve { quantity, .. } | LedgerOp::Sell { quantity }
                if *quantity > self.free =>
            {
                LedgerRet::OutOfStock
            }
            LedgerOp::Reserve { key, quantity } => {
                self.free -= quantity;
                self.open.insert(key.clone(), *quantity);
                self.reserved_ever.insert(key.clone());
                LedgerRet::Done
            }
            LedgerOp::Commit { key } => match self.open.remove(key) {
                Some(_) => LedgerRet::Done,
                None => LedgerRet::NotOpen,
            },
            LedgerOp::Cancel { key } => match self.open.remove(key) {
                Some(quantity) => {
                    self.free += quantity;
                    LedgerRet::Done
                }
                None => LedgerRet::NotOpen,
            },
            LedgerOp::Sell { quantity } => {
                self.free -= quantity;
                LedgerRet::Done
            }
            LedgerOp::SellProvisional { quantity } => {
                let covered = (*quantity).min(self.free);
                self.free -= covered;
                LedgerRet::Short(quantity - covered)
            }
        }
    }
}

/// The hub's decision as the specification's answer.
fn ret_of(op: &LedgerOp, decision: &Decision) -> LedgerRet {
    match (op, decision) {
        (LedgerOp::SellProvisional { .. }, Decision::Confirmed { .. }) => LedgerRet::Short(0),
        (LedgerOp::SellProvisional { .. }, Decision::Short { lines, .. }) => {
            LedgerRet::Short(lines.iter().map(|line| line.quantity).sum())
        }
        (LedgerOp::Sell { .. }, Decision::Confirmed { .. }) => LedgerRet::Done,
        (
            LedgerOp::Receive { .. }
            | LedgerOp::Reserve { .. }
            | LedgerOp::Commit { .. }
            | LedgerOp::Cancel { .. },
            Decision::Applied { .. },
        ) => LedgerRet::Done,
        (
            LedgerOp::Reserve { .. } | LedgerOp::Sell { .. },
            Decision::Refused(Refusal::OutOfStock { .. }),
        ) => LedgerRet::OutOfStock,
        (LedgerOp::Reserve { .. }, Decision::Refused(Refusal::Duplicate { .. })) => {
            LedgerRet::Duplicate
        }
        (
            LedgerOp::Commit { .. } | LedgerOp::Cancel { .. },
            Decision::Refused(Refusal::NotFound { .. }),
        ) => LedgerRet::NotOpen,
        (op, decision) => LedgerRet::Unexpected(format!("{op:?} decided {decision:?}")),
    }
}

// --- The plan and the recorded history ----------------------------------

/// An operation of the plan.
#[derive(Clone, Debug)]
struct Planned {
    client: usize,
    sku: usize,
    op: LedgerOp,
}

/// What one client does in one round.
#[derive(Clone, Debug, Default)]
struct Turn {
    offline: bool,
    ops: Vec<usize>,
}

/// Every operation, and each round's turn of each client.
struct Plan {
    ops: Vec<Planned>,
    rounds: Vec<Vec<Turn>>,
}

fn is_till(client: usize) -> bool {
    client >= WEB_SHOPS
}

/// A fixed plan from a seed: the same operations every run; only the
/// timing inside a round is left to the network.
fn plan(seed: u64) -> Plan {
    let mut rng = StdRng::seed_from_u64(seed);
    let clients = WEB_SHOPS + TILLS;
    let mut ops: Vec<Planned> = Vec::new();
    let mut keys: Vec<Vec<String>> = vec![Vec::new(); SKUS.len()];
    let mut rounds = Vec::new();
    let mut offline_before: Option<usize> = None;
    for round in 0..ROUNDS {
        // One client offline for this round, never in the round right after
        // another's: the next round is the quiescent point it settles in.
        let offline = match offline_before {
            None if round + 1 < ROUNDS && rng.random_bool(OFFLINE_PROBABILITY) => {
                Some(rng.random_range(0..clients))
            }
            _ => None,
        };
        offline_before = offline;
        let mut turns = Vec::new();
        for client in 0..clients {
            let mut turn = Turn {
                offline: offline == Some(client),
                ops: Vec::new(),
            };
            let count = if turn.offline { 2 } else { 1 };
            for _ in 0..count {
                let sku = rng.random_range(0..SKUS.len());
                let op = if is_till(client) {
                    let quantity = rng.random_range(1..=2);
                    match turn.offline {
                        true => LedgerOp::SellProvisional { quantity },
                        false => LedgerOp::Sell { quantity },
                    }
                } else {
                    let known = &mut keys[sku];
                    let roll = rng.random_range(0..100);
                    let quantity = rng.random_range(1..=3);
                    match (roll, known.choose(&mut rng).cloned()) {
                        (0..15, _) => LedgerOp::Receive {
                            quantity: rng.random_range(1..=3),
                        },
                        (15..20, Some(key)) => LedgerOp::Reserve { key, quantity },
                        (20..42, Some(key)) => LedgerOp::Commit { key },
                        (42..65, Some(key)) => LedgerOp::Cancel { key },
                        _ => {
                            let key = format!("r-{}-{}", SKUS[sku], ops.len());
                            known.push(key.clone());
                            LedgerOp::Reserve { key, quantity }
                        }
                    }
                };
                turn.ops.push(ops.len());
                ops.push(Planned { client, sku, op });
            }
            turns.push(turn);
        }
        rounds.push(turns);
    }
    Plan { ops, rounds }
}

/// One entry of the history, in real-time order.
#[derive(Clone, Debug)]
enum Event {
    Invoke(usize),
    Return(usize, LedgerRet),
}

/// The history, appended to by every client under one lock: the order of
/// the entries is the order in time.
#[derive(Clone, Default)]
struct History(Arc<Mutex<Vec<Event>>>);

impl History {
    fn push(&self, event: Event) {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(event);
    }

    fn events(&self) -> Vec<Event> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// What checking found, for the test's log.
#[derive(Debug, Default)]
struct Checked {
    segments: usize,
    longest_segment: usize,
    /// Each SKU's specification state after the whole history.
    end: Vec<SkuSpec>,
}

/// Checks the history of each SKU, segment by segment (see the module docs).
fn check_linearizable(
    ops: &[Planned],
    events: &[Event],
    start: &[SkuSpec],
) -> Result<Checked, String> {
    let mut checked = Checked::default();
    for (sku, state) in start.iter().enumerate() {
        let mut state = state.clone();
        let mut segment: Vec<Event> = Vec::new();
        let mut in_flight = 0usize;
        let ofsku = events.iter().filter(|event| match event {
            Event::Invoke(op) | Event::Return(op, _) => ops[*op].sku == sku,
        });
        for event in ofsku {
            segment.push(event.clone());
            match event {
                Event::Invoke(_) => in_flight += 1,
                Event::Return(..) => in_flight -= 1,
            }
            if in_flight == 0 {
                state = check_segment(ops, &segment, &state, SKUS[sku])?;
                checked.segments += 1;
                checked.longest_segment = checked.longest_segment.max(segment.len() / 2);
                segment.clear();
            }
        }
        if !segment.is_empty() {
            state = check_segment(ops, &segment, &state, SKUS[sku])?;
            checked.segments += 1;
        }
        checked.end.push(state);
    }
    Ok(checked)
}

/// One segment with stateright's tester; returns the state after it.
fn check_segment(
    ops: &[Planned],
    segment: &[Event],
    state: &SkuSpec,
    sku: &str,
) -> Result<SkuSpec, String> {
    let mut tester = LinearizabilityTester::new(state.clone());
    for event in segment {
        let recorded = match event {
            Event::Invoke(op) => tester.on_invoke(*op, ops[*op].op.clone()).map(|_| ()),
            Event::Return(op, ret) => tester.on_return(*op, ret.clone()).map(|_| ()),
        };
        recorded.map_err(|error| format!("{sku}: a malformed history: {error}"))?;
    }
    let Some(order) = tester.serialized_history() else {
        let shown: Vec<String> = segment
            .iter()
            .map(|event| match event {
                Event::Invoke(op) => format!("  invoke #{op} {:?}", ops[*op]),
                Event::Return(op, ret) => format!("  return #{op} {ret:?}"),
            })
            .collect();
        return Err(format!(
            "{sku}: the history is not linearizable; from {state:?}:\n{}",
            shown.join("\n")
        ));
    };
    let mut next = state.clone();
    for (op, _) in &order {
        next.invoke(op);
    }
    Ok(next)
}

// --- The clients ---------------------------------------------------------

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A web shop: a WebSocket speaking the sans-I/O session, with its op log in memory.
struct WebShop {
    url: String,
    identity: ClientIdentity,
    seq: u64,
    /// Recorded and not yet decided: seq -> (op, index in the plan).
    pending: BTreeMap<u64, (Op, usize)>,
    link: Option<(Socket, ClientSession)>,
}

impl WebShop {
    fn new(url: &str, name: &str) -> anyhow::Result<Self> {
        Ok(Self {
            url: url.to_owned(),
            identity: ClientIdentity {
                device: DeviceId::new(name)?,
                store: StoreId::new(STORE)?,
                replica: ReplicaId::random(),
                credentials: Credentials::default(),
                agent: "linearizability web shop".into(),
            },
            seq: 0,
            pending: BTreeMap::new(),
            link: None,
        })
    }

    /// Connects, waits for the welcome, and sends every pending op.
    async fn connect(&mut self) -> anyhow::Result<()> {
        let (socket, _) = tokio_tungstenite::connect_async(self.url.as_str()).await?;
        let session = ClientSession::new(self.identity.clone(), Vec::new(), None, now_ms());
        self.link = Some((socket, session));
        while !self.session()?.is_ready() {
            self.exchange().await?;
        }
        let ops = self.pending.values().map(|(op, _)| op.clone()).collect();
        self.session()?.handle_local_ops(ops);
        self.flush().await
    }

    async fn disconnect(&mut self) -> anyhow::Result<()> {
        if let Some((mut socket, _)) = self.link.take() {
            socket.close(None).await?;
        }
        Ok(())
    }

    fn session(&mut self) -> anyhow::Result<&mut ClientSession> {
        let (_, session) = self.link.as_mut().context("not connected")?;
        Ok(session)
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        let (socket, session) = self.link.as_mut().context("not connected")?;
        while let Some(frame) = session.poll_transmit() {
            socket.send(Message::Binary(frame.into())).await?;
        }
        Ok(())
    }

    /// Sends what the session has, reads one frame, and returns the acks it held.
    async fn exchange(&mut self) -> anyhow::Result<Vec<omnisync_core::protocol::message::Ack>> {
        self.flush().await?;
        let (socket, session) = self.link.as_mut().context("not connected")?;
        let frame = tokio::time::timeout(SYNC_TIMEOUT, socket.next())
            .await
            .context("the hub went silent")?
            .context("the hub closed the connection")??;
        if let Message::Binary(bytes) = frame {
            session.handle_frame(&bytes, now_ms())?;
        }
        let mut acks = Vec::new();
        while let Some(event) = session.poll_event() {
            match event {
                ClientEvent::Acks(more) => acks.extend(more),
                ClientEvent::Failed(error) => anyhow::bail!("the hub refused: {error:?}"),
                _ => {}
            }
        }
        Ok(acks)
    }

    /// Records an op (sent at once while connected).
    async fn record(&mut self, intent: Intent, index: usize) -> anyhow::Result<()> {
        self.seq += 1;
        let op = Op {
            id: OpId {
                replica: self.identity.replica,
                seq: self.seq,
            },
            created_ms: now_ms(),
            body: OpBody::Intent(intent),
        };
        self.pending.insert(self.seq, (op.clone(), index));
        if self.link.is_some() {
            self.session()?.handle_local_ops(vec![op]);
            self.flush().await?;
        }
        Ok(())
    }

    /// Reads until every pending op is decided, recording each answer.
    async fn settle(&mut self, plan: &[Planned], history: &History) -> anyhow::Result<()> {
        while !self.pending.is_empty() {
            for ack in self.exchange().await? {
                let Some((_, index)) = self.pending.remove(&ack.op.seq) else {
                    continue;
                };
                let AckOutcome::Decided(decision) = &ack.outcome else {
                    anyhow::bail!("op #{index} was not decided: {:?}", ack.outcome);
                };
                history.push(Event::Return(index, ret_of(&plan[index].op, decision)));
            }
        }
        Ok(())
    }
}

fn intent_of(planned: &Planned, index: usize) -> anyhow::Result<Intent> {
    let sku = Sku::new(SKUS[planned.sku])?;
    Ok(match &planned.op {
        LedgerOp::Receive { quantity } => Intent::Stock(StockCommand::Receive {
            key: format!("receipt-{index}").parse().unwrap(),
            sku,
            quantity: *quantity,
        }),
        LedgerOp::Reserve { key, quantity } => Intent::Reserve {
            key: key.parse().unwrap(),
            sku,
            quantity: *quantity,
        },
        LedgerOp::Commit { key } => Intent::CommitReservation {
            key: key.parse().unwrap(),
        },
        LedgerOp::Cancel { key } => Intent::CancelReservation {
            key: key.parse().unwrap(),
        },
        LedgerOp::Sell { .. } | LedgerOp::SellProvisional { .. } => {
            anyhow::bail!("#{index}: web shops do not check out")
        }
    })
}

async fn run_web_shop(
    mut shop: WebShop,
    client: usize,
    turns: Vec<Turn>,
    plan: Arc<Vec<Planned>>,
    history: History,
    round_end: Arc<tokio::sync::Barrier>,
) -> anyhow::Result<()> {
    shop.connect().await?;
    for turn in turns {
        if turn.offline {
            shop.disconnect().await?;
        } else if shop.link.is_none() {
            shop.connect().await?;
        }
        for index in turn.ops {
            anyhow::ensure!(
                plan[index].client == client,
                "#{index} is not web-{client}'s"
            );
            let intent = intent_of(&plan[index], index)?;
            history.push(Event::Invoke(index));
            shop.record(intent, index).await?;
        }
        if !turn.offline {
            shop.settle(&plan, &history).await?;
        }
        round_end.wait().await;
    }
    shop.disconnect().await
}

async fn run_till(
    till: TestDevice,
    client: usize,
    turns: Vec<Turn>,
    plan: Arc<Vec<Planned>>,
    history: History,
    round_end: Arc<tokio::sync::Barrier>,
) -> anyhow::Result<()> {
    let name = format!("till-{}", client - WEB_SHOPS);
    let planned_for = client;
    let client = till.client.clone();
    let mut notices = client.notices();
    let mut pending: HashMap<OpId, usize> = HashMap::new();
    for (round, turn) in turns.into_iter().enumerate() {
        let link = if turn.offline {
            client.set_online(false);
            Link::Offline
        } else {
            client.set_online(true);
            Link::Online
        };
        client
            .wait_for(SYNC_TIMEOUT, "the till's link", |s| s.link == link)
            .await?;
        for index in turn.ops {
            let planned = &plan[index];
            let (LedgerOp::Sell { quantity } | LedgerOp::SellProvisional { quantity }) = planned.op
            else {
                anyhow::bail!("#{index}: tills only check out, not {planned:?}");
            };
            anyhow::ensure!(planned.client == planned_for, "#{index} is not {name}'s");
            let request = CheckoutRequest {
                order_id: format!("{name}-{round}-{index}").parse().unwrap(),
                idempotency_key: None,
                lines: vec![OrderLine {
                    sku: Sku::new(SKUS[plan[index].sku])?,
                    quantity,
                    unit_price_minor: 990,
                }],
                currency: Currency::new("EUR")?,
                payment_ref: format!("card-{index}").parse().unwrap(),
                channel: Channel::Pos,
            };
            history.push(Event::Invoke(index));
            let receipt = client.checkout(&request)?;
            let expected = match turn.offline {
                true => LineSource::Provisional,
                false => LineSource::Hub,
            };
            anyhow::ensure!(
                receipt.lines[0].2 == expected,
                "{name}: #{index} covered by {:?}, not {expected:?}",
                receipt.lines[0].2
            );
            pending.insert(receipt.op, index);
        }
        while !turn.offline && !pending.is_empty() {
            let notice = tokio::time::timeout(SYNC_TIMEOUT, notices.recv())
                .await
                .with_context(|| format!("{name}: no decision for {pending:?}"))??;
            let Notice::Verdicts { decided, .. } = notice else {
                continue;
            };
            for (op, decision, _) in decided {
                let Some(index) = pending.remove(&op) else {
                    continue;
                };
                let status = client.replica().op_status(&op)?;
                let shown = match &status {
                    Some(OpStatus::Confirmed { decision })
                    | Some(OpStatus::Compensation { decision }) => Some(decision.clone()),
                    Some(OpStatus::Refused { refusal }) => Some(Decision::Refused(refusal.clone())),
                    _ => None,
                };
                anyhow::ensure!(
                    shown.as_ref() == Some(&decision),
                    "{name}: notice {decision:?}, op status {status:?}"
                );
                history.push(Event::Return(index, ret_of(&plan[index].op, &decision)));
            }
        }
        round_end.wait().await;
    }
    client.stop().await;
    Ok(())
}

// --- The tests -----------------------------------------------------------

/// Several histories, each against a fresh hub; a failing one names its seed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_and_sales_at_the_hub_are_linearizable() -> anyhow::Result<()> {
    init_logs();
    let seeds: Vec<u64> = match std::env::var("OMNISYNC_LIN_SEED") {
        Ok(seed) => vec![seed.parse()?],
        Err(_) => (SEED_DEFAULT..SEED_DEFAULT + HISTORIES).collect(),
    };
    for seed in seeds {
        one_history(seed)
            .await
            .with_context(|| format!("the history of seed {seed}"))?;
    }
    Ok(())
}

/// Runs the plan of `seed` against a fresh hub and checks its history.
async fn one_history(seed: u64) -> anyhow::Result<()> {
    let Plan { ops, rounds } = plan(seed);
    let plan = Arc::new(ops);
    let hub = TestHub::start().await?;

    // Strong mode always (no allowances: every unit is decided at the hub),
    // provisional offline so offline tills record their sales.
    let office = device(&hub.url(), "office", STORE)?;
    for item in SKUS {
        let policy = StockPolicy {
            strong_at_or_below: 1_000_000,
            offline: OfflinePolicy::Provisional,
        };
        let sku = Sku::new(item)?;
        let commands = [
            StockCommand::SetPolicy {
                sku: sku.clone(),
                policy,
            },
            StockCommand::Receive {
                key: format!("delivery-{item}").parse().unwrap(),
                sku,
                quantity: STOCK_START,
            },
        ];
        for command in commands {
            office
                .client
                .write(|store| store.stock_command(command, now_ms()))?;
        }
    }
    office.client.wait_synced(SYNC_TIMEOUT).await?;

    let history = History::default();
    let clients = WEB_SHOPS + TILLS;
    let round_end = Arc::new(tokio::sync::Barrier::new(clients));
    let turns_of =
        |client: usize| -> Vec<Turn> { rounds.iter().map(|round| round[client].clone()).collect() };
    // Every till follows the stock (it needs the policy to sell offline)
    // before the first round starts.
    let mut tills = Vec::new();
    for till in 0..TILLS {
        let till = device(&hub.url(), &format!("till-{till}"), STORE)?;
        wait_until(SYNC_TIMEOUT, "the till to see the stock", || {
            let store = till.client.replica();
            let store_id = StoreId::new(STORE)?;
            for item in SKUS {
                let view = store.stock(&store_id, &Sku::new(item)?)?;
                if view.is_none_or(|v| v.on_hand != STOCK_START) {
                    return Ok(false);
                }
            }
            Ok(true)
        })
        .await?;
        tills.push(till);
    }
    let mut tills = tills.into_iter();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let (plan, history, round_end) = (plan.clone(), history.clone(), round_end.clone());
        if is_till(client) {
            let till = tills.next().context("a till for every till client")?;
            let turns = turns_of(client);
            tasks.push(tokio::spawn(run_till(
                till, client, turns, plan, history, round_end,
            )));
        } else {
            let shop = WebShop::new(&hub.url(), &format!("web-{client}"))?;
            let turns = turns_of(client);
            tasks.push(tokio::spawn(run_web_shop(
                shop, client, turns, plan, history, round_end,
            )));
        }
    }
    for task in tasks {
        task.await??;
    }

    let events = history.events();
    let returned: BTreeSet<usize> = events
        .iter()
        .filter_map(|event| match event {
            Event::Return(op, _) => Some(*op),
            Event::Invoke(_) => None,
        })
        .collect();
    assert_eq!(returned.len(), plan.len(), "every operation was answered");
    let start = vec![
        SkuSpec {
            free: STOCK_START,
            ..SkuSpec::default()
        };
        SKUS.len()
    ];
    let checked = check_linearizable(&plan, &events, &start)
        .unwrap_or_else(|violation| panic!("seed {seed}: {violation}"));

    // The history must have exercised what can go wrong.
    let rets: Vec<&LedgerRet> = events
        .iter()
        .filter_map(|event| match event {
            Event::Return(_, ret) => Some(ret),
            Event::Invoke(_) => None,
        })
        .collect();
    let seen = |wanted: fn(&LedgerRet) -> bool| rets.iter().filter(|ret| wanted(ret)).count();
    let out_of_stock = seen(|ret| *ret == LedgerRet::OutOfStock);
    let not_open = seen(|ret| *ret == LedgerRet::NotOpen);
    let done = seen(|ret| *ret == LedgerRet::Done);
    let short = seen(|ret| matches!(ret, LedgerRet::Short(units) if *units > 0));
    let offline = plan.len() - rounds.len() * clients;
    eprintln!(
        "seed {seed}: {} ops ({offline} recorded offline), {done} done, {out_of_stock} out of \
         stock, {not_open} not open, {short} short; {} segments, the longest {} ops",
        plan.len(),
        checked.segments,
        checked.longest_segment
    );
    assert!(out_of_stock > 0 && not_open > 0 && done > 0 && offline > 0);

    // The hub's ledger ends where the specification does.
    let store_id = StoreId::new(STORE)?;
    for (n, item) in SKUS.iter().enumerate() {
        let expected = &checked.end[n];
        let reserved: u64 = expected.open.values().sum();
        wait_until(SYNC_TIMEOUT, "the office to see the final stock", || {
            let view = office
                .client
                .replica()
                .stock(&store_id, &Sku::new(*item)?)?;
            Ok(view.is_some_and(|v| v.free == expected.free && v.on_hand - v.free == reserved))
        })
        .await?;
    }
    office.client.stop().await;
    Ok(())
}

/// The checker itself must reject what the hub must never do.
#[test]
fn the_checker_rejects_histories_that_are_not_linearizable() {
    let op = |client, op| Planned { client, sku: 0, op };
    let reserve = LedgerOp::Reserve {
        key: "r".into(),
        quantity: 2,
    };
    let ops = vec![
        op(0, reserve.clone()),
        op(1, LedgerOp::Cancel { key: "r".into() }),
        op(2, LedgerOp::Commit { key: "r".into() }),
        op(3, reserve),
        op(1, LedgerOp::Sell { quantity: 1 }),
    ];
    let start = [SkuSpec {
        free: 2,
        ..SkuSpec::default()
    }];
    let ok = |n| [Event::Invoke(n), Event::Return(n, LedgerRet::Done)];
    // Reserved, cancelled, then committed after the cancel returned: no order explains it.
    let history: Vec<Event> = [ok(0), ok(1), ok(2)].concat();
    let error = check_linearizable(&ops, &history, &start).expect_err("commit after cancel");
    assert!(error.contains("not linearizable"), "{error}");
    // The same key reserved twice.
    let history: Vec<Event> = [ok(0), ok(3)].concat();
    assert!(check_linearizable(&ops, &history, &start).is_err());
    // Overlapping commit and cancel may go either way, but not both.
    let overlapping = vec![
        Event::Invoke(0),
        Event::Return(0, LedgerRet::Done),
        Event::Invoke(1),
        Event::Invoke(2),
        Event::Return(2, LedgerRet::Done),
        Event::Return(1, LedgerRet::NotOpen),
    ];
    let checked = check_linearizable(&ops, &overlapping, &start).expect("commit won the race");
    assert_eq!(checked.end[0].free, 0);
    let both = vec![
        Event::Invoke(0),
        Event::Return(0, LedgerRet::Done),
        Event::Invoke(1),
        Event::Invoke(2),
        Event::Return(2, LedgerRet::Done),
        Event::Return(1, LedgerRet::Done),
    ];
    assert!(check_linearizable(&ops, &both, &start).is_err());
    // Selling a unit the open reservation holds.
    let oversold: Vec<Event> = [ok(0), ok(4)].concat();
    assert!(check_linearizable(&ops, &oversold, &start).is_err());
}
