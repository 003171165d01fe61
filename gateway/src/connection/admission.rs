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
    /// The user has its most connections on this edge (at Hello).
    UserConnections,
}

impl Refusal {
    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnauthenticatedFull => "unauthenticated_full",
            Self::SourcePending => "source_pending",
            Self::SourceRate => "source_rate",
            Self::Full => "full",
            Self::UserConnections => "user_connections",
        }
    }

    /// Every reason.
    pub const ALL: [Refusal; 5] = [
        Self::UnauthenticatedFull,
        Self::SourcePending,
        Self::SourceRate,
        Self::Full,
        Self::UserConnections,
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

/// Per-user bounds across all of a user's connections on this edge.
#[derive(Debug, Clone, Copy)]
pub struct UserLimitsConfig {
    /// Connections one user may have open here; the newest beyond it is refused.
    pub max_connections: usize,
    /// Sends per second of one user, all its connections together (0: unlimited).
    pub send_rate: f64,
    /// Sends in a burst above that rate.
    pub send_burst: f64,
}

struct User {
    connections: usize,
    sends: f64,
    last: Instant,
}

/// The users connected to this edge, each with its connection count and send budget
/// (an entry lives while the user has a connection here).
pub struct Users {
    cfg: UserLimitsConfig,
    users: Mutex<HashMap<petrel_core::UserId, User>>,
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Users").field("cfg", &self.cfg).finish()
    }
}

impl Users {
    /// Bounds of `cfg`.
    pub fn new(cfg: UserLimitsConfig) -> Arc<Self> {
        Arc::new(Self {
            cfg,
            users: Mutex::new(HashMap::new()),
        })
    }

    /// The bounds.
    pub fn limits(&self) -> UserLimitsConfig {
        self.cfg
    }

    /// A connection of `user` joins, unless the user has its most already. The newest
    /// is refused rather than the oldest closed: a client that reconnects in a loop then
    /// backs off instead of pushing its own other devices out, and a dead connection
    /// frees its place by the idle timeout.
    pub fn join(self: &Arc<Self>, user: &petrel_core::UserId) -> Result<UserSlot, Refusal> {
        let Ok(mut users) = self.users.lock() else {
            return Err(Refusal::UserConnections);
        };
        let cfg = self.cfg;
        let u = users.entry(user.clone()).or_insert(User {
            connections: 0,
            sends: cfg.send_burst,
            last: Instant::now(),
        });
        if u.connections >= cfg.max_connections {
            return Err(Refusal::UserConnections);
        }
        u.connections += 1;
        Ok(UserSlot {
            users: self.clone(),
            user: user.clone(),
        })
    }

    /// Takes one send from `user`'s budget; false: over the user's rate.
    pub fn take_send(&self, user: &petrel_core::UserId) -> bool {
        self.take_send_at(user, Instant::now())
    }

    fn take_send_at(&self, user: &petrel_core::UserId, now: Instant) -> bool {
        if self.cfg.send_rate <= 0.0 {
            return true;
        }
        let Ok(mut users) = self.users.lock() else {
            return false;
        };
        let Some(u) = users.get_mut(user) else {
            return true;
        };
        let refill = now.saturating_duration_since(u.last).as_secs_f64() * self.cfg.send_rate;
        u.sends = (u.sends + refill).min(self.cfg.send_burst);
        u.last = now;
        if u.sends >= 1.0 {
            u.sends -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A user's connection counted on this edge; uncounted when dropped.
pub struct UserSlot {
    users: Arc<Users>,
    user: petrel_core::UserId,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        if let Ok(mut users) = self.users.users.lock()
            && let Some(u) = users.get_mut(&self.user)
        {
            u.connections = u.connections.saturating_sub(1);
            if u.connections == 0 {
                users.remove(&self.user);
            }
        }
    }
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

    #[test]
    fn a_user_has_a_connection_cap_and_one_send_budget_for_all_its_connections() {
        let users = Users::new(UserLimitsConfig {
            max_connections: 2,
            send_rate: 1.0,
            send_burst: 3.0,
        });
        let alice = petrel_core::UserId::parse("alice").unwrap();
        let a1 = users.join(&alice).unwrap();
        let a2 = users.join(&alice).unwrap();
        assert!(matches!(users.join(&alice), Err(Refusal::UserConnections)));
        let t0 = Instant::now();
        let sent = (0..10).filter(|_| users.take_send_at(&alice, t0)).count();
        assert_eq!(sent, 3, "one burst for both connections");
        assert!(users.take_send_at(&alice, t0 + Duration::from_secs(1)));
        drop(a1);
        let a3 = users.join(&alice).unwrap();
        drop((a2, a3));
        assert!(
            users.users.lock().unwrap().is_empty(),
            "forgotten with its last connection"
        );
    }
}
