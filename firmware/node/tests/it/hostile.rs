//! Hostile peers against a running storage node: garbage, oversized and truncated frames,
//! strangers, shards that do not match their key, absurd challenges, floods of requests and of
//! muxer streams (beyond a connection's cap, beyond the strangers' pool), quota
//! abuse, reads and audits of other owners' shards and of the holder's own records, squatted
//! keys, a new plug of an owner, and races for one key. Each is refused (with a reason naming the peer or shard where there is an
//! answer at all), the node keeps serving well-behaved partners, and the frame budget — the
//! bound on the bytes of frames in memory — is whole again afterwards.
//!
//! The node runs in this process (`node::run_until`, its own runtime on its own thread) on
//! loopback TCP. The peers are minimal libp2p clients (TCP, Noise, Yamux, request-response on
//! the shard protocol) whose codec writes a request's bytes verbatim and reads whatever comes
//! back, so they can send what no honest node would. Every wait is bounded by [`WAIT`]; shards
//! are small (≤ 300 KiB), so the file runs in under a second in release builds.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use crate::common;
use async_trait::async_trait;

use cairn_node::audit::{Challenge, RANGE_BYTES_MAX};
use cairn_node::identity::statement;
use cairn_node::invite::Invitation;
use cairn_node::net::Limits;
use cairn_node::node::Config;
use cairn_node::records::{hex, local_id, record_id, shard_key};
use cairn_node::wire::{
    ErrorCode, Frame, Msg, OwnerAuth, ShardId, FRAME_BYTES_MAX, HEADER_LEN, PAIR_INVITE,
    PAIR_REVEAL, PAIR_WINDOW, VERSION,
};
use cairn_vault::seal::AeadKind;
use cairn_vault::shard::{encode_shard, ShardAuth, ShardHeader};
use cairn_vault::ChunkId;
use cairn_vault::{OwnerKey, OwnerSecret};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::core::muxing::StreamMuxerExt;
use libp2p::core::transport::{DialOpts as TransportDialOpts, PortUse};
use libp2p::core::upgrade::Version;
use libp2p::core::{Endpoint, Transport};
use libp2p::identity::Keypair;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::SwarmEvent;
use libp2p::{noise, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm};
use serde_json::{json, Value};

/// Longest any single wait in this file may take before the test fails.
const WAIT: Duration = Duration::from_secs(20);

/// The shard protocol's name, as the node negotiates it.
const SHARD_PROTOCOL: StreamProtocol = StreamProtocol::new("/cairn/shard/1");

/// Lease asked for with each put.
const LEASE: u32 = 3600;

// ---------------------------------------------------------------------------------------------
// The node under test.

/// A node running on its own thread in this process (see `common`); stopped on drop.
struct Node {
    run: common::Running,
    peer: PeerId,
    addr: Multiaddr,
    /// The frame budget when nothing is being read (what "full" means in `status`).
    budget: usize,
}

impl Node {
    /// Starts a node on a loopback TCP port, `tune` adjusting its configuration.
    fn start(tune: impl FnOnce(&mut Config)) -> Node {
        let mut budget = 0;
        let run = common::Running::start(|cfg| {
            tune(cfg);
            // The node never budgets less than one largest frame.
            budget = cfg.limits.frame_budget.max(FRAME_BYTES_MAX);
        });
        let mut node = Node {
            run,
            peer: PeerId::random(),
            addr: Multiaddr::empty(),
            budget,
        };
        let st = node.status();
        node.peer = st["peer"]
            .as_str()
            .expect("peer id")
            .parse()
            .expect("peer id");
        node.addr = st["listen"][0]
            .as_str()
            .expect("a listen address")
            .parse()
            .expect("multiaddr");
        assert_eq!(st["frame_budget_free"], json!(budget), "{st}");
        node
    }

    /// One control request; the node's one-line reason on refusal.
    fn op(&self, req: Value) -> Result<Value, String> {
        self.run.op(req)
    }

    fn status(&self) -> Value {
        self.op(json!({"op": "status"})).expect("status")
    }

    /// What this node's books say about `peer`, as `status` shows them to an operator.
    fn partner(&self, peer: &PeerId) -> Value {
        let st = self.status();
        st["partners"]
            .as_array()
            .expect("partners")
            .iter()
            .find(|p| p["peer"] == json!(peer.to_string()))
            .cloned()
            .unwrap_or_else(|| panic!("{peer} is not among the partners: {st}"))
    }

    /// The node's thread is still running and its control socket answers.
    fn assert_alive(&self) {
        assert!(self.run.is_running(), "the node stopped");
        assert_eq!(self.status()["ok"], json!(true));
    }

    /// Waits until no frame holds any of the budget (bounded by [`WAIT`]).
    fn assert_budget_returns_to_full(&self) {
        let t = Instant::now();
        loop {
            let st = self.status();
            if st["frame_budget_free"] == json!(self.budget) {
                return;
            }
            assert!(
                t.elapsed() < WAIT,
                "frame budget still partly taken after {WAIT:?}: {} of {} free",
                st["frame_budget_free"],
                self.budget
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the node and checks that it stopped cleanly.
    fn stop(mut self) {
        self.run.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// A peer that says whatever it likes on the shard protocol.

/// Writes a request's bytes verbatim and closes its side; reads the answer up to one byte more
/// than any legal frame (so an oversized answer would show), an empty answer being an error.
#[derive(Clone, Copy, Default)]
struct RawCodec {
    /// Writes the request's bytes and then nothing more, never closing: a stalled sender.
    stall: bool,
}

#[async_trait]
impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, _: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        Err(io::Error::other("this peer serves no requests"))
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut buf = Vec::new();
        io.take(FRAME_BYTES_MAX as u64 + 1)
            .read_to_end(&mut buf)
            .await?;
        if buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "stream closed without an answer",
            ));
        }
        Ok(buf)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&req).await?;
        if self.stall {
            io.flush().await?;
            futures::future::pending::<()>().await;
        }
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
        _: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        Err(io::Error::other("this peer serves no requests"))
    }
}

/// What became of one request: the node's answer, or why there was none.
type Answer = Result<Msg, String>;

/// A libp2p peer with one connection to the node.
struct Peer {
    swarm: Swarm<request_response::Behaviour<RawCodec>>,
    /// Its identity (for connections of its own beside the swarm's).
    key: Keypair,
    node: PeerId,
    /// The statement of the owner its requests are made for, for its own peer id.
    auth: OwnerAuth,
}

/// Dials `node` and waits for the connection (bounded by [`WAIT`]).
async fn dial(swarm: &mut Swarm<request_response::Behaviour<RawCodec>>, node: &Node) {
    swarm
        .dial(
            DialOpts::peer_id(node.peer)
                .addresses(vec![node.addr.clone()])
                .build(),
        )
        .expect("dial");
    let connected = tokio::time::timeout(WAIT, async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == node.peer => {
                    return;
                }
                SwarmEvent::OutgoingConnectionError { error, .. } => {
                    panic!("connecting to the node: {error}")
                }
                _ => {}
            }
        }
    })
    .await;
    assert!(connected.is_ok(), "no connection to the node in {WAIT:?}");
}

