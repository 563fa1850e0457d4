//! Signed device tokens: JWTs with ES256 or EdDSA signatures, checked
//! against a configured JSON Web Key Set, and their issuance.
//!
//! The verifier is deliberately narrow: exactly two asymmetric algorithms,
//! a key chosen by `kid` whose own algorithm must match the header's (no
//! algorithm confusion), `none` and every symmetric or RSA algorithm refused
//! by name, the size of a token bounded before anything is decoded, strict
//! unpadded base64url, and every claim parsed into the identifier newtypes.
//! Issuer, audience, tenant, expiry and not-before are all checked; clock
//! skew is tolerated up to a configured leeway. Nothing here panics on
//! input: every failure is a [`TokenError`].

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use omnisync_core::{CustomerId, DeviceId, StoreId, TenantId};
use omnisync_hub_engine::authz::{Identity, Role};
use serde::{Deserialize, Serialize};

/// Longest token accepted, in bytes; longer ones are refused unread.
pub const TOKEN_BYTES_MAX: usize = 4096;
/// Largest JSON Web Key Set file read, in bytes.
pub const JWKS_BYTES_MAX: usize = 256 * 1024;
/// Most keys one key set may hold.
pub const JWKS_KEYS_MAX: usize = 64;
/// Default tolerated clock skew between issuer, hub and device, seconds.
pub const CLOCK_LEEWAY_S_DEFAULT: u64 = 60;
/// Default lifetime of an issued token, seconds (one day).
pub const TOKEN_TTL_S_DEFAULT: u64 = 24 * 3600;
/// Longest lifetime of an issued or refreshed token, seconds (30 days).
pub const TOKEN_TTL_S_MAX: u64 = 30 * 24 * 3600;
/// How long after its enrolment (`auth_time`) a device may keep refreshing
/// its token without enrolling again, seconds (90 days).
pub const REFRESH_WINDOW_S_DEFAULT: u64 = 90 * 24 * 3600;

/// A signature algorithm this hub accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// ECDSA on P-256 with SHA-256.
    Es256,
    /// Ed25519.
    EdDsa,
}

impl Algorithm {
    /// The JOSE name (`ES256`, `EdDSA`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Algorithm::Es256 => "ES256",
            Algorithm::EdDsa => "EdDSA",
        }
    }

    /// Parses a header's `alg`, naming why refused algorithms are refused.
    pub fn parse(alg: &str) -> Result<Self, TokenError> {
        match alg {
            "ES256" => Ok(Algorithm::Es256),
            "EdDSA" => Ok(Algorithm::EdDsa),
            "none" | "None" | "NONE" => Err(TokenError::Algorithm(
                "alg none (an unsigned token) is refused".into(),
            )),
            hmac if hmac.starts_with("HS") => Err(TokenError::Algorithm(format!(
                "alg {hmac} is symmetric and refused; use ES256 or EdDSA"
            ))),
            other => Err(TokenError::Algorithm(format!(
                "alg {other:?} is not accepted; use ES256 or EdDSA"
            ))),
        }
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
    /// `none`, a symmetric algorithm, or anything else not accepted.
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
}

/// The claims of a device token.
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
}

/// A verified token: its claims and the identity they state.
#[derive(Clone, Debug, PartialEq)]
pub struct Verified {
    /// The claims as signed.
    pub claims: Claims,
    /// The identity they state, parsed.
    pub identity: Identity,
}

/// Public keys a hub trusts, from a JSON Web Key Set.
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    keys: Vec<(String, PublicKey)>,
}

#[derive(Clone, Debug)]
enum PublicKey {
    Es256(p256::ecdsa::VerifyingKey),
    EdDsa(ed25519_dalek::VerifyingKey),
}

/// A private key that signs tokens (enrolment, refresh).
#[derive(Clone)]
pub struct SigningKey {
    kid: String,
    key: PrivateKey,
}

#[derive(Clone)]
enum PrivateKey {
    Es256(p256::ecdsa::SigningKey),
    EdDsa(ed25519_dalek::SigningKey),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print private key material.
        write!(f, "SigningKey({}, {})", self.kid, self.algorithm().as_str())
    }
}

