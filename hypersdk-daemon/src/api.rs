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
use crate::profiles;
use crate::runner::{error_chain, Runner};
use crate::schedules::{self, Schedule, ScheduleRun, ScheduleSpec, When};
use crate::store::{JobFilter, Store};
use crate::webhooks::{DeliveryAttempt, Webhook, WebhookSpec};

/// Most jobs one submission may hold.
pub const MAX_BATCH: usize = 1000;

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
}

impl AppState {
    /// Takes one request's token from `client`'s bucket; Err(seconds to
    /// wait) if there is none.
    fn take_token(&self, client: &str) -> Result<(), u64> {
        let Some(limit) = &self.config.rate_limit else {
            return Ok(());
        };
        let now = Instant::now();
        let mut buckets = crate::lock(&self.buckets);
        if buckets.len() > 10_000 {
            // Forget clients idle for long enough to have a full bucket again.
            let full = std::time::Duration::from_secs_f64(limit.burst / limit.per_second.max(1e-9));
            buckets.retain(|_, (_, last)| now.duration_since(*last) < full);
        }
        let (tokens, last) = buckets
            .entry(client.to_string())
            .or_insert((limit.burst, now));
        *tokens =
            (*tokens + now.duration_since(*last).as_secs_f64() * limit.per_second).min(limit.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / limit.per_second.max(1e-9))
                .ceil()
                .max(1.0) as u64)
        }
    }
}

type Shared = State<Arc<AppState>>;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

/// The body of an error answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiErrorBody {
    /// What went wrong.
    pub error: ApiErrorDetail,
}

/// Status and message of an error answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiErrorDetail {
    /// HTTP status.
    pub status: u16,
    /// What was wrong, naming the field or object.
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    fn internal(e: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ApiErrorBody {
                error: ApiErrorDetail {
                    status: self.status.as_u16(),
                    message: self.message,
                },
            }),
        )
            .into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The caller, once authenticated.
#[derive(Debug, Clone)]
struct Caller {
    name: String,
    /// Whether the caller showed a valid key (or none are configured:
    /// then everyone is admin, on loopback only).
    known: bool,
}

/// The role a route needs.
fn needed_role(method: &Method, route: &str) -> Role {
    if route.starts_with("/api/v1/audit") {
        Role::Admin
    } else if method == Method::GET || method == Method::HEAD {
        Role::Viewer
    } else {
        Role::Operator
    }
}

/// The token of an `Authorization: Bearer TOKEN` value; the scheme is
/// case-insensitive (RFC 9110, section 11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start())
}

/// Who presents `headers`: Ok(None) without a key, Err for a wrong key.
fn authenticate(config: &Config, headers: &HeaderMap) -> Result<Option<(String, Role)>, ()> {
    let key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(bearer_token)
        });
    let Some(key) = key else { return Ok(None) };
    let digest = hypersdk_formats::manifest::to_hex(&Sha256::digest(key.trim().as_bytes()));
    config
        .api_keys
        .iter()
        .find(|k| k.sha256.eq_ignore_ascii_case(&digest))
        .map(|k| Some((k.name.clone(), k.role)))
        .ok_or(())
}

/// Authentication, roles, metrics and the audit log, around every route.
async fn guard(st: Shared, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let span = tracing::info_span!(
        "request",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        url.path = %req.uri().path(),
        http.response.status_code = tracing::field::Empty,
        enduser.id = tracing::field::Empty,
    );
    crate::telemetry::set_parent(
        &span,
        req.headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok()),
    );
    guarded(st, method, route, req, next).instrument(span).await
}

