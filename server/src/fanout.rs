//! Live fan-out in log order, also when other hub processes write the same
//! log.
//!
//! A device's live subscription trusts the fan-out to bring every change of
//! its sets in sequence order: it moves its cursor to the last change of
//! each commit it is given. With one hub process that holds by itself (one
//! writer numbers and publishes). With several processes on one database,
//! each process hears of the others' commits (PostgreSQL `NOTIFY` with the
//! new head, see `storage::postgres`) and of its own commits (the
//! committer), in any order. [`Fanout`] keeps one position, `delivered`:
//! everything up to it was broadcast, in order. A local commit whose first
//! change is above `delivered + 1` first reads the missing range from the
//! log (those commits are durable: writers commit one at a time, and this
//! one started after them), and a foreign head is read from the log the
//! same way. Whatever was broadcast already is not sent twice.
//!
//! Every broadcast names the range of the log it covers (`after..=upto` in
//! [`CommittedChanges`]); a session that sees a range starting above what
//! it was last given falls back to reading the log, so even a failed gap
//! read costs a re-read, never a missed change.

use std::sync::{Arc, Mutex};

use omnisync_hub_engine::hub_session::CommittedChanges;
use omnisync_hub_engine::log::HubLogError;
use tokio::sync::{broadcast, watch};

/// Reads every change with a sequence number in `(after, upto]`, grouped
/// by set, in order.
pub type GapReader =
    dyn Fn(u64, u64) -> Result<CommittedChanges, HubLogError> + Send + Sync + 'static;

/// The hub's live fan-out: one broadcast, fed in log order.
pub struct Fanout {
    sender: broadcast::Sender<Arc<CommittedChanges>>,
    /// The highest sequence number broadcast (everything below was too).
    delivered: Mutex<u64>,
    gaps: Box<GapReader>,
    /// Ticks after every commit this process made or heard of, changes or
    /// not (a refused checkout writes only an outcome and its event): what
    /// the event feed's long polls wait on.
    commits: watch::Sender<u64>,
}

impl std::fmt::Debug for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fanout")
            .field("delivered", &*self.lock())
            .finish_non_exhaustive()
    }
}

impl Fanout {
    /// A fan-out whose log is at `head`, keeping up to `capacity` commits
    /// for slow receivers, reading missing ranges with `gaps`.
    pub fn new(head: u64, capacity: usize, gaps: Box<GapReader>) -> Self {
        Self {
            sender: broadcast::channel(capacity).0,
            delivered: Mutex::new(head),
            gaps,
            commits: watch::channel(0).0,
        }
    }

    /// A receiver that changes after every commit (see [`Fanout::publish_local`]
    /// and [`Fanout::publish_upto`]).
    pub fn commits(&self) -> watch::Receiver<u64> {
        self.commits.subscribe()
    }

    fn tick(&self) {
        self.commits
            .send_modify(|count| *count = count.wrapping_add(1));
    }

