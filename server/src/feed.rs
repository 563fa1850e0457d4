//! The event feed: the outbox over HTTP, resumable, filtered by store and
//! type, scoped by the caller's token.
//!
//! - `GET /v1/events?after=N&limit=M&store=S1,S2&type=T1,T2&wait=SECS`
//!   answers `{"events": [CloudEvent…], "next": N2, "head": H}`. A consumer
//!   passes `next` as its next `after` and so misses nothing: `next` is the
//!   last outbox position the read looked at (past events the filter
//!   skipped). With `wait` the request is a long poll: it returns as soon as
//!   an event passes the filter, or empty after `wait` seconds.
//! - `GET /v1/events/stream?after=N&store=…&type=…` is the same feed as
//!   Server-Sent Events (`id:` the position, `event:` the type, `data:` the
//!   CloudEvent); a reconnecting client's `Last-Event-ID` resumes it.
//!
//! A consumer further behind than the outbox keeps events (`serve
//! --events-retention`, 30 days by default) gets 410 Gone naming the
//! position to resume after.
//!
//! Who may read what: [`crate::auth::Authenticator::authorize_events`]. A
//! caller naming a store outside its token's scope gets 403; one naming no
//! store reads every store its token covers.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use omnisync_core::vocab::ids::StoreId;
use omnisync_hub_engine::events::{CloudEvent, EventFilter, EventPage, EventType};
use omnisync_hub_engine::log::HubLogError;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::HubState;
use crate::auth::EventScope;
use crate::http::{ApiError, bearer, refused};

/// Events per page when the caller names no `limit`.
pub const PAGE_LEN_DEFAULT: usize = 100;
/// The largest `limit` accepted.
pub const PAGE_LEN_MAX: usize = 1000;
/// The longest `wait` accepted, in seconds.
pub const WAIT_S_MAX: u64 = 60;
/// How often a waiting request looks at the outbox even without hearing of
/// a commit (another hub process's refusal-only commit moves no head).
const RECHECK_EVERY: Duration = Duration::from_secs(1);
/// Events read per outbox page by the Server-Sent Events stream.
const STREAM_PAGE_LEN: usize = 500;

/// A feed request's parameters, parsed.
#[derive(Debug, Clone, PartialEq)]
struct FeedQuery {
    after: u64,
    limit: usize,
    wait: Duration,
    filter: EventFilter,
}

/// The query parameters of `GET /v1/events` and `/v1/events/stream`, as
/// sent (numbers are parsed after, with one clear line per bad value).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FeedParams {
    /// The last outbox position handled (`sequence` of the last event, or
    /// the previous answer's `next`); 0 reads from the start.
    #[param(value_type = Option<u64>, minimum = 0)]
    after: Option<String>,
    /// Events per page, 1 to 1000 (default 100).
    #[param(value_type = Option<u64>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// Long poll: wait up to this many seconds (0 to 60, default 0) for an
    /// event to pass the filter.
    #[param(value_type = Option<u64>, minimum = 0, maximum = 60)]
    wait: Option<String>,
    /// Only these stores (comma-separated); default: every store the token
    /// covers.
    #[param(value_type = Option<Vec<crate::openapi::StoreName>>, style = Form, explode = false)]
    store: Option<String>,
    /// Only these event types (comma-separated); default: all.
    #[serde(rename = "type")]
    #[param(rename = "type", value_type = Option<Vec<EventType>>, style = Form, explode = false)]
    kind: Option<String>,
}

/// The answer of `GET /v1/events`.
#[derive(Debug, Serialize, ToSchema)]
pub struct FeedPage {
    /// The events that passed the filter, in outbox order.
    events: Vec<CloudEvent>,
    /// Where the next read starts: pass it as `after`.
    next: u64,
    /// The outbox's last position when the page was read.
    head: u64,
}

/// Parses the query string: every parameter is known, every value valid.
fn parse_query(raw: Option<&str>) -> Result<FeedQuery, ApiError> {
    let params: FeedParams = serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|error| ApiError::BadRequest(format!("query string: {error}")))?;
    let mut query = FeedQuery {
        after: 0,
        limit: PAGE_LEN_DEFAULT,
        wait: Duration::ZERO,
        filter: EventFilter::default(),
    };
    if let Some(after) = &params.after {
        query.after = number("after", after)?;
    }
    if let Some(limit) = &params.limit {
        let limit = number("limit", limit)?;
        if limit == 0 || limit > PAGE_LEN_MAX as u64 {
            return Err(ApiError::BadRequest(format!(
                "limit must be 1 to {PAGE_LEN_MAX}, not {limit}"
            )));
        }
        query.limit = limit as usize;
    }
    if let Some(wait) = &params.wait {
        let wait = number("wait", wait)?;
        if wait > WAIT_S_MAX {
            return Err(ApiError::BadRequest(format!(
                "wait must be 0 to {WAIT_S_MAX} seconds, not {wait}"
            )));
        }
        query.wait = Duration::from_secs(wait);
    }
    for store in list(params.store.as_deref().unwrap_or("")) {
        let store =
            StoreId::new(store).map_err(|error| ApiError::BadRequest(format!("store: {error}")))?;
        query.filter.stores.push(store);
    }
    for name in list(params.kind.as_deref().unwrap_or("")) {
        let kind = EventType::parse(name).ok_or_else(|| {
            let known: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
            ApiError::BadRequest(format!(
                "unknown event type {name:?}; known: {}",
                known.join(", ")
            ))
        })?;
        query.filter.types.push(kind);
    }
    Ok(query)
}

