//! Webhooks: job events POSTed to registered endpoints.
//!
//! Events: `job.created`, `job.started`, `job.progress` (at most every
//! `progress_every_secs` per job), `job.completed`, `job.failed`,
//! `job.cancelled`. Each endpoint has its own queue (bounded, 1,000 events;
//! beyond that events are logged as dropped) and worker, so endpoints get
//! their events in order and a slow one holds up no other.
//!
//! A delivery is `POST url` with the JSON body
//! `{"id": DELIVERY, "event": EVENT, "at": TIME, "job": {...}}` and headers
//! `X-Hypersdk-Event`, `X-Hypersdk-Delivery` and
//! `X-Hypersdk-Signature: sha256=HEX`, the HMAC-SHA256 of the body under
//! the endpoint's secret (verify it before trusting the body). A non-2xx
//! answer or a connection failure is retried with doubling delays
//! (`attempts`, `initial_delay_ms`, `max_delay_ms`); after
//! `breaker_failures` failed deliveries in a row the endpoint's circuit
//! opens for `breaker_cooldown_secs`: deliveries meanwhile are logged as
//! not sent, then the next one is tried again. Every attempt is in the
//! endpoint's delivery log (`GET /api/v1/webhooks/{id}/deliveries`).
//!
//! The secret is kept in the store as given (it is needed to sign), and
//! never shown by the API; a password or query in a webhook URL is shown
//! as `***`. The store (the daemon's database file, created 0600) thus
//! holds every webhook's secret and full URL: keep it private.
//!
//! Targets: loopback, private, link-local and other internal addresses are
//! refused at registration and at every connection unless
//! `webhooks.allow_private` lists them (see [`crate::egress`]); redirects
//! are not followed (a 3xx is a failed attempt), and the delivery log keeps
//! the status code, never a response body.
//!
//! **Once per event, at least once per delivery.** An event is emitted by
//! the one hypervisord that caused it (the one that took the submission,
//! or the one running the job), so with several sharing a PostgreSQL
//! store each event is sent once, by that process. A delivery may still
//! arrive more than once (an answer lost after the endpoint acted, the
//! process killed between sending and logging): `X-Hypersdk-Delivery` (and
//! the body's `id`, the same value) is unique over the cluster and the
//! same on every attempt, so receivers deduplicate on it (an idempotency
//! key). Webhooks registered on one process reach the others within two
//! seconds (each re-reads the list from the store).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;
use utoipa::ToSchema;

use crate::args;
use crate::config::WebhookSettings;
use crate::egress::{GuardedResolver, Policy};
use crate::lock;
use crate::store::{now, Store, StoreError, StoreResult};

/// Every event a webhook can ask for.
pub const EVENTS: [&str; 6] = [
    "job.created",
    "job.started",
    "job.progress",
    "job.completed",
    "job.failed",
    "job.cancelled",
];

/// Queued events per endpoint.
const QUEUE: usize = 1000;

/// A new webhook. Unknown fields are refused.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    /// Where to POST (http or https).
    pub url: String,
    /// Events to send (default: all).
    #[serde(default)]
    pub events: Vec<String>,
    /// Secret the signature is made with (at least 16 characters).
    pub secret: String,
}

/// A registered webhook (its secret not shown).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Webhook {
    /// Id.
    pub id: i64,
    /// Where it POSTs.
    pub url: String,
    /// Events it gets.
    pub events: Vec<String>,
    /// When it was added.
    pub created_at: String,
    /// Its circuit breaker now.
    #[serde(default)]
    pub circuit: Circuit,
}

/// A webhook's circuit breaker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Circuit {
    /// Whether deliveries are held back now (not sent, logged as such).
    pub open: bool,
    /// Events in a row whose every attempt failed.
    pub failures_in_a_row: u32,
    /// Until when it stays open (RFC 3339), when open.
    pub open_until: Option<String>,
}

