//! Deciding intents: the hub's authority as a pure function of what storage
//! holds and the intent.
//!
//! A group commit opens one [`UnitOfWork`]; every intent of the batch is
//! decided against it in op order, reading through it to the backend's
//! [`LedgerSource`] and keeping every change in memory. A checkout is decided
//! on copies of the ledger entries it touches and only written back if it is
//! accepted, so a refused intent changes nothing. At the end the backend
//! persists [`UnitOfWork::finish`]'s output in the same transaction as the
//! ops' outcomes, and the records in it go into the change log for fan-out.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::HubLogError;
use crate::ledger::sku_ledger::SkuLedger;
use omnisync_core::vocab::goods::{Channel, Sku};
use omnisync_core::vocab::ids::{DeviceId, DocId, StoreId};
use omnisync_core::vocab::intent::{
    CheckoutIntent, Decision, Intent, LineSource, OrderStatusChange, Refusal, ShortLine,
    StockCommand, validate_reservation,
};
use omnisync_core::vocab::keys::{OrderStatusName, ReservationKey};
use omnisync_core::vocab::record::{
    AllowanceRecord, OrderLineRecord, OrderRecord, Record, StockRecord,
};

use crate::events::{
    AllowanceData, COMPENSATED_PREFIX, CompensationOpenedData, CompensationResolvedData,
    EventDraft, EventType, OrderConfirmedData, OrderRefusedData, OrderStatusChangedData,
    ShortLineData, StockLevelData,
};

/// An open or finished reservation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// The product.
    pub sku: Sku,
    /// Units.
    pub quantity: u64,
    /// `open`, `committed` or `cancelled`.
    pub state: ReservationState,
}

/// Where a reservation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReservationState {
    /// Units set aside.
    Open,
    /// Units sold.
    Committed,
    /// Units given back.
    Cancelled,
}

/// What the authority reads from storage. Every method answers from durable
/// state as of the start of the batch.
pub trait LedgerSource {
    /// A SKU's ledger entry.
    fn sku(&mut self, store: &StoreId, sku: &Sku) -> Result<Option<SkuLedger>, HubLogError>;
    /// An order.
    fn order(
        &mut self,
        store: &StoreId,
        order_id: &str,
    ) -> Result<Option<OrderRecord>, HubLogError>;
    /// The decision an idempotency key got.
    fn key(&mut self, store: &StoreId, key: &str) -> Result<Option<Decision>, HubLogError>;
    /// A reservation.
    fn reservation(
        &mut self,
        store: &StoreId,
        key: &str,
    ) -> Result<Option<Reservation>, HubLogError>;
    /// The last order number given in the store (0 if none).
    fn last_order_no(&mut self, store: &StoreId) -> Result<u64, HubLogError>;
    /// The unit price in force, minor units, if the hub knows one.
    fn price(
        &mut self,
        store: &StoreId,
        sku: &Sku,
        channel: Channel,
        at_ms: u64,
    ) -> Result<Option<i64>, HubLogError>;
    /// Every ledger entry in which some terminal holds rights.
    fn skus_with_rights(&mut self) -> Result<Vec<(StoreId, Sku)>, HubLogError>;
}

/// Settings of the authority.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuthorityConfig {
    /// A seen price may differ from the price in force by this many basis
    /// points (1/100 of a percent) before a checkout is refused.
    pub price_tolerance_bp: u32,
}

/// Everything a batch changed, for the backend to persist.
#[derive(Debug, Default)]
pub struct LedgerChanges {
    /// Ledger entries to write.
    pub skus: Vec<(StoreId, Sku, SkuLedger)>,
    /// Orders to write.
    pub orders: Vec<(StoreId, OrderRecord)>,
    /// Idempotency keys first used in the batch.
    pub keys: Vec<(StoreId, String, Decision)>,
    /// Reservations to write.
    pub reservations: Vec<(StoreId, String, Reservation)>,
    /// Last order number per store, where it moved.
    pub order_nos: Vec<(StoreId, u64)>,
    /// Records to append to the change log, in order.
    pub records: Vec<(DocId, Vec<u8>)>,
    /// The events the batch's decisions produced, in order (orders and
    /// refusals as decided, then stock levels and allowances as they ended).
    pub events: Vec<EventDraft>,
}

