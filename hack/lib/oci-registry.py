#!/usr/bin/env python3
"""A read-only container registry on loopback, serving OCI image tarballs.

    python3 hack/lib/oci-registry.py --listen 127.0.0.1:5000 NAME=IMAGE.tar ...

Serves each OCI image layout tarball (hack/mkimage-busybox's) as repository
NAME (e.g. ferry-busybox) with the tags its index.json names
(org.opencontainers.image.ref.name), through the part of the OCI
distribution API a pull uses: GET /v2/, HEAD and GET of
/v2/NAME/manifests/REFERENCE (a tag or a digest) and /v2/NAME/blobs/DIGEST.
Nothing can be pushed.

Why: containerd 2.1's CRI restore of a checkpoint archive (CreateContainer
whose image is the archive) pulls the checkpointed container's base image by
its repo digest (NAME@sha256:...) before anything else, as a kubelet's node
pulls images: an image imported with `ctr images import` has no repo digest,
so CRI's ContainerStatus names it by its id, which cannot be pulled. Images
pulled through CRI from this registry (localhost:PORT/NAME:TAG) carry one;
containerd speaks plain HTTP to a localhost registry. Run one in each host's
network namespace (its own loopback), serving the same tarballs.

It prints "listening on HOST:PORT" once it accepts connections, and exits on
SIGTERM or SIGINT.
"""

import argparse
import hashlib
import http.server
import json
import signal
import sys
import tarfile

INDEX_TYPE = "application/vnd.oci.image.index.v1+json"


class Repo:
    """One image tarball: its blobs by digest, its tags by name."""

    def __init__(self, path):
        self.blobs = {}
        self.types = {}
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                if m.isfile() and m.name.startswith("blobs/sha256/"):
                    self.blobs["sha256:" + m.name.rsplit("/", 1)[1]] = tar.extractfile(m).read()
            index = json.loads(tar.extractfile("index.json").read())
        self.tags = {}
        for d in index.get("manifests", []):
            self.types[d["digest"]] = d["mediaType"]
            tag = d.get("annotations", {}).get("org.opencontainers.image.ref.name")
            if tag:
                self.tags[tag] = d["digest"]
        for digest, data in self.blobs.items():
            if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
                raise SystemExit(f"{path}: blob {digest} does not match its digest")

    def manifest(self, ref):
        digest = self.tags.get(ref, ref)
        data = self.blobs.get(digest)
        if data is None:
            return None
        media = self.types.get(digest) or json.loads(data).get("mediaType", INDEX_TYPE)
        return digest, media, data


def handler(repos):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            sys.stderr.write("oci-registry: " + fmt % args + "\n")

        def answer(self, code, data=b"", headers=None, body=True):
            self.send_response(code)
            self.send_header("Docker-Distribution-API-Version", "registry/2.0")
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

        def route(self, body):
            parts = self.path.split("?", 1)[0].strip("/").split("/")
            if parts == ["v2"]:
                return self.answer(200, b"{}", {"Content-Type": "application/json"}, body)
            # v2/NAME.../(manifests|blobs)/REF
            if len(parts) >= 4 and parts[0] == "v2" and parts[-2] in ("manifests", "blobs"):
                repo = repos.get("/".join(parts[1:-2]))
                if repo is not None:
                    if parts[-2] == "manifests":
                        found = repo.manifest(parts[-1])
                        if found:
                            digest, media, data = found
                            return self.answer(200, data, {"Content-Type": media, "Docker-Content-Digest": digest}, body)
                    else:
                        data = repo.blobs.get(parts[-1])
                        if data is not None:
                            return self.answer(200, data, {"Content-Type": "application/octet-stream",
                                                           "Docker-Content-Digest": parts[-1]}, body)
            err = json.dumps({"errors": [{"code": "NAME_UNKNOWN", "message": "not here"}]}).encode()
            return self.answer(404, err, {"Content-Type": "application/json"}, body)

        def do_GET(self):
            self.route(True)

        def do_HEAD(self):
            self.route(False)

    return Handler


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", default="127.0.0.1:5000", help="HOST:PORT (loopback)")
    ap.add_argument("images", nargs="+", metavar="NAME=IMAGE.tar")
    a = ap.parse_args()
    host, port = a.listen.rsplit(":", 1)
    repos = {}
    for spec in a.images:
        name, sep, path = spec.partition("=")
        if not sep:
            ap.error(f"{spec}: want NAME=IMAGE.tar")
        repos[name] = Repo(path)
    server = http.server.ThreadingHTTPServer((host, int(port)), handler(repos))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"listening on {host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
