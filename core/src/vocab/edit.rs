//! Typed edits and values for documents, so callers never touch automerge.
//!
//! A document is a tree of maps whose leaves are [`Value`]s. An [`Edit`]
//! addresses a leaf by its path of map keys. The domain layer builds on these;
//! apps should prefer the domain API where one exists.

use automerge::transaction::{Transactable, Transaction};
use automerge::{ObjId, ObjType, ROOT, ReadDoc, ScalarValue};
use serde::{Deserialize, Serialize};

/// Most path segments in one edit.
pub const PATH_DEPTH_MAX: usize = 8;
/// Most edits applied to one document in one op.
pub const EDITS_PER_DOC_MAX: usize = 4096;
/// Longest map key.
pub const KEY_BYTES_MAX: usize = 256;

/// A leaf value in a document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// Absent or cleared.
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer (money in minor units, quantities).
    Int(i64),
    /// Text.
    Str(String),
    /// Raw bytes.
    Bytes(Vec<u8>),
    /// A counter: concurrent increments add up instead of overwriting.
    Counter(i64),
}

impl Value {
    /// The integer in an `Int` or `Counter`.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(n) | Value::Counter(n) => Some(*n),
            _ => None,
        }
    }

    /// The text in a `Str`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(text) => Some(text),
            _ => None,
        }
    }

    fn to_scalar(&self) -> ScalarValue {
        match self {
            Value::Null => ScalarValue::Null,
            Value::Bool(flag) => ScalarValue::Boolean(*flag),
            Value::Int(n) => ScalarValue::Int(*n),
            Value::Str(text) => ScalarValue::Str(text.as_str().into()),
            Value::Bytes(bytes) => ScalarValue::Bytes(bytes.clone()),
            Value::Counter(n) => ScalarValue::counter(*n),
        }
    }

    pub(crate) fn from_scalar(scalar: &ScalarValue) -> Value {
        match scalar {
            ScalarValue::Null => Value::Null,
            ScalarValue::Boolean(flag) => Value::Bool(*flag),
            ScalarValue::Int(n) | ScalarValue::Timestamp(n) => Value::Int(*n),
            ScalarValue::Uint(n) => Value::Int(i64::try_from(*n).unwrap_or(i64::MAX)),
            ScalarValue::F64(n) => Value::Int(*n as i64),
            ScalarValue::Counter(_) => Value::Counter(scalar.as_i64().unwrap_or(0)),
            ScalarValue::Str(text) => Value::Str(text.to_string()),
            ScalarValue::Bytes(bytes) => Value::Bytes(bytes.clone()),
            ScalarValue::Unknown { bytes, .. } => Value::Bytes(bytes.clone()),
        }
    }
}

/// One change to one leaf of a document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Edit {
    /// Set the leaf at `path`, creating intermediate maps.
    Put {
        /// Map keys from the document root.
        path: Vec<String>,
        /// The new value.
        value: Value,
    },
    /// Add `by` to the counter at `path`. The counter must exist: creating
    /// counters concurrently on two replicas would hide one of them.
    Increment {
        /// Map keys from the document root.
        path: Vec<String>,
        /// Amount to add (negative to subtract).
        by: i64,
    },
    /// Remove the leaf or subtree at `path`, if present.
    Delete {
        /// Map keys from the document root.
        path: Vec<String>,
    },
}

impl Edit {
    /// `Put` with a path given as string slices.
    pub fn put(path: &[&str], value: Value) -> Self {
        Edit::Put {
            path: path.iter().map(|s| (*s).to_owned()).collect(),
            value,
        }
    }

    /// `Increment` with a path given as string slices.
    pub fn increment(path: &[&str], by: i64) -> Self {
        Edit::Increment {
            path: path.iter().map(|s| (*s).to_owned()).collect(),
            by,
        }
    }