async fn guarded(
    State(st): Shared,
    method: Method,
    route: String,
    mut req: Request,
    next: Next,
) -> Response {
    let start = Instant::now();
    let path = req.uri().path().to_string();
    let public = route == "/health" || route == "/ready";
    let (caller, known) = match authenticate(&st.config, req.headers()) {
        Ok(Some((name, role))) => {
            if !public && role < needed_role(&method, &route) {
                let e = ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!(
                        "{method} {route} needs the {:?} role; key '{name}' has {role:?}",
                        needed_role(&method, &route)
                    ),
                );
                return finish(&st, &method, &route, &path, &name, start, e.into_response()).await;
            }
            (name, true)
        }
        Ok(None) if st.config.api_keys.is_empty() => ("anonymous".to_string(), true),
        Ok(None) if public => ("anonymous".to_string(), false),
        Ok(None) => {
            let e = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "an API key is needed: Authorization: Bearer KEY or X-API-Key: KEY",
            );
            return finish(
                &st,
                &method,
                &route,
                &path,
                "anonymous",
                start,
                e.into_response(),
            )
            .await;
        }
        Err(()) => {
            let e = ApiError::new(StatusCode::UNAUTHORIZED, "unknown API key");
            return finish(
                &st,
                &method,
                &route,
                &path,
                "unknown-key",
                start,
                e.into_response(),
            )
            .await;
        }
    };
    if !public {
        let client = if st.config.api_keys.is_empty() {
            req.extensions()
                .get::<axum::extract::ConnectInfo<crate::serve::PeerAddr>>()
                .map(|c| c.0 .0.ip().to_string())
                .unwrap_or_else(|| "unknown".into())
        } else {
            caller.clone()
        };
        if let Err(wait) = st.take_token(&client) {
            let per = st.config.rate_limit.as_ref().map_or(0.0, |l| l.per_second);
            let mut resp = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("rate limit: {per} requests per second for {client}; retry after {wait} s"),
            )
            .into_response();
            if let Ok(v) = axum::http::HeaderValue::from_str(&wait.to_string()) {
                resp.headers_mut().insert("retry-after", v);
            }
            return finish(&st, &method, &route, &path, &caller, start, resp).await;
        }
    }
    req.extensions_mut().insert(Caller {
        name: caller.clone(),
        known,
    });
    let resp = next.run(req).await;
    finish(&st, &method, &route, &path, &caller, start, resp).await
}

async fn finish(
    st: &AppState,
    method: &Method,
    route: &str,
    path: &str,
    who: &str,
    start: Instant,
    resp: Response,
) -> Response {
    let status = resp.status().as_u16();
    let span = tracing::Span::current();
    span.record("http.response.status_code", i64::from(status));
    span.record("enduser.id", who);
    if status >= 500 {
        crate::telemetry::set_error(&span, &format!("{status}"));
    }
    st.metrics.request(
        method.as_str(),
        route,
        status,
        start.elapsed().as_secs_f64(),
    );
    if method != Method::GET && method != Method::HEAD {
        if let Err(e) = st
            .store
            .audit(
                who.to_string(),
                method.to_string(),
                path.to_string(),
                status,
            )
            .await
        {
            tracing::warn!(error = %e, "cannot write the audit log");
        }
    }
    resp
}

/// The API's routes, each registered together with its OpenAPI operation
/// (utoipa-axum): the document lists exactly the routes served.
fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(submit_jobs, list_jobs))
        .routes(routes!(get_job, delete_job))
        .routes(routes!(cancel_job))
        .routes(routes!(retry_job))
        .routes(routes!(job_logs))
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

/// Jobs created by a submission.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Submitted {
    /// The new jobs, in submission order.
    pub jobs: Vec<Job>,
}

/// Whether the body is YAML (by Content-Type); JSON otherwise.
fn is_yaml(headers: &HeaderMap) -> bool {
    headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.contains("yaml"))
}

/// A request body as a JSON value: YAML by Content-Type, else JSON.
fn parse_body(headers: &HeaderMap, body: &[u8]) -> ApiResult<serde_json::Value> {
    if is_yaml(headers) {
        serde_yaml_ng::from_slice(body).map_err(|e| ApiError::bad(format!("malformed YAML: {e}")))
    } else {
        serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("malformed JSON: {e}")))
    }
}

