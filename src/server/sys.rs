//! The few socket and allocator calls the event loop needs that mio and std do not offer, through
//! the `libc` crate (already in the tree through mio): a larger listen backlog, TCP options on
//! the listeners, handing freed memory back, and which `accept` errors mean "out of resources".
//!
//! Crate-private: process-wide set-up (signals, the open-file limit, SIGPIPE, descriptors 0-2)
//! belongs to a binary, not to a library; the `wspush` binary does its own
//! (`src/bin/wspush/process.rs`).

use std::ffi::c_int;
use std::io;
use std::os::fd::AsRawFd;

/// EMFILE / ENFILE (and ENOBUFS / ENOMEM): accepting again at once would fail the same way.
pub(crate) fn out_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Hands freed heap memory back to the OS (glibc keeps it otherwise), so RSS falls after a
/// wave of connections leaves. A no-op where the allocator returns memory by itself.
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Raises the listen backlog of an already listening socket (Linux applies a second `listen`),
/// so a burst of connects is queued by the kernel instead of refused. The kernel caps it at
/// `net.core.somaxconn`.
pub(crate) fn set_backlog(listener: &impl AsRawFd, backlog: i32) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor we own; no memory is passed.
    if unsafe { libc::listen(listener.as_raw_fd(), backlog) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `setsockopt(fd, IPPROTO_TCP, name, &value)` for an `int` option; true if it took.
fn set_tcp_option(listener: &impl AsRawFd, name: c_int, value: c_int) -> bool {
    // SAFETY: `value` outlives the call and its size is passed; the descriptor is ours.
    unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            name,
            (&raw const value).cast(),
            size_of::<c_int>() as libc::socklen_t,
        ) == 0
    }
}

/// Sets TCP_NODELAY on a listening socket. Linux copies it to every accepted socket, which saves
/// one `setsockopt` per connection (returns false where it is not inherited: set it per socket).
pub(crate) fn set_listener_nodelay(listener: &impl AsRawFd) -> bool {
    set_tcp_option(listener, libc::TCP_NODELAY, 1) && cfg!(target_os = "linux")
}

/// Sets TCP_DEFER_ACCEPT on a listening socket: the kernel hands a connection to `accept` only
/// once its first data (the upgrade request) has arrived, or after `seconds`. That saves one
/// wake-up per connection, lets the request be read right after `accept`, and keeps clients that
/// connect and say nothing out of the session table for that long. Linux only; false elsewhere.
pub(crate) fn set_defer_accept(listener: &impl AsRawFd, seconds: u32) -> bool {
    #[cfg(target_os = "linux")]
    {
        let seconds = c_int::try_from(seconds).unwrap_or(c_int::MAX);
        set_tcp_option(listener, libc::TCP_DEFER_ACCEPT, seconds)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (listener, seconds);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_resources_is_the_four_errnos_by_name() {
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(out_of_resources(&io::Error::from_raw_os_error(errno)));
        }
        for errno in [libc::ECONNABORTED, libc::EAGAIN, libc::EINTR, libc::EPERM] {
            assert!(!out_of_resources(&io::Error::from_raw_os_error(errno)));
        }
        assert!(!out_of_resources(&io::Error::other("not an OS error")));
    }

    #[test]
    fn listener_options_take_on_a_listening_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        set_backlog(&listener, 1024).unwrap();
        assert_eq!(set_listener_nodelay(&listener), cfg!(target_os = "linux"));
        assert_eq!(set_defer_accept(&listener, 3), cfg!(target_os = "linux"));
        release_free_memory();
    }
}
