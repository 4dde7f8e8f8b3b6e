"""The thinnest stub of the EC2 instance metadata service (IMDSv2) for an
instance role's credentials, for the AWS provider's tests.

Follows the EC2 User Guide, "Use the Instance Metadata Service to access
instance metadata" (IMDSv2: PUT /latest/api/token with
X-aws-ec2-metadata-token-ttl-seconds, then every GET with
X-aws-ec2-metadata-token; a GET without a valid token is 401) and
"Retrieve security credentials from instance metadata"
(GET /latest/meta-data/iam/security-credentials/ names the role;
GET …/ROLE answers Code, AccessKeyId, SecretAccessKey, Token, Expiration).
Exercised in the tests by botocore's own InstanceMetadataFetcher.

Also the ECS/EKS container credentials endpoint (AWS SDKs and Tools
Reference Guide, "Container credential provider": GET of the URL in
AWS_CONTAINER_CREDENTIALS_FULL_URI with the Authorization header from
AWS_CONTAINER_AUTHORIZATION_TOKEN; answers AccessKeyId, SecretAccessKey,
Token, Expiration) at /v2/credentials/ID, checked by botocore's
ContainerMetadataFetcher.

Usage: imds.py ACCESS_KEY SECRET_KEY [--role NAME] [--container-token TOKEN]
Prints {"port": N}; exits when standard input closes. GET /_peer/stats
counts tokens issued and requests refused.
"""

import argparse
import datetime
import json
import uuid
from http import server

from peer_serve import serve

STATS = {"tokens": 0, "refused": 0, "credentials": 0}
TOKENS = set()
ARGS = None


class Imds(server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def answer(self, status, text, ctype="text/plain"):
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self):
        if self.path != "/latest/api/token":
            return self.answer(404, "Not Found")
        ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
        if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
            return self.answer(400, "Bad Request")
        tok = uuid.uuid4().hex
        TOKENS.add(tok)
        STATS["tokens"] += 1
        self.answer(200, tok)

    def credentials(self):
        now = datetime.datetime.now(datetime.timezone.utc)
        STATS["credentials"] += 1
        return {
            "AccessKeyId": ARGS.access_key,
            "SecretAccessKey": ARGS.secret_key,
            "Token": "session-token-" + uuid.uuid4().hex,
            "Expiration": (now + datetime.timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    def do_GET(self):
        if self.path == "/_peer/stats":
            return self.answer(200, json.dumps(STATS), "application/json")
        if self.path.startswith("/v2/credentials/"):
            if not ARGS.container_token or self.headers.get("Authorization") != ARGS.container_token:
                STATS["refused"] += 1
                return self.answer(401, json.dumps({"code": "AccessDenied"}), "application/json")
            c = self.credentials()
            c["RoleArn"] = "arn:aws:iam::123456789012:role/" + ARGS.role
            return self.answer(200, json.dumps(c), "application/json")
        if self.headers.get("X-aws-ec2-metadata-token") not in TOKENS:
            STATS["refused"] += 1
            return self.answer(401, "Unauthorized")
        base = "/latest/meta-data/iam/security-credentials/"
        if self.path == base:
            return self.answer(200, ARGS.role)
        if self.path == base + ARGS.role:
            now = datetime.datetime.now(datetime.timezone.utc)
            c = self.credentials()
            c.update({"Code": "Success", "Type": "AWS-HMAC",
                      "LastUpdated": now.strftime("%Y-%m-%dT%H:%M:%SZ")})
            return self.answer(200, json.dumps(c), "text/plain")
        self.answer(404, "Not Found")


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("access_key")
    ap.add_argument("secret_key")
    ap.add_argument("--role", default="hypersdk-exporter")
    ap.add_argument("--container-token")
    ap.add_argument("--lifetime", type=float, default=1800)
    ARGS = ap.parse_args()
    httpd = server.ThreadingHTTPServer(("127.0.0.1", 0), Imds)
    serve(httpd, ARGS.lifetime)


if __name__ == "__main__":
    main()
