//! The `wspush` server binary: parse flags, start logging, bind, run.
//!
//! It has its own C `main` instead of std's start-up (`#![no_main]`): that start-up locates the
//! main thread's stack guard by parsing `/proc/self/maps` through the C library's stdio and
//! scanf, which alone maps about half a MiB of libc into an idle server's RSS (measured: 2.2 ->
//! 1.7 MiB). `process::prepare_process` does the parts of it a server needs (SIGPIPE ignored,
//! descriptors 0-2 open). What is lost: a stack overflow ends in SIGSEGV without std's message.
#![no_main]

use std::ffi::{CStr, c_char, c_int};
use std::io::Write;

mod process;

use wspush::Server;
use wspush::config::{self, Command};

const SUCCESS: c_int = 0;
const FAILURE: c_int = 1;
const USAGE: c_int = 2;

#[unsafe(no_mangle)]
extern "C" fn main(argc: c_int, argv: *const *const c_char) -> c_int {
    if let Err(e) = process::prepare_process() {
        eprintln!("wspush: {e}");
        return FAILURE;
    }
    // SAFETY: the C runtime passes `argc` valid, NUL-terminated strings in `argv`.
    let args = (1..argc.max(0) as usize).map(|i| unsafe { CStr::from_ptr(*argv.add(i)) });
    let code = run(args);
    // std's start-up would flush stdout on the way out; returning from C main does not.
    let _ = std::io::stdout().flush();
    code
}

fn run<'a>(args: impl Iterator<Item = &'a CStr>) -> c_int {
    let args = match args.map(CStr::to_str).collect::<Result<Vec<_>, _>>() {
        Ok(args) => args,
        Err(_) => {
            eprintln!("wspush: an argument is not UTF-8");
            return USAGE;
        }
    };
    let config = match config::parse_args(args) {
        Ok(Command::Run(config)) => *config,
        Ok(Command::Help) => {
            print!("{}", config::help_text());
            return SUCCESS;
        }
        Ok(Command::Version) => {
            println!("wspush {}", env!("CARGO_PKG_VERSION"));
            return SUCCESS;
        }
        Err(e) => {
            eprintln!("wspush: {e}");
            return USAGE;
        }
    };
    // stderr, so stdout stays free for tools.
    wspush::logger::Logger::new(config.log_level, config.log_format).install();
    match process::raise_fd_limit() {
        // A limit past usize (`rlim_t` is 64 bits on some 32-bit targets) is plenty.
        Ok(limit) if usize::try_from(limit).is_ok_and(|l| l < config.max_connections + 64) => {
            log::warn!(
                "open-file limit {limit} is below --max-connections {} (+64 spare): raise `ulimit -n`",
                config.max_connections
            )
        }
        Ok(_) => {}
        Err(e) => log::warn!("could not read the open-file limit: {e}"),
    }
    let server = match Server::bind(config) {
        Ok(server) => server,
        Err(e) => {
            log::error!("{e}");
            return FAILURE;
        }
    };
    if let Err(e) = process::install_signal_handlers(server.shutdown_handle()) {
        log::warn!("no graceful shutdown on signals: {e}");
    }
    // Start-up is done: only the code the loop touches from here on stays resident.
    process::shed_start_up_pages();
    match server.run() {
        Ok(()) => SUCCESS,
        Err(e) => {
            log::error!("{e}");
            FAILURE
        }
    }
}
