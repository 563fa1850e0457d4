//! The sync protocol: wire messages and the two sans-I/O state machines.
//!
//! Architecture invariant: nothing in this module does I/O, reads a clock,
//! spawns a thread or draws a random number. Time comes in as `now_ms`.

pub mod authz;
pub mod client;
pub mod hub;
pub mod message;
