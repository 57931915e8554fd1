//! Live-edge wakes: when the viewers that have sent everything the ring holds are woken.
//!
//! **Why batched.** A taken-over viewer at the live edge has nothing to do until new bytes come.
//! Woken at every publish (about 10 a second at 4 Mbit/s), each of 1000 viewers pays a task poll
//! and a `sendfile` per chunk, and every send costs the kernel a fixed amount whatever its size
//! (the syscall, the socket's lock, one loopback delivery and one wake of the receiver). So the
//! ring tells its edge viewers of new bytes in batches, as the floor and msd_lite do: at a
//! publish that makes `send_batch_bytes` new since the last tell, or at the first publish
//! `send_batch_delay` after it; the session's edge task ([`EdgeWakes::run`]) tells the rest once
//! `send_batch_delay` passed without one. One `watch` send wakes every edge viewer; no viewer
//! keeps a timer of its own.
//!
//! **Keepalive.** The same task ticks once every `keepalive_interval` without a publish (a stall,
//! a failover): an edge viewer woken by a tick with nothing to send sends one null packet. So the
//! viewers of a stalled stream share one timer too.
//!
//! A stream without a clock is told at every publish: its ring moves only as its readers take
//! what it holds, so holding bytes back would slow it. Viewers behind the edge never wait here:
//! they send what they can at once and only then wait for the next tell.
//!
//! **Who owns what.** The [`super::Ring`] owns an `Arc<EdgeWakes>` and calls
//! [`EdgeWakes::published`] from its publish (the session's one publisher); the session's edge
//! task holds the other `Arc` and a receiver of the ring's publishes, and ends when the ring
//! closes or is dropped.

use crate::sync::Lock;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// When edge viewers are told of new bytes and ticked while the stream pauses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EdgeSettings {
    /// Tell at a publish that makes this many bytes new since the last tell
    /// (`send_batch_bytes`; 0: at every publish).
    pub batch_bytes: u64,
    /// Tell at the first publish this long after the last tell, and tell what is pending once
    /// this long passed without one (`send_batch_delay`).
    pub batch_delay: Duration,
    /// Tick this often while nothing is published (`keepalive_interval`; zero: never).
    pub keepalive: Duration,
}

/// What an edge wake carries: how many keepalive ticks the stream has had. A wake that leaves it
/// unchanged told of new bytes (or of something else a viewer must look at: a close, a cut).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EdgeTell {
    /// Keepalive ticks so far.
    pub keepalives: u64,
    /// Stream bytes the edge viewers were told of: a viewer that has sent this far waits for
    /// the next wake without reading the ring again.
    pub told: u64,
    /// The ring sequence number of the chunk that starts at `told` (the next to be published
    /// when it was told): where a viewer that sent everything told reads on.
    pub told_seq: u64,
}

#[derive(Debug)]
struct State {
    /// Stream bytes published (and the sequence number of the next chunk), and when the last
    /// publish was.
    published: u64,
    published_seq: u64,
    published_at: Instant,
    /// Stream bytes edge viewers were told of, and when.
    told: u64,
    told_at: Instant,
    /// When the last keepalive tick was.
    ticked_at: Option<Instant>,
    /// The ring closed: the edge task ends.
    closed: bool,
}

/// The ring's live-edge wakes (see the module docs).
#[derive(Debug)]
pub struct EdgeWakes {
    settings: EdgeSettings,
    tx: watch::Sender<EdgeTell>,
    state: Mutex<State>,
}

/// What the edge task does next.
#[derive(Debug, PartialEq)]
enum Due {
    /// Tell the pending bytes at this time.
    Flush(Instant),
    /// Tick a keepalive at this time.
    Keepalive(Instant),
    /// Nothing until the next publish.
    Idle,
}

impl EdgeWakes {
    /// Edge wakes with these settings; `now` is when the ring started.
    pub fn new(settings: EdgeSettings, now: Instant) -> Self {
        EdgeWakes {
            settings,
            tx: watch::channel(EdgeTell::default()).0,
            state: Mutex::new(State {
                published: 0,
                published_seq: 0,
                published_at: now,
                told: 0,
                told_at: now,
                ticked_at: None,
                closed: false,
            }),
        }
    }

    /// A receiver that changes at every tell, tick and wake.
    pub fn subscribe(&self) -> watch::Receiver<EdgeTell> {
        self.tx.subscribe()
    }

