//! Admission: every accepted socket of every listener takes a [`Permit`] before anything is
//! read from it, and gives it back when it closes (RAII).
//!
//! # Budgets
//! - AMQP sockets (plain, TLS, WebSocket) count against `max_connections`. A socket is
//!   *unauthenticated* from accept until its first valid token (or a verified client
//!   certificate): unauthenticated sockets have their own smaller budget
//!   (`max_unauthenticated_connections`) and one per source address
//!   (`max_unauthenticated_per_address`, IPv6 counted per /64). So however many token-less
//!   sockets arrive, `max_connections - max_unauthenticated_connections` slots stay for
//!   authenticated clients.
//! - HTTP sockets (plain and TLS) count against `max_http_connections`; past it, a small
//!   reserve (`http_reserved_connections`) still serves `/health`, `/ready` and `/metrics`
//!   only, so probes answer while everything else is saturated.
//! - All of it fits below the process's descriptor limit ([`raise_nofile`] raises the soft
//!   limit to the hard one at start); configured values above it are lowered, with a warning.
//!
//! A refused socket is closed at once (an AMQP one gets our header, `open` and `close` with
//! `amqp:resource-limit-exceeded` naming the budget, written without waiting).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::config::Limits;

/// Descriptors kept out of every budget: store files, the audit log, listeners, reloads.
pub const HEADROOM: u64 = 128;
/// The automatic `max_connections` never exceeds this, however high the descriptor limit.
pub const AUTO_MAX_CONNECTIONS: usize = 10_000;

/// The listener a socket arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Listener {
    Amqp,
    Amqps,
    Http,
    Https,
}

impl Listener {
    pub fn as_str(self) -> &'static str {
        match self {
            Listener::Amqp => "amqp",
            Listener::Amqps => "amqps",
            Listener::Http => "http",
            Listener::Https => "https",
        }
    }

    fn is_http(self) -> bool {
        matches!(self, Listener::Http | Listener::Https)
    }
}

/// Why a socket was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// `max_connections` AMQP sockets are open.
    Connections,
    /// `max_unauthenticated_connections` sockets have no token yet.
    Unauthenticated,
    /// This source address (or IPv6 /64) has `max_unauthenticated_per_address` sockets
    /// without a token.
    PerAddress,
    /// `max_http_connections` plus the probe reserve are open.
    Http,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Connections => "max_connections",
            Refusal::Unauthenticated => "max_unauthenticated_connections",
            Refusal::PerAddress => "max_unauthenticated_per_address",
            Refusal::Http => "max_http_connections",
        }
    }
}

/// The budgets in force: the configured ones, automatic ones filled in, all within the
/// descriptor limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budgets {
    pub max_connections: usize,
    pub max_unauthenticated: usize,
    pub max_unauthenticated_per_address: usize,
    pub max_http: usize,
    pub http_reserved: usize,
    /// The process's soft RLIMIT_NOFILE when the broker started (`None`: unknown).
    pub nofile: Option<u64>,
}

impl Budgets {
    /// Fill in automatic values (0) and fit everything below `nofile` minus [`HEADROOM`].
    pub fn new(limits: &Limits, nofile: Option<u64>) -> Budgets {
        let max_http = limits.max_http_connections.max(1);
        let http_reserved = limits.http_reserved_connections.max(1);
        let amqp_fds = nofile.map(|n| {
            usize::try_from(n.saturating_sub(HEADROOM))
                .unwrap_or(usize::MAX)
                .saturating_sub(max_http + http_reserved)
                .max(1)
        });
        let mut max_connections = match limits.max_connections {
            0 => amqp_fds
                .unwrap_or(AUTO_MAX_CONNECTIONS)
                .min(AUTO_MAX_CONNECTIONS),
            n => n,
        };
        if let Some(fds) = amqp_fds
            && max_connections > fds
        {
            tracing::warn!(
                configured = max_connections,
                allowed = fds,
                nofile = ?nofile,
                "limits.max_connections is above what the descriptor limit allows; lowered"
            );
            max_connections = fds;
        }
        let max_unauthenticated = match limits.max_unauthenticated_connections {
            0 => (max_connections / 4).max(1),
            n => n,
        }
        .min(max_connections);
        let max_unauthenticated_per_address = match limits.max_unauthenticated_per_address {
            0 => (max_unauthenticated / 4).max(1),
            n => n,
        }
        .min(max_unauthenticated);
        Budgets {
            max_connections,
            max_unauthenticated,
            max_unauthenticated_per_address,
            max_http,
            http_reserved,
            nofile,
        }
    }
}

