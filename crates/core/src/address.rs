//! Which IP addresses lead into a private network: what a relay target may reach only with
//! `allow_private = true`, so a webhook relay cannot be turned into a way into the network
//! baton runs in. The config checks a target's host when it is loaded, and the relay
//! checks every address a name resolves to before it connects.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The range `ip` falls in when it is not a public unicast address, as people call it
/// (`"loopback"`, `"private"`, `"link-local"`, …); `None` for a public address.
///
/// IPv4-mapped and IPv4-compatible IPv6 addresses (`::ffff:10.0.0.1`) are judged as the
/// IPv4 address they carry, so the mapping cannot smuggle a private one past the check.
pub fn restricted_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => restricted_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped().or_else(|| embedded_v4(v6)) {
            Some(v4) => restricted_v4(v4),
            None => restricted_v6(v6),
        },
    }
}

/// The IPv4 address of a deprecated IPv4-compatible address (`::a.b.c.d`), but not of `::`
/// and `::1`, which are IPv6's own.
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    (s[..6] == [0; 6] && (s[6] != 0 || s[7] > 1)).then(|| {
        let [a, b] = s[6].to_be_bytes();
        let [c, d] = s[7].to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    })
}

fn restricted_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    Some(match (a, b) {
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_private() => "private",
        _ if ip.is_link_local() => "link-local",
        _ if ip.is_broadcast() => "broadcast",
        _ if ip.is_multicast() => "multicast",
        // 100.64.0.0/10: carrier-grade NAT, private to a provider's network.
        (100, 64..=127) => "shared (carrier-grade NAT)",
        // 0.0.0.0/8: "this network".
        (0, _) => "this-network",
        // 192.0.0.0/24: protocol assignments; 198.18.0.0/15: benchmarking.
        (192, 0) if ip.octets()[2] == 0 => "protocol-assignment",
        (198, 18..=19) => "benchmarking",
        // 240.0.0.0/4: reserved.
        (240..=255, _) => "reserved",
        _ => return None,
    })
}

fn restricted_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    Some(match first {
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_multicast() => "multicast",
        // fc00::/7: unique local addresses, IPv6's private networks.
        _ if first & 0xfe00 == 0xfc00 => "private (unique local)",
        // fe80::/10.
        _ if first & 0xffc0 == 0xfe80 => "link-local",
        // fec0::/10: deprecated site-local.
        _ if first & 0xffc0 == 0xfec0 => "site-local",
        _ => return None,
    })
}

/// The range a URL host written as an address (`10.0.0.1`, `[::1]`) or named `localhost`
/// falls in; `None` for any other name (checked when it is resolved) and for public
/// addresses.
pub fn restricted_host(host: &str) -> Option<&'static str> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return restricted_range(ip);
    }
    let name = bare.trim_end_matches('.').to_ascii_lowercase();
    (name == "localhost" || name.ends_with(".localhost")).then_some("loopback")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(text: &str) -> Option<&'static str> {
        restricted_range(text.parse().unwrap())
    }

    #[test]
    fn private_loopback_and_link_local_ranges_are_named() {
        for (ip, expected) in [
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "this-network"),
            ("100.64.0.1", "shared (carrier-grade NAT)"),
            ("100.127.255.254", "shared (carrier-grade NAT)"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("240.0.0.1", "reserved"),
            ("198.18.0.1", "benchmarking"),
            ("192.0.0.8", "protocol-assignment"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fd00::1", "private (unique local)"),
            ("fc12::1", "private (unique local)"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fec0::1", "site-local"),
            ("ff02::1", "multicast"),
            ("::ffff:10.0.0.1", "private"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::127.0.0.1", "loopback"),
        ] {
            assert_eq!(range(ip), Some(expected), "{ip}");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "192.0.1.1",
            "198.17.255.255",
            "198.20.0.1",
            "169.255.0.1",
            "2001:4860:4860::8888",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(range(ip), None, "{ip}");
        }
    }

    #[test]
    fn hosts_are_judged_by_their_literal_address_or_the_name_localhost() {
        assert_eq!(restricted_host("127.0.0.1"), Some("loopback"));
        assert_eq!(restricted_host("[::1]"), Some("loopback"));
        assert_eq!(restricted_host("[fd00::5]"), Some("private (unique local)"));
        assert_eq!(restricted_host("localhost"), Some("loopback"));
        assert_eq!(restricted_host("LocalHost."), Some("loopback"));
        assert_eq!(restricted_host("api.localhost"), Some("loopback"));
        assert_eq!(restricted_host("hooks.example.net"), None);
        assert_eq!(restricted_host("93.184.216.34"), None);
        assert_eq!(restricted_host("notlocalhost"), None);
    }
}
