//! Coarse events for apps: a push API (a foreign [`EventListener`] trait,
//! called on one delivery thread per store) and a pull API (a bounded queue
//! drained with `next_event` / `poll_events`).
//!
//! One dispatcher task per store turns the core's notices and status changes
//! into [`StoreEvent`]s. Listeners are called on a dedicated thread, never on
//! the runtime's workers, so a slow listener cannot stall sync; the JVM
//! attaches that one thread once instead of a new thread per callback.
//! Nothing here holds the store object, so a listener that captures the
//! store makes no cycle the Rust side cannot break: `remove_listener` and
//! `shutdown` drop every listener reference.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, mpsc};

use omnisync_core::client::{Client, Notice};
use omnisync_core::db::DecidedState;
use omnisync_core::vocab::intent::{Intent, LineSource};
use omnisync_core::vocab::record::describe_decision;
use omnisync_core::{DocId, OpId};
use tokio::sync::{Notify, broadcast};

use crate::ledger::order_no_of;
use crate::types::{Collection, SyncStatus};

/// Events kept for the pull API before the oldest are dropped.
pub const EVENT_QUEUE_MAX: usize = 256;

/// Where a change came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum ChangeOrigin {
    /// A write on this device.
    Local,
    /// Changes received from the hub.
    Remote,
}

/// A coarse event: enough to know what to refresh, never the data itself.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum StoreEvent {
    /// The sync status changed (link, pending, rejected, caught up, error).
    SyncStatusChanged {
        /// The new status.
        status: SyncStatus,
    },
    /// Documents changed; re-query the collections named.
    DocumentsChanged {
        /// Local write or remote changes.
        origin: ChangeOrigin,
        /// The kinds of data that changed, sorted, without duplicates.
        collections: Vec<Collection>,
    },
    /// The hub gave verdicts on local ops. Decided checkouts change this
    /// device's orders, allowances and compensations: re-query them.
    OpVerdicts {
        /// Ops newly acknowledged or decided.
        acknowledged: u64,
        /// Ops newly rejected (see `op_state` for the reason).
        rejected: u64,
        /// Intents newly decided (checkouts, stock commands, status changes).
        decided: Vec<DecidedOp>,
    },
    /// The pull queue overflowed and this many events were dropped; re-query
    /// everything shown.
    EventsDropped {
        /// How many events were lost.
        count: u64,
    },
}

/// The hub's decision on one of this device's intents.
///
/// Exists because the core's notice lists decisions as `(OpId, Decision,
/// DecidedState)` tuples, which UniFFI cannot carry; the decision is given
/// as text (the core's `Decision` nests its `Refusal`).
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct DecidedOp {
    /// The op (as returned by `checkout`, `receive_stock`, ...).
    pub op_id: OpId,
    /// The op's new state: confirmed, refused or compensation (`op_state`
    /// has the details).
    pub status: DecidedState,
    /// The decision, for logs and staff, e.g. `confirmed as order #12`.
    pub decision: String,
    /// A checkout's order number, if the decision gave one.
    pub order_no: Option<u64>,
}

/// Receives a store's events. Implement it in Kotlin, Swift or Python and
/// register it with `add_listener`. Calls come on a background thread, one
/// at a time, in order; return quickly (post to your UI thread).
#[uniffi::export(foreign)]
pub trait EventListener: Send + Sync {
    /// Called once per event.
    fn on_event(&self, event: StoreEvent);
}

/// The listeners and the pull queue of one store, shared by the store
/// object, the dispatcher task and the delivery thread.
pub(crate) struct EventHub {
    listeners: Mutex<Vec<(u64, Arc<dyn EventListener>)>>,
    next_listener_id: Mutex<u64>,
    queue: Mutex<PullQueue>,
    queued: Notify,
}

#[derive(Default)]
struct PullQueue {
    events: VecDeque<StoreEvent>,
    dropped: u64,
}

impl EventHub {
    /// An empty hub.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(EventHub {
            listeners: Mutex::new(Vec::new()),
            next_listener_id: Mutex::new(1),
            queue: Mutex::new(PullQueue::default()),
            queued: Notify::new(),
        })
    }

    /// Registers a listener; returns the id to remove it with.
    pub(crate) fn add_listener(&self, listener: Arc<dyn EventListener>) -> u64 {
        let mut next = lock(&self.next_listener_id);
        let id = *next;
        *next += 1;
        lock(&self.listeners).push((id, listener));
        id
    }

    /// Removes a listener; false if no listener had that id.
    pub(crate) fn remove_listener(&self, id: u64) -> bool {
        let mut listeners = lock(&self.listeners);
        let before = listeners.len();
        listeners.retain(|(listener_id, _)| *listener_id != id);
        listeners.len() != before
    }

    /// Drops every listener (on shutdown).
    pub(crate) fn clear_listeners(&self) {
        lock(&self.listeners).clear();
    }

    /// Takes every queued event (the pull API, non-blocking).
    pub(crate) fn drain(&self) -> Vec<StoreEvent> {
        let mut queue = lock(&self.queue);
        let mut events = Vec::with_capacity(queue.events.len() + 1);
        if queue.dropped > 0 {
            events.push(StoreEvent::EventsDropped {
                count: queue.dropped,
            });
            queue.dropped = 0;
        }
        events.extend(queue.events.drain(..));
        events
    }

    /// Takes the oldest queued event, if any.
    pub(crate) fn pop(&self) -> Option<StoreEvent> {
        let mut queue = lock(&self.queue);
        if queue.dropped > 0 {
            let count = queue.dropped;
            queue.dropped = 0;
            return Some(StoreEvent::EventsDropped { count });
        }
        queue.events.pop_front()
    }

    /// Woken whenever an event is queued (enable a `notified()` future
    /// before checking the queue, so no event slips between the two).
    pub(crate) fn queued(&self) -> &Notify {
        &self.queued
    }

    fn publish(&self, event: StoreEvent, delivery: &mpsc::Sender<StoreEvent>) {
        {
            let mut queue = lock(&self.queue);
            if queue.events.len() >= EVENT_QUEUE_MAX {
                queue.events.pop_front();
                queue.dropped += 1;
            }
            queue.events.push_back(event.clone());
        }
        self.queued.notify_waiters();
        // The delivery thread only ends when this sender is dropped.
        let _ = delivery.send(event);
    }

    fn deliver(&self, event: &StoreEvent) {
        // Call outside the lock so a listener may add or remove listeners.
        let listeners: Vec<Arc<dyn EventListener>> = lock(&self.listeners)
            .iter()
            .map(|(_, listener)| listener.clone())
            .collect();
        for listener in listeners {
            listener.on_event(event.clone());
        }
    }
}

