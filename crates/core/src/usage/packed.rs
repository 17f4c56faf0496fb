//! The wire form of a [`crate::Command::RecordUsage`]'s deltas in the Raft
//! log: names listed once, each delta a packed binary row (LEB128 varints,
//! times relative to the batch's earliest), the rows in one base64 string.
//! About 30 bytes a delta where the JSON list took about 150, so a flush of
//! many distinct tokens costs the log a fifth of the bytes.
//!
//! Reading accepts the packed form and the plain JSON list written before
//! it, so logs and snapshots from either apply alike. Decoding checks every
//! length and index: a corrupt row is an error, never a panic.

use std::collections::{BTreeSet, HashMap};

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Outcomes, UsageDelta};
use crate::Jti;

/// Format version of [`Packed`].
const VERSION: u8 = 1;

#[derive(Serialize, Deserialize)]
struct Packed {
    /// Format version.
    v: u8,
    /// Edge names; rows refer to them by index.
    edges: Vec<String>,
    /// Scope names; rows refer to them by index.
    scopes: Vec<String>,
    /// The earliest `first` of the rows (unix seconds).
    base: i64,
    /// Rows.
    n: usize,
    /// The rows, base64 (standard alphabet, no padding).
    rows: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Wire {
    Packed(Packed),
    List(Vec<UsageDelta>),
}

fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Names in order of first use, each with its index.
#[derive(Default)]
struct Names<'a> {
    list: Vec<String>,
    index: HashMap<&'a str, u64>,
}

impl<'a> Names<'a> {
    /// The index of `name`, listing it on first use.
    fn intern(&mut self, name: &'a str) -> u64 {
        let next = self.list.len() as u64;
        let i = *self.index.entry(name).or_insert(next);
        if i == next {
            self.list.push(name.to_owned());
        }
        i
    }
}

/// Packs `deltas` (order kept).
fn pack(deltas: &[UsageDelta]) -> Packed {
    let base = deltas.iter().map(|d| d.first).min().unwrap_or(0);
    let (mut edges, mut scopes) = (Names::default(), Names::default());
    let mut rows = Vec::with_capacity(deltas.len() * 32);
    for d in deltas {
        rows.extend_from_slice(&d.jti.0);
        put(&mut rows, edges.intern(&d.edge));
        put(&mut rows, d.outcomes.valid);
        put(&mut rows, d.outcomes.revoked);
        put(&mut rows, d.outcomes.refused);
        put(&mut rows, zigzag(d.first.wrapping_sub(base)));
        put(&mut rows, zigzag(d.last.wrapping_sub(d.first)));
        put(&mut rows, d.scopes.len() as u64);
        for s in &d.scopes {
            put(&mut rows, scopes.intern(s));
        }
    }
    Packed {
        v: VERSION,
        edges: edges.list,
        scopes: scopes.list,
        base,
        n: deltas.len(),
        rows: STANDARD_NO_PAD.encode(rows),
    }
}

/// Why packed rows did not decode.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not the version this build writes.
    #[error("packed usage version {0} is not supported")]
    Version(u8),
    /// The rows are not base64.
    #[error("packed usage rows are not base64")]
    Base64,
    /// A row ends early or a varint runs past 64 bits.
    #[error("packed usage row {0} is truncated or malformed")]
    Row(usize),
    /// A row names an edge or scope beyond the lists.
    #[error("packed usage row {0} refers to a name that is not listed")]
    Index(usize),
    /// Bytes left after the announced rows.
    #[error("packed usage has bytes after its {0} rows")]
    Trailing(usize),
}

struct Reader<'a> {
    b: &'a [u8],
    row: usize,
}

impl Reader<'_> {
    fn varint(&mut self) -> Result<u64, Error> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.b.split_first().ok_or(Error::Row(self.row))?;
            self.b = rest;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(Error::Row(self.row));
            }
            v |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Error::Row(self.row))
    }

    fn name<'n>(&mut self, names: &'n [String]) -> Result<&'n String, Error> {
        let i = self.varint()?;
        usize::try_from(i)
            .ok()
            .and_then(|i| names.get(i))
            .ok_or(Error::Index(self.row))
    }
}

/// Unpacks rows written by [`pack`].
fn unpack(p: &Packed) -> Result<Vec<UsageDelta>, Error> {
    if p.v != VERSION {
        return Err(Error::Version(p.v));
    }
    let bytes = STANDARD_NO_PAD.decode(&p.rows).map_err(|_| Error::Base64)?;
    // Each row takes at least 23 bytes: a count beyond that is corrupt,
    // and must not size an allocation.
    if p.n > bytes.len() / 23 {
        return Err(Error::Row(0));
    }
    let mut r = Reader { b: &bytes, row: 0 };
    let mut out = Vec::with_capacity(p.n);
    for row in 0..p.n {
        r.row = row;
        let (jti, rest) = r.b.split_at_checked(16).ok_or(Error::Row(row))?;
        let mut j = [0u8; 16];
        j.copy_from_slice(jti);
        r.b = rest;
        let edge = r.name(&p.edges)?.clone();
        let outcomes = Outcomes {
            valid: r.varint()?,
            revoked: r.varint()?,
            refused: r.varint()?,
        };
        let first = p.base.wrapping_add(unzigzag(r.varint()?));
        let last = first.wrapping_add(unzigzag(r.varint()?));
        let k = r.varint()?;
        let mut scopes = BTreeSet::new();
        for _ in 0..k {
            scopes.insert(r.name(&p.scopes)?.clone());
        }
        out.push(UsageDelta {
            jti: Jti(j),
            edge,
            outcomes,
            first,
            last,
            scopes,
        });
    }
    if !r.b.is_empty() {
        return Err(Error::Trailing(p.n));
    }
    Ok(out)
}

