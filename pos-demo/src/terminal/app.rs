//! The terminal's state and key handling. Everything the screen shows is a
//! field here ([`App::refresh`] reads it from the till's local store), and
//! every key is handled by [`App::handle_key`] against a [`Client`], so
//! tests drive the app without a real terminal.

use omnisync_core::client::{Client, Link, SyncStatus};
use omnisync_core::db::OpStatus;
use omnisync_core::retail::RetailError;
use omnisync_core::retail::orders::{CheckoutReceipt, CheckoutRequest, Compensation, OrderLine};
use omnisync_core::retail::stock::StockView;
use omnisync_core::vocab::goods::{Channel, Sku};
use omnisync_core::vocab::intent::{Intent, LineSource};
use omnisync_core::{DeviceId, OpId, Replica, StoreId};
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use crate::demo::{eur, format_money, lifecycle_text};

/// Most search results shown.
pub const RESULTS_MAX: usize = 50;
/// Checkouts kept on screen (newest first).
pub const CHECKOUTS_MAX: usize = 30;
/// Compensation tasks shown (open ones first).
pub const TASKS_MAX: usize = 20;
/// Longest search text.
pub const QUERY_CHARS_MAX: usize = 64;

/// Whether keys edit the search text or are commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Keys are commands.
    Normal,
    /// Keys edit the search text.
    Search,
}

/// The list the arrow keys move in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Focus {
    /// Search results.
    Products,
    /// The cart.
    Cart,
    /// Compensation tasks.
    Tasks,
}

impl Focus {
    fn next(self) -> Self {
        match self {
            Focus::Products => Focus::Cart,
            Focus::Cart => Focus::Tasks,
            Focus::Tasks => Focus::Products,
        }
    }

    fn previous(self) -> Self {
        match self {
            Focus::Products => Focus::Tasks,
            Focus::Cart => Focus::Products,
            Focus::Tasks => Focus::Cart,
        }
    }
}

/// One search result.
#[derive(Clone, Debug, PartialEq)]
pub struct ProductRow {
    /// The SKU.
    pub sku: Sku,
    /// Display name (the SKU if the product has none).
    pub name: String,
    /// Barcode, if any.
    pub barcode: Option<String>,
    /// POS price in force, minor units.
    pub price_minor: Option<i64>,
    /// Stock as the hub last published it, with this till's allowance.
    pub stock: Option<StockView>,
}

/// One cart line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CartLine {
    /// The SKU.
    pub sku: Sku,
    /// Display name.
    pub name: String,
    /// Units.
    pub quantity: u64,
    /// POS price in force, minor units.
    pub unit_price_minor: i64,
}

/// A checkout this till recorded, and where it is in its lifecycle.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckoutRow {
    /// The op carrying the checkout intent.
    pub op: OpId,
    /// The order id.
    pub order_id: String,
    /// Lines: SKU, units, how the till covered them.
    pub lines: Vec<(Sku, u64, LineSource)>,
    /// Total, minor units.
    pub total_minor: i64,
    /// Some line was sold provisionally (offline, strong mode).
    pub at_risk: bool,
    /// The op's status.
    pub status: OpStatus,
}

impl CheckoutRow {
    /// The lifecycle so far: `pending → confirmed #12`,
    /// `pending → compensation: #13 short by 1 → compensated #13`, ...
    pub fn lifecycle(&self) -> String {
        match &self.status {
            OpStatus::Pending => "pending".to_owned(),
            OpStatus::Compensated { .. } => {
                format!("pending → compensation → {}", lifecycle_text(&self.status))
            }
            other => format!("pending → {}", lifecycle_text(other)),
        }
    }
}

/// How a message reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tone {
    /// Neutral.
    Info,
    /// Something worked.
    Good,
    /// Something was refused or failed.
    Bad,
}

/// The message line under the panels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// How it reads.
    pub tone: Tone,
    /// The text.
    pub text: String,
}

