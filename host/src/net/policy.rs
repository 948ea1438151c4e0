//! Where code may send requests: host patterns (`--allow-net`), the addresses a name may
//! resolve to (`--allow-net-addresses`), and the secrets bound to hosts (`--secret`).

use std::net::IpAddr;

use ipnet::IpNet;

/// A host code may reach: `example.com`, `*.example.com` (any name under it), `*` (any
/// name), or an IP address; with `:port`, only that port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    host: PatternHost,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PatternHost {
    Any,
    Name(String),
    Under(String),
    Address(IpAddr),
}

impl HostPattern {
    /// Parses `host[:port]` (an IPv6 address in brackets).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bad = || {
            format!("{text:?} is not a host pattern (host, *.host or an IP address, with an optional :port)")
        };
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (address, after) = rest.split_once(']').ok_or_else(bad)?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or_else(bad)?),
            };
            (format!("[{address}]"), port)
        } else {
            match text.rsplit_once(':') {
                Some((host, port)) => (host.to_string(), Some(port)),
                None => (text.to_string(), None),
            }
        };
        let port = match port {
            Some(port) => Some(port.parse::<u16>().map_err(|_| bad())?),
            None => None,
        };
        let host = if host == "*" {
            PatternHost::Any
        } else if let Some(under) = host.strip_prefix("*.") {
            PatternHost::Under(domain(under).ok_or_else(bad)?)
        } else if let Some(address) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            PatternHost::Address(address.parse().map_err(|_| bad())?)
        } else if let Ok(address) = host.parse::<IpAddr>() {
            PatternHost::Address(address)
        } else {
            PatternHost::Name(domain(&host).ok_or_else(bad)?)
        };
        Ok(Self { host, port })
    }

    /// Whether `host` (as the URL parser wrote it) on `port` matches.
    fn matches(&self, host: &url::Host<&str>, port: u16) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        match (&self.host, host) {
            (PatternHost::Any, url::Host::Domain(_)) => true,
            (PatternHost::Name(name), url::Host::Domain(d)) => name == d,
            (PatternHost::Under(under), url::Host::Domain(d)) => d
                .strip_suffix(under.as_str())
                .is_some_and(|head| head.ends_with('.') && head.len() > 1),
            (PatternHost::Address(a), url::Host::Ipv4(b)) => *a == IpAddr::V4(*b),
            (PatternHost::Address(a), url::Host::Ipv6(b)) => *a == IpAddr::V6(*b),
            _ => false,
        }
    }
}

/// A name as the URL parser writes it (lower case, punycode), or nothing if it is not one.
fn domain(name: &str) -> Option<String> {
    match url::Host::parse(name).ok()? {
        url::Host::Domain(d) if !d.is_empty() => Some(d),
        _ => None,
    }
}

/// The egress policy: which hosts, which addresses, which secrets where.
#[derive(Debug, Clone, Default)]
pub struct NetPolicy {
    /// Hosts code may reach (`--allow-net`); with no `ask` either, no network at all.
    pub allow: Vec<HostPattern>,
    /// Hosts code may reach once a person says yes (`--ask-net`).
    pub ask: Vec<HostPattern>,
    /// Addresses outside the public internet that names may resolve to anyway
    /// (`--allow-net-addresses`).
    pub addresses: Vec<IpNet>,
}

/// Whether a request may go to a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// It may (`--allow-net`).
    Allowed,
    /// Once a person says yes (`--ask-net`); the host as `host:port`.
    Ask(String),
    /// It may not, for this reason.
    Refused(String),
}

impl NetPolicy {
    /// Whether a request may go to `url`: refused if it is not http(s) or no pattern names its
    /// host (the addresses a name resolves to are checked when it is resolved).
    pub fn reach(&self, url: &url::Url) -> Reach {
        if !matches!(url.scheme(), "http" | "https") {
            return Reach::Refused(format!(
                "only http: and https: URLs can be fetched, not {}:",
                url.scheme()
            ));
        }
        let (Some(host), Some(port)) = (url.host(), url.port_or_known_default()) else {
            return Reach::Refused("the URL has no host".into());
        };
        // `*` and name patterns match names only: an IP address is reached only if named.
        if self.allow.iter().any(|p| p.matches(&host, port)) {
            Reach::Allowed
        } else if self.ask.iter().any(|p| p.matches(&host, port)) {
            Reach::Ask(format!("{host}:{port}"))
        } else {
            Reach::Refused(format!(
                "{host}:{port} is not an allowed host (--allow-net)"
            ))
        }
    }

