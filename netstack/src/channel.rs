//! Authenticated message channels over TCP: the [`crate::codec`] driven
//! over a `smoltcp` socket.
//!
//! A [`Channel`] goes Connecting → Handshaking → Open → Closed. It never
//! holds more than one frame of received bytes beyond what TCP buffers
//! (it stops reading, so the peer's window closes) and refuses to queue
//! more than [`Channel::tx_limit`] bytes of sealed output ([`SendError::WouldBlock`]),
//! so a slow peer cannot grow memory without bound. Any error closes the
//! connection (reset) and is kept as the [`CloseReason`].

use alloc::vec::Vec;
use core::fmt;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::State;
use smoltcp::wire::{IpEndpoint, Ipv4Address};

use crate::codec::{self, ChannelError, Handshake, Key, Opener, Sealer};
use crate::stack::{Stack, StackError};

/// Why a channel closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// We closed it.
    Local,
    /// The peer sent a close frame.
    Clean,
    /// The peer closed or reset TCP without a close frame.
    PeerGone,
    /// TCP never connected: refused, unreachable or timed out.
    ConnectFailed,
    /// The handshake did not finish within the timeout.
    HandshakeTimeout,
    /// The peer dropped the connection during the handshake. A client
    /// that finds our key does not match its own does exactly this.
    HandshakeAborted,
    /// The peer sent bytes the codec refused.
    Protocol(ChannelError),
    /// The host had no memory left for this connection's next frame.
    OutOfMemory,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Local => write!(f, "closed by us"),
            CloseReason::Clean => write!(f, "closed by the peer"),
            CloseReason::PeerGone => write!(f, "the peer dropped the connection"),
            CloseReason::ConnectFailed => write!(f, "connection refused or timed out"),
            CloseReason::HandshakeTimeout => write!(f, "handshake timed out"),
            CloseReason::HandshakeAborted => write!(
                f,
                "the peer left during the handshake (different keys? compare fingerprints)"
            ),
            CloseReason::Protocol(e) => write!(f, "{e}"),
            CloseReason::OutOfMemory => write!(f, "out of memory for the next frame"),
        }
    }
}

/// Why a send was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Output is queued up to the limit: poll and retry.
    #[error("send queue full")]
    WouldBlock,
    /// Not open (yet, or any more).
    #[error("channel not open")]
    NotOpen,
    #[error("{0}")]
    Codec(ChannelError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Handshaking,
    Open,
    /// Close frame queued: flush, then close TCP.
    Closing,
    Closed,
}

/// Options shared by both ends.
#[derive(Debug, Clone, Copy)]
pub struct ChannelOptions {
    /// Largest payload we accept.
    pub max_payload: u32,
    /// How long connect plus handshake may take (µs).
    pub timeout_us: u64,
    /// Sealed bytes queued beyond the socket before sends block.
    pub tx_limit: usize,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        ChannelOptions {
            max_payload: codec::DEFAULT_MAX_PAYLOAD,
            timeout_us: 5_000_000,
            tx_limit: 256 * 1024,
        }
    }
}

/// Traffic through one channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelStats {
    pub frames_in: u64,
    pub frames_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// One authenticated connection.
pub struct Channel {
    handle: Option<SocketHandle>,
    phase: Phase,
    handshake: Option<Handshake>,
    sealer: Option<Sealer>,
    opener: Option<Opener>,
    rx: Vec<u8>,
    rx_start: usize,
    tx: Vec<u8>,
    tx_start: usize,
    /// Bytes given to the TCP socket so far (this side's stream offset).
    tx_handed: u64,
    deadline_us: u64,
    opts: ChannelOptions,
    peer: Option<IpEndpoint>,
    reason: Option<CloseReason>,
    stats: ChannelStats,
}

impl Channel {
    fn new(
        handle: SocketHandle,
        handshake: Handshake,
        phase: Phase,
        opts: ChannelOptions,
        now_us: u64,
    ) -> Channel {
        Channel {
            handle: Some(handle),
            phase,
            handshake: Some(handshake),
            sealer: None,
            opener: None,
            rx: Vec::new(),
            rx_start: 0,
            tx: Vec::new(),
            tx_start: 0,
            tx_handed: 0,
            deadline_us: now_us + opts.timeout_us,
            opts,
            peer: None,
            reason: None,
            stats: ChannelStats::default(),
        }
    }

