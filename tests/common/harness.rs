//! A proxy with a faulty engine and an observer client on a healthy one, for fault tests.

use super::*;
use acestream_edge::server::RunningServer;
use acestream_edge::sim::{Knobs, SimEngine};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The simulated engines' bitrate in fault tests.
pub const BITRATE: u64 = 2_000_000;

/// Engine knobs at [`BITRATE`].
pub fn knobs() -> Knobs {
    Knobs {
        bitrate_bps: BITRATE,
        ..Knobs::default()
    }
}

/// A proxy with a faulty engine `f`, and an observer client streaming another id from a healthy
/// engine `o` through the same proxy for the whole case.
pub struct Harness {
    /// The faulty engine.
    pub f: SimEngine,
    /// The observer's healthy engine.
    pub o: SimEngine,
    /// The proxy.
    pub server: RunningServer,
    observer_stop: Arc<AtomicBool>,
    observer: tokio::task::JoinHandle<f64>,
    started: Instant,
}

impl Harness {
    /// `o` is forwarded and takes the observer first; `max_streams_per_engine: 1` then keeps
    /// the faulty id on `f`.
    pub async fn new(fault: Knobs, extra: &str) -> Harness {
        Self::with_capacity(fault, 1, extra).await
    }

    /// With `max_streams_per_engine` above 1, the case's ids may land on either engine. `extra`
    /// holds more `acestream:` keys, one per line; a key the harness sets is replaced.
    pub async fn with_capacity(fault: Knobs, max_streams: usize, extra: &str) -> Harness {
        let (f, o) = (sim(fault).await, sim(knobs()).await);
        // The cases' short timeouts, unless `extra` sets the key itself.
        let extra: Vec<&str> = extra
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let defaults = [
            "copy_chunk_size: 16356",
            "stream_idle_timeout: 0.3",
            "empty_stream_timeout: 1.5",
            "upstream_stall_timeout: 0.7",
            "engine_connect_timeout: 1",
        ];
        let key = |l: &str| l.split(':').next().unwrap_or("").trim().to_string();
        let settings: String = defaults
            .into_iter()
            .filter(|d| !extra.iter().any(|e| key(e) == key(d)))
            .chain(extra.iter().copied())
            .map(|l| format!("  {l}\n"))
            .collect();
        let yaml = format!(
            "acestream:\n  listen: [\"127.0.0.1:{}\"]\n  engines:\n    - {{host: 127.0.0.1, port: {}, forwarded: true}}\n    - {{host: 127.0.0.1, port: {}}}\n  max_streams_per_engine: {max_streams}\n{settings}",
            free_port(),
            o.addr().port(),
            f.addr().port(),
        );
        let server = start_proxy(acestream_edge::config::load_str(&yaml).unwrap().acestream);
        let mut r = get(
            server.addr,
            &format!("/ace/getstream?id={}", content_id(7000)),
        )
        .await;
        assert_eq!(r.status, 200);
        read_for(&mut r, Duration::from_secs(5), 188).await;
        assert_eq!(sim_stats(&o).await.sessions_active, 1, "observer on o");
        let observer_stop = Arc::new(AtomicBool::new(false));
        let stop = observer_stop.clone();
        let observer = tokio::spawn(async move {
            let start = Instant::now();
            let mut n = 0usize;
            // Until told to stop, or until the response ends: an ended response answers at
            // once without waiting, so looping on it would hold this runtime's worker forever
            // (a failing case's unwinding then never finished dropping the runtime).
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(200), r.next_chunk()).await {
                    Ok(Ok(Some(b))) => n += b.len(),
                    Ok(Ok(None) | Err(_)) => break,
                    Err(_) => {} // 200 ms without a byte: look at `stop` again
                }
            }
            n as f64 / start.elapsed().as_secs_f64()
        });
        Harness {
            f,
            o,
            server,
            observer_stop,
            observer,
            started: Instant::now(),
        }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.server.addr
    }

    /// The observer kept its rate; after it leaves and the idle timer runs, no session is left
    /// and each engine session got exactly one stop.
    pub async fn finish(self) {
        // A rate needs a window: at least 4 s of observation.
        let remaining = Duration::from_secs(4).saturating_sub(self.started.elapsed());
        tokio::time::sleep(remaining).await;
        self.observer_stop.store(true, Ordering::Relaxed);
        let rate = self.observer.await.unwrap();
        let expected = BITRATE as f64 / 8.0;
        assert!(
            (rate - expected).abs() / expected < 0.10,
            "observer got {rate:.0} B/s, source {expected:.0} B/s"
        );
        let sessions = self.server.edge.sessions.clone();
        let gone = wait_until(Duration::from_secs(5), || async {
            sessions.list().is_empty()
        })
        .await;
        let (_, status) = get_json(self.server.addr, "/proxy/status").await;
        assert!(
            gone && status["active_sessions"] == 0,
            "sessions left: {status}"
        );
        for e in [&self.f, &self.o] {
            // The library view of the counters: a case may have shut the engine down.
            let balanced = wait_until(Duration::from_secs(5), || async {
                let s = e.stats();
                s.stop_calls.values().sum::<u64>() == s.sessions_started
            })
            .await;
            let s = e.stats();
            assert!(
                balanced,
                "engine {}: {} sessions, stops {:?}",
                e.addr(),
                s.sessions_started,
                s.stop_calls
            );
        }
    }
}