/// The terminal's state.
#[derive(Debug)]
pub struct App {
    /// The store.
    pub store: StoreId,
    /// This till.
    pub device: DeviceId,
    /// Where the hub is, for the title.
    pub hub_label: String,
    /// Command or search keys.
    pub mode: Mode,
    /// The list the arrows move in.
    pub focus: Focus,
    /// The search text.
    pub query: String,
    /// Search results.
    pub results: Vec<ProductRow>,
    /// Selected result.
    pub selected: usize,
    /// The cart.
    pub cart: Vec<CartLine>,
    /// Selected cart line.
    pub cart_selected: usize,
    /// Checkouts, newest first.
    pub checkouts: Vec<CheckoutRow>,
    /// Compensation tasks, open ones first.
    pub tasks: Vec<Compensation>,
    /// Selected task.
    pub task_selected: usize,
    /// The link and op log as the client reports them.
    pub sync: SyncStatus,
    /// The cashier switched the link off (`o`).
    pub switched_offline: bool,
    /// The last message.
    pub message: Option<Message>,
    /// The clock of the last refresh, ms since the epoch.
    pub now_ms: u64,
    /// Set by `q`/Esc: the loop ends.
    pub quit: bool,
}

impl App {
    /// A fresh terminal for `device` of `store`.
    pub fn new(store: StoreId, device: DeviceId, hub_label: impl Into<String>) -> Self {
        Self {
            store,
            device,
            hub_label: hub_label.into(),
            mode: Mode::Normal,
            focus: Focus::Products,
            query: String::new(),
            results: Vec::new(),
            selected: 0,
            cart: Vec::new(),
            cart_selected: 0,
            checkouts: Vec::new(),
            tasks: Vec::new(),
            task_selected: 0,
            sync: SyncStatus::default(),
            switched_offline: false,
            message: Some(Message {
                tone: Tone::Info,
                text: "press / to find a product by name, SKU or barcode".to_owned(),
            }),
            now_ms: omnisync_core::now_ms(),
            quit: false,
        }
    }

    /// Loads the newest checkouts of earlier sessions from the till's op
    /// log, so pending sales show their lifecycle after a restart.
    pub fn load_history(&mut self, client: &Client) -> anyhow::Result<()> {
        let store = client.replica();
        let ops = store.op_ids()?;
        let mut rows = Vec::new();
        for op in ops.iter().rev() {
            if rows.len() >= CHECKOUTS_MAX {
                break;
            }
            let Some(Intent::Checkout(intent)) = store.op_intent(op.seq)? else {
                continue;
            };
            let Some(status) = store.op_status(op)? else {
                continue;
            };
            rows.push(CheckoutRow {
                op: *op,
                order_id: intent.order_id.to_string(),
                total_minor: intent
                    .lines
                    .iter()
                    .map(|line| line.unit_price_minor.saturating_mul(line.quantity as i64))
                    .fold(0, i64::saturating_add),
                at_risk: intent
                    .lines
                    .iter()
                    .any(|line| line.source == LineSource::Provisional),
                lines: intent
                    .lines
                    .into_iter()
                    .map(|line| (line.sku, line.quantity, line.source))
                    .collect(),
                status,
            });
        }
        self.checkouts = rows;
        Ok(())
    }

    /// Reads everything the screen shows from the till's local store: it
    /// works the same with the hub down.
    pub fn refresh(&mut self, client: &Client) -> anyhow::Result<()> {
        self.now_ms = omnisync_core::now_ms();
        self.sync = client.status();
        let store = client.replica();
        self.results = search(&store, &self.store, &self.query, self.now_ms)?;
        self.selected = self.selected.min(self.results.len().saturating_sub(1));
        for line in &mut self.cart {
            if let Some(price) =
                store.price_in_force(&self.store, &line.sku, Channel::Pos, self.now_ms)?
            {
                line.unit_price_minor = price.money.amount_minor;
            }
        }
        for row in &mut self.checkouts {
            if let Some(status) = store.op_status(&row.op)? {
                row.status = status;
            }
        }
        let mut tasks = store.compensations()?;
        tasks.truncate(TASKS_MAX);
        self.tasks = tasks;
        self.task_selected = self.task_selected.min(self.tasks.len().saturating_sub(1));
        Ok(())
    }

