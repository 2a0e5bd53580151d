//! What the `wspush` binary does to its own process, through the `libc` crate: what std's
//! start-up would have done (SIGPIPE, descriptors 0-2), SIGHUP ignored, the open-file limit,
//! SIGINT/SIGTERM, and dropping the pages only start-up used. Process-wide, so the binary's and
//! not the library's.

use std::ffi::c_int;
use std::io;
use std::sync::OnceLock;

use wspush::ShutdownHandle;

/// What std's start-up does for a program, for a binary that skips it (`#![no_main]`; see
/// `main.rs`): ignore SIGPIPE, so writing to a socket the peer closed is an error and not the
/// end of the process, and make sure descriptors 0-2 are open, so a socket can never become
/// "stderr" and receive log lines.
pub fn prepare_process() -> io::Result<()> {
    // SAFETY: SIG_IGN is a valid disposition for SIGPIPE; no handler of ours runs.
    if unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) } == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    // SIGHUP (a closed terminal, `kill -HUP` out of habit) must not end a server holding
    // thousands of connections; settings are read once, so there is nothing to reload.
    // SAFETY: SIG_IGN is a valid disposition for SIGHUP; no handler of ours runs.
    if unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) } == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    for fd in 0..3 {
        // SAFETY: F_GETFD only reads the descriptor's flags.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1
            && io::Error::last_os_error().raw_os_error() == Some(libc::EBADF)
            // SAFETY: a NUL-terminated path; open returns the lowest free descriptor, `fd`.
            && unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) } == -1
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Raises the soft open-file limit to the hard limit; returns the resulting soft limit.
pub fn raise_fd_limit() -> io::Result<libc::rlim_t> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit struct for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit struct for the duration of the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok(raised.rlim_cur);
        }
    }
    Ok(lim.rlim_cur)
}

static SIGNAL_TARGET: OnceLock<ShutdownHandle> = OnceLock::new();

extern "C" fn on_signal(_signum: c_int) {
    // Only async-signal-safe work: an atomic store and one write to the poll's eventfd.
    if let Some(handle) = SIGNAL_TARGET.get() {
        handle.shutdown();
    }
}

/// Routes SIGINT and SIGTERM to `handle` (graceful shutdown). Interrupted calls restart
/// (`SA_RESTART`, what glibc's and musl's `signal` give); `epoll_wait` returns either way.
pub fn install_signal_handlers(handle: ShutdownHandle) -> io::Result<()> {
    if SIGNAL_TARGET.set(handle).is_err() {
        return Err(io::Error::other("signal handlers are already installed"));
    }
    // SAFETY: `sigaction` is plain data, and all zeroes is a valid value of it (SIG_DFL, no
    // flags, an empty mask); the fields that matter are set below.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_signal as extern "C" fn(c_int) as libc::sighandler_t;
    action.sa_flags = libc::SA_RESTART;
    // SAFETY: `sa_mask` is a sigset_t of ours, writable for the duration of the call.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `action` is initialised and outlives the call; its handler only touches an
        // initialised OnceLock, atomics and the waker's descriptor. The old action is not asked.
        if unsafe { libc::sigaction(sig, &action, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
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
        libc::dl_iterate_phdr(Some(loaded::shed_object), std::ptr::null_mut());
    }
}

#[cfg(target_os = "linux")]
mod loaded {
    use std::ffi::{CStr, c_int, c_void};

    /// The program header type of `dl_phdr_info` on this target.
    #[cfg(target_pointer_width = "64")]
    type ProgramHeader = libc::Elf64_Phdr;
    #[cfg(target_pointer_width = "32")]
    type ProgramHeader = libc::Elf32_Phdr;

    /// The signed and unsigned words of `Elf64_Dyn` / `Elf32_Dyn`.
    #[cfg(target_pointer_width = "64")]
    type Sword = libc::Elf64_Sxword;
    #[cfg(target_pointer_width = "64")]
    type Word = libc::Elf64_Xword;
    #[cfg(target_pointer_width = "32")]
    type Sword = libc::Elf32_Sword;
    #[cfg(target_pointer_width = "32")]
    type Word = libc::Elf32_Word;

    /// `Elf64_Dyn` / `Elf32_Dyn`, and the `<elf.h>` values read from it: the libc crate
    /// declares neither.
    #[repr(C)]
    struct DynamicEntry {
        tag: Sword,
        value: Word,
    }
    const DT_NULL: Sword = 0;
    const DT_TEXTREL: Sword = 22;
    const DT_FLAGS: Sword = 30;
    const DF_TEXTREL: Word = 4;

    pub unsafe extern "C" fn shed_object(
        info: *mut libc::dl_phdr_info,
        _size: usize,
        _data: *mut c_void,
    ) -> c_int {
        // SAFETY: the C library passes a valid `dl_phdr_info` for the duration of the call.
        let info = unsafe { &*info };
        // SAFETY: sysconf only reads a configuration value.
        let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            size if size > 0 => size as usize,
            _ => return 0,
        };
        // SAFETY: as above; the name is NUL-terminated (empty for the executable itself).
        let name = (!info.dlpi_name.is_null()).then(|| unsafe { CStr::from_ptr(info.dlpi_name) });
        // The vDSO is the kernel's, not a file mapping.
        if info.dlpi_phdr.is_null() || name.is_some_and(|n| n.to_bytes().ends_with(b"vdso.so.1")) {
            return 0;
        }
        let base = info.dlpi_addr as usize;
        // SAFETY: `dlpi_phdr` points at `dlpi_phnum` program headers of this object.
        let headers: &[ProgramHeader] =
            unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
        // SAFETY: a PT_DYNAMIC segment of a loaded object is mapped and ends with DT_NULL.
        let text_relocated =
            headers
                .iter()
                .filter(|h| h.p_type == libc::PT_DYNAMIC)
                .any(|h| unsafe {
                    let mut entry = (base + h.p_vaddr as usize) as *const DynamicEntry;
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
            if header.p_type != libc::PT_LOAD || header.p_flags & libc::PF_W != 0 {
                continue;
            }
            let start = base + header.p_vaddr as usize;
            let end = start + header.p_memsz as usize;
            // Whole pages inside the segment only: a page it shares with a writable segment
            // may hold data that dropping would lose.
            let (start, end) = (start.next_multiple_of(page), end / page * page);
            if end > start {
                // SAFETY: a read-only, file-backed range of our own address space: dropped
                // pages are read back from the file on the next touch.
                unsafe {
                    libc::madvise(start as *mut c_void, end - start, libc::MADV_DONTNEED);
                }
            }
        }
        0
    }
}
