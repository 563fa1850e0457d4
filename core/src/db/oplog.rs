//! The operation log: every local change as an op with a lifecycle.
//!
//! An op is written in the same SQLite transaction as its document changes,
//! as `pending`. The hub's verdict moves it to `acknowledged` or to
//! `rejected` — the dead-letter lane, which keeps the op and its reason for
//! the app to show and never blocks the ops behind it.
//!
//! Nothing is ever deleted: every answered op keeps its body and the place
//! in the hub's log its answer put it at (`hub_seq`: the `Applied` ack's
//! number; for an intent, whose `Decided` ack carries none, the highest
//! cursor when it was recorded, a number at or below where the hub committed
//! it). That is what lets a device answer a hub restored from an older
//! backup: it probes the newest answered ops on every connect
//! ([`probe`]) and, when the hub lacks some, flags those it may lack for
//! upload again ([`requeue_for_restored_hub`]) without touching their status.

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};

use crate::db::{DbError, DecidedState, Hooks};
use crate::protocol::message::{Ack, AckOutcome, Op, OpBody, PROBE_OPS_MAX, ProbedOp, RejectCode};
use crate::vocab::codec;
use crate::vocab::ids::{DocId, OpId, ReplicaId};
use crate::vocab::intent::{Decision, Intent, Refusal};

/// Where an op is in its life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum OpStatus {
    /// Durable on this device, not yet at the hub.
    Pending,
    /// Durable at the hub.
    Acknowledged {
        /// When the acknowledgement was recorded, ms since the epoch.
        acked_ms: u64,
    },
    /// Refused by the hub; kept in the dead-letter lane.
    Rejected {
        /// The hub's reason code.
        code: RejectCode,
        /// The hub's explanation.
        detail: String,
    },
    /// An intent the hub accepted: a confirmed checkout (with its order
    /// number) or an applied command.
    Confirmed {
        /// The hub's decision.
        decision: Decision,
    },
    /// An intent the hub refused for a business reason (out of stock, price
    /// changed, duplicate, version conflict); nothing was sold or changed.
    Refused {
        /// Why.
        refusal: Refusal,
    },
    /// A provisional sale the hub could not (fully) cover: a compensation
    /// task is open (see `Replica::compensations`).
    Compensation {
        /// The hub's decision.
        decision: Decision,
    },
    /// The compensation task was resolved.
    Compensated {
        /// The hub's decision.
        decision: Decision,
    },
}

impl OpStatus {
    /// Stable text form (`pending`, `acknowledged`, `rejected`, `confirmed`,
    /// `refused`, `compensation`, `compensated`).
    pub fn as_str(&self) -> &'static str {
        match self {
            OpStatus::Pending => "pending",
            OpStatus::Acknowledged { .. } => "acknowledged",
            OpStatus::Rejected { .. } => "rejected",
            OpStatus::Confirmed { .. } => "confirmed",
            OpStatus::Refused { .. } => "refused",
            OpStatus::Compensation { .. } => "compensation",
            OpStatus::Compensated { .. } => "compensated",
        }
    }
}

/// An op in the dead-letter lane.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    /// The op.
    pub op: OpId,
    /// The documents it touched.
    pub docs: Vec<DocId>,
    /// The hub's reason code.
    pub code: RejectCode,
    /// The hub's explanation.
    pub detail: String,
}

/// Counts of the op log for sync status screens and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpLogStats {
    /// Ops waiting for the hub (including answered ops to upload again to a
    /// hub restored from an older backup).
    pub pending: u64,
    /// Age of the oldest pending op, in ms (0 when none).
    pub oldest_pending_age_ms: u64,
    /// Ops the hub has acknowledged.
    pub acknowledged: u64,
    /// Ops in the dead-letter lane.
    pub rejected: u64,
    /// Intents the hub confirmed.
    pub confirmed: u64,
    /// Intents the hub refused.
    pub refused: u64,
    /// Open compensation tasks.
    pub compensations_open: u64,
    /// When the last acknowledgement was recorded, if ever.
    pub last_ack_ms: Option<u64>,
}

/// What recording a batch of acks changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AckSummary {
    /// Ops newly acknowledged.
    pub acknowledged: usize,
    /// Ops newly moved to the dead-letter lane.
    pub rejected: usize,
    /// Intents newly decided: (op, decision, new status).
    pub decided: Vec<(OpId, Decision, DecidedState)>,
}

