//! Reconnect delays: exponential from `min` to `max`, with jitter so that many gateways cut
//! off by the same outage do not all knock on the IoT Hub at the same instant when it returns.
//!
//! [`delay`] is pure (the random draw is a parameter); [`Backoff`] adds the attempt counter and
//! a tiny xorshift generator seeded from the clock — jitter needs to differ between gateways,
//! not to be unpredictable, so no `rand` crate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Attempts beyond this no longer double the delay: 2^20 × any sane minimum is far above any
/// sane maximum, and stopping here keeps the shift from overflowing.
const DOUBLINGS_MAX: u32 = 20;

/// The delay may be shortened by up to 1/`JITTER_DIVISOR` of the exponential base: a quarter
/// spreads reconnects over a useful window while keeping the curve recognisably exponential.
const JITTER_DIVISOR: u64 = 4;

/// The delay before reconnect attempt `attempt` (0 = the first retry).
///
/// The base is `min × 2^attempt`, capped at `max`; from it up to a quarter is taken off
/// according to `random`, and the result never falls below `min` nor exceeds `max`.
pub fn delay(attempt: u32, min: Duration, max: Duration, random: u64) -> Duration {
    let min_ms = duration_ms(min);
    let max_ms = duration_ms(max).max(min_ms);
    let base_ms = min_ms.saturating_mul(1u64 << attempt.min(DOUBLINGS_MAX)).min(max_ms);
    let jitter_ms = random % (base_ms / JITTER_DIVISOR + 1);
    Duration::from_millis(base_ms.saturating_sub(jitter_ms).max(min_ms))
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// xorshift64 (Marsaglia 2003): three shifts, a 2^64−1 period, no state beyond one word.
#[derive(Debug, Clone)]
pub struct XorShift64(u64);

impl XorShift64 {
    /// Any non-zero seed works; zero (the one fixed point) is replaced by a constant.
    pub fn new(seed: u64) -> Self {
        XorShift64(if seed == 0 { 0x9E37_79B9_7F4A_7C15 } else { seed })
    }

    /// Seeded from the wall clock's nanoseconds and the process id, so gateways booted together
    /// still draw different sequences.
    pub fn from_clock() -> Self {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        // Folding the 128-bit nanosecond count keeps its fast-changing low bits.
        let folded = (nanos as u64) ^ ((nanos >> 64) as u64);
        Self::new(folded ^ (u64::from(std::process::id()) << 32))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// The attempt counter and jitter source of one link.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
    random: XorShift64,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration, random: XorShift64) -> Self {
        Backoff { min, max, attempt: 0, random }
    }

    /// The delay before the next attempt; each call doubles the following one (up to `max`).
    pub fn next_delay(&mut self) -> Duration {
        let d = delay(self.attempt, self.min, self.max, self.random.next_u64());
        self.attempt = self.attempt.saturating_add(1).min(DOUBLINGS_MAX);
        d
    }

    /// Back to `min`: called once a connection has proved stable.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(60);

    #[test]
    fn without_jitter_the_delay_doubles_up_to_the_cap() {
        let secs: Vec<u64> = (0..9).map(|n| delay(n, MIN, MAX, 0).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn jitter_takes_off_at_most_a_quarter_and_never_leaves_the_bounds() {
        let mut random = XorShift64::new(42);
        for attempt in 0..40 {
            for _ in 0..200 {
                let d = delay(attempt, MIN, MAX, random.next_u64());
                let base = delay(attempt, MIN, MAX, 0);
                assert!(d >= MIN && d <= MAX, "{d:?} outside [1 s, 60 s]");
                assert!(d <= base && d >= base * 3 / 4, "{d:?} not within a quarter of {base:?}");
            }
        }
    }

    #[test]
    fn huge_attempt_counts_and_extreme_bounds_do_not_overflow() {
        assert_eq!(delay(u32::MAX, MIN, MAX, 0), MAX);
        assert!(delay(u32::MAX, MIN, MAX, u64::MAX) >= MAX * 3 / 4);
        let huge = Duration::from_secs(u64::MAX);
        assert_eq!(delay(10, huge, huge, 7), Duration::from_millis(u64::MAX));
        // A maximum below the minimum is read as "always the minimum".
        assert_eq!(delay(5, MAX, MIN, 0), MAX);
    }

    #[test]
    fn backoff_grows_then_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), XorShift64::new(1));
        let delays: Vec<Duration> = (0..8).map(|_| backoff.next_delay()).collect();
        // At attempt 0 the base is the minimum, and jitter never goes below it.
        assert_eq!(delays[0], Duration::from_millis(100));
        assert!(delays[7] >= Duration::from_millis(750), "capped near 1 s: {delays:?}");
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn xorshift_differs_by_seed_and_never_sticks_at_zero() {
        let a: Vec<u64> = {
            let mut r = XorShift64::new(1);
            (0..4).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = XorShift64::new(2);
            (0..4).map(|_| r.next_u64()).collect()
        };
        assert_ne!(a, b);
        let mut zero = XorShift64::new(0);
        assert!((0..100).all(|_| zero.next_u64() != 0));
    }
}
