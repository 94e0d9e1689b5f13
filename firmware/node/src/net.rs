//! The libp2p stack of a node: transports, security, multiplexing and behaviours.
//!
//! TCP and QUIC (plus circuits through a relay), Noise, Yamux; identify and ping; mDNS on the
//! LAN; Kademlia (Cairn's own protocol name, so plugs do not join the public IPFS DHT) for
//! peers beyond it; AutoNAT, relay v2 (client, and a small server a plug with a public address
//! offers its friends) and DCUtR for hole punching; the shard protocol over request-response.
//!
//! Memory bounds: connections (total and per peer), muxer streams per connection and the
//! node-wide pools of streams peers open ([`crate::mux`]), QUIC's windows, shard streams per
//! connection, and the byte budget of frames being read ([`Budget`]) are all limited here;
//! relay reservations and circuits have small caps. The worst case is in the README's Bounds.

use std::net::IpAddr;
use std::time::Duration;

use libp2p::core::multiaddr::Protocol;
use libp2p::core::upgrade::Version;
use libp2p::core::Transport;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{
    autonat, connection_limits, dcutr, identify, identity::Keypair, kad, mdns, noise, ping, relay,
    request_response, tcp, Multiaddr, StreamProtocol, Swarm,
};

use crate::codec::{Budget, ShardCodec, PROTOCOL};
use crate::mux::{PooledYamux, Pools, STREAM_WINDOW};

/// Bytes a QUIC connection may have unread, all its streams together: what a Yamux connection
/// holds outside the pools (the frame being read and our own ping stream).
pub const QUIC_CONNECTION_WINDOW: usize = 2 * STREAM_WINDOW;

/// How long a TCP connection's setup (connect, Noise, Yamux) may take. Partners are dialled one
/// address at a time, TCP first ([`dial_order`]): a TCP port a NAT silently drops must give way
/// to the QUIC address behind it in seconds, not after the kernel's SYN retries (minutes).
pub const TCP_SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// `addrs` in the order a partner is dialled: TCP addresses first, the rest (QUIC, relayed)
/// after, each group in its given order. A partner's bulk traffic costs the plug's CPU far less
/// over TCP than over QUIC, which seals and sends every datagram in user space (the measurement
/// is in firmware/node/README.md, "Reaching partners"); QUIC stays for partners TCP cannot
/// reach.
pub fn dial_order(mut addrs: Vec<Multiaddr>) -> Vec<Multiaddr> {
    addrs.sort_by_key(|a| !is_tcp(a));
    addrs
}

/// Whether `addr` is a direct TCP address (not relayed).
pub fn is_tcp(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::Tcp(_)))
        && !addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// Limits on what peers may make this node hold.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Established connections in total (a hard bound, partners included).
    pub max_connections: u32,
    /// Connections of peers that are not partners; beyond it new ones are closed, so strangers
    /// cannot crowd partners out.
    pub max_stranger_connections: u32,
    /// Established connections per peer.
    pub max_per_peer: u32,
    /// Incoming connections still in their handshake.
    pub max_pending_incoming: u32,
    /// Concurrent shard streams per connection.
    pub max_streams: usize,
    /// Muxer streams per connection, both ways and all protocols (Yamux closes a connection
    /// whose peer opens more; QUIC does not let it).
    pub muxer_streams: usize,
    /// Streams partners may have open towards us, node-wide (more are dropped at once).
    pub partner_stream_pool: usize,
    /// Streams other peers (and relayed connections) may have open towards us, node-wide.
    pub stranger_stream_pool: usize,
    /// Requests of one peer being served at once; more get a "busy" answer.
    pub inflight_per_peer: usize,
    /// Bytes of shard frames in memory at once, all peers together.
    pub frame_budget: usize,
    /// How long a shard request may take.
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 32,
            max_stranger_connections: 8,
            max_per_peer: 2,
            max_pending_incoming: 16,
            max_streams: 16,
            // The shard streams, plus identify, ping both ways, Kademlia, AutoNAT, DCUtR, relay.
            muxer_streams: 24,
            partner_stream_pool: 48,
            stranger_stream_pool: 16,
            inflight_per_peer: 8,
            frame_budget: 24 << 20,
            request_timeout: Duration::from_secs(60),
        }
    }
}

