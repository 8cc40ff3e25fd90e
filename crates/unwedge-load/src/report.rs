//! What a run measured.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::{ConnectionMode, FailureKind};

/// Counters of a run so far, published on a watch channel while it runs
/// ([`Running::progress`](crate::Running::progress)) for live tables.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Time since the run started.
    #[serde(with = "secs")]
    pub elapsed: Duration,
    /// Requests finished (with a response or a failure).
    pub total: u64,
    /// Responses with an ok status.
    pub ok: u64,
    /// Responses with an expected failure status (see [`RequestSpec::expect_failure`](crate::RequestSpec::expect_failure)).
    pub expected_failures: u64,
    /// Responses with an unexpected status.
    pub unexpected_statuses: u64,
    /// Connections refused.
    pub refused: u64,
    /// Connections reset or closed before a complete response.
    pub reset: u64,
    /// Requests timed out.
    pub timeout: u64,
    /// Other failures.
    pub other: u64,
    /// Requests in flight now.
    pub in_flight: u64,
    /// Connections opened so far.
    pub connections_opened: u64,
    /// `true` in the last value, sent when the run is over.
    pub done: bool,
}

impl Progress {
    /// Unexpected statuses plus every failure without a response.
    pub fn unexpected_failures(&self) -> u64 {
        self.unexpected_statuses + self.refused + self.reset + self.timeout + self.other
    }
}

/// Counts for one request kind of the mix.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounts {
    /// Requests of this kind finished.
    pub total: u64,
    /// Ok responses.
    pub ok: u64,
    /// Expected failure statuses.
    pub expected_failures: u64,
    /// Unexpected statuses and failures without a response.
    pub unexpected_failures: u64,
}

/// One failure, kept as an example.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// `refused`, `reset`, `timeout`, `other` or `status`.
    pub kind: String,
    /// The request (`METHOD path` or its name).
    pub request: String,
    /// The error chain or the status.
    pub message: String,
}

/// Latency percentiles in microseconds, over every request that got a response.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Responses measured.
    pub count: u64,
    /// Mean (µs).
    pub mean_us: f64,
    /// Minimum (µs).
    pub min_us: u64,
    /// Median (µs).
    pub p50_us: u64,
    /// 90th percentile (µs).
    pub p90_us: u64,
    /// 99th percentile (µs).
    pub p99_us: u64,
    /// 99.9th percentile (µs).
    pub p999_us: u64,
    /// Maximum (µs).
    pub max_us: u64,
}

impl LatencySummary {
    pub(crate) fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            mean_us: h.mean(),
            min_us: h.min(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// The result of a load run. Serializes to JSON; `Display` prints a compact table.
///
/// Every finished request is counted exactly once, in `ok`, `expected_failures`,
/// `unexpected_statuses`, `refused`, `reset`, `timeout` or `other`; they add up to `total`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadReport {
    /// The target, as `http://host:port`.
    pub target: String,
    /// The load model, as text (`concurrency 8`, `rate 1000/s`).
    pub model: String,
    /// Keep-alive or fresh connections.
    pub connections: ConnectionMode,
    /// From start until the last request finished.
    #[serde(with = "secs")]
    pub elapsed: Duration,
    /// Requests finished.
    pub total: u64,
    /// Responses with an ok status.
    pub ok: u64,
    /// Responses with an expected failure status.
    pub expected_failures: u64,
    /// Responses with an unexpected status.
    pub unexpected_statuses: u64,
    /// Connections refused (`ECONNREFUSED`).
    pub refused: u64,
    /// Connections reset or closed before a complete response.
    pub reset: u64,
    /// Requests without a complete response within the timeout.
    pub timeout: u64,
    /// Other failures (see `samples`).
    pub other: u64,
    /// Responses by status code.
    pub by_status: BTreeMap<u16, u64>,
    /// Counts by request kind (its name).
    pub by_request: BTreeMap<String, RequestCounts>,
    /// TCP connections opened.
    pub connections_opened: u64,
    /// `total / elapsed`.
    pub requests_per_sec: f64,
    /// Latency of the requests that got a response (from the intended send time in the
    /// rate model, from the actual send in the concurrency model).
    pub latency: LatencySummary,
    /// A few failures as examples (at most 3 of each kind).
    pub samples: Vec<Sample>,
    /// The full latency histogram in microseconds (not serialized).
    #[serde(skip, default = "empty_histogram")]
    pub histogram: Histogram<u64>,
}

pub(crate) fn empty_histogram() -> Histogram<u64> {
    // 1 µs .. 1 h at 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

impl LoadReport {
    /// Unexpected statuses plus every failure without a response: the figure that must be
    /// zero for a run to count as clean.
    pub fn unexpected_failures(&self) -> u64 {
        self.unexpected_statuses + self.refused + self.reset + self.timeout + self.other
    }

    /// Count for one failure kind.
    pub fn failures(&self, kind: FailureKind) -> u64 {
        match kind {
            FailureKind::Refused => self.refused,
            FailureKind::Reset => self.reset,
            FailureKind::Timeout => self.timeout,
            FailureKind::Other => self.other,
        }
    }

    /// Responses with `status`.
    pub fn status(&self, status: u16) -> u64 {
        self.by_status.get(&status).copied().unwrap_or(0)
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a LoadReport always serializes")
    }
}

/// `1234` µs → `1.23 ms`.
pub fn fmt_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us} µs")
    } else if us < 1_000_000 {
        format!("{:.2} ms", us as f64 / 1e3)
    } else {
        format!("{:.2} s", us as f64 / 1e6)
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}  {}, {}, {:.2} s, {} connections opened",
            self.target,
            self.model,
            self.connections,
            self.elapsed.as_secs_f64(),
            self.connections_opened
        )?;
        writeln!(
            f,
            "requests    {:>10}  ({:.1}/s)",
            self.total, self.requests_per_sec
        )?;
        writeln!(f, "ok          {:>10}", self.ok)?;
        writeln!(f, "expected    {:>10}", self.expected_failures)?;
        writeln!(
            f,
            "unexpected  {:>10}  (status {}, refused {}, reset {}, timeout {}, other {})",
            self.unexpected_failures(),
            self.unexpected_statuses,
            self.refused,
            self.reset,
            self.timeout,
            self.other
        )?;
        let l = &self.latency;
        writeln!(
            f,
            "latency     p50 {}  p90 {}  p99 {}  max {}",
            fmt_us(l.p50_us),
            fmt_us(l.p90_us),
            fmt_us(l.p99_us),
            fmt_us(l.max_us)
        )?;
        let statuses: Vec<String> = self
            .by_status
            .iter()
            .map(|(s, n)| format!("{s}: {n}"))
            .collect();
        write!(f, "statuses    {}", statuses.join("  "))?;
        for s in &self.samples {
            write!(f, "\n  e.g. {} {}: {}", s.kind, s.request, s.message)?;
        }
        Ok(())
    }
}

mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}
