//! Signed device tokens: JWTs verified against a JSON Web Key Set, and the
//! hub's own issuance.
//!
//! Signatures are checked and made by the `jsonwebtoken` crate on `ring` (the
//! crypto stack rustls already links). Around it this module stays narrow:
//! RS256, ES256, ES384 and EdDSA only, further narrowed by a configurable
//! allow-list ([`Validation::algorithms`]); a key chosen by `kid` whose own
//! algorithm must match the header's (no algorithm confusion); `none` and
//! every symmetric (`HS*`) algorithm refused by name, and symmetric (`oct`)
//! keys never loaded; the size of a token bounded before anything is decoded;
//! strict unpadded base64url; and every claim parsed into the identifier
//! newtypes. Issuer, audience, tenant, expiry and not-before are all checked;
//! clock skew is tolerated up to a configured leeway.
//!
//! A chain's identity provider names its claims its own way (`tid`,
//! `roles` …): [`ClaimMapping`] says which claim holds the tenant, store,
//! role, device and customer, and how the provider's role values map to the
//! hub's roles.
//!
//! Keys come from a file or from the provider's `jwks_uri` (directly or via
//! OpenID discovery) through a [`KeyCache`], which refetches when a token
//! names an unknown `kid` (at most once per [`JWKS_REFETCH_MIN_MS_DEFAULT`]),
//! on a timer, and on demand (SIGHUP): keys rotate without a restart.
//!
//! Nothing here panics on input: every failure is a [`TokenError`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use omnisync_core::{CustomerId, DeviceId, StoreId, TenantId};
use omnisync_hub_engine::authz::{Identity, Role};
use serde::{Deserialize, Serialize};

/// Longest token accepted, in bytes; longer ones are refused unread. Sized
/// for an identity provider's RS256 token (a 4096-bit signature alone is 683
/// bytes) with a few group or role claims.
pub const TOKEN_BYTES_MAX: usize = 8192;
/// Largest JSON Web Key Set (or discovery document) read, in bytes.
pub const JWKS_BYTES_MAX: usize = 256 * 1024;
/// Most keys one key set may hold.
pub const JWKS_KEYS_MAX: usize = 64;
/// Smallest RSA modulus accepted, bits.
pub const RSA_MODULUS_BITS_MIN: usize = 2048;
/// Largest RSA modulus accepted, bits.
pub const RSA_MODULUS_BITS_MAX: usize = 8192;
/// Default tolerated clock skew between issuer, hub and device, seconds.
pub const CLOCK_LEEWAY_S_DEFAULT: u64 = 60;
/// Default lifetime of an issued token, seconds (one day).
pub const TOKEN_TTL_S_DEFAULT: u64 = 24 * 3600;
/// Longest lifetime of an issued or refreshed token, seconds (30 days).
pub const TOKEN_TTL_S_MAX: u64 = 30 * 24 * 3600;
/// How long after its enrolment (`auth_time`) a device may keep refreshing
/// its token without enrolling again, seconds (90 days).
pub const REFRESH_WINDOW_S_DEFAULT: u64 = 90 * 24 * 3600;
/// Default shortest time between two fetches of a remote key set caused by
/// tokens naming an unknown `kid`, ms: a flood of forged `kid`s costs the
/// identity provider at most one request per this interval.
pub const JWKS_REFETCH_MIN_MS_DEFAULT: u64 = 30_000;
/// Default time after which a remote key set is fetched again even when no
/// unknown `kid` arrived (so removed keys stop working), ms (5 minutes).
pub const JWKS_REFRESH_MS_DEFAULT: u64 = 5 * 60 * 1000;
/// Longest wait for one HTTP request to the identity provider, ms.
pub const JWKS_FETCH_TIMEOUT_MS: u64 = 5_000;

/// A signature algorithm this hub can accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (identity providers' default).
    Rs256,
    /// ECDSA on P-256 with SHA-256.
    Es256,
    /// ECDSA on P-384 with SHA-384.
    Es384,
    /// Ed25519.
    EdDsa,
}

impl Algorithm {
    /// Every algorithm this hub can verify, the default allow-list.
    pub const ALL: [Algorithm; 4] = [
        Algorithm::Rs256,
        Algorithm::Es256,
        Algorithm::Es384,
        Algorithm::EdDsa,
    ];

    /// The JOSE name (`RS256`, `ES256`, `ES384`, `EdDSA`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Algorithm::Rs256 => "RS256",
            Algorithm::Es256 => "ES256",
            Algorithm::Es384 => "ES384",
            Algorithm::EdDsa => "EdDSA",
        }
    }

    /// Parses a header's `alg`, naming why refused algorithms are refused.
    pub fn parse(alg: &str) -> Result<Self, TokenError> {
        match alg {
            "RS256" => Ok(Algorithm::Rs256),
            "ES256" => Ok(Algorithm::Es256),
            "ES384" => Ok(Algorithm::Es384),
            "EdDSA" => Ok(Algorithm::EdDsa),
            "none" | "None" | "NONE" => Err(TokenError::Algorithm(
                "alg none (an unsigned token) is refused".into(),
            )),
            hmac if hmac.starts_with("HS") => Err(TokenError::Algorithm(format!(
                "alg {hmac} is symmetric and refused; use RS256, ES256, ES384 or EdDSA"
            ))),
            other => Err(TokenError::Algorithm(format!(
                "alg {other:?} is not accepted; use RS256, ES256, ES384 or EdDSA"
            ))),
        }
    }

    fn jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            Algorithm::Rs256 => jsonwebtoken::Algorithm::RS256,
            Algorithm::Es256 => jsonwebtoken::Algorithm::ES256,
            Algorithm::Es384 => jsonwebtoken::Algorithm::ES384,
            Algorithm::EdDsa => jsonwebtoken::Algorithm::EdDSA,
        }
    }
}

impl std::str::FromStr for Algorithm {
    type Err = TokenError;
    fn from_str(text: &str) -> Result<Self, TokenError> {
        Algorithm::parse(text)
    }
}

/// Why a token, a key or a key set was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Longer than [`TOKEN_BYTES_MAX`].
    #[error("token of {0} bytes exceeds the limit of {TOKEN_BYTES_MAX}")]
    TooLong(usize),
    /// Not three base64url parts of JSON.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// `none`, a symmetric algorithm, one outside the allow-list, or
    /// anything else not accepted.
    #[error("{0}")]
    Algorithm(String),
    /// No configured key matches the header's `kid` and `alg`.
    #[error("no key {kid:?} for {alg} in the key set")]
    UnknownKey {
        /// The header's key id.
        kid: String,
        /// The header's algorithm.
        alg: &'static str,
    },
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// Past `exp` (plus leeway).
    #[error("token expired at {exp} (now {now}, unix seconds)")]
    Expired {
        /// The token's expiry.
        exp: u64,
        /// The verifier's clock.
        now: u64,
    },
    /// Before `nbf` or `iat` (minus leeway).
    #[error("token not valid before {0} (unix seconds)")]
    NotYetValid(u64),
    /// `iss` differs from the configured issuer.
    #[error("token issuer {0:?} is not trusted here")]
    WrongIssuer(String),
    /// `aud` does not name this hub's audience.
    #[error("token audience {0:?} does not include this hub")]
    WrongAudience(String),
    /// `tenant` differs from the hub's tenant.
    #[error("token tenant {0:?} is not this hub's tenant")]
    WrongTenant(String),
    /// A claim is missing or does not parse.
    #[error("bad claim: {0}")]
    Claim(String),
    /// A key or key set does not parse.
    #[error("bad key: {0}")]
    Key(String),
    /// A key set could not be fetched or read.
    #[error("key set unavailable: {0}")]
    Fetch(String),
}

/// The claims of a device token, in the hub's own names (the form the hub
/// issues; a provider's token is mapped into it by [`ClaimMapping`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Audience: one string or several.
    pub aud: Audience,
    /// Subject: the device id.
    pub sub: String,
    /// Tenant (retail chain).
    pub tenant: String,
    /// The device's store.
    pub store: String,
    /// `terminal`, `customer-app`, `back-office` or `hub-peer`.
    pub role: String,
    /// The shopper, for a customer app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<String>,
    /// Issued at, unix seconds.
    pub iat: u64,
    /// Expiry, unix seconds.
    pub exp: u64,
    /// Not before, unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// When the device was enrolled, unix seconds; refreshes keep it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<u64>,
    /// An event consumer's stores (absent: every store of the tenant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stores: Option<Vec<String>>,
}

