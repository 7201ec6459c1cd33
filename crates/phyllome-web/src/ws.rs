//! The WebSocket side of the console: the RFC 6455 handshake and framing
//! (server side, binary frames), and the proxy between a browser and a VM's
//! VNC endpoint, which listens on loopback or a unix socket only.
//!
//! Frames towards the browser are written with their header in front of the
//! payload in one buffer, so a byte from VNC is copied once.

use crate::crypto::{base64, sha1};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, Interest};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Largest frame accepted from a browser (noVNC sends small messages).
pub const MAX_CLIENT_FRAME: u64 = 1 << 20;
/// Bytes read from VNC at a time (one frame each).
const CHUNK: usize = 256 * 1024;

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    base64(&sha1(format!("{}{GUID}", key.trim()).as_bytes()))
}

/// The header of an unmasked, final frame of `len` bytes.
fn header(opcode: u8, len: usize, out: &mut [u8; 10]) -> usize {
    out[0] = 0x80 | opcode;
    if len < 126 {
        out[1] = len as u8;
        2
    } else if len <= 0xffff {
        out[1] = 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

async fn write_frame<W: AsyncWrite + Unpin>(w: &Mutex<W>, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
    let mut h = [0u8; 10];
    let n = header(opcode, payload.len(), &mut h);
    let mut buf = Vec::with_capacity(n + payload.len());
    buf.extend_from_slice(&h[..n]);
    buf.extend_from_slice(payload);
    let mut w = w.lock().await;
    w.write_all(&buf).await?;
    w.flush().await
}

fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// A frame from the browser.
struct Frame {
    opcode: u8,
    payload: Vec<u8>,
}

#[derive(Debug)]
enum FrameError {
    /// The connection closed or failed.
    Closed,
    /// Close with this code and reason.
    Protocol(u16, &'static str),
}

impl From<std::io::Error> for FrameError {
    fn from(_: std::io::Error) -> Self {
        FrameError::Closed
    }
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Frame, FrameError> {
    let mut h = [0u8; 2];
    r.read_exact(&mut h).await?;
    if h[0] & 0x70 != 0 {
        return Err(FrameError::Protocol(1002, "reserved bits set"));
    }
    if h[1] & 0x80 == 0 {
        return Err(FrameError::Protocol(1002, "client frames must be masked"));
    }
    let len = match h[1] & 0x7f {
        126 => u64::from(r.read_u16().await?),
        127 => r.read_u64().await?,
        n => u64::from(n),
    };
    if len > MAX_CLIENT_FRAME {
        return Err(FrameError::Protocol(1009, "frame too large"));
    }
    let mut mask = [0u8; 4];
    r.read_exact(&mut mask).await?;
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).await?;
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
    Ok(Frame { opcode: h[0] & 0x0f, payload })
}

/// Why a proxied console ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The browser closed it.
    Client,
    /// The VM's display went away (VM stopped).
    Display,
    /// The session ended (logout, expiry, user removed).
    Session,
    /// A protocol or I/O error.
    Error(String),
}

/// Browser to VNC: unmasks frames and forwards their payload; answers pings
/// and closes. Frames go out through `ws_w`, shared with the other direction.
async fn from_browser<R, W, V>(r: R, ws_w: &Mutex<W>, vnc_w: &mut V, active: &AtomicBool) -> Ended
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    V: AsyncWrite + Unpin,
{
    let mut r = BufReader::with_capacity(64 * 1024, r);
    loop {
        match read_frame(&mut r).await {
            Ok(f) => match f.opcode {
                0x0..=0x2 => {
                    active.store(true, Ordering::Relaxed);
                    if let Err(e) = vnc_w.write_all(&f.payload).await {
                        return Ended::Error(format!("VNC: {e}"));
                    }
                }
                0x8 => {
                    let _ = write_frame(ws_w, 0x8, &close_payload(1000, "")).await;
                    return Ended::Client;
                }
                0x9 => {
                    if write_frame(ws_w, 0xA, &f.payload).await.is_err() {
                        return Ended::Client;
                    }
                }
                0xA => {}
                _ => {
                    let _ = write_frame(ws_w, 0x8, &close_payload(1002, "unknown opcode")).await;
                    return Ended::Error("unknown opcode".into());
                }
            },
            Err(FrameError::Closed) => return Ended::Client,
            Err(FrameError::Protocol(code, why)) => {
                let _ = write_frame(ws_w, 0x8, &close_payload(code, why)).await;
                return Ended::Error(why.into());
            }
        }
    }
}

/// Ends when `alive(active)` says the session no longer holds.
async fn watch_session(check: Duration, active: &AtomicBool, alive: impl Fn(bool) -> bool) -> Ended {
    let mut tick = tokio::time::interval(check);
    tick.tick().await;
    loop {
        tick.tick().await;
        if !alive(active.swap(false, Ordering::Relaxed)) {
            return Ended::Session;
        }
    }
}

/// Tells the browser why the console ended, when it was not the browser's doing.
async fn say_goodbye<W: AsyncWrite + Unpin>(ended: &Ended, ws_w: &Mutex<W>) {
    let why = match ended {
        Ended::Display => close_payload(1000, "the display closed"),
        Ended::Session => close_payload(1008, "the session ended"),
        _ => return,
    };
    let _ = write_frame(ws_w, 0x8, &why).await;
}

/// Proxies between a WebSocket (`ws`, after the handshake) and a VNC
/// connection until either side ends. Every `check` interval `alive(active)`
/// is asked whether the session still holds (`active` tells whether the
/// browser sent anything since the last check, to keep a used session alive).
pub async fn proxy<S, V>(ws: S, vnc: V, check: Duration, alive: impl Fn(bool) -> bool + Send) -> Ended
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    V: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (ws_r, ws_w) = tokio::io::split(ws);
    let (mut vnc_r, mut vnc_w) = tokio::io::split(vnc);
    let ws_w = Mutex::new(ws_w);
    let active = AtomicBool::new(false);

    let to_browser = async {
        let mut buf = vec![0u8; 10 + CHUNK];
        loop {
            let n = match vnc_r.read(&mut buf[10..]).await {
                Ok(0) => return Ended::Display,
                Ok(n) => n,
                Err(e) => return Ended::Error(format!("VNC: {e}")),
            };
            let mut h = [0u8; 10];
            let hl = header(0x2, n, &mut h);
            let start = 10 - hl;
            buf[start..10].copy_from_slice(&h[..hl]);
            let mut w = ws_w.lock().await;
            if let Err(e) = w.write_all(&buf[start..10 + n]).await {
                return Ended::Error(format!("browser: {e}"));
            }
            if let Err(e) = w.flush().await {
                return Ended::Error(format!("browser: {e}"));
            }
        }
    };

    let ended = tokio::select! {
        e = to_browser => e,
        e = from_browser(ws_r, &ws_w, &mut vnc_w, &active) => e,
        e = watch_session(check, &active, alive) => e,
    };
    say_goodbye(&ended, &ws_w).await;
    let _ = ws_w.lock().await.shutdown().await;
    let _ = vnc_w.shutdown().await;
    ended
}

/// Runs `op` on `sock` when it is ready for `interest`, until it does not
/// answer "would block".
async fn when_ready<T>(
    sock: &TcpStream,
    interest: Interest,
    mut op: impl FnMut() -> std::io::Result<T>,
) -> std::io::Result<T> {
    loop {
        sock.ready(interest).await?;
        match sock.try_io(interest, &mut op) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

/// The same proxy for the common case of plain TCP on both sides (a loopback
/// listener, and VNC on loopback), without copying VNC's bytes: Linux
/// `splice(2)` moves them from the VNC socket into a pipe and from the pipe
/// into the browser's socket; only the frame headers are written by us.
/// `early` holds bytes the browser sent before the upgrade finished. Falls
/// back to [`proxy`] when no pipe can be had.
pub async fn proxy_tcp(
    mut ws: TcpStream,
    early: bytes::Bytes,
    mut vnc: TcpStream,
    check: Duration,
    alive: impl Fn(bool) -> bool + Send,
) -> Ended {
    use rustix::pipe::{fcntl_getpipe_size, fcntl_setpipe_size, pipe_with, splice, PipeFlags, SpliceFlags};
    let Ok((pipe_r, pipe_w)) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK) else {
        let ws = std::io::Cursor::new(early).chain(ws);
        return proxy(Joined(ws), vnc, check, alive).await;
    };
    let _ = fcntl_setpipe_size(&pipe_w, 1 << 20);
    let pipe_size = fcntl_getpipe_size(&pipe_w).unwrap_or(64 * 1024);
    let (ws_r, ws_w) = ws.split();
    let (vnc_r, mut vnc_w) = vnc.split();
    let ws_w = Mutex::new(ws_w);
    let active = AtomicBool::new(false);
    let moving = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;

    let to_browser = async {
        let vnc_sock: &TcpStream = vnc_r.as_ref();
        loop {
            // The pipe is empty here: "would block" can only mean the VNC socket.
            let n = match when_ready(vnc_sock, Interest::READABLE, || {
                splice(vnc_sock, None, &pipe_w, None, pipe_size, moving).map_err(std::io::Error::from)
            })
            .await
            {
                Ok(0) => return Ended::Display,
                Ok(n) => n,
                Err(e) => return Ended::Error(format!("VNC: {e}")),
            };
            let w = ws_w.lock().await;
            let sock: &TcpStream = w.as_ref();
            let mut h = [0u8; 10];
            let hl = header(0x2, n, &mut h);
            let mut sent = 0;
            while sent < hl {
                match when_ready(sock, Interest::WRITABLE, || {
                    rustix::net::send(sock, &h[sent..hl], rustix::net::SendFlags::MORE).map_err(std::io::Error::from)
                })
                .await
                {
                    Ok(k) => sent += k,
                    Err(e) => return Ended::Error(format!("browser: {e}")),
                }
            }
            // The pipe holds n bytes here: "would block" can only mean the browser's socket.
            let mut left = n;
            while left > 0 {
                match when_ready(sock, Interest::WRITABLE, || {
                    splice(&pipe_r, None, sock, None, left, moving).map_err(std::io::Error::from)
                })
                .await
                {
                    Ok(0) => return Ended::Error("browser: the pipe ran dry".into()),
                    Ok(k) => left -= k,
                    Err(e) => return Ended::Error(format!("browser: {e}")),
                }
            }
        }
    };

    let ended = {
        let r = std::io::Cursor::new(early).chain(ws_r);
        tokio::select! {
            e = to_browser => e,
            e = from_browser(r, &ws_w, &mut vnc_w, &active) => e,
            e = watch_session(check, &active, alive) => e,
        }
    };
    say_goodbye(&ended, &ws_w).await;
    let _ = ws_w.lock().await.shutdown().await;
    let _ = vnc_w.shutdown().await;
    ended
}

/// A reader and the stream it reads ahead of, as one read/write stream.
struct Joined<R>(tokio::io::Chain<std::io::Cursor<bytes::Bytes>, R>);

impl<R: AsyncRead + Unpin> AsyncRead for Joined<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<R: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Joined<R> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(self.0.get_mut().1).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(self.0.get_mut().1).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(self.0.get_mut().1).poll_shutdown(cx)
    }
}