/// One delivery attempt.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeliveryAttempt {
    /// Delivery id (the same for every attempt of one event).
    pub delivery: String,
    /// Event.
    pub event: String,
    /// Job it is about.
    pub job_id: Option<i64>,
    /// Attempt number (0: not sent, the circuit was open or the queue full).
    pub attempt: i64,
    /// When.
    pub at: String,
    /// HTTP status answered, if any.
    pub status: Option<i64>,
    /// Whether it was delivered.
    pub ok: bool,
    /// What went wrong.
    pub error: Option<String>,
}

impl Webhook {
    /// The webhook as anyone who may list webhooks sees it.
    fn redacted(&self) -> Webhook {
        Webhook {
            url: crate::egress::redact_url(&self.url),
            ..self.clone()
        }
    }
}

impl WebhookSpec {
    /// Checks the spec, and its target against `policy` (resolving a host
    /// name); the message names the field.
    pub async fn check(&mut self, policy: &Policy) -> Result<(), String> {
        let shown = crate::egress::redact_url(&self.url);
        let url = reqwest::Url::parse(&self.url).map_err(|e| {
            format!(
                "url: '{}': {e}",
                hypersdk_formats::error::display_name(&self.url)
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("url: '{shown}' is not http or https"));
        }
        policy
            .check_url(&url)
            .await
            .map_err(|e| format!("url: '{shown}': {e}"))?;
        if self.secret.len() < 16 {
            return Err("secret: at least 16 characters".into());
        }
        if self.events.is_empty() {
            self.events = EVENTS.iter().map(|e| e.to_string()).collect();
        }
        for e in &self.events {
            if !EVENTS.contains(&e.as_str()) {
                return Err(format!(
                    "events: unknown event '{e}' (one of {})",
                    EVENTS.join(", ")
                ));
            }
        }
        Ok(())
    }
}

impl Store {
    async fn add_webhook(&self, s: WebhookSpec) -> StoreResult<Webhook> {
        self.write(move |c| {
            let at = now();
            let id = c
                .row(
                    "add webhook",
                    "INSERT INTO webhooks (url, events, secret, created_at) VALUES (?1, ?2, ?3, ?4) RETURNING id",
                    args![
                        s.url.as_str(),
                        serde_json::to_string(&s.events).unwrap_or_default(),
                        s.secret.as_str(),
                        at.as_str()
                    ],
                )?
                .ok_or_else(|| StoreError("add webhook: no id".into()))?
                .int(0)?;
            Ok(Webhook {
                id,
                url: s.url,
                events: s.events,
                created_at: at,
                circuit: Circuit::default(),
            })
        })
        .await
    }

    /// Every webhook, with its secret.
    async fn webhooks_with_secrets(&self) -> StoreResult<Vec<(Webhook, String)>> {
        self.read(|c| {
            c.rows(
                "list webhooks",
                "SELECT id, url, events, secret, created_at FROM webhooks ORDER BY id",
                &[],
            )?
            .iter()
            .map(|r| {
                Ok((
                    Webhook {
                        id: r.int(0)?,
                        url: r.text(1)?,
                        events: serde_json::from_str(&r.text(2)?).unwrap_or_default(),
                        created_at: r.text(4)?,
                        circuit: Circuit::default(),
                    },
                    r.text(3)?,
                ))
            })
            .collect()
        })
        .await
    }

    async fn delete_webhook(&self, id: i64) -> StoreResult<bool> {
        self.write(move |c| {
            c.exec(
                "delete webhook",
                "DELETE FROM webhooks WHERE id = ?1",
                args![id],
            )
            .map(|n| n == 1)
        })
        .await
    }

    async fn log_delivery(&self, hook: i64, a: DeliveryAttempt) -> StoreResult<()> {
        self.write(move |c| {
            c.exec(
                "log delivery",
                "INSERT INTO webhook_deliveries (webhook_id, delivery, event, job_id, attempt, at, status, ok, error)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                args![hook, a.delivery, a.event, a.job_id, a.attempt, a.at, a.status, a.ok, a.error],
            )
            .map(drop)
        })
        .await
    }

