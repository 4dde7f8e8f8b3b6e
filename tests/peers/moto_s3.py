"""moto's S3 server for the test suite.

Runs moto (PyPI moto[server]) on 127.0.0.1 on a port the OS picks and
prints {"port": N} as its first line; exits when its standard input closes
(so it never outlives the test that started it) or after --lifetime
seconds. Loads moto_ebs.py and moto_export.py, the extensions the AWS
provider's tests need (--export-seconds: how long an instance export task
stays active before it writes).
Counts the requests it serves by kind — GET /_peer/stats answers
{"part_puts": N, "part_bytes": N, "creates": N, "completes": N,
"aborts": N} — so tests can
tell that a resumed upload did not send finished parts again.
"""

import argparse
import json
import logging
import threading
from collections import Counter

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

import moto_ebs  # noqa: F401  (volumes with content, EBS-readable EC2 snapshots)
import moto_export  # VM Import/Export's instance export tasks

from peer_serve import serve

COUNTS = Counter()
LOCK = threading.Lock()


def counting(app):
    def wrapped(environ, start_response):
        path = environ.get("PATH_INFO", "")
        query = environ.get("QUERY_STRING", "")
        method = environ.get("REQUEST_METHOD", "")
        if path == "/_peer/stats":
            with LOCK:
                body = json.dumps(dict(COUNTS)).encode()
            start_response(
                "200 OK",
                [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
            )
            return [body]
        kind = None
        if method == "PUT" and "partNumber=" in query:
            kind = "part_puts"
        elif method == "POST" and "uploads" in query.split("&"):
            kind = "creates"
        elif method == "POST" and "uploadId=" in query:
            kind = "completes"
        elif method == "DELETE" and "uploadId=" in query:
            kind = "aborts"
        if kind:
            with LOCK:
                COUNTS[kind] += 1
                if kind == "part_puts":
                    COUNTS["part_bytes"] += int(environ.get("CONTENT_LENGTH") or 0)
        return app(environ, start_response)

    return wrapped


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lifetime", type=float, default=1800)
    ap.add_argument("--export-seconds", type=float, default=0.5)
    args = ap.parse_args()
    moto_export.SETTINGS["seconds"] = args.export_seconds
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    app = counting(DomainDispatcherApplication(create_backend_app))
    server = make_server(
        "127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler
    )
    serve(server, args.lifetime)


if __name__ == "__main__":
    main()
