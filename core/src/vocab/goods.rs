//! The goods a shop sells and what they cost: SKUs, money, currencies and
//! sales channels. Parsed once at the boundary; every layer above takes
//! these types and never re-validates text.

use serde::{Deserialize, Serialize};

use crate::vocab::ids::{IdError, check_name};

/// Buckets per store for catalog, price and stock documents: 100k products
/// make about 400 per bucket, well inside automerge's comfortable size.
pub const BUCKETS: u32 = 256;

/// A stock-keeping unit code.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sku(String);

impl Sku {
    /// Parses a SKU (`A-Z a-z 0-9 - _ .`, at most 64 bytes).
    pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
        let value = value.into();
        check_name("sku", &value)?;
        Ok(Self(value))
    }

    /// The SKU as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The bucket the SKU's catalog, price and stock entries live in.
    pub fn bucket(&self) -> u32 {
        // FNV-1a: stable across platforms and releases, unlike std's hasher.
        let mut hash: u32 = 0x811c_9dc5;
        for byte in self.0.as_bytes() {
            hash ^= u32::from(*byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
        hash % BUCKETS
    }
}

impl TryFrom<String> for Sku {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, IdError> {
        Sku::new(value)
    }
}

impl From<Sku> for String {
    fn from(sku: Sku) -> String {
        sku.0
    }
}

impl std::fmt::Display for Sku {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An amount of money in minor units (cents) of a currency.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "ffi", derive(uniffi::Record))]
pub struct Money {
    /// Minor units: 1899 is 18.99.
    pub amount_minor: i64,
    /// ISO 4217 code, e.g. `EUR`.
    pub currency: Currency,
}

/// An ISO 4217 currency code (three upper-case letters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

impl Currency {
    /// Parses a three-letter upper-case code.
    pub fn new(code: &str) -> Result<Self, IdError> {
        let bytes = code.as_bytes();
        if bytes.len() != 3 || !bytes.iter().all(u8::is_ascii_uppercase) {
            return Err(IdError::BadCharacter {
                kind: "currency (a three-letter upper-case ISO 4217 code)",
                value: code.to_owned(),
            });
        }
        Ok(Self([bytes[0], bytes[1], bytes[2]]))
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        // Constructed from ASCII upper-case letters only.
        std::str::from_utf8(&self.0).expect("currency codes are ASCII")
    }
}

impl TryFrom<String> for Currency {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, IdError> {
        Currency::new(&value)
    }
}

impl From<Currency> for String {
    fn from(currency: Currency) -> String {
        currency.as_str().to_owned()
    }
}

/// Where a price applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "ffi", derive(uniffi::Enum))]
pub enum Channel {
    /// Tills in the store.
    Pos,
    /// The web shop.
    Web,
    /// The mobile app.
    App,
}

impl Channel {
    /// Stable text form used in document keys and query tables.
    pub fn as_str(&self) -> &'static str {
        match self {
            Channel::Pos => "pos",
            Channel::Web => "web",
            Channel::App => "app",
        }
    }

    /// Parses the text form.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "pos" => Some(Channel::Pos),
            "web" => Some(Channel::Web),
            "app" => Some(Channel::App),
            _ => None,
        }
    }
}
