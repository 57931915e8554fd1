//! Viewer limits: how many streams one address may watch and open, how fast it may start new
//! sessions, and how many viewers and sessions the proxy takes in all. A refused request starts
//! nothing and gets `429` with `Retry-After`; joining a session that exists is never a start.
//!
//! Counting is by [`ViewerPermit`]: a route takes one before it attaches a client and holds it
//! while the client streams; dropping it gives the place back. Session starts per address are
//! counted with `pingora-limits`' [`Rate`] over one-minute windows, read as a sliding window
//! (the previous minute weighted by how much of it still overlaps).

use super::cidr::any_contains;
use crate::sync::{Lock, ReadWrite};
use pingora_limits::rate::Rate;
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A client refused for a concurrency limit is told to retry after this long: places free up
/// as viewers leave, and players that retry at once only add load.
const CONCURRENCY_RETRY_AFTER: Duration = Duration::from_secs(10);

/// The window of `session_starts_per_ip_per_minute`.
const START_WINDOW: Duration = Duration::from_secs(60);

/// Refusals of one address are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Which limit a request hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `max_clients_per_ip`.
    ClientsPerIp,
    /// `max_sessions_per_ip`.
    SessionsPerIp,
    /// `session_starts_per_ip_per_minute`.
    SessionStartsPerIp,
    /// `max_clients`.
    Clients,
    /// `max_sessions`.
    Sessions,
}

impl Limit {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Limit::ClientsPerIp => "clients_per_ip",
            Limit::SessionsPerIp => "sessions_per_ip",
            Limit::SessionStartsPerIp => "session_starts_per_ip",
            Limit::Clients => "clients",
            Limit::Sessions => "sessions",
        }
    }

    /// What the client is told.
    pub fn describe(self, max: usize) -> String {
        match self {
            Limit::ClientsPerIp => format!("too many streams from your address (at most {max})"),
            Limit::SessionsPerIp => {
                format!("too many different streams from your address (at most {max})")
            }
            Limit::SessionStartsPerIp => {
                format!("too many new streams from your address (at most {max} per minute)")
            }
            Limit::Clients => format!("the proxy serves its maximum of {max} viewers"),
            Limit::Sessions => format!("the proxy runs its maximum of {max} streams"),
        }
    }
}

/// A refused request: the limit, its value, and when to retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The limit hit.
    pub limit: Limit,
    /// Its configured value.
    pub max: usize,
    /// For `Retry-After`.
    pub retry_after: Duration,
}

/// The limits' settings: the `limits` section of the configuration, as a reload leaves it.
pub use crate::config::Limits as LimitSettings;

#[derive(Debug, Default)]
struct State {
    /// Per address: viewers per content id.
    per_ip: HashMap<IpAddr, HashMap<String, usize>>,
    /// Viewers in all.
    clients: usize,
}

/// The limits and their counts. Shared by every request.
pub struct Limits {
    settings: std::sync::RwLock<LimitSettings>,
    state: Mutex<State>,
    starts: Rate,
    logged: Mutex<HashMap<IpAddr, Instant>>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// One admitted viewer's place; dropping it frees the place.
#[derive(Debug)]
pub struct ViewerPermit {
    limits: Arc<Limits>,
    ip: IpAddr,
    content: String,
}

impl Drop for ViewerPermit {
    fn drop(&mut self) {
        let mut st = self.limits.lock();
        st.clients = st.clients.saturating_sub(1);
        if let Some(ids) = st.per_ip.get_mut(&self.ip) {
            if let Some(n) = ids.get_mut(&self.content) {
                *n -= 1;
                if *n == 0 {
                    ids.remove(&self.content);
                }
            }
            if ids.is_empty() {
                st.per_ip.remove(&self.ip);
            }
        }
    }
}

impl Limits {
    /// Limits with nothing counted yet.
    pub fn new(settings: LimitSettings) -> Self {
        Limits {
            settings: std::sync::RwLock::new(settings),
            state: Mutex::new(State::default()),
            starts: Rate::new(START_WINDOW),
            logged: Mutex::new(HashMap::new()),
        }
    }

    /// New limits (a reload); what is counted stays counted.
    pub fn set_settings(&self, settings: LimitSettings) {
        *self.settings.write_locked() = settings;
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.locked()
    }

    /// Admits a viewer of `content` from `ip`. `starts_session` says whether no session of
    /// `content` exists (so this request would start one); `sessions_now` is how many exist.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        content: &str,
        starts_session: bool,
        sessions_now: usize,
    ) -> Result<ViewerPermit, Refusal> {
        let s = self.settings.read_locked();
        let per_ip = !any_contains(&s.limit_exempt, ip);
        let concurrency = |limit, max| Refusal {
            limit,
            max,
            retry_after: CONCURRENCY_RETRY_AFTER,
        };
        let mut st = self.lock();
        if let Some(max) = reached(s.max_clients, st.clients) {
            return Err(concurrency(Limit::Clients, max));
        }
        if let Some(max) = reached(s.max_sessions, sessions_now).filter(|_| starts_session) {
            return Err(concurrency(Limit::Sessions, max));
        }
        if per_ip {
            let ids = st.per_ip.get(&ip);
            let watching: usize = ids.map_or(0, |m| m.values().sum());
            if let Some(max) = reached(s.max_clients_per_ip, watching) {
                return Err(concurrency(Limit::ClientsPerIp, max));
            }
            let new_id = ids.is_none_or(|m| !m.contains_key(content));
            let distinct = ids.map_or(0, |m| m.len());
            if let Some(max) = reached(s.max_sessions_per_ip, distinct).filter(|_| new_id) {
                return Err(concurrency(Limit::SessionsPerIp, max));
            }
            let max_starts = s.session_starts_per_ip_per_minute.map_or(0, |m| m.get());
            if starts_session && max_starts > 0 {
                let (recent, wait) = self.starts.rate_with(&ip, |r| {
                    let weighted = r.prev_samples as f64 * (1.0 - r.current_interval_fraction)
                        + r.curr_samples as f64;
                    let left = r.interval.mul_f64(1.0 - r.current_interval_fraction);
                    (weighted, left)
                });
                if recent >= max_starts as f64 {
                    return Err(Refusal {
                        limit: Limit::SessionStartsPerIp,
                        max: max_starts,
                        retry_after: wait.max(Duration::from_secs(1)),
                    });
                }
                self.starts.observe(&ip, 1);
            }
        }
        st.clients += 1;
        *st.per_ip
            .entry(ip)
            .or_default()
            .entry(content.to_string())
            .or_default() += 1;
        Ok(ViewerPermit {
            limits: self.clone(),
            ip,
            content: content.to_string(),
        })
    }