/// `#[serde(serialize_with)]`: the packed form.
pub fn serialize<S: Serializer>(deltas: &[UsageDelta], s: S) -> Result<S::Ok, S::Error> {
    pack(deltas).serialize(s)
}

/// `#[serde(deserialize_with)]`: the packed form or the plain list.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<UsageDelta>, D::Error> {
    match Wire::deserialize(d)? {
        Wire::List(l) => Ok(l),
        Wire::Packed(p) => unpack(&p).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(j: u8, edge: &str, first: i64, scopes: &[&str]) -> UsageDelta {
        UsageDelta {
            jti: Jti([j; 16]),
            edge: edge.into(),
            outcomes: Outcomes {
                valid: 300 * j as u64,
                revoked: j as u64 % 2,
                refused: u64::MAX,
            },
            first,
            last: first + 9,
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Cmd {
        #[serde(with = "super")]
        deltas: Vec<UsageDelta>,
    }

    #[test]
    fn round_trips_and_reads_the_plain_list() {
        let deltas = vec![
            delta(1, "edge-a", 1_800_000_000, &["read", "write"]),
            delta(2, "edge-b", 1_799_999_990, &[]),
            delta(3, "edge-a", i64::MIN, &["write"]),
            delta(4, "edge-c", i64::MAX - 9, &["admin"]),
        ];
        let cmd = Cmd { deltas };
        let packed = serde_json::to_string(&cmd).unwrap();
        assert_eq!(serde_json::from_str::<Cmd>(&packed).unwrap(), cmd);
        // What the log held before the packed form.
        let plain = serde_json::json!({ "deltas": cmd.deltas }).to_string();
        assert_eq!(serde_json::from_str::<Cmd>(&plain).unwrap(), cmd);
        assert!(packed.len() < plain.len());
        let empty = Cmd { deltas: vec![] };
        let s = serde_json::to_string(&empty).unwrap();
        assert_eq!(serde_json::from_str::<Cmd>(&s).unwrap(), empty);
    }

    #[test]
    fn a_typical_flush_takes_a_fifth_of_the_json() {
        let deltas: Vec<UsageDelta> = (0..5000u32)
            .map(|i| {
                let mut d = delta(0, "usage-edge-1", 1_800_000_000 + (i % 10) as i64, &[]);
                d.jti = Jti([
                    (i % 251) as u8,
                    (i / 251) as u8,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                ]);
                d.outcomes = Outcomes {
                    valid: 33,
                    revoked: 0,
                    refused: 0,
                };
                d
            })
            .collect();
        let packed = serde_json::to_vec(&Cmd {
            deltas: deltas.clone(),
        })
        .unwrap();
        let plain = serde_json::to_vec(&serde_json::json!({ "deltas": deltas })).unwrap();
        assert!(
            packed.len() * 4 < plain.len(),
            "{} vs {}",
            packed.len(),
            plain.len()
        );
    }

    #[test]
    fn corrupt_rows_are_errors() {
        let cmd = Cmd {
            deltas: vec![delta(1, "e", 5, &["read"]), delta(2, "e", 6, &[])],
        };
        let good: serde_json::Value = serde_json::to_value(&cmd).unwrap();
        let with = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v = good.clone();
            f(&mut v["deltas"]);
            serde_json::from_value::<Cmd>(v)
        };
        let rows = good["deltas"]["rows"].as_str().unwrap().to_owned();
        let bytes = STANDARD_NO_PAD.decode(&rows).unwrap();
        let enc = |b: &[u8]| serde_json::Value::from(STANDARD_NO_PAD.encode(b));
        // truncated, trailing bytes, a row count too high or too low
        assert!(with(&|v| v["rows"] = enc(&bytes[..bytes.len() - 1])).is_err());
        assert!(with(&|v| v["rows"] = enc(&[&bytes[..], &[0]].concat())).is_err());
        assert!(with(&|v| v["n"] = 3.into()).is_err());
        assert!(with(&|v| v["n"] = 1.into()).is_err());
        assert!(with(&|v| v["n"] = u64::MAX.into()).is_err());
        // names missing, not base64, unknown version
        assert!(with(&|v| v["scopes"] = serde_json::json!([])).is_err());
        assert!(with(&|v| v["edges"] = serde_json::json!([])).is_err());
        assert!(with(&|v| v["rows"] = "!!".into()).is_err());
        assert!(with(&|v| v["v"] = 2.into()).is_err());
        // a varint that never ends
        let mut long = bytes[..16].to_vec();
        long.extend([0xff; 11]);
        assert!(with(&|v| {
            v["rows"] = enc(&long);
            v["n"] = 1.into();
        })
        .is_err());
        assert!(with(&|_| {}).is_ok());
    }
}