/// Raise the soft RLIMIT_NOFILE to the hard limit; returns the soft limit now in force.
pub fn raise_nofile() -> Option<u64> {
    #[cfg(unix)]
    {
        let (soft, hard) = rlimit::Resource::NOFILE.get().ok()?;
        if soft < hard {
            match rlimit::increase_nofile_limit(hard) {
                Ok(now) => {
                    tracing::info!(
                        from = soft,
                        to = now,
                        "raised the open-file limit (RLIMIT_NOFILE)"
                    );
                    return Some(now);
                }
                Err(e) => tracing::warn!(%e, soft, hard, "could not raise the open-file limit"),
            }
        }
        Some(soft)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The soft RLIMIT_NOFILE in force.
pub fn nofile() -> Option<u64> {
    #[cfg(unix)]
    {
        rlimit::Resource::NOFILE.get().ok().map(|(soft, _)| soft)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Source addresses are counted per IPv4 address and per IPv6 /64.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[derive(Debug, Default)]
struct State {
    amqp: usize,
    unauthenticated: usize,
    authenticated: usize,
    http: usize,
    http_reserved: usize,
    per_address: HashMap<IpAddr, usize>,
    accepted: HashMap<Listener, u64>,
    refused: HashMap<(Listener, Refusal), u64>,
}

/// Open sockets by stage, and accept/refuse counters (for `/metrics`).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub unauthenticated: usize,
    pub authenticated: usize,
    pub http: usize,
    pub http_reserved: usize,
    pub accepted: Vec<(&'static str, u64)>,
    pub refused: Vec<(&'static str, &'static str, u64)>,
}

/// The stage deadlines, from `[limits]`.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// Protocol header, SASL and the TLS handshake; also the first byte of any socket.
    pub handshake: Duration,
    /// From the end of the handshake to `open`.
    pub open: Duration,
    /// From `open` to the first valid token.
    pub token: Duration,
    /// A WebSocket upgrade request, from its first byte to the answer.
    pub websocket: Duration,
    /// An HTTP request head.
    pub http_header: Duration,
    /// An HTTP request body.
    pub http_body: Duration,
}

impl Deadlines {
    pub fn new(l: &Limits) -> Deadlines {
        let ms = Duration::from_millis;
        Deadlines {
            handshake: ms(l.handshake_timeout_ms),
            open: ms(l.open_timeout_ms),
            token: ms(l.token_timeout_ms),
            websocket: ms(l.websocket_upgrade_timeout_ms),
            http_header: ms(l.http_header_timeout_ms),
            http_body: ms(l.http_body_timeout_ms),
        }
    }
}

/// The admission control of one broker.
#[derive(Debug)]
pub struct Admission {
    pub budgets: Budgets,
    pub deadlines: Deadlines,
    state: Mutex<State>,
}

impl Admission {
    pub fn new(limits: &Limits, nofile: Option<u64>) -> Arc<Admission> {
        Arc::new(Admission {
            budgets: Budgets::new(limits, nofile),
            deadlines: Deadlines::new(limits),
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admit an accepted socket, or say which budget is full. An AMQP socket starts
    /// unauthenticated; an HTTP socket past `max_http_connections` gets a probe-only permit.
    pub fn admit(self: &Arc<Self>, listener: Listener, peer: IpAddr) -> Result<Permit, Refusal> {
        let b = &self.budgets;
        let mut st = self.lock();
        let result = if listener.is_http() {
            if st.http < b.max_http {
                st.http += 1;
                Ok(Kind::Http)
            } else if st.http_reserved < b.http_reserved {
                st.http_reserved += 1;
                Ok(Kind::Probe)
            } else {
                Err(Refusal::Http)
            }
        } else {
            let key = address_key(peer);
            let from_addr = st.per_address.get(&key).copied().unwrap_or(0);
            if st.amqp >= b.max_connections {
                Err(Refusal::Connections)
            } else if st.unauthenticated >= b.max_unauthenticated {
                Err(Refusal::Unauthenticated)
            } else if from_addr >= b.max_unauthenticated_per_address {
                Err(Refusal::PerAddress)
            } else {
                st.amqp += 1;
                st.unauthenticated += 1;
                st.per_address.insert(key, from_addr + 1);
                Ok(Kind::Amqp {
                    addr: key,
                    authenticated: AtomicBool::new(false),
                })
            }
        };
        match result {
            Ok(kind) => {
                *st.accepted.entry(listener).or_default() += 1;
                Ok(Permit {
                    admission: self.clone(),
                    kind,
                })
            }
            Err(r) => {
                *st.refused.entry((listener, r)).or_default() += 1;
                Err(r)
            }
        }
    }

    fn leave_unauthenticated(st: &mut State, addr: IpAddr) {
        st.unauthenticated = st.unauthenticated.saturating_sub(1);
        if let Some(n) = st.per_address.get_mut(&addr) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.per_address.remove(&addr);
            }
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let st = self.lock();
        let mut accepted: Vec<_> = st.accepted.iter().map(|(l, n)| (l.as_str(), *n)).collect();
        accepted.sort();
        let mut refused: Vec<_> = st
            .refused
            .iter()
            .map(|((l, r), n)| (l.as_str(), r.as_str(), *n))
            .collect();
        refused.sort();
        Snapshot {
            unauthenticated: st.unauthenticated,
            authenticated: st.authenticated,
            http: st.http,
            http_reserved: st.http_reserved,
            accepted,
            refused,
        }
    }
}

#[derive(Debug)]
enum Kind {
    Amqp {
        addr: IpAddr,
        authenticated: AtomicBool,
    },
    Http,
    /// An HTTP socket on the reserve: `/health`, `/ready` and `/metrics` only.
    Probe,
}

/// One admitted socket; dropping it frees its slot.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
    kind: Kind,
}

impl Permit {
    /// The socket put its first valid token: it leaves the unauthenticated budgets.
    pub fn authenticate(&self) {
        if let Kind::Amqp {
            addr,
            authenticated,
        } = &self.kind
            && !authenticated.swap(true, Ordering::SeqCst)
        {
            let mut st = self.admission.lock();
            Admission::leave_unauthenticated(&mut st, *addr);
            st.authenticated += 1;
        }
    }

    /// Whether this HTTP socket is on the probe reserve.
    pub fn probe_only(&self) -> bool {
        matches!(self.kind, Kind::Probe)
    }

    pub fn deadlines(&self) -> Deadlines {
        self.admission.deadlines
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut st = self.admission.lock();
        match &self.kind {
            Kind::Amqp {
                addr,
                authenticated,
            } => {
                st.amqp = st.amqp.saturating_sub(1);
                if authenticated.load(Ordering::SeqCst) {
                    st.authenticated = st.authenticated.saturating_sub(1);
                } else {
                    Admission::leave_unauthenticated(&mut st, *addr);
                }
            }
            Kind::Http => st.http = st.http.saturating_sub(1),
            Kind::Probe => st.http_reserved = st.http_reserved.saturating_sub(1),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn limits(max: usize, unauth: usize, per: usize) -> Limits {
        Limits {
            max_connections: max,
            max_unauthenticated_connections: unauth,
            max_unauthenticated_per_address: per,
            ..Limits::default()
        }
    }

    #[test]
    fn unauthenticated_sockets_never_take_authenticated_slots() {
        let a = Admission::new(&limits(4, 2, 2), None);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let p1 = a.admit(Listener::Amqp, ip).unwrap();
        let _p2 = a.admit(Listener::Amqp, ip).unwrap();
        assert_eq!(
            a.admit(Listener::Amqp, ip).unwrap_err(),
            Refusal::Unauthenticated
        );
        p1.authenticate();
        let p3 = a.admit(Listener::Amqp, ip).unwrap();
        p3.authenticate();
        let _p4 = a.admit(Listener::Amqp, ip).unwrap();
        assert_eq!(
            a.admit(Listener::Amqp, ip).unwrap_err(),
            Refusal::Connections
        );
        drop(p3);
        // The freed slot was an authenticated one: the unauthenticated budget is still full.
        assert!(a.admit(Listener::Amqp, ip).is_err());
        assert!(
            a.admit(Listener::Amqp, "10.0.0.2".parse().unwrap())
                .is_err()
        );
        let s = a.snapshot();
        assert_eq!((s.authenticated, s.unauthenticated), (1, 2));
    }

    #[test]
    fn per_address_and_ipv6_prefix() {
        let a = Admission::new(&limits(100, 10, 1), None);
        let x: IpAddr = "2001:db8::1".parse().unwrap();
        let y: IpAddr = "2001:db8::2".parse().unwrap();
        let z: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        let _p = a.admit(Listener::Amqp, x).unwrap();
        assert_eq!(a.admit(Listener::Amqp, y).unwrap_err(), Refusal::PerAddress);
        assert!(a.admit(Listener::Amqps, z).is_ok());
    }

    #[test]
    fn http_reserve_is_probe_only() {
        let l = Limits {
            max_http_connections: 1,
            http_reserved_connections: 1,
            ..Limits::default()
        };
        let a = Admission::new(&l, None);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let p = a.admit(Listener::Http, ip).unwrap();
        assert!(!p.probe_only());
        let q = a.admit(Listener::Http, ip).unwrap();
        assert!(q.probe_only());
        assert_eq!(a.admit(Listener::Http, ip).unwrap_err(), Refusal::Http);
    }

    #[test]
    fn budgets_fit_the_descriptor_limit() {
        let b = Budgets::new(&Limits::default(), Some(1024));
        assert!(
            b.max_connections + b.max_http + b.http_reserved + HEADROOM as usize <= 1024,
            "{b:?}"
        );
        let b = Budgets::new(&limits(5000, 0, 0), Some(1024));
        assert!(b.max_connections < 1024);
        let b = Budgets::new(&Limits::default(), Some(1 << 20));
        assert_eq!(b.max_connections, AUTO_MAX_CONNECTIONS);
    }
}
