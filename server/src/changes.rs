//! Which automerge change the hub holds for each (document, actor, seq).
//!
//! Automerge identifies a change by its actor and sequence number as well
//! as by its hash. A device that pushes two *different* changes with the
//! same actor and seq to one document (a hostile or broken device: its own
//! actor, so the author check passes) would make every replica that
//! receives the second one fail to apply it, again at every reconnect, and
//! so stop the whole set's sync. The hub therefore remembers a short hash
//! of every change per (document, actor, seq) it has accepted and rejects an
//! op that brings a different change under a taken identity, before
//! storage. The same change again (a retry) passes.
//!
//! The index is in memory and bounded ([`CHANGE_INDEX_DOCS_MAX`] documents,
//! least recently used dropped); a document not in it is first loaded from
//! the stored log.

use std::collections::HashMap;
use std::sync::Mutex;

use omnisync_core::DocId;

/// Most documents indexed at once.
pub const CHANGE_INDEX_DOCS_MAX: usize = 65_536;

/// One change's identity: document, actor, seq and the first 8 bytes of its
/// hash (a forger would need a 64-bit prefix collision).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeId {
    /// The document.
    pub doc: DocId,
    /// The automerge actor.
    pub actor: Vec<u8>,
    /// The actor's sequence number.
    pub seq: u64,
    /// The hash prefix.
    pub hash: u64,
}

impl ChangeId {
    /// The identity of `change` in `doc`.
    pub fn of(doc: &DocId, change: &automerge::Change) -> Self {
        let hash = change.hash();
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&hash.0[..8]);
        Self {
            doc: doc.clone(),
            actor: change.actor_id().to_bytes().to_vec(),
            seq: change.seq(),
            hash: u64::from_be_bytes(prefix),
        }
    }
}

/// The index of accepted changes.
#[derive(Default)]
pub struct ChangeIndex {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    docs: HashMap<DocId, DocEntry>,
    clock: u64,
}

#[derive(Default)]
struct DocEntry {
    /// Per actor, the hash prefix of seq n at index n - 1 (0 = not seen).
    actors: HashMap<Vec<u8>, Vec<u64>>,
    used: u64,
}

/// Most seqs a change may skip past the highest one indexed for its actor
/// (the changes of rejected ops leave such gaps); further ahead is refused,
/// which bounds what one hostile seq number can allocate.
pub const SEQ_GAP_MAX: u64 = 1024;

impl ChangeIndex {
    /// The documents of `docs` that are not indexed yet.
    pub fn missing<'a>(&self, docs: impl IntoIterator<Item = &'a DocId>) -> Vec<DocId> {
        let inner = self.lock();
        let mut missing: Vec<DocId> = docs
            .into_iter()
            .filter(|doc| !inner.docs.contains_key(*doc))
            .cloned()
            .collect();
        missing.sort();
        missing.dedup();
        missing
    }

    /// Indexes `doc` from what the log stores of it (`HubLogRead::doc_changes`:
    /// raw automerge changes, and saved documents — a snapshot, whose
    /// changes compaction deleted from the log, or an import), unless it is
    /// indexed already. Bytes that are neither (records) index nothing.
    pub fn load(&self, doc: &DocId, stored: &[Vec<u8>]) {
        let ids: Vec<ChangeId> = stored
            .iter()
            .flat_map(|bytes| stored_changes(bytes))
            .map(|change| ChangeId::of(doc, &change))
            .collect();
        let mut inner = self.lock();
        if inner.docs.contains_key(doc) {
            return;
        }
        inner.evict_if_full();
        let mut entry = DocEntry::default();
        for id in &ids {
            // Stored changes were accepted once; a conflict among them
            // (from before this check existed) keeps the first.
            entry.record(id);
        }
        inner.docs.insert(doc.clone(), entry);
    }

    /// Records every change of one op, or none: `Err` names the first change
    /// whose (document, actor, seq) is taken by a different change.
    pub fn reserve(&self, changes: &[ChangeId]) -> Result<(), String> {
        let mut inner = self.lock();
        inner.clock += 1;
        let now = inner.clock;
        for (index, change) in changes.iter().enumerate() {
            let known = inner.docs.get(&change.doc);
            let conflict = known.is_some_and(|entry| entry.conflicts(change))
                || changes[..index].iter().any(|earlier| {
                    earlier.doc == change.doc
                        && earlier.actor == change.actor
                        && earlier.seq == change.seq
                        && earlier.hash != change.hash
                });
            if conflict {
                return Err(format!(
                    "change {} of actor {} to {} differs from the change the hub holds under that number",
                    change.seq,
                    hex::encode(&change.actor),
                    change.doc
                ));
            }
            let indexed = known
                .and_then(|entry| entry.actors.get(&change.actor))
                .map_or(0, |seqs| seqs.len() as u64);
            if change.seq == 0 || change.seq > indexed + SEQ_GAP_MAX {
                return Err(format!(
                    "change {} of actor {} to {} skips more than {SEQ_GAP_MAX} changes",
                    change.seq,
                    hex::encode(&change.actor),
                    change.doc
                ));
            }
        }
        for change in changes {
            if !inner.docs.contains_key(&change.doc) {
                inner.evict_if_full();
            }
            let entry = inner.docs.entry(change.doc.clone()).or_default();
            entry.used = now;
            entry.record(change);
        }
        Ok(())
    }

    /// Documents indexed.
    pub fn len(&self) -> usize {
        self.lock().docs.len()
    }

    /// True when nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every mutation leaves the maps consistent.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The automerge changes in one stored entry: a change, or every change of
