//! HTTP Basic authentication of Bandwidth's callbacks, compared in constant time.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use subtle::{Choice, ConstantTimeEq};

use crate::settings::AuthSettings;

/// The challenge Bandwidth needs before it sends credentials.
pub const CHALLENGE: &str = "Basic realm=\"bandwidth-forwarder\"";

/// Every accepted `user:password`, as bytes; empty when auth is off.
#[derive(Clone)]
pub struct BasicAuth {
    accepted: Vec<Vec<u8>>,
}

impl BasicAuth {
    pub fn new(settings: &AuthSettings) -> Self {
        let accepted = settings
            .all_credentials()
            .iter()
            .map(|c| format!("{}:{}", c.username, c.password.expose()).into_bytes())
            .collect();
        Self { accepted }
    }

    /// True when auth is off or `authorization` carries one of the accepted credentials.
    /// Every credential is compared, in constant time, whatever matches.
    pub fn allows(&self, authorization: Option<&[u8]>) -> bool {
        if self.accepted.is_empty() {
            return true;
        }
        let Some(presented) = authorization.and_then(decode_basic) else {
            return false;
        };
        self.accepted
            .iter()
            .fold(Choice::from(0), |matched, accepted| {
                matched | presented.ct_eq(accepted)
            })
            .into()
    }
}

/// The decoded `user:password` of a `Basic` header, if it is one.
fn decode_basic(header: &[u8]) -> Option<Vec<u8>> {
    let header = std::str::from_utf8(header).ok()?.trim();
    let (scheme, token) = header.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    STANDARD.decode(token.trim()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{Credential, Secret};

    fn auth(user: &str, password: &str) -> BasicAuth {
        BasicAuth::new(&AuthSettings {
            username: user.into(),
            password: Secret::new(password),
            ..AuthSettings::default()
        })
    }

    fn header(credentials: &str) -> String {
        format!("Basic {}", STANDARD.encode(credentials))
    }

    #[test]
    fn off_when_no_username() {
        assert!(auth("", "").allows(None));
        assert!(auth("", "").allows(Some(b"Basic anything")));
    }

    #[test]
    fn accepts_only_the_configured_pair() {
        let a = auth("bw", "pa:ss");
        assert!(a.allows(Some(header("bw:pa:ss").as_bytes())));
        assert!(a.allows(Some(
            format!("basic {}", STANDARD.encode("bw:pa:ss")).as_bytes()
        )));
        assert!(!a.allows(None));
        assert!(!a.allows(Some(header("bw:pa").as_bytes())));
        assert!(!a.allows(Some(header("bw:pa:ss ").as_bytes())));
        assert!(!a.allows(Some(header("BW:pa:ss").as_bytes())));
        assert!(!a.allows(Some(b"Bearer abc")));
        assert!(!a.allows(Some(b"Basic !!!not-base64")));
        assert!(!a.allows(Some(b"Basic")));
        assert!(!a.allows(Some(b"\xff\xfe")));
    }

    #[test]
    fn accepts_every_configured_credential_during_a_rotation() {
        let a = BasicAuth::new(&AuthSettings {
            username: "old".into(),
            password: Secret::new("one"),
            credentials: vec![Credential {
                username: "new".into(),
                password: Secret::new("two"),
            }],
            ..AuthSettings::default()
        });
        assert!(a.allows(Some(header("old:one").as_bytes())));
        assert!(a.allows(Some(header("new:two").as_bytes())));
        assert!(!a.allows(Some(header("old:two").as_bytes())));
        assert!(!a.allows(Some(header("new:one").as_bytes())));
    }
}
