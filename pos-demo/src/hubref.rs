//! The hub a pos-demo command talks to: one embedded in this process (with a
//! temporary data directory), or a separate `omnisync-hub serve` reached over
//! the network. Checks that need the hub's own view (was this op stored?
//! what are this document's heads?) go through the hub's admin endpoints for
//! an external hub, so both kinds are checked the same way.

use anyhow::{Context as _, bail};
use omnisync_core::{DocId, OpId};
use omnisync_hub::{Hub, HubConfig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Largest admin response read (a document's automerge bytes).
const ADMIN_RESPONSE_BYTES_MAX: usize = 256 * 1024 * 1024;

/// A hub to run against.
pub enum HubRef {
    /// Started here; stopped by [`HubRef::stop`].
    Embedded {
        /// The hub.
        hub: Hub,
        /// Its data directory.
        data: tempfile::TempDir,
    },
    /// Reached at this sync URL.
    External {
        /// `ws://host:port/v1/sync`.
        sync_url: String,
        /// `host:port` for admin requests.
        authority: String,
    },
}

impl HubRef {
    /// Connects to `hub` (a `ws://` URL) or starts an embedded hub.
    pub async fn open(hub: Option<&str>) -> anyhow::Result<Self> {
        let Some(url) = hub else {
            let data = tempfile::tempdir().context("creating the hub's data directory")?;
            let config = HubConfig::new("127.0.0.1:0".parse()?, data.path().to_path_buf());
            return Ok(HubRef::Embedded {
                hub: Hub::start(config).await?,
                data,
            });
        };
        let rest = url
            .strip_prefix("ws://")
            .with_context(|| format!("--hub {url:?}: expected ws://HOST:PORT[/v1/sync]"))?;
        let authority = rest.split('/').next().unwrap_or_default().to_owned();
        if authority.is_empty() || !authority.contains(':') {
            bail!("--hub {url:?}: expected ws://HOST:PORT[/v1/sync]");
        }
        let sync_url = format!("ws://{authority}/v1/sync");
        let (status, _) = http_get(&authority, "/healthz")
            .await
            .with_context(|| format!("reaching the hub at {authority}"))?;
        if status != 200 {
            bail!("the hub at {authority} answered /healthz with HTTP {status}");
        }
        Ok(HubRef::External {
            sync_url,
            authority,
        })
    }

    /// Starts an embedded hub that commits at most `group_ops_max` ops per
    /// transaction (1: one commit per op, the baseline of the benchmarks).
    pub async fn open_with_group_ops_max(group_ops_max: usize) -> anyhow::Result<Self> {
        let data = tempfile::tempdir().context("creating the hub's data directory")?;
        let mut config = HubConfig::new("127.0.0.1:0".parse()?, data.path().to_path_buf());
        config.group_ops_max = group_ops_max;
        Ok(HubRef::Embedded {
            hub: Hub::start(config).await?,
            data,
        })
    }

    /// The sync URL devices connect to.
    pub fn sync_url(&self) -> String {
        match self {
            HubRef::Embedded { hub, .. } => hub.sync_url(),
            HubRef::External { sync_url, .. } => sync_url.clone(),
        }
    }

    /// One line describing the hub, for the timeline.
    pub fn describe(&self) -> String {
        match self {
            HubRef::Embedded { hub, data } => {
                format!(
                    "embedded hub on {} (data in {})",
                    hub.sync_url(),
                    data.path().display()
                )
            }
            HubRef::External { sync_url, .. } => format!("external hub at {sync_url}"),
        }
    }

    /// True if the hub holds an applied outcome for `op` (stored changes,
    /// or an intent it decided).
    pub async fn has_applied(&self, op: OpId) -> anyhow::Result<bool> {
        use omnisync_core::protocol::message::AckOutcome;
        match self {
            HubRef::Embedded { hub, .. } => Ok(matches!(
                hub.reader().outcome(&op)?,
                Some(AckOutcome::Applied { .. } | AckOutcome::Decided(_))
            )),
            HubRef::External { authority, .. } => {
                let (status, body) = http_get(
                    authority,
                    &format!("/v1/admin/ops/{}/{}", op.replica, op.seq),
                )
                .await?;
                let body = String::from_utf8_lossy(&body);
                Ok(status == 200 && (body.contains("\"applied\"") || body.contains("\"decided\"")))
            }
        }
    }

    /// The hub's heads of `doc`, sorted hex.
    pub async fn doc_heads(&self, doc: &DocId) -> anyhow::Result<Vec<String>> {
        let loaded = match self {
            HubRef::Embedded { hub, .. } => omnisync_hub::load_doc(hub.reader().as_ref(), doc)?,
            HubRef::External { authority, .. } => {
                let (status, body) =
                    http_get(authority, &format!("/v1/admin/docs/{doc}?format=automerge")).await?;
                if status == 404 {
                    return Ok(Vec::new());
                }
                if status != 200 {
                    bail!("hub answered HTTP {status} for {doc}");
                }
                automerge::Automerge::load(&body)
                    .with_context(|| format!("hub's bytes for {doc}"))?
            }
        };
        let mut heads: Vec<String> = loaded.get_heads().iter().map(ToString::to_string).collect();
        heads.sort();
        Ok(heads)
    }

    /// Stops an embedded hub; leaves an external one running.
    pub async fn stop(self) -> anyhow::Result<()> {
        match self {
            HubRef::Embedded { hub, .. } => Ok(hub.stop().await?),
            HubRef::External { .. } => Ok(()),
        }
    }
}

/// A minimal HTTP/1.1 GET over a fresh connection: (status, body).
async fn http_get(authority: &str, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut stream = tokio::net::TcpStream::connect(authority).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    (&mut stream)
        .take(ADMIN_RESPONSE_BYTES_MAX as u64)
        .read_to_end(&mut response)
        .await?;
    let header_end = response
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .context("malformed HTTP response from the hub")?;
    let head = String::from_utf8_lossy(&response[..header_end]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .context("HTTP response without a status code")?;
    let mut body = response[header_end + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body)?;
    }
    Ok((status, body))
}

fn dechunk(mut body: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("bad chunked body")?;
        let size = usize::from_str_radix(String::from_utf8_lossy(&body[..line_end]).trim(), 16)
            .context("bad chunk size")?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        anyhow::ensure!(body.len() >= size + 2, "truncated chunk");
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}
