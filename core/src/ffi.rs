//! What the bindings (`omnisync-ffi`, UniFFI) need from the core, behind the
//! feature `ffi`: the identifier newtypes that cross the FFI as UniFFI custom
//! types, declared here and nowhere else. The records and enums that cross
//! (views, money, modes, policies) carry `#[cfg_attr(feature = "ffi",
//! derive(uniffi::Record))]` (or `uniffi::Enum`) where they are defined; the
//! core is its own UniFFI component (`uniffi::setup_scaffolding!` in the
//! crate root), so generated code puts them in their own module (Kotlin
//! package `dev.omnisync.core`, Python module `omnisync_core`, Swift file
//! `OmnisyncCore.swift` in the bindings' one Swift module; see
//! `core/uniffi.toml`).
//!
//! A custom type is its text form on the foreign side. Lowering never fails;
//! lifting parses, and a malformed value fails the call with UniFFI's
//! internal error, so the bindings take app input as plain text and parse it
//! themselves (a typed `InvalidInput`); these types cross mostly as results.

use std::str::FromStr;

use crate::vocab::goods::{Currency, Sku};
use crate::vocab::ids::{DocSetId, IdError, OpId, ReplicaId};
use crate::vocab::keys::{
    IdempotencyKey, OrderId, OrderStatus, OrderStatusName, PaymentRef, ReservationKey,
};

uniffi::custom_type!(Sku, String, {
    lower: |sku| String::from(sku),
    try_lift: |text| Ok(Sku::new(text)?),
});

uniffi::custom_type!(Currency, String, {
    lower: |currency| String::from(currency),
    try_lift: |text| Ok(Currency::new(&text)?),
});

uniffi::custom_type!(DocSetId, String, {
    lower: |set| set.as_str().to_owned(),
    try_lift: |text| Ok(DocSetId::new(text)?),
});

uniffi::custom_type!(OrderId, String, {
    lower: |id| String::from(id),
    try_lift: |text| Ok(OrderId::new(text)?),
});

uniffi::custom_type!(IdempotencyKey, String, {
    lower: |key| String::from(key),
    try_lift: |text| Ok(IdempotencyKey::new(text)?),
});

uniffi::custom_type!(ReservationKey, String, {
    lower: |key| String::from(key),
    try_lift: |text| Ok(ReservationKey::new(text)?),
});

uniffi::custom_type!(PaymentRef, String, {
    lower: |reference| String::from(reference),
    try_lift: |text| Ok(PaymentRef::new(text)?),
});

uniffi::custom_type!(OrderStatusName, String, {
    lower: |status| String::from(status),
    try_lift: |text| Ok(OrderStatusName::new(text)?),
});

uniffi::custom_type!(OrderStatus, String, {
    lower: |status| String::from(status),
    try_lift: |text| Ok(OrderStatus::parse(&text)?),
});

uniffi::custom_type!(OpId, String, {
    lower: |op| op_id_text(&op),
    try_lift: |text| Ok(parse_op_id(&text)?),
});

/// The text form of an op id handed to apps: the full replica id in hex, a
/// colon, the sequence number. (`OpId`'s `Display` abbreviates the replica,
/// so it cannot be parsed back.)
pub fn op_id_text(op: &OpId) -> String {
    format!("{}:{}", op.replica, op.seq)
}

/// Parses [`op_id_text`]'s form.
pub fn parse_op_id(text: &str) -> Result<OpId, IdError> {
    let malformed = |reason| IdError::Malformed {
        kind: "op id",
        value: text.to_owned(),
        reason,
    };
    let (replica, seq) = text
        .split_once(':')
        .ok_or_else(|| malformed("expected REPLICA_HEX:SEQ"))?;
    Ok(OpId {
        replica: ReplicaId::from_str(replica)?,
        seq: seq
            .parse()
            .map_err(|_| malformed("the sequence number is not a number"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_ids_round_trip_and_bad_ones_are_refused() {
        let op = OpId {
            replica: ReplicaId([7; 16]),
            seq: 42,
        };
        assert_eq!(parse_op_id(&op_id_text(&op)).unwrap(), op);
        for bad in [
            "",
            "nohex:1",
            "0707:1",
            "07070707070707070707070707070707:x",
        ] {
            assert!(parse_op_id(bad).is_err(), "{bad}");
        }
    }
}
