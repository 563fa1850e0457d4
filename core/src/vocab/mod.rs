//! The vocabulary every layer speaks, at the bottom of the crate: identifiers,
//! goods and money, the hybrid logical clock, where data lives (document
//! layout), typed document edits, and what the hub decides (intents,
//! decisions, hub records). It imports nothing from the rest of the crate.

pub mod codec;
pub mod edit;
pub mod goods;
pub mod hlc;
pub mod ids;
pub mod intent;
pub mod keys;
pub mod layout;
pub mod record;
