"""The thinnest stub of the Compute Engine and Cloud Build calls that an
export of a Compute Engine instance uses, over gcp-storage-emulator for
every byte of disk data.

No emulator of Compute Engine exists. This one answers only the calls
below, each in the shape of the REST reference section named at its
handler (Compute Engine API v1, Cloud Build API v1), so that Google's own
Python clients (google-cloud-compute, google-cloud-build, REST transport)
parse its answers in the tests. A disk is a sparse raw file written by
tests/peers/seed_gce_vm.py; an image is a sparse copy of its source disk
taken when the image is made; an image export (the Cloud Build job that
`gcloud compute images export` submits, running
gcr.io/compute-image-tools/gce_vm_image_export) writes `disk.raw` of the
image into a gzipped GNU tar made with `tar -Sczf` — sparse-aware, as
Google's exporter is — and uploads it into the storage emulator.

--service-account FILE writes a service-account key (a fresh RSA key,
token_uri pointing here) and POST /token trades its signed assertions for
access tokens ("Using OAuth 2.0 for Server to Server Applications"),
checked with google-auth; every API call then needs one of those tokens.

Prints {"port": N} once listening on 127.0.0.1; exits when standard input
closes (or after --lifetime seconds). Test-only endpoints under /_peer/:
  POST /_peer/instance  an instance to serve (JSON, see seed_gce_vm.py)
  GET  /_peer/stats     what happened: images made and deleted, builds,
                        cancellations, live images
"""

import argparse
import base64
import datetime
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from http import server
from urllib.parse import parse_qs, urlsplit

from peer_serve import serve

SCOPE = "https://www.googleapis.com/auth/cloud-platform"
EXPORTER = "gcr.io/compute-image-tools/gce_vm_image_export:release"
STATE = {
    "instances": {},  # (zone, name) -> Instance resource
    "disks": {},  # (zone, name) -> [Disk resource, raw file]
    "images": {},  # name -> [Image resource, raw file]
    "operations": {},  # name -> [polls left, Operation resource]
    "builds": {},  # id -> Build resource
    "cancelled": set(),  # build ids asked to stop
    "stats": {"images_made": 0, "images_deleted": 0, "builds": 0, "builds_cancelled": 0,
              "exports_written": 0, "tokens": 0, "unauthorized": 0},
}
LOCK = threading.Lock()
ARGS = None
AUTH = {"public": None, "tokens": set()}
# Machine types of the stub's zones ("Machine families resource and
# comparison guide"): name -> (guestCpus, memoryMb).
MACHINE_TYPES = {
    "e2-small": (2, 2048),
    "e2-medium": (2, 4096),
    "n2-standard-4": (4, 16384),
    "c3-standard-8": (8, 32768),
}
COMPUTE = "/compute/v1/projects/(?P<project>[^/]+)"


def now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def numeric_id():
    return str(secrets.randbelow(10**18) + 10**18)


