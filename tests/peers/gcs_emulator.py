"""gcp-storage-emulator for the test suite.

Runs gcp-storage-emulator (PyPI), in memory, on 127.0.0.1 on a port the OS
picks and prints {"port": N} as its first line; exits when its standard
input closes (so it never outlives the test that started it) or after
--lifetime seconds. --bucket NAME creates buckets.

Two additions, neither changing what the emulator answers otherwise:
- GET /_peer/stats answers {"chunk_puts": N, "chunk_bytes": N,
  "sessions": N, "cancels": N}, so tests can tell that a resumed upload
  did not send finished chunks again;
- DELETE on a resumable session URI cancels it as Cloud Storage does
  ("Canceling a resumable upload", performing-resumable-uploads: the
  session answers 499 and is gone); the emulator itself answers 501.
"""

import argparse
import json
import logging
import sys
import threading
from collections import Counter
from functools import partial
from http import server
from urllib.parse import parse_qs, urlparse

from gcp_storage_emulator.handlers import buckets
from gcp_storage_emulator.server import RequestHandler
from gcp_storage_emulator.storage import Storage

COUNTS = Counter()


class Counting(RequestHandler):
    def _query(self):
        return parse_qs(urlparse(self.path).query)

    def _reply(self, status, body=b"", ctype="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/_peer/stats":
            return self._reply(200, json.dumps(dict(COUNTS)).encode())
        return super().do_GET()

    def do_POST(self):
        if self._query().get("uploadType") == ["resumable"]:
            COUNTS["sessions"] += 1
        return super().do_POST()

    def do_PUT(self):
        if "upload_id" in self._query():
            COUNTS["chunk_puts"] += 1
            COUNTS["chunk_bytes"] += int(self.headers.get("Content-Length") or 0)
        return super().do_PUT()

    def do_DELETE(self):
        ids = self._query().get("upload_id")
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lifetime", type=float, default=1800)
    ap.add_argument("--bucket", action="append", default=[])
    args = ap.parse_args()
    logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)
    storage = Storage(use_memory_fs=True)
    for b in args.bucket:
        buckets.create_bucket(b, storage)
    httpd = server.HTTPServer(("127.0.0.1", 0), partial(Counting, storage))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    print(json.dumps({"port": httpd.server_address[1]}), flush=True)
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    done.wait(args.lifetime)
    httpd.shutdown()


if __name__ == "__main__":
    main()
