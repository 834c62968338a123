//! Every Prometheus metric of the gateway, in one place. Labels stay low-cardinality: outcome,
//! reason, basis and service names, never key, member or model ids.

use std::sync::OnceLock;

use domain::services::ChargeBasis;
use pingora_prometheus::prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, register_gauge,
    register_histogram, register_int_counter, register_int_counter_vec, register_int_gauge,
};

/// The gateway's metrics, registered once in the process-wide registry that the metrics
/// listener serves.
pub struct Metrics {
    pub requests_total: IntCounterVec,
    pub refusals_total: IntCounterVec,
    pub settlements_total: IntCounterVec,
    pub upstream_errors_total: IntCounterVec,
    pub spend_nanousd_total: IntCounter,
    pub reservation_exceeded_total: IntCounter,
    pub upstream_duration_seconds: Histogram,
    pub added_latency_seconds: Histogram,
    pub cache_keys: IntGauge,
    pub flush_duration_seconds: Histogram,
    pub flush_lag_seconds: Gauge,
    pub flush_errors_total: IntCounter,
    pub reconciliations_pending: IntGauge,
    pub reconciliations_total: IntCounterVec,
    pub reconciled_nanousd_total: IntCounter,
    pub lease_grants_total: IntCounter,
    pub lease_give_backs_total: IntCounter,
    pub lease_reclaims_total: IntCounter,
    pub key_lookups_peak: IntGauge,
    /// Handles resolved once for the labels every request uses.
    by_outcome: [(&'static str, IntCounter); OUTCOMES.len()],
    by_basis: [(ChargeBasis, IntCounter); BASES.len()],
}

/// Every value of the `outcome` label.
pub const OUTCOMES: [&str; 5] = [
    "forwarded",
    "answered",
    "refused",
    "upstream_error",
    "probe",
];
const BASES: [ChargeBasis; 5] = [
    ChargeBasis::Reported,
    ChargeBasis::Computed,
    ChargeBasis::Reservation,
    ChargeBasis::Reconciled,
    ChargeBasis::NotBilled,
];

static METRICS: OnceLock<Metrics> = OnceLock::new();

const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0,
];
const UPSTREAM_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

impl Metrics {
    /// The process's metrics, registered on first use.
    pub fn global() -> &'static Metrics {
        METRICS.get_or_init(|| {
            Metrics::register().expect("metric names are unique and registered once")
        })
    }

    /// Counts a finished request by its outcome (one of [`OUTCOMES`]).
    pub fn count_request(&self, outcome: &str) {
        match self.by_outcome.iter().find(|(name, _)| *name == outcome) {
            Some((_, counter)) => counter.inc(),
            None => self
                .requests_total
                .with_label_values(&[outcome, "openrouter"])
                .inc(),
        }
    }

    /// Counts a settlement by what its charge was based on.
    pub fn count_settlement(&self, basis: ChargeBasis) {
        match self.by_basis.iter().find(|(known, _)| *known == basis) {
            Some((_, counter)) => counter.inc(),
            None => self
                .settlements_total
                .with_label_values(&[basis.as_str()])
                .inc(),
        }
    }

    fn register() -> Result<Metrics, pingora_prometheus::prometheus::Error> {
        let requests_total = register_int_counter_vec!(
            Opts::new("gateway_requests_total", "Requests by outcome and service"),
            &["outcome", "service"]
        )?;
        let settlements_total = register_int_counter_vec!(
            Opts::new(
                "gateway_settlements_total",
                "Settled requests by what the charge was based on"
            ),
            &["basis"]
        )?;
        let by_outcome = OUTCOMES.map(|outcome| {
            (
                outcome,
                requests_total.with_label_values(&[outcome, "openrouter"]),
            )
        });
        let by_basis = BASES.map(|basis| {
            (
                basis,
                settlements_total.with_label_values(&[basis.as_str()]),
            )
        });
        Ok(Metrics {
            requests_total,
            settlements_total,
            by_outcome,
            by_basis,
            refusals_total: register_int_counter_vec!(
                Opts::new(
                    "gateway_refusals_total",
                    "Requests refused without an upstream call, by reason"
                ),
                &["reason"]
            )?,
            upstream_errors_total: register_int_counter_vec!(
                Opts::new("gateway_upstream_errors_total", "Upstream failures by kind"),
                &["kind"]
            )?,
            spend_nanousd_total: register_int_counter!(
                "gateway_spend_nanousd_total",
                "Spend settled, in nano-dollars"
            )?,
            reservation_exceeded_total: register_int_counter!(
                "gateway_reservation_exceeded_total",
                "Settlements whose reported cost exceeded the reservation"
            )?,
            lease_grants_total: register_int_counter!(
                "gateway_lease_grants_total",
                "Requests to Postgres for more of a key's cap"
            )?,
            lease_give_backs_total: register_int_counter!(
                "gateway_lease_give_backs_total",
                "Unused slices of keys' caps given back to Postgres"
            )?,
            lease_reclaims_total: register_int_counter!(
                "gateway_lease_reclaims_total",
                "Leases of dead gateways this gateway reclaimed"
            )?,
            key_lookups_peak: register_int_gauge!(
                "gateway_key_lookups_in_flight_peak",
                "The most tokens not cached that were looked up at once since the start"
            )?,
            upstream_duration_seconds: register_histogram!(
                HistogramOpts::new(
                    "gateway_upstream_duration_seconds",
                    "From choosing the upstream to the end of the response"
                )
                .buckets(UPSTREAM_BUCKETS.to_vec())
            )?,
            added_latency_seconds: register_histogram!(
                HistogramOpts::new(
                    "gateway_added_latency_seconds",
                    "Time the gateway spends on a request before contacting the upstream"
                )
                .buckets(LATENCY_BUCKETS.to_vec())
            )?,
            cache_keys: register_int_gauge!(
                "gateway_cache_keys",
                "Keys held in the in-memory cache"
            )?,
            flush_duration_seconds: register_histogram!(
                HistogramOpts::new(
                    "gateway_flush_duration_seconds",
                    "Duration of one batched spend flush"
                )
                .buckets(LATENCY_BUCKETS.to_vec())
            )?,
            flush_lag_seconds: register_gauge!(
                "gateway_flush_lag_seconds",
                "Age of the oldest settled spend not yet in Postgres"
            )?,
            flush_errors_total: register_int_counter!(
                "gateway_flush_errors_total",
                "Failed spend flushes"
            )?,
            reconciliations_pending: register_int_gauge!(
                "gateway_reconciliations_pending",
                "Requests ended without a reported cost, waiting for the upstream to say what \
                 it billed (their reservations held)"
            )?,
            reconciliations_total: register_int_counter_vec!(
                Opts::new(
                    "gateway_reconciliations_total",
                    "Finished reconciliations: billed (the upstream's cost was charged) or \
                     unknown (it never said: the reservation was charged)"
                ),
                &["outcome"]
            )?,
            reconciled_nanousd_total: register_int_counter!(
                "gateway_reconciled_nanousd_total",
                "Nano-dollars reconciliations gave back to keys: reservations less what the \
                 upstream billed"
            )?,
        })
    }
}
