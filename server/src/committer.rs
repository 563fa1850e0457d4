//! Group commit: one thread owns the hub log's writer, takes every op that
//! is waiting, commits them in one durable transaction, then answers each
//! connection and fans the new changes out.
//!
//! Architecture invariant: acks and fan-out happen strictly after the commit
//! returned, so nothing a device hears about can be lost by a crash.

use std::sync::Arc;
use std::time::Instant;

use omnisync_core::protocol::message::{Ack, OpBody};
use omnisync_hub_engine::hub_session::{CommittedChanges, IncomingOp};
use omnisync_hub_engine::log::HubLog;
use tokio::sync::mpsc;

use crate::fanout::Fanout;

use crate::metrics::Metrics;

/// Requests waiting for the committer before senders have to wait.
pub const COMMIT_QUEUE_MAX: usize = 4096;
/// Most ops in one group commit by default.
pub const GROUP_OPS_MAX: usize = 2048;
/// How often the authority's periodic work (recalling idle allowances) runs.
pub const MAINTAIN_EVERY: std::time::Duration = std::time::Duration::from_secs(15);

/// While compaction has work and ops keep coming, one compaction step runs
/// after a group commit at most this often; an idle committer runs them
/// back to back, each in a short transaction of its own.
pub const COMPACT_BUSY_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Failpoint for crash tests (`tests/tests/checkout_crash.rs`). When this
/// environment variable is `crash-after-commit` as the committer starts, the
/// hub calls `std::process::abort()` right after the first group commit that
/// holds at least one intent returned Ok, before any reply or fan-out is sent:
/// the decision is durable and nobody has heard of it. Read once at start;
/// off by default, and then it costs one untaken branch per group.
pub const FAILPOINT_ENV: &str = "OMNISYNC_FAILPOINT";

/// What a connection gets back: the acks for one request.
pub type AckSender = mpsc::UnboundedSender<Result<Vec<Ack>, String>>;

/// A batch of ops from one connection.
pub struct CommitRequest {
    /// The judged ops.
    pub ops: Vec<IncomingOp>,
    /// Where to send the acks.
    pub reply: AckSender,
    /// When the ops arrived, for the ack latency histogram.
    pub received: Instant,
}

/// Handle for submitting ops to the committer thread.
#[derive(Clone)]
pub struct Committer {
    queue: mpsc::Sender<CommitRequest>,
}

impl Committer {
    /// Starts the committer thread. `group_ops_max` of 1 commits each op on
    /// its own (the baseline the benchmarks compare group commit against).
    pub fn start(
        mut log: Box<dyn HubLog + Send>,
        fanout: Arc<Fanout>,
        metrics: Arc<Metrics>,
        group_ops_max: usize,
    ) -> (Self, std::thread::JoinHandle<()>) {
        let (queue, mut receiver) = mpsc::channel::<CommitRequest>(COMMIT_QUEUE_MAX);
        let group_ops_max = group_ops_max.max(1);
        let crash_after_commit =
            std::env::var(FAILPOINT_ENV).is_ok_and(|value| value == "crash-after-commit");
        let thread = std::thread::Builder::new()
            .name("omnisync-committer".into())
            .spawn(move || {
                let mut maintained = Instant::now();
                let mut compacted = Instant::now();
                // True while compaction has work: look for it at start.
                let mut compacting = true;
                loop {
                    let first = if compacting {
                        match receiver.try_recv() {
                            Ok(request) => request,
                            Err(mpsc::error::TryRecvError::Empty) => {
                                compacting = compact_step(log.as_mut(), &metrics);
                                compacted = Instant::now();
                                continue;
                            }
                            Err(mpsc::error::TryRecvError::Disconnected) => break,
                        }
                    } else {
                        match receiver.blocking_recv() {
                            Some(request) => request,
                            None => break,
                        }
                    };
                    let mut requests = vec![first];
                    let mut op_count = requests[0].ops.len();
                    while op_count < group_ops_max {
                        match receiver.try_recv() {
                            Ok(request) => {
                                op_count += request.ops.len();
                                requests.push(request);
                            }
                            Err(_) => break,
                        }
                    }
                    commit_group(
                        log.as_mut(),
                        requests,
                        &fanout,
                        &metrics,
                        group_ops_max,
                        crash_after_commit,
                    );
                    if compacting && compacted.elapsed() >= COMPACT_BUSY_EVERY {
                        compacting = compact_step(log.as_mut(), &metrics);
                        compacted = Instant::now();
                    }
                    if maintained.elapsed() >= MAINTAIN_EVERY {
                        maintained = Instant::now();
                        // A new round of compaction: examine every set again.
                        compacting = true;
                        match log.maintain(omnisync_core::now_ms()) {
                            Ok(committed) => fanout.publish_local(committed),
                            Err(error) => {
                                tracing::error!(%error, "ledger maintenance failed; retried later")
                            }
                        }
                    }
                }
                tracing::debug!("committer drained and stopped");
            })
            // Failing to spawn one thread at start-up leaves nothing to run.
            .expect("spawning the committer thread");
        (Self { queue }, thread)
    }