/// Where a VM's VNC display listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VncTarget {
    Tcp(std::net::SocketAddr),
    Unix(std::path::PathBuf),
}

#[derive(Debug, PartialEq, Eq)]
pub enum VncLookup {
    /// No VNC display now (the VM is not running, or has none).
    None,
    /// The display listens on a network address this server will not proxy to.
    NotLoopback(String),
}

/// Reads a running domain's VNC endpoint from its live XML. Only loopback
/// addresses (and the wildcard, reached through loopback) and unix sockets.
pub fn vnc_target(xml: &str) -> Result<VncTarget, VncLookup> {
    let doc = roxmltree::Document::parse(xml).map_err(|_| VncLookup::None)?;
    let Some(g) = doc.descendants().find(|n| n.has_tag_name("graphics") && n.attribute("type") == Some("vnc")) else {
        return Err(VncLookup::None);
    };
    let socket = g.attribute("socket").map(str::to_string).or_else(|| {
        g.children()
            .find(|c| c.has_tag_name("listen") && c.attribute("type") == Some("socket"))
            .and_then(|c| c.attribute("socket"))
            .map(str::to_string)
    });
    if let Some(s) = socket {
        return Ok(VncTarget::Unix(s.into()));
    }
    let port: u16 = g
        .attribute("port")
        .and_then(|p| p.parse::<i32>().ok())
        .filter(|&p| p > 0 && p < 65536)
        .ok_or(VncLookup::None)? as u16;
    let listen = g
        .attribute("listen")
        .or_else(|| g.children().find(|c| c.has_tag_name("listen")).and_then(|c| c.attribute("address")))
        .unwrap_or("127.0.0.1");
    let ip: std::net::IpAddr = match listen {
        "localhost" => std::net::Ipv4Addr::LOCALHOST.into(),
        other => other.parse().map_err(|_| VncLookup::NotLoopback(other.to_string()))?,
    };
    let ip = if ip.is_unspecified() {
        if ip.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        }
    } else if ip.is_loopback() {
        ip
    } else {
        return Err(VncLookup::NotLoopback(listen.to_string()));
    };
    Ok(VncTarget::Tcp((ip, port).into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc6455_example() {
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn headers_use_the_shortest_length() {
        let mut h = [0u8; 10];
        assert_eq!(header(2, 5, &mut h), 2);
        assert_eq!(&h[..2], &[0x82, 5]);
        assert_eq!(header(2, 300, &mut h), 4);
        assert_eq!(&h[..4], &[0x82, 126, 1, 44]);
        assert_eq!(header(2, 70000, &mut h), 10);
        assert_eq!(h[1], 127);
    }

    #[test]
    fn vnc_targets_are_loopback_or_unix() {
        let g = |attrs: &str| format!("<domain><devices><graphics type='vnc' {attrs}/></devices></domain>");
        assert_eq!(
            vnc_target(&g("port='5900' listen='127.0.0.1'")),
            Ok(VncTarget::Tcp("127.0.0.1:5900".parse().unwrap()))
        );
        assert_eq!(
            vnc_target(&g("port='5901' listen='0.0.0.0'")),
            Ok(VncTarget::Tcp("127.0.0.1:5901".parse().unwrap()))
        );
        assert_eq!(vnc_target(&g("port='5901' listen='::1'")), Ok(VncTarget::Tcp("[::1]:5901".parse().unwrap())));
        assert_eq!(vnc_target(&g("port='-1' autoport='yes'")), Err(VncLookup::None));
        assert_eq!(
            vnc_target(&g("port='5902' listen='192.168.1.5'")),
            Err(VncLookup::NotLoopback("192.168.1.5".into()))
        );
        assert_eq!(vnc_target(&g("socket='/run/vnc.sock'")), Ok(VncTarget::Unix("/run/vnc.sock".into())));
        assert_eq!(vnc_target("<domain><devices/></domain>"), Err(VncLookup::None));
    }

    #[tokio::test]
    async fn proxies_both_ways_and_answers_ping_and_close() {
        let (browser, server_side) = tokio::io::duplex(1 << 20);
        let (vnc_server, vnc_client) = tokio::io::duplex(1 << 20);
        let task = tokio::spawn(proxy(server_side, vnc_client, Duration::from_secs(3600), |_| true));
        let (mut vnc_r, mut vnc_w) = tokio::io::split(vnc_server);
        let (mut br, mut bw) = tokio::io::split(browser);
        vnc_w.write_all(b"RFB 003.008\n").await.unwrap();
        let mut h = [0u8; 2];
        br.read_exact(&mut h).await.unwrap();
        assert_eq!(h, [0x82, 12]);
        let mut p = [0u8; 12];
        br.read_exact(&mut p).await.unwrap();
        assert_eq!(&p, b"RFB 003.008\n");
        // A masked binary frame reaches VNC unmasked.
        let mask = [1u8, 2, 3, 4];
        let data = b"hello";
        let mut f = vec![0x82, 0x80 | data.len() as u8];
        f.extend_from_slice(&mask);
        f.extend(data.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        // A ping is answered with a pong.
        f.extend_from_slice(&[0x89, 0x80, 0, 0, 0, 0]);
        bw.write_all(&f).await.unwrap();
        let mut got = [0u8; 5];
        vnc_r.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, data);
        br.read_exact(&mut h).await.unwrap();
        assert_eq!(h, [0x8A, 0]);
        // An unmasked frame is a protocol error.
        bw.write_all(&[0x82, 0x01, 0x00]).await.unwrap();
        assert!(matches!(task.await.unwrap(), Ended::Error(_)));
    }

    #[tokio::test]
    async fn spliced_proxy_moves_bytes_and_ends_with_the_display() {
        let l1 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let l2 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut browser = TcpStream::connect(l1.local_addr().unwrap()).await.unwrap();
        let (ws_side, _) = l1.accept().await.unwrap();
        let vnc_side = TcpStream::connect(l2.local_addr().unwrap()).await.unwrap();
        let (mut vnc, _) = l2.accept().await.unwrap();
        // Bytes the browser sent before the upgrade finished come first.
        let mut early = vec![0x82, 0x80 | 2, 0, 0, 0, 0];
        early.extend_from_slice(b"hi");
        let task = tokio::spawn(proxy_tcp(ws_side, early.into(), vnc_side, Duration::from_secs(3600), |_| true));
        let mut got = [0u8; 2];
        vnc.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hi");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        let writer = {
            let data = data.clone();
            tokio::spawn(async move {
                vnc.write_all(&data).await.unwrap();
                vnc.shutdown().await.unwrap();
                vnc
            })
        };
        let mut received = Vec::new();
        loop {
            let mut h = [0u8; 2];
            browser.read_exact(&mut h).await.unwrap();
            let len = match h[1] & 0x7f {
                126 => usize::from(browser.read_u16().await.unwrap()),
                127 => browser.read_u64().await.unwrap() as usize,
                n => usize::from(n),
            };
            let mut p = vec![0u8; len];
            browser.read_exact(&mut p).await.unwrap();
            if h[0] & 0x0f == 0x8 {
                assert_eq!(&p[..2], &1000u16.to_be_bytes());
                break;
            }
            assert_eq!(h[0], 0x82);
            received.extend_from_slice(&p);
        }
        assert_eq!(received.len(), data.len());
        assert!(received == data, "bytes changed on the way");
        assert_eq!(task.await.unwrap(), Ended::Display);
        drop(writer.await.unwrap());
    }
}
