//! Token refresh: one `POST /v1/auth/refresh` to the hub, over the same
//! TLS configuration as the sync socket, and the strict parsing of its
//! answer (bytes from the network: bounded, never a panic).
//!
//! The request is plain HTTP/1.1 with `Connection: close`, so the response
//! ends where the connection does; a body is read up to its
//! `Content-Length` and never past [`REFRESH_RESPONSE_BYTES_MAX`].

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// Largest refresh response read, bytes.
pub const REFRESH_RESPONSE_BYTES_MAX: usize = 64 * 1024;
/// A refresh must complete within this time.
pub const REFRESH_TIMEOUT_MS: u64 = 10_000;
/// Longest token accepted from the hub or the app, bytes.
pub const TOKEN_BYTES_MAX: usize = 4096;

/// Why a refresh failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RefreshError {
    /// The hub could not be reached or the exchange broke off.
    #[error("refresh: {0}")]
    Transport(String),
    /// The hub answered with an error status.
    #[error("refresh refused ({status}): {detail}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The hub's reason.
        detail: String,
    },
    /// The answer is not a well-formed refresh response.
    #[error("refresh answer malformed: {0}")]
    Malformed(String),
}

/// The expiry (`exp`) and issue time (`iat`) of a token, read without
/// verifying it (the hub verifies; the device only plans its refresh).
pub fn token_times(token: &str) -> Option<(u64, u64)> {
    if token.len() > TOKEN_BYTES_MAX {
        return None;
    }
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    #[derive(serde::Deserialize)]
    struct Times {
        exp: u64,
        #[serde(default)]
        iat: u64,
    }
    let times: Times = serde_json::from_slice(&bytes).ok()?;
    Some((times.iat, times.exp))
}

/// When a token should be refreshed (unix seconds): three quarters into
/// its life, so a device offline for a while still has time left.
pub fn refresh_due_s(token: &str) -> Option<u64> {
    let (iat, exp) = token_times(token)?;
    let life = exp.saturating_sub(iat);
    Some(iat.saturating_add(life / 4 * 3).min(exp))
}

/// Asks the hub behind `sync_url` (`ws://` or `wss://`) for a fresh token.
pub async fn refresh_token(
    sync_url: &str,
    token: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<String, RefreshError> {
    let target = Target::parse(sync_url)?;
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|error| RefreshError::Transport(format!("connect: {error}")))?;
        let _ = tcp.set_nodelay(true);
        if target.secure {
            let config =
                tls.ok_or_else(|| RefreshError::Transport("no TLS configuration".into()))?;
            let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                .map_err(|error| RefreshError::Transport(format!("hub name: {error}")))?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|error| RefreshError::Transport(format!("TLS: {error}")))?;
            exchange(stream, &target, token).await
        } else {
            exchange(tcp, &target, token).await
        }
    };
    tokio::time::timeout(Duration::from_millis(REFRESH_TIMEOUT_MS), exchange)
        .await
        .map_err(|_| RefreshError::Transport(format!("no answer within {REFRESH_TIMEOUT_MS} ms")))?
}

struct Target {
    secure: bool,
    host: String,
    port: u16,
    authority: String,
}

impl Target {
    fn parse(sync_url: &str) -> Result<Self, RefreshError> {
        let (secure, rest) = if let Some(rest) = sync_url.strip_prefix("wss://") {
            (true, rest)
        } else if let Some(rest) = sync_url.strip_prefix("ws://") {
            (false, rest)
        } else {
            return Err(RefreshError::Transport(format!(
                "{sync_url:?} is not a ws:// or wss:// URL"
            )));
        };
        let authority = rest.split('/').next().unwrap_or_default().to_owned();
        let default_port = if secure { 443 } else { 80 };
        let bad_port = || RefreshError::Transport(format!("bad port in {sync_url:?}"));
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            // An IPv6 literal: [::1]:7878
            let (host, after) = bracketed.split_once(']').ok_or_else(bad_port)?;
            let port = match after.strip_prefix(':') {
                Some(port) => port.parse().map_err(|_| bad_port())?,
                None if after.is_empty() => default_port,
                None => return Err(bad_port()),
            };
            (host.to_owned(), port)
        } else {
            match authority.split_once(':') {
                Some((host, port)) => (host.to_owned(), port.parse().map_err(|_| bad_port())?),
                None => (authority.clone(), default_port),
            }
        };
        if host.is_empty() {
            return Err(RefreshError::Transport(format!("no host in {sync_url:?}")));
        }
        Ok(Self {
            secure,
            host,
            port,
            authority,
        })
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    target: &Target,
    token: &str,
) -> Result<String, RefreshError> {
    let request = format!(
        "POST /v1/auth/refresh HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        target.authority
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|error| RefreshError::Transport(format!("send: {error}")))?;
    stream
        .flush()
        .await
        .map_err(|error| RefreshError::Transport(format!("send: {error}")))?;
    let mut response = Vec::new();
    (&mut stream)
        .take(REFRESH_RESPONSE_BYTES_MAX as u64 + 1)
        .read_to_end(&mut response)
        .await
        .map_err(|error| RefreshError::Transport(format!("receive: {error}")))?;
    parse_refresh_response(&response)
}

