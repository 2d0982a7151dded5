//! The SSRF guard for outbound targets (webhook subscriptions, provider base URLs set by users).
//!
//! A target URL must be `http`/`https` without credentials in it. Its host is resolved and
//! *every* address must be public — loopback, private, link-local, CGNAT, multicast,
//! documentation, reserved and IPv4-in-IPv6 forms of those are refused — unless it falls in an
//! operator's allow-list. [`TargetPolicy::resolve`] returns the checked addresses: the caller
//! connects to exactly those (reqwest `resolve_to_addrs`), so a DNS answer that changes between
//! the check and the connection (rebinding) cannot redirect the request.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use url::Url;

use crate::{Error, Result};

/// Which outbound targets are acceptable.
#[derive(Debug, Clone, Default)]
pub struct TargetPolicy {
    allow: Vec<IpNet>,
}

impl TargetPolicy {
    /// Public addresses only.
    pub fn public_only() -> Self {
        Self::default()
    }

    /// Also allows these networks (e.g. `10.1.0.0/16` for an internal receiver, `127.0.0.1/32`
    /// for tests).
    pub fn allowing(nets: impl IntoIterator<Item = IpNet>) -> Self {
        Self { allow: nets.into_iter().collect() }
    }

    /// Parses a comma-separated allow-list of CIDRs or single addresses (`PM_WEBHOOK_ALLOW`).
    pub fn parse_allow_list(s: &str) -> Result<Self> {
        let mut allow = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let net = item
                .parse::<IpNet>()
                .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| Error::invalid("allow_list", format!("{item:?} is not a CIDR")))?;
            allow.push(net);
        }
        Ok(Self { allow })
    }

    /// Whether `ip` may be contacted.
    pub fn permits(&self, ip: IpAddr) -> bool {
        is_public(ip) || self.allow.iter().any(|n| n.contains(&ip))
    }

    /// Checks a URL's syntax (scheme, host, no userinfo) without resolving it. `field` names
    /// the input in errors.
    pub fn parse_url(&self, field: &str, raw: &str) -> Result<Url> {
        let url = Url::parse(raw).map_err(|e| Error::invalid(field, e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::invalid(field, "scheme must be http or https"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Error::invalid(field, "must not contain credentials"));
        }
        if url.host().is_none() {
            return Err(Error::invalid(field, "must have a host"));
        }
        if let Some(url::Host::Ipv4(_) | url::Host::Ipv6(_)) = url.host() {
            let ip = literal_ip(&url).expect("host is an IP literal");
            if !self.permits(ip) {
                return Err(Error::invalid(field, format!("{ip} is not a public address")));
            }
        }
        Ok(url)
    }

    /// Resolves the URL's host and checks every address. Returns them for the caller to pin
    /// the connection to.
    pub async fn resolve(&self, url: &Url) -> Result<Vec<SocketAddr>> {
        let port = url
            .port_or_known_default()
            .ok_or_else(|| Error::TargetRefused("URL has no port".into()))?;
        let addrs: Vec<SocketAddr> = match literal_ip(url) {
            Some(ip) => vec![SocketAddr::new(ip, port)],
            None => {
                let host =
                    url.host_str().ok_or_else(|| Error::TargetRefused("URL has no host".into()))?;
                tokio::net::lookup_host((host, port))
                    .await
                    .map_err(|e| Error::TargetRefused(format!("cannot resolve {host}: {e}")))?
                    .collect()
            }
        };
        if addrs.is_empty() {
            return Err(Error::TargetRefused("host resolves to no address".into()));
        }
        // Every address, not just the first: a name answering one public and one private
        // address would otherwise reach the private one on a retry.
        if let Some(bad) = addrs.iter().find(|a| !self.permits(a.ip())) {
            return Err(Error::TargetRefused(format!(
                "{} resolves to {}, which is not a public address",
                url.host_str().unwrap_or(""),
                bad.ip()
            )));
        }
        Ok(addrs)
    }
}

fn literal_ip(url: &Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
        url::Host::Domain(_) => None,
    }
}

/// Whether `ip` is a globally routable unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(o[0] == 0                                    // "this network"
        || o[0] == 10                              // private
        || (o[0] == 100 && (o[1] & 0xC0) == 64)    // CGNAT 100.64/10
        || o[0] == 127                             // loopback
        || (o[0] == 169 && o[1] == 254)            // link-local (cloud metadata)
        || (o[0] == 172 && (o[1] & 0xF0) == 16)    // private 172.16/12
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 192 && o[1] == 0 && o[2] == 2) // TEST-NET-1
        || (o[0] == 192 && o[1] == 88 && o[2] == 99) // 6to4 relay
        || (o[0] == 192 && o[1] == 168)            // private
        || (o[0] == 198 && (o[1] & 0xFE) == 18)    // benchmarking 198.18/15
        || (o[0] == 198 && o[1] == 51 && o[2] == 100) // TEST-NET-2
        || (o[0] == 203 && o[1] == 0 && o[2] == 113) // TEST-NET-3
        || o[0] >= 224) // multicast, reserved, broadcast
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    // NAT64 (64:ff9b::/96) embeds an IPv4 address: judge that one.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        return is_public_v4(v4);
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || s[0..6] == [0, 0, 0, 0, 0, 0]         // IPv4-compatible (deprecated)
        || (s[0] & 0xFE00) == 0xFC00             // unique local fc00::/7
        || (s[0] & 0xFFC0) == 0xFE80             // link-local fe80::/10
        || (s[0] & 0xFF00) == 0xFF00             // multicast
        || (s[0] == 0x2001 && s[1] == 0x0db8)    // documentation
        || (s[0] == 0x2001 && s[1] == 0)         // Teredo (tunnels to arbitrary IPv4)
        || s[0] == 0x2002                        // 6to4 (same)
        || (s[0] == 0x0100 && s[1..4] == [0, 0, 0])) // discard-only
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn classifies_addresses() {
        for bad in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2001:db8::1",
            "ff02::1",
            "2002:7f00:1::",
        ] {
            assert!(!is_public(ip(bad)), "{bad} must be refused");
        }
        for good in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(is_public(ip(good)), "{good} must be allowed");
        }
    }

    #[test]
    fn urls_are_checked_and_allow_lists_apply() {
        let p = TargetPolicy::public_only();
        assert!(p.parse_url("url", "https://example.com/hook").is_ok());
        assert!(p.parse_url("url", "ftp://example.com/").is_err());
        assert!(p.parse_url("url", "https://user:pw@example.com/").is_err());
        assert!(p.parse_url("url", "http://127.0.0.1:8080/").is_err());
        assert!(p.parse_url("url", "http://[::1]/").is_err());
        let lo = TargetPolicy::parse_allow_list("127.0.0.0/8, ::1").unwrap();
        assert!(lo.parse_url("url", "http://127.0.0.1:8080/").is_ok());
        assert!(lo.parse_url("url", "http://[::1]/").is_ok());
        assert!(TargetPolicy::parse_allow_list("nonsense").is_err());
    }

    #[tokio::test]
    async fn resolution_checks_every_address() {
        let p = TargetPolicy::public_only();
        let url = Url::parse("http://localhost:9/").unwrap();
        assert!(matches!(p.resolve(&url).await, Err(Error::TargetRefused(_))));
        let lo = TargetPolicy::parse_allow_list("127.0.0.0/8,::1").unwrap();
        let addrs = lo.resolve(&url).await.unwrap();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()));
    }
}
