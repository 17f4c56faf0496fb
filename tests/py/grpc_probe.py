"""Probes veto gRPC ports with grpcio's own clients and prints one JSON line.

For each target: the grpc.health.v1 status of the process ("") and of each
named service (Check), the first status a Watch streams, and, unless
--no-reflection, the services listed by server reflection (v1alpha, which
grpcio's ProtoReflectionDescriptorDatabase speaks) and whether each listed
veto service's methods resolve through the reflected descriptors.

usage: grpc_probe.py [--ca CA.pem] [--no-reflection] ADDR[=SERVICE,SERVICE...] ...
"""

import argparse
import json
import sys

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

TIMEOUT = 5.0


def status_name(code):
    return health_pb2.HealthCheckResponse.ServingStatus.Name(code)


def check(stub, service):
    try:
        r = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
        return status_name(r.status)
    except grpc.RpcError as e:
        return "ERROR " + e.code().name


def watch_first(stub):
    try:
        stream = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT)
        for r in stream:
            stream.cancel()
            return status_name(r.status)
        return "ERROR ended"
    except grpc.RpcError as e:
        return "ERROR " + e.code().name


def reflect(channel):
    out = {"services": [], "methods": {}}
    try:
        db = ProtoReflectionDescriptorDatabase(channel)
        out["services"] = sorted(db.get_services())
        pool = DescriptorPool(db)
        for name in out["services"]:
            if name.startswith("veto."):
                svc = pool.FindServiceByName(name)
                out["methods"][name] = sorted(m.name for m in svc.methods)
    except grpc.RpcError as e:
        out["error"] = e.code().name
    return out


def probe(target, services, creds, reflection):
    if creds is None:
        channel = grpc.insecure_channel(target)
    else:
        channel = grpc.secure_channel(target, creds)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        res = {"target": target, "health": {}, "watch": watch_first(stub)}
        for s in [""] + services:
            res["health"][s] = check(stub, s)
        if reflection:
            res["reflection"] = reflect(channel)
        return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ca", help="CA certificate (PEM): TLS without a client certificate")
    ap.add_argument("--no-reflection", action="store_true")
    ap.add_argument("targets", nargs="+")
    a = ap.parse_args()
    creds = None
    if a.ca:
        with open(a.ca, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    results = []
    for t in a.targets:
        addr, _, svcs = t.partition("=")
        services = [s for s in svcs.split(",") if s]
        results.append(probe(addr, services, creds, not a.no_reflection))
    json.dump(results, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
