//! The few OS calls mio and std do not offer, declared directly against the C library that std
//! already links (no extra crate): a larger listen backlog, the open-file limit, and SIGINT/SIGTERM.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::OnceLock;

use super::ShutdownHandle;

type CInt = i32;

#[repr(C)]
struct RLimit {
    cur: u64,
    max: u64,
}

#[cfg(target_os = "linux")]
const RLIMIT_NOFILE: CInt = 7;
#[cfg(not(target_os = "linux"))]
const RLIMIT_NOFILE: CInt = 8;
const SIGINT: CInt = 2;
const SIGPIPE: CInt = 13;
const SIGTERM: CInt = 15;
const SIG_IGN: usize = 1;
const EBADF: i32 = 9;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
unsafe extern "C" {
    fn malloc_trim(pad: usize) -> CInt;
}

/// Hands freed heap memory back to the OS (glibc keeps it otherwise), so RSS falls after a
/// wave of connections leaves. A no-op where the allocator returns memory by itself.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        malloc_trim(0);
    }
}

unsafe extern "C" {
    fn setsockopt(fd: CInt, level: CInt, name: CInt, value: *const CInt, len: u32) -> CInt;
    fn listen(fd: CInt, backlog: CInt) -> CInt;
    fn getrlimit(resource: CInt, rlim: *mut RLimit) -> CInt;
    fn setrlimit(resource: CInt, rlim: *const RLimit) -> CInt;
    fn signal(signum: CInt, handler: usize) -> usize;
    fn fcntl(fd: CInt, cmd: CInt, ...) -> CInt;
    fn open(path: *const std::ffi::c_char, flags: CInt, ...) -> CInt;
}

