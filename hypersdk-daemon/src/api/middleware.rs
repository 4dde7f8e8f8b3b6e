//! Around every route: authentication, rate limits, metrics, the audit
//! log, tracing.

use super::*;

/// Authentication, roles, metrics and the audit log, around every route.
pub(super) async fn guard(st: Shared, req: Request, next: Next) -> Response {
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

pub(super) async fn guarded(
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

pub(super) async fn finish(
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
