//! The stock ledger of one (store, SKU) at the hub, and its escrow arithmetic.
//!
//! Every unit the hub knows to be on hand is in exactly one place: the hub's
//! free pool, an open reservation, or the unspent rights (allowance) of one
//! terminal. The invariant, checked by [`SkuLedger::check`] and by property
//! tests, holds after every operation:
//!
//! ```text
//! on_hand + deficit == pool + reserved + Σ held(terminal)
//! received == on_hand + sold + shrink
//! ```
//!
//! `deficit` counts units a stock-take found missing while terminals still
//! hold rights to them: it is paid back from the first units that return to
//! the hub (releases, cancelled reservations, receipts), and while it is not
//! zero the SKU is in strong mode and every allowance is recalled. All counts
//! are unsigned: no operation can take anything below zero; one that would is
//! refused and changes nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use omnisync_core::vocab::goods::Sku;
use omnisync_core::vocab::ids::DeviceId;
use omnisync_core::vocab::intent::{Refusal, StockMode, StockPolicy};
use omnisync_core::vocab::record::StockRecord;

/// Smallest allowance the hub grants a terminal that sells a SKU.
pub const GRANT_MIN: u64 = 2;
/// Largest allowance one terminal holds of one SKU.
pub const GRANT_MAX: u64 = 64;
/// Sales window used to size allowances, in ms.
pub const RATE_WINDOW_MS: u64 = 60_000;
/// A terminal whose allowance for a SKU went unused this long gives it back.
pub const IDLE_RECALL_MS: u64 = 10 * 60_000;

/// A terminal's rights to sell units of one SKU without asking the hub.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rights {
    /// Units granted by the hub, ever (grows only).
    pub granted: u64,
    /// Units the terminal sold from its allowance, as applied at the hub.
    pub spent: u64,
    /// Units the terminal gave back, as applied at the hub.
    pub released: u64,
    /// The hub asks for the unspent rest back.
    pub recall: bool,
    /// When the terminal last sold this SKU (any mode), ms since the epoch.
    pub last_sale_ms: u64,
    /// Start of the current sales window.
    pub window_start_ms: u64,
    /// Units sold in the current window.
    pub window_units: u64,
    /// Units sold in the previous window (sizes the next grant).
    pub previous_window_units: u64,
}

impl Rights {
    /// Units the terminal may still sell on its own.
    pub fn held(&self) -> u64 {
        self.granted - self.spent - self.released
    }

    fn note_sale(&mut self, units: u64, now_ms: u64) {
        if now_ms >= self.window_start_ms.saturating_add(RATE_WINDOW_MS) {
            let windows_passed = (now_ms - self.window_start_ms) / RATE_WINDOW_MS;
            self.previous_window_units = if windows_passed == 1 {
                self.window_units
            } else {
                0
            };
            self.window_start_ms = now_ms;
            self.window_units = 0;
        }
        self.window_units = self.window_units.saturating_add(units);
        self.last_sale_ms = self.last_sale_ms.max(now_ms);
    }

    /// The allowance this terminal should hold: twice its recent sales in a
    /// window, within [`GRANT_MIN`]..=[`GRANT_MAX`].
    pub fn target(&self) -> u64 {
        (self.window_units.max(self.previous_window_units) * 2).clamp(GRANT_MIN, GRANT_MAX)
    }
}

/// The authoritative stock of one SKU in one store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkuLedger {
    /// Units in the store, not yet sold, as far as the hub knows.
    pub on_hand: u64,
    /// Units free at the hub: neither reserved nor granted.
    pub pool: u64,
    /// Units held by open reservations.
    pub reserved: u64,
    /// Units found missing that terminals still hold rights to.
    pub deficit: u64,
    /// Units received, ever (receipts and upward stock-takes).
    pub received: u64,
    /// Units sold, ever.
    pub sold: u64,
    /// Units written off (downward stock-takes and adjustments).
    pub shrink: u64,
    /// When sales need the hub.
    pub policy: StockPolicy,
    /// Rights of each terminal that ever held an allowance.
    pub rights: BTreeMap<DeviceId, Rights>,
    /// Grows by one with every change.
    pub version: u64,
}

impl SkuLedger {
    /// A ledger with no stock and the given policy.
    pub fn new(policy: StockPolicy) -> Self {
        Self {
            policy,
            ..Self::default()
        }
    }

    /// Units held by all terminals together.
    pub fn held(&self) -> u64 {
        self.rights.values().map(Rights::held).sum()
    }

    /// Units `device` may sell on its own.
    pub fn held_by(&self, device: &DeviceId) -> u64 {
        self.rights.get(device).map_or(0, Rights::held)
    }

