//! Latency histograms shared by every socket of a run, and their summary.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Microseconds since the Unix epoch: senders stamp `content.sentAt` with
/// it and receivers subtract it, on the same machine's clock.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Latencies from 1 µs to 1 h at 3 significant digits.
fn empty() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// One histogram that every socket task records into. A run swaps it out
/// at each phase boundary with [`Recorder::take`], so the sockets of one
/// stack can serve several measured phases.
#[derive(Clone)]
pub struct Recorder {
    histogram: Arc<Mutex<Histogram<u64>>>,
}

impl Default for Recorder {
    fn default() -> Recorder {
        Recorder {
            histogram: Arc::new(Mutex::new(empty())),
        }
    }
}

impl Recorder {
    /// Records the create→receive time of a notification stamped `sent_at`.
    pub fn record_since(&self, sent_at_micros: u64) {
        let latency = now_micros().saturating_sub(sent_at_micros);
        self.record(latency);
    }

    /// Records one latency in microseconds (clamped into the bounds).
    pub fn record(&self, micros: u64) {
        let mut histogram = self
            .histogram
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        histogram.saturating_record(micros.max(1));
    }

    /// How many latencies are recorded so far in this phase.
    pub fn count(&self) -> u64 {
        self.histogram
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Ends a phase: returns what it recorded and starts an empty one.
    pub fn take(&self) -> Latency {
        let mut histogram = self
            .histogram
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let taken = std::mem::replace(&mut *histogram, empty());
        Latency::of(&taken)
    }
}

/// The summary every report quotes, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Number of samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
}

impl Latency {
    /// Summarizes a histogram of microseconds; all zeros when it is empty.
    pub fn of(histogram: &Histogram<u64>) -> Latency {
        if histogram.is_empty() {
            return Latency {
                count: 0,
                p50_ms: 0.0,
                p90_ms: 0.0,
                p99_ms: 0.0,
                max_ms: 0.0,
            };
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        Latency {
            count: histogram.len(),
            p50_ms: ms(histogram.value_at_quantile(0.5)),
            p90_ms: ms(histogram.value_at_quantile(0.9)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            max_ms: ms(histogram.max()),
        }
    }
}

/// The middle value (upper middle for an even count); `None` when empty.
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some(values[values.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_a_known_spread() {
        let recorder = Recorder::default();
        // 1..=1000 ms: p50 500, p90 900, p99 990, max 1000.
        for ms in 1..=1000u64 {
            recorder.record(ms * 1000);
        }
        let latency = recorder.take();
        assert_eq!(latency.count, 1000);
        let close = |got: f64, want: f64| (got - want).abs() / want < 0.002;
        assert!(close(latency.p50_ms, 500.0), "{latency:?}");
        assert!(close(latency.p90_ms, 900.0), "{latency:?}");
        assert!(close(latency.p99_ms, 990.0), "{latency:?}");
        assert!(close(latency.max_ms, 1000.0), "{latency:?}");
    }

    #[test]
    fn take_starts_a_new_phase() {
        let recorder = Recorder::default();
        recorder.record(5_000);
        assert_eq!(recorder.take().count, 1);
        assert_eq!(recorder.count(), 0);
        assert_eq!(recorder.take(), Latency::of(&empty()));
        recorder.record(7_000);
        assert_eq!(recorder.take().p50_ms.round(), 7.0);
    }

    #[test]
    fn out_of_range_samples_are_clamped_not_lost() {
        let recorder = Recorder::default();
        recorder.record(0);
        recorder.record(u64::MAX);
        let latency = recorder.take();
        assert_eq!(latency.count, 2);
        assert!(latency.max_ms >= 3_600_000.0);
    }

    #[test]
    fn a_clock_step_backwards_counts_as_the_smallest_latency() {
        let recorder = Recorder::default();
        recorder.record_since(now_micros() + 10_000_000);
        assert_eq!(recorder.take().count, 1);
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(3.0));
        assert_eq!(median(Vec::new()), None);
    }
}
