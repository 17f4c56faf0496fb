//! Clock faults: processes whose wall clock (`CLOCK_REALTIME`) is offset
//! from the machine's, or jumps while they run, with libfaketime
//! (Debian's `faketime` package) preloaded. Their monotonic clock is left
//! alone (`FAKETIME_DONT_FAKE_MONOTONIC=1`): the bound is measured on it,
//! and a jump must not move it (without that setting a backward jump sends
//! a Rust `Instant` backwards, which the harness has seen libfaketime do).
//!
//! Each such process reads its offset from a file of its own
//! (`FAKETIME_TIMESTAMP_FILE`, e.g. `-90`) on every clock call
//! (`FAKETIME_NO_CACHE=1`), so the harness makes its clock jump by
//! replacing that file, and a restarted process starts on the same clock.
//! After every (re)start the harness reads the process's clock back from
//! the `Date` header of its HTTP server and refuses to go on if the offset
//! did not take.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::world::Kind;

/// A process's wall clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Clock {
    /// Seconds its wall clock is ahead of the machine's (negative: behind),
    /// from its first start.
    pub offset_secs: i64,
    /// Added to the offset while a [`crate::Fault::ClockJump`] is on (the
    /// clock steps by this much at the fault, and back at its heal); 0 for
    /// a clock that never jumps.
    pub jump_secs: i64,
}

impl Clock {
    /// A clock `secs` ahead (negative: behind) that never jumps.
    pub fn offset(secs: i64) -> Self {
        Clock {
            offset_secs: secs,
            jump_secs: 0,
        }
    }

    /// A clock starting at `offset_secs` that steps by `jump_secs` at each
    /// clock-jump fault and back at its heal.
    pub fn jumping(offset_secs: i64, jump_secs: i64) -> Self {
        Clock {
            offset_secs,
            jump_secs,
        }
    }
}

/// The edges' wall-clock tolerances, passed as `VETO_CLOCK_LEEWAY_SECS` and
/// `VETO_EXP_LEEWAY_SECS` (a `veto-edge` that predates them ignores them).
/// The checker holds the edges to what these promise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leeway {
    /// Seconds a token's `nbf`/`iat` may lie in the edge's future.
    pub nbf_secs: u64,
    /// Seconds past `exp` a token is still accepted.
    pub exp_secs: u64,
}

impl Default for Leeway {
    /// `veto-edge`'s documented defaults: 60 s for `nbf`/`iat`, none past `exp`.
    fn default() -> Self {
        Leeway {
            nbf_secs: 60,
            exp_secs: 0,
        }
    }
}

/// A change of one process's wall-clock offset, as the harness made it.
/// The new offset takes effect at some instant in `[from, to]`.
#[derive(Debug, Clone)]
pub struct ClockChange {
    /// Server or edge.
    pub kind: Kind,
    /// Its index among its kind.
    pub index: usize,
    /// The offset from then on, seconds (wall clock minus the machine's).
    pub offset_secs: i64,
    /// Just before the timestamp file was replaced.
    pub from: Instant,
    /// Just after.
    pub to: Instant,
}

/// The preload library, found once: `VETO_CHAOS_LIBFAKETIME` if set, else
/// the multithreaded `libfaketimeMT.so.1` that `dpkg -L libfaketime` lists
/// (veto's processes are multithreaded), else the usual Debian paths. Fails
/// loudly when it is missing.
pub fn libfaketime() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("VETO_CHAOS_LIBFAKETIME") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("VETO_CHAOS_LIBFAKETIME={} is not a file", p.display());
        }
        return Ok(p);
    }
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(out) = std::process::Command::new("dpkg")
        .args(["-L", "libfaketime"])
        .stderr(std::process::Stdio::null())
        .output()
    {
        if out.status.success() {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if line.ends_with("/libfaketimeMT.so.1") {
                    candidates.push(line.into());
                }
            }
        }
    }
    for dir in [
        "/usr/lib/x86_64-linux-gnu/faketime",
        "/usr/lib/aarch64-linux-gnu/faketime",
        "/usr/lib/faketime",
        "/usr/local/lib/faketime",
    ] {
        candidates.push(Path::new(dir).join("libfaketimeMT.so.1"));
    }
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        anyhow::anyhow!(
            "libfaketime is not installed (no libfaketimeMT.so.1 from `dpkg -L libfaketime` \
             or in /usr/lib/*/faketime): the clock faults need Debian's `faketime` package \
             (scripts/deps.sh installs it; or set VETO_CHAOS_LIBFAKETIME)"
        )
    })
}