/// A non-negative integer that fits a signed 64-bit column (positions are
/// stored as such), or one clear line naming the parameter.
pub(crate) fn number(name: &str, value: &str) -> Result<u64, ApiError> {
    value
        .parse::<u64>()
        .ok()
        .filter(|number| i64::try_from(*number).is_ok())
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "{name} must be an integer from 0 to {}, not {value:?}",
                i64::MAX
            ))
        })
}

fn list(value: &str) -> impl Iterator<Item = &str> {
    value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
}

/// Narrows `filter` to what `scope` allows: 403 for a named store outside it.
fn scoped(mut filter: EventFilter, scope: &EventScope) -> Result<EventFilter, ApiError> {
    if let Some(outside) = filter.stores.iter().find(|store| !scope.covers(store)) {
        return Err(ApiError::Forbidden(format!(
            "this token may not read the events of store {outside}"
        )));
    }
    if let (true, EventScope::Stores(stores)) = (filter.stores.is_empty(), scope) {
        filter.stores = stores.clone();
    }
    Ok(filter)
}

fn authorize(
    hub: &HubState,
    headers: &HeaderMap,
    address: SocketAddr,
) -> Result<EventScope, ApiError> {
    if !hub.events {
        return Err(ApiError::NotFound(
            "this hub writes no events (it runs with --no-events)".into(),
        ));
    }
    hub.authenticator
        .authorize_events(bearer(headers), omnisync_core::now_ms())
        .map_err(|error| refused(hub, address, error))
}

/// One page of the outbox, read off the async threads.
async fn read_page(
    hub: &Arc<HubState>,
    after: u64,
    filter: &EventFilter,
    limit: usize,
) -> Result<EventPage, ApiError> {
    let reader = hub.reader.clone();
    let filter = filter.clone();
    tokio::task::spawn_blocking(move || reader.events(after, &filter, limit))
        .await
        .map_err(|error| ApiError::Internal(error.to_string()))?
        .map_err(|error| match error {
            pruned @ HubLogError::EventsPruned { .. } => ApiError::Gone(pruned.to_string()),
            error => ApiError::Internal(format!("reading the outbox: {error}")),
        })
}

/// Waits until a commit is heard of, [`RECHECK_EVERY`] passed, `deadline`
/// came or the hub began shutting down (then returns false).
async fn wait_for_commit(
    hub: &HubState,
    commits: &mut tokio::sync::watch::Receiver<u64>,
    deadline: Instant,
) -> bool {
    let mut shutdown = hub.shutdown.subscribe();
    if *shutdown.borrow() {
        return false;
    }
    let nap = RECHECK_EVERY.min(deadline.saturating_duration_since(Instant::now()));
    tokio::select! {
        _ = commits.changed() => true,
        _ = tokio::time::sleep(nap) => true,
        _ = shutdown.changed() => false,
    }
}

/// `GET /v1/events`: a page of the outbox (a long poll with `wait`).
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    params(FeedParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of events; pass `next` as the next `after`.", body = FeedPage),
        (status = 400, description = "A parameter is wrong.", body = crate::openapi::ErrorBody),
        (status = 401, description = "No valid token.", body = crate::openapi::ErrorBody),
        (status = 403, description = "A store outside the token's scope, or a token that may not read events.", body = crate::openapi::ErrorBody),
        (status = 404, description = "This hub writes no events (`--no-events`).", body = crate::openapi::ErrorBody),
        (status = 410, description = "`after` is below the pruned point: those events are gone.", body = crate::openapi::ErrorBody),
    )
)]
pub async fn events(
    State(hub): State<Arc<HubState>>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = parse_query(raw.as_deref())?;
    let scope = authorize(&hub, &headers, address)?;
    let filter = scoped(query.filter, &scope)?;
    let deadline = Instant::now() + query.wait;
    let mut commits = hub.fanout.commits();
    let mut after = query.after;
    let page = loop {
        commits.mark_unchanged();
        let page = read_page(&hub, after, &filter, query.limit).await?;
        if !page.events.is_empty() || Instant::now() >= deadline {
            break page;
        }
        after = page.next;
        if !wait_for_commit(&hub, &mut commits, deadline).await {
            break page;
        }
    };
    let events = page
        .events
        .iter()
        .map(|event| CloudEvent::of(event, &hub.log_id))
        .collect();
    Ok(axum::Json(FeedPage {
        events,
        next: page.next,
        head: page.head,
    })
    .into_response())
}

