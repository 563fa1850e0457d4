//! The device's credentials, kept in its own database: the signed token the
//! sync runtime presents to the hub, replaced when it is refreshed.
//!
//! The token lives in the `meta` table, so it is as safe as the database:
//! encrypt the database (`Replica::open_encrypted`) where the device can be
//! stolen. A token is a bearer credential; it is never logged.

use rusqlite::OptionalExtension as _;

use crate::db::{DbError, Replica};

/// The `meta` key of the device token.
const TOKEN_KEY: &str = "credentials.token";

impl Replica {
    /// The device token last stored, if any.
    pub fn stored_token(&self) -> Result<Option<String>, DbError> {
        Ok(self
            .db
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                [TOKEN_KEY],
                |row| row.get::<_, String>(0),
            )
            .optional()?)
    }

    /// Stores the device token (durably: a refreshed token must survive a
    /// crash, or the device could be left holding only an expired one).
    pub fn store_token(&mut self, token: &str) -> Result<(), DbError> {
        self.set_sync(crate::db::Durability::Full)?;
        self.db.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = ?2",
            [TOKEN_KEY, token],
        )?;
        Ok(())
    }

    /// Forgets the stored token (a device being reset or re-enrolled).
    pub fn clear_token(&mut self) -> Result<(), DbError> {
        self.db
            .execute("DELETE FROM meta WHERE key = ?1", [TOKEN_KEY])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::db::Replica;
    use crate::vocab::ids::{DeviceId, StoreId};

    #[test]
    fn the_token_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.db");
        let open = || {
            Replica::open(
                &path,
                DeviceId::new("till-1").unwrap(),
                StoreId::new("s1").unwrap(),
            )
            .unwrap()
        };
        let mut store = open();
        assert_eq!(store.stored_token().unwrap(), None);
        store.store_token("a.b.c").unwrap();
        store.store_token("d.e.f").unwrap();
        drop(store);
        let mut store = open();
        assert_eq!(store.stored_token().unwrap().as_deref(), Some("d.e.f"));
        store.clear_token().unwrap();
        assert_eq!(store.stored_token().unwrap(), None);
    }
}