    /// Connects to `remote` and authenticates as the client.
    pub fn connect(
        stack: &mut Stack,
        remote: (Ipv4Address, u16),
        key: &Key,
        nonce: [u8; 32],
        opts: ChannelOptions,
        now_us: u64,
    ) -> Result<Channel, StackError> {
        let h = stack.tcp_connect(remote)?;
        let hs = Handshake::client(key, nonce, opts.max_payload);
        let mut c = Channel::new(h, hs, Phase::Connecting, opts, now_us);
        c.peer = Some(IpEndpoint::new(remote.0.into(), remote.1));
        Ok(c)
    }

    /// Takes over a socket a listener handed over (the peer connected) and
    /// authenticates as the server.
    pub fn accept(
        stack: &mut Stack,
        handle: SocketHandle,
        key: &Key,
        nonce: [u8; 32],
        opts: ChannelOptions,
        now_us: u64,
    ) -> Channel {
        let hs = Handshake::server(key, nonce, opts.max_payload);
        let mut c = Channel::new(handle, hs, Phase::Connecting, opts, now_us);
        c.peer = stack.tcp(handle).remote_endpoint();
        c
    }

    /// The peer's address, once known.
    pub fn peer(&self) -> Option<IpEndpoint> {
        self.peer
    }

    /// Still connecting or proving the key: what a [`Listener`] counts
    /// against its cap on unauthenticated connections.
    pub fn is_pending(&self) -> bool {
        matches!(self.phase, Phase::Connecting | Phase::Handshaking)
    }

    /// Authenticated and ready for frames.
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// Finished, for the reason [`Channel::close_reason`] gives.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Why it closed, once closed.
    pub fn close_reason(&self) -> Option<&CloseReason> {
        self.reason.as_ref()
    }

    /// Frames and bytes so far.
    pub fn stats(&self) -> ChannelStats {
        self.stats
    }

    /// Received bytes buffered beyond TCP, waiting for [`Channel::recv`].
    pub fn buffered(&self) -> usize {
        self.rx.len() - self.rx_start
    }

    /// Sealed bytes queued beyond TCP.
    pub fn queued_bytes(&self) -> usize {
        self.queued()
    }

    /// Bytes handed to [`Channel::send`] that the peer has not acknowledged
    /// yet: the queue beyond TCP plus the TCP send buffer (sent or not).
    pub fn unacked_bytes(&self, stack: &mut Stack) -> usize {
        let tcp = self.handle.map_or(0, |h| stack.tcp(h).send_queue());
        self.queued() + tcp
    }

    /// The configured output limit.
    pub fn tx_limit(&self) -> usize {
        self.opts.tx_limit
    }

    /// Largest payload the peer accepts (once open).
    pub fn peer_max_payload(&self) -> Option<u32> {
        self.sealer.as_ref().map(|s| s.max_payload())
    }

    fn queued(&self) -> usize {
        self.tx.len() - self.tx_start
    }

    /// The stream offset just past the last frame sealed: once
    /// [`Channel::handed_to_tcp`] reaches it, that frame is in TCP's hands.
    pub fn sealed_offset(&self) -> u64 {
        self.tx_handed + self.queued() as u64
    }

    /// Bytes of this side's stream handed to the TCP socket so far (sent or
    /// still in its buffer): what may have reached the peer.
    pub fn handed_to_tcp(&self) -> u64 {
        self.tx_handed
    }

    /// Whether a send of `len` payload bytes would be taken now.
    pub fn can_send(&self, len: usize) -> bool {
        self.phase == Phase::Open
            && self.queued() + len + Sealer::overhead() <= self.opts.tx_limit.max(len + 64)
    }

    /// Seals and queues one frame.
    pub fn send(&mut self, ty: codec::FrameType, payload: &[u8]) -> Result<(), SendError> {
        if self.phase != Phase::Open {
            return Err(SendError::NotOpen);
        }
        if !self.can_send(payload.len()) {
            return Err(SendError::WouldBlock);
        }
        let sealer = self.sealer.as_mut().ok_or(SendError::NotOpen)?;
        sealer
            .seal(ty, payload, &mut self.tx)
            .map_err(SendError::Codec)?;
        self.stats.frames_out += 1;
        self.stats.bytes_out += payload.len() as u64;
        Ok(())
    }

