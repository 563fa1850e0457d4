//! The hub's device registry: which device each replica belongs to, and
//! which devices are revoked.
//!
//! A replica id is random and chosen by the device, so a token alone does
//! not stop one device from claiming another's replica in its `Hello` and
//! pushing ops (and automerge changes) in its name. The registry binds each
//! replica to the first device that authenticates with it and refuses every
//! other device for it afterwards; with that, "the op's replica is the
//! connection's replica" (checked by the session) means "the op's author is
//! the authenticated device". Revocations are kept per device: a token
//! issued at or before the revocation is refused, and live sessions of the
//! device are told at once through [`DeviceRegistry::revocations`].
//!
//! On an embedded hub it lives in its own SQLite file,
//! `<data-dir>/devices.db`, next to the change log and independent of its
//! schema; on PostgreSQL in the hub's database, shared by every hub process
//! on it (a replica bound through one process is refused to another device
//! through any other; a revocation is announced to all of them).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use omnisync_core::{DeviceId, ReplicaId, TenantId};
use omnisync_hub_engine::authz::Role;
use omnisync_hub_engine::hub_session::Peer;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::broadcast;

/// Most replicas one device may bind (reinstalls of the app); past this the
/// device must be enrolled again under a new id. Bounds what one stolen
/// token can add to the registry.
pub const REPLICAS_PER_DEVICE_MAX: usize = 64;
/// Revocations buffered for connections before slow ones re-check.
pub const REVOCATION_QUEUE_MAX: usize = 64;

/// A device's revocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocation {
    /// The tenant.
    pub tenant: TenantId,
    /// The device.
    pub device: DeviceId,
    /// When, ms since the epoch; tokens issued at or before are refused.
    pub revoked_ms: u64,
    /// Why, for the device's error message and the audit log.
    pub reason: String,
}

/// Why the registry could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// SQLite failed.
    #[error("device registry: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database server failed.
    #[error("device registry: {0}")]
    Database(String),
}

/// A replica binding as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The replica.
    pub replica: ReplicaId,
    /// Its device's tenant.
    pub tenant: TenantId,
    /// Its device.
    pub device: DeviceId,
}

/// Where the registry's rows live: its own SQLite file next to an embedded
/// hub's log, or the hub's PostgreSQL database, shared by every hub
/// process on it (see `storage::postgres::PgRegistryRows`).
pub trait RegistryRows: Send {
    /// Every binding and revocation.
    fn load(&mut self) -> Result<(Vec<Binding>, Vec<Revocation>), RegistryError>;
    /// Binds the replica unless it is bound; returns the binding stored
    /// now (another device's, when another process bound it first).
    fn bind(&mut self, binding: &Binding, now_ms: u64) -> Result<Binding, RegistryError>;
    /// Stores a revocation (replacing the device's earlier one); durable
    /// when it returns.
    fn revoke(&mut self, revocation: &Revocation) -> Result<(), RegistryError>;
    /// A device's stored revocation (after another process announced one).
    fn revocation(
        &mut self,
        tenant: &TenantId,
        device: &DeviceId,
    ) -> Result<Option<Revocation>, RegistryError>;
}

/// Replica bindings and revocations, cached in memory, written through.
pub struct DeviceRegistry {
    inner: Mutex<Inner>,
    revocations: broadcast::Sender<Revocation>,
}

struct Inner {
    rows: Box<dyn RegistryRows>,
    owners: HashMap<ReplicaId, (TenantId, DeviceId)>,
    replicas_per_device: HashMap<(TenantId, DeviceId), usize>,
    revoked: HashMap<(TenantId, DeviceId), Revocation>,
}

impl DeviceRegistry {
    /// Opens (creating) `<dir>/devices.db` and loads it.
    pub fn open(dir: &Path) -> Result<Self, RegistryError> {
        Self::with_rows(Box::new(SqliteRegistryRows::new(Connection::open(
            dir.join("devices.db"),
        )?)?))
    }

    /// A registry in memory (tests).
    pub fn in_memory() -> Result<Self, RegistryError> {
        Self::with_rows(Box::new(SqliteRegistryRows::new(
            Connection::open_in_memory()?,
        )?))
    }

