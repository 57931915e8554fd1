//! Signed stream URLs (`stream_token_secret`): a stream request must carry
//! `token=<expiry>.<signature>`, where `expiry` is a Unix time in seconds and `signature` is
//! `base64url(HMAC-SHA256(secret, "<id>|<expiry>"))` without padding. A token opens one content id
//! until its expiry; the check is constant-time. `GET /proxy/token` (admin) mints one, and a shell
//! can too (README).

use crate::error::EdgeError;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Signs and checks stream tokens with one secret.
#[derive(Clone)]
pub struct StreamTokens {
    secret: Vec<u8>,
}

impl std::fmt::Debug for StreamTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamTokens(<secret>)")
    }
}

impl StreamTokens {
    /// Tokens signed with `secret`.
    pub fn new(secret: &str) -> Self {
        StreamTokens {
            secret: secret.as_bytes().to_vec(),
        }
    }

    fn mac(&self, id: &str, expiry: u64) -> HmacSha256 {
        // HMAC takes a key of any length.
        let mut mac = match HmacSha256::new_from_slice(&self.secret) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        };
        mac.update(format!("{id}|{expiry}").as_bytes());
        mac
    }

    /// The token that opens `id` until `expiry` (Unix seconds).
    pub fn sign(&self, id: &str, expiry: u64) -> String {
        let sig = self.mac(id, expiry).finalize().into_bytes();
        format!("{expiry}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    /// Checks `token` for `id` at `now` (Unix seconds).
    pub fn check(&self, id: &str, token: Option<&str>, now: u64) -> Result<(), EdgeError> {
        let forbidden = |why: &str| Err(EdgeError::Forbidden(format!("stream token {why}")));
        let Some(token) = token else {
            return forbidden("missing: this proxy needs token=<expiry>.<signature>");
        };
        let Some((expiry, sig)) = token.split_once('.') else {
            return forbidden("malformed");
        };
        let (Ok(expiry), Ok(sig)) = (expiry.parse::<u64>(), URL_SAFE_NO_PAD.decode(sig)) else {
            return forbidden("malformed");
        };
        if self.mac(id, expiry).verify_slice(&sig).is_err() {
            return forbidden("invalid for this stream");
        }
        if expiry <= now {
            return forbidden("expired");
        }
        Ok(())
    }
}

/// Seconds since the Unix epoch now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0123456789abcdef0123456789abcdef01234567";
    const B: &str = "1123456789abcdef0123456789abcdef01234567";

    #[test]
    fn tokens_open_one_id_until_expiry() {
        let t = StreamTokens::new("s3cret");
        let tok = t.sign(A, 1000);
        assert!(t.check(A, Some(&tok), 999).is_ok());
        assert!(t.check(A, Some(&tok), 1_000).is_err(), "expired");
        assert!(t.check(B, Some(&tok), 999).is_err(), "another id");
        assert!(t.check(A, None, 999).is_err(), "missing");
        let tampered = tok.replacen("1000.", "2000.", 1);
        assert!(t.check(A, Some(&tampered), 999).is_err(), "tampered expiry");
        assert!(StreamTokens::new("other")
            .check(A, Some(&tok), 999)
            .is_err());
        assert!(t.check(A, Some("x"), 0).is_err());
        // The README's shell one-liner (openssl dgst -hmac | base64 | tr) gives the same.
        assert_eq!(tok, "1000.lALY4LIpT7ovXHKWUiiUhBf8w9SzcEY6a5-WBUR_Jfc");
    }
}
