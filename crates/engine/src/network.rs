//! Network egress, off by default: a sandbox has only its own loopback unless it asks for a
//! way out. With one, `cella_jail::egress` links its namespace to the host's network, and the
//! rules made here decide where it may connect: never the host itself (its own addresses, its
//! loopback), nor link-local (cloud metadata at 169.254.169.254), private, shared or reserved
//! ranges, unless the policy's allow list names them; only what the allow list names, if it
//! names anything; never what the deny list names; DNS through the link's resolver; the
//! bandwidth bounded both ways.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use cella_jail::egress::{DEVICE, GATEWAY, RESOLVER, Uplink};

use crate::error::{Error, Result, quoted};

/// What a sandbox may reach beyond itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkPolicy {
    /// Whether it may connect out at all.
    pub egress: bool,
    /// Destinations it may reach (all public ones when empty): `host`, `address`, `cidr`,
    /// each with an optional `:port` or `:first-last`.
    pub allow: Vec<String>,
    /// Destinations it may never reach, in the same forms.
    pub deny: Vec<String>,
    /// Most bandwidth each way, in Mbit/s (the server's `network.max_bandwidth_mbps` at most).
    pub bandwidth_mbps: Option<u64>,
}

/// Ranges no sandbox reaches unless its allow list names them.
const FORBIDDEN: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

/// One destination: an IPv4 network and an optional port range.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Destination {
    net: (Ipv4Addr, u8),
    ports: Option<(u16, u16)>,
}

impl Destination {
    fn rule(&self, verdict: &str) -> String {
        let (addr, prefix) = self.net;
        match self.ports {
            None => format!("ip daddr {addr}/{prefix} {verdict}"),
            Some((a, b)) if a == b => {
                format!(
                    "ip daddr {addr}/{prefix} meta l4proto {{ tcp, udp }} th dport {a} {verdict}"
                )
            }
            Some((a, b)) => {
                format!(
                    "ip daddr {addr}/{prefix} meta l4proto {{ tcp, udp }} th dport {a}-{b} {verdict}"
                )
            }
        }
    }
}

/// `host[:port]`, `address[:port]` or `cidr[:port]`, ports as `443` or `8000-8100`; a host
/// name is resolved now, to all its IPv4 addresses.
async fn destinations(entry: &str) -> Result<Vec<Destination>> {
    let bad = |why: &str| Error::invalid(format!("network destination {}: {why}", quoted(entry)));
    let (target, ports) = match entry.rsplit_once(':') {
        Some((t, p)) => (t, Some(p)),
        None => (entry, None),
    };
    let ports = match ports {
        None => None,
        Some(p) => {
            let (a, b) = p.split_once('-').unwrap_or((p, p));
            let parse = |s: &str| s.trim().parse::<u16>().ok().filter(|p| *p > 0);
            match (parse(a), parse(b)) {
                (Some(a), Some(b)) if a <= b => Some((a, b)),
                _ => return Err(bad("ports are 1-65535, as 443 or 8000-8100")),
            }
        }
    };
    if target.contains(':') || target.starts_with('[') {
        return Err(bad("IPv6 is not offered to sandboxes"));
    }
    let nets: Vec<(Ipv4Addr, u8)> = if let Some((addr, prefix)) = target.split_once('/') {
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad("not an IPv4 network"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| bad("prefix of 0 to 32"))?;
        vec![(addr, prefix)]
    } else if let Ok(addr) = target.parse::<Ipv4Addr>() {
        vec![(addr, 32)]
    } else if !target.is_empty()
        && target.len() <= 253
        && target
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        let found =
            tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host((target, 0)))
                .await
                .map_err(|_| bad("its name did not resolve within 5 s"))?
                .map_err(|e| bad(&format!("its name does not resolve: {e}")))?;
        let v4: Vec<(Ipv4Addr, u8)> = found
            .filter_map(|a| match a.ip() {
                IpAddr::V4(v4) => Some((v4, 32)),
                IpAddr::V6(_) => None,
            })
            .collect();
        if v4.is_empty() {
            return Err(bad("its name has no IPv4 address"));
        }
        v4
    } else {
        return Err(bad("not a host name, an IPv4 address or an IPv4 network"));
    };
    Ok(nets
        .into_iter()
        .map(|net| Destination { net, ports })
        .collect())
}

/// The IPv4 addresses of the host's own interfaces (`/proc/net/fib_trie`'s local routes).
fn host_addresses() -> Vec<Ipv4Addr> {
    let trie = std::fs::read_to_string("/proc/net/fib_trie").unwrap_or_default();
    let mut found = Vec::new();
    let mut last: Option<Ipv4Addr> = None;
    for line in trie.lines() {
        let line = line.trim_start_matches([' ', '|', '+', '-', '`']);
        if let Ok(addr) = line.trim().parse::<Ipv4Addr>() {
            last = Some(addr);
        } else if line.contains("/32 host LOCAL")
            && let Some(addr) = last
            && !found.contains(&addr)
        {
            found.push(addr);
        }
    }
    found
}