/// Opens `n` streams to `node` as `key`, on a connection of its own, each sending the first
/// byte of a protocol header and nothing more (the node waits for the rest). Whether the node
/// closed that connection (bounded by [`WAIT`]).
async fn open_silent_streams(node: &Node, key: &Keypair, n: usize) -> bool {
    let mut transport = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
        .upgrade(Version::V1Lazy)
        .authenticate(noise::Config::new(key).expect("noise"))
        .multiplex(yamux::Config::default());
    let opts = TransportDialOpts {
        role: Endpoint::Dialer,
        port_use: PortUse::New,
    };
    let (peer, mut muxer) = transport
        .dial(node.addr.clone(), opts)
        .expect("dial")
        .await
        .expect("a connection to the node");
    assert_eq!(peer, node.peer);
    // Each stream and whether its byte went out.
    let mut streams = Vec::new();
    let closed = futures::future::poll_fn(|cx| {
        loop {
            match muxer.poll_unpin(cx) {
                Poll::Ready(Ok(_)) => continue,
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Pending => break,
            }
        }
        // The node's own streams (identify, ping): not answered.
        while let Poll::Ready(r) = muxer.poll_inbound_unpin(cx) {
            if r.is_err() {
                return Poll::Ready(());
            }
        }
        while streams.len() < n {
            match muxer.poll_outbound_unpin(cx) {
                Poll::Ready(Ok(s)) => streams.push((s, false)),
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Pending => break,
            }
        }
        for (s, sent) in streams.iter_mut().filter(|(_, sent)| !*sent) {
            match Pin::new(s).poll_write(cx, b"\x13") {
                Poll::Ready(Ok(_)) => *sent = true,
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Pending => {}
            }
        }
        Poll::Pending
    });
    tokio::time::timeout(WAIT, closed).await.is_ok()
}

/// A new owner's key (from a fresh owner secret).
fn new_owner() -> OwnerKey {
    OwnerSecret::generate()
        .expect("random secret")
        .keys()
        .owner_key()
        .clone()
}

impl Peer {
    /// A fresh identity acting for a new owner of its own, connected to `node`.
    async fn connect(node: &Node) -> Peer {
        Self::connect_as(node, &new_owner()).await
    }

    /// A fresh identity acting for `owner` (another plug of that owner), connected to `node`.
    async fn connect_as(node: &Node, owner: &OwnerKey) -> Peer {
        Self::connect_with(node, owner, RawCodec::default()).await
    }

    /// A fresh identity acting for `owner` with a statement of `epoch` (a later one supersedes
    /// the plugs of earlier ones), connected to `node`.
    async fn connect_at(node: &Node, owner: &OwnerKey, epoch: u64) -> Peer {
        let mut p = Self::connect_as(node, owner).await;
        p.auth = OwnerAuth {
            owner: owner.public(),
            epoch,
            sig: owner.sign(&statement(epoch, &p.id())),
        };
        p
    }

    /// A fresh identity acting for `owner`, connected to `node`, whose requests go out through
    /// `codec`.
    async fn connect_with(node: &Node, owner: &OwnerKey, codec: RawCodec) -> Peer {
        let key = Keypair::generate_ed25519();
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key.clone())
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .expect("tcp transport")
            .with_behaviour(|_| {
                request_response::Behaviour::with_codec(
                    codec,
                    [(SHARD_PROTOCOL, ProtocolSupport::Outbound)],
                    // Room for a whole flood on one connection: the node's limits are tested,
                    // not ours.
                    request_response::Config::default()
                        .with_request_timeout(WAIT)
                        .with_max_concurrent_streams(512),
                )
            })
            .expect("behaviour")
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        dial(&mut swarm, node).await;
        let me = *swarm.local_peer_id();
        let auth = OwnerAuth {
            owner: owner.public(),
            epoch: 1,
            sig: owner.sign(&statement(1, &me)),
        };
        Peer {
            swarm,
            key,
            node: node.peer,
            auth,
        }
    }

    /// Whether this peer has a connection to the node.
    fn connected(&self) -> bool {
        self.swarm.is_connected(&self.node)
    }

    /// Closes its connection to the node (bounded by [`WAIT`]).
    async fn disconnect(&mut self) {
        let _ = self.swarm.disconnect_peer_id(self.node);
        let closed = tokio::time::timeout(WAIT, async {
            while self.swarm.is_connected(&self.node) {
                self.swarm.select_next_some().await;
            }
        })
        .await;
        assert!(closed.is_ok(), "the connection to the node did not close");
    }

    /// Connects to the node again (after it closed the connection).
    async fn reconnect(&mut self, node: &Node) {
        dial(&mut self.swarm, node).await;
    }

    /// `msg` framed as this peer sends it: requests but `Pair` carry its owner's statement.
    fn frame(&self, msg: Msg) -> Vec<u8> {
        let auth = (msg.is_request() && !matches!(msg, Msg::Pair { .. } | Msg::Retire))
            .then_some(self.auth);
        Frame { id: 1, auth, msg }.to_bytes().expect("encodable")
    }

    fn id(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    /// Sends every request at once on its own stream; the answers, in order (bounded wait).
    async fn send_raw(&mut self, reqs: Vec<Vec<u8>>) -> Vec<Result<Vec<u8>, String>> {
        let mut pending: HashMap<OutboundRequestId, usize> = HashMap::new();
        for (i, r) in reqs.into_iter().enumerate() {
            let id = self.swarm.behaviour_mut().send_request(&self.node, r);
            pending.insert(id, i);
        }
        let mut out: Vec<Option<Result<Vec<u8>, String>>> = vec![None; pending.len()];
        let done = tokio::time::timeout(WAIT + Duration::from_secs(5), async {
            while !pending.is_empty() {
                match self.swarm.select_next_some().await {
                    SwarmEvent::Behaviour(request_response::Event::Message {
                        message:
                            request_response::Message::Response {
                                request_id,
                                response,
                            },
                        ..
                    }) => {
                        if let Some(i) = pending.remove(&request_id) {
                            out[i] = Some(Ok(response));
                        }
                    }
                    SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                        request_id,
                        error,
                        ..
                    }) => {
                        if let Some(i) = pending.remove(&request_id) {
                            out[i] = Some(Err(error.to_string()));
                        }
                    }
                    _ => {}
                }
            }
        })
        .await;
        assert!(done.is_ok(), "{} requests got no outcome", pending.len());
        out.into_iter().map(|a| a.expect("outcome")).collect()
    }

    /// Sends well-formed requests at once; the decoded answers (an answer that is not exactly
    /// one valid reply frame fails the test: the node must never send one).
    async fn ask_all(&mut self, msgs: Vec<Msg>) -> Vec<Answer> {
        let reqs = msgs.into_iter().map(|m| self.frame(m)).collect();
        self.send_raw(reqs)
            .await
            .into_iter()
            .map(|r| {
                r.map(|bytes| {
                    let f = Frame::decode_exact(&bytes)
                        .unwrap_or_else(|e| panic!("the node answered a malformed frame: {e}"));
                    assert!(!f.msg.is_request(), "the node answered with a request");
                    f.msg
                })
            })
            .collect()
    }

    /// One well-formed request that must be answered.
    async fn ask(&mut self, msg: Msg) -> Msg {
        let what = format!("{msg:.60?}");
        self.ask_all(vec![msg])
            .await
            .pop()
            .expect("one answer")
            .unwrap_or_else(|e| panic!("{what}: no answer: {e}"))
    }

    /// Becomes the node's partner with a fresh invitation, as `cairn node join` would.
    async fn pair(&mut self, node: &Node) {
        let inv = invitation(node);
        let answer = self
            .ask(Msg::Pair {
                mode: PAIR_INVITE,
                secret: inv.secret,
            })
            .await;
        assert_eq!(answer, Msg::Paired);
        assert_eq!(node.partner(&self.id())["via"], json!("invitation"));
    }
}

fn invitation(node: &Node) -> Invitation {
    let v = node.op(json!({"op": "invite"})).expect("invite");
    let inv = Invitation::decode(v["code"].as_str().expect("code")).expect("valid code");
    assert_eq!(inv.peer, node.peer);
    inv
}

/// `msg` framed with a statement nobody signed on requests (for frames the node must drop
/// before it looks at a statement).
fn frame(msg: Msg) -> Vec<u8> {
    let auth =
        (msg.is_request() && !matches!(msg, Msg::Pair { .. } | Msg::Retire)).then_some(OwnerAuth {
            owner: [0; 32],
            epoch: 0,
            sig: [0; 64],
        });
    Frame { id: 1, auth, msg }.to_bytes().expect("encodable")
}