pub(crate) fn insert(
    tx: &Transaction<'_>,
    seq: u64,
    created_ms: u64,
    body: &OpBody,
    docs: &str,
) -> Result<(), DbError> {
    let body = body.encode_stored();
    // hub_seq starts as the highest cursor: the hub commits the op above it.
    // An `Applied` ack replaces it with the op's own number.
    tx.prepare_cached(
        "INSERT INTO ops (seq, created_ms, status, body, docs, hub_seq)
         VALUES (?1, ?2, 'pending', ?3, ?4, (SELECT COALESCE(MAX(cursor), 0) FROM subscriptions))",
    )?
    .execute(params![seq as i64, created_ms as i64, body, docs])?;
    Ok(())
}

pub(crate) fn last_seq(db: &Connection) -> Result<u64, DbError> {
    let seq: Option<i64> = db.query_row("SELECT MAX(seq) FROM ops", [], |row| row.get(0))?;
    Ok(seq.unwrap_or(0) as u64)
}

/// Ops to push with a sequence number above `after_seq`, oldest first: the
/// pending ones and the answered ones flagged for a restored hub.
pub(crate) fn pending(
    db: &Connection,
    replica: ReplicaId,
    after_seq: u64,
    limit: usize,
) -> Result<Vec<Op>, DbError> {
    let mut statement = db.prepare_cached(
        "SELECT seq, created_ms, body FROM ops WHERE status = 'pending' AND seq > ?1
         UNION ALL
         SELECT seq, created_ms, body FROM ops WHERE reupload = 1 AND seq > ?1
         ORDER BY seq LIMIT ?2",
    )?;
    let mut rows = statement.query(params![after_seq as i64, limit as i64])?;
    let mut ops = Vec::new();
    while let Some(row) = rows.next()? {
        let seq: i64 = row.get(0)?;
        let created_ms: i64 = row.get(1)?;
        let body: Vec<u8> = row.get(2)?;
        let body = OpBody::decode_stored(&body).map_err(|error| DbError::Corrupt {
            doc: format!("op {seq}"),
            detail: error.to_string(),
        })?;
        ops.push(Op {
            id: OpId {
                replica,
                seq: seq as u64,
            },
            created_ms: created_ms as u64,
            body,
        });
    }
    Ok(ops)
}

/// Records the hub's verdicts. Acks for other replicas or unknown ops are ignored.
pub(crate) fn record_acks(
    tx: &Transaction<'_>,
    hooks: &dyn Hooks,
    replica: ReplicaId,
    acks: &[Ack],
    now_ms: u64,
) -> Result<AckSummary, DbError> {
    let mut summary = AckSummary::default();
    for ack in acks.iter().filter(|ack| ack.op.replica == replica) {
        let seq = ack.op.seq as i64;
        let changed = match &ack.outcome {
            AckOutcome::Applied { hub_seq } => {
                let changed = tx.execute(
                    "UPDATE ops SET status = 'acknowledged', acked_ms = ?2, hub_seq = ?3
                     WHERE seq = ?1 AND status = 'pending'",
                    params![seq, now_ms as i64, *hub_seq as i64],
                )?;
                summary.acknowledged += changed;
                if changed == 0 {
                    reupload_answered(tx, hooks, ack, now_ms)?;
                }
                changed
            }
            AckOutcome::Rejected { code, detail } => {
                let changed = tx.execute(
                    "UPDATE ops SET status = 'rejected', acked_ms = ?2, reject_code = ?3, reject_detail = ?4
                     WHERE seq = ?1 AND status = 'pending'",
                    params![seq, now_ms as i64, code.as_str(), detail],
                )?;
                summary.rejected += changed;
                if changed == 0 {
                    reupload_answered(tx, hooks, ack, now_ms)?;
                }
                changed
            }
            AckOutcome::Decided(decision) => {
                let Some(intent) = intent_pending(tx, ack.op.seq)? else {
                    // Decided before (an upload again, or a repeated ack),
                    // or not an intent of ours.
                    reupload_answered(tx, hooks, ack, now_ms)?;
                    continue;
                };
                let state = hooks.intent_decided(tx, ack.op.seq, &intent, decision, now_ms)?;
                let status = state.as_str();
                let blob = codec::encode_stored(decision);
                let changed = tx.execute(
                    "UPDATE ops SET status = ?2, acked_ms = ?3, decision = ?4 WHERE seq = ?1 AND status = 'pending'",
                    params![seq, status, now_ms as i64, blob],
                )?;
                summary.acknowledged += changed;
                summary.decided.push((ack.op, decision.clone(), state));
                changed
            }
            AckOutcome::Unknown(unknown) => {
                // A newer hub's answer: the op stays pending (and is sent
                // again on the next connection) until this device updates.
                tracing::warn!(op = %ack.op, kind = %unknown.kind, "unknown outcome; op left pending");
                continue;
            }
        };
        if changed > 0 {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('last_ack_ms', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = ?1",
                [now_ms.to_string()],
            )?;
        }
    }
    Ok(summary)
}

