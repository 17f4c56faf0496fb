//! This process's wall clock. Only a leader's reading is ever replicated
//! (stamped into commands); an edge compares it only where the design's
//! clock rules allow (`exp`, `nbf`, with leeway).

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix seconds on this host's clock (0 if it reads before 1970).
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Unix milliseconds on this host's clock (0 if it reads before 1970).
pub fn unix_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
