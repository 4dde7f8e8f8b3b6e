"""The thinnest stub of the Proxmox VE REST API that an export uses.

No emulator of Proxmox VE exists. This one answers only the calls below,
each in the shape the PVE API viewer (https://pve.proxmox.com/pve-docs/api-viewer/,
PVE 8.x) documents for the path named at its handler, so that proxmoxer,
the client Proxmox users script with, parses its answers in the tests.
Every answer is {"data": ...}; errors are an HTTP status whose reason phrase
carries the message, as pveproxy sends them. Disk bytes are real files
made with qemu-img under --dir/storage/local (the "local" directory
storage, content images), which the tests read over a real OpenSSH server;
a snapshot runs `qemu-img snapshot -c` on every qcow2 disk of the VM (a
qcow2 internal snapshot, as PVE makes on directory storage) and fails on a
raw disk ("snapshot feature is not available", as PVE does).

Serves HTTPS on 127.0.0.1 with a self-signed certificate made at start
(--dir/pve-ssl.pem, its SHA-256 fingerprint in --dir/fingerprint as the PVE
GUI shows it, "AB:CD:…"); prints {"port": N} once listening, and exits when
standard input closes (or after --lifetime seconds). Test-only endpoints:
  POST /_peer/vm     {"node", "vmid", "status", "config": {...}}: a VM to serve
  GET  /_peer/stats  what happened: snapshots made and deleted, tasks, 401s
"""

import argparse
import hashlib
import json
import os
import re
import ssl
import struct
import subprocess
import threading
import time
import uuid
from http import server
from urllib.parse import parse_qs, unquote, urlsplit

from peer_serve import serve

STATE = {
    "vms": {},  # vmid -> {"node", "status", "config", "snapshots": {name: {...}}}
    "tasks": {},  # upid -> {"node", "type", "done_at", "exitstatus"}
    "stats": {"unauthorized": 0, "snapshots_made": 0, "snapshots_deleted": 0, "tasks": 0},
}
LOCK = threading.Lock()
ARGS = None
NODES = ["pve1", "pve2"]


class PveError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status, self.message = status, message


def storage_root():
    return os.path.join(ARGS.dir, "storage", "local")


def volume_file(volid):
    """The file of a volume of the "local" directory storage
    ("local:VMID/NAME" → ROOT/images/VMID/NAME, as PVE lays out dir storages)."""
    m = re.fullmatch(r"local:(\d+)/([A-Za-z0-9._-]+\.(qcow2|raw|vmdk))", volid)
    if not m:
        raise PveError(500, f"unable to parse directory volume name '{volid}'")
    return os.path.join(storage_root(), "images", m.group(1), m.group(2)), m.group(3)


def disk_volumes(config):
    """(key, volid) of every disk of a VM config (not CD-ROMs, not 'none')."""
    out = []
    for k, v in config.items():
        if re.fullmatch(r"(scsi|virtio|sata|ide)\d+|efidisk0|tpmstate0|unused\d+", k):
            volid = str(v).split(",")[0]
            if "media=cdrom" in str(v) or volid == "none":
                continue
            out.append((k, volid))
    return out


def virtual_size(path, fmt):
    if fmt == "qcow2":
        with open(path, "rb") as f:
            head = f.read(32)
        return struct.unpack(">Q", head[24:32])[0]
    return os.path.getsize(path)


def upid(node, kind, vmid):
    """A task id in PVE's form: UPID:node:pid:pstart:starttime:type:id:user:."""
    STATE["stats"]["tasks"] += 1
    u = "UPID:%s:%08X:%08X:%08X:%s:%s:%s:" % (
        node, os.getpid(), STATE["stats"]["tasks"], int(time.time()), kind, vmid, "root@pam!hypersdk")
    return u


