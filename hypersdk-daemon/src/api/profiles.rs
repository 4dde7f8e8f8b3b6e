//! Profiles: named job options.

use super::*;

/// Every profile: name, options, last change.
#[utoipa::path(get, path = "/api/v1/profiles", responses((status = 200, body = Vec<Object>)))]
pub(super) async fn list_profiles(State(st): Shared) -> ApiResult<Json<Vec<serde_json::Value>>> {
    Ok(Json(st.store.profiles().await.map_err(ApiError::internal)?))
}

/// One profile's options.
#[utoipa::path(get, path = "/api/v1/profiles/{name}", params(("name" = String, Path, description = "Profile name")),
    responses((status = 200, body = Object), (status = 404, body = ApiErrorBody)))]
pub(super) async fn get_profile(
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
pub(super) async fn put_profile(
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
    crate::profiles::check_profile(&value, &st.runner.providers.names())
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
pub(super) async fn delete_profile(
    State(st): Shared,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
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
