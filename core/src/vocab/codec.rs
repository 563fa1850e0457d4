//! The one encoding of everything omnisync sends or stores (device side,
//! shared by the hub): MessagePack with named fields, and the decoders of the
//! previous release's positional postcard bytes.
//!
//! The rule (see "Versioning and evolution" in `docs/protocol.md`):
//! - structs encode as maps keyed by field name, so a reader ignores fields
//!   it does not know and a new field read by an old writer's bytes takes its
//!   `#[serde(default)]`;
//! - enums encode externally tagged by variant *name* (`{"Name": value}`, or
//!   `"Name"` for a unit variant), so variants can be added anywhere and an
//!   unknown one is recognisable by its name;
//! - byte fields encode as MessagePack `bin` (serde bytes), not arrays.
//!
//! Stored blobs written by this release start with [`STORED_MAGIC`] (`0xC1`
//! is a byte MessagePack never uses, `0x02` the format version); anything
//! else is the previous release's postcard and is decoded as such.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Prefix of a stored blob in the evolvable format (format version 2).
pub const STORED_MAGIC: [u8; 2] = [0xC1, 0x02];

/// Why bytes do not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The bytes are not a value of the expected type.
    #[error("malformed: {0}")]
    Malformed(String),
    /// A well-formed value of a kind (enum variant) this build does not know:
    /// a newer release wrote it.
    #[error("unknown kind `{kind}` (written by a newer release?)")]
    UnknownKind {
        /// The variant's name.
        kind: String,
    },
}

/// Encodes a value as MessagePack with named fields (no prefix).
pub fn to_named<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Plain data into a Vec: rmp-serde only fails on a serializer error from
    // a custom impl, and none of ours fails.
    rmp_serde::to_vec_named(value).expect("MessagePack encoding of plain data")
}

/// Decodes a whole MessagePack value; trailing bytes are an error. A failure
/// whose top-level value is an enum variant of a name not in `known` is
/// reported as [`CodecError::UnknownKind`].
pub fn from_named<T: DeserializeOwned>(bytes: &[u8], known: &[&str]) -> Result<T, CodecError> {
    let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(bytes));
    match T::deserialize(&mut de) {
        Ok(value) => {
            let used = de.position() as usize;
            if used != bytes.len() {
                return Err(CodecError::Malformed(format!(
                    "{} trailing bytes",
                    bytes.len() - used
                )));
            }
            Ok(value)
        }
        Err(error) => match variant_name(bytes) {
            Some(kind) if !known.is_empty() && !known.contains(&kind.as_str()) => {
                Err(CodecError::UnknownKind { kind })
            }
            _ => Err(CodecError::Malformed(error.to_string())),
        },
    }
}

/// The variant name of an externally tagged enum value (`{"Name": ..}` or
/// `"Name"`), if the bytes start with one.
pub fn variant_name(bytes: &[u8]) -> Option<String> {
    let mut rest = bytes;
    let marker = rmp::decode::read_marker(&mut rest).ok()?;
    let mut rest = match marker {
        rmp::Marker::FixMap(1) => rest,
        rmp::Marker::Map16 | rmp::Marker::Map32 => {
            let mut whole = bytes;
            (rmp::decode::read_map_len(&mut whole).ok()? == 1).then_some(whole)?
        }
        _ => bytes,
    };
    let len = rmp::decode::read_str_len(&mut rest).ok()? as usize;
    let name = rest.get(..len)?;
    std::str::from_utf8(name).ok().map(str::to_owned)
}

/// Encodes a value for storage: [`STORED_MAGIC`] then MessagePack.
pub fn encode_stored<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut bytes = STORED_MAGIC.to_vec();
    bytes.extend(to_named(value));
    bytes
}

/// Decodes a stored blob: this release's format, or the previous release's
/// postcard encoding of the same type.
pub fn decode_stored<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_stored_as::<T, T>(bytes)
}

/// Decodes a stored blob: this release's format of `T`, or the previous
/// release's postcard encoding of `L` (a frozen copy of the old type).
pub fn decode_stored_as<T, L>(bytes: &[u8]) -> Result<T, CodecError>
where
    T: DeserializeOwned,
    L: DeserializeOwned + Into<T>,
{
    if let Some(body) = bytes.strip_prefix(&STORED_MAGIC) {
        let named = from_named::<T>(body, &[]);
        // A postcard blob could start with the magic by chance (a struct whose
        // first field is a large varint): fall back before giving up.
        if named.is_ok() {
            return named;
        }
        return decode_postcard::<L>(bytes).map(Into::into).or(named);
    }
    decode_postcard::<L>(bytes).map(Into::into)
}

/// Decodes the previous release's postcard bytes of a whole value.
pub fn decode_postcard<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, rest) = postcard::take_from_bytes::<T>(bytes)
        .map_err(|error| CodecError::Malformed(error.to_string()))?;
    if !rest.is_empty() {
        return Err(CodecError::Malformed(format!(
            "{} trailing bytes",
            rest.len()
        )));
    }
    Ok(value)
}

/// A variant of a growable enum that this build does not know, kept as its
/// name. It decodes from `{"Name": anything}` or `"Name"`; put it last in an
/// enum as `#[serde(untagged)] Unknown(UnknownVariant)`. Never encode it: it
/// exists so that a message holding it can still be processed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownVariant {
    /// The variant's name.
    pub kind: String,
}

impl Serialize for UnknownVariant {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry(&self.kind, &())?;
        map.end()
    }
}

impl<'de> serde::Deserialize<'de> for UnknownVariant {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = UnknownVariant;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an enum variant")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<UnknownVariant, E> {
                Ok(UnknownVariant { kind: v.to_owned() })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<UnknownVariant, A::Error> {
                let Some((kind, serde::de::IgnoredAny)) = map.next_entry::<String, _>()? else {
                    return Err(serde::de::Error::custom("an empty map is not a variant"));
                };
                if map.next_key::<serde::de::IgnoredAny>()?.is_some() {
                    return Err(serde::de::Error::custom("a variant is a map of one entry"));
                }
                Ok(UnknownVariant { kind })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Old {
        a: u64,
    }

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct New {
        a: u64,
        #[serde(default)]
        b: Option<String>,
    }

    #[test]
    fn fields_can_be_added_and_ignored() {
        let new: New = from_named(&to_named(&Old { a: 1 }), &[]).unwrap();
        assert_eq!(new, New { a: 1, b: None });
        let old: Old = from_named(
            &to_named(&New {
                a: 2,
                b: Some("x".into()),
            }),
            &[],
        )
        .unwrap();
        assert_eq!(old, Old { a: 2 });
    }

    #[test]
    fn stored_blobs_of_both_formats_decode() {
        let value = Old { a: 300 };
        assert_eq!(decode_stored::<Old>(&encode_stored(&value)).unwrap(), value);
        let legacy = postcard::to_stdvec(&value).unwrap();
        assert_eq!(decode_stored::<Old>(&legacy).unwrap(), value);
        assert!(decode_stored::<Old>(&[0xC1, 0x02, 0xFF]).is_err());
    }
}
