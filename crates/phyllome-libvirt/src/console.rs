//! A domain's serial console as a libvirt stream (`virDomainOpenConsole`,
//! what `virsh console` uses), non-blocking so one thread can move bytes
//! both ways.

use crate::{Error, Libvirt, Result};
use virt::stream::Stream;
use virt::sys;

/// An open serial console. Dropping it closes the stream.
pub struct Console {
    stream: Option<Stream>,
}

/// What a non-blocking read or write did.
#[derive(Debug, PartialEq, Eq)]
pub enum Io {
    /// Moved this many bytes (a read of 0 is the end of the console).
    Done(usize),
    /// Nothing to read, or no room to write, now.
    WouldBlock,
}

fn io(op: &str, r: std::result::Result<isize, virt::error::Error>) -> Result<Io> {
    match r {
        Ok(-2) => Ok(Io::WouldBlock),
        Ok(n) if n >= 0 => Ok(Io::Done(n as usize)),
        Ok(n) => Err(Error { op: op.into(), message: format!("unexpected stream result {n}"), code: 0 }),
        Err(e) => Err(Error::new(op, e)),
    }
}

impl Libvirt {
    /// Opens `name`'s first serial console, taking it over from another
    /// client that holds it (as a new `virsh console --force` would).
    pub fn open_console(&self, name: &str) -> Result<Console> {
        let dom = self.domain(name)?;
        let stream = Stream::new(&self.conn, sys::VIR_STREAM_NONBLOCK)
            .map_err(|e| Error::new(format!("console stream for {name}"), e))?;
        dom.open_console(None, &stream, sys::VIR_DOMAIN_CONSOLE_FORCE)
            .map_err(|e| Error::new(format!("open {name}'s serial console"), e))?;
        Ok(Console { stream: Some(stream) })
    }
}

impl Console {
    pub fn read(&self, buf: &mut [u8]) -> Result<Io> {
        let s = self.stream.as_ref().expect("open until dropped");
        io("read the serial console", s.recv(buf))
    }

    pub fn write(&self, data: &[u8]) -> Result<Io> {
        let s = self.stream.as_ref().expect("open until dropped");
        io("write to the serial console", s.send(data))
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        if let Some(s) = self.stream.take() {
            // abort() tells libvirtd at once; an error here means it is gone already.
            let _ = s.abort();
        }
    }
}
