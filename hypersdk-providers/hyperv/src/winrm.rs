//! A small WS-Management client for the Windows Remote Shell: open a shell,
//! run `powershell -EncodedCommand`, receive its output, close the shell
//! ([MS-WSMV] 3.1.4: Create, Command, Receive, Signal, Delete). Sign-in is
//! HTTP Basic or NTLM (raw NTLMSSP tokens under `Negotiate`, once per
//! connection as HTTP.sys keeps it). Over plain HTTP only Basic is offered:
//! NTLM there needs WinRM's message encryption, which this client does not
//! implement, so HTTP with NTLM is refused before anything is sent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use hypersdk_core::tls::{client_config, Seen, TlsMode};
use hypersdk_core::{Error, Result};

/// Largest SOAP answer read.
const MAX_ANSWER: usize = 16 << 20;
/// Largest output of one script.
const MAX_OUTPUT: usize = 64 << 20;

const SHELL: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell";
const TRANSFER: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer";

pub(crate) fn provider_err(message: String, retryable: bool) -> Error {
    Error::Provider {
        provider: "hyperv".into(),
        message,
        retryable,
        source: None,
    }
}

/// How the client signs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Auth {
    Basic,
    Ntlm,
}

/// Account for WinRM (and by default SMB).
#[derive(Clone)]
pub(crate) struct Account {
    pub(crate) user: String,
    pub(crate) domain: String,
    pub(crate) password: String,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("user", &self.user)
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

impl Account {
    /// `DOMAIN\user`, `user@domain` or `user`.
    pub(crate) fn parse(user: &str, password: String) -> Account {
        let (domain, user) = match user.split_once('\\') {
            Some((d, u)) => (d.to_string(), u.to_string()),
            None => match user.split_once('@') {
                Some((u, d)) => (d.to_string(), u.to_string()),
                None => (String::new(), user.to_string()),
            },
        };
        Account {
            user,
            domain,
            password,
        }
    }

    pub(crate) fn display(&self) -> String {
        if self.domain.is_empty() {
            self.user.clone()
        } else {
            format!("{}\\{}", self.domain, self.user)
        }
    }
}

/// The WinRM endpoint of one host, over one HTTP/1.1 connection kept for
/// the session (made again when it closes).
#[derive(Debug, Clone)]
pub(crate) struct WinRm {
    conn: Arc<tokio::sync::Mutex<Conn>>,
    tls: Option<Arc<rustls::ClientConfig>>,
    server: String,
    port: u16,
    path: String,
    url: String,
    host: String,
    auth: Auth,
    account: Account,
    timeout: Duration,
    seen: Arc<Mutex<Seen>>,
}

/// The connection and whether NTLM signed it in.
#[derive(Default)]
struct Conn {
    sender: Option<hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>>,
    ntlm_ready: bool,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("open", &self.sender.is_some())
            .field("ntlm_ready", &self.ntlm_ready)
            .finish()
    }
}

