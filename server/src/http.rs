//! HTTP routes: the sync WebSocket, health, metrics, token refresh, and the
//! admin endpoints (reads and device revocation). Errors become responses in
//! one place ([`ApiError`]).
//!
//! With token authentication the admin endpoints want a back-office bearer
//! token of the hub's tenant; the development authenticator leaves them open.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Path, RawQuery, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use omnisync_core::protocol::message::AckOutcome;
use omnisync_core::{DeviceId, DocId, TenantId};
use omnisync_hub_engine::authz::Identity;
use serde::Deserialize;

use crate::HubState;
use crate::audit;
use crate::auth::{AuthError, DEV_TENANT};

/// Largest request body accepted by the JSON endpoints, in bytes.
pub const REQUEST_BODY_BYTES_MAX: usize = 16 * 1024;

/// The hub's routes.
pub fn router(state: Arc<HubState>) -> Router {
    Router::new()
        .route("/v1/sync", get(sync))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/admin/docs/{*doc}", get(admin_doc))
        .route("/v1/admin/ops/{replica}/{seq}", get(admin_op))
        .route("/v1/admin/devices/{device}/revoke", post(admin_revoke))
        .route("/v1/auth/refresh", post(refresh))
        .route("/v1/events", get(crate::feed::events))
        .route("/v1/events/stream", get(crate::feed::stream))
        .route("/v1/openapi.json", get(crate::openapi::openapi_json))
        .layer(axum::extract::DefaultBodyLimit::max(REQUEST_BODY_BYTES_MAX))
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
    if let Err(exceeded) = hub
        .rates
        .address_connections
        .check(&address.ip(), std::time::Instant::now())
    {
        let detail = format!("too many connections from {}: {exceeded}", address.ip());
        audit::record(
            &hub.metrics,
            &audit::Subject::address(address),
            "limit-exceeded",
            &detail,
            None,
        );
        return ApiError::TooManyRequests(detail).into_response();
    }
    upgrade
        .max_message_size(hub.limits.frame_bytes_max)
        .max_frame_size(hub.limits.frame_bytes_max)
        .on_upgrade(move |socket| crate::connection::serve(socket, hub, address))
}

/// `GET /healthz`: `ok` while the hub serves.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses(
        (status = 200, description = "Serving.", content_type = "text/plain", body = String),
        (status = 503, description = "Shutting down.", body = crate::openapi::ErrorBody),
    )
)]
pub(crate) async fn healthz(State(hub): State<Arc<HubState>>) -> Response {
    if *hub.shutdown.borrow() {
        return ApiError::Unavailable("shutting down".into()).into_response();
    }
    (StatusCode::OK, "ok\n").into_response()
}

/// `GET /metrics`: Prometheus text exposition.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Metrics in the Prometheus text format 0.0.4.", content_type = "text/plain", body = String))
)]
pub(crate) async fn metrics(State(hub): State<Arc<HubState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        hub.metrics.render(),
    )
        .into_response()
}

/// The query of `GET /v1/admin/docs/{doc}`.
#[derive(Deserialize, Default, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct DocQuery {
    /// `json` (default) or `automerge` (the saved document's bytes).
    #[param(pattern = "^(json|automerge)$")]
    format: Option<String>,
}

