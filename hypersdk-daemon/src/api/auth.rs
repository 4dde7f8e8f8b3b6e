//! Who calls: API keys (hashed), bearer or X-API-Key, and the role each
//! route needs.

use super::*;

/// The caller, once authenticated.
#[derive(Debug, Clone)]
pub(super) struct Caller {
    pub(super) name: String,
    /// Whether the caller showed a valid key (or none are configured:
    /// then everyone is admin, on loopback only).
    pub(super) known: bool,
}

/// The role a route needs.
pub(super) fn needed_role(method: &Method, route: &str) -> Role {
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
pub(super) fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start())
}

/// Who presents `headers`: Ok(None) without a key, Err for a wrong key.
pub(super) fn authenticate(
    config: &Config,
    headers: &HeaderMap,
) -> Result<Option<(String, Role)>, ()> {
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

/// Who the caller is and what it may do.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    /// The key's name (`anonymous` when the daemon has no keys).
    pub name: String,
    /// `viewer` (reads), `operator` (also submits, cancels, retries and
    /// manages schedules, profiles and webhooks) or `admin` (also the audit
    /// log).
    #[schema(value_type = String)]
    pub role: Role,
    /// Whether the daemon asks for API keys.
    pub keys_required: bool,
}

/// The caller's name and role, for clients that show only what it may do.
#[utoipa::path(get, path = "/api/v1/whoami", responses((status = 200, body = WhoAmI), (status = 401, body = ApiErrorBody)))]
pub(super) async fn whoami(State(st): Shared, headers: HeaderMap) -> Json<WhoAmI> {
    let (name, role) = match authenticate(&st.config, &headers) {
        Ok(Some((name, role))) => (name, role),
        _ => ("anonymous".to_string(), Role::Admin),
    };
    Json(WhoAmI {
        name,
        role,
        keys_required: !st.config.api_keys.is_empty(),
    })
}
