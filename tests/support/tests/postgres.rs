//! The PostgreSQL peer: a private cluster answers SQL on its Unix socket,
//! runs as a user other than root, listens on no TCP port, and is gone
//! after the drop.

#![allow(clippy::unwrap_used)]

use hypersdk_testsupport::postgres::{has_socket, Postgres};

#[test]
fn a_private_postgres_answers_on_its_socket_only_and_stops_on_drop() {
    let pg = Postgres::start();
    pg.create_database("jobs");
    pg.psql(
        "jobs",
        "CREATE TABLE t (id BIGSERIAL PRIMARY KEY, v TEXT NOT NULL)",
    );
    pg.psql("jobs", "INSERT INTO t (v) VALUES ('a'), ('b')");
    assert_eq!(pg.psql("jobs", "SELECT count(*) FROM t"), "2");
    // SKIP LOCKED, which a job queue on PostgreSQL claims with, is there.
    assert_eq!(
        pg.psql(
            "jobs",
            "SELECT v FROM t ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1"
        ),
        "a"
    );
    assert_eq!(pg.psql("jobs", "SHOW listen_addresses"), "");
    assert_ne!(
        pg.psql("jobs", "SELECT current_setting('data_directory')"),
        ""
    );
    let uid = std::fs::read_to_string(format!("/proc/{}/status", pg.pid())).unwrap();
    let uid_line = uid.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        !uid_line.split_whitespace().skip(1).any(|u| u == "0"),
        "not root: {uid_line}"
    );
    let sockets = pg.socket_dir.clone();
    assert!(has_socket(&sockets));
    drop(pg);
    assert!(!sockets.exists(), "its files are gone");
}
