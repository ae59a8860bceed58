//! HTTP Basic authentication of Bandwidth's callbacks, compared in constant time.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use subtle::ConstantTimeEq;

use crate::settings::AuthSettings;

/// The challenge Bandwidth needs before it sends credentials.
pub const CHALLENGE: &str = "Basic realm=\"bandwidth-forwarder\"";

/// The expected `user:password` bytes, or nothing when auth is off.
#[derive(Clone)]
pub struct BasicAuth {
    expected: Option<Vec<u8>>,
}

impl BasicAuth {
    pub fn new(settings: &AuthSettings) -> Self {
        let expected = settings
            .enabled()
            .then(|| format!("{}:{}", settings.username, settings.password.expose()).into_bytes());
        Self { expected }
    }

    /// Whether callbacks need credentials at all.
    pub fn enabled(&self) -> bool {
        self.expected.is_some()
    }

    /// True when auth is off or `authorization` carries the configured credentials.
    pub fn allows(&self, authorization: Option<&[u8]>) -> bool {
        let Some(expected) = &self.expected else {
            return true;
        };
        let Some(presented) = authorization.and_then(decode_basic) else {
            return false;
        };
        presented.ct_eq(expected).into()
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
    use crate::settings::Secret;

    fn auth(user: &str, password: &str) -> BasicAuth {
        BasicAuth::new(&AuthSettings {
            username: user.into(),
            password: Secret::new(password),
        })
    }

    fn header(credentials: &str) -> String {
        format!("Basic {}", STANDARD.encode(credentials))
    }

    #[test]
    fn off_when_no_username() {
        assert!(!auth("", "").enabled());
        assert!(auth("", "").allows(None));
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
}
