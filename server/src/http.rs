//! HTTP routes: the sync WebSocket, health, metrics, and admin reads.
//! Errors become responses in one place ([`ApiError`]).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Path, Query, State, WebSocketUpgrade};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use omnisync_core::DocId;
use omnisync_core::protocol::message::{self, AckOutcome};
use serde::Deserialize;

use crate::HubState;

/// The hub's routes.
pub fn router(state: Arc<HubState>) -> Router {
    Router::new()
        .route("/v1/sync", get(sync))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/admin/docs/{*doc}", get(admin_doc))
        .route("/v1/admin/ops/{replica}/{seq}", get(admin_op))
        .with_state(state)
}

async fn sync(
    upgrade: WebSocketUpgrade,
    State(hub): State<Arc<HubState>>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
) -> Response {
    if *hub.shutdown.borrow() {
        return ApiError::Unavailable("hub is shutting down".into()).into_response();
    }
    upgrade
        .max_message_size(message::FRAME_BYTES_MAX)
        .max_frame_size(message::FRAME_BYTES_MAX)
        .on_upgrade(move |socket| crate::connection::serve(socket, hub, address))
}

async fn healthz(State(hub): State<Arc<HubState>>) -> Response {
    if *hub.shutdown.borrow() {
        return ApiError::Unavailable("shutting down".into()).into_response();
    }
    (StatusCode::OK, "ok\n").into_response()
}

async fn metrics(State(hub): State<Arc<HubState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        hub.metrics.render(),
    )
        .into_response()
}

#[derive(Deserialize)]
struct DocQuery {
    format: Option<String>,
}

/// `GET /v1/admin/docs/{doc}`: the document as JSON, or as automerge bytes
/// with `?format=automerge`.
async fn admin_doc(
    State(hub): State<Arc<HubState>>,
    Path(doc): Path<String>,
    Query(query): Query<DocQuery>,
) -> Result<Response, ApiError> {
    let doc = DocId::new(doc).map_err(|error| ApiError::BadRequest(error.to_string()))?;
    let reader = hub.reader.clone();
    if omnisync_core::ledger::record::is_record_doc(&doc) {
        // A hub record: its newest version, as JSON.
        let lookup = doc.clone();
        let versions = tokio::task::spawn_blocking(move || reader.doc_changes(&lookup))
            .await
            .map_err(|error| ApiError::Internal(error.to_string()))?
            .map_err(|error| ApiError::Internal(error.to_string()))?;
        let newest = versions
            .last()
            .ok_or_else(|| ApiError::NotFound(format!("no record {doc}")))?;
        let record = omnisync_core::ledger::record::Record::decode(newest)
            .map_err(|error| ApiError::Internal(error.to_string()))?;
        let json =
            serde_json::to_value(&record).map_err(|error| ApiError::Internal(error.to_string()))?;
        return Ok(axum::Json(json).into_response());
    }
    let lookup = doc.clone();
    let loaded = tokio::task::spawn_blocking(move || crate::load_doc(reader.as_ref(), &lookup))
        .await
        .map_err(|error| ApiError::Internal(error.to_string()))?
        .map_err(|error| ApiError::Internal(error.to_string()))?;
    if loaded.get_heads().is_empty() {
        return Err(ApiError::NotFound(format!("no document {doc}")));
    }
    match query.format.as_deref() {
        None | Some("json") => {
            let json = serde_json::to_value(automerge::AutoSerde::from(&loaded))
                .map_err(|error| ApiError::Internal(error.to_string()))?;
            Ok(axum::Json(json).into_response())
        }
        Some("automerge") => Ok((
            [(header::CONTENT_TYPE, "application/octet-stream")],
            loaded.save(),
        )
            .into_response()),
        Some(other) => Err(ApiError::BadRequest(format!(
            "unknown format {other:?}; use json or automerge"
        ))),
    }
}

/// `GET /v1/admin/ops/{replica}/{seq}`: the hub's stored answer for an op.
async fn admin_op(
    State(hub): State<Arc<HubState>>,
    Path((replica, seq)): Path<(String, u64)>,
) -> Result<Response, ApiError> {
    let replica: omnisync_core::ReplicaId = replica
        .parse()
        .map_err(|error: omnisync_core::ids::IdError| ApiError::BadRequest(error.to_string()))?;
    let op = omnisync_core::OpId { replica, seq };
    let reader = hub.reader.clone();
    let outcome = tokio::task::spawn_blocking(move || reader.outcome(&op))
        .await
        .map_err(|error| ApiError::Internal(error.to_string()))?
        .map_err(|error| ApiError::Internal(error.to_string()))?;
    let body = match outcome {
        None => {
            return Err(ApiError::NotFound(format!(
                "no op {replica}:{seq} at this hub"
            )));
        }
        Some(AckOutcome::Applied { hub_seq }) => {
            serde_json::json!({ "outcome": "applied", "hub_seq": hub_seq })
        }
        Some(AckOutcome::Rejected { code, detail }) => {
            serde_json::json!({ "outcome": "rejected", "code": format!("{code:?}"), "detail": detail })
        }
        Some(AckOutcome::Decided(decision)) => serde_json::json!({
            "outcome": "decided",
            "decision": omnisync_core::ledger::record::describe_decision(&decision),
            "detail": serde_json::to_value(&decision).unwrap_or_default(),
        }),
    };
    Ok(axum::Json(body).into_response())
}

/// Every error an HTTP route can return.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// The thing asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The hub is going away.
    #[error("{0}")]
    Unavailable(String),
    /// The hub failed.
    #[error("{0}")]
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %self, "admin request failed");
        }
        (
            status,
            axum::Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}
