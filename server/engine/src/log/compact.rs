//! Compaction: a set's old changes folded into snapshots, then deleted, so
//! the log stays bounded and a new device receives each document once
//! instead of its whole history.
//!
//! A set is compacted once it holds at least [`CompactPolicy::min_changes`]
//! changes (or [`CompactPolicy::min_bytes`] bytes) older than
//! [`CompactPolicy::after_age_ms`] above its compacted point. Compacting it
//! to a point `S` (the head as it was that long ago):
//!
//! 1. saves a snapshot covering `S` of every document changed since the
//!    set's snapshot point (a record's snapshot is its newest version, a
//!    document's is its automerge save); the others keep theirs, so a big
//!    `orders.S` is not rewritten each time. At most
//!    [`COMPACT_DOCS_PER_STEP`] documents per transaction;
//! 2. in the transaction with the last of them, moves the set's snapshot
//!    point to `S` and records `S` as the set's compacted point (metadata
//!    `compacted/<set>`): from then on a cursor below `S` gets the snapshots;
//! 3. deletes the set's changes numbered `<= S`, at most
//!    [`COMPACT_DELETES_PER_STEP`] per transaction.
//!
//! Outcomes of ops (exactly-once answers), ledger rows and snapshots are
//! never deleted. A set with a document holding changes that wait for a
//! missing dependency (built on a change the hub refused) is not compacted:
//! an automerge save leaves such changes out, so deleting them would lose
//! them; the step fails with that reason and the other sets go on. Ages are measured with marks: every step the writer notes
//! `(now, head)` in the metadata (`compact_marks`, at most one mark per
//! 1/[`MARKS_PER_AGE`] of the age), so a change's age needs no column of
//! its own; a log met for the first time starts aging then.

use omnisync_core::vocab::ids::{DocId, DocSetId};
use omnisync_core::vocab::record::is_record_doc;

use super::HubLogError;
use super::contract::{LogRows, WriteTxn};
use super::shared::{load_doc_at, storage_error};

/// Metadata key prefix of a set's compacted point: changes of the set up
/// to it are deleted, and a cursor below it must start from the snapshots.
pub const COMPACTED_KEY_PREFIX: &str = "compacted/";
/// Metadata key of the `(time, head)` marks that date the log.
pub const MARKS_KEY: &str = "compact_marks";
/// Marks kept per age: the age is measured to 1/this of itself.
pub const MARKS_PER_AGE: u64 = 16;
/// Most documents snapshotted in one compaction transaction.
pub const COMPACT_DOCS_PER_STEP: usize = 256;
/// Most changes deleted in one compaction transaction.
pub const COMPACT_DELETES_PER_STEP: u64 = 20_000;
/// Most sets examined in one compaction step while looking for work.
pub const COMPACT_SETS_PER_STEP: usize = 64;
/// Default age a change must reach before compaction may delete it.
pub const COMPACT_AFTER_AGE_MS_DEFAULT: u64 = 7 * 24 * 3600 * 1000;
/// Default number of old changes that makes a set worth compacting.
pub const COMPACT_MIN_CHANGES_DEFAULT: u64 = 10_000;
/// Default bytes of old changes that make a set worth compacting.
pub const COMPACT_MIN_BYTES_DEFAULT: u64 = 64 << 20;

/// When a set is compacted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompactPolicy {
    /// Only changes at least this old (milliseconds) are compacted; 0 means
    /// every change up to the head.
    pub after_age_ms: u64,
    /// A set is compacted once this many of its changes are old enough...
    pub min_changes: u64,
    /// ...or once its old enough changes hold this many bytes.
    pub min_bytes: u64,
}

impl Default for CompactPolicy {
    fn default() -> Self {
        Self {
            after_age_ms: COMPACT_AFTER_AGE_MS_DEFAULT,
            min_changes: COMPACT_MIN_CHANGES_DEFAULT,
            min_bytes: COMPACT_MIN_BYTES_DEFAULT,
        }
    }
}

/// What one compaction step did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactStep {
    /// Documents snapshotted.
    pub snapshots: usize,
    /// Changes deleted.
    pub deleted: u64,
    /// A set whose compacted point moved, with the point.
    pub compacted: Option<(DocSetId, u64)>,
    /// True when more work waits: call again soon (when the writer is idle).
    pub more: bool,
}

/// The writer's compaction state between steps: the policy (none: off),
/// the job under way and the sets still to examine in this round.
#[derive(Debug, Default)]
pub struct Compaction {
    policy: Option<CompactPolicy>,
    job: Option<Job>,
    to_examine: Vec<DocSetId>,
}