/// One JSON Web Key as stored in files (public or private).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Jwk {
    /// `EC` or `OKP`.
    pub kty: String,
    /// `P-256` or `Ed25519`.
    pub crv: String,
    /// Key id.
    #[serde(default)]
    pub kid: String,
    /// `ES256` or `EdDSA`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    /// Public x coordinate (EC) or public key (OKP), base64url.
    pub x: String,
    /// Public y coordinate (EC), base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    /// Private scalar or seed, base64url (private keys only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub d: Option<String>,
    /// `sig` when present.
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
}

#[derive(Deserialize, Serialize)]
struct JwkSetFile {
    keys: Vec<Jwk>,
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
    /// Parses a JSON Web Key Set (`{"keys": [...]}`) of `EC` P-256 and `OKP`
    /// Ed25519 public keys, each with a unique `kid`. Private parts are
    /// refused: a verifier's key file must not hold signing keys.
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
        let mut keys: Vec<(String, PublicKey)> = Vec::new();
        for jwk in &file.keys {
            if jwk.d.is_some() {
                return Err(TokenError::Key(format!(
                    "key {:?} holds a private part; a verifier's key set holds public keys only",
                    jwk.kid
                )));
            }
            if jwk.kid.is_empty() {
                return Err(TokenError::Key("every key needs a kid".into()));
            }
            if keys.iter().any(|(kid, _)| *kid == jwk.kid) {
                return Err(TokenError::Key(format!("kid {:?} appears twice", jwk.kid)));
            }
            keys.push((jwk.kid.clone(), public_key(jwk)?));
        }
        Ok(Self { keys })
    }

    /// A key set holding the public half of `key`.
    pub fn from_signing_key(key: &SigningKey) -> Self {
        Self {
            keys: vec![(key.kid.clone(), key.public())],
        }
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when the set holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Verifies `token` at `now_s` (unix seconds): size, form, algorithm,
    /// key, signature, then every claim.
    pub fn verify(
        &self,
        token: &str,
        validation: &Validation,
        now_s: u64,
    ) -> Result<Verified, TokenError> {
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
        let alg = Algorithm::parse(&header.alg)?;
        if header.crit.is_some() {
            return Err(TokenError::Malformed(
                "critical header extensions are not supported".into(),
            ));
        }
        let key = self.select(header.kid.as_deref(), alg)?;
        let signature = decode_part(signature_b64, "signature")?;
        let signed = &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];
        key.verify(signed, &signature)?;
        let claims: Claims = serde_json::from_slice(&decode_part(payload_b64, "payload")?)
            .map_err(|error| TokenError::Claim(format!("payload: {error}")))?;
        let identity = check_claims(&claims, validation, now_s)?;
        Ok(Verified { claims, identity })
    }

    fn select(&self, kid: Option<&str>, alg: Algorithm) -> Result<&PublicKey, TokenError> {
        let matching = |key: &PublicKey| key.algorithm() == alg;
        let found = match kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|(id, key)| id == kid && matching(key)),
            // Without a kid only an unambiguous key set will do.
            None if self.keys.len() == 1 => self.keys.iter().find(|(_, key)| matching(key)),
            None => None,
        };
        found
            .map(|(_, key)| key)
            .ok_or_else(|| TokenError::UnknownKey {
                kid: kid.unwrap_or("").to_owned(),
                alg: alg.as_str(),
            })
    }
}

impl PublicKey {
    fn algorithm(&self) -> Algorithm {
        match self {
            PublicKey::Es256(_) => Algorithm::Es256,
            PublicKey::EdDsa(_) => Algorithm::EdDsa,
        }
    }

    fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), TokenError> {
        match self {
            PublicKey::Es256(key) => {
                use p256::ecdsa::signature::Verifier as _;
                let signature = p256::ecdsa::Signature::from_slice(signature)
                    .map_err(|_| TokenError::BadSignature)?;
                key.verify(message, &signature)
                    .map_err(|_| TokenError::BadSignature)
            }
            PublicKey::EdDsa(key) => {
                let signature = ed25519_dalek::Signature::from_slice(signature)
                    .map_err(|_| TokenError::BadSignature)?;
                key.verify_strict(message, &signature)
                    .map_err(|_| TokenError::BadSignature)
            }
        }
    }
}

impl SigningKey {
    /// A fresh random key.
    pub fn generate(algorithm: Algorithm, kid: impl Into<String>) -> Self {
        let key = match algorithm {
            Algorithm::EdDsa => {
                PrivateKey::EdDsa(ed25519_dalek::SigningKey::from_bytes(&rand::random()))
            }
            Algorithm::Es256 => loop {
                // A random 32-byte string is a valid scalar except with
                // negligible probability; draw again in that case.
                let bytes: [u8; 32] = rand::random();
                if let Ok(key) = p256::ecdsa::SigningKey::from_slice(&bytes) {
                    break PrivateKey::Es256(key);
                }
            },
        };
        Self {
            kid: kid.into(),
            key,
        }
    }