/// `GET /v1/admin/docs/{doc}`: the document as JSON, or as automerge bytes
/// with `?format=automerge`; a hub record's newest version as JSON.
#[utoipa::path(
    get,
    path = "/v1/admin/docs/{doc}",
    tag = "admin",
    params(
        ("doc" = String, Path, description = "A document id, e.g. `store.s1/catalog/b007` or `orders.s1/rec/order/o-1` (at most 200 bytes).",
            pattern = r"^(store|customer|chain|orders|device)\.[a-z0-9-]{1,20}(/[a-z0-9-]{1,20}){1,3}$"),
        DocQuery,
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The document.", content(
            (Object = "application/json"),
            (Vec<u8> = "application/octet-stream"),
        )),
        (status = 400, description = "A bad document id or format.", body = crate::openapi::ErrorBody),
        (status = 401, description = "No valid token.", body = crate::openapi::ErrorBody),
        (status = 403, description = "Not a back-office token.", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such document.", body = crate::openapi::ErrorBody),
    )
)]
pub(crate) async fn admin_doc(
    State(hub): State<Arc<HubState>>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(doc): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query: DocQuery = serde_urlencoded::from_str(raw.as_deref().unwrap_or(""))
        .map_err(|error| ApiError::BadRequest(format!("query string: {error}")))?;
    authorize_admin(&hub, &headers, address)?;
    let doc = DocId::new(doc).map_err(|error| ApiError::BadRequest(error.to_string()))?;
    let reader = hub.reader.clone();
    if omnisync_core::vocab::record::is_record_doc(&doc) {
        // A hub record: its newest version, as JSON.
        let lookup = doc.clone();
        let versions = tokio::task::spawn_blocking(move || reader.doc_changes(&lookup))
            .await
            .map_err(|error| ApiError::Internal(error.to_string()))?
            .map_err(|error| ApiError::Internal(error.to_string()))?;
        let newest = versions
            .last()
            .ok_or_else(|| ApiError::NotFound(format!("no record {doc}")))?;
        let record = omnisync_core::vocab::record::Record::decode(newest)
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
#[utoipa::path(
    get,
    path = "/v1/admin/ops/{replica}/{seq}",
    tag = "admin",
    params(
        ("replica" = String, Path, description = "The device database's replica id: 32 hex digits.", pattern = "^[0-9a-fA-F]{32}$"),
        ("seq" = u64, Path, description = "The op's sequence number in that replica.", minimum = 0),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "`outcome` is `applied` (with `hub_seq`), `rejected` (with `code`, `detail`), `decided` (with `decision`, `detail`) or `unknown`.", body = Object),
        (status = 400, description = "A bad replica id or sequence number.", body = crate::openapi::ErrorBody),
        (status = 401, description = "No valid token.", body = crate::openapi::ErrorBody),
        (status = 403, description = "Not a back-office token.", body = crate::openapi::ErrorBody),
        (status = 404, description = "The hub has no answer for this op.", body = crate::openapi::ErrorBody),
    )
)]
pub(crate) async fn admin_op(
    State(hub): State<Arc<HubState>>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((replica, seq)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let seq = crate::feed::number("seq", &seq)?;
    authorize_admin(&hub, &headers, address)?;
    let replica: omnisync_core::ReplicaId =
        replica
            .parse()
            .map_err(|error: omnisync_core::vocab::ids::IdError| {
                ApiError::BadRequest(error.to_string())
            })?;
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
            "decision": omnisync_core::vocab::record::describe_decision(&decision),
            "detail": serde_json::to_value(&decision).unwrap_or_default(),
        }),
        Some(AckOutcome::Unknown(unknown)) => {
            serde_json::json!({ "outcome": "unknown", "kind": unknown.kind })
        }
    };
    Ok(axum::Json(body).into_response())
}

/// The body of a revocation (optional).
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RevokeRequest {
    /// Why, for the audit log and the device's error.
    #[serde(default)]
    reason: Option<String>,
}

/// The answer to a revocation.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct RevokeAnswer {
    /// The device revoked.
    revoked: String,
    /// When, ms since the epoch: tokens issued before are refused.
    revoked_ms: u64,
}

/// The answer to a refresh.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct RefreshAnswer {
    /// The new token.
    token: String,
}

