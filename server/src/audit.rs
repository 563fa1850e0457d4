//! Audit events: every security-relevant refusal as one `tracing` event on
//! the stable target [`AUDIT_TARGET`], plus a counter per reason code
//! (`omnisync_audit_events_total{code="…"}`).
//!
//! Fields are always the same, so a log pipeline can select on them:
//! `code` (the protocol's text form: `unauthenticated`, `forbidden`,
//! `wrong-author`, `limit-exceeded`, …), `reason` (the text the client got),
//! `device`, `store`, `tenant` (empty before authentication), `address`, and
//! `op` for a rejected op.

use std::net::SocketAddr;

use omnisync_hub_engine::authz::{AuditEvent, AuditKind};
use omnisync_hub_engine::hub_session::Peer;

use crate::metrics::Metrics;

/// The `tracing` target of audit events.
pub const AUDIT_TARGET: &str = "omnisync::audit";

/// Who a refusal concerned, as far as the hub knows.
#[derive(Clone, Debug, Default)]
pub struct Subject {
    /// The device (claimed, before authentication; verified after).
    pub device: String,
    /// Its store.
    pub store: String,
    /// Its tenant, once authenticated.
    pub tenant: String,
    /// The client's address.
    pub address: Option<SocketAddr>,
}

impl Subject {
    /// An authenticated peer at `address`.
    pub fn peer(peer: &Peer, address: SocketAddr) -> Self {
        Self {
            device: peer.device.to_string(),
            store: peer.store.to_string(),
            tenant: peer.tenant.to_string(),
            address: Some(address),
        }
    }

    /// Someone at `address`, not authenticated.
    pub fn address(address: SocketAddr) -> Self {
        Self {
            address: Some(address),
            ..Self::default()
        }
    }
}

/// Records one refusal.
pub fn record(
    metrics: &Metrics,
    subject: &Subject,
    code: &'static str,
    reason: &str,
    op: Option<String>,
) {
    metrics.count_audit(code);
    let address = subject
        .address
        .map(|address| address.to_string())
        .unwrap_or_default();
    tracing::warn!(
        target: AUDIT_TARGET,
        code,
        reason,
        device = %subject.device,
        store = %subject.store,
        tenant = %subject.tenant,
        address = %address,
        op = %op.unwrap_or_default(),
        "refused"
    );
}

/// Records an event the hub session reported.
pub fn record_session_event(metrics: &Metrics, subject: &Subject, event: &AuditEvent) {
    let op = match &event.kind {
        AuditKind::OpRejected { op, .. } => Some(op.to_string()),
        AuditKind::SessionClosed { .. } => None,
    };
    record(metrics, subject, event.kind.code_str(), &event.detail, op);
}