    /// Why a connection to `address` is refused, if it is: what kind of address it is.
    pub fn refuses_address(&self, address: IpAddr) -> Option<&'static str> {
        let kind = special(address)?;
        (!self.addresses.iter().any(|net| net.contains(&address))).then_some(kind)
    }
}

/// What kind of address outside the public internet `address` is, if it is one.
pub fn special(address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(a) => {
            let [x, y, ..] = a.octets();
            if a.is_loopback() {
                Some("a loopback address")
            } else if a.is_private() {
                Some("a private address")
            } else if a.is_link_local() {
                // 169.254.169.254 is the cloud metadata service.
                Some("a link-local address (where cloud metadata services answer)")
            } else if a.is_unspecified() || x == 0 {
                Some("an unspecified address")
            } else if x == 100 && (64..128).contains(&y) {
                Some("a shared (carrier-grade NAT) address")
            } else if a.is_multicast() || a.is_broadcast() || x >= 240 {
                Some("a multicast or reserved address")
            } else if (x == 192 && y == 0 && a.octets()[2] == 0)
                || (x == 198 && (18..20).contains(&y))
            {
                Some("a special-purpose address")
            } else {
                None
            }
        }
        IpAddr::V6(a) => {
            if let Some(v4) = a.to_ipv4_mapped() {
                return special(IpAddr::V4(v4));
            }
            let first = a.segments()[0];
            if a.segments()[..6] == [0; 6] && !a.is_loopback() && !a.is_unspecified() {
                // `::a.b.c.d`, deprecated: what it reaches depends on the system.
                return Some("an IPv4-compatible address");
            }
            if a.is_loopback() {
                Some("a loopback address")
            } else if a.is_unspecified() {
                Some("an unspecified address")
            } else if first & 0xfe00 == 0xfc00 {
                // fd00:ec2::254 is a cloud metadata service too.
                Some("a private (unique local) address")
            } else if first & 0xffc0 == 0xfe80 {
                Some("a link-local address")
            } else if a.is_multicast() {
                Some("a multicast address")
            } else if first == 0x64 && a.segments()[1] == 0xff9b {
                // NAT64 can reach any IPv4 address, private ones too.
                Some("a NAT64 address")
            } else if first == 0x2002 || (first == 0x2001 && a.segments()[1] == 0) {
                Some("a tunnelled (6to4 or Teredo) address")
            } else {
                None
            }
        }
    }
}

/// A secret (`--secret NAME=env:VAR@host,...`): its value, read from this process's
/// environment at start-up, and the hosts it may be sent to. Code writes
/// [`Secret::placeholder`] in a header; the host puts the value in its place on requests
/// to those hosts only, and puts the placeholder back wherever the value comes back.
#[derive(Clone)]
pub struct Secret {
    /// Its name.
    pub name: String,
    value: String,
    /// Where it may go.
    pub hosts: Vec<HostPattern>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("name", &self.name)
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

/// What code writes where a secret goes: `mcp-v8-secret:` and the secret's name.
pub const PLACEHOLDER_PREFIX: &str = "mcp-v8-secret:";

impl Secret {
    /// Parses `NAME=env:VAR@host[,host...]`, reading `VAR` from `env`.
    pub fn parse(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let usage = || format!("--secret {text:?}: write it as NAME=env:VAR@host[,host...]");
        let (name, rest) = text.split_once('=').ok_or_else(usage)?;
        let (source, hosts) = rest.split_once('@').ok_or_else(usage)?;
        let var = source.strip_prefix("env:").ok_or_else(usage)?;
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "--secret {name:?}: a name has only letters, digits and _"
            ));
        }
        let value = env(var).ok_or_else(|| format!("--secret {name}: ${var} is not set"))?;
        if value.len() < 4 || value.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return Err(format!(
                "--secret {name}: ${var} must be at least 4 characters, without control characters"
            ));
        }
        let hosts = hosts
            .split(',')
            .map(HostPattern::parse)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            name: name.to_string(),
            value,
            hosts,
        })
    }

    /// What code writes in a header in its place.
    pub fn placeholder(&self) -> String {
        format!("{PLACEHOLDER_PREFIX}{}", self.name)
    }

    /// Whether it may go to `host` on `port`.
    fn bound_to(&self, host: &url::Host<&str>, port: u16) -> bool {
        self.hosts.iter().any(|p| p.matches(host, port))
    }
}