/// Records a restored hub's answer to an op uploaded again: clears its flag
/// and takes the hub's new number for its changes. The first answer stands
/// on the device: a different decision is handed to
/// [`Hooks::intent_redecided`], a rejection of an op the hub once accepted
/// is logged. Does nothing for an op not flagged (a repeated ack).
fn reupload_answered(
    tx: &Transaction<'_>,
    hooks: &dyn Hooks,
    ack: &Ack,
    now_ms: u64,
) -> Result<(), DbError> {
    let seq = ack.op.seq;
    let row: Option<(Vec<u8>, Option<Vec<u8>>)> = tx
        .prepare_cached("SELECT body, decision FROM ops WHERE seq = ?1 AND reupload = 1")?
        .query_row([seq as i64], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let Some((body, first)) = row else {
        return Ok(());
    };
    match &ack.outcome {
        AckOutcome::Applied { hub_seq } => {
            tx.prepare_cached("UPDATE ops SET reupload = 0, hub_seq = ?2 WHERE seq = ?1")?
                .execute(params![seq as i64, *hub_seq as i64])?;
            return Ok(());
        }
        AckOutcome::Rejected { code, detail } => {
            tracing::warn!(op = %ack.op, %code, %detail, "the restored hub rejected an op it had accepted before; the first answer stands on this device");
        }
        AckOutcome::Decided(decision) => {
            let first = first
                .map(|blob| {
                    codec::decode_stored::<Decision>(&blob).map_err(|error| DbError::Corrupt {
                        doc: format!("op {seq}"),
                        detail: format!("stored decision: {error}"),
                    })
                })
                .transpose()?;
            if let (Some(first), Some(intent)) = (first, decode_intent(seq, Some(body))?)
                && first != *decision
            {
                tracing::warn!(op = %ack.op, ?first, later = ?decision, "the restored hub decided an intent differently; the first answer stands on this device");
                hooks.intent_redecided(tx, seq, &intent, &first, decision, now_ms)?;
            }
        }
        AckOutcome::Unknown(_) => return Ok(()), // Stays flagged, as a pending op stays pending.
    }
    tx.prepare_cached("UPDATE ops SET reupload = 0 WHERE seq = ?1")?
        .execute([seq as i64])?;
    Ok(())
}

/// The probe of a connect: up to [`PROBE_OPS_MAX`] answered ops, the
/// newest, the 2nd, 4th, 8th, … newest, each with the place in the hub's log
/// its answer put it at. Ops flagged for upload again are left out: their
/// answer is still to come, and so are ops at or below `floor`.
pub(crate) fn probe(
    db: &Connection,
    replica: ReplicaId,
    floor: u64,
) -> Result<Vec<ProbedOp>, DbError> {
    let mut statement = db.prepare_cached(
        "SELECT seq, COALESCE(hub_seq, 0) FROM ops
         WHERE status NOT IN ('pending', 'rejected') AND reupload = 0 AND seq > ?2
         ORDER BY seq DESC LIMIT 1 OFFSET ?1",
    )?;
    let mut probe = Vec::with_capacity(PROBE_OPS_MAX);
    for rank in 0..PROBE_OPS_MAX {
        let offset = (1_i64 << rank) - 1;
        let Some((seq, hub_seq)) = statement
            .query_row(params![offset, floor as i64], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
            })
            .optional()?
        else {
            break;
        };
        probe.push(ProbedOp {
            op: OpId {
                replica,
                seq: seq as u64,
            },
            hub_seq: hub_seq.max(0) as u64,
        });
    }
    Ok(probe)
}

