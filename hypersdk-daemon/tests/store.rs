//! The job store's cluster rules, on both engines, through two store
//! handles (two hypervisord processes sharing one database): claims honour
//! the limits counted over both, a run whose lease ran out is taken over
//! and can neither publish nor record its end, a cancel asked on one
//! reaches the lease renewal of the other, and a schedule's occurrence
//! fires once.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use hypersdk_daemon::db::PgTarget;
use hypersdk_daemon::model::{JobSpec, JobStatus};
use hypersdk_daemon::store::{JobEnd, Limits, OpenOptions, Store};
use hypersdk_testsupport::postgres::Postgres;
use serde_json::json;

fn options(node: &str, lease_ms: u64) -> OpenOptions {
    OpenOptions {
        node: node.into(),
        lease: Duration::from_millis(lease_ms),
        readers: 2,
    }
}

/// Two handles on one fresh database: SQLite file or PostgreSQL.
async fn pair(postgres: bool, dir: &std::path::Path, lease_ms: u64) -> (Store, Store) {
    if postgres {
        let url = Postgres::shared().fresh_url();
        let open = |node: &str| {
            let target = PgTarget::parse(&url, None, None, &|_| None).unwrap();
            Store::open_postgres(target, options(node, lease_ms))
        };
        (open("a").await.unwrap(), open("b").await.unwrap())
    } else {
        let db = dir.join("jobs.db");
        (
            Store::open_sqlite(&db, &options("a", lease_ms)).unwrap(),
            Store::open_sqlite(&db, &options("b", lease_ms)).unwrap(),
        )
    }
}

fn spec(vm: &str, provider: &str) -> JobSpec {
    serde_json::from_value(json!({"vm": vm, "provider": provider})).unwrap()
}

fn limits(per_provider: &[(&str, usize)], total: Option<usize>) -> Limits {
    Limits {
        total,
        per_provider: per_provider
            .iter()
            .map(|(p, n)| (p.to_string(), *n))
            .collect(),
    }
}

async fn claims_honour_limits_counted_over_every_process(postgres: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = pair(postgres, tmp.path(), 30_000).await;
    a.insert(
        vec![
            spec("v1", "vc"),
            spec("v2", "vc"),
            spec("v3", "kvm"),
            spec("v4", "kvm"),
        ],
        "t".into(),
        None,
    )
    .await
    .unwrap();
    let one_vc = limits(&[("vc", 1)], Some(3));
    let first = a.claim_next(one_vc.clone()).await.unwrap().unwrap();
    assert_eq!(first.job.spec.vm, "v1");
    assert!(first.job.node.as_deref().unwrap().starts_with("a#"));
    // b sees a's run of vc: the next vc job waits, a kvm job runs.
    let second = b.claim_next(one_vc.clone()).await.unwrap().unwrap();
    assert_eq!(second.job.spec.vm, "v3");
    let third = b.claim_next(one_vc.clone()).await.unwrap().unwrap();
    assert_eq!(third.job.spec.vm, "v4");
    // Three running over both: the total is reached.
    a.insert(vec![spec("v5", "kvm")], "t".into(), None)
        .await
        .unwrap();
    assert!(a.claim_next(one_vc.clone()).await.unwrap().is_none());
    assert!(a
        .finish(
            first.job.id,
            JobStatus::Succeeded,
            JobEnd::default(),
            Some(first.fence)
        )
        .await
        .unwrap());
    let fourth = b.claim_next(one_vc).await.unwrap().unwrap();
    assert_eq!(
        fourth.job.spec.vm, "v2",
        "vc is free again, and v2 is older"
    );
}

