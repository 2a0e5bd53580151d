//! Writing a connection's queue to its socket with `send`/`sendmsg` rather than `write`/`writev`:
//! the socket calls skip the VFS layer (`vfs_writev`, `fdget_pos`, `sock_write_iter`), which
//! profiling showed as a sixth of the kernel time of a fan-out.

use std::io::{self, IoSlice, Write};
use std::os::fd::{AsRawFd, RawFd};

/// A non-blocking socket as a `Write`: `send` for one buffer, `sendmsg` for several. Never
/// raises SIGPIPE (a peer that is gone is an `EPIPE` error).
pub(super) struct SocketWriter(RawFd);

impl SocketWriter {
    pub(super) fn new(socket: &impl AsRawFd) -> Self {
        SocketWriter(socket.as_raw_fd())
    }
}

fn result(n: libc::ssize_t) -> io::Result<usize> {
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

impl Write for SocketWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for `buf.len()` bytes for the duration of the call; the
        // descriptor belongs to a socket the caller holds open.
        result(unsafe {
            libc::send(
                self.0,
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        })
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if let [one] = bufs {
            return self.write(one);
        }
        // SAFETY: an all-zero msghdr is valid (no name, no control data).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        // IoSlice is ABI-compatible with iovec on Unix (std guarantees it); sendmsg only reads.
        msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = bufs.len() as _;
        // SAFETY: `msg` points at `bufs`, which outlive the call; the descriptor is open.
        result(unsafe { libc::sendmsg(self.0, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) })
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub(super) fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

pub(super) fn interrupted(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Interrupted
}

#[cfg(test)]
mod tests {
    use std::io::{IoSlice, Read, Write};
    use std::net::{TcpListener, TcpStream};

    use super::SocketWriter;

    #[test]
    fn sends_one_and_several_buffers_in_order() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let sender = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut receiver, _) = listener.accept().unwrap();
        let mut w = SocketWriter::new(&sender);
        assert_eq!(w.write(b"one ").unwrap(), 4);
        let parts = [IoSlice::new(b"two "), IoSlice::new(b"three")];
        assert_eq!(w.write_vectored(&parts).unwrap(), 9);
        drop(sender);
        let mut got = String::new();
        receiver.read_to_string(&mut got).unwrap();
        assert_eq!(got, "one two three");
    }
}
