//! The client's address behind reverse proxies (`PM_TRUSTED_PROXIES`).
//!
//! Per-IP rate limits and login throttling key on the client's address. Behind nginx or a load
//! balancer the TCP peer is the proxy, so every client would share one bucket; the proxy's
//! `X-Forwarded-For` names the client, but any client can send that header too. The rule
//! (the same as nginx's `real_ip_recursive`): consult `X-Forwarded-For` only when the peer is a
//! trusted proxy, walk it from the right skipping trusted proxies, and take the first address
//! that is not one — a client can prepend whatever it likes, but not change what the trusted
//! hops appended. An unparsable entry ends the walk at the last trusted hop.
//!
//! [`resolve`] runs before the rate limiter and stores the result as a [`RemoteIp`] extension;
//! without connection info (in-process tests) there is none.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use ipnet::IpNet;

/// Networks whose `X-Forwarded-For` is believed. Empty (the default): the peer is the client.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Arc<Vec<IpNet>>);

impl TrustedProxies {
    /// Parses comma-separated CIDRs or addresses (`127.0.0.1, 10.0.0.0/8, ::1`); the error names
    /// the bad entry.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let net = entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("'{entry}' is not an IP address or CIDR"))?;
            nets.push(net);
        }
        Ok(Self(Arc::new(nets)))
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client's address for a request from `peer` with `headers`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let mut client = peer;
        // Several headers count as one list, in order (RFC 9110 §5.3).
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        for hop in hops.iter().rev() {
            match hop.parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !self.trusts(ip) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        client
    }
}

/// The client's address as resolved by [`resolve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteIp(pub IpAddr);

/// Middleware: stores the request's [`RemoteIp`].
pub async fn resolve(
    State(trusted): State<TrustedProxies>,
    mut req: Request,
    next: Next,
) -> Response {
    if let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>() {
        let ip = trusted.client_ip(peer.ip(), req.headers());
        req.extensions_mut().insert(RemoteIp(ip));
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = TrustedProxies::parse("127.0.0.1, 10.0.0.0/8").unwrap();
        let xff = headers(&["203.0.113.7"]);
        // Direct client: its own header is ignored.
        assert_eq!(trusted.client_ip(ip("198.51.100.1"), &xff), ip("198.51.100.1"));
        // Through the proxy.
        assert_eq!(trusted.client_ip(ip("127.0.0.1"), &xff), ip("203.0.113.7"));
        // A spoofed entry prepended by the client does not win over what the proxies appended.
        let chain = headers(&["1.2.3.4, 203.0.113.7", "10.1.2.3"]);
        assert_eq!(trusted.client_ip(ip("127.0.0.1"), &chain), ip("203.0.113.7"));
        // Garbage ends the walk at the last trusted hop.
        assert_eq!(
            trusted.client_ip(ip("127.0.0.1"), &headers(&["nonsense, 10.0.0.9"])),
            ip("10.0.0.9")
        );
        // No header: the proxy itself.
        assert_eq!(trusted.client_ip(ip("127.0.0.1"), &HeaderMap::new()), ip("127.0.0.1"));
        // IPv4-mapped IPv6 peers count as their IPv4 address.
        assert_eq!(trusted.client_ip(ip("::ffff:127.0.0.1"), &xff), ip("203.0.113.7"));
        // Nothing trusted by default.
        assert_eq!(TrustedProxies::default().client_ip(ip("127.0.0.1"), &xff), ip("127.0.0.1"));
    }

    #[test]
    fn bad_entries_are_named() {
        let err = TrustedProxies::parse("10.0.0.0/8, proxy.local").unwrap_err();
        assert!(err.contains("proxy.local"), "{err}");
        assert!(TrustedProxies::parse("").unwrap().0.is_empty());
    }
}