async fn a_run_whose_lease_ran_out_is_taken_over_and_fenced_off(postgres: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = pair(postgres, tmp.path(), 400).await;
    let id = a
        .insert(vec![spec("v1", "kvm")], "t".into(), None)
        .await
        .unwrap()[0]
        .id;
    let old = a.claim_next(Limits::default()).await.unwrap().unwrap();
    assert_eq!(a.renew_leases().await.unwrap().len(), 1);
    // a stops renewing (stalled, or cut off from the database).
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(b.reap_expired().await.unwrap(), vec![id]);
    let new = b.claim_next(Limits::default()).await.unwrap().unwrap();
    assert_eq!(new.job.id, id);
    assert!(new.fence > old.fence, "a new run, a newer token");
    assert_eq!(new.job.attempts, 2);
    // The old run can neither publish nor record its end.
    assert!(!a
        .save_result(id, old.fence, json!({"location": "x"}))
        .await
        .unwrap());
    assert!(!a
        .finish(id, JobStatus::Succeeded, JobEnd::default(), Some(old.fence))
        .await
        .unwrap());
    assert!(
        a.renew_leases().await.unwrap().is_empty(),
        "a holds nothing"
    );
    // The new one can.
    assert!(b
        .save_result(id, new.fence, json!({"location": "y"}))
        .await
        .unwrap());
    let saved = a.get(id).await.unwrap().unwrap().result.unwrap();
    assert_eq!(
        saved["location"], "y",
        "the new run's report is the one kept"
    );
    assert!(b
        .finish(id, JobStatus::Succeeded, JobEnd::default(), Some(new.fence))
        .await
        .unwrap());
    let job = a.get(id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Succeeded);
    let log: Vec<String> = a
        .events(id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.message)
        .collect();
    assert!(
        log.iter()
            .any(|m| m.contains("lease of a#") && m.contains("ran out")),
        "{log:?}"
    );
    assert!(log.iter().any(|m| m == "started on b"), "{log:?}");
}

async fn a_cancel_asked_on_one_process_reaches_the_one_running_it(postgres: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = pair(postgres, tmp.path(), 30_000).await;
    let id = a
        .insert(vec![spec("v1", "kvm")], "t".into(), None)
        .await
        .unwrap()[0]
        .id;
    let run = a.claim_next(Limits::default()).await.unwrap().unwrap();
    assert!(!a.renew_leases().await.unwrap()[0].cancel);
    assert!(b.request_cancel(id, "ops".into()).await.unwrap());
    let held = a.renew_leases().await.unwrap();
    assert_eq!(
        (held[0].id, held[0].fence, held[0].cancel),
        (id, run.fence, true)
    );
    // b sees the progress a records.
    let progress = hypersdk_daemon::model::Progress {
        phase: "disk".into(),
        bytes_done: 7,
        ..Default::default()
    };
    a.save_progress(id, run.fence, serde_json::to_string(&progress).unwrap())
        .await
        .unwrap();
    let seen = b.get(id).await.unwrap().unwrap();
    assert_eq!(seen.progress.unwrap().bytes_done, 7);
    assert_eq!(b.running_elsewhere().await.unwrap().len(), 1);
    assert!(a.running_elsewhere().await.unwrap().is_empty());
}

