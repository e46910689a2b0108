//! Network conditions, compiled: address ranges (CIDR and the `loopback`, `private`,
//! `link_local`, `public`, `unspecified` shorthands) and port ranges.
//!
//! IPv4 addresses mapped into IPv6 (`::ffff:127.0.0.1`, what a dual-stack socket shows) are
//! judged as the IPv4 addresses they are.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address and a prefix length: the addresses that share those first bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network address as a 128-bit number (IPv4 in the mapped range).
    network: u128,
    /// Prefix length counted over 128 bits.
    bits: u8,
}

/// The IPv4 block of mapped addresses: `::ffff:0:0/96`.
const V4_MAPPED: u128 = 0xffff << 32;

impl Cidr {
    fn v4(a: Ipv4Addr, len: u8) -> Cidr {
        Cidr::new(V4_MAPPED | u128::from(u32::from(a)), len + 96)
    }

    fn v6(a: Ipv6Addr, len: u8) -> Cidr {
        Cidr::new(u128::from(a), len)
    }

    fn new(address: u128, bits: u8) -> Cidr {
        Cidr {
            network: address & mask(bits),
            bits,
        }
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        as_u128(addr) & mask(self.bits) == self.network
    }

    /// `10.0.0.0/8`, `fd00::/8`, or a single address.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{text}` is not an address, a CIDR range or a range name"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|&l| l <= max)
                .ok_or_else(|| format!("`{text}`: the prefix length is 0 to {max}"))?,
        };
        Ok(match addr {
            IpAddr::V4(a) => Cidr::v4(a, len),
            IpAddr::V6(a) => Cidr::v6(a, len),
        })
    }
}

fn mask(bits: u8) -> u128 {
    match bits {
        0 => 0,
        b => u128::MAX << (128 - u32::from(b.min(128))),
    }
}

/// The address as a 128-bit number, IPv4 as mapped (so one comparison serves both).
fn as_u128(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => V4_MAPPED | u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// `addr`, an IPv4 address mapped into IPv6 taken back to IPv4.
pub fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

/// Named ranges, for people and for learned profiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Named {
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// RFC 1918, shared address space (100.64.0.0/10, where Kubernetes and tailnets live),
    /// unique local IPv6 (fc00::/7).
    Private,
    /// 169.254.0.0/16 (a cloud's metadata service), fe80::/10.
    LinkLocal,
    /// 0.0.0.0 and ::, what a server binds to listen on every interface.
    Unspecified,
    /// Anything else that is not multicast or reserved: the Internet.
    Public,
}

impl Named {
    pub const ALL: [Named; 5] = [
        Named::Loopback,
        Named::Private,
        Named::LinkLocal,
        Named::Unspecified,
        Named::Public,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Named::Loopback => "loopback",
            Named::Private => "private",
            Named::LinkLocal => "link_local",
            Named::Unspecified => "unspecified",
            Named::Public => "public",
        }
    }

    pub fn contains(self, addr: IpAddr) -> bool {
        match (self, canonical(addr)) {
            (Named::Loopback, a) => a.is_loopback(),
            (Named::Unspecified, a) => a.is_unspecified(),
            (Named::Private, IpAddr::V4(a)) => a.is_private() || in_shared_space(a),
            (Named::Private, IpAddr::V6(a)) => a.segments()[0] & 0xfe00 == 0xfc00,
            (Named::LinkLocal, IpAddr::V4(a)) => a.is_link_local(),
            (Named::LinkLocal, IpAddr::V6(a)) => a.segments()[0] & 0xffc0 == 0xfe80,
            (Named::Public, a) => {
                !a.is_multicast()
                    && !matches!(a, IpAddr::V4(v4) if v4.is_broadcast() || v4.octets()[0] >= 240)
                    && [
                        Named::Loopback,
                        Named::Private,
                        Named::LinkLocal,
                        Named::Unspecified,
                    ]
                    .iter()
                    .all(|n| !n.contains(a))
            }
        }
    }

    /// The named range of an address, for a learned profile: `None` for public addresses,
    /// which a profile keeps one by one.
    pub fn of(addr: IpAddr) -> Option<Named> {
        [Named::Loopback, Named::Unspecified]
            .into_iter()
            .find(|n| n.contains(addr))
    }
}

