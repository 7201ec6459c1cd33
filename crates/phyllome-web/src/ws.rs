//! How a console's bytes move between a browser's WebSocket (axum's, over
//! tungstenite) and a VM (the handlers are `api::consoles`):
//!
//! - VNC: the display listens on loopback or a unix socket only (libvirt's
//!   default; [`vnc_target`] reads where); bytes go both ways in binary frames.
//! - Serial: libvirt's console stream (`virDomainOpenConsole`, as `virsh
//!   console`), moved by one blocking thread per console.
//!
//! Frames from the browser are at most [`MAX_CLIENT_FRAME`] bytes (1009
//! closes bigger ones); protocol errors close with 1002; a console whose
//! session ends (logout, expiry, user removed) closes with 1008, and one
//! whose VM stopped with 1000.

use crate::App;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame (and message) accepted from a browser (noVNC sends small messages).
pub const MAX_CLIENT_FRAME: usize = 1 << 20;
/// Bytes read from VNC at a time (one frame each).
const CHUNK: usize = 256 * 1024;
/// How often a console asks whether its session still holds.
pub const CHECK: Duration = Duration::from_secs(2);

/// Why a proxied console ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The browser closed it.
    Client,
    /// The VM's display or console went away (VM stopped).
    Display,
    /// The session ended (logout, expiry, user removed).
    Session,
    /// A protocol or I/O error.
    Error(String),
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame { code, reason: reason.into() }))
}

/// The close frame for a tungstenite error from the browser's side.
fn close_for(e: &axum::Error) -> Message {
    let text = e.to_string();
    if text.contains("Space limit exceeded") || text.contains("too long") || text.contains("Message too big") {
        close(1009, "frame too large")
    } else {
        close(1002, "protocol error")
    }
}

/// The WebSocket settings of every console: the `binary` subprotocol, frames and messages of at most
/// [`MAX_CLIENT_FRAME`] bytes.
pub fn configure(ws: WebSocketUpgrade) -> WebSocketUpgrade {
    ws.protocols(["binary"]).max_frame_size(MAX_CLIENT_FRAME).max_message_size(MAX_CLIENT_FRAME)
}

/// Moves bytes between a browser's WebSocket and a byte stream (VNC) until
/// either side ends or `alive(active)` says the session no longer holds.
pub async fn proxy<V>(socket: WebSocket, vnc: V, check: Duration, alive: impl Fn(bool) -> bool + Send) -> Ended
where
    V: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (mut ws_w, mut ws_r) = socket.split();
    let (mut vnc_r, mut vnc_w) = tokio::io::split(vnc);
    let active = AtomicBool::new(false);

    // VNC's bytes are read straight into the buffer that becomes the frame's
    // payload (no copy of ours); tungstenite writes header and payload out.
    let to_browser = async {
        let mut buf = bytes::BytesMut::with_capacity(CHUNK);
        loop {
            if buf.capacity() < CHUNK / 4 {
                buf = bytes::BytesMut::with_capacity(CHUNK);
            }
            match vnc_r.read_buf(&mut buf).await {
                Ok(0) => return Ended::Display,
                Ok(_) => {
                    if ws_w.send(Message::Binary(buf.split().freeze())).await.is_err() {
                        return Ended::Client;
                    }
                }
                Err(e) => return Ended::Error(format!("VNC: {e}")),
            }
        }
    };
    // The close frame a protocol error from the browser calls for, sent once the select ends.
    let mut refusal: Option<Message> = None;
    let from_browser = async {
        while let Some(m) = ws_r.next().await {
            match m {
                Ok(Message::Binary(b)) => {
                    active.store(true, Ordering::Relaxed);
                    if let Err(e) = vnc_w.write_all(&b).await {
                        return Ended::Error(format!("VNC: {e}"));
                    }
                }
                Ok(Message::Text(t)) => {
                    active.store(true, Ordering::Relaxed);
                    if let Err(e) = vnc_w.write_all(t.as_bytes()).await {
                        return Ended::Error(format!("VNC: {e}"));
                    }
                }
                // tungstenite answers pings itself.
                Ok(Message::Ping(_) | Message::Pong(_)) => {}
                Ok(Message::Close(_)) => return Ended::Client,
                Err(e) => {
                    refusal = Some(close_for(&e));
                    return Ended::Error(e.to_string());
                }
            }
        }
        Ended::Client
    };
    let ended = tokio::select! {
        e = to_browser => e,
        e = from_browser => e,
        e = watch_session(check, &active, alive) => e,
    };
    let goodbye = match &ended {
        Ended::Display => Some(close(1000, "the display closed")),
        Ended::Session => Some(close(1008, "the session ended")),
        Ended::Error(_) => refusal,
        Ended::Client => None,
    };
    if let Some(m) = goodbye {
        let _ = ws_w.send(m).await;
    }
    let _ = ws_w.close().await;
    let _ = vnc_w.shutdown().await;
    ended
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

