"""gcp-storage-emulator for the test suite.

Runs gcp-storage-emulator (PyPI), in memory, on 127.0.0.1 on a port the OS
picks and prints {"port": N} as its first line; exits when its standard
input closes (so it never outlives the test that started it) or after
--lifetime seconds. --bucket NAME creates buckets.

--service-account FILE makes it demand OAuth 2.0 access tokens, as Cloud
Storage does: it writes a service-account key file (a fresh RSA key,
token_uri pointing here) to FILE, and POST /token trades a signed
assertion for a token ("Using OAuth 2.0 for Server to Server
Applications": grant_type urn:ietf:params:oauth:grant-type:jwt-bearer),
checking the assertion's signature, audience and scope with Google's own
auth library (google-auth). Requests without a token it issued get 401.

--flip-byte N damages what it receives, as a faulty network path would: the
byte at offset N of every resumable upload is stored inverted.

Two more additions, neither changing what the emulator answers otherwise:
- GET /_peer/stats answers {"chunk_puts": N, "chunk_bytes": N,
  "sessions": N, "cancels": N}, so tests can tell that a resumed upload
  did not send finished chunks again;
- DELETE on a resumable session URI cancels it as Cloud Storage does
  ("Canceling a resumable upload", performing-resumable-uploads: the
  session answers 499 and is gone); the emulator itself answers 501.
"""

import argparse
import io
import json
import re
import secrets
import time
import logging
from collections import Counter
from functools import partial
from http import server
from urllib.parse import parse_qs, urlparse

from gcp_storage_emulator.handlers import buckets
from gcp_storage_emulator.server import RequestHandler
from gcp_storage_emulator.storage import Storage

from peer_serve import serve

COUNTS = Counter()
FLIP = {"at": None}
# Set with --service-account: the public key, the token URI, tokens issued.
AUTH = {"public": None, "uri": None, "tokens": set()}
SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"


class Counting(RequestHandler):
    def _query(self):
        return parse_qs(urlparse(self.path).query)

    def _reply(self, status, body=b"", ctype="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _authorized(self):
        if AUTH["public"] is None:
            return True
        given = self.headers.get("Authorization", "")
        if given.startswith("Bearer ") and given[7:] in AUTH["tokens"]:
            return True
        COUNTS["unauthorized"] += 1
        body = json.dumps({"error": {"code": 401, "message": "Anonymous caller does not have storage access."}})
        self._reply(401, body.encode())
        return False

    def _token(self):
        from google.auth import jwt

        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode())
        try:
            assert form.get("grant_type") == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
            # "aud ... is always https://oauth2.googleapis.com/token", wherever
            # the assertion is sent (Using OAuth 2.0 for Server to Server
            # Applications, "Forming the JWT claim set").
            claims = jwt.decode(
                form["assertion"][0],
                certs=AUTH["public"],
                audience="https://oauth2.googleapis.com/token",
            )
            assert SCOPE in claims["scope"].split()
            assert claims["exp"] > time.time()
        except Exception as e:
            COUNTS["bad_assertions"] += 1
            body = {"error": "invalid_grant", "error_description": "Invalid JWT: %s" % e}
            return self._reply(400, json.dumps(body).encode())
        token = "ya29.test-" + secrets.token_hex(16)
        AUTH["tokens"].add(token)
        COUNTS["tokens"] += 1
        body = {"access_token": token, "expires_in": 3599, "token_type": "Bearer"}
        return self._reply(200, json.dumps(body).encode())

    def do_GET(self):
        if self.path == "/_peer/stats":
            return self._reply(200, json.dumps(dict(COUNTS)).encode())
        if not self._authorized():
            return None
        return super().do_GET()

    def do_POST(self):
        if self.path == "/token":
            return self._token()
        if not self._authorized():
            return None
        if self._query().get("uploadType") == ["resumable"]:
            COUNTS["sessions"] += 1
        return super().do_POST()

    def do_PUT(self):
        # A session URI is its own credential (no token needed).
        if "upload_id" in self._query():
            COUNTS["chunk_puts"] += 1
            length = int(self.headers.get("Content-Length") or 0)
            COUNTS["chunk_bytes"] += length
            m = re.match(r"bytes (\d+)-", self.headers.get("Content-Range") or "")
            at = FLIP["at"]
            if at is not None and m and int(m.group(1)) <= at < int(m.group(1)) + length:
                body = bytearray(self.rfile.read(length))
                body[at - int(m.group(1))] ^= 0xFF
                COUNTS["flipped"] += 1
                self.rfile = io.BytesIO(bytes(body))
        return super().do_PUT()

    def do_DELETE(self):
        ids = self._query().get("upload_id")
        if not ids and not self._authorized():
            return None
        if ids:
            COUNTS["cancels"] += 1
            storage = self.storage
            if ids[0] in storage.resumable:
                storage.delete_resumable_file_obj(ids[0])
                try:
                    storage._delete_file("_resumable", storage.safe_id(ids[0]))
                except Exception:
                    pass
                return self._reply(499)
            return self._reply(404)
        return super().do_DELETE()

    def log_message(self, *args):
        pass

    def handle(self):
        # Connections the tests cut on purpose end mid-request.
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):
            pass


def service_account(path, port):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    AUTH["public"] = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    AUTH["uri"] = "http://127.0.0.1:%d/token" % port
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    info = {
        "type": "service_account",
        "project_id": "hypersdk-test",
        "private_key_id": secrets.token_hex(20),
        "private_key": pem,
        "client_email": "exporter@hypersdk-test.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": AUTH["uri"],
    }
    with open(path, "w") as f:
        json.dump(info, f)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lifetime", type=float, default=1800)
    ap.add_argument("--bucket", action="append", default=[])
    ap.add_argument("--service-account")
    ap.add_argument("--flip-byte", type=int)
    args = ap.parse_args()
    logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)
    FLIP["at"] = args.flip_byte
    storage = Storage(use_memory_fs=True)
    for b in args.bucket:
        buckets.create_bucket(b, storage)
    httpd = server.HTTPServer(("127.0.0.1", 0), partial(Counting, storage))
    if args.service_account:
        service_account(args.service_account, httpd.server_address[1])
    serve(httpd, args.lifetime)


if __name__ == "__main__":
    main()
