//! The sync protocol as devices speak it: wire messages and the device's
//! sans-I/O state machine. The hub's state machine (`HubSession`) and its
//! authorization rules are in the crate `omnisync-hub-engine`.
//!
//! Architecture invariant: nothing in this module does I/O, reads a clock,
//! spawns a thread or draws a random number. Time comes in as `now_ms`.

pub mod device_session;
pub mod message;
