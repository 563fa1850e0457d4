//! At-rest encryption of the device database with SQLCipher.
//!
//! The app supplies a 32-byte key from the platform keystore (Android
//! Keystore, iOS Keychain); the store never derives, stores or logs it.
//! SQLCipher encrypts every page of the database and of its WAL with
//! AES-256 and authenticates each page with an HMAC, so a stolen file
//! reveals nothing and a tampered one fails to open.
//!
//! Only builds with the `encryption` cargo feature link SQLCipher; without
//! it [`Replica::open_encrypted`] refuses with a clear error instead of
//! silently writing a plain file.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension as _};

use crate::db::{DbError, Replica};
use crate::vocab::ids::{DeviceId, StoreId};

/// Length of a database key, bytes (AES-256).
pub const ENCRYPTION_KEY_BYTES: usize = 32;

/// A raw 256-bit database key. Its bytes are wiped when it is dropped and
/// never printed.
#[derive(Clone)]
pub struct EncryptionKey([u8; ENCRYPTION_KEY_BYTES]);

impl EncryptionKey {
    /// A key from exactly [`ENCRYPTION_KEY_BYTES`] bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DbError> {
        let key: [u8; ENCRYPTION_KEY_BYTES] = bytes.try_into().map_err(|_| {
            DbError::Encryption(format!(
                "a database key is {ENCRYPTION_KEY_BYTES} bytes, not {}",
                bytes.len()
            ))
        })?;
        Ok(Self(key))
    }
}

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EncryptionKey(<redacted>)")
    }
}

impl Drop for EncryptionKey {
    fn drop(&mut self) {
        // Volatile writes so the wipe is not optimized away.
        for byte in self.0.iter_mut() {
            // SAFETY: `byte` is a valid, aligned, exclusive reference.
            unsafe { std::ptr::write_volatile(byte, 0) };
        }
    }
}

impl Replica {
    /// True when this build can encrypt databases (feature `encryption`).
    pub fn encryption_available() -> bool {
        cfg!(feature = "encryption")
    }

    /// Opens (creating if needed) an encrypted database file with `key`,
    /// calling `hooks` inside its transactions (apps use
    /// `Replica::open_encrypted`). A wrong key, or a plain (unencrypted)
    /// file, is refused with [`DbError::Encryption`]; nothing is written to it.
    pub fn open_encrypted_with(
        path: &Path,
        device: DeviceId,
        store: StoreId,
        key: &EncryptionKey,
        hooks: Box<dyn crate::db::Hooks>,
    ) -> Result<Self, DbError> {
        let db = Connection::open(path)?;
        apply_key(&db, key)?;
        Self::init(db, device, store, hooks)
    }
}

/// Keys the connection, then proves the key by reading the schema.
fn apply_key(db: &Connection, key: &EncryptionKey) -> Result<(), DbError> {
    if !Replica::encryption_available() {
        return Err(DbError::Encryption(
            "this build has no SQLCipher; build omnisync-core with the `encryption` feature".into(),
        ));
    }
    // A raw key in SQLCipher's blob-literal form skips its key derivation:
    // the keystore's key is already random.
    let mut pragma = String::with_capacity(16 + 2 * ENCRYPTION_KEY_BYTES);
    pragma.push_str("PRAGMA key = \"x'");
    pragma.push_str(&hex::encode(key.0));
    pragma.push_str("'\";");
    db.execute_batch(&pragma)?;
    let cipher: Option<String> = db
        .query_row("PRAGMA cipher_version", [], |row| row.get(0))
        .optional()?;
    if cipher.is_none() {
        return Err(DbError::Encryption(
            "the linked SQLite is not SQLCipher".into(),
        ));
    }
    db.query_row("SELECT count(*) FROM sqlite_master", [], |row| {
        row.get::<_, i64>(0)
    })
    .map_err(|_| {
        DbError::Encryption("wrong key, or the file is not an encrypted omnisync database".into())
    })?;
    Ok(())
}

#[cfg(all(test, feature = "encryption"))]
mod tests {
    use super::*;
    use crate::{DocEdit, DocId, Edit, Value};

    fn ids() -> (DeviceId, StoreId) {
        (
            DeviceId::new("till-1").unwrap(),
            StoreId::new("s1").unwrap(),
        )
    }

    #[test]
    fn an_encrypted_store_reopens_with_its_key_only_and_holds_no_plaintext() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.db");
        let key = EncryptionKey::from_bytes(&[7; 32]).unwrap();
        let doc = DocId::new("store.s1/orders/till-1").unwrap();
        {
            let (device, store) = ids();
            let mut opened = Replica::open_encrypted(&path, device, store, &key).unwrap();
            opened
                .commit(
                    &[DocEdit {
                        doc: doc.clone(),
                        edits: vec![Edit::put(&["secret-sale"], Value::Int(4242))],
                    }],
                    1,
                )
                .unwrap();
            opened.store_token("header.payload.signature").unwrap();
        }
        // Neither the database nor its WAL holds the plaintext.
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            assert!(!text.contains("secret-sale"));
            assert!(!text.contains("header.payload.signature"));
            assert!(!text.contains("SQLite format 3"));
        }
        let (device, store) = ids();
        let wrong = EncryptionKey::from_bytes(&[8; 32]).unwrap();
        assert!(matches!(
            Replica::open_encrypted(&path, device.clone(), store.clone(), &wrong),
            Err(DbError::Encryption(_))
        ));
        assert!(
            Replica::open(&path, device.clone(), store.clone()).is_err(),
            "no key, no data"
        );
        let mut reopened = Replica::open_encrypted(&path, device, store, &key).unwrap();
        assert_eq!(
            reopened.get(&doc, &["secret-sale"]).unwrap(),
            Some(Value::Int(4242))
        );
        assert_eq!(
            reopened.stored_token().unwrap().as_deref(),
            Some("header.payload.signature")
        );
    }

    #[test]
    fn a_plain_database_is_not_opened_as_encrypted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plain.db");
        let (device, store) = ids();
        drop(Replica::open(&path, device.clone(), store.clone()).unwrap());
        let key = EncryptionKey::from_bytes(&[7; 32]).unwrap();
        assert!(matches!(
            Replica::open_encrypted(&path, device, store, &key),
            Err(DbError::Encryption(_))
        ));
    }
}

#[cfg(all(test, not(feature = "encryption")))]
mod tests {
    use super::*;

    #[test]
    fn without_sqlcipher_an_encrypted_open_is_refused_not_silently_plain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.db");
        let key = EncryptionKey::from_bytes(&[7; 32]).unwrap();
        let opened = Replica::open_encrypted(
            &path,
            DeviceId::new("till-1").unwrap(),
            StoreId::new("s1").unwrap(),
            &key,
        );
        assert!(matches!(opened, Err(DbError::Encryption(_))));
        assert!(EncryptionKey::from_bytes(&[1; 5]).is_err());
    }
}