/// Parses the hub's answer to a refresh: `200` with `{"token": "…"}`, or an
/// error status with `{"error": "…"}`.
pub fn parse_refresh_response(bytes: &[u8]) -> Result<String, RefreshError> {
    let malformed = |what: &str| RefreshError::Malformed(what.to_owned());
    if bytes.len() > REFRESH_RESPONSE_BYTES_MAX {
        return Err(malformed("response too large"));
    }
    let split = bytes
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or_else(|| malformed("no end of headers"))?;
    let head =
        std::str::from_utf8(&bytes[..split]).map_err(|_| malformed("headers are not UTF-8"))?;
    let mut body = &bytes[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut status_parts = status_line.splitn(3, ' ');
    let (Some(version), Some(status)) = (status_parts.next(), status_parts.next()) else {
        return Err(malformed("no status line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(malformed("not an HTTP/1.x response"));
    }
    let status: u16 = status.parse().map_err(|_| malformed("bad status code"))?;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(malformed("bad header line"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let length: usize = value.parse().map_err(|_| malformed("bad content-length"))?;
            if length > body.len() {
                return Err(malformed("body shorter than its content-length"));
            }
            body = &body[..length];
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && !value.eq_ignore_ascii_case("identity")
        {
            return Err(malformed("chunked bodies are not expected here"));
        }
    }
    let json: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| malformed("body is not JSON"))?;
    if status != 200 {
        let detail = json
            .get("error")
            .and_then(|error| error.as_str())
            .unwrap_or("no reason given");
        return Err(RefreshError::Refused {
            status,
            detail: crate::protocol::message::clamp_detail(detail.to_owned()),
        });
    }
    let token = json
        .get("token")
        .and_then(|token| token.as_str())
        .ok_or_else(|| malformed("no token in the answer"))?;
    if token.is_empty()
        || token.len() > TOKEN_BYTES_MAX
        || !token
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"-_.".contains(&byte))
        || token_times(token).is_none()
    {
        return Err(malformed("the token is not a compact JWT"));
    }
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(iat: u64, exp: u64) -> String {
        let payload = URL_SAFE_NO_PAD.encode(format!("{{\"iat\":{iat},\"exp\":{exp}}}"));
        format!("eyJhbGciOiJFZERTQSJ9.{payload}.c2ln")
    }

    #[test]
    fn a_refresh_is_due_three_quarters_into_the_token_life() {
        assert_eq!(refresh_due_s(&token(1000, 2000)), Some(1750));
        assert_eq!(refresh_due_s("junk"), None);
    }

    #[test]
    fn responses_parse_strictly() {
        let fresh = token(1, 2);
        let ok = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{{\"token\":\"{fresh}\"}}",
            fresh.len() + 12
        );
        assert_eq!(parse_refresh_response(ok.as_bytes()), Ok(fresh));
        let refused = "HTTP/1.1 401 Unauthorized\r\ncontent-length: 28\r\n\r\n{\"error\":\"device X revoked\"}";
        assert!(matches!(
            parse_refresh_response(refused.as_bytes()),
            Err(RefreshError::Refused { status: 401, .. })
        ));
        for bad in [
            &b""[..],
            b"HTTP/1.1 200 OK\r\n",
            b"SMTP 200\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\n\r\n{\"token\": \"a b\"}",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{}",
        ] {
            assert!(
                parse_refresh_response(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn sync_urls_name_their_hub() {
        let target = Target::parse("wss://hub.example:8443/v1/sync").unwrap();
        assert!(target.secure);
        assert_eq!((target.host.as_str(), target.port), ("hub.example", 8443));
        let target = Target::parse("ws://127.0.0.1/v1/sync").unwrap();
        assert_eq!(target.port, 80);
        assert!(Target::parse("http://x").is_err());
        assert!(Target::parse("ws://:80/").is_err());
    }
}
