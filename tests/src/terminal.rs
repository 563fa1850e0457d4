//! What the `omnisync-test-terminal` binary writes, shared with the scenarios
//! that check it after a crash: the documents of a sale, its amount, and the
//! lines the binary prints.
//!
//! Sales are numbered 1, 2, 3, ... per terminal, across restarts: sale n is
//! the store's n-th op. They are not op sequence numbers, which grow but may
//! skip after a restart (the store reserves them in blocks).

use omnisync_core::vocab::ids::IdError;
use omnisync_core::{DocEdit, DocId, Edit, ReplicaId, Value};

/// The amount of sale `sale`, in minor units. Deterministic, so a scenario
/// can check the value it reads back after a crash.
pub fn sale_amount_minor(sale: u64) -> i64 {
    100 + (sale as i64 * 7919) % 10_000
}

/// The document holding a terminal's sales, one key `sale-<n>` per sale.
pub fn sales_doc(store: &str, device: &str) -> Result<DocId, IdError> {
    DocId::new(format!("store.{store}/sales/{device}"))
}

/// The document holding a terminal's `last_sale`.
pub fn till_doc(store: &str, device: &str) -> Result<DocId, IdError> {
    DocId::new(format!("store.{store}/tills/{device}"))
}

/// The key of sale `sale` in [`sales_doc`].
pub fn sale_key(sale: u64) -> String {
    format!("sale-{sale}")
}

/// The op that records sale `sale`: two documents, so every op's changes
/// must reach the hub together.
pub fn sale_edits(store: &str, device: &str, sale: u64) -> Result<Vec<DocEdit>, IdError> {
    Ok(vec![
        DocEdit {
            doc: sales_doc(store, device)?,
            edits: vec![Edit::put(
                &[&sale_key(sale)],
                Value::Int(sale_amount_minor(sale)),
            )],
        },
        DocEdit {
            doc: till_doc(store, device)?,
            edits: vec![Edit::put(&["last_sale"], Value::Int(sale as i64))],
        },
    ])
}

/// A line of the terminal's stdout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TerminalLine {
    /// `replica <hex>`: the store's replica id, printed first.
    Replica(ReplicaId),
    /// `committed <seq> <sale>`: sale number `sale`, op `seq`, is durable.
    Committed {
        /// The op's sequence number.
        seq: u64,
        /// The sale's number.
        sale: u64,
    },
    /// `done`: every sale was recorded (and synced, with `--hub`).
    Done,
}

impl TerminalLine {
    /// Renders the line as the binary prints it.
    pub fn render(&self) -> String {
        match self {
            TerminalLine::Replica(replica) => format!("replica {replica}"),
            TerminalLine::Committed { seq, sale } => format!("committed {seq} {sale}"),
            TerminalLine::Done => "done".to_owned(),
        }
    }

    /// Parses a line; `None` for anything else.
    pub fn parse(line: &str) -> Option<Self> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["replica", hex] => hex.parse().ok().map(TerminalLine::Replica),
            ["committed", seq, sale] => Some(TerminalLine::Committed {
                seq: seq.parse().ok()?,
                sale: sale.parse().ok()?,
            }),
            ["done"] => Some(TerminalLine::Done),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        let lines = [
            TerminalLine::Replica(ReplicaId([7; 16])),
            TerminalLine::Committed {
                seq: 1025,
                sale: 42,
            },
            TerminalLine::Done,
        ];
        for line in lines {
            assert_eq!(TerminalLine::parse(&line.render()), Some(line));
        }
        assert_eq!(TerminalLine::parse("committed 12"), None);
        assert_eq!(TerminalLine::parse("committed twelve 3"), None);
        assert_eq!(TerminalLine::parse("hello"), None);
    }
}