    /// Parses a private JWK (with `d`).
    pub fn from_jwk(bytes: &[u8]) -> Result<Self, TokenError> {
        let jwk: Jwk = serde_json::from_slice(bytes)
            .map_err(|error| TokenError::Key(format!("not a JSON Web Key: {error}")))?;
        let d = jwk
            .d
            .as_deref()
            .ok_or_else(|| TokenError::Key("a signing key needs its private part d".into()))?;
        let d = decode_key_bytes(d, "d")?;
        let key = match (jwk.kty.as_str(), jwk.crv.as_str()) {
            ("EC", "P-256") => PrivateKey::Es256(
                p256::ecdsa::SigningKey::from_slice(&d)
                    .map_err(|_| TokenError::Key("d is not a P-256 scalar".into()))?,
            ),
            ("OKP", "Ed25519") => {
                let seed: [u8; 32] = d
                    .try_into()
                    .map_err(|_| TokenError::Key("an Ed25519 d is 32 bytes".into()))?;
                PrivateKey::EdDsa(ed25519_dalek::SigningKey::from_bytes(&seed))
            }
            (kty, crv) => {
                return Err(TokenError::Key(format!("unsupported key type {kty}/{crv}")));
            }
        };
        let signing = Self {
            kid: jwk.kid.clone(),
            key,
        };
        // The stored public part, when present, must be this key's.
        if public_key(&jwk).map(|public| public.same_as(&signing.public())) != Ok(true) {
            return Err(TokenError::Key(
                "the public part does not match the private part".into(),
            ));
        }
        Ok(signing)
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        match self.key {
            PrivateKey::Es256(_) => Algorithm::Es256,
            PrivateKey::EdDsa(_) => Algorithm::EdDsa,
        }
    }

    /// The private JWK (keep it secret).
    pub fn private_jwk(&self) -> Jwk {
        let mut jwk = self.public_jwk();
        jwk.d = Some(match &self.key {
            PrivateKey::Es256(key) => URL_SAFE_NO_PAD.encode(key.to_bytes()),
            PrivateKey::EdDsa(key) => URL_SAFE_NO_PAD.encode(key.to_bytes()),
        });
        jwk
    }

    /// The public JWK, for a verifier's key set.
    pub fn public_jwk(&self) -> Jwk {
        let mut jwk = Jwk {
            kid: self.kid.clone(),
            alg: Some(self.algorithm().as_str().to_owned()),
            use_: Some("sig".into()),
            ..Jwk::default()
        };
        match &self.key {
            PrivateKey::Es256(key) => {
                let point = key.verifying_key().to_encoded_point(false);
                jwk.kty = "EC".into();
                jwk.crv = "P-256".into();
                // An uncompressed point always has both coordinates.
                jwk.x = point
                    .x()
                    .map(|x| URL_SAFE_NO_PAD.encode(x))
                    .unwrap_or_default();
                jwk.y = point.y().map(|y| URL_SAFE_NO_PAD.encode(y));
            }
            PrivateKey::EdDsa(key) => {
                jwk.kty = "OKP".into();
                jwk.crv = "Ed25519".into();
                jwk.x = URL_SAFE_NO_PAD.encode(key.verifying_key().to_bytes());
            }
        }
        jwk
    }

    /// A JSON Web Key Set holding this key's public half.
    pub fn public_jwks(&self) -> String {
        serde_json::to_string_pretty(&JwkSetFile {
            keys: vec![self.public_jwk()],
        })
        .unwrap_or_default()
    }

    /// Signs `claims` into a compact JWT.
    pub fn sign(&self, claims: &Claims) -> String {
        let header = serde_json::json!({
            "alg": self.algorithm().as_str(),
            "typ": "JWT",
            "kid": self.kid,
        });
        // Serializing a json! value and plain claims cannot fail.
        let header = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap_or_default());
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
        let signed = format!("{header}.{payload}");
        let signature = match &self.key {
            PrivateKey::Es256(key) => {
                use p256::ecdsa::signature::Signer as _;
                let signature: p256::ecdsa::Signature = key.sign(signed.as_bytes());
                signature.to_bytes().to_vec()
            }
            PrivateKey::EdDsa(key) => {
                use ed25519_dalek::Signer as _;
                key.sign(signed.as_bytes()).to_bytes().to_vec()
            }
        };
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    fn public(&self) -> PublicKey {
        match &self.key {
            PrivateKey::Es256(key) => PublicKey::Es256(*key.verifying_key()),
            PrivateKey::EdDsa(key) => PublicKey::EdDsa(key.verifying_key()),
        }
    }
}