    /// A registry over `rows`, loaded into memory.
    pub fn with_rows(mut rows: Box<dyn RegistryRows>) -> Result<Self, RegistryError> {
        let (bindings, revocations) = rows.load()?;
        let mut owners = HashMap::new();
        let mut replicas_per_device: HashMap<(TenantId, DeviceId), usize> = HashMap::new();
        for binding in bindings {
            *replicas_per_device
                .entry((binding.tenant.clone(), binding.device.clone()))
                .or_default() += 1;
            owners.insert(binding.replica, (binding.tenant, binding.device));
        }
        let revoked = revocations
            .into_iter()
            .map(|revocation| {
                (
                    (revocation.tenant.clone(), revocation.device.clone()),
                    revocation,
                )
            })
            .collect();
        Ok(Self {
            inner: Mutex::new(Inner {
                rows,
                owners,
                replicas_per_device,
                revoked,
            }),
            revocations: broadcast::channel(REVOCATION_QUEUE_MAX).0,
        })
    }

    /// Admits `peer`'s replica: binds it to the peer's device on first use,
    /// refuses it if another device holds it (the answer names no device).
    pub fn bind_replica(&self, peer: &Peer, now_ms: u64) -> Result<(), String> {
        let mut inner = self.lock();
        let key = (peer.tenant.clone(), peer.device.clone());
        if let Some(owner) = inner.owners.get(&peer.replica) {
            if *owner == key {
                return Ok(());
            }
            return Err(format!(
                "replica {} belongs to another device; a device must use its own database",
                peer.replica
            ));
        }
        let bound = inner.replicas_per_device.get(&key).copied().unwrap_or(0);
        if peer.role != Role::Development && bound >= REPLICAS_PER_DEVICE_MAX {
            return Err(format!(
                "device {} has used {bound} databases; enrol it again to use another",
                peer.device
            ));
        }
        let stored = inner
            .rows
            .bind(
                &Binding {
                    replica: peer.replica,
                    tenant: peer.tenant.clone(),
                    device: peer.device.clone(),
                },
                now_ms,
            )
            .map_err(|error| error.to_string())?;
        if (&stored.tenant, &stored.device) != (&peer.tenant, &peer.device) {
            // Another hub process bound it first.
            inner
                .owners
                .insert(stored.replica, (stored.tenant, stored.device));
            return Err(format!(
                "replica {} belongs to another device; a device must use its own database",
                peer.replica
            ));
        }
        inner.owners.insert(peer.replica, key.clone());
        *inner.replicas_per_device.entry(key).or_default() += 1;
        Ok(())
    }

    /// Refuses a token of `device` issued at `issued_s` (unix seconds) if the
    /// device was revoked at or after that moment.
    pub fn check_not_revoked(
        &self,
        tenant: &TenantId,
        device: &DeviceId,
        issued_s: u64,
    ) -> Result<(), String> {
        let inner = self.lock();
        match inner.revoked.get(&(tenant.clone(), device.clone())) {
            Some(revocation) if issued_s.saturating_mul(1000) <= revocation.revoked_ms => {
                Err(revoked_message(revocation))
            }
            _ => Ok(()),
        }
    }

    /// Revokes `device` now: durable before it returns, then every live
    /// session of the device is told.
    pub fn revoke(
        &self,
        tenant: &TenantId,
        device: &DeviceId,
        reason: &str,
        now_ms: u64,
    ) -> Result<Revocation, RegistryError> {
        let revocation = Revocation {
            tenant: tenant.clone(),
            device: device.clone(),
            revoked_ms: now_ms,
            reason: omnisync_core::protocol::message::clamp_detail(reason.to_owned()),
        };
        {
            let mut inner = self.lock();
            inner.rows.revoke(&revocation)?;
            inner
                .revoked
                .insert((tenant.clone(), device.clone()), revocation.clone());
        }
        let _ = self.revocations.send(revocation.clone());
        Ok(revocation)
    }

    /// Another hub process revoked `device`: loads its revocation and tells
    /// this process's live sessions of the device.
    pub fn revoked_elsewhere(&self, tenant: &str, device: &str) {
        let (Ok(tenant), Ok(device)) = (TenantId::new(tenant), DeviceId::new(device)) else {
            tracing::warn!(
                tenant,
                device,
                "ignoring a revocation of a malformed device name"
            );
            return;
        };
        let loaded = self.lock().rows.revocation(&tenant, &device);
        match loaded {
            Ok(Some(revocation)) => {
                self.lock()
                    .revoked
                    .insert((tenant, device), revocation.clone());
                let _ = self.revocations.send(revocation);
            }
            Ok(None) => {}
            Err(error) => {
                tracing::error!(%error, %tenant, %device, "loading a revocation made by another hub process failed")
            }
        }
    }

