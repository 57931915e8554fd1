//! # acestream-edge
//!
//! An edge proxy, built as a plugin on Cloudflare's Pingora, in front of a pool of AceStream
//! engines. Players ask for `/ace/getstream?id=<content id>`; the proxy opens one engine session
//! per content id and fans the same MPEG-TS bytes out to every player watching it.
//!
//! Data flows one way: request ([`proxy`]) → route ([`routes`]) → session ([`streams`]) → engine
//! ([`engines`]). Configuration ([`config`]) is parsed and validated before anything runs;
//! [`server`] wires the pieces into Pingora. `sim` (feature `sim`) is the engine simulator used by
//! tests, benches and `make run`; it is not part of the release server.

// No unsafe code but for two calls in `streams::sendfile`, each allowed where it stands with its
// reason: borrowing the raw fd of Pingora's socket to `dup` it (Pingora offers only `AsRawFd`),
// and registering the dup with tokio's reactor (tokio 1.54 made that call `unsafe`).
#![deny(unsafe_code)]

pub mod access;
pub mod channels;
pub mod cluster;
pub mod config;
pub mod engines;
pub mod error;
pub mod http1;
pub mod metrics;
pub mod proxy;
pub mod routes;
pub mod server;
#[cfg(feature = "sim")]
pub mod sim;
pub mod streams;
pub mod sync;
pub mod ts;