    /// Handles one key press.
    pub fn handle_key(&mut self, key: KeyEvent, client: &Client) {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            self.quit = true;
            return;
        }
        match self.mode {
            // A terminal reads Esc and a quick next key as Alt+key: leave the
            // search and take the key as a command.
            Mode::Search
                if key.modifiers.contains(KeyModifiers::ALT)
                    && matches!(key.code, KeyCode::Char(_)) =>
            {
                self.mode = Mode::Normal;
                self.command_key(KeyEvent::new(key.code, KeyModifiers::NONE), client);
            }
            Mode::Search => self.search_key(key, client),
            Mode::Normal => self.command_key(key, client),
        }
    }

    fn search_key(&mut self, key: KeyEvent, client: &Client) {
        match key.code {
            KeyCode::Esc => self.mode = Mode::Normal,
            KeyCode::Enter => self.scan_or_browse(client),
            KeyCode::Backspace => {
                self.query.pop();
                self.selected = 0;
            }
            KeyCode::Char('u') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                self.query.clear();
                self.selected = 0;
            }
            KeyCode::Char(c) if !key.modifiers.contains(KeyModifiers::CONTROL) => {
                if self.query.chars().count() < QUERY_CHARS_MAX {
                    self.query.push(c);
                    self.selected = 0;
                }
            }
            KeyCode::Up => self.selected = self.selected.saturating_sub(1),
            KeyCode::Down => self.selected = step(self.selected, self.results.len()),
            KeyCode::Tab => {
                self.mode = Mode::Normal;
                self.focus = Focus::Cart;
            }
            _ => return,
        }
        self.refresh_or_report(client);
    }

    /// Enter in the search box: a barcode or SKU that matches exactly goes
    /// straight into the cart (a scanner types the code and Enter), ready
    /// for the next scan; any other text moves to the results.
    fn scan_or_browse(&mut self, client: &Client) {
        let code = self.query.trim().to_owned();
        self.refresh_or_report(client);
        let exact = self.results.iter().position(|row| {
            row.barcode.as_deref() == Some(code.as_str()) || row.sku.as_str() == code
        });
        match exact {
            Some(index) if !code.is_empty() => {
                self.selected = index;
                self.add_selected();
                self.query.clear();
                self.selected = 0;
            }
            _ => {
                self.mode = Mode::Normal;
                self.focus = Focus::Products;
            }
        }
    }

    fn command_key(&mut self, key: KeyEvent, client: &Client) {
        match key.code {
            KeyCode::Char('q') | KeyCode::Esc => self.quit = true,
            KeyCode::Char('/') => {
                // A new search: the cashier types the next product.
                self.mode = Mode::Search;
                self.query.clear();
                self.selected = 0;
            }
            KeyCode::Char(digit) if digit.is_ascii_digit() => {
                // A scanner typing a barcode starts a search by itself.
                self.mode = Mode::Search;
                self.query.clear();
                self.query.push(digit);
                self.selected = 0;
            }
            KeyCode::Tab => self.focus = self.focus.next(),
            KeyCode::BackTab => self.focus = self.focus.previous(),
            KeyCode::Up | KeyCode::Char('k') => self.move_selection(false),
            KeyCode::Down | KeyCode::Char('j') => self.move_selection(true),
            KeyCode::Enter | KeyCode::Char('a') | KeyCode::Char('+') => match self.focus {
                Focus::Products => self.add_selected(),
                Focus::Cart => self.change_quantity(1),
                Focus::Tasks => self.resolve_task(client),
            },
            KeyCode::Char('-') => self.change_quantity(-1),
            KeyCode::Char('d') | KeyCode::Delete => self.remove_cart_line(),
            KeyCode::Char('x') => {
                self.cart.clear();
                self.cart_selected = 0;
                self.say(Tone::Info, "cart emptied");
            }
            KeyCode::Char('c') => self.checkout(client),
            KeyCode::Char('o') => self.toggle_link(client),
            KeyCode::Char('r') => self.resolve_task(client),
            _ => return,
        }
        self.refresh_or_report(client);
    }

    fn refresh_or_report(&mut self, client: &Client) {
        if let Err(error) = self.refresh(client) {
            self.say(Tone::Bad, format!("reading the local store: {error:#}"));
        }
    }

    fn say(&mut self, tone: Tone, text: impl Into<String>) {
        self.message = Some(Message {
            tone,
            text: text.into(),
        });
    }

    fn move_selection(&mut self, down: bool) {
        let (index, len) = match self.focus {
            Focus::Products => (&mut self.selected, self.results.len()),
            Focus::Cart => (&mut self.cart_selected, self.cart.len()),
            Focus::Tasks => (&mut self.task_selected, self.tasks.len()),
        };
        *index = if down {
            step(*index, len)
        } else {
            index.saturating_sub(1)
        };
    }

    /// Adds one unit of the selected result to the cart.
    fn add_selected(&mut self) {
        let Some(row) = self.results.get(self.selected).cloned() else {
            self.say(
                Tone::Info,
                "nothing selected: press / and type to find a product",
            );
            return;
        };
        let Some(price) = row.price_minor else {
            self.say(
                Tone::Bad,
                format!("{} has no till price yet: it cannot be sold", row.name),
            );
            return;
        };
        if let Some(index) = self.cart.iter().position(|line| line.sku == row.sku) {
            self.cart[index].quantity += 1;
            self.cart_selected = index;
        } else {
            self.cart.push(CartLine {
                sku: row.sku.clone(),
                name: row.name.clone(),
                quantity: 1,
                unit_price_minor: price,
            });
            self.cart_selected = self.cart.len() - 1;
        }
        let how = match &row.stock {
            Some(view) if view.allowance_left > 0 => "from this till's allowance".to_owned(),
            Some(view) if view.mode == omnisync_core::vocab::intent::StockMode::Strong => {
                "low stock: decided at the hub".to_owned()
            }
            Some(_) => "the hub decides".to_owned(),
            None => "no stock known yet".to_owned(),
        };
        self.say(
            Tone::Info,
            format!("added 1× {} at {} ({how})", row.name, format_money(price)),
        );
    }

    fn change_quantity(&mut self, delta: i64) {
        let Some(line) = self.cart.get_mut(self.cart_selected) else {
            return;
        };
        if delta < 0 && line.quantity <= 1 {
            self.remove_cart_line();
            return;
        }
        line.quantity = line.quantity.saturating_add_signed(delta).max(1);
    }

    fn remove_cart_line(&mut self) {
        if self.cart_selected < self.cart.len() {
            let line = self.cart.remove(self.cart_selected);
            self.cart_selected = self.cart_selected.min(self.cart.len().saturating_sub(1));
            self.say(Tone::Info, format!("removed {} from the cart", line.name));
        }
    }

    /// The cart's total, minor units.
    pub fn cart_total(&self) -> i64 {
        self.cart
            .iter()
            .map(|line| line.unit_price_minor.saturating_mul(line.quantity as i64))
            .fold(0, i64::saturating_add)
    }

    /// Records the sale: online the hub decides lines the allowance does
    /// not cover; offline the SKU's policy does (block or provisional).
    fn checkout(&mut self, client: &Client) {
        if self.cart.is_empty() {
            self.say(Tone::Info, "the cart is empty");
            return;
        }
        // Sell at the prices in force now: the hub checks them.
        self.refresh_or_report(client);
        let parsed = next_order_id(client).and_then(|order_id| {
            let payment_ref = format!("card-{order_id}").parse()?;
            Ok((order_id.parse()?, payment_ref))
        });
        let (order_id, payment_ref) = match parsed {
            Ok(parsed) => parsed,
            Err(error) => {
                self.say(Tone::Bad, format!("{error:#}"));
                return;
            }
        };
        let request = CheckoutRequest {
            order_id,
            idempotency_key: None,
            lines: self
                .cart
                .iter()
                .map(|line| OrderLine {
                    sku: line.sku.clone(),
                    quantity: line.quantity,
                    unit_price_minor: line.unit_price_minor,
                })
                .collect(),
            currency: eur(),
            payment_ref,
            channel: Channel::Pos,
        };
        match client.checkout(&request) {
            Ok(receipt) => self.checked_out(client, receipt),
            Err(RetailError::Blocked(reason)) => self.say(Tone::Bad, format!("blocked: {reason}")),
            Err(error) => self.say(Tone::Bad, format!("checkout failed: {error}")),
        }
    }

    fn checked_out(&mut self, client: &Client, receipt: CheckoutReceipt) {
        let total = self.cart_total();
        let status = client
            .replica()
            .op_status(&receipt.op)
            .ok()
            .flatten()
            .unwrap_or(OpStatus::Pending);
        let sources: Vec<&str> = receipt
            .lines
            .iter()
            .map(|(_, _, source)| source.as_str())
            .collect();
        let text = format!(
            "{} recorded: {} ({}){}",
            receipt.order_id,
            format_money(total),
            sources.join(", "),
            if receipt.at_risk {
                " — AT RISK until the hub decides"
            } else if receipt.needs_hub && self.sync.link == Link::Online {
                " — waiting for the hub"
            } else {
                ""
            }
        );
        self.checkouts.insert(
            0,
            CheckoutRow {
                op: receipt.op,
                order_id: receipt.order_id.into(),
                lines: receipt.lines,
                total_minor: total,
                at_risk: receipt.at_risk,
                status,
            },
        );
        self.checkouts.truncate(CHECKOUTS_MAX);
        self.cart.clear();
        self.cart_selected = 0;
        self.say(Tone::Good, text);
    }

    fn toggle_link(&mut self, client: &Client) {
        self.switched_offline = !self.switched_offline;
        client.set_online(!self.switched_offline);
        if self.switched_offline {
            self.say(
                Tone::Info,
                "switched offline: sales use this till's allowances and the SKUs' offline policies",
            );
        } else {
            self.say(Tone::Info, "switching online: pending sales go to the hub");
        }
    }

    /// Resolves the selected open compensation task (or the first open one)
    /// as a refund.
    fn resolve_task(&mut self, client: &Client) {
        let chosen = self
            .tasks
            .get(self.task_selected)
            .filter(|task| task.state == omnisync_core::retail::orders::CompensationState::Open)
            .or_else(|| {
                self.tasks.iter().find(|task| {
                    task.state == omnisync_core::retail::orders::CompensationState::Open
                })
            })
            .cloned();
        let Some(task) = chosen else {
            self.say(Tone::Info, "no open compensation task");
            return;
        };
        match client
            .write(|store| store.resolve_compensation(&task.op, "refund", omnisync_core::now_ms()))
        {
            Ok(()) => self.say(
                Tone::Good,
                format!("refunded {}: compensation resolved", task.order_id),
            ),
            Err(error) => self.say(Tone::Bad, format!("resolving {}: {error}", task.order_id)),
        }
    }
}

