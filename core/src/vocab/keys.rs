//! The keys and names of retail intents: order ids, idempotency keys,
//! payment references, reservation keys and order status names.
//!
//! Each is parsed once where text enters the system (an app's request, a
//! decoded frame, a stored row) and carried typed from then on, so no layer
//! re-validates a string. On the wire and in storage each stays a plain
//! string (`serde(try_from = "String", into = "String")`): decoding a value
//! that breaks the rules fails instead of letting it in.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::vocab::ids::{IdError, check_name};

/// Longest idempotency key, reservation key or payment reference.
pub const KEY_BYTES_MAX: usize = 128;

/// Checks a key: 1 to [`KEY_BYTES_MAX`] bytes without control characters.
fn check_key(kind: &'static str, value: &str) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    check_reference(kind, value)
}

/// Checks a reference: at most [`KEY_BYTES_MAX`] bytes (empty allowed)
/// without control characters.
fn check_reference(kind: &'static str, value: &str) -> Result<(), IdError> {
    if value.len() > KEY_BYTES_MAX {
        return Err(IdError::TooLong {
            kind,
            max: KEY_BYTES_MAX,
        });
    }
    if value.chars().any(char::is_control) {
        return Err(IdError::ControlCharacter {
            kind,
            value: value.to_owned(),
        });
    }
    Ok(())
}

macro_rules! text_key {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $check:path) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses and validates the value.
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                $check($kind, &value)?;
                Ok(Self(value))
            }

            /// The value as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(value: &str) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
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
    };
}

text_key!(
    /// An order's id, chosen by the device and unique in the store, e.g.
    /// `till-3-000042`: a name segment (`A-Z a-z 0-9 - _ .`, 1 to 64 bytes),
    /// because it names the order's record document.
    OrderId, "order id", check_name
);
text_key!(
    /// An app's idempotency key: a second intent with the same key is a
    /// duplicate. 1 to [`KEY_BYTES_MAX`] bytes without control characters.
    IdempotencyKey, "idempotency key", check_key
);
text_key!(
    /// The key naming a reservation (web checkout, click and collect).
    /// 1 to [`KEY_BYTES_MAX`] bytes without control characters.
    ReservationKey, "reservation key", check_key
);
text_key!(
    /// A payment's reference (card terminal, wallet): at most
    /// [`KEY_BYTES_MAX`] bytes without control characters; may be empty.
    PaymentRef, "payment reference", check_reference
);
text_key!(
    /// The name of an order status (`confirmed`, `paid`, `fulfilled`,
    /// `compensated-refund`, ...): a name segment (`A-Z a-z 0-9 - _ .`).
    OrderStatusName, "order status", check_name
);

impl From<&OrderId> for IdempotencyKey {
    /// The default idempotency key of a checkout: its order id (an order id
    /// is always a valid key: a shorter string of a narrower alphabet).
    fn from(order_id: &OrderId) -> Self {
        Self(order_id.0.clone())
    }
}

impl OrderStatusName {
    /// The status of an order the hub just decided.
    pub fn confirmed() -> Self {
        Self(OrderStatus::Confirmed.as_str().to_owned())
    }
}

/// Where an order is, as the device's query tables show it: recorded and
/// waiting for the hub, decided (confirmed or refused), or moved on to a
/// later status by an order status change.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
#[non_exhaustive]
pub enum OrderStatus {
    /// Recorded on the device; the hub has not decided it yet.
    Pending,
    /// The hub accepted the checkout.
    Confirmed,
    /// The hub refused the checkout; nothing was sold.
    Refused,
    /// A later status set by an order status change (`paid`, `fulfilled`,
    /// `compensated-refund`, ...).
    Named(OrderStatusName),
}

impl OrderStatus {
    /// Stable text form (the name of a [`OrderStatus::Named`] status).
    pub fn as_str(&self) -> &str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Refused => "refused",
            OrderStatus::Named(name) => name.as_str(),
        }
    }

    /// Parses the text form; text that is not a valid status name is an error.
    pub fn parse(text: &str) -> Result<Self, IdError> {
        Ok(Self::from(OrderStatusName::new(text)?))
    }
}

impl From<OrderStatusName> for OrderStatus {
    /// The well-known names become their variants, so one text has one form.
    fn from(name: OrderStatusName) -> Self {
        match name.as_str() {
            "pending" => OrderStatus::Pending,
            "confirmed" => OrderStatus::Confirmed,
            "refused" => OrderStatus::Refused,
            _ => OrderStatus::Named(name),
        }
    }
}

impl TryFrom<String> for OrderStatus {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, IdError> {
        Ok(Self::from(OrderStatusName::new(value)?))
    }
}

