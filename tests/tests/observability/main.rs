//! What operators and their tools see: Prometheus metrics and rules, one
//! trace per revoke, the dashboard in a real browser, and the standard gRPC
//! health and reflection services.

mod grpc_standard;
mod metrics;
mod traces;
mod ui;