/// A frame header as a hostile peer writes it: any kind, any claimed body length.
fn header(version: u8, kind: u8, body_len: u32) -> Vec<u8> {
    let mut h = vec![version, kind, 9, 0, 0, 0];
    h.extend_from_slice(&body_len.to_le_bytes());
    h
}

/// Runs a test body on a single-threaded runtime (the peers' swarms live there).
fn run<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

// ---------------------------------------------------------------------------------------------
// Shards.

/// A well-formed vault shard of `payload` bytes (2-of-4), its bytes derived from `seed`.
fn vault_shard(chunk: [u8; 32], index: u8, payload: usize, seed: &str) -> Vec<u8> {
    let h = ShardHeader {
        aead: AeadKind::ChaCha20Poly1305,
        k: 2,
        n: 4,
        index,
        sealed_len: (payload * 2) as u32,
        chunk: ChunkId(chunk),
    };
    let mut body = vec![0u8; payload];
    blake3::Hasher::new()
        .update(seed.as_bytes())
        .update(&chunk)
        .update(&[index])
        .finalize_xof()
        .fill(&mut body);
    // The holder checks the format only; whose digests and tag these are is the vault's check.
    let auth = ShardAuth::new(&[0; 32], &h.chunk, vec![[0; 32]; usize::from(h.n)]);
    let mut out = Vec::new();
    encode_shard(&h, &body, &auth, &mut out);
    out
}

fn put(key: ShardId, data: &[u8]) -> Msg {
    Msg::Put {
        shard: key,
        lease_secs: LEASE,
        data: data.to_vec(),
    }
}

/// Asserts an error answer with `code` whose reason contains every one of `parts`.
#[track_caller]
fn assert_refused(answer: &Msg, code: ErrorCode, parts: &[&str]) {
    match answer {
        Msg::Error { code: c, reason } => {
            assert_eq!(*c, code, "{reason}");
            for p in parts {
                assert!(
                    reason.contains(p),
                    "reason {reason:?} does not mention {p:?}"
                );
            }
        }
        other => panic!("expected a {code:?} refusal, got {other:.80?}"),
    }
}

/// Puts `data` under `key` and checks it is stored and reads back identical.
async fn put_and_get_back(peer: &mut Peer, key: ShardId, data: &[u8]) {
    assert_eq!(peer.ask(put(key, data)).await, Msg::Stored { shard: key });
    gets_back(peer, key, data).await;
}

/// Asks for `key` and checks the answer is `data`.
async fn gets_back(peer: &mut Peer, key: ShardId, data: &[u8]) {
    assert_eq!(
        peer.ask(Msg::Get { shard: key }).await,
        Msg::ShardData {
            shard: key,
            data: data.to_vec()
        }
    );
}

/// Renews the lease of `key` and checks the answer.
async fn renews(peer: &mut Peer, key: ShardId) {
    let answer = peer
        .ask(Msg::RenewLease {
            shard: key,
            lease_secs: LEASE,
        })
        .await;
    assert_eq!(
        answer,
        Msg::LeaseRenewed {
            shard: key,
            lease_secs: LEASE
        }
    );
}

/// Deletes `key` and checks the answer.
async fn deletes(peer: &mut Peer, key: ShardId) {
    assert_eq!(
        peer.ask(Msg::Delete { shard: key }).await,
        Msg::Deleted { shard: key }
    );
}

/// `peer` deletes the node's last shard, `key`: the books of `payer` (who put it) and the
/// node's use are empty again.
async fn deletes_the_last(node: &Node, payer: PeerId, peer: &mut Peer, key: ShardId) {
    deletes(peer, key).await;
    assert_eq!(node.partner(&payer)["held_for_them"], json!(0));
    assert_eq!(node.status()["used"], json!(0));
}

// ---------------------------------------------------------------------------------------------
// The cases.

#[test]
fn garbage_oversized_truncated_and_misplaced_frames_are_dropped_and_partners_still_served() {
    let node = Node::start(|_| {});
    run(async {
        let mut a = Peer::connect(&node).await;
        a.pair(&node).await;

        let get = frame(Msg::Get {
            shard: ShardId([3; 32]),
        });
        let mut claims_4gib = header(VERSION, 0x01, u32::MAX);
        claims_4gib.extend_from_slice(&[0xAB; 4096]);
        let mut truncated_put = header(VERSION, 0x01, 1 << 20);
        truncated_put.extend_from_slice(&[7; 1000]);
        let mut wrong_version = get.clone();
        wrong_version[0] = VERSION + 1;
        let mut seeded = vec![0u8; 300];
        blake3::Hasher::new()
            .update(b"garbage")
            .finalize_xof()
            .fill(&mut seeded);
        let hostile: Vec<(&str, Vec<u8>)> = vec![
            (
                "an HTTP request",
                b"GET / HTTP/1.1\r\nHost: plug\r\n\r\n".to_vec(),
            ),
            ("random bytes", seeded),
            ("a put claiming a 4 GiB body", claims_4gib),
            (
                "a get claiming a 4 GiB body",
                header(VERSION, 0x02, u32::MAX),
            ),
            ("an unknown kind", header(VERSION, 0x42, 0)),
            ("another protocol version", wrong_version),
            ("a put cut short after 1000 of 1 MiB", truncated_put),
            (
                "a frame cut inside its header",
                get[..HEADER_LEN - 3].to_vec(),
            ),
            (
                "a frame cut inside its body",
                get[..HEADER_LEN + 5].to_vec(),
            ),
            ("nothing at all", Vec::new()),
            (
                "a stored reply sent as a request",
                frame(Msg::Stored {
                    shard: ShardId([3; 32]),
                }),
            ),
            (
                "shard data sent as a request",
                frame(Msg::ShardData {
                    shard: ShardId([3; 32]),
                    data: vec![1; 100],
                }),
            ),
            (
                "an error reply sent as a request",
                frame(Msg::Error {
                    code: ErrorCode::Busy,
                    reason: "busy".into(),
                }),
            ),
            ("a paired reply sent as a request", frame(Msg::Paired)),
        ];
        let (names, reqs): (Vec<_>, Vec<_>) = hostile.into_iter().unzip();
        let answers = a.send_raw(reqs).await;
        for (name, answer) in names.iter().zip(&answers) {
            // Nothing is answered to a frame the node cannot read: the stream is closed.
            assert!(
                answer.is_err(),
                "{name}: the node answered {:?}",
                answer.as_ref().map(|b| Frame::decode(b))
            );
        }
        node.assert_alive();
        node.assert_budget_returns_to_full();

        // The same partner on the same connection, and a second one, are served as before.
        let chunk = [0x11; 32];
        let s0 = vault_shard(chunk, 0, 4096, "a");
        put_and_get_back(&mut a, shard_key(&chunk, 0), &s0).await;
        let mut b = Peer::connect(&node).await;
        b.pair(&node).await;
        let s1 = vault_shard(chunk, 1, 4096, "b");
        put_and_get_back(&mut b, shard_key(&chunk, 1), &s1).await;
        node.assert_budget_returns_to_full();
        assert_eq!(node.status()["used"], json!(s0.len() + s1.len()));
    });
    node.stop();
}