async fn an_occurrence_fires_once_however_many_processes_check_it(postgres: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = pair(postgres, tmp.path(), 30_000).await;
    let s: hypersdk_daemon::schedules::ScheduleSpec = serde_json::from_value(json!({
        "name": "nightly", "cron": "0 1 * * *", "job": {"vm": "v1", "provider": "kvm"}
    }))
    .unwrap();
    let due = "2026-12-01T01:00:00.000Z".to_string();
    let next = Some("2026-12-02T01:00:00.000Z".to_string());
    let sched = a.add_schedule(s, Some(due.clone())).await.unwrap().unwrap();
    let firing = || hypersdk_daemon::schedules::Firing {
        specs: vec![spec("v1", "kvm")],
        who: "schedule:nightly".into(),
        due_at: Some(due.clone()),
    };
    let (x, y) = tokio::join!(
        a.fire_schedule(sched.id, due.clone(), next.clone(), vec![], Some(firing())),
        b.fire_schedule(sched.id, due.clone(), next.clone(), vec![], Some(firing())),
    );
    let fired: Vec<_> = [x.unwrap(), y.unwrap()].into_iter().flatten().collect();
    assert_eq!(fired.len(), 1, "one of the two fired it");
    assert_eq!(fired[0].len(), 1);
    let (jobs, total) = a.list(Default::default(), 10, 0).await.unwrap();
    assert_eq!(
        (total, jobs[0].submitted_by.as_str()),
        (1, "schedule:nightly")
    );
    let runs = b.schedule_runs(sched.id).await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].jobs, vec![jobs[0].id]);
    assert_eq!(
        b.schedules(Some(sched.id)).await.unwrap()[0].next_run_at,
        next
    );
}

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $name() {
                super::$name(false).await
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $name() {
                super::$name(true).await
            })*
        }
    };
}

on_both!(
    claims_honour_limits_counted_over_every_process,
    a_run_whose_lease_ran_out_is_taken_over_and_fenced_off,
    a_cancel_asked_on_one_process_reaches_the_one_running_it,
    an_occurrence_fires_once_however_many_processes_check_it,
);

/// PostgreSQL over TCP with TLS and a password: the server's certificate is
/// checked against the configured CA (and its name), the password comes
/// from a file; a wrong CA and a wrong password are refused with errors
/// that say which.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_over_tls_with_a_password_file() {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let pg = Postgres::start_tls(
        &hypersdk_testsupport::postgres::ServerTls {
            cert_pem: ck.cert.pem(),
            key_pem: ck.signing_key.serialize_pem(),
        },
        "s3cret pass",
    );
    let tmp = tempfile::tempdir().unwrap();
    let (ca, pass) = (tmp.path().join("ca.pem"), tmp.path().join("db.pass"));
    std::fs::write(&ca, ck.cert.pem()).unwrap();
    std::fs::write(&pass, "s3cret pass\n").unwrap();
    let url = format!("postgres://hypersdk@localhost:{}/postgres", pg.port);
    let no_env = |_: &str| None;

    let target = PgTarget::parse(&url, Some(&pass), Some(&ca), &no_env).unwrap();
    let store = Store::open_postgres(target, options("tls", 30_000))
        .await
        .unwrap();
    let id = store
        .insert(vec![spec("v1", "kvm")], "t".into(), None)
        .await
        .unwrap()[0]
        .id;
    assert_eq!(store.get(id).await.unwrap().unwrap().spec.vm, "v1");
    // The session really is TLS.
    let tls_sessions: u32 = pg
        .psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE s.ssl AND a.application_name = 'hypervisord'",
        )
        .parse()
        .unwrap();
    assert!(tls_sessions > 0);

    // Another CA: the certificate is not trusted.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let other_ca = tmp.path().join("other.pem");
    std::fs::write(&other_ca, other.cert.pem()).unwrap();
    let target = PgTarget::parse(&url, Some(&pass), Some(&other_ca), &no_env).unwrap();
    let e = Store::open_postgres(target, options("tls", 30_000))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("certificate"), "{e}");

    // A name the certificate is not for: refused too (verify-full).
    let by_ip = format!("postgres://hypersdk@127.0.0.1:{}/postgres", pg.port);
    let target = PgTarget::parse(&by_ip, Some(&pass), Some(&ca), &no_env).unwrap();
    let e = Store::open_postgres(target, options("tls", 30_000))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("certificate"), "{e}");

    // A wrong password.
    std::fs::write(&pass, "wrong\n").unwrap();
    let target = PgTarget::parse(&url, Some(&pass), Some(&ca), &no_env).unwrap();
    let e = Store::open_postgres(target, options("tls", 30_000))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("password authentication failed"), "{e}");
    assert!(!e.contains("wrong"), "the password is never shown: {e}");
}
