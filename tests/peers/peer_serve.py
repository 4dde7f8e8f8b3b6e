"""What every test peer here does once its server is made: serve on a
thread, print {"port": N} for the test harness (tests/support's
start_peer), and stop when standard input closes — the test that started
it has ended — or after `lifetime` seconds at most."""

import json
import sys
import threading


def serve(server, lifetime):
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    done.wait(lifetime)
    server.shutdown()
