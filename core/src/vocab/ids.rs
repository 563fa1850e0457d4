//! Identifier newtypes shared by the store, the protocol and the hub.
//!
//! Every identifier that crosses a boundary (socket, file, FFI) is parsed once
//! into one of these types, so code past the boundary never re-validates
//! strings ("parse, don't validate").

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest accepted name segment (store, device, document names).
pub const NAME_BYTES_MAX: usize = 64;
/// Longest accepted document id, set prefix included.
pub const DOC_ID_BYTES_MAX: usize = 200;

/// Why a string was refused as an identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The string was empty.
    #[error("{kind} is empty")]
    Empty {
        /// Which identifier kind was being parsed.
        kind: &'static str,
    },
    /// The string was longer than the limit.
    #[error("{kind} is longer than {max} bytes")]
    TooLong {
        /// Which identifier kind was being parsed.
        kind: &'static str,
        /// The limit.
        max: usize,
    },
    /// The string held a character outside the allowed alphabet.
    #[error(
        "{kind} {value:?} may only contain A-Z a-z 0-9 - _ . (and / between segments of a document id)"
    )]
    BadCharacter {
        /// Which identifier kind was being parsed.
        kind: &'static str,
        /// The refused input.
        value: String,
    },
    /// The string held a control character (keys and references may hold
    /// any other character).
    #[error("{kind} {value:?} contains a control character")]
    ControlCharacter {
        /// Which identifier kind was being parsed.
        kind: &'static str,
        /// The refused input.
        value: String,
    },
    /// A document id or set id that does not follow `kind.name/...`.
    #[error("{kind} {value:?} is malformed: {reason}")]
    Malformed {
        /// Which identifier kind was being parsed.
        kind: &'static str,
        /// The refused input.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Checks a name segment (`A-Z a-z 0-9 - _ .`, 1 to [`NAME_BYTES_MAX`] bytes).
pub fn check_name(kind: &'static str, value: &str) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if value.len() > NAME_BYTES_MAX {
        return Err(IdError::TooLong {
            kind,
            max: NAME_BYTES_MAX,
        });
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if !value.chars().all(allowed) {
        return Err(IdError::BadCharacter {
            kind,
            value: value.to_owned(),
        });
    }
    Ok(())
}

macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Parses and validates the identifier.
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                check_name($kind, &value)?;
                Ok(Self(value))
            }

            /// The identifier as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(value: &str) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let value = String::deserialize(deserializer)?;
                Self::new(value).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_id!(
    /// A store (shop) of the retail chain, e.g. `berlin-01`.
    StoreId, "store id"
);
name_id!(
    /// A device enrolled with the hub: a till, a phone, a back-office system.
    DeviceId, "device id"
);
name_id!(
    /// A customer of the chain (owner of carts, wishlists and a profile).
    CustomerId, "customer id"
);
name_id!(
    /// A tenant: one retail chain, the issuer's unit of trust in device tokens.
    TenantId, "tenant id"
);

/// The random identity of one local database (one install of the app).
///
/// It is both the automerge actor id of every change the replica makes and the
/// first half of every [`OpId`]. It is random rather than derived from the
/// device id on purpose: a device that is wiped and re-enrolled starts a new
/// replica, so its operation sequence can restart at 1 without colliding with
/// the ops (and automerge changes) of its previous life.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReplicaId(pub [u8; 16]);

impl ReplicaId {
    /// A fresh random replica id.
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// Parses a replica id from exactly 16 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 16]>::try_from(bytes).ok().map(Self)
    }

    /// The automerge actor id for changes made by this replica in one epoch
    /// (one opening of its database): the replica's 16 bytes, then the epoch
    /// as 4 big-endian bytes. A new epoch per opening means a change that was
    /// lost locally (a relaxed commit rolled back by a power cut) can never
    /// share its (actor, seq) with a different change made after the restart.
    pub fn actor(&self, epoch: u32) -> automerge::ActorId {
        let mut bytes = self.0.to_vec();
        bytes.extend_from_slice(&epoch.to_be_bytes());
        automerge::ActorId::from(bytes)
    }

    /// True if `actor` is one of this replica's actor ids (any epoch).
    pub fn owns_actor(&self, actor: &automerge::ActorId) -> bool {
        let bytes = actor.to_bytes();
        bytes.len() == 20 && bytes[..16] == self.0
    }
}

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReplicaId({})", hex::encode(&self.0[..4]))
    }
}

impl FromStr for ReplicaId {
    type Err = IdError;
    fn from_str(value: &str) -> Result<Self, IdError> {
        let bytes = hex::decode(value).map_err(|_| IdError::Malformed {
            kind: "replica id",
            value: value.to_owned(),
            reason: "not hex",
        })?;
        Self::from_slice(&bytes).ok_or(IdError::Malformed {
            kind: "replica id",
            value: value.to_owned(),
            reason: "not 16 bytes",
        })
    }
}

/// The unique id of one operation: the replica that made it and its position
/// in that replica's log (1, 2, 3, ... without gaps).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OpId {
    /// The replica (local database) that recorded the op.
    pub replica: ReplicaId,
    /// Position in the replica's operation log, starting at 1.
    pub seq: u64,
}

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", hex::encode(&self.replica.0[..4]), self.seq)
    }
}

impl fmt::Debug for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OpId({self})")
    }
}

/// A set of documents that devices subscribe to as a whole, written
/// `kind.name`: `store.berlin-01` (a store's catalog, prices, stock, orders),
/// `customer.c-42` (a shopper's cart, wishlist, profile), `chain.main`
/// (chain-wide data).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DocSetId(String);

