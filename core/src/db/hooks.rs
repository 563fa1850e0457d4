//! The one way the device database reaches the rules above it.
//!
//! The database stores documents, the op log and cursors and knows nothing of
//! retail. Whatever must happen in the same SQLite transaction as a document
//! change, a hub record or a hub decision (query tables, allowances, pending
//! orders) is done by the [`Hooks`] the database was opened with, called from
//! inside that transaction. This is how Mozilla application-services' sync
//! machinery calls each component's engine: the lower layer defines the
//! trait, the upper one implements it, and no import points upward.

use automerge::{Automerge, ChangeHash};
use rusqlite::Transaction;

use crate::db::DbError;
use crate::protocol::message::RemoteChange;
use crate::vocab::ids::DocId;
use crate::vocab::intent::{Decision, Intent};

/// What the hub's decision on one of this device's intents makes of its op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[cfg_attr(feature = "ffi", derive(uniffi::Enum))]
pub enum DecidedState {
    /// The hub accepted the intent (a confirmed checkout, an applied command).
    Confirmed,
    /// The hub refused the intent for a business reason; nothing was sold.
    Refused,
    /// A provisional sale the hub could not (fully) cover: a compensation
    /// task is open.
    Compensation,
}

impl DecidedState {
    /// The op log's stored status text.
    pub fn as_str(self) -> &'static str {
        match self {
            DecidedState::Confirmed => "confirmed",
            DecidedState::Refused => "refused",
            DecidedState::Compensation => "compensation",
        }
    }
}

/// The rules the database calls inside its transactions. Every method runs
/// in the transaction that also stores the triggering change; an error rolls
/// the whole transaction back.
pub trait Hooks: Send + Sync + 'static {
    /// A document gained changes since `before` (its heads before this
    /// transaction; empty for a new document). Keeps derived state, such as
    /// query tables, in step.
    fn document_changed(
        &self,
        tx: &Transaction<'_>,
        doc_id: &DocId,
        doc: &Automerge,
        before: &[ChangeHash],
    ) -> Result<(), DbError>;

    /// A hub record arrived (a change of a `rec/` document). Returns false
    /// when it changed nothing (an older or equal version).
    fn record_arrived(&self, tx: &Transaction<'_>, change: &RemoteChange) -> Result<bool, DbError>;

    /// The hub decided one of this device's intents (op `op_seq`). Applies
    /// the decision's local effects and says what the op becomes.
    fn intent_decided(
        &self,
        tx: &Transaction<'_>,
        op_seq: u64,
        intent: &Intent,
        decision: &Decision,
        now_ms: u64,
    ) -> Result<DecidedState, DbError>;

    /// A hub restored from an older backup decided again an intent it had
    /// decided before (the device uploaded it again), and `later` differs
    /// from `first`. The first answer stands on the device (its op keeps its
    /// status and decision); this says what to do about the hub's different
    /// view, such as opening a compensation task. The default does nothing.
    fn intent_redecided(
        &self,
        tx: &Transaction<'_>,
        op_seq: u64,
        intent: &Intent,
        first: &Decision,
        later: &Decision,
        now_ms: u64,
    ) -> Result<(), DbError> {
        let _ = (tx, op_seq, intent, first, later, now_ms);
        Ok(())
    }
}

/// Hooks that derive nothing: a bare document store and op log, for tests of
/// the database itself and for tools that only move documents.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoHooks;

impl Hooks for NoHooks {
    fn document_changed(
        &self,
        _tx: &Transaction<'_>,
        _doc_id: &DocId,
        _doc: &Automerge,
        _before: &[ChangeHash],
    ) -> Result<(), DbError> {
        Ok(())
    }

    fn record_arrived(
        &self,
        _tx: &Transaction<'_>,
        _change: &RemoteChange,
    ) -> Result<bool, DbError> {
        Ok(false)
    }

    fn intent_decided(
        &self,
        _tx: &Transaction<'_>,
        _op_seq: u64,
        _intent: &Intent,
        decision: &Decision,
        _now_ms: u64,
    ) -> Result<DecidedState, DbError> {
        Ok(match decision {
            Decision::Refused(_) => DecidedState::Refused,
            _ => DecidedState::Confirmed,
        })
    }
}