    /// The revocation of `device`, if any.
    pub fn revocation(&self, tenant: &TenantId, device: &DeviceId) -> Option<Revocation> {
        self.lock()
            .revoked
            .get(&(tenant.clone(), device.clone()))
            .cloned()
    }

    /// Revocations as they happen (for live sessions).
    pub fn revocations(&self) -> broadcast::Receiver<Revocation> {
        self.revocations.subscribe()
    }

    /// The device a replica is bound to.
    pub fn owner(&self, replica: &ReplicaId) -> Option<(TenantId, DeviceId)> {
        self.lock().owners.get(replica).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every write is one statement and the maps are updated after it
        // succeeds: a poisoned lock still guards consistent state.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The registry's rows in SQLite (`devices.db` next to the hub log).
pub struct SqliteRegistryRows {
    db: Connection,
}

impl SqliteRegistryRows {
    /// Creates the tables if needed.
    pub fn new(db: Connection) -> Result<Self, RegistryError> {
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS replicas (
                 replica BLOB PRIMARY KEY,
                 tenant TEXT NOT NULL,
                 device TEXT NOT NULL,
                 bound_ms INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS revocations (
                 tenant TEXT NOT NULL,
                 device TEXT NOT NULL,
                 revoked_ms INTEGER NOT NULL,
                 reason TEXT NOT NULL,
                 PRIMARY KEY (tenant, device)
             );",
        )?;
        Ok(Self { db })
    }
}

/// A binding row, unless it holds values no parser accepts (rows are
/// written from parsed values, so none should).
pub fn binding_from_row(replica: &[u8], tenant: String, device: String) -> Option<Binding> {
    Some(Binding {
        replica: ReplicaId::from_slice(replica)?,
        tenant: TenantId::new(tenant).ok()?,
        device: DeviceId::new(device).ok()?,
    })
}

/// A revocation row, unless it names a malformed device.
pub fn revocation_from_row(
    tenant: String,
    device: String,
    revoked_ms: i64,
    reason: String,
) -> Option<Revocation> {
    Some(Revocation {
        tenant: TenantId::new(tenant).ok()?,
        device: DeviceId::new(device).ok()?,
        revoked_ms: revoked_ms.max(0) as u64,
        reason,
    })
}

impl RegistryRows for SqliteRegistryRows {
    fn load(&mut self) -> Result<(Vec<Binding>, Vec<Revocation>), RegistryError> {
        let mut bindings = Vec::new();
        let mut rows = self
            .db
            .prepare("SELECT replica, tenant, device FROM replicas")?;
        let mut rows = rows.query([])?;
        while let Some(row) = rows.next()? {
            bindings.extend(binding_from_row(
                &row.get::<_, Vec<u8>>(0)?,
                row.get(1)?,
                row.get(2)?,
            ));
        }
        drop(rows);
        let mut revocations = Vec::new();
        let mut rows = self
            .db
            .prepare("SELECT tenant, device, revoked_ms, reason FROM revocations")?;
        let mut rows = rows.query([])?;
        while let Some(row) = rows.next()? {
            revocations.extend(revocation_from_row(
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
            ));
        }
        Ok((bindings, revocations))
    }

    fn bind(&mut self, binding: &Binding, now_ms: u64) -> Result<Binding, RegistryError> {
        self.db.execute(
            "INSERT OR IGNORE INTO replicas (replica, tenant, device, bound_ms)
             VALUES (?1, ?2, ?3, ?4)",
            params![
                &binding.replica.0[..],
                binding.tenant.as_str(),
                binding.device.as_str(),
                now_ms as i64
            ],
        )?;
        let (tenant, device): (String, String) = self.db.query_row(
            "SELECT tenant, device FROM replicas WHERE replica = ?1",
            params![&binding.replica.0[..]],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        binding_from_row(&binding.replica.0, tenant, device).ok_or_else(|| {
            RegistryError::Database(format!(
                "replica {} is bound to a malformed device name",
                binding.replica
            ))
        })
    }

    fn revoke(&mut self, revocation: &Revocation) -> Result<(), RegistryError> {
        self.db.execute(
            "INSERT OR REPLACE INTO revocations (tenant, device, revoked_ms, reason)
             VALUES (?1, ?2, ?3, ?4)",
            params![
                revocation.tenant.as_str(),
                revocation.device.as_str(),
                revocation.revoked_ms as i64,
                revocation.reason
            ],
        )?;
        Ok(())
    }

    fn revocation(
        &mut self,
        tenant: &TenantId,
        device: &DeviceId,
    ) -> Result<Option<Revocation>, RegistryError> {
        let row = self
            .db
            .query_row(
                "SELECT tenant, device, revoked_ms, reason FROM revocations
                 WHERE tenant = ?1 AND device = ?2",
                params![tenant.as_str(), device.as_str()],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
            )
            .optional()?;
        Ok(row.and_then(|(tenant, device, revoked_ms, reason)| {
            revocation_from_row(tenant, device, revoked_ms, reason)
        }))
    }
}

/// What a revoked device is told.
pub fn revoked_message(revocation: &Revocation) -> String {
    format!(
        "device {} was revoked: {}",
        revocation.device, revocation.reason
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use omnisync_core::StoreId;
    use omnisync_hub_engine::authz::Identity;

    fn peer(device: &str, replica: u8) -> Peer {
        Peer::from_identity(
            Identity {
                tenant: TenantId::new("acme").unwrap(),
                device: DeviceId::new(device).unwrap(),
                store: StoreId::new("s1").unwrap(),
                role: Role::Terminal,
                customer: None,
                expires_ms: None,
            },
            ReplicaId([replica; 16]),
        )
        .unwrap()
    }

    #[test]
    fn a_replica_belongs_to_the_first_device_that_used_it_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let registry = DeviceRegistry::open(dir.path()).unwrap();
        registry.bind_replica(&peer("till-1", 1), 0).unwrap();
        registry.bind_replica(&peer("till-1", 1), 0).unwrap();
        assert!(registry.bind_replica(&peer("till-2", 1), 0).is_err());
        drop(registry);
        let registry = DeviceRegistry::open(dir.path()).unwrap();
        assert!(registry.bind_replica(&peer("till-2", 1), 0).is_err());
        registry.bind_replica(&peer("till-2", 2), 0).unwrap();
    }

    #[test]
    fn a_replica_bound_through_another_registry_on_the_same_rows_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = DeviceRegistry::open(dir.path()).unwrap();
        let second = DeviceRegistry::open(dir.path()).unwrap();
        first.bind_replica(&peer("till-1", 1), 0).unwrap();
        let refused = second.bind_replica(&peer("till-2", 1), 0).unwrap_err();
        assert!(refused.contains("belongs to another device"), "{refused}");
        assert_eq!(
            second.owner(&ReplicaId([1; 16])).map(|(_, device)| device),
            Some(DeviceId::new("till-1").unwrap())
        );
        second.bind_replica(&peer("till-1", 1), 0).unwrap();
    }

    #[test]
    fn a_device_binds_a_bounded_number_of_replicas() {
        let registry = DeviceRegistry::in_memory().unwrap();
        for n in 0..REPLICAS_PER_DEVICE_MAX {
            registry.bind_replica(&peer("till-1", n as u8), 0).unwrap();
        }
        assert!(registry.bind_replica(&peer("till-1", 200), 0).is_err());
    }

    #[test]
    fn revocation_refuses_older_tokens_only_and_is_announced() {
        let dir = tempfile::tempdir().unwrap();
        let registry = DeviceRegistry::open(dir.path()).unwrap();
        let tenant = TenantId::new("acme").unwrap();
        let device = DeviceId::new("till-1").unwrap();
        let mut announced = registry.revocations();
        registry
            .revoke(&tenant, &device, "stolen", 5_000_000)
            .unwrap();
        assert_eq!(announced.try_recv().unwrap().reason, "stolen");
        let refused = registry
            .check_not_revoked(&tenant, &device, 4_000)
            .unwrap_err();
        assert!(refused.contains("revoked: stolen"), "{refused}");
        assert!(registry.check_not_revoked(&tenant, &device, 5_001).is_ok());
        drop(registry);
        let registry = DeviceRegistry::open(dir.path()).unwrap();
        assert!(registry.check_not_revoked(&tenant, &device, 5_000).is_err());
    }
}
