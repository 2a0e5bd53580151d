//! The `wspush` server binary: parse flags, start logging, bind, run.

use std::process::ExitCode;

use wspush::Server;
use wspush::config::{self, Command};
use wspush::server::sys;

fn main() -> ExitCode {
    let config = match config::parse_args(std::env::args().skip(1)) {
        Ok(Command::Run(config)) => *config,
        Ok(Command::Help) => {
            print!("{}", config::help_text());
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("wspush {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("wspush: {e}");
            return ExitCode::from(2);
        }
    };
    // stderr, so stdout stays free for tools; no timestamps: journald and docker add their own.
    let _ = simple_logger::SimpleLogger::new()
        .with_level(config.log_level)
        .init();
    match sys::raise_fd_limit() {
        Ok(limit) if (limit as usize) < config.max_connections + 64 => log::warn!(
            "open-file limit {limit} is below --max-connections {} (+64 spare): raise `ulimit -n`",
            config.max_connections
        ),
        Ok(_) => {}
        Err(e) => log::warn!("could not read the open-file limit: {e}"),
    }
    let server = match Server::bind(config) {
        Ok(server) => server,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = sys::install_signal_handlers(server.shutdown_handle()) {
        log::warn!("no graceful shutdown on signals: {e}");
    }
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
