//! One small SQL interface over the two engines the job store runs on:
//! embedded SQLite (the default, a file) and PostgreSQL (`database:
//! postgres://…`, shared by several hypervisord processes).
//!
//! Every store query is written once, in the SQL both engines speak, with
//! numbered parameters `?1`, `?2`, … (rewritten to `$1`, `$2`, … for
//! PostgreSQL). Values are integers, text or NULL ([`Value`]); times are
//! RFC 3339 text (UTC, milliseconds, so they sort as text) and leases are
//! epoch milliseconds taken from the database's clock ([`Conn::now_ms`]),
//! so hosts whose clocks differ still agree on when a lease ends. Where the
//! engines differ (schema types, row locks) the query asks
//! [`Conn::dialect`].
//!
//! Both engines are driven synchronously on tokio's blocking pool: SQLite
//! through rusqlite, PostgreSQL through the `postgres` crate (which runs
//! tokio-postgres on a runtime of its own). A transaction is
//! `BEGIN IMMEDIATE` on SQLite (one writer at a time) and `BEGIN` on
//! PostgreSQL (read committed; what must be serialised takes a row lock or
//! an advisory lock).

use std::collections::HashMap;

use crate::store::{StoreError, StoreResult};

/// A parameter or a column's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A 64-bit integer (SQLite INTEGER, PostgreSQL BIGINT).
    Int(i64),
    /// Text.
    Text(String),
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(v)
    }
}
impl From<u16> for Value {
    fn from(v: u16) -> Value {
        Value::Int(v.into())
    }
}
impl From<u32> for Value {
    fn from(v: u32) -> Value {
        Value::Int(v.into())
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Int(v.into())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Text(v)
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Value {
        Value::Text(v.clone())
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Text(v.to_string())
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

/// Parameters of a query: `args![a, b, c]`, each `Into<Value>`.
#[macro_export]
macro_rules! args {
    ($($v:expr),* $(,)?) => {
        &[$($crate::db::Value::from($v)),*][..]
    };
}

/// A row of a result, its columns by position.
#[derive(Debug, Clone)]
pub struct Row(Vec<Value>);

impl Row {
    fn at(&self, i: usize) -> StoreResult<&Value> {
        self.0
            .get(i)
            .ok_or_else(|| StoreError(format!("column {i} missing")))
    }

    /// Column `i`, an integer.
    pub fn int(&self, i: usize) -> StoreResult<i64> {
        self.opt_int(i)?
            .ok_or_else(|| StoreError(format!("column {i} is NULL")))
    }

    /// Column `i`, an integer or NULL.
    pub fn opt_int(&self, i: usize) -> StoreResult<Option<i64>> {
        match self.at(i)? {
            Value::Null => Ok(None),
            Value::Int(v) => Ok(Some(*v)),
            Value::Text(t) => t
                .parse()
                .map(Some)
                .map_err(|_| StoreError(format!("column {i}: {t:?} is not an integer"))),
        }
    }

    /// Column `i`, an integer read as a flag (not 0).
    pub fn flag(&self, i: usize) -> StoreResult<bool> {
        Ok(self.int(i)? != 0)
    }

    /// Column `i`, text.
    pub fn text(&self, i: usize) -> StoreResult<String> {
        self.opt_text(i)?
            .ok_or_else(|| StoreError(format!("column {i} is NULL")))
    }

    /// Column `i`, text or NULL.
    pub fn opt_text(&self, i: usize) -> StoreResult<Option<String>> {
        match self.at(i)? {
            Value::Null => Ok(None),
            Value::Int(v) => Ok(Some(v.to_string())),
            Value::Text(t) => Ok(Some(t.clone())),
        }
    }
}

/// Which engine a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Embedded SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// A connection to either engine.
pub trait Conn: Send {
    /// The engine.
    fn dialect(&self) -> Dialect;
    /// Runs a statement; how many rows it changed.
    fn exec_raw(&mut self, sql: &str, args: &[Value]) -> Result<u64, String>;
    /// Runs a query; its rows.
    fn query_raw(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, String>;
    /// Runs statements without parameters (schema, transaction control).
    fn batch(&mut self, sql: &str) -> Result<(), String>;
    /// Whether the connection is gone and must be made again.
    fn is_broken(&self) -> bool {
        false
    }
}

impl dyn Conn + '_ {
    /// Runs a statement; `what` names it in an error.
    pub fn exec(&mut self, what: &str, sql: &str, args: &[Value]) -> StoreResult<u64> {
        self.exec_raw(sql, args)
            .map_err(|e| StoreError(format!("{what}: {e}")))
    }

    /// Runs a query; `what` names it in an error.
    pub fn rows(&mut self, what: &str, sql: &str, args: &[Value]) -> StoreResult<Vec<Row>> {
        self.query_raw(sql, args)
            .map_err(|e| StoreError(format!("{what}: {e}")))
    }

    /// The first row of a query, if any.
    pub fn row(&mut self, what: &str, sql: &str, args: &[Value]) -> StoreResult<Option<Row>> {
        Ok(self.rows(what, sql, args)?.into_iter().next())
    }

    /// Runs `f` in a transaction: committed if it returns Ok, rolled back
    /// otherwise.
    pub fn tx<T>(&mut self, f: impl FnOnce(&mut dyn Conn) -> StoreResult<T>) -> StoreResult<T> {
        let begin = match self.dialect() {
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            Dialect::Postgres => "BEGIN",
        };
        self.batch(begin)
            .map_err(|e| StoreError(format!("begin: {e}")))?;
        match f(self) {
            Ok(v) => {
                self.batch("COMMIT")
                    .map_err(|e| StoreError(format!("commit: {e}")))?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// The database's clock, in milliseconds since the epoch: what leases
    /// are measured on, the same for every host sharing the database.
    pub fn now_ms(&mut self) -> StoreResult<i64> {
        let sql = match self.dialect() {
            Dialect::Sqlite => {
                "SELECT CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)"
            }
            Dialect::Postgres => {
                "SELECT CAST(extract(epoch FROM clock_timestamp()) * 1000 AS BIGINT)"
            }
        };
        self.row("read the clock", sql, &[])?
            .ok_or_else(|| StoreError("read the clock: no row".into()))?
            .int(0)
    }

    /// `FOR UPDATE SKIP LOCKED` where the engine has row locks (SQLite has
    /// one writer at a time, so there is nothing to skip).
    pub fn skip_locked(&self) -> &'static str {
        match self.dialect() {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
        }
    }
}

// ---------------------------------------------------------------- SQLite

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(v) => ToSqlOutput::Borrowed(ValueRef::Integer(*v)),
            Value::Text(t) => ToSqlOutput::Borrowed(ValueRef::Text(t.as_bytes())),
        })
    }
}

fn sqlite_value(v: rusqlite::types::ValueRef<'_>) -> Value {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Real(f) => Value::Int(f as i64),
        ValueRef::Text(t) | ValueRef::Blob(t) => Value::Text(String::from_utf8_lossy(t).into()),
    }
}

