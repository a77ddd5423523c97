//! WebSocket connections through the gate, ended cleanly at the deadline.
//!
//! After the upgrade, bytes pass through untouched in both directions; the gate reads only
//! the frame headers (RFC 6455 §5.2) to know where each frame ends. At the deadline each
//! direction finishes the frame in progress, then the gate sends a Close frame with status
//! 1001 (going away, §7.4.1): to the client unmasked, as a server does; to the engine masked,
//! as a client must (§5.3). Control frames may sit between the fragments of a message (§5.4),
//! so a frame boundary is always a place a Close may go. A well-behaved client then reconnects,
//! and reaches a replica that is not draining.
//!
//! Written here rather than taken from a WebSocket library: those parse and re-frame every
//! message (and unmask and re-mask payloads), where the gate must pass frames through byte for
//! byte and only know where they end.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Close status 1001: the endpoint is going away (a server going down).
pub const GOING_AWAY: u16 = 1001;
/// How long the gate waits, after its Close, for the frame in progress to end and for the
/// other side's Close.
pub const CLOSE_LINGER: Duration = Duration::from_secs(2);
const CLOSE_OPCODE: u8 = 0x8;

/// Where frames end in one direction: only headers are parsed.
#[derive(Debug, Clone, Default)]
pub struct FrameTracker {
    header: [u8; 14],
    have: usize,
    /// Payload bytes still to come in the current frame (once its header is complete).
    left: u64,
    in_payload: bool,
    opcode: u8,
    /// Close frames that ended in this direction.
    closes: u32,
}

impl FrameTracker {
    /// A tracker at the start of a stream (a frame boundary).
    pub fn new() -> FrameTracker {
        FrameTracker::default()
    }

    /// Whether the bytes seen so far end exactly at a frame boundary.
    pub fn at_boundary(&self) -> bool {
        !self.in_payload && self.have == 0
    }

    /// Close frames seen complete.
    pub fn closes(&self) -> u32 {
        self.closes
    }

    /// The header length once its first two bytes are known.
    fn header_len(&self) -> Option<usize> {
        if self.have < 2 {
            return None;
        }
        let len7 = self.header[1] & 0x7f;
        let ext = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        Some(2 + ext + mask)
    }

    fn payload_len(&self) -> u64 {
        match self.header[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.header[2..10]);
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        }
    }

    fn end_frame(&mut self) {
        if self.opcode == CLOSE_OPCODE {
            self.closes += 1;
        }
        self.in_payload = false;
        self.have = 0;
    }

    /// Feeds the bytes passing by; returns how many were consumed before the first frame
    /// boundary reached inside `data` (all of them when none is).
    pub fn feed_to_boundary(&mut self, data: &[u8]) -> usize {
        let mut i = 0;
        while i < data.len() {
            if self.in_payload {
                let take = self.left.min((data.len() - i) as u64) as usize;
                self.left -= take as u64;
                i += take;
                if self.left == 0 {
                    self.end_frame();
                    return i;
                }
                continue;
            }
            self.header[self.have] = data[i];
            self.have += 1;
            i += 1;
            if self.header_len() == Some(self.have) {
                self.opcode = self.header[0] & 0x0f;
                self.left = self.payload_len();
                self.in_payload = true;
                if self.left == 0 {
                    self.end_frame();
                    return i;
                }
            }
        }
        i
    }

    /// Feeds every byte of `data`.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let n = self.feed_to_boundary(data);
            data = &data[n..];
        }
    }
}

/// A Close frame with `code` and a short reason; `mask` for the client-to-server direction
/// (the key is fixed: masking guards against cache poisoning by script in browsers, which a
/// proxy's own close frame cannot be used for).
pub fn close_frame(code: u16, reason: &str, mask: bool) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    payload.truncate(125);
    let mut f = vec![0x80 | CLOSE_OPCODE];
    let len = payload.len() as u8;
    if mask {
        let key = [0x6c, 0x64, 0x75, 0x63];
        f.push(0x80 | len);
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        f.push(len);
        f.extend_from_slice(&payload);
    }
    f
}

/// How a relayed WebSocket connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsEnd {
    /// One side closed it.
    Closed,
    /// The deadline came: both sides got a 1001 Close at a frame boundary.
    GoingAway,
    /// A read or write failed.
    Broken,
}

