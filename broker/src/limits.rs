//! Per-principal limits: a token bucket on submits, and caps on concurrent
//! submits and streams, so that one misbehaving client cannot crowd out the
//! others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::LimitsConfig;
use crate::error::BrokerError;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug)]
pub struct Limiter {
    cfg: LimitsConfig,
    buckets: Mutex<HashMap<String, Bucket>>,
    in_flight: Mutex<HashMap<String, Arc<Semaphore>>>,
    streams: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// Held while a request counts against a concurrency cap.
#[derive(Debug)]
pub struct Permit(#[allow(dead_code)] OwnedSemaphorePermit);

impl Limiter {
    pub fn new(cfg: LimitsConfig) -> Self {
        Self { cfg, buckets: Mutex::default(), in_flight: Mutex::default(), streams: Mutex::default() }
    }

    fn take_token(&self, principal: &str) -> Result<(), BrokerError> {
        let now = Instant::now();
        let mut map = self.buckets.lock().expect("limiter lock");
        let b = map.entry(principal.to_owned()).or_insert(Bucket { tokens: f64::from(self.cfg.submit_burst), at: now });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens =
            (b.tokens + elapsed * f64::from(self.cfg.submit_rate_per_second)).min(f64::from(self.cfg.submit_burst));
        b.at = now;
        if b.tokens < 1.0 {
            return Err(BrokerError::RateLimited {
                per_second: self.cfg.submit_rate_per_second,
                burst: self.cfg.submit_burst,
            });
        }
        b.tokens -= 1.0;
        Ok(())
    }

    fn slot(
        map: &Mutex<HashMap<String, Arc<Semaphore>>>,
        principal: &str,
        limit: usize,
        what: &'static str,
    ) -> Result<Permit, BrokerError> {
        let sem = map
            .lock()
            .expect("limiter lock")
            .entry(principal.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(limit)))
            .clone();
        sem.try_acquire_owned().map(Permit).map_err(|_| BrokerError::TooManyConcurrent { what, limit })
    }

    /// Admits one submit (or ack) by `principal`.
    pub fn submit(&self, principal: &str) -> Result<Permit, BrokerError> {
        let permit = Self::slot(&self.in_flight, principal, self.cfg.max_in_flight_per_principal, "requests")
            .inspect_err(counted)?;
        self.take_token(principal).inspect_err(counted)?;
        Ok(permit)
    }

    /// Admits one stream (subscribe or receipt watch) by `principal`.
    pub fn stream(&self, principal: &str) -> Result<Permit, BrokerError> {
        Self::slot(&self.streams, principal, self.cfg.max_streams_per_principal, "streams").inspect_err(counted)
    }
}

/// Limit refusals are counted in the metrics but not written to the audit
/// log: a flood must not become a flood of log entries.
fn counted(e: &BrokerError) {
    crate::metrics::rejected(e.reason());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> LimitsConfig {
        LimitsConfig {
            submit_rate_per_second: 10,
            submit_burst: 3,
            max_in_flight_per_principal: 2,
            max_streams_per_principal: 1,
            max_connections_per_principal: 4,
            max_concurrent_streams_per_connection: 100,
            max_header_list_bytes: 16 * 1024,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn token_bucket_refills_with_time() {
        let l = Limiter::new(limits());
        for _ in 0..3 {
            drop(l.submit("a").unwrap());
        }
        assert!(matches!(l.submit("a"), Err(BrokerError::RateLimited { per_second: 10, burst: 3 })));
        drop(l.submit("b").unwrap());
        tokio::time::advance(std::time::Duration::from_millis(100)).await;
        drop(l.submit("a").unwrap());
    }

    #[tokio::test]
    async fn concurrency_caps() {
        let l = Limiter::new(limits());
        let s1 = l.stream("a").unwrap();
        assert!(matches!(l.stream("a"), Err(BrokerError::TooManyConcurrent { what: "streams", limit: 1 })));
        drop(s1);
        let _s2 = l.stream("a").unwrap();
        let _p1 = l.submit("x").unwrap();
        let _p2 = l.submit("x").unwrap();
        assert!(matches!(l.submit("x"), Err(BrokerError::TooManyConcurrent { what: "requests", .. })));
    }
}
