//! Who a request came from when it came through proxies Keyway trusts: the first
//! hop of `X-Forwarded-For`, read from the right, that is not one of them. Only a
//! peer in `trusted_proxies` is believed at all; anything else a client writes there
//! is a claim, not an address.

use std::net::IpAddr;

use ipnet::IpNet;

/// The client address of a request from `peer` with these `X-Forwarded-For`
/// values (in the order received): `peer` itself unless it is trusted; else, from
/// the right, the first address that is not a trusted proxy. An entry that is not an
/// address ends the walk at the last address read (a trusted proxy wrote it, and
/// nothing left of it can be believed). All trusted: the leftmost.
pub fn client_address<'a>(
    peer: IpAddr,
    forwarded_for: impl IntoIterator<Item = &'a str>,
    trusted: &[IpNet],
) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |a: &IpAddr| trusted.iter().any(|n| n.contains(a));
    if !is_trusted(&peer) {
        return peer;
    }
    let entries: Vec<&str> = forwarded_for
        .into_iter()
        .flat_map(|v| v.split(','))
        .collect();
    let mut last = peer;
    for entry in entries.iter().rev() {
        let Some(addr) = parse_hop(entry.trim()) else {
            return last;
        };
        if !is_trusted(&addr) {
            return addr;
        }
        last = addr;
    }
    last
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
        // Not through a trusted proxy: the header is the client's claim.
        assert_eq!(
            client_address(ip("203.0.113.9"), ["1.1.1.1"], &trusted),
            ip("203.0.113.9")
        );
        // Through one: the hop it saw.
        assert_eq!(
            client_address(ip("10.0.0.2"), ["198.51.100.7"], &trusted),
            ip("198.51.100.7")
        );
        // A client's own forged entries sit left of what the proxies wrote.
        assert_eq!(
            client_address(
                ip("10.0.0.2"),
                ["1.1.1.1, 198.51.100.7", "10.0.0.5"],
                &trusted
            ),
            ip("198.51.100.7")
        );
        // Garbage where an address should be: the last hop a trusted proxy wrote.
        assert_eq!(
            client_address(ip("10.0.0.2"), ["1.1.1.1, nonsense, 10.0.0.5"], &trusted),
            ip("10.0.0.5")
        );
        // No header: the proxy itself.
        assert_eq!(client_address(ip("10.0.0.2"), [], &trusted), ip("10.0.0.2"));
        // Ports and brackets, IPv4-mapped peers.
        assert_eq!(
            client_address(ip("::ffff:10.0.0.2"), ["[2001:db8::1]:443"], &trusted),
            ip("2001:db8::1")
        );
        assert_eq!(
            client_address(ip("10.0.0.2"), ["198.51.100.7:5000"], &trusted),
            ip("198.51.100.7")
        );
    }

    proptest! {
        /// Whatever the header says, the answer is the peer, an address in the
        /// header, and never a trusted proxy unless every hop is one.
        #[test]
        fn the_answer_is_the_peer_or_a_hop_written_there(
            header in "[0-9a-f.:, \\[\\]x]{0,64}",
            peer in any::<[u8; 4]>(),
        ) {
            let trusted = nets(&["10.0.0.0/8", "127.0.0.0/8"]);
            let peer = IpAddr::from(peer);
            let got = client_address(peer, [header.as_str()], &trusted);
            let written: Vec<IpAddr> = header.split(',').filter_map(|h| parse_hop(h.trim())).collect();
            prop_assert!(got == peer.to_canonical() || written.contains(&got));
            if !trusted.iter().any(|n| n.contains(&peer)) {
                prop_assert_eq!(got, peer);
            }
        }
    }
}
