//! Who may connect and what they may touch.
//!
//! The handshake's credentials go through an [`Authenticator`] that turns
//! them into a [`Peer`] with the sets it may read and write. The development
//! authenticator here trusts the device's word for its store; signed device
//! tokens replace it in the security work (the slot is this trait).

use omnisync_core::ids::{CustomerId, DocSetId};
use omnisync_core::protocol::hub::Peer;
use omnisync_core::protocol::message::Hello;

/// Decides whether a handshake is accepted and what the peer may do.
pub trait Authenticator: Send + Sync {
    /// The peer for an accepted handshake, or the reason for refusing it.
    fn authenticate(&self, hello: &Hello) -> Result<Peer, String>;
}

/// Development authentication: a device may read and write its own store's
/// set and the chain set. A token `customer:ID` also grants that customer's
/// set (a shopper's app). Any other token is refused.
#[derive(Debug, Default, Clone)]
pub struct DevAuthenticator;

impl Authenticator for DevAuthenticator {
    fn authenticate(&self, hello: &Hello) -> Result<Peer, String> {
        let mut sets = vec![DocSetId::store(&hello.store), DocSetId::chain()];
        match hello.credentials.token.as_deref() {
            None | Some("") => {}
            Some(token) => {
                let customer = token.strip_prefix("customer:").ok_or_else(|| {
                    "unknown credentials; the development hub accepts none or customer:ID"
                        .to_owned()
                })?;
                let customer = CustomerId::new(customer).map_err(|error| error.to_string())?;
                sets.push(DocSetId::customer(&customer));
            }
        }
        // Hub records only: readable, never writable by a device.
        let mut readable = sets.clone();
        readable.push(DocSetId::orders(&hello.store));
        readable.extend(DocSetId::device(&hello.store, &hello.device));
        Ok(Peer {
            device: hello.device.clone(),
            store: hello.store.clone(),
            replica: hello.replica,
            readable,
            writable: sets,
        })
    }
}
