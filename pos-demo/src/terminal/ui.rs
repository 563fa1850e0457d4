//! Drawing: a pure function of [`App`]; nothing here reads the store.

use omnisync_core::client::Link;
use omnisync_core::db::OpStatus;
use omnisync_core::retail::stock::StockView;
use omnisync_core::vocab::intent::{LineSource, OfflinePolicy, StockMode};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, List, ListItem, ListState, Paragraph, Row, Table, TableState};

use super::app::{App, CheckoutRow, Focus, Mode, Tone};
use crate::demo::format_money;

/// Help line in command mode.
pub const KEYS_NORMAL: &str = "/ find  ↑↓ move  Tab panel  a add  +/- qty  d remove  x empty  c checkout  o offline/online  r refund task  q quit";
/// Help line while typing a search.
pub const KEYS_SEARCH: &str =
    "type a name, SKU or barcode  Enter add exact code / browse  ↑↓ move  Esc done";

/// Draws the whole screen.
pub fn render(frame: &mut Frame, app: &App) {
    let [title, status, search, middle, bottom, message, help] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Length(3),
        Constraint::Min(9),
        Constraint::Length(9),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    render_title(frame, title, app);
    render_status(frame, status, app);
    render_search(frame, search, app);
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(62), Constraint::Percentage(38)]).areas(middle);
    let [products, detail] =
        Layout::vertical([Constraint::Min(4), Constraint::Length(5)]).areas(left);
    let [cart, tasks] = Layout::vertical([Constraint::Min(4), Constraint::Length(8)]).areas(right);
    render_products(frame, products, app);
    render_stock(frame, detail, app);
    render_cart(frame, cart, app);
    render_tasks(frame, tasks, app);
    render_checkouts(frame, bottom, app);
    render_message(frame, message, app);
    let keys = match app.mode {
        Mode::Normal => KEYS_NORMAL,
        Mode::Search => KEYS_SEARCH,
    };
    frame.render_widget(
        Paragraph::new(keys).style(Style::default().fg(Color::DarkGray)),
        help,
    );
}

fn render_title(frame: &mut Frame, area: Rect, app: &App) {
    let line = Line::from(vec![
        Span::styled(
            " omnisync till ",
            Style::default().add_modifier(Modifier::BOLD | Modifier::REVERSED),
        ),
        Span::raw(format!(
            "  store {}  device {}  hub {}",
            app.store, app.device, app.hub_label
        )),
    ]);
    frame.render_widget(Paragraph::new(line), area);
}

/// `0.4 s`, `12 s`, `3 min`, `2 h`.
pub fn format_age(ms: u64) -> String {
    match ms {
        0..10_000 => format!("{:.1} s", ms as f64 / 1000.0),
        10_000..120_000 => format!("{} s", ms / 1000),
        120_000..7_200_000 => format!("{} min", ms / 60_000),
        _ => format!("{} h", ms / 3_600_000),
    }
}

/// The link as the status bar shows it.
pub fn link_text(app: &App) -> (String, Color) {
    match app.sync.link {
        Link::Online => match &app.sync.hub {
            // The hub of the session: after a failover, the one now serving.
            Some(hub) => (format!("● ONLINE via {}", truncate(hub, 48)), Color::Green),
            None => ("● ONLINE".to_owned(), Color::Green),
        },
        Link::Connecting => ("◌ CONNECTING".to_owned(), Color::Yellow),
        Link::Offline if app.switched_offline => (
            "○ OFFLINE (switched off, o to reconnect)".to_owned(),
            Color::Red,
        ),
        Link::Offline => {
            let why = app
                .sync
                .last_error
                .as_deref()
                .map(|error| format!(": {}", truncate(error, 48)))
                .unwrap_or_default();
            (format!("○ OFFLINE (hub unreachable{why})"), Color::Red)
        }
    }
}

fn render_status(frame: &mut Frame, area: Rect, app: &App) {
    let (link, color) = link_text(app);
    let sync = &app.sync;
    let oldest = if sync.pending == 0 {
        "—".to_owned()
    } else {
        format_age(sync.oldest_pending_age_ms)
    };
    let last_ack = sync.last_ack_ms.map_or_else(
        || "never".to_owned(),
        |at| format!("{} ago", format_age(app.now_ms.saturating_sub(at))),
    );
    let line = Line::from(vec![
        Span::styled(
            format!(" {link} "),
            Style::default().fg(color).add_modifier(Modifier::BOLD),
        ),
        Span::raw(format!(
            " pending {}  oldest pending {oldest}  last ack {last_ack}  open tasks {}",
            sync.pending, sync.compensations_open
        )),
        Span::styled(
            if sync.rejected > 0 {
                format!("  rejected {}", sync.rejected)
            } else {
                String::new()
            },
            Style::default().fg(Color::Red),
        ),
    ]);
    frame.render_widget(Paragraph::new(line), area);
}

fn panel(title: impl Into<String>, focused: bool) -> Block<'static> {
    let style = if focused {
        Style::default()
            .fg(Color::Cyan)
            .add_modifier(Modifier::BOLD)
    } else {
        Style::default()
    };
    Block::bordered().title(title.into()).border_style(style)
}

