//! Jobs: submit, list, show, cancel, retry, delete, logs, progress (SSE).

use super::*;

/// Jobs created by a submission.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Submitted {
    /// The new jobs, in submission order.
    pub jobs: Vec<Job>,
}

/// Submit one job or a batch (a list), as JSON or YAML
/// (`Content-Type: application/yaml`). With an `Idempotency-Key` header
/// (1 to 200 printable characters, the caller's own), a submission made
/// again with the same key queues nothing and answers 200 with the jobs of
/// the first (header `Idempotent-Replayed: true`): a client that lost the
/// answer may simply try again.
#[utoipa::path(post, path = "/api/v1/jobs", request_body = JobSpec,
    params(("Idempotency-Key" = Option<String>, Header, description = "Submit once: a retry with the same key answers the first submission's jobs")),
    responses((status = 201, description = "Queued", body = Submitted),
              (status = 200, description = "A replay of an earlier submission with the same Idempotency-Key", body = Submitted),
              (status = 400, description = "Malformed or invalid submission", body = ApiErrorBody),
              (status = 409, description = "The Idempotency-Key was used for another submission", body = ApiErrorBody),
              (status = 413, description = "Body or batch too large", body = ApiErrorBody)))]
pub(super) async fn submit_jobs(
    State(st): Shared,
    caller: axum::Extension<Caller>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, HeaderMap, Json<Submitted>)> {
    let body = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let value = parse_body(&headers, &body)?;
    let mut out = HeaderMap::new();
    let Some(key) = headers.get("idempotency-key") else {
        let jobs = st.submitter.submit(value, caller.name.clone()).await?;
        return Ok((StatusCode::CREATED, out, Json(Submitted { jobs })));
    };
    let key = key
        .to_str()
        .ok()
        .filter(|k| {
            !k.is_empty() && k.len() <= 200 && k.chars().all(|c| c.is_ascii_graphic() || c == ' ')
        })
        .ok_or_else(|| ApiError::bad("Idempotency-Key: 1 to 200 printable ASCII characters"))?;
    let (jobs, replayed) = st
        .submitter
        .submit_once(value, caller.name.clone(), key.to_string())
        .await?;
    if replayed {
        out.insert(
            "idempotent-replayed",
            axum::http::HeaderValue::from_static("true"),
        );
        return Ok((StatusCode::OK, out, Json(Submitted { jobs })));
    }
    Ok((StatusCode::CREATED, out, Json(Submitted { jobs })))
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
pub(super) struct ListQuery {
    /// Only jobs in this status.
    pub(super) status: Option<String>,
    /// Only jobs of this provider.
    pub(super) provider: Option<String>,
    /// Only jobs of this VM.
    pub(super) vm: Option<String>,
    /// Page size (default 50, at most 1000).
    pub(super) limit: Option<i64>,
    /// Page start (default 0).
    pub(super) offset: Option<i64>,
}

/// List jobs, newest first, filtered and paged.
#[utoipa::path(get, path = "/api/v1/jobs", params(ListQuery),
    responses((status = 200, body = JobList), (status = 400, body = ApiErrorBody)))]
pub(super) async fn list_jobs(
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
        // Running here: live; elsewhere: as its hypervisord last recorded it.
        j.progress = st.runner.progress(j.id).or(j.progress.take());
    }
    Ok(Json(JobList {
        jobs,
        total,
        limit,
        offset,
    }))
}

pub(super) fn job_id(raw: &str) -> ApiResult<i64> {
    raw.parse()
        .map_err(|_| ApiError::bad(format!("job id '{raw}' is not a number")))
}

pub(super) async fn load(st: &AppState, raw: &str) -> ApiResult<Job> {
    let id = job_id(raw)?;
    let mut job = st
        .store
        .get(id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("no job {id}")))?;
    job.progress = st.runner.progress(id).or(job.progress.take());
    Ok(job)
}

/// One job, with live progress while it runs.
#[utoipa::path(get, path = "/api/v1/jobs/{id}", params(("id" = i64, Path, description = "Job id")),
    responses((status = 200, body = Job), (status = 404, body = ApiErrorBody)))]
pub(super) async fn get_job(State(st): Shared, Path(id): Path<String>) -> ApiResult<Json<Job>> {
    Ok(Json(load(&st, &id).await?))
}

/// Query of a report.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct ReportQuery {
    /// `html` (a self-contained page) or `json` (the default, unless the
    /// request's Accept header prefers text/html).
    pub(super) format: Option<String>,
}

/// The export report of a succeeded job: VM, disks (source, capacity,
/// allocated and stored bytes, digests), the manifest and its
/// verification, options, timings, runs and throughput over time; as JSON
/// or as one HTML page without scripts or external resources.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/report", params(("id" = i64, Path, description = "Job id"), ReportQuery),
    responses((status = 200, description = "The report (JSON, or HTML with ?format=html)", body = Object),
              (status = 400, body = ApiErrorBody), (status = 404, body = ApiErrorBody),
              (status = 409, description = "The job has no report (it did not succeed)", body = ApiErrorBody)))]
