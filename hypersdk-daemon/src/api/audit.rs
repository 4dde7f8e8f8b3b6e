//! The audit log (admins only).

use super::*;

/// The audit log (admin only), newest first.
#[utoipa::path(get, path = "/api/v1/audit", responses((status = 200, body = Vec<Object>), (status = 403, body = ApiErrorBody)))]
pub(super) async fn audit_log(State(st): Shared) -> ApiResult<Json<Vec<serde_json::Value>>> {
    Ok(Json(
        st.store.audit_log(1000).await.map_err(ApiError::internal)?,
    ))
}