/// The serial console: one blocking thread owns the libvirt stream and
/// moves bytes both ways; the async side moves WebSocket messages.
pub async fn serial_proxy(
    app: Arc<App>,
    name: String,
    socket: WebSocket,
    alive: impl Fn(bool) -> bool + Send,
) -> Ended {
    let (to_ws, mut from_console) = tokio::sync::mpsc::channel::<Bytes>(16);
    let (to_console, mut keys) = tokio::sync::mpsc::channel::<Bytes>(16);
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let worker = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let lv = app.libvirt().map_err(|e| e.to_string())?;
        let console = lv.open_console(&name).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut pending: Option<(Bytes, usize)> = None;
        while !stop2.load(Ordering::Relaxed) {
            let mut idle = true;
            match console.read(&mut buf).map_err(|e| e.to_string())? {
                phyllome_libvirt::Io::Done(0) => return Ok(()),
                phyllome_libvirt::Io::Done(n) => {
                    idle = false;
                    if to_ws.blocking_send(Bytes::copy_from_slice(&buf[..n])).is_err() {
                        return Ok(());
                    }
                }
                phyllome_libvirt::Io::WouldBlock => {}
            }
            if pending.is_none() {
                match keys.try_recv() {
                    Ok(b) => pending = Some((b, 0)),
                    Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => return Ok(()),
                    Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {}
                }
            }
            if let Some((b, at)) = pending.take() {
                match console.write(&b[at..]).map_err(|e| e.to_string())? {
                    phyllome_libvirt::Io::Done(n) if at + n >= b.len() => idle = false,
                    phyllome_libvirt::Io::Done(n) => pending = Some((b, at + n)),
                    phyllome_libvirt::Io::WouldBlock => pending = Some((b, at)),
                }
            }
            if idle {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(())
    });
    let (mut ws_w, mut ws_r) = socket.split();
    let active = AtomicBool::new(false);
    let to_browser = async {
        while let Some(b) = from_console.recv().await {
            if ws_w.send(Message::Binary(b)).await.is_err() {
                return Ended::Client;
            }
        }
        Ended::Display
    };
    let from_browser = async {
        while let Some(m) = ws_r.next().await {
            let data = match m {
                Ok(Message::Binary(b)) => b,
                Ok(Message::Text(t)) => Bytes::copy_from_slice(t.as_bytes()),
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                Ok(Message::Close(_)) => return Ended::Client,
                Err(e) => return Ended::Error(e.to_string()),
            };
            active.store(true, Ordering::Relaxed);
            if to_console.send(data).await.is_err() {
                return Ended::Display;
            }
        }
        Ended::Client
    };
    let ended = tokio::select! {
        e = to_browser => e,
        e = from_browser => e,
        e = watch_session(CHECK, &active, alive) => e,
    };
    stop.store(true, Ordering::Relaxed);
    let opened = worker.await.unwrap_or(Ok(()));
    let mut ws = ws_w;
    let _ = match (&ended, opened) {
        (_, Err(e)) => {
            tracing::warn!("serial console: {e:?}");
            ws.send(close(1011, "the serial console could not be opened")).await
        }
        (Ended::Display, _) => ws.send(close(1000, "the console closed")).await,
        (Ended::Session, _) => ws.send(close(1008, "the session ended")).await,
        _ => Ok(()),
    };
    let _ = ws.close().await;
    ended
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

    /// A server with the console proxy in front of a fake VNC (a TCP pair), for the conformance tests.
    async fn fixture() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        use axum::routing::get;
        let vnc_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let vnc_addr = vnc_l.local_addr().unwrap();
        let app = axum::Router::new().route(
            "/ws",
            get(move |ws: WebSocketUpgrade| async move {
                configure(ws).on_upgrade(move |socket| async move {
                    let v = tokio::net::TcpStream::connect(vnc_addr).await.unwrap();
                    proxy(socket, v, Duration::from_secs(3600), |_| true).await;
                })
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: binary\r\n\r\n",
        )
        .await
        .unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(c.read_u8().await.unwrap());
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "RFC 6455's example accept key: {head}");
        assert!(head.to_ascii_lowercase().contains("sec-websocket-protocol: binary"), "{head}");
        let (vnc, _) = vnc_l.accept().await.unwrap();
        (c, vnc)
    }

    fn masked(opcode: u8, fin: bool, data: &[u8]) -> Vec<u8> {
        let mask = [7u8, 1, 9, 3];
        let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
        if data.len() < 126 {
            f.push(0x80 | data.len() as u8);
        } else {
            f.push(0x80 | 126);
            f.extend_from_slice(&(data.len() as u16).to_be_bytes());
        }
        f.extend_from_slice(&mask);
        f.extend(data.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    async fn frame(c: &mut tokio::net::TcpStream) -> Option<(u8, Vec<u8>)> {
        let mut h = [0u8; 2];
        c.read_exact(&mut h).await.ok()?;
        assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
        let len = match h[1] & 0x7f {
            126 => usize::from(c.read_u16().await.ok()?),
            127 => c.read_u64().await.ok()? as usize,
            n => usize::from(n),
        };
        let mut p = vec![0u8; len];
        c.read_exact(&mut p).await.ok()?;
        Some((h[0], p))
    }

    #[tokio::test]
    async fn moves_bytes_both_ways_reassembles_fragments_and_answers_pings() {
        let (mut c, mut vnc) = fixture().await;
        vnc.write_all(b"RFB 003.008\n").await.unwrap();
        assert_eq!(frame(&mut c).await.unwrap(), (0x82, b"RFB 003.008\n".to_vec()));
        // A message in two fragments, with a ping between them.
        c.write_all(&masked(0x2, false, b"hel")).await.unwrap();
        c.write_all(&masked(0x9, true, b"p")).await.unwrap();
        c.write_all(&masked(0x0, true, b"lo")).await.unwrap();
        let mut got = [0u8; 5];
        vnc.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        assert_eq!(frame(&mut c).await.unwrap(), (0x8A, b"p".to_vec()), "the ping is answered");
        // The display closing ends the console with 1000.
        drop(vnc);
        let (op, p) = frame(&mut c).await.unwrap();
        assert_eq!((op, &p[..2]), (0x88, &1000u16.to_be_bytes()[..]));
    }

    #[tokio::test]
    async fn refuses_unmasked_and_oversized_frames() {
        let (mut c, mut vnc) = fixture().await;
        c.write_all(&[0x82, 0x02, b'h', b'i']).await.unwrap();
        let (op, p) = frame(&mut c).await.expect("a close frame");
        assert_eq!((op, &p[..2]), (0x88, &1002u16.to_be_bytes()[..]));
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), vnc.read(&mut b)).await.unwrap().unwrap_or(0);
        assert_eq!(n, 0, "an unmasked frame reached VNC");

        let (mut c, mut vnc) = fixture().await;
        let mut f = vec![0x82, 0x80 | 127];
        f.extend_from_slice(&((MAX_CLIENT_FRAME as u64) + 1).to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 0]);
        c.write_all(&f).await.unwrap();
        let (op, p) = frame(&mut c).await.expect("a close frame");
        assert_eq!((op, &p[..2]), (0x88, &1009u16.to_be_bytes()[..]));
        let n = tokio::time::timeout(Duration::from_secs(5), vnc.read(&mut b)).await.unwrap().unwrap_or(0);
        assert_eq!(n, 0, "an oversized frame reached VNC");
    }
}