/// The `aud` claim: a string or an array of strings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// One audience.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, wanted: &str) -> bool {
        match self {
            Audience::One(one) => one == wanted,
            Audience::Many(many) => many.iter().any(|one| one == wanted),
        }
    }
}

/// Which claims of a provider's token hold the hub's identity fields, and
/// how its role values map to the hub's roles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimMapping {
    /// Claim holding the tenant (default `tenant`; Entra ID: `tid`).
    pub tenant: String,
    /// Claim holding the store (default `store`).
    pub store: String,
    /// Claim holding the role: a string or an array of strings (default
    /// `role`; Entra ID: `roles`).
    pub role: String,
    /// Claim holding the device id (default `sub`).
    pub device: String,
    /// Claim holding the customer of a customer app (default `customer`).
    pub customer: String,
    /// Provider role value → hub role. Empty: the provider uses the hub's
    /// names (`terminal`, `customer-app`, `back-office`, `hub-peer`) and any
    /// other value is refused. Not empty: only listed values count, others
    /// are ignored (a provider's `roles` array may hold unrelated roles),
    /// and the listed ones must name exactly one hub role.
    pub roles: Vec<(String, Role)>,
}

impl Default for ClaimMapping {
    fn default() -> Self {
        Self {
            tenant: "tenant".into(),
            store: "store".into(),
            role: "role".into(),
            device: "sub".into(),
            customer: "customer".into(),
            roles: Vec::new(),
        }
    }
}

impl ClaimMapping {
    /// Parses one `VALUE=ROLE` role mapping (`--role-map`), e.g.
    /// `POS.Terminal=terminal`.
    pub fn parse_role(text: &str) -> Result<(String, Role), TokenError> {
        let (value, role) = text
            .rsplit_once('=')
            .ok_or_else(|| TokenError::Claim(format!("role mapping {text:?} is not VALUE=ROLE")))?;
        let role: Role = role
            .parse()
            .map_err(|error| TokenError::Claim(format!("role mapping {text:?}: {error}")))?;
        if value.is_empty() {
            return Err(TokenError::Claim(format!(
                "role mapping {text:?} names no value"
            )));
        }
        Ok((value.to_owned(), role))
    }

    /// The hub's claims from a provider's verified payload.
    fn claims(
        &self,
        payload: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Claims, TokenError> {
        let text = |name: &str| -> Result<String, TokenError> {
            match payload.get(name) {
                Some(serde_json::Value::String(value)) => Ok(value.clone()),
                Some(_) => Err(TokenError::Claim(format!("{name} is not a string"))),
                None => Err(TokenError::Claim(format!("{name} is missing"))),
            }
        };
        let time = |name: &str| -> Result<Option<u64>, TokenError> {
            match payload.get(name) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(value) => value
                    .as_u64()
                    .map(Some)
                    .ok_or_else(|| TokenError::Claim(format!("{name} is not unix seconds"))),
            }
        };
        let required = |name: &str| -> Result<u64, TokenError> {
            time(name)?.ok_or_else(|| TokenError::Claim(format!("{name} is missing")))
        };
        let aud = match payload.get("aud") {
            Some(value) => serde_json::from_value(value.clone())
                .map_err(|_| TokenError::Claim("aud is not a string or strings".into()))?,
            None => return Err(TokenError::Claim("aud is missing".into())),
        };
        let customer = match payload.get(&self.customer) {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(customer)) => Some(customer.clone()),
            Some(_) => {
                return Err(TokenError::Claim(format!(
                    "{} is not a string",
                    self.customer
                )));
            }
        };
        let stores = match payload.get("stores") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Array(items)) => Some(
                items
                    .iter()
                    .map(|item| {
                        item.as_str().map(str::to_owned).ok_or_else(|| {
                            TokenError::Claim("stores is not an array of strings".into())
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Some(_) => {
                return Err(TokenError::Claim(
                    "stores is not an array of strings".into(),
                ));
            }
        };
        Ok(Claims {
            stores,
            iss: text("iss")?,
            aud,
            sub: text(&self.device)?,
            tenant: text(&self.tenant)?,
            store: text(&self.store)?,
            role: self.role(payload.get(&self.role))?.as_str().to_owned(),
            customer,
            iat: required("iat")?,
            exp: required("exp")?,
            nbf: time("nbf")?,
            auth_time: time("auth_time")?,
        })
    }

    fn role(&self, value: Option<&serde_json::Value>) -> Result<Role, TokenError> {
        let values: Vec<&str> = match value {
            Some(serde_json::Value::String(one)) => vec![one.as_str()],
            Some(serde_json::Value::Array(many)) => {
                many.iter().filter_map(|v| v.as_str()).collect()
            }
            Some(_) => {
                return Err(TokenError::Claim(format!(
                    "{} is not a string or strings",
                    self.role
                )));
            }
            None => return Err(TokenError::Claim(format!("{} is missing", self.role))),
        };
        let mut roles: Vec<Role> = Vec::new();
        for value in values {
            let role = if self.roles.is_empty() {
                Some(
                    value
                        .parse::<Role>()
                        .map_err(|error| TokenError::Claim(format!("role: {error}")))?,
                )
            } else {
                self.roles
                    .iter()
                    .find(|(name, _)| name == value)
                    .map(|(_, role)| *role)
            };
            if let Some(role) = role.filter(|role| !roles.contains(role)) {
                roles.push(role);
            }
        }
        match roles.as_slice() {
            [role] => Ok(*role),
            [] => Err(TokenError::Claim(format!(
                "{} names no role this hub knows",
                self.role
            ))),
            _ => Err(TokenError::Claim(format!(
                "{} names several hub roles ({roles:?}); a token holds exactly one",
                self.role
            ))),
        }
    }
}

/// What a verifier requires of a token besides its signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validation {
    /// The only accepted `iss`.
    pub issuer: String,
    /// `aud` must contain this.
    pub audience: String,
    /// The only accepted `tenant`.
    pub tenant: TenantId,
    /// Tolerated clock skew, seconds.
    pub leeway_s: u64,
    /// Accepted algorithms (the allow-list); default [`Algorithm::ALL`].
    pub algorithms: Vec<Algorithm>,
    /// Where the identity fields are in the provider's claims.
    pub claims: ClaimMapping,
}

impl Validation {
    /// Tokens of `issuer` for `audience` and `tenant`, with the default
    /// leeway, every algorithm, and the hub's own claim names.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>, tenant: TenantId) -> Self {
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            tenant,
            leeway_s: CLOCK_LEEWAY_S_DEFAULT,
            algorithms: Algorithm::ALL.to_vec(),
            claims: ClaimMapping::default(),
        }
    }
}

/// A verified token: its claims and the identity they state.
#[derive(Clone, Debug, PartialEq)]
pub struct Verified {
    /// The claims, in the hub's names.
    pub claims: Claims,
    /// The identity they state, parsed.
    pub identity: Identity,
}

/// Public keys a hub trusts, from a JSON Web Key Set.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: Vec<PublicKey>,
    skipped: Vec<String>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field(
                "keys",
                &self
                    .keys
                    .iter()
                    .map(|key| (key.kid.as_str(), key.algorithm.as_str()))
                    .collect::<Vec<_>>(),
            )
            .field("skipped", &self.skipped)
            .finish()
    }
}

#[derive(Clone)]
struct PublicKey {
    kid: String,
    algorithm: Algorithm,
    decoding: jsonwebtoken::DecodingKey,
}

/// A private key that signs tokens (enrolment, refresh): ES256 or EdDSA.
#[derive(Clone)]
pub struct SigningKey {
    kid: String,
    algorithm: Algorithm,
    /// The private scalar (P-256) or seed (Ed25519).
    d: Vec<u8>,
    /// The public key: an uncompressed point (P-256) or 32 bytes (Ed25519).
    public: Vec<u8>,
    /// The same key as PKCS#8, the form `ring` signs with.
    pkcs8: Vec<u8>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print private key material.
        write!(f, "SigningKey({}, {})", self.kid, self.algorithm.as_str())
    }
}