pub use behaviour::{Behaviour, BehaviourEvent};

// A module of its own so the allow reaches the event enum the derive writes beside the struct.
mod behaviour {
    #![allow(
        missing_docs,
        reason = "the derive's BehaviourEvent has one undocumented variant per field of Behaviour"
    )]

    use super::*;

    /// Every behaviour of the node.
    #[derive(NetworkBehaviour)]
    pub struct Behaviour {
        /// Caps connections before any other behaviour sees them.
        pub limits: connection_limits::Behaviour,
        /// The shard protocol (its codec knows each connection's peer).
        pub shard: crate::gate::ShardBehaviour,
        /// Learns peers' listen addresses and protocols.
        pub identify: identify::Behaviour,
        /// Keeps connections alive and tells us who is reachable.
        pub ping: ping::Behaviour,
        /// Finds plugs on the LAN (off in tests that run many nodes on one host).
        pub mdns: Toggle<mdns::tokio::Behaviour>,
        /// Finds peers beyond the LAN.
        pub kad: kad::Behaviour<kad::store::MemoryStore>,
        /// Tells whether we are reachable from outside.
        pub autonat: autonat::Behaviour,
        /// Reaches, and is reached through, relays.
        pub relay_client: relay::client::Behaviour,
        /// Offers a few relay slots to friends behind NATs.
        pub relay: relay::Behaviour,
        /// Upgrades relayed connections to direct ones.
        pub dcutr: dcutr::Behaviour,
    }
}

