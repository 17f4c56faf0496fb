//! Security: TLS and roles on every port, KEK rotation, no token string in
//! any log, metric or trace, secrets sealed at rest, and a holder refreshing
//! its own token with refresh-reuse detection.

mod holder_refresh;
mod kek;
mod no_token_leaks;
mod secrets_at_rest;
mod tls_roles;
