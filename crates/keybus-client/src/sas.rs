//! Shared access signature tokens (wire reference §3.5), the one copy in the workspace:
//! `SharedAccessSignature sr=<url-encoded uri>&sig=<HMAC-SHA256>&se=<expiry>&skn=<key name>`.

use base64::Engine;
use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// Everything but RFC 3986 unreserved characters is encoded (upper-case hex), as the
/// Service Bus SDKs do.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encode everything but RFC 3986 unreserved characters.
pub fn url_encode(s: &str) -> String {
    utf8_percent_encode(s, UNRESERVED).to_string()
}

/// A SAS token for `uri`, signed with `key` (the key text's bytes, as the SDKs use it),
/// expiring at `expiry_unix_s`.
pub fn token(uri: &str, key_name: &str, key: &str, expiry_unix_s: u64) -> String {
    let sr = url_encode(uri);
    let sig = match Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()) {
        Ok(mut mac) => {
            mac.update(format!("{sr}\n{expiry_unix_s}").as_bytes());
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    };
    format!(
        "SharedAccessSignature sr={sr}&sig={}&se={expiry_unix_s}&skn={}",
        url_encode(&sig),
        url_encode(key_name)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_format() {
        let t = token("sb://localhost:5672/q1", "root", "secret", 1_700_003_600);
        assert!(t.starts_with("SharedAccessSignature sr=sb%3A%2F%2Flocalhost%3A5672%2Fq1&sig="));
        assert!(t.ends_with("&se=1700003600&skn=root"));
    }

    #[test]
    fn encodes_like_the_sdks() {
        assert_eq!(url_encode("a b/+=~._-Z9"), "a%20b%2F%2B%3D~._-Z9");
    }
}
