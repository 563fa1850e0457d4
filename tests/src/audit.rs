//! Exactly-once checks of the hub's change log against what devices committed.
//!
//! A device records, for every op it committed, the documents the op changed;
//! each op becomes one automerge change per document. The hub answers an op
//! with `Applied { hub_seq }`, the highest sequence number among the op's
//! changes, and stores an op's changes together. So, walking one replica's
//! changes in log order and cutting after each op's `hub_seq`, every slice
//! must hold exactly that op's documents: a missing slice is a lost op, a
//! longer one an op applied twice. Independently, no automerge change (actor,
//! sequence number, document) may appear twice in the log.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context as _;
use omnisync_core::protocol::message::{self, AckOutcome, RemoteChange};
use omnisync_core::{DocId, DocSetId, OpId, ReplicaId};
use omnisync_hub_engine::log::HubLogRead;

/// What one device committed: for each op, the documents it changed.
#[derive(Clone, Debug, Default)]
pub struct CommittedOps {
    /// Ops by sequence number.
    pub ops: BTreeMap<u64, Vec<DocId>>,
}

impl CommittedOps {
    /// Records an op.
    pub fn record(&mut self, seq: u64, docs: Vec<DocId>) {
        self.ops.insert(seq, docs);
    }

    /// Number of document changes the ops made together.
    pub fn change_count(&self) -> usize {
        self.ops.values().map(Vec::len).sum()
    }
}

/// Every change of `set` in the hub's log, ascending, read page by page the
/// way a catching-up device reads it.
pub fn all_changes(reader: &dyn HubLogRead, set: &DocSetId) -> anyhow::Result<Vec<RemoteChange>> {
    let mut changes = Vec::new();
    let mut cursor = 0;
    loop {
        let page = reader
            .changes_since(
                set,
                cursor,
                message::CHANGE_BATCH_LEN_MAX,
                message::CHANGE_BATCH_BYTES_TARGET,
            )
            .with_context(|| format!("reading {set} after {cursor}"))?;
        changes.extend(page.changes);
        anyhow::ensure!(
            page.cursor >= cursor,
            "page cursor went back from {cursor} to {}",
            page.cursor
        );
        cursor = page.cursor;
        if page.caught_up {
            return Ok(changes);
        }
    }
}

/// Checks that the log's hub sequence numbers are 1..=n with no gap and no repeat.
pub fn assert_gapless(changes: &[RemoteChange]) -> anyhow::Result<()> {
    for (index, change) in changes.iter().enumerate() {
        anyhow::ensure!(
            change.hub_seq == index as u64 + 1,
            "change #{index} has hub_seq {}, expected {} (gap or repeat in the log)",
            change.hub_seq,
            index + 1
        );
    }
    Ok(())
}

/// Checks that the hub stored every op of `replica` in `committed` exactly
/// once and nothing else from it:
/// - every op has an `Applied` outcome, each with its own `hub_seq`;
/// - the replica's changes, cut at those `hub_seq`s, are exactly each op's
///   documents, with nothing left over;
/// - no automerge change of the replica appears twice, and each was made by
///   one of the replica's actors.
pub fn assert_exactly_once(
    reader: &dyn HubLogRead,
    changes: &[RemoteChange],
    replica: ReplicaId,
    committed: &CommittedOps,
) -> anyhow::Result<()> {
    let mine: Vec<&RemoteChange> = changes
        .iter()
        .filter(|change| change.origin == replica)
        .collect();
    assert_no_repeated_change(&mine, replica)?;
    let mut by_ack: BTreeMap<u64, (OpId, &Vec<DocId>)> = BTreeMap::new();
    for (seq, docs) in &committed.ops {
        let op = OpId { replica, seq: *seq };
        let hub_seq = match reader.outcome(&op)? {
            Some(AckOutcome::Applied { hub_seq }) => hub_seq,
            other => {
                anyhow::bail!("op {op} was lost at the hub: outcome {other:?}, expected Applied")
            }
        };
        if let Some((other, _)) = by_ack.insert(hub_seq, (op, docs)) {
            anyhow::bail!("ops {other} and {op} were both acknowledged with hub_seq {hub_seq}");
        }
    }
    let mut rest = mine.as_slice();
    for (hub_seq, (op, docs)) in &by_ack {
        let len = rest
            .iter()
            .take_while(|change| change.hub_seq <= *hub_seq)
            .count();
        let (slice, after) = rest.split_at(len);
        rest = after;
        let mut stored: Vec<&DocId> = slice.iter().map(|change| &change.doc).collect();
        let mut expected: Vec<&DocId> = docs.iter().collect();
        stored.sort();
        expected.sort();
        let at: Vec<u64> = slice.iter().map(|change| change.hub_seq).collect();
        anyhow::ensure!(
            stored == expected,
            "op {op} (acked at #{hub_seq}): the hub holds changes to {stored:?} at {at:?}, the op changed {expected:?}"
        );
        anyhow::ensure!(
            slice
                .last()
                .is_some_and(|change| change.hub_seq == *hub_seq),
            "op {op}: acked at #{hub_seq}, but its last change is at {at:?}"
        );
    }
    let extra: Vec<u64> = rest.iter().map(|change| change.hub_seq).collect();
    anyhow::ensure!(
        extra.is_empty(),
        "replica {replica}: changes at {extra:?} belong to no committed op"
    );
    anyhow::ensure!(
        mine.len() == committed.change_count(),
        "replica {replica}: change count"
    );
    Ok(())
}

