//! The last few minutes of propagation (commit here -> an edge's ack), one
//! histogram per second over fixed log-spaced buckets, so histograms from
//! every node merge exactly and percentiles over time can be drawn.

use std::collections::VecDeque;

use crate as pb;

/// Buckets per histogram.
pub const BUCKETS: usize = 64;
/// Upper bound of bucket 0, in ms.
const FIRST_MS: f64 = 0.05;
/// Growth factor between bucket bounds.
const GROWTH: f64 = 1.25;
/// Seconds kept.
pub const WINDOW_S: usize = 300;

/// Upper bound of bucket `i` in ms.
pub fn upper_ms(i: usize) -> f64 {
    FIRST_MS * GROWTH.powi(i as i32)
}

fn bucket_of(ms: f64) -> usize {
    if ms.is_nan() || ms <= FIRST_MS {
        return 0;
    }
    let i = ((ms / FIRST_MS).ln() / GROWTH.ln()).ceil() as usize;
    i.min(BUCKETS - 1)
}

/// One second's histogram.
#[derive(Debug, Clone, PartialEq)]
pub struct Second {
    /// Unix second.
    pub unix_s: i64,
    counts: [u32; BUCKETS],
    max_ms: f64,
}

impl Second {
    fn new(unix_s: i64) -> Self {
        Self {
            unix_s,
            counts: [0; BUCKETS],
            max_ms: 0.0,
        }
    }

    /// Samples in this second.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|&c| c as u64).sum()
    }

    /// Largest sample, ms.
    pub fn max_ms(&self) -> f64 {
        self.max_ms
    }

    /// The `q` quantile (0..=1), as the upper bound of its bucket capped
    /// at the largest sample; 0 when empty.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let n = self.count();
        if n == 0 {
            return 0.0;
        }
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c as u64;
            if seen >= rank {
                return upper_ms(i).min(self.max_ms);
            }
        }
        self.max_ms
    }

    /// Adds another node's histogram of the same second.
    pub fn merge(&mut self, o: &Second) {
        for (a, b) in self.counts.iter_mut().zip(o.counts.iter()) {
            *a = a.saturating_add(*b);
        }
        self.max_ms = self.max_ms.max(o.max_ms);
    }

    /// Wire form (sparse).
    pub fn to_pb(&self) -> pb::PropagationSecond {
        let (buckets, counts) = self
            .counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(i, &c)| (i as u32, c))
            .unzip();
        pb::PropagationSecond {
            unix_s: self.unix_s,
            buckets,
            counts,
            max_ms: self.max_ms,
        }
    }

    /// From the wire; out-of-range buckets and non-finite values are ignored.
    pub fn from_pb(p: &pb::PropagationSecond) -> Self {
        let mut s = Second::new(p.unix_s);
        for (&b, &c) in p.buckets.iter().zip(p.counts.iter()) {
            if let Some(slot) = s.counts.get_mut(b as usize) {
                *slot = slot.saturating_add(c);
            }
        }
        if p.max_ms.is_finite() && p.max_ms >= 0.0 {
            s.max_ms = p.max_ms;
        }
        s
    }
}

/// Per-second histograms of the last [`WINDOW_S`] seconds.
#[derive(Debug, Default)]
pub struct Window {
    secs: VecDeque<Second>,
}

impl Window {
    /// Records one sample at unix second `unix_s`.
    pub fn record(&mut self, unix_s: i64, ms: f64) {
        if !ms.is_finite() || ms < 0.0 {
            return;
        }
        match self.secs.back_mut() {
            Some(s) if s.unix_s == unix_s => {}
            Some(s) if s.unix_s > unix_s => return, // clock stepped back: drop
            _ => self.secs.push_back(Second::new(unix_s)),
        }
        while self
            .secs
            .front()
            .is_some_and(|s| s.unix_s <= unix_s - WINDOW_S as i64)
        {
            self.secs.pop_front();
        }
        if let Some(s) = self.secs.back_mut() {
            s.counts[bucket_of(ms)] += 1;
            s.max_ms = s.max_ms.max(ms);
        }
    }

    /// Seconds with samples after `since` (unix s), oldest first.
    pub fn seconds(&self, since: i64) -> Vec<Second> {
        self.secs
            .iter()
            .filter(|s| s.unix_s > since)
            .cloned()
            .collect()
    }
}

/// Merges per-node series into one, by second, oldest first.
pub fn merge(series: impl IntoIterator<Item = Second>) -> Vec<Second> {
    let mut by: std::collections::BTreeMap<i64, Second> = Default::default();
    for s in series {
        match by.get_mut(&s.unix_s) {
            Some(m) => m.merge(&s),
            None => {
                by.insert(s.unix_s, s);
            }
        }
    }
    by.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_bound_their_samples() {
        for ms in [0.0, 0.01, 0.05, 0.051, 1.0, 3.7, 250.0, 1e9] {
            let i = bucket_of(ms);
            assert!(i < BUCKETS);
            if i > 0 && i < BUCKETS - 1 {
                assert!(ms <= upper_ms(i) && ms > upper_ms(i - 1), "{ms} in {i}");
            }
        }
    }

    #[test]
    fn quantiles_merge_and_window() {
        let mut w = Window::default();
        for i in 0..100 {
            w.record(1000, 1.0 + i as f64 * 0.01); // 1.00 .. 1.99 ms
        }
        w.record(1000, 40.0);
        let s = &w.seconds(0)[0];
        assert_eq!(s.count(), 101);
        let p50 = s.quantile_ms(0.5);
        assert!((1.0..=1.25 * 1.5).contains(&p50), "p50 {p50}");
        assert_eq!(s.quantile_ms(1.0), 40.0);
        // another node's second merges exactly through the wire form
        let mut other = Window::default();
        other.record(1000, 100.0);
        other.record(1001, 2.0);
        let merged = merge(
            w.seconds(0)
                .into_iter()
                .chain(other.seconds(0).iter().map(|s| Second::from_pb(&s.to_pb()))),
        );
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].count(), 102);
        assert_eq!(merged[0].max_ms(), 100.0);
        // old seconds leave the window; a clock step back is ignored
        w.record(1000 + WINDOW_S as i64, 1.0);
        assert_eq!(w.seconds(0).len(), 1);
        w.record(10, 1.0);
        assert_eq!(w.seconds(0).len(), 1);
    }

    #[test]
    fn hostile_wire_values_are_ignored() {
        let s = Second::from_pb(&pb::PropagationSecond {
            unix_s: 5,
            buckets: vec![0, 9999],
            counts: vec![3, 7],
            max_ms: f64::NAN,
        });
        assert_eq!(s.count(), 3);
        assert_eq!(s.max_ms(), 0.0);
    }
}
