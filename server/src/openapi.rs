//! The hub's HTTP API as one OpenAPI 3.1 document, generated from the
//! handlers' annotations and the types they answer with, served at
//! `GET /v1/openapi.json`. The WebSocket sync endpoint (`/v1/sync`) speaks
//! the binary protocol of `docs/protocol.md` and is not part of it.

use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// Every error answer of the HTTP API: one line saying what is wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub error: String,
}

/// A name identifier (store, device, tenant): 1 to 64 of
/// `A-Z a-z 0-9 - _ .`, as `omnisync_core::vocab::ids::check_name` checks.
pub struct StoreName;

impl utoipa::PartialSchema for StoreName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(r"^[A-Za-z0-9._-]{1,64}$"))
            .min_length(Some(1))
            .max_length(Some(omnisync_core::vocab::ids::NAME_BYTES_MAX))
            .into()
    }
}

impl ToSchema for StoreName {}

/// The bearer token scheme every authenticated route uses.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A signed token from the chain's identity provider or `omnisync-hub enrol`. \
                         A hub started with `--dev-auth` leaves these routes open.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "omnisync hub",
        description = "The regional hub's HTTP API: the event feed, admin reads and device revocation, \
                       token refresh, health and metrics. Devices sync over the WebSocket at `/v1/sync` \
                       (binary protocol, not described here).",
    ),
    paths(
        crate::feed::events,
        crate::feed::stream,
        crate::http::healthz,
        crate::http::metrics,
        crate::http::admin_doc,
        crate::http::admin_op,
        crate::http::admin_revoke,
        crate::http::refresh,
        openapi_json,
    ),
    components(schemas(
        ErrorBody,
        StoreName,
        omnisync_hub_engine::events::OrderConfirmedData,
        omnisync_hub_engine::events::OrderRefusedData,
        omnisync_hub_engine::events::OrderStatusChangedData,
        omnisync_hub_engine::events::StockLevelData,
        omnisync_hub_engine::events::AllowanceData,
        omnisync_hub_engine::events::PriceChangedData,
        omnisync_hub_engine::events::ProductChangedData,
        omnisync_hub_engine::events::CompensationOpenedData,
        omnisync_hub_engine::events::CompensationResolvedData,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "events", description = "Typed events of the hub's outbox (docs/events.md)."),
        (name = "admin", description = "Back-office reads and device revocation."),
        (name = "auth", description = "Device tokens."),
        (name = "operations", description = "Health, metrics and this document."),
    )
)]
pub struct ApiDoc;

/// The document as JSON, made once.
pub fn document() -> &'static str {
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DOCUMENT.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .unwrap_or_else(|error| format!("{{\"error\": \"the API document: {error}\"}}"))
    })
}

/// `GET /v1/openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API.", content_type = "application/json", body = Object))
)]
pub async fn openapi_json() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        document(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_names_every_route_and_the_event_types() {
        let document: serde_json::Value = serde_json::from_str(document()).unwrap();
        let paths = document["paths"].as_object().unwrap();
        for path in [
            "/v1/events",
            "/v1/events/stream",
            "/healthz",
            "/metrics",
            "/v1/admin/docs/{doc}",
            "/v1/admin/ops/{replica}/{seq}",
            "/v1/admin/devices/{device}/revoke",
            "/v1/auth/refresh",
            "/v1/openapi.json",
        ] {
            assert!(paths.contains_key(path), "{path} missing");
        }
        let schemas = &document["components"]["schemas"];
        assert!(schemas["CloudEvent"].is_object());
        assert_eq!(
            schemas["EventType"]["enum"].as_array().unwrap().len(),
            omnisync_hub_engine::events::EventType::ALL.len()
        );
    }
}