/// One direction: `from` → `to`, until `from` ends; at the deadline, the frame in progress is
/// finished, a 1001 Close sent, and what follows read and dropped until the other side's Close
/// has come or [`CLOSE_LINGER`] passed.
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    deadline: CancellationToken,
    mask: bool,
) -> (WsEnd, bool)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut tracker = FrameTracker::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut closing = false;
    let mut linger_until = None;
    // Bytes read after the frame in progress ended, once closing: never passed on.
    let mut after: Vec<u8> = Vec::new();
    loop {
        if closing && tracker.at_boundary() {
            let frame = close_frame(GOING_AWAY, "going away", mask);
            let sent = to.write_all(&frame).await.is_ok() && to.flush().await.is_ok();
            if !sent {
                return (WsEnd::Broken, true);
            }
            // The Close is sent: drop what follows until the other side's Close or the linger.
            let closes = tracker.closes();
            tracker.feed(&after);
            let until = tokio::time::Instant::now() + CLOSE_LINGER;
            while tracker.closes() == closes {
                let n = tokio::select! {
                    r = from.read(&mut buf) => r.unwrap_or(0),
                    () = tokio::time::sleep_until(until) => 0,
                };
                if n == 0 {
                    break;
                }
                tracker.feed(&buf[..n]);
            }
            let _ = to.shutdown().await;
            return (WsEnd::GoingAway, true);
        }
        let read = tokio::select! {
            biased;
            r = from.read(&mut buf) => Some(r),
            () = deadline.cancelled(), if !closing => None,
            () = async {
                match linger_until {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {
                // The frame in progress never ended: give up on a clean close.
                let _ = to.shutdown().await;
                return (WsEnd::Broken, true);
            }
        };
        let n = match read {
            None => {
                closing = true;
                linger_until = Some(tokio::time::Instant::now() + CLOSE_LINGER);
                continue;
            }
            Some(Ok(0)) => {
                let _ = to.shutdown().await;
                return (WsEnd::Closed, false);
            }
            Some(Ok(n)) => n,
            Some(Err(_)) => {
                let _ = to.shutdown().await;
                return (WsEnd::Broken, false);
            }
        };
        let pass = if closing {
            // Only up to the end of the frame in progress.
            let pass = tracker.feed_to_boundary(&buf[..n]);
            after.extend_from_slice(&buf[pass..n]);
            pass
        } else {
            tracker.feed(&buf[..n]);
            n
        };
        if to.write_all(&buf[..pass]).await.is_err() {
            return (WsEnd::Broken, false);
        }
    }
}

/// Relays an upgraded WebSocket connection between the client and the engine until either
/// ends it, or until `deadline`, when both get a 1001 Close at a frame boundary.
pub async fn relay<C, U>(client: C, upstream: U, deadline: CancellationToken) -> WsEnd
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (client_r, client_w) = tokio::io::split(client);
    let (up_r, up_w) = tokio::io::split(upstream);
    let ((down, down_closing), (up, up_closing)) = tokio::join!(
        pump(up_r, client_w, deadline.clone(), false),
        pump(client_r, up_w, deadline, true),
    );
    if down_closing || up_closing {
        if down == WsEnd::GoingAway {
            return WsEnd::GoingAway;
        }
        return WsEnd::Broken;
    }
    if down == WsEnd::Broken || up == WsEnd::Broken {
        WsEnd::Broken
    } else {
        WsEnd::Closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fin: bool, opcode: u8, payload: &[u8], mask: bool) -> Vec<u8> {
        let mut f = vec![(u8::from(fin) << 7) | opcode];
        let m = if mask { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => f.push(m | n as u8),
            n if n <= 0xffff => {
                f.push(m | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(m | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if mask {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn boundaries_of_every_length_class_masked_or_not() {
        for len in [0usize, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            for mask in [false, true] {
                let f = frame(true, 0x2, &vec![7u8; len], mask);
                let mut t = FrameTracker::new();
                assert!(t.at_boundary());
                // Fed one byte at a time, the boundary comes exactly at the end.
                for (i, b) in f.iter().enumerate() {
                    let n = t.feed_to_boundary(std::slice::from_ref(b));
                    assert_eq!(n, 1);
                    assert_eq!(
                        t.at_boundary(),
                        i == f.len() - 1,
                        "len {len} mask {mask} at {i}"
                    );
                }
            }
        }
    }

    proptest::proptest! {
        /// Any frames, cut into any chunks: the tracker is at a boundary exactly at the end of
        /// each frame, and `feed_to_boundary` never runs past one.
        #[test]
        fn boundaries_survive_any_chunking(
            frames in proptest::collection::vec((0usize..70_000, proptest::bool::ANY, 0u8..16), 1..6),
            cuts in proptest::collection::vec(1usize..5_000, 1..40),
        ) {
            let mut stream = Vec::new();
            let mut ends = std::collections::BTreeSet::new();
            for (len, mask, op) in &frames {
                stream.extend(frame(true, *op, &vec![0xA5; *len], *mask));
                ends.insert(stream.len());
            }
            let mut t = FrameTracker::new();
            let mut pos = 0;
            let mut cut = cuts.iter().cycle();
            while pos < stream.len() {
                let take = (*cut.next().unwrap_or(&1)).min(stream.len() - pos);
                let n = t.feed_to_boundary(&stream[pos..pos + take]);
                proptest::prop_assert!(n >= 1 && n <= take);
                pos += n;
                proptest::prop_assert_eq!(t.at_boundary(), ends.contains(&pos));
                if n < take {
                    proptest::prop_assert!(ends.contains(&pos));
                }
            }
        }
    }

    #[test]
    fn feed_to_boundary_stops_at_the_first_frame_end() {
        let a = frame(false, 0x1, b"frag-one", false);
        let b = frame(true, 0x0, b"frag-two", false);
        let mut all = a.clone();
        all.extend_from_slice(&b);
        let mut t = FrameTracker::new();
        assert_eq!(t.feed_to_boundary(&all[..3]), 3);
        assert!(!t.at_boundary());
        assert_eq!(t.feed_to_boundary(&all[3..]), a.len() - 3);
        assert!(t.at_boundary());
        t.feed(&all[a.len()..]);
        assert!(t.at_boundary());
    }

    #[test]
    fn close_frames_are_counted() {
        let mut t = FrameTracker::new();
        t.feed(&frame(true, 0x9, b"ping", true));
        assert_eq!(t.closes(), 0);
        t.feed(&close_frame(1000, "bye", true));
        assert_eq!(t.closes(), 1);
    }

    #[test]
    fn our_close_frames_parse_back() {
        for mask in [false, true] {
            let f = close_frame(GOING_AWAY, "going away", mask);
            assert_eq!(f[0], 0x88);
            assert_eq!(f[1] & 0x80 != 0, mask);
            let len = usize::from(f[1] & 0x7f);
            let (key, body) = if mask {
                (Some(&f[2..6]), &f[6..])
            } else {
                (None, &f[2..])
            };
            assert_eq!(body.len(), len);
            let plain: Vec<u8> = body
                .iter()
                .enumerate()
                .map(|(i, b)| key.map_or(*b, |k| b ^ k[i % 4]))
                .collect();
            assert_eq!(u16::from_be_bytes([plain[0], plain[1]]), 1001);
            assert_eq!(&plain[2..], b"going away");
        }
    }

    /// A relay of real sockets: frames pass; at the deadline, a frame in progress is finished
    /// before the Close, and both sides get 1001.
    #[tokio::test]
    async fn the_deadline_closes_both_sides_at_a_boundary() {
        let (client, mut client_peer) = tokio::io::duplex(1 << 20);
        let (upstream, mut engine) = tokio::io::duplex(1 << 20);
        let deadline = CancellationToken::new();
        let relay = tokio::spawn(relay(client, upstream, deadline.clone()));
        // A whole frame, then half of a big one, from the engine.
        let small = frame(true, 0x1, b"hello", false);
        let big = frame(true, 0x2, &vec![9u8; 50_000], false);
        engine.write_all(&small).await.expect("write");
        engine.write_all(&big[..20_000]).await.expect("write");
        let mut got = vec![0u8; small.len() + 20_000];
        client_peer.read_exact(&mut got).await.expect("read");
        deadline.cancel();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The rest of the big frame, then more that must not pass.
        engine.write_all(&big[20_000..]).await.expect("write");
        engine.write_all(&small).await.expect("write");
        let mut rest = vec![0u8; big.len() - 20_000];
        client_peer.read_exact(&mut rest).await.expect("read");
        let mut close = [0u8; 2];
        client_peer
            .read_exact(&mut close)
            .await
            .expect("read close header");
        assert_eq!(close, [0x88, 12]);
        let mut body = [0u8; 12];
        client_peer.read_exact(&mut body).await.expect("read close");
        assert_eq!(u16::from_be_bytes([body[0], body[1]]), 1001);
        // Both answer with their Close; the relay ends as going away.
        client_peer
            .write_all(&close_frame(1001, "", true))
            .await
            .expect("write");
        let mut to_engine = vec![0u8; close_frame(GOING_AWAY, "going away", true).len()];
        engine
            .read_exact(&mut to_engine)
            .await
            .expect("engine gets close");
        assert_eq!(to_engine[0], 0x88);
        engine
            .write_all(&close_frame(1001, "", false))
            .await
            .expect("write");
        let end = tokio::time::timeout(Duration::from_secs(10), relay)
            .await
            .expect("relay ends")
            .expect("join");
        assert_eq!(end, WsEnd::GoingAway);
    }
}