/// A submission's jobs: one job (an object) or a list, each resolved
/// against its profile and checked; messages name the job and the field.
pub(crate) async fn resolve_jobs(
    st: &AppState,
    value: serde_json::Value,
) -> ApiResult<Vec<JobSpec>> {
    let (items, batch) = match value {
        serde_json::Value::Array(items) => {
            if items.is_empty() {
                return Err(ApiError::bad("an empty list of jobs"));
            }
            if items.len() > MAX_BATCH {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "{} jobs in one submission; at most {MAX_BATCH}",
                        items.len()
                    ),
                ));
            }
            (items, true)
        }
        v @ serde_json::Value::Object(_) => (vec![v], false),
        _ => {
            return Err(ApiError::bad(
                "expected a job (an object) or a list of jobs",
            ))
        }
    };
    let providers = st.runner.providers.names();
    let mut specs = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let spec = profiles::resolve(&st.store, item, &providers)
            .await
            .map_err(|e| {
                ApiError::bad(if batch {
                    format!("job {}: {e}", i + 1)
                } else {
                    format!("job: {e}")
                })
            })?;
        specs.push(spec);
    }
    Ok(specs)
}

/// Submit one job or a batch (a list), as JSON or YAML
/// (`Content-Type: application/yaml`).
#[utoipa::path(post, path = "/api/v1/jobs", request_body = JobSpec,
    responses((status = 201, description = "Queued", body = Submitted),
              (status = 400, description = "Malformed or invalid submission", body = ApiErrorBody),
              (status = 413, description = "Body or batch too large", body = ApiErrorBody)))]
async fn submit_jobs(
    State(st): Shared,
    caller: axum::Extension<Caller>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Submitted>)> {
    let body = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let specs = resolve_jobs(&st, parse_body(&headers, &body)?).await?;
    let jobs = st
        .store
        .insert(
            specs,
            caller.name.clone(),
            crate::telemetry::current_traceparent(),
        )
        .await
        .map_err(ApiError::internal)?;
    created(&st, &jobs);
    Ok((StatusCode::CREATED, Json(Submitted { jobs })))
}

/// Announces new jobs (webhooks) and wakes the runner.
pub(crate) fn created(st: &AppState, jobs: &[Job]) {
    for j in jobs {
        st.runner.webhooks.emit(
            "job.created",
            j.id,
            serde_json::to_value(j).unwrap_or_default(),
        );
    }
    st.runner.wake();
}

/// A page of jobs.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobList {
    /// Jobs, newest first.
    pub jobs: Vec<Job>,
    /// Jobs matching the filters in all.
    pub total: i64,
    /// Page size.
    pub limit: i64,
    /// Page start.
    pub offset: i64,
}

/// Query of a job listing.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Only jobs in this status.
    status: Option<String>,
    /// Only jobs of this provider.
    provider: Option<String>,
    /// Only jobs of this VM.
    vm: Option<String>,
    /// Page size (default 50, at most 1000).
    limit: Option<i64>,
    /// Page start (default 0).
    offset: Option<i64>,
}

/// List jobs, newest first, filtered and paged.
#[utoipa::path(get, path = "/api/v1/jobs", params(ListQuery),
    responses((status = 200, body = JobList), (status = 400, body = ApiErrorBody)))]
async fn list_jobs(
    State(st): Shared,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<JobList>> {
    let Query(q) = q.map_err(|e| ApiError::bad(e.body_text()))?;
    let status = q
        .status
        .as_deref()
        .map(str::parse::<JobStatus>)
        .transpose()
        .map_err(|e| ApiError::bad(format!("status: {e}")))?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad(format!(
            "limit: {limit} is not within 1..=1000"
        )));
    }
    let offset = q.offset.unwrap_or(0);
    if offset < 0 {
        return Err(ApiError::bad(format!("offset: {offset} is negative")));
    }
    let filter = JobFilter {
        status,
        provider: q.provider,
        vm: q.vm,
    };
    let (mut jobs, total) = st
        .store
        .list(filter, limit, offset)
        .await
        .map_err(ApiError::internal)?;
    for j in &mut jobs {
        j.progress = st.runner.progress(j.id);
    }
    Ok(Json(JobList {
        jobs,
        total,
        limit,
        offset,
    }))
}

fn job_id(raw: &str) -> ApiResult<i64> {
    raw.parse()
        .map_err(|_| ApiError::bad(format!("job id '{raw}' is not a number")))
}

