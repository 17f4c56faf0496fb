//! The token lifecycle users run: tokens delivered and renewed by
//! `veto agent`, leak reports in GitHub's secret-scanning format, signing
//! keys rotating themselves, issuer policies and the hash-chained audit trail.

mod agent;
mod audit;
mod issuer_policy;
mod leak;
mod rotation;
mod usage;
