//! Both ends of one feed stream as plain state machines: input messages,
//! ticks and applied revisions; output messages to send, timers and
//! decisions. The servers' and edges' async code only moves bytes
//! (docs/design.md, "The feed").

pub mod edge;
pub mod writer;