async fn load(st: &AppState, raw: &str) -> ApiResult<Job> {
    let id = job_id(raw)?;
    let mut job = st
        .store
        .get(id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("no job {id}")))?;
    job.progress = st.runner.progress(id);
    Ok(job)
}

/// One job, with live progress while it runs.
#[utoipa::path(get, path = "/api/v1/jobs/{id}", params(("id" = i64, Path, description = "Job id")),
    responses((status = 200, body = Job), (status = 404, body = ApiErrorBody)))]
async fn get_job(State(st): Shared, Path(id): Path<String>) -> ApiResult<Json<Job>> {
    Ok(Json(load(&st, &id).await?))
}

/// Cancel a job: a queued one at once; a running one stops its export
/// (which keeps its checkpoint) and ends as cancelled.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/cancel", params(("id" = i64, Path, description = "Job id")),
    responses((status = 202, description = "Cancelling", body = Job),
              (status = 404, body = ApiErrorBody), (status = 409, description = "Already over", body = ApiErrorBody)))]
async fn cancel_job(
    State(st): Shared,
    caller: axum::Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    let job = load(&st, &id).await?;
    if job.status.is_final() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("job {} is already {}", job.id, job.status.as_str()),
        ));
    }
    let cancelled_queued = st
        .store
        .cancel_queued(job.id, caller.name.clone())
        .await
        .map_err(ApiError::internal)?;
    if !cancelled_queued && st.runner.cancel(job.id) {
        st.store
            .log(job.id, format!("cancel requested by {}", caller.name))
            .await
            .map_err(ApiError::internal)?;
    }
    Ok((StatusCode::ACCEPTED, Json(load(&st, &id).await?)))
}

/// Retry a failed job whose cause may pass (full disk, network: its
/// `retryable` is true) or a cancelled one: it is queued again and its
/// export continues from its checkpoint and partial export.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/retry", params(("id" = i64, Path, description = "Job id")),
    responses((status = 202, description = "Queued again", body = Job),
              (status = 404, body = ApiErrorBody), (status = 409, description = "Not a job that can be retried", body = ApiErrorBody)))]
async fn retry_job(
    State(st): Shared,
    caller: axum::Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    let job = load(&st, &id).await?;
    let refuse = |why: String| Err(ApiError::new(StatusCode::CONFLICT, why));
    match job.status {
        JobStatus::Failed if !job.retryable => {
            return refuse(format!(
            "job {} failed for a cause a retry does not change ({}); fix it and submit a new job",
            job.id,
            job.error.as_deref().unwrap_or("unknown")
        ))
        }
        JobStatus::Failed | JobStatus::Cancelled => {}
        s => {
            return refuse(format!(
                "job {} is {}: only failed or cancelled jobs can be retried",
                job.id,
                s.as_str()
            ))
        }
    }
    if !st
        .store
        .retry(job.id, caller.name.clone())
        .await
        .map_err(ApiError::internal)?
    {
        return refuse(format!(
            "job {} changed meanwhile; look at it again",
            job.id
        ));
    }
    st.runner.wake();
    Ok((StatusCode::ACCEPTED, Json(load(&st, &id).await?)))
}

/// Delete a job that is over, with its log, and remove the partial export
/// it kept (a published artifact stays).
#[utoipa::path(delete, path = "/api/v1/jobs/{id}", params(("id" = i64, Path, description = "Job id")),
    responses((status = 204, description = "Deleted"),
              (status = 404, body = ApiErrorBody), (status = 409, description = "Still queued or running", body = ApiErrorBody)))]
async fn delete_job(State(st): Shared, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let job = load(&st, &id).await?;
    if !job.status.is_final() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("job {} is {}: cancel it first", job.id, job.status.as_str()),
        ));
    }
    if let Some(p) = &job.partial {
        st.runner
            .remove_partial(p)
            .await
            .map_err(|e| ApiError::internal(format!("job {}: {e}", job.id)))?;
    }
    if !st
        .store
        .delete_job(job.id)
        .await
        .map_err(ApiError::internal)?
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("job {} changed meanwhile; look at it again", job.id),
        ));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// A job's log: status changes and messages, oldest first.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/logs", params(("id" = i64, Path, description = "Job id")),
    responses((status = 200, body = Vec<JobEvent>), (status = 404, body = ApiErrorBody)))]