    /// The next received frame (type and payload), if a whole one is here.
    /// A protocol error closes the channel; see [`Channel::close_reason`].
    pub fn recv(&mut self, stack: &mut Stack) -> Option<(codec::FrameType, Vec<u8>)> {
        if !matches!(self.phase, Phase::Open | Phase::Closing) {
            return None;
        }
        let opener = self.opener.as_mut()?;
        match opener.decode(&self.rx[self.rx_start..]) {
            Ok(None) => None,
            Ok(Some((frame, used))) => {
                let ty = frame.ty;
                let mut payload = Vec::new();
                if payload.try_reserve_exact(frame.payload.len()).is_err() {
                    self.fail(stack, CloseReason::OutOfMemory);
                    return None;
                }
                payload.extend_from_slice(frame.payload);
                self.rx_start += used;
                self.compact();
                if ty == codec::TYPE_CLOSE {
                    self.finish(stack, CloseReason::Clean, false);
                    return None;
                }
                self.stats.frames_in += 1;
                self.stats.bytes_in += payload.len() as u64;
                Some((ty, payload))
            }
            Err(e) => {
                self.fail(stack, CloseReason::Protocol(e));
                None
            }
        }
    }

    fn compact(&mut self) {
        if self.rx_start == self.rx.len() {
            self.rx.clear();
            self.rx_start = 0;
        } else if self.rx_start > 64 * 1024 {
            self.rx.drain(..self.rx_start);
            self.rx_start = 0;
        }
    }

    /// Queues a close frame; TCP closes once it is sent.
    pub fn close(&mut self, stack: &mut Stack) {
        match self.phase {
            Phase::Open => {
                if let Some(s) = self.sealer.as_mut() {
                    s.seal_close(&mut self.tx);
                }
                self.phase = Phase::Closing;
                self.reason = Some(CloseReason::Local);
                self.flush(stack);
            }
            Phase::Closed | Phase::Closing => {}
            _ => self.finish(stack, CloseReason::Local, true),
        }
    }

    /// Frees the socket. Call once closed (or to abandon the channel).
    pub fn release(mut self, stack: &mut Stack) {
        if let Some(h) = self.handle.take() {
            let s = stack.tcp(h);
            if s.state() != State::Closed {
                s.abort();
            }
            stack.retire(h);
        }
    }

    fn fail(&mut self, stack: &mut Stack, reason: CloseReason) {
        log::warn!(
            "channel {}: closed: {reason}",
            self.peer
                .map(|p| alloc::format!("{p}"))
                .unwrap_or_else(|| "?".into())
        );
        self.finish(stack, reason, true);
    }

    fn finish(&mut self, stack: &mut Stack, reason: CloseReason, abort: bool) {
        if let Some(h) = self.handle {
            let s = stack.tcp(h);
            if abort {
                s.abort();
            } else {
                s.close();
            }
        }
        self.phase = Phase::Closed;
        if self.reason.is_none() || reason != CloseReason::Local {
            self.reason = Some(reason);
        }
        self.handshake = None;
        self.rx = Vec::new();
        self.rx_start = 0;
        self.tx = Vec::new();
        self.tx_start = 0;
    }

    fn flush(&mut self, stack: &mut Stack) {
        let Some(h) = self.handle else { return };
        let s = stack.tcp(h);
        while self.tx_start < self.tx.len() && s.can_send() {
            match s.send_slice(&self.tx[self.tx_start..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    self.tx_start += n;
                    self.tx_handed += n as u64;
                }
            }
        }
        if self.tx_start == self.tx.len() {
            self.tx.clear();
            self.tx_start = 0;
        } else if self.tx_start > 64 * 1024 {
            self.tx.drain(..self.tx_start);
            self.tx_start = 0;
        }
    }

    /// Reads from the socket while we want bytes: during the handshake
    /// anything; once open, only until one maximal frame is buffered.
    ///
    /// Before the peer is authenticated only a few bytes are read (the
    /// handshake messages are under 128 bytes): an unauthenticated peer
    /// cannot make us buffer a frame's worth. Memory for a frame is
    /// reserved fallibly: false if it could not be had.
    fn fill(&mut self, stack: &mut Stack) -> bool {
        let Some(h) = self.handle else { return true };
        let limit = if self.is_pending() {
            HANDSHAKE_READ
        } else {
            self.opts.max_payload as usize + Sealer::overhead()
        };
        let s = stack.tcp(h);
        while s.can_recv() {
            let have = self.rx.len() - self.rx_start;
            if have >= limit {
                break;
            }
            let want = (limit - have).min(16 * 1024);
            let old = self.rx.len();
            if self.rx.try_reserve(want).is_err() {
                return false;
            }
            self.rx.resize(old + want, 0);
            let n = s.recv_slice(&mut self.rx[old..]).unwrap_or(0);
            self.rx.truncate(old + n);
            if n == 0 {
                break;
            }
        }
        true
    }

