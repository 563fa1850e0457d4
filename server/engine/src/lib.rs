//! omnisync-hub-engine: what only a hub runs, without I/O.
//!
//! Devices never compile this crate. It holds:
//! - [`hub_session`]: the hub's per-connection sans-I/O state machine
//!   (`HubSession`) and `judge_op`, the verdict on an incoming op;
//! - [`authz`]: the authorization rules as pure functions of a `Peer`;
//! - [`ledger`]: the stock ledger with its escrow arithmetic, the authority
//!   that decides intents inside a unit of work, and the hub's price book;
//! - [`log`]: the hub's durable change log: `HubLog` and `HubLogRead`, the
//!   row-level contract a backend implements (`log::contract`), the logic
//!   every backend shares (op loop, price book, snapshots, page cutting,
//!   import writes, in `HubStore`), an in-memory backend and, with feature
//!   `conformance`, the one test suite every backend runs.
//!
//! The socket shell, the SQLite backend and the committer thread are in
//! `omnisync-hub`; the vocabulary and the wire messages come from
//! `omnisync-core`.

pub mod authz;
pub mod error;
pub mod events;
pub mod hub_session;
pub mod ledger;
pub mod log;
