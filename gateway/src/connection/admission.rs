//! Who may hold a connection. A new connection first holds an *unauthenticated* slot —
//! a smaller budget, at most a few per source address, and a connect rate per source —
//! and only a valid Hello moves it to an *authenticated* slot. Sockets that never
//! authenticate therefore use up only the unauthenticated budget (and, from one
//! address, only that address's share of it): they can never take the slots of
//! authenticated connections, nor keep clients from other addresses out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Sources remembered for their connect rate before idle ones are forgotten.
const MAX_SOURCES: usize = 65_536;

/// The budgets.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionConfig {
    /// Authenticated connections at once.
    pub max_connections: usize,
    /// Connections at once that have not sent a valid Hello yet.
    pub max_unauthenticated: usize,
    /// Of those, from one source address.
    pub per_source_unauthenticated: usize,
    /// New connections per second from one source address (on average).
    pub per_source_rate: f64,
    /// New connections from one source address in a burst above the rate.
    pub per_source_burst: f64,
}

/// Why a connection was not admitted (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The unauthenticated budget is used up.
    UnauthenticatedFull,
    /// This source holds its share of the unauthenticated budget already.
    SourcePending,
    /// This source connects faster than its rate.
    SourceRate,
    /// The authenticated budget is used up (at Hello).
    Full,
}

impl Refusal {
    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnauthenticatedFull => "unauthenticated_full",
            Self::SourcePending => "source_pending",
            Self::SourceRate => "source_rate",
            Self::Full => "full",
        }
    }

    /// Every reason.
    pub const ALL: [Refusal; 4] = [
        Self::UnauthenticatedFull,
        Self::SourcePending,
        Self::SourceRate,
        Self::Full,
    ];
}

struct Source {
    pending: usize,
    tokens: f64,
    last: Instant,
}

/// The gateway's connection budgets.
pub struct Admission {
    cfg: AdmissionConfig,
    authenticated: Arc<Semaphore>,
    unauthenticated: Arc<Semaphore>,
    sources: Mutex<HashMap<IpAddr, Source>>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission").field("cfg", &self.cfg).finish()
    }
}

impl Admission {
    /// Budgets of `cfg`.
    pub fn new(cfg: AdmissionConfig) -> Arc<Self> {
        Arc::new(Self {
            cfg,
            authenticated: Arc::new(Semaphore::new(cfg.max_connections)),
            unauthenticated: Arc::new(Semaphore::new(cfg.max_unauthenticated)),
            sources: Mutex::new(HashMap::new()),
        })
    }

    /// Admits a new connection from `ip` into the unauthenticated budget.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Pending, Refusal> {
        self.admit_at(ip, Instant::now())
    }

    fn admit_at(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Pending, Refusal> {
        let Ok(mut sources) = self.sources.lock() else {
            return Err(Refusal::UnauthenticatedFull);
        };
        if sources.len() >= MAX_SOURCES {
            sources.retain(|_, s| s.pending > 0 || now.duration_since(s.last).as_secs() < 60);
        }
        let cfg = self.cfg;
        let source = sources.entry(ip).or_insert(Source {
            pending: 0,
            tokens: cfg.per_source_burst,
            last: now,
        });
        let refill = now.duration_since(source.last).as_secs_f64() * cfg.per_source_rate;
        source.tokens = (source.tokens + refill).min(cfg.per_source_burst);
        source.last = now;
        if source.pending >= cfg.per_source_unauthenticated {
            return Err(Refusal::SourcePending);
        }
        if source.tokens < 1.0 {
            return Err(Refusal::SourceRate);
        }
        let permit = self
            .unauthenticated
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::UnauthenticatedFull)?;
        source.tokens -= 1.0;
        source.pending += 1;
        Ok(Pending {
            admission: self.clone(),
            ip,
            _permit: permit,
        })
    }

    fn release(&self, ip: IpAddr) {
        if let Ok(mut sources) = self.sources.lock()
            && let Some(s) = sources.get_mut(&ip)
        {
            s.pending = s.pending.saturating_sub(1);
        }
    }
}

/// An unauthenticated slot; released when dropped.
pub struct Pending {
    admission: Arc<Admission>,
    ip: IpAddr,
    _permit: OwnedSemaphorePermit,
}

impl Pending {
    /// The connection sent a valid Hello: trades this slot for an authenticated one.
    pub fn authenticate(self) -> Result<Slot, Refusal> {
        let permit = self
            .admission
            .authenticated
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Full)?;
        Ok(Slot { _permit: permit })
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.admission.release(self.ip);
    }
}

/// An authenticated slot; released when dropped.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn admission(unauth: usize, per_source: usize, rate: f64, burst: f64) -> Arc<Admission> {
        Admission::new(AdmissionConfig {
            max_connections: 2,
            max_unauthenticated: unauth,
            per_source_unauthenticated: per_source,
            per_source_rate: rate,
            per_source_burst: burst,
        })
    }

    #[test]
    fn one_source_cannot_take_the_whole_unauthenticated_budget() {
        let a = admission(10, 3, 100.0, 100.0);
        let bad: IpAddr = "127.0.0.1".parse().unwrap();
        let good: IpAddr = "127.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        let held: Vec<_> = (0..3).map(|_| a.admit_at(bad, t0).unwrap()).collect();
        assert_eq!(a.admit_at(bad, t0).err(), Some(Refusal::SourcePending));
        let g = a.admit_at(good, t0).unwrap();
        drop(held);
        assert!(a.admit_at(bad, t0).is_ok(), "released when dropped");
        drop(g);
    }

    #[test]
    fn the_rate_refills_and_the_budgets_are_separate() {
        let a = admission(10, 10, 1.0, 2.0);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        let p1 = a.admit_at(ip, t0).unwrap();
        let p2 = a.admit_at(ip, t0).unwrap();
        assert_eq!(a.admit_at(ip, t0).err(), Some(Refusal::SourceRate));
        let p3 = a.admit_at(ip, t0 + Duration::from_secs(1)).unwrap();
        // Two authenticated slots; the third Hello finds the gateway full.
        let s1 = p1.authenticate().unwrap();
        let _s2 = p2.authenticate().unwrap();
        assert!(matches!(p3.authenticate(), Err(Refusal::Full)));
        drop(s1);
        let p4 = a.admit_at(ip, t0 + Duration::from_secs(2)).unwrap();
        assert!(p4.authenticate().is_ok());
    }

    #[test]
    fn the_unauthenticated_budget_is_shared_by_all_sources() {
        let a = admission(2, 5, 100.0, 100.0);
        let t0 = Instant::now();
        let _a = a.admit_at("127.0.1.1".parse().unwrap(), t0).unwrap();
        let _b = a.admit_at("127.0.1.2".parse().unwrap(), t0).unwrap();
        assert_eq!(
            a.admit_at("127.0.1.3".parse().unwrap(), t0).err(),
            Some(Refusal::UnauthenticatedFull)
        );
    }
}