    /// True if a refusal of `ip` should be logged now (at most once a minute per address).
    pub fn should_log(&self, ip: IpAddr, now: Instant) -> bool {
        let mut logged = self.logged.locked();
        if logged.len() > 10_000 {
            logged.retain(|_, t| now.duration_since(*t) < LOG_EVERY);
        }
        match logged.get(&ip) {
            Some(t) if now.duration_since(*t) < LOG_EVERY => false,
            _ => {
                logged.insert(ip, now);
                true
            }
        }
    }

    /// Viewers counted now (for tests and the status page).
    pub fn clients(&self) -> usize {
        self.lock().clients
    }
}

/// The limit `max` if `n` reached it (`None`: no limit, or not reached).
fn reached(max: Option<NonZeroUsize>, n: usize) -> Option<usize> {
    max.map(NonZeroUsize::get).filter(|m| n >= *m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(f: impl FnOnce(&mut LimitSettings)) -> Arc<Limits> {
        let mut s = LimitSettings {
            max_clients_per_ip: None,
            max_sessions_per_ip: None,
            session_starts_per_ip_per_minute: None,
            max_clients: None,
            max_sessions: None,
            limit_exempt: vec!["127.0.0.0/8".parse().unwrap()],
        };
        f(&mut s);
        Arc::new(Limits::new(s))
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 7));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 8));

    /// Per-address viewers: the 5th of one address is refused, another address is not, and a
    /// place frees when a permit is dropped.
    #[test]
    fn clients_per_ip() {
        let l = limits(|s| s.max_clients_per_ip = NonZeroUsize::new(4));
        let mut held: Vec<_> = (0..4).map(|_| l.admit(A, "x", false, 1).unwrap()).collect();
        let r = l.admit(A, "x", false, 1).unwrap_err();
        assert_eq!((r.limit, r.max), (Limit::ClientsPerIp, 4));
        assert!(l.admit(B, "x", false, 1).is_ok());
        held.pop();
        assert!(l.admit(A, "x", false, 1).is_ok());
        let local = "127.0.0.1".parse().unwrap();
        assert!(
            (0..10).all(|_| l.admit(local, "x", false, 1).is_ok()),
            "exempt"
        );
    }

    /// Distinct ids per address count ids, not viewers.
    #[test]
    fn sessions_per_ip() {
        let l = limits(|s| s.max_sessions_per_ip = NonZeroUsize::new(2));
        let _a = l.admit(A, "x", true, 0).unwrap();
        let _b = l.admit(A, "y", true, 1).unwrap();
        let _c = l.admit(A, "y", false, 2).unwrap();
        assert_eq!(
            l.admit(A, "z", true, 2).unwrap_err().limit,
            Limit::SessionsPerIp
        );
        assert_eq!(l.clients(), 3);
    }

    /// Starts per minute: joins are never starts; the 21st start is refused with a Retry-After
    /// within the minute.
    #[test]
    fn session_starts_per_minute() {
        let l = limits(|s| s.session_starts_per_ip_per_minute = NonZeroUsize::new(20));
        let mut held = Vec::new();
        for i in 0..20 {
            held.push(l.admit(A, &format!("id{i}"), true, i).unwrap());
        }
        held.push(l.admit(A, "id0", false, 20).unwrap());
        let r = l.admit(A, "id99", true, 20).unwrap_err();
        assert_eq!(r.limit, Limit::SessionStartsPerIp);
        assert!(r.retry_after >= Duration::from_secs(1) && r.retry_after <= START_WINDOW);
        drop(held);
        assert!(
            l.admit(A, "id98", true, 0).is_err(),
            "leaving does not reset the rate"
        );
        assert!(l.admit(B, "id98", true, 0).is_ok());
    }

    /// Global limits.
    #[test]
    fn global_limits() {
        let l = limits(|s| {
            s.max_clients = NonZeroUsize::new(2);
            s.max_sessions = NonZeroUsize::new(1);
        });
        let _a = l.admit(A, "x", true, 0).unwrap();
        assert_eq!(l.admit(B, "y", true, 1).unwrap_err().limit, Limit::Sessions);
        let _b = l.admit(B, "x", false, 1).unwrap();
        assert_eq!(l.admit(B, "x", false, 1).unwrap_err().limit, Limit::Clients);
    }

    #[test]
    fn refusals_are_logged_once_a_minute_per_address() {
        let l = limits(|_| {});
        let t = Instant::now();
        assert!(l.should_log(A, t));
        assert!(!l.should_log(A, t + Duration::from_secs(30)));
        assert!(l.should_log(B, t));
        assert!(l.should_log(A, t + Duration::from_secs(61)));
    }
}