impl Conn for rusqlite::Connection {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn exec_raw(&mut self, sql: &str, args: &[Value]) -> Result<u64, String> {
        let mut stmt = self.prepare_cached(sql).map_err(|e| e.to_string())?;
        stmt.execute(rusqlite::params_from_iter(args.iter()))
            .map(|n| n as u64)
            .map_err(|e| e.to_string())
    }

    fn query_raw(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, String> {
        let mut stmt = self.prepare_cached(sql).map_err(|e| e.to_string())?;
        let n = stmt.column_count();
        let mut rows = stmt
            .query(rusqlite::params_from_iter(args.iter()))
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(|e| e.to_string())? {
            let mut values = Vec::with_capacity(n);
            for i in 0..n {
                values.push(sqlite_value(r.get_ref(i).map_err(|e| e.to_string())?));
            }
            out.push(Row(values));
        }
        Ok(out)
    }

    fn batch(&mut self, sql: &str) -> Result<(), String> {
        self.execute_batch(sql).map_err(|e| e.to_string())
    }
}

// ------------------------------------------------------------ PostgreSQL

impl postgres::types::ToSql for Value {
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use postgres::types::{IsNull, Type};
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) => match *ty {
                Type::INT8 => v.to_sql(ty, out),
                Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
                Type::BOOL => (*v != 0).to_sql(ty, out),
                _ => v.to_string().to_sql(ty, out),
            },
            Value::Text(t) => t.as_str().to_sql(ty, out),
        }
    }

    fn accepts(_: &postgres::types::Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

fn pg_value(row: &postgres::Row, i: usize) -> Result<Value, String> {
    use postgres::types::Type;
    let ty = row.columns()[i].type_().clone();
    let err = |e: postgres::Error| format!("column {i}: {e}");
    Ok(match ty {
        Type::INT8 => row.try_get::<_, Option<i64>>(i).map_err(err)?.into(),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(i)
            .map_err(err)?
            .map(i64::from)
            .map_or(Value::Null, Value::Int),
        Type::INT2 => row
            .try_get::<_, Option<i16>>(i)
            .map_err(err)?
            .map(i64::from)
            .map_or(Value::Null, Value::Int),
        Type::BOOL => row
            .try_get::<_, Option<bool>>(i)
            .map_err(err)?
            .map_or(Value::Null, Value::from),
        _ => row.try_get::<_, Option<String>>(i).map_err(err)?.into(),
    })
}

/// `?N` parameters as PostgreSQL's `$N` (the store's SQL holds no `?` or
/// `$` in literals).
fn pg_sql(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

/// A PostgreSQL connection with its prepared statements.
pub struct PgConn {
    client: Option<postgres::Client>,
    statements: HashMap<String, postgres::Statement>,
}

impl Drop for PgConn {
    fn drop(&mut self) {
        // Closing blocks on the client's own runtime, which panics inside
        // another runtime's task: close on a thread of its own.
        if let Some(client) = self.client.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                std::thread::spawn(move || drop(client));
            }
        }
    }
}

