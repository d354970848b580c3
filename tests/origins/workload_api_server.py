#!/usr/bin/env python3
"""A SPIFFE Workload API server for tests: the real protocol, not SPIRE.

gRPC over a unix socket, with Python stubs generated at start-up (into a temp dir, with
grpcio-tools) from SPIFFE's published workload.proto (tests/origins/workload.proto). It serves
the X.509 part of the API:

  FetchX509SVID     streams X509SVIDResponse: one SVID (chain, PKCS#8 key, own bundle) and the
                    federated bundles keyed by "spiffe://<trust domain>"
  FetchX509Bundles  streams X509BundlesResponse: every bundle keyed by "spiffe://<trust domain>"

Like SPIRE's agent, every call must carry the metadata header `workload.spiffe.io: true`;
without it the call fails with INVALID_ARGUMENT "security header missing from request".
The JWT RPCs are not implemented (UNIMPLEMENTED).

Material is read from PEM files on start-up and again on SIGHUP; after a reload the new
material is pushed on every open stream and "generation N" is printed. Input files:

  --svid FILE         certificate chain, leaf first
  --key FILE          the leaf's private key, PKCS#8 ("BEGIN PRIVATE KEY")
  --bundle FILE       CA certificates of the SVID's own trust domain
  --federated-dir D   optional: D/<trust domain>.pem, one bundle per federated trust domain

Prints "ready" once listening. Exits on SIGTERM/SIGINT. Stdlib + grpcio + grpcio-tools only.
"""

import argparse
import base64
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
from concurrent import futures

PEM_RE = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.DOTALL
)


_LOG_LOCK = threading.Lock()


def log(line):
    """One whole line per call, even from several gRPC threads at once."""
    with _LOG_LOCK:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def pem_blocks(path, label):
    with open(path, "rb") as f:
        data = f.read()
    blocks = [base64.b64decode(body) for lab, body in PEM_RE.findall(data) if lab == label.encode()]
    if not blocks:
        raise ValueError(f"{path}: no {label} block")
    return blocks


def generate_stubs(proto_path):
    """Compiles workload.proto into a temp dir and imports the modules from there."""
    import grpc_tools
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="workload-api-stubs-")
    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    proto_dir = os.path.dirname(os.path.abspath(proto_path))
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"-I{include}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            os.path.basename(proto_path),
        ]
    )
    if rc != 0:
        raise SystemExit(f"protoc failed on {proto_path}: exit {rc}")
    sys.path.insert(0, out)
    try:
        import workload_pb2
        import workload_pb2_grpc
    finally:
        sys.path.remove(out)
        shutil.rmtree(out, ignore_errors=True)  # loaded; nothing generated is left behind
    return workload_pb2, workload_pb2_grpc


class Material:
    """The current SVID and bundles, and a generation counter streams wait on."""

    def __init__(self, args):
        self.args = args
        self.cond = threading.Condition()
        self.generation = 0
        self.current = None
        self.stopping = False

    def load(self):
        a = self.args
        chain = pem_blocks(a.svid, "CERTIFICATE")
        key = pem_blocks(a.key, "PRIVATE KEY")[0]
        own = pem_blocks(a.bundle, "CERTIFICATE")
        federated = {}
        if a.federated_dir and os.path.isdir(a.federated_dir):
            for name in sorted(os.listdir(a.federated_dir)):
                if name.endswith(".pem"):
                    td = name[: -len(".pem")]
                    federated[td] = pem_blocks(os.path.join(a.federated_dir, name), "CERTIFICATE")
        with self.cond:
            self.current = {
                "spiffe_id": a.spiffe_id,
                "chain": b"".join(chain),
                "key": key,
                "own_td": a.spiffe_id.split("/")[2],
                "own": b"".join(own),
                "federated": {td: b"".join(certs) for td, certs in federated.items()},
            }
            self.generation += 1
            self.cond.notify_all()
            return self.generation

    def wait_newer(self, seen, is_active):
        """Blocks until a generation newer than `seen` exists, or the call/server ends."""
        with self.cond:
            while self.generation <= seen and not self.stopping and is_active():
                self.cond.wait(timeout=1.0)  # re-check is_active: cancellation wakes us too
            if self.stopping or not is_active():
                return None
            return self.generation, self.current

    def snapshot(self):
        with self.cond:
            return self.generation, self.current

    def wake(self):
        """Wakes waiting streams so they notice a cancelled call."""
        with self.cond:
            self.cond.notify_all()

    def stop(self):
        with self.cond:
            self.stopping = True
            self.cond.notify_all()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--socket", required=True)
    p.add_argument("--proto", default=os.path.join(os.path.dirname(__file__), "workload.proto"))
    p.add_argument("--spiffe-id", required=True)
    p.add_argument("--svid", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--bundle", required=True)
    p.add_argument("--federated-dir")
    args = p.parse_args()

    # Signals are taken synchronously by the main thread (sigwait); gRPC's threads inherit the
    # mask, so SIGHUP never interrupts a stream mid-write.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP, signal.SIGTERM, signal.SIGINT})

    import grpc

    pb, pb_grpc = generate_stubs(args.proto)
    material = Material(args)
    material.load()

    def require_header(context):
        md = dict(context.invocation_metadata())
        if md.get("workload.spiffe.io") != "true":
            log("rejected: missing workload.spiffe.io header")
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "security header missing from request")

    def svid_response(m):
        return pb.X509SVIDResponse(
            svids=[
                pb.X509SVID(
                    spiffe_id=m["spiffe_id"],
                    x509_svid=m["chain"],
                    x509_svid_key=m["key"],
                    bundle=m["own"],
                )
            ],
            federated_bundles={f"spiffe://{td}": b for td, b in m["federated"].items()},
        )

    def bundles_response(m):
        bundles = {f"spiffe://{m['own_td']}": m["own"]}
        bundles.update({f"spiffe://{td}": b for td, b in m["federated"].items()})
        return pb.X509BundlesResponse(bundles=bundles)

    def stream(context, build, name):
        require_header(context)
        context.add_callback(material.wake)
        gen, m = material.snapshot()
        log(f"{name} stream opened")
        yield build(m)
        log(f"{name} sent generation {gen}")
        while True:
            nxt = material.wait_newer(gen, context.is_active)
            if nxt is None:
                return
            gen, m = nxt
            yield build(m)
            log(f"{name} sent generation {gen}")

    class Servicer(pb_grpc.SpiffeWorkloadAPIServicer):
        def FetchX509SVID(self, request, context):
            yield from stream(context, svid_response, "FetchX509SVID")

        def FetchX509Bundles(self, request, context):
            yield from stream(context, bundles_response, "FetchX509Bundles")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    pb_grpc.add_SpiffeWorkloadAPIServicer_to_server(Servicer(), server)
    if server.add_insecure_port(f"unix://{args.socket}") == 0:
        raise SystemExit(f"cannot listen on unix://{args.socket}")
    server.start()
    log("ready")

    while True:
        sig = signal.sigwait({signal.SIGHUP, signal.SIGTERM, signal.SIGINT})
        if sig == signal.SIGHUP:
            try:
                gen = material.load()
                log(f"generation {gen}")
            except (OSError, ValueError) as e:
                log(f"reload failed, keeping generation {material.generation}: {e}")
        else:
            break
    material.stop()
    server.stop(grace=1).wait()
    log("stopped")


if __name__ == "__main__":
    main()
