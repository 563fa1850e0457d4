//! The shared read side: pages of changes cut by count and bytes, which
//! catching-up cursor gets snapshots instead of history (the gap rule), and
//! admin reads, over any [`ReadBackend`]. Every read backend is therefore a
//! [`HubLogRead`].

use omnisync_core::protocol::message::AckOutcome;
use omnisync_core::vocab::ids::{DocId, DocSetId, OpId};

use super::compact::compacted_point;
use super::contract::{LogRows, PageCut, ReadBackend, committed_between};
use super::shared::{hub_replica, storage_error};
use super::store::LOG_ID_KEY;
use super::{HubLogError, HubLogRead};
use crate::events::{EventFilter, EventPage};
use crate::hub_session::{ChangePage, CommittedChanges};

/// A device more than this many sequence numbers behind a set's snapshot
/// point gets the snapshots instead of the history.
pub const SNAPSHOT_CATCH_UP_GAP_MIN: u64 = 10_000;

/// Changes of `set` above `cursor`, cut by count and bytes; the cursor of a
/// caught-up page is the head read in the same snapshot. A cursor below the
/// set's compacted point is an error ([`HubLogError::Compacted`]): the
/// changes it needs are gone, and only [`catch_up_page`] sends snapshots.
pub fn changes_since(
    rows: &mut dyn LogRows,
    set: &DocSetId,
    cursor: u64,
    len_max: usize,
    bytes_target: usize,
) -> Result<ChangePage, HubLogError> {
    let compacted = compacted_point(rows, set)?;
    if cursor < compacted {
        return Err(HubLogError::Compacted {
            set: set.to_string(),
            cursor,
            compacted,
        });
    }
    changes_page(rows, set, cursor, len_max, bytes_target)
}

fn changes_page(
    rows: &mut dyn LogRows,
    set: &DocSetId,
    cursor: u64,
    len_max: usize,
    bytes_target: usize,
) -> Result<ChangePage, HubLogError> {
    let head = rows.head_seq()?;
    let mut page = PageCut::new(len_max, bytes_target);
    rows.changes_after(set, cursor, &mut page)?;
    Ok(page.into_changes(cursor, head))
}

/// The next page for a catching-up subscription: snapshots while `resume`
/// is set, when the cursor is below the set's compacted point (the changes
/// it needs were deleted), or when it is at least
/// [`SNAPSHOT_CATCH_UP_GAP_MIN`] (or the whole history, when shorter)
/// behind the set's snapshot point; changes otherwise.
pub fn catch_up_page(
    rows: &mut dyn LogRows,
    set: &DocSetId,
    cursor: u64,
    resume: Option<&DocId>,
    len_max: usize,
    bytes_target: usize,
) -> Result<ChangePage, HubLogError> {
    let compacted = compacted_point(rows, set)?;
    match rows.set_snapshot(set)? {
        Some(covers)
            if resume.is_some()
                || cursor < compacted
                || (covers > cursor
                    && covers - cursor >= SNAPSHOT_CATCH_UP_GAP_MIN.min(covers)) =>
        {
            let log_id = rows
                .meta(LOG_ID_KEY)?
                .ok_or_else(|| storage_error("the log has no id"))?;
            let mut page = PageCut::snapshots(len_max, bytes_target, covers, hub_replica(&log_id));
            rows.snapshots_after(set, resume, &mut page)?;
            Ok(page.into_snapshots(cursor))
        }
        // A compacted point always comes with a snapshot point above it.
        _ if cursor < compacted => Err(storage_error(format!(
            "{set} was compacted up to {compacted} but has no snapshot point"
        ))),
        _ => changes_page(rows, set, cursor, len_max, bytes_target),
    }
}

impl<B: ReadBackend> HubLogRead for B {
    fn changes_since(
        &self,
        set: &DocSetId,
        cursor: u64,
        len_max: usize,
        bytes_target: usize,
    ) -> Result<ChangePage, HubLogError> {
        self.read(|rows| changes_since(rows, set, cursor, len_max, bytes_target))
    }

    fn catch_up_page(
        &self,
        set: &DocSetId,
        cursor: u64,
        resume: Option<&DocId>,
        len_max: usize,
        bytes_target: usize,
    ) -> Result<ChangePage, HubLogError> {
        self.read(|rows| catch_up_page(rows, set, cursor, resume, len_max, bytes_target))
    }

    fn doc_changes(&self, doc: &DocId) -> Result<Vec<Vec<u8>>, HubLogError> {
        self.read(|rows| {
            let mut all = Vec::new();
            let after = match rows.snapshot(doc)? {
                Some((snapshot, covers)) => {
                    all.push(snapshot);
                    covers
                }
                None => 0,
            };
            rows.doc_changes(doc, after, u64::MAX, &mut |bytes| {
                all.push(bytes.to_vec());
                Ok(())
            })?;
            Ok(all)
        })
    }

    fn outcome(&self, op: &OpId) -> Result<Option<AckOutcome>, HubLogError> {
        self.read(|rows| rows.find_outcome(op))
    }

    fn changes_between(&self, after: u64, upto: u64) -> Result<CommittedChanges, HubLogError> {
        self.read(|rows| committed_between(rows, after, upto))
    }

    fn head(&self) -> Result<u64, HubLogError> {
        self.read(|rows| rows.head_seq())
    }

    fn events(
        &self,
        after: u64,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<EventPage, HubLogError> {
        self.read(|rows| events_page(rows, after, filter, limit))
    }
}

/// The metadata key of the highest outbox position pruned.
pub const EVENTS_PRUNED_KEY: &str = "events/pruned";

/// The highest outbox position pruned (0 when none): a reader must start at
/// or after it.
pub fn events_pruned(rows: &mut (impl LogRows + ?Sized)) -> Result<u64, HubLogError> {
    match rows.meta(EVENTS_PRUNED_KEY)? {
        None => Ok(0),
        Some(text) => text
            .parse()
            .map_err(|_| storage_error(format!("{EVENTS_PRUNED_KEY} holds {text:?}"))),
    }
}

/// A page of the outbox: at most `limit` events after `after` passing
/// `filter`. `next` is the last position returned when the page is full
/// (more may follow), else the head read in the same snapshot (every
/// position up to it was looked at).
pub fn events_page(
    rows: &mut dyn LogRows,
    after: u64,
    filter: &EventFilter,
    limit: usize,
) -> Result<EventPage, HubLogError> {
    let pruned = events_pruned(rows)?;
    if after < pruned {
        return Err(HubLogError::EventsPruned { after, pruned });
    }
    let head = rows.event_head()?;
    let mut events = Vec::new();
    if after < head && limit > 0 {
        rows.events_after(after, filter, limit, &mut |event| {
            events.push(event);
            Ok(())
        })?;
    }
    let next = match events.last() {
        Some(last) if events.len() >= limit => last.seq,
        _ => head.max(after),
    };
    Ok(EventPage { events, next, head })
}
