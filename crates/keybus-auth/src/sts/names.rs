//! Where clients reach keybus's token service: the issuer's base URL and the `Host` values it
//! answers to, from the policy's `sts.public_url` or derived from the listeners. The token
//! service mints its `iss` from these, and the validator accepts its own tokens only with an
//! `iss` built the same way.

use std::net::IpAddr;

/// Where clients reach the token service: the base URL of the issuer and of the discovery
/// document, and the `Host` values accepted at the token endpoint and discovery. Never taken
/// from a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicNames {
    /// `https://host[:port]`, no trailing slash.
    pub base: String,
    /// Lower-case `host[:port]` values a request's `Host` must equal.
    pub hosts: Vec<String>,
}

impl Default for PublicNames {
    fn default() -> Self {
        Self::from_url("https://localhost").unwrap_or(Self {
            base: "https://localhost".into(),
            hosts: vec!["localhost".into(), "localhost:443".into()],
        })
    }
}

impl PublicNames {
    /// From `https://host[:port][/]` (the policy's `sts.public_url`).
    pub fn from_url(url: &str) -> Result<Self, String> {
        let authority = url
            .strip_prefix("https://")
            .ok_or_else(|| format!("'{url}' is not an https:// URL"))?
            .trim_end_matches('/')
            .to_ascii_lowercase();
        if authority.is_empty()
            || authority.len() > 255
            || !authority
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
        {
            return Err(format!(
                "'{url}' must be https://host[:port] without a path"
            ));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p))
                if !h.is_empty()
                    && !p.is_empty()
                    && p.bytes().all(|b| b.is_ascii_digit())
                    && !p.contains(']') =>
            {
                (h.to_string(), Some(p.to_string()))
            }
            _ => (authority.clone(), None),
        };
        if host.starts_with('[') != host.ends_with(']') || host.is_empty() {
            return Err(format!("'{url}' has an invalid host"));
        }
        let mut hosts = vec![authority.clone()];
        match port.as_deref() {
            None => hosts.push(format!("{host}:443")),
            Some("443") => hosts.push(host.clone()),
            Some(_) => {}
        }
        Ok(Self {
            base: format!("https://{authority}"),
            hosts,
        })
    }

    /// The defaults for a server bound to `bind` with HTTPS on `https_port`: loopback and
    /// unspecified binds answer as `localhost` (also `127.0.0.1` and `[::1]`, the names of the
    /// development certificate); any other address as itself.
    pub fn for_bind(bind: IpAddr, https_port: u16) -> Self {
        let fmt = |ip: IpAddr| match ip {
            IpAddr::V6(v6) => format!("[{v6}]"),
            v4 => v4.to_string(),
        };
        let mut names: Vec<String> = Vec::new();
        if bind.is_loopback() || bind.is_unspecified() {
            names.extend(["localhost".into(), "127.0.0.1".into(), "[::1]".into()]);
        } else {
            names.push(fmt(bind));
        }
        let mut hosts: Vec<String> = names.iter().map(|n| format!("{n}:{https_port}")).collect();
        if https_port == 443 {
            hosts.extend(names.iter().cloned());
        }
        let first = names.first().cloned().unwrap_or_else(|| "localhost".into());
        let base = if https_port == 443 {
            format!("https://{first}")
        } else {
            format!("https://{first}:{https_port}")
        };
        Self { base, hosts }
    }

    /// The issuer (`iss`) of tokens minted for `tenant`.
    pub fn issuer(&self, tenant: &str) -> String {
        format!("{}/{tenant}/v2.0", self.base)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn public_names() {
        let lo = PublicNames::for_bind(std::net::IpAddr::from([127, 0, 0, 1]), 5443);
        assert_eq!(lo.base, "https://localhost:5443");
        assert_eq!(lo.issuer("t"), "https://localhost:5443/t/v2.0");
        assert!(lo.hosts.contains(&"127.0.0.1:5443".to_string()));
        assert!(lo.hosts.contains(&"[::1]:5443".to_string()));
        assert!(!lo.hosts.iter().any(|h| h.contains("evil")));
        let v6 = PublicNames::for_bind("fd00::1".parse().unwrap(), 443);
        assert_eq!(v6.base, "https://[fd00::1]");
        assert_eq!(v6.hosts, vec!["[fd00::1]:443", "[fd00::1]"]);
        let u = PublicNames::from_url("https://SB.example.com/").unwrap();
        assert_eq!(u.base, "https://sb.example.com");
        assert_eq!(u.hosts, vec!["sb.example.com", "sb.example.com:443"]);
        let p = PublicNames::from_url("https://sb.example.com:8443").unwrap();
        assert_eq!(p.hosts, vec!["sb.example.com:8443"]);
        for bad in [
            "http://x",
            "https://",
            "https://x/path",
            "https://x y",
            "sb.example.com",
        ] {
            assert!(PublicNames::from_url(bad).is_err(), "{bad}");
        }
    }
}
