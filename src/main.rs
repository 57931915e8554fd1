//! `acestream-edge`: the proxy server. Its own command line (`-c FILE`, `-t`, `-d`, `-u`,
//! `--help`, `--version`) maps onto Pingora's options.

use acestream_edge::{config, server};
use clap::Parser;
use pingora::server::configuration::Opt;
use pingora::server::RunArgs;
use std::process::ExitCode;

/// jemalloc with a background thread gives freed stream chunks back to the system soon after
/// sessions end, where glibc's malloc kept them in its per-thread arenas (see `Cargo.toml`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The version line: the crate version and the git commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("ACESTREAM_EDGE_COMMIT"),
    ")"
);

/// acestream-edge: an edge proxy on Pingora in front of a pool of AceStream engines. Players ask
/// for /ace/getstream?id=<content id>; one engine session per content id is fanned out to every
/// viewer, read on the stream's own clock.
#[derive(Parser, Debug)]
#[command(
    name = "acestream-edge",
    version = VERSION,
    after_help = "Configuration, routes, metrics and logging (RUST_LOG=info by default; debug for \
        engine choices): see README.md. Example: acestream-edge -t -c conf/acestream-edge.yaml"
)]
struct Cli {
    /// The YAML configuration: Pingora's keys at the top level, the proxy's under `acestream:`.
    /// Without it: built-in defaults (listen on 127.0.0.1:8000, no engines).
    #[arg(short = 'c', long = "conf", value_name = "FILE")]
    conf: Option<String>,
    /// Validate the configuration, print `ok` or every problem with its key path, and exit.
    #[arg(short = 't', long = "test")]
    test: bool,
    /// Run in the background (Pingora's daemon mode; set `pid_file` and `error_log`).
    #[arg(short = 'd', long = "daemon")]
    daemon: bool,
    /// Take over the listening sockets of the running instance (Pingora's graceful upgrade,
    /// through `upgrade_sock`).
    #[arg(short = 'u', long = "upgrade")]
    upgrade: bool,
}

fn main() -> ExitCode {
    acestream_edge::server::logging::init();
    let cli = Cli::parse();
    // The file is read here, once; Pingora is handed the parsed settings, not the path (it would
    // warn that it ignores it).
    let opt = Opt {
        upgrade: cli.upgrade,
        daemon: cli.daemon,
        test: cli.test,
        ..Opt::default()
    };
    let loaded = match &cli.conf {
        Some(path) => config::load_file(std::path::Path::new(path)),
        None => Ok(config::defaults()),
    };
    if let Ok(l) = &loaded {
        if !cli.test {
            server::logging::set_format(l.acestream.log_format);
        }
        for w in &l.warnings {
            log::warn!("configuration: {w}");
        }
    }
    if opt.test {
        return match loaded {
            Ok(_) if cli.conf.is_none() => {
                println!("ok (no -c given: the built-in defaults were checked)");
                ExitCode::SUCCESS
            }
            Ok(_) => {
                println!("ok");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    let loaded = match loaded {
        Ok(l) => l,
        Err(e) => {
            eprintln!("invalid configuration:\n{e}");
            return ExitCode::FAILURE;
        }
    };
    let listen: Vec<String> = loaded
        .acestream
        .listen
        .iter()
        .map(|a| a.to_string())
        .collect();
    let engines = loaded.acestream.engines.len();
    // With -u, the running process's relay: read before this process writes its own.
    let predecessor = if cli.upgrade {
        acestream_edge::streams::relay::read_relay_file(
            &acestream_edge::streams::relay::relay_file(&loaded.server.upgrade_sock),
        )
    } else {
        None
    };
    let process = server::ProcessOptions {
        reload_from: cli.conf.as_ref().map(std::path::PathBuf::from),
        predecessor,
        own_process: true,
    };
    let (mut server, _edge) = server::build_process(Some(opt), loaded, process);
    server.bootstrap();
    log::info!(
        "acestream-edge listening on {} with {engines} static engines",
        listen.join(", ")
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(server::SignalWatch),
    });
    log::info!("acestream-edge stopped");
    ExitCode::SUCCESS
}
