//! The yamux session's settings and limits: window sizes, frame and queue bounds, and the
//! [`Config`] a session starts with. Shared by the state machine ([`super::session`]) and the
//! socket shell ([`super::io`]); depends on neither.

use std::time::Duration;

/// A stream's window in each direction before either end raises it (the yamux default).
pub const INITIAL_WINDOW: u32 = 256 * 1024;
/// A stream's window once its first frame is through: how many bytes may be in flight
/// towards a reader that has not taken them (a QUIC tunnel's stream receive window is the same
/// 8 MiB).
pub const STREAM_WINDOW: u32 = 8 * 1024 * 1024;
/// Data bytes in flight towards readers that have not taken them, all of a session's streams
/// together, in each direction: eight streams' full windows, so it takes eight streams whose
/// readers stall to hold up the others (a QUIC tunnel's connection receive window is the same
/// 64 MiB).
pub const SESSION_WINDOW: u32 = 8 * STREAM_WINDOW;
/// Largest data frame sent: a busy stream's whole socket read (16 TLS records) goes out in
/// one frame and one `writev`, where 64 KiB frames took four of each.
pub const MAX_FRAME: usize = 256 * 1024;
/// Inbound streams held before [`Driver::accept`](super::Driver::accept) takes them; more are refused.
pub const ACCEPT_BACKLOG: usize = 1024;
/// Bytes read from the socket in one system call.
pub(super) const READ_CHUNK: usize = 256 * 1024;
/// Most plaintext one TLS record carries (RFC 8446 §5.1).
pub(super) const MAX_RECORD_PLAINTEXT: usize = 16 * 1024;
/// Payload pieces shorter than this are copied out of their read's buffer before they are
/// queued for a stream's reader: a quarter of the largest buffer a read decrypts into.
pub(super) const PIN_BELOW: usize = (READ_CHUNK + MAX_RECORD_PLAINTEXT) / 4;
/// Encrypted bytes queued for the socket (refused by it so far) at which writers wait for a
/// turn ([`sched`](super::sched)): one TLS record, so a consensus frame never waits behind much bulk data
/// in the session (16 KiB leave the socket in 1.3 ms at 100 Mbit/s).
pub const QUEUE_LIMIT: usize = 16 * 1024;
/// Largest data frame while other streams wait for a turn: one TLS record, so a turn holds
/// the link for 1.3 ms at 100 Mbit/s.
pub const SHARED_FRAME: usize = 16 * 1024;
/// How long after the socket last refused a write a stream alone on the session still
/// writes frames of at most the queue's room, not [`MAX_FRAME`]: while the link is the
/// bottleneck, whatever a frame leaves queued is what the next consensus frame waits behind.
pub(super) const BACKLOG_HOLD: Duration = Duration::from_millis(200);
/// A turn not used within this long is taken back (its writer stopped writing).
pub(super) const TURN_TIMEOUT: Duration = Duration::from_secs(1);
/// Unsent bytes a link's TCP socket holds before it refuses more (`TCP_NOTSENT_LOWAT`): the
/// kernel's queue in front of the session's scheduler stays this short (the default is the
/// whole send buffer, 1 MB and more once autotuned). Half as much measured no shorter round
/// trip on a saturated 100 Mbit/s link (docs/PERFORMANCE.md).
pub const NOTSENT_LOWAT: u32 = 16 * 1024;
/// Encrypted bytes queued for the socket at which the session ends: writers stop near
/// [`QUEUE_LIMIT`], so only a peer that keeps sending (pings, streams to refuse) without
/// reading what it is sent gets here.
pub const MAX_QUEUED: usize = 4 * 1024 * 1024;
/// Socket reads in one turn of the driver before it lets other tasks run.
pub(super) const READS_PER_TURN: usize = 16;

/// Which end of the TLS connection this is: the client opens odd stream ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The dialling side.
    Client,
    /// The accepting side.
    Server,
}

/// Session settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Most streams open at once; inbound ones beyond it are refused with RST.
    pub max_streams: usize,
    /// Interval between pings.
    pub keep_alive: Duration,
    /// The session ends after receiving nothing for this long.
    pub idle_timeout: Duration,
    /// The TCP congestion controller asked of the kernel for the link's socket.
    pub congestion: crate::tunnel::quic::Congestion,
}
