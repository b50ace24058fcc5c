//! Which IP addresses a destination may reach: every address outside the IANA IPv4 and
//! IPv6 special-purpose registries (and multicast), with IPv4 carried inside IPv6
//! (mapped, compatible, NAT64, 6to4, Teredo) judged by the IPv4 rules.
//!
//! Pure and synchronous: the one rule behind the check at creation, the resolvers and
//! the connectors (see [`super::guard`]), so a range cannot be refused in one place and
//! let through in another.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The special-purpose block an address falls in: why it is not a public destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Special {
    /// The block, e.g. `10.0.0.0/8`.
    pub block: &'static str,
    /// What the block is for, e.g. `private-use`.
    pub purpose: &'static str,
    /// For an IPv4 address carried in IPv6: the IPv6 block that carried it.
    pub via: Option<&'static str>,
}

impl fmt::Display for Special {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.block, self.purpose)?;
        if let Some(via) = self.via {
            write!(f, " carried in {via}")?;
        }
        Ok(())
    }
}

/// Whether `address` may be a destination: it is in no special-purpose block.
pub fn is_public(address: IpAddr) -> bool {
    special(address).is_none()
}

/// The special-purpose block `address` is in, or `None` for a public address.
pub fn special(address: IpAddr) -> Option<Special> {
    match address {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

/// IPv4: the IANA IPv4 Special-Purpose Address Registry (every block, whether or not
/// the registry calls it globally reachable: no webhook lives in 192.0.0.0/24 or on a
/// relay anycast address), plus multicast. The first match names the block, so
/// 255.255.255.255 comes before 240.0.0.0/4.
const V4_BLOCKS: &[(u32, u8, &str, &str)] = &[
    (0x0000_0000, 8, "0.0.0.0/8", "this network"),
    (0x0a00_0000, 8, "10.0.0.0/8", "private-use"),
    (0x6440_0000, 10, "100.64.0.0/10", "shared address space"),
    (0x7f00_0000, 8, "127.0.0.0/8", "loopback"),
    (0xa9fe_0000, 16, "169.254.0.0/16", "link-local"),
    (0xac10_0000, 12, "172.16.0.0/12", "private-use"),
    (0xc000_0000, 24, "192.0.0.0/24", "IETF protocol assignments"),
    (0xc000_0200, 24, "192.0.2.0/24", "documentation"),
    (0xc058_6300, 24, "192.88.99.0/24", "6to4 relay anycast"),
    (0xc0a8_0000, 16, "192.168.0.0/16", "private-use"),
    (0xc612_0000, 15, "198.18.0.0/15", "benchmarking"),
    (0xc633_6400, 24, "198.51.100.0/24", "documentation"),
    (0xcb00_7100, 24, "203.0.113.0/24", "documentation"),
    (0xe000_0000, 4, "224.0.0.0/4", "multicast"),
    (0xffff_ffff, 32, "255.255.255.255/32", "limited broadcast"),
    (0xf000_0000, 4, "240.0.0.0/4", "reserved"),
];

fn special_v4(address: Ipv4Addr) -> Option<Special> {
    let bits = u32::from(address);
    V4_BLOCKS
        .iter()
        .find(|(network, length, _, _)| {
            let mask = u32::MAX.checked_shl(32 - u32::from(*length)).unwrap_or(0);
            bits & mask == *network
        })
        .map(|&(_, _, block, purpose)| Special {
            block,
            purpose,
            via: None,
        })
}

/// How an IPv6 block is judged.
enum V6Rule {
    /// Never a destination.
    Refuse(&'static str),
    /// Carries an IPv4 address (where, below), which decides.
    Embedded(&'static str, fn(u128) -> Vec<Ipv4Addr>),
}

/// IPv6: the IANA IPv6 Special-Purpose Address Registry, the deprecated site-local and
/// IPv4-compatible blocks, and multicast; the first match decides, so the more specific
/// blocks come first. The IANA registry calls a few anycast blocks inside 2001::/23
/// globally reachable (PCP, TURN, AMT, AS112, ORCHIDv2): no webhook lives there, and
/// they are refused with the rest of the block.
const V6_BLOCKS: &[(u128, u8, &str, V6Rule)] = &[
    (0, 128, "::/128", V6Rule::Refuse("unspecified")),
    (1, 128, "::1/128", V6Rule::Refuse("loopback")),
    (
        0xffff_0000_0000,
        96,
        "::ffff:0:0/96",
        V6Rule::Embedded("IPv4-mapped", low_32),
    ),
    (0, 96, "::/96", V6Rule::Embedded("IPv4-compatible", low_32)),
    (
        0x0064_ff9b_0000_0000_0000_0000_0000_0000,
        96,
        "64:ff9b::/96",
        V6Rule::Embedded("NAT64", low_32),
    ),
    (
        0x0064_ff9b_0001_0000_0000_0000_0000_0000,
        48,
        "64:ff9b:1::/48",
        V6Rule::Refuse("local-use NAT64"),
    ),
    (
        0x0100_0000_0000_0000_0000_0000_0000_0000,
        64,
        "100::/64",
        V6Rule::Refuse("discard-only"),
    ),
    (
        0x0100_0000_0000_0001_0000_0000_0000_0000,
        64,
        "100:0:0:1::/64",
        V6Rule::Refuse("dummy prefix"),
    ),
    (
        0x2001_0000_0000_0000_0000_0000_0000_0000,
        32,
        "2001::/32",
        V6Rule::Embedded("Teredo", teredo),
    ),
    (
        0x2001_0000_0000_0000_0000_0000_0000_0000,
        23,
        "2001::/23",
        V6Rule::Refuse("IETF protocol assignments"),
    ),
    (
        0x2001_0db8_0000_0000_0000_0000_0000_0000,
        32,
        "2001:db8::/32",
        V6Rule::Refuse("documentation"),
    ),
    (
        0x2002_0000_0000_0000_0000_0000_0000_0000,
        16,
        "2002::/16",
        V6Rule::Embedded("6to4", six_to_four),
    ),
    (
        0x3fff_0000_0000_0000_0000_0000_0000_0000,
        20,
        "3fff::/20",
        V6Rule::Refuse("documentation"),
    ),
    (
        0x5f00_0000_0000_0000_0000_0000_0000_0000,
        16,
        "5f00::/16",
        V6Rule::Refuse("segment routing SIDs"),
    ),
    (
        0xfc00_0000_0000_0000_0000_0000_0000_0000,
        7,
        "fc00::/7",
        V6Rule::Refuse("unique local"),
    ),
    (
        0xfe80_0000_0000_0000_0000_0000_0000_0000,
        10,
        "fe80::/10",
        V6Rule::Refuse("link-local"),
    ),
    (
        0xfec0_0000_0000_0000_0000_0000_0000_0000,
        10,
        "fec0::/10",
        V6Rule::Refuse("site-local"),
    ),
    (
        0xff00_0000_0000_0000_0000_0000_0000_0000,
        8,
        "ff00::/8",
        V6Rule::Refuse("multicast"),
    ),
    // Only 2000::/3 is allocated as global unicast; the rest of the space is reserved.
    (
        0x0000_0000_0000_0000_0000_0000_0000_0000,
        0,
        "outside 2000::/3",
        V6Rule::Refuse("not global unicast"),
    ),
];

/// Global unicast, where every public IPv6 address is (less the blocks above).
const GLOBAL_UNICAST: (u128, u8) = (0x2000_0000_0000_0000_0000_0000_0000_0000, 3);

fn in_block(bits: u128, network: u128, length: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(length)).unwrap_or(0);
    bits & mask == network
}

fn special_v6(address: Ipv6Addr) -> Option<Special> {
    let bits = u128::from(address);
    for (network, length, block, rule) in V6_BLOCKS {
        if *length == 0 && in_block(bits, GLOBAL_UNICAST.0, GLOBAL_UNICAST.1) {
            // The catch-all is for what lies outside global unicast.
            return None;
        }
        if !in_block(bits, *network, *length) {
            continue;
        }
        return match rule {
            V6Rule::Refuse(purpose) => Some(Special {
                block,
                purpose,
                via: None,
            }),
            // Every IPv4 address it carries must be public: the traffic ends there.
            V6Rule::Embedded(name, unpack) => {
                unpack(bits)
                    .into_iter()
                    .find_map(special_v4)
                    .map(|inner| Special {
                        via: Some(carrier(name)),
                        ..inner
                    })
            }
        };
    }
    None
}

/// The name of the IPv6 block an IPv4 address was carried in, for messages.
fn carrier(name: &'static str) -> &'static str {
    match name {
        "IPv4-mapped" => "::ffff:0:0/96 (IPv4-mapped)",
        "IPv4-compatible" => "::/96 (IPv4-compatible)",
        "NAT64" => "64:ff9b::/96 (NAT64)",
        "6to4" => "2002::/16 (6to4)",
        "Teredo" => "2001::/32 (Teredo)",
        other => other,
    }
}

/// Mapped, compatible and NAT64 (RFC 6052, /96): the last 32 bits.
fn low_32(bits: u128) -> Vec<Ipv4Addr> {
    vec![Ipv4Addr::from(bits as u32)]
}

/// 6to4 (RFC 3056): `2002:AABB:CCDD::/48` carries AA.BB.CC.DD.
fn six_to_four(bits: u128) -> Vec<Ipv4Addr> {
    vec![Ipv4Addr::from((bits >> 80) as u32)]
}

/// Teredo (RFC 4380): `2001:0:SSSS:SSSS:flags:port:CCCC:CCCC`, the server's IPv4 in
/// bits 32–63 and the client's, inverted, in the last 32 bits. The traffic goes to the
/// client through the server's relay, so both must be public.
fn teredo(bits: u128) -> Vec<Ipv4Addr> {
    let server = Ipv4Addr::from((bits >> 64) as u32);
    let client = Ipv4Addr::from(!(bits as u32));
    vec![client, server]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_of(address: &str) -> Option<&'static str> {
        special(address.parse().unwrap()).map(|special| special.block)
    }

    #[test]
    fn every_ipv4_special_purpose_block_is_refused_at_both_ends() {
        for (first, last, block) in [
            ("0.0.0.0", "0.255.255.255", "0.0.0.0/8"),
            ("10.0.0.0", "10.255.255.255", "10.0.0.0/8"),
            ("100.64.0.0", "100.127.255.255", "100.64.0.0/10"),
            ("127.0.0.0", "127.255.255.255", "127.0.0.0/8"),
            ("169.254.0.0", "169.254.255.255", "169.254.0.0/16"),
            ("172.16.0.0", "172.31.255.255", "172.16.0.0/12"),
            ("192.0.0.0", "192.0.0.255", "192.0.0.0/24"),
            ("192.0.2.0", "192.0.2.255", "192.0.2.0/24"),
            ("192.88.99.0", "192.88.99.255", "192.88.99.0/24"),
            ("192.168.0.0", "192.168.255.255", "192.168.0.0/16"),
            ("198.18.0.0", "198.19.255.255", "198.18.0.0/15"),
            ("198.51.100.0", "198.51.100.255", "198.51.100.0/24"),
            ("203.0.113.0", "203.0.113.255", "203.0.113.0/24"),
            ("224.0.0.0", "239.255.255.255", "224.0.0.0/4"),
            ("240.0.0.0", "255.255.255.254", "240.0.0.0/4"),
            ("255.255.255.255", "255.255.255.255", "255.255.255.255/32"),
        ] {
            assert_eq!(block_of(first), Some(block), "{first}");
            assert_eq!(block_of(last), Some(block), "{last}");
        }
    }

    #[test]
    fn ipv4_neighbours_of_the_blocks_are_public() {
        for address in [
            "1.1.1.1",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "169.253.255.255",
            "169.255.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.0",
            "192.0.3.0",
            "192.88.98.255",
            "192.88.100.0",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "198.51.99.255",
            "198.51.101.0",
            "203.0.112.255",
            "203.0.114.0",
            "223.255.255.255",
            "93.184.215.14",
        ] {
            assert_eq!(block_of(address), None, "{address}");
        }
    }

    #[test]
    fn every_ipv6_special_purpose_block_is_refused() {
        for (address, block) in [
            ("::", "::/128"),
            ("::1", "::1/128"),
            ("64:ff9b:1::1", "64:ff9b:1::/48"),
            ("64:ff9b:1:ffff::1", "64:ff9b:1::/48"),
            ("100::1", "100::/64"),
            ("100::ffff:ffff:ffff:ffff", "100::/64"),
            ("100:0:0:1::1", "100:0:0:1::/64"),
            ("2001:1::1", "2001::/23"),
            ("2001:2::1", "2001::/23"),
            ("2001:1ff:ffff::1", "2001::/23"),
            ("2001:db8::1", "2001:db8::/32"),
            ("2001:db8:ffff:ffff::1", "2001:db8::/32"),
            ("3fff::1", "3fff::/20"),
            ("3fff:fff::1", "3fff::/20"),
            ("5f00::1", "5f00::/16"),
            ("fc00::1", "fc00::/7"),
            ("fd12:3456::1", "fc00::/7"),
            ("fe80::1", "fe80::/10"),
            ("febf:ffff::1", "fe80::/10"),
            ("fec0::1", "fec0::/10"),
            ("feff:ffff::1", "fec0::/10"),
            ("ff02::1", "ff00::/8"),
            ("ff0e::1", "ff00::/8"),
            // Reserved space outside global unicast.
            ("4000::1", "outside 2000::/3"),
            ("1000::1", "outside 2000::/3"),
            ("::ffff:0:a00:1", "outside 2000::/3"),
        ] {
            assert_eq!(block_of(address), Some(block), "{address}");
        }
    }

    #[test]
    fn ipv6_global_unicast_is_public() {
        for address in [
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "2001:200::1",
            "2001:db7:ffff::1",
            "2001:db9::1",
            "2003::1",
            "3ffe:ffff::1",
            "3fff:1000::1",
            "2620:4f:8000::1",
        ] {
            assert_eq!(block_of(address), None, "{address}");
        }
    }

    #[test]
    fn ipv4_in_ipv6_is_judged_by_the_ipv4_rules() {
        for (address, block, via) in [
            (
                "::ffff:127.0.0.1",
                "127.0.0.0/8",
                "::ffff:0:0/96 (IPv4-mapped)",
            ),
            (
                "::ffff:10.1.2.3",
                "10.0.0.0/8",
                "::ffff:0:0/96 (IPv4-mapped)",
            ),
            (
                "::ffff:169.254.169.254",
                "169.254.0.0/16",
                "::ffff:0:0/96 (IPv4-mapped)",
            ),
            ("::127.0.0.1", "127.0.0.0/8", "::/96 (IPv4-compatible)"),
            ("::192.168.1.1", "192.168.0.0/16", "::/96 (IPv4-compatible)"),
            ("::0.0.0.2", "0.0.0.0/8", "::/96 (IPv4-compatible)"),
            ("64:ff9b::10.0.0.1", "10.0.0.0/8", "64:ff9b::/96 (NAT64)"),
            ("64:ff9b::7f00:1", "127.0.0.0/8", "64:ff9b::/96 (NAT64)"),
            (
                "64:ff9b::198.18.0.1",
                "198.18.0.0/15",
                "64:ff9b::/96 (NAT64)",
            ),
            ("2002:0a00:0001::1", "10.0.0.0/8", "2002::/16 (6to4)"),
            ("2002:7f00:0001::", "127.0.0.0/8", "2002::/16 (6to4)"),
            ("2002:a9fe:a9fe:1::1", "169.254.0.0/16", "2002::/16 (6to4)"),
            ("2002:f000:0001::1", "240.0.0.0/4", "2002::/16 (6to4)"),
            // Teredo: client 127.0.0.1 inverted is 80ff:fffe; server 65.54.227.120.
            (
                "2001:0:4136:e378:8000:63bf:80ff:fffe",
                "127.0.0.0/8",
                "2001::/32 (Teredo)",
            ),
            // Client 10.0.0.1 (f5ff:fffe).
            (
                "2001:0:4136:e378:8000:63bf:f5ff:fffe",
                "10.0.0.0/8",
                "2001::/32 (Teredo)",
            ),
            // A public client behind a server on a private address.
            (
                "2001:0:c0a8:0101:8000:63bf:3fcd:e370",
                "192.168.0.0/16",
                "2001::/32 (Teredo)",
            ),
        ] {
            let found = special(address.parse().unwrap());
            assert_eq!(found.map(|s| s.block), Some(block), "{address}");
            assert_eq!(found.and_then(|s| s.via), Some(via), "{address}");
        }
        // Carrying a public IPv4 address, they are as public as it is.
        for address in [
            "::ffff:93.184.215.14",
            "::93.184.215.14",
            "64:ff9b::93.184.215.14",
            "2002:5db8:d70e::1",
            // Teredo: server 65.54.227.120, client 93.184.215.14 inverted (a247:28f1).
            "2001:0:4136:e378:8000:63bf:a247:28f1",
        ] {
            assert_eq!(block_of(address), None, "{address}");
        }
    }

    #[test]
    fn the_message_names_the_block_and_the_carrier() {
        let found = special("2002:0a00:0001::1".parse().unwrap()).unwrap();
        assert_eq!(
            found.to_string(),
            "10.0.0.0/8 (private-use) carried in 2002::/16 (6to4)"
        );
        let found = special("fe80::1".parse().unwrap()).unwrap();
        assert_eq!(found.to_string(), "fe80::/10 (link-local)");
    }
}