/// One JSON Web Key as stored in files or served by a provider (public or
/// private).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Jwk {
    /// `RSA`, `EC` or `OKP` (`oct` keys are never loaded).
    pub kty: String,
    /// `P-256`, `P-384` or `Ed25519` (EC and OKP keys).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub crv: String,
    /// Key id.
    #[serde(default)]
    pub kid: String,
    /// `RS256`, `ES256`, `ES384` or `EdDSA`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    /// Public x coordinate (EC) or public key (OKP), base64url.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub x: String,
    /// Public y coordinate (EC), base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    /// RSA modulus, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// RSA public exponent, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    /// Private scalar or seed, base64url (private keys only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub d: Option<String>,
    /// `sig` when present.
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
}

#[derive(Deserialize, Serialize)]
struct JwkSetFile {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

impl KeySet {
    /// Parses a JSON Web Key Set (`{"keys": [...]}`) of `RSA`, `EC` P-256 or
    /// P-384, and `OKP` Ed25519 public keys, each with a unique `kid`.
    /// Private parts and malformed supported keys refuse the whole set (a
    /// verifier's key file must not hold signing keys); keys this hub cannot
    /// use (encryption keys, symmetric `oct` keys, other curves or
    /// algorithms, as providers publish) are skipped and listed in
    /// [`KeySet::skipped`]. At least one usable key is required.
    pub fn from_jwks(bytes: &[u8]) -> Result<Self, TokenError> {
        if bytes.len() > JWKS_BYTES_MAX {
            return Err(TokenError::Key(format!(
                "key set of {} bytes exceeds {JWKS_BYTES_MAX}",
                bytes.len()
            )));
        }
        let file: JwkSetFile = serde_json::from_slice(bytes)
            .map_err(|error| TokenError::Key(format!("not a JSON Web Key Set: {error}")))?;
        if file.keys.is_empty() || file.keys.len() > JWKS_KEYS_MAX {
            return Err(TokenError::Key(format!(
                "a key set holds 1 to {JWKS_KEYS_MAX} keys, not {}",
                file.keys.len()
            )));
        }
        let mut set = KeySet::default();
        for value in file.keys {
            let jwk: Jwk = serde_json::from_value(value)
                .map_err(|error| TokenError::Key(format!("not a JSON Web Key: {error}")))?;
            if jwk.d.is_some() {
                return Err(TokenError::Key(format!(
                    "key {:?} holds a private part; a verifier's key set holds public keys only",
                    jwk.kid
                )));
            }
            if jwk.kid.is_empty() {
                return Err(TokenError::Key("every key needs a kid".into()));
            }
            if set.keys.iter().any(|key| key.kid == jwk.kid) || set.skipped.contains(&jwk.kid) {
                return Err(TokenError::Key(format!("kid {:?} appears twice", jwk.kid)));
            }
            match public_key(&jwk)? {
                Some(key) => set.keys.push(key),
                None => set.skipped.push(jwk.kid.clone()),
            }
        }
        if set.keys.is_empty() {
            return Err(TokenError::Key(format!(
                "no usable signing key (skipped {:?})",
                set.skipped
            )));
        }
        Ok(set)
    }

    /// A key set holding the public half of `key`.
    pub fn from_signing_key(key: &SigningKey) -> Self {
        Self {
            keys: key.public().into_iter().collect(),
            skipped: Vec::new(),
        }
    }

    /// Number of usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when the set holds no usable key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The `kid`s of keys in the set that this hub cannot use and ignores.
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// The `kid`s of the usable keys.
    pub fn kids(&self) -> Vec<&str> {
        self.keys.iter().map(|key| key.kid.as_str()).collect()
    }

    /// Verifies `token` at `now_s` (unix seconds): size, form, algorithm
    /// (allow-list), key, signature, then every claim.
    pub fn verify(
        &self,
        token: &str,
        validation: &Validation,
        now_s: u64,
    ) -> Result<Verified, TokenError> {
        let (alg, kid) = check_form(token, validation)?;
        let key = self.select(kid.as_deref(), alg)?;
        let mut rules = jsonwebtoken::Validation::new(alg.jwt());
        // The claims are checked below, in the provider's names.
        rules.required_spec_claims.clear();
        rules.validate_exp = false;
        rules.validate_nbf = false;
        rules.validate_aud = false;
        rules.leeway = 0;
        let payload = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &key.decoding,
            &rules,
        )
        .map_err(|error| match error.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature
            | jsonwebtoken::errors::ErrorKind::Crypto(_)
            | jsonwebtoken::errors::ErrorKind::InvalidEcdsaKey
            | jsonwebtoken::errors::ErrorKind::InvalidRsaKey(_) => TokenError::BadSignature,
            jsonwebtoken::errors::ErrorKind::InvalidAlgorithm
            | jsonwebtoken::errors::ErrorKind::InvalidAlgorithmName => {
                TokenError::Algorithm(format!("alg {}: {error}", alg.as_str()))
            }
            jsonwebtoken::errors::ErrorKind::Json(_) => {
                TokenError::Claim(format!("payload: {error}"))
            }
            _ => TokenError::Malformed(error.to_string()),
        })?
        .claims;
        let claims = validation.claims.claims(&payload)?;
        let identity = check_claims(&claims, validation, now_s)?;
        Ok(Verified { claims, identity })
    }

    fn select(&self, kid: Option<&str>, alg: Algorithm) -> Result<&PublicKey, TokenError> {
        let found = match kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|key| key.kid == kid && key.algorithm == alg),
            // Without a kid only an unambiguous key set will do.
            None if self.keys.len() == 1 => self.keys.iter().find(|key| key.algorithm == alg),
            None => None,
        };
        found.ok_or_else(|| TokenError::UnknownKey {
            kid: kid.unwrap_or("").to_owned(),
            alg: alg.as_str(),
        })
    }
}

/// Size, three strict base64url parts, a JSON header with an accepted and
/// allowed `alg` and no `crit`: the header's algorithm and key id.
fn check_form(
    token: &str,
    validation: &Validation,
) -> Result<(Algorithm, Option<String>), TokenError> {
    if token.len() > TOKEN_BYTES_MAX {
        return Err(TokenError::TooLong(token.len()));
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed(
            "expected three dot-separated parts".into(),
        ));
    };
    let header: Header = serde_json::from_slice(&decode_part(header_b64, "header")?)
        .map_err(|error| TokenError::Malformed(format!("header: {error}")))?;
    decode_part(payload_b64, "payload")?;
    decode_part(signature_b64, "signature")?;
    let alg = Algorithm::parse(&header.alg)?;
    if !validation.algorithms.contains(&alg) {
        return Err(TokenError::Algorithm(format!(
            "alg {} is not in this hub's allow-list",
            alg.as_str()
        )));
    }
    if header.crit.is_some() {
        return Err(TokenError::Malformed(
            "critical header extensions are not supported".into(),
        ));
    }
    Ok((alg, header.kid))
}

