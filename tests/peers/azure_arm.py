"""The thinnest stub of Azure Resource Manager's compute calls that an export
uses, over Azurite for every byte of disk data.

No emulator of ARM compute exists. This one answers only the calls below,
each in the shape of the Azure REST API reference section named at its
handler, so that Microsoft's own Python SDK (azure-mgmt-compute,
azure-mgmt-network) parses its answers in the tests. Managed disks and
snapshots are page blobs in Azurite (a fixed VHD each, written by
tests/peers/seed_azure_vm.py); Grant Access hands out a read SAS of that
blob signed with Azurite's account key.

Prints {"port": N} once listening on 127.0.0.1; exits when standard input
closes (or after --lifetime seconds). Test-only endpoints under /_peer/:
  POST /_peer/vm     a VM to serve (JSON, see seed_azure_vm.py)
  GET  /_peer/stats  what happened: grants, revokes, open accesses, snapshots
"""

import argparse
import datetime
import json
import re
import threading
import uuid
from http import server
from urllib.parse import parse_qs, urlencode, urlsplit

from azure.storage.blob import BlobSasPermissions, BlobServiceClient, generate_blob_sas

from peer_serve import serve

STATE = {
    "vms": {},  # (rg, name) -> VM resource
    "disks": {},  # (rg, name) -> disk resource
    "snapshots": {},  # (rg, name) -> snapshot resource
    "nics": {},  # (rg, name) -> NIC resource
    "blobs": {},  # disk or snapshot id (lower case) -> blob name in the container
    "access": {},  # id (lower case) -> SAS URL while access is granted
    "operations": {},  # operation id -> [polls left, final body or None]
    "stats": {"grants": 0, "revokes": 0, "tokens": 0, "unauthorized": 0,
              "snapshots_made": 0, "snapshots_deleted": 0},
}
LOCK = threading.Lock()
ARGS = None
TOKENS = set()
SIZES = {
    "Standard_B1s": (1, 1024),
    "Standard_D2s_v3": (2, 8192),
    "Standard_D4s_v5": (4, 16384),
    "Standard_E8s_v5": (8, 65536),
}
SUB = r"/subscriptions/(?P<sub>[^/]+)"
RG = SUB + r"/resourceGroups/(?P<rg>[^/]+)"
COMPUTE = RG + r"/providers/Microsoft\.Compute"


def blobs():
    return BlobServiceClient(account_url=ARGS.blob_endpoint, credential={
        "account_name": ARGS.account, "account_key": ARGS.key}).get_container_client(ARGS.container)


def sas_url(blob, base=None):
    """A read SAS of `blob` on `base` (default: the endpoint handed out to
    clients, --sas-endpoint)."""
    sas = generate_blob_sas(ARGS.account, ARGS.container, blob, account_key=ARGS.key,
                            permission=BlobSasPermissions(read=True),
                            expiry=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1))
    return f"{base or ARGS.sas_endpoint or ARGS.blob_endpoint}/{ARGS.container}/{blob}?{sas}"


def rid(sub, rg, kind, name):
    return f"/subscriptions/{sub}/resourceGroups/{rg}/providers/{kind}/{name}"


