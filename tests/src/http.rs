//! A minimal HTTP/1.1 GET over a raw tokio `TcpStream`, enough to probe the
//! hub's `/healthz` and `/metrics` without an HTTP client dependency.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Most response bytes read before giving up (the hub's pages are small).
pub const RESPONSE_BYTES_MAX: usize = 1024 * 1024;

/// A response: status code and body text.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    /// The status code from the status line.
    pub status: u16,
    /// Everything after the blank line that ends the headers, as sent (a
    /// chunked body is not decoded).
    pub body: String,
}

/// Sends `GET path` to `address` with `Connection: close` and reads the whole
/// response, failing after `timeout`.
pub async fn get(
    address: SocketAddr,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<HttpResponse> {
    tokio::time::timeout(timeout, get_inner(address, path))
        .await
        .with_context(|| format!("GET http://{address}{path} took longer than {timeout:?}"))?
}

/// Sends `method path` with an optional bearer token and a JSON body, and
/// reads the whole response, failing after `timeout`.
pub async fn send(
    address: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: &str,
    timeout: Duration,
) -> anyhow::Result<HttpResponse> {
    let authorization = bearer
        .map(|token| format!("Authorization: Bearer {token}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\n{authorization}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tokio::time::timeout(timeout, exchange(address, request))
        .await
        .with_context(|| format!("{method} http://{address}{path} took longer than {timeout:?}"))?
}

async fn get_inner(address: SocketAddr, path: &str) -> anyhow::Result<HttpResponse> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    exchange(address, request).await
}

async fn exchange(address: SocketAddr, request: String) -> anyhow::Result<HttpResponse> {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .with_context(|| format!("connecting {address}"))?;
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    (&mut stream)
        .take(RESPONSE_BYTES_MAX as u64)
        .read_to_end(&mut raw)
        .await?;
    let text = String::from_utf8_lossy(&raw);
    let status_line = text.lines().next().context("empty HTTP response")?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok(HttpResponse { status, body })
}

/// The value of an unlabelled metric in a Prometheus text exposition
/// (`name value` on its own line), if present.
pub fn metric_value(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let (metric, value) = line.split_once(' ')?;
        if metric == name {
            value.trim().parse().ok()
        } else {
            None
        }
    })
}