class Handler(server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    # --- plumbing ---------------------------------------------------------

    def body(self):
        # Read once, whether a handler wants it or not: a body left unread
        # would be taken for the next request on the connection.
        if not hasattr(self, "_body"):
            n = int(self.headers.get("Content-Length") or 0)
            self._body = self.rfile.read(n) if n else b""
        return self._body

    def send(self, status, body=None):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def error(self, status, reason, message):
        # "Compute Engine API > Errors" / Google JSON error format:
        # {"error": {"code", "message", "errors": [{"reason", "message", "domain"}], "status"}}.
        statuses = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                    404: "NOT_FOUND", 409: "ALREADY_EXISTS"}
        self.send(status, {"error": {"code": status, "message": message,
                                     "errors": [{"message": message, "domain": "global", "reason": reason}],
                                     "status": statuses.get(status, "UNKNOWN")}})

    def base(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def link(self, path):
        return f"{self.base()}/compute/v1/projects/{ARGS.project}/{path}"

    def authorized(self):
        if AUTH["public"] is None:
            return True
        given = self.headers.get("Authorization", "")
        if given.startswith("Bearer ") and given[7:] in AUTH["tokens"]:
            return True
        if given.startswith("Bearer ") and self.self_signed(given[7:]):
            return True
        STATE["stats"]["unauthorized"] += 1
        self.error(401, "authError", "Request had invalid authentication credentials. "
                   "Expected OAuth 2 access token, login cookie or other valid authentication credential.")
        return False

    def self_signed(self, token):
        """A self-signed JWT as Google's client libraries send one in place
        of an access token ("Addendum: Service account authorization without
        OAuth"): signed by the key, its audience the API or its scope ours."""
        from google.auth import jwt

        try:
            aud = jwt.decode(token, verify=False).get("aud")
            claims = jwt.decode(token, certs=AUTH["public"], audience=aud)
            ok = SCOPE in (claims.get("scope") or "").split() or str(claims.get("aud", "")).startswith("https://")
        except Exception:
            return False
        if ok:
            STATE["stats"]["self_signed"] = STATE["stats"].get("self_signed", 0) + 1
        return ok

    def token(self):
        """"Using OAuth 2.0 for Server to Server Applications > Making the
        access token request": a JWT bearer assertion signed by the key, its
        audience Google's token endpoint wherever it is sent."""
        from google.auth import jwt

        form = parse_qs(self.body().decode())
        try:
            assert form.get("grant_type") == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
            claims = jwt.decode(form["assertion"][0], certs=AUTH["public"],
                                audience="https://oauth2.googleapis.com/token")
            assert SCOPE in claims["scope"].split()
        except Exception as e:
            return self.send(400, {"error": "invalid_grant", "error_description": "Invalid JWT: %s" % e})
        token = "ya29.test-" + secrets.token_hex(16)
        AUTH["tokens"].add(token)
        STATE["stats"]["tokens"] += 1
        self.send(200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"})

    def route(self, method):
        self.body()
        path = urlsplit(self.path).path
        for m, pattern, fn in ROUTES:
            if m == method:
                found = re.fullmatch(pattern, path)
                if found:
                    if found.groupdict().get("project", ARGS.project) != ARGS.project:
                        return self.error(403, "forbidden", f"Project {found['project']} is not found or permission denied.")
                    return fn(self, **{k: v for k, v in found.groupdict().items() if k != "project"})
        self.error(404, "notFound", f"The requested URL {path} was not found.")

    def query(self):
        return parse_qs(urlsplit(self.path).query)

    def parse_request(self):
        # One handler serves every request of a kept-alive connection: the
        # last request's body is not this one's.
        self.__dict__.pop("_body", None)
        return super().parse_request()

    def do_GET(self):
        if self.path == "/_peer/stats":
            with LOCK:
                stats = dict(STATE["stats"], live_images=sorted(STATE["images"]),
                             running_builds=sorted(b for b, v in STATE["builds"].items()
                                                   if v["status"] in ("QUEUED", "WORKING")))
            return self.send(200, stats)
        if self.authorized():
            self.route("GET")

    def do_POST(self):
        if self.path == "/token":
            return self.token()
        if self.path == "/_peer/instance":
            return self.seed(json.loads(self.body()))
        if self.authorized():
            self.route("POST")

    def do_DELETE(self):
        if self.authorized():
            self.route("DELETE")

    # --- test-only ------------------------------------------------------------

    def seed(self, spec):
        zone = ARGS.zone
        disks = []
        for i, d in enumerate(spec["disks"]):
            size_gb = d["sizeGb"]
            disk = {
                "kind": "compute#disk", "id": numeric_id(), "name": d["name"],
                "creationTimestamp": now(), "sizeGb": str(size_gb),
                "zone": self.link(f"zones/{zone}"), "status": "READY",
                "selfLink": self.link(f"zones/{zone}/disks/{d['name']}"),
                "type": self.link(f"zones/{zone}/diskTypes/pd-balanced"),
                "users": [self.link(f"zones/{zone}/instances/{spec['name']}")],
                "physicalBlockSizeBytes": "4096", "architecture": "X86_64",
            }
            if d.get("boot"):
                disk["sourceImage"] = "https://www.googleapis.com/compute/v1/projects/debian-cloud/global/images/debian-12-bookworm-v20250610"
                disk["guestOsFeatures"] = [{"type": "UEFI_COMPATIBLE"}, {"type": "VIRTIO_SCSI_MULTIQUEUE"},
                                           {"type": "GVNIC"}, {"type": "SEV_CAPABLE"}]
                disk["licenses"] = ["https://www.googleapis.com/compute/v1/projects/debian-cloud/global/licenses/debian-12-bookworm"]
            STATE["disks"][(zone, d["name"])] = [disk, d["file"]]
            attached = {
                "kind": "compute#attachedDisk", "type": "PERSISTENT", "mode": "READ_WRITE",
                "source": disk["selfLink"], "deviceName": d.get("deviceName", d["name"]),
                "index": i, "boot": bool(d.get("boot")), "autoDelete": bool(d.get("boot")),
                "interface": d.get("interface", "SCSI"), "diskSizeGb": str(size_gb),
                "architecture": "X86_64",
            }
            if d.get("boot"):
                attached["guestOsFeatures"] = disk["guestOsFeatures"]
                attached["licenses"] = disk["licenses"]
            disks.append(attached)
        nics = []
        for i, n in enumerate(spec.get("nics", [])):
            nics.append({
                "kind": "compute#networkInterface", "name": f"nic{i}",
                "network": f"https://www.googleapis.com/compute/v1/projects/{ARGS.project}/global/networks/{n['network']}",
                "subnetwork": f"https://www.googleapis.com/compute/v1/projects/{ARGS.project}/regions/us-central1/subnetworks/{n['subnetwork']}",
                "networkIP": n.get("ip", f"10.128.0.{10 + i}"), "nicType": n.get("nicType", "GVNIC"),
                "stackType": "IPV4_ONLY", "fingerprint": "abc=",
            })
        instance = {
            "kind": "compute#instance", "id": numeric_id(), "creationTimestamp": now(),
            "name": spec["name"], "description": spec.get("description", ""),
            "machineType": self.link(f"zones/{zone}/machineTypes/{spec['machineType']}"),
            "status": spec.get("status", "RUNNING"), "zone": self.link(f"zones/{zone}"),
            "cpuPlatform": "Intel Broadwell", "canIpForward": False,
            "networkInterfaces": nics, "disks": disks,
            "labels": spec.get("labels", {}), "selfLink": self.link(f"zones/{zone}/instances/{spec['name']}"),
            "scheduling": {"onHostMaintenance": "MIGRATE", "automaticRestart": True, "preemptible": False},
            "shieldedInstanceConfig": {"enableSecureBoot": bool(spec.get("secureBoot")),
                                       "enableVtpm": True, "enableIntegrityMonitoring": True},
            "fingerprint": "xyz=", "startRestricted": False, "deletionProtection": False,
        }
        STATE["instances"][(zone, spec["name"])] = instance
        self.send(200, {"selfLink": instance["selfLink"]})

    # --- Compute Engine ---------------------------------------------------

    def aggregated_instances(self):
        """instances.aggregatedList: GET /compute/v1/projects/{project}/aggregated/instances
        -> InstanceAggregatedList {items: {"zones/ZONE": {instances: [...]}}, nextPageToken}."""
        q = self.query()
        size = min(int((q.get("maxResults") or [ARGS.page_size])[0]), ARGS.page_size)
        start = int((q.get("pageToken") or ["0"])[0])
        everything = sorted(STATE["instances"].items())
        page = everything[start:start + size]
        items = {}
        for (zone, _), inst in page:
            items.setdefault(f"zones/{zone}", {"instances": []})["instances"].append(inst)
        items.setdefault("zones/europe-west1-b", {"warning": {
            "code": "NO_RESULTS_ON_PAGE", "message": "There are no results for scope 'zones/europe-west1-b' on this page.",
            "data": [{"key": "scope", "value": "zones/europe-west1-b"}]}})
        out = {"kind": "compute#instanceAggregatedList", "id": f"projects/{ARGS.project}/aggregated/instances",
               "items": items, "selfLink": self.link("aggregated/instances")}
        if start + size < len(everything):
            out["nextPageToken"] = str(start + size)
        self.send(200, out)

    def get_instance(self, zone, name):
        """instances.get: GET /compute/v1/projects/{project}/zones/{zone}/instances/{instance} -> Instance."""
        inst = STATE["instances"].get((zone, name))
        if inst is None:
            return self.error(404, "notFound", f"The resource 'projects/{ARGS.project}/zones/{zone}/instances/{name}' was not found")
        self.send(200, inst)

    def get_machine_type(self, zone, name):
        """machineTypes.get: GET /compute/v1/projects/{project}/zones/{zone}/machineTypes/{machineType} -> MachineType."""
        if name not in MACHINE_TYPES:
            return self.error(404, "notFound", f"The resource 'projects/{ARGS.project}/zones/{zone}/machineTypes/{name}' was not found")
        cpus, mb = MACHINE_TYPES[name]
        self.send(200, {"kind": "compute#machineType", "id": numeric_id(), "name": name,
                        "description": f"{cpus} vCPUs, {mb / 1024:g} GB RAM", "guestCpus": cpus,
                        "memoryMb": mb, "zone": zone, "isSharedCpu": False,
                        "maximumPersistentDisks": 128, "maximumPersistentDisksSizeGb": "263168",
                        "selfLink": self.link(f"zones/{zone}/machineTypes/{name}")})

    def get_disk(self, zone, name):
        """disks.get: GET /compute/v1/projects/{project}/zones/{zone}/disks/{disk} -> Disk."""
        d = STATE["disks"].get((zone, name))
        if d is None:
            return self.error(404, "notFound", f"The resource 'projects/{ARGS.project}/zones/{zone}/disks/{name}' was not found")
        self.send(200, d[0])

    def operation(self, kind, target, done_body=None, error=None):
        """A global Operation ("Handling API responses": PENDING, RUNNING,
        then DONE after ARGS.polls polls, with `error` if it failed)."""
        name = f"operation-{int(time.time() * 1000)}-{secrets.token_hex(8)}"
        op = {"kind": "compute#operation", "id": numeric_id(), "name": name, "operationType": kind,
              "targetLink": target, "targetId": numeric_id(), "status": "PENDING", "progress": 0,
              "user": "exporter@hypersdk-test.iam.gserviceaccount.com", "insertTime": now(),
              "selfLink": self.link(f"global/operations/{name}")}
        STATE["operations"][name] = [ARGS.polls, op, done_body, error]
        return op

    def insert_image(self):
        """images.insert: POST /compute/v1/projects/{project}/global/images[?forceCreate=true]
        with an Image {name, sourceDisk, labels, ...} -> Operation. A disk in use
        by a running instance needs forceCreate ("Create custom images > Create
        an image from a disk attached to a running VM")."""
        img = json.loads(self.body() or b"{}")
        name = img.get("name", "")
        if not re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", name):
            return self.error(400, "invalid", f"Invalid value for field 'resource.name': '{name}'. Must be a match of regex '(?:[a-z](?:[-a-z0-9]{{0,61}}[a-z0-9])?)'")
        with LOCK:
            if name in STATE["images"]:
                return self.error(409, "alreadyExists", f"The resource 'projects/{ARGS.project}/global/images/{name}' already exists")
            m = re.search(r"zones/([^/]+)/disks/([^/]+)$", img.get("sourceDisk", ""))
            d = m and STATE["disks"].get((m[1], m[2]))
            if not d:
                return self.error(400, "invalid", f"Invalid value for field 'resource.sourceDisk': '{img.get('sourceDisk')}'. The referenced source disk resource cannot be found.")
            in_use = any(i["status"] == "RUNNING" and any(a["source"] == d[0]["selfLink"] for a in i["disks"])
                         for i in STATE["instances"].values())
            if in_use and self.query().get("forceCreate") != ["true"]:
                return self.error(400, "resourceInUseByAnotherResource",
                                  f"The disk resource '{d[0]['selfLink']}' is already being used by an instance")
            copy = os.path.join(ARGS.dir, f"image-{name}.raw")
            subprocess.run(["cp", "--sparse=always", d[1], copy], check=True)
            image = {"kind": "compute#image", "id": numeric_id(), "creationTimestamp": now(), "name": name,
                     "description": img.get("description", ""), "sourceType": "RAW", "status": "READY",
                     "archiveSizeBytes": str(os.stat(copy).st_blocks * 512), "diskSizeGb": d[0]["sizeGb"],
                     "sourceDisk": d[0]["selfLink"], "sourceDiskId": d[0]["id"],
                     "labels": img.get("labels", {}), "guestOsFeatures": d[0].get("guestOsFeatures", []),
                     "licenses": d[0].get("licenses", []), "storageLocations": ["us"],
                     "architecture": "X86_64", "selfLink": self.link(f"global/images/{name}")}
            STATE["images"][name] = [image, copy]
            STATE["stats"]["images_made"] += 1
            op = self.operation("insert", image["selfLink"])
        self.send(200, op)

    def get_image(self, name):
        """images.get: GET /compute/v1/projects/{project}/global/images/{image} -> Image."""
        i = STATE["images"].get(name)
        if i is None:
            return self.error(404, "notFound", f"The resource 'projects/{ARGS.project}/global/images/{name}' was not found")
        self.send(200, i[0])

    def delete_image(self, name):
        """images.delete: DELETE /compute/v1/projects/{project}/global/images/{image} -> Operation."""
        with LOCK:
            i = STATE["images"].pop(name, None)
            if i is None:
                return self.error(404, "notFound", f"The resource 'projects/{ARGS.project}/global/images/{name}' was not found")
            os.unlink(i[1])
            STATE["stats"]["images_deleted"] += 1
            op = self.operation("delete", i[0]["selfLink"])
        self.send(200, op)

    def get_operation(self, name):
        """globalOperations.get: GET /compute/v1/projects/{project}/global/operations/{operation} -> Operation."""
        with LOCK:
            entry = STATE["operations"].get(name)
            if entry is None:
                return self.error(404, "notFound", f"The resource 'projects/{ARGS.project}/global/operations/{name}' was not found")
            if entry[0] > 0:
                entry[0] -= 1
                entry[1].update(status="RUNNING", progress=50, startTime=now())
            else:
                entry[1].update(status="DONE", progress=100, endTime=now())
            op = dict(entry[1])
        self.send(200, op)

    def wait_operation(self, name):
        """globalOperations.wait: POST .../global/operations/{operation}/wait -> Operation (done, here)."""
        with LOCK:
            entry = STATE["operations"].get(name)
            if entry is None:
                return self.error(404, "notFound", f"The resource 'projects/{ARGS.project}/global/operations/{name}' was not found")
            entry[0] = 0
        self.get_operation(name)

    # --- Cloud Build ------------------------------------------------------

    def create_build(self):
        """projects.builds.create: POST /v1/projects/{projectId}/builds with a Build
        -> Operation {name: operations/build/PROJECT/ID, metadata: BuildOperationMetadata}.
        Only the image-export step is run ("Exporting a custom image to Cloud
        Storage": gce_vm_image_export with -source_image, -destination_uri,
        -format empty for disk.raw in a tar.gz)."""
        b = json.loads(self.body() or b"{}")
        steps = b.get("steps") or []
        if len(steps) != 1 or steps[0].get("name") != EXPORTER:
            return self.error(400, "invalid", "this stub runs one step only: " + EXPORTER)
        args = dict(a.lstrip("-").split("=", 1) for a in steps[0].get("args", []) if "=" in a)
        bid = str(uuid.uuid4())
        build = {"id": bid, "projectId": ARGS.project, "status": "QUEUED", "steps": steps,
                 "createTime": now(), "timeout": b.get("timeout", "7200s"), "tags": b.get("tags", []),
                 "logUrl": f"https://console.cloud.google.com/cloud-build/builds/{bid}?project={ARGS.project}",
                 "options": b.get("options", {}), "name": f"projects/{ARGS.project}/builds/{bid}"}
        with LOCK:
            STATE["builds"][bid] = build
            STATE["stats"]["builds"] += 1
            shown = dict(build)
        threading.Thread(target=run_export, args=(bid, args), daemon=True).start()
        self.send(200, {"name": f"operations/build/{ARGS.project}/{base64.urlsafe_b64encode(bid.encode()).decode()}",
                        "metadata": {"@type": "type.googleapis.com/google.devtools.cloudbuild.v1.BuildOperationMetadata",
                                     "build": shown}})

    def get_build(self, id):
        """projects.builds.get: GET /v1/projects/{projectId}/builds/{id} -> Build."""
        # Copied under the lock: the export job updates the build as it runs.
        with LOCK:
            b = STATE["builds"].get(id)
            b = b and dict(b)
        if b is None:
            return self.error(404, "notFound", f"build {id} not found")
        self.send(200, b)

    def cancel_build(self, id):
        """projects.builds.cancel: POST /v1/projects/{projectId}/builds/{id}:cancel -> Build."""
        with LOCK:
            b = STATE["builds"].get(id)
            if b is None:
                return self.error(404, "notFound", f"build {id} not found")
            if b["status"] in ("QUEUED", "WORKING"):
                STATE["cancelled"].add(id)
                b["status"] = "CANCELLED"
                b["finishTime"] = now()
                STATE["stats"]["builds_cancelled"] += 1
            b = dict(b)
        self.send(200, b)

    def get_build_operation(self, id):
        """operations.get: GET /v1/operations/build/{project}/{base64 id} -> Operation,
        done with the Build as its response once the build ends."""
        bid = base64.urlsafe_b64decode(id).decode()
        with LOCK:
            b = STATE["builds"].get(bid)
            b = b and dict(b)
        if b is None:
            return self.error(404, "notFound", f"operation {id} not found")
        op = {"name": f"operations/build/{ARGS.project}/{id}",
              "metadata": {"@type": "type.googleapis.com/google.devtools.cloudbuild.v1.BuildOperationMetadata", "build": b}}
        if b["status"] not in ("QUEUED", "WORKING", "PENDING"):
            op["done"] = True
            if b["status"] == "SUCCESS":
                op["response"] = dict(b, **{"@type": "type.googleapis.com/google.devtools.cloudbuild.v1.Build"})
            else:
                op["error"] = {"code": 2, "message": f"Build {b['status']}: {b.get('statusDetail', '')}"}
        self.send(200, op)


def run_export(bid, args):
    """The export job: QUEUED, WORKING for --build-seconds, then `tar -Sczf`
    of the image's disk.raw uploaded to the destination; FAILURE with a
    statusDetail when the image or the destination is not right."""
    build = STATE["builds"][bid]

    def finish(status, detail=""):
        with LOCK:
            if build["status"] == "CANCELLED":
                return
            build.update(status=status, finishTime=now())
            if detail:
                build["statusDetail"] = detail

    time.sleep(0.05)
    with LOCK:
        if build["status"] == "CANCELLED":
            return
        build.update(status="WORKING", startTime=now())
    m = re.fullmatch(r"(?:https://www.googleapis.com/compute/v1/)?projects/([^/]+)/global/images/([^/]+)",
                     args.get("source_image", ""))
    dest = re.fullmatch(r"gs://([^/]+)/(.+\.tar\.gz)", args.get("destination_uri", ""))
    if args.get("format", "") not in ("",):
        return finish("FAILURE", "this stub exports disk.raw in a tar.gz only")
    if not m or m[1] != ARGS.project or m[2] not in STATE["images"]:
        return finish("FAILURE", f"source image {args.get('source_image')} not found")
    if not dest:
        return finish("FAILURE", f"destination_uri {args.get('destination_uri')} is not gs://BUCKET/OBJECT.tar.gz")
    deadline = time.time() + ARGS.build_seconds
    while time.time() < deadline:
        if bid in STATE["cancelled"]:
            return
        time.sleep(0.05)
    work = tempfile.mkdtemp(dir=ARGS.dir)
    try:
        os.link(STATE["images"][m[2]][1], os.path.join(work, "disk.raw"))
        out = os.path.join(work, "disk.tar.gz")
        subprocess.run(["tar", "-Sczf", out, "-C", work, "disk.raw"], check=True)
        if bid in STATE["cancelled"]:
            return
        url = (f"{ARGS.storage}/upload/storage/v1/b/{urllib.parse.quote(dest[1], safe='')}/o"
               f"?uploadType=media&name={urllib.parse.quote(dest[2], safe='')}")
        with open(out, "rb") as f:
            req = urllib.request.Request(url, data=f, method="POST", headers={
                "Content-Type": "application/gzip", "Content-Length": str(os.stat(out).st_size)})
            urllib.request.urlopen(req, timeout=600).read()
        STATE["stats"]["exports_written"] += 1
        finish("SUCCESS")
    except Exception as e:
        finish("FAILURE", f"export failed: {e}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


ROUTES = [
    ("GET", COMPUTE + r"/aggregated/instances", Handler.aggregated_instances),
    ("GET", COMPUTE + r"/zones/(?P<zone>[^/]+)/instances/(?P<name>[^/]+)", Handler.get_instance),
    ("GET", COMPUTE + r"/zones/(?P<zone>[^/]+)/machineTypes/(?P<name>[^/]+)", Handler.get_machine_type),
    ("GET", COMPUTE + r"/zones/(?P<zone>[^/]+)/disks/(?P<name>[^/]+)", Handler.get_disk),
    ("POST", COMPUTE + r"/global/images", Handler.insert_image),
    ("GET", COMPUTE + r"/global/images/(?P<name>[^/]+)", Handler.get_image),
    ("DELETE", COMPUTE + r"/global/images/(?P<name>[^/]+)", Handler.delete_image),
    ("GET", COMPUTE + r"/global/operations/(?P<name>[^/]+)", Handler.get_operation),
    ("POST", COMPUTE + r"/global/operations/(?P<name>[^/]+)/wait", Handler.wait_operation),
    ("POST", r"/v1/projects/(?P<project>[^/]+)/builds", Handler.create_build),
    ("GET", r"/v1/projects/(?P<project>[^/]+)/builds/(?P<id>[^/:]+)", Handler.get_build),
    ("POST", r"/v1/projects/(?P<project>[^/]+)/builds/(?P<id>[^/:]+):cancel", Handler.cancel_build),
    ("GET", r"/v1/operations/build/(?P<project>[^/]+)/(?P<id>[^/]+)", Handler.get_build_operation),
]


def service_account(path, port):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    AUTH["public"] = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    info = {"type": "service_account", "project_id": ARGS.project, "private_key_id": secrets.token_hex(20),
            "private_key": pem, "client_email": f"exporter@{ARGS.project}.iam.gserviceaccount.com",
            "client_id": "1234567890", "token_uri": f"http://127.0.0.1:{port}/token"}
    with open(path, "w") as f:
        json.dump(info, f)


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--storage", required=True, help="the storage emulator, http://127.0.0.1:PORT")
    ap.add_argument("--dir", required=True, help="where images are kept")
    ap.add_argument("--project", default="hypersdk-test")
    ap.add_argument("--zone", default="us-central1-a")
    ap.add_argument("--service-account")
    ap.add_argument("--page-size", type=int, default=1)
    ap.add_argument("--polls", type=int, default=1, help="polls an operation stays RUNNING")
    ap.add_argument("--build-seconds", type=float, default=0.3, help="how long an export job works")
    ap.add_argument("--lifetime", type=float, default=1800)
    ARGS = ap.parse_args()
    httpd = server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if ARGS.service_account:
        service_account(ARGS.service_account, httpd.server_address[1])
    serve(httpd, ARGS.lifetime)


if __name__ == "__main__":
    main()
