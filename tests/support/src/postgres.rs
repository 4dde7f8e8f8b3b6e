//! A private PostgreSQL server as a peer: Debian's `postgresql` binaries,
//! a fresh cluster made by `initdb` in a temporary directory, and the
//! server listening on a Unix socket in that directory only (no TCP port:
//! nothing to collide with, nothing reachable from elsewhere). PostgreSQL
//! refuses to run as root, so when the tests run as root the cluster
//! belongs to `nobody` and its programs run as `nobody` (through
//! util-linux's `setpriv`). Stopped (fast shutdown) when dropped.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The database role the cluster is made with (a superuser).
pub const USER: &str = "hypersdk";

/// A running server and its files.
#[derive(Debug)]
pub struct Postgres {
    /// The directory holding the cluster (`data/`) and the socket.
    pub dir: tempfile::TempDir,
    /// The directory of the server's socket (`host=` of a connection).
    pub socket_dir: PathBuf,
    /// Its port (on 127.0.0.1 with TLS; else only the socket's name).
    pub port: u16,
    server: Child,
}

/// A server certificate for [`Postgres::start_tls`] (PEM).
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The certificate chain.
    pub cert_pem: String,
    /// Its key.
    pub key_pem: String,
}

/// The newest installed PostgreSQL's `bin` directory.
pub fn bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("Debian's postgresql (tests/peers/install.sh installs it)")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, p)| p.join("initdb").is_file())
        .collect();
    versions.sort();
    versions.pop().expect("a PostgreSQL with initdb").1
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program` of PostgreSQL, as `nobody` when we are root.
fn pg(program: &str, root: bool) -> Command {
    let path = bin_dir().join(program);
    if root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(path);
        c
    } else {
        Command::new(path)
    }
}

impl Postgres {
    /// A fresh cluster, started; waits (at most 60 s) until it answers.
    pub fn start() -> Postgres {
        Self::start_with(false, None)
    }

    /// A server that also listens on 127.0.0.1 (a port the OS picked), TLS
    /// only there with `tls`, and password (SCRAM) authentication for the
    /// role [`USER`] with `password` (the socket stays `trust`).
    pub fn start_tls(tls: &ServerTls, password: &str) -> Postgres {
        let pg = Self::start_with(false, Some(tls));
        pg.psql(
            "postgres",
            &format!(
                "ALTER ROLE {USER} PASSWORD '{}'",
                password.replace('\'', "''")
            ),
        );
        pg
    }

    /// One server for the whole test process, started on first use. It
    /// stops, and its files go, when the process exits (however it exits).
    pub fn shared() -> &'static Postgres {
        static SHARED: std::sync::OnceLock<Postgres> = std::sync::OnceLock::new();
        SHARED.get_or_init(|| Self::start_with(true, None))
    }

    /// A new empty database of its own; its connection URL.
    pub fn fresh_url(&self) -> String {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "t{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        self.create_database(&name);
        self.url(&name)
    }

    fn start_with(supervised: bool, tls: Option<&ServerTls>) -> Postgres {
        let root = running_as_root();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let socket_dir = dir.path().join("socket");
        std::fs::create_dir(&socket_dir).unwrap();
        if root {
            for p in [dir.path(), socket_dir.as_path()] {
                std::os::unix::fs::chown(p, Some(65534), Some(65534)).unwrap();
            }
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let out = pg("initdb", root)
            .args(["-A", "trust", "-U", USER, "-E", "UTF8", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = match tls {
            Some(t) => {
                let own = |p: &Path, mode: u32| {
                    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
                    if root {
                        std::os::unix::fs::chown(p, Some(65534), Some(65534)).unwrap();
                    }
                };
                for (name, text) in [("server.crt", &t.cert_pem), ("server.key", &t.key_pem)] {
                    std::fs::write(data.join(name), text).unwrap();
                    own(&data.join(name), 0o600);
                }
                std::fs::write(
                    data.join("pg_hba.conf"),
                    "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
                )
                .unwrap();
                own(&data.join("pg_hba.conf"), 0o600);
                // A port the OS picks, given to the server.
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap().port()
            }
            None => 5432,
        };
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        if root {
            std::os::unix::fs::chown(dir.path().join("server.log"), Some(65534), Some(65534))
                .unwrap();
        }
        let mut server = pg("postgres", root);
        server
            .arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(&socket_dir)
            .args([
                "-c",
                "listen_addresses=",
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "unix_socket_permissions=0777",
                "-c",
                "max_connections=300",
            ])
            .arg("-p")
            .arg(port.to_string());
        if tls.is_some() {
            server.args(["-c", "listen_addresses=127.0.0.1", "-c", "ssl=on"]);
        }
        let server = if supervised {
            // A shell runs the server and waits on its standard input, a
            // pipe only this process writes to: when this process exits,
            // however it exits, the read ends, the server stops and its
            // files go.
            let mut sh = Command::new("sh");
            sh.arg("-c")
                .arg(r#"dir="$1"; shift; "$@" & p=$!; read _ignored; kill -INT "$p"; wait "$p"; rm -rf "$dir""#)
                .arg("sh")
                .arg(dir.path())
                .arg(server.get_program())
                .args(server.get_args())
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("sh running postgres")
        } else {
            server
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("postgres")
        };
        let pg = Postgres {
            dir,
            socket_dir,
            port,
            server,
        };
        let started = Instant::now();
        loop {
            let ready = Command::new(bin_dir().join("pg_isready"))
                .arg("-h")
                .arg(&pg.socket_dir)
                .args(["-U", USER, "-q", "-p", &pg.port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "postgres did not start: {}",
                std::fs::read_to_string(pg.dir.path().join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        pg
    }

    /// A connection URL (libpq and tokio-postgres style) for `database`.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgresql://{USER}@/{database}?host={}&port={}",
            self.socket_dir.display(),
            self.port
        )
    }

    /// Runs `sql` with psql in `database`; its output (unaligned, tuples only).
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = Command::new(bin_dir().join("psql"))
            .arg("-h")
            .arg(&self.socket_dir)
            .args(["-p", &self.port.to_string()])
            .args([
                "-U",
                USER,
                "-d",
                database,
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A new, empty database.
    pub fn create_database(&self, name: &str) {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.server.id()
    }

    /// Where the server logs.
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Fast shutdown (SIGINT), then SIGKILL if it takes too long.
        let _ = Command::new("kill")
            .args(["-INT", &self.server.id().to_string()])
            .status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.server.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// Whether `path` is a PostgreSQL socket directory with a live socket.
pub fn has_socket(path: &Path) -> bool {
    std::fs::read_dir(path).is_ok_and(|mut d| {
        d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with(".s.PGSQL.")))
    })
}
