//! Rate limits per principal, per client IP or per source (governor), with state bounded
//! however many distinct keys arrive.
//!
//! Keys are hashed into a fixed number of buckets, each a token bucket of `per_second` and
//! `burst`. Memory is fixed (a few hundred kilobytes); two keys that share a bucket share its
//! budget, which can only make the limit stricter for them, never looser.

use std::hash::{BuildHasher, Hash};
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{Quota, RateLimiter};
use serde::Deserialize;

/// Buckets for `principal` and `ip` keys.
const BUCKETS: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateKey {
    Principal,
    Ip,
    Source,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub per_second: u32,
    pub burst: u32,
    #[serde(default = "default_key")]
    pub key: RateKey,
}

fn default_key() -> RateKey {
    RateKey::Principal
}

/// Why events were refused by a rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateRefusal {
    /// Over the budget: retry after this long.
    Wait(Duration),
    /// More events at once than the burst, which can never pass however long the sender
    /// waits.
    OverBurst { burst: u32 },
}

type Bucket = RateLimiter<governor::state::NotKeyed, governor::state::InMemoryState, DefaultClock>;

/// A compiled rate limit.
pub struct Limiter {
    key: RateKey,
    burst: u32,
    buckets: Vec<Bucket>,
    hasher: std::collections::hash_map::RandomState,
    clock: DefaultClock,
}

impl Limiter {
    pub fn new(config: &RateLimitConfig) -> Result<Limiter, String> {
        let per_second =
            NonZeroU32::new(config.per_second).ok_or("per_second must be greater than 0")?;
        let burst = NonZeroU32::new(config.burst).ok_or("burst must be greater than 0")?;
        let quota = Quota::per_second(per_second).allow_burst(burst);
        let n = if config.key == RateKey::Source {
            1
        } else {
            BUCKETS
        };
        Ok(Limiter {
            key: config.key,
            burst: config.burst,
            buckets: (0..n).map(|_| RateLimiter::direct(quota)).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            clock: DefaultClock::default(),
        })
    }

    pub fn key(&self) -> RateKey {
        self.key
    }

    /// Takes `n` tokens for `key`; `Err` says how long to wait, or that `n` can never pass.
    pub fn check(&self, key: impl Hash, n: u32) -> Result<(), RateRefusal> {
        let index = (self.hasher.hash_one(key) as usize) % self.buckets.len();
        let bucket = &self.buckets[index];
        let Some(n) = NonZeroU32::new(n) else {
            return Ok(());
        };
        match bucket.check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(RateRefusal::Wait(
                not_until.wait_time_from(self.clock.now()),
            )),
            Err(_) => Err(RateRefusal::OverBurst { burst: self.burst }),
        }
    }
}

/// `Retry-After` seconds for a wait (at least 1).
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0).max(u64::from(wait.is_zero()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refusal_per_key() {
        let l = Limiter::new(&RateLimitConfig {
            per_second: 1,
            burst: 3,
            key: RateKey::Principal,
        })
        .unwrap();
        for _ in 0..3 {
            assert!(l.check("a", 1).is_ok());
        }
        let Err(RateRefusal::Wait(wait)) = l.check("a", 1) else {
            panic!("not refused with a wait");
        };
        assert!(wait <= Duration::from_secs(1));
        assert_eq!(retry_after_secs(wait), 1);
        // Another key has its own budget (distinct buckets with overwhelming probability).
        let other = (0..50)
            .filter(|i| l.check(format!("k{i}"), 1).is_ok())
            .count();
        assert!(other >= 45, "{other}");
        // M3: more than the burst at once can never pass, and says so.
        assert_eq!(
            l.check("b", 5),
            Err(RateRefusal::OverBurst { burst: 3 }),
            "more than the burst at once"
        );
    }

    #[test]
    fn bad_config() {
        assert!(Limiter::new(&RateLimitConfig {
            per_second: 0,
            burst: 1,
            key: RateKey::Ip
        })
        .is_err());
    }
}
