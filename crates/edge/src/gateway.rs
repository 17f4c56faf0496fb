//! What the gateway hooks (Envoy ext_authz, HTTP forward-auth) decide, as
//! pure code: where the token is, which scopes and audience a route
//! requires, and how a verdict becomes an HTTP answer (RFC 6750 for the
//! refusals). The services in [`crate::ext_authz`] and [`crate::hooks`] only
//! translate their wire formats to and from these types.

use serde::{Deserialize, Serialize};
use veto_feed::{Outcome, Verdict};

/// How the hooks read a request and answer it (`[gateway]` in the
/// `veto-edge` TOML file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Gateway {
    /// Request header carrying the token (case-insensitive).
    pub token_header: String,
    /// Authentication scheme before the token in that header
    /// (case-insensitive); empty: the whole header value is the token.
    pub token_scheme: String,
    /// Remove the token header from the request sent upstream (ext_authz;
    /// forward-auth gateways choose the upstream headers themselves).
    pub strip_token_header: bool,
    /// Which pair of headers carries the original method and URI to the
    /// forward-auth hook: `forwarded` (`X-Forwarded-Method`/`-Uri`, which
    /// Traefik and Caddy set themselves, and the documented nginx setup
    /// too) or `original` (`X-Original-Method`/`-URI`). Only that pair is
    /// read, so a client cannot name another path in the other family.
    pub forward_headers: ForwardHeaders,
    /// `realm` in `WWW-Authenticate`.
    pub realm: String,
    /// Names of the headers that carry the verified identity upstream.
    pub identity_headers: IdentityHeaders,
    /// Per-route requirements: the longest matching `path_prefix` wins.
    /// A route no rule matches needs a valid token and nothing more.
    pub routes: Vec<RouteRule>,
}

impl Default for Gateway {
    fn default() -> Self {
        Self {
            token_header: "authorization".into(),
            token_scheme: "Bearer".into(),
            strip_token_header: false,
            forward_headers: ForwardHeaders::Forwarded,
            realm: "veto".into(),
            identity_headers: IdentityHeaders::default(),
            routes: Vec::new(),
        }
    }
}

/// The header pair a forward-auth gateway names the original request in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardHeaders {
    /// `X-Forwarded-Method` and `X-Forwarded-Uri`.
    Forwarded,
    /// `X-Original-Method` and `X-Original-URI`.
    Original,
}

impl ForwardHeaders {
    /// The (method, URI) header names, lower case.
    pub fn names(self) -> (&'static str, &'static str) {
        match self {
            ForwardHeaders::Forwarded => ("x-forwarded-method", "x-forwarded-uri"),
            ForwardHeaders::Original => ("x-original-method", "x-original-uri"),
        }
    }
}

/// Header names for the identity of an accepted request; an empty name
/// leaves that header out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityHeaders {
    /// The token's `sub`.
    pub subject: String,
    /// Granted scopes, space-separated.
    pub scopes: String,
    /// The token's `jti`.
    pub jti: String,
    /// The signing key id.
    pub kid: String,
    /// The edge's applied revision when it answered.
    pub revision: String,
    /// Present (`true`) only on an answer given outside the bound by a
    /// fail-open edge.
    pub stale: String,
}

impl Default for IdentityHeaders {
    fn default() -> Self {
        Self {
            subject: "x-veto-subject".into(),
            scopes: "x-veto-scopes".into(),
            jti: "x-veto-jti".into(),
            kid: "x-veto-kid".into(),
            revision: "x-veto-revision".into(),
            stale: "x-veto-stale".into(),
        }
    }
}

/// What one route requires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RouteRule {
    /// Path prefix the rule covers (`/admin`); `/` covers everything.
    pub path_prefix: String,
    /// Methods it covers (case-insensitive; a `GET` rule covers `HEAD`
    /// too); empty: every method.
    pub methods: Vec<String>,
    /// Scopes the token must grant.
    pub scopes: Vec<String>,
    /// Audience the token must name.
    pub audience: Option<String>,
}