impl LedgerChanges {
    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.skus.is_empty()
            && self.orders.is_empty()
            && self.keys.is_empty()
            && self.reservations.is_empty()
            && self.order_nos.is_empty()
            && self.events.is_empty()
    }
}

type Key<T> = (StoreId, T);

/// The idempotency key a checkout is stored under in its store.
pub fn checkout_key(intent: &CheckoutIntent) -> String {
    format!("checkout:{}", intent.idempotency_key)
}

/// The idempotency key a stock command is stored under in its store
/// (checkouts and stock commands have separate key spaces).
pub fn stock_key(key: &omnisync_core::vocab::keys::IdempotencyKey) -> String {
    format!("stock:{key}")
}

/// The idempotency key (as stored) deciding `intent` first reads, if any.
pub fn intent_key(intent: &Intent) -> Option<String> {
    match intent {
        Intent::Checkout(checkout) => Some(checkout_key(checkout)),
        Intent::Stock(
            StockCommand::Receive { key, .. }
            | StockCommand::StockTake { key, .. }
            | StockCommand::Adjust { key, .. },
        ) => Some(stock_key(key)),
        _ => None,
    }
}

/// The changes of one batch, read-through to storage.
#[derive(Debug, Default)]
pub struct UnitOfWork {
    config: AuthorityConfig,
    skus: BTreeMap<Key<Sku>, SkuLedger>,
    dirty_skus: BTreeSet<Key<Sku>>,
    dirty_rights: BTreeSet<(StoreId, Sku, DeviceId)>,
    orders: BTreeMap<Key<String>, Option<OrderRecord>>,
    dirty_orders: BTreeSet<Key<String>>,
    keys: BTreeMap<Key<String>, Option<Decision>>,
    new_keys: BTreeSet<Key<String>>,
    reservations: BTreeMap<Key<String>, Option<Reservation>>,
    dirty_reservations: BTreeSet<Key<String>>,
    order_nos: BTreeMap<StoreId, u64>,
    /// Ledger entries as storage had them before the batch, to tell what
    /// an event reports (a level that moved, a grant, a recall).
    sku_origins: BTreeMap<Key<Sku>, SkuLedger>,
    events: Vec<EventDraft>,
}