    /// The ring's edge moved to `edge` bytes, `seq` the sequence number of the next chunk (a
    /// chunk published at `now`; `clocked`: the stream has a clock). Tells the edge viewers if
    /// the batch is full or old enough.
    pub fn published(&self, edge: u64, seq: u64, clocked: bool, now: Instant) {
        let tell = {
            let mut s = self.state.locked();
            s.published = edge;
            s.published_seq = seq;
            s.published_at = now;
            let tell = !clocked
                || edge.saturating_sub(s.told) >= self.settings.batch_bytes
                || now.saturating_duration_since(s.told_at) >= self.settings.batch_delay;
            if tell {
                s.told = edge;
                s.told_at = now;
            }
            tell
        };
        if tell {
            self.tell(edge, seq);
        }
    }

    /// Tells the edge viewers of the bytes up to `edge` (`seq` the chunk that starts there).
    /// Never back: the publisher and the edge task each tell after letting the state's lock go,
    /// so a tell of fewer bytes (or one after the close) can come second; it is not sent.
    fn tell(&self, edge: u64, seq: u64) {
        self.tx.send_if_modified(|t| {
            if edge <= t.told {
                return false;
            }
            t.told = edge;
            t.told_seq = seq;
            true
        });
    }

    /// Wakes every edge viewer (something they must look at changed: a cut, a close).
    pub fn wake(&self) {
        self.tx.send_modify(|_| {});
    }

    /// Wakes every edge viewer for the last time: the edge task ends, and nothing will be
    /// told again, so every viewer reads the ring to its end (`told` becomes `u64::MAX`).
    pub fn close(&self) {
        self.state.locked().closed = true;
        self.tx.send_modify(|t| t.told = u64::MAX);
    }

    /// What is due next, or `None` once the ring closed.
    fn due(&self) -> Option<Due> {
        let s = self.state.locked();
        if s.closed {
            return None;
        }
        if s.told < s.published {
            return Some(Due::Flush(s.told_at + self.settings.batch_delay));
        }
        if self.settings.keepalive.is_zero() {
            return Some(Due::Idle);
        }
        let quiet_since = s
            .ticked_at
            .map_or(s.published_at, |t| t.max(s.published_at));
        Some(Due::Keepalive(quiet_since + self.settings.keepalive))
    }

    /// Does what came due at `now`: tells the pending bytes, or ticks a keepalive if nothing was
    /// published meanwhile.
    fn fire(&self, due: Due, now: Instant) {
        let mut s = self.state.locked();
        match due {
            Due::Flush(_) if s.told < s.published => {
                let (edge, seq) = (s.published, s.published_seq);
                s.told = edge;
                s.told_at = now;
                drop(s);
                self.tell(edge, seq);
            }
            Due::Keepalive(at) if s.published_at + self.settings.keepalive <= at => {
                s.ticked_at = Some(now);
                drop(s);
                self.tx.send_modify(|t| t.keepalives += 1);
            }
            _ => {}
        }
    }