    /// Escrow while well stocked; strong at or below the threshold, or while
    /// a deficit is being paid back.
    pub fn mode(&self) -> StockMode {
        if self.deficit > 0 || self.on_hand <= self.policy.strong_at_or_below {
            StockMode::Strong
        } else {
            StockMode::Escrow
        }
    }

    /// Checks both invariants; `Err` names the broken one.
    pub fn check(&self) -> Result<(), String> {
        let held = self.held();
        if self.on_hand + self.deficit != self.pool + self.reserved + held {
            return Err(format!(
                "on_hand {} + deficit {} != pool {} + reserved {} + held {held}",
                self.on_hand, self.deficit, self.pool, self.reserved
            ));
        }
        if self.received != self.on_hand + self.sold + self.shrink {
            return Err(format!(
                "received {} != on_hand {} + sold {} + shrink {}",
                self.received, self.on_hand, self.sold, self.shrink
            ));
        }
        for (device, rights) in &self.rights {
            if rights.spent + rights.released > rights.granted {
                return Err(format!("{device} spent and released more than granted"));
            }
        }
        Ok(())
    }

    /// Units leave the store sold. Units sold beyond the counted on-hand
    /// (rights or reservations the deficit still covers) were not missing
    /// after all: they pay the deficit back and undo that much shrink.
    /// Callers only sell units they hold, and what is held never exceeds
    /// `on_hand + deficit`, so nothing here goes below zero.
    fn take_sold(&mut self, units: u64) {
        let counted = units.min(self.on_hand);
        let uncounted = units - counted;
        self.on_hand -= counted;
        self.deficit -= uncounted;
        self.shrink -= uncounted;
        self.sold += units;
    }

    /// Units come back to the hub: they pay the deficit first, then go to the pool.
    fn return_units(&mut self, units: u64) {
        let paid = units.min(self.deficit);
        self.deficit -= paid;
        self.pool += units - paid;
    }

    /// Goods received.
    pub fn receive(&mut self, units: u64) -> Result<(), Refusal> {
        let on_hand = self.on_hand.checked_add(units).ok_or_else(too_many)?;
        let received = self.received.checked_add(units).ok_or_else(too_many)?;
        self.on_hand = on_hand;
        self.received = received;
        self.return_units(units);
        self.changed();
        Ok(())
    }

    /// Units written off (damaged, stolen, counted missing).
    pub fn write_off(&mut self, units: u64) -> Result<(), Refusal> {
        if units > self.on_hand {
            return Err(Refusal::Invalid {
                detail: format!("cannot write off {units} units: {} on hand", self.on_hand),
            });
        }
        self.on_hand -= units;
        self.shrink += units;
        let from_pool = units.min(self.pool);
        self.pool -= from_pool;
        self.deficit += units - from_pool;
        if self.deficit > 0 {
            self.recall_all();
        }
        self.changed();
        Ok(())
    }

    /// A stock-take: the counted units become the on-hand count.
    pub fn stock_take(&mut self, counted: u64) -> Result<(), Refusal> {
        if counted >= self.on_hand {
            self.receive(counted - self.on_hand)
        } else {
            self.write_off(self.on_hand - counted)
        }
    }

    /// A sale decided at the hub, from the free pool.
    pub fn sell_from_pool(&mut self, units: u64) -> Result<(), Refusal> {
        if units > self.pool {
            return Err(Refusal::OutOfStock {
                sku: String::new(),
                available: self.pool,
            });
        }
        self.pool -= units;
        self.on_hand -= units;
        self.sold += units;
        self.changed();
        Ok(())
    }

    /// A sale a terminal made from its own allowance.
    pub fn sell_from_allowance(
        &mut self,
        device: &DeviceId,
        units: u64,
        now_ms: u64,
    ) -> Result<(), Refusal> {
        let held = self.held_by(device);
        if units > held {
            return Err(Refusal::AllowanceExceeded {
                sku: String::new(),
                held,
            });
        }
        self.take_sold(units);
        let rights = self.rights.entry(device.clone()).or_default();
        rights.spent += units;
        rights.note_sale(units, now_ms);
        self.changed();
        Ok(())
    }

    /// Notes a sale by `device` for allowance sizing (sales decided at the hub).
    pub fn note_sale(&mut self, device: &DeviceId, units: u64, now_ms: u64) {
        self.rights
            .entry(device.clone())
            .or_default()
            .note_sale(units, now_ms);
    }

