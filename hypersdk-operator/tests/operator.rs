//! The operator against the real kube-apiserver (the KubeVirt tests' peer:
//! etcd + kube-apiserver, built once by tests/peers/build_kube_peers.sh),
//! with a hypervisord worker outside the cluster on PostgreSQL (in this
//! process), and two operator replicas competing for the Lease.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use hypersdk_operator::{Operator, Settings, VMExport};
use hypersdk_testsupport::kube::KubeCluster;
use hypersdk_testsupport::postgres::Postgres;
use hypersdk_testsupport::{domain_xml, workspace_root, write_mixed_file};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::discovery::Discovery;
use kube::ResourceExt;
use serde_json::{json, Value};

const KEY: &str = "operator-key-0123456789";

fn sha256_hex(s: &str) -> String {
    use std::io::Write;
    let mut c = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

async fn client(cluster: &KubeCluster) -> kube::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = kube::config::Kubeconfig::read_from(&cluster.kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

/// Creates every object of a multi-document YAML file of `deploy/operator`.
async fn apply(client: &kube::Client, discovery: &Discovery, file: &str) -> Vec<String> {
    let text =
        std::fs::read_to_string(workspace_root().join("deploy/operator").join(file)).unwrap();
    let mut made = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        if v.is_null() {
            continue;
        }
        let obj: DynamicObject = serde_json::from_value(v.clone()).unwrap();
        let tm = obj.types.clone().unwrap();
        let (group, version) = match tm.api_version.split_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (String::new(), tm.api_version.clone()),
        };
        let gvk = kube::api::GroupVersionKind::gvk(&group, &version, &tm.kind);
        let (ar, caps) = discovery
            .resolve_gvk(&gvk)
            .unwrap_or_else(|| panic!("{file}: the API server does not know {gvk:?}"));
        let api: Api<DynamicObject> = match (caps.scope, obj.namespace()) {
            (kube::discovery::Scope::Namespaced, Some(ns)) => {
                Api::namespaced_with(client.clone(), &ns, &ar)
            }
            _ => Api::all_with(client.clone(), &ar),
        };
        api.create(&PostParams::default(), &obj)
            .await
            .unwrap_or_else(|e| panic!("{file}: {} {}: {e}", tm.kind, obj.name_any()));
        made.push(format!("{}/{}", tm.kind, obj.name_any()));
    }
    made
}

async fn wait_for<T>(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < limit, "{what}: not after {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn replica(client: &kube::Client, daemon: &str, identity: &str) -> Arc<Operator> {
    Arc::new(
        Operator::new(
            client.clone(),
            Settings {
                daemon: daemon.to_string(),
                api_key: Some(KEY.into()),
                daemon_ca: None,
                namespace: None,
                lease_namespace: "hypersdk".into(),
                lease_name: "hypersdk-operator".into(),
                identity: identity.into(),
                lease_duration: Duration::from_secs(4),
                interval: Duration::from_millis(300),
            },
        )
        .unwrap(),
    )
}