async fn job_logs(State(st): Shared, Path(id): Path<String>) -> ApiResult<Json<Vec<JobEvent>>> {
    let job = load(&st, &id).await?;
    Ok(Json(
        st.store.events(job.id).await.map_err(ApiError::internal)?,
    ))
}

/// Progress as Server-Sent Events: for a queued job nothing until it
/// starts, then `progress` events while it runs, then one `end` event with
/// its final status.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/progress", params(("id" = i64, Path, description = "Job id")),
    responses((status = 200, description = "text/event-stream of Progress", body = Progress),
              (status = 404, body = ApiErrorBody)))]
async fn job_progress(
    State(st): Shared,
    Path(id): Path<String>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let job = load(&st, &id).await?;
    let rx = st.runner.subscribe(job.id);
    let first = job.progress.clone();
    let state = (st.clone(), job.id, rx, first, false);
    let stream = futures_util::stream::unfold(state, |(st, id, mut rx, first, ended)| async move {
        if ended {
            return None;
        }
        if let Some(p) = first {
            let ev = Event::default().event("progress").json_data(&p).ok()?;
            return Some((Ok(ev), (st, id, rx, None, false)));
        }
        // A queued job: wait until it runs (or ends without running).
        while rx.is_none() {
            rx = st.runner.subscribe(id);
            if rx.is_some() {
                break;
            }
            match st.store.get(id).await {
                Ok(Some(j)) if j.status == JobStatus::Queued => {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await
                }
                Ok(Some(j)) if j.status == JobStatus::Running => {
                    // Started: its runner entry appears at once, or it just ended.
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    rx = st.runner.subscribe(id);
                    break;
                }
                _ => break,
            }
        }
        if let Some(r) = rx.as_mut() {
            loop {
                match r.recv().await {
                    Ok(p)
                        if p.phase == "succeeded"
                            || p.phase == "failed"
                            || p.phase == "cancelled" =>
                    {
                        break
                    }
                    Ok(p) => {
                        let ev = Event::default().event("progress").json_data(&p).ok()?;
                        return Some((Ok(ev), (st, id, rx, None, false)));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => break,
                }
            }
        }
        let status = st.store.get(id).await.ok().flatten().map(|j| j.status);
        let ev = Event::default()
            .event("end")
            .json_data(serde_json::json!({ "status": status }))
            .ok()?;
        Some((Ok(ev), (st, id, None, None, true)))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// Configured provider names.
#[utoipa::path(get, path = "/api/v1/providers", responses((status = 200, body = Vec<String>)))]
async fn list_providers(State(st): Shared) -> Json<Vec<String>> {
    Json(st.runner.providers.names())
}

/// VMs of a provider.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VmList {
    /// The VMs (id, name, power state, CPUs, memory, guest OS, …).
    #[schema(value_type = Vec<Object>)]
    pub vms: Vec<serde_json::Value>,
}

/// List (or search, by `name` glob) the VMs of a configured provider.
#[utoipa::path(get, path = "/api/v1/providers/{name}/vms",
    params(("name" = String, Path, description = "Provider name"), ("name_glob" = Option<String>, Query, description = "Name pattern")),
    responses((status = 200, body = VmList), (status = 404, body = ApiErrorBody), (status = 502, body = ApiErrorBody)))]
async fn list_vms(
    State(st): Shared,
    Path(name): Path<String>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> ApiResult<Json<VmList>> {
    if !st.runner.providers.names().contains(&name) {
        return Err(ApiError::not_found(format!("no provider '{name}'")));
    }
    let provider = st
        .runner
        .providers
        .get(&name)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, error_chain(&e)))?;
    let vms = match q.get("name_glob") {
        Some(glob) => {
            let query = hypersdk_core::VmQuery {
                name: Some(glob.clone()),
                ..Default::default()
            };
            provider.search_vms(&query).await
        }
        None => provider.list_vms().await,
    }
    .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, error_chain(&e)))?;
    Ok(Json(VmList {
        vms: vms
            .iter()
            .filter_map(|v| serde_json::to_value(v).ok())
            .collect(),
    }))
}