/// `GET /v1/events/stream`: Server-Sent Events from `after` (or the
/// `Last-Event-ID` header) on, until the client goes or the hub stops.
#[utoipa::path(
    get,
    path = "/v1/events/stream",
    tag = "events",
    params(
        FeedParams,
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this position (overrides `after`).", minimum = 0),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A stream of `id:`/`event:`/`data:` records, the data a CloudEvent.", content_type = "text/event-stream", body = String),
        (status = 400, description = "A parameter is wrong.", body = crate::openapi::ErrorBody),
        (status = 401, description = "No valid token.", body = crate::openapi::ErrorBody),
        (status = 403, description = "A store outside the token's scope, or a token that may not read events.", body = crate::openapi::ErrorBody),
        (status = 404, description = "This hub writes no events (`--no-events`).", body = crate::openapi::ErrorBody),
        (status = 410, description = "`after` is below the pruned point: those events are gone.", body = crate::openapi::ErrorBody),
    )
)]
pub async fn stream(
    State(hub): State<Arc<HubState>>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut query = parse_query(raw.as_deref())?;
    if let Some(last) = headers.get("last-event-id") {
        let last = last
            .to_str()
            .map_err(|_| ApiError::BadRequest("Last-Event-ID is not text".into()))?;
        query.after = number("Last-Event-ID", last.trim())?;
    }
    let scope = authorize(&hub, &headers, address)?;
    let filter = scoped(query.filter, &scope)?;
    // A position the outbox no longer holds is an answer (410), not a
    // stream that ends at once.
    read_page(&hub, query.after, &filter, 1).await?;
    let state = StreamState {
        commits: hub.fanout.commits(),
        hub,
        after: query.after,
        filter,
        buffered: VecDeque::new(),
    };
    let events = futures_util::stream::unfold(state, next_sse);
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

struct StreamState {
    hub: Arc<HubState>,
    commits: tokio::sync::watch::Receiver<u64>,
    after: u64,
    filter: EventFilter,
    buffered: VecDeque<CloudEvent>,
}

/// The stream's next event: from the buffer, else the next page of the
/// outbox, waiting for commits while there is none. Ends on shutdown or
/// when the outbox cannot be read (the client reconnects with its
/// `Last-Event-ID`).
async fn next_sse(
    mut state: StreamState,
) -> Option<(Result<SseEvent, std::convert::Infallible>, StreamState)> {
    loop {
        if let Some(event) = state.buffered.pop_front() {
            let data = serde_json::to_string(&event).ok()?;
            let sse = SseEvent::default()
                .id(event.id.clone())
                .event(event.kind.as_str())
                .data(data);
            return Some((Ok(sse), state));
        }
        state.commits.mark_unchanged();
        let page = match read_page(&state.hub, state.after, &state.filter, STREAM_PAGE_LEN).await {
            Ok(page) => page,
            Err(error) => {
                tracing::warn!(%error, "event stream ends: the outbox could not be read");
                return None;
            }
        };
        state.after = page.next;
        if page.events.is_empty() {
            let deadline = Instant::now() + RECHECK_EVERY;
            if !wait_for_commit(&state.hub, &mut state.commits, deadline).await {
                return None;
            }
            continue;
        }
        let log_id = state.hub.log_id.clone();
        state.buffered.extend(
            page.events
                .iter()
                .map(|event| CloudEvent::of(event, &log_id)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse_or_say_what_is_wrong() {
        let query = parse_query(Some(
            "after=7&limit=20&wait=5&store=s1,s2&type=omnisync.order.confirmed",
        ))
        .unwrap();
        assert_eq!(query.after, 7);
        assert_eq!(query.limit, 20);
        assert_eq!(query.wait, Duration::from_secs(5));
        assert_eq!(query.filter.stores.len(), 2);
        assert_eq!(query.filter.types, vec![EventType::OrderConfirmed]);
        assert_eq!(parse_query(None).unwrap().limit, PAGE_LEN_DEFAULT);
        for (bad, says) in [
            ("after=-1", "after must be"),
            (
                "after=9223372036854775808",
                "after must be an integer from 0",
            ),
            ("limit=0", "limit must be 1 to"),
            ("limit=5000", "limit must be 1 to"),
            ("wait=61", "wait must be 0 to 60"),
            ("type=omnisync.order.eaten", "unknown event type"),
            ("store=a%2Fb", "store"),
            ("colour=red", "unknown field `colour`"),
        ] {
            let error = parse_query(Some(bad)).unwrap_err().to_string();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }

    #[test]
    fn a_scope_narrows_the_filter_and_refuses_other_stores() {
        let s1 = StoreId::new("s1").unwrap();
        let s2 = StoreId::new("s2").unwrap();
        let scope = EventScope::Stores(vec![s1.clone()]);
        let all = scoped(EventFilter::default(), &scope).unwrap();
        assert_eq!(all.stores, vec![s1.clone()]);
        let other = EventFilter {
            stores: vec![s2],
            types: Vec::new(),
        };
        assert!(matches!(scoped(other, &scope), Err(ApiError::Forbidden(_))));
        let open = scoped(EventFilter::default(), &EventScope::AllStores).unwrap();
        assert!(open.stores.is_empty());
    }
}
