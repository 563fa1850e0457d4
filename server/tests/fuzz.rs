//! Fuzz targets for every decoder in the hub that reads bytes from outside:
//! device tokens (as raw strings, and as correctly signed tokens with
//! arbitrary headers and claims, so the claim checks are reached), JSON Web
//! Key Sets and private keys (configuration files), TLS certificate and key
//! files, stored automerge changes indexed at start-up, and catalog import
//! files (CSV and JSON Lines).
//!
//! `cargo test` runs each for a bounded time with bolero's random engine,
//! after replaying `tests/__fuzz__/<target without fuzz_>/{crashes,corpus}`;
//! see `core/tests/fuzz.rs` and `docs/security.md` for longer and nightly runs.

use std::io::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use omnisync_core::{DocId, TenantId};
use omnisync_hub::changes::ChangeIndex;
use omnisync_hub::import::{Format, read_rows};
use omnisync_hub::tls::TlsConfig;
use omnisync_hub::token::{Algorithm, ClaimMapping, KeySet, SigningKey, Validation};

fn validation() -> Validation {
    let mut validation =
        Validation::new("https://issuer.test", "hub", TenantId::new("acme").unwrap());
    validation.leeway_s = 60;
    validation
}

/// A provider's claim names and role values (Entra ID style).
fn provider_validation() -> Validation {
    let mut validation = validation();
    validation.claims = ClaimMapping {
        tenant: "tid".into(),
        store: "store_id".into(),
        role: "roles".into(),
        device: "device_id".into(),
        customer: "customer".into(),
        roles: vec![
            ClaimMapping::parse_role("POS.Terminal=terminal").unwrap(),
            ClaimMapping::parse_role("POS.Admin=back-office").unwrap(),
        ],
    };
    validation
}

fn keys() -> (SigningKey, SigningKey, KeySet) {
    let ed = SigningKey::generate(Algorithm::EdDsa, "ed").unwrap();
    let es = SigningKey::generate(Algorithm::Es256, "es").unwrap();
    let jwks = serde_json::json!({ "keys": [ed.public_jwk(), es.public_jwk()] }).to_string();
    let set = KeySet::from_jwks(jwks.as_bytes()).unwrap();
    (ed, es, set)
}

#[test]
fn fuzz_raw_tokens() {
    let (_, _, set) = keys();
    bolero::check!().for_each(|bytes: &[u8]| {
        if let Ok(token) = std::str::from_utf8(bytes) {
            let _ = set.verify(token, &validation(), 1_800_000_000);
            let _ = omnisync_hub::token::unverified_expiry(token);
        }
        // Three parts of arbitrary base64url, the shape a verifier sees most.
        let third = bytes.len() / 3;
        let token = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(&bytes[..third]),
            URL_SAFE_NO_PAD.encode(&bytes[third..2 * third]),
            URL_SAFE_NO_PAD.encode(&bytes[2 * third..])
        );
        let _ = set.verify(&token, &validation(), 1_800_000_000);
    });
}

#[test]
fn fuzz_signed_tokens_with_hostile_claims() {
    // Signed with a trusted key: only the claim checks stand between these
    // and a session, so they must hold for any header and payload.
    let (ed, es, set) = keys();
    bolero::check!()
        .with_type::<(bool, Vec<u8>, Vec<u8>)>()
        .for_each(|(use_es, header, payload)| {
            let key = if *use_es { &es } else { &ed };
            let mut header_json: serde_json::Value =
                serde_json::from_slice(header).unwrap_or(serde_json::json!({}));
            if let Some(object) = header_json.as_object_mut() {
                object
                    .entry("alg")
                    .or_insert(key.algorithm().as_str().into());
                object.entry("kid").or_insert(key.kid().into());
            }
            let signed = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header_json.to_string()),
                URL_SAFE_NO_PAD.encode(payload)
            );
            // Sign the exact bytes through a claims-free path: re-sign the
            // concatenation by building a token and swapping its signature.
            let signature = sign_raw(key, signed.as_bytes());
            let token = format!("{signed}.{signature}");
            for validation in [validation(), provider_validation()] {
                if let Ok(verified) = set.verify(&token, &validation, 1_800_000_000) {
                    // Whatever passed names a valid identity of the hub's tenant.
                    assert_eq!(verified.identity.tenant.as_str(), "acme");
                    assert_eq!(verified.claims.iss, "https://issuer.test");
                }
            }
        });
}

/// Signs `message` with `key` the way a JWT signature is made.
fn sign_raw(key: &SigningKey, message: &[u8]) -> String {
    key.sign_message(message).unwrap()
}

#[test]
fn fuzz_key_files() {
    bolero::check!().for_each(|bytes: &[u8]| {
        let _ = KeySet::from_jwks(bytes);
        let _ = SigningKey::from_jwk(bytes);
    });
}

#[test]
fn fuzz_tls_files() {
    bolero::check!()
        .with_type::<(Vec<u8>, Vec<u8>)>()
        .for_each(|(cert, key)| {
            let config = TlsConfig {
                cert_chain_pem: cert.clone(),
                key_pem: key.clone(),
            };
            let _ = config.server_config();
        });
}

#[test]
fn fuzz_stored_changes_index() {
    bolero::check!()
        .with_type::<Vec<Vec<u8>>>()
        .for_each(|stored| {
            let index = ChangeIndex::default();
            let doc = DocId::new("store.s1/stock/b001").unwrap();
            index.load(&doc, stored);
        });
}

#[test]
fn fuzz_catalog_files() {
    let dir = tempfile::tempdir().unwrap();
    bolero::check!().for_each(|bytes: &[u8]| {
        for (name, format) in [("rows.csv", Format::Csv), ("rows.jsonl", Format::JsonLines)] {
            let path = dir.path().join(name);
            let mut file = std::fs::File::create(&path).unwrap();
            file.write_all(bytes).unwrap();
            drop(file);
            let _ = read_rows(&path, format);
        }
    });
}