#[test]
fn a_stranger_is_refused_as_not_a_partner_and_cannot_reuse_an_invitation() {
    let node = Node::start(|_| {});
    run(async {
        let mut a = Peer::connect(&node).await;
        let inv = invitation(&node);
        let mut stranger = Peer::connect(&node).await;
        let me = stranger.id().to_string();
        let chunk = [0x22; 32];
        let key = shard_key(&chunk, 0);
        // Small enough for a frame a stranger may send (pairing's size): large ones are cut
        // off after their header (see the stalled stranger below).
        let s = vault_shard(chunk, 0, 1024, "stranger");
        let answers = stranger
            .ask_all(vec![
                put(key, &s),
                Msg::Get { shard: key },
                Msg::Delete { shard: key },
                Msg::FreeSpaceQuery,
                Msg::Pair {
                    mode: PAIR_INVITE,
                    secret: [0x5a; 16],
                },
            ])
            .await;
        let answers: Vec<Msg> = answers.into_iter().map(|a| a.expect("answered")).collect();
        for answer in &answers[..4] {
            assert_refused(answer, ErrorCode::BadRequest, &["is not a partner", &me]);
        }
        assert_refused(
            &answers[4],
            ErrorCode::BadRequest,
            &["unknown or already used invitation"],
        );
        assert_eq!(node.status()["used"], json!(0));
        assert!(node.status()["partners"].as_array().unwrap().is_empty());

        // A partner uses the invitation; the stranger cannot use it after it.
        let ok = a
            .ask(Msg::Pair {
                mode: PAIR_INVITE,
                secret: inv.secret,
            })
            .await;
        assert_eq!(ok, Msg::Paired);
        let again = stranger
            .ask(Msg::Pair {
                mode: PAIR_INVITE,
                secret: inv.secret,
            })
            .await;
        assert_refused(&again, ErrorCode::BadRequest, &["already used"]);
        let still = stranger.ask(put(key, &s)).await;
        assert_refused(&still, ErrorCode::BadRequest, &["is not a partner", &me]);
        put_and_get_back(&mut a, key, &s).await;
        let partners = node.status()["partners"].as_array().unwrap().len();
        assert_eq!(partners, 1);
    });
    node.stop();
}

#[test]
fn a_strangers_stalled_frames_take_none_of_the_budget_and_a_partner_is_served() {
    // The budget is one largest frame: one stranger's stalled put could hold all of it.
    let node = Node::start(|c| c.limits.frame_budget = 0);
    run(async {
        let mut a = Peer::connect(&node).await;
        a.pair(&node).await;
        let mut stranger = Peer::connect_with(&node, &new_owner(), RawCodec { stall: true }).await;
        // Headers of the largest puts; their bodies never come.
        let largest = (FRAME_BYTES_MAX - HEADER_LEN) as u32;
        for _ in 0..4 {
            let head = header(VERSION, 0x01, largest);
            stranger
                .swarm
                .behaviour_mut()
                .send_request(&node.peer, head);
        }
        // The stranger's swarm writes them while it is polled (only here); its streams stay
        // open until it is dropped.
        let drive = async {
            loop {
                stranger.swarm.select_next_some().await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(500), drive).await;
        let st = node.status();
        assert_eq!(
            st["frame_budget_free"],
            json!(node.budget),
            "a stranger's stalled frames hold budget: {st}"
        );
        let chunk = [0x7a; 32];
        let s = vault_shard(chunk, 0, 256 << 10, "served");
        put_and_get_back(&mut a, shard_key(&chunk, 0), &s).await;
        drop(stranger);
        node.assert_alive();
        node.assert_budget_returns_to_full();
    });
    node.stop();
}

#[test]
fn strangers_streams_beyond_their_pool_are_dropped_and_a_partner_is_served() {
    let node = Node::start(|_| {});
    let pool = Limits::default().stranger_stream_pool;
    run(async {
        let mut a = Peer::connect(&node).await;
        a.pair(&node).await;
        // Two strangers, each with fewer stalled pairing requests than one connection may
        // carry (its muxer and shard-stream caps), together more than the strangers' pool.
        let per = pool / 2 + 2;
        let mut strangers = Vec::new();
        for _ in 0..2 {
            let mut s = Peer::connect_with(&node, &new_owner(), RawCodec { stall: true }).await;
            for _ in 0..per {
                let head = header(VERSION, 0x07, 17);
                s.swarm.behaviour_mut().send_request(&node.peer, head);
            }
            strangers.push(s);
        }
        // The streams beyond the pool fail at once; the others stay open, stalled (until the
        // node's request timeout, longer than this wait).
        let beyond = 2 * per - pool;
        let mut failed = 0;
        let (s0, s1) = strangers.split_at_mut(1);
        let (s0, s1) = (&mut s0[0], &mut s1[0]);
        let drive = async {
            while failed < beyond {
                let e = tokio::select! {
                    e = s0.swarm.select_next_some() => e,
                    e = s1.swarm.select_next_some() => e,
                };
                if let SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                    error,
                    ..
                }) = e
                {
                    assert!(
                        !matches!(error, request_response::OutboundFailure::Timeout),
                        "a stalled stream timed out before the pool's were dropped"
                    );
                    failed += 1;
                }
            }
        };
        let waited = tokio::time::timeout(Duration::from_secs(10), drive).await;
        assert!(
            waited.is_ok(),
            "{failed} of {} strangers' streams were dropped, {beyond} expected",
            2 * per
        );
        assert!(s0.connected() && s1.connected(), "a stranger was cut off");
        // With the strangers' pool full, the partner is served from its own.
        let chunk = [0x7b; 32];
        let shard = vault_shard(chunk, 0, 64 << 10, "pool");
        put_and_get_back(&mut a, shard_key(&chunk, 0), &shard).await;
        drop(strangers);
        node.assert_alive();
        node.assert_budget_returns_to_full();
    });
    node.stop();
}

#[test]
fn shards_that_do_not_match_their_key_are_refused_and_a_valid_one_is_stored_intact() {
    let node = Node::start(|_| {});
    run(async {
        let mut a = Peer::connect(&node).await;
        a.pair(&node).await;
        let chunk = [0x33; 32];
        let key = shard_key(&chunk, 0);
        let name = format!("shard {key}");
        let good = vault_shard(chunk, 0, 8192, "good");

        let mut flipped = good.clone();
        flipped[100] ^= 1;
        let of_other_index = vault_shard(chunk, 1, 8192, "good");
        let of_other_chunk = vault_shard([0x34; 32], 0, 8192, "good");
        let mut not_a_shard = vec![0u8; 8192];
        blake3::Hasher::new()
            .update(b"noise")
            .finalize_xof()
            .fill(&mut not_a_shard);
        let answers = a
            .ask_all(vec![
                put(key, &flipped),
                put(key, &not_a_shard),
                put(key, &[]),
                put(key, &of_other_index),
                put(key, &of_other_chunk),
            ])
            .await;
        let answers: Vec<Msg> = answers.into_iter().map(|a| a.expect("answered")).collect();
        for answer in &answers[..3] {
            assert_refused(
                answer,
                ErrorCode::HashMismatch,
                &[&name, "not a valid shard"],
            );
        }
        for answer in &answers[3..] {
            assert_refused(answer, ErrorCode::HashMismatch, &[&name, "belong to shard"]);
        }
        // Nothing of those was kept.
        assert_refused(
            &a.ask(Msg::Get { shard: key }).await,
            ErrorCode::NotFound,
            &[&name],
        );
        assert_eq!(node.status()["used"], json!(0));

        put_and_get_back(&mut a, key, &good).await;
        assert_eq!(node.status()["used"], json!(good.len()));
        assert_eq!(node.partner(&a.id())["held_for_them"], json!(good.len()));
        // A corrupt copy cannot replace the stored shard either.
        assert_refused(
            &a.ask(put(key, &flipped)).await,
            ErrorCode::HashMismatch,
            &[&name],
        );
        gets_back(&mut a, key, &good).await;
        node.assert_budget_returns_to_full();
    });
    node.stop();
}

/// A partner's shard: its key and bytes.
type Held = (ShardId, Vec<u8>);

/// Two partners of `node` with a shard each, put and read back.
async fn two_partners_with_a_shard(node: &Node) -> (Peer, Peer, Held, Held) {
    let mut a = Peer::connect(node).await;
    a.pair(node).await;
    let mut b = Peer::connect(node).await;
    b.pair(node).await;
    let chunk = [0x44; 32];
    let (ka, kb) = (shard_key(&chunk, 0), shard_key(&chunk, 1));
    let sa = vault_shard(chunk, 0, 32 << 10, "a");
    let sb = vault_shard(chunk, 1, 32 << 10, "b");
    put_and_get_back(&mut a, ka, &sa).await;
    put_and_get_back(&mut b, kb, &sb).await;
    (a, b, (ka, sa), (kb, sb))
}