/// 100.64.0.0/10 (RFC 6598).
fn in_shared_space(a: Ipv4Addr) -> bool {
    let [x, y, ..] = a.octets();
    x == 100 && (64..128).contains(&y)
}

/// One item of an `addr` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrRange {
    Named(Named),
    Cidr(Cidr),
}

impl AddrRange {
    pub fn parse(text: &str) -> Result<AddrRange, String> {
        let text = text.trim();
        match Named::ALL.into_iter().find(|n| n.name() == text) {
            Some(named) => Ok(AddrRange::Named(named)),
            None => Cidr::parse(text).map(AddrRange::Cidr),
        }
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        match self {
            AddrRange::Named(n) => n.contains(addr),
            AddrRange::Cidr(c) => c.contains(addr),
        }
    }
}

/// A port, or an inclusive range of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub low: u16,
    pub high: u16,
}

impl PortRange {
    /// `8080`, or `8000-8100`.
    pub fn parse(text: &str) -> Result<PortRange, String> {
        let port = |t: &str| {
            t.trim()
                .parse::<u16>()
                .map_err(|_| format!("`{text}` is not a port (0 to 65535) or a range `low-high`"))
        };
        let range = match text.split_once('-') {
            Some((low, high)) => PortRange {
                low: port(low)?,
                high: port(high)?,
            },
            None => {
                let p = port(text)?;
                PortRange { low: p, high: p }
            }
        };
        if range.low > range.high {
            return Err(format!(
                "`{text}`: the range's low end is above its high end"
            ));
        }
        Ok(range)
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.low..=self.high).contains(&port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_and_shorthands() {
        let ten = AddrRange::parse("10.0.0.0/8").unwrap();
        assert!(ten.contains(ip("10.1.2.3")) && !ten.contains(ip("11.0.0.1")));
        assert!(ten.contains(ip("::ffff:10.9.9.9")), "mapped IPv4");
        let one = AddrRange::parse("192.0.2.7").unwrap();
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6 = AddrRange::parse("fd00::/8").unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        let all = AddrRange::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(ip("8.8.8.8")) && !all.contains(ip("2001:db8::1")));

        let named = |n: &str, a: &str| AddrRange::parse(n).unwrap().contains(ip(a));
        assert!(named("loopback", "127.0.0.53") && named("loopback", "::1"));
        assert!(named("loopback", "::ffff:127.0.0.1"));
        assert!(named("private", "172.20.0.1") && named("private", "100.100.1.1"));
        assert!(named("private", "fd00::5") && !named("private", "8.8.8.8"));
        assert!(named("link_local", "169.254.169.254") && named("link_local", "fe80::1"));
        assert!(named("unspecified", "0.0.0.0") && named("unspecified", "::"));
        assert!(named("public", "8.8.8.8") && named("public", "2606:4700::1111"));
        for not_public in [
            "127.0.0.1",
            "10.0.0.1",
            "169.254.1.1",
            "224.0.0.1",
            "0.0.0.0",
        ] {
            assert!(!named("public", not_public), "{not_public}");
        }
        for bad in ["10.0.0.0/33", "localhost", "1.2.3", "::/129", ""] {
            assert!(AddrRange::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ports() {
        let r = PortRange::parse("8000-8100").unwrap();
        assert!(r.contains(8000) && r.contains(8100) && !r.contains(8101));
        assert!(PortRange::parse("53").unwrap().contains(53));
        for bad in ["65536", "9-8", "http", "-1"] {
            assert!(PortRange::parse(bad).is_err(), "{bad}");
        }
    }
}