impl From<OrderStatus> for String {
    fn from(status: OrderStatus) -> String {
        match status {
            OrderStatus::Named(name) => name.0,
            other => other.as_str().to_owned(),
        }
    }
}

impl FromStr for OrderStatus {
    type Err = IdError;
    fn from_str(text: &str) -> Result<Self, IdError> {
        Self::parse(text)
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_ids_are_name_segments() {
        assert_eq!(
            OrderId::new("till-3-000042").unwrap().as_str(),
            "till-3-000042"
        );
        assert_eq!(OrderId::new(""), Err(IdError::Empty { kind: "order id" }));
        assert!(matches!(
            OrderId::new("a/b"),
            Err(IdError::BadCharacter {
                kind: "order id",
                ..
            })
        ));
        assert!(matches!(
            OrderId::new("o".repeat(65)),
            Err(IdError::TooLong {
                kind: "order id",
                max: 64
            })
        ));
        let error = OrderId::new("x y").unwrap_err().to_string();
        assert!(error.contains("order id"), "{error}");
    }

    #[test]
    fn keys_refuse_empty_long_and_control_text() {
        assert!(IdempotencyKey::new("web checkout #7 / ü").is_ok());
        assert_eq!(
            IdempotencyKey::new(""),
            Err(IdError::Empty {
                kind: "idempotency key"
            })
        );
        assert!(matches!(
            IdempotencyKey::new("k".repeat(KEY_BYTES_MAX + 1)),
            Err(IdError::TooLong {
                max: KEY_BYTES_MAX,
                ..
            })
        ));
        assert!(IdempotencyKey::new("k".repeat(KEY_BYTES_MAX)).is_ok());
        let error = ReservationKey::new("web\n1").unwrap_err();
        assert!(matches!(error, IdError::ControlCharacter { .. }));
        assert!(error.to_string().contains("reservation key"), "{error}");
        assert!(ReservationKey::new("").is_err());
    }

    #[test]
    fn payment_refs_may_be_empty_but_not_long_or_control() {
        assert_eq!(PaymentRef::new("").unwrap().as_str(), "");
        assert!(PaymentRef::new("card-7731").is_ok());
        assert!(PaymentRef::new("p".repeat(KEY_BYTES_MAX + 1)).is_err());
        assert!(matches!(
            PaymentRef::new("card\u{7}"),
            Err(IdError::ControlCharacter { .. })
        ));
    }

    #[test]
    fn the_default_key_is_the_order_id() {
        let order = OrderId::new("o-1").unwrap();
        assert_eq!(IdempotencyKey::from(&order).as_str(), "o-1");
    }

    #[test]
    fn order_statuses_parse_strictly_and_round_trip() {
        assert_eq!(OrderStatus::parse("pending").unwrap(), OrderStatus::Pending);
        assert_eq!(
            OrderStatus::parse("confirmed").unwrap(),
            OrderStatus::Confirmed
        );
        assert_eq!(OrderStatus::parse("refused").unwrap(), OrderStatus::Refused);
        let paid = OrderStatus::parse("paid").unwrap();
        assert_eq!(paid.as_str(), "paid");
        assert!(matches!(paid, OrderStatus::Named(_)));
        assert_eq!(
            OrderStatus::from(OrderStatusName::confirmed()),
            OrderStatus::Confirmed
        );
        assert!(OrderStatus::parse("").is_err());
        assert!(OrderStatus::parse("paid\n").is_err());
        assert!(OrderStatusName::new("compensated refund").is_err());
        for status in ["pending", "confirmed", "refused", "compensated-refund"] {
            assert_eq!(String::from(OrderStatus::parse(status).unwrap()), status);
        }
    }

    #[test]
    fn serde_keeps_the_string_encoding_and_validates() {
        let order = OrderId::new("o-1").unwrap();
        assert_eq!(serde_json::to_string(&order).unwrap(), "\"o-1\"");
        assert_eq!(
            postcard::to_stdvec(&order).unwrap(),
            postcard::to_stdvec("o-1").unwrap()
        );
        assert!(serde_json::from_str::<OrderId>("\"a/b\"").is_err());
        assert!(serde_json::from_str::<IdempotencyKey>("\"\"").is_err());
        assert!(serde_json::from_str::<PaymentRef>("\"a\\u0000\"").is_err());
        let status: OrderStatus = serde_json::from_str("\"refused\"").unwrap();
        assert_eq!(status, OrderStatus::Refused);
        assert_eq!(serde_json::to_string(&status).unwrap(), "\"refused\"");
        assert!(serde_json::from_str::<OrderStatus>("\"no such status\"").is_err());
    }
}
