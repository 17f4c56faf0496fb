//! The standard gRPC services every veto port serves beside its own:
//! `grpc.health.v1.Health` (Kubernetes gRPC probes, grpc_health_probe) and
//! server reflection, v1 and v1alpha (grpcurl, grpcui, the Python
//! reflection client), listing only the services that port serves.
//!
//! Health follows the process's own readiness, polled: the overall status
//! (service `""`) and each named service are SERVING exactly while `ready`
//! says so, and NOT_SERVING from the moment the process starts stopping.

use std::time::Duration;

use tokio::sync::watch;
use tonic_health::server::HealthReporter;
pub use tonic_health::ServingStatus;

/// The descriptor of `grpc.health.v1`, so reflection can describe it too.
const HEALTH_DESCRIPTOR_SET: &[u8] = tonic_health::pb::FILE_DESCRIPTOR_SET;

/// Reflection could not be built from the compiled descriptors.
#[derive(Debug, thiserror::Error)]
#[error("gRPC reflection: {0}")]
pub struct ReflectionError(#[from] tonic_reflection::server::Error);

fn reflection_builder(services: &[&str]) -> tonic_reflection::server::Builder<'static> {
    let mut b = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(HEALTH_DESCRIPTOR_SET)
        .with_service_name("grpc.health.v1.Health");
    for s in services {
        b = b.with_service_name(s.to_string());
    }
    b
}

/// Server reflection (`grpc.reflection.v1`) listing `services` and the
/// health service.
pub fn reflection_v1(
    services: &[&str],
) -> Result<
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    ReflectionError,
> {
    Ok(reflection_builder(services).build_v1()?)
}

/// The same for `grpc.reflection.v1alpha`, which older clients (grpcio's
/// reflection client among them) speak.
pub fn reflection_v1alpha(
    services: &[&str],
) -> Result<
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
    ReflectionError,
> {
    Ok(reflection_builder(services).build_v1alpha()?)
}

/// How often [`report_health`] re-reads readiness.
pub const HEALTH_POLL: Duration = Duration::from_millis(100);

/// The health service and the reporter that [`report_health`] drives.
pub fn health() -> (
    HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    tonic_health::server::health_reporter()
}

fn status(ready: bool) -> ServingStatus {
    if ready {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

async fn set_all(reporter: &HealthReporter, services: &[&str], s: ServingStatus) {
    reporter.set_service_status("", s).await;
    for name in services {
        reporter.set_service_status(name, s).await;
    }
}

/// Keeps the health of `""` and every one of `services` equal to `ready()`
/// (re-read every [`HEALTH_POLL`] and published on change) until
/// `shutdown`, then NOT_SERVING.
pub async fn report_health(
    reporter: HealthReporter,
    services: Vec<&'static str>,
    ready: impl Fn() -> bool + Send + 'static,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last = None;
    loop {
        let now = ready();
        if last != Some(now) {
            set_all(&reporter, &services, status(now)).await;
            last = Some(now);
        }
        tokio::select! {
            _ = tokio::time::sleep(HEALTH_POLL) => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
    }
    set_all(&reporter, &services, ServingStatus::NotServing).await;
}
