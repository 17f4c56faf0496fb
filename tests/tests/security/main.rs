//! Security: TLS and roles on every port, KEK rotation, no token string in
//! any log, metric or trace, and secrets sealed at rest.

mod kek;
mod no_token_leaks;
mod secrets_at_rest;
mod tls_roles;