impl UnitOfWork {
    /// A unit of work with these settings.
    pub fn new(config: AuthorityConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// Decides one intent from `device` of `store`.
    pub fn decide(
        &mut self,
        source: &mut dyn LedgerSource,
        store: &StoreId,
        device: &DeviceId,
        intent: &Intent,
        now_ms: u64,
    ) -> Result<Decision, HubLogError> {
        let decision = match intent {
            Intent::Checkout(checkout) => {
                let decision = self.checkout(source, store, device, checkout, now_ms)?;
                if let Decision::Refused(reason) = &decision {
                    self.events.push(EventDraft::new(
                        store,
                        EventType::OrderRefused,
                        &OrderRefusedData {
                            order_id: checkout.order_id.to_string(),
                            device: device.to_string(),
                            reason: reason.clone(),
                        },
                    ));
                }
                decision
            }
            Intent::Stock(command) => self.stock_command(source, store, command)?,
            Intent::OrderStatus(change) => self.order_status(source, store, change)?,
            Intent::Reserve { key, sku, quantity } => {
                self.reserve(source, store, key, sku, *quantity)?
            }
            Intent::CommitReservation { key } => {
                self.finish_reservation(source, store, key, true)?
            }
            Intent::CancelReservation { key } => {
                self.finish_reservation(source, store, key, false)?
            }
            Intent::ReleaseAllowance { sku, quantity } => {
                let mut ledger = self.sku(source, store, sku)?;
                match ledger.release(device, *quantity) {
                    Ok(()) => {
                        let version = ledger.version;
                        self.put_sku(store, sku, ledger);
                        Decision::Applied { version }
                    }
                    Err(refusal) => Decision::Refused(refusal.for_sku(sku)),
                }
            }
        };
        Ok(decision)
    }

    /// Asks terminals idle for [`crate::ledger::sku_ledger::IDLE_RECALL_MS`] to
    /// give their allowances back. Returns how many allowances were recalled.
    pub fn recall_idle(
        &mut self,
        source: &mut dyn LedgerSource,
        now_ms: u64,
    ) -> Result<usize, HubLogError> {
        let mut recalled = 0;
        for (store, sku) in source.skus_with_rights()? {
            let mut ledger = self.sku(source, &store, &sku)?;
            let asked = ledger.recall_idle(now_ms);
            if !asked.is_empty() {
                recalled += asked.len();
                self.put_sku(&store, &sku, ledger);
            }
        }
        Ok(recalled)
    }

    fn checkout(
        &mut self,
        source: &mut dyn LedgerSource,
        store: &StoreId,
        device: &DeviceId,
        intent: &CheckoutIntent,
        now_ms: u64,
    ) -> Result<Decision, HubLogError> {
        // Bytes from the wire: the ids and keys were parsed when the op
        // decoded; the rest is checked by the rule the device applied.
        if let Err(invalid) = intent.validate() {
            return Ok(Decision::Refused(invalid.into()));
        }
        let key = checkout_key(intent);
        if let Some(earlier) = self.key(source, store, &key)? {
            return Ok(Decision::Refused(Refusal::Duplicate {
                order_no: order_no_of(&earlier),
            }));
        }
        if let Some(order) = self.order(source, store, intent.order_id.as_str())? {
            return Ok(Decision::Refused(Refusal::Duplicate {
                order_no: Some(order.order_no),
            }));
        }
        let provisional = intent
            .lines
            .iter()
            .any(|line| line.source == LineSource::Provisional);
        // Only lines the hub decides now are checked against the price in
        // force: an allowance line was decided when it was sold, and a
        // customer who left with provisional goods paid what they saw.
        {
            for line in intent
                .lines
                .iter()
                .filter(|line| line.source == LineSource::Hub)
            {
                if let Some(current) = source.price(store, &line.sku, intent.channel, now_ms)?
                    && !within_tolerance(
                        line.unit_price_minor,
                        current,
                        self.config.price_tolerance_bp,
                    )
                {
                    return Ok(Decision::Refused(Refusal::PriceChanged {
                        sku: line.sku.to_string(),
                        current_minor: current,
                    }));
                }
            }
        }
        // Decide on copies; write back only an accepted checkout.
        let mut ledgers: BTreeMap<Sku, SkuLedger> = BTreeMap::new();
        for line in &intent.lines {
            if !ledgers.contains_key(&line.sku) {
                ledgers.insert(line.sku.clone(), self.sku(source, store, &line.sku)?);
            }
        }
        let mut short = Vec::new();
        let mut lines = Vec::with_capacity(intent.lines.len());
        for line in &intent.lines {
            let ledger = ledgers.get_mut(&line.sku).expect("loaded above");
            let mut covered_by_allowance = false;
            if line.source == LineSource::Allowance {
                covered_by_allowance = ledger
                    .sell_from_allowance(device, line.quantity, now_ms)
                    .is_ok();
            }
            let mut missing = 0;
            if !covered_by_allowance {
                // Hub lines, provisional lines, and allowance lines the hub
                // finds uncovered (a device that lost its state) take from
                // the free pool.
                match ledger.sell_from_pool(line.quantity) {
                    Ok(()) => {}
                    Err(refusal) if line.source == LineSource::Hub || !provisional => {
                        return Ok(Decision::Refused(refusal.for_sku(&line.sku)));
                    }
                    Err(_) => {
                        let covered = ledger.pool;
                        if covered > 0 {
                            ledger
                                .sell_from_pool(covered)
                                .expect("the pool covers itself");
                        }
                        missing = line.quantity - covered;
                        short.push(ShortLine {
                            sku: line.sku.clone(),
                            quantity: missing,
                        });
                    }
                }
                ledger.note_sale(device, line.quantity - missing, now_ms);
            }
            lines.push(OrderLineRecord {
                sku: line.sku.clone(),
                quantity: line.quantity - missing,
                unit_price_minor: line.unit_price_minor,
                short: missing,
            });
        }
        // A device whose private set cannot be named would never see an
        // allowance: it gets none (its sales go to the hub).
        let reachable = omnisync_core::vocab::ids::DocSetId::device(store, device).is_some();
        for (sku, mut ledger) in ledgers {
            if reachable {
                ledger.top_up(device);
            }
            self.put_sku(store, &sku, ledger);
        }
        let order_no = self.next_order_no(source, store)?;
        let total_minor = lines
            .iter()
            .map(|line| line.unit_price_minor.saturating_mul(line.quantity as i64))
            .fold(0i64, i64::saturating_add);
        let order = OrderRecord {
            order_id: intent.order_id.clone(),
            order_no,
            device: device.clone(),
            status: OrderStatusName::confirmed(),
            version: 1,
            lines,
            currency: intent.currency.as_str().to_owned(),
            total_minor,
            payment_ref: intent.payment_ref.clone(),
            decided_ms: now_ms,
            at_risk: !short.is_empty(),
        };
        self.put_order(store, order);
        let decision = if short.is_empty() {
            Decision::Confirmed { order_no }
        } else {
            Decision::Short {
                order_no,
                lines: short,
            }
        };
        self.put_key(store, &key, decision.clone());
        Ok(decision)
    }

    fn stock_command(
        &mut self,
        source: &mut dyn LedgerSource,
        store: &StoreId,
        command: &StockCommand,
    ) -> Result<Decision, HubLogError> {
        let (key, sku) = match command {
            StockCommand::Receive { key, sku, .. }
            | StockCommand::StockTake { key, sku, .. }
            | StockCommand::Adjust { key, sku, .. } => (Some(key), sku),
            StockCommand::SetPolicy { sku, .. } => (None, sku),
        };
        if let Err(invalid) = command.validate() {
            return Ok(Decision::Refused(invalid.into()));
        }
        // Stock commands and checkouts have separate key spaces.
        let key = key.map(stock_key);
        if let Some(key) = &key
            && let Some(earlier) = self.key(source, store, key)?
        {
            return Ok(earlier);
        }
        let mut ledger = self.sku(source, store, sku)?;
        let result = match command {
            StockCommand::Receive { quantity, .. } => ledger.receive(*quantity),
            StockCommand::StockTake { counted, .. } => ledger.stock_take(*counted),
            StockCommand::Adjust { delta, .. } if *delta >= 0 => ledger.receive(*delta as u64),
            StockCommand::Adjust { delta, .. } => ledger.write_off(delta.unsigned_abs()),
            StockCommand::SetPolicy { policy, .. } => {
                ledger.policy = *policy;
                ledger.receive(0)
            }
        };
        let decision = match result {
            Ok(()) => {
                let decision = Decision::Applied {
                    version: ledger.version,
                };
                self.put_sku(store, sku, ledger);
                decision
            }
            Err(refusal) => Decision::Refused(refusal.for_sku(sku)),
        };
        if let Some(key) = &key {
            self.put_key(store, key, decision.clone());
        }
        Ok(decision)
    }

    fn order_status(
        &mut self,
        source: &mut dyn LedgerSource,
        store: &StoreId,
        change: &OrderStatusChange,
    ) -> Result<Decision, HubLogError> {
        let Some(mut order) = self.order(source, store, change.order_id.as_str())? else {
            return Ok(Decision::Refused(Refusal::NotFound {
                what: format!("order {}", change.order_id),
            }));
        };
        if order.version != change.expected_version {
            return Ok(Decision::Refused(Refusal::VersionConflict {
                current: order.version,
            }));
        }
        order.version += 1;
        order.status = change.status.clone();
        let version = order.version;
        self.put_order(store, order);
        Ok(Decision::Applied { version })
    }

    fn reserve(
        &mut self,
        source: &mut dyn LedgerSource,
        store: &StoreId,
        key: &ReservationKey,
        sku: &Sku,
        quantity: u64,
    ) -> Result<Decision, HubLogError> {
        if let Err(invalid) = validate_reservation(quantity) {
            return Ok(Decision::Refused(invalid.into()));
        }
        let key = key.as_str();
        if self.reservation(source, store, key)?.is_some() {
            return Ok(Decision::Refused(Refusal::Duplicate { order_no: None }));
        }
        let mut ledger = self.sku(source, store, sku)?;
        match ledger.reserve(quantity) {
            Ok(()) => {
                let version = ledger.version;
                self.put_sku(store, sku, ledger);
                self.put_reservation(
                    store,
                    key,
                    Reservation {
                        sku: sku.clone(),
                        quantity,
                        state: ReservationState::Open,
                    },
                );
                Ok(Decision::Applied { version })
            }
            Err(refusal) => Ok(Decision::Refused(refusal.for_sku(sku))),
        }
    }

    fn finish_reservation(
        &mut self,
        source: &mut dyn LedgerSource,
        store: &StoreId,
        key: &ReservationKey,
        commit: bool,
    ) -> Result<Decision, HubLogError> {
        let key = key.as_str();
        let Some(mut reservation) = self
            .reservation(source, store, key)?
            .filter(|reservation| reservation.state == ReservationState::Open)
        else {
            return Ok(Decision::Refused(Refusal::NotFound {
                what: format!("open reservation {key}"),
            }));
        };
        let mut ledger = self.sku(source, store, &reservation.sku)?;
        let result = if commit {
            ledger.commit_reserved(reservation.quantity)
        } else {
            ledger.cancel_reserved(reservation.quantity)
        };
        match result {
            Ok(()) => {
                let version = ledger.version;
                self.put_sku(store, &reservation.sku.clone(), ledger);
                reservation.state = if commit {
                    ReservationState::Committed
                } else {
                    ReservationState::Cancelled
                };
                self.put_reservation(store, key, reservation);
                Ok(Decision::Applied { version })
            }
            // The ledger always holds an open reservation's units.
            Err(refusal) => Ok(Decision::Refused(refusal)),
        }
    }

    /// Everything the batch changed, with the records to publish.
    pub fn finish(mut self) -> LedgerChanges {
        let mut changes = LedgerChanges {
            events: std::mem::take(&mut self.events),
            ..LedgerChanges::default()
        };
        self.draft_events(&mut changes.events);
        for key in &self.dirty_skus {
            let ledger = &self.skus[key];
            changes.records.extend(record_of(
                &key.0,
                Record::Stock(ledger.stock_record(&key.1)),
            ));
            changes
                .skus
                .push((key.0.clone(), key.1.clone(), ledger.clone()));
        }
        for (store, sku, device) in &self.dirty_rights {
            let ledger = &self.skus[&(store.clone(), sku.clone())];
            let rights = ledger.rights.get(device).cloned().unwrap_or_default();
            changes.records.extend(record_of(
                store,
                Record::Allowance(AllowanceRecord {
                    device: device.clone(),
                    sku: sku.clone(),
                    granted: rights.granted,
                    spent: rights.spent,
                    released: rights.released,
                    recall: rights.recall,
                    version: ledger.version,
                }),
            ));
        }
        for key in &self.dirty_orders {
            if let Some(Some(order)) = self.orders.get(key) {
                changes
                    .records
                    .extend(record_of(&key.0, Record::Order(order.clone())));
                changes.orders.push((key.0.clone(), order.clone()));
            }
        }
        for key in &self.new_keys {
            if let Some(Some(decision)) = self.keys.get(key) {
                changes
                    .keys
                    .push((key.0.clone(), key.1.clone(), decision.clone()));
            }
        }
        for key in &self.dirty_reservations {
            if let Some(Some(reservation)) = self.reservations.get(key) {
                changes
                    .reservations
                    .push((key.0.clone(), key.1.clone(), reservation.clone()));
            }
        }
        changes.order_nos = self.order_nos.into_iter().collect();
        changes
    }

    /// The events of the ledger entries the batch changed, compared with
    /// how storage had them: stock levels, then allowances granted or
    /// recalled (order events are drafted as each order is written).
    fn draft_events(&self, events: &mut Vec<EventDraft>) {
        for key in &self.dirty_skus {
            let (store, sku) = key;
            let now = self.skus[key].stock_record(sku);
            let before = self
                .sku_origins
                .get(key)
                .map(|ledger| ledger.stock_record(sku));
            if before.is_none_or(|before| !same_level(&before, &now)) {
                events.push(EventDraft::new(
                    store,
                    EventType::StockLevelChanged,
                    &StockLevelData::of(&now),
                ));
            }
        }
        for (store, sku, device) in &self.dirty_rights {
            let key = (store.clone(), sku.clone());
            let now = self.skus[&key]
                .rights
                .get(device)
                .cloned()
                .unwrap_or_default();
            let before = self
                .sku_origins
                .get(&key)
                .and_then(|ledger| ledger.rights.get(device).cloned())
                .unwrap_or_default();
            let data = |units| AllowanceData {
                device: device.to_string(),
                sku: sku.to_string(),
                units,
                held: now.held(),
            };
            if now.granted > before.granted {
                events.push(EventDraft::new(
                    store,
                    EventType::AllowanceGranted,
                    &data(now.granted - before.granted),
                ));
            }
            if now.recall && !before.recall {
                events.push(EventDraft::new(
                    store,
                    EventType::AllowanceRecalled,
                    &data(0),
                ));
            }
        }
    }

    fn sku(
        &mut self,
        source: &mut dyn LedgerSource,
        store: &StoreId,
        sku: &Sku,
    ) -> Result<SkuLedger, HubLogError> {
        let key = (store.clone(), sku.clone());
        if let Some(ledger) = self.skus.get(&key) {
            return Ok(ledger.clone());
        }
        let ledger = source.sku(store, sku)?.unwrap_or_default();
        self.sku_origins.insert(key.clone(), ledger.clone());
        self.skus.insert(key, ledger.clone());
        Ok(ledger)
    }

    /// Writes a ledger entry back; every terminal's rights that changed are
    /// republished.
    fn put_sku(&mut self, store: &StoreId, sku: &Sku, ledger: SkuLedger) {
        let key = (store.clone(), sku.clone());
        if let Some(before) = self.skus.get(&key) {
            for (terminal, rights) in &ledger.rights {
                let changed = before.rights.get(terminal).is_none_or(|old| {
                    old.granted != rights.granted
                        || old.spent != rights.spent
                        || old.released != rights.released
                        || old.recall != rights.recall
                });
                if changed {
                    self.dirty_rights
                        .insert((store.clone(), sku.clone(), terminal.clone()));
                }
            }
        }
        self.skus.insert(key.clone(), ledger);
        self.dirty_skus.insert(key);
    }

    fn order(
        &mut self,
        source: &mut dyn LedgerSource,
        store: &StoreId,
        order_id: &str,
    ) -> Result<Option<OrderRecord>, HubLogError> {
        let key = (store.clone(), order_id.to_owned());
        if let Some(order) = self.orders.get(&key) {
            return Ok(order.clone());
        }
        let order = source.order(store, order_id)?;
        self.orders.insert(key, order.clone());
        Ok(order)
    }

    /// Writes an order back and drafts its events (a new order, a status
    /// change, a compensation opened or resolved), in decision order.
    fn put_order(&mut self, store: &StoreId, order: OrderRecord) {
        let key = (store.clone(), order.order_id.as_str().to_owned());
        let before = self.orders.get(&key).cloned().flatten();
        self.events
            .extend(order_events(store, before.as_ref(), &order));
        self.orders.insert(key.clone(), Some(order));
        self.dirty_orders.insert(key);
    }

    fn key(
        &mut self,
        source: &mut dyn LedgerSource,
        store: &StoreId,
        key: &str,
    ) -> Result<Option<Decision>, HubLogError> {
        let entry = (store.clone(), key.to_owned());
        if let Some(decision) = self.keys.get(&entry) {
            return Ok(decision.clone());
        }
        let decision = source.key(store, key)?;
        self.keys.insert(entry, decision.clone());
        Ok(decision)
    }

    fn put_key(&mut self, store: &StoreId, key: &str, decision: Decision) {
        let entry = (store.clone(), key.to_owned());
        self.keys.insert(entry.clone(), Some(decision));
        self.new_keys.insert(entry);
    }

    fn reservation(
        &mut self,
        source: &mut dyn LedgerSource,
        store: &StoreId,
        key: &str,
    ) -> Result<Option<Reservation>, HubLogError> {
        let entry = (store.clone(), key.to_owned());
        if let Some(reservation) = self.reservations.get(&entry) {
            return Ok(reservation.clone());
        }
        let reservation = source.reservation(store, key)?;
        self.reservations.insert(entry, reservation.clone());
        Ok(reservation)
    }

    fn put_reservation(&mut self, store: &StoreId, key: &str, reservation: Reservation) {
        let entry = (store.clone(), key.to_owned());
        self.reservations.insert(entry.clone(), Some(reservation));
        self.dirty_reservations.insert(entry);
    }

    fn next_order_no(
        &mut self,
        source: &mut dyn LedgerSource,
        store: &StoreId,
    ) -> Result<u64, HubLogError> {
        let last = match self.order_nos.get(store) {
            Some(last) => *last,
            None => source.last_order_no(store)?,
        };
        self.order_nos.insert(store.clone(), last + 1);
        Ok(last + 1)
    }
}

fn record_of(store: &StoreId, record: Record) -> Option<(DocId, Vec<u8>)> {
    Some((record.doc(store)?, record.encode()))
}

fn order_no_of(decision: &Decision) -> Option<u64> {
    match decision {
        Decision::Confirmed { order_no } | Decision::Short { order_no, .. } => Some(*order_no),
        _ => None,
    }
}

/// The events of an order written by a batch: `before` is how storage had it.
fn order_events(
    store: &StoreId,
    before: Option<&OrderRecord>,
    order: &OrderRecord,
) -> Vec<EventDraft> {
    let mut events = Vec::new();
    match before {
        None => {
            events.push(EventDraft::new(
                store,
                EventType::OrderConfirmed,
                &OrderConfirmedData::of(order),
            ));
            let short: Vec<ShortLineData> = order
                .lines
                .iter()
                .filter(|line| line.short > 0)
                .map(|line| ShortLineData {
                    sku: line.sku.to_string(),
                    quantity: line.short,
                })
                .collect();
            if !short.is_empty() {
                events.push(EventDraft::new(
                    store,
                    EventType::CompensationOpened,
                    &CompensationOpenedData {
                        order_id: order.order_id.to_string(),
                        order_no: order.order_no,
                        device: order.device.to_string(),
                        lines: short,
                    },
                ));
            }
        }
        Some(before) if before.version != order.version => {
            events.push(EventDraft::new(
                store,
                EventType::OrderStatusChanged,
                &OrderStatusChangedData {
                    order_id: order.order_id.to_string(),
                    order_no: order.order_no,
                    from: before.status.to_string(),
                    status: order.status.to_string(),
                    version: order.version,
                },
            ));
            if let Some(resolution) = order.status.as_str().strip_prefix(COMPENSATED_PREFIX) {
                events.push(EventDraft::new(
                    store,
                    EventType::CompensationResolved,
                    &CompensationResolvedData {
                        order_id: order.order_id.to_string(),
                        order_no: order.order_no,
                        resolution: resolution.to_owned(),
                    },
                ));
            }
        }
        Some(_) => {}
    }
    events
}

/// True when two stock records show the same levels (versions aside).
fn same_level(a: &StockRecord, b: &StockRecord) -> bool {
    (a.on_hand, a.free, a.reserved, a.held, a.mode)
        == (b.on_hand, b.free, b.reserved, b.held, b.mode)
}

/// True when `seen` is within `tolerance_bp` basis points of `current`.
pub fn within_tolerance(seen: i64, current: i64, tolerance_bp: u32) -> bool {
    let difference = (seen as i128 - current as i128).unsigned_abs();
    difference * 10_000 <= (current as i128).unsigned_abs() * tolerance_bp as u128
}
