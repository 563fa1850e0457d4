//! The retail rules as the device database's [`Hooks`], and the ways to open
//! a [`Replica`] with them.

use std::path::Path;

use automerge::{Automerge, ChangeHash};
use rusqlite::Transaction;

use crate::db::encryption::EncryptionKey;
use crate::db::{DbError, DecidedState, Hooks, Replica};
use crate::protocol::message::RemoteChange;
use crate::retail::{hub_records, orders, project};
use crate::vocab::ids::{DeviceId, DocId, StoreId};
use crate::vocab::intent::{Decision, Intent};

/// The retail rules: query tables for every document change, hub records
/// into their tables, and the local effects of the hub's decisions.
#[derive(Clone, Copy, Debug, Default)]
pub struct RetailHooks;

impl Hooks for RetailHooks {
    fn document_changed(
        &self,
        tx: &Transaction<'_>,
        doc_id: &DocId,
        doc: &Automerge,
        before: &[ChangeHash],
    ) -> Result<(), DbError> {
        project::project(tx, doc_id, doc, before)
    }

    fn record_arrived(&self, tx: &Transaction<'_>, change: &RemoteChange) -> Result<bool, DbError> {
        hub_records::apply(tx, change)
    }

    fn intent_decided(
        &self,
        tx: &Transaction<'_>,
        op_seq: u64,
        intent: &Intent,
        decision: &Decision,
        now_ms: u64,
    ) -> Result<DecidedState, DbError> {
        orders::on_decision(tx, op_seq, intent, decision, now_ms)
    }

    fn intent_redecided(
        &self,
        tx: &Transaction<'_>,
        op_seq: u64,
        intent: &Intent,
        first: &Decision,
        later: &Decision,
        now_ms: u64,
    ) -> Result<(), DbError> {
        orders::on_redecision(tx, op_seq, intent, first, later, now_ms)
    }
}

impl Replica {
    /// Opens (creating if needed) this device's database at `path`, for shop
    /// `store`, with the retail rules.
    pub fn open(path: &Path, device: DeviceId, store: StoreId) -> Result<Self, DbError> {
        Self::open_with(path, device, store, Box::new(RetailHooks))
    }

    /// Opens (creating if needed) an encrypted database with the retail
    /// rules (feature `encryption`); see [`Replica::open_encrypted_with`].
    pub fn open_encrypted(
        path: &Path,
        device: DeviceId,
        store: StoreId,
        key: &EncryptionKey,
    ) -> Result<Self, DbError> {
        Self::open_encrypted_with(path, device, store, key, Box::new(RetailHooks))
    }

    /// A database in memory with the retail rules, for tests and simulations.
    pub fn open_in_memory(device: DeviceId, store: StoreId) -> Result<Self, DbError> {
        Self::open_in_memory_with(device, store, Box::new(RetailHooks))
    }
}