/// What std's start-up does for a program, for a binary that skips it (`#![no_main]`; see
/// `src/bin/wspush.rs`): ignore SIGPIPE, so writing to a socket the peer closed is an error and
/// not the end of the process, and make sure descriptors 0-2 are open, so a socket can never
/// become "stderr" and receive log lines.
pub fn prepare_process() -> io::Result<()> {
    const F_GETFD: CInt = 1;
    const O_RDWR: CInt = 2;
    // SAFETY: SIG_IGN is a valid disposition for SIGPIPE.
    if unsafe { signal(SIGPIPE, SIG_IGN) } == usize::MAX {
        return Err(io::Error::last_os_error());
    }
    for fd in 0..3 {
        // SAFETY: F_GETFD only reads the descriptor's flags.
        if unsafe { fcntl(fd, F_GETFD) } == -1
            && io::Error::last_os_error().raw_os_error() == Some(EBADF)
            // SAFETY: a NUL-terminated path; open returns the lowest free descriptor, `fd`.
            && unsafe { open(c"/dev/null".as_ptr(), O_RDWR) } == -1
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Raises the listen backlog of an already listening socket (Linux applies a second `listen`),
/// so a burst of connects is queued by the kernel instead of refused. The kernel caps it at
/// `net.core.somaxconn`.
pub fn set_backlog(listener: &impl AsRawFd, backlog: i32) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor we own; no memory is passed.
    if unsafe { listen(listener.as_raw_fd(), backlog) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets TCP_NODELAY on a listening socket. Linux copies it to every accepted socket, which saves
/// one `setsockopt` per connection (returns false where it is not inherited: set it per socket).
pub fn set_listener_nodelay(listener: &impl AsRawFd) -> bool {
    const IPPROTO_TCP: CInt = 6;
    const TCP_NODELAY: CInt = 1;
    let one: CInt = 1;
    // SAFETY: `one` outlives the call and its size is passed; the descriptor is ours.
    let ok = unsafe { setsockopt(listener.as_raw_fd(), IPPROTO_TCP, TCP_NODELAY, &one, 4) } == 0;
    ok && cfg!(target_os = "linux")
}

/// Sets TCP_DEFER_ACCEPT on a listening socket: the kernel hands a connection to `accept` only
/// once its first data (the upgrade request) has arrived, or after `seconds`. That saves one
/// wake-up per connection, lets the request be read right after `accept`, and keeps clients that
/// connect and say nothing out of the session table for that long. Linux only; false elsewhere.
pub fn set_defer_accept(listener: &impl AsRawFd, seconds: u32) -> bool {
    if !cfg!(target_os = "linux") {
        return false;
    }
    const IPPROTO_TCP: CInt = 6;
    const TCP_DEFER_ACCEPT: CInt = 9;
    let value = seconds.min(i32::MAX as u32) as CInt;
    // SAFETY: `value` outlives the call and its size is passed; the descriptor is ours.
    unsafe {
        setsockopt(
            listener.as_raw_fd(),
            IPPROTO_TCP,
            TCP_DEFER_ACCEPT,
            &value,
            4,
        ) == 0
    }
}

/// Unmaps this process's pages of code and read-only data (they stay in the page cache and come
/// back on the next touch), so what only start-up used (the loader, libc's and std's
/// initialisation, argument parsing, logger set-up, bind) stops counting in the server's RSS.
/// The kernel maps the 64 KiB around every first touch of a file page, which had ~540 KiB of the
/// 655 KiB binary and ~860 KiB of libc resident in an idle server; after this, ~1.3-1.4 MiB in
/// all instead of 1.65-2.0 MiB. Call it once, after start-up and before the loop. Writable
/// segments, pages shared with them and objects with text relocations (whose code pages are
/// private copies) are left alone. Linux only; a no-op elsewhere.
pub fn shed_start_up_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: dl_iterate_phdr hands the callback valid headers of each loaded object; the
    // callback only advises the kernel about read-only, file-backed ranges.
    unsafe {
        loaded::dl_iterate_phdr(loaded::shed_object, std::ptr::null_mut());
    }
}

#[cfg(target_os = "linux")]
mod loaded {
    use std::ffi::{CStr, c_char, c_void};

    use super::CInt;

    /// `struct dl_phdr_info`, the fields used here (the C library passes their size).
    #[repr(C)]
    pub struct ObjectInfo {
        base: usize,
        name: *const c_char,
        headers: *const ProgramHeader,
        header_count: u16,
    }

    /// `Elf64_Phdr` / `Elf32_Phdr`.
    #[cfg(target_pointer_width = "64")]
    #[repr(C)]
    struct ProgramHeader {
        kind: u32,
        flags: u32,
        offset: u64,
        vaddr: u64,
        paddr: u64,
        filesz: u64,
        memsz: u64,
        align: u64,
    }
    #[cfg(target_pointer_width = "32")]
    #[repr(C)]
    struct ProgramHeader {
        kind: u32,
        offset: u32,
        vaddr: u32,
        paddr: u32,
        filesz: u32,
        memsz: u32,
        flags: u32,
        align: u32,
    }

    /// `Elf64_Dyn` / `Elf32_Dyn`.
    #[repr(C)]
    struct DynamicEntry {
        tag: isize,
        value: usize,
    }

    const PT_LOAD: u32 = 1;
    const PT_DYNAMIC: u32 = 2;
    const PF_W: u32 = 2;
    const DT_NULL: isize = 0;
    const DT_TEXTREL: isize = 22;
    const DT_FLAGS: isize = 30;
    const DF_TEXTREL: usize = 4;
    const MADV_DONTNEED: CInt = 4;
    const SC_PAGESIZE: CInt = 30;

    unsafe extern "C" {
        pub fn dl_iterate_phdr(
            callback: unsafe extern "C" fn(*mut ObjectInfo, usize, *mut c_void) -> CInt,
            data: *mut c_void,
        ) -> CInt;
        fn madvise(addr: *mut c_void, len: usize, advice: CInt) -> CInt;
        fn sysconf(name: CInt) -> std::ffi::c_long;
    }

    pub unsafe extern "C" fn shed_object(
        info: *mut ObjectInfo,
        _size: usize,
        _data: *mut c_void,
    ) -> CInt {
        // SAFETY: the C library passes a valid `dl_phdr_info` for the duration of the call.
        let info = unsafe { &*info };
        let page = match unsafe { sysconf(SC_PAGESIZE) } {
            size if size > 0 => size as usize,
            _ => return 0,
        };
        // SAFETY: as above; the name is NUL-terminated (empty for the executable itself).
        let name = (!info.name.is_null()).then(|| unsafe { CStr::from_ptr(info.name) });
        // The vDSO is the kernel's, not a file mapping.
        if info.headers.is_null() || name.is_some_and(|n| n.to_bytes().ends_with(b"vdso.so.1")) {
            return 0;
        }
        // SAFETY: `headers` points at `header_count` program headers of this object.
        let headers =
            unsafe { std::slice::from_raw_parts(info.headers, usize::from(info.header_count)) };
        // SAFETY: a PT_DYNAMIC segment of a loaded object is mapped and ends with DT_NULL.
        let text_relocated = headers
            .iter()
            .filter(|h| h.kind == PT_DYNAMIC)
            .any(|h| unsafe {
                let mut entry = (info.base + h.vaddr as usize) as *const DynamicEntry;
                loop {
                    match ((*entry).tag, (*entry).value) {
                        (DT_NULL, _) => break false,
                        (DT_TEXTREL, _) => break true,
                        (DT_FLAGS, flags) if flags & DF_TEXTREL != 0 => break true,
                        _ => entry = entry.add(1),
                    }
                }
            });
        if text_relocated {
            return 0;
        }
        for header in headers {
            if header.kind != PT_LOAD || header.flags & PF_W != 0 {
                continue;
            }
            let start = info.base + header.vaddr as usize;
            let end = start + header.memsz as usize;
            // Whole pages inside the segment only: a page it shares with a writable segment
            // may hold data that dropping would lose.
            let (start, end) = (start.next_multiple_of(page), end / page * page);
            if end > start {
                // SAFETY: a read-only, file-backed range of our own address space: dropped
                // pages are read back from the file on the next touch.
                unsafe {
                    madvise(start as *mut c_void, end - start, MADV_DONTNEED);
                }
            }
        }
        0
    }
}

/// Raises the soft open-file limit to the hard limit; returns the resulting soft limit.
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut lim = RLimit { cur: 0, max: 0 };
    // SAFETY: `lim` is a valid, writable rlimit struct for the duration of the call.
    if unsafe { getrlimit(RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.cur < lim.max {
        let raised = RLimit {
            cur: lim.max,
            max: lim.max,
        };
        // SAFETY: `raised` is a valid rlimit struct for the duration of the call.
        if unsafe { setrlimit(RLIMIT_NOFILE, &raised) } == 0 {
            return Ok(raised.cur);
        }
    }
    Ok(lim.cur)
}

static SIGNAL_TARGET: OnceLock<ShutdownHandle> = OnceLock::new();

extern "C" fn on_signal(_signum: CInt) {
    // Only async-signal-safe work: an atomic store and one write to the poll's eventfd.
    if let Some(handle) = SIGNAL_TARGET.get() {
        handle.shutdown();
    }
}

/// Routes SIGINT and SIGTERM to `handle` (graceful shutdown). Process-wide: for binaries.
pub fn install_signal_handlers(handle: ShutdownHandle) -> io::Result<()> {
    if SIGNAL_TARGET.set(handle).is_err() {
        return Err(io::Error::other("signal handlers are already installed"));
    }
    for sig in [SIGINT, SIGTERM] {
        // SAFETY: installs a handler that only touches an initialised OnceLock and atomics.
        if unsafe { signal(sig, on_signal as extern "C" fn(CInt) as usize) } == usize::MAX {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// EMFILE / ENFILE / ENOBUFS / ENOMEM: accepting again at once would fail the same way.
pub(crate) fn out_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
