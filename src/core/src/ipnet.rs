//! Address allow-lists: CIDR blocks and the addresses they contain, IPv4 and IPv6.

use std::net::IpAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CidrError {
    Address,
    Prefix,
    HostBits,
}

impl std::fmt::Display for CidrError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Address => "not an IPv4 or IPv6 address",
            Self::Prefix => "the prefix length is out of range",
            Self::HostBits => "bits are set to the right of the prefix",
        })
    }
}

fn bits(a: IpAddr) -> (u128, u8) {
    match a {
        IpAddr::V4(v) => (u128::from(u32::from(v)), 32),
        IpAddr::V6(v) => (u128::from(v), 128),
    }
}

fn mask(prefix: u8, width: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        let all: u128 = if width == 128 {
            u128::MAX
        } else {
            (1u128 << width) - 1
        };
        all & !((1u128 << (width - prefix)) - 1)
    }
}

impl Cidr {
    /// `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a /32 or /128).
    pub fn parse(text: &str) -> Result<Cidr, CidrError> {
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| CidrError::Address)?;
        let (value, width) = bits(addr);
        let prefix = match prefix {
            None => width,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= width)
                .ok_or(CidrError::Prefix)?,
        };
        if value & !mask(prefix, width) != 0 {
            return Err(CidrError::HostBits);
        }
        Ok(Cidr { addr, prefix })
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        let (net, width) = bits(self.addr);
        let (a, a_width) = bits(normalize(addr));
        width == a_width && (a & mask(self.prefix, width)) == net
    }

    /// Is every address of `other` inside this block?
    pub fn covers(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.addr)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.1.2.3`) are their IPv4 address.
pub fn normalize(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v) => v.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v)),
        v4 => v4,
    }
}

/// Parse Postgres' text form of a `cidr[]` (`{10.0.0.0/8,2001:db8::/32}`).
pub fn parse_array(text: &str) -> Result<Vec<Cidr>, CidrError> {
    let inner = text
        .trim()
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .ok_or(CidrError::Address)?;
    if inner.trim().is_empty() {
        return Ok(Vec::new());
    }
    inner
        .split(',')
        .map(|c| Cidr::parse(c.trim_matches('"')))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_contain_their_addresses() {
        let n = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(n.contains(ip("10.200.3.4")));
        assert!(!n.contains(ip("11.0.0.1")));
        assert!(
            n.contains(ip("::ffff:10.1.2.3")),
            "IPv4-mapped counts as IPv4"
        );
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:1::5")));
        assert!(!v6.contains(ip("10.0.0.1")));
        assert!(Cidr::parse("127.0.0.2").unwrap().contains(ip("127.0.0.2")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
    }

    #[test]
    fn bad_blocks_are_refused() {
        assert_eq!(Cidr::parse("10.0.0.1/8"), Err(CidrError::HostBits));
        assert_eq!(Cidr::parse("10.0.0.0/33"), Err(CidrError::Prefix));
        assert_eq!(Cidr::parse("nope"), Err(CidrError::Address));
    }

    #[test]
    fn covers_and_arrays() {
        let wide = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(wide.covers(&Cidr::parse("10.1.0.0/16").unwrap()));
        assert!(!Cidr::parse("10.1.0.0/16").unwrap().covers(&wide));
        let a = parse_array("{10.0.0.0/8,2001:db8::/32}").unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(parse_array("{}").unwrap(), vec![]);
    }
}
