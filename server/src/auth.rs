//! Who may connect and what they may touch.
//!
//! The handshake's credentials go through an [`Authenticator`] that turns
//! them into a [`Peer`] (identity, role, the sets it may read and write);
//! `protocol::authz` then decides every subscribe and every change from that
//! peer alone. [`TokenAuthenticator`] verifies signed device tokens
//! (`crate::token`) and is what `omnisync-hub serve --jwks` runs;
//! [`DevAuthenticator`] trusts the device's word and exists for development,
//! the demo and tests (`serve --dev-auth`, and `HubConfig::new`).

use std::sync::Arc;

use omnisync_core::protocol::message::Hello;
use omnisync_core::vocab::ids::{CustomerId, DocSetId, StoreId, TenantId};
use omnisync_hub_engine::authz::{Identity, Role};
use omnisync_hub_engine::hub_session::Peer;

use crate::devices::DeviceRegistry;
use crate::token::{self, KeyCache, SigningKey, Validation};

/// Decides whether a handshake is accepted and what the peer may do.
pub trait Authenticator: Send + Sync {
    /// The peer for an accepted handshake at `now_ms`, or the reason for
    /// refusing it.
    fn authenticate(&self, hello: &Hello, now_ms: u64) -> Result<Peer, String>;

    /// A fresh token for the holder of `token` (`POST /v1/auth/refresh`).
    fn refresh(&self, token: &str, now_ms: u64) -> Result<String, AuthError> {
        let _ = (token, now_ms);
        Err(AuthError::Unsupported(
            "this hub does not issue tokens".into(),
        ))
    }

    /// May the holder of `bearer` use the admin endpoints? The development
    /// authenticator lets anyone; the token authenticator wants a back-office
    /// token of the hub's tenant.
    fn authorize_admin(
        &self,
        bearer: Option<&str>,
        now_ms: u64,
    ) -> Result<Option<Identity>, AuthError> {
        let _ = (bearer, now_ms);
        Ok(None)
    }

    /// Which stores' events the holder of `bearer` may read from the feed.
    /// The development authenticator lets anyone read every store; the token
    /// authenticator wants an event-consumer token (its `stores` claim, or
    /// every store of the tenant without one) or a back-office token (its
    /// own store).
    fn authorize_events(&self, bearer: Option<&str>, now_ms: u64) -> Result<EventScope, AuthError> {
        let _ = (bearer, now_ms);
        Ok(EventScope::AllStores)
    }
}

/// The stores whose events a feed consumer may read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventScope {
    /// Every store of the hub's tenant.
    AllStores,
    /// These stores only.
    Stores(Vec<StoreId>),
}

impl EventScope {
    /// True when the scope covers `store`.
    pub fn covers(&self, store: &StoreId) -> bool {
        match self {
            EventScope::AllStores => true,
            EventScope::Stores(stores) => stores.contains(store),
        }
    }
}

/// Why an HTTP caller was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No or bad credentials (HTTP 401).
    #[error("{0}")]
    Unauthenticated(String),
    /// Valid credentials without the right (HTTP 403).
    #[error("{0}")]
    Forbidden(String),
    /// The hub does not offer this (HTTP 404).
    #[error("{0}")]
    Unsupported(String),
}

/// How a hub authenticates devices.
#[derive(Clone, Debug, Default)]
pub enum AuthConfig {
    /// Trust the device's word ([`DevAuthenticator`]): development only.
    #[default]
    Development,
    /// Signed device tokens ([`TokenAuthenticator`]).
    Tokens(Box<TokenConfig>),
}

impl AuthConfig {
    /// The tenant this hub serves: the token validation's, or the
    /// development tenant.
    pub fn tenant(&self) -> TenantId {
        match self {
            AuthConfig::Tokens(config) => config.validation.tenant.clone(),
            AuthConfig::Development => {
                TenantId::new(DEV_TENANT).expect("the development tenant is a valid id")
            }
        }
    }
}

/// Configuration of [`TokenAuthenticator`].
#[derive(Clone, Debug)]
pub struct TokenConfig {
    /// Trusted public keys and where they come from (a file, a provider's
    /// `jwks_uri`); shared with whatever reloads them (SIGHUP).
    pub keys: Arc<KeyCache>,
    /// Issuer, audience, tenant, leeway, algorithm allow-list, claim names.
    pub validation: Validation,
    /// A private key to refresh tokens with; without it refresh is off.
    pub signing: Option<SigningKey>,
    /// Lifetime of a refreshed token, seconds.
    pub refresh_ttl_s: u64,
    /// How long after enrolment refresh stays possible, seconds.
    pub refresh_window_s: u64,
}