/// An answer, read whole (at most 16 MiB).
struct Answer {
    status: u16,
    challenges: Vec<String>,
    body: String,
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// What a script printed and how it ended.
#[derive(Debug)]
pub(crate) struct Output {
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    pub(crate) code: i64,
}

impl WinRm {
    pub(crate) fn new(
        url: &reqwest::Url,
        auth: Auth,
        account: Account,
        tls: &TlsMode,
        ca: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<WinRm> {
        let server = url
            .host_str()
            .unwrap_or_default()
            .trim_matches(['[', ']'])
            .to_string();
        let port = url.port_or_known_default().unwrap_or(5986);
        let host = format!("{server}:{port}");
        let (config, seen) = client_config(tls, ca)
            .map_err(|e| Error::InvalidArgument(format!("hyperv TLS: {e}")))?;
        Ok(WinRm {
            conn: Arc::new(tokio::sync::Mutex::new(Conn::default())),
            tls: (url.scheme() == "https").then(|| Arc::new(config)),
            server,
            port,
            path: url.path().to_string(),
            url: url.to_string(),
            host,
            auth,
            account,
            timeout,
            seen,
        })
    }

    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    /// Runs a PowerShell script; its output, whatever its exit code.
    pub(crate) async fn powershell(&self, script: &str) -> Result<Output> {
        let utf16: Vec<u8> = script.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let encoded = base64::engine::general_purpose::STANDARD.encode(utf16);
        let shell = self.open_shell().await?;
        let result = self
            .run(
                &shell,
                &format!("powershell -NoProfile -NonInteractive -EncodedCommand {encoded}"),
            )
            .await;
        if let Err(e) = self.delete_shell(&shell).await {
            tracing::debug!(error = %e, "closing the remote shell failed");
        }
        result
    }

    async fn run(&self, shell: &str, command: &str) -> Result<Output> {
        let body =
            format!("<rsp:CommandLine><rsp:Command>{command}</rsp:Command></rsp:CommandLine>");
        let options = r#"<w:OptionSet><w:Option Name="WINRS_CONSOLEMODE_STDIN">TRUE</w:Option><w:Option Name="WINRS_SKIP_CMD_SHELL">TRUE</w:Option></w:OptionSet>"#;
        let answer = self
            .call(&format!("{SHELL}/Command"), Some(shell), options, &body)
            .await?;
        let id = answer
            .find("Body")
            .and_then(|b| b.find("CommandResponse"))
            .and_then(|c| c.find_text("CommandId"))
            .map(str::to_string)
            .ok_or_else(|| self.malformed("a CommandResponse without CommandId"))?;
        let (mut out, mut err, mut code) = (Vec::new(), Vec::new(), None);
        while code.is_none() {
            let body = format!(
                r#"<rsp:Receive><rsp:DesiredStream CommandId="{id}">stdout stderr</rsp:DesiredStream></rsp:Receive>"#
            );
            let answer = match self
                .call(&format!("{SHELL}/Receive"), Some(shell), "", &body)
                .await
            {
                Ok(a) => a,
                // WinRM answers a Receive with nothing new after its
                // OperationTimeout with the fault w:TimedOut: ask again.
                Err(Error::Provider { message, .. }) if message.contains("2150858793") => continue,
                Err(e) => return Err(e),
            };
            let Some(r) = answer.find("Body").and_then(|b| b.find("ReceiveResponse")) else {
                return Err(self.malformed("a Receive answer without ReceiveResponse"));
            };
            for s in r.find_all("Stream") {
                let data = base64::engine::general_purpose::STANDARD
                    .decode(s.text.trim())
                    .map_err(|_| self.malformed("an output stream that is not base64"))?;
                let into = if s.attr("Name") == Some("stderr") {
                    &mut err
                } else {
                    &mut out
                };
                if into.len() + data.len() > MAX_OUTPUT {
                    return Err(self.malformed("more than 64 MiB of output from one script"));
                }
                into.extend_from_slice(&data);
            }
            if let Some(state) = r.find("CommandState") {
                if state.attr("State").is_some_and(|s| s.ends_with("/Done")) {
                    code = Some(
                        state
                            .find_text("ExitCode")
                            .and_then(|c| c.parse::<i64>().ok())
                            .unwrap_or(0),
                    );
                }
            }
        }
        let signal = format!(
            r#"<rsp:Signal CommandId="{id}"><rsp:Code>{SHELL}/signal/terminate</rsp:Code></rsp:Signal>"#
        );
        let _ = self
            .call(&format!("{SHELL}/Signal"), Some(shell), "", &signal)
            .await;
        Ok(Output {
            stdout: String::from_utf8_lossy(&out).into_owned(),
            stderr: clixml_text(&String::from_utf8_lossy(&err)),
            code: code.unwrap_or(0),
        })
    }

    async fn open_shell(&self) -> Result<String> {
        let options = r#"<w:OptionSet><w:Option Name="WINRS_NOPROFILE">TRUE</w:Option><w:Option Name="WINRS_CODEPAGE">65001</w:Option></w:OptionSet>"#;
        let body = "<rsp:Shell><rsp:InputStreams>stdin</rsp:InputStreams><rsp:OutputStreams>stdout stderr</rsp:OutputStreams></rsp:Shell>";
        let answer = self
            .call(&format!("{TRANSFER}/Create"), None, options, body)
            .await?;
        answer
            .find("Body")
            .and_then(|b| b.find("ResourceCreated"))
            .and_then(|r| r.find("ReferenceParameters"))
            .and_then(|r| r.find("SelectorSet"))
            .and_then(|s| {
                s.find_all("Selector")
                    .find(|s| s.attr("Name") == Some("ShellId"))
            })
            .map(|s| s.text.trim().to_string())
            .ok_or_else(|| self.malformed("a Create answer without ShellId"))
    }

    async fn delete_shell(&self, shell: &str) -> Result<()> {
        self.call(&format!("{TRANSFER}/Delete"), Some(shell), "", "")
            .await
            .map(|_| ())
    }

    fn malformed(&self, what: &str) -> Error {
        provider_err(format!("WinRM at {} answered {what}", self.host), false)
    }

    /// One WS-Management request; the parsed answer, or its fault.
    async fn call(
        &self,
        action: &str,
        shell: Option<&str>,
        options: &str,
        body: &str,
    ) -> Result<hypersdk_formats::xml::Element> {
        let selector = shell
            .map(|s| {
                format!(
                    r#"<w:SelectorSet><w:Selector Name="ShellId">{}</w:Selector></w:SelectorSet>"#,
                    escape(s)
                )
            })
            .unwrap_or_default();
        let envelope = format!(
            r#"<?xml version="1.0" encoding="utf-8"?>
<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope" xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" xmlns:p="http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd" xmlns:rsp="{SHELL}">
<env:Header><a:To>{to}</a:To><a:ReplyTo><a:Address mustUnderstand="true">http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:Address></a:ReplyTo><w:MaxEnvelopeSize mustUnderstand="true">512000</w:MaxEnvelopeSize><a:MessageID>uuid:{id}</a:MessageID><w:Locale mustUnderstand="false" xml:lang="en-US"/><p:DataLocale mustUnderstand="false" xml:lang="en-US"/><w:OperationTimeout>PT60S</w:OperationTimeout><w:ResourceURI mustUnderstand="true">{SHELL}/cmd</w:ResourceURI><a:Action mustUnderstand="true">{action}</a:Action>{selector}{options}</env:Header>
<env:Body>{body}</env:Body></env:Envelope>"#,
            to = escape(&self.url),
            id = message_id(),
        );
        let (status, text) = self.send(envelope).await?;
        let doc = hypersdk_formats::xml::parse(&text).map_err(|e| {
            provider_err(
                format!(
                    "WinRM at {} answered HTTP {status} with no SOAP envelope: {e}",
                    self.host
                ),
                false,
            )
        })?;
        if let Some(f) = doc.find("Body").and_then(|b| b.find("Fault")) {
            let detail = f.find("Detail").and_then(|d| d.find("WSManFault"));
            let code = detail.and_then(|d| d.attr("Code")).unwrap_or("");
            let message = detail
                .and_then(|d| d.find_text("Message"))
                .or_else(|| f.find("Reason").and_then(|r| r.find_text("Text")))
                .unwrap_or("(no message)");
            return Err(provider_err(
                format!(
                    "WinRM at {} refused the request: {message} (fault {code})",
                    self.host
                ),
                false,
            ));
        }
        if status != 200 {
            return Err(provider_err(
                format!("WinRM at {} answered HTTP {status}", self.host),
                status >= 500,
            ));
        }
        Ok(doc)
    }

    /// Posts the envelope, signing in as configured; (status, body).
    async fn send(&self, envelope: String) -> Result<(u16, String)> {
        let mut conn = self.conn.lock().await;
        let answer = match self.auth {
            Auth::Basic => {
                let basic = self.basic();
                self.exchange(&mut conn, &envelope, Some(&basic)).await?
            }
            Auth::Ntlm => {
                let mut answer = None;
                if conn.ntlm_ready && conn.sender.as_ref().is_some_and(|s| !s.is_closed()) {
                    let a = self.exchange(&mut conn, &envelope, None).await?;
                    if a.status != 401 {
                        answer = Some(a);
                    }
                }
                match answer {
                    Some(a) => a,
                    None => {
                        conn.ntlm_ready = false;
                        let a = self.ntlm_sign_in(&mut conn, &envelope).await?;
                        conn.ntlm_ready = a.status != 401;
                        a
                    }
                }
            }
        };
        if answer.status == 401 {
            return Err(self.refused(match self.auth {
                Auth::Basic => "the user name or password was refused (Basic sign-in; is Basic allowed in WinRM's service settings?)",
                Auth::Ntlm => "the user name or password was refused (NTLM)",
            }));
        }
        Ok((answer.status, answer.body))
    }

    fn basic(&self) -> String {
        let who = if self.account.domain.is_empty() {
            self.account.user.clone()
        } else {
            format!("{}\\{}", self.account.domain, self.account.user)
        };
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{who}:{}", self.account.password))
        )
    }

