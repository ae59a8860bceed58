//! The routing key and the dedup key of an event. Pure.

use sha2::{Digest, Sha256};

use super::UNKNOWN_ROUTING_KEY;

/// `type` with `-` replaced by `.`; `unknown` unless `type` is `[a-z0-9-]{1,64}`.
pub fn routing_key(kind: &str) -> String {
    let valid = (1..=64).contains(&kind.len())
        && kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if valid {
        kind.replace('-', ".")
    } else {
        UNKNOWN_ROUTING_KEY.to_owned()
    }
}

/// SHA-256 of `type \n message.id \n to`: equal for redeliveries, distinct per recipient.
pub fn dedup_key_for_message(kind: &str, message_id: &str, to: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(kind.as_bytes());
    hasher.update(b"\n");
    hasher.update(message_id.as_bytes());
    hasher.update(b"\n");
    hasher.update(to.as_bytes());
    lower_hex(&hasher.finalize())
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    lower_hex(&Sha256::digest(bytes))
}

/// A SHA-256 digest as 64 lowercase hex digits, encoded into a fixed buffer (`hex::encode`
/// builds its `String` one `char` at a time, several times slower).
fn lower_hex(digest: &[u8]) -> String {
    let mut digits = [0u8; 64];
    hex::encode_to_slice(digest, &mut digits).expect("a SHA-256 digest is 32 bytes");
    String::from_utf8(digits.to_vec()).expect("hex digits are ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keys_follow_the_contract() {
        assert_eq!(routing_key("message-received"), "message.received");
        assert_eq!(routing_key("message-delivered"), "message.delivered");
        assert_eq!(routing_key("x9"), "x9");
        assert_eq!(routing_key(""), "unknown");
        assert_eq!(routing_key("Message-Received"), "unknown");
        assert_eq!(routing_key("message.received"), "unknown");
        assert_eq!(routing_key("message_received"), "unknown");
        assert_eq!(routing_key(&"a".repeat(64)), "a".repeat(64));
        assert_eq!(routing_key(&"a".repeat(65)), "unknown");
        assert_eq!(routing_key("mensaje-recibido-ñ"), "unknown");
    }

    #[test]
    fn the_dedup_key_is_the_sha256_of_type_id_and_to_joined_by_newlines() {
        // printf 'message-delivered\nm1\n+15554440101' | sha256sum
        assert_eq!(
            dedup_key_for_message("message-delivered", "m1", "+15554440101"),
            "cb513baa2dc750a6f037b6de82e2783a6fc44ca816122f7a5643bec00cdbc2f5"
        );
        assert_eq!(sha256_hex(b"").len(), 64);
    }
}
