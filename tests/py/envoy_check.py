"""Checks an Envoy bootstrap (YAML) against Envoy's own protobuf descriptors.

Usage: envoy_check.py DESCRIPTOR_SET BOOTSTRAP_YAML

DESCRIPTOR_SET is the FileDescriptorSet the envoy-types crate ships
(compiled from Envoy's published protos). The YAML is parsed with
protobuf's JSON mapping into envoy.config.bootstrap.v3.Bootstrap, so every
field name, enum value and type is checked, and every `typed_config` is
resolved by its `@type` and checked the same way. Exits 1 with the parser's
message on the first problem; prints the typed configs it resolved.
"""

import json
import sys

import yaml
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory


def main():
    fds = descriptor_pb2.FileDescriptorSet.FromString(open(sys.argv[1], "rb").read())
    pool = descriptor_pool.DescriptorPool()
    for f in fds.file:
        pool.Add(f)
    bootstrap = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("envoy.config.bootstrap.v3.Bootstrap"))
    doc = yaml.safe_load(open(sys.argv[2]))
    msg = bootstrap()
    try:
        json_format.ParseDict(doc, msg, descriptor_pool=pool)
    except json_format.ParseError as e:
        print(f"invalid bootstrap: {e}", file=sys.stderr)
        sys.exit(1)
    types = sorted({v for v in walk(doc)})
    print(json.dumps({"ok": True, "typed_configs": types}))


def walk(x):
    if isinstance(x, dict):
        for k, v in x.items():
            if k == "@type":
                yield v
            else:
                yield from walk(v)
    elif isinstance(x, list):
        for v in x:
            yield from walk(v)


if __name__ == "__main__":
    main()
