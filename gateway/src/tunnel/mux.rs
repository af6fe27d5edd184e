//! yamux over one TLS connection: the stream multiplexer of TCP+TLS tunnels.
//!
//! Wire format: the yamux specification (`spec.md` of hashicorp/yamux). Every frame starts with
//! a 12-byte big-endian header, `version (u8, 0) | type (u8) | flags (u16) | stream id (u32) |
//! length (u32)`; types are Data (length = payload bytes that follow), Window Update (length =
//! window increment), Ping (length = opaque value) and Go Away (length = error code); flags
//! are SYN, ACK, FIN and RST. The dialling side opens odd stream ids, the accepting side even
//! ones. Each direction of a stream starts with a 256 KiB window; both ends raise it to
//! [`STREAM_WINDOW`] with the first frame they send on a stream.
//!
//! One addition to the specification, as HTTP/2's connection window (RFC 9113 §6.9): a
//! **session window** of [`SESSION_WINDOW`] bytes in each direction. Every data frame counts
//! against it as well as against its stream's window, and a Window Update on stream 0 (no
//! flags) raises it once the receiving end's readers have taken (or it has discarded) half of
//! it. What a peer can make this end buffer is bounded per session, however many streams it
//! opens, as a QUIC connection's receive window bounds it there.
//! One stream moves at most [`STREAM_WINDOW`] per round trip (8 MiB: about 670 Mbit/s at
//! 100 ms); data for a stream whose reader is gone is discarded and its windows given back.
//!
//! Built for the tunnel's traffic rather than as a general library:
//!
//! - **No session task in the write path.** A stream writes its frame into the TLS connection
//!   (one copy, encrypted in place) and on to the socket itself, under the session's lock. The
//!   session's driver only reads, and writes what the socket refused earlier once it is
//!   writable again.
//! - **Turns while the link is busy.** A writer goes at once while the bytes queued for the
//!   socket stay under [`QUEUE_LIMIT`] and no stream of its priority class or above waits;
//!   otherwise it waits for a turn ([`sched`]): one frame of at most [`SHARED_FRAME`] bytes
//!   per turn, highest class first, round-robin within a class, and lower classes are never
//!   starved. The socket itself holds at most [`NOTSENT_LOWAT`] unsent bytes.
//! - **A new stream costs one frame each way.** Opening sends nothing; the first write carries
//!   the SYN with the window update and the data in one TLS record (the tunnel header), and
//!   the far end's first write carries the ACK with its answer and the node's first bytes (a
//!   stream that only reads sends it once it has taken half the initial window). A stream's
//!   last bytes can carry its FIN ([`MuxWriter::poll_write_fin`]).
//! - **Big reads.** The driver reads 256 KiB from the socket at a time and feeds rustls from
//!   memory (rustls alone reads 4 KiB per system call); received data is copied once out of
//!   rustls and then handed on in slices of that buffer until the reader takes it
//!   ([`MuxReader::poll_chunks`]).
//!
//! Layout, as quinn-proto beside quinn: [`frame`] is the codec; `session` the state machine,
//! which takes the peer's frames and the streams' calls and returns the frames to send, with no
//! socket or TLS (unit tested so); `io` the shell that owns rustls and the socket, and the
//! [`Driver`]; [`sched`] the turns.
//!
//! Limits: a data frame over [`MAX_RECV_FRAME`] bytes, data beyond a stream's window or the
//! session's, a SYN for a stream id in use or of the wrong parity, a stream frame on stream 0
//! other than a session window update, and an unknown version or frame type are protocol
//! errors that end the session, as does a peer that keeps sending while it reads nothing
//! ([`MAX_QUEUED`] bytes queued for it). Inbound streams beyond `max_streams`, or beyond
//! [`ACCEPT_BACKLOG`] not yet accepted, are refused with RST. A session that receives nothing
//! for [`Config::idle_timeout`] ends; it sends a ping every [`Config::keep_alive`].

use std::time::Duration;

pub mod frame;
mod io;
pub mod sched;
mod session;

pub use frame::{FrameError, FrameReader, HEADER_LEN, Header, Kind, MAX_RECV_FRAME, Piece, flag};
pub use io::{Driver, Mux, MuxReader, MuxWriter, session};

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
/// Inbound streams held before [`Driver::accept`] takes them; more are refused.
pub const ACCEPT_BACKLOG: usize = 1024;
/// Bytes read from the socket in one system call.
const READ_CHUNK: usize = 256 * 1024;
/// Most plaintext one TLS record carries (RFC 8446 §5.1).
const MAX_RECORD_PLAINTEXT: usize = 16 * 1024;
/// Payload pieces shorter than this are copied out of their read's buffer before they are
/// queued for a stream's reader: a quarter of the largest buffer a read decrypts into.
const PIN_BELOW: usize = (READ_CHUNK + MAX_RECORD_PLAINTEXT) / 4;
/// Encrypted bytes queued for the socket (refused by it so far) at which writers wait for a
/// turn ([`sched`]): one TLS record, so a consensus frame never waits behind much bulk data
/// in the session (16 KiB leave the socket in 1.3 ms at 100 Mbit/s).
pub const QUEUE_LIMIT: usize = 16 * 1024;
/// Largest data frame while other streams wait for a turn: one TLS record, so a turn holds
/// the link for 1.3 ms at 100 Mbit/s.
pub const SHARED_FRAME: usize = 16 * 1024;
/// How long after the socket last refused a write a stream alone on the session still
/// writes frames of at most the queue's room, not [`MAX_FRAME`]: while the link is the
/// bottleneck, whatever a frame leaves queued is what the next consensus frame waits behind.
const BACKLOG_HOLD: Duration = Duration::from_millis(200);
/// A turn not used within this long is taken back (its writer stopped writing).
const TURN_TIMEOUT: Duration = Duration::from_secs(1);
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
const READS_PER_TURN: usize = 16;

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
    pub congestion: super::quic::Congestion,
}

pub use crate::listener::EndWhen;

#[cfg(test)]
pub(super) mod tests;
