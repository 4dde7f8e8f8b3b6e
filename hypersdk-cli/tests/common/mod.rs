//! Running `hyperctl` in the CLI tests: every test binary includes this.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

/// Settings from the environment that would change what hyperctl does.
const ENV: &[&str] = &[
    "HYPERSDK_LOCAL_DIR",
    "HYPERSDK_PROVIDER",
    "HYPERSDK_VSPHERE_CONFIG",
    "GOVC_URL",
    "GOVC_USERNAME",
    "GOVC_PASSWORD",
    "GOVC_INSECURE",
    "GOVC_TLS_CA_CERTS",
    "GOVC_TLS_THUMBPRINT",
    "KUBECONFIG",
    "PROXMOX_URL",
    "PROXMOX_TOKEN",
    "PM_API_URL",
    "PM_API_TOKEN_ID",
    "PM_API_TOKEN_SECRET",
];

/// Runs hyperctl with `args` and exactly the environment settings in `env`.
pub fn hyperctl_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hyperctl"));
    c.args(args);
    for k in ENV {
        c.env_remove(k);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run hyperctl")
}

/// Runs hyperctl with `args`.
pub fn hyperctl(args: &[&str]) -> Output {
    hyperctl_env(args, &[])
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs a command that must succeed; returns its stdout.
pub fn ok_env(args: &[&str], env: &[(&str, &str)]) -> String {
    let o = hyperctl_env(args, env);
    assert!(
        o.status.success(),
        "hyperctl {args:?} failed: {}",
        stderr(&o)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn ok(args: &[&str]) -> String {
    ok_env(args, &[])
}

/// Runs a command that must fail and returns its error line: nothing on
/// stdout, and stderr (where plain progress lines may precede it) ends with
/// exactly one `error: ` line.
pub fn fails_env(args: &[&str], env: &[(&str, &str)]) -> String {
    let o = hyperctl_env(args, env);
    assert!(
        !o.status.success(),
        "hyperctl {args:?} unexpectedly succeeded"
    );
    assert!(o.stdout.is_empty(), "nothing on stdout after a failure");
    let err = stderr(&o);
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "expected one error line, got: {err}");
    assert_eq!(
        err.lines().last(),
        Some(errors[0]),
        "the error is the last line: {err}"
    );
    errors[0].to_string()
}

pub fn fails(args: &[&str]) -> String {
    fails_env(args, &[])
}

/// Sorted file names in `dir` (empty if it does not exist).
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// SHA-256 of a file, lower-case hex.
pub fn sha256_hex(path: &Path) -> String {
    hypersdk_formats::manifest::to_hex(&Sha256::digest(std::fs::read(path).unwrap()))
}

/// Whether the checkpoint at `path` records durable bytes of some disk.
pub fn durable_bytes_saved(path: &Path) -> bool {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|c| {
            c["disks"]
                .as_array()
                .map(|d| d.iter().any(|d| d["durable"].as_u64().unwrap_or(0) > 0))
        })
        .unwrap_or(false)
}

/// `head` (`export VM --provider …`) as an OVF export into `out` with a
/// checkpoint every MiB: resuming when `resume`, else slowed to `bwlimit`
/// so that a kill lands mid-export.
pub fn resumable_ovf_export<'a>(
    head: &[&'a str],
    out: &'a Path,
    resume: bool,
    bwlimit: &'a str,
) -> Vec<&'a str> {
    let mut a = head.to_vec();
    a.extend([
        "--format",
        "ovf",
        "--output",
        out.to_str().expect("a UTF-8 path"),
        "--checkpoint-mib",
        "1",
    ]);
    if resume {
        a.push("--resume");
    } else {
        a.extend(["--bwlimit", bwlimit]);
    }
    a
}

/// Starts hyperctl with `args` and exactly the environment settings in
/// `env`, waits (at most 60 s) until the checkpoint at `checkpoint` names
/// the source the export reads (its snapshots are taken), lets it run
/// `after` longer, and kills it with SIGKILL; it must not have finished.
pub fn kill_9_while_reading(
    args: &[&str],
    env: &[(&str, &str)],
    checkpoint: &Path,
    after: std::time::Duration,
) {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let mut c = Command::new(env!("CARGO_BIN_EXE_hyperctl"));
    c.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for k in ENV {
        c.env_remove(k);
    }
    let mut child = c.envs(env.iter().copied()).spawn().expect("start hyperctl");
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60)
        && !std::fs::read_to_string(checkpoint).is_ok_and(|c| c.contains("\"source\""))
        && child.try_wait().unwrap().is_none()
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(after);
    let _ = child.kill(); // SIGKILL
    assert!(
        !child.wait().unwrap().success(),
        "killed before it finished"
    );
}