    /// The NTLM exchange on the held connection, the envelope sent with
    /// the last message.
    async fn ntlm_sign_in(&self, conn: &mut Conn, envelope: &str) -> Result<Answer> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut ntlm = smb2::auth::NtlmAuthenticator::new(smb2::auth::NtlmCredentials {
            username: self.account.user.clone(),
            password: self.account.password.clone(),
            domain: self.account.domain.clone(),
        });
        // A fresh connection for the exchange: one the server may be
        // about to close cannot carry it.
        conn.sender = None;
        let negotiate = format!("Negotiate {}", b64.encode(ntlm.negotiate()));
        let first = self.exchange(conn, "", Some(&negotiate)).await?;
        let challenge = first.challenges.iter().find_map(|v| {
            v.strip_prefix("Negotiate ")
                .or_else(|| v.strip_prefix("NTLM "))
                .and_then(|c| b64.decode(c.trim()).ok())
        });
        let Some(challenge) = challenge else {
            return Err(self.refused("it does not offer NTLM (Negotiate) sign-in"));
        };
        let answer = ntlm
            .authenticate(&challenge)
            .map_err(|e| self.refused(&format!("its NTLM challenge cannot be answered: {e}")))?;
        if conn.sender.as_ref().is_none_or(|s| s.is_closed()) {
            return Err(provider_err(
                format!(
                    "WinRM at {} closed the connection in the middle of the NTLM sign-in",
                    self.host
                ),
                true,
            ));
        }
        let authenticate = format!("Negotiate {}", b64.encode(answer));
        self.exchange(conn, envelope, Some(&authenticate)).await
    }