#[derive(Debug)]
enum Job {
    /// Snapshot `docs[next..]` at `point`, then make `point` the set's.
    Snapshot {
        set: DocSetId,
        point: u64,
        docs: Vec<DocId>,
        next: usize,
    },
    /// Delete the set's changes up to `upto`.
    Delete { set: DocSetId, upto: u64 },
}

impl Compaction {
    /// Compaction off.
    pub fn off() -> Self {
        Self::default()
    }

    /// Sets the policy (`None` turns compaction off); drops a job under way.
    pub fn set_policy(&mut self, policy: Option<CompactPolicy>) {
        self.policy = policy;
        self.job = None;
        self.to_examine.clear();
    }

    /// The policy, if compaction is on.
    pub fn policy(&self) -> Option<CompactPolicy> {
        self.policy
    }

    /// Runs one bounded step in `txn` (which the caller commits): finds a
    /// set to compact if no job is under way, then does one unit of the
    /// job. The job is taken out meanwhile and put back only by
    /// [`Self::commit_step`], after the caller's commit; if the step or the
    /// commit fails it is dropped, and a later round plans again from what
    /// storage holds. Sets examined leave this round's queue either way, so
    /// one set that fails does not hold up the sets after it.
    pub fn step(
        &mut self,
        txn: &mut dyn WriteTxn,
        head: u64,
        now_ms: u64,
    ) -> Result<Planned, HubLogError> {
        let Some(policy) = self.policy else {
            return Ok(Planned::default());
        };
        let mut job = self.job.take();
        let point = eligible_point(txn, policy, head, now_ms)?;
        if job.is_none() {
            if self.to_examine.is_empty() {
                self.to_examine = txn.change_sets()?;
                self.to_examine.reverse();
            }
            for _ in 0..COMPACT_SETS_PER_STEP {
                let Some(set) = self.to_examine.pop() else {
                    break;
                };
                job = plan(txn, policy, &set, point)?;
                if job.is_some() {
                    break;
                }
            }
        }
        let mut outcome = CompactStep::default();
        let job = match job {
            Some(job) => run(txn, job, &mut outcome)?,
            None => None,
        };
        outcome.more = job.is_some() || !self.to_examine.is_empty();
        Ok(Planned { outcome, job })
    }

    /// Keeps what a committed step planned.
    pub fn commit_step(&mut self, planned: Planned) -> CompactStep {
        self.job = planned.job;
        planned.outcome
    }

    /// After a failed step or commit: the job under way is forgotten (see
    /// [`Self::step`]).
    pub fn fail_step(&mut self) {
        self.job = None;
    }
}

/// A step done inside a transaction, kept only if it commits.
#[derive(Debug, Default)]
pub struct Planned {
    outcome: CompactStep,
    job: Option<Job>,
}

/// The compacted point of `set`: its changes up to it may be deleted, so a
/// cursor below it must start from the snapshots (0 when never compacted).
pub fn compacted_point(
    rows: &mut (impl LogRows + ?Sized),
    set: &DocSetId,
) -> Result<u64, HubLogError> {
    match rows.meta(&format!("{COMPACTED_KEY_PREFIX}{set}"))? {
        None => Ok(0),
        Some(value) => value.parse().map_err(|_| {
            storage_error(format!(
                "the compacted point of {set} is not a number: {value:?}"
            ))
        }),
    }
}

/// The newest head at least `after_age_ms` old, noting `(now, head)` as a
/// new mark when the last one is older than a 1/[`MARKS_PER_AGE`] of the age.
fn eligible_point(
    txn: &mut dyn WriteTxn,
    policy: CompactPolicy,
    head: u64,
    now_ms: u64,
) -> Result<u64, HubLogError> {
    if policy.after_age_ms == 0 {
        return Ok(head);
    }
    let stored = txn.meta(MARKS_KEY)?;
    let mut marks = parse_marks(stored.as_deref().unwrap_or(""))?;
    let interval = (policy.after_age_ms / MARKS_PER_AGE).max(1);
    let due = marks
        .last()
        .is_none_or(|&(at, seq)| now_ms >= at.saturating_add(interval) && seq != head);
    if due {
        marks.push((now_ms, head));
    }
    let cutoff = now_ms.saturating_sub(policy.after_age_ms);
    // Keep the newest mark at or before the cutoff and every later one.
    let old = marks.iter().filter(|(at, _)| *at <= cutoff).count();
    marks.drain(..old.saturating_sub(1));
    let point = marks
        .first()
        .filter(|(at, _)| *at <= cutoff)
        .map_or(0, |(_, seq)| *seq);
    let written = format_marks(&marks);
    if stored.as_deref() != Some(written.as_str()) {
        txn.put_meta(MARKS_KEY, &written)?;
    }
    Ok(point)
}