/// Builds the swarm (transports and behaviours) for `key`.
pub fn build(
    key: Keypair,
    limits: &Limits,
    budget: Budget,
    use_mdns: bool,
) -> anyhow::Result<Swarm<Behaviour>> {
    let l = limits.clone();
    let pools = Pools::new(
        l.partner_stream_pool,
        l.stranger_stream_pool,
        budget.gate().clone(),
    );
    let relay_pools = pools.clone();
    let streams = l.muxer_streams;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_quic_config(|mut c| {
            c.max_concurrent_stream_limit = u32::try_from(streams).unwrap_or(u32::MAX);
            c.max_stream_data = STREAM_WINDOW as u32;
            c.max_connection_data = QUIC_CONNECTION_WINDOW as u32;
            c
        })
        // TCP as `with_tcp` builds it, but the muxer learns the peer (for its pool).
        .with_other_transport(
            |key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
                Ok(
                    tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                        .upgrade(Version::V1Lazy)
                        .authenticate(noise::Config::new(key)?)
                        .multiplex(PooledYamux::new(streams, pools))
                        .timeout(TCP_SETUP_TIMEOUT)
                        .map(|(peer, muxer), _| (peer, muxer.with_peer(peer))),
                )
            },
        )?
        .with_relay_client(noise::Config::new, move || {
            PooledYamux::new(streams, relay_pools)
        })?
        .with_behaviour(|key, relay_client| {
            let me = key.public().to_peer_id();
            let gate = budget.gate().clone();
            let shard = crate::gate::ShardBehaviour::new(
                request_response::Behaviour::with_codec(
                    ShardCodec::new(budget),
                    [(PROTOCOL, request_response::ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(l.request_timeout)
                        .with_max_concurrent_streams(l.max_streams),
                ),
                gate,
            );
            let mut kcfg = kad::Config::new(StreamProtocol::new("/cairn/kad/1.0.0"));
            kcfg.set_query_timeout(Duration::from_secs(30));
            let kad = kad::Behaviour::with_config(me, kad::store::MemoryStore::new(me), kcfg);
            let mdns = if use_mdns {
                Some(mdns::tokio::Behaviour::new(mdns::Config::default(), me)?)
            } else {
                None
            };
            let relay_cfg = relay::Config {
                max_reservations: 16,
                max_reservations_per_peer: 2,
                max_circuits: 8,
                max_circuits_per_peer: 2,
                ..Default::default()
            };
            Ok(Behaviour {
                limits: connection_limits::Behaviour::new(
                    connection_limits::ConnectionLimits::default()
                        .with_max_established(Some(l.max_connections))
                        .with_max_established_per_peer(Some(l.max_per_peer))
                        .with_max_pending_incoming(Some(l.max_pending_incoming)),
                ),
                shard,
                identify: identify::Behaviour::new(
                    identify::Config::new("/cairn/id/1.0.0".into(), key.public())
                        .with_agent_version(format!("cairn/{}", env!("CARGO_PKG_VERSION"))),
                ),
                ping: ping::Behaviour::new(
                    ping::Config::new().with_interval(Duration::from_secs(10)),
                ),
                mdns: Toggle::from(mdns),
                kad,
                autonat: autonat::Behaviour::new(me, autonat::Config::default()),
                relay_client,
                relay: relay::Behaviour::new(me, relay_cfg),
                dcutr: dcutr::Behaviour::new(me),
            })
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    Ok(swarm)
}

/// The IP address of a multiaddr, if it has one.
pub fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

/// Whether an address is on this plug's own network (private, loopback or link-local): where
/// button pairing is allowed.
pub fn is_local(addr: &Multiaddr) -> bool {
    if addr.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
        return false;
    }
    match ip_of(addr) {
        Some(IpAddr::V4(ip)) => ip.is_private() || ip.is_loopback() || ip.is_link_local(),
        Some(IpAddr::V6(ip)) => {
            ip.is_loopback()
                || (ip.segments()[0] & 0xfe00) == 0xfc00
                || (ip.segments()[0] & 0xffc0) == 0xfe80
        }
        None => false,
    }
}

/// The public IP of an address (for placement: never two shards behind one home line).
pub fn public_ip(addr: &Multiaddr) -> Option<IpAddr> {
    if is_local(addr) || addr.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
        return None;
    }
    ip_of(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_and_public_addresses_are_told_apart() {
        let a = |s: &str| s.parse::<Multiaddr>().unwrap();
        assert!(is_local(&a("/ip4/192.168.1.5/tcp/4001")));
        assert!(is_local(&a("/ip4/127.0.0.1/udp/4001/quic-v1")));
        assert!(is_local(&a("/ip6/fe80::1/tcp/1")));
        assert!(!is_local(&a("/ip4/81.2.3.4/tcp/4001")));
        assert_eq!(
            public_ip(&a("/ip4/81.2.3.4/tcp/4001")),
            Some("81.2.3.4".parse().unwrap())
        );
        assert_eq!(public_ip(&a("/ip4/10.0.0.2/tcp/4001")), None);
        assert_eq!(public_ip(&a("/dns4/example.org/tcp/1")), None);
    }

    #[test]
    fn partners_are_dialled_tcp_first_and_relays_last_among_equals() {
        let a = |s: &str| s.parse::<Multiaddr>().unwrap();
        let quic = a("/ip4/192.168.1.5/udp/4001/quic-v1");
        let tcp = a("/ip4/192.168.1.5/tcp/4001");
        let tcp6 = a("/ip6/fe80::1/tcp/4001");
        let relayed = a("/ip4/81.2.3.4/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit");
        assert!(is_tcp(&tcp) && !is_tcp(&quic) && !is_tcp(&relayed));
        assert_eq!(
            dial_order(vec![
                quic.clone(),
                relayed.clone(),
                tcp.clone(),
                tcp6.clone()
            ]),
            vec![tcp, tcp6, quic, relayed],
            "TCP first, each group in its given order"
        );
    }
}
