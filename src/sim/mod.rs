//! The AceStream engine simulator (`ace-engine-sim` and the tests' in-process engines).
//!
//! It answers like `docs/engine-api.md` so that a real engine can replace it unchanged, streams real
//! MPEG-TS ([`ts`]) and has fault knobs ([`Knobs`]) for every failure the proxy must survive.

mod engine;
mod knobs;
mod stream;
pub mod ts;

pub use engine::{SimEngine, SimStats};
pub use knobs::Knobs;
