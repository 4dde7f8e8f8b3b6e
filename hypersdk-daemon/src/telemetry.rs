//! Logs and traces.
//!
//! Logs are JSON lines on stderr (filtered by `hypervisord --log`). With the
//! `otel` feature (on by default) and a `telemetry` setting, or the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
//! variables, spans at level info and above are also exported to an
//! OpenTelemetry collector over OTLP/HTTP (protobuf), in batches:
//!
//! - one server span per API request (`GET /api/v1/jobs/{id}`, with
//!   `http.request.method`, `http.route`, `http.response.status_code`,
//!   `enduser.id`), the child of the caller's span when the request carries a
//!   W3C `traceparent` header;
//! - one `export job` span per run of a job (`hypersdk.job.id`, VM,
//!   provider, attempt, outcome), the child of the request that submitted
//!   the job (its `traceparent` is kept with the job, so this holds across a
//!   restart of the daemon), with the exporter's own `export` and `disk`
//!   spans below it.
//!
//! The exporter posts from a background thread through the daemon's tokio
//! runtime; a dead collector costs dropped spans (after three tries a
//! warning in the log says so), never a stalled API.

use crate::config::TelemetryConfig;

/// The installed logging and tracing; [`Telemetry::shutdown`] sends the
/// spans still buffered.
#[derive(Debug)]
pub struct Telemetry {
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Installs the global subscriber: JSON logs on stderr filtered by
    /// `log_filter` (tracing env-filter syntax), and the OTLP trace export
    /// when configured. Call from within a tokio runtime.
    pub fn init(config: Option<&TelemetryConfig>, log_filter: &str) -> anyhow::Result<Telemetry> {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        use tracing_subscriber::Layer;

        let filter = tracing_subscriber::EnvFilter::try_new(log_filter)
            .map_err(|e| anyhow::anyhow!("bad --log filter '{log_filter}': {e}"))?;
        let logs = tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(filter);
        #[cfg(feature = "otel")]
        {
            let provider = otel::provider(config)?;
            let traces = provider.as_ref().map(|p| {
                use opentelemetry::trace::TracerProvider as _;
                tracing_opentelemetry::layer()
                    .with_tracer(p.tracer("hypervisord"))
                    .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
            });
            tracing_subscriber::registry()
                .with(logs)
                .with(traces)
                .try_init()
                .map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))?;
            Ok(Telemetry { provider })
        }
        #[cfg(not(feature = "otel"))]
        {
            if config.is_some() {
                anyhow::bail!(
                    "the telemetry setting needs hypervisord built with the `otel` feature"
                );
            }
            tracing_subscriber::registry()
                .with(logs)
                .try_init()
                .map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))?;
            Ok(Telemetry {})
        }
    }

    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        #[cfg(feature = "otel")]
        {
            self.provider.is_some()
        }
        #[cfg(not(feature = "otel"))]
        {
            false
        }
    }

    /// Sends the buffered spans and stops the exporter. Call outside the
    /// runtime's worker threads (it blocks until the last batch is sent or
    /// times out), with the runtime still alive.
    pub fn shutdown(self) {
        #[cfg(feature = "otel")]
        if let Some(p) = self.provider {
            if let Err(e) = p.shutdown() {
                eprintln!("warning: could not send the last spans: {e}");
            }
        }
    }
}

/// The W3C `traceparent` of the current span, when traces are exported.
pub fn current_traceparent() -> Option<String> {
    #[cfg(feature = "otel")]
    {
        otel::current_traceparent()
    }
    #[cfg(not(feature = "otel"))]
    {
        None
    }
}

/// Makes `span` the child of the span a W3C `traceparent` names (ignored
/// when malformed, or when traces are not exported).
pub fn set_parent(span: &tracing::Span, traceparent: Option<&str>) {
    #[cfg(feature = "otel")]
    if let Some(tp) = traceparent {
        otel::set_parent(span, tp);
    }
    #[cfg(not(feature = "otel"))]
    let _ = (span, traceparent);
}

/// Marks `span` failed, for the trace backend.
pub fn set_error(span: &tracing::Span, message: &str) {
    #[cfg(feature = "otel")]
    {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        span.set_status(opentelemetry::trace::Status::error(message.to_string()));
    }
    #[cfg(not(feature = "otel"))]
    let _ = (span, message);
}

#[cfg(feature = "otel")]
mod otel {
    use std::collections::HashMap;
    use std::time::Duration;

    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use crate::config::TelemetryConfig;

    /// Largest collector answer read (OTLP answers are a few bytes).
    const MAX_ANSWER: usize = 1 << 20;

    /// The SDK's batch processor sends from its own thread with a plain
    /// executor; reqwest needs the tokio runtime, so each request is spawned
    /// onto it and awaited from there.
    #[derive(Debug)]
    struct OnRuntime {
        client: reqwest::Client,
        runtime: tokio::runtime::Handle,
    }

    #[async_trait::async_trait]
    impl HttpClient for OnRuntime {
        async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
            let client = self.client.clone();
            let task = self.runtime.spawn(async move {
                let (parts, body) = request.into_parts();
                let mut answer = client
                    .request(parts.method, parts.uri.to_string())
                    .headers(parts.headers)
                    .body(body)
                    .send()
                    .await?;
                let status = answer.status();
                let headers = std::mem::take(answer.headers_mut());
                let mut body = Vec::new();
                while let Some(chunk) = answer.chunk().await? {
                    if body.len() + chunk.len() > MAX_ANSWER {
                        return Err::<_, HttpError>(
                            format!("the collector's answer is over {MAX_ANSWER} bytes").into(),
                        );
                    }
                    body.extend_from_slice(&chunk);
                }
                let mut out = Response::builder().status(status).body(Bytes::from(body))?;
                *out.headers_mut() = headers;
                Ok(out)
            });
            task.await?
        }
    }

    pub(super) fn provider(
        config: Option<&TelemetryConfig>,
    ) -> anyhow::Result<Option<SdkTracerProvider>> {
        let from_env = [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
        if config.is_none() && !from_env {
            return Ok(None);
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| anyhow::anyhow!("trace export needs a tokio runtime"))?;
        let timeout = Duration::from_secs(config.map_or(10, |c| c.timeout_secs.max(1)));
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(OnRuntime { client, runtime })
            .with_timeout(timeout);
        if let Some(c) = config {
            let base = c.otlp_endpoint.trim_end_matches('/');
            exporter = exporter
                .with_endpoint(format!("{base}/v1/traces"))
                .with_headers(c.headers.clone().into_iter().collect());
        }
        let exporter = exporter
            .build()
            .map_err(|e| anyhow::anyhow!("cannot set up the OTLP trace exporter: {e}"))?;
        let mut resource = opentelemetry_sdk::Resource::builder();
        if let Some(c) = config {
            resource = resource.with_service_name(c.service_name.clone());
        } else if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name("hypervisord");
        }
        Ok(Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource.build())
                .build(),
        ))
    }

    pub(super) fn current_traceparent() -> Option<String> {
        let cx = tracing::Span::current().context();
        let mut carrier = HashMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut carrier);
        carrier.remove("traceparent")
    }

    pub(super) fn set_parent(span: &tracing::Span, traceparent: &str) {
        let carrier = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
        let cx = TraceContextPropagator::new().extract(&carrier);
        use opentelemetry::trace::TraceContextExt;
        if cx.span().span_context().is_valid() {
            let _ = span.set_parent(cx);
        }
    }
}
