//! The hub's durable change log as a trait, with an in-memory backend.
//!
//! The hub runtime and the deterministic simulation both talk to storage
//! through [`HubLog`]. The SQLite backend lives in the hub crate; the memory
//! backend here serves the simulation. [`conformance`] is one test suite run
//! against every backend, so they cannot drift apart.

use std::collections::{BTreeMap, HashMap};

use crate::ids::{DocSetId, OpId};
use crate::protocol::hub::{ChangePage, CommittedChanges, IncomingOp};
use crate::protocol::message::{Ack, AckOutcome, OpBody, RemoteChange};

/// Why storage failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubLogError {
    /// The database failed.
    #[error("hub storage: {0}")]
    Storage(String),
}

/// What one group commit produced.
#[derive(Debug, Default)]
pub struct AppliedBatch {
    /// One ack per incoming op, in the same order.
    pub acks: Vec<Ack>,
    /// The changes newly stored, for fan-out.
    pub committed: CommittedChanges,
    /// Ops applied for the first time.
    pub stored: usize,
    /// Ops refused for the first time.
    pub rejected: usize,
    /// Ops answered with an earlier outcome (retries and duplicates).
    pub duplicates: usize,
}

/// Durable storage of ops and the numbered change log.
pub trait HubLog {
    /// Applies ops in one durable transaction. Each op id is applied once: a
    /// repeated id (in this batch or from before) gets its original answer and
    /// changes nothing. Returns after the commit is durable.
    fn apply(&mut self, ops: Vec<IncomingOp>) -> Result<AppliedBatch, HubLogError>;

    /// The highest sequence number given so far.
    fn head_seq(&self) -> Result<u64, HubLogError>;
}

/// Reads of the hub's log; safe to call from many threads while a
/// [`HubLog`] writes.
pub trait HubLogRead {
    /// Reads changes of `set` with a sequence number above `cursor`: at most
    /// `len_max` changes, stopping early once `bytes_target` is passed.
    fn changes_since(
        &self,
        set: &DocSetId,
        cursor: u64,
        len_max: usize,
        bytes_target: usize,
    ) -> Result<ChangePage, HubLogError>;

    /// The next page for a catching-up subscription. Backends with snapshots
    /// send a device far behind the saved documents of the set instead of its
    /// whole history: while `resume` is set (or the device starts far behind
    /// the set's snapshot point) the page holds snapshots, documents after
    /// `resume` in id order, and the cursor does not move until the last one.
    fn catch_up_page(
        &self,
        set: &DocSetId,
        cursor: u64,
        resume: Option<&crate::ids::DocId>,
        len_max: usize,
        bytes_target: usize,
    ) -> Result<ChangePage, HubLogError> {
        let _ = resume;
        self.changes_since(set, cursor, len_max, bytes_target)
    }

    /// Every stored change of one document, in order (for admin reads).
    fn doc_changes(&self, doc: &crate::ids::DocId) -> Result<Vec<Vec<u8>>, HubLogError>;

    /// The stored answer for an op, if it was ever applied or rejected.
    fn outcome(&self, op: &OpId) -> Result<Option<AckOutcome>, HubLogError>;
}

/// A hub log kept in memory, for simulations and tests.
#[derive(Debug, Default)]
pub struct MemoryHubLog {
    outcomes: HashMap<OpId, AckOutcome>,
    by_set: BTreeMap<DocSetId, Vec<RemoteChange>>,
    head: u64,
}

impl MemoryHubLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every change of a set, for convergence checks.
    pub fn all_changes(&self, set: &DocSetId) -> &[RemoteChange] {
        self.by_set.get(set).map(Vec::as_slice).unwrap_or(&[])
    }
}

impl HubLog for MemoryHubLog {
    fn apply(&mut self, ops: Vec<IncomingOp>) -> Result<AppliedBatch, HubLogError> {
        let mut batch = AppliedBatch::default();
        for incoming in ops {
            let id = incoming.op.id;
            if let Some(outcome) = self.outcomes.get(&id) {
                batch.acks.push(Ack {
                    op: id,
                    outcome: outcome.clone(),
                });
                batch.duplicates += 1;
                continue;
            }
            let outcome = match incoming.rejection() {
                Some(rejected) => {
                    batch.rejected += 1;
                    rejected
                }
                None => {
                    batch.stored += 1;
                    let OpBody::Changes(changes) = incoming.op.body;
                    for change in changes {
                        self.head += 1;
                        let remote = RemoteChange {
                            hub_seq: self.head,
                            doc: change.doc,
                            origin: id.replica,
                            bytes: change.bytes,
                        };
                        let set = remote.doc.set();
                        self.by_set
                            .entry(set.clone())
                            .or_default()
                            .push(remote.clone());
                        batch.committed.by_set.entry(set).or_default().push(remote);
                    }
                    AckOutcome::Applied { hub_seq: self.head }
                }
            };
            self.outcomes.insert(id, outcome.clone());
            batch.acks.push(Ack { op: id, outcome });
        }
        Ok(batch)
    }

    fn head_seq(&self) -> Result<u64, HubLogError> {
        Ok(self.head)
    }
}

impl HubLogRead for MemoryHubLog {
    fn changes_since(
        &self,
        set: &DocSetId,
        cursor: u64,
        len_max: usize,
        bytes_target: usize,
    ) -> Result<ChangePage, HubLogError> {
        let all = self.all_changes(set);
        let start = all.partition_point(|change| change.hub_seq <= cursor);
        let mut changes = Vec::new();
        let mut bytes = 0;
        for change in &all[start..] {
            if changes.len() >= len_max || (bytes >= bytes_target && !changes.is_empty()) {
                break;
            }
            bytes += change.bytes.len();
            changes.push(change.clone());
        }
        let caught_up = start + changes.len() == all.len();
        let cursor = if caught_up {
            self.head.max(cursor)
        } else {
            changes.last().map_or(cursor, |change| change.hub_seq)
        };
        Ok(ChangePage {
            changes,
            cursor,
            caught_up,
            resume: None,
        })
    }