impl PublicKey {
    fn same_as(&self, other: &PublicKey) -> bool {
        match (self, other) {
            (PublicKey::Es256(a), PublicKey::Es256(b)) => a == b,
            (PublicKey::EdDsa(a), PublicKey::EdDsa(b)) => a == b,
            _ => false,
        }
    }
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

fn public_key(jwk: &Jwk) -> Result<PublicKey, TokenError> {
    if let Some(alg) = &jwk.alg {
        let expected = match jwk.kty.as_str() {
            "EC" => "ES256",
            _ => "EdDSA",
        };
        if alg != expected {
            return Err(TokenError::Key(format!(
                "key {:?}: alg {alg} does not fit kty {}",
                jwk.kid, jwk.kty
            )));
        }
    }
    if jwk.use_.as_deref().is_some_and(|use_| use_ != "sig") {
        return Err(TokenError::Key(format!(
            "key {:?} is not a signing key",
            jwk.kid
        )));
    }
    let x = decode_key_bytes(&jwk.x, "x")?;
    match (jwk.kty.as_str(), jwk.crv.as_str()) {
        ("EC", "P-256") => {
            let y = decode_key_bytes(
                jwk.y
                    .as_deref()
                    .ok_or_else(|| TokenError::Key("an EC key needs y".into()))?,
                "y",
            )?;
            if x.len() != 32 || y.len() != 32 {
                return Err(TokenError::Key("P-256 coordinates are 32 bytes".into()));
            }
            let point = p256::EncodedPoint::from_affine_coordinates(
                p256::FieldBytes::from_slice(&x),
                p256::FieldBytes::from_slice(&y),
                false,
            );
            p256::ecdsa::VerifyingKey::from_encoded_point(&point)
                .map(PublicKey::Es256)
                .map_err(|_| TokenError::Key("the point is not on P-256".into()))
        }
        ("OKP", "Ed25519") => {
            let bytes: [u8; 32] = x
                .try_into()
                .map_err(|_| TokenError::Key("an Ed25519 key is 32 bytes".into()))?;
            ed25519_dalek::VerifyingKey::from_bytes(&bytes)
                .map(PublicKey::EdDsa)
                .map_err(|_| TokenError::Key("not an Ed25519 public key".into()))
        }
        (kty, crv) => Err(TokenError::Key(format!(
            "unsupported key type {kty}/{crv}; use EC/P-256 or OKP/Ed25519"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn validation() -> Validation {
        Validation {
            issuer: "https://issuer.example".into(),
            audience: "omnisync-hub".into(),
            tenant: TenantId::new("acme").unwrap(),
            leeway_s: 60,
        }
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
        }
    }

    fn b64(json: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(json).unwrap())
    }

    #[test]
    fn both_algorithms_sign_and_verify_through_their_jwks() {
        for alg in [Algorithm::EdDsa, Algorithm::Es256] {
            let key = SigningKey::generate(alg, "k1");
            let keys = KeySet::from_jwks(key.public_jwks().as_bytes()).unwrap();
            let verified = keys
                .verify(&key.sign(&claims()), &validation(), NOW)
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
                keys.verify(&reloaded.sign(&claims()), &validation(), NOW)
                    .is_ok()
            );
        }
    }

    #[test]
    fn hostile_tokens_are_refused_with_a_reason() {
        let key = SigningKey::generate(Algorithm::EdDsa, "k1");
        let keys = KeySet::from_signing_key(&key);
        let good = key.sign(&claims());
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
        let forged = SigningKey::generate(Algorithm::EdDsa, "k1").sign(&claims());
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
            key.sign(&claims)
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
        let key = SigningKey::generate(Algorithm::Es256, "k1");
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
        let key = SigningKey::generate(Algorithm::EdDsa, "k1");
        assert_eq!(unverified_expiry(&key.sign(&claims())), Some(NOW + 3600));
        assert_eq!(unverified_expiry("garbage"), None);
    }
}