/// Scopes and audience one request must satisfy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Required {
    /// Every one must be granted.
    pub scopes: Vec<String>,
    /// `aud` must equal it.
    pub audience: Option<String>,
}

impl Required {
    /// Parses the per-request form (ext_authz context extensions, the
    /// forward-auth query): scopes separated by spaces or commas.
    pub fn parse(scopes: Option<&str>, audience: Option<&str>) -> Required {
        Required {
            scopes: scopes
                .unwrap_or("")
                .split([' ', ','])
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            audience: audience.filter(|a| !a.is_empty()).map(str::to_owned),
        }
    }
}

/// Why a gateway configuration is refused; names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("gateway.{field}: {problem}")]
pub struct GatewayError {
    /// The offending field.
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl Gateway {
    /// Checks header names, schemes and rules.
    pub fn validate(&self) -> Result<(), GatewayError> {
        let err = |field: &str, problem: &str| GatewayError {
            field: field.into(),
            problem: problem.into(),
        };
        if !is_header_name(&self.token_header) {
            return Err(err("token_header", "must be an HTTP header name"));
        }
        if !self.token_scheme.is_empty() && !is_header_name(&self.token_scheme) {
            return Err(err("token_scheme", "must be one token68-free word"));
        }
        if !self
            .realm
            .bytes()
            .all(|b| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\')
        {
            return Err(err(
                "realm",
                "must be printable ASCII without quotes or backslashes",
            ));
        }
        let h = &self.identity_headers;
        for (name, v) in [
            ("subject", &h.subject),
            ("scopes", &h.scopes),
            ("jti", &h.jti),
            ("kid", &h.kid),
            ("revision", &h.revision),
            ("stale", &h.stale),
        ] {
            if !v.is_empty() && !is_header_name(v) {
                return Err(err(
                    &format!("identity_headers.{name}"),
                    "must be an HTTP header name or empty",
                ));
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            if !r.path_prefix.starts_with('/') {
                return Err(err(
                    &format!("routes[{i}].path_prefix"),
                    "must start with /",
                ));
            }
            if r.methods.iter().any(|m| !is_header_name(m)) {
                return Err(err(&format!("routes[{i}].methods"), "must be HTTP methods"));
            }
            if r.scopes.len() > veto_core::limits::MAX_REQUIRED_SCOPES {
                return Err(err(&format!("routes[{i}].scopes"), "too many scopes"));
            }
        }
        Ok(())
    }

    /// What `method path` requires by the configured rules: the longest
    /// `path_prefix` among those covering the method. `path` must be
    /// canonical ([`canonical_path`]); a prefix matches whole path segments
    /// (`/admin` covers `/admin` and `/admin/x`, not `/administrator`).
    pub fn route(&self, method: &str, path: &str) -> Option<&RouteRule> {
        self.routes
            .iter()
            .filter(|r| r.methods.is_empty() || r.methods.iter().any(|m| method_covers(m, method)))
            .filter(|r| prefix_matches(&r.path_prefix, path))
            .max_by_key(|r| r.path_prefix.len())
    }

    /// What a request to `method raw_uri` must satisfy: `explicit` (the
    /// hook's own per-request requirements) if given, else the route rules
    /// applied to the canonical form of the path. A path with no canonical
    /// form is refused (403: every gateway passes a 403 on, while nginx
    /// turns a 400 into a 500) rather than matched as written, since the
    /// upstream may read it as a path a rule covers.
    pub fn requirements(
        &self,
        method: &str,
        raw_uri: &str,
        explicit: Option<Required>,
    ) -> Result<Required, Denial> {
        if let Some(r) = explicit {
            return self.bounded(r);
        }
        if self.routes.is_empty() {
            // No rule to bypass: any path needs just a valid token.
            return Ok(Required::default());
        }
        let Some(path) = canonical_path(raw_uri) else {
            return Err(Denial {
                status: 403,
                www_authenticate: None,
                reason: "the request path is not in canonical form (encoded slash or backslash, \
                         bad percent-encoding, ';' or a path escaping the root)"
                    .into(),
                outcome: None,
                retry_after: None,
            });
        };
        Ok(match self.route(method, &path) {
            Some(rule) => Required {
                scopes: rule.scopes.clone(),
                audience: rule.audience.clone(),
            },
            None => Required::default(),
        })
    }

    fn bounded(&self, r: Required) -> Result<Required, Denial> {
        if r.scopes.len() > veto_core::limits::MAX_REQUIRED_SCOPES {
            return Err(Denial {
                status: 403,
                www_authenticate: None,
                reason: "the request requires more scopes than an edge checks".into(),
                outcome: None,
                retry_after: None,
            });
        }
        Ok(r)
    }

    /// The token in the configured header's value, if it has one.
    pub fn token<'a>(&self, header_value: &'a str) -> Option<&'a str> {
        let v = header_value.trim();
        let t = if self.token_scheme.is_empty() {
            v
        } else {
            let (scheme, rest) = v.split_once(' ')?;
            if !scheme.eq_ignore_ascii_case(&self.token_scheme) {
                return None;
            }
            rest.trim_start()
        };
        (!t.is_empty() && !t.contains(' ')).then_some(t)
    }

    /// The refusal of a request that carries no token.
    pub fn no_token(&self) -> Denial {
        Denial {
            status: 401,
            www_authenticate: Some(format!("{} realm=\"{}\"", self.scheme(), self.realm)),
            reason: format!("no {} token in {}", self.scheme(), self.token_header),
            outcome: None,
            retry_after: None,
        }
    }

    fn scheme(&self) -> &str {
        if self.token_scheme.is_empty() {
            "Bearer"
        } else {
            &self.token_scheme
        }
    }

    /// Turns `v` (for a request that required `req`) into the answer.
    pub fn decide(&self, v: &Verdict, req: &Required, revision: u64) -> Decision {
        match v.outcome {
            Outcome::Valid => Decision::Allow(self.allowed(v, revision)),
            Outcome::Stale => Decision::Deny(Denial {
                status: 503,
                www_authenticate: None,
                reason: v.reason.clone(),
                outcome: Some(v.outcome),
                retry_after: Some(1),
            }),
            Outcome::InsufficientScope => Decision::Deny(Denial {
                status: 403,
                www_authenticate: Some(format!(
                    "{} realm=\"{}\", error=\"insufficient_scope\", error_description=\"{}\", scope=\"{}\"",
                    self.scheme(),
                    self.realm,
                    quotable(&v.reason),
                    quotable(&req.scopes.join(" "))
                )),
                reason: v.reason.clone(),
                outcome: Some(v.outcome),
                retry_after: None,
            }),
            o => Decision::Deny(Denial {
                status: 401,
                www_authenticate: Some(format!(
                    "{} realm=\"{}\", error=\"invalid_token\", error_description=\"{}: {}\"",
                    self.scheme(),
                    self.realm,
                    o.label(),
                    quotable(&v.reason)
                )),
                reason: format!("{}: {}", o.label(), v.reason),
                outcome: Some(o),
                retry_after: None,
            }),
        }
    }

    fn allowed(&self, v: &Verdict, revision: u64) -> Allowed {
        let h = &self.identity_headers;
        let mut headers = Vec::with_capacity(6);
        let mut put = |name: &str, value: String| {
            if !name.is_empty() {
                headers.push((name.to_owned(), value));
            }
        };
        if let Some(c) = &v.claims {
            put(&h.subject, c.sub.clone());
            put(&h.scopes, c.scope.clone());
            put(&h.jti, c.jti.to_string());
        }
        if let Some(k) = v.kid {
            put(&h.kid, k.to_string());
        }
        put(&h.revision, revision.to_string());
        // Always sent, `false` when fresh: a gateway that copies an absent
        // header as something else (Caddy before 2.10 copies its
        // placeholder text) still passes a definite answer.
        put(&h.stale, v.stale.to_string());
        // A client may send identity headers itself: whatever this answer
        // does not set is removed, so only the edge's word reaches upstream.
        let mut remove_headers: Vec<String> =
            [&h.subject, &h.scopes, &h.jti, &h.kid, &h.revision, &h.stale]
                .into_iter()
                .filter(|n| !n.is_empty() && !headers.iter().any(|(k, _)| k == *n))
                .map(|n| n.to_ascii_lowercase())
                .collect();
        if self.strip_token_header {
            remove_headers.push(self.token_header.to_ascii_lowercase());
        }
        Allowed {
            headers,
            remove_headers,
        }
    }
}

/// Whether a rule's `rule` method covers a request's `method`.
fn method_covers(rule: &str, method: &str) -> bool {
    rule.eq_ignore_ascii_case(method)
        || (rule.eq_ignore_ascii_case("GET") && method.eq_ignore_ascii_case("HEAD"))
}

/// The canonical form of a request target's path, as an upstream that
/// decodes and resolves it would see it: the query and fragment dropped,
/// percent-encoded octets decoded, `//` merged, `.` and `..` resolved (RFC
/// 3986 §5.2.4). `None` for what could be read two ways: an encoded `/` or
/// `\`, a raw `\`, a `;` (path parameters some servers strip), a `..`
/// above the root, bad percent-encoding or a decoded control character,
/// and any path not starting with `/`.
pub fn canonical_path(raw_uri: &str) -> Option<String> {
    let raw = raw_uri.split(['?', '#']).next().unwrap_or("");
    if !raw.starts_with('/') || raw.contains(['\\', ';']) {
        return None;
    }
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            let b = u8::from_str_radix(hex, 16).ok()?;
            if matches!(b, b'/' | b'\\' | b';' | b'%') || b.is_ascii_control() {
                return None;
            }
            decoded.push(b);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    let path = String::from_utf8(decoded).ok()?;
    let mut out: Vec<&str> = Vec::new();
    for seg in path.split('/').skip(1) {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            s => out.push(s),
        }
    }
    let trailing = path.ends_with('/') && !out.is_empty();
    let mut c = format!("/{}", out.join("/"));
    if trailing {
        c.push('/');
    }
    Some(c)
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    let p = prefix.trim_end_matches('/');
    path == p
        || path
            .strip_prefix(p)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// `s` made safe inside an RFC 6750 quoted string (printable ASCII, no
/// `"` or `\`).
fn quotable(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            ' ' | '!' | '#'..='[' | ']'..='~' => c,
            _ => '?',
        })
        .collect()
}

