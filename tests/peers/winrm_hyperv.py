"""A Hyper-V host's WinRM service, only as far as hypersdk's Hyper-V provider
uses it: the WS-Management Shell protocol that winrs and pywinrm speak, and
the Hyper-V PowerShell cmdlets the provider's scripts run, answered from a
table of VMs the test seeds.

WS-Management, the shapes of pywinrm's recorded exchanges
(winrm/tests/conftest.py) and [MS-WSMV]:
  Create  (transfer/Create)   -> x:ResourceCreated with the ShellId selector  [MS-WSMV] 3.1.4.1.31
  Command (shell/Command)     -> rsp:CommandResponse/rsp:CommandId            [MS-WSMV] 3.1.4.11
  Receive (shell/Receive)     -> rsp:ReceiveResponse, base64 rsp:Stream, CommandState Done, ExitCode
                                                                              [MS-WSMV] 3.1.4.14
  Signal  (shell/Signal)      -> rsp:SignalResponse                            [MS-WSMV] 3.1.4.12
  Delete  (transfer/Delete)   -> empty body                                    [MS-WSMV] 3.1.4.1.32
  faults: HTTP 500 with s:Fault and w:WSManFault                               [MS-WSMV] 2.2.4.41
Authentication: Basic, or Negotiate carrying NTLM (pyspnego is the acceptor;
the account is --user/--password), per connection as HTTP.sys does; 401
with WWW-Authenticate otherwise.

PowerShell: a command `powershell ... -EncodedCommand B64` (UTF-16LE) runs
a script. The provider's scripts start with a line `# hypersdk:OP` and set
their parameters as `$p_NAME = 'VALUE'` lines; those are what the stub
reads. Their outputs follow the cmdlets' documented objects
(learn.microsoft.com/powershell/module/hyper-v): Get-VM (Name, Id, State,
Generation, ProcessorCount, MemoryStartup), Get-VMFirmware (SecureBoot),
Get-VMHardDiskDrive (Path, ControllerType, ControllerNumber,
ControllerLocation), Get-VMNetworkAdapter (Name, MacAddress, SwitchName, IsLegacy),
Checkpoint-VM / Get-VMSnapshot / Remove-VMSnapshot, rendered by
ConvertTo-Json -Compress as the scripts ask. A cmdlet error exits 1 with
the CLIXML error record on stderr, as powershell.exe does.

Test-only endpoints (no authentication): POST /_peer/vm seeds a VM, GET
/_peer/stats tells what happened (checkpoints made and removed, what each
VM still has, 401s).
"""

import argparse
import base64
import json
import os
import re
import ssl
import subprocess
import threading
import uuid
import xml.etree.ElementTree as ET
from http import server

from peer_serve import serve

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
}
SHELL = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"
TRANSFER = "http://schemas.xmlsoap.org/ws/2004/09/transfer"

LOCK = threading.Lock()
STATE = {
    "vms": {},  # name -> {...}
    "shells": {},  # shell id -> {command id -> (stdout, stderr, code)}
    "stats": {"unauthorized": 0, "checkpoints_made": 0, "checkpoints_removed": 0, "scripts": 0},
}
ARGS = None


def envelope(action, relates, body):
    return f"""<?xml version="1.0" ?>
<s:Envelope xml:lang="en-US" xmlns:a="{NS['a']}" xmlns:p="http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd" xmlns:rsp="{NS['rsp']}" xmlns:s="{NS['s']}" xmlns:w="{NS['w']}" xmlns:x="{TRANSFER}">
    <s:Header>
        <a:Action>{action}</a:Action>
        <a:MessageID>uuid:{uuid.uuid4()}</a:MessageID>
        <a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To>
        <a:RelatesTo>{relates}</a:RelatesTo>
    </s:Header>
    <s:Body>{body}</s:Body>
</s:Envelope>"""


def fault(relates, code, message):
    """A WS-Management fault as WinRM sends it ([MS-WSMV] 2.2.4.41)."""
    body = f"""<s:Fault><s:Code><s:Value>s:Receiver</s:Value><s:Subcode><s:Value>w:InvalidSelectors</s:Value></s:Subcode></s:Code>
<s:Reason><s:Text xml:lang="en-US">{message}</s:Text></s:Reason>
<s:Detail><f:WSManFault xmlns:f="http://schemas.microsoft.com/wbem/wsmanfault" Code="{code}" Machine="hv1"><f:Message>{message}</f:Message></f:WSManFault></s:Detail></s:Fault>"""
    return envelope("http://schemas.dmtf.org/wbem/wsman/1/wsman/fault", relates, body)