/// a saved document.
fn stored_changes(bytes: &[u8]) -> Vec<automerge::Change> {
    if let Ok(change) = automerge::Change::from_bytes(bytes.to_vec()) {
        return vec![change];
    }
    match automerge::Automerge::load(bytes) {
        Ok(saved) => saved.get_changes(&[]),
        Err(_) => Vec::new(),
    }
}

impl Inner {
    fn evict_if_full(&mut self) {
        if self.docs.len() < CHANGE_INDEX_DOCS_MAX {
            return;
        }
        // Drop the least recently used eighth in one pass.
        let mut uses: Vec<u64> = self.docs.values().map(|entry| entry.used).collect();
        let cut = uses.len() / 8;
        let (_, threshold, _) = uses.select_nth_unstable(cut);
        let threshold = *threshold;
        self.docs.retain(|_, entry| entry.used > threshold);
    }
}

impl DocEntry {
    fn conflicts(&self, change: &ChangeId) -> bool {
        self.actors
            .get(&change.actor)
            .and_then(|seqs| seqs.get(change.seq.checked_sub(1)? as usize))
            .is_some_and(|known| *known != 0 && *known != change.hash)
    }

    /// Records a change whose seq is known to be within bounds (checked by
    /// `reserve`; stored changes were checked when they were accepted).
    fn record(&mut self, change: &ChangeId) {
        let Some(index) = change.seq.checked_sub(1) else {
            return;
        };
        let seqs = self.actors.entry(change.actor.clone()).or_default();
        if index >= seqs.len() as u64 + SEQ_GAP_MAX {
            return;
        }
        let index = index as usize;
        if seqs.len() <= index {
            seqs.resize(index + 1, 0);
        }
        if seqs[index] == 0 {
            seqs[index] = change.hash;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(doc: &str, actor: u8, seq: u64, hash: u64) -> ChangeId {
        ChangeId {
            doc: DocId::new(doc).unwrap(),
            actor: vec![actor; 20],
            seq,
            hash,
        }
    }

    #[test]
    fn a_different_change_under_a_taken_number_is_refused() {
        let index = ChangeIndex::default();
        index.reserve(&[id("store.s1/a", 1, 1, 10)]).unwrap();
        index.reserve(&[id("store.s1/a", 1, 1, 10)]).unwrap();
        assert!(index.reserve(&[id("store.s1/a", 1, 1, 11)]).is_err());
        index.reserve(&[id("store.s1/b", 1, 1, 11)]).unwrap();
        index.reserve(&[id("store.s1/a", 2, 1, 11)]).unwrap();
        index.reserve(&[id("store.s1/a", 1, 2, 12)]).unwrap();
        // An op is all or nothing.
        assert!(
            index
                .reserve(&[id("store.s1/c", 1, 1, 1), id("store.s1/a", 1, 2, 99)])
                .is_err()
        );
        index.reserve(&[id("store.s1/c", 1, 1, 2)]).unwrap();
        assert!(
            index
                .reserve(&[id("store.s1/d", 1, 1, 1), id("store.s1/d", 1, 1, 2)])
                .is_err()
        );
    }

    #[test]
    fn a_hostile_seq_cannot_allocate_without_bound() {
        let index = ChangeIndex::default();
        assert!(index.reserve(&[id("store.s1/a", 1, u64::MAX, 1)]).is_err());
        assert!(index.reserve(&[id("store.s1/a", 1, 0, 1)]).is_err());
    }

    #[test]
    fn loading_indexes_stored_changes() {
        use automerge::transaction::Transactable as _;
        let mut doc = automerge::Automerge::new();
        doc.set_actor(automerge::ActorId::from(vec![3u8; 20]));
        let mut tx = doc.transaction();
        tx.put(automerge::ROOT, "k", 1).unwrap();
        tx.commit();
        let change = doc.get_last_local_change().unwrap().clone();
        let doc_id = DocId::new("store.s1/a").unwrap();
        let index = ChangeIndex::default();
        assert_eq!(index.missing([&doc_id]), vec![doc_id.clone()]);
        index.load(&doc_id, &[change.raw_bytes().to_vec()]);
        assert!(index.missing([&doc_id]).is_empty());
        let mut other = ChangeId::of(&doc_id, &change);
        index.reserve(std::slice::from_ref(&other)).unwrap();
        other.hash ^= 1;
        assert!(index.reserve(&[other]).is_err());
    }

    #[test]
    fn loading_a_snapshot_indexes_the_changes_it_holds() {
        use automerge::transaction::Transactable as _;
        let mut doc = automerge::Automerge::new();
        doc.set_actor(automerge::ActorId::from(vec![4u8; 20]));
        for value in 0..3 {
            let mut tx = doc.transaction();
            tx.put(automerge::ROOT, "k", value).unwrap();
            tx.commit();
        }
        let second = doc.get_changes(&[])[1].clone();
        let doc_id = DocId::new("store.s1/a").unwrap();
        let index = ChangeIndex::default();
        // The log holds only the snapshot: its changes were compacted away.
        index.load(&doc_id, &[doc.save()]);
        let mut forged = ChangeId::of(&doc_id, &second);
        forged.hash ^= 1;
        assert!(
            index.reserve(&[forged]).is_err(),
            "a different change under a number the snapshot holds"
        );
        index.reserve(&[ChangeId::of(&doc_id, &second)]).unwrap();
    }
}
