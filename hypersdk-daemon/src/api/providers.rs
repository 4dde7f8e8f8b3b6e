//! Providers and their VMs.

use super::*;

/// Configured provider names.
#[utoipa::path(get, path = "/api/v1/providers", responses((status = 200, body = Vec<String>)))]
pub(super) async fn list_providers(State(st): Shared) -> Json<Vec<String>> {
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
pub(super) async fn list_vms(
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