    /// A webhook's delivery log, oldest first.
    pub async fn deliveries(&self, hook: i64) -> StoreResult<Vec<DeliveryAttempt>> {
        self.read(move |c| {
            c.rows(
                "read deliveries",
                "SELECT delivery, event, job_id, attempt, at, status, ok, error FROM webhook_deliveries
                 WHERE webhook_id = ?1 ORDER BY id",
                args![hook],
            )?
            .iter()
            .map(|r| {
                Ok(DeliveryAttempt {
                    delivery: r.text(0)?,
                    event: r.text(1)?,
                    job_id: r.opt_int(2)?,
                    attempt: r.int(3)?,
                    at: r.text(4)?,
                    status: r.opt_int(5)?,
                    ok: r.flag(6)?,
                    error: r.opt_text(7)?,
                })
            })
            .collect()
        })
        .await
    }
}

/// One event on its way to one endpoint.
#[derive(Debug)]
struct Delivery {
    id: String,
    event: String,
    job_id: Option<i64>,
    body: Vec<u8>,
}

#[derive(Debug)]
struct Endpoint {
    hook: Webhook,
    tx: mpsc::Sender<Delivery>,
}

/// The registered webhooks and their workers.
#[derive(Debug)]
pub struct Webhooks {
    store: Store,
    http: reqwest::Client,
    settings: WebhookSettings,
    endpoints: Mutex<Vec<Endpoint>>,
    /// Which targets may be reached.
    pub policy: Arc<Policy>,
    next_id: AtomicU64,
    last_progress: Mutex<HashMap<i64, Instant>>,
    /// Each webhook's circuit, as its worker last left it.
    circuits: Arc<Mutex<HashMap<i64, Circuit>>>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Webhooks {
    /// Loads the stored webhooks and starts their workers.
    pub async fn start(
        store: Store,
        settings: WebhookSettings,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> anyhow::Result<Arc<Webhooks>> {
        // reqwest's rustls needs a process-wide crypto provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let policy = Arc::new(Policy::new(&settings.allow_private).map_err(anyhow::Error::msg)?);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(settings.timeout_secs.max(1)))
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(GuardedResolver::new(policy.clone()))
            .build()?;
        let w = Arc::new(Webhooks {
            store: store.clone(),
            http,
            settings,
            policy,
            endpoints: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            last_progress: Mutex::new(HashMap::new()),
            circuits: Arc::default(),
            metrics,
        });
        for (hook, secret) in store.webhooks_with_secrets().await? {
            w.spawn(hook, secret);
        }
        if store.shared() {
            // Others may add and remove webhooks: follow the store.
            let weak = Arc::downgrade(&w);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    let Some(w) = weak.upgrade() else { return };
                    if let Err(e) = w.follow_store().await {
                        tracing::warn!(error = %e, "cannot re-read the webhooks");
                    }
                }
            });
        }
        Ok(w)
    }

    /// Starts the webhooks the store has and this process does not, and
    /// drops the ones it no longer has.
    async fn follow_store(self: &Arc<Self>) -> StoreResult<()> {
        let stored = self.store.webhooks_with_secrets().await?;
        let known: Vec<i64> = lock(&self.endpoints).iter().map(|e| e.hook.id).collect();
        for gone in known
            .iter()
            .filter(|id| !stored.iter().any(|(h, _)| h.id == **id))
        {
            lock(&self.endpoints).retain(|e| e.hook.id != *gone);
            lock(&self.circuits).remove(gone);
            self.metrics.forget_webhook(*gone);
        }
        for (hook, secret) in stored {
            if !known.contains(&hook.id) {
                self.spawn(hook, secret);
            }
        }
        Ok(())
    }

    /// Starts the worker of `hook`, unless it has one.
    fn spawn(self: &Arc<Self>, hook: Webhook, secret: String) {
        let mut endpoints = lock(&self.endpoints);
        if endpoints.iter().any(|e| e.hook.id == hook.id) {
            return;
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let worker = Worker {
            hook: hook.clone(),
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes()),
            http: self.http.clone(),
            store: self.store.clone(),
            settings: self.settings.clone(),
            policy: self.policy.clone(),
            circuits: self.circuits.clone(),
            metrics: self.metrics.clone(),
        };
        self.metrics.breaker(hook.id, false);
        tokio::spawn(worker.run(rx));
        endpoints.push(Endpoint { hook, tx });
    }

