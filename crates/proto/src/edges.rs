//! Folding the edge lists that members report into one view of the edges.

use std::collections::{BTreeMap, HashMap};

use crate::EdgeInfo;

/// Each edge once, as the members report it. An edge that moved is listed
/// by its old node too (disconnected, with older counts): the connected
/// entry wins, then the most recently acked.
pub fn each_once<'a>(edges: impl IntoIterator<Item = &'a EdgeInfo>) -> Vec<&'a EdgeInfo> {
    let mut m: HashMap<&str, &EdgeInfo> = HashMap::new();
    for e in edges {
        let better = m.get(e.edge_id.as_str()).is_none_or(|prev| {
            (e.connected && !prev.connected)
                || (e.connected == prev.connected && e.ack_age_ms < prev.ack_age_ms)
        });
        if better {
            m.insert(e.edge_id.as_str(), e);
        }
    }
    let mut v: Vec<_> = m.into_values().collect();
    v.sort_by(|a, b| a.edge_id.cmp(&b.edge_id));
    v
}

/// Verify answers by outcome over all edges, each edge counted once.
pub fn verify_totals<'a>(edges: impl IntoIterator<Item = &'a EdgeInfo>) -> BTreeMap<String, u64> {
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    for e in each_once(edges) {
        for (k, n) in &e.verify_counts {
            let t = totals.entry(k.clone()).or_default();
            *t = t.saturating_add(*n);
        }
    }
    totals
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(id: &str, connected: bool, ack_age_ms: f64, valid: u64) -> EdgeInfo {
        EdgeInfo {
            edge_id: id.into(),
            connected,
            ack_age_ms,
            verify_counts: [("valid".to_string(), valid)].into_iter().collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_moved_edge_counts_once_from_its_connected_entry() {
        let edges = [
            edge("e1", false, 5.0, 10),
            edge("e1", true, 900.0, 25),
            edge("e2", true, 1.0, 7),
        ];
        assert_eq!(verify_totals(&edges)["valid"], 32);
        let once = each_once(&edges);
        assert_eq!(once.len(), 2);
        assert!(once[0].connected);
    }

    #[test]
    fn between_equals_the_latest_ack_wins() {
        let edges = [edge("e1", false, 50.0, 3), edge("e1", false, 5.0, 9)];
        assert_eq!(verify_totals(&edges)["valid"], 9);
    }
}
