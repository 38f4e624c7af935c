//! The operator's Prometheus metrics, rendered as text for `/metrics`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the reconcile-duration histogram.
const BUCKETS: [f64; 8] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0];

/// Counters and gauges of one operator process.
#[derive(Default)]
pub struct Metrics {
    reconciles: AtomicU64,
    errors: AtomicU64,
    leader: AtomicBool,
    /// Cumulative bucket counts, then the sum in microseconds.
    durations: Mutex<([u64; BUCKETS.len()], u64)>,
}

impl Metrics {
    /// Records one reconciliation.
    pub fn reconciled(&self, took: Duration, ok: bool) {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let mut d = self.durations.lock().unwrap_or_else(|e| e.into_inner());
        for (i, bound) in BUCKETS.iter().enumerate() {
            if took.as_secs_f64() <= *bound {
                d.0[i] += 1;
            }
        }
        d.1 += took.as_micros() as u64;
    }

    /// Whether this process leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.store(leading, Ordering::SeqCst);
    }

    /// Whether this process leads.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::SeqCst)
    }

    /// Prometheus text exposition; `clusters` are the states ("Ready",
    /// "Progressing", "Degraded") of the IMClusters the controller watches.
    pub fn render(&self, clusters: &[&str]) -> String {
        let reconciles = self.reconciles.load(Ordering::Relaxed);
        let mut out = String::new();
        out.push_str("# HELP fastim_operator_leader 1 while this operator process holds the leader Lease.\n");
        out.push_str("# TYPE fastim_operator_leader gauge\n");
        out.push_str(&format!("fastim_operator_leader {}\n", u8::from(self.is_leader())));
        out.push_str("# HELP fastim_operator_reconciles_total Reconciliations run.\n");
        out.push_str("# TYPE fastim_operator_reconciles_total counter\n");
        out.push_str(&format!("fastim_operator_reconciles_total {reconciles}\n"));
        out.push_str("# HELP fastim_operator_reconcile_errors_total Reconciliations that failed (retried).\n");
        out.push_str("# TYPE fastim_operator_reconcile_errors_total counter\n");
        out.push_str(&format!(
            "fastim_operator_reconcile_errors_total {}\n",
            self.errors.load(Ordering::Relaxed)
        ));
        out.push_str("# HELP fastim_operator_reconcile_duration_seconds Time one reconciliation took.\n");
        out.push_str("# TYPE fastim_operator_reconcile_duration_seconds histogram\n");
        {
            let d = self.durations.lock().unwrap_or_else(|e| e.into_inner());
            let count: u64 = reconciles;
            for (bound, n) in BUCKETS.iter().zip(d.0) {
                out.push_str(&format!(
                    "fastim_operator_reconcile_duration_seconds_bucket{{le=\"{bound}\"}} {n}\n"
                ));
            }
            out.push_str(&format!(
                "fastim_operator_reconcile_duration_seconds_bucket{{le=\"+Inf\"}} {count}\n"
            ));
            out.push_str(&format!(
                "fastim_operator_reconcile_duration_seconds_sum {}\n",
                d.1 as f64 / 1e6
            ));
            out.push_str(&format!("fastim_operator_reconcile_duration_seconds_count {count}\n"));
        }
        out.push_str("# HELP fastim_operator_clusters Watched IMClusters by the state their status reports.\n");
        out.push_str("# TYPE fastim_operator_clusters gauge\n");
        for state in ["Ready", "Progressing", "Degraded"] {
            let n = clusters.iter().filter(|s| **s == state).count();
            out.push_str(&format!("fastim_operator_clusters{{state=\"{state}\"}} {n}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_buckets_and_states() {
        let m = Metrics::default();
        m.reconciled(Duration::from_millis(30), true);
        m.reconciled(Duration::from_secs(2), false);
        m.set_leader(true);
        let text = m.render(&["Progressing", "Degraded"]);
        for line in [
            "fastim_operator_leader 1",
            "fastim_operator_reconciles_total 2",
            "fastim_operator_reconcile_errors_total 1",
            "fastim_operator_reconcile_duration_seconds_bucket{le=\"0.01\"} 0",
            "fastim_operator_reconcile_duration_seconds_bucket{le=\"0.05\"} 1",
            "fastim_operator_reconcile_duration_seconds_bucket{le=\"5\"} 2",
            "fastim_operator_reconcile_duration_seconds_bucket{le=\"+Inf\"} 2",
            "fastim_operator_reconcile_duration_seconds_sum 2.03",
            "fastim_operator_reconcile_duration_seconds_count 2",
            "fastim_operator_clusters{state=\"Ready\"} 0",
            "fastim_operator_clusters{state=\"Progressing\"} 1",
            "fastim_operator_clusters{state=\"Degraded\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(m.render(&[]).contains("fastim_operator_clusters{state=\"Degraded\"} 0"));
    }
}