impl TokenConfig {
    /// Tokens from `keys` for `validation`, no refresh.
    pub fn new(keys: Arc<KeyCache>, validation: Validation) -> Self {
        Self {
            keys,
            validation,
            signing: None,
            refresh_ttl_s: token::TOKEN_TTL_S_DEFAULT,
            refresh_window_s: token::REFRESH_WINDOW_S_DEFAULT,
        }
    }
}

/// Verifies signed device tokens; refuses revoked devices.
pub struct TokenAuthenticator {
    config: TokenConfig,
    registry: Arc<DeviceRegistry>,
}

impl TokenAuthenticator {
    /// An authenticator over `config`, checking revocations in `registry`.
    pub fn new(config: TokenConfig, registry: Arc<DeviceRegistry>) -> Self {
        Self { config, registry }
    }

    fn verify(&self, token: &str, now_ms: u64) -> Result<token::Verified, String> {
        let verified = self
            .config
            .keys
            .verify(token, &self.config.validation, now_ms / 1000)
            .map_err(|error| format!("token refused: {error}"))?;
        self.registry.check_not_revoked(
            &verified.identity.tenant,
            &verified.identity.device,
            verified.claims.iat,
        )?;
        Ok(verified)
    }
}

impl Authenticator for TokenAuthenticator {
    fn authenticate(&self, hello: &Hello, now_ms: u64) -> Result<Peer, String> {
        let token = hello
            .credentials
            .token
            .as_deref()
            .filter(|token| !token.is_empty())
            .ok_or("this hub requires a signed device token")?;
        let identity = self.verify(token, now_ms)?.identity;
        if identity.device != hello.device {
            return Err(format!(
                "the token is for device {}, the handshake names {}",
                identity.device, hello.device
            ));
        }
        if identity.store != hello.store {
            return Err(format!(
                "the token is for store {}, the handshake names {}",
                identity.store, hello.store
            ));
        }
        Peer::from_identity(identity, hello.replica)
    }

    fn refresh(&self, token: &str, now_ms: u64) -> Result<String, AuthError> {
        let signing = self.config.signing.as_ref().ok_or_else(|| {
            AuthError::Unsupported("this hub has no signing key; enrol the device again".into())
        })?;
        let verified = self
            .verify(token, now_ms)
            .map_err(AuthError::Unauthenticated)?;
        let now_s = now_ms / 1000;
        let enrolled = verified.claims.auth_time.unwrap_or(verified.claims.iat);
        if now_s.saturating_sub(enrolled) > self.config.refresh_window_s {
            return Err(AuthError::Unauthenticated(format!(
                "enrolled more than {} s ago; enrol the device again",
                self.config.refresh_window_s
            )));
        }
        let claims = token::claims_for(
            &verified.identity,
            &self.config.validation.issuer,
            &self.config.validation.audience,
            now_s,
            self.config.refresh_ttl_s,
            enrolled,
        );
        signing
            .sign(&claims)
            .map_err(|error| AuthError::Unsupported(format!("this hub could not sign: {error}")))
    }

    fn authorize_admin(
        &self,
        bearer: Option<&str>,
        now_ms: u64,
    ) -> Result<Option<Identity>, AuthError> {
        let bearer = bearer.ok_or_else(|| {
            AuthError::Unauthenticated("admin endpoints need a back-office bearer token".into())
        })?;
        let identity = self
            .verify(bearer, now_ms)
            .map_err(AuthError::Unauthenticated)?
            .identity;
        if identity.role != Role::BackOffice {
            return Err(AuthError::Forbidden(format!(
                "admin endpoints are for back-office tokens, not {}",
                identity.role
            )));
        }
        Ok(Some(identity))
    }

    fn authorize_events(&self, bearer: Option<&str>, now_ms: u64) -> Result<EventScope, AuthError> {
        let bearer = bearer.ok_or_else(|| {
            AuthError::Unauthenticated(
                "the event feed needs an event-consumer or back-office bearer token".into(),
            )
        })?;
        let verified = self
            .verify(bearer, now_ms)
            .map_err(AuthError::Unauthenticated)?;
        match verified.identity.role {
            Role::EventConsumer => match verified.claims.stores {
                None => Ok(EventScope::AllStores),
                Some(stores) => stores
                    .iter()
                    .map(|store| {
                        StoreId::new(store).map_err(|error| {
                            AuthError::Unauthenticated(format!("token claim stores: {error}"))
                        })
                    })
                    .collect::<Result<_, _>>()
                    .map(EventScope::Stores),
            },
            Role::BackOffice => Ok(EventScope::Stores(vec![verified.identity.store])),
            other => Err(AuthError::Forbidden(format!(
                "the event feed is for event-consumer and back-office tokens, not {other}"
            ))),
        }
    }
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