    /// Registers a webhook.
    /// Registers a webhook (checked with [`WebhookSpec::check`] first); the
    /// answer shows its URL redacted.
    pub async fn add(self: &Arc<Self>, spec: WebhookSpec) -> StoreResult<Webhook> {
        let secret = spec.secret.clone();
        let hook = self.store.add_webhook(spec).await?;
        self.spawn(hook.clone(), secret);
        Ok(hook.redacted())
    }

    /// The registered webhooks, URLs redacted.
    pub fn list(&self) -> Vec<Webhook> {
        let circuits = lock(&self.circuits).clone();
        lock(&self.endpoints)
            .iter()
            .map(|e| Webhook {
                circuit: circuits.get(&e.hook.id).cloned().unwrap_or_default(),
                ..e.hook.redacted()
            })
            .collect()
    }

    /// Removes a webhook (its worker ends after its queue); false if none.
    pub async fn remove(&self, id: i64) -> StoreResult<bool> {
        lock(&self.endpoints).retain(|e| e.hook.id != id);
        lock(&self.circuits).remove(&id);
        self.metrics.forget_webhook(id);
        self.store.delete_webhook(id).await
    }

    /// Sends `event` about job `job_id` with `payload` to every webhook
    /// that asked for it.
    pub fn emit(&self, event: &str, job_id: i64, payload: Value) {
        if event == "job.progress" {
            let mut last = lock(&self.last_progress);
            let now = Instant::now();
            let every = Duration::from_secs(self.settings.progress_every_secs);
            match last.get(&job_id) {
                Some(t) if now.duration_since(*t) < every => return,
                _ => {
                    last.insert(job_id, now);
                }
            }
        } else if event != "job.created" && event != "job.started" {
            lock(&self.last_progress).remove(&job_id);
        }
        let endpoints = lock(&self.endpoints);
        for e in endpoints
            .iter()
            .filter(|e| e.hook.events.iter().any(|x| x == event))
        {
            // Unique over every process sharing the store.
            let id = format!(
                "{}-{}-{}",
                self.store.owner().replace(['#', '.'], "-"),
                chrono::Utc::now().timestamp_millis(),
                self.next_id.fetch_add(1, Ordering::Relaxed)
            );
            let body = serde_json::json!({ "id": id, "event": event, "at": now(), "job": payload });
            let d = Delivery {
                id,
                event: event.to_string(),
                job_id: Some(job_id),
                body: body.to_string().into_bytes(),
            };
            if let Err(mpsc::error::TrySendError::Full(d)) = e.tx.try_send(d) {
                let store = self.store.clone();
                let hook = e.hook.id;
                tokio::spawn(async move {
                    let _ = store
                        .log_delivery(
                            hook,
                            DeliveryAttempt {
                                delivery: d.id,
                                event: d.event,
                                job_id: d.job_id,
                                attempt: 0,
                                at: now(),
                                status: None,
                                ok: false,
                                error: Some(format!(
                                    "dropped: {QUEUE} events already queued for this endpoint"
                                )),
                            },
                        )
                        .await;
                });
            }
        }
    }
}

