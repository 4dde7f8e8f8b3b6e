//! The web dashboard at `/ui/`: one page, one stylesheet and one script,
//! written for this daemon and compiled into it (no Node.js to build or run
//! it, nothing fetched from elsewhere). The script talks to the REST API
//! like any client: the API key it is given stays in the browser tab's
//! session storage and travels in the `X-API-Key` header, so these files
//! need no key and hold nothing secret.
//!
//! Why a script over the API rather than pages rendered here: the API
//! already serves every page's data (and is what the role checks guard);
//! live progress needs a script anyway (the SSE stream); and the daemon
//! gains no template engine. The pages are served with a strict Content
//! Security Policy: scripts and styles from this origin only (report frames
//! may carry their own inline styles, never scripts), no framing.

use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("../ui/index.html");
const SCRIPT: &str = include_str!("../ui/app.js");
const STYLE: &str = include_str!("../ui/app.css");

/// The policy every dashboard file is served with.
pub const CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; \
    style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; frame-src 'self' blob:; \
    form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The dashboard's routes (no API key needed: they serve only these files).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route(
            "/ui/",
            get(|| async { file("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { file("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/ui/app.css",
            get(|| async { file("text/css; charset=utf-8", STYLE) }),
        )
}
