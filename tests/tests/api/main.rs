//! The API's contract: every bad or hostile request gets a clear status and
//! changes nothing; key rotation stages; what each revoke kind promises;
//! owners, labels and selector revokes.

mod bad_input;
mod hostile_input;
mod keys;
mod labels;
mod revoke_contract;