/// Checks that no automerge change appears twice among `changes` and that
/// each was made by one of `replica`'s actors.
fn assert_no_repeated_change(changes: &[&RemoteChange], replica: ReplicaId) -> anyhow::Result<()> {
    let mut seen: BTreeMap<(DocId, Vec<u8>, u64), u64> = BTreeMap::new();
    for change in changes {
        let parsed = automerge::Change::from_bytes(change.bytes.clone()).map_err(|error| {
            anyhow::anyhow!("hub change #{} does not decode: {error}", change.hub_seq)
        })?;
        anyhow::ensure!(
            replica.owns_actor(parsed.actor_id()),
            "hub change #{} has origin {replica} but actor {}",
            change.hub_seq,
            parsed.actor_id()
        );
        let key = (
            change.doc.clone(),
            parsed.actor_id().to_bytes().to_vec(),
            parsed.seq(),
        );
        if let Some(first) = seen.insert(key, change.hub_seq) {
            anyhow::bail!(
                "replica {replica}: one automerge change to {} stored more than once, at #{first} and #{}",
                change.doc,
                change.hub_seq
            );
        }
    }
    Ok(())
}

/// Checks that every op in `acknowledged` has an `Applied` outcome at the hub.
pub fn assert_all_applied(
    reader: &dyn HubLogRead,
    replica: ReplicaId,
    acknowledged: &BTreeSet<u64>,
) -> anyhow::Result<()> {
    for seq in acknowledged {
        let op = OpId { replica, seq: *seq };
        let outcome = reader.outcome(&op)?;
        anyhow::ensure!(
            matches!(outcome, Some(AckOutcome::Applied { .. })),
            "op {op} was acknowledged to its device, but the hub's outcome is {outcome:?}"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use omnisync_core::protocol::message::Op;
    use omnisync_core::{DeviceId, DocSetId, Edit, Replica, StoreId, Value};
    use omnisync_hub_engine::hub_session::{IncomingOp, Verdict};
    use omnisync_hub_engine::log::{HubLog as _, MemoryHubLog};

    use super::*;

    /// A store with `len` two-document ops, its pending ops, and what it committed.
    fn device_ops(len: u64) -> (ReplicaId, Vec<Op>, CommittedOps) {
        let device = DeviceId::new("till-1").unwrap();
        let mut store = Replica::open_in_memory(device, StoreId::new("s1").unwrap()).unwrap();
        let docs = [
            DocId::new("store.s1/a").unwrap(),
            DocId::new("store.s1/b").unwrap(),
        ];
        let mut committed = CommittedOps::default();
        for n in 1..=len {
            let edits: Vec<_> = docs
                .iter()
                .map(|doc| omnisync_core::DocEdit {
                    doc: doc.clone(),
                    edits: vec![Edit::put(&["n"], Value::Int(n as i64))],
                })
                .collect();
            let op = store.commit(&edits, 0).unwrap();
            committed.record(op.seq, docs.to_vec());
        }
        (
            store.replica(),
            store.pending_ops(0, 100).unwrap(),
            committed,
        )
    }

    fn accept(ops: &[Op]) -> Vec<IncomingOp> {
        ops.iter()
            .map(|op| IncomingOp {
                op: op.clone(),
                device: omnisync_core::DeviceId::new("till-1").unwrap(),
                store: omnisync_core::StoreId::new("s1").unwrap(),
                verdict: Verdict::Accept,
            })
            .collect()
    }

    fn changes(log: &MemoryHubLog) -> Vec<RemoteChange> {
        all_changes(log, &DocSetId::new("store.s1").unwrap()).unwrap()
    }

    #[test]
    fn a_faithful_log_passes_even_with_retried_ops() {
        let (replica, ops, committed) = device_ops(5);
        let mut log = MemoryHubLog::new();
        log.apply(accept(&ops[..3])).unwrap();
        log.apply(accept(&ops)).unwrap(); // A retry of everything.
        let changes = changes(&log);
        assert_gapless(&changes).unwrap();
        assert_exactly_once(&log, &changes, replica, &committed).unwrap();
    }

    #[test]
    fn a_lost_op_is_caught() {
        let (replica, ops, committed) = device_ops(5);
        let mut log = MemoryHubLog::new();
        log.apply(accept(&[&ops[..2], &ops[3..]].concat())).unwrap();
        let error = assert_exactly_once(&log, &changes(&log), replica, &committed).unwrap_err();
        assert!(error.to_string().contains("lost"), "{error}");
    }

    #[test]
    fn a_change_stored_twice_is_caught() {
        let (replica, ops, committed) = device_ops(3);
        let mut log = MemoryHubLog::new();
        log.apply(accept(&ops)).unwrap();
        let mut changes = changes(&log);
        let mut repeated = changes[2].clone();
        repeated.hub_seq = changes.len() as u64 + 1;
        changes.push(repeated);
        let error = assert_exactly_once(&log, &changes, replica, &committed).unwrap_err();
        assert!(error.to_string().contains("more than once"), "{error}");
    }

    #[test]
    fn an_op_whose_changes_are_missing_is_caught() {
        let (replica, ops, committed) = device_ops(3);
        let mut log = MemoryHubLog::new();
        log.apply(accept(&ops)).unwrap();
        let mut changes = changes(&log);
        changes.remove(3); // The second document of op 2.
        let error = assert_exactly_once(&log, &changes, replica, &committed).unwrap_err();
        assert!(error.to_string().contains("the op changed"), "{error}");
    }
}