/// Registers a webhook (JSON or YAML): url, events (default all), secret.
#[utoipa::path(post, path = "/api/v1/webhooks", request_body = WebhookSpec,
    responses((status = 201, body = Webhook), (status = 400, body = ApiErrorBody)))]
async fn add_webhook(
    State(st): Shared,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Webhook>)> {
    let body = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let mut spec: WebhookSpec = serde_json::from_value(parse_body(&headers, &body)?)
        .map_err(|e| ApiError::bad(format!("webhook: {e}")))?;
    spec.check(&st.runner.webhooks.policy)
        .await
        .map_err(ApiError::bad)?;
    let hook = st
        .runner
        .webhooks
        .add(spec)
        .await
        .map_err(ApiError::internal)?;
    Ok((StatusCode::CREATED, Json(hook)))
}

/// The registered webhooks (secrets not shown).
#[utoipa::path(get, path = "/api/v1/webhooks", responses((status = 200, body = Vec<Webhook>)))]
async fn list_webhooks(State(st): Shared) -> Json<Vec<Webhook>> {
    Json(st.runner.webhooks.list())
}

fn webhook_id(raw: &str) -> ApiResult<i64> {
    raw.parse()
        .map_err(|_| ApiError::bad(format!("webhook id '{raw}' is not a number")))
}

/// Removes a webhook.
#[utoipa::path(delete, path = "/api/v1/webhooks/{id}", params(("id" = i64, Path, description = "Webhook id")),
    responses((status = 204), (status = 404, body = ApiErrorBody)))]
async fn delete_webhook(State(st): Shared, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let id = webhook_id(&id)?;
    if st
        .runner
        .webhooks
        .remove(id)
        .await
        .map_err(ApiError::internal)?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no webhook {id}")))
    }
}

/// A webhook's delivery log: every attempt, oldest first.
#[utoipa::path(get, path = "/api/v1/webhooks/{id}/deliveries", params(("id" = i64, Path, description = "Webhook id")),
    responses((status = 200, body = Vec<DeliveryAttempt>), (status = 404, body = ApiErrorBody)))]
async fn webhook_deliveries(
    State(st): Shared,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<DeliveryAttempt>>> {
    let id = webhook_id(&id)?;
    if !st.runner.webhooks.list().iter().any(|h| h.id == id) {
        return Err(ApiError::not_found(format!("no webhook {id}")));
    }
    Ok(Json(
        st.store.deliveries(id).await.map_err(ApiError::internal)?,
    ))
}

/// Adds a schedule (JSON or YAML): a cron expression in a time zone that
/// submits a job template.
#[utoipa::path(post, path = "/api/v1/schedules", request_body = ScheduleSpec,
    responses((status = 201, body = Schedule), (status = 400, body = ApiErrorBody), (status = 409, body = ApiErrorBody)))]
async fn add_schedule(
    State(st): Shared,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Schedule>)> {
    let body = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let spec: ScheduleSpec = serde_json::from_value(parse_body(&headers, &body)?)
        .map_err(|e| ApiError::bad(format!("schedule: {e}")))?;
    if spec.name.trim().is_empty() {
        return Err(ApiError::bad("name: must not be empty"));
    }
    let when = When::parse(&spec.cron, &spec.timezone).map_err(ApiError::bad)?;
    resolve_jobs(&st, spec.job.clone()).await?;
    let next = if spec.enabled {
        when.next_after(chrono::Utc::now())
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    } else {
        None
    };
    let name = spec.name.clone();
    match st
        .store
        .add_schedule(spec, next)
        .await
        .map_err(ApiError::internal)?
    {
        Some(s) => Ok((StatusCode::CREATED, Json(s))),
        None => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("a schedule named '{name}' exists"),
        )),
    }
}

/// Every schedule.
#[utoipa::path(get, path = "/api/v1/schedules", responses((status = 200, body = Vec<Schedule>)))]
async fn list_schedules(State(st): Shared) -> ApiResult<Json<Vec<Schedule>>> {
    Ok(Json(
        st.store.schedules(None).await.map_err(ApiError::internal)?,
    ))
}