/// B's gets in rounds of 8 (its own in-flight limit), all of which must be served.
async fn served_in_rounds(b: &mut Peer, kb: ShardId, sb: &[u8]) {
    for _ in 0..4 {
        for answer in b.ask_all(vec![Msg::Get { shard: kb }; 8]).await {
            assert_eq!(
                answer.expect("B's get answered"),
                Msg::ShardData {
                    shard: kb,
                    data: sb.to_vec()
                }
            );
        }
    }
}

#[test]
fn a_flood_from_one_partner_is_limited_while_another_partner_is_served() {
    let node = Node::start(|_| {});
    let streams = Limits::default().muxer_streams;
    run(async {
        let (mut a, mut b, (ka, sa), (kb, sb)) = two_partners_with_a_shard(&node).await;

        // As many gets at once from A on its one connection as its muxer allows (less the
        // node's own streams to it, identify and ping): more than it serves at once.
        let flood_n = streams - 4;
        assert!(flood_n > Limits::default().inflight_per_peer);
        let flood = a.ask_all(vec![Msg::Get { shard: ka }; flood_n]);
        let (flooded, ()) = tokio::join!(flood, served_in_rounds(&mut b, kb, &sb));

        let (mut served, mut busy, mut dropped) = (0, 0, 0);
        for answer in flooded {
            match answer {
                Ok(Msg::ShardData { shard, data }) => {
                    assert_eq!((shard, &data), (ka, &sa));
                    served += 1;
                }
                Ok(Msg::Error {
                    code: ErrorCode::Busy,
                    reason,
                }) => {
                    assert!(
                        reason.contains("too many requests in flight")
                            && reason.contains(&a.id().to_string()),
                        "{reason}"
                    );
                    busy += 1;
                }
                Ok(other) => panic!("unexpected answer to a flooded get: {other:.80?}"),
                Err(_) => dropped += 1,
            }
        }
        assert!(served > 0, "no get of the flood was served");
        assert!(
            busy + dropped > 0,
            "all {flood_n} concurrent gets were served: no limit held"
        );
        assert_eq!(served + busy + dropped, flood_n);
        assert!(
            a.connected(),
            "a flood within the stream cap closed the connection"
        );

        node.assert_alive();
        node.assert_budget_returns_to_full();
        // The flood is over: A is served normally again.
        gets_back(&mut a, ka, &sa).await;
    });
    node.stop();
}

#[test]
fn a_stream_flood_beyond_the_cap_closes_that_connection_while_another_partner_is_served() {
    let node = Node::start(|_| {});
    let streams = Limits::default().muxer_streams;
    run(async {
        let (mut a, mut b, (ka, sa), (kb, sb)) = two_partners_with_a_shard(&node).await;

        // A, on a connection of its own, opens 200 streams and leaves each waiting for the
        // rest of its first frame: far beyond the muxer's cap. Meanwhile B is served.
        a.disconnect().await;
        const FLOOD: usize = 200;
        assert!(FLOOD > 2 * streams);
        let (closed, ()) = tokio::join!(
            open_silent_streams(&node, &a.key, FLOOD),
            served_in_rounds(&mut b, kb, &sb)
        );
        assert!(
            closed,
            "the node kept a connection with {FLOOD} streams open"
        );

        node.assert_alive();
        node.assert_budget_returns_to_full();
        // B is still served, and A, connected again, is served like any partner.
        served_in_rounds(&mut b, kb, &sb).await;
        a.reconnect(&node).await;
        gets_back(&mut a, ka, &sa).await;
    });
    node.stop();
}

#[test]
fn a_partner_over_its_allowance_is_refused_with_the_numbers_and_keeps_what_it_stored() {
    const ALLOWANCE: u64 = 1 << 20;
    let node = Node::start(|c| c.allowance = ALLOWANCE);
    run(async {
        let mut a = Peer::connect(&node).await;
        a.pair(&node).await;
        let me = a.id().to_string();
        let chunk = [0x55; 32];
        // Four shards of ~300 KiB: three fit in 1 MiB, the fourth does not.
        let shards: Vec<Vec<u8>> = (0..4)
            .map(|i| vault_shard(chunk, i, 300 << 10, "quota"))
            .collect();
        let len = shards[0].len() as u64;
        for (i, s) in shards.iter().take(3).enumerate() {
            let key = shard_key(&chunk, i as u8);
            assert_eq!(a.ask(put(key, s)).await, Msg::Stored { shard: key });
        }
        let k3 = shard_key(&chunk, 3);
        let refused = a.ask(put(k3, &shards[3])).await;
        assert_refused(
            &refused,
            ErrorCode::QuotaExceeded,
            &[
                &me,
                &format!("refusing {len} bytes"),
                &format!("would hold {} bytes", 4 * len),
                "holds 0 bytes for us",
                &format!("allowance {ALLOWANCE} bytes"),
            ],
        );
        let books = node.partner(&a.id());
        assert_eq!(books["held_for_them"], json!(3 * len), "{books}");
        assert_eq!(node.status()["used"], json!(3 * len));

        // What it stored is still served to it; the refused shard is not there.
        for (i, s) in shards.iter().take(3).enumerate() {
            let key = shard_key(&chunk, i as u8);
            gets_back(&mut a, key, s).await;
        }
        assert_refused(
            &a.ask(Msg::Get { shard: k3 }).await,
            ErrorCode::NotFound,
            &[&format!("{k3}")],
        );
        // Deleting one frees its share of the allowance.
        let k0 = shard_key(&chunk, 0);
        assert_eq!(
            a.ask(Msg::Delete { shard: k0 }).await,
            Msg::Deleted { shard: k0 }
        );
        assert_eq!(a.ask(put(k3, &shards[3])).await, Msg::Stored { shard: k3 });
        assert_eq!(node.partner(&a.id())["held_for_them"], json!(3 * len));
        node.assert_budget_returns_to_full();
    });
    node.stop();
}

#[test]
fn a_partner_cannot_read_audit_renew_or_delete_another_owners_shard() {
    let node = Node::start(|_| {});
    run(async {
        let mut a = Peer::connect(&node).await;
        a.pair(&node).await;
        let mut b = Peer::connect(&node).await;
        b.pair(&node).await;
        let chunk = [0x66; 32];
        let key = shard_key(&chunk, 2);
        let theirs = vault_shard(chunk, 2, 16 << 10, "owner a");
        put_and_get_back(&mut a, key, &theirs).await;

        // B knows the chunk id (shard headers carry it) and so the key; it is not A's owner.
        let answers = b
            .ask_all(vec![
                Msg::Get { shard: key },
                Msg::AuditChallenge {
                    shard: key,
                    nonce: [1; 32],
                    offset: 0,
                    len: 64,
                },
                Msg::Delete { shard: key },
                Msg::RenewLease {
                    shard: key,
                    lease_secs: 1,
                },
            ])
            .await;
        let missing = format!("no shard {key} here");
        for answer in answers {
            assert_refused(&answer.expect("answered"), ErrorCode::NotFound, &[&missing]);
        }
        gets_back(&mut a, key, &theirs).await;
        assert_eq!(node.partner(&b.id())["held_for_them"], json!(0));
        assert_eq!(node.partner(&a.id())["held_for_them"], json!(theirs.len()));

        // Its owner still may.
        renews(&mut a, key).await;
        deletes_the_last(&node, a.id(), &mut a, key).await;
    });
    node.stop();
}

