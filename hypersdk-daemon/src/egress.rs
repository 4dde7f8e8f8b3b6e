//! Where the daemon may send requests that its users aim (webhooks).
//!
//! A webhook URL comes from an operator, who must not be able to make the
//! daemon reach what only the daemon's host can reach: a cloud metadata
//! service (`169.254.169.254`), a database on loopback, the private network
//! behind it. So a target whose address is loopback, unspecified, private
//! (RFC 1918, `fc00::/7`), shared (`100.64.0.0/10`), link-local,
//! multicast, broadcast or reserved is refused, unless the configuration
//! allow-lists it (`webhooks.allow_private: [CIDR, …]`). IPv4 addresses
//! inside IPv6 ones (`::ffff:a.b.c.d`, `64:ff9b::/96`) are judged as IPv4.
//!
//! The check runs when a webhook is registered (its host resolved) and
//! again at every connection: the HTTP client resolves names through
//! [`GuardedResolver`], which drops refused addresses, so a name that
//! resolved to a public address at registration and to an internal one
//! later (DNS rebinding) reaches nothing. Redirects are not followed and no
//! proxy from the environment is used.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

/// Why `ip` is internal, or None for a public address.
pub fn internal_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_range(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4_range(v4);
            }
            let s = v6.segments();
            // NAT64 (64:ff9b::/96) carries an IPv4 address in its last 32 bits.
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                let v4 =
                    Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
                return v4_range(v4).or(Some("NAT64"));
            }
            v6_range(v6)
        }
    }
}

fn v4_range(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    Some(match o {
        [0, ..] => "unspecified (0.0.0.0/8)",
        [127, ..] => "loopback (127.0.0.0/8)",
        [10, ..] => "private (10.0.0.0/8)",
        [172, b, ..] if (16..32).contains(&b) => "private (172.16.0.0/12)",
        [192, 168, ..] => "private (192.168.0.0/16)",
        [169, 254, ..] => "link-local (169.254.0.0/16)",
        [100, b, ..] if (64..128).contains(&b) => "shared address space (100.64.0.0/10)",
        [192, 0, 0, _] => "IETF protocol assignments (192.0.0.0/24)",
        [198, b, ..] if b == 18 || b == 19 => "benchmarking (198.18.0.0/15)",
        [a, ..] if a >= 224 => "multicast, reserved or broadcast (224.0.0.0/3)",
        _ => return None,
    })
}

fn v6_range(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    Some(if ip.is_unspecified() {
        "unspecified (::)"
    } else if ip.is_loopback() {
        "loopback (::1)"
    } else if s[0] & 0xfe00 == 0xfc00 {
        "unique local (fc00::/7)"
    } else if s[0] & 0xffc0 == 0xfe80 {
        "link-local (fe80::/10)"
    } else if s[0] & 0xffc0 == 0xfec0 {
        "site-local (fec0::/10)"
    } else if s[0] & 0xff00 == 0xff00 {
        "multicast (ff00::/8)"
    } else if s[0..6] == [0, 0, 0, 0, 0, 0] {
        "IPv4-compatible (::/96)"
    } else {
        return None;
    })
}

/// Which addresses may be reached: public ones, and internal ones inside an
/// allow-listed network.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    allow: Vec<IpNet>,
}

impl Policy {
    /// A policy allowing the internal networks `allow` (CIDR strings; a bare
    /// address is one host); the message names a bad entry.
    pub fn new(allow: &[String]) -> Result<Policy, String> {
        let allow = allow
            .iter()
            .map(|a| {
                a.parse::<IpNet>()
                    .or_else(|_| a.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("webhooks.allow_private: '{a}' is not a CIDR (like 10.1.2.0/24) or an address"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Policy { allow })
    }

    /// Ok if `ip` may be reached, else why not.
    pub fn check(&self, ip: IpAddr) -> Result<(), String> {
        match internal_range(ip) {
            None => Ok(()),
            Some(_) if self.allow.iter().any(|n| n.contains(&ip)) => Ok(()),
            Some(range) => Err(format!(
                "{ip} is {range}: internal targets are refused unless webhooks.allow_private lists them"
            )),
        }
    }

    /// Checks a URL's host: an address literal directly, a name by
    /// resolving it (every address it resolves to must be allowed).
    pub async fn check_url(&self, url: &reqwest::Url) -> Result<(), String> {
        let host = url.host_str().ok_or("the URL has no host")?;
        let port = url.port_or_known_default().unwrap_or(80);
        match literal(host) {
            Some(ip) => self.check(ip),
            None => {
                for a in resolve(host, port).await? {
                    self.check(a.ip())
                        .map_err(|e| format!("{host} resolves to {e}"))?;
                }
                Ok(())
            }
        }
    }
}

/// The address of a URL host written as one (`10.0.0.1`, `[::1]`).
pub fn literal(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// Resolves `name` with a bound on time.
async fn resolve(name: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let found = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::lookup_host((name, port)),
    )
    .await
    .map_err(|_| format!("resolving {name} took more than 10 s"))?
    .map_err(|e| format!("cannot resolve {name}: {e}"))?
    .collect::<Vec<_>>();
    if found.is_empty() {
        return Err(format!("{name} resolves to no address"));
    }
    Ok(found)
}

/// The HTTP client's resolver: the system's, less every refused address.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    policy: Arc<Policy>,
}

impl GuardedResolver {
    /// A resolver applying `policy`.
    pub fn new(policy: Arc<Policy>) -> Self {
        GuardedResolver { policy }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let name = name.as_str().to_string();
        Box::pin(async move {
            let found = resolve(&name, 0).await?;
            let mut refused = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match policy.check(a.ip()) {
                    Ok(()) => true,
                    Err(e) => {
                        refused.get_or_insert(e);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let why = refused.unwrap_or_default();
                return Err(format!("refused: {name} resolves to {why}").into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A URL as it may be shown to anyone who can list webhooks: a password
/// in it replaced by `***`, query values by `***`.
pub fn redact_url(raw: &str) -> String {
    let Ok(mut url) = reqwest::Url::parse(raw) else {
        return "<unparsable URL>".into();
    };
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, _)| (k.into_owned(), "***".to_string()))
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_ranges() {
        for ip in [
            "127.0.0.1",
            "127.9.9.9",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "ff02::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(internal_range(ip).is_some(), "{ip} should be internal");
        }
        for ip in ["8.8.8.8", "172.32.0.1", "1.1.1.1", "2001:4860:4860::8888"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(internal_range(ip).is_none(), "{ip} should be public");
        }
    }

    #[test]
    fn allow_list() {
        let p = Policy::new(&["127.0.0.1/32".into(), "10.0.0.0/8".into()]).unwrap();
        assert!(p.check("127.0.0.1".parse().unwrap()).is_ok());
        assert!(p.check("10.2.3.4".parse().unwrap()).is_ok());
        let e = p.check("127.0.0.2".parse().unwrap()).unwrap_err();
        assert!(e.contains("loopback") && e.contains("allow_private"), "{e}");
        assert!(Policy::new(&["nonsense".into()]).is_err());
        assert!(Policy::new(&["192.168.1.7".into()]).is_ok());
    }

    #[test]
    fn redacts() {
        assert_eq!(
            redact_url("https://u:secret@hooks.example/x?token=abc&a=b"),
            "https://u:***@hooks.example/x?token=***&a=***"
        );
        assert_eq!(
            redact_url("https://hooks.example/x"),
            "https://hooks.example/x"
        );
    }
}