/// `POST /v1/admin/devices/{device}/revoke` with `{"reason": "…"}`: the
/// device's tokens issued until now are refused, and its live sessions are
/// closed with `unauthenticated: device … was revoked: …`.
#[utoipa::path(
    post,
    path = "/v1/admin/devices/{device}/revoke",
    tag = "admin",
    params(("device" = crate::openapi::StoreName, Path, description = "The device id (1 to 64 of `A-Z a-z 0-9 - _ .`).")),
    request_body(content = Option<RevokeRequest>, description = "Optional: the reason.", content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Revoked.", body = RevokeAnswer),
        (status = 400, description = "A bad device id or body.", body = crate::openapi::ErrorBody),
        (status = 401, description = "No valid token.", body = crate::openapi::ErrorBody),
        (status = 403, description = "Not a back-office token.", body = crate::openapi::ErrorBody),
    )
)]
pub(crate) async fn admin_revoke(
    State(hub): State<Arc<HubState>>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(device): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let admin = authorize_admin(&hub, &headers, address)?;
    let device = DeviceId::new(device).map_err(|error| ApiError::BadRequest(error.to_string()))?;
    // No body, `null` and `{}` all mean "no reason given".
    let request: RevokeRequest = if body.is_empty() {
        RevokeRequest::default()
    } else {
        match serde_json::from_slice::<serde_json::Value>(&body)
            .map_err(|error| ApiError::BadRequest(format!("body: {error}")))?
        {
            serde_json::Value::Null => RevokeRequest::default(),
            object @ serde_json::Value::Object(_) => serde_json::from_value(object)
                .map_err(|error| ApiError::BadRequest(format!("body: {error}")))?,
            _ => {
                return Err(ApiError::BadRequest(
                    "body: expected a JSON object like {\"reason\": \"…\"}".into(),
                ));
            }
        }
    };
    let tenant = match &admin {
        Some(identity) => identity.tenant.clone(),
        None => TenantId::new(DEV_TENANT).map_err(|error| ApiError::Internal(error.to_string()))?,
    };
    let reason = request
        .reason
        .unwrap_or_else(|| "revoked by the back office".into());
    let devices = hub.devices.clone();
    let revocation = tokio::task::spawn_blocking(move || {
        devices.revoke(&tenant, &device, &reason, omnisync_core::now_ms())
    })
    .await
    .map_err(|error| ApiError::Internal(error.to_string()))?
    .map_err(|error| ApiError::Internal(error.to_string()))?;
    let by = admin
        .map(|identity| identity.device.to_string())
        .unwrap_or_default();
    tracing::warn!(target: audit::AUDIT_TARGET, code = "revoked", device = %revocation.device,
        tenant = %revocation.tenant, reason = %revocation.reason, by = %by, %address, "device revoked");
    Ok(axum::Json(RevokeAnswer {
        revoked: revocation.device.to_string(),
        revoked_ms: revocation.revoked_ms,
    })
    .into_response())
}

/// `POST /v1/auth/refresh` with `Authorization: Bearer <token>`: a new
/// token with the same claims and a new expiry, while the old one is still
/// valid, not revoked, and the device's enrolment is recent enough.
#[utoipa::path(
    post,
    path = "/v1/auth/refresh",
    tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A fresh token.", body = RefreshAnswer),
        (status = 401, description = "No valid token, or enrolled too long ago.", body = crate::openapi::ErrorBody),
        (status = 404, description = "This hub does not issue tokens.", body = crate::openapi::ErrorBody),
        (status = 429, description = "Too many requests from this address.", body = crate::openapi::ErrorBody),
    )
)]
pub(crate) async fn refresh(
    State(hub): State<Arc<HubState>>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Err(exceeded) = hub
        .rates
        .address_connections
        .check(&address.ip(), std::time::Instant::now())
    {
        return Err(ApiError::TooManyRequests(format!(
            "too many requests from {}: {exceeded}",
            address.ip()
        )));
    }
    let token = bearer(&headers)
        .ok_or_else(|| ApiError::Unauthorized("send the current token as a bearer token".into()))?;
    match hub.authenticator.refresh(token, omnisync_core::now_ms()) {
        Ok(token) => Ok(axum::Json(RefreshAnswer { token }).into_response()),
        Err(error) => {
            audit::record(
                &hub.metrics,
                &audit::Subject::address(address),
                "unauthenticated",
                &error.to_string(),
                None,
            );
            Err(error.into())
        }
    }
}

/// The bearer token of a request, if it has one.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

fn authorize_admin(
    hub: &HubState,
    headers: &HeaderMap,
    address: SocketAddr,
) -> Result<Option<Identity>, ApiError> {
    hub.authenticator
        .authorize_admin(bearer(headers), omnisync_core::now_ms())
        .map_err(|error| refused(hub, address, error))
}

/// A refused HTTP caller: audited, and answered 401 or 403.
pub(crate) fn refused(hub: &HubState, address: SocketAddr, error: AuthError) -> ApiError {
    let code = match error {
        AuthError::Forbidden(_) => "forbidden",
        _ => "unauthenticated",
    };
    audit::record(
        &hub.metrics,
        &audit::Subject::address(address),
        code,
        &error.to_string(),
        None,
    );
    error.into()
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Unauthenticated(detail) => ApiError::Unauthorized(detail),
            AuthError::Forbidden(detail) => ApiError::Forbidden(detail),
            AuthError::Unsupported(detail) => ApiError::NotFound(detail),
        }
    }
}

/// Every error an HTTP route can return.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The request is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// No or bad credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// Credentials without the right.
    #[error("{0}")]
    Forbidden(String),
    /// Over a rate limit.
    #[error("{0}")]
    TooManyRequests(String),
    /// The thing asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The thing asked for existed and is gone for good (pruned events).
    #[error("{0}")]
    Gone(String),
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
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Gone(_) => StatusCode::GONE,
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