    fn refused(&self, why: &str) -> Error {
        Error::Auth {
            provider: "hyperv".into(),
            target: format!("WinRM at {}", self.host),
            user: self.account.display(),
            message: why.to_string(),
        }
    }

    /// Opens the connection (TCP, then TLS for https).
    async fn connect(
        &self,
    ) -> Result<hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>> {
        let tcp = tokio::time::timeout(
            Duration::from_secs(20),
            tokio::net::TcpStream::connect((self.server.as_str(), self.port)),
        )
        .await
        .map_err(|_| {
            provider_err(
                format!("cannot reach WinRM at {}: no answer within 20 s", self.host),
                true,
            )
        })?
        .map_err(|e| provider_err(format!("cannot reach WinRM at {}: {e}", self.host), true))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = match &self.tls {
            Some(config) => {
                let name =
                    rustls::pki_types::ServerName::try_from(self.server.clone()).map_err(|e| {
                        Error::InvalidArgument(format!(
                            "hyperv settings: url host {}: {e}",
                            self.server
                        ))
                    })?;
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| self.transport_error(&e.to_string()))?;
                Box::new(tls)
            }
            None => Box::new(tcp),
        };
        let (sender, driver) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
                .await
                .map_err(|e| self.transport_error(&hypersdk_core::error::chain(&e)))?;
        tokio::spawn(async move {
            let _ = driver.await;
        });
        Ok(sender)
    }

    /// One request on the held connection (made first if there is none,
    /// or it closed).
    async fn exchange(&self, conn: &mut Conn, body: &str, auth: Option<&str>) -> Result<Answer> {
        use http_body_util::BodyExt as _;
        if conn.sender.as_ref().is_none_or(|s| s.is_closed()) {
            conn.sender = Some(self.connect().await?);
            conn.ntlm_ready = false;
        }
        let Some(sender) = conn.sender.as_mut() else {
            return Err(Error::Internal("no WinRM connection".into()));
        };
        let mut req = hyper::Request::post(&self.path)
            .header("Host", &self.host)
            .header("Content-Type", "application/soap+xml;charset=UTF-8")
            .header("Content-Length", body.len());
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let req = req
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body.to_string(),
            )))
            .map_err(|e| Error::Internal(format!("WinRM request: {e}")))?;
        let call = async {
            sender
                .ready()
                .await
                .map_err(|e| self.transport_error(&hypersdk_core::error::chain(&e)))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| self.transport_error(&hypersdk_core::error::chain(&e)))?;
            let status = resp.status().as_u16();
            let challenges = resp
                .headers()
                .get_all("www-authenticate")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::to_string)
                .collect();
            let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        self.malformed("more than 16 MiB in one answer")
                    } else {
                        self.transport_error(&e.to_string())
                    }
                })?
                .to_bytes();
            Ok::<_, Error>(Answer {
                status,
                challenges,
                body: String::from_utf8_lossy(&body).into_owned(),
            })
        };
        let answer = match tokio::time::timeout(self.timeout, call).await {
            Ok(a) => a,
            Err(_) => Err(provider_err(
                format!(
                    "WinRM at {} did not answer within {} s",
                    self.host,
                    self.timeout.as_secs()
                ),
                true,
            )),
        };
        if answer.is_err() {
            conn.sender = None;
            conn.ntlm_ready = false;
        }
        answer
    }

    fn transport_error(&self, chain: &str) -> Error {
        let seen = std::mem::take(&mut *self.seen.lock().unwrap_or_else(|p| p.into_inner()));
        if let (Some(tp), Some(reason)) = (seen.thumbprint_sha256, seen.reason) {
            return provider_err(
                format!(
                    "the TLS certificate of WinRM at {} is not trusted ({reason}); its SHA-256 fingerprint is {tp}: check it on the host and pin it with fingerprint, or trust its CA with ca_file",
                    self.host
                ),
                false,
            );
        }
        provider_err(
            format!("cannot reach WinRM at {}: {chain}", self.host),
            true,
        )
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn message_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let x = (t as u64) ^ (n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    format!(
        "{:08X}-{:04X}-4{:03X}-8{:03X}-{:012X}",
        (x >> 32) as u32,
        (x >> 16) as u16,
        (x & 0xfff) as u16,
        (n & 0xfff) as u16,
        (t as u64) & 0xffff_ffff_ffff
    )
}

/// The text of PowerShell's CLIXML error stream (`#< CLIXML` then
/// `<Objs><S S="Error">…</S></Objs>`), or the text as it is.
pub(crate) fn clixml_text(stderr: &str) -> String {
    let Some(xml) = stderr.trim_start().strip_prefix("#< CLIXML") else {
        return stderr.trim().to_string();
    };
    let Ok(doc) = hypersdk_formats::xml::parse(xml.trim()) else {
        return stderr.trim().to_string();
    };
    let mut text = String::new();
    for s in doc.find_all("S") {
        if s.attr("S") == Some("Error") {
            text.push_str(&s.text);
        }
    }
    text.replace("_x000D__x000A_", "\n")
        .replace("_x000A_", "\n")
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clixml_errors_read_as_text() {
        let e = "#< CLIXML\r\n<Objs Version=\"1.1.0.1\" xmlns=\"http://schemas.microsoft.com/powershell/2004/04\"><S S=\"Error\">Get-VM : Hyper-V was unable to find a virtual machine with name \"x\"._x000D__x000A_</S><S S=\"Error\">    + CategoryInfo : InvalidArgument_x000D__x000A_</S></Objs>";
        assert_eq!(
            clixml_text(e),
            "Get-VM : Hyper-V was unable to find a virtual machine with name \"x\".\n    + CategoryInfo : InvalidArgument"
        );
        assert_eq!(clixml_text("plain\r\n"), "plain");
    }

    #[test]
    fn accounts_in_each_form() {
        let a = Account::parse("CORP\\svc-migrate", String::new());
        assert_eq!(
            (a.domain.as_str(), a.user.as_str()),
            ("CORP", "svc-migrate")
        );
        let a = Account::parse("svc@corp.example", String::new());
        assert_eq!(
            (a.domain.as_str(), a.user.as_str()),
            ("corp.example", "svc")
        );
        assert_eq!(
            Account::parse("Administrator", String::new()).display(),
            "Administrator"
        );
    }
}