async fn load_schedule(st: &AppState, raw: &str) -> ApiResult<Schedule> {
    let id: i64 = raw
        .parse()
        .map_err(|_| ApiError::bad(format!("schedule id '{raw}' is not a number")))?;
    st.store
        .schedules(Some(id))
        .await
        .map_err(ApiError::internal)?
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::not_found(format!("no schedule {id}")))
}

/// One schedule.
#[utoipa::path(get, path = "/api/v1/schedules/{id}", params(("id" = i64, Path, description = "Schedule id")),
    responses((status = 200, body = Schedule), (status = 404, body = ApiErrorBody)))]
async fn get_schedule(State(st): Shared, Path(id): Path<String>) -> ApiResult<Json<Schedule>> {
    Ok(Json(load_schedule(&st, &id).await?))
}

/// Deletes a schedule and its history (jobs it submitted stay).
#[utoipa::path(delete, path = "/api/v1/schedules/{id}", params(("id" = i64, Path, description = "Schedule id")),
    responses((status = 204), (status = 404, body = ApiErrorBody)))]
async fn delete_schedule(State(st): Shared, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let s = load_schedule(&st, &id).await?;
    st.store
        .delete_schedule(s.id)
        .await
        .map_err(ApiError::internal)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_enabled(st: &AppState, raw: &str, enabled: bool) -> ApiResult<Json<Schedule>> {
    let s = load_schedule(st, raw).await?;
    let next = if enabled {
        When::parse(&s.cron, &s.timezone)
            .map_err(ApiError::internal)?
            .next_after(chrono::Utc::now())
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    } else {
        None
    };
    st.store
        .set_schedule_enabled(s.id, enabled, next)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(load_schedule(st, raw).await?))
}

/// Enables a schedule: it runs from its next occurrence on.
#[utoipa::path(post, path = "/api/v1/schedules/{id}/enable", params(("id" = i64, Path, description = "Schedule id")),
    responses((status = 200, body = Schedule), (status = 404, body = ApiErrorBody)))]
async fn enable_schedule(State(st): Shared, Path(id): Path<String>) -> ApiResult<Json<Schedule>> {
    set_enabled(&st, &id, true).await
}

/// Disables a schedule.
#[utoipa::path(post, path = "/api/v1/schedules/{id}/disable", params(("id" = i64, Path, description = "Schedule id")),
    responses((status = 200, body = Schedule), (status = 404, body = ApiErrorBody)))]
async fn disable_schedule(State(st): Shared, Path(id): Path<String>) -> ApiResult<Json<Schedule>> {
    set_enabled(&st, &id, false).await
}

/// Runs a schedule's template now (recorded in its history).
#[utoipa::path(post, path = "/api/v1/schedules/{id}/trigger", params(("id" = i64, Path, description = "Schedule id")),
    responses((status = 201, body = ScheduleRun), (status = 404, body = ApiErrorBody)))]
async fn trigger_schedule(
    State(st): Shared,
    caller: axum::Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<ScheduleRun>)> {
    let s = load_schedule(&st, &id).await?;
    let run = schedules::submit(&st, &s, None, &format!("triggered by {}", caller.name)).await;
    st.store
        .record_runs(
            s.id,
            vec![run.clone()],
            s.next_run_at.clone(),
            run.status == "submitted",
        )
        .await
        .map_err(ApiError::internal)?;
    if run.status != "submitted" {
        return Err(ApiError::bad(run.message));
    }
    Ok((StatusCode::CREATED, Json(run)))
}

/// A schedule's history: submitted, missed and failed runs, oldest first.
#[utoipa::path(get, path = "/api/v1/schedules/{id}/runs", params(("id" = i64, Path, description = "Schedule id")),
    responses((status = 200, body = Vec<ScheduleRun>), (status = 404, body = ApiErrorBody)))]
