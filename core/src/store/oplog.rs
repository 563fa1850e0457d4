//! The operation log: every local change as an op with a lifecycle.
//!
//! An op is written in the same SQLite transaction as its document changes,
//! as `pending`. The hub's verdict moves it to `acknowledged` or to
//! `rejected` — the dead-letter lane, which keeps the op and its reason for
//! the app to show and never blocks the ops behind it.

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};

use crate::ids::{OpId, ReplicaId};
use crate::protocol::message::{Ack, AckOutcome, Op, OpBody};
use crate::store::StoreError;

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
        code: String,
        /// The hub's explanation.
        detail: String,
    },
}

/// An op in the dead-letter lane.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    /// The op.
    pub op: OpId,
    /// The documents it touched.
    pub docs: Vec<String>,
    /// The hub's reason code.
    pub code: String,
    /// The hub's explanation.
    pub detail: String,
}

/// Counts of the op log for sync status screens and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpLogStats {
    /// Ops waiting for the hub.
    pub pending: u64,
    /// Age of the oldest pending op, in ms (0 when none).
    pub oldest_pending_age_ms: u64,
    /// Ops the hub has acknowledged.
    pub acknowledged: u64,
    /// Ops in the dead-letter lane.
    pub rejected: u64,
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
}

pub(crate) fn insert(
    tx: &Transaction<'_>,
    seq: u64,
    created_ms: u64,
    body: &OpBody,
    docs: &str,
) -> Result<(), StoreError> {
    let body = postcard::to_stdvec(body).map_err(|error| StoreError::Encode(error.to_string()))?;
    tx.execute(
        "INSERT INTO ops (seq, created_ms, status, body, docs) VALUES (?1, ?2, 'pending', ?3, ?4)",
        params![seq as i64, created_ms as i64, body, docs],
    )?;
    Ok(())
}

pub(crate) fn last_seq(db: &Connection) -> Result<u64, StoreError> {
    let seq: Option<i64> = db.query_row("SELECT MAX(seq) FROM ops", [], |row| row.get(0))?;
    Ok(seq.unwrap_or(0) as u64)
}

/// Pending ops with a sequence number above `after_seq`, oldest first.
pub(crate) fn pending(
    db: &Connection,
    replica: ReplicaId,
    after_seq: u64,
    limit: usize,
) -> Result<Vec<Op>, StoreError> {
    let mut statement = db.prepare_cached(
        "SELECT seq, created_ms, body FROM ops WHERE status = 'pending' AND seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let mut rows = statement.query(params![after_seq as i64, limit as i64])?;
    let mut ops = Vec::new();
    while let Some(row) = rows.next()? {
        let seq: i64 = row.get(0)?;
        let created_ms: i64 = row.get(1)?;
        let body: Vec<u8> = row.get(2)?;
        let body: OpBody = postcard::from_bytes(&body).map_err(|error| StoreError::Corrupt {
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
    replica: ReplicaId,
    acks: &[Ack],
    now_ms: u64,
) -> Result<AckSummary, StoreError> {
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
                changed
            }
            AckOutcome::Rejected { code, detail } => {
                let changed = tx.execute(
                    "UPDATE ops SET status = 'rejected', acked_ms = ?2, reject_code = ?3, reject_detail = ?4
                     WHERE seq = ?1 AND status = 'pending'",
                    params![seq, now_ms as i64, format!("{code:?}"), detail],
                )?;
                summary.rejected += changed;
                changed
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

pub(crate) fn status(db: &Connection, seq: u64) -> Result<Option<OpStatus>, StoreError> {
    let row = db
        .query_row(
            "SELECT status, acked_ms, reject_code, reject_detail FROM ops WHERE seq = ?1",
            [seq as i64],
            |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, Option<i64>>(1)?,
                    row.get::<_, Option<String>>(2)?,
                    row.get::<_, Option<String>>(3)?,
                ))
            },
        )
        .optional()?;
    Ok(
        row.map(|(status, acked_ms, code, detail)| match status.as_str() {
            "acknowledged" => OpStatus::Acknowledged {
                acked_ms: acked_ms.unwrap_or(0) as u64,
            },
            "rejected" => OpStatus::Rejected {
                code: code.unwrap_or_default(),
                detail: detail.unwrap_or_default(),
            },
            _ => OpStatus::Pending,
        }),
    )
}

pub(crate) fn stats(db: &Connection, now_ms: u64) -> Result<OpLogStats, StoreError> {
    let (pending, oldest): (i64, Option<i64>) = db.query_row(
        "SELECT COUNT(*), MIN(created_ms) FROM ops WHERE status = 'pending'",
        [],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    let acknowledged: i64 = db.query_row(
        "SELECT COUNT(*) FROM ops WHERE status = 'acknowledged'",
        [],
        |row| row.get(0),
    )?;
    let rejected: i64 = db.query_row(
        "SELECT COUNT(*) FROM ops WHERE status = 'rejected'",
        [],
        |row| row.get(0),
    )?;
    let last_ack_ms: Option<String> = db
        .query_row(
            "SELECT value FROM meta WHERE key = 'last_ack_ms'",
            [],
            |row| row.get(0),
        )
        .optional()?;
    Ok(OpLogStats {
        pending: pending as u64,
        oldest_pending_age_ms: oldest.map_or(0, |created| now_ms.saturating_sub(created as u64)),
        acknowledged: acknowledged as u64,
        rejected: rejected as u64,
        last_ack_ms: last_ack_ms.and_then(|value| value.parse().ok()),
    })
}

pub(crate) fn dead_letters(
    db: &Connection,
    replica: ReplicaId,
) -> Result<Vec<DeadLetter>, StoreError> {
    let mut statement = db.prepare(
        "SELECT seq, docs, reject_code, reject_detail FROM ops WHERE status = 'rejected' ORDER BY seq",
    )?;
    let letters = statement
        .query_map([], |row| {
            Ok(DeadLetter {
                op: OpId {
                    replica,
                    seq: row.get::<_, i64>(0)? as u64,
                },
                docs: row
                    .get::<_, String>(1)?
                    .split(' ')
                    .map(str::to_owned)
                    .collect(),
                code: row.get::<_, Option<String>>(2)?.unwrap_or_default(),
                detail: row.get::<_, Option<String>>(3)?.unwrap_or_default(),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(letters)
}