/// libfaketime's spelling of an offset: `+90`, `-90`, `+0`.
fn spelling(offset_secs: i64) -> String {
    format!("{offset_secs:+}")
}

/// Writes `offset_secs` to `file` atomically (a process re-reads it on
/// every clock call and must never see half a file).
pub fn write_offset(file: &Path, offset_secs: i64) -> Result<()> {
    let tmp = file.with_extension("faketime.tmp");
    std::fs::write(&tmp, format!("{}\n", spelling(offset_secs)))?;
    std::fs::rename(&tmp, file).with_context(|| format!("replacing {}", file.display()))?;
    Ok(())
}

/// The environment that runs a program on the clock in `file`, as
/// arguments to `env` (so only the program itself is preloaded, not
/// `ip netns exec` or `setpriv` before it).
pub fn env_args(lib: &Path, file: &Path) -> Vec<String> {
    vec![
        "env".into(),
        format!("LD_PRELOAD={}", lib.display()),
        format!("FAKETIME_TIMESTAMP_FILE={}", file.display()),
        "FAKETIME_NO_CACHE=1".into(),
        "FAKETIME_DONT_FAKE_MONOTONIC=1".into(),
    ]
}

/// The machine's unix time, seconds.
pub fn unix_now_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses an HTTP `Date` (IMF-fixdate, `Sun, 06 Nov 1994 08:49:37 GMT`)
/// into unix seconds.
pub fn parse_http_date(s: &str) -> Option<i64> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = MONTHS.iter().position(|x| x == month)? as i64 + 1;
    let (d, y): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let hms: Vec<i64> = time
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let [h, mi, sec] = hms.as_slice() else {
        return None;
    };
    Some(days_from_civil(y, m, d) * 86_400 + h * 3600 + mi * 60 + sec)
}

/// The wall clock of the process serving HTTP at `addr`, from the `Date`
/// header of its answer to `GET /healthz` (any status), as
/// (its unix second, the machine's unix time when the answer arrived).
pub async fn http_date(addr: &str) -> Result<(i64, f64)> {
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: veto\r\nConnection: close\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        // the head is enough; the body is short anyway
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.len() > 64 * 1024 {
                break;
            }
        }
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(2), io)
        .await
        .context("no HTTP answer within 2 s")??;
    let at = unix_now_f64();
    let text = String::from_utf8_lossy(&buf);
    let date = text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("date")
                .then(|| v.trim().to_string())
        })
        .with_context(|| format!("no Date header from {addr}"))?;
    let secs = parse_http_date(&date).with_context(|| format!("unparsable Date {date:?}"))?;
    Ok((secs, at))
}

/// Checks that the process serving HTTP at `addr` runs `offset_secs` off
/// the machine's clock (to within the Date header's second, and a second
/// for the round trip). A few tries: the server may still be binding.
pub async fn check_offset(name: &str, addr: &str, offset_secs: i64) -> Result<()> {
    let mut last = None;
    for _ in 0..20 {
        match http_date(addr).await {
            Ok((theirs, at)) => {
                let seen = theirs as f64 - at;
                // theirs is truncated to the second: seen is in
                // (offset - 1, offset] plus the round trip
                if (seen - offset_secs as f64 + 0.5).abs() <= 1.6 {
                    return Ok(());
                }
                bail!(
                    "{name} runs under libfaketime with its wall clock {offset_secs:+} s off, \
                     but its HTTP Date says {seen:+.1} s: the clock fault did not take"
                );
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no answer")))
        .with_context(|| format!("reading {name}'s clock from its HTTP Date header"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_parse() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(
            parse_http_date("Sat, 05 Dec 2026 16:23:19 GMT"),
            Some(1_796_487_799)
        );
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(parse_http_date("yesterday"), None);
        assert_eq!(spelling(-90), "-90");
        assert_eq!(spelling(90), "+90");
        assert_eq!(spelling(0), "+0");
    }
}