    /// `Delete` with a path given as string slices.
    pub fn delete(path: &[&str]) -> Self {
        Edit::Delete {
            path: path.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn path(&self) -> &[String] {
        match self {
            Edit::Put { path, .. } | Edit::Increment { path, .. } | Edit::Delete { path } => path,
        }
    }
}

/// Why an edit could not be applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum EditError {
    /// The path is empty, too deep, or has an empty or overlong key.
    #[error("invalid path {0:?}")]
    BadPath(Vec<String>),
    /// An intermediate key holds a leaf, not a map.
    #[error("{0:?} is not a map")]
    NotAMap(Vec<String>),
    /// `Increment` of a key that holds no counter.
    #[error("{0:?} holds no counter")]
    NoCounter(Vec<String>),
    /// An increment would overflow the counter.
    #[error("incrementing {0:?} would overflow")]
    Overflow(Vec<String>),
    /// Too many edits for one document in one op.
    #[error("more than {EDITS_PER_DOC_MAX} edits to one document")]
    TooMany,
    /// automerge refused the operation.
    #[error("document edit failed: {0}")]
    Document(String),
}

fn doc_error(error: automerge::AutomergeError) -> EditError {
    EditError::Document(error.to_string())
}

fn check_path(path: &[String]) -> Result<(), EditError> {
    let bad = path.is_empty()
        || path.len() > PATH_DEPTH_MAX
        || path
            .iter()
            .any(|key| key.is_empty() || key.len() > KEY_BYTES_MAX);
    if bad {
        Err(EditError::BadPath(path.to_vec()))
    } else {
        Ok(())
    }
}

/// Finds the map that holds the leaf of `path`, creating maps on the way if
/// `create` is set. Returns `None` if a map is missing and `create` is unset.
fn parent_map(
    tx: &mut Transaction<'_>,
    path: &[String],
    create: bool,
) -> Result<Option<ObjId>, EditError> {
    let mut obj = ROOT;
    for (depth, key) in path[..path.len() - 1].iter().enumerate() {
        obj = match tx.get(&obj, key.as_str()).map_err(doc_error)? {
            Some((automerge::Value::Object(ObjType::Map), id)) => id,
            Some(_) => return Err(EditError::NotAMap(path[..=depth].to_vec())),
            None if create => tx
                .put_object(&obj, key.as_str(), ObjType::Map)
                .map_err(doc_error)?,
            None => return Ok(None),
        };
    }
    Ok(Some(obj))
}

/// Applies edits inside an open automerge transaction.
pub(crate) fn apply_edits(tx: &mut Transaction<'_>, edits: &[Edit]) -> Result<(), EditError> {
    if edits.len() > EDITS_PER_DOC_MAX {
        return Err(EditError::TooMany);
    }
    for edit in edits {
        let path = edit.path();
        check_path(path)?;
        let leaf = path[path.len() - 1].as_str();
        match edit {
            Edit::Put { value, .. } => {
                let Some(map) = parent_map(tx, path, true)? else {
                    unreachable!("created")
                };
                tx.put(&map, leaf, value.to_scalar()).map_err(doc_error)?;
            }
            Edit::Increment { by, .. } => {
                let map = parent_map(tx, path, false)?
                    .ok_or_else(|| EditError::NoCounter(path.to_vec()))?;
                match tx.get(&map, leaf).map_err(doc_error)? {
                    Some((automerge::Value::Scalar(scalar), _)) if scalar.is_counter() => {
                        // automerge panics on counter overflow; refuse it here.
                        if scalar.as_i64().unwrap_or(0).checked_add(*by).is_none() {
                            return Err(EditError::Overflow(path.to_vec()));
                        }
                        tx.increment(&map, leaf, *by).map_err(doc_error)?;
                    }
                    _ => return Err(EditError::NoCounter(path.to_vec())),
                }
            }
            Edit::Delete { .. } => {
                if let Some(map) = parent_map(tx, path, false)?
                    && tx.get(&map, leaf).map_err(doc_error)?.is_some()
                {
                    tx.delete(&map, leaf).map_err(doc_error)?;
                }
            }
        }
    }
    Ok(())
}

/// Reads the leaf at `path`; `None` if absent or not a leaf.
pub(crate) fn read_value<R: ReadDoc>(doc: &R, path: &[String]) -> Option<Value> {
    if path.is_empty() {
        return None;
    }
    let mut obj = ROOT;
    for key in &path[..path.len() - 1] {
        match doc.get(&obj, key.as_str()).ok()?? {
            (automerge::Value::Object(ObjType::Map), id) => obj = id,
            _ => return None,
        }
    }
    match doc.get(&obj, path[path.len() - 1].as_str()).ok()?? {
        (automerge::Value::Scalar(scalar), _) => Some(Value::from_scalar(&scalar)),
        _ => None,
    }
}

/// The keys of the map at `path` (the root for an empty path).
pub(crate) fn read_keys<R: ReadDoc>(doc: &R, path: &[String]) -> Vec<String> {
    let mut obj = ROOT;
    for key in path {
        match doc.get(&obj, key.as_str()) {
            Ok(Some((automerge::Value::Object(ObjType::Map), id))) => obj = id,
            _ => return Vec::new(),
        }
    }
    doc.keys(&obj).collect()
}