#[test]
fn a_partner_cannot_fetch_the_holders_own_placement_records_nor_shards_kept_here() {
    let node = Node::start(|c| {
        c.audit_every = Duration::from_secs(24 * 3600);
        c.repair_every = Duration::from_secs(24 * 3600);
    });
    // The node's own owner stores a chunk while it has no partner: the node keeps the shards
    // and writes the chunk's record in its own store.
    let (_, owner) = node.run.new_owner();
    let chunk = [0x6a; 32];
    let mut c = node.run.client();
    for i in 0..4 {
        let s = vault_shard(chunk, i, 8 << 10, "own");
        c.call(json!({"op": "put_shard", "owner": owner}), &s)
            .expect("put_shard");
    }
    c.op(json!({"op": "flush"})).expect("flush");
    assert_eq!(node.status()["chunks"]["held_here"], json!(4));
    run(async {
        let mut x = Peer::connect(&node).await;
        x.pair(&node).await;

        // X holds (or learned) the chunk id: every id derived from it is refused.
        let record = ShardId(record_id(&chunk).0);
        let kept = ShardId(local_id(&chunk, 0).0);
        let audit = |shard| Msg::AuditChallenge {
            shard,
            nonce: [2; 32],
            offset: 0,
            len: 16,
        };
        let answers = x
            .ask_all(vec![
                Msg::Get { shard: record },
                audit(record),
                Msg::Get { shard: kept },
                audit(kept),
                Msg::Get {
                    shard: shard_key(&chunk, 0),
                },
            ])
            .await;
        for answer in answers {
            match answer.expect("answered") {
                Msg::Error {
                    code: ErrorCode::NotFound,
                    ..
                } => {}
                Msg::ShardData { data, .. } => panic!(
                    "a partner fetched the owner's record or shard: {:?}",
                    String::from_utf8_lossy(&data[..data.len().min(120)])
                ),
                other => panic!("unexpected answer: {other:.120?}"),
            }
        }
    });
    // The owner itself still reads them.
    let (_, data) = node
        .run
        .client()
        .call(
            json!({"op": "get_shard", "owner": owner, "chunk": hex(&chunk), "index": 0}),
            &[],
        )
        .expect("get_shard");
    assert_eq!(data, vault_shard(chunk, 0, 8 << 10, "own"));
    node.stop();
}

#[test]
fn a_squatted_key_does_not_block_the_owners_placement_and_forgeries_reach_nobody() {
    let holder = Node::start(|_| {});
    let owner_node = Node::start(|c| {
        c.audit_every = Duration::from_secs(24 * 3600);
        c.repair_every = Duration::from_secs(24 * 3600);
    });
    // The owner's plug and the holder are partners.
    let code = holder.op(json!({"op": "invite"})).expect("invite")["code"]
        .as_str()
        .expect("code")
        .to_owned();
    owner_node
        .op(json!({"op": "join", "code": code}))
        .expect("join");
    let (_, owner) = owner_node.run.new_owner();
    let chunk = [0x6b; 32];
    // 1-of-2: one shard goes to the holder (the owner's only partner), one stays here.
    let shard = |i: u8, seed: &str| {
        let h = ShardHeader {
            aead: AeadKind::ChaCha20Poly1305,
            k: 1,
            n: 2,
            index: i,
            sealed_len: 4096,
            chunk: ChunkId(chunk),
        };
        let mut body = vec![0u8; 4096];
        blake3::Hasher::new()
            .update(seed.as_bytes())
            .update(&[i])
            .finalize_xof()
            .fill(&mut body);
        // The nodes check the format only; whose tag this is is the vault's check.
        let auth = ShardAuth::new(&[0; 32], &h.chunk, vec![[0; 32]; usize::from(h.n)]);
        let mut out = Vec::new();
        encode_shard(&h, &body, &auth, &mut out);
        out
    };
    run(async {
        // A partner of the holder learned the chunk id and squats the keys of both shards.
        let mut f = Peer::connect(&holder).await;
        f.pair(&holder).await;
        for i in 0..2 {
            let key = shard_key(&chunk, i);
            assert_eq!(
                f.ask(put(key, &shard(i, "forged"))).await,
                Msg::Stored { shard: key }
            );
        }
        let mut c = owner_node.run.client();
        for i in 0..2 {
            c.call(
                json!({"op": "put_shard", "owner": owner}),
                &shard(i, "real"),
            )
            .expect("put_shard");
        }
        c.op(json!({"op": "flush"})).expect("flush");
        // Placed on the holder despite the squatter: only the one shard without a second
        // partner is kept here.
        let st = owner_node.status();
        assert_eq!(st["chunks"]["held_here"], json!(1), "{st}");
        assert_eq!(
            owner_node.partner(&holder.peer)["held_for_us"],
            json!(shard(0, "real").len()),
            "{st}"
        );
        for i in 0..2 {
            let (_, data) = c
                .call(
                    json!({"op": "get_shard", "owner": owner, "chunk": hex(&chunk), "index": i}),
                    &[],
                )
                .expect("get_shard");
            assert_eq!(data, shard(i, "real"), "shard {i}");
        }
        // The squatter's forgeries stay in its own scope: it reads its own bytes back.
        let key = shard_key(&chunk, 0);
        assert_eq!(
            f.ask(Msg::Get { shard: key }).await,
            Msg::ShardData {
                shard: key,
                data: shard(0, "forged")
            }
        );
    });
    owner_node.stop();
    holder.stop();
}

#[test]
fn a_new_plug_of_the_same_owner_is_admitted_and_reads_what_the_old_one_stored() {
    let node = Node::start(|_| {});
    let owner = new_owner();
    run(async {
        let mut old = Peer::connect_as(&node, &owner).await;
        old.pair(&node).await;
        let chunk = [0x6c; 32];
        let key = shard_key(&chunk, 1);
        let s = vault_shard(chunk, 1, 8 << 10, "kept");
        put_and_get_back(&mut old, key, &s).await;
        // The new plug never paired: its owner's statement (a later epoch) is its introduction.
        let mut new = Peer::connect_at(&node, &owner, 2).await;
        gets_back(&mut new, key, &s).await;
        assert_eq!(node.partner(&new.id())["via"], json!("owner key"));
        renews(&mut new, key).await;
        // A plug with a statement of an owner nobody here acted for is still a stranger, and
        // a statement signed for another plug is refused.
        let mut stranger = Peer::connect(&node).await;
        assert_refused(
            &stranger.ask(Msg::Get { shard: key }).await,
            ErrorCode::BadRequest,
            &["is not a partner"],
        );
        stranger.auth = old.auth;
        assert_refused(
            &stranger.ask(Msg::Get { shard: key }).await,
            ErrorCode::BadRequest,
            &["no valid owner's statement"],
        );
        // The new plug took over the old one's books; deleting through it frees them.
        deletes_the_last(&node, new.id(), &mut new, key).await;
    });
    node.stop();
}