impl std::fmt::Debug for PgConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConn")
            .field("statements", &self.statements.len())
            .finish()
    }
}

impl PgConn {
    /// A connection made with `config` and `tls`.
    pub fn connect(
        config: &postgres::Config,
        tls: Option<rustls::ClientConfig>,
    ) -> Result<PgConn, String> {
        let client = match tls {
            Some(t) => config.connect(tokio_postgres_rustls::MakeRustlsConnect::new(t)),
            None => config.connect(postgres::NoTls),
        }
        .map_err(|e| pg_error(&e))?;
        Ok(PgConn {
            client: Some(client),
            statements: HashMap::new(),
        })
    }

    fn statement(&mut self, sql: &str) -> Result<postgres::Statement, String> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self
            .client()?
            .prepare(&pg_sql(sql))
            .map_err(|e| pg_error(&e))?;
        if self.statements.len() > 512 {
            self.statements.clear();
        }
        self.statements.insert(sql.to_string(), s.clone());
        Ok(s)
    }

    fn client(&mut self) -> Result<&mut postgres::Client, String> {
        self.client
            .as_mut()
            .ok_or_else(|| "connection closed".to_string())
    }

    fn params(args: &[Value]) -> Vec<&(dyn postgres::types::ToSql + Sync)> {
        args.iter()
            .map(|a| a as &(dyn postgres::types::ToSql + Sync))
            .collect()
    }
}

/// PostgreSQL's message, with its detail when it has one.
pub(crate) fn pg_error(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(d) => format!("{} ({d})", db.message()),
            None => db.message().to_string(),
        },
        None => {
            let mut s = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                let c = cause.to_string();
                if !s.contains(&c) {
                    s.push_str(": ");
                    s.push_str(&c);
                }
                source = cause.source();
            }
            s
        }
    }
}

impl Conn for PgConn {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn exec_raw(&mut self, sql: &str, args: &[Value]) -> Result<u64, String> {
        let stmt = self.statement(sql)?;
        self.client()?
            .execute(&stmt, &Self::params(args))
            .map_err(|e| pg_error(&e))
    }

    fn query_raw(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, String> {
        let stmt = self.statement(sql)?;
        let rows = self
            .client()?
            .query(&stmt, &Self::params(args))
            .map_err(|e| pg_error(&e))?;
        rows.iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| pg_value(r, i))
                    .collect::<Result<_, _>>()
                    .map(Row)
            })
            .collect()
    }

    fn batch(&mut self, sql: &str) -> Result<(), String> {
        self.client()?.batch_execute(sql).map_err(|e| pg_error(&e))
    }

    fn is_broken(&self) -> bool {
        self.client.as_ref().is_none_or(|c| c.is_closed())
    }
}