    /// A receiver of every commit broadcast from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<CommittedChanges>> {
        self.sender.subscribe()
    }

    /// The highest sequence number broadcast so far.
    pub fn delivered(&self) -> u64 {
        *self.lock()
    }

    /// Broadcasts a commit made by this process (its changes, ascending per
    /// set), after any changes of other processes numbered before it.
    pub fn publish_local(&self, committed: CommittedChanges) {
        self.tick();
        let Some((first, last)) = span(&committed) else {
            return;
        };
        let mut delivered = self.lock();
        if last <= *delivered {
            return;
        }
        if first > *delivered + 1 {
            self.deliver_gap(&mut delivered, first - 1);
        }
        let after = *delivered;
        let mut fresh = CommittedChanges::default();
        for (set, changes) in committed.by_set {
            let changes: Vec<_> = changes
                .into_iter()
                .filter(|change| change.hub_seq > after)
                .collect();
            if !changes.is_empty() {
                fresh.by_set.insert(set, changes);
            }
        }
        self.send(fresh, after, last);
        *delivered = last;
    }

    /// Another process (or an import) committed up to `head`: broadcasts
    /// what this process has not, read from the log.
    pub fn publish_upto(&self, head: u64) {
        let mut delivered = self.lock();
        if head > *delivered {
            self.deliver_gap(&mut delivered, head);
        }
        drop(delivered);
        self.tick();
    }

    /// Reads `(delivered, upto]` from the log and broadcasts it. When the
    /// read fails the range is announced empty: receivers see the gap in
    /// the next broadcast's range and read the log themselves.
    fn deliver_gap(&self, delivered: &mut u64, upto: u64) {
        let after = *delivered;
        match (self.gaps)(after, upto) {
            Ok(read) => self.send(read, after, upto),
            Err(error) => {
                tracing::warn!(%error, after, upto, "reading other hub processes' commits failed; live subscriptions re-read the log");
            }
        }
        *delivered = upto;
    }

    fn send(&self, mut committed: CommittedChanges, after: u64, upto: u64) {
        committed.after = after;
        committed.upto = upto;
        // No receivers is fine: nobody is subscribed.
        let _ = self.sender.send(Arc::new(committed));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, u64> {
        // The guarded value is a number: a panic elsewhere cannot leave it torn.
        self.delivered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The lowest and highest sequence numbers of a commit.
fn span(committed: &CommittedChanges) -> Option<(u64, u64)> {
    let mut span: Option<(u64, u64)> = None;
    for change in committed.by_set.values().flatten() {
        let (low, high) = span.get_or_insert((change.hub_seq, change.hub_seq));
        *low = (*low).min(change.hub_seq);
        *high = (*high).max(change.hub_seq);
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;
    use omnisync_core::protocol::message::RemoteChange;
    use omnisync_core::vocab::ids::{DocId, DocSetId, ReplicaId};

    fn change(seq: u64) -> RemoteChange {
        RemoteChange {
            hub_seq: seq,
            doc: DocId::new("store.s1/p1").expect("doc id"),
            origin: ReplicaId([1; 16]),
            bytes: vec![seq as u8],
        }
    }

    fn commit(seqs: std::ops::RangeInclusive<u64>) -> CommittedChanges {
        let mut committed = CommittedChanges::default();
        committed.by_set.insert(
            DocSetId::new("store.s1").expect("set id"),
            seqs.map(change).collect(),
        );
        committed
    }

    fn seqs(committed: &CommittedChanges) -> Vec<u64> {
        committed
            .by_set
            .values()
            .flatten()
            .map(|change| change.hub_seq)
            .collect()
    }

    /// The ranges the gap reader was asked for.
    type Reads = Arc<Mutex<Vec<(u64, u64)>>>;

    /// A fan-out whose gap reader makes up the changes asked for (or
    /// fails), noting each read.
    fn fanout(head: u64, fail: bool) -> (Fanout, Reads) {
        let reads = Arc::new(Mutex::new(Vec::new()));
        let seen = reads.clone();
        let gaps = move |after: u64, upto: u64| {
            seen.lock().expect("reads").push((after, upto));
            if fail {
                return Err(HubLogError::Storage("database gone".into()));
            }
            Ok(commit(after + 1..=upto))
        };
        (Fanout::new(head, 16, Box::new(gaps)), reads)
    }

    #[test]
    fn a_local_commit_after_foreign_ones_brings_them_first() {
        let (fanout, reads) = fanout(10, false);
        let mut receiver = fanout.subscribe();
        fanout.publish_local(commit(11..=12));
        // Another process committed 13..=15 before this process's 16..=17.
        fanout.publish_local(commit(16..=17));
        let got: Vec<_> = std::iter::from_fn(|| receiver.try_recv().ok()).collect();
        let all: Vec<u64> = got.iter().flat_map(|c| seqs(c)).collect();
        assert_eq!(all, (11..=17).collect::<Vec<_>>());
        assert_eq!(*reads.lock().expect("reads"), vec![(12, 15)]);
        let ranges: Vec<_> = got.iter().map(|c| (c.after, c.upto)).collect();
        assert_eq!(ranges, vec![(10, 12), (12, 15), (15, 17)]);
    }

    #[test]
    fn a_foreign_head_already_covered_locally_is_not_sent_twice() {
        let (fanout, reads) = fanout(0, false);
        let mut receiver = fanout.subscribe();
        // The notification of this process's own commit may come first.
        fanout.publish_upto(3);
        fanout.publish_local(commit(1..=3));
        fanout.publish_upto(3);
        fanout.publish_local(commit(4..=5));
        fanout.publish_upto(2);
        let got: Vec<_> = std::iter::from_fn(|| receiver.try_recv().ok()).collect();
        let all: Vec<u64> = got.iter().flat_map(|c| seqs(c)).collect();
        assert_eq!(all, vec![1, 2, 3, 4, 5]);
        assert_eq!(*reads.lock().expect("reads"), vec![(0, 3)]);
        assert_eq!(fanout.delivered(), 5);
    }

    #[test]
    fn a_failed_gap_read_leaves_a_visible_hole() {
        let (fanout, _) = fanout(0, true);
        let mut receiver = fanout.subscribe();
        fanout.publish_local(commit(4..=5));
        let got = receiver.try_recv().expect("the local commit");
        // Receivers last given 0 see a range starting at 3: they re-read.
        assert_eq!((got.after, got.upto), (3, 5));
        assert_eq!(seqs(&got), vec![4, 5]);
    }
}