    /// A terminal gives back unspent rights.
    pub fn release(&mut self, device: &DeviceId, units: u64) -> Result<(), Refusal> {
        let held = self.held_by(device);
        if units > held {
            return Err(Refusal::AllowanceExceeded {
                sku: String::new(),
                held,
            });
        }
        if units == 0 {
            return Ok(());
        }
        let rights = self.rights.entry(device.clone()).or_default();
        rights.released += units;
        if rights.held() == 0 {
            rights.recall = false;
        }
        self.return_units(units);
        self.changed();
        Ok(())
    }

    /// Sets units aside for a later commit or cancel.
    pub fn reserve(&mut self, units: u64) -> Result<(), Refusal> {
        if units > self.pool {
            return Err(Refusal::OutOfStock {
                sku: String::new(),
                available: self.pool,
            });
        }
        self.pool -= units;
        self.reserved += units;
        self.changed();
        Ok(())
    }

    /// Sells reserved units.
    pub fn commit_reserved(&mut self, units: u64) -> Result<(), Refusal> {
        if units > self.reserved {
            return Err(Refusal::Invalid {
                detail: format!("only {} units are reserved", self.reserved),
            });
        }
        self.reserved -= units;
        self.take_sold(units);
        self.changed();
        Ok(())
    }

    /// Returns reserved units to the pool.
    pub fn cancel_reserved(&mut self, units: u64) -> Result<(), Refusal> {
        if units > self.reserved {
            return Err(Refusal::Invalid {
                detail: format!("only {} units are reserved", self.reserved),
            });
        }
        self.reserved -= units;
        self.return_units(units);
        self.changed();
        Ok(())
    }

    /// Tops up `device`'s allowance towards its target while the SKU is in
    /// escrow mode, never handing out more than half of the free units above
    /// the strong-mode threshold. Returns the units granted.
    pub fn top_up(&mut self, device: &DeviceId) -> u64 {
        if self.mode() != StockMode::Escrow {
            return 0;
        }
        let rights = self.rights.entry(device.clone()).or_default();
        let want = rights.target().saturating_sub(rights.held());
        let spare = self.pool.saturating_sub(self.policy.strong_at_or_below) / 2;
        let grant = want.min(spare);
        if grant == 0 {
            return 0;
        }
        rights.granted += grant;
        rights.recall = false;
        self.pool -= grant;
        self.changed();
        grant
    }

    /// Asks every terminal holding rights to give them back (strong mode).
    /// Returns the terminals newly asked.
    pub fn recall_all(&mut self) -> Vec<DeviceId> {
        let mut asked = Vec::new();
        for (device, rights) in &mut self.rights {
            if rights.held() > 0 && !rights.recall {
                rights.recall = true;
                asked.push(device.clone());
            }
        }
        if !asked.is_empty() {
            self.changed();
        }
        asked
    }

    /// Asks terminals that have not sold for [`IDLE_RECALL_MS`] to give their
    /// rights back. Returns the terminals newly asked.
    pub fn recall_idle(&mut self, now_ms: u64) -> Vec<DeviceId> {
        let mut asked = Vec::new();
        for (device, rights) in &mut self.rights {
            if rights.held() > 0
                && !rights.recall
                && now_ms.saturating_sub(rights.last_sale_ms) >= IDLE_RECALL_MS
            {
                rights.recall = true;
                asked.push(device.clone());
            }
        }
        if !asked.is_empty() {
            self.changed();
        }
        asked
    }

    /// Every change bumps the version; a change that leaves the SKU in
    /// strong mode asks for every allowance back.
    fn changed(&mut self) {
        self.version += 1;
        if self.mode() == StockMode::Strong {
            for rights in self.rights.values_mut() {
                if rights.held() > 0 {
                    rights.recall = true;
                }
            }
        }
    }
}

fn too_many() -> Refusal {
    Refusal::Invalid {
        detail: "stock count overflows".into(),
    }
}