#[test]
fn a_newer_statement_supersedes_the_old_plugs_copy_and_takes_over_its_books() {
    let node = Node::start(|_| {});
    let owner = new_owner();
    run(async {
        let mut old = Peer::connect_at(&node, &owner, 10).await;
        old.pair(&node).await;
        let chunk = [0x5e; 32];
        let (kept, other) = (shard_key(&chunk, 0), shard_key(&chunk, 1));
        let s = vault_shard(chunk, 0, 8 << 10, "before the reset");
        put_and_get_back(&mut old, kept, &s).await;
        let booked = node.partner(&old.id())["held_for_them"].clone();
        assert_eq!(booked, json!(s.len()), "{}", node.status());
        // An earlier statement of the same plug (a request signed before its latest) still
        // passes: it is the owner's current plug.
        let latest = old.auth;
        old.auth = OwnerAuth {
            epoch: 9,
            sig: owner.sign(&statement(9, &old.id())),
            ..latest
        };
        renews(&mut old, kept).await;
        old.auth = latest;

        // The owner restores onto a new plug: its statement is of a later epoch. Its first
        // request makes it the owner's current plug here, and the old plug's bytes its own.
        let mut new = Peer::connect_at(&node, &owner, 11).await;
        renews(&mut new, kept).await;
        assert_eq!(node.partner(&new.id())["held_for_them"], booked);
        assert_eq!(node.partner(&old.id())["held_for_them"], json!(0));

        // The old plug's key and statement (a copy of the card made before the reset) are
        // refused whatever they ask, with the reason.
        let audit = Msg::AuditChallenge {
            shard: kept,
            nonce: [3; 32],
            offset: 0,
            len: 64,
        };
        let s1 = vault_shard(chunk, 1, 8 << 10, "by the copy");
        let superseded = [
            "superseded by epoch 11",
            "(epoch 10)",
            &new.id().to_string(),
        ];
        for msg in [
            put(other, &s1),
            Msg::Get { shard: kept },
            audit.clone(),
            Msg::RenewLease {
                shard: kept,
                lease_secs: LEASE,
            },
            Msg::Delete { shard: kept },
        ] {
            assert_refused(&old.ask(msg).await, ErrorCode::BadRequest, &superseded);
        }
        // So is another plug with a statement of the superseded epoch, or of the current
        // epoch for another plug (the owner signs one plug per epoch).
        let mut stale = Peer::connect_at(&node, &owner, 10).await;
        let answer = stale.ask(Msg::Get { shard: kept }).await;
        assert_refused(
            &answer,
            ErrorCode::BadRequest,
            &["(epoch 10) is superseded"],
        );
        let mut twin = Peer::connect_at(&node, &owner, 11).await;
        let answer = twin.ask(Msg::Get { shard: kept }).await;
        assert_refused(
            &answer,
            ErrorCode::BadRequest,
            &["(epoch 11) is superseded"],
        );

        // The new plug works: it reads, audits and stores.
        gets_back(&mut new, kept, &s).await;
        assert!(matches!(
            new.ask(audit).await,
            Msg::AuditResponse { shard, .. } if shard == kept
        ));
        put_and_get_back(&mut new, other, &s1).await;
        assert_eq!(
            node.partner(&new.id())["held_for_them"],
            json!(s.len() + s1.len())
        );
        // The holder keeps the owner's current plug durably.
        let saved: Value = serde_json::from_slice(
            &std::fs::read(node.run.home().join("partners.json")).expect("partners.json"),
        )
        .expect("json");
        assert_eq!(
            saved["current"][hex(&owner.public())],
            json!({"epoch": 11, "peer": new.id().to_string()}),
            "{saved}"
        );
        deletes(&mut new, other).await;
        deletes_the_last(&node, new.id(), &mut new, kept).await;
    });
    node.stop();
}

#[test]
fn well_formed_but_absurd_requests_are_refused_with_reasons() {
    let node = Node::start(|_| {});
    run(async {
        let mut a = Peer::connect(&node).await;
        a.pair(&node).await;
        let chunk = [0x77; 32];
        let key = shard_key(&chunk, 0);
        let absent = shard_key(&chunk, 3);
        let s = vault_shard(chunk, 0, 4096, "audited");
        put_and_get_back(&mut a, key, &s).await;
        let audit = |offset: u64, len: u32| Msg::AuditChallenge {
            shard: key,
            nonce: [9; 32],
            offset,
            len,
        };
        let answers = a
            .ask_all(vec![
                audit(u64::MAX, 16),
                audit(0, 0),
                audit(0, RANGE_BYTES_MAX + 1),
                audit(s.len() as u64 - 8, 16),
                Msg::AuditChallenge {
                    shard: absent,
                    nonce: [9; 32],
                    offset: 0,
                    len: 16,
                },
                Msg::RenewLease {
                    shard: absent,
                    lease_secs: LEASE,
                },
                Msg::Delete { shard: absent },
            ])
            .await;
        let answers: Vec<Msg> = answers.into_iter().map(|a| a.expect("answered")).collect();
        let outside = format!("outside its {} bytes", s.len());
        for answer in &answers[..4] {
            assert_refused(
                answer,
                ErrorCode::BadRequest,
                &[&format!("audit of shard {key}"), &outside],
            );
        }
        let missing = format!("no shard {absent} here");
        for answer in &answers[4..] {
            assert_refused(answer, ErrorCode::NotFound, &[&missing]);
        }
        let pairs = a
            .ask_all(vec![
                Msg::Pair {
                    mode: 9,
                    secret: [0; 16],
                },
                Msg::Pair {
                    mode: PAIR_WINDOW,
                    secret: [0; 16],
                },
            ])
            .await;
        assert_refused(
            pairs[0].as_ref().expect("answered"),
            ErrorCode::BadRequest,
            &["unknown pairing mode 9"],
        );
        assert_refused(
            pairs[1].as_ref().expect("answered"),
            ErrorCode::BadRequest,
            &[&format!("pairing window of {} is not open", node.peer)],
        );

        // A sound challenge over the same shard is answered with the one right proof.
        let expected = Challenge::prepare(key, &s, &mut rand::thread_rng()).expect("challenge");
        let c = expected.challenge;
        let answer = a
            .ask(Msg::AuditChallenge {
                shard: key,
                nonce: c.nonce,
                offset: c.offset,
                len: c.len,
            })
            .await;
        match answer {
            Msg::AuditResponse { shard, proof } => {
                assert_eq!(shard, key);
                assert!(expected.check(&proof), "wrong proof for a shard it holds");
            }
            other => panic!("audit not answered: {other:.80?}"),
        }
        node.assert_alive();
        node.assert_budget_returns_to_full();
    });
    node.stop();
}

#[test]
fn a_lease_longer_than_a_year_is_refused_on_put_and_renew() {
    const YEAR: u32 = 365 * 24 * 3600;
    let node = Node::start(|_| {});
    run(async {
        let mut a = Peer::connect(&node).await;
        a.pair(&node).await;
        let chunk = [0x78; 32];
        let (key, other) = (shard_key(&chunk, 0), shard_key(&chunk, 1));
        let s = vault_shard(chunk, 0, 4096, "leased");
        put_and_get_back(&mut a, key, &s).await;
        let too_long = format!("lease of {} s is longer than the {YEAR} s", u32::MAX);
        let answers = a
            .ask_all(vec![
                Msg::Put {
                    shard: other,
                    lease_secs: u32::MAX,
                    data: vault_shard(chunk, 1, 4096, "leased"),
                },
                Msg::RenewLease {
                    shard: key,
                    lease_secs: u32::MAX,
                },
                Msg::RenewLease {
                    shard: key,
                    lease_secs: YEAR + 1,
                },
                Msg::RenewLease {
                    shard: key,
                    lease_secs: YEAR,
                },
            ])
            .await;
        let answers: Vec<Msg> = answers.into_iter().map(|a| a.expect("answered")).collect();
        assert_refused(
            &answers[0],
            ErrorCode::BadRequest,
            &[&format!("shard {other}"), &too_long],
        );
        assert_refused(
            &answers[1],
            ErrorCode::BadRequest,
            &[&format!("shard {key}"), &too_long],
        );
        assert_refused(&answers[2], ErrorCode::BadRequest, &["longer than"]);
        assert_eq!(
            answers[3],
            Msg::LeaseRenewed {
                shard: key,
                lease_secs: YEAR
            }
        );
        // The refused put stored nothing.
        assert_refused(
            &a.ask(Msg::Get { shard: other }).await,
            ErrorCode::NotFound,
            &[&format!("no shard {other} here")],
        );
        node.assert_budget_returns_to_full();
    });
    node.stop();
}

#[test]
fn renewing_a_lease_writes_a_small_record_not_the_shard_again() {
    const RENEWALS: u64 = 4;
    let node = Node::start(|_| {});
    run(async {
        let mut a = Peer::connect(&node).await;
        a.pair(&node).await;
        let chunk = [0x79; 32];
        let key = shard_key(&chunk, 0);
        let s = vault_shard(chunk, 0, 1 << 20, "renewed");
        put_and_get_back(&mut a, key, &s).await;
        // Bytes of the chunk store's segments, by its own counters.
        let written = |st: Value| {
            st["store"]["live_bytes"].as_u64().expect("live_bytes")
                + st["store"]["dead_bytes"].as_u64().expect("dead_bytes")
        };
        let before = written(node.status());
        for _ in 0..RENEWALS {
            assert_eq!(
                a.ask(Msg::RenewLease {
                    shard: key,
                    lease_secs: 2 * LEASE,
                })
                .await,
                Msg::LeaseRenewed {
                    shard: key,
                    lease_secs: 2 * LEASE
                }
            );
        }
        let per_renewal = (written(node.status()) - before) / RENEWALS;
        eprintln!(
            "one renewal of a {} byte shard wrote {per_renewal} bytes",
            s.len()
        );
        assert!(
            per_renewal <= 8 << 10,
            "one renewal of a {} byte shard wrote {per_renewal} bytes",
            s.len()
        );
        gets_back(&mut a, key, &s).await;
    });
    node.stop();
}