class Arm(server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    # --- plumbing ---------------------------------------------------------

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def send(self, status, body=None, headers=()):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-ms-request-id", str(uuid.uuid4()))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def error(self, status, code, message):
        # "Azure Resource Manager > Common error responses": {"error": {"code", "message"}}.
        self.send(status, {"error": {"code": code, "message": message}})

    def base(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def authorized(self):
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer ") and auth[7:] in TOKENS:
            return True
        STATE["stats"]["unauthorized"] += 1
        # ARM answers a missing or bad token with 401 InvalidAuthenticationToken
        # and a WWW-Authenticate challenge naming the authority.
        data = json.dumps({"error": {"code": "InvalidAuthenticationToken",
                                     "message": "The access token is invalid."}}).encode()
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Bearer authorization_uri="https://login.microsoftonline.com/common", error="invalid_token"')
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        return False

    def accepted(self, final):
        """202 Accepted with a Location to poll ("Azure Resource Manager >
        Track asynchronous operations": the Location URL answers 202 while the
        operation runs, then 200 with the result, or 204 without one)."""
        op = str(uuid.uuid4())
        STATE["operations"][op] = [1, final]
        loc = f"{self.base()}/subscriptions/{ARGS.subscription}/providers/Microsoft.Compute/locations/{ARGS.location}/operations/{op}?monitor=true&api-version=2024-03-02"
        self.send(202, None, [("Location", loc), ("Retry-After", "0")])

    # --- token endpoints ----------------------------------------------------

    def token(self):
        """"Microsoft identity platform and the OAuth 2.0 client credentials
        flow > First case: Access token request with a shared secret"."""
        form = parse_qs(self.body().decode())
        get = lambda k: (form.get(k) or [""])[0]
        if get("grant_type") != "client_credentials" or get("client_id") != ARGS.client_id \
                or get("client_secret") != ARGS.client_secret:
            return self.send(401, {"error": "invalid_client",
                                   "error_description": "AADSTS7000215: Invalid client secret provided."})
        if not get("scope").endswith("/.default"):
            return self.send(400, {"error": "invalid_scope", "error_description": "AADSTS1002012"})
        return self.issue({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599})

    def imds(self, query):
        """"Azure Instance Metadata Service > Managed identity: get an access
        token" (GET /metadata/identity/oauth2/token, header Metadata: true;
        expires_in is a string there)."""
        if self.headers.get("Metadata") != "true" or not query.get("resource"):
            return self.send(400, {"error": "invalid_request", "error_description": "Required metadata header not specified"})
        return self.issue({"token_type": "Bearer", "expires_in": "3599",
                           "resource": query["resource"][0]})

    def issue(self, answer):
        tok = uuid.uuid4().hex
        TOKENS.add(tok)
        STATE["stats"]["tokens"] += 1
        answer["access_token"] = tok
        self.send(200, answer)

    # --- dispatch -----------------------------------------------------------

    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")

    def do_PUT(self):
        self.route("PUT")

    def do_DELETE(self):
        self.route("DELETE")

    def route(self, method):
        u = urlsplit(self.path)
        path, query = u.path, parse_qs(u.query)
        with LOCK:
            if path == "/_peer/vm" and method == "POST":
                return self.seed(json.loads(self.body()))
            if path == "/_peer/stats":
                s = dict(STATE["stats"])
                s["open_access"] = sorted(STATE["access"])
                s["snapshots"] = sorted(n for (_, n) in STATE["snapshots"])
                return self.send(200, s)
            if method == "POST" and re.fullmatch(r"/[^/]+/oauth2/v2\.0/token", path):
                return self.token()
            if method == "GET" and path == "/metadata/identity/oauth2/token":
                return self.imds(query)
            if not self.authorized():
                return
            if "api-version" not in query:
                return self.error(400, "MissingApiVersionParameter",
                                  "The api-version query parameter (?api-version=) is required for all requests.")
            for pattern, verb, handler in ROUTES:
                m = re.fullmatch(pattern, path)
                if m and verb == method:
                    return handler(self, query, **m.groupdict())
            return self.error(404, "NotFound", f"no route for {method} {path} in this stub")

    # --- Microsoft.Compute --------------------------------------------------

    def vm_view(self, vm, expand):
        out = json.loads(json.dumps(vm))
        if not expand:
            del out["properties"]["instanceView"]
        return out

    def list_vms(self, query, sub, rg=None):
        """"Virtual Machines - List All" (GET /subscriptions/{s}/providers/
        Microsoft.Compute/virtualMachines, statusOnly=true adds the instance
        view) and "Virtual Machines - List" (…/resourceGroups/{rg}/…): a page
        of `value` and a `nextLink` while more remain."""
        every = [v for (g, _), v in sorted(STATE["vms"].items()) if rg is None or g.lower() == rg.lower()]
        start = int((query.get("$skiptoken") or ["0"])[0])
        page = every[start:start + ARGS.page_size]
        status = (query.get("statusOnly") or [""])[0] == "true"
        out = {"value": [self.vm_view(v, status) for v in page]}
        if start + ARGS.page_size < len(every):
            q = {k: v[0] for k, v in query.items()}
            q["$skiptoken"] = str(start + ARGS.page_size)
            out["nextLink"] = f"{self.base()}{urlsplit(self.path).path}?{urlencode(q)}"
        self.send(200, out)

    def get_vm(self, query, sub, rg, name):
        """"Virtual Machines - Get" ($expand=instanceView adds
        properties.instanceView with the PowerState/… status)."""
        vm = STATE["vms"].get((rg.lower(), name.lower()))
        if vm is None:
            return self.error(404, "ResourceNotFound",
                              f"The Resource 'Microsoft.Compute/virtualMachines/{name}' under resource group '{rg}' was not found.")
        self.send(200, self.vm_view(vm, (query.get("$expand") or [""])[0] == "instanceView"))

    def sizes(self, query, sub, location):
        """"Virtual Machine Sizes - List" (GET …/locations/{location}/vmSizes)."""
        self.send(200, {"value": [
            {"name": n, "numberOfCores": c, "memoryInMB": m, "maxDataDiskCount": 2 * c,
             "osDiskSizeInMB": 1047552, "resourceDiskSizeInMB": 0} for n, (c, m) in SIZES.items()]})

    def get_disk(self, query, sub, rg, name, kind="disks"):
        """"Disks - Get" and "Snapshots - Get"."""
        table = STATE["disks" if kind == "disks" else "snapshots"]
        d = table.get((rg.lower(), name.lower()))
        if d is None:
            what = "disks" if kind == "disks" else "snapshots"
            return self.error(404, "ResourceNotFound",
                              f"The Resource 'Microsoft.Compute/{what}/{name}' under resource group '{rg}' was not found.")
        self.send(200, d)

    def get_snapshot(self, query, sub, rg, name):
        self.get_disk(query, sub, rg, name, "snapshots")

    def put_snapshot(self, query, sub, rg, name):
        """"Snapshots - Create Or Update": body {location, properties:
        {creationData: {createOption: Copy, sourceResourceId}}}; answered 202
        with the snapshot (provisioningState Creating) and an operation."""
        body = json.loads(self.body() or b"{}")
        cd = (body.get("properties") or {}).get("creationData") or {}
        src = (cd.get("sourceResourceId") or "").lower()
        if cd.get("createOption") != "Copy" or src not in STATE["blobs"]:
            return self.error(400, "InvalidParameter", "creationData.sourceResourceId names no disk or snapshot")
        source = next(d for t in ("disks", "snapshots") for d in STATE[t].values() if d["id"].lower() == src)
        blob = f"snapshots/{rg.lower()}/{name.lower()}.vhd"
        c = blobs()
        c.get_blob_client(blob).start_copy_from_url(sas_url(STATE["blobs"][src], ARGS.blob_endpoint), requires_sync=True)
        snap_id = rid(sub, rg, "Microsoft.Compute/snapshots", name)
        snap = {
            "id": snap_id, "name": name, "type": "Microsoft.Compute/snapshots",
            "location": body.get("location", ARGS.location), "tags": body.get("tags") or {},
            "sku": {"name": "Standard_LRS", "tier": "Standard"},
            "properties": {
                "creationData": {"createOption": "Copy", "sourceResourceId": source["id"]},
                "diskSizeGB": source["properties"]["diskSizeGB"],
                "diskSizeBytes": source["properties"]["diskSizeBytes"],
                "osType": source["properties"].get("osType"),
                "hyperVGeneration": source["properties"].get("hyperVGeneration"),
                "incremental": bool((body.get("properties") or {}).get("incremental")),
                "diskState": "Unattached",
                "provisioningState": "Succeeded",
                "timeCreated": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                "uniqueId": str(uuid.uuid4()),
            },
        }
        STATE["snapshots"][(rg.lower(), name.lower())] = snap
        STATE["blobs"][snap_id.lower()] = blob
        STATE["stats"]["snapshots_made"] += 1
        self.accepted(snap)

    def delete_snapshot(self, query, sub, rg, name):
        """"Snapshots - Delete": 202 with an operation, 204 when absent.
        Refused while access is granted, as Azure does."""
        snap = STATE["snapshots"].get((rg.lower(), name.lower()))
        if snap is None:
            return self.send(204)
        if snap["id"].lower() in STATE["access"]:
            return self.error(409, "OperationNotAllowed",
                              f"Snapshot {name} is currently being exported (has an active SAS URI): revoke access first.")
        del STATE["snapshots"][(rg.lower(), name.lower())]
        blobs().delete_blob(STATE["blobs"].pop(snap["id"].lower()))
        STATE["stats"]["snapshots_deleted"] += 1
        self.accepted(None)

    def grant(self, query, sub, rg, kind, name):
        """"Disks - Grant Access" / "Snapshots - Grant Access" (POST
        …/beginGetAccess, body {access: Read, durationInSeconds}): 202, the
        operation's result is {accessSAS}. A disk attached to a running VM
        is refused, as Azure does."""
        table = STATE[kind]
        d = table.get((rg.lower(), name.lower()))
        if d is None:
            return self.error(404, "ResourceNotFound", f"The Resource 'Microsoft.Compute/{kind}/{name}' under resource group '{rg}' was not found.")
        body = json.loads(self.body() or b"{}")
        if body.get("access") not in ("Read", "Write", "None") or not body.get("durationInSeconds"):
            return self.error(400, "InvalidParameter", "access and durationInSeconds are required")
        if kind == "disks" and d["properties"].get("diskState") == "Attached" and d.get("_running"):
            return self.error(409, "OperationNotAllowed",
                              f"Cannot grant access to disk {name}: it is attached to a running VM.")
        url = sas_url(STATE["blobs"][d["id"].lower()])
        STATE["access"][d["id"].lower()] = url
        STATE["stats"]["grants"] += 1
        self.accepted({"accessSAS": url})

    def revoke(self, query, sub, rg, kind, name):
        """"Disks - Revoke Access" / "Snapshots - Revoke Access" (POST
        …/endGetAccess): 202, then 200 with no result."""
        d = STATE[kind].get((rg.lower(), name.lower()))
        if d is None:
            return self.error(404, "ResourceNotFound", f"The Resource 'Microsoft.Compute/{kind}/{name}' under resource group '{rg}' was not found.")
        STATE["access"].pop(d["id"].lower(), None)
        STATE["stats"]["revokes"] += 1
        self.accepted(None)

    def operation(self, query, sub, location, op):
        """The Location URL of an accepted operation: 202 while it runs,
        then 200 with its result (204 when it has none)."""
        entry = STATE["operations"].get(op)
        if entry is None:
            return self.error(404, "NotFound", "no such operation")
        if entry[0] > 0:
            entry[0] -= 1
            return self.send(202, None, [("Location", self.base() + self.path), ("Retry-After", "0")])
        if entry[1] is None:
            return self.send(204)
        self.send(200, entry[1])

    # --- Microsoft.Network --------------------------------------------------

    def get_nic(self, query, sub, rg, name):
        """"Network Interfaces - Get" (properties.macAddress, primary,
        ipConfigurations[].properties.subnet.id)."""
        nic = STATE["nics"].get((rg.lower(), name.lower()))
        if nic is None:
            return self.error(404, "ResourceNotFound", f"The Resource 'Microsoft.Network/networkInterfaces/{name}' under resource group '{rg}' was not found.")
        self.send(200, nic)

    # --- seeding ------------------------------------------------------------

    def seed(self, spec):
        """A VM from seed_azure_vm.py: {name, resource_group, size, power,
        os_type, security_type, tags, disks: [{name, blob, size_bytes, lun}]
        (the first is the OS disk), nics: [{name, mac, subnet}]}."""
        sub, rg, name = ARGS.subscription, spec["resource_group"], spec["name"]
        running = spec.get("power", "running") == "running"
        disk_refs = []
        for i, d in enumerate(spec["disks"]):
            disk_id = rid(sub, rg, "Microsoft.Compute/disks", d["name"])
            STATE["disks"][(rg.lower(), d["name"].lower())] = {
                "id": disk_id, "name": d["name"], "type": "Microsoft.Compute/disks",
                "location": ARGS.location, "managedBy": rid(sub, rg, "Microsoft.Compute/virtualMachines", name),
                "sku": {"name": "Premium_LRS", "tier": "Premium"},
                "properties": {
                    "osType": spec.get("os_type") if i == 0 else None,
                    "hyperVGeneration": "V2" if spec.get("security_type") else "V1",
                    "creationData": {"createOption": "Empty"},
                    "diskSizeGB": d["size_bytes"] >> 30 or 1,
                    "diskSizeBytes": d["size_bytes"],
                    "diskState": "Attached",
                    "provisioningState": "Succeeded",
                },
                "_running": running,
            }
            STATE["blobs"][disk_id.lower()] = d["blob"]
            ref = {"name": d["name"], "createOption": "Attach" if i else "FromImage",
                   "caching": "ReadWrite", "diskSizeGB": d["size_bytes"] >> 30 or 1,
                   "managedDisk": {"id": disk_id, "storageAccountType": "Premium_LRS"}}
            if i == 0:
                ref["osType"] = spec.get("os_type", "Linux")
            else:
                ref["lun"] = d.get("lun", i - 1)
            disk_refs.append(ref)
        nic_refs = []
        for i, n in enumerate(spec.get("nics", [])):
            nic_id = rid(sub, rg, "Microsoft.Network/networkInterfaces", n["name"])
            STATE["nics"][(rg.lower(), n["name"].lower())] = {
                "id": nic_id, "name": n["name"], "type": "Microsoft.Network/networkInterfaces",
                "location": ARGS.location,
                "properties": {
                    "macAddress": n["mac"], "primary": i == 0,
                    "enableAcceleratedNetworking": True, "provisioningState": "Succeeded",
                    "ipConfigurations": [{"id": nic_id + "/ipConfigurations/ipconfig1", "name": "ipconfig1",
                                          "properties": {"privateIPAddress": f"10.0.0.{4 + i}",
                                                         "subnet": {"id": rid(sub, rg, "Microsoft.Network/virtualNetworks", n["subnet"])}}}],
                },
            }
            nic_refs.append({"id": nic_id, "properties": {"primary": i == 0}})
        props = {
            "vmId": str(uuid.uuid4()),
            "hardwareProfile": {"vmSize": spec.get("size", "Standard_D2s_v3")},
            "storageProfile": {"osDisk": disk_refs[0], "dataDisks": disk_refs[1:]},
            "osProfile": {"computerName": name, "adminUsername": "azureuser"},
            "networkProfile": {"networkInterfaces": nic_refs},
            "provisioningState": "Succeeded",
            "instanceView": {"statuses": [
                {"code": "ProvisioningState/succeeded", "level": "Info", "displayStatus": "Provisioning succeeded"},
                {"code": "PowerState/running" if running else "PowerState/deallocated", "level": "Info",
                 "displayStatus": "VM running" if running else "VM deallocated"}]},
        }
        if spec.get("security_type"):
            props["securityProfile"] = {"securityType": spec["security_type"],
                                        "uefiSettings": {"secureBootEnabled": True, "vTpmEnabled": True}}
        vm = {"id": rid(sub, rg, "Microsoft.Compute/virtualMachines", name), "name": name,
              "type": "Microsoft.Compute/virtualMachines", "location": ARGS.location,
              "tags": spec.get("tags") or {}, "properties": props}
        STATE["vms"][(rg.lower(), name.lower())] = vm
        self.send(200, {"id": vm["id"], "disks": [r["managedDisk"]["id"] for r in disk_refs]})


ROUTES = [
    (SUB + r"/providers/Microsoft\.Compute/virtualMachines", "GET", Arm.list_vms),
    (COMPUTE + r"/virtualMachines", "GET", Arm.list_vms),
    (COMPUTE + r"/virtualMachines/(?P<name>[^/]+)", "GET", Arm.get_vm),
    (SUB + r"/providers/Microsoft\.Compute/locations/(?P<location>[^/]+)/vmSizes", "GET", Arm.sizes),
    (SUB + r"/providers/Microsoft\.Compute/locations/(?P<location>[^/]+)/operations/(?P<op>[^/]+)", "GET", Arm.operation),
    (COMPUTE + r"/disks/(?P<name>[^/]+)", "GET", Arm.get_disk),
    (COMPUTE + r"/snapshots/(?P<name>[^/]+)", "GET", Arm.get_snapshot),
    (COMPUTE + r"/snapshots/(?P<name>[^/]+)", "PUT", Arm.put_snapshot),
    (COMPUTE + r"/snapshots/(?P<name>[^/]+)", "DELETE", Arm.delete_snapshot),
    (COMPUTE + r"/(?P<kind>disks|snapshots)/(?P<name>[^/]+)/beginGetAccess", "POST", Arm.grant),
    (COMPUTE + r"/(?P<kind>disks|snapshots)/(?P<name>[^/]+)/endGetAccess", "POST", Arm.revoke),
    (RG + r"/providers/Microsoft\.Network/networkInterfaces/(?P<name>[^/]+)", "GET", Arm.get_nic),
]


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--blob-endpoint", required=True, help="Azurite's http://127.0.0.1:PORT/ACCOUNT")
    ap.add_argument("--sas-endpoint", help="the blob endpoint in the SAS URLs handed out (a proxy in front of Azurite)")
    ap.add_argument("--account", default="devstoreaccount1")
    ap.add_argument("--key", required=True)
    ap.add_argument("--container", default="managed-disks")
    ap.add_argument("--subscription", default="00000000-0000-0000-0000-000000000001")
    ap.add_argument("--location", default="westeurope")
    ap.add_argument("--client-id", default="hypersdk-test-app")
    ap.add_argument("--client-secret", default="hypersdk-test-secret")
    ap.add_argument("--page-size", type=int, default=2)
    ap.add_argument("--lifetime", type=float, default=1800)
    ARGS = ap.parse_args()
    try:
        blobs().create_container()
    except Exception:
        pass
    httpd = server.ThreadingHTTPServer(("127.0.0.1", 0), Arm)
    serve(httpd, ARGS.lifetime)


if __name__ == "__main__":
    main()
