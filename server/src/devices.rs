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
//! It lives in its own SQLite file, `<data-dir>/devices.db`, next to the
//! change log and independent of its schema.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use omnisync_core::{DeviceId, ReplicaId, TenantId};
use omnisync_hub_engine::authz::Role;
use omnisync_hub_engine::hub_session::Peer;
use rusqlite::{Connection, params};
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
}

/// Replica bindings and revocations, cached in memory, written through.
pub struct DeviceRegistry {
    inner: Mutex<Inner>,
    revocations: broadcast::Sender<Revocation>,
}

struct Inner {
    db: Connection,
    owners: HashMap<ReplicaId, (TenantId, DeviceId)>,
    replicas_per_device: HashMap<(TenantId, DeviceId), usize>,
    revoked: HashMap<(TenantId, DeviceId), Revocation>,
}

impl DeviceRegistry {
    /// Opens (creating) `<dir>/devices.db` and loads it.
    pub fn open(dir: &Path) -> Result<Self, RegistryError> {
        Self::with_connection(Connection::open(dir.join("devices.db"))?)
    }

    /// A registry in memory (tests).
    pub fn in_memory() -> Result<Self, RegistryError> {
        Self::with_connection(Connection::open_in_memory()?)
    }

    fn with_connection(db: Connection) -> Result<Self, RegistryError> {
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
        let mut owners = HashMap::new();
        let mut replicas_per_device: HashMap<(TenantId, DeviceId), usize> = HashMap::new();
        {
            let mut rows = db.prepare("SELECT replica, tenant, device FROM replicas")?;
            let mut rows = rows.query([])?;
            while let Some(row) = rows.next()? {
                let replica: Vec<u8> = row.get(0)?;
                let tenant: String = row.get(1)?;
                let device: String = row.get(2)?;
                // Rows were written from parsed values; skip any that are not.
                let (Some(replica), Ok(tenant), Ok(device)) = (
                    ReplicaId::from_slice(&replica),
                    TenantId::new(tenant),
                    DeviceId::new(device),
                ) else {
                    continue;
                };
                *replicas_per_device
                    .entry((tenant.clone(), device.clone()))
                    .or_default() += 1;
                owners.insert(replica, (tenant, device));
            }
        }
        let mut revoked = HashMap::new();
        {
            let mut rows =
                db.prepare("SELECT tenant, device, revoked_ms, reason FROM revocations")?;
            let mut rows = rows.query([])?;
            while let Some(row) = rows.next()? {
                let (Ok(tenant), Ok(device)) = (
                    TenantId::new(row.get::<_, String>(0)?),
                    DeviceId::new(row.get::<_, String>(1)?),
                ) else {
                    continue;
                };
                let revocation = Revocation {
                    tenant: tenant.clone(),
                    device: device.clone(),
                    revoked_ms: row.get::<_, i64>(2)?.max(0) as u64,
                    reason: row.get(3)?,
                };
                revoked.insert((tenant, device), revocation);
            }
        }
        Ok(Self {
            inner: Mutex::new(Inner {
                db,
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
        inner
            .db
            .execute(
                "INSERT INTO replicas (replica, tenant, device, bound_ms) VALUES (?1, ?2, ?3, ?4)",
                params![
                    &peer.replica.0[..],
                    peer.tenant.as_str(),
                    peer.device.as_str(),
                    now_ms as i64
                ],
            )
            .map_err(|error| format!("device registry: {error}"))?;
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
            inner.db.execute(
                "INSERT OR REPLACE INTO revocations (tenant, device, revoked_ms, reason)
                 VALUES (?1, ?2, ?3, ?4)",
                params![
                    tenant.as_str(),
                    device.as_str(),
                    now_ms as i64,
                    revocation.reason
                ],
            )?;
            inner
                .revoked
                .insert((tenant.clone(), device.clone()), revocation.clone());
        }
        let _ = self.revocations.send(revocation.clone());
        Ok(revocation)
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