/// PKCS#8 framing of a P-256 private key with its public point, as `ring`
/// writes and reads it: prefix, 32-byte scalar, middle, 65-byte point.
const P256_PKCS8_PREFIX: &[u8] = &[
    0x30, 0x81, 0x87, 0x02, 0x01, 0x00, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02,
    0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x04, 0x6d, 0x30, 0x6b, 0x02,
    0x01, 0x01, 0x04, 0x20,
];
const P256_PKCS8_MIDDLE: &[u8] = &[0xa1, 0x44, 0x03, 0x42, 0x00];
/// PKCS#8 v2 framing of an Ed25519 seed with its public key, as `ring`
/// writes and reads it: prefix, 32-byte seed, middle, 32-byte public key.
const ED25519_PKCS8_PREFIX: &[u8] = &[
    0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
const ED25519_PKCS8_MIDDLE: &[u8] = &[0x81, 0x21, 0x00];

impl SigningKey {
    /// A fresh random ES256 or EdDSA key. The hub does not issue RS256 or
    /// ES384 tokens; those come from a chain's identity provider.
    pub fn generate(algorithm: Algorithm, kid: impl Into<String>) -> Result<Self, TokenError> {
        use ring::signature::KeyPair as _;
        let rng = ring::rand::SystemRandom::new();
        let failed = |_| TokenError::Key("the system random generator failed".into());
        let (d, public) = match algorithm {
            Algorithm::EdDsa => {
                let document =
                    ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).map_err(failed)?;
                let pair = ring::signature::Ed25519KeyPair::from_pkcs8(document.as_ref())
                    .map_err(|_| TokenError::Key("ring made an unreadable Ed25519 key".into()))?;
                let seed = framed(document.as_ref(), ED25519_PKCS8_PREFIX, 32)?;
                (seed, pair.public_key().as_ref().to_vec())
            }
            Algorithm::Es256 => {
                let alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
                let document =
                    ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).map_err(failed)?;
                let pair = ring::signature::EcdsaKeyPair::from_pkcs8(alg, document.as_ref(), &rng)
                    .map_err(|_| TokenError::Key("ring made an unreadable P-256 key".into()))?;
                let d = framed(document.as_ref(), P256_PKCS8_PREFIX, 32)?;
                (d, pair.public_key().as_ref().to_vec())
            }
            other => {
                return Err(TokenError::Key(format!(
                    "the hub signs with ES256 or EdDSA, not {}",
                    other.as_str()
                )));
            }
        };
        Self::from_parts(kid.into(), algorithm, d, public)
    }

    /// A key from its private part and public part, checked by `ring`.
    fn from_parts(
        kid: String,
        algorithm: Algorithm,
        d: Vec<u8>,
        public: Vec<u8>,
    ) -> Result<Self, TokenError> {
        let (prefix, middle) = match algorithm {
            Algorithm::EdDsa => (ED25519_PKCS8_PREFIX, ED25519_PKCS8_MIDDLE),
            _ => (P256_PKCS8_PREFIX, P256_PKCS8_MIDDLE),
        };
        let pkcs8 = [prefix, &d, middle, &public].concat();
        let mismatch = || TokenError::Key("the public part does not match the private part".into());
        match algorithm {
            Algorithm::EdDsa => {
                ring::signature::Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|_| mismatch())?;
            }
            _ => {
                ring::signature::EcdsaKeyPair::from_pkcs8(
                    &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    &pkcs8,
                    &ring::rand::SystemRandom::new(),
                )
                .map_err(|_| mismatch())?;
            }
        }
        Ok(Self {
            kid,
            algorithm,
            d,
            public,
            pkcs8,
        })
    }

    /// Parses a private JWK (with `d`): EC P-256 or OKP Ed25519.
    pub fn from_jwk(bytes: &[u8]) -> Result<Self, TokenError> {
        let jwk: Jwk = serde_json::from_slice(bytes)
            .map_err(|error| TokenError::Key(format!("not a JSON Web Key: {error}")))?;
        let d = jwk
            .d
            .as_deref()
            .ok_or_else(|| TokenError::Key("a signing key needs its private part d".into()))?;
        let d = decode_key_bytes(d, "d")?;
        let x = decode_key_bytes(&jwk.x, "x")?;
        let (algorithm, public) = match (jwk.kty.as_str(), jwk.crv.as_str()) {
            ("EC", "P-256") => {
                let y = decode_key_bytes(jwk.y.as_deref().unwrap_or_default(), "y")?;
                if d.len() != 32 || x.len() != 32 || y.len() != 32 {
                    return Err(TokenError::Key("P-256 d, x and y are 32 bytes".into()));
                }
                (Algorithm::Es256, [&[0x04][..], &x, &y].concat())
            }
            ("OKP", "Ed25519") => {
                if d.len() != 32 || x.len() != 32 {
                    return Err(TokenError::Key("an Ed25519 d and x are 32 bytes".into()));
                }
                (Algorithm::EdDsa, x)
            }
            (kty, crv) => {
                return Err(TokenError::Key(format!("unsupported key type {kty}/{crv}")));
            }
        };
        if jwk
            .alg
            .as_deref()
            .is_some_and(|alg| alg != algorithm.as_str())
        {
            return Err(TokenError::Key(format!(
                "key {:?}: alg does not fit kty {}",
                jwk.kid, jwk.kty
            )));
        }
        Self::from_parts(jwk.kid.clone(), algorithm, d, public)
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The private JWK (keep it secret).
    pub fn private_jwk(&self) -> Jwk {
        let mut jwk = self.public_jwk();
        jwk.d = Some(URL_SAFE_NO_PAD.encode(&self.d));
        jwk
    }

    /// The public JWK, for a verifier's key set.
    pub fn public_jwk(&self) -> Jwk {
        let mut jwk = Jwk {
            kid: self.kid.clone(),
            alg: Some(self.algorithm.as_str().to_owned()),
            use_: Some("sig".into()),
            ..Jwk::default()
        };
        match self.algorithm {
            Algorithm::EdDsa => {
                jwk.kty = "OKP".into();
                jwk.crv = "Ed25519".into();
                jwk.x = URL_SAFE_NO_PAD.encode(&self.public);
            }
            _ => {
                // An uncompressed point: 0x04, x, y.
                jwk.kty = "EC".into();
                jwk.crv = "P-256".into();
                jwk.x = URL_SAFE_NO_PAD.encode(self.public.get(1..33).unwrap_or_default());
                jwk.y = Some(URL_SAFE_NO_PAD.encode(self.public.get(33..).unwrap_or_default()));
            }
        }
        jwk
    }

    /// A JSON Web Key Set holding this key's public half.
    pub fn public_jwks(&self) -> String {
        serde_json::to_string_pretty(&serde_json::json!({ "keys": [self.public_jwk()] }))
            .unwrap_or_default()
    }

    /// Signs `claims` into a compact JWT.
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        let mut header = jsonwebtoken::Header::new(self.algorithm.jwt());
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding())
            .map_err(|error| TokenError::Key(format!("signing failed: {error}")))
    }

    /// Signs raw bytes (`header.payload`) the way a JWS signature is made,
    /// returning it base64url-encoded: for tests and fuzzing that build
    /// tokens by hand.
    pub fn sign_message(&self, message: &[u8]) -> Result<String, TokenError> {
        jsonwebtoken::crypto::sign(message, &self.encoding(), self.algorithm.jwt())
            .map_err(|error| TokenError::Key(format!("signing failed: {error}")))
    }

    fn encoding(&self) -> jsonwebtoken::EncodingKey {
        match self.algorithm {
            Algorithm::EdDsa => jsonwebtoken::EncodingKey::from_ed_der(&self.pkcs8),
            _ => jsonwebtoken::EncodingKey::from_ec_der(&self.pkcs8),
        }
    }

    fn public(&self) -> Option<PublicKey> {
        public_key(&self.public_jwk()).ok().flatten()
    }
}

/// The `length` bytes after `prefix` at the start of `document`.
fn framed(document: &[u8], prefix: &[u8], length: usize) -> Result<Vec<u8>, TokenError> {
    document
        .strip_prefix(prefix)
        .and_then(|rest| rest.get(..length))
        .map(<[u8]>::to_vec)
        .ok_or_else(|| TokenError::Key("unexpected PKCS#8 framing from ring".into()))
}

/// Claims for a new token of `identity`, valid from `now_s` for `ttl_s`
/// (capped at [`TOKEN_TTL_S_MAX`]).
pub fn claims_for(
    identity: &Identity,
    issuer: &str,
    audience: &str,
    now_s: u64,
    ttl_s: u64,
    auth_time: u64,
) -> Claims {
    Claims {
        iss: issuer.to_owned(),
        aud: Audience::One(audience.to_owned()),
        sub: identity.device.to_string(),
        tenant: identity.tenant.to_string(),
        store: identity.store.to_string(),
        role: identity.role.as_str().to_owned(),
        customer: identity.customer.as_ref().map(ToString::to_string),
        iat: now_s,
        exp: now_s.saturating_add(ttl_s.min(TOKEN_TTL_S_MAX)),
        nbf: None,
        auth_time: Some(auth_time),
        stores: None,
    }
}

/// Reads the expiry of a token without verifying it, for a device deciding
/// when to refresh. Never trust the result for anything else.
pub fn unverified_expiry(token: &str) -> Option<u64> {
    if token.len() > TOKEN_BYTES_MAX {
        return None;
    }
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    #[derive(Deserialize)]
    struct Expiry {
        exp: u64,
    }
    serde_json::from_slice::<Expiry>(&bytes)
        .ok()
        .map(|claims| claims.exp)
}