class Pve(server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n).decode() if n else ""
        if self.headers.get("Content-Type", "").startswith("application/json"):
            return json.loads(raw or "{}")
        return {k: v[0] for k, v in parse_qs(raw).items()}

    def send(self, status, data, reason=None):
        body = json.dumps({"data": data}).encode()
        self.send_response(status, reason)
        self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def authorized(self):
        # "API Tokens": Authorization: PVEAPIToken=USER@REALM!TOKENID=SECRET.
        if self.headers.get("Authorization", "") == f"PVEAPIToken={ARGS.token_id}={ARGS.secret}":
            return True
        STATE["stats"]["unauthorized"] += 1
        self.send(401, None, "invalid token value!")
        return False

    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")

    def do_DELETE(self):
        self.route("DELETE")

    def route(self, method):
        u = urlsplit(self.path)
        path, query = u.path, {k: v[0] for k, v in parse_qs(u.query).items()}
        with LOCK:
            if path == "/_peer/vm" and method == "POST":
                vm = self.body()
                STATE["vms"][int(vm["vmid"])] = {"node": vm["node"], "status": vm.get("status", "stopped"),
                                                 "config": vm["config"], "snapshots": {}}
                return self.send(200, None)
            if path == "/_peer/stats":
                s = dict(STATE["stats"])
                s["snapshots"] = {str(k): sorted(v["snapshots"]) for k, v in STATE["vms"].items()}
                return self.send(200, s)
            if not self.authorized():
                return
            if not path.startswith("/api2/json/"):
                return self.send(501, None, f"Unexpected content for method '{method}'")
            rest = path[len("/api2/json"):]
            for pattern, verb, handler in ROUTES:
                m = re.fullmatch(pattern, rest)
                if m and verb == method:
                    try:
                        return handler(self, query, **{k: unquote(v) for k, v in m.groupdict().items()})
                    except PveError as e:
                        return self.send(e.status, None, e.message)
            return self.send(501, None, f"Method '{method} {rest}' not implemented")

    # --- handlers -----------------------------------------------------------

    def version(self, q):
        """GET /version: {version, release, repoid}."""
        self.send(200, {"version": "8.3.2", "release": "8.3", "repoid": "3e76eec21c4a14a7"})

    def nodes(self, q):
        """GET /nodes: [{node, status, type, …}]."""
        self.send(200, [{"node": n, "status": "online", "type": "node", "id": f"node/{n}",
                         "maxcpu": 2, "maxmem": 8 << 30} for n in NODES])

    def vm(self, node, vmid):
        vm = STATE["vms"].get(int(vmid))
        if vm is None or vm["node"] != node:
            # pveproxy: 500 "Configuration file 'nodes/N/qemu-server/ID.conf' does not exist".
            raise PveError(500, f"Configuration file 'nodes/{node}/qemu-server/{vmid}.conf' does not exist")
        return vm

    def summary(self, vmid, vm):
        c = vm["config"]
        return {"vmid": vmid, "name": c.get("name", f"VM {vmid}"), "status": vm["status"],
                "maxmem": int(c.get("memory", 512)) << 20,
                "cpus": int(c.get("cores", 1)) * int(c.get("sockets", 1)),
                "template": 1 if c.get("template") else 0}

    def cluster_status(self, q):
        """GET /cluster/status: the cluster entry and one entry per node
        ({type: "node", name, ip, online, local, nodeid})."""
        out = [{"type": "cluster", "id": "cluster", "name": "hypersdk-test", "nodes": len(NODES), "quorate": 1}]
        out += [{"type": "node", "id": f"node/{n}", "name": n, "ip": "127.0.0.1", "online": 1,
                 "local": int(i == 0), "nodeid": i + 1} for i, n in enumerate(NODES)]
        self.send(200, out)

    def resources(self, q):
        """GET /cluster/resources?type=vm: [{id: "qemu/ID", type, vmid, name,
        node, status, maxmem, maxcpu, template}] across nodes."""
        if q.get("type") not in (None, "vm"):
            raise PveError(400, "Parameter verification failed.")
        out = []
        for vmid, vm in sorted(STATE["vms"].items()):
            s = self.summary(vmid, vm)
            out.append({"id": f"qemu/{vmid}", "type": "qemu", "vmid": vmid, "name": s["name"],
                        "node": vm["node"], "status": vm["status"], "maxmem": s["maxmem"],
                        "maxcpu": s["cpus"], "template": s["template"]})
        self.send(200, out)

    def list_qemu(self, q, node):
        """GET /nodes/{node}/qemu: [{vmid, name, status, maxmem, cpus}]."""
        if node not in NODES:
            raise PveError(595, f"no such node '{node}'")
        self.send(200, [self.summary(vmid, vm) for vmid, vm in sorted(STATE["vms"].items())
                        if vm["node"] == node])

    def config(self, q, node, vmid):
        """GET /nodes/{node}/qemu/{vmid}/config: the current configuration
        (with `digest`; ?snapshot=NAME gives a snapshot's)."""
        vm = self.vm(node, vmid)
        c = dict(vm["config"])
        if q.get("snapshot"):
            snap = vm["snapshots"].get(q["snapshot"])
            if snap is None:
                raise PveError(500, f"snapshot '{q['snapshot']}' does not exist")
            c = dict(snap["config"])
        if vm["snapshots"]:
            c["parent"] = sorted(vm["snapshots"].items(), key=lambda kv: kv[1]["snaptime"])[-1][0]
        c["digest"] = hashlib.sha1(json.dumps(c, sort_keys=True).encode()).hexdigest()
        self.send(200, c)

    def status(self, q, node, vmid):
        """GET /nodes/{node}/qemu/{vmid}/status/current: {status, qmpstatus, …}."""
        vm = self.vm(node, vmid)
        s = self.summary(int(vmid), vm)
        s["qmpstatus"] = vm["status"]
        self.send(200, s)

    def snapshots(self, q, node, vmid):
        """GET /nodes/{node}/qemu/{vmid}/snapshot: [{name, description,
        snaptime, vmstate, parent}] and the "current" pseudo-entry."""
        vm = self.vm(node, vmid)
        out = [{"name": n, "description": s["description"], "snaptime": s["snaptime"], "vmstate": 0}
               for n, s in vm["snapshots"].items()]
        out.append({"name": "current", "description": "You are here!", "running": int(vm["status"] == "running")})
        self.send(200, out)

    def snapshot(self, q, node, vmid):
        """POST /nodes/{node}/qemu/{vmid}/snapshot (snapname, description,
        vmstate): starts a task, answers its UPID."""
        vm = self.vm(node, vmid)
        p = self.body()
        name = p.get("snapname", "")
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_\-]{1,39}", name):
            return self.send(400, None, "Parameter verification failed.")
        if name in vm["snapshots"]:
            raise PveError(500, f"snapshot name '{name}' already used")
        task = upid(node, "qmsnapshot", vmid)
        exitstatus = "OK"
        for key, volid in disk_volumes(vm["config"]):
            if key.startswith("unused"):
                continue
            path, fmt = volume_file(volid)
            if fmt != "qcow2":
                exitstatus = "snapshot feature is not available"
                break
        if exitstatus == "OK":
            for key, volid in disk_volumes(vm["config"]):
                if not key.startswith("unused"):
                    subprocess.run(["qemu-img", "snapshot", "-c", name, volume_file(volid)[0]],
                                   check=True, capture_output=True)
            vm["snapshots"][name] = {"description": p.get("description", ""), "snaptime": int(time.time()),
                                     "config": dict(vm["config"])}
            STATE["stats"]["snapshots_made"] += 1
        STATE["tasks"][task] = {"node": node, "type": "qmsnapshot", "done_at": time.time() + ARGS.task_seconds,
                                "exitstatus": exitstatus}
        self.send(200, task)

    def delete_snapshot(self, q, node, vmid, snap):
        """DELETE /nodes/{node}/qemu/{vmid}/snapshot/{snapname}: a task."""
        vm = self.vm(node, vmid)
        if snap not in vm["snapshots"]:
            raise PveError(500, f"snapshot '{snap}' does not exist")
        for key, volid in disk_volumes(vm["snapshots"][snap]["config"]):
            if not key.startswith("unused"):
                subprocess.run(["qemu-img", "snapshot", "-d", snap, volume_file(volid)[0]],
                               check=True, capture_output=True)
        del vm["snapshots"][snap]
        STATE["stats"]["snapshots_deleted"] += 1
        task = upid(node, "qmdelsnapshot", vmid)
        STATE["tasks"][task] = {"node": node, "type": "qmdelsnapshot", "done_at": time.time() + ARGS.task_seconds,
                                "exitstatus": "OK"}
        self.send(200, task)

    def task_status(self, q, node, upid_):
        """GET /nodes/{node}/tasks/{upid}/status: {status: running|stopped,
        exitstatus (once stopped), upid, type, node}."""
        t = STATE["tasks"].get(upid_)
        if t is None or t["node"] != node:
            raise PveError(500, f"unable to parse worker upid '{upid_}'")
        out = {"upid": upid_, "node": node, "type": t["type"], "status": "running", "pid": os.getpid()}
        if time.time() >= t["done_at"]:
            out["status"] = "stopped"
            out["exitstatus"] = t["exitstatus"]
        self.send(200, out)

    def storage(self, q, storage):
        """GET /storage/{storage}: the storage's configuration ({storage,
        type, path, content})."""
        if storage != "local":
            raise PveError(500, f"storage '{storage}' does not exist")
        self.send(200, {"storage": "local", "type": "dir", "path": storage_root(),
                        "content": "images,iso,vztmpl,backup", "digest": "0" * 40})

    def volume(self, q, node, storage, volume):
        """GET /nodes/{node}/storage/{storage}/content/{volume}: {path,
        format, size, used} of a volume."""
        if storage != "local" or not volume.startswith("local:"):
            raise PveError(500, f"storage '{storage}' does not exist")
        path, fmt = volume_file(volume)
        if not os.path.exists(path):
            raise PveError(500, f"volume '{volume}' does not exist")
        self.send(200, {"path": path, "format": fmt, "size": virtual_size(path, fmt),
                        "used": os.stat(path).st_blocks * 512})