impl SkuLedger {
    /// The stock record the hub publishes for this entry.
    pub fn stock_record(&self, sku: &Sku) -> StockRecord {
        StockRecord {
            sku: sku.clone(),
            on_hand: self.on_hand,
            free: self.pool,
            reserved: self.reserved,
            held: self.held(),
            mode: self.mode(),
            policy: self.policy,
            version: self.version,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use omnisync_core::vocab::intent::OfflinePolicy;
    use proptest::prelude::*;

    fn device(n: u8) -> DeviceId {
        DeviceId::new(format!("till-{n}")).unwrap()
    }

    #[derive(Clone, Debug)]
    enum Step {
        Receive(u64),
        WriteOff(u64),
        StockTake(u64),
        SellPool(u64),
        SellAllowance(u8, u64),
        Release(u8, u64),
        Reserve(u64),
        Commit(u64),
        Cancel(u64),
        TopUp(u8),
        RecallIdle(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u64..50).prop_map(Step::Receive),
            (0u64..20).prop_map(Step::WriteOff),
            (0u64..80).prop_map(Step::StockTake),
            (0u64..10).prop_map(Step::SellPool),
            (0u8..4, 0u64..10).prop_map(|(d, n)| Step::SellAllowance(d, n)),
            (0u8..4, 0u64..10).prop_map(|(d, n)| Step::Release(d, n)),
            (0u64..10).prop_map(Step::Reserve),
            (0u64..10).prop_map(Step::Commit),
            (0u64..10).prop_map(Step::Cancel),
            (0u8..4).prop_map(Step::TopUp),
            (0u64..2_000_000).prop_map(Step::RecallIdle),
        ]
    }

    proptest! {
        /// Whatever happens, in any order, the invariants hold, nothing goes
        /// negative, and a refused operation changes nothing.
        #[test]
        fn allowance_arithmetic_keeps_the_invariants(
            threshold in 0u64..10,
            steps in proptest::collection::vec(step(), 1..120),
        ) {
            let mut ledger = SkuLedger::new(StockPolicy {
                strong_at_or_below: threshold,
                offline: OfflinePolicy::Block,
            });
            let mut now = 0;
            for step in steps {
                now += 1_000;
                let before = ledger.clone();
                let result = match step {
                    Step::Receive(n) => ledger.receive(n),
                    Step::WriteOff(n) => ledger.write_off(n),
                    Step::StockTake(n) => ledger.stock_take(n),
                    Step::SellPool(n) => ledger.sell_from_pool(n),
                    Step::SellAllowance(d, n) => ledger.sell_from_allowance(&device(d), n, now),
                    Step::Release(d, n) => ledger.release(&device(d), n),
                    Step::Reserve(n) => ledger.reserve(n),
                    Step::Commit(n) => ledger.commit_reserved(n),
                    Step::Cancel(n) => ledger.cancel_reserved(n),
                    Step::TopUp(d) => {
                        let granted = ledger.top_up(&device(d));
                        if granted > 0 {
                            prop_assert_eq!(before.mode(), StockMode::Escrow);
                            prop_assert!(ledger.pool >= threshold, "a grant dug into the strong reserve");
                        }
                        Ok(())
                    }
                    Step::RecallIdle(t) => {
                        ledger.recall_idle(now + t);
                        Ok(())
                    }
                };
                if result.is_err() {
                    prop_assert_eq!(&ledger, &before, "a refused step changed the ledger");
                }
                if let Err(broken) = ledger.check() {
                    prop_assert!(false, "after {:?}: {}", step, broken);
                }
                prop_assert!(ledger.sold <= ledger.received, "oversold");
                if ledger.deficit > 0 {
                    prop_assert_eq!(ledger.mode(), StockMode::Strong);
                }
                if ledger.mode() == StockMode::Strong && ledger.version != before.version {
                    prop_assert!(ledger.rights.values().all(|r| r.held() == 0 || r.recall));
                }
            }
        }
    }

    #[test]
    fn a_terminal_cannot_sell_beyond_its_allowance() {
        let mut ledger = SkuLedger::new(StockPolicy::default());
        ledger.receive(100).unwrap();
        let till = device(1);
        ledger.note_sale(&till, 10, 1);
        let granted = ledger.top_up(&till);
        assert!(granted >= GRANT_MIN);
        assert!(ledger.sell_from_allowance(&till, granted + 1, 2).is_err());
        ledger.sell_from_allowance(&till, granted, 2).unwrap();
        assert_eq!(ledger.held_by(&till), 0);
        ledger.check().unwrap();
    }

    #[test]
    fn low_stock_recalls_and_stops_granting() {
        let mut ledger = SkuLedger::new(StockPolicy {
            strong_at_or_below: 5,
            offline: OfflinePolicy::Block,
        });
        ledger.receive(30).unwrap();
        let till = device(1);
        let granted = ledger.top_up(&till);
        assert!(granted > 0);
        ledger.write_off(25).unwrap();
        assert_eq!(ledger.mode(), StockMode::Strong);
        assert_eq!(ledger.top_up(&device(2)), 0);
        assert!(ledger.rights[&till].recall);
        ledger.release(&till, granted).unwrap();
        assert_eq!(ledger.held(), 0);
        assert_eq!(ledger.deficit, 0);
        ledger.check().unwrap();
    }
}