fn check_claims(
    claims: &Claims,
    validation: &Validation,
    now_s: u64,
) -> Result<Identity, TokenError> {
    let leeway = validation.leeway_s;
    if claims.iss != validation.issuer {
        return Err(TokenError::WrongIssuer(claims.iss.clone()));
    }
    if !claims.aud.contains(&validation.audience) {
        return Err(TokenError::WrongAudience(format!("{:?}", claims.aud)));
    }
    if now_s >= claims.exp.saturating_add(leeway) {
        return Err(TokenError::Expired {
            exp: claims.exp,
            now: now_s,
        });
    }
    let not_before = claims.nbf.unwrap_or(0).max(claims.iat);
    if not_before > now_s.saturating_add(leeway) {
        return Err(TokenError::NotYetValid(not_before));
    }
    if claims.exp <= claims.iat {
        return Err(TokenError::Claim("exp is not after iat".into()));
    }
    if claims.tenant != validation.tenant.as_str() {
        return Err(TokenError::WrongTenant(claims.tenant.clone()));
    }
    let claim = |name: &str, error: omnisync_core::vocab::ids::IdError| {
        TokenError::Claim(format!("{name}: {error}"))
    };
    let role: Role = claims
        .role
        .parse()
        .map_err(|error| TokenError::Claim(format!("role: {error}")))?;
    let customer = match (&claims.customer, role) {
        (Some(customer), Role::CustomerApp) => {
            Some(CustomerId::new(customer.as_str()).map_err(|error| claim("customer", error))?)
        }
        (None, Role::CustomerApp) => {
            return Err(TokenError::Claim(
                "a customer-app token must name its customer".into(),
            ));
        }
        (Some(_), _) => {
            return Err(TokenError::Claim(format!(
                "a {role} token may not name a customer"
            )));
        }
        (None, _) => None,
    };
    Ok(Identity {
        tenant: validation.tenant.clone(),
        device: DeviceId::new(claims.sub.as_str()).map_err(|error| claim("sub", error))?,
        store: StoreId::new(claims.store.as_str()).map_err(|error| claim("store", error))?,
        role,
        customer,
        expires_ms: Some(claims.exp.saturating_add(leeway).saturating_mul(1000)),
    })
}

fn decode_part(part: &str, name: &str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD.decode(part).map_err(|error| {
        TokenError::Malformed(format!("{name} is not unpadded base64url: {error}"))
    })
}

fn decode_key_bytes(text: &str, name: &str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|error| TokenError::Key(format!("{name} is not unpadded base64url: {error}")))
}

/// The usable public key of `jwk`; `None` for a key this hub does not use
/// (encryption, symmetric, other algorithms and curves); an error for a
/// supported key that is malformed.
fn public_key(jwk: &Jwk) -> Result<Option<PublicKey>, TokenError> {
    if jwk.use_.as_deref().is_some_and(|use_| use_ != "sig") {
        return Ok(None);
    }
    let misfit = |alg: &str| {
        TokenError::Key(format!(
            "key {:?}: alg {alg} does not fit kty {}",
            jwk.kid, jwk.kty
        ))
    };
    let (algorithm, decoding) = match (jwk.kty.as_str(), jwk.crv.as_str()) {
        ("RSA", _) => {
            match jwk.alg.as_deref() {
                None | Some("RS256") => {}
                // RS384, PS256, RSA-OAEP …: not for this hub.
                Some(_) => return Ok(None),
            }
            let n = decode_key_bytes(jwk.n.as_deref().unwrap_or_default(), "n")?;
            let e = decode_key_bytes(jwk.e.as_deref().unwrap_or_default(), "e")?;
            let significant = n.iter().skip_while(|byte| **byte == 0).count();
            let bits = significant * 8;
            if !(RSA_MODULUS_BITS_MIN..=RSA_MODULUS_BITS_MAX).contains(&bits) {
                return Err(TokenError::Key(format!(
                    "key {:?}: an RSA modulus of about {bits} bits is outside {RSA_MODULUS_BITS_MIN}..={RSA_MODULUS_BITS_MAX}",
                    jwk.kid
                )));
            }
            if e.is_empty() || e.len() > 4 {
                return Err(TokenError::Key(format!(
                    "key {:?}: the RSA exponent is 1 to 4 bytes",
                    jwk.kid
                )));
            }
            let decoding = jsonwebtoken::DecodingKey::from_rsa_raw_components(&n, &e);
            (Algorithm::Rs256, decoding)
        }
        ("EC", crv @ ("P-256" | "P-384")) => {
            let (algorithm, size, curve) = if crv == "P-256" {
                (Algorithm::Es256, 32, &ring::agreement::ECDH_P256)
            } else {
                (Algorithm::Es384, 48, &ring::agreement::ECDH_P384)
            };
            if let Some(alg) = jwk.alg.as_deref().filter(|alg| *alg != algorithm.as_str()) {
                return Err(misfit(alg));
            }
            let y = jwk
                .y
                .as_deref()
                .ok_or_else(|| TokenError::Key("an EC key needs y".into()))?;
            let x_bytes = decode_key_bytes(&jwk.x, "x")?;
            let y_bytes = decode_key_bytes(y, "y")?;
            if x_bytes.len() != size || y_bytes.len() != size {
                return Err(TokenError::Key(format!(
                    "{crv} coordinates are {size} bytes"
                )));
            }
            let point = [&[0x04][..], &x_bytes, &y_bytes].concat();
            check_point(curve, &point)
                .map_err(|_| TokenError::Key(format!("the point is not on {crv}")))?;
            let decoding = jsonwebtoken::DecodingKey::from_ec_components(&jwk.x, y)
                .map_err(|error| TokenError::Key(format!("{crv} key: {error}")))?;
            (algorithm, decoding)
        }
        ("OKP", "Ed25519") => {
            if let Some(alg) = jwk.alg.as_deref().filter(|alg| *alg != "EdDSA") {
                return Err(misfit(alg));
            }
            let x = decode_key_bytes(&jwk.x, "x")?;
            if x.len() != 32 {
                return Err(TokenError::Key("an Ed25519 key is 32 bytes".into()));
            }
            let decoding = jsonwebtoken::DecodingKey::from_ed_components(&jwk.x)
                .map_err(|error| TokenError::Key(format!("Ed25519 key: {error}")))?;
            (Algorithm::EdDsa, decoding)
        }
        // Symmetric (`oct`) keys are never loaded; other types and curves
        // are not for this hub.
        _ => return Ok(None),
    };
    Ok(Some(PublicKey {
        kid: jwk.kid.clone(),
        algorithm,
        decoding,
    }))
}

/// Checks that `point` (uncompressed) is on `curve`: `ring` validates a
/// peer's public key before an ECDH agreement and offers no other way.
fn check_point(
    curve: &'static ring::agreement::Algorithm,
    point: &[u8],
) -> Result<(), ring::error::Unspecified> {
    let rng = ring::rand::SystemRandom::new();
    let mine = ring::agreement::EphemeralPrivateKey::generate(curve, &rng)?;
    let peer = ring::agreement::UnparsedPublicKey::new(curve, point);
    ring::agreement::agree_ephemeral(mine, &peer, |_| ())
}

/// Where a hub's trusted keys come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// Keys given once (tests, embedding); never reloaded.
    Fixed,
    /// A JSON Web Key Set file, read again by [`KeyCache::reload`] (SIGHUP).
    File(PathBuf),
    /// A JSON Web Key Set URL, or an OpenID discovery document's URL
    /// (`…/.well-known/openid-configuration`) naming its `jwks_uri`.
    Url(String),
}

/// A hub's trusted keys and where they come from; keys rotate without a
/// restart. A remote set is fetched again when a token names an unknown
/// `kid` (at most once per `refetch_min`), by [`KeyCache::spawn_refresher`]
/// on a timer, and by [`KeyCache::reload`]; a failed fetch keeps the keys
/// held before.
pub struct KeyCache {
    source: KeySource,
    issuer: Option<String>,
    refetch_min: Duration,
    keys: RwLock<Arc<KeySet>>,
    last_fetch: Mutex<Instant>,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache")
            .field("source", &self.source)
            .field("keys", &self.keys())
            .finish()
    }
}

impl KeyCache {
    /// Fixed keys.
    pub fn fixed(keys: KeySet) -> Self {
        Self::with(KeySource::Fixed, None, 0, keys)
    }