#[test]
fn a_partner_replacing_its_shard_with_a_smaller_one_is_booked_at_the_new_size() {
    let node = Node::start(|_| {});
    run(async {
        let mut a = Peer::connect(&node).await;
        a.pair(&node).await;
        let chunk = [0x88; 32];
        let key = shard_key(&chunk, 1);
        let big = vault_shard(chunk, 1, 64 << 10, "big");
        let small = vault_shard(chunk, 1, 4 << 10, "small");
        put_and_get_back(&mut a, key, &big).await;
        put_and_get_back(&mut a, key, &small).await;
        // The books (quota and the space offered to all partners) count what is stored now,
        // so a partner cannot inflate them by growing and shrinking one shard.
        assert_eq!(
            node.partner(&a.id())["held_for_them"],
            json!(small.len()),
            "books still count the replaced shard's size"
        );
        assert_eq!(node.status()["used"], json!(small.len()));
        deletes_the_last(&node, a.id(), &mut a, key).await;
    });
    node.stop();
}

#[test]
fn partners_racing_for_the_same_keys_each_keep_their_own_and_honest_books() {
    let node = Node::start(|_| {});
    run(async {
        let mut a = Peer::connect(&node).await;
        a.pair(&node).await;
        let mut b = Peer::connect(&node).await;
        b.pair(&node).await;
        let (mut held_a, mut held_b) = (0usize, 0usize);
        // 20 rounds of 4 keys that A and B put at the same moment: two owners, two shards.
        for round in 0..20u8 {
            let chunk = [round; 32];
            let mine = |seed: &str| -> Vec<Vec<u8>> {
                (0..4)
                    .map(|i| vault_shard(chunk, i, 8 << 10, seed))
                    .collect()
            };
            let (sa, sb) = (mine("racer a"), mine("racer b"));
            let keys: Vec<ShardId> = (0..4).map(|i| shard_key(&chunk, i)).collect();
            let puts = |s: &[Vec<u8>]| -> Vec<Msg> {
                keys.iter().zip(s).map(|(k, d)| put(*k, d)).collect()
            };
            let (ra, rb) = tokio::join!(a.ask_all(puts(&sa)), b.ask_all(puts(&sb)));
            for i in 0..4 {
                let key = keys[i];
                assert_eq!(
                    ra[i].as_ref().expect("A answered"),
                    &Msg::Stored { shard: key }
                );
                assert_eq!(
                    rb[i].as_ref().expect("B answered"),
                    &Msg::Stored { shard: key }
                );
                held_a += sa[i].len();
                held_b += sb[i].len();
                for (p, want) in [(&mut a, &sa[i]), (&mut b, &sb[i])] {
                    gets_back(p, key, want).await;
                }
            }
        }
        assert_eq!(node.partner(&a.id())["held_for_them"], json!(held_a));
        assert_eq!(node.partner(&b.id())["held_for_them"], json!(held_b));
        assert_eq!(node.status()["used"], json!(held_a + held_b));
    });
    node.stop();
}

#[test]
fn strangers_beyond_their_connection_limit_are_cut_off_and_partners_still_served() {
    let node = Node::start(|c| c.limits.max_stranger_connections = 4);
    run(async {
        let mut a = Peer::connect(&node).await;
        a.pair(&node).await;
        let chunk = [0x55; 32];
        let key = shard_key(&chunk, 0);
        let shard = vault_shard(chunk, 0, 16 << 10, "a");
        put_and_get_back(&mut a, key, &shard).await;
        // Ten throwaway identities connect; the node keeps four of them.
        let mut strangers = Vec::new();
        for _ in 0..10 {
            strangers.push(Peer::connect(&node).await);
        }
        let mut refused = 0;
        for s in strangers.iter_mut() {
            let req = s.frame(Msg::FreeSpaceQuery);
            let answers = s.send_raw(vec![req]).await;
            match &answers[0] {
                // Kept: answered (as a stranger, with a refusal).
                Ok(bytes) => {
                    let f = Frame::decode_exact(bytes).expect("a valid reply");
                    assert_refused(&f.msg, ErrorCode::BadRequest, &["is not a partner"]);
                }
                Err(_) => refused += 1,
            }
        }
        assert!(refused >= 6, "only {refused} of 10 strangers were cut off");
        // The partner is served as before.
        match a.ask(Msg::Get { shard: key }).await {
            Msg::ShardData { data, .. } => assert_eq!(data, shard),
            other => panic!("partner not served: {other:?}"),
        }
        node.assert_alive();
    });
}

#[test]
fn a_lan_host_that_only_says_its_window_is_open_is_not_paired_with() {
    let node = Node::start(|_| {});
    std::thread::scope(|s| {
        // The owner presses the button: the window is open for 4 s.
        let window = s.spawn(|| node.op(json!({"op": "pair", "window_ms": 4000})));
        run(async {
            // A host on the LAN (loopback counts as local) that heard the node's probe: it
            // says its window is open too, but never answers a probe nor reveals the nonce it
            // committed to.
            let mut host = Peer::connect(&node).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let heard = host
                .ask(Msg::Pair {
                    mode: PAIR_WINDOW,
                    secret: [7; 16],
                })
                .await;
            assert_eq!(
                heard,
                Msg::Paired,
                "its probe is heard while the window is open"
            );
            let reveal = host
                .ask(Msg::Pair {
                    mode: PAIR_REVEAL,
                    secret: [9; 16],
                })
                .await;
            assert_refused(
                &reveal,
                ErrorCode::BadRequest,
                &["the revealed nonce does not match the probe's commitment"],
            );
        });
        let outcome = window.join().unwrap().expect("the window's answer");
        assert_eq!(outcome["outcome"], json!("none"), "{outcome}");
    });
    assert!(node.status()["partners"].as_array().unwrap().is_empty());
}

#[test]
fn a_partner_that_retires_its_identity_is_forgotten_and_its_key_opens_nothing() {
    let node = Node::start(|_| {});
    run(async {
        let mut a = Peer::connect(&node).await;
        a.pair(&node).await;
        let chunk = [0x5e; 32];
        let key = shard_key(&chunk, 0);
        // Small enough for a frame a stranger may send: the retired key's put below must be
        // answered, not cut off after its header as a stranger's large frames are.
        let s = vault_shard(chunk, 0, 1024, "a");
        put_and_get_back(&mut a, key, &s).await;
        // A factory reset: the plug tells its partners its identity is going.
        assert_eq!(a.ask(Msg::Retire).await, Msg::Retired);
        assert!(node.status()["partners"].as_array().unwrap().is_empty());
        // Whoever holds that key later (read off the old card) is a stranger here.
        let me = a.id().to_string();
        for msg in [
            Msg::Get { shard: key },
            Msg::Delete { shard: key },
            put(key, &s),
        ] {
            let answer = a.ask(msg).await;
            assert_refused(&answer, ErrorCode::BadRequest, &["is not a partner", &me]);
        }
        // What it placed here stays, for its owner's leases to run out or a restore to renew.
        assert_eq!(node.status()["used"], json!(s.len()));
        // A stranger cannot retire anybody.
        let mut stranger = Peer::connect(&node).await;
        let answer = stranger.ask(Msg::Retire).await;
        assert_refused(&answer, ErrorCode::BadRequest, &["is not a partner"]);
    });
    node.stop();
}
