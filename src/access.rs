//! Which source addresses may post callbacks, with `X-Forwarded-For` believed only from
//! configured proxies.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::auth::BasicAuth;
use crate::settings::AuthSettings;

/// Who may post callbacks: the source allowlist and the accepted credentials. Built whole from
/// `[auth]`, and replaced whole when SIGHUP re-reads the settings.
pub struct Access {
    pub sources: SourcePolicy,
    pub auth: BasicAuth,
}

impl Access {
    /// From `[auth]`; an entry that does not parse is an error, never an open allowlist.
    pub fn new(settings: &AuthSettings) -> Result<Self, String> {
        Ok(Self {
            sources: SourcePolicy::new(&settings.allowed_sources, &settings.trusted_proxies)?,
            auth: BasicAuth::new(settings),
        })
    }
}

/// Parses CIDRs (a bare address means that one host).
pub fn parse_networks(list: &[String]) -> Result<Vec<IpNet>, String> {
    list.iter()
        .map(|entry| {
            let entry = entry.trim();
            entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("`{entry}` is not a CIDR or an address"))
        })
        .collect()
}

/// The source allowlist.
#[derive(Debug, Clone, Default)]
pub struct SourcePolicy {
    allowed: Vec<IpNet>,
    trusted_proxies: Vec<IpNet>,
}

impl SourcePolicy {
    /// From CIDR lists; an entry that does not parse is an error naming its list.
    pub fn new(allowed: &[String], trusted_proxies: &[String]) -> Result<Self, String> {
        Ok(Self {
            allowed: parse_networks(allowed).map_err(|e| format!("auth.allowed_sources: {e}"))?,
            trusted_proxies: parse_networks(trusted_proxies)
                .map_err(|e| format!("auth.trusted_proxies: {e}"))?,
        })
    }

    /// Whether an allowlist is configured at all (if not, every source is allowed).
    pub fn restricts(&self) -> bool {
        !self.allowed.is_empty()
    }

    /// True when no allowlist is configured or the client address is on it.
    pub fn allows(&self, peer: IpAddr, forwarded_for: &[&str]) -> bool {
        if !self.restricts() {
            return true;
        }
        self.client(peer, forwarded_for)
            .is_some_and(|client| self.allowed.iter().any(|net| net.contains(&client)))
    }

    /// The real client: the peer, unless the peer is a trusted proxy, in which case the
    /// right-most `X-Forwarded-For` entry that is not itself a trusted proxy. `None` when a
    /// trusted proxy sent an entry that is not an address.
    pub fn client(&self, peer: IpAddr, forwarded_for: &[&str]) -> Option<IpAddr> {
        let peer = peer.to_canonical();
        if !self.is_trusted(peer) {
            return Some(peer);
        }
        let hops: Vec<&str> = forwarded_for
            .iter()
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            client = hop.parse::<IpAddr>().ok()?.to_canonical();
            if !self.is_trusted(client) {
                break;
            }
        }
        Some(client)
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allowed: &[&str], proxies: &[&str]) -> SourcePolicy {
        let owned = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        SourcePolicy::new(&owned(allowed), &owned(proxies)).expect("valid networks")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn no_allowlist_allows_everyone() {
        assert!(policy(&[], &[]).allows(ip("203.0.113.9"), &[]));
    }

    #[test]
    fn direct_clients_are_judged_by_their_own_address() {
        let p = policy(&["198.51.100.0/24"], &[]);
        assert!(p.allows(ip("198.51.100.7"), &[]));
        assert!(!p.allows(ip("203.0.113.9"), &[]));
        // An untrusted peer cannot claim another address.
        assert!(!p.allows(ip("203.0.113.9"), &["198.51.100.7"]));
        assert!(p.allows(ip("::ffff:198.51.100.7"), &[]), "IPv4-mapped IPv6");
    }

    #[test]
    fn trusted_proxies_forward_the_client() {
        let p = policy(&["198.51.100.0/24"], &["10.0.0.0/8"]);
        assert!(p.allows(ip("10.1.2.3"), &["198.51.100.7"]));
        assert!(p.allows(ip("10.1.2.3"), &["203.0.113.1, 198.51.100.7, 10.9.9.9"]));
        // The left-most entry is the client's own claim: not believed past an untrusted hop.
        assert!(!p.allows(ip("10.1.2.3"), &["198.51.100.7, 203.0.113.1"]));
        assert!(!p.allows(ip("10.1.2.3"), &["not-an-ip"]));
        assert!(
            !p.allows(ip("10.1.2.3"), &[]),
            "the proxy itself is not on the allowlist"
        );
        assert_eq!(
            p.client(ip("10.1.2.3"), &["198.51.100.7", "10.0.0.1"]),
            Some(ip("198.51.100.7"))
        );
    }

    #[test]
    fn parses_cidrs_and_bare_addresses() {
        assert!(
            parse_networks(&[
                "10.0.0.0/8".into(),
                "2001:db8::1".into(),
                " 192.0.2.1 ".into()
            ])
            .is_ok()
        );
        assert!(parse_networks(&["10.0.0.0/40".into()]).is_err());
        assert!(parse_networks(&["example.com".into()]).is_err());
    }

    #[test]
    fn an_entry_that_does_not_parse_fails_closed() {
        let error = SourcePolicy::new(&["192.0.2.0/24".into(), "10.0.0.0/33".into()], &[])
            .expect_err("a bad CIDR is an error, not an empty allowlist");
        assert!(error.contains("auth.allowed_sources"), "{error}");
        let error = SourcePolicy::new(&[], &["proxy".into()]).expect_err("a bad proxy is an error");
        assert!(error.contains("auth.trusted_proxies"), "{error}");
    }
}
