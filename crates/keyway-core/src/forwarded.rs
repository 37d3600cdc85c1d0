//! Who a request came from when it came through proxies Keyway trusts: the first
//! hop of `X-Forwarded-For`, read from the right, that is not one of them. Only a
//! peer in `trusted_proxies` is believed at all; anything else a client writes there
//! is a claim, not an address.

use std::net::IpAddr;

use ipnet::IpNet;

/// The client address of a request from `peer` with these `X-Forwarded-For`
/// values (in the order received): `peer` itself unless it is trusted; else, from
/// the right, the first address that is not a trusted proxy. `None` when a trusted
/// peer names no such hop (no header, only proxies, or an entry that is not an
/// address before one): the client is unknown, and must not be taken for the proxy,
/// whose address may be one `allow_cidrs` lets in.
pub fn client_address<'a>(
    peer: IpAddr,
    forwarded_for: impl IntoIterator<Item = &'a str>,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let peer = peer.to_canonical();
    let is_trusted = |a: &IpAddr| trusted.iter().any(|n| n.contains(a));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let entries: Vec<&str> = forwarded_for
        .into_iter()
        .flat_map(|v| v.split(','))
        .collect();
    for entry in entries.iter().rev() {
        let addr = parse_hop(entry.trim())?;
        if !is_trusted(&addr) {
            return Some(addr);
        }
    }
    None
}

/// One hop: an address, maybe with a port (`1.2.3.4:5678`, `[::1]:80`).
fn parse_hop(s: &str) -> Option<IpAddr> {
    if let Ok(a) = s.parse::<IpAddr>() {
        return Some(a.to_canonical());
    }
    s.parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| a.ip().to_canonical())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_a_trusted_peer_is_believed() {
        let trusted = nets(&["10.0.0.0/8"]);
        let proxy = ip("10.0.0.2");
        let found =
            |peer: IpAddr, header: &[&str]| client_address(peer, header.iter().copied(), &trusted);
        // Not through a trusted proxy: the header is the client's claim.
        assert_eq!(
            found(ip("203.0.113.9"), &["1.1.1.1"]),
            Some(ip("203.0.113.9"))
        );
        // Through one: the hop it saw.
        assert_eq!(found(proxy, &["198.51.100.7"]), Some(ip("198.51.100.7")));
        // A client's own forged entries sit left of what the proxies wrote.
        assert_eq!(
            found(proxy, &["1.1.1.1, 198.51.100.7", "10.0.0.5"]),
            Some(ip("198.51.100.7"))
        );
        // Unknown, never the proxy: garbage before an untrusted hop, no header, only
        // proxies.
        assert_eq!(found(proxy, &["1.1.1.1, nonsense, 10.0.0.5"]), None);
        assert_eq!(found(proxy, &[]), None);
        assert_eq!(found(proxy, &["10.0.0.7, 10.0.0.5"]), None);
        // Ports and brackets, IPv4-mapped peers.
        assert_eq!(
            found(ip("::ffff:10.0.0.2"), &["[2001:db8::1]:443"]),
            Some(ip("2001:db8::1"))
        );
        assert_eq!(
            found(proxy, &["198.51.100.7:5000"]),
            Some(ip("198.51.100.7"))
        );
    }

    proptest! {
        /// Whatever the header says: an untrusted peer is itself; through a trusted
        /// one, an address written in the header that is not a trusted proxy, or
        /// unknown.
        #[test]
        fn the_answer_is_the_peer_or_a_hop_written_there(
            header in "[0-9a-f.:, \\[\\]x]{0,64}",
            peer in any::<[u8; 4]>(),
        ) {
            let trusted = nets(&["10.0.0.0/8", "127.0.0.0/8"]);
            let peer = IpAddr::from(peer);
            let got = client_address(peer, [header.as_str()], &trusted);
            let written: Vec<IpAddr> = header.split(',').filter_map(|h| parse_hop(h.trim())).collect();
            let is_trusted = |a: &IpAddr| trusted.iter().any(|n| n.contains(a));
            if !is_trusted(&peer) {
                prop_assert_eq!(got, Some(peer));
            } else if let Some(got) = got {
                prop_assert!(written.contains(&got) && !is_trusted(&got));
            }
        }
    }
}
