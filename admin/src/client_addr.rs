//! Who is on the other end, for sign-in throttling: the connection's peer, or, when the peer
//! is a proxy the operator trusts (`admin.trusted_proxies`), the address that proxy says it
//! forwarded for (`X-Forwarded-For`, read from the right, past every trusted hop). An IPv6
//! client counts by its /64, which one host can fill with addresses.

use std::net::IpAddr;

/// A network in CIDR notation (`10.0.0.0/8`, `::1/128`; a bare address is one host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Network {
    type Err = String;

    fn from_str(text: &str) -> Result<Network, String> {
        let bad = || {
            format!(
                "{text:?} is not an address or a network such as 127.0.0.1, 10.0.0.0/8 or ::1/128"
            )
        };
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(bad)?,
            None => max,
        };
        Ok(Network { addr, prefix })
    }
}

impl Network {
    /// True when `addr` lies in this network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.addr, canonical(addr)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u32::from(net).into(), 32, self.prefix)
                    == masked(u32::from(ip).into(), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(net), 128, self.prefix)
                    == masked(u128::from(ip), 128, self.prefix)
            }
            _ => false,
        }
    }
}

/// `bits` wide `value` with all but its first `prefix` bits cleared.
fn masked(value: u128, bits: u32, prefix: u8) -> u128 {
    let keep = u32::from(prefix).min(bits);
    if keep == 0 {
        0
    } else {
        value >> (bits - keep) << (bits - keep)
    }
}

fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

/// The client's address: `peer`, unless `peer` is trusted; then the rightmost address in
/// `forwarded_for` that is not trusted (the leftmost, when all are). A hop that is not an
/// address stops the walk at the hop before it: nothing beyond can be believed.
pub fn client(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[Network]) -> IpAddr {
    let is_trusted = |addr: IpAddr| trusted.iter().any(|net| net.contains(addr));
    let peer = canonical(peer);
    if !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    for hop in forwarded_for.unwrap_or("").rsplit(',') {
        let Ok(addr) = hop.trim().parse::<IpAddr>() else {
            break;
        };
        client = canonical(addr);
        if !is_trusted(client) {
            break;
        }
    }
    client
}

/// What throttling counts an address as: itself for IPv4, its /64 for IPv6.
pub fn throttle_key(addr: IpAddr) -> String {
    match canonical(addr) {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let net = std::net::Ipv6Addr::from(masked(u128::from(v6), 128, 64));
            format!("{net}/64")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<Network> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn reads_networks_and_refuses_what_is_not_one() {
        let net: Network = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains(ip("10.1.200.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!("::1".parse::<Network>().unwrap().contains(ip("::1")));
        assert!(
            "127.0.0.1"
                .parse::<Network>()
                .unwrap()
                .contains(ip("::ffff:127.0.0.1"))
        );
        assert!(
            "0.0.0.0/0"
                .parse::<Network>()
                .unwrap()
                .contains(ip("8.8.8.8"))
        );
        for bad in ["", "10.0.0.0/33", "::/129", "example.com", "10.0.0.0/x"] {
            assert!(bad.parse::<Network>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_forwarded_address_counts_only_behind_a_trusted_proxy() {
        let trusted = nets(&["127.0.0.1", "10.0.0.0/8"]);
        let xff = Some("198.51.100.1, 203.0.113.9, 10.0.0.5");
        // Not from a trusted proxy: the header is anyone's to write.
        assert_eq!(client(ip("192.0.2.7"), xff, &trusted), ip("192.0.2.7"));
        // From one: the rightmost hop it does not trust is the client, not what the client
        // wrote to the left of it.
        assert_eq!(client(ip("127.0.0.1"), xff, &trusted), ip("203.0.113.9"));
        assert_eq!(client(ip("127.0.0.1"), None, &trusted), ip("127.0.0.1"));
        assert_eq!(
            client(ip("127.0.0.1"), Some("10.0.0.9, 10.0.0.8"), &trusted),
            ip("10.0.0.9")
        );
        assert_eq!(
            client(ip("127.0.0.1"), Some("203.0.113.9, garbage"), &trusted),
            ip("127.0.0.1")
        );
        assert_eq!(client(ip("127.0.0.1"), xff, &[]), ip("127.0.0.1"));
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        assert_eq!(
            throttle_key(ip("2001:db8:1:2:aaaa::1")),
            throttle_key(ip("2001:db8:1:2:ffff::9"))
        );
        assert_eq!(
            throttle_key(ip("2001:db8:1:2:aaaa::1")),
            "2001:db8:1:2::/64"
        );
        assert_ne!(
            throttle_key(ip("2001:db8:1:3::1")),
            throttle_key(ip("2001:db8:1:2::1"))
        );
        assert_eq!(throttle_key(ip("::ffff:192.0.2.1")), "192.0.2.1");
    }
}