#[test]
fn the_crd_in_deploy_is_the_one_the_code_makes() {
    let file = std::fs::read_to_string(workspace_root().join("deploy/operator/crd.yaml")).unwrap();
    assert_eq!(
        file,
        hypersdk_operator::crd_yaml(),
        "deploy/operator/crd.yaml is stale: run `cargo run -p hypersdk-operator -- crd > deploy/operator/crd.yaml`"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vmexports_become_jobs_their_status_follows_deletion_cancels_and_one_replica_acts() {
    let cluster = KubeCluster::start();
    let client = client(&cluster).await;

    // The manifests of deploy/operator, as a user applies them.
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    let discovery = Discovery::new(client.clone()).run().await.unwrap();
    apply(&client, &discovery, "crd.yaml").await;
    wait_for("the CRD established", Duration::from_secs(30), async || {
        let crd = crds.get("vmexports.hypersdk.io").await.ok()?;
        let v = serde_json::to_value(&crd).ok()?;
        v["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Established" && c["status"] == "True")
            .then_some(())
    })
    .await;
    let discovery = Discovery::new(client.clone()).run().await.unwrap();
    let made = apply(&client, &discovery, "rbac.yaml").await;
    assert!(
        made.contains(&"ClusterRole/hypersdk-operator".to_string()),
        "{made:?}"
    );
    apply(&client, &discovery, "hypervisord.yaml").await;
    apply(&client, &discovery, "operator.yaml").await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "migrations"}})).unwrap(),
        )
        .await
        .unwrap();
    apply(&client, &discovery, "example.yaml").await;

    // A worker outside the cluster: hypervisord on PostgreSQL, with keys.
    let pg = Postgres::start();
    pg.create_database("queue");
    let tmp = tempfile::tempdir().unwrap();
    let vms = tmp.path().join("vms");
    std::fs::create_dir(&vms).unwrap();
    let disk = vms.join("big.raw");
    write_mixed_file(&disk, 48 << 20).unwrap();
    std::fs::write(vms.join("big.xml"), domain_xml("big", &[(&disk, "raw")])).unwrap();
    std::fs::copy(
        workspace_root().join("examples/vms/demo-vm.xml"),
        vms.join("demo-vm.xml"),
    )
    .ok();
    let yaml = format!(
        "listen: 127.0.0.1:0\ndatabase: '{}'\nnode: outside\noutput_root: {}\nmax_concurrent: 2\n\
         providers:\n  kvm: {{ kind: local, dir: {} }}\n\
         api_keys:\n  - {{ name: operator, role: operator, sha256: {} }}\n",
        pg.url("queue"),
        tmp.path().join("out").display(),
        vms.display(),
        sha256_hex(KEY)
    );
    let config = hypersdk_daemon::config::Config::parse(&yaml, "test").unwrap();
    let worker = hypersdk_daemon::Daemon::start(config).await.unwrap();
    let daemon = format!("http://{}", worker.addr);

    // Two replicas: one leads.
    let a = replica(&client, &daemon, "replica-a");
    let b = replica(&client, &daemon, "replica-b");
    let (stop_a, stopped_a) = tokio::sync::oneshot::channel::<()>();
    let (stop_b, stopped_b) = tokio::sync::oneshot::channel::<()>();
    let ta = tokio::spawn(a.clone().run(async move {
        let _ = stopped_a.await;
    }));
    let tb = tokio::spawn(b.clone().run(async move {
        let _ = stopped_b.await;
    }));
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), "hypersdk");
    let leader = wait_for("a leader", Duration::from_secs(20), async || {
        let l = leases.get("hypersdk-operator").await.ok()?;
        l.spec?.holder_identity
    })
    .await;
    assert!(leader == "replica-a" || leader == "replica-b", "{leader}");

    let exports: Api<VMExport> = Api::namespaced(client.clone(), "default");
    let create = async |name: &str, spec: Value| {
        let vx: VMExport = serde_json::from_value(json!({
            "apiVersion": "hypersdk.io/v1alpha1", "kind": "VMExport",
            "metadata": {"name": name}, "spec": spec
        }))
        .unwrap();
        exports.create(&PostParams::default(), &vx).await.unwrap();
    };
    let phase_of = async |name: &str, want: &[&str]| -> VMExport {
        let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        wait_for(
            &format!("{name} in {want:?}"),
            Duration::from_secs(90),
            async || {
                let vx = exports.get(name).await.ok()?;
                let phase = vx.status.as_ref()?.phase.clone()?;
                want.contains(&phase).then_some(vx)
            },
        )
        .await
    };

    // 1. An export runs on the worker and its status follows.
    create(
        "demo",
        json!({"vm": "big", "provider": "kvm", "options": {"format": "ova", "verify": true}}),
    )
    .await;
    let done = phase_of("demo", &["Succeeded", "Failed"]).await;
    let st = done.status.clone().unwrap();
    assert_eq!(st.phase.as_deref(), Some("Succeeded"), "{st:?}");
    assert!(done
        .finalizers()
        .contains(&hypersdk_operator::FINALIZER.to_string()));
    let artifact = st.artifact.clone().unwrap();
    assert!(artifact.ends_with("default/demo/big.ova"), "{artifact}");
    assert!(std::path::Path::new(&artifact).is_file());
    assert_eq!(st.node.as_deref(), Some("outside"));
    assert!(
        st.digests
            .keys()
            .any(|k| k.ends_with(".mf") || k.ends_with(".ovf")),
        "{:?}",
        st.digests
    );
    let ready = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Succeeded")
    );
    let report = hypersdk_testsupport::run_tool("sha256sum", &[&artifact]);
    assert!(!report.is_empty());

    // 2. A job hypervisord refuses: Failed, InvalidSpec, a Warning Event.
    create("wrong", json!({"vm": "big", "provider": "nope"})).await;
    let wrong = phase_of("wrong", &["Failed"]).await;
    let failed = wrong.status.unwrap();
    let cond = failed
        .conditions
        .iter()
        .find(|c| c.type_ == "Failed")
        .unwrap();
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_str()),
        ("True", "InvalidSpec")
    );
    assert!(cond.message.contains("nope"), "{cond:?}");

    // The example of deploy/operator names provider vc1, which this worker
    // does not have: refused the same way.
    let examples: Api<VMExport> = Api::namespaced(client.clone(), "migrations");
    let example = wait_for("the example refused", Duration::from_secs(60), async || {
        let vx = examples.get("web-01").await.ok()?;
        (vx.status.as_ref()?.phase.as_deref()? == "Failed").then_some(vx)
    })
    .await;
    assert!(
        example.status.unwrap().message.unwrap().contains("vc1"),
        "the message names the provider"
    );

    // 3. Deleting a running export cancels its job.
    create(
        "slow",
        json!({"vm": "big", "provider": "kvm", "options": {"bwlimit": "4M"}}),
    )
    .await;
    let running = phase_of("slow", &["Running"]).await;
    let job = running.status.unwrap().job_id.unwrap();
    exports
        .delete("slow", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("slow gone", Duration::from_secs(30), async || {
        exports.get_opt("slow").await.ok()?.is_none().then_some(())
    })
    .await;
    let http = reqwest::Client::new();
    let state = wait_for("its job cancelled", Duration::from_secs(30), async || {
        let text = http
            .get(format!("{daemon}/api/v1/jobs/{job}"))
            .bearer_auth(KEY)
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        (v["status"] != "running" && v["status"] != "queued").then_some(v)
    })
    .await;
    assert_eq!(state["status"], "cancelled", "{state}");

    // Events: from the leader only; the other replica stayed passive.
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), "default");
    let all = events.list(&ListParams::default()).await.unwrap();
    let ours: Vec<Value> = all
        .items
        .iter()
        .map(|e| serde_json::to_value(e).unwrap())
        .filter(|e| e["reportingController"] == "hypersdk-operator")
        .collect();
    let reasons: Vec<&str> = ours.iter().filter_map(|e| e["reason"].as_str()).collect();
    for want in ["Submitted", "Running", "Succeeded", "InvalidSpec"] {
        assert!(reasons.contains(&want), "{want} in {reasons:?}");
    }
    assert!(
        ours.iter()
            .all(|e| e["reportingInstance"] == leader.as_str()),
        "only {leader} acted: {ours:?}"
    );
    assert!(ours
        .iter()
        .any(|e| e["reason"] == "InvalidSpec" && e["type"] == "Warning"));

    // 4. The leader stops: the other takes over within the lease and acts.
    let (stop_leader, other) = if leader == "replica-a" {
        (stop_a, "replica-b")
    } else {
        (stop_b, "replica-a")
    };
    let _ = stop_leader.send(());
    create("after", json!({"vm": "big", "provider": "kvm"})).await;
    let after = phase_of("after", &["Succeeded"]).await;
    assert!(after.status.unwrap().artifact.is_some());
    let holder = leases
        .get("hypersdk-operator")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity
        .unwrap();
    assert_eq!(holder, other);
    ta.abort();
    tb.abort();
    worker.shutdown().await;
}
