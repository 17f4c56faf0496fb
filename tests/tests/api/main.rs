//! The API's contract: every bad or hostile request gets a clear status and
//! changes nothing; key rotation stages; what each revoke kind promises.

mod bad_input;
mod hostile_input;
mod keys;
mod revoke_contract;