/// Starts the dispatcher task (on the bindings' runtime) and the delivery
/// thread for a client. Abort the returned task to stop both: the delivery
/// thread ends when the task's channel sender is dropped.
pub(crate) fn start_dispatcher(
    runtime: &tokio::runtime::Runtime,
    client: &Client,
    hub: Arc<EventHub>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let (delivery, deliveries) = mpsc::channel::<StoreEvent>();
    let delivery_hub = hub.clone();
    std::thread::Builder::new()
        .name("omnisync-events".into())
        .spawn(move || {
            while let Ok(event) = deliveries.recv() {
                delivery_hub.deliver(&event);
            }
        })?;
    let mut notices = client.notices();
    let mut statuses = client.watch_status();
    let mut last_status = SyncStatus::from(&*statuses.borrow_and_update());
    let client = client.clone();
    Ok(runtime.spawn(async move {
        loop {
            tokio::select! {
                notice = notices.recv() => match notice {
                    Ok(notice) => {
                        if let Some(event) = event_of(&client, notice).await {
                            hub.publish(event, &delivery);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(count)) => {
                        hub.publish(StoreEvent::EventsDropped { count }, &delivery);
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                changed = statuses.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let status = SyncStatus::from(&*statuses.borrow_and_update());
                    if status.differs_meaningfully(&last_status) {
                        last_status = status.clone();
                        hub.publish(StoreEvent::SyncStatusChanged { status }, &delivery);
                    }
                }
            }
        }
    }))
}

/// The event for a notice; `None` when nothing an app shows changed (an
/// intent with no local effect, such as a stock command, until the hub's
/// verdict and records come back).
async fn event_of(client: &Client, notice: Notice) -> Option<StoreEvent> {
    let collections = |docs: &[DocId]| -> Vec<Collection> {
        docs.iter()
            .map(Collection::of)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    let changed = |origin, collections: Vec<Collection>| {
        (!collections.is_empty()).then_some(StoreEvent::DocumentsChanged {
            origin,
            collections,
        })
    };
    match notice {
        Notice::LocalCommit { op, docs }
            if docs.iter().all(omnisync_core::vocab::record::is_record_doc) =>
        {
            // An intent: it names only the hub records its decision will
            // change; what it changed locally follows from what it is.
            let client = client.clone();
            let intent = tokio::task::spawn_blocking(move || client.replica().op_intent(op.seq))
                .await
                .ok()?
                .ok()?;
            changed(ChangeOrigin::Local, intent_collections(intent.as_ref()))
        }
        Notice::LocalCommit { docs, .. } => changed(ChangeOrigin::Local, collections(&docs)),
        Notice::RemoteChanges { docs } => changed(ChangeOrigin::Remote, collections(&docs)),
        // The link coming back shows in the sync status (`link`, `hub`).
        Notice::Reconnected { .. } => None,
        Notice::Verdicts {
            acknowledged,
            rejected,
            decided,
            ..
        } => Some(StoreEvent::OpVerdicts {
            acknowledged: acknowledged as u64,
            rejected: rejected as u64,
            decided: decided
                .into_iter()
                .map(|(op, decision, status)| DecidedOp {
                    op_id: op,
                    status,
                    decision: describe_decision(&decision),
                    order_no: order_no_of(&decision),
                })
                .collect(),
        }),
    }
}

/// What recording an intent changed on this device: a checkout records a
/// pending order (and spends allowance), a release gives allowance back;
/// commands and status changes change nothing until the hub decides.
fn intent_collections(intent: Option<&Intent>) -> Vec<Collection> {
    match intent {
        Some(Intent::Checkout(checkout)) => {
            let mut collections = vec![Collection::Orders];
            if checkout
                .lines
                .iter()
                .any(|line| line.source == LineSource::Allowance)
            {
                collections.insert(0, Collection::Allowances);
            }
            collections
        }
        Some(Intent::ReleaseAllowance { .. }) => vec![Collection::Allowances],
        _ => Vec::new(),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section here leaves the data consistent, so a panic in
    // another holder does not make it unusable.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