/// The answer to one gateway check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Let the request through with these headers.
    Allow(Allowed),
    /// Refuse it.
    Deny(Denial),
}

/// An accepted request's identity headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    /// `(name, value)` to add to the upstream request.
    pub headers: Vec<(String, String)>,
    /// Headers to remove from the upstream request (lower case): the
    /// identity headers this answer does not set, and the token header
    /// when `strip_token_header`.
    pub remove_headers: Vec<String>,
}

/// A refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// 401 (no or invalid token), 403 (insufficient scope), 503 (stale).
    pub status: u16,
    /// The RFC 6750 challenge, for 401 and 403.
    pub www_authenticate: Option<String>,
    /// Why, for the body; never contains the token.
    pub reason: String,
    /// The verify outcome behind it (none when there was no token).
    pub outcome: Option<Outcome>,
    /// Seconds, for 503.
    pub retry_after: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use veto_core::{Claims, Jti, Kid};

    fn verdict(outcome: Outcome, reason: &str) -> Verdict {
        let jti = Jti::random();
        Verdict {
            outcome,
            reason: reason.into(),
            claims: Some(Claims {
                jti,
                sub: "svc-a".into(),
                scope: "read write".into(),
                iat: 1,
                nbf: 1,
                exp: 2,
                fam: jti,
                aud: None,
                rev: 0,
            }),
            stale: false,
            kid: Some(Kid::random()),
        }
    }

    #[test]
    fn token_is_read_by_scheme_case_insensitively() {
        let g = Gateway::default();
        assert_eq!(g.token("Bearer abc.def.ghi"), Some("abc.def.ghi"));
        assert_eq!(g.token("bearer   abc"), Some("abc"));
        assert_eq!(g.token("Basic abc"), None);
        assert_eq!(g.token("Bearer"), None);
        assert_eq!(g.token("Bearer a b"), None);
        let raw = Gateway {
            token_scheme: String::new(),
            ..Gateway::default()
        };
        assert_eq!(raw.token(" abc "), Some("abc"));
    }

    #[test]
    fn longest_prefix_on_segment_boundaries_wins_per_method() {
        let rule = |p: &str, m: &[&str], s: &str| RouteRule {
            path_prefix: p.into(),
            methods: m.iter().map(|x| x.to_string()).collect(),
            scopes: vec![s.into()],
            audience: None,
        };
        let g = Gateway {
            routes: vec![
                rule("/", &[], "any"),
                rule("/admin", &[], "admin"),
                rule("/admin/keys", &["DELETE"], "keys"),
            ],
            ..Gateway::default()
        };
        let scope = |m, p| g.route(m, p).map(|r| r.scopes[0].as_str());
        assert_eq!(scope("GET", "/admin/keys"), Some("admin"));
        assert_eq!(
            scope("head", "/admin/keys"),
            Some("admin"),
            "GET covers HEAD"
        );
        assert_eq!(
            scope("delete", "/admin/keys"),
            Some("keys"),
            "methods ignore case"
        );
        assert_eq!(scope("DELETE", "/admin/keys/k1"), Some("keys"));
        assert_eq!(scope("GET", "/administrator"), Some("any"));
        assert_eq!(scope("GET", "/admin"), Some("admin"));
        assert_eq!(Gateway::default().route("GET", "/"), None);
        assert!(g.validate().is_ok());
    }

    #[test]
    fn paths_are_matched_in_canonical_form_or_refused() {
        let c = |p: &str| canonical_path(p);
        assert_eq!(c("/admin/keys?x=/y#z").as_deref(), Some("/admin/keys"));
        assert_eq!(c("//admin").as_deref(), Some("/admin"));
        assert_eq!(c("/x/../admin").as_deref(), Some("/admin"));
        assert_eq!(c("/./admin/./x/").as_deref(), Some("/admin/x/"));
        assert_eq!(c("/%61dmin").as_deref(), Some("/admin"));
        assert_eq!(c("/").as_deref(), Some("/"));
        for bad in [
            "/admin%2Fkeys",
            "/admin%2fkeys",
            "/admin%5C",
            "/admin\\x",
            "/admin;x",
            "/admin%3Bx",
            "/../admin",
            "/%zz",
            "/%2",
            "/%00",
            "/%25",
            "admin",
            "",
            "/%C3",
        ] {
            assert_eq!(c(bad), None, "{bad}");
        }
        let g = Gateway {
            routes: vec![RouteRule {
                path_prefix: "/admin".into(),
                scopes: vec!["admin".into()],
                ..RouteRule::default()
            }],
            ..Gateway::default()
        };
        for p in ["//admin", "/x/../admin", "/%61dmin/users", "/admin/"] {
            let r = g.requirements("GET", p, None);
            assert_eq!(r.map(|r| r.scopes), Ok(vec!["admin".to_owned()]), "{p}");
        }
        let r = g.requirements("GET", "/admin%2Fkeys", None);
        assert_eq!(r.map_err(|d| d.status), Err(403));
        let many = Required::parse(Some(&vec!["s"; 65].join(" ")), None);
        assert_eq!(
            g.requirements("GET", "/", Some(many)).map_err(|d| d.status),
            Err(403)
        );
    }

    #[test]
    fn refusals_follow_rfc6750() {
        let g = Gateway::default();
        let n = g.no_token();
        assert_eq!(n.status, 401);
        assert_eq!(n.www_authenticate.as_deref(), Some("Bearer realm=\"veto\""));

        let req = Required::parse(Some("admin,write"), None);
        let Decision::Deny(d) = g.decide(
            &verdict(Outcome::InsufficientScope, "missing \"admin\""),
            &req,
            7,
        ) else {
            panic!("insufficient scope allowed")
        };
        assert_eq!(d.status, 403);
        let w = d.www_authenticate.unwrap_or_default();
        assert!(w.contains("error=\"insufficient_scope\""), "{w}");
        assert!(w.contains("scope=\"admin write\""), "{w}");
        assert!(w.contains("missing ?admin?"), "quotes escaped: {w}");

        let Decision::Deny(d) = g.decide(&verdict(Outcome::Revoked, "token revoked"), &req, 7)
        else {
            panic!("revoked allowed")
        };
        assert_eq!(d.status, 401);
        assert!(d
            .www_authenticate
            .unwrap_or_default()
            .contains("error=\"invalid_token\""));
        assert_eq!(d.outcome, Some(Outcome::Revoked));

        let Decision::Deny(d) = g.decide(&verdict(Outcome::Stale, "stale"), &req, 7) else {
            panic!("stale allowed")
        };
        assert_eq!((d.status, d.retry_after), (503, Some(1)));
        assert_eq!(d.www_authenticate, None);
    }

    #[test]
    fn accepted_requests_carry_identity_and_stale_marks() {
        let g = Gateway {
            strip_token_header: true,
            identity_headers: IdentityHeaders {
                kid: String::new(),
                ..IdentityHeaders::default()
            },
            ..Gateway::default()
        };
        let mut v = verdict(Outcome::Valid, "");
        let Decision::Allow(a) = g.decide(&v, &Required::default(), 9) else {
            panic!("valid refused")
        };
        let get = |a: &Allowed, n: &str| {
            a.headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get(&a, "x-veto-subject").as_deref(), Some("svc-a"));
        assert_eq!(get(&a, "x-veto-scopes").as_deref(), Some("read write"));
        assert_eq!(get(&a, "x-veto-revision").as_deref(), Some("9"));
        assert_eq!(get(&a, "x-veto-kid"), None, "an empty name leaves it out");
        assert_eq!(get(&a, "x-veto-stale").as_deref(), Some("false"));
        assert_eq!(
            a.remove_headers,
            vec!["authorization".to_owned()],
            "the token header is removed"
        );
        let no_kid = Verdict {
            kid: None,
            ..verdict(Outcome::Valid, "")
        };
        let Decision::Allow(a) = Gateway::default().decide(&no_kid, &Required::default(), 9) else {
            panic!("valid refused")
        };
        assert_eq!(
            a.remove_headers,
            vec!["x-veto-kid".to_owned()],
            "an identity header the answer cannot set is removed, not left to the client"
        );
        v.stale = true;
        let Decision::Allow(a) = g.decide(&v, &Required::default(), 9) else {
            panic!("fail-open answer refused")
        };
        assert_eq!(get(&a, "x-veto-stale").as_deref(), Some("true"));
    }

    #[test]
    fn bad_configuration_names_the_field() {
        let g = Gateway {
            routes: vec![RouteRule {
                path_prefix: "admin".into(),
                ..RouteRule::default()
            }],
            ..Gateway::default()
        };
        assert_eq!(
            g.validate().map_err(|e| e.field),
            Err("routes[0].path_prefix".into())
        );
        let g = Gateway {
            token_header: "bad header".into(),
            ..Gateway::default()
        };
        assert_eq!(
            g.validate().map_err(|e| e.field),
            Err("token_header".into())
        );
        let g = Gateway {
            realm: "a\u{7}b".into(),
            ..Gateway::default()
        };
        assert_eq!(g.validate().map_err(|e| e.field), Err("realm".into()));
    }
}
