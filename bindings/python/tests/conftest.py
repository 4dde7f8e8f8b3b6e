"""Fixtures: the bundled example VM, and the govmomi vCenter simulator
(tests/peers/vcsim, built by tests/peers/install.sh) on 127.0.0.1."""

import json
import os
import pathlib
import subprocess
import threading
from urllib.parse import urlsplit

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]


@pytest.fixture
def examples() -> pathlib.Path:
    return ROOT / "examples" / "vms"


@pytest.fixture
def vcsim(tmp_path):
    """A simulator with a powered-off VM 'pyvm' (disks of 8 and 2 MiB)."""
    launcher = ROOT / "target" / "peers" / "vcsim-launcher"
    if not launcher.exists():
        pytest.fail(f"{launcher} is missing: run bash tests/peers/install.sh")
    proc = subprocess.Popen([str(launcher), "-vm", "pyvm=8,2"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    line = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(60)
    if not line:
        proc.kill()
        pytest.fail("the vcsim launcher did not start within 60 s")
    info = json.loads(line[0])
    url = urlsplit(info["url"])
    ca = tmp_path / "vcsim-ca.pem"
    ca.write_text(info["ca_pem"])
    yield {
        "url": f"{url.scheme}://{url.hostname}:{url.port}{url.path}",
        "user": url.username,
        "password": url.password,
        "thumbprint": info["thumbprint"],
        "ca_file": str(ca),
    }
    proc.stdin.close()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def qemu_img(*args: str) -> str:
    out = subprocess.run(["qemu-img", *args], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout
