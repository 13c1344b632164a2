//! GCRA (the generic cell rate algorithm), as redis-cell implements it: a bucket admits `limit`
//! requests per `period` on average, with bursts of up to `burst` requests. The whole state is
//! one number, the theoretical arrival time (TAT), which makes it cheap to keep in shared memory.
//! Times are microseconds from any fixed origin; the clock is the caller's, so tests inject it.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Microseconds between requests at the sustained rate (period / limit).
    pub emission_us: i64,
    /// How far ahead of now the TAT may run: (burst - 1) emission intervals.
    pub tolerance_us: i64,
    pub limit: u32,
    pub burst: u32,
}

#[derive(Debug, PartialEq, Eq)]
pub enum RateError {
    NonPositiveLimit,
    NonPositivePeriod,
    NonPositiveBurst,
}

impl std::fmt::Display for RateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NonPositiveLimit => "rate limit must be a positive number of requests",
            Self::NonPositivePeriod => "rate limit period must be a positive interval",
            Self::NonPositiveBurst => "rate limit burst must be a positive number of requests",
        })
    }
}

impl Rate {
    /// `limit` requests per `period_us`, bursts of `burst` (defaults to `limit`).
    pub fn new(limit: i64, period_us: i64, burst: Option<i64>) -> Result<Self, RateError> {
        if limit <= 0 || limit > u32::MAX as i64 {
            return Err(RateError::NonPositiveLimit);
        }
        if period_us <= 0 {
            return Err(RateError::NonPositivePeriod);
        }
        let burst = burst.unwrap_or(limit);
        if burst <= 0 || burst > u32::MAX as i64 {
            return Err(RateError::NonPositiveBurst);
        }
        let emission_us = (period_us / limit).max(1);
        Ok(Rate {
            emission_us,
            tolerance_us: emission_us.saturating_mul(burst - 1),
            limit: limit as u32,
            burst: burst as u32,
        })
    }
}

impl Rate {
    /// This server's share of the limit (`share` of 0.5 with two servers behind a balancer):
    /// `limit` and `burst` scaled down (never below 1) over the same period.
    pub fn scaled(&self, share: f64) -> Rate {
        if !(share > 0.0 && share < 1.0) {
            return *self;
        }
        let period = self.emission_us.saturating_mul(self.limit as i64);
        let limit = ((self.limit as f64 * share).round() as i64).max(1);
        let burst = ((self.burst as f64 * share).round() as i64).max(1);
        Rate::new(limit, period, Some(burst)).unwrap_or(*self)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub allowed: bool,
    /// Requests that would still be admitted right now.
    pub remaining: u32,
    /// Whole seconds until the next request would be admitted (0 when allowed; at least 1 when not).
    pub retry_after: u64,
    /// Whole seconds until the bucket is full again.
    pub reset_after: u64,
    /// The TAT to store (unchanged when refused).
    pub tat: i64,
}

fn ceil_secs(us: i64) -> u64 {
    if us <= 0 {
        0
    } else {
        (us as u64).div_ceil(1_000_000)
    }
}

/// Ask for one request at `now` against a bucket whose stored TAT is `tat` (None: fresh bucket).
pub fn charge(rate: &Rate, tat: Option<i64>, now: i64) -> Outcome {
    charge_n(rate, tat, now, 1)
}

/// Ask for `n` requests at once (a weighted request). `n` must not exceed the burst (such a
/// request could never be admitted); 0 asks for nothing and always passes.
pub fn charge_n(rate: &Rate, tat: Option<i64>, now: i64, n: u32) -> Outcome {
    let tat = tat.unwrap_or(now).max(now);
    let new_tat = tat.saturating_add(rate.emission_us.saturating_mul(n as i64));
    let allow_at = new_tat - rate.emission_us - rate.tolerance_us;
    if now < allow_at {
        let remaining = 0;
        return Outcome {
            allowed: false,
            remaining,
            retry_after: ceil_secs(allow_at - now).max(1),
            reset_after: ceil_secs(tat - now),
            tat,
        };
    }
    let headroom = now + rate.tolerance_us + rate.emission_us - new_tat;
    Outcome {
        allowed: true,
        remaining: (headroom / rate.emission_us).clamp(0, rate.burst as i64) as u32,
        retry_after: 0,
        reset_after: ceil_secs(new_tat - now),
        tat: new_tat,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    fn run(rate: &Rate, times: &[i64]) -> Vec<bool> {
        let mut tat = None;
        times
            .iter()
            .map(|&t| {
                let o = charge(rate, tat, t);
                if o.allowed {
                    tat = Some(o.tat);
                }
                o.allowed
            })
            .collect()
    }

    #[test]
    fn redis_cell_style_burst_then_steady_rate() {
        // 1 request per second, burst 5 (redis-cell: CL.THROTTLE key 4 1 1, i.e. max_burst 4 + 1).
        let rate = Rate::new(1, S, Some(5)).unwrap();
        let o = charge(&rate, None, 0);
        assert_eq!((o.allowed, o.remaining, o.retry_after), (true, 4, 0));
        assert_eq!(
            run(&rate, &[0, 0, 0, 0, 0, 0]),
            vec![true, true, true, true, true, false]
        );
        // After the burst, one more each second.
        assert_eq!(
            run(&rate, &[0, 0, 0, 0, 0, S, S, 2 * S]),
            vec![true, true, true, true, true, true, false, true]
        );
    }

    #[test]
    fn refusals_say_when_to_come_back_and_change_nothing() {
        let rate = Rate::new(2, 10 * S, None).unwrap(); // 2 per 10 s, burst 2
        let a = charge(&rate, None, 0);
        let b = charge(&rate, Some(a.tat), 0);
        assert!(b.allowed && b.remaining == 0);
        let c = charge(&rate, Some(b.tat), S);
        assert!(!c.allowed);
        assert_eq!(c.retry_after, 4);
        assert_eq!(c.tat, b.tat);
        assert_eq!(c.reset_after, 9);
        assert!(charge(&rate, Some(b.tat), 5 * S).allowed);
    }

    #[test]
    fn never_more_than_limit_plus_burst_in_a_period() {
        let rate = Rate::new(10, 60 * S, Some(3)).unwrap();
        let times: Vec<i64> = (0..6000).map(|i| i * S / 10).collect();
        let allowed = run(&rate, &times);
        for start in (0..5400).step_by(50) {
            let n = (start..start + 600).filter(|&i| allowed[i]).count();
            assert!(n <= 10 + 3, "window at {start}: {n}");
        }
    }

    #[test]
    fn retry_after_is_at_least_one_second_when_refused() {
        let rate = Rate::new(1000, S, Some(1)).unwrap();
        let a = charge(&rate, None, 0);
        let b = charge(&rate, Some(a.tat), 1);
        assert!(!b.allowed);
        assert_eq!(b.retry_after, 1);
    }

    #[test]
    fn a_bucket_idle_for_long_is_full_again() {
        let rate = Rate::new(1, S, Some(3)).unwrap();
        let o = charge(&rate, Some(-1_000 * S), 0);
        assert_eq!(o.remaining, 2);
    }

    #[test]
    fn bad_rates_are_refused() {
        assert_eq!(Rate::new(0, S, None), Err(RateError::NonPositiveLimit));
        assert_eq!(Rate::new(-1, S, None), Err(RateError::NonPositiveLimit));
        assert_eq!(Rate::new(1, 0, None), Err(RateError::NonPositivePeriod));
        assert_eq!(Rate::new(1, S, Some(0)), Err(RateError::NonPositiveBurst));
    }

    #[test]
    fn a_scaled_rate_admits_its_share() {
        let r = Rate::new(100, 60 * S, Some(20)).unwrap();
        let half = r.scaled(0.5);
        assert_eq!((half.limit, half.burst), (50, 10));
        assert_eq!(half.emission_us, 2 * r.emission_us);
        assert_eq!(r.scaled(1.0), r);
        assert_eq!(Rate::new(1, S, None).unwrap().scaled(0.1).limit, 1);
    }

    #[test]
    fn a_weighted_request_spends_its_weight() {
        let r = Rate::new(10, 10 * S, None).unwrap();
        let o = charge_n(&r, None, 0, 7);
        assert!(o.allowed && o.remaining == 3);
        assert!(!charge_n(&r, Some(o.tat), 0, 4).allowed);
        assert!(charge_n(&r, Some(o.tat), 0, 3).allowed);
        assert!(charge_n(&r, Some(o.tat), 0, 0).allowed);
    }
}