    /// Wakes the committer for its periodic work (an empty request).
    pub fn tick(&self) {
        let (reply, _) = mpsc::unbounded_channel();
        let _ = self.queue.try_send(CommitRequest {
            ops: Vec::new(),
            reply,
            received: Instant::now(),
        });
    }

    /// Queues ops; waits only if the committer is [`COMMIT_QUEUE_MAX`] requests behind.
    pub async fn submit(&self, request: CommitRequest) -> Result<(), String> {
        self.queue
            .send(request)
            .await
            .map_err(|_| "committer stopped".to_owned())
    }
}

/// Runs one compaction step; returns whether more work waits. Compaction
/// publishes nothing (the documents stay the same); a failure is logged and
/// retried next round.
fn compact_step(log: &mut dyn HubLog, metrics: &Metrics) -> bool {
    match log.compact(omnisync_core::now_ms()) {
        Ok(step) => {
            use std::sync::atomic::Ordering::Relaxed;
            metrics
                .compacted_snapshots
                .fetch_add(step.snapshots as u64, Relaxed);
            metrics.compacted_changes.fetch_add(step.deleted, Relaxed);
            if let Some((set, point)) = &step.compacted {
                tracing::info!(%set, point, snapshots = step.snapshots, "set compacted into snapshots");
            }
            step.more
        }
        Err(error) => {
            tracing::error!(%error, "compaction step failed; retried next round");
            false
        }
    }
}

fn commit_group(
    log: &mut dyn HubLog,
    requests: Vec<CommitRequest>,
    fanout: &Fanout,
    metrics: &Metrics,
    group_ops_max: usize,
    crash_after_commit: bool,
) {
    let lens: Vec<usize> = requests.iter().map(|request| request.ops.len()).collect();
    let mut all_ops = Vec::with_capacity(lens.iter().sum());
    let mut replies = Vec::with_capacity(requests.len());
    for request in requests {
        all_ops.extend(request.ops);
        replies.push((request.reply, request.received));
    }
    let mut acks = Vec::with_capacity(all_ops.len());
    let mut committed = CommittedChanges::default();
    let mut failure = None;
    let mut remaining = all_ops.into_iter().peekable();
    while remaining.peek().is_some() {
        let group: Vec<IncomingOp> = remaining.by_ref().take(group_ops_max).collect();
        let group_len = group.len();
        let crash = crash_after_commit
            && group
                .iter()
                .any(|incoming| matches!(incoming.op.body, OpBody::Intent(_)));
        let started = Instant::now();
        match log.apply(group) {
            Ok(applied) => {
                if crash {
                    // The failpoint (see FAILPOINT_ENV): durable, unanswered.
                    eprintln!("{FAILPOINT_ENV}=crash-after-commit: aborting after the commit");
                    std::process::abort();
                }
                metrics
                    .commits
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                metrics.commit_batch_ops.observe(group_len as f64);
                metrics
                    .commit_seconds
                    .observe(started.elapsed().as_secs_f64());
                use std::sync::atomic::Ordering::Relaxed;
                metrics
                    .intents_decided
                    .fetch_add(applied.decided as u64, Relaxed);
                metrics
                    .ops_applied
                    .fetch_add(applied.stored as u64, Relaxed);
                metrics
                    .ops_rejected
                    .fetch_add(applied.rejected as u64, Relaxed);
                metrics
                    .ops_duplicate
                    .fetch_add(applied.duplicates as u64, Relaxed);
                acks.extend(applied.acks);
                for (set, changes) in applied.committed.by_set {
                    committed.by_set.entry(set).or_default().extend(changes);
                }
            }
            Err(error) => {
                tracing::error!(%error, "group commit failed; ops stay pending on their devices");
                failure = Some(error.to_string());
                break;
            }
        }
    }
    fanout.publish_local(committed);
    let mut acks = acks.into_iter();
    for ((reply, received), len) in replies.into_iter().zip(lens) {
        let answer = match &failure {
            None => {
                metrics
                    .ack_latency_seconds
                    .observe(received.elapsed().as_secs_f64());
                Ok(acks.by_ref().take(len).collect())
            }
            // Acks already earned before the failure are still durable; the
            // device retries the rest and gets the stored answers.
            Some(error) => Err(error.clone()),
        };
        // A connection that went away will re-send; its ops are durable.
        let _ = reply.send(answer);
    }
}