/// Answers a hub that lacks acknowledged ops of this device (see
/// `protocol::device_session::HubBehind`): lowers every cursor to
/// `known_through` (K) and flags for upload again every answered op the hub
/// may lack: those above `known_op_seq` and those placed above K, if above
/// `floor` (ops answered by an earlier hub log). Their place becomes at most
/// K until the hub answers again. Returns how many ops are flagged.
pub(crate) fn requeue_for_restored_hub(
    tx: &Transaction<'_>,
    known_through: u64,
    known_op_seq: u64,
    floor: u64,
) -> Result<usize, DbError> {
    let (k, p) = (known_through as i64, known_op_seq as i64);
    tx.execute(
        "UPDATE subscriptions SET cursor = ?1 WHERE cursor > ?1",
        [k],
    )?;
    tx.execute(
        "UPDATE ops SET reupload = 1, hub_seq = MIN(COALESCE(hub_seq, 0), ?1)
         WHERE status NOT IN ('pending', 'rejected') AND reupload = 0 AND seq > ?3
           AND (seq > ?2 OR COALESCE(hub_seq, 0) > ?1)",
        params![k, p, floor as i64],
    )?;
    // A pending op recorded with a cursor the restored hub never reached.
    tx.execute(
        "UPDATE ops SET hub_seq = ?1 WHERE status = 'pending' AND hub_seq > ?1",
        [k],
    )?;
    let flagged: i64 = tx.query_row("SELECT COUNT(*) FROM ops WHERE reupload = 1", [], |row| {
        row.get(0)
    })?;
    Ok(flagged as usize)
}

/// The intent of a pending op, if the op is one.
fn intent_pending(tx: &Transaction<'_>, seq: u64) -> Result<Option<Intent>, DbError> {
    let body: Option<Vec<u8>> = tx
        .prepare_cached("SELECT body FROM ops WHERE seq = ?1 AND status = 'pending'")?
        .query_row([seq as i64], |row| row.get(0))
        .optional()?;
    decode_intent(seq, body)
}

fn decode_intent(seq: u64, body: Option<Vec<u8>>) -> Result<Option<Intent>, DbError> {
    let Some(body) = body else { return Ok(None) };
    let body = OpBody::decode_stored(&body).map_err(|error| DbError::Corrupt {
        doc: format!("op {seq}"),
        detail: error.to_string(),
    })?;
    Ok(match body {
        OpBody::Intent(intent) => Some(intent),
        OpBody::Changes(_) | OpBody::Unknown(_) => None,
    })
}

/// The intent an op carries, if it is one.
pub(crate) fn intent(db: &Connection, seq: u64) -> Result<Option<Intent>, DbError> {
    let body: Option<Vec<u8>> = db
        .prepare_cached("SELECT body FROM ops WHERE seq = ?1")?
        .query_row([seq as i64], |row| row.get(0))
        .optional()?;
    decode_intent(seq, body)
}

pub(crate) fn status(db: &Connection, seq: u64) -> Result<Option<OpStatus>, DbError> {
    let row = db
        .query_row(
            "SELECT status, acked_ms, reject_code, reject_detail, decision FROM ops WHERE seq = ?1",
            [seq as i64],
            |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, Option<i64>>(1)?,
                    row.get::<_, Option<String>>(2)?,
                    row.get::<_, Option<String>>(3)?,
                    row.get::<_, Option<Vec<u8>>>(4)?,
                ))
            },
        )
        .optional()?;
    let Some((status, acked_ms, code, detail, decision)) = row else {
        return Ok(None);
    };
    let decision = match decision {
        Some(blob) => {
            Some(
                codec::decode_stored::<Decision>(&blob).map_err(|error| DbError::Corrupt {
                    doc: format!("op {seq}"),
                    detail: format!("stored decision: {error}"),
                })?,
            )
        }
        None => None,
    };
    Ok(Some(match (status.as_str(), decision) {
        ("acknowledged", _) => OpStatus::Acknowledged {
            acked_ms: acked_ms.unwrap_or(0) as u64,
        },
        ("rejected", _) => OpStatus::Rejected {
            code: parse_reject_code(seq, code.as_deref())?,
            detail: detail.unwrap_or_default(),
        },
        ("refused", Some(Decision::Refused(refusal))) => OpStatus::Refused { refusal },
        ("confirmed", Some(decision)) => OpStatus::Confirmed { decision },
        ("compensation", Some(decision)) => OpStatus::Compensation { decision },
        ("compensated", Some(decision)) => OpStatus::Compensated { decision },
        ("pending", _) => OpStatus::Pending,
        (other, _) => {
            return Err(DbError::Corrupt {
                doc: format!("op {seq}"),
                detail: format!("status {other} without its decision"),
            });
        }
    }))
}

