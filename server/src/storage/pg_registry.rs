//! The device registry's rows in the hub's PostgreSQL database (schema 2),
//! shared by every hub process on it: a replica is bound once for all of
//! them (`INSERT … ON CONFLICT DO NOTHING`, then the stored owner wins), and
//! a revocation is announced on
//! [`REVOCATIONS_CHANNEL`](crate::cluster::REVOCATIONS_CHANNEL) in the
//! transaction that stores it, so every process's sessions of the device
//! are closed (see `cluster`).

use omnisync_core::{DeviceId, TenantId};
use postgres::Client;

use super::postgres::{PgUrl, describe, off_runtime};
use crate::devices::{
    Binding, RegistryError, RegistryRows, Revocation, binding_from_row, revocation_from_row,
};

/// The registry's rows on PostgreSQL, over one connection made again after
/// a failure.
pub struct PgRegistryRows {
    url: PgUrl,
    client: Option<Client>,
}

impl PgRegistryRows {
    /// Connects (the schema was migrated by the log's backend).
    pub fn open(url: &PgUrl) -> Result<Self, RegistryError> {
        let mut rows = Self {
            url: url.clone(),
            client: None,
        };
        rows.with_client(|_| Ok(()))?;
        Ok(rows)
    }

    /// Runs `work` on the connection (making it if needed) where the
    /// blocking client may run; a failed connection is dropped for the next
    /// call to replace.
    fn with_client<T: Send>(
        &mut self,
        work: impl FnOnce(&mut Client) -> Result<T, postgres::Error> + Send,
    ) -> Result<T, RegistryError> {
        let url = &self.url;
        let slot = &mut self.client;
        off_runtime(move || {
            let client = match slot {
                Some(client) if !client.is_closed() => client,
                _ => slot.insert(url.connect().map_err(|error| {
                    RegistryError::Database(format!("{url}: {}", describe(&error)))
                })?),
            };
            let result = work(client);
            if result.is_err() {
                // Closing runs the client's own runtime: still off the async one.
                drop(slot.take());
            }
            result.map_err(|error| RegistryError::Database(describe(&error)))
        })
    }
}

impl Drop for PgRegistryRows {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            off_runtime(move || drop(client));
        }
    }
}

impl RegistryRows for PgRegistryRows {
    fn load(&mut self) -> Result<(Vec<Binding>, Vec<Revocation>), RegistryError> {
        self.with_client(|client| {
            let bindings = client
                .query("SELECT replica, tenant, device FROM replicas", &[])?
                .into_iter()
                .filter_map(|row| binding_from_row(row.get(0), row.get(1), row.get(2)))
                .collect();
            let revocations = client
                .query(
                    "SELECT tenant, device, revoked_ms, reason FROM revocations",
                    &[],
                )?
                .into_iter()
                .filter_map(|row| {
                    revocation_from_row(row.get(0), row.get(1), row.get(2), row.get(3))
                })
                .collect();
            Ok((bindings, revocations))
        })
    }

    fn bind(&mut self, binding: &Binding, now_ms: u64) -> Result<Binding, RegistryError> {
        let replica = binding.replica.0.to_vec();
        let (tenant, device) = (binding.tenant.as_str(), binding.device.as_str());
        let (stored_tenant, stored_device): (String, String) = self.with_client(|client| {
            let row = client.query_one(
                "WITH bound AS (
                     INSERT INTO replicas (replica, tenant, device, bound_ms)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (replica) DO NOTHING
                     RETURNING tenant, device)
                 SELECT tenant, device FROM bound
                 UNION ALL
                 SELECT tenant, device FROM replicas WHERE replica = $1
                 LIMIT 1",
                &[&replica, &tenant, &device, &(now_ms as i64)],
            )?;
            Ok((row.get(0), row.get(1)))
        })?;
        binding_from_row(&binding.replica.0, stored_tenant, stored_device).ok_or_else(|| {
            RegistryError::Database(format!(
                "replica {} is bound to a malformed device name",
                binding.replica
            ))
        })
    }

    fn revoke(&mut self, revocation: &Revocation) -> Result<(), RegistryError> {
        let (tenant, device) = (revocation.tenant.as_str(), revocation.device.as_str());
        let revoked_ms = revocation.revoked_ms as i64;
        let reason = revocation.reason.as_str();
        self.with_client(|client| {
            let mut txn = client.transaction()?;
            txn.execute(
                "INSERT INTO revocations (tenant, device, revoked_ms, reason)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (tenant, device)
                 DO UPDATE SET revoked_ms = excluded.revoked_ms, reason = excluded.reason",
                &[&tenant, &device, &revoked_ms, &reason],
            )?;
            txn.execute(
                "SELECT pg_notify($1, $2)",
                &[
                    &crate::cluster::REVOCATIONS_CHANNEL,
                    &format!("{tenant}/{device}"),
                ],
            )?;
            txn.commit()
        })
    }

    fn revocation(
        &mut self,
        tenant: &TenantId,
        device: &DeviceId,
    ) -> Result<Option<Revocation>, RegistryError> {
        let (tenant, device) = (tenant.as_str(), device.as_str());
        let row = self.with_client(|client| {
            client.query_opt(
                "SELECT tenant, device, revoked_ms, reason FROM revocations
                 WHERE tenant = $1 AND device = $2",
                &[&tenant, &device],
            )
        })?;
        Ok(row.and_then(|row| revocation_from_row(row.get(0), row.get(1), row.get(2), row.get(3))))
    }
}