/// The kinds of document set a device can subscribe to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DocSetKind {
    /// A store's shared data.
    Store,
    /// One customer's private data.
    Customer,
    /// Data shared by the whole chain.
    Chain,
    /// A store's orders as the hub decided them (hub records only).
    Orders,
    /// One device's private records from the hub (its escrow allowances).
    Device,
}

impl DocSetId {
    /// Parses `kind.name`.
    pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
        let value = value.into();
        let (kind, name) = value.split_once('.').ok_or_else(|| IdError::Malformed {
            kind: "document set id",
            value: value.clone(),
            reason: "expected kind.name, e.g. store.berlin-01",
        })?;
        if !matches!(kind, "store" | "customer" | "chain" | "orders" | "device") {
            return Err(IdError::Malformed {
                kind: "document set id",
                value,
                reason: "kind must be store, customer, chain, orders or device",
            });
        }
        check_name("document set name", name)?;
        Ok(Self(value))
    }

    /// The document set of a store.
    pub fn store(store: &StoreId) -> Self {
        Self(format!("store.{store}"))
    }

    /// The document set of a customer.
    pub fn customer(customer: &CustomerId) -> Self {
        Self(format!("customer.{customer}"))
    }

    /// The set of a store's decided orders.
    pub fn orders(store: &StoreId) -> Self {
        Self(format!("orders.{store}"))
    }

    /// The set of one device's private hub records (its allowances):
    /// `device.STORE.DEVICE`. `None` when the two names together are longer
    /// than a set name may be; such a device gets no allowances (every sale
    /// goes to the hub), which is safe.
    pub fn device(store: &StoreId, device: &DeviceId) -> Option<Self> {
        Self::new(format!("device.{store}.{device}")).ok()
    }

    /// The chain-wide document set.
    pub fn chain() -> Self {
        Self("chain.main".to_owned())
    }

    /// What kind of set this is.
    pub fn kind(&self) -> DocSetKind {
        match self.0.split_once('.').map(|(kind, _)| kind) {
            Some("store") => DocSetKind::Store,
            Some("customer") => DocSetKind::Customer,
            Some("orders") => DocSetKind::Orders,
            Some("device") => DocSetKind::Device,
            // The constructor admits only these kinds.
            _ => DocSetKind::Chain,
        }
    }

    /// The name part (`berlin-01` of `store.berlin-01`).
    pub fn name(&self) -> &str {
        self.0.split_once('.').map(|(_, name)| name).unwrap_or("")
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A document: `set/name` or `set/name/part`, e.g. `store.berlin-01/stock/007`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DocId(String);

impl DocId {
    /// Parses `set/segment[/segment...]`.
    pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
        let value = value.into();
        if value.len() > DOC_ID_BYTES_MAX {
            return Err(IdError::TooLong {
                kind: "document id",
                max: DOC_ID_BYTES_MAX,
            });
        }
        let mut segments = value.split('/');
        let set = segments.next().unwrap_or("");
        DocSetId::new(set)?;
        let mut count = 0;
        for segment in segments {
            check_name("document id segment", segment)?;
            count += 1;
        }
        if count == 0 {
            return Err(IdError::Malformed {
                kind: "document id",
                value,
                reason: "expected set/name, e.g. store.berlin-01/catalog",
            });
        }
        Ok(Self(value))
    }

    /// A document inside `set`, named by `path` segments joined with `/`.
    pub fn in_set(set: &DocSetId, path: &str) -> Result<Self, IdError> {
        Self::new(format!("{}/{}", set.as_str(), path))
    }

    /// The set this document belongs to.
    pub fn set(&self) -> DocSetId {
        let set = self
            .0
            .split_once('/')
            .map(|(set, _)| set)
            .unwrap_or(&self.0);
        // Validated by the constructor.
        DocSetId(set.to_owned())
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! string_like {
    ($name:ident) => {
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }
        impl FromStr for $name {
            type Err = IdError;
            fn from_str(value: &str) -> Result<Self, IdError> {
                Self::new(value)
            }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let value = String::deserialize(deserializer)?;
                Self::new(value).map_err(serde::de::Error::custom)
            }
        }
    };
}
string_like!(DocSetId);
string_like!(DocId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doc_ids_parse_and_name_their_set() {
        let doc = DocId::new("store.berlin-01/stock/007").unwrap();
        assert_eq!(doc.set().as_str(), "store.berlin-01");
        assert_eq!(doc.set().kind(), DocSetKind::Store);
        assert!(
            DocId::new("store.berlin-01").is_err(),
            "a bare set is not a document"
        );
        assert!(DocId::new("shop.x/a").is_err(), "unknown set kind");
        assert!(DocId::new("store.x//a").is_err(), "empty segment");
        assert!(DocId::new("store.x/a b").is_err(), "space");
        assert!(DocId::new(format!("store.x/{}", "a".repeat(300))).is_err());
    }

    #[test]
    fn names_refuse_hostile_strings() {
        assert!(StoreId::new("").is_err());
        assert!(StoreId::new("a/b").is_err());
        assert!(DeviceId::new("till-1\n").is_err());
        assert!(DeviceId::new("x".repeat(65)).is_err());
        assert_eq!(StoreId::new("berlin-01").unwrap().as_str(), "berlin-01");
    }

    #[test]
    fn replica_ids_round_trip_through_hex() {
        let replica = ReplicaId::random();
        let parsed: ReplicaId = replica.to_string().parse().unwrap();
        assert_eq!(parsed, replica);
        assert!("zz".parse::<ReplicaId>().is_err());
    }

    #[test]
    fn deserializing_validates() {
        let bad: Result<StoreId, _> = serde_json::from_str("\"a/b\"");
        assert!(bad.is_err());
    }
}