N = r"/nodes/(?P<node>[^/]+)"
Q = N + r"/qemu/(?P<vmid>\d+)"
ROUTES = [
    (r"/version", "GET", Pve.version),
    (r"/nodes", "GET", Pve.nodes),
    (r"/cluster/resources", "GET", Pve.resources),
    (r"/cluster/status", "GET", Pve.cluster_status),
    (N + r"/qemu", "GET", Pve.list_qemu),
    (Q + r"/config", "GET", Pve.config),
    (Q + r"/status/current", "GET", Pve.status),
    (Q + r"/snapshot", "GET", Pve.snapshots),
    (Q + r"/snapshot", "POST", Pve.snapshot),
    (Q + r"/snapshot/(?P<snap>[^/]+)", "DELETE", Pve.delete_snapshot),
    (N + r"/tasks/(?P<upid_>[^/]+)/status", "GET", Pve.task_status),
    (r"/storage/(?P<storage>[^/]+)", "GET", Pve.storage),
    (N + r"/storage/(?P<storage>[^/]+)/content/(?P<volume>.+)", "GET", Pve.volume),
]


def certificate(d):
    """A self-signed certificate for 127.0.0.1, as a fresh PVE node has."""
    key, crt = os.path.join(d, "pve-ssl.key"), os.path.join(d, "pve-ssl.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", key, "-out", crt, "-subj", "/CN=pve1.test",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    der = ssl.PEM_cert_to_DER_cert(open(crt).read())
    fp = hashlib.sha256(der).hexdigest().upper()
    return key, crt, ":".join(fp[i:i + 2] for i in range(0, len(fp), 2))


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True, help="work directory: certificate and storage/local")
    ap.add_argument("--token-id", default="root@pam!hypersdk")
    ap.add_argument("--secret", default="5f0c2d4e-7a1b-4c3d-9e8f-0a1b2c3d4e5f")
    ap.add_argument("--task-seconds", type=float, default=0.3, help="how long a task runs")
    ap.add_argument("--lifetime", type=float, default=1800)
    ARGS = ap.parse_args()
    os.makedirs(os.path.join(storage_root(), "images"), exist_ok=True)
    key, crt, fp = certificate(ARGS.dir)
    httpd = server.ThreadingHTTPServer(("127.0.0.1", 0), Pve)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(crt, key)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    with open(os.path.join(ARGS.dir, "fingerprint"), "w") as f:
        f.write(fp)
    serve(httpd, ARGS.lifetime)


if __name__ == "__main__":
    main()
