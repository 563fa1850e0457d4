//! Several hub processes on one PostgreSQL database: hearing what the
//! others commit.
//!
//! Every write transaction that appends changes sends `NOTIFY` on the log's
//! channel with the new head (delivered when it commits); a revocation sends
//! one on [`REVOCATIONS_CHANNEL`] with `tenant/device`. Each process keeps
//! one connection that `LISTEN`s on both and hands the heads to the
//! [`Fanout`], which reads the missing range from the log and broadcasts it
//! in order (its own commits are skipped there: they were broadcast by the
//! committer already).
//!
//! Notifications are not stored: one sent while this connection is down is
//! lost. So after every (re)connection, and every [`POLL_EVERY`] as a safety
//! net, the listener also reads the head itself. A head arriving twice costs
//! nothing (the fan-out keeps what it delivered).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_postgres::AsyncMessage;

use crate::fanout::Fanout;

/// The channel revocations are announced on (payload `tenant/device`).
pub const REVOCATIONS_CHANNEL: &str = "omnisync_revocations";
/// The listening connection's `application_name` (seen in `pg_stat_activity`).
pub const LISTENER_NAME: &str = "omnisync-hub-listener";
/// How often the head is read even without a notification.
pub const POLL_EVERY: Duration = Duration::from_secs(2);
/// First wait before connecting again; doubles up to [`RETRY_MAX`].
pub const RETRY_MIN: Duration = Duration::from_millis(200);
/// Longest wait between connection attempts.
pub const RETRY_MAX: Duration = Duration::from_secs(10);

/// Called with `(tenant, device)` when another process revoked a device.
pub type OnRevocation = dyn Fn(&str, &str) + Send + Sync;

/// What the listener hears, for whoever acts on it.
pub struct Listeners {
    /// Heads of the log committed by anyone (read the rest from the log).
    pub fanout: Arc<Fanout>,
    /// A device was revoked by another process: `(tenant, device)`.
    pub on_revocation: Box<OnRevocation>,
}

/// Listens on `url` until `shutdown` flips: log heads go to the fan-out (on
/// a blocking thread of their own, since reading a gap is a blocking
/// database read), revocations to `on_revocation`. `log_channel` is the
/// channel the log's writers notify; `head_sql` reads the head.
pub fn spawn(
    url: String,
    log_channel: &'static str,
    head_sql: &'static str,
    listeners: Listeners,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let (heads, heads_rx) = std::sync::mpsc::channel::<u64>();
    let fanout = listeners.fanout.clone();
    std::thread::Builder::new()
        .name("omnisync-fanout-reader".into())
        .spawn(move || publish_heads(&fanout, &heads_rx))
        // Failing to spawn one thread at start-up leaves nothing to run.
        .expect("spawning the fan-out reader thread");
    tokio::spawn(async move {
        let mut delay = RETRY_MIN;
        loop {
            let began = std::time::Instant::now();
            let session = listen_once(&url, log_channel, head_sql, &listeners, &heads);
            tokio::select! {
                ended = session => {
                    if began.elapsed() > RETRY_MAX {
                        // It had been listening: start over from the shortest wait.
                        delay = RETRY_MIN;
                    }
                    if let Err(error) = ended {
                        tracing::warn!(error, retry_in_ms = delay.as_millis() as u64, "listening for other hub processes' commits failed");
                    }
                }
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            delay = (delay * 2).min(RETRY_MAX);
        }
    })
}

/// Takes the newest head waiting and publishes it, one read at a time.
fn publish_heads(fanout: &Fanout, heads: &std::sync::mpsc::Receiver<u64>) {
    while let Ok(mut head) = heads.recv() {
        while let Ok(newer) = heads.try_recv() {
            head = head.max(newer);
        }
        fanout.publish_upto(head);
    }
}

/// One connection's life: LISTEN, read the head, then forward what comes.
/// Returns why it ended.
async fn listen_once(
    url: &str,
    log_channel: &str,
    head_sql: &str,
    listeners: &Listeners,
    heads: &std::sync::mpsc::Sender<u64>,
) -> Result<(), String> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|_| "the database URL does not parse".to_owned())?;
    config.application_name(LISTENER_NAME);
    config.connect_timeout(RETRY_MAX);
    let (client, mut connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|error| crate::storage::postgres::describe(&error))?;
    let (messages, mut received) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = stream.next().await {
            match message {
                Ok(message) => {
                    if messages.send(Ok(message)).is_err() {
                        return;
                    }
                }
                Err(error) => {
                    let _ = messages.send(Err(crate::storage::postgres::describe(&error)));
                    return;
                }
            }
        }
        let _ = messages.send(Err("the database closed the connection".to_owned()));
    });
    let result = async {
        client
            .batch_execute(&format!(
                "LISTEN {log_channel}; LISTEN {REVOCATIONS_CHANNEL}"
            ))
            .await
            .map_err(|error| crate::storage::postgres::describe(&error))?;
        tracing::info!("listening for other hub processes' commits");
        let mut poll = tokio::time::interval(POLL_EVERY);
        loop {
            tokio::select! {
                // The first tick is at once: the head right after LISTEN
                // covers whatever was committed while nobody listened.
                _ = poll.tick() => {
                    let row = client
                        .query_one(head_sql, &[])
                        .await
                        .map_err(|error| crate::storage::postgres::describe(&error))?;
                    let head: i64 = row.try_get(0).map_err(|error| error.to_string())?;
                    let _ = heads.send(head.max(0) as u64);
                }
                message = received.recv() => match message {
                    Some(Ok(AsyncMessage::Notification(note))) => {
                        handle_notification(note.channel(), note.payload(), log_channel, listeners, heads);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(error)) => return Err(error),
                    None => return Err("the database connection ended".to_owned()),
                },
            }
        }
    }
    .await;
    driver.abort();
    result
}

fn handle_notification(
    channel: &str,
    payload: &str,
    log_channel: &str,
    listeners: &Listeners,
    heads: &std::sync::mpsc::Sender<u64>,
) {
    if channel == log_channel {
        match payload.parse::<u64>() {
            Ok(head) => {
                let _ = heads.send(head);
            }
            Err(_) => tracing::warn!(payload, "ignoring a log notification that is not a head"),
        }
    } else if channel == REVOCATIONS_CHANNEL {
        match payload.split_once('/') {
            Some((tenant, device)) => (listeners.on_revocation)(tenant, device),
            None => tracing::warn!(payload, "ignoring a malformed revocation notification"),
        }
    }
}
