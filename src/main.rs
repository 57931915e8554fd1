//! `acestream-edge`: the proxy server. Takes Pingora's standard options (`-c FILE`, `-t`, `-d`, `-u`).

use acestream_edge::{config, server};
use pingora::server::configuration::Opt;
use pingora::server::RunArgs;
use std::process::ExitCode;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let opt = Opt::parse_args();
    let loaded = match &opt.conf {
        Some(path) => config::load_file(std::path::Path::new(path)),
        None => Ok(config::defaults()),
    };
    if opt.test {
        return match loaded {
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
    let (mut server, _edge) = server::build(Some(opt), loaded);
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