/// The secrets, and their placeholders in both directions.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    list: Vec<Secret>,
}

impl Secrets {
    /// These secrets.
    pub fn new(list: Vec<Secret>) -> Self {
        Self { list }
    }

    /// Their names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.list.iter().map(|s| s.name.as_str())
    }

    /// `value` with each placeholder replaced by its secret, if the secret is bound to the
    /// URL's host; otherwise why not.
    pub fn fill(&self, value: &str, url: &url::Url) -> Result<String, String> {
        if !value.contains(PLACEHOLDER_PREFIX) {
            return Ok(value.to_string());
        }
        let host = url.host();
        let port = url.port_or_known_default().unwrap_or(0);
        let mut out = String::with_capacity(value.len());
        let mut rest = value;
        while let Some(at) = rest.find(PLACEHOLDER_PREFIX) {
            out.push_str(&rest[..at]);
            let after = &rest[at + PLACEHOLDER_PREFIX.len()..];
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            let name = &after[..end];
            let Some(secret) = self.list.iter().find(|s| s.name == name) else {
                return Err(format!("there is no secret {name:?} (see --secret)"));
            };
            match &host {
                Some(host) if secret.bound_to(host, port) => out.push_str(&secret.value),
                _ => {
                    return Err(format!(
                        "secret {name} may not be sent to {} (it is bound to {})",
                        url.host_str().unwrap_or(""),
                        secret
                            .hosts
                            .iter()
                            .map(HostPattern::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                }
            }
            rest = &after[end..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// `bytes` with every secret's value replaced by its placeholder.
    pub fn redact(&self, bytes: Vec<u8>) -> Vec<u8> {
        let mut bytes = bytes;
        for secret in &self.list {
            let value = secret.value.as_bytes();
            if bytes.windows(value.len()).any(|w| w == value) {
                bytes = replace(&bytes, value, secret.placeholder().as_bytes());
            }
        }
        bytes
    }

    /// `text` with every secret's value replaced by its placeholder.
    pub fn redact_text(&self, text: String) -> String {
        let mut text = text;
        for secret in &self.list {
            if text.contains(&secret.value) {
                text = text.replace(&secret.value, &secret.placeholder());
            }
        }
        text
    }
}

fn replace(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut i = 0;
    while i < haystack.len() {
        if haystack[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    out
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.host {
            PatternHost::Any => f.write_str("*")?,
            PatternHost::Name(name) => f.write_str(name)?,
            PatternHost::Under(under) => write!(f, "*.{under}")?,
            PatternHost::Address(IpAddr::V6(a)) => write!(f, "[{a}]")?,
            PatternHost::Address(a) => write!(f, "{a}")?,
        }
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str], addresses: &[&str]) -> NetPolicy {
        NetPolicy {
            allow: allow
                .iter()
                .map(|p| HostPattern::parse(p).unwrap())
                .collect(),
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            ..NetPolicy::default()
        }
    }

    fn refuses(policy: &NetPolicy, url: &str) -> Option<String> {
        match policy.reach(&url::Url::parse(url).unwrap()) {
            Reach::Allowed => None,
            Reach::Ask(host) => Some(format!("ask about {host}")),
            Reach::Refused(why) => Some(why),
        }
    }

    #[test]
    fn hosts_ports_and_wildcards() {
        let p = policy(
            &["api.example.com", "*.data.org:8443", "EXAMPLE.net:80"],
            &[],
        );
        assert_eq!(refuses(&p, "https://api.example.com/x"), None);
        assert_eq!(refuses(&p, "http://api.example.com:9999/x"), None);
        assert!(refuses(&p, "https://example.com/")
            .unwrap()
            .contains("--allow-net"));
        assert!(refuses(&p, "https://api.example.com.evil.io/").is_some());
        assert_eq!(refuses(&p, "https://a.b.data.org:8443/"), None);
        assert!(refuses(&p, "https://data.org:8443/").is_some());
        assert!(
            refuses(&p, "https://a.data.org/").is_some(),
            "port 443 is not 8443"
        );
        assert_eq!(refuses(&p, "http://example.net/"), None);
        assert!(refuses(&p, "https://example.net/").is_some());
        assert!(refuses(&p, "file:///etc/hosts")
            .unwrap()
            .contains("only http"));
        assert!(refuses(&p, "ftp://api.example.com/").is_some());
    }

    #[test]
    fn hosts_left_to_a_person_are_asked_about_unless_allowed() {
        let mut p = policy(&["api.example.com"], &[]);
        p.ask = vec![
            HostPattern::parse("*.example.com").unwrap(),
            HostPattern::parse("127.0.0.1:8080").unwrap(),
        ];
        let reach = |url: &str| p.reach(&url::Url::parse(url).unwrap());
        assert_eq!(reach("https://api.example.com/"), Reach::Allowed);
        assert_eq!(
            reach("https://files.example.com/a"),
            Reach::Ask("files.example.com:443".into())
        );
        assert_eq!(
            reach("http://127.0.0.1:8080/"),
            Reach::Ask("127.0.0.1:8080".into())
        );
        assert!(matches!(reach("http://127.0.0.1:8081/"), Reach::Refused(_)));
        assert!(matches!(reach("https://example.org/"), Reach::Refused(_)));
        assert!(matches!(reach("file:///etc/hosts"), Reach::Refused(_)));
    }

    #[test]
    fn addresses_outside_the_internet_need_naming() {
        let any = policy(&["*"], &[]);
        for url in [
            "http://127.0.0.1/",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.1.2.3/",
            "http://192.168.0.1/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[fd00:ec2::254]/",
            "http://[::127.0.0.1]/",
            "http://0.0.0.0/",
            "http://2130706433/",
        ] {
            assert!(refuses(&any, url).is_some(), "{url} must be refused");
        }
        assert!(refuses(&any, "http://127.0.0.1/")
            .unwrap()
            .contains("--allow-net"));
        // `*` matches names only; an IP address must be named.
        assert!(refuses(&any, "http://93.184.216.34/").is_some());
        let named = policy(&["127.0.0.1:8080", "[::1]"], &[]);
        assert_eq!(refuses(&named, "http://127.0.0.1:8080/"), None);
        assert!(refuses(&named, "http://127.0.0.1:8081/").is_some());
        assert_eq!(refuses(&named, "http://[::1]:3000/"), None);
        let ranges = policy(&["*"], &["10.0.0.0/8"]);
        assert_eq!(ranges.refuses_address("10.9.9.9".parse().unwrap()), None);
        assert!(ranges
            .refuses_address("127.0.0.1".parse().unwrap())
            .is_some());
        assert_eq!(
            ranges.refuses_address("93.184.216.34".parse().unwrap()),
            None
        );
    }

    #[test]
    fn secrets_go_only_to_their_hosts_and_never_come_back() {
        let env = |var: &str| (var == "TOKEN").then(|| "s3cr3t-value".to_string());
        let secret = Secret::parse("GH=env:TOKEN@api.github.com,*.github.com", env).unwrap();
        assert!(Secret::parse("GH=env:MISSING@x.com", env)
            .unwrap_err()
            .contains("not set"));
        assert!(Secret::parse("GH=TOKEN@x.com", env).is_err());
        let secrets = Secrets::new(vec![secret]);
        let to = |u: &str| url::Url::parse(u).unwrap();
        assert_eq!(
            secrets
                .fill(
                    "Bearer mcp-v8-secret:GH",
                    &to("https://api.github.com/user")
                )
                .unwrap(),
            "Bearer s3cr3t-value"
        );
        let refused = secrets
            .fill("Bearer mcp-v8-secret:GH", &to("https://evil.io/"))
            .unwrap_err();
        assert!(
            refused.contains("evil.io") && !refused.contains("s3cr3t"),
            "{refused}"
        );
        assert!(secrets
            .fill("mcp-v8-secret:NOPE", &to("https://api.github.com/"))
            .is_err());
        assert_eq!(
            secrets.fill("plain", &to("https://evil.io/")).unwrap(),
            "plain"
        );
        assert_eq!(
            secrets.redact(b"echo: s3cr3t-value!".to_vec()),
            b"echo: mcp-v8-secret:GH!".to_vec()
        );
        assert_eq!(
            secrets.redact_text("s3cr3t-value and s3cr3t-value".into()),
            "mcp-v8-secret:GH and mcp-v8-secret:GH"
        );
    }
}
