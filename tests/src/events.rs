//! Reading a hub's event feed (`GET /v1/events`) in tests: one page, or the
//! whole outbox, as CloudEvents.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use omnisync_hub_engine::events::CloudEvent;
use serde::Deserialize;

use crate::http;

/// How long one feed request may take (long polls add their `wait`).
pub const FEED_TIMEOUT: Duration = Duration::from_secs(20);

/// One page of the feed as the hub answered it.
#[derive(Clone, Debug, Deserialize)]
pub struct FeedPage {
    /// The events, in outbox order.
    pub events: Vec<CloudEvent>,
    /// Where the next read starts.
    pub next: u64,
    /// The outbox's last position.
    pub head: u64,
}

/// `GET /v1/events?{query}` with an optional bearer token; fails on any
/// status but 200 (with the hub's error text).
pub async fn page(
    address: SocketAddr,
    query: &str,
    bearer: Option<&str>,
) -> anyhow::Result<FeedPage> {
    let response = http::send(
        address,
        "GET",
        &format!("/v1/events?{query}"),
        bearer,
        "",
        FEED_TIMEOUT + Duration::from_secs(60),
    )
    .await?;
    anyhow::ensure!(
        response.status == 200,
        "GET /v1/events?{query}: {} {}",
        response.status,
        response.body
    );
    serde_json::from_str(&response.body)
        .with_context(|| format!("GET /v1/events?{query}: not a feed page: {}", response.body))
}

/// Every event of the outbox passing `filter` (`store=…&type=…`, or empty),
/// read page by page from the start until the head.
pub async fn read_all(
    address: SocketAddr,
    filter: &str,
    bearer: Option<&str>,
) -> anyhow::Result<Vec<CloudEvent>> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let separator = if filter.is_empty() { "" } else { "&" };
        let page = page(
            address,
            &format!("after={after}&limit=1000{separator}{filter}"),
            bearer,
        )
        .await?;
        all.extend(page.events);
        if page.next >= page.head {
            return Ok(all);
        }
        after = page.next;
    }
}