    /// Keys from a JSON Web Key Set file.
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        let keys = read_jwks_file(path)?;
        Ok(Self::with(KeySource::File(path.to_owned()), None, 0, keys))
    }

    /// Keys fetched from `url` (a JWKS or an OpenID discovery document; https,
    /// or http to a loopback address). A discovery document's `issuer` must
    /// be `issuer` when given. Unknown-`kid` refetches are at least
    /// `refetch_min_ms` apart. Blocks until the first fetch is done.
    pub fn from_url(
        url: &str,
        issuer: Option<&str>,
        refetch_min_ms: u64,
    ) -> Result<Self, TokenError> {
        check_url(url)?;
        let keys = fetch_blocking(url, issuer)?;
        Ok(Self::with(
            KeySource::Url(url.to_owned()),
            issuer.map(str::to_owned),
            refetch_min_ms,
            keys,
        ))
    }

    fn with(source: KeySource, issuer: Option<String>, refetch_min_ms: u64, keys: KeySet) -> Self {
        Self {
            source,
            issuer,
            refetch_min: Duration::from_millis(refetch_min_ms),
            keys: RwLock::new(Arc::new(keys)),
            last_fetch: Mutex::new(Instant::now()),
        }
    }

    /// Where the keys come from.
    pub fn source(&self) -> &KeySource {
        &self.source
    }

    /// The keys held now.
    pub fn keys(&self) -> Arc<KeySet> {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Reads the file or fetches the URL again now and holds the new keys;
    /// on failure the keys held before stay.
    pub fn reload(&self) -> Result<Arc<KeySet>, TokenError> {
        let keys = match &self.source {
            KeySource::Fixed => return Ok(self.keys()),
            KeySource::File(path) => read_jwks_file(path)?,
            KeySource::Url(url) => {
                *self
                    .last_fetch
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
                fetch_blocking(url, self.issuer.as_deref())?
            }
        };
        if keys.kids() == self.keys().kids() {
            tracing::debug!(kids = ?keys.kids(), source = ?self.source, "key set unchanged");
        } else {
            tracing::info!(
                kids = ?keys.kids(),
                skipped = ?keys.skipped(),
                source = ?self.source,
                "key set changed"
            );
        }
        let keys = Arc::new(keys);
        *self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = keys.clone();
        Ok(keys)
    }

    /// Verifies `token` ([`KeySet::verify`]); a token naming a `kid` the
    /// remote set lacks makes one fetch, unless one was made within
    /// `refetch_min`.
    pub fn verify(
        &self,
        token: &str,
        validation: &Validation,
        now_s: u64,
    ) -> Result<Verified, TokenError> {
        let result = self.keys().verify(token, validation, now_s);
        match result {
            Err(TokenError::UnknownKey { .. }) if self.may_refetch() => match self.reload() {
                Ok(keys) => keys.verify(token, validation, now_s),
                Err(error) => {
                    tracing::warn!(%error, "refetching the key set for an unknown kid failed");
                    result
                }
            },
            other => other,
        }
    }

    /// True, and the refetch slot taken, when the source is remote and no
    /// fetch happened within `refetch_min`.
    fn may_refetch(&self) -> bool {
        if !matches!(self.source, KeySource::Url(_)) {
            return false;
        }
        let mut last = self
            .last_fetch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.elapsed() < self.refetch_min {
            return false;
        }
        *last = Instant::now();
        true
    }

    /// For a remote set, a thread that fetches it every `every_ms` (so keys
    /// the provider removed stop working) until the cache is dropped.
    pub fn spawn_refresher(self: &Arc<Self>, every_ms: u64) -> Result<(), TokenError> {
        if !matches!(self.source, KeySource::Url(_)) {
            return Ok(());
        }
        let cache: Weak<Self> = Arc::downgrade(self);
        let every = Duration::from_millis(every_ms.max(1));
        std::thread::Builder::new()
            .name("jwks-refresh".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(every);
                    let Some(cache) = cache.upgrade() else { break };
                    if let Err(error) = cache.reload() {
                        tracing::warn!(%error, "refreshing the key set failed; keeping the keys held");
                    }
                }
            })
            .map(|_| ())
            .map_err(|error| TokenError::Fetch(format!("starting the refresh thread: {error}")))
    }
}

fn read_jwks_file(path: &Path) -> Result<KeySet, TokenError> {
    let bytes = std::fs::read(path)
        .map_err(|error| TokenError::Fetch(format!("reading {}: {error}", path.display())))?;
    KeySet::from_jwks(&bytes)
}

/// Parses a key set URL: https, or http to a loopback address (tests, a
/// local identity provider).
pub fn check_url(url: &str) -> Result<reqwest::Url, TokenError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|error| TokenError::Fetch(format!("{url:?} is not a URL: {error}")))?;
    let loopback = match parsed.host_str() {
        Some("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    };
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if loopback => Ok(parsed),
        scheme => Err(TokenError::Fetch(format!(
            "{url:?}: key sets are fetched over https (http only from a loopback address), not {scheme}"
        ))),
    }
}

/// Fetches a key set on a thread of its own (with its own small runtime), so
/// a verifier called from synchronous code inside the hub's runtime can wait
/// for it without starving that runtime.
fn fetch_blocking(url: &str, issuer: Option<&str>) -> Result<KeySet, TokenError> {
    let (url, issuer) = (url.to_owned(), issuer.map(str::to_owned));
    let thread = std::thread::Builder::new()
        .name("jwks-fetch".into())
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|error| TokenError::Fetch(format!("starting a runtime: {error}")))?
                .block_on(fetch(&url, issuer.as_deref()))
        })
        .map_err(|error| TokenError::Fetch(format!("starting the fetch thread: {error}")))?;
    let join = move || {
        thread
            .join()
            .unwrap_or_else(|_| Err(TokenError::Fetch("the fetch thread panicked".into())))
    };
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(join)
        }
        _ => join(),
    }
}

async fn fetch(url: &str, issuer: Option<&str>) -> Result<KeySet, TokenError> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(JWKS_FETCH_TIMEOUT_MS))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|error| TokenError::Fetch(format!("building the HTTP client: {error}")))?;
    let body = get(&client, url).await?;
    let document: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|error| TokenError::Fetch(format!("{url}: not JSON: {error}")))?;
    if document.get("keys").is_some() {
        return KeySet::from_jwks(&body);
    }
    let jwks_uri = document
        .get("jwks_uri")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| {
            TokenError::Fetch(format!(
                "{url}: neither a key set (keys) nor a discovery document (jwks_uri)"
            ))
        })?;
    if let Some(wanted) = issuer {
        let stated = document.get("issuer").and_then(serde_json::Value::as_str);
        if stated != Some(wanted) {
            return Err(TokenError::Fetch(format!(
                "{url}: the discovery document's issuer {stated:?} is not {wanted:?}"
            )));
        }
    }
    KeySet::from_jwks(&get(&client, jwks_uri).await?)
}