async fn schedule_runs(
    State(st): Shared,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<ScheduleRun>>> {
    let s = load_schedule(&st, &id).await?;
    Ok(Json(
        st.store
            .schedule_runs(s.id)
            .await
            .map_err(ApiError::internal)?,
    ))
}

/// Every profile: name, options, last change.
#[utoipa::path(get, path = "/api/v1/profiles", responses((status = 200, body = Vec<Object>)))]
async fn list_profiles(State(st): Shared) -> ApiResult<Json<Vec<serde_json::Value>>> {
    Ok(Json(st.store.profiles().await.map_err(ApiError::internal)?))
}

/// One profile's options.
#[utoipa::path(get, path = "/api/v1/profiles/{name}", params(("name" = String, Path, description = "Profile name")),
    responses((status = 200, body = Object), (status = 404, body = ApiErrorBody)))]
async fn get_profile(
    State(st): Shared,
    Path(name): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    st.store
        .profile(name.clone())
        .await
        .map_err(ApiError::internal)?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no profile '{name}'")))
}

/// Creates or replaces a profile: job options without `vm` (JSON or YAML).
#[utoipa::path(put, path = "/api/v1/profiles/{name}", params(("name" = String, Path, description = "Profile name")),
    request_body = Object,
    responses((status = 200, body = Object), (status = 400, body = ApiErrorBody)))]
async fn put_profile(
    State(st): Shared,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    if name.is_empty()
        || name.len() > 128
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(ApiError::bad(format!(
            "profile name '{name}': use letters, digits, '-', '_' and '.'"
        )));
    }
    let body = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let value = parse_body(&headers, &body)?;
    profiles::check_profile(&value, &st.runner.providers.names())
        .map_err(|e| ApiError::bad(format!("profile '{name}': {e}")))?;
    st.store
        .put_profile(name, value.clone())
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(value))
}

/// Deletes a profile (jobs made from it keep their options).
#[utoipa::path(delete, path = "/api/v1/profiles/{name}", params(("name" = String, Path, description = "Profile name")),
    responses((status = 204), (status = 404, body = ApiErrorBody)))]
async fn delete_profile(State(st): Shared, Path(name): Path<String>) -> ApiResult<StatusCode> {
    if st
        .store
        .delete_profile(name.clone())
        .await
        .map_err(ApiError::internal)?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no profile '{name}'")))
    }
}

/// The audit log (admin only), newest first.
#[utoipa::path(get, path = "/api/v1/audit", responses((status = 200, body = Vec<Object>), (status = 403, body = ApiErrorBody)))]
async fn audit_log(State(st): Shared) -> ApiResult<Json<Vec<serde_json::Value>>> {
    Ok(Json(
        st.store.audit_log(1000).await.map_err(ApiError::internal)?,
    ))
}

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
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", responses((status = 200, body = Health)))]
async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        queued: None,
        active: None,
        free_bytes: None,
    })
}

/// Readiness: the database answers. Callers with a key (or every caller
/// when no keys are configured) also get queue depth, active exports and
/// free space; anonymous ones only ready or not.
#[utoipa::path(get, path = "/ready", responses((status = 200, body = Health), (status = 503, body = Health)))]
async fn ready(State(st): Shared, caller: axum::Extension<Caller>) -> Response {
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
        };
        return (code, Json(body)).into_response();
    }
    let counts = st.store.counts().await.unwrap_or_default();
    let queued = counts
        .iter()
        .find(|(k, _)| k == "queued")
        .map_or(0, |(_, n)| *n);
    let free = free_bytes(&st.config.output_root);
    let body = Health {
        status: match &db {
            Ok(()) => "ok".into(),
            Err(e) => e.to_string(),
        },
        queued: Some(queued),
        active: Some(st.runner.active()),
        free_bytes: free,
    };
    (code, Json(body)).into_response()
}

/// Free bytes of the file system holding `path` (from `df`, which every
/// Unix has; None if it cannot tell).
fn free_bytes(path: &std::path::Path) -> Option<u64> {
    let out = std::process::Command::new("df")
        .args(["-Pk"])
        .arg(path)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().nth(1)?;
    let kib: u64 = line.split_whitespace().nth(3)?.parse().ok()?;
    Some(kib * 1024)
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format", body = String)))]
async fn metrics(State(st): Shared) -> Response {
    let counts = st.store.counts().await.unwrap_or_default();
    (
        [("content-type", "text/plain; version=0.0.4")],
        st.metrics.render(&counts),
    )
        .into_response()
}