/// The nftables ruleset of `policy`, for the sandbox's own namespace.
pub async fn ruleset(policy: &NetworkPolicy, max_bandwidth_mbps: u64) -> Result<String> {
    let mut allow = Vec::new();
    for entry in &policy.allow {
        allow.extend(destinations(entry).await?);
    }
    let mut deny = Vec::new();
    for entry in &policy.deny {
        deny.extend(destinations(entry).await?);
    }
    let mbps = policy.bandwidth_mbps.unwrap_or(max_bandwidth_mbps);
    if mbps == 0 || mbps > max_bandwidth_mbps {
        return Err(Error::invalid(format!(
            "bandwidth_mbps must be between 1 and {max_bandwidth_mbps}"
        )));
    }
    let bytes = mbps * 125_000;
    let mut host: Vec<String> = host_addresses().iter().map(Ipv4Addr::to_string).collect();
    host.push(GATEWAY.into());
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "table inet cella {{");
    let _ = writeln!(
        w,
        "  chain refuse {{\n    meta l4proto tcp reject with tcp reset\n    reject with icmpx admin-prohibited\n  }}"
    );
    let _ = writeln!(
        w,
        "  chain out {{\n    type filter hook output priority 0; policy accept;"
    );
    let _ = writeln!(w, "    oif \"lo\" accept");
    let _ = writeln!(
        w,
        "    oif \"{DEVICE}\" limit rate over {bytes} bytes/second drop"
    );
    let _ = writeln!(w, "    meta nfproto ipv6 jump refuse");
    let _ = writeln!(
        w,
        "    ip daddr {RESOLVER} meta l4proto {{ tcp, udp }} th dport 53 accept"
    );
    for d in &deny {
        let _ = writeln!(w, "    {}", d.rule("jump refuse"));
    }
    let _ = writeln!(w, "    ip daddr {{ {} }} jump refuse", host.join(", "));
    for d in &allow {
        let _ = writeln!(w, "    {}", d.rule("accept"));
    }
    let _ = writeln!(w, "    ip daddr {{ {} }} jump refuse", FORBIDDEN.join(", "));
    if !allow.is_empty() {
        let _ = writeln!(w, "    jump refuse");
    }
    let _ = writeln!(w, "  }}");
    let _ = writeln!(
        w,
        "  chain in {{\n    type filter hook input priority 0; policy accept;"
    );
    let _ = writeln!(
        w,
        "    iif \"{DEVICE}\" limit rate over {bytes} bytes/second drop\n  }}"
    );
    let _ = writeln!(w, "}}");
    Ok(out)
}

/// Links the namespace of the sandbox whose init is `pid` to the network, with `rules`.
pub async fn connect(pid: i32, rules: String) -> Result<Uplink> {
    let netns = std::path::PathBuf::from(format!("/proc/{pid}/ns/net"));
    tokio::task::spawn_blocking(move || {
        cella_jail::egress::connect(&netns, &rules, Duration::from_secs(10))
    })
    .await
    .map_err(Error::internal)?
    .map_err(|e| Error::Unavailable(format!("the sandbox's network egress: {e}")))
}

/// What a sandbox with egress finds in `/etc/resolv.conf`: the link's resolver.
pub fn resolv_conf() -> String {
    format!("nameserver {RESOLVER}\noptions timeout:2 attempts:2\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn destinations_and_rules() {
        let d = destinations("10.1.0.0/16:8000-8100").await.unwrap();
        assert_eq!(
            d,
            vec![Destination {
                net: ("10.1.0.0".parse().unwrap(), 16),
                ports: Some((8000, 8100))
            }]
        );
        assert_eq!(
            destinations("198.18.0.2:80").await.unwrap()[0].rule("accept"),
            "ip daddr 198.18.0.2/32 meta l4proto { tcp, udp } th dport 80 accept"
        );
        for bad in [
            "::1",
            "[::1]:80",
            "1.2.3.4:0",
            "1.2.3.4:9-1",
            "1.2.3.4/33",
            "a b",
            "",
        ] {
            assert!(destinations(bad).await.is_err(), "{bad}");
        }
        let policy = NetworkPolicy {
            egress: true,
            allow: vec!["198.18.0.2:8000".into()],
            deny: vec!["198.18.0.9".into()],
            bandwidth_mbps: Some(8),
        };
        let rules = ruleset(&policy, 100).await.unwrap();
        assert!(rules.contains("limit rate over 1000000 bytes/second drop"));
        let (deny, allow, forbidden) = (
            rules.find("198.18.0.9/32").unwrap(),
            rules.find("198.18.0.2/32").unwrap(),
            rules.find("169.254.0.0/16").unwrap(),
        );
        assert!(deny < allow && allow < forbidden);
        assert!(rules.trim_end().ends_with("}"));
        assert!(
            ruleset(
                &NetworkPolicy {
                    bandwidth_mbps: Some(1000),
                    ..policy
                },
                100
            )
            .await
            .is_err()
        );
    }

    #[test]
    fn the_host_has_its_loopback_address() {
        assert!(host_addresses().contains(&Ipv4Addr::LOCALHOST));
    }
}
