//! Last-writer-wins registers in documents: every concurrent stamped value of
//! a key, and the edit that writes a value stamped later than all of them.

use automerge::{Automerge, ROOT, ReadDoc};
use serde::{Deserialize, Serialize};

use crate::db::{DbError, DocEdit, Replica};
use crate::vocab::edit::{Edit, Value};
use crate::vocab::hlc::{Stamped, stamp_of};
use crate::vocab::ids::DocId;

/// Every stamped value currently held at a register key (concurrent ones included).
pub(crate) fn register_values<T: for<'de> Deserialize<'de>>(
    doc: &Automerge,
    key: &str,
) -> Vec<Stamped<T>> {
    doc.get_all(ROOT, key)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(value, _)| value.as_bytes().and_then(Stamped::decode))
        .collect()
}

/// Builds the edit that writes a stamped value greater than every value the
/// store can see at `key` in `doc`.
pub(crate) fn stamped_put<T: Serialize>(
    store: &mut Replica,
    doc: &DocId,
    key: String,
    value: T,
    now_ms: u64,
) -> Result<DocEdit, DbError> {
    let floor = store.with_doc(doc, |loaded| {
        loaded
            .get_all(ROOT, key.as_str())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(value, _)| value.as_bytes().and_then(stamp_of))
            .max()
    })?;
    let hlc = store.hlc_tick(now_ms, floor.unwrap_or_default());
    let stamped = Stamped {
        hlc,
        writer: store.replica().0,
        value,
    };
    Ok(DocEdit {
        doc: doc.clone(),
        edits: vec![Edit::Put {
            path: vec![key],
            value: Value::Bytes(stamped.encode()),
        }],
    })
}
