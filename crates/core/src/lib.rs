//! veto's pure core: identifiers, claims, the JWS token codec, the
//! key-encryption key, commands and the deterministic state machine.
//!
//! Nothing here does I/O, reads a clock or draws randomness inside the state
//! machine: callers stamp time and ids into a [`Command`] before it is
//! replicated, and [`State::apply`] is a pure function of the state and the
//! command, so every replica computes the same state from the same log.
//! Randomness is used only by helpers the leader calls *before* proposing
//! (fresh jti, key generation, KEK encryption).

pub mod audit;
pub mod change;
pub mod claims;
pub mod command;
pub mod ids;
pub mod kek;
pub mod labels;
pub mod limits;
pub mod policy;
pub mod scan;
pub mod state;
pub mod token;
pub mod usage;
pub mod validate;

pub use change::EdgeChange;
pub use claims::Claims;
pub use command::{Actor, Command, Response};
pub use ids::{Jti, Kid};
pub use kek::Kek;
pub use limits::Limits;
pub use state::State;