/// Delivers one endpoint's events in order.
struct Worker {
    hook: Webhook,
    key: ring::hmac::Key,
    http: reqwest::Client,
    store: Store,
    settings: WebhookSettings,
    policy: Arc<Policy>,
    circuits: Arc<Mutex<HashMap<i64, Circuit>>>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Worker {
    /// Records the circuit's state for the API and the metrics.
    fn circuit(&self, failures: u32, open_until: Option<Instant>) {
        let open = open_until.is_some_and(|t| Instant::now() < t);
        let until = open_until.filter(|_| open).map(|t| {
            let left = t.saturating_duration_since(Instant::now());
            (chrono::Utc::now() + chrono::Duration::milliseconds(left.as_millis() as i64))
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        });
        lock(&self.circuits).insert(
            self.hook.id,
            Circuit {
                open,
                failures_in_a_row: failures,
                open_until: until,
            },
        );
        self.metrics.breaker(self.hook.id, open);
    }

    async fn run(self, mut rx: mpsc::Receiver<Delivery>) {
        let mut failures = 0u32;
        let mut open_until: Option<Instant> = None;
        loop {
            // While open, the circuit closes on its own when its time is up.
            let next = match open_until {
                Some(t) if Instant::now() < t => tokio::select! {
                    d = rx.recv() => d,
                    _ = tokio::time::sleep_until(t.into()) => {
                        self.circuit(failures, None);
                        continue;
                    }
                },
                _ => rx.recv().await,
            };
            let Some(d) = next else { break };
            if let Some(t) = open_until {
                if Instant::now() < t {
                    self.metrics.delivery("skipped");
                    self.log(
                        &d,
                        0,
                        None,
                        false,
                        Some(format!(
                        "not sent: the circuit is open after {failures} failed deliveries in a row"
                    )),
                    )
                    .await;
                    continue;
                }
            }
            let mut delivered = false;
            if let Err(e) = self.target_allowed() {
                self.metrics.delivery("skipped");
                self.log(&d, 1, None, false, Some(format!("not sent: {e}")))
                    .await;
                continue;
            }
            for attempt in 1..=self.settings.attempts.max(1) {
                let (status, error) = self.send(&d).await;
                let ok = status.is_some_and(|s| (200..300).contains(&s));
                self.log(&d, attempt, status, ok, error).await;
                if ok {
                    delivered = true;
                    break;
                }
                if attempt < self.settings.attempts {
                    let delay = self
                        .settings
                        .initial_delay_ms
                        .saturating_mul(1 << (attempt - 1).min(20))
                        .min(self.settings.max_delay_ms);
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
            }
            self.metrics
                .delivery(if delivered { "delivered" } else { "failed" });
            if delivered {
                failures = 0;
                open_until = None;
            } else {
                failures += 1;
                if failures >= self.settings.breaker_failures.max(1) {
                    open_until = Some(
                        Instant::now() + Duration::from_secs(self.settings.breaker_cooldown_secs),
                    );
                    tracing::warn!(webhook = self.hook.id, url = %crate::egress::redact_url(&self.hook.url), failures, "webhook circuit open");
                }
            }
            self.circuit(failures, open_until);
        }
    }

    /// A target written as an address is checked here (the resolver sees
    /// only names): the allow-list may have changed since registration.
    fn target_allowed(&self) -> Result<(), String> {
        let url = reqwest::Url::parse(&self.hook.url).map_err(|e| e.to_string())?;
        match url.host_str().and_then(crate::egress::literal) {
            Some(ip) => self.policy.check(ip),
            None => Ok(()),
        }
    }

    async fn send(&self, d: &Delivery) -> (Option<i64>, Option<String>) {
        let tag = ring::hmac::sign(&self.key, &d.body);
        let signature = format!(
            "sha256={}",
            hypersdk_formats::manifest::to_hex(tag.as_ref())
        );
        let r = self
            .http
            .post(&self.hook.url)
            .header("Content-Type", "application/json")
            .header("X-Hypersdk-Event", &d.event)
            .header("X-Hypersdk-Delivery", &d.id)
            .header("X-Hypersdk-Signature", signature)
            .body(d.body.clone())
            .send()
            .await;
        match r {
            Ok(resp) => {
                let s = resp.status();
                let err = (!s.is_success()).then(|| format!("answered HTTP {s}"));
                (Some(i64::from(s.as_u16())), err)
            }
            // Without the URL: it may hold credentials.
            Err(e) => (None, Some(hypersdk_core::error::chain(&e.without_url()))),
        }
    }

    async fn log(
        &self,
        d: &Delivery,
        attempt: u32,
        status: Option<i64>,
        ok: bool,
        error: Option<String>,
    ) {
        let a = DeliveryAttempt {
            delivery: d.id.clone(),
            event: d.event.clone(),
            job_id: d.job_id,
            attempt: i64::from(attempt),
            at: now(),
            status,
            ok,
            error,
        };
        if let Err(e) = self.store.log_delivery(self.hook.id, a).await {
            tracing::warn!(error = %e, "cannot log a webhook delivery");
        }
    }
}