/// Where a PostgreSQL store is, and how to reach it safely.
#[derive(Clone)]
pub struct PgTarget {
    config: postgres::Config,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    shown: String,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// Whether `database` names a PostgreSQL server rather than a SQLite file.
pub fn is_postgres_url(database: &str) -> bool {
    database.starts_with("postgres://") || database.starts_with("postgresql://")
}

impl PgTarget {
    /// The target a `postgres://` URL names, completed from the `PG*`
    /// environment (`PGHOST`, `PGPORT`, `PGUSER`, `PGDATABASE`,
    /// `PGPASSWORD`, `PGSSLMODE`) for what it leaves out, with the password
    /// read from `password_file` when given. TLS: with a host that is not
    /// a Unix socket, the server's certificate is always verified, against
    /// `ca_file` or the system's roots, including its name (libpq's
    /// `verify-full`); `sslmode` `disable` turns TLS off, `prefer` (the
    /// default on loopback) falls back to plain text where the server has
    /// no TLS, and anything else (the default elsewhere) requires it.
    pub fn parse(
        url: &str,
        password_file: Option<&std::path::Path>,
        ca_file: Option<&std::path::Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<PgTarget, String> {
        use postgres::config::{Host, SslMode};
        // tokio-postgres knows disable/prefer/require; verification is
        // always on with TLS here, so libpq's stricter modes mean require.
        let mut sslmode_given = None;
        let mut kept = Vec::new();
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (url, None),
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("sslmode", v)) => sslmode_given = Some(v.to_string()),
                Some(("passfile" | "sslrootcert" | "sslcert" | "sslkey", _)) => {
                    return Err(format!(
                        "{}: give files in the configuration (database_password_file, database_ca_file), not in the URL",
                        pair.split('=').next().unwrap_or_default()
                    ))
                }
                _ => kept.push(pair),
            }
        }
        let cleaned = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let mut config: postgres::Config = cleaned
            .parse()
            .map_err(|e| format!("bad PostgreSQL URL: {e}"))?;
        if config.get_hosts().is_empty() {
            let host = env("PGHOST").unwrap_or_else(|| "/var/run/postgresql".into());
            for h in host.split(',') {
                config.host(h);
            }
        }
        if config.get_ports().is_empty() {
            if let Some(p) = env("PGPORT") {
                config.port(
                    p.parse()
                        .map_err(|_| format!("PGPORT: {p:?} is not a port"))?,
                );
            }
        }
        if config.get_user().is_none() {
            let user = env("PGUSER")
                .or_else(|| env("USER"))
                .ok_or("no user: put it in the URL (postgres://USER@HOST/DB) or PGUSER")?;
            config.user(&user);
        }
        if config.get_dbname().is_none() {
            if let Some(d) = env("PGDATABASE") {
                config.dbname(&d);
            }
        }
        if let Some(file) = password_file {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("database_password_file {}: {e}", file.display()))?;
            let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
            config.password(line);
        } else if config.get_password().is_none() {
            if let Some(p) = env("PGPASSWORD") {
                config.password(p);
            }
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(std::time::Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name("hypervisord");
        }
        let sockets_only = config
            .get_hosts()
            .iter()
            .all(|h| matches!(h, Host::Unix(_)));
        let loopback = config.get_hosts().iter().all(|h| match h {
            Host::Unix(_) => true,
            Host::Tcp(name) => {
                name == "localhost"
                    || name
                        .trim_matches(['[', ']'])
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
        });
        let mode = sslmode_given.or_else(|| env("PGSSLMODE"));
        let ssl = match mode.as_deref() {
            None if sockets_only => SslMode::Disable,
            None if loopback => SslMode::Prefer,
            None => SslMode::Require,
            Some("disable") => SslMode::Disable,
            Some("allow" | "prefer") => SslMode::Prefer,
            Some("require" | "verify-ca" | "verify-full") => SslMode::Require,
            Some(other) => return Err(format!("sslmode: unknown mode {other:?}")),
        };
        config.ssl_mode(ssl);
        let tls = if ssl == SslMode::Disable {
            None
        } else {
            let mut roots = rustls::RootCertStore::empty();
            match ca_file {
                Some(f) => {
                    let pem = std::fs::read(f)
                        .map_err(|e| format!("database_ca_file {}: {e}", f.display()))?;
                    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                        let cert =
                            cert.map_err(|e| format!("database_ca_file {}: {e}", f.display()))?;
                        roots
                            .add(cert)
                            .map_err(|e| format!("database_ca_file {}: {e}", f.display()))?;
                    }
                    if roots.is_empty() {
                        return Err(format!(
                            "database_ca_file {}: no certificate in it",
                            f.display()
                        ));
                    }
                }
                None => {
                    for cert in rustls_native_certs::load_native_certs().certs {
                        let _ = roots.add(cert);
                    }
                }
            }
            let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
            Some(std::sync::Arc::new(tls))
        };
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .map(|h| match h {
                Host::Tcp(n) => n.clone(),
                Host::Unix(p) => p.display().to_string(),
            })
            .collect();
        let shown = format!(
            "postgres://{}@{}/{}",
            config.get_user().unwrap_or_default(),
            hosts.join(","),
            config.get_dbname().unwrap_or_default()
        );
        Ok(PgTarget { config, tls, shown })
    }

    /// The target as logs show it (no password).
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// A new connection.
    pub fn connect(&self) -> Result<PgConn, String> {
        PgConn::connect(&self.config, self.tls.as_deref().cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_numbered_the_postgres_way() {
        assert_eq!(
            pg_sql("UPDATE jobs SET a = ?2 WHERE id = ?1 AND b IN (?10, ?3)"),
            "UPDATE jobs SET a = $2 WHERE id = $1 AND b IN ($10, $3)"
        );
        assert_eq!(pg_sql("SELECT 1"), "SELECT 1");
    }

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn urls_are_completed_from_the_environment_and_tls_is_on_away_from_loopback() {
        use postgres::config::SslMode;
        let t = PgTarget::parse(
            "postgres:///jobs",
            None,
            None,
            &env(&[
                ("PGHOST", "db.example"),
                ("PGPORT", "6543"),
                ("PGUSER", "hv"),
                ("PGPASSWORD", "pw"),
            ]),
        )
        .unwrap();
        assert_eq!(t.shown(), "postgres://hv@db.example/jobs");
        assert_eq!(t.config.get_ports(), &[6543]);
        assert_eq!(t.config.get_password(), Some(&b"pw"[..]));
        assert_eq!(
            t.config.get_ssl_mode(),
            SslMode::Require,
            "not loopback: TLS required"
        );
        assert!(t.tls.is_some());
        let local = PgTarget::parse("postgres://hv@127.0.0.1/jobs", None, None, &env(&[])).unwrap();
        assert_eq!(local.config.get_ssl_mode(), SslMode::Prefer);
        let socket = PgTarget::parse(
            "postgres://hv@/jobs?host=/run/postgresql",
            None,
            None,
            &env(&[]),
        )
        .unwrap();
        assert_eq!(socket.config.get_ssl_mode(), SslMode::Disable);
        let full = PgTarget::parse(
            "postgres://hv@db.example/jobs?sslmode=verify-full",
            None,
            None,
            &env(&[]),
        )
        .unwrap();
        assert_eq!(full.config.get_ssl_mode(), SslMode::Require);
        let off = PgTarget::parse(
            "postgres://hv@db/jobs",
            None,
            None,
            &env(&[("PGSSLMODE", "disable")]),
        )
        .unwrap();
        assert!(off.tls.is_none());
    }

    #[test]
    fn bad_urls_and_files_in_urls_are_refused_by_name() {
        let e = PgTarget::parse(
            "postgres://hv@db/jobs?passfile=/etc/shadow",
            None,
            None,
            &env(&[]),
        )
        .unwrap_err();
        assert!(
            e.contains("passfile") && e.contains("database_password_file"),
            "{e}"
        );
        let e = PgTarget::parse(
            "postgres://hv@db/jobs?sslmode=sometimes",
            None,
            None,
            &env(&[]),
        )
        .unwrap_err();
        assert!(e.contains("sslmode"), "{e}");
        let e = PgTarget::parse(
            "postgres://hv@db/jobs",
            Some(std::path::Path::new("/nonexistent/db.pass")),
            None,
            &env(&[]),
        )
        .unwrap_err();
        assert!(
            e.contains("database_password_file /nonexistent/db.pass"),
            "{e}"
        );
        let e = PgTarget::parse("postgres:///jobs?host=/s", None, None, &env(&[])).unwrap_err();
        assert!(e.contains("no user"), "{e}");
    }

    #[test]
    fn sqlite_rows_come_back_as_values() {
        let mut c = rusqlite::Connection::open_in_memory().unwrap();
        let c: &mut dyn Conn = &mut c;
        c.batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, n INTEGER)")
            .unwrap();
        let id = c
            .tx(|c| {
                c.row(
                    "insert",
                    "INSERT INTO t (v, n) VALUES (?1, ?2) RETURNING id",
                    args!["a", None::<i64>],
                )?
                .unwrap()
                .int(0)
            })
            .unwrap();
        let r = c
            .row("read", "SELECT id, v, n FROM t WHERE id = ?1", args![id])
            .unwrap()
            .unwrap();
        assert_eq!((r.int(0).unwrap(), r.text(1).unwrap()), (id, "a".into()));
        assert_eq!(r.opt_int(2).unwrap(), None);
        let failed = c.tx(|c| {
            c.exec("insert", "INSERT INTO t (v) VALUES ('b')", &[])?;
            Err::<(), _>(StoreError("no".into()))
        });
        assert!(failed.is_err());
        let n = c
            .row("count", "SELECT COUNT(*) FROM t", &[])
            .unwrap()
            .unwrap()
            .int(0)
            .unwrap();
        assert_eq!(n, 1, "the failed transaction was rolled back");
        let now = c.now_ms().unwrap();
        let local = chrono::Utc::now().timestamp_millis();
        assert!((now - local).abs() < 5_000, "{now} vs {local}");
    }
}