/// The op log's counts. `full` also counts acknowledged, confirmed and
/// refused ops, which grow with the log; the sync status needs only the
/// small lanes (pending, rejected, open compensations), which are index
/// ranges of their own and stay cheap however long the log grows.
pub(crate) fn stats(db: &Connection, now_ms: u64, full: bool) -> Result<OpLogStats, DbError> {
    let (pending, oldest): (i64, Option<i64>) = db
        .prepare_cached(
            "SELECT COUNT(*), MIN(created_ms) FROM ops WHERE status = 'pending' OR reupload = 1",
        )?
        .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))?;
    let count = |status: &str| -> Result<u64, DbError> {
        Ok(db
            .prepare_cached("SELECT COUNT(*) FROM ops WHERE status = ?1")?
            .query_row([status], |row| row.get::<_, i64>(0))? as u64)
    };
    let rejected = count("rejected")?;
    let (acknowledged, confirmed, refused) = if full {
        (
            count("acknowledged")?,
            count(DecidedState::Confirmed.as_str())?,
            count(DecidedState::Refused.as_str())?,
        )
    } else {
        (0, 0, 0)
    };
    let compensations_open: i64 = db
        .prepare_cached("SELECT COUNT(*) FROM compensations WHERE state = 'open'")?
        .query_row([], |row| row.get(0))?;
    let last_ack_ms: Option<String> = db
        .prepare_cached("SELECT value FROM meta WHERE key = 'last_ack_ms'")?
        .query_row([], |row| row.get(0))
        .optional()?;
    Ok(OpLogStats {
        pending: pending as u64,
        oldest_pending_age_ms: oldest.map_or(0, |created| now_ms.saturating_sub(created as u64)),
        acknowledged,
        rejected,
        confirmed,
        refused,
        compensations_open: compensations_open as u64,
        last_ack_ms: last_ack_ms.and_then(|value| value.parse().ok()),
    })
}

/// The stored reject code of a rejected op; a missing or unknown code is
/// corrupt data, never a default.
fn parse_reject_code(seq: u64, text: Option<&str>) -> Result<RejectCode, DbError> {
    text.and_then(RejectCode::parse)
        .ok_or_else(|| DbError::Corrupt {
            doc: format!("op {seq}"),
            detail: format!("reject code {text:?} is not one this device knows"),
        })
}

pub(crate) fn dead_letters(
    db: &Connection,
    replica: ReplicaId,
) -> Result<Vec<DeadLetter>, DbError> {
    let mut statement = db.prepare(
        "SELECT seq, docs, reject_code, reject_detail FROM ops WHERE status = 'rejected' ORDER BY seq",
    )?;
    let rows = statement
        .query_map([], |row| {
            Ok((
                row.get::<_, i64>(0)? as u64,
                row.get::<_, String>(1)?,
                row.get::<_, Option<String>>(2)?,
                row.get::<_, Option<String>>(3)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(|(seq, docs, code, detail)| {
            Ok(DeadLetter {
                op: OpId { replica, seq },
                docs: docs
                    .split_whitespace()
                    .map(|doc| {
                        DocId::new(doc).map_err(|error| DbError::Corrupt {
                            doc: format!("op {seq}"),
                            detail: format!("document list: {error}"),
                        })
                    })
                    .collect::<Result<_, _>>()?,
                code: parse_reject_code(seq, code.as_deref())?,
                detail: detail.unwrap_or_default(),
            })
        })
        .collect()
}