fn step(index: usize, len: usize) -> usize {
    if index + 1 < len { index + 1 } else { index }
}

/// Products matching `query`: exact barcode, exact SKU, then name, brand
/// and category words (prefix match on the last word).
pub fn search(
    store: &Replica,
    store_id: &StoreId,
    query: &str,
    now_ms: u64,
) -> anyhow::Result<Vec<ProductRow>> {
    let query = query.trim();
    if query.is_empty() {
        return Ok(Vec::new());
    }
    let mut products = store.products_by_barcode(store_id, query)?;
    if let Ok(sku) = Sku::new(query)
        && let Some(product) = store.product(store_id, &sku)?
    {
        products.push(product);
    }
    products.extend(store.search_products(store_id, query, RESULTS_MAX)?);
    let mut rows: Vec<ProductRow> = Vec::new();
    for product in products {
        if rows.len() >= RESULTS_MAX || rows.iter().any(|row| row.sku.as_str() == product.sku) {
            continue;
        }
        let Ok(sku) = Sku::new(product.sku.clone()) else {
            continue;
        };
        let price_minor = store
            .price_in_force(store_id, &sku, Channel::Pos, now_ms)?
            .map(|price| price.money.amount_minor);
        let stock = store.stock(store_id, &sku)?;
        rows.push(ProductRow {
            name: product.name.unwrap_or_else(|| product.sku.clone()),
            barcode: product.barcode,
            sku,
            price_minor,
            stock,
        });
    }
    Ok(rows)
}

/// A new order id: this till, the first six hex digits of its replica (a
/// re-installed till with the same name gets new ids) and the next op
/// number, which never repeats on a replica.
fn next_order_id(client: &Client) -> anyhow::Result<String> {
    let store = client.replica();
    let device: String = store.device().as_str().chars().take(40).collect();
    let replica = store.replica().to_string();
    let seq = store.last_seq()? + 1;
    Ok(format!(
        "{device}-{}-{seq}",
        &replica[..6.min(replica.len())]
    ))
}