    fn doc_changes(&self, doc: &crate::ids::DocId) -> Result<Vec<Vec<u8>>, HubLogError> {
        Ok(self
            .all_changes(&doc.set())
            .iter()
            .filter(|change| &change.doc == doc)
            .map(|change| change.bytes.clone())
            .collect())
    }

    fn outcome(&self, op: &OpId) -> Result<Option<AckOutcome>, HubLogError> {
        Ok(self.outcomes.get(op).cloned())
    }
}

/// One test suite for every [`HubLog`] backend. Each function takes a fresh,
/// empty log and panics on a violated property.
pub mod conformance {
    use super::*;
    use crate::ids::{DocId, ReplicaId};
    use crate::protocol::hub::Verdict;
    use crate::protocol::message::{DocChange, Op, RejectCode};

    fn op(replica: u8, seq: u64, doc: &str, bytes: &[u8]) -> IncomingOp {
        IncomingOp {
            op: Op {
                id: OpId {
                    replica: ReplicaId([replica; 16]),
                    seq,
                },
                created_ms: 0,
                body: OpBody::Changes(vec![DocChange {
                    doc: DocId::new(doc).expect("test doc id"),
                    bytes: bytes.to_vec(),
                }]),
            },
            verdict: Verdict::Accept,
        }
    }

    /// Runs every property against logs made by `fresh`.
    pub fn run_all<L: HubLog + HubLogRead>(mut fresh: impl FnMut() -> L) {
        duplicates_get_the_original_answer(fresh());
        rejections_are_remembered(fresh());
        pages_are_ordered_bounded_and_per_set(fresh());
    }

    /// A repeated op id changes nothing and gets its original answer.
    pub fn duplicates_get_the_original_answer<L: HubLog + HubLogRead>(mut log: L) {
        let first = log
            .apply(vec![op(1, 1, "store.a/x", b"one")])
            .expect("apply");
        let again = log
            .apply(vec![
                op(1, 1, "store.a/x", b"one"),
                op(1, 1, "store.a/x", b"one"),
            ])
            .expect("apply");
        assert_eq!(again.acks[0], first.acks[0]);
        assert_eq!(again.acks[1], first.acks[0], "duplicate inside one batch");
        assert!(again.committed.by_set.is_empty());
        assert_eq!((first.stored, again.stored, again.duplicates), (1, 0, 2));
        let page = log
            .changes_since(&DocSetId::new("store.a").unwrap(), 0, 100, 1 << 20)
            .unwrap();
        assert_eq!(page.changes.len(), 1);
        assert_eq!(log.head_seq().unwrap(), 1);
    }

    /// A rejected op stores nothing, and a retry gets the same rejection even
    /// if the retry would now be accepted.
    pub fn rejections_are_remembered<L: HubLog + HubLogRead>(mut log: L) {
        let mut rejected = op(2, 1, "store.a/x", b"bad");
        rejected.verdict = Verdict::Reject {
            code: RejectCode::Forbidden,
            detail: "no".into(),
        };
        let first = log.apply(vec![rejected]).unwrap();
        assert!(matches!(
            first.acks[0].outcome,
            AckOutcome::Rejected {
                code: RejectCode::Forbidden,
                ..
            }
        ));
        let retry = log.apply(vec![op(2, 1, "store.a/x", b"bad")]).unwrap();
        assert_eq!(retry.acks[0], first.acks[0]);
        assert_eq!(log.head_seq().unwrap(), 0);
        assert!(log.outcome(&first.acks[0].op).unwrap().is_some());
    }

    /// Pages respect the cursor, the set, the length limit, and end at the head.
    pub fn pages_are_ordered_bounded_and_per_set<L: HubLog + HubLogRead>(mut log: L) {
        let mut ops = Vec::new();
        for seq in 1..=10 {
            let doc = if seq % 2 == 0 {
                "store.a/x"
            } else {
                "store.b/y"
            };
            ops.push(op(3, seq, doc, &[seq as u8]));
        }
        log.apply(ops).unwrap();
        let set_a = DocSetId::new("store.a").unwrap();
        let page = log.changes_since(&set_a, 0, 3, 1 << 20).unwrap();
        let seqs: Vec<u64> = page.changes.iter().map(|c| c.hub_seq).collect();
        assert_eq!(seqs, vec![2, 4, 6]);
        assert!(!page.caught_up);
        assert_eq!(page.cursor, 6);
        let rest = log
            .changes_since(&set_a, page.cursor, 100, 1 << 20)
            .unwrap();
        let seqs: Vec<u64> = rest.changes.iter().map(|c| c.hub_seq).collect();
        assert_eq!(seqs, vec![8, 10]);
        assert!(rest.caught_up);
        assert_eq!(rest.cursor, 10);
        let none = log
            .changes_since(&DocSetId::new("store.c").unwrap(), 0, 100, 1 << 20)
            .unwrap();
        assert!(none.changes.is_empty() && none.caught_up);
        assert_eq!(none.cursor, 10, "an empty set is caught up to the head");
        assert!(rest.changes.iter().all(|c| c.origin == ReplicaId([3; 16])));
        let doc = DocId::new("store.a/x").unwrap();
        assert_eq!(
            log.doc_changes(&doc).unwrap(),
            vec![vec![2], vec![4], vec![6], vec![8], vec![10]]
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_log_conforms() {
        super::conformance::run_all(super::MemoryHubLog::new);
    }
}
