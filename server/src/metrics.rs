//! Hub metrics in the Prometheus text format, kept in atomics so that the
//! hot path never takes a lock to count.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// A histogram with fixed upper bounds.
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    /// Sum in millionths of the observed unit, to stay in integers.
    sum_micro: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micro: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, value: f64) {
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            if value <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micro
            .fetch_add((value * 1e6) as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micro.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}

const LATENCY_BOUNDS_S: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
const BATCH_BOUNDS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0,
];

/// Every metric the hub exports.
pub struct Metrics {
    /// Open WebSocket connections.
    pub connections: AtomicU64,
    /// Connections accepted since start.
    pub connections_total: AtomicU64,
    /// Ops stored (first time).
    pub ops_applied: AtomicU64,
    /// Ops refused.
    pub ops_rejected: AtomicU64,
    /// Ops answered from the outcome table (retries).
    pub ops_duplicate: AtomicU64,
    /// Intents (checkouts, stock commands, order status) decided.
    pub intents_decided: AtomicU64,
    /// Group commits performed.
    pub commits: AtomicU64,
    /// Changes sent to devices by catch-up reads (live fan-out is not counted).
    pub changes_sent: AtomicU64,
    /// Connections closed for a protocol violation.
    pub protocol_errors: AtomicU64,
    /// Handshakes whose probe showed this hub lacks ops the device saw
    /// acknowledged (the hub was restored from an older backup).
    pub devices_ahead: AtomicU64,
    /// Ops devices uploaded again after such a handshake.
    pub devices_reuploaded_ops: AtomicU64,
    /// Documents snapshotted by compaction.
    pub compacted_snapshots: AtomicU64,
    /// Changes deleted by compaction.
    pub compacted_changes: AtomicU64,
    /// Ops per group commit.
    pub commit_batch_ops: Histogram,
    /// Time from an op's arrival at the hub to its ack leaving the committer.
    pub ack_latency_seconds: Histogram,
    /// Duration of each group commit.
    pub commit_seconds: Histogram,
    /// Audit events (security-relevant refusals) by reason code. A lock is
    /// fine here: refusals are rare and never on an honest device's path.
    audit_events: Mutex<BTreeMap<&'static str, u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            connections: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            ops_applied: AtomicU64::new(0),
            ops_rejected: AtomicU64::new(0),
            ops_duplicate: AtomicU64::new(0),
            intents_decided: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            changes_sent: AtomicU64::new(0),
            protocol_errors: AtomicU64::new(0),
            devices_ahead: AtomicU64::new(0),
            devices_reuploaded_ops: AtomicU64::new(0),
            compacted_snapshots: AtomicU64::new(0),
            compacted_changes: AtomicU64::new(0),
            commit_batch_ops: Histogram::new(BATCH_BOUNDS),
            ack_latency_seconds: Histogram::new(LATENCY_BOUNDS_S),
            commit_seconds: Histogram::new(LATENCY_BOUNDS_S),
            audit_events: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Metrics {
    /// Counts one audit event with reason `code`.
    pub fn count_audit(&self, code: &'static str) {
        *self
            .audit_events
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(code)
            .or_default() += 1;
    }

    /// Audit events counted with reason `code`.
    pub fn audit_count(&self, code: &str) -> u64 {
        self.audit_events
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(code)
            .copied()
            .unwrap_or(0)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let mut gauge = |name: &str, help: &str, kind: &str, value: &AtomicU64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        };
        gauge(
            "omnisync_connections",
            "Open device connections.",
            "gauge",
            &self.connections,
        );
        gauge(
            "omnisync_connections_total",
            "Device connections accepted.",
            "counter",
            &self.connections_total,
        );
        gauge(
            "omnisync_ops_applied_total",
            "Ops stored durably.",
            "counter",
            &self.ops_applied,
        );
        gauge(
            "omnisync_ops_rejected_total",
            "Ops refused with a reason.",
            "counter",
            &self.ops_rejected,
        );
        gauge(
            "omnisync_ops_duplicate_total",
            "Retried ops answered with their original outcome.",
            "counter",
            &self.ops_duplicate,
        );
        gauge(
            "omnisync_compacted_snapshots_total",
            "Documents saved as snapshots by compaction of the change log.",
            "counter",
            &self.compacted_snapshots,
        );
        gauge(
            "omnisync_compacted_changes_total",
            "Changes deleted by compaction of the change log (covered by snapshots).",
            "counter",
            &self.compacted_changes,
        );
        gauge(
            "omnisync_intents_decided_total",
            "Intents decided by the authority (checkouts, stock commands, order status).",
            "counter",
            &self.intents_decided,
        );
        gauge(
            "omnisync_commits_total",
            "Group commits.",
            "counter",
            &self.commits,
        );
        gauge(
            "omnisync_changes_sent_total",
            "Changes sent to devices.",
            "counter",
            &self.changes_sent,
        );
        gauge(
            "omnisync_protocol_errors_total",
            "Connections closed for a protocol violation.",
            "counter",
            &self.protocol_errors,
        );
        gauge(
            "omnisync_devices_ahead_total",
            "Handshakes whose probe showed this hub lacks ops the device saw acknowledged (restored from an older backup).",
            "counter",
            &self.devices_ahead,
        );
        gauge(
            "omnisync_devices_reuploaded_ops_total",
            "Ops devices uploaded again to this hub after such a handshake.",
            "counter",
            &self.devices_reuploaded_ops,
        );
        let _ = writeln!(
            out,
            "# HELP omnisync_audit_events_total Security-relevant refusals, by reason code.\n# TYPE omnisync_audit_events_total counter"
        );
        for (code, count) in self
            .audit_events
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "omnisync_audit_events_total{{code=\"{code}\"}} {count}"
            );
        }
        self.commit_batch_ops.render(
            &mut out,
            "omnisync_commit_batch_ops",
            "Ops per group commit.",
        );
        self.ack_latency_seconds.render(
            &mut out,
            "omnisync_ack_latency_seconds",
            "From an op's arrival to its durable ack.",
        );
        self.commit_seconds.render(
            &mut out,
            "omnisync_commit_seconds",
            "Duration of one group commit.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative() {
        let metrics = Metrics::default();
        metrics.commit_batch_ops.observe(3.0);
        metrics.commit_batch_ops.observe(700.0);
        let text = metrics.render();
        assert!(text.contains("omnisync_commit_batch_ops_bucket{le=\"5\"} 1"));
        assert!(text.contains("omnisync_commit_batch_ops_bucket{le=\"1000\"} 2"));
        assert!(text.contains("omnisync_commit_batch_ops_count 2"));
    }
}
