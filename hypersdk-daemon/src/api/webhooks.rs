//! Webhooks and their delivery logs.

use super::*;

/// Registers a webhook (JSON or YAML): url, events (default all), secret.
#[utoipa::path(post, path = "/api/v1/webhooks", request_body = WebhookSpec,
    responses((status = 201, body = Webhook), (status = 400, body = ApiErrorBody)))]
pub(super) async fn add_webhook(
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
pub(super) async fn list_webhooks(State(st): Shared) -> Json<Vec<Webhook>> {
    Json(st.runner.webhooks.list())
}

pub(super) fn webhook_id(raw: &str) -> ApiResult<i64> {
    raw.parse()
        .map_err(|_| ApiError::bad(format!("webhook id '{raw}' is not a number")))
}

/// Removes a webhook.
#[utoipa::path(delete, path = "/api/v1/webhooks/{id}", params(("id" = i64, Path, description = "Webhook id")),
    responses((status = 204), (status = 404, body = ApiErrorBody)))]
pub(super) async fn delete_webhook(
    State(st): Shared,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
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
pub(super) async fn webhook_deliveries(
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
