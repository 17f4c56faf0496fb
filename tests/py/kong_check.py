"""Checks a Kong declarative configuration (decK / DB-less YAML) as far as
no Kong tool packaged here can: the document's structure for format 3.0
(services with a url, routes with paths, plugins by name with a config),
that every plugin is one Kong bundles, and that every Lua snippet of the
serverless `pre-function`/`post-function` plugins compiles (`luac5.1 -p`:
Kong runs LuaJIT, whose syntax is Lua 5.1's).

Usage: kong_check.py FILE.yaml
Exits 1 with the first problem; prints a JSON summary.
"""

import json
import subprocess
import sys
import tempfile

import yaml

BUNDLED = {"pre-function", "post-function", "request-transformer",
           "response-transformer", "rate-limiting", "key-auth", "jwt",
           "cors", "ip-restriction", "acl"}
PHASES = {"certificate", "rewrite", "access", "header_filter",
          "body_filter", "log"}


def fail(msg):
    print(f"kong config: {msg}", file=sys.stderr)
    sys.exit(1)


def need(cond, msg):
    if not cond:
        fail(msg)


def check_lua(where, code):
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as f:
        f.write(code)
        f.flush()
        r = subprocess.run(["luac5.1", "-p", f.name], capture_output=True, text=True)
        need(r.returncode == 0, f"{where}: {r.stderr.strip()}")


def check_plugin(where, p):
    need(isinstance(p, dict), f"{where}: a plugin is a mapping")
    need(p.get("name") in BUNDLED, f"{where}: unknown plugin {p.get('name')!r}")
    cfg = p.get("config", {})
    need(isinstance(cfg, dict), f"{where}.config: a mapping")
    snippets = 0
    if p["name"] in ("pre-function", "post-function"):
        need(set(cfg) <= PHASES, f"{where}.config: unknown phases {set(cfg) - PHASES}")
        for phase, codes in cfg.items():
            need(isinstance(codes, list) and all(isinstance(c, str) for c in codes),
                 f"{where}.config.{phase}: a list of Lua strings")
            for i, c in enumerate(codes):
                check_lua(f"{where}.config.{phase}[{i}]", c)
                snippets += 1
        need(snippets > 0, f"{where}: no Lua")
    return snippets


def main():
    doc = yaml.safe_load(open(sys.argv[1]))
    need(isinstance(doc, dict), "not a mapping")
    need(doc.get("_format_version") == "3.0", "_format_version must be \"3.0\"")
    services = doc.get("services")
    need(isinstance(services, list) and services, "no services")
    lua = 0
    for i, s in enumerate(services):
        w = f"services[{i}]"
        need(isinstance(s.get("name"), str), f"{w}.name")
        need(isinstance(s.get("url"), str) and "://" in s["url"], f"{w}.url")
        for j, r in enumerate(s.get("routes", [])):
            need(isinstance(r.get("paths"), list) and r["paths"], f"{w}.routes[{j}].paths")
            need(all(p.startswith("/") for p in r["paths"]), f"{w}.routes[{j}].paths")
        for j, p in enumerate(s.get("plugins", [])):
            lua += check_plugin(f"{w}.plugins[{j}]", p)
    print(json.dumps({"ok": True, "services": len(services), "lua_snippets": lua}))


if __name__ == "__main__":
    main()
