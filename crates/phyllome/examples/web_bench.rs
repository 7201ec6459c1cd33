//! Helpers for scripts/bench-web.sh (loopback only, bounded):
//!
//! - `web_bench source PORT`: a VNC-like byte source on 127.0.0.1:PORT that
//!   streams bytes to every connection until it closes;
//! - `web_bench client HOST:PORT PATH MIB [TOKEN_FILE]`: opens a WebSocket
//!   (with `Authorization: Bearer` from TOKEN_FILE when given), reads MIB MiB
//!   of binary frames and prints `bytes seconds MiB/s`;
//! - `web_bench raw HOST:PORT MIB`: reads MIB MiB straight from the source
//!   (no proxy, no WebSocket): the one-hop ceiling of this machine.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

fn source(port: u16) {
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the source");
    let chunk: Vec<u8> = (0..1 << 20).map(|i| (i * 7 % 251) as u8).collect();
    for conn in listener.incoming().flatten() {
        let chunk = chunk.clone();
        std::thread::spawn(move || {
            let mut conn = conn;
            let _ = conn.set_nodelay(true);
            // Bounded: at most 64 GiB per connection.
            for _ in 0..64 * 1024 {
                if conn.write_all(&chunk).is_err() {
                    return;
                }
            }
        });
    }
}

/// A frame header at the start of `b`: (header length, payload length, opcode), or None when incomplete.
fn parse_header(b: &[u8]) -> Option<(usize, u64, u8)> {
    if b.len() < 2 {
        return None;
    }
    let (hl, len) = match b[1] & 0x7f {
        126 if b.len() >= 4 => (4, u64::from(u16::from_be_bytes([b[2], b[3]]))),
        127 if b.len() >= 10 => (10, u64::from_be_bytes(b[2..10].try_into().ok()?)),
        126 | 127 => return None,
        n => (2, u64::from(n)),
    };
    Some((hl, len, b[0] & 0x0f))
}

fn client(addr: &str, path: &str, mib: u64, token_file: Option<&str>) -> Result<(), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: binary\r\n"
    );
    if let Some(f) = token_file {
        let token = std::fs::read_to_string(f).map_err(|e| format!("{f}: {e}"))?;
        req.push_str(&format!("Authorization: Bearer {}\r\n", token.trim()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    // Frames are parsed in place in one large buffer: each byte is copied
    // once, from the socket into it, so the client costs the same little
    // whichever proxy it reads through.
    let mut buf = vec![0u8; 8 << 20];
    let mut end = 0usize;
    let mut pos = loop {
        if let Some(i) = buf[..end].windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]);
            if !head.starts_with("HTTP/1.1 101") {
                return Err(format!("no upgrade: {}", head.lines().next().unwrap_or("")));
            }
            break i + 4;
        }
        let n = s.read(&mut buf[end..]).map_err(|e| format!("handshake: {e}"))?;
        if n == 0 {
            return Err("closed during the handshake".into());
        }
        end += n;
    };
    let want = mib << 20;
    let mut got = 0u64;
    // Payload bytes of the current frame still to come.
    let mut skip = 0u64;
    let start = Instant::now();
    while got < want {
        if skip > 0 && pos < end {
            let take = skip.min((end - pos) as u64) as usize;
            pos += take;
            skip -= take as u64;
            got += take as u64;
            continue;
        }
        if skip == 0 {
            if let Some((hl, len, op)) = parse_header(&buf[pos..end]) {
                if op == 0x8 {
                    return Err(format!("closed after {got} bytes"));
                }
                pos += hl;
                skip = len;
                continue;
            }
        }
        // Need more: keep a partial header, read behind it.
        buf.copy_within(pos..end, 0);
        end -= pos;
        pos = 0;
        let n = s.read(&mut buf[end..]).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!("the stream ended after {got} bytes"));
        }
        end += n;
    }
    let secs = start.elapsed().as_secs_f64();
    println!("{got} {secs:.3} {:.1}", got as f64 / (1 << 20) as f64 / secs);
    Ok(())
}

fn raw(addr: &str, mib: u64) -> Result<(), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 8 << 20];
    let (want, mut got) = (mib << 20, 0u64);
    let start = Instant::now();
    while got < want {
        let n = s.read(&mut buf).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!("the stream ended after {got} bytes"));
        }
        got += n as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    println!("{got} {secs:.3} {:.1}", got as f64 / (1 << 20) as f64 / secs);
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("source") if args.len() == 3 => {
            source(args[2].parse().expect("PORT"));
            Ok(())
        }
        Some("client") if args.len() >= 5 => {
            client(&args[2], &args[3], args[4].parse().expect("MIB"), args.get(5).map(String::as_str))
        }
        Some("raw") if args.len() == 4 => raw(&args[2], args[3].parse().expect("MIB")),
        _ => Err("usage: web_bench source PORT | client HOST:PORT PATH MIB [TOKEN_FILE] | raw HOST:PORT MIB".into()),
    };
    if let Err(e) = result {
        eprintln!("web_bench: {e}");
        std::process::exit(1);
    }
}