    /// The session's edge task: tells pending bytes after `send_batch_delay` without a publish
    /// and ticks keepalives while the stream pauses, until the ring closes or `publishes` (the
    /// ring's own publish receiver) ends with it.
    pub async fn run(self: std::sync::Arc<Self>, mut publishes: watch::Receiver<u64>) {
        while let Some(due) = self.due() {
            let at = match due {
                Due::Flush(at) | Due::Keepalive(at) => Some(at),
                Due::Idle => None,
            };
            tokio::select! {
                changed = publishes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(at.unwrap_or_else(Instant::now)), if at.is_some() => {
                    self.fire(due, Instant::now());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const KIB: u64 = 1024;

    fn settings() -> EdgeSettings {
        EdgeSettings {
            batch_bytes: 128 * KIB,
            batch_delay: Duration::from_millis(200),
            keepalive: Duration::from_secs(1),
        }
    }

    /// Counts the tells and ticks a receiver has seen.
    fn seen(rx: &mut watch::Receiver<EdgeTell>) -> (bool, u64) {
        let changed = rx.has_changed().unwrap_or(false);
        (changed, rx.borrow_and_update().keepalives)
    }

    #[tokio::test(start_paused = true)]
    async fn a_clocked_stream_is_told_per_batch_not_per_chunk() {
        let start = Instant::now();
        let edge = EdgeWakes::new(settings(), start);
        let mut rx = edge.subscribe();
        // 50 KB chunks every 100 ms (4 Mbit/s): told every second chunk, by the delay.
        let mut tells = 0;
        for i in 1..=20u64 {
            edge.published(i * 50_000, i, true, start + Duration::from_millis(100 * i));
            if seen(&mut rx).0 {
                tells += 1;
            }
        }
        assert_eq!(tells, 10, "one tell per 200 ms of a 4 Mbit/s stream");
        // 64 KiB chunks at once (a burst): told once 128 KiB are new.
        let at = start + Duration::from_secs(3);
        edge.published(1_000_000 + 64 * KIB, 21, true, at);
        assert!(
            seen(&mut rx).0,
            "the first publish 200 ms after a tell is told"
        );
        edge.published(1_000_000 + 128 * KIB, 22, true, at);
        assert!(!seen(&mut rx).0, "64 KiB new: held");
        edge.published(1_000_000 + 192 * KIB, 23, true, at);
        assert!(seen(&mut rx).0, "128 KiB new: told");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_without_a_clock_is_told_at_every_publish() {
        let start = Instant::now();
        let edge = EdgeWakes::new(settings(), start);
        let mut rx = edge.subscribe();
        for i in 1..=5u64 {
            edge.published(i * 1000, i, false, start);
            assert!(seen(&mut rx).0);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_edge_task_tells_what_is_pending_then_ticks_while_the_stream_pauses() {
        let start = Instant::now();
        let edge = Arc::new(EdgeWakes::new(settings(), start));
        let (publish_tx, publishes) = watch::channel(0u64);
        let mut rx = edge.subscribe();
        let task = tokio::spawn(edge.clone().run(publishes));
        // A tell at 0.2 s, then 50 KB more at 0.3 s that no publish follows.
        tokio::time::sleep(Duration::from_millis(200)).await;
        edge.published(50_000, 1, true, Instant::now());
        publish_tx.send_replace(1);
        assert_eq!(seen(&mut rx), (true, 0));
        tokio::time::sleep(Duration::from_millis(100)).await;
        edge.published(100_000, 2, true, Instant::now());
        publish_tx.send_replace(2);
        assert!(!seen(&mut rx).0, "held: 50 KB and 100 ms since the tell");
        assert_eq!(rx.borrow().told, 50_000);
        // The task tells it 200 ms after the last tell.
        rx.changed().await.unwrap();
        assert_eq!(Instant::now() - start, Duration::from_millis(400));
        assert_eq!(rx.borrow().told, 100_000);
        assert_eq!(rx.borrow().told_seq, 2, "the chunk after the told bytes");
        assert_eq!(seen(&mut rx), (false, 0));
        // Then one tick a second after the last publish, and a second after each tick.
        rx.changed().await.unwrap();
        assert_eq!(Instant::now() - start, Duration::from_millis(1300));
        assert_eq!(rx.borrow_and_update().keepalives, 1);
        rx.changed().await.unwrap();
        assert_eq!(Instant::now() - start, Duration::from_millis(2300));
        assert_eq!(rx.borrow_and_update().keepalives, 2);
        // A publish puts the next tick a second after it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        edge.published(150_000, 3, true, Instant::now());
        publish_tx.send_replace(3);
        assert_eq!(seen(&mut rx), (true, 2));
        rx.changed().await.unwrap();
        assert_eq!(Instant::now() - start, Duration::from_millis(3800));
        assert_eq!(rx.borrow_and_update().keepalives, 3);
        // Closing wakes everyone once more and ends the task.
        edge.close();
        publish_tx.send_replace(4);
        task.await.unwrap();
        assert_eq!(seen(&mut rx), (true, 3));
        assert_eq!(rx.borrow().told, u64::MAX, "every viewer reads to the end");
    }

    #[tokio::test(start_paused = true)]
    async fn the_edge_task_ends_with_the_ring() {
        let edge = Arc::new(EdgeWakes::new(settings(), Instant::now()));
        let (publish_tx, publishes) = watch::channel(0u64);
        let task = tokio::spawn(edge.clone().run(publishes));
        tokio::time::sleep(Duration::from_secs(3)).await;
        drop(publish_tx);
        task.await.unwrap();
    }

    /// The publisher and the edge task tell outside the state's lock, so their tells can come
    /// in either order: the later, smaller one must not take the edge back (viewers at the edge
    /// would see nothing new, and the edge writer would hand everyone back), nor undo the close.
    #[test]
    fn a_tell_never_goes_back() {
        let edge = EdgeWakes::new(settings(), Instant::now());
        let mut rx = edge.subscribe();
        edge.tell(200_000, 4);
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().told, 200_000);
        edge.tell(150_000, 3);
        assert!(!rx.has_changed().unwrap(), "an older tell wakes nobody");
        assert_eq!((rx.borrow().told, rx.borrow().told_seq), (200_000, 4));
        edge.close();
        edge.tell(250_000, 5);
        assert_eq!(rx.borrow_and_update().told, u64::MAX, "the close stands");
    }
}
