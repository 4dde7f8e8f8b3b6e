//! Schedules: cron templates of jobs, their runs, enable/disable/trigger.

use super::*;

/// Adds a schedule (JSON or YAML): a cron expression in a time zone that
/// submits a job template.
#[utoipa::path(post, path = "/api/v1/schedules", request_body = ScheduleSpec,
    responses((status = 201, body = Schedule), (status = 400, body = ApiErrorBody), (status = 409, body = ApiErrorBody)))]
pub(super) async fn add_schedule(
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
    st.submitter.resolve(spec.job.clone()).await?;
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
pub(super) async fn list_schedules(State(st): Shared) -> ApiResult<Json<Vec<Schedule>>> {
    Ok(Json(
        st.store.schedules(None).await.map_err(ApiError::internal)?,
    ))
}

pub(super) async fn load_schedule(st: &AppState, raw: &str) -> ApiResult<Schedule> {
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
pub(super) async fn get_schedule(
    State(st): Shared,
    Path(id): Path<String>,
) -> ApiResult<Json<Schedule>> {
    Ok(Json(load_schedule(&st, &id).await?))
}

/// Deletes a schedule and its history (jobs it submitted stay).
#[utoipa::path(delete, path = "/api/v1/schedules/{id}", params(("id" = i64, Path, description = "Schedule id")),
    responses((status = 204), (status = 404, body = ApiErrorBody)))]
pub(super) async fn delete_schedule(
    State(st): Shared,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let s = load_schedule(&st, &id).await?;
    st.store
        .delete_schedule(s.id)
        .await
        .map_err(ApiError::internal)?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn set_enabled(
    st: &AppState,
    raw: &str,
    enabled: bool,
) -> ApiResult<Json<Schedule>> {
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
pub(super) async fn enable_schedule(
    State(st): Shared,
    Path(id): Path<String>,
) -> ApiResult<Json<Schedule>> {
    set_enabled(&st, &id, true).await
}

/// Disables a schedule.
#[utoipa::path(post, path = "/api/v1/schedules/{id}/disable", params(("id" = i64, Path, description = "Schedule id")),
    responses((status = 200, body = Schedule), (status = 404, body = ApiErrorBody)))]
pub(super) async fn disable_schedule(
    State(st): Shared,
    Path(id): Path<String>,
) -> ApiResult<Json<Schedule>> {
    set_enabled(&st, &id, false).await
}

/// Runs a schedule's template now (recorded in its history).
#[utoipa::path(post, path = "/api/v1/schedules/{id}/trigger", params(("id" = i64, Path, description = "Schedule id")),
    responses((status = 201, body = ScheduleRun), (status = 404, body = ApiErrorBody)))]
pub(super) async fn trigger_schedule(
    State(st): Shared,
    caller: axum::Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<ScheduleRun>)> {
    let s = load_schedule(&st, &id).await?;
    let run = crate::schedules::submit(
        &st.submitter,
        &s,
        None,
        &format!("triggered by {}", caller.name),
    )
    .await;
    st.store
        .record_runs(s.id, vec![run.clone()], run.status == "submitted")
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
pub(super) async fn schedule_runs(
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
