//! `/health`, `/ready` and Prometheus `/metrics`.

use super::*;

/// Liveness and readiness.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// "ok", or what is wrong.
    pub status: String,
    /// Jobs waiting.
    pub queued: Option<i64>,
    /// Exports running.
    pub active: Option<usize>,
    /// Free bytes on the output root's file system.
    pub free_bytes: Option<u64>,
    /// Size of that file system.
    #[serde(default)]
    pub size_bytes: Option<u64>,
    /// Exports that may run at once.
    #[serde(default)]
    pub max_concurrent: Option<usize>,
    /// The daemon's version.
    #[serde(default)]
    pub version: Option<String>,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", responses((status = 200, body = Health)))]
pub(super) async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        queued: None,
        active: None,
        free_bytes: None,
        size_bytes: None,
        max_concurrent: None,
        version: None,
    })
}

/// Readiness: the database answers. Callers with a key (or every caller
/// when no keys are configured) also get queue depth, active exports and
/// free space; anonymous ones only ready or not.
#[utoipa::path(get, path = "/ready", responses((status = 200, body = Health), (status = 503, body = Health)))]
pub(super) async fn ready(State(st): Shared, caller: axum::Extension<Caller>) -> Response {
    let db = st.store.ping().await;
    let code = if db.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    if !caller.known {
        let status = if db.is_ok() { "ok" } else { "not ready" };
        let body = Health {
            status: status.into(),
            queued: None,
            active: None,
            free_bytes: None,
            size_bytes: None,
            max_concurrent: None,
            version: None,
        };
        return (code, Json(body)).into_response();
    }
    let counts = st.store.counts().await.unwrap_or_default();
    let queued = counts
        .iter()
        .find(|(k, _)| k == "queued")
        .map_or(0, |(_, n)| *n);
    let space = crate::metrics::space(&st.config.output_root);
    let body = Health {
        status: match &db {
            Ok(()) => "ok".into(),
            Err(e) => e.to_string(),
        },
        queued: Some(queued),
        active: Some(st.runner.active()),
        free_bytes: space.map(|s| s.0),
        size_bytes: space.map(|s| s.1),
        max_concurrent: Some(st.config.max_concurrent),
        version: Some(env!("CARGO_PKG_VERSION").to_string()),
    };
    (code, Json(body)).into_response()
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "OpenMetrics text format", body = String)))]
pub(super) async fn metrics(State(st): Shared) -> Response {
    let counts = st.store.counts().await.unwrap_or_default();
    let space = crate::metrics::space(&st.config.output_root);
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.metrics.render(&counts, space),
    )
        .into_response()
}
