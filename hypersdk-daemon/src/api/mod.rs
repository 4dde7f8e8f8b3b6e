//! The REST API under `/api/v1`, its OpenAPI document (generated with
//! utoipa from the routes themselves, each registered with its operation
//! through utoipa-axum, so it lists exactly what is served; at
//! `/api/v1/openapi.json`),
//! and `/health`, `/ready`, `/metrics`.
//!
//! Every route but `/health` and `/ready` needs an API key (`Authorization:
//! Bearer KEY` or `X-API-Key: KEY`) when keys are configured: viewers may
//! read, operators also submit and cancel, admins also read the audit log.
//! Every mutating call is written to the audit log. Errors are JSON,
//! `{"error": {"status": 400, "message": "…"}}`, and name what was wrong.
//!
//! One file per concern: `auth.rs` (keys and roles), `ratelimit.rs`,
//! `middleware.rs` (around every route), `error.rs`, `body.rs` (JSON or
//! YAML bodies), and the handlers by resource: `jobs.rs`, `providers.rs`,
//! `profiles.rs`, `schedules.rs`, `webhooks.rs`, `audit.rs`, `health.rs`.
//! Jobs are queued through [`Submitter`], which the scheduler shares.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::Instrument;
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::{Config, Role};
use crate::metrics::Metrics;
use crate::model::{Job, JobEvent, JobSpec, JobStatus, Priority, Progress};
use crate::runner::Runner;
use crate::schedules::{Schedule, ScheduleRun, ScheduleSpec, When};
use crate::store::{JobFilter, Store};
use crate::submit::{SubmitError, Submitter};
use crate::webhooks::{DeliveryAttempt, Webhook, WebhookSpec};
use hypersdk_core::error::chain as error_chain;

mod audit;
mod auth;
mod body;
mod error;
mod health;
mod jobs;
mod middleware;
mod profiles;
mod providers;
mod ratelimit;
mod schedules;
mod webhooks;

pub use crate::submit::MAX_BATCH;
use audit::*;
use auth::*;
use body::*;
use error::ApiResult;
pub use error::{ApiError, ApiErrorBody, ApiErrorDetail};
pub use health::Health;
use health::*;
use jobs::*;
pub use jobs::{JobList, Submitted};
use middleware::*;
use profiles::*;
pub use providers::VmList;
use providers::*;
use schedules::*;
use webhooks::*;

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    /// The job store.
    pub store: Store,
    /// The job runner.
    pub runner: Arc<Runner>,
    /// Counters for /metrics.
    pub metrics: Arc<Metrics>,
    /// The configuration.
    pub config: Arc<Config>,
    /// Per-client token buckets (tokens, last refill).
    pub buckets: std::sync::Mutex<std::collections::HashMap<String, (f64, Instant)>>,
    /// Queues jobs (shared with the scheduler).
    pub submitter: Arc<Submitter>,
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Invalid(m) => ApiError::bad(m),
            SubmitError::TooMany(m) => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, m),
            SubmitError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, m),
            SubmitError::Store(e) => ApiError::internal(e),
        }
    }
}

pub(super) type Shared = State<Arc<AppState>>;

/// The API's routes, each registered together with its OpenAPI operation
/// (utoipa-axum): the document lists exactly the routes served.
fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(submit_jobs, list_jobs))
        .routes(routes!(get_job, delete_job))
        .routes(routes!(cancel_job))
        .routes(routes!(retry_job))
        .routes(routes!(job_logs))
        .routes(routes!(job_report))
        .routes(routes!(all_progress))
        .routes(routes!(whoami))
        .routes(routes!(job_progress))
        .routes(routes!(list_providers))
        .routes(routes!(list_vms))
        .routes(routes!(list_profiles))
        .routes(routes!(get_profile, put_profile, delete_profile))
        .routes(routes!(add_schedule, list_schedules))
        .routes(routes!(get_schedule, delete_schedule))
        .routes(routes!(enable_schedule))
        .routes(routes!(disable_schedule))
        .routes(routes!(trigger_schedule))
        .routes(routes!(schedule_runs))
        .routes(routes!(add_webhook, list_webhooks))
        .routes(routes!(delete_webhook))
        .routes(routes!(webhook_deliveries))
        .routes(routes!(audit_log))
        .routes(routes!(openapi))
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(metrics))
}

/// The OpenAPI document of the routes served, built once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOCUMENT: std::sync::OnceLock<utoipa::openapi::OpenApi> = std::sync::OnceLock::new();
    DOCUMENT.get_or_init(|| routes().split_for_parts().1)
}

/// The API's router.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.max_body_bytes;
    let (api, _) = routes().split_for_parts();
    api.route_layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .merge(crate::ui::router())
        .layer(DefaultBodyLimit::max(limit))
        .fallback(|| async { ApiError::not_found("no such route") })
        .with_state(state)
}

/// The OpenAPI document's title, description and shared schemas; its paths
/// come from the routes ([`document`]).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "hypervisord",
        description = "The hypersdk job daemon: VM export jobs."
    ),
    components(schemas(
        JobSpec,
        Job,
        JobEvent,
        JobStatus,
        Priority,
        hypersdk_core::ExportSettings,
        hypersdk_core::PackageFormat,
        Progress,
        crate::outputs::PartialExport,
        JobList,
        Submitted,
        ApiErrorBody,
        ApiErrorDetail,
        VmList,
        Health
    ))
)]
#[derive(Debug)]
pub struct ApiDoc;

/// This OpenAPI document.
#[utoipa::path(get, path = "/api/v1/openapi.json",
    responses((status = 200, description = "The OpenAPI document of every route served", body = Object)))]
async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(document().clone())
}
