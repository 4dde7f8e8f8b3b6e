//! Request bodies: JSON, or YAML by Content-Type.

use super::*;

/// Whether the body is YAML (by Content-Type); JSON otherwise.
pub(super) fn is_yaml(headers: &HeaderMap) -> bool {
    headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.contains("yaml"))
}

/// A request body as a JSON value: YAML by Content-Type, else JSON.
pub(super) fn parse_body(headers: &HeaderMap, body: &[u8]) -> ApiResult<serde_json::Value> {
    if is_yaml(headers) {
        serde_yaml_ng::from_slice(body).map_err(|e| ApiError::bad(format!("malformed YAML: {e}")))
    } else {
        serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("malformed JSON: {e}")))
    }
}
