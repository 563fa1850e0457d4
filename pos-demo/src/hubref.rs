//! The hubs a pos-demo command talks to: one embedded in this process (with
//! a temporary data directory), or one or more separate `omnisync-hub serve`
//! processes reached over the network (`--hub ws://A,ws://B`). Devices are
//! spread over several hubs round-robin, each given the whole list rotated
//! so that its own hub comes first and the others are where it fails over
//! to. Checks that need the hub's own view (was this op stored? what are
//! this document's heads?) go through the first hub's admin endpoints for
//! external hubs (hubs of one deployment share their database), so both
//! kinds are checked the same way.

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
    /// Running elsewhere: one or more hub processes (never empty).
    External {
        /// The hubs, in the order given.
        hubs: Vec<ExternalHub>,
    },
}

/// One hub process reached over the network.
pub struct ExternalHub {
    /// `ws://host:port/v1/sync`.
    pub sync_url: String,
    /// `host:port` for admin requests.
    pub authority: String,
}

impl HubRef {
    /// Connects to `hub` (one `ws://` URL, or several separated by commas)
    /// or starts an embedded hub. Every external hub must answer `/healthz`.
    pub async fn open(hub: Option<&str>) -> anyhow::Result<Self> {
        let Some(list) = hub else {
            let data = tempfile::tempdir().context("creating the hub's data directory")?;
            let config = HubConfig::new("127.0.0.1:0".parse()?, data.path().to_path_buf());
            return Ok(HubRef::Embedded {
                hub: Hub::start(config).await?,
                data,
            });
        };
        let mut hubs = Vec::new();
        for url in list.split(',').map(str::trim).filter(|url| !url.is_empty()) {
            let external = external_hub(url)?;
            let (status, _) = http_get(&external.authority, "/healthz")
                .await
                .with_context(|| format!("reaching the hub at {}", external.authority))?;
            if status != 200 {
                bail!(
                    "the hub at {} answered /healthz with HTTP {status}",
                    external.authority
                );
            }
            if !hubs
                .iter()
                .any(|known: &ExternalHub| known.sync_url == external.sync_url)
            {
                hubs.push(external);
            }
        }
        if hubs.is_empty() {
            bail!("--hub {list:?}: expected ws://HOST:PORT[/v1/sync][,ws://HOST:PORT…]");
        }
        Ok(HubRef::External { hubs })
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

    /// The sync URL of the first hub.
    pub fn sync_url(&self) -> String {
        match self {
            HubRef::Embedded { hub, .. } => hub.sync_url(),
            HubRef::External { hubs } => hubs
                .first()
                .map(|hub| hub.sync_url.clone())
                .unwrap_or_default(),
        }
    }

    /// How many hubs devices are spread over.
    pub fn count(&self) -> usize {
        match self {
            HubRef::Embedded { .. } => 1,
            HubRef::External { hubs } => hubs.len().max(1),
        }
    }

    /// The hub addresses of the `n`th device: every hub, starting with hub
    /// `n` modulo their number (its own), then the others in order (where it
    /// fails over to).
    pub fn sync_urls_for(&self, n: usize) -> Vec<String> {
        match self {
            HubRef::Embedded { hub, .. } => vec![hub.sync_url()],
            HubRef::External { hubs } => rotated(hubs, n).map(|hub| hub.sync_url.clone()).collect(),
        }
    }

    /// One line describing the hubs, for the timeline.
    pub fn describe(&self) -> String {
        match self {
            HubRef::Embedded { hub, data } => {
                format!(
                    "embedded hub on {} (data in {})",
                    hub.sync_url(),
                    data.path().display()
                )
            }
            HubRef::External { hubs } if hubs.len() == 1 => {
                format!("external hub at {}", hubs[0].sync_url)
            }
            HubRef::External { hubs } => format!(
                "{} external hubs at {}",
                hubs.len(),
                hubs.iter()
                    .map(|hub| hub.sync_url.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// The first external hub's `host:port`, for admin reads.
    fn admin_authority(&self) -> anyhow::Result<&str> {
        match self {
            HubRef::External { hubs } => hubs
                .first()
                .map(|hub| hub.authority.as_str())
                .context("no external hub"),
            HubRef::Embedded { .. } => bail!("an embedded hub is read directly"),
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
            HubRef::External { .. } => {
                let (status, body) = http_get(
                    self.admin_authority()?,
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
            HubRef::External { .. } => {
                let (status, body) = http_get(
                    self.admin_authority()?,
                    &format!("/v1/admin/docs/{doc}?format=automerge"),
                )
                .await?;
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

/// `ws://HOST:PORT[/v1/sync]` → the hub's sync URL and admin authority.
fn external_hub(url: &str) -> anyhow::Result<ExternalHub> {
    let expected = || format!("--hub {url:?}: expected ws://HOST:PORT[/v1/sync]");
    let rest = url.strip_prefix("ws://").with_context(expected)?;
    let authority = rest.split('/').next().unwrap_or_default().to_owned();
    if authority.is_empty() || !authority.contains(':') {
        bail!(expected());
    }
    Ok(ExternalHub {
        sync_url: format!("ws://{authority}/v1/sync"),
        authority,
    })
}

/// `items` starting at index `n` modulo their number, around.
fn rotated<T>(items: &[T], n: usize) -> impl Iterator<Item = &T> {
    let start = if items.is_empty() { 0 } else { n % items.len() };
    items[start..].iter().chain(&items[..start])
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_device_starts_at_its_own_hub_and_fails_over_to_the_others() {
        let hubs = HubRef::External {
            hubs: ["a:1", "b:2", "c:3"]
                .iter()
                .map(|authority| external_hub(&format!("ws://{authority}")).unwrap())
                .collect(),
        };
        assert_eq!(hubs.count(), 3);
        assert_eq!(
            hubs.sync_urls_for(0),
            ["ws://a:1/v1/sync", "ws://b:2/v1/sync", "ws://c:3/v1/sync"]
        );
        assert_eq!(
            hubs.sync_urls_for(4),
            ["ws://b:2/v1/sync", "ws://c:3/v1/sync", "ws://a:1/v1/sync"]
        );
        assert_eq!(
            hubs.sync_urls_for(2),
            ["ws://c:3/v1/sync", "ws://a:1/v1/sync", "ws://b:2/v1/sync"]
        );
        assert_eq!(hubs.sync_url(), "ws://a:1/v1/sync");
    }

    #[test]
    fn hub_urls_are_checked() {
        assert_eq!(
            external_hub("ws://10.0.0.5:7000/v1/sync")
                .unwrap()
                .authority,
            "10.0.0.5:7000"
        );
        assert!(external_hub("http://10.0.0.5:7000").is_err());
        assert!(external_hub("ws://10.0.0.5").is_err());
        assert!(external_hub("ws://").is_err());
    }
}
