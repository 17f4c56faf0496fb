"""RFC 7662 and RFC 7009 against veto, through Authlib's OAuth 2.0 client.

Usage: oauth_probe.py CONFIG_JSON
  {"introspect": url, "revoke": url, "ca": path,
   "client": [cert, key], "operator": [cert, key],
   "token": a live token (aud set), "sub": ..., "scope": ..., "aud": ...}

Client authentication is mutual TLS (the RFC 8705 tls_client_auth idea):
the certificate is the credential, so Authlib is given a no-op auth and
the session carries the certificate. Each check raises on a mismatch; the
last line printed is a JSON summary with the names of the checks passed.
"""

import json
import sys
import time

import requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7662 import IntrospectionToken

REGISTERED = {
    "active", "scope", "client_id", "username", "token_type", "exp", "iat",
    "nbf", "sub", "aud", "iss", "jti",
}
passed = []


def check(name, cond, detail=""):
    if not cond:
        raise AssertionError(f"{name}: {detail}")
    passed.append(name)


def tls(cfg, who):
    """The per-call TLS options: trust the veto CA, present `who`'s
    certificate (none when `who` is None). Authlib forwards them to
    requests per call; a session attribute is not used by its token calls."""
    kw = {"verify": cfg["ca"]}
    if who:
        kw["cert"] = tuple(cfg[who])
    return kw


def no_auth(r):
    return r


def introspect(cfg, token, who="client"):
    return OAuth2Session().introspect_token(
        cfg["introspect"], token=token, token_type_hint="access_token", auth=no_auth,
        **tls(cfg, who),
    )


def revoke(cfg, token, who="operator"):
    return OAuth2Session().revoke_token(
        cfg["revoke"], token=token, token_type_hint="access_token", auth=no_auth,
        **tls(cfg, who),
    )


def is_numeric_date(v):
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def active_fields(cfg, r):
    check("introspect: 200", r.status_code == 200, r.text)
    check("introspect: JSON", r.headers.get("content-type", "").startswith("application/json"))
    check("introspect: no-store", "no-store" in r.headers.get("cache-control", ""))
    b = r.json()
    check("active: boolean true", b.get("active") is True, b)
    check("scope: space-separated string", isinstance(b.get("scope"), str) and b["scope"] == cfg["scope"], b)
    check("sub", b.get("sub") == cfg["sub"], b)
    check("aud", b.get("aud") == cfg["aud"], b)
    for f in ("exp", "iat", "nbf"):
        check(f"{f}: NumericDate", is_numeric_date(b.get(f)), b)
    check("iat <= nbf < exp", b["iat"] <= b["nbf"] < b["exp"], b)
    check("exp in the future", b["exp"] > time.time() - 5, b)
    check("jti: string", isinstance(b.get("jti"), str) and len(b["jti"]) > 0, b)
    check("token_type: Bearer", b.get("token_type") == "Bearer", b)
    ext = set(b) - REGISTERED
    check("extensions are veto_*", all(k.startswith("veto_") for k in ext), ext)
    check("veto_revision: integer", isinstance(b.get("veto_revision"), int), b)
    check("veto_stale: false", b.get("veto_stale") is False, b)
    t = IntrospectionToken(b)
    check("authlib reads scope", t.get_scope() == cfg["scope"], t)
    check("authlib reads exp", t.get_expires_at() == b["exp"], t)
    return b


def inactive(r, name):
    check(f"{name}: 200", r.status_code == 200, r.text)
    b = r.json()
    check(f"{name}: active false", b.get("active") is False, b)
    leaked = (set(b) & REGISTERED) - {"active"}
    check(f"{name}: nothing about the token", not leaked, leaked)
    return b


def main():
    cfg = json.load(open(sys.argv[1]))
    tok = cfg["token"]

    b = active_fields(cfg, introspect(cfg, tok))

    # Client authentication: no certificate, no answer.
    try:
        r = introspect(cfg, tok, who=None)
        check("introspect without a certificate: 401", r.status_code == 401, r.status_code)
    except requests.exceptions.SSLError:
        passed.append("introspect without a certificate: refused at TLS")

    inactive(introspect(cfg, "not.a.token"), "garbage token")
    r = requests.post(cfg["introspect"], data={}, cert=tuple(cfg["client"]), verify=cfg["ca"])
    check("no token parameter: 400", r.status_code == 400, r.text)
    check("no token parameter: invalid_request", r.json().get("error") == "invalid_request", r.text)

    # RFC 7009: a verify client is not allowed to revoke.
    r = revoke(cfg, tok, who="client")
    check("revoke by a client certificate: 401", r.status_code == 401, r.text)
    check("revoke by a client: invalid_client", r.json().get("error") == "invalid_client", r.text)
    active_fields(cfg, introspect(cfg, tok))

    t0 = time.monotonic()
    r = revoke(cfg, tok)
    ack = time.monotonic()
    check("revoke: 200", r.status_code == 200, r.text)
    rb = r.json()
    check("revoke: revoked", rb.get("revoked") is True, rb)
    check("revoke: every edge confirmed", rb.get("edges_confirmed", 0) >= 1, rb)
    # Revoked: inactive at the edge once the revoke is acknowledged (it
    # waited for every edge), and RFC 7662 says nothing more about it.
    ib = inactive(introspect(cfg, tok), "revoked token")
    check("revision moved", ib["veto_revision"] >= rb["revision"], (ib, rb))

    r = revoke(cfg, tok)
    check("revoke again: 200", r.status_code == 200, r.text)
    check("revoke again: already", r.json().get("already_revoked") is True, r.text)
    r = revoke(cfg, "not.a.token")
    check("revoke an invalid token: 200 (RFC 7009 2.2)", r.status_code == 200, r.text)
    r = requests.post(cfg["revoke"], data={"token_type_hint": "access_token"},
                      cert=tuple(cfg["operator"]), verify=cfg["ca"])
    check("revoke without token: 400 invalid_request",
          r.status_code == 400 and r.json().get("error") == "invalid_request", r.text)

    print(json.dumps({"ok": True, "passed": passed, "jti": b["jti"],
                      "revoke_ms": (ack - t0) * 1e3, "propagation_ms": rb.get("propagation_ms")}))


if __name__ == "__main__":
    main()