/// GETs `url` (checked by [`check_url`]), at most [`JWKS_BYTES_MAX`] bytes.
async fn get(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, TokenError> {
    let failed = |error: reqwest::Error| TokenError::Fetch(format!("{url}: {error}"));
    let mut response = client
        .get(check_url(url)?)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(failed)?;
    if !response.status().is_success() {
        return Err(TokenError::Fetch(format!(
            "{url}: HTTP {}",
            response.status()
        )));
    }
    let too_long = || TokenError::Fetch(format!("{url}: longer than {JWKS_BYTES_MAX} bytes"));
    if response
        .content_length()
        .is_some_and(|length| length > JWKS_BYTES_MAX as u64)
    {
        return Err(too_long());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(failed)? {
        if body.len() + chunk.len() > JWKS_BYTES_MAX {
            return Err(too_long());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn validation() -> Validation {
        let mut validation = Validation::new(
            "https://issuer.example",
            "omnisync-hub",
            TenantId::new("acme").unwrap(),
        );
        validation.leeway_s = 60;
        validation
    }

    fn claims() -> Claims {
        Claims {
            iss: "https://issuer.example".into(),
            aud: Audience::One("omnisync-hub".into()),
            sub: "till-1".into(),
            tenant: "acme".into(),
            store: "s1".into(),
            role: "terminal".into(),
            customer: None,
            iat: NOW - 10,
            exp: NOW + 3600,
            nbf: None,
            auth_time: Some(NOW - 10),
            stores: None,
        }
    }

    fn b64(json: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(json).unwrap())
    }

    #[test]
    fn both_algorithms_sign_and_verify_through_their_jwks() {
        for alg in [Algorithm::EdDsa, Algorithm::Es256] {
            let key = SigningKey::generate(alg, "k1").unwrap();
            let keys = KeySet::from_jwks(key.public_jwks().as_bytes()).unwrap();
            let verified = keys
                .verify(&key.sign(&claims()).unwrap(), &validation(), NOW)
                .unwrap();
            assert_eq!(verified.identity.device.as_str(), "till-1");
            assert_eq!(verified.identity.role, Role::Terminal);
            let reloaded = SigningKey::from_jwk(
                serde_json::to_string(&key.private_jwk())
                    .unwrap()
                    .as_bytes(),
            )
            .unwrap();
            assert!(
                keys.verify(&reloaded.sign(&claims()).unwrap(), &validation(), NOW)
                    .is_ok()
            );
        }
    }

    #[test]
    fn hostile_tokens_are_refused_with_a_reason() {
        let key = SigningKey::generate(Algorithm::EdDsa, "k1").unwrap();
        let keys = KeySet::from_signing_key(&key);
        let good = key.sign(&claims()).unwrap();
        let (signed, _) = good.rsplit_once('.').unwrap();
        let payload = signed.split('.').nth(1).unwrap();
        let verify = |token: &str| keys.verify(token, &validation(), NOW);
        // alg none, with and without a signature.
        let none = b64(&serde_json::json!({"alg": "none", "kid": "k1"}));
        assert!(matches!(
            verify(&format!("{none}.{payload}.")),
            Err(TokenError::Algorithm(_))
        ));
        // A symmetric algorithm keyed with the public key (algorithm confusion).
        let hs = b64(&serde_json::json!({"alg": "HS256", "kid": "k1"}));
        assert!(matches!(
            verify(&format!("{hs}.{payload}.AAAA")),
            Err(TokenError::Algorithm(_))
        ));
        // ES256 named for an EdDSA key.
        let es = b64(&serde_json::json!({"alg": "ES256", "kid": "k1"}));
        let sig = good.rsplit_once('.').unwrap().1;
        assert!(matches!(
            verify(&format!("{es}.{payload}.{sig}")),
            Err(TokenError::UnknownKey { .. })
        ));
        // Another key's signature.
        let forged = SigningKey::generate(Algorithm::EdDsa, "k1")
            .unwrap()
            .sign(&claims())
            .unwrap();
        assert_eq!(verify(&forged), Err(TokenError::BadSignature));
        // A changed payload.
        let mut changed = claims();
        changed.role = "back-office".into();
        let changed_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&changed).unwrap());
        let header = good.split('.').next().unwrap();
        assert_eq!(
            verify(&format!("{header}.{changed_payload}.{sig}")),
            Err(TokenError::BadSignature)
        );
        // Claims.
        let signed_with = |edit: &dyn Fn(&mut Claims)| {
            let mut claims = claims();
            edit(&mut claims);
            key.sign(&claims).unwrap()
        };
        assert!(matches!(
            verify(&signed_with(&|c| c.exp = NOW - 61)),
            Err(TokenError::Expired { .. })
        ));
        assert!(
            verify(&signed_with(&|c| {
                c.iat = NOW - 100;
                c.exp = NOW - 30;
            }))
            .is_ok(),
            "within leeway"
        );
        assert!(matches!(
            verify(&signed_with(&|c| c.iat = NOW + 600)),
            Err(TokenError::NotYetValid(_))
        ));
        assert!(matches!(
            verify(&signed_with(&|c| c.aud = Audience::One("other".into()))),
            Err(TokenError::WrongAudience(_))
        ));
        assert!(
            verify(&signed_with(
                &|c| c.aud = Audience::Many(vec!["x".into(), "omnisync-hub".into()])
            ))
            .is_ok()
        );
        assert!(matches!(
            verify(&signed_with(&|c| c.iss = "evil".into())),
            Err(TokenError::WrongIssuer(_))
        ));
        assert!(matches!(
            verify(&signed_with(&|c| c.tenant = "other".into())),
            Err(TokenError::WrongTenant(_))
        ));
        assert!(matches!(
            verify(&signed_with(&|c| c.role = "admin".into())),
            Err(TokenError::Claim(_))
        ));
        assert!(matches!(
            verify(&signed_with(&|c| c.sub = "till 1/..".into())),
            Err(TokenError::Claim(_))
        ));
        assert!(matches!(
            verify(&signed_with(&|c| c.role = "customer-app".into())),
            Err(TokenError::Claim(_))
        ));
        // Form.
        assert!(matches!(verify("a.b"), Err(TokenError::Malformed(_))));
        assert!(matches!(
            verify(&format!("{good}.x")),
            Err(TokenError::Malformed(_))
        ));
        assert!(matches!(
            verify(&format!("{good}=")),
            Err(TokenError::Malformed(_))
        ));
        assert!(matches!(
            verify(&"a".repeat(TOKEN_BYTES_MAX + 1)),
            Err(TokenError::TooLong(_))
        ));
    }

    #[test]
    fn key_sets_refuse_private_parts_duplicates_and_bad_points() {
        let key = SigningKey::generate(Algorithm::Es256, "k1").unwrap();
        let private = serde_json::json!({"keys": [key.private_jwk()]}).to_string();
        assert!(KeySet::from_jwks(private.as_bytes()).is_err());
        let twice = serde_json::json!({"keys": [key.public_jwk(), key.public_jwk()]}).to_string();
        assert!(KeySet::from_jwks(twice.as_bytes()).is_err());
        let mut bad = key.public_jwk();
        bad.y = Some(URL_SAFE_NO_PAD.encode([7u8; 32]));
        let bad = serde_json::json!({"keys": [bad]}).to_string();
        assert!(KeySet::from_jwks(bad.as_bytes()).is_err());
        assert!(KeySet::from_jwks(b"{\"keys\": []}").is_err());
        assert!(KeySet::from_jwks(b"not json").is_err());
    }

    #[test]
    fn expiry_can_be_read_without_the_key() {
        let key = SigningKey::generate(Algorithm::EdDsa, "k1").unwrap();
        assert_eq!(
            unverified_expiry(&key.sign(&claims()).unwrap()),
            Some(NOW + 3600)
        );
        assert_eq!(unverified_expiry("garbage"), None);
    }

    #[test]
    fn provider_claim_names_and_roles_are_mapped() {
        let key = SigningKey::generate(Algorithm::Es256, "k1").unwrap();
        let keys = KeySet::from_signing_key(&key);
        let mut validation = validation();
        validation.claims = ClaimMapping {
            tenant: "tid".into(),
            store: "store_id".into(),
            role: "roles".into(),
            device: "device_id".into(),
            customer: "shopper".into(),
            roles: vec![
                ClaimMapping::parse_role("POS.Terminal=terminal").unwrap(),
                ClaimMapping::parse_role("POS.Admin=back-office").unwrap(),
                ClaimMapping::parse_role("App=customer-app").unwrap(),
            ],
        };
        let payload = |roles: serde_json::Value| {
            serde_json::json!({
                "iss": "https://issuer.example", "aud": ["x", "omnisync-hub"],
                "sub": "opaque-object-id", "tid": "acme", "store_id": "s1",
                "device_id": "till-9", "roles": roles, "iat": NOW - 10, "exp": NOW + 60,
            })
        };
        let sign = |payload: &serde_json::Value| {
            let header = b64(&serde_json::json!({"alg": "ES256", "kid": "k1", "typ": "JWT"}));
            let signed = format!("{header}.{}", b64(payload));
            let signature = key.sign_message(signed.as_bytes()).unwrap();
            format!("{signed}.{signature}")
        };
        let verify = |payload: &serde_json::Value| keys.verify(&sign(payload), &validation, NOW);
        let verified = verify(&payload(serde_json::json!(["Other", "POS.Terminal"]))).unwrap();
        assert_eq!(verified.identity.device.as_str(), "till-9");
        assert_eq!(verified.identity.store.as_str(), "s1");
        assert_eq!(verified.identity.role, Role::Terminal);
        assert_eq!(
            verify(&payload(serde_json::json!("POS.Admin")))
                .unwrap()
                .identity
                .role,
            Role::BackOffice
        );
        // Unmapped values only, or two hub roles: refused.
        assert!(matches!(
            verify(&payload(serde_json::json!(["Other"]))),
            Err(TokenError::Claim(_))
        ));
        assert!(matches!(
            verify(&payload(serde_json::json!(["POS.Terminal", "POS.Admin"]))),
            Err(TokenError::Claim(_))
        ));
        assert!(matches!(
            verify(&payload(serde_json::json!(42))),
            Err(TokenError::Claim(_))
        ));
        // The hub's own names are not read once mapped.
        let mut own = payload(serde_json::json!("POS.Terminal"));
        own["tid"] = "globex".into();
        own["tenant"] = "acme".into();
        assert!(matches!(verify(&own), Err(TokenError::WrongTenant(_))));
        // A customer app names its customer in the mapped claim.
        let mut app = payload(serde_json::json!(["App"]));
        assert!(matches!(verify(&app), Err(TokenError::Claim(_))));
        app["shopper"] = "c-7".into();
        assert_eq!(
            verify(&app).unwrap().identity.customer.unwrap().as_str(),
            "c-7"
        );
        // Missing or mistyped times.
        let mut no_exp = payload(serde_json::json!("POS.Terminal"));
        no_exp.as_object_mut().unwrap().remove("exp");
        assert!(matches!(verify(&no_exp), Err(TokenError::Claim(_))));
        let mut negative = payload(serde_json::json!("POS.Terminal"));
        negative["iat"] = (-5).into();
        assert!(matches!(verify(&negative), Err(TokenError::Claim(_))));
        assert!(ClaimMapping::parse_role("x=development").is_err());
        assert!(ClaimMapping::parse_role("=terminal").is_err());
        assert!(ClaimMapping::parse_role("terminal").is_err());
    }

    #[test]
    fn the_allow_list_narrows_the_algorithms() {
        let key = SigningKey::generate(Algorithm::EdDsa, "k1").unwrap();
        let keys = KeySet::from_signing_key(&key);
        let mut validation = validation();
        validation.algorithms = vec![Algorithm::Rs256, Algorithm::Es256];
        assert!(matches!(
            keys.verify(&key.sign(&claims()).unwrap(), &validation, NOW),
            Err(TokenError::Algorithm(_))
        ));
        for refused in ["none", "HS256", "HS512", "RS512", "PS256"] {
            assert!(Algorithm::parse(refused).is_err(), "{refused}");
        }
        assert!(SigningKey::generate(Algorithm::Rs256, "r").is_err());
    }

    #[test]
    fn provider_key_sets_skip_keys_the_hub_cannot_use() {
        let ed = SigningKey::generate(Algorithm::EdDsa, "ed").unwrap();
        let modulus = URL_SAFE_NO_PAD.encode([0xc5u8; 256]);
        let set = serde_json::json!({"keys": [
            ed.public_jwk(),
            {"kty": "RSA", "kid": "enc", "use": "enc", "alg": "RSA-OAEP", "n": modulus, "e": "AQAB"},
            {"kty": "RSA", "kid": "ps", "alg": "PS256", "n": modulus, "e": "AQAB"},
            {"kty": "RSA", "kid": "rs", "n": modulus, "e": "AQAB"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "EC", "crv": "P-521", "kid": "p521", "x": "AA", "y": "AA"},
        ]});
        let keys = KeySet::from_jwks(set.to_string().as_bytes()).unwrap();
        assert_eq!(keys.kids(), vec!["ed", "rs"]);
        assert_eq!(keys.skipped(), ["enc", "ps", "hmac", "p521"]);
        // Only unusable keys, or a short RSA modulus: refused.
        let none = serde_json::json!({"keys": [{"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}]});
        assert!(KeySet::from_jwks(none.to_string().as_bytes()).is_err());
        let short = URL_SAFE_NO_PAD.encode([0xc5u8; 128]);
        let short =
            serde_json::json!({"keys": [{"kty": "RSA", "kid": "rs", "n": short, "e": "AQAB"}]});
        assert!(KeySet::from_jwks(short.to_string().as_bytes()).is_err());
        // An HS256 token naming the RSA key's kid never reaches a key.
        let hs = b64(&serde_json::json!({"alg": "HS256", "kid": "rs"}));
        let token = format!("{hs}.{}.AAAA", b64(&serde_json::json!({})));
        assert!(matches!(
            keys.verify(&token, &validation(), NOW),
            Err(TokenError::Algorithm(_))
        ));
    }

    #[test]
    fn key_set_urls_are_https_or_loopback_http() {
        assert!(check_url("https://login.example/.well-known/openid-configuration").is_ok());
        assert!(check_url("http://127.0.0.1:8080/keys").is_ok());
        assert!(check_url("http://[::1]:8080/keys").is_ok());
        assert!(check_url("http://localhost/keys").is_ok());
        assert!(check_url("http://login.example/keys").is_err());
        assert!(check_url("http://10.0.0.1/keys").is_err());
        assert!(check_url("file:///etc/passwd").is_err());
        assert!(check_url("not a url").is_err());
    }

    #[test]
    fn a_file_cache_reloads_and_keeps_the_old_set_on_failure() {
        let dir = std::env::temp_dir().join(format!("omnisync-keycache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys.jwks");
        let first = SigningKey::generate(Algorithm::EdDsa, "k1").unwrap();
        let second = SigningKey::generate(Algorithm::Es256, "k2").unwrap();
        std::fs::write(&path, first.public_jwks()).unwrap();
        let cache = KeyCache::from_file(&path).unwrap();
        let token = second.sign(&claims()).unwrap();
        assert!(matches!(
            cache.verify(&token, &validation(), NOW),
            Err(TokenError::UnknownKey { .. })
        ));
        std::fs::write(&path, second.public_jwks()).unwrap();
        cache.reload().unwrap();
        assert!(cache.verify(&token, &validation(), NOW).is_ok());
        std::fs::write(&path, "not json").unwrap();
        assert!(cache.reload().is_err());
        assert!(cache.verify(&token, &validation(), NOW).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A loopback HTTP server answering every GET with the key set in
    /// `jwks`, counting requests; stops at `stop` and one more connection.
    fn jwks_server(
        jwks: Arc<Mutex<String>>,
        requests: Arc<std::sync::atomic::AtomicUsize>,
        stop: Arc<std::sync::atomic::AtomicBool>,
    ) -> std::net::SocketAddr {
        use std::io::{Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                let mut request = Vec::new();
                let mut buffer = [0u8; 1024];
                while !request.windows(4).any(|window| window == b"\r\n\r\n") {
                    match stream.read(&mut buffer) {
                        Ok(0) | Err(_) => break,
                        Ok(read) => request.extend_from_slice(&buffer[..read]),
                    }
                }
                requests.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let body = jwks.lock().unwrap().clone();
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        address
    }

    #[test]
    fn unknown_kids_refetch_a_remote_set_at_most_once_per_interval() {
        let first = SigningKey::generate(Algorithm::EdDsa, "k1").unwrap();
        let second = SigningKey::generate(Algorithm::Es256, "k2").unwrap();
        let jwks = Arc::new(Mutex::new(first.public_jwks()));
        let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let address = jwks_server(jwks.clone(), requests.clone(), stop.clone());
        let fetches = || requests.load(std::sync::atomic::Ordering::SeqCst);
        let cache = KeyCache::from_url(&format!("http://{address}/keys"), None, 300).unwrap();
        assert_eq!(fetches(), 1);
        assert!(
            cache
                .verify(&first.sign(&claims()).unwrap(), &validation(), NOW)
                .is_ok()
        );
        // A flood of made-up kids right after a fetch: no request at all.
        let forged = |kid: &str| SigningKey::generate(Algorithm::EdDsa, kid).unwrap();
        for n in 0..20 {
            let token = forged(&format!("made-up-{n}")).sign(&claims()).unwrap();
            assert!(matches!(
                cache.verify(&token, &validation(), NOW),
                Err(TokenError::UnknownKey { .. })
            ));
        }
        assert_eq!(fetches(), 1);
        // The provider rotates; once the interval has passed, the first
        // token of the new key fetches the set once, and it is accepted.
        *jwks.lock().unwrap() = second.public_jwks();
        std::thread::sleep(Duration::from_millis(350));
        let token = second.sign(&claims()).unwrap();
        assert!(cache.verify(&token, &validation(), NOW).is_ok());
        assert_eq!(fetches(), 2);
        // The old key is gone with the old set; more made-up kids wait.
        assert!(matches!(
            cache.verify(&first.sign(&claims()).unwrap(), &validation(), NOW),
            Err(TokenError::UnknownKey { .. })
        ));
        assert_eq!(fetches(), 2);
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(address);
    }
}