fn render_search(frame: &mut Frame, area: Rect, app: &App) {
    let searching = app.mode == Mode::Search;
    let mut spans = vec![Span::raw(format!(" {}", app.query))];
    if searching {
        spans.push(Span::styled(
            "_",
            Style::default().add_modifier(Modifier::SLOW_BLINK),
        ));
    }
    let title = if searching {
        " Find: name, SKU or barcode (Enter/Esc) "
    } else {
        " Find (/ or scan) "
    };
    frame.render_widget(
        Paragraph::new(Line::from(spans)).block(panel(title, searching)),
        area,
    );
}

/// The stock column of a result: `escrow · 6 here`, `hub decides`.
pub fn mode_text(stock: Option<&StockView>) -> String {
    match stock {
        None => "—".to_owned(),
        Some(view) if view.mode == StockMode::Strong => "strong · hub decides".to_owned(),
        Some(view) if view.allowance_left > 0 => {
            format!("escrow · {} left here", view.allowance_left)
        }
        Some(_) => "escrow · hub decides".to_owned(),
    }
}

fn render_products(frame: &mut Frame, area: Rect, app: &App) {
    let focused = app.mode == Mode::Normal && app.focus == Focus::Products;
    let title = format!(" Products ({}) ", app.results.len());
    if app.results.is_empty() {
        let hint = if app.query.trim().is_empty() {
            " press / and type a name, SKU or barcode"
        } else {
            " no product matches"
        };
        frame.render_widget(Paragraph::new(hint).block(panel(title, focused)), area);
        return;
    }
    let rows = app.results.iter().map(|row| {
        Row::new(vec![
            Cell::from(row.sku.as_str().to_owned()),
            Cell::from(row.name.clone()),
            Cell::from(
                row.price_minor
                    .map_or_else(|| "no price".to_owned(), format_money),
            ),
            Cell::from(
                row.stock
                    .as_ref()
                    .map_or_else(|| "—".to_owned(), |view| view.on_hand.to_string()),
            ),
            Cell::from(mode_text(row.stock.as_ref())),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(10),
            Constraint::Min(12),
            Constraint::Length(9),
            Constraint::Length(7),
            Constraint::Length(22),
        ],
    )
    .header(
        Row::new(vec!["SKU", "Name", "Price", "On hand", "Mode"])
            .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .block(panel(title, focused))
    .highlight_symbol("> ")
    .row_highlight_style(if focused {
        Style::default().add_modifier(Modifier::REVERSED)
    } else {
        Style::default().add_modifier(Modifier::BOLD)
    });
    let mut state = TableState::default().with_selected(Some(app.selected));
    frame.render_stateful_widget(table, area, &mut state);
}

/// What the stock panel says about one product's stock.
pub fn stock_lines(view: &StockView) -> [String; 2] {
    let mode = match view.mode {
        StockMode::Escrow => "escrow",
        StockMode::Strong => "strong",
    };
    let first = format!(
        "on hand {} · free at the hub {} · held by tills {} · {mode} (strong at or below {})",
        view.on_hand, view.free, view.held, view.policy.strong_at_or_below
    );
    let second = match view.mode {
        StockMode::Escrow if view.allowance_left > 0 => format!(
            "this till may sell {} more on its own, online or offline{}",
            view.allowance_left,
            if view.recalled {
                " (recalled by the hub)"
            } else {
                ""
            }
        ),
        StockMode::Escrow => {
            "no allowance here yet: the hub decides (an online sale earns one)".to_owned()
        }
        StockMode::Strong => format!(
            "low stock: every sale is decided at the hub; offline: {}",
            match view.policy.offline {
                OfflinePolicy::Block => "refused (block)",
                OfflinePolicy::Provisional => "accepted at risk (provisional)",
            }
        ),
    };
    [first, second]
}

fn render_stock(frame: &mut Frame, area: Rect, app: &App) {
    let Some(row) = app.results.get(app.selected) else {
        frame.render_widget(Paragraph::new("").block(panel(" Stock ", false)), area);
        return;
    };
    let mut lines = vec![Line::from(format!(
        "{} · {}{}",
        row.name,
        row.sku,
        row.barcode
            .as_deref()
            .map(|code| format!(" · barcode {code}"))
            .unwrap_or_default()
    ))];
    match &row.stock {
        Some(view) => lines.extend(stock_lines(view).map(Line::from)),
        None => lines.push(Line::from("no stock published by the hub yet")),
    }
    frame.render_widget(Paragraph::new(lines).block(panel(" Stock ", false)), area);
}

fn render_cart(frame: &mut Frame, area: Rect, app: &App) {
    let focused = app.mode == Mode::Normal && app.focus == Focus::Cart;
    let total = format!(
        " Total {} · c to check out ",
        format_money(app.cart_total())
    );
    let lines = app.cart.len();
    let plural = if lines == 1 { "" } else { "s" };
    let block = panel(format!(" Cart ({lines} line{plural}) "), focused).title_bottom(total);
    if app.cart.is_empty() {
        frame.render_widget(Paragraph::new(" empty").block(block), area);
        return;
    }
    let rows = app.cart.iter().map(|line| {
        Row::new(vec![
            Cell::from(format!("{}×", line.quantity)),
            Cell::from(line.name.clone()),
            Cell::from(format_money(
                line.unit_price_minor.saturating_mul(line.quantity as i64),
            )),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(5),
            Constraint::Min(8),
            Constraint::Length(10),
        ],
    )
    .block(block)
    .highlight_symbol("> ")
    .row_highlight_style(if focused {
        Style::default().add_modifier(Modifier::REVERSED)
    } else {
        Style::default()
    });
    let mut state = TableState::default().with_selected(Some(app.cart_selected));
    frame.render_stateful_widget(table, area, &mut state);
}

fn status_color(row: &CheckoutRow) -> Color {
    match row.status {
        OpStatus::Pending if row.at_risk => Color::Yellow,
        OpStatus::Pending => Color::Gray,
        OpStatus::Confirmed { .. } | OpStatus::Acknowledged { .. } => Color::Green,
        OpStatus::Compensation { .. } => Color::Yellow,
        OpStatus::Compensated { .. } => Color::Magenta,
        _ => Color::Red,
    }
}

/// A checkout's lines with their sources: `2× sku-002 allowance, 1× sku-009 hub`.
pub fn lines_text(lines: &[(omnisync_core::vocab::goods::Sku, u64, LineSource)]) -> String {
    lines
        .iter()
        .map(|(sku, quantity, source)| format!("{quantity}× {sku} {}", source.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn render_checkouts(frame: &mut Frame, area: Rect, app: &App) {
    let block = panel(" Checkouts (newest first) ", false);
    if app.checkouts.is_empty() {
        frame.render_widget(Paragraph::new(" none yet").block(block), area);
        return;
    }
    let rows = app.checkouts.iter().map(|row| {
        let mut lifecycle = row.lifecycle();
        if row.at_risk && matches!(row.status, OpStatus::Pending) {
            lifecycle.push_str(" (at risk)");
        }
        Row::new(vec![
            Cell::from(row.order_id.clone()),
            Cell::from(format_money(row.total_minor)),
            Cell::from(lifecycle).style(Style::default().fg(status_color(row))),
            Cell::from(lines_text(&row.lines)),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(18),
            Constraint::Length(9),
            Constraint::Fill(3),
            Constraint::Fill(2),
        ],
    )
    .header(
        Row::new(vec!["Order", "Total", "Lifecycle", "Lines (source)"])
            .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .block(block);
    frame.render_widget(table, area);
}

fn render_tasks(frame: &mut Frame, area: Rect, app: &App) {
    let focused = app.mode == Mode::Normal && app.focus == Focus::Tasks;
    let open = app
        .tasks
        .iter()
        .filter(|task| task.state == omnisync_core::retail::orders::CompensationState::Open)
        .count();
    let block = panel(
        format!(" Compensation tasks ({open} open) · r refund "),
        focused,
    );
    if app.tasks.is_empty() {
        frame.render_widget(Paragraph::new(" none").block(block), area);
        return;
    }
    let items: Vec<ListItem> = app
        .tasks
        .iter()
        .map(|task| {
            let short: Vec<String> = task
                .lines
                .iter()
                .map(|line| format!("{}× {}", line.quantity, line.sku))
                .collect();
            let number = task
                .order_no
                .map(|no| format!(" #{no}"))
                .unwrap_or_default();
            let (state, color) =
                if task.state == omnisync_core::retail::orders::CompensationState::Open {
                    ("OPEN".to_owned(), Color::Yellow)
                } else {
                    (
                        format!("resolved ({})", task.resolution.as_deref().unwrap_or("?")),
                        Color::Green,
                    )
                };
            ListItem::new(vec![
                Line::from(vec![
                    Span::styled(format!("{state} "), Style::default().fg(color)),
                    Span::raw(format!("{}{number}", task.order_id)),
                ]),
                Line::from(format!("  short {} — {}", short.join(", "), task.reason)),
            ])
        })
        .collect();
    let list = List::new(items)
        .block(block)
        .highlight_symbol("> ")
        .highlight_style(if focused {
            Style::default().add_modifier(Modifier::REVERSED)
        } else {
            Style::default()
        });
    let mut state = ListState::default().with_selected(Some(app.task_selected));
    frame.render_stateful_widget(list, area, &mut state);
}

fn render_message(frame: &mut Frame, area: Rect, app: &App) {
    let Some(message) = &app.message else {
        return;
    };
    let color = match message.tone {
        Tone::Info => Color::Reset,
        Tone::Good => Color::Green,
        Tone::Bad => Color::Red,
    };
    frame.render_widget(
        Paragraph::new(format!(" {}", message.text)).style(Style::default().fg(color)),
        area,
    );
}

fn truncate(text: &str, chars: usize) -> String {
    if text.chars().count() <= chars {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(chars.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}
