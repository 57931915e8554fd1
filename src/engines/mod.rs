//! Engines: where they are, how to talk to them, and which one gets the next session.
//!
//! For now the pool is the static `acestream.engines` list tried in order (the first engine that
//! starts the session wins); scoring, discovery and health checks build on [`EnginePool`].

pub mod client;

use crate::config::Config;
pub use client::{EngineEndpoint, EngineSession, EngineTimeouts};

/// One engine the proxy may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Engine {
    /// Where it listens.
    pub endpoint: EngineEndpoint,
    /// Its P2P port is forwarded.
    pub forwarded: bool,
}

/// The set of engines and the order in which a new session tries them.
#[derive(Debug, Clone)]
pub struct EnginePool {
    engines: Vec<Engine>,
}

impl EnginePool {
    /// The static pool from the configuration.
    pub fn from_config(config: &Config) -> Self {
        EnginePool {
            engines: config
                .engines
                .iter()
                .map(|e| Engine {
                    endpoint: EngineEndpoint {
                        host: e.host.clone(),
                        port: e.port,
                    },
                    forwarded: e.forwarded,
                })
                .collect(),
        }
    }

    /// Engines in the order a new session should try them.
    pub fn candidates(&self) -> Vec<Engine> {
        self.engines.clone()
    }
}