def clixml_error(message):
    """stderr of powershell.exe for a terminating error: CLIXML."""
    text = message.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return ("#< CLIXML\r\n<Objs Version=\"1.1.0.1\" xmlns=\"http://schemas.microsoft.com/powershell/2004/04\">"
            f"<S S=\"Error\">{text}_x000D__x000A_</S></Objs>").encode()


class PsError(Exception):
    pass


def params(script):
    return {m.group(1): m.group(2).replace("''", "'")
            for m in re.finditer(r"^\$p_(\w+) = '((?:[^']|'')*)'\s*$", script, re.M)}


def find_vm(p):
    vms = STATE["vms"]
    if p.get("id"):
        for vm in vms.values():
            if vm["Id"].lower() == p["id"].lower():
                return vm
        raise PsError(f"Get-VM : Hyper-V was unable to find a virtual machine with id \"{p['id']}\".")
    name = p.get("name", "")
    if name not in vms:
        raise PsError(f"Get-VM : Hyper-V was unable to find a virtual machine with name \"{name}\".")
    return vms[name]


def describe(vm):
    return {
        "Name": vm["Name"], "Id": vm["Id"], "State": vm["State"], "Generation": vm["Generation"],
        "ProcessorCount": vm["ProcessorCount"], "MemoryStartup": vm["MemoryStartup"],
        "Version": vm.get("Version", "10.0"),
        "SecureBoot": ("On" if vm.get("SecureBoot") else "Off") if vm["Generation"] == 2 else None,
        "Disks": [dict(d, Path=current_path(vm, d)) for d in vm["Disks"]],
        "Nics": vm["Nics"],
        "Checkpoints": [c["Name"] for c in vm["Checkpoints"]],
    }


def current_path(vm, disk):
    """After a checkpoint the VM writes to a differencing disk beside its
    disk (Hyper-V's NAME_GUID.avhdx); the checkpoint keeps the parent."""
    if not vm["Checkpoints"]:
        return disk["Path"]
    base, _ = os.path.splitext(disk["Path"])
    return f"{base}_{vm['Checkpoints'][-1]['Id'].upper()}.avhdx"


def run_script(script):
    op = re.search(r"^# hypersdk:(\S+)", script, re.M)
    if not op:
        raise PsError("the stub runs only hypersdk's scripts")
    p = params(script)
    with LOCK:
        STATE["stats"]["scripts"] += 1
        op = op.group(1)
        if op == "list-vms":
            out = [{"Name": v["Name"], "Id": v["Id"], "State": v["State"]} for v in STATE["vms"].values()]
            return json.dumps(out)
        if op == "describe-vm":
            return json.dumps(describe(find_vm(p)))
        if op == "checkpoint":
            vm = find_vm(p)
            if any(c["Name"] == p["checkpoint"] for c in vm["Checkpoints"]):
                raise PsError(f"Checkpoint-VM : a checkpoint named {p['checkpoint']} exists")
            # The checkpoint's drives are the disks as they were: the
            # parents of the differencing disks the VM now writes to.
            drives = [dict(d, Path=current_path(vm, d)) for d in vm["Disks"]]
            cp = {"Name": p["checkpoint"], "Id": str(uuid.uuid4()), "Disks": drives}
            vm["Checkpoints"].append(cp)
            STATE["stats"]["checkpoints_made"] += 1
            return json.dumps({"Name": cp["Name"], "Id": cp["Id"], "Disks": drives})
        if op == "get-checkpoint":
            vm = find_vm(p)
            for cp in vm["Checkpoints"]:
                if cp["Name"] == p["checkpoint"]:
                    return json.dumps({"Name": cp["Name"], "Id": cp["Id"], "Disks": cp["Disks"]})
            raise PsError(f"Get-VMSnapshot : Hyper-V was unable to find a checkpoint named \"{p['checkpoint']}\".")
        if op == "remove-checkpoint":
            vm = find_vm(p)
            before = len(vm["Checkpoints"])
            vm["Checkpoints"] = [c for c in vm["Checkpoints"] if c["Name"] != p["checkpoint"]]
            STATE["stats"]["checkpoints_removed"] += before - len(vm["Checkpoints"])
            return json.dumps({"Removed": before - len(vm["Checkpoints"])})
    raise PsError(f"unknown operation {op}")