fn parse_marks(text: &str) -> Result<Vec<(u64, u64)>, HubLogError> {
    text.split(';')
        .filter(|mark| !mark.is_empty())
        .map(|mark| {
            let (at, seq) = mark
                .split_once(':')
                .ok_or_else(|| storage_error(format!("bad compaction mark {mark:?}")))?;
            let number = |text: &str| {
                text.parse::<u64>()
                    .map_err(|_| storage_error(format!("bad compaction mark {mark:?}")))
            };
            Ok((number(at)?, number(seq)?))
        })
        .collect()
}

fn format_marks(marks: &[(u64, u64)]) -> String {
    marks
        .iter()
        .map(|(at, seq)| format!("{at}:{seq}"))
        .collect::<Vec<_>>()
        .join(";")
}

/// The job `set` needs with changes up to `point` old enough, if any:
/// deletions left over from an interrupted compaction first.
fn plan(
    txn: &mut dyn WriteTxn,
    policy: CompactPolicy,
    set: &DocSetId,
    point: u64,
) -> Result<Option<Job>, HubLogError> {
    let compacted = compacted_point(txn, set)?;
    if compacted > 0 && txn.count_changes(set, 0, compacted)?.0 > 0 {
        return Ok(Some(Job::Delete {
            set: set.clone(),
            upto: compacted,
        }));
    }
    if point <= compacted {
        return Ok(None);
    }
    let (count, bytes) = txn.count_changes(set, compacted, point)?;
    if count == 0 || (count < policy.min_changes && bytes < policy.min_bytes) {
        return Ok(None);
    }
    let base = txn.set_snapshot(set)?.unwrap_or(0);
    let docs = if base >= point {
        Vec::new()
    } else {
        txn.changed_docs(set, base, point)?
    };
    Ok(Some(Job::Snapshot {
        set: set.clone(),
        point,
        docs,
        next: 0,
    }))
}

/// Does one unit of `job`; returns what is left of it.
fn run(
    txn: &mut dyn WriteTxn,
    job: Job,
    outcome: &mut CompactStep,
) -> Result<Option<Job>, HubLogError> {
    match job {
        Job::Snapshot {
            set,
            point,
            docs,
            next,
        } => {
            let end = docs.len().min(next + COMPACT_DOCS_PER_STEP);
            for doc in &docs[next..end] {
                outcome.snapshots += snapshot_doc(txn, doc, point)? as usize;
            }
            if end < docs.len() {
                return Ok(Some(Job::Snapshot {
                    set,
                    point,
                    docs,
                    next: end,
                }));
            }
            let base = txn.set_snapshot(&set)?.unwrap_or(0);
            txn.put_set_snapshot(&set, base.max(point))?;
            // Never lowered: another hub process on the same database may
            // have compacted further meanwhile, and a cursor between the two
            // points must still be sent the snapshots.
            let compacted = compacted_point(txn, &set)?.max(point);
            txn.put_meta(
                &format!("{COMPACTED_KEY_PREFIX}{set}"),
                &compacted.to_string(),
            )?;
            outcome.compacted = Some((set.clone(), point));
            Ok(Some(Job::Delete { set, upto: point }))
        }
        Job::Delete { set, upto } => {
            let deleted = txn.delete_changes(&set, upto, COMPACT_DELETES_PER_STEP)?;
            outcome.deleted += deleted;
            Ok((deleted >= COMPACT_DELETES_PER_STEP).then_some(Job::Delete { set, upto }))
        }
    }
}

/// Saves `doc` as it was at `point` unless its snapshot covers that already;
/// returns whether it wrote one.
fn snapshot_doc(txn: &mut dyn WriteTxn, doc: &DocId, point: u64) -> Result<bool, HubLogError> {
    if txn
        .snapshot(doc)?
        .is_some_and(|(_, covers)| covers >= point)
    {
        return Ok(false);
    }
    // A record's snapshot is its newest version; a document's is its save.
    let bytes = if is_record_doc(doc) {
        txn.latest_change(doc, point)?
            .ok_or_else(|| storage_error(format!("record {doc} has no change up to {point}")))?
    } else {
        let loaded = load_doc_at(txn, doc, point)?;
        // A save leaves out changes still waiting for a dependency (a change
        // the hub refused): deleting them would lose them for good.
        if !automerge::ReadDoc::get_missing_deps(&loaded, &[]).is_empty() {
            return Err(storage_error(format!(
                "{doc} holds changes waiting for missing dependencies; its set is not compacted"
            )));
        }
        loaded.save()
    };
    txn.put_snapshot(doc, point, &bytes)?;
    Ok(true)
}
