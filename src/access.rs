//! Which source addresses may post callbacks, with `X-Forwarded-For` believed only from
//! configured proxies.

use std::net::IpAddr;

use crate::auth::BasicAuth;
use crate::settings::{AuthSettings, Network};

/// Who may post callbacks: the source allowlist and the accepted credentials. Built whole from
/// `[auth]`, and replaced whole when SIGHUP re-reads the settings.
pub struct Access {
    pub sources: SourcePolicy,
    pub auth: BasicAuth,
}

impl Access {
    /// From `[auth]`, whose networks were parsed when the settings loaded: an entry that
    /// means nothing never gets this far, so it cannot turn into an open allowlist.
    pub fn new(settings: &AuthSettings) -> Self {
        Self {
            sources: SourcePolicy::new(&settings.allowed_sources, &settings.trusted_proxies),
            auth: BasicAuth::new(settings),
        }
    }
}

/// The source allowlist.
#[derive(Debug, Clone, Default)]
pub struct SourcePolicy {
    allowed: Vec<Network>,
    trusted_proxies: Vec<Network>,
}

impl SourcePolicy {
    pub fn new(allowed: &[Network], trusted_proxies: &[Network]) -> Self {
        Self {
            allowed: allowed.to_vec(),
            trusted_proxies: trusted_proxies.to_vec(),
        }
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
        let parsed = |list: &[&str]| {
            list.iter()
                .map(|s| s.parse().expect("a network"))
                .collect::<Vec<Network>>()
        };
        SourcePolicy::new(&parsed(allowed), &parsed(proxies))
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
        for entry in ["10.0.0.0/8", "2001:db8::1", " 192.0.2.1 "] {
            assert!(entry.parse::<Network>().is_ok(), "{entry}");
        }
        for entry in ["10.0.0.0/40", "10.0.0.0/33", "example.com", "proxy", ""] {
            let error = entry.parse::<Network>().expect_err(entry);
            assert!(error.contains("not a CIDR or an address"), "{error}");
        }
    }
}