def run_command(command, arguments):
    """(stdout, stderr, exit code) of a command line."""
    line = " ".join([command] + arguments)
    m = re.match(r"(?i)^powershell(?:\.exe)?\b.*-(?:encodedcommand|enc|e)\s+([A-Za-z0-9+/=]+)\s*$", line)
    if not m:
        return b"", f"'{command}' is not recognized as an internal or external command.\r\n".encode(), 1
    script = base64.b64decode(m.group(1)).decode("utf-16-le")
    if "hypersdk:" not in script:
        # pywinrm's own sample: Write-Host / Write-Error, as its tests record.
        w = re.match(r'^Write-Error "(.*)"$', script.strip())
        if w:
            return b"", clixml_error(f"Write-Error \"{w.group(1)}\" : {w.group(1)}"), 1
        h = re.match(r'^Write-Host "(.*)"$', script.strip())
        if h:
            return (h.group(1) + "\n").encode(), b"", 0
        return b"", clixml_error("the stub runs only hypersdk's scripts"), 1
    try:
        return (run_script(script) + "\r\n").encode("utf-8"), b"", 0
    except PsError as e:
        return b"", clixml_error(str(e)), 1


class Handler(server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def reply(self, code, body=b"", headers=()):
        self.send_response(code)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        if body:
            self.send_header("Content-Type", "application/soap+xml;charset=UTF-8")
        self.end_headers()
        self.wfile.write(body)

    def authorized(self):
        """Basic on each request, or NTLM once per connection."""
        auth = self.headers.get("Authorization", "")
        # A connection signed in with NTLM stays so, until the client
        # starts another exchange on it.
        if getattr(self, "ntlm_done", False) and not auth:
            return True
        self.ntlm_done = False
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "basic" and "basic" in ARGS.auth:
            try:
                user, _, pw = base64.b64decode(token).decode().partition(":")
            except Exception:
                user, pw = "", ""
            if user.split("\\")[-1].lower() == ARGS.user.lower() and pw == ARGS.password:
                return True
        elif scheme.lower() in ("negotiate", "ntlm") and "ntlm" in ARGS.auth and token:
            import spnego
            raw = base64.b64decode(token)
            # A NEGOTIATE message (type 1) starts a new exchange, as HTTP.sys
            # does when a client starts over on the connection.
            if getattr(self, "ntlm", None) is None or raw[8:12] == b"\x01\x00\x00\x00":
                self.ntlm = spnego.server(protocol="ntlm")
            try:
                out = self.ntlm.step(raw)
            except Exception:
                self.ntlm = None
                out = None
            else:
                if self.ntlm.complete:
                    self.ntlm_done = True
                    return True
                if out:
                    self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
                    self.reply(401, b"", [("WWW-Authenticate", f"{scheme} {base64.b64encode(out).decode()}")])
                    return None
        with LOCK:
            STATE["stats"]["unauthorized"] += 1
        self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
        offers = []
        if "ntlm" in ARGS.auth:
            offers += [("WWW-Authenticate", "Negotiate")]
        if "basic" in ARGS.auth:
            offers += [("WWW-Authenticate", 'Basic realm="WSMAN"')]
        self.reply(401, b"", offers)
        return None

    def do_GET(self):
        if self.path == "/_peer/stats":
            with LOCK:
                s = dict(STATE["stats"])
                s["checkpoints"] = {n: [c["Name"] for c in v["Checkpoints"]] for n, v in STATE["vms"].items()}
            return self.reply(200, json.dumps(s).encode(), [("Content-Type", "application/json")])
        self.reply(404)

    def do_POST(self):
        if self.path == "/_peer/vm":
            vm = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            vm.setdefault("Checkpoints", [])
            with LOCK:
                STATE["vms"][vm["Name"]] = vm
            return self.reply(200, b"{}")
        if self.path != "/wsman":
            return self.reply(404)
        if not self.authorized():
            return
        body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
        try:
            doc = ET.fromstring(body)
        except ET.ParseError:
            return self.reply(400)
        action = doc.findtext("s:Header/a:Action", "", NS)
        msg_id = doc.findtext("s:Header/a:MessageID", "", NS)
        shell_id = None
        for sel in doc.findall("s:Header/w:SelectorSet/w:Selector", NS):
            if sel.get("Name") == "ShellId":
                shell_id = sel.text
        with LOCK:
            known = shell_id in STATE["shells"]
        if action != f"{TRANSFER}/Create" and not known:
            return self.reply(500, fault(msg_id, "2150858843", "The request for the Windows Remote Shell with ShellId "
                                         f"{shell_id} failed because the shell was not found on the server.").encode())
        if action == f"{TRANSFER}/Create":
            sid = str(uuid.uuid4()).upper()
            with LOCK:
                STATE["shells"][sid] = {}
            out = envelope(f"{TRANSFER}/CreateResponse", msg_id, f"""<x:ResourceCreated>
<a:Address>https://127.0.0.1:{self.server.server_address[1]}/wsman</a:Address>
<a:ReferenceParameters><w:ResourceURI>{SHELL}/cmd</w:ResourceURI>
<w:SelectorSet><w:Selector Name="ShellId">{sid}</w:Selector></w:SelectorSet></a:ReferenceParameters>
</x:ResourceCreated>""")
        elif action == f"{SHELL}/Command":
            command = doc.findtext("s:Body/rsp:CommandLine/rsp:Command", "", NS).strip().strip('"')
            arguments = [a.text or "" for a in doc.findall("s:Body/rsp:CommandLine/rsp:Arguments", NS)]
            cid = str(uuid.uuid4()).upper()
            result = run_command(command, arguments)
            with LOCK:
                STATE["shells"][shell_id][cid] = result
            out = envelope(f"{SHELL}/CommandResponse", msg_id,
                           f"<rsp:CommandResponse><rsp:CommandId>{cid}</rsp:CommandId></rsp:CommandResponse>")
        elif action == f"{SHELL}/Receive":
            cid = doc.find("s:Body/rsp:Receive/rsp:DesiredStream", NS).get("CommandId")
            with LOCK:
                stdout, stderr, code = STATE["shells"][shell_id].get(cid, (b"", b"", 0))
            streams = []
            # Output arrives in pieces, as WinRM sends it.
            for name, data in (("stdout", stdout), ("stderr", stderr)):
                for i in range(0, len(data), 1000):
                    streams.append(f'<rsp:Stream Name="{name}" CommandId="{cid}">'
                                   f'{base64.b64encode(data[i:i + 1000]).decode()}</rsp:Stream>')
            streams.append(f'<rsp:Stream Name="stdout" CommandId="{cid}" End="true"/>')
            streams.append(f'<rsp:Stream Name="stderr" CommandId="{cid}" End="true"/>')
            out = envelope(f"{SHELL}/ReceiveResponse", msg_id, "<rsp:ReceiveResponse>" + "".join(streams) +
                           f'<rsp:CommandState CommandId="{cid}" State="{SHELL}/CommandState/Done">'
                           f"<rsp:ExitCode>{code}</rsp:ExitCode></rsp:CommandState></rsp:ReceiveResponse>")
        elif action == f"{SHELL}/Signal":
            out = envelope(f"{SHELL}/SignalResponse", msg_id, "<rsp:SignalResponse/>")
        elif action == f"{TRANSFER}/Delete":
            with LOCK:
                STATE["shells"].pop(shell_id, None)
            out = envelope(f"{TRANSFER}/DeleteResponse", msg_id, "")
        else:
            return self.reply(500, fault(msg_id, "2150858817", f"unsupported action {action}").encode())
        self.reply(200, out.encode())


def certificate(d):
    key, crt = os.path.join(d, "winrm.key"), os.path.join(d, "winrm.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", key, "-out", crt, "-subj", "/CN=hv1.test",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    return key, crt


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True, help="work directory: the certificate (winrm.pem)")
    ap.add_argument("--user", default="Administrator")
    ap.add_argument("--password", default="Hyper-V.2026!")
    ap.add_argument("--auth", default="basic,ntlm", help="schemes accepted: basic, ntlm")
    ap.add_argument("--lifetime", type=float, default=1800)
    ARGS = ap.parse_args()
    users = os.path.join(ARGS.dir, "ntlm_users")
    with open(users, "w") as f:
        # The host's own domain, and none: a local account given bare.
        f.write(f"HV1:{ARGS.user}:{ARGS.password}\n:{ARGS.user}:{ARGS.password}\n")
    os.environ["NTLM_USER_FILE"] = users
    key, crt = certificate(ARGS.dir)
    httpd = server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(crt, key)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    serve(httpd, ARGS.lifetime)


if __name__ == "__main__":
    main()