    /// Moves bytes between the channel and its socket, drives the
    /// handshake and notices timeouts and closes. Call after every
    /// [`Stack::poll`].
    pub fn poll(&mut self, stack: &mut Stack, now_us: u64) {
        let Some(h) = self.handle else { return };
        if self.phase == Phase::Closed {
            return;
        }
        let state = stack.tcp(h).state();
        if self.peer.is_none() {
            self.peer = stack.tcp(h).remote_endpoint();
        }
        match self.phase {
            Phase::Connecting => {
                if matches!(state, State::Established | State::CloseWait) {
                    self.phase = Phase::Handshaking;
                    self.deadline_us = now_us + self.opts.timeout_us;
                } else if state == State::Closed || now_us >= self.deadline_us {
                    return self.fail(stack, CloseReason::ConnectFailed);
                } else {
                    return;
                }
            }
            Phase::Closing => {
                self.flush(stack);
                if self.queued() == 0 {
                    self.finish(stack, CloseReason::Local, false);
                }
                return;
            }
            _ => {}
        }
        if self.phase == Phase::Handshaking {
            if let Some(hs) = self.handshake.as_mut() {
                let out = hs.take_output();
                self.tx.extend_from_slice(&out);
            }
            self.flush(stack);
            if !self.fill(stack) {
                return self.fail(stack, CloseReason::OutOfMemory);
            }
            let Some(mut hs) = self.handshake.take() else {
                return;
            };
            let fed = hs.feed(&self.rx[self.rx_start..]);
            // Whatever the handshake has to say goes out, even a refusal
            // (e.g. of the protocol version) that precedes the reset.
            let out = hs.take_output();
            self.tx.extend_from_slice(&out);
            self.flush(stack);
            match fed {
                Ok(used) => {
                    self.rx_start += used;
                    self.compact();
                }
                Err(e) => return self.fail(stack, CloseReason::Protocol(e)),
            }
            if hs.is_done() {
                let (sealer, opener) = hs.into_session().expect("done handshake has a session");
                self.sealer = Some(sealer);
                self.opener = Some(opener);
                self.phase = Phase::Open;
            } else if now_us >= self.deadline_us {
                return self.fail(stack, CloseReason::HandshakeTimeout);
            } else if !stack.tcp(h).may_recv() {
                return self.fail(stack, CloseReason::HandshakeAborted);
            } else {
                self.handshake = Some(hs);
            }
        }
        if self.phase == Phase::Open {
            self.flush(stack);
            if !self.fill(stack) {
                return self.fail(stack, CloseReason::OutOfMemory);
            }
            let s = stack.tcp(h);
            let peer_done = !s.may_recv() && !s.can_recv();
            if peer_done || state == State::Closed {
                // Nothing more will arrive: whatever is buffered must be whole frames.
                let buffered = &self.rx[self.rx_start..];
                if buffered.is_empty() {
                    self.fail(stack, CloseReason::PeerGone);
                } else if let Some(o) = self.opener.as_ref() {
                    // A whole frame is still waiting for recv(); only a
                    // partial one is an error.
                    match o.at_eof(buffered) {
                        Err(e) if !frame_complete(buffered) => {
                            self.fail(stack, CloseReason::Protocol(e))
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

/// Whether `buf` starts with at least one whole frame.
fn frame_complete(buf: &[u8]) -> bool {
    codec::frame_len(buf).is_some_and(|n| buf.len() >= n)
}

/// Bytes read at a time before the peer is authenticated.
const HANDSHAKE_READ: usize = 128;

/// Unauthenticated handshakes a listener keeps at once unless told
/// otherwise (`net.max_pending` in the kernel's configuration).
pub const DEFAULT_MAX_PENDING: usize = 4;

/// Accepts connections on a port: keeps one listening socket and hands
/// out each socket a peer connected to, as long as fewer than
/// `max_pending` connections are still proving they hold the key.
///
/// Each connection costs [`crate::stack::TCP_SOCKET_BYTES`] of heap before
/// its peer has proved anything, so a burst of half-open or garbage
/// connections from anyone on the network is refused at once (reset and
/// logged) rather than allowed to exhaust memory. Sockets are allocated
/// within the stack's memory budget: when one does not fit, the listener
/// stops listening until one does, and says so.
pub struct Listener {
    port: u16,
    /// The listening socket; `None` while one cannot be allocated.
    handle: Option<SocketHandle>,
    max_pending: usize,
    /// Refusals since the last one logged, and when that was.
    refused_quiet: u64,
    last_refusal_log_us: Option<u64>,
    /// Why the last attempt to listen failed (logged once per failure run).
    not_listening: bool,
}

impl Listener {
    /// Listens on `port`, keeping at most `max_pending` (at least 1)
    /// unauthenticated connections at once.
    pub fn new(stack: &mut Stack, port: u16, max_pending: usize) -> Result<Listener, StackError> {
        Ok(Listener {
            port,
            handle: Some(stack.tcp_listen(port)?),
            max_pending: max_pending.max(1),
            refused_quiet: 0,
            last_refusal_log_us: None,
            not_listening: false,
        })
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cap on unauthenticated connections.
    pub fn max_pending(&self) -> usize {
        self.max_pending
    }

    /// Whether a socket is listening now (false while memory is short).
    pub fn is_listening(&self) -> bool {
        self.handle.is_some()
    }

    /// A socket a peer has connected to, if any; a fresh socket listens in
    /// its place. `pending` is how many of the caller's connections are
    /// still unauthenticated ([`Channel::is_pending`]): at the cap, a new
    /// connection is reset at once and logged, and `None` is returned.
    pub fn accept(
        &mut self,
        stack: &mut Stack,
        pending: usize,
        now_us: u64,
    ) -> Option<SocketHandle> {
        self.log_quiet_refusals(now_us);
        let Some(h) = self.handle else {
            self.relisten(stack);
            return None;
        };
        let s = stack.tcp(h);
        if s.is_listening() {
            return None;
        }
        self.handle = None;
        if pending >= self.max_pending {
            let peer = s.remote_endpoint();
            s.abort();
            stack.retire(h);
            self.refused(peer, pending, now_us);
            self.relisten(stack);
            return None;
        }
        self.relisten(stack);
        Some(h)
    }

    fn relisten(&mut self, stack: &mut Stack) {
        match stack.tcp_listen(self.port) {
            Ok(h) => {
                self.handle = Some(h);
                if core::mem::take(&mut self.not_listening) {
                    log::info!("net: port {}: listening again", self.port);
                }
            }
            Err(e) => {
                if !core::mem::replace(&mut self.not_listening, true) {
                    log::warn!("net: port {}: not listening for now: {e}", self.port);
                }
            }
        }
    }

    /// Logs the first refusal of a burst; the rest once a second as a count.
    fn refused(&mut self, peer: Option<crate::stack::IpEndpoint>, pending: usize, now_us: u64) {
        let quiet = self
            .last_refusal_log_us
            .is_some_and(|t| now_us.saturating_sub(t) < 1_000_000);
        if quiet {
            self.refused_quiet += 1;
            return;
        }
        self.last_refusal_log_us = Some(now_us);
        match peer {
            Some(p) => log::warn!(
                "net: port {}: refusing {p}: {pending} handshakes pending (the limit is {})",
                self.port,
                self.max_pending
            ),
            None => log::warn!(
                "net: port {}: refusing a connection: {pending} handshakes pending (the limit is {})",
                self.port,
                self.max_pending
            ),
        }
    }

    fn log_quiet_refusals(&mut self, now_us: u64) {
        if self.refused_quiet > 0
            && self
                .last_refusal_log_us
                .is_none_or(|t| now_us.saturating_sub(t) >= 1_000_000)
        {
            log::warn!(
                "net: port {}: refused {} more connections",
                self.port,
                self.refused_quiet
            );
            self.refused_quiet = 0;
            self.last_refusal_log_us = Some(now_us);
        }
    }

    /// Stops listening.
    pub fn close(self, stack: &mut Stack) {
        if let Some(h) = self.handle {
            stack.tcp(h).abort();
            stack.retire(h);
        }
    }
}
