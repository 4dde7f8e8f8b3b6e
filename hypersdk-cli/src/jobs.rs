//! `hyperctl jobs`: a client of hypervisord (`--daemon URL`).

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context as _};
use clap::{Args, Subcommand};
use futures_util::StreamExt;
use serde_json::Value;

use hypersdk_core::{Phase, ProgressEvent};

use crate::progress::Display;

/// Where the daemon is and how to authenticate.
#[derive(Args, Debug)]
pub struct DaemonArgs {
    /// hypervisord base URL, e.g. http://127.0.0.1:8080.
    #[arg(long, global = true, env = "HYPERSDK_DAEMON")]
    daemon: Option<String>,
    /// File holding an API key for the daemon.
    #[arg(long, global = true, env = "HYPERSDK_API_KEY_FILE")]
    api_key_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct JobsArgs {
    #[command(flatten)]
    daemon: DaemonArgs,
    #[command(subcommand)]
    command: JobsCommand,
}

#[derive(Args, Debug)]
pub struct SchedulesArgs {
    #[command(flatten)]
    daemon: DaemonArgs,
    #[command(subcommand)]
    command: ScheduleCommand,
}

#[derive(Subcommand, Debug)]
enum ScheduleCommand {
    /// Add a schedule from a JSON or YAML file: name, cron, timezone, job.
    Add {
        /// Schedule file (`-` for stdin).
        file: PathBuf,
    },
    /// List schedules.
    List,
    /// A schedule's history (submitted, missed, failed runs).
    Runs {
        /// Schedule id.
        id: i64,
    },
    /// Enable a schedule.
    Enable {
        /// Schedule id.
        id: i64,
    },
    /// Disable a schedule.
    Disable {
        /// Schedule id.
        id: i64,
    },
    /// Run a schedule's jobs now.
    Trigger {
        /// Schedule id.
        id: i64,
    },
    /// Delete a schedule.
    Delete {
        /// Schedule id.
        id: i64,
    },
}

#[derive(Args, Debug)]
pub struct WebhooksArgs {
    #[command(flatten)]
    daemon: DaemonArgs,
    #[command(subcommand)]
    command: WebhookCommand,
}

#[derive(Subcommand, Debug)]
enum WebhookCommand {
    /// Register a webhook.
    Add {
        /// Where to POST events.
        #[arg(long)]
        url: String,
        /// File holding the signing secret (at least 16 characters).
        #[arg(long)]
        secret_file: PathBuf,
        /// Events (comma-separated; default all): job.created, job.started,
        /// job.progress, job.completed, job.failed, job.cancelled.
        #[arg(long, value_delimiter = ',')]
        events: Vec<String>,
    },
    /// List webhooks.
    List,
    /// A webhook's delivery log.
    Deliveries {
        /// Webhook id.
        id: i64,
    },
    /// Remove a webhook.
    Delete {
        /// Webhook id.
        id: i64,
    },
}

#[derive(Args, Debug)]
pub struct ProfilesArgs {
    #[command(flatten)]
    daemon: DaemonArgs,
    #[command(subcommand)]
    command: ProfileCommand,
}

#[derive(Subcommand, Debug)]
enum ProfileCommand {
    /// Create or replace a profile from a JSON or YAML file of job options.
    Put {
        /// Profile name.
        name: String,
        /// Options file (`-` for stdin).
        file: PathBuf,
    },
    /// List profiles.
    List,
    /// Show one profile.
    Show {
        /// Profile name.
        name: String,
    },
    /// Delete a profile.
    Delete {
        /// Profile name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum JobsCommand {
    /// Submit a job (or a list of jobs) from a JSON or YAML file (`-` for
    /// stdin), or one job from flags.
    Submit {
        /// Job file (JSON or YAML; a list submits a batch).
        file: Option<PathBuf>,
        /// VM to export (instead of a file).
        #[arg(long, conflicts_with = "file")]
        vm: Option<String>,
        /// Provider name in the daemon's configuration.
        #[arg(long, requires = "vm")]
        provider: Option<String>,
        /// A profile on the daemon whose options fill in the rest.
        #[arg(long, requires = "vm")]
        profile: Option<String>,
        /// Directory below the daemon's output root (or the sink's prefix).
        #[arg(long, requires = "vm")]
        output: Option<String>,
        /// A named object-store sink of the daemon's configuration.
        #[arg(long, requires = "vm", value_name = "NAME")]
        sink: Option<String>,
        /// critical, high, normal or low.
        #[arg(long, requires = "vm")]
        priority: Option<String>,
        /// Encrypt with this named key of the daemon's encryption_keys.
        #[arg(long, requires = "vm", value_name = "NAME")]
        encryption_key: Option<String>,
        /// The export options (as `hyperctl export`'s; key and passphrase
        /// files are paths on the daemon's host, below its key_dirs).
        #[command(flatten)]
        options: Box<crate::settings::ExportFlags>,
        /// Follow the (first) job's progress until it ends.
        #[arg(long)]
        watch: bool,
        /// Print the daemon's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List jobs, newest first.
    List {
        /// queued, running, succeeded, failed or cancelled.
        #[arg(long)]
        status: Option<String>,
        /// Only this provider's jobs.
        #[arg(long)]
        provider: Option<String>,
        /// Only this VM's jobs.
        #[arg(long)]
        vm: Option<String>,
        /// Page size.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Page start.
        #[arg(long, default_value_t = 0)]
        offset: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one job.
    Show {
        /// Job id.
        id: i64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Follow a job's progress (bars on a terminal) until it ends; the exit
    /// code says whether it succeeded.
    Watch {
        /// Job id.
        id: i64,
    },
    /// Cancel a job.
    Cancel {
        /// Job id.
        id: i64,
    },
    /// Retry a failed job whose cause may pass (full disk, network) or a
    /// cancelled one: it continues from its checkpoint.
    Retry {
        /// Job id.
        id: i64,
    },
    /// Delete a job that is over, and the partial export it kept (a
    /// published export stays).
    Delete {
        /// Job id.
        id: i64,
    },
    /// Print a job's log.
    Logs {
        /// Job id.
        id: i64,
    },
}

/// A connection to the daemon.
struct Client {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl Client {
    fn new(args: &DaemonArgs) -> anyhow::Result<Client> {
        let base = args
            .daemon
            .clone()
            .ok_or_else(|| anyhow!("no daemon given: --daemon URL or HYPERSDK_DAEMON"))?;
        let key = match &args.api_key_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .with_context(|| format!("cannot read API key file {}", f.display()))?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        // reqwest's rustls needs a process-wide crypto provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_string(),
            key,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(k) = &self.key {
            r = r.header("X-API-Key", k);
        }
        r
    }

    /// Sends; returns the answer's body, or the daemon's error message.
    async fn send_empty(&self, req: reqwest::RequestBuilder) -> anyhow::Result<String> {
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the daemon at {}", self.base))?;
        let status = resp.status();
        let text = resp.text().await.context("reading the daemon's answer")?;
        if !status.is_success() {
            let msg = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(String::from))
                .unwrap_or(text);
            bail!("the daemon answered {status}: {msg}");
        }
        Ok(text)
    }

    /// Sends and returns the JSON answer, or the daemon's error message.
    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let text = self.send_empty(req).await?;
        serde_json::from_str(&text).context("the daemon's answer is not JSON")
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.request(reqwest::Method::GET, path)).await
    }
}

/// A JSON or YAML file (`-`: stdin) as a request body and its content type.
fn file_body(f: &std::path::Path) -> anyhow::Result<(Vec<u8>, &'static str)> {
    let mut text = Vec::new();
    if f.as_os_str() == "-" {
        std::io::stdin().read_to_end(&mut text)?;
    } else {
        text = std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
    }
    let first = text.iter().find(|b| !b.is_ascii_whitespace()).copied();
    let kind = if matches!(first, Some(b'{') | Some(b'[')) {
        "application/json"
    } else {
        "application/yaml"
    };
    Ok((text, kind))
}

fn print_json(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub async fn schedules(args: SchedulesArgs) -> anyhow::Result<()> {
    let c = Client::new(&args.daemon)?;
    let post = |path: String| c.request(reqwest::Method::POST, &path);
    let v = match args.command {
        ScheduleCommand::Add { file } => {
            let (body, kind) = file_body(&file)?;
            c.send(
                post("/api/v1/schedules".into())
                    .header("Content-Type", kind)
                    .body(body),
            )
            .await?
        }
        ScheduleCommand::List => c.get("/api/v1/schedules").await?,
        ScheduleCommand::Runs { id } => c.get(&format!("/api/v1/schedules/{id}/runs")).await?,
        ScheduleCommand::Enable { id } => {
            c.send(post(format!("/api/v1/schedules/{id}/enable")))
                .await?
        }
        ScheduleCommand::Disable { id } => {
            c.send(post(format!("/api/v1/schedules/{id}/disable")))
                .await?
        }
        ScheduleCommand::Trigger { id } => {
            c.send(post(format!("/api/v1/schedules/{id}/trigger")))
                .await?
        }
        ScheduleCommand::Delete { id } => {
            c.send_empty(c.request(reqwest::Method::DELETE, &format!("/api/v1/schedules/{id}")))
                .await?;
            println!("schedule {id} deleted");
            return Ok(());
        }
    };
    print_json(&v)
}

pub async fn webhooks(args: WebhooksArgs) -> anyhow::Result<()> {
    let c = Client::new(&args.daemon)?;
    let v = match args.command {
        WebhookCommand::Add {
            url,
            secret_file,
            events,
        } => {
            let secret = std::fs::read_to_string(&secret_file)
                .with_context(|| format!("cannot read secret file {}", secret_file.display()))?;
            let body = serde_json::json!({ "url": url, "secret": secret.trim(), "events": events });
            c.send(
                c.request(reqwest::Method::POST, "/api/v1/webhooks")
                    .header("Content-Type", "application/json")
                    .body(body.to_string()),
            )
            .await?
        }
        WebhookCommand::List => c.get("/api/v1/webhooks").await?,
        WebhookCommand::Deliveries { id } => {
            c.get(&format!("/api/v1/webhooks/{id}/deliveries")).await?
        }
        WebhookCommand::Delete { id } => {
            c.send_empty(c.request(reqwest::Method::DELETE, &format!("/api/v1/webhooks/{id}")))
                .await?;
            println!("webhook {id} deleted");
            return Ok(());
        }
    };
    print_json(&v)
}

pub async fn profiles(args: ProfilesArgs) -> anyhow::Result<()> {
    let c = Client::new(&args.daemon)?;
    let v = match args.command {
        ProfileCommand::Put { name, file } => {
            let (body, kind) = file_body(&file)?;
            c.send(
                c.request(reqwest::Method::PUT, &format!("/api/v1/profiles/{name}"))
                    .header("Content-Type", kind)
                    .body(body),
            )
            .await?
        }
        ProfileCommand::List => c.get("/api/v1/profiles").await?,
        ProfileCommand::Show { name } => c.get(&format!("/api/v1/profiles/{name}")).await?,
        ProfileCommand::Delete { name } => {
            c.send_empty(c.request(reqwest::Method::DELETE, &format!("/api/v1/profiles/{name}")))
                .await?;
            println!("profile {name} deleted");
            return Ok(());
        }
    };
    print_json(&v)
}

pub async fn run(args: JobsArgs) -> anyhow::Result<()> {
    let c = Client::new(&args.daemon)?;
    match args.command {
        JobsCommand::Submit {
            file,
            vm,
            provider,
            profile,
            output,
            sink,
            priority,
            encryption_key,
            options,
            watch,
            json,
        } => {
            let settings = options.settings();
            let (body, content_type) = match (file, vm) {
                (Some(_), _) if settings != hypersdk::ExportSettings::default() => {
                    bail!("export options go in the job file, not on the command line, with a job file")
                }
                (Some(f), _) => file_body(&f)?,
                (None, Some(vm)) => {
                    let mut job = serde_json::to_value(&settings)?;
                    job["vm"] = Value::String(vm);
                    if provider.is_none() && profile.is_none() {
                        bail!("--provider (or a --profile that names one) is needed with --vm");
                    }
                    for (k, v) in [
                        ("provider", provider),
                        ("profile", profile),
                        ("output", output),
                        ("sink", sink),
                        ("priority", priority),
                        ("encryption_key", encryption_key),
                    ] {
                        if let Some(v) = v {
                            job[k] = Value::String(v);
                        }
                    }
                    (job.to_string().into_bytes(), "application/json")
                }
                (None, None) => bail!("give a job file, or --vm and --provider"),
            };
            let answer = c
                .send(
                    c.request(reqwest::Method::POST, "/api/v1/jobs")
                        .header("Content-Type", content_type)
                        .body(body),
                )
                .await?;
            let jobs = answer["jobs"].as_array().cloned().unwrap_or_default();
            if json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
            } else {
                for j in &jobs {
                    println!(
                        "job {} queued: {} of provider {}",
                        j["id"], j["spec"]["vm"], j["spec"]["provider"]
                    );
                }
            }
            if watch {
                let id = jobs
                    .first()
                    .and_then(|j| j["id"].as_i64())
                    .ok_or_else(|| anyhow!("the daemon returned no job"))?;
                return watch_job(&c, id).await;
            }
            Ok(())
        }
        JobsCommand::List {
            status,
            provider,
            vm,
            limit,
            offset,
            json,
        } => {
            let mut url = reqwest::Url::parse(&format!("{}/api/v1/jobs", c.base))
                .with_context(|| format!("bad daemon URL {}", c.base))?;
            {
                let mut q = url.query_pairs_mut();
                q.append_pair("limit", &limit.to_string());
                q.append_pair("offset", &offset.to_string());
                for (k, v) in [("status", status), ("provider", provider), ("vm", vm)] {
                    if let Some(v) = v {
                        q.append_pair(k, &v);
                    }
                }
            }
            let path = format!("/api/v1/jobs?{}", url.query().unwrap_or(""));
            let list = c.get(&path).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            println!(
                "{:>6}  {:<10}  {:<8}  {:<12}  VM",
                "ID", "STATUS", "PRIORITY", "PROVIDER"
            );
            for j in list["jobs"].as_array().into_iter().flatten() {
                println!(
                    "{:>6}  {:<10}  {:<8}  {:<12}  {}",
                    j["id"],
                    j["status"].as_str().unwrap_or("?"),
                    j["spec"]["priority"].as_str().unwrap_or("?"),
                    j["spec"]["provider"].as_str().unwrap_or("?"),
                    j["spec"]["vm"].as_str().unwrap_or("?"),
                );
            }
            println!(
                "{} of {} jobs",
                list["jobs"].as_array().map_or(0, Vec::len),
                list["total"]
            );
            Ok(())
        }
        JobsCommand::Show { id, json } => {
            let j = c.get(&format!("/api/v1/jobs/{id}")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&j)?);
                return Ok(());
            }
            println!("job {}: {}", j["id"], j["status"].as_str().unwrap_or("?"));
            println!(
                "  vm {} of provider {}, submitted by {} at {}",
                j["spec"]["vm"], j["spec"]["provider"], j["submitted_by"], j["created_at"]
            );
            if let Some(p) = j["progress"].as_object() {
                println!(
                    "  {} {}: {}/{} bytes",
                    p["phase"], p["disk"], p["bytes_done"], p["bytes_total"]
                );
            }
            if let Some(loc) = j["result"]["location"].as_str() {
                println!("  exported to {loc}");
            }
            if let Some(e) = j["error"].as_str() {
                println!("  error: {e}");
            }
            if let Some(p) = j["partial"].as_object() {
                println!(
                    "  partial export kept for a retry: {} ({})",
                    p["path"].as_str().unwrap_or("?"),
                    crate::human_bytes(p["bytes"].as_u64().unwrap_or(0))
                );
            }
            if j["retryable"].as_bool() == Some(true) {
                println!("  retry it with: hyperctl jobs retry {id}");
            }
            Ok(())
        }
        JobsCommand::Watch { id } => watch_job(&c, id).await,
        JobsCommand::Cancel { id } => {
            let j = c
                .send(c.request(reqwest::Method::POST, &format!("/api/v1/jobs/{id}/cancel")))
                .await?;
            println!("job {id}: {}", j["status"].as_str().unwrap_or("?"));
            Ok(())
        }
        JobsCommand::Retry { id } => {
            let j = c
                .send(c.request(reqwest::Method::POST, &format!("/api/v1/jobs/{id}/retry")))
                .await?;
            println!("job {id}: {}", j["status"].as_str().unwrap_or("?"));
            Ok(())
        }
        JobsCommand::Delete { id } => {
            c.send_empty(c.request(reqwest::Method::DELETE, &format!("/api/v1/jobs/{id}")))
                .await?;
            println!("job {id}: deleted");
            Ok(())
        }
        JobsCommand::Logs { id } => {
            let events = c.get(&format!("/api/v1/jobs/{id}/logs")).await?;
            for e in events.as_array().into_iter().flatten() {
                let status = e["status"]
                    .as_str()
                    .map(|s| format!("[{s}] "))
                    .unwrap_or_default();
                println!(
                    "{} {status}{}",
                    e["at"].as_str().unwrap_or(""),
                    e["message"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
    }
}

/// A daemon progress record as the CLI's progress event.
fn event_of(p: &Value) -> Option<ProgressEvent> {
    let phase = match p["phase"].as_str()? {
        "disk" => Phase::Disk,
        "diskdone" => Phase::DiskDone,
        "packaging" => Phase::Packaging,
        "verify" => Phase::Verify,
        "done" => Phase::Done,
        _ => return None,
    };
    Some(ProgressEvent {
        phase,
        disk_index: p["disk_index"].as_u64().unwrap_or(0) as usize,
        disk: p["disk"].as_str().unwrap_or("").to_string(),
        bytes_done: p["bytes_done"].as_u64().unwrap_or(0),
        bytes_total: p["bytes_total"].as_u64().unwrap_or(0),
        bytes_resumed: p["bytes_resumed"].as_u64().unwrap_or(0),
        rate_bps: p["rate_bps"].as_f64().unwrap_or(0.0),
        eta_secs: p["eta_secs"].as_f64(),
    })
}

/// Follows job `id`'s Server-Sent Events until its end event; fails unless
/// it succeeded.
async fn watch_job(c: &Client, id: i64) -> anyhow::Result<()> {
    let resp = c
        .request(reqwest::Method::GET, &format!("/api/v1/jobs/{id}/progress"))
        .send()
        .await
        .with_context(|| format!("cannot reach the daemon at {}", c.base))?;
    if !resp.status().is_success() {
        // The error body, through the common path.
        c.get(&format!("/api/v1/jobs/{id}")).await?;
        bail!(
            "the daemon answered {} to the progress stream",
            resp.status()
        );
    }
    let display = Arc::new(Display::new(std::io::stderr().is_terminal()));
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    let mut event = String::new();
    while let Some(chunk) = body.next().await {
        buf.push_str(&String::from_utf8_lossy(
            &chunk.context("the progress stream broke")?,
        ));
        while let Some(nl) = buf.find('\n') {
            let line = buf[..nl].trim_end_matches('\r').to_string();
            buf.drain(..=nl);
            if let Some(e) = line.strip_prefix("event:") {
                event = e.trim().to_string();
            } else if let Some(d) = line.strip_prefix("data:") {
                let v: Value = serde_json::from_str(d.trim()).unwrap_or(Value::Null);
                if event == "end" {
                    display.finish();
                    let job = c.get(&format!("/api/v1/jobs/{id}")).await?;
                    let status = job["status"].as_str().unwrap_or("?").to_string();
                    match status.as_str() {
                        "succeeded" => {
                            println!(
                                "job {id} succeeded: {}",
                                job["result"]["location"].as_str().unwrap_or("")
                            );
                            return Ok(());
                        }
                        _ => bail!(
                            "job {id} {status}{}",
                            job["error"]
                                .as_str()
                                .map(|e| format!(": {e}"))
                                .unwrap_or_default()
                        ),
                    }
                }
                if let Some(e) = event_of(&v) {
                    display.event(&e);
                }
            }
        }
    }
    display.finish();
    bail!("the progress stream of job {id} ended without its end event")
}
