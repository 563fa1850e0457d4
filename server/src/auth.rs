//! Who may connect and what they may touch.
//!
//! The handshake's credentials go through an [`Authenticator`] that turns
//! them into a [`Peer`] with the sets it may read and write. The development
//! authenticator here trusts the device's word for its store; signed device
//! tokens replace it in the security work (the slot is this trait).

use omnisync_core::ids::{CustomerId, DocSetId, TenantId};
use omnisync_core::protocol::authz::{Identity, Role};
use omnisync_core::protocol::hub::Peer;
use omnisync_core::protocol::message::Hello;

/// Decides whether a handshake is accepted and what the peer may do.
pub trait Authenticator: Send + Sync {
    /// The peer for an accepted handshake at `now_ms`, or the reason for
    /// refusing it.
    fn authenticate(&self, hello: &Hello, now_ms: u64) -> Result<Peer, String>;
}

/// The tenant every development peer belongs to.
pub const DEV_TENANT: &str = "dev";

/// Development authentication: a device may read and write its own store's
/// set and the chain set. A token `customer:ID` also grants that customer's
/// set (a shopper's app). Any other token is refused.
#[derive(Debug, Default, Clone)]
pub struct DevAuthenticator;

impl Authenticator for DevAuthenticator {
    fn authenticate(&self, hello: &Hello, _now_ms: u64) -> Result<Peer, String> {
        let mut customer = None;
        match hello.credentials.token.as_deref() {
            None | Some("") => {}
            Some(token) => {
                let id = token.strip_prefix("customer:").ok_or_else(|| {
                    "unknown credentials; the development hub accepts none or customer:ID"
                        .to_owned()
                })?;
                customer = Some(CustomerId::new(id).map_err(|error| error.to_string())?);
            }
        }
        let identity = Identity {
            tenant: TenantId::new(DEV_TENANT).map_err(|error| error.to_string())?,
            device: hello.device.clone(),
            store: hello.store.clone(),
            role: Role::Development,
            customer: customer.clone(),
            expires_ms: None,
        };
        let mut peer = Peer::from_identity(identity, hello.replica)?;
        if let Some(customer) = &customer {
            peer.readable.push(DocSetId::customer(customer));
            peer.writable.push(DocSetId::customer(customer));
        }
        Ok(peer)
    }
}