pub(super) async fn job_report(
    State(st): Shared,
    Path(id): Path<String>,
    headers: HeaderMap,
    q: Result<Query<ReportQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = q.map_err(|e| ApiError::bad(e.body_text()))?;
    let html = match q.format.as_deref().map(str::to_ascii_lowercase).as_deref() {
        Some("html") => true,
        Some("json") => false,
        Some(other) => {
            return Err(ApiError::bad(format!(
                "format: {other:?} is neither html nor json"
            )))
        }
        None => headers
            .get("accept")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| {
                a.split(',')
                    .next()
                    .is_some_and(|f| f.trim().starts_with("text/html"))
            }),
    };
    let job = load(&st, &id).await?;
    let Some(result) = job.result.filter(|_| job.status == JobStatus::Succeeded) else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "job {} is {}: only a succeeded job has a report",
                job.id,
                job.status.as_str()
            ),
        ));
    };
    if !html {
        return Ok(Json(result).into_response());
    }
    let report: hypersdk_core::ExportReport = serde_json::from_value(result)
        .map_err(|e| ApiError::internal(format!("job {}'s stored report: {e}", job.id)))?;
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                axum::http::header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'",
            ),
        ],
        report.to_html(),
    )
        .into_response())
}

/// Cancel a job: a queued one at once; a running one stops its export
/// (which keeps its checkpoint) and ends as cancelled.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/cancel", params(("id" = i64, Path, description = "Job id")),
    responses((status = 202, description = "Cancelling", body = Job),
              (status = 404, body = ApiErrorBody), (status = 409, description = "Already over", body = ApiErrorBody)))]
pub(super) async fn cancel_job(
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
    if !cancelled_queued {
        if st.runner.cancel(job.id) {
            st.store
                .log(job.id, format!("cancel requested by {}", caller.name))
                .await
                .map_err(ApiError::internal)?;
        } else {
            // Running on another hypervisord: it sees the request when it
            // next renews its lease.
            st.store
                .request_cancel(job.id, caller.name.clone())
                .await
                .map_err(ApiError::internal)?;
        }
    }
    Ok((StatusCode::ACCEPTED, Json(load(&st, &id).await?)))
}

/// Retry a failed job whose cause may pass (full disk, network: its
/// `retryable` is true) or a cancelled one: it is queued again and its
/// export continues from its checkpoint and partial export.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/retry", params(("id" = i64, Path, description = "Job id")),
    responses((status = 202, description = "Queued again", body = Job),
              (status = 404, body = ApiErrorBody), (status = 409, description = "Not a job that can be retried", body = ApiErrorBody)))]
pub(super) async fn retry_job(
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
pub(super) async fn delete_job(State(st): Shared, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let job = load(&st, &id).await?;
    if !job.status.is_final() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("job {} is {}: cancel it first", job.id, job.status.as_str()),
        ));
    }
    if job.partial.is_some() {
        st.runner
            .remove_partial(&job)
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
pub(super) async fn job_logs(
    State(st): Shared,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<JobEvent>>> {
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
pub(super) async fn job_progress(
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
                    if rx.is_none() && st.store.shared() {
                        // It runs on another hypervisord: follow what it
                        // records, until it ends.
                        if let Some(p) = remote_progress(&st, id).await {
                            let ev = Event::default().event("progress").json_data(&p).ok()?;
                            return Some((Ok(ev), (st, id, None, None, false)));
                        }
                    }
                    break;
                }
                _ => break,
            }
        }
        if let Some(r) = rx.as_mut() {
            loop {
                match r.recv().await {
                    Ok(p) if p.is_end() => break,
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

/// The next progress of job `id` running on another hypervisord, as the
/// store shows it (polled each second); None once it no longer runs.
async fn remote_progress(st: &AppState, id: i64) -> Option<Progress> {
    let mut rx = st.runner.subscribe_all();
    loop {
        let next = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            loop {
                match rx.recv().await {
                    Ok((i, p)) if i == id => return Some(p),
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return None,
                }
            }
        })
        .await;
        match next {
            Ok(Some(p)) if p.is_end() => return None,
            Ok(Some(p)) => return Some(p),
            Ok(None) => return None,
            Err(_) => match st.store.get(id).await {
                Ok(Some(j)) if j.status == JobStatus::Running => {
                    if st.runner.progress(id).is_some() {
                        return None;
                    }
                }
                _ => return None,
            },
        }
    }
}

/// Progress of every job as Server-Sent Events, for dashboards: `progress`
/// events (`{"id": …, "progress": {…}}`) while jobs run, and an `end` event
/// (`{"id": …, "status": …}`) as each ends. A client that falls behind
/// skips to the newest events.
#[utoipa::path(get, path = "/api/v1/progress",
    responses((status = 200, description = "text/event-stream of progress and end events", content_type = "text/event-stream")))]
pub(super) async fn all_progress(
    State(st): Shared,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = st.runner.subscribe_all();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok((id, p)) => {
                    let ev = if p.is_end() {
                        Event::default()
                            .event("end")
                            .json_data(serde_json::json!({ "id": id, "status": p.phase }))
                    } else {
                        Event::default()
                            .event("progress")
                            .json_data(serde_json::json!({ "id": id, "progress": p }))
                    };
                    match ev {
                        Ok(ev) => return Some((Ok(ev), rx)),
                        Err(_) => continue,
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return None,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
