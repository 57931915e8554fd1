//! DVR: each session's stream, kept on disk for `dvr_window`, so a viewer can start minutes back
//! (`/ace/getstream?id=…&offset=-<seconds>` or `&start=<unix seconds>`) from the same engine
//! session that feeds the live viewers.
//!
//! **Who owns what.** The [`DvrStore`] (one per process, built at start from the `dvr_*` keys)
//! owns the directory and the disk budget. Each streaming session gets a [`Spill`]: a writer
//! thread that appends every chunk the ring publishes to the session's spill files, in large
//! sequential writes (files of [`SPILL_FILE_BYTES`], deleted whole as the window moves), and an
//! index of each chunk's stream offset, media time (the session's continuous clock) and wall
//! time, with the keyframes and the PAT/PMT current at each. The upstream task hands chunks over
//! without waiting (a full queue ends DVR for the session, never the stream); readers read what
//! the writer has written, through the page cache, so a rewound viewer follows the spill right up
//! to the live edge: its stream is one contiguous run of the session's bytes.
//!
//! **Faults.** A failed write (a full disk, a vanished directory) ends the session's DVR: logged
//! once, counted in `dvr_spills_cut_total{reason}`, files removed; live viewers never notice.
//! Nothing is fsynced (it is a cache) and the directory is emptied at start, so a crash leaves
//! nothing a later run misreads. A session's spill is deleted when the session ends.

pub mod hls;

use crate::config::Dvr;
use crate::metrics::Metrics;
use crate::sync::Lock;
use bytes::Bytes;
use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// Bytes per spill file. Fixed: large enough for long sequential appends and few files (a 30 min
/// window of a 4 Mbit/s stream is about a hundred), small enough that dropping the oldest file
/// frees the window's tail a few seconds at a time.
pub const SPILL_FILE_BYTES: u64 = 8 << 20;

/// Chunks waiting for the writer. Fixed: 256 chunks of 64 KiB are 16 MiB, seconds of a
/// high-bitrate stream; a writer further behind than that is not keeping up with the disk, and
/// the session's DVR ends instead of its memory growing.
const QUEUE_CHUNKS: usize = 256;

/// Why a session's spill ended before the session did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutShort {
    /// A write failed (disk full, directory gone).
    IoError,
    /// The writer fell [`QUEUE_CHUNKS`] behind.
    Backlog,
}

impl CutShort {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            CutShort::IoError => "io_error",
            CutShort::Backlog => "backlog",
        }
    }
}

/// Where a rewound viewer starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rewind {
    /// This many seconds of stream behind the live edge (`offset=-<seconds>`).
    Back(f64),
    /// This wall-clock time, unix seconds (`start=<unix seconds>`: catch-up templates' `{utc}`).
    At(f64),
}

/// The process's DVR: its directory and the disk budget all spills share.
#[derive(Debug)]
pub struct DvrStore {
    dir: PathBuf,
    window: Duration,
    max_bytes: u64,
    /// `hls_segment_seconds`: the length of the DVR playlist's segments.
    segment_seconds: f64,
    spills: Mutex<Vec<Weak<Shared>>>,
    metrics: Arc<Metrics>,
}

impl DvrStore {
    /// The store the config asks for: `None` with `dvr_window: 0`, or when the directory cannot
    /// be prepared (logged; the proxy runs without DVR). An earlier run's spills are removed.
    /// `segment_seconds`: how long the DVR playlist's segments are (`hls_segment_seconds`).
    pub fn open(config: &Dvr, segment_seconds: f64, metrics: Arc<Metrics>) -> Option<Arc<Self>> {
        if config.dvr_window.is_zero() {
            return None;
        }
        let dir = &config.dvr_dir;
        if let Err(e) = crate::config::usable_dir(dir) {
            log::error!("DVR is off: {} cannot hold spills: {e}", dir.display());
            return None;
        }
        // Spills of processes that are gone (a crash, a kill, a container restarted with the
        // same pid): a running process's spills stay, as during a graceful upgrade, when the old
        // and the new process share the directory.
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                let owner = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_prefix(SPILL_PREFIX))
                    .and_then(|n| n.split('-').next())
                    .map(str::to_string);
                let stale = owner.is_some_and(|tag| {
                    let pid = tag.split('.').next().and_then(|p| p.parse::<u32>().ok());
                    pid.and_then(process_tag).as_deref() != Some(tag.as_str())
                });
                if stale {
                    let _ = std::fs::remove_dir_all(&path);
                }
            }
        }
        Some(Arc::new(DvrStore {
            dir: dir.clone(),
            window: config.dvr_window,
            max_bytes: config.dvr_max_bytes,
            segment_seconds,
            spills: Mutex::new(Vec::new()),
            metrics,
        }))
    }

    /// How far back a spill reaches.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// A new spill for a session (`name` unique among running sessions); `None` if its
    /// directory cannot be made (logged).
    pub fn spill(self: &Arc<Self>, name: &str) -> Option<Spill> {
        let owner = process_tag(std::process::id()).unwrap_or_else(|| "0".into());
        let dir = self.dir.join(format!("{SPILL_PREFIX}{owner}-{name}"));
        if let Err(e) = std::fs::create_dir_all(&dir) {
            log::warn!("DVR off for {name}: {}: {e}", dir.display());
            self.metrics
                .dvr_spills_cut
                .with_label_values(&[CutShort::IoError.label()])
                .inc();
            return None;
        }
        let shared = Arc::new(Shared {
            name: name.to_string(),
            dir,
            state: Mutex::new(SpillState {
                files: VecDeque::new(),
                chunks: VecDeque::new(),
                keyframes: VecDeque::new(),
                segments: hls::DvrSegments::new(self.segment_seconds),
            }),
            written: watch::channel(0).0,
            ended: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            bytes: AtomicU64::new(0),
        });
        self.spills.locked().push(Arc::downgrade(&shared));
        let (tx, rx) = mpsc::sync_channel(QUEUE_CHUNKS);
        let writer = Writer {
            store: self.clone(),
            shared: shared.clone(),
            file: None,
        };
        let spawned = std::thread::Builder::new()
            .name("dvr-spill".into())
            .spawn(move || writer.run(rx));
        if let Err(e) = spawned {
            log::warn!("DVR off for {name}: no writer thread: {e}");
            return None;
        }
        Some(Spill { shared, tx })
    }

    /// Over the budget: drops the oldest file of the longest spill until all fit.
    fn keep_budget(&self) {
        loop {
            let spills: Vec<Arc<Shared>> = {
                let mut list = self.spills.locked();
                list.retain(|w| w.strong_count() > 0);
                list.iter().filter_map(Weak::upgrade).collect()
            };
            let total: u64 = spills.iter().map(|s| s.bytes.load(Ordering::Relaxed)).sum();
            if total <= self.max_bytes {
                return;
            }
            let Some(longest) = spills
                .iter()
                .max_by_key(|s| s.bytes.load(Ordering::Relaxed))
            else {
                return;
            };
            if !longest.drop_oldest_file(&self.metrics) {
                return;
            }
            self.metrics.dvr_budget_drops.inc();
        }
    }
}

/// Spill directories are `spill-<pid>.<process start>-<session>`, so a start removes only what
/// processes that are gone left.
const SPILL_PREFIX: &str = "spill-";

/// One chunk as the index knows it.
#[derive(Debug, Clone, Copy)]
struct ChunkMark {
    offset: u64,
    end: u64,
    media: (f64, f64),
    unix: f64,
}

/// A keyframe a rewound viewer may start on.
#[derive(Debug, Clone)]
struct KeyMark {
    offset: u64,
    media: f64,
    unix: f64,
    psi: Bytes,
}

/// One spill file.
#[derive(Debug)]
struct SpillFile {
    start: u64,
    end: u64,
    path: PathBuf,
    file: Arc<File>,
}

#[derive(Debug)]
struct SpillState {
    files: VecDeque<SpillFile>,
    chunks: VecDeque<ChunkMark>,
    keyframes: VecDeque<KeyMark>,
    /// The DVR playlist's segments.
    segments: hls::DvrSegments,
}

/// What the writer and the readers of one spill share.
#[derive(Debug)]
struct Shared {
    name: String,
    dir: PathBuf,
    state: Mutex<SpillState>,
    /// The stream offset written through (readers wait on it).
    written: watch::Sender<u64>,
    /// The spill ended (the session ended, or a fault): nothing more is written.
    ended: AtomicBool,
    /// The session ended: the writer stops at its next chunk even if the end message did not
    /// fit in a full queue.
    closing: AtomicBool,
    /// Bytes its files hold.
    bytes: AtomicU64,
}

impl Shared {
    /// Drops the oldest file and the index entries in it; false if it holds only one file.
    fn drop_oldest_file(&self, metrics: &Metrics) -> bool {
        let mut st = self.state.locked();
        if st.files.len() < 2 {
            return false;
        }
        let Some(old) = st.files.pop_front() else {
            return false;
        };
        let keep_from = old.end;
        st.chunks.retain(|c| c.offset >= keep_from);
        st.keyframes.retain(|k| k.offset >= keep_from);
        st.segments.trim(keep_from);
        drop(st);
        let len = old.end - old.start;
        self.bytes.fetch_sub(len, Ordering::Relaxed);
        metrics.dvr_spill_bytes.sub(len as i64);
        let _ = std::fs::remove_file(&old.path);
        true
    }

    /// Ends the spill: removes its files and wakes its readers. It shows as ended once its files
    /// are gone (the state lock is taken first, so nothing reads or indexes it meanwhile).
    fn end(&self, metrics: &Metrics) {
        let mut st = self.state.locked();
        if self.ended.load(Ordering::Acquire) {
            return;
        }
        st.files.clear();
        st.chunks.clear();
        st.keyframes.clear();
        st.segments.clear();
        let bytes = self.bytes.swap(0, Ordering::Relaxed);
        metrics.dvr_spill_bytes.sub(bytes as i64);
        let _ = std::fs::remove_dir_all(&self.dir);
        self.ended.store(true, Ordering::Release);
        drop(st);
        self.written.send_modify(|_| {});
    }
}

/// A chunk for the writer.
enum Message {
    Append {
        offset: u64,
        data: Bytes,
        media: (f64, f64),
        unix: f64,
        /// The stream's clock jumped at this chunk.
        jump: bool,
        keyframes: Vec<(u64, Bytes)>,
    },
    /// The session ended: remove the spill.
    End,
}

/// A session's spill: the upstream task appends to it, rewound viewers read it.
#[derive(Debug)]
pub struct Spill {
    shared: Arc<Shared>,
    tx: mpsc::SyncSender<Message>,
}

/// Where a stream offset lies on disk ([`Spill::locate`]).
#[derive(Debug)]
pub enum SpillAt {
    /// In `file` at position `at`, with `len` bytes written there from it on (to the file's
    /// current end): what `sendfile` may send.
    File {
        /// The spill file (open; it stays readable even once the window drops it).
        file: Arc<File>,
        /// Position in the file.
        at: u64,
        /// Bytes written from there on.
        len: u64,
    },
    /// Not written yet: wait for [`Spill::written`] to move.
    Pending,
    /// Before the window (the oldest data went), or the spill ended.
    Gone,
}

/// What a read found.
#[derive(Debug)]
pub enum SpillRead {
    /// The bytes from the asked offset on.
    Data(Bytes),
    /// Not written yet: wait for [`Spill::written`] to move.
    Pending,
    /// Before the window (the oldest data went), or the spill ended.
    Gone,
}

impl Spill {
    /// Queues a published chunk (never waits: a writer [`QUEUE_CHUNKS`] behind ends DVR for the
    /// session). `keyframes`: the keyframe marks found in it, with their PAT + PMT; `jump`: the
    /// stream's clock jumped at it (a splice).
    pub fn append(
        &self,
        metrics: &Metrics,
        (offset, data): (u64, Bytes),
        media: (f64, f64),
        jump: bool,
        keyframes: Vec<(u64, Bytes)>,
    ) {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.append_at(metrics, (offset, data), (media, unix), jump, keyframes);
    }

    /// [`Self::append`] with the chunk's wall time given (unix seconds).
    pub(crate) fn append_at(
        &self,
        metrics: &Metrics,
        (offset, data): (u64, Bytes),
        (media, unix): ((f64, f64), f64),
        jump: bool,
        keyframes: Vec<(u64, Bytes)>,
    ) {
        if self.shared.ended.load(Ordering::Relaxed) {
            return;
        }
        let msg = Message::Append {
            offset,
            data,
            media,
            unix,
            jump,
            keyframes,
        };
        if let Err(mpsc::TrySendError::Full(_)) = self.tx.try_send(msg) {
            log::warn!(
                "session {}: DVR ended: the spill writer fell {QUEUE_CHUNKS} chunks behind",
                self.shared.name
            );
            metrics
                .dvr_spills_cut
                .with_label_values(&[CutShort::Backlog.label()])
                .inc();
            self.shared.end(metrics);
        }
    }

    /// Ends the spill (the session ended): its files are removed (by the writer thread).
    pub fn close(&self) {
        self.shared.closing.store(true, Ordering::Release);
        let _ = self.tx.try_send(Message::End);
    }

    /// Whether the spill still takes chunks.
    pub fn is_live(&self) -> bool {
        !self.shared.ended.load(Ordering::Relaxed)
    }

    /// Moves whenever more is written (or the spill ends).
    pub fn written(&self) -> watch::Receiver<u64> {
        self.shared.written.subscribe()
    }

    /// Where stream offset `offset` is on disk (an index lookup: no I/O).
    pub fn locate(&self, offset: u64) -> SpillAt {
        let st = self.shared.state.locked();
        if self.shared.ended.load(Ordering::Relaxed) {
            return SpillAt::Gone;
        }
        match st
            .files
            .iter()
            .find(|f| f.start <= offset && offset < f.end)
        {
            Some(f) => SpillAt::File {
                file: f.file.clone(),
                at: offset - f.start,
                len: f.end - offset,
            },
            None if st.files.front().is_some_and(|f| offset < f.start) => SpillAt::Gone,
            None => SpillAt::Pending,
        }
    }

    /// Up to `max` bytes from stream offset `offset` (blocking file I/O: call it off the async
    /// workers, e.g. in `spawn_blocking`).
    pub fn read(&self, offset: u64, max: usize) -> std::io::Result<SpillRead> {
        match self.locate(offset) {
            SpillAt::File { file, at, len } => {
                let mut buf = vec![0u8; (len as usize).min(max)];
                file.read_exact_at(&mut buf, at)?;
                Ok(SpillRead::Data(Bytes::from(buf)))
            }
            SpillAt::Pending => Ok(SpillRead::Pending),
            SpillAt::Gone => Ok(SpillRead::Gone),
        }
    }

    /// The keyframe a viewer rewound to `to` starts on (at or before that time; the window's
    /// oldest if the time is before it), with its PAT + PMT. `None` when the time is at or past
    /// the live edge (the viewer starts live) or nothing is held.
    pub fn start_for(&self, to: Rewind) -> Option<(u64, Bytes)> {
        let st = self.shared.state.locked();
        let last = st.chunks.back()?;
        let (edge, time_of): (f64, fn(&KeyMark) -> f64) = match to {
            Rewind::Back(_) => (last.media.1, |k| k.media),
            Rewind::At(_) => (last.unix, |k| k.unix),
        };
        let t = match to {
            Rewind::Back(s) => edge - s,
            Rewind::At(u) => u,
        };
        if t >= edge {
            return None;
        }
        let k = st
            .keyframes
            .iter()
            .rev()
            .find(|k| time_of(k) <= t)
            .or_else(|| st.keyframes.front())?;
        Some((k.offset, k.psi.clone()))
    }

    /// Whether stream offset `offset` is in the window (written, not dropped yet).
    pub fn holds(&self, offset: u64) -> bool {
        let st = self.shared.state.locked();
        st.files.front().is_some_and(|f| f.start <= offset)
            && st.files.back().is_some_and(|f| offset < f.end)
    }

    /// Seconds of stream between stream offset `offset` and the live edge.
    pub fn lag_seconds(&self, offset: u64) -> f64 {
        let st = self.shared.state.locked();
        let Some(last) = st.chunks.back() else {
            return 0.0;
        };
        let at = st
            .chunks
            .iter()
            .find(|c| c.offset <= offset && offset < c.end)
            .map_or(last.media.1, |c| {
                let f = (offset - c.offset) as f64 / (c.end - c.offset).max(1) as f64;
                c.media.0 + (c.media.1 - c.media.0) * f
            });
        (last.media.1 - at).max(0.0)
    }

    /// The DVR playlist: every finished segment of the window (`None` before the first), with
    /// segment URIs `uri(serial)`.
    pub fn playlist(&self, uri: impl Fn(u64) -> String) -> Option<String> {
        self.shared.state.locked().segments.playlist(uri)
    }

    /// DVR segment `serial`: (its stream offsets, the PAT + PMT to send first); `None` once it
    /// left the window (or before it is finished).
    pub fn segment(&self, serial: u64) -> Option<((u64, u64), Bytes)> {
        let st = self.shared.state.locked();
        let s = st.segments.get(serial)?;
        Some(((s.offset, s.end?), s.psi.clone()))
    }

    /// The DVR playlist's `#EXT-X-TARGETDURATION`, seconds.
    pub fn target_duration(&self) -> u64 {
        self.shared.state.locked().segments.target_duration()
    }

    /// The window actually held: (seconds of stream, bytes on disk).
    pub fn held(&self) -> (f64, u64) {
        let st = self.shared.state.locked();
        let seconds = match (st.chunks.front(), st.chunks.back()) {
            (Some(a), Some(b)) => b.media.1 - a.media.0,
            _ => 0.0,
        };
        (seconds, self.shared.bytes.load(Ordering::Relaxed))
    }
}

impl Drop for Spill {
    fn drop(&mut self) {
        self.close();
    }
}

/// The writer thread of one spill.
struct Writer {
    store: Arc<DvrStore>,
    shared: Arc<Shared>,
    /// The file being appended to.
    file: Option<Arc<File>>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Message>) {
        let metrics = self.store.metrics.clone();
        while let Ok(msg) = rx.recv() {
            let Message::Append {
                offset,
                data,
                media,
                unix,
                jump,
                keyframes,
            } = msg
            else {
                break;
            };
            if self.shared.ended.load(Ordering::Relaxed)
                || self.shared.closing.load(Ordering::Acquire)
            {
                break;
            }
            if let Err(e) = self.append(offset, &data, (media, unix), jump, keyframes) {
                log::warn!(
                    "session {}: DVR ended: writing {}: {e}",
                    self.shared.name,
                    self.shared.dir.display()
                );
                metrics
                    .dvr_spills_cut
                    .with_label_values(&[CutShort::IoError.label()])
                    .inc();
                break;
            }
            self.trim_window(unix);
            self.store.keep_budget();
        }
        self.shared.end(&metrics);
    }

    fn append(
        &mut self,
        offset: u64,
        data: &[u8],
        (media, unix): ((f64, f64), f64),
        jump: bool,
        keyframes: Vec<(u64, Bytes)>,
    ) -> std::io::Result<()> {
        let end = offset + data.len() as u64;
        let roll = {
            let st = self.shared.state.locked();
            match st.files.back() {
                // A gap (the first chunk, or chunks lost meanwhile) or a full file: a new file.
                Some(f) => f.end != offset || f.end - f.start >= SPILL_FILE_BYTES,
                None => true,
            }
        };
        if roll || self.file.is_none() {
            let path = self.shared.dir.join(format!("{offset:020}.ts"));
            let file = Arc::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .read(true)
                    .write(true)
                    .open(&path)?,
            );
            self.file = Some(file.clone());
            self.shared.state.locked().files.push_back(SpillFile {
                start: offset,
                end: offset,
                path,
                file,
            });
        }
        if let Some(f) = &self.file {
            let mut w: &File = f;
            std::io::Write::write_all(&mut w, data)?;
        }
        let metrics = &self.store.metrics;
        {
            let mut st = self.shared.state.locked();
            if let Some(f) = st.files.back_mut() {
                f.end = end;
            }
            st.chunks.push_back(ChunkMark {
                offset,
                end,
                media,
                unix,
            });
            let mut keys = Vec::with_capacity(keyframes.len());
            for (at, psi) in keyframes {
                let media = media_at(&st.chunks, at);
                keys.push((at, media.0, psi.clone()));
                st.keyframes.push_back(KeyMark {
                    offset: at,
                    media: media.0,
                    unix: media.1,
                    psi,
                });
            }
            st.segments.chunk((offset, end), media, unix, jump, &keys);
        }
        self.shared
            .bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        metrics.dvr_spill_bytes.add(data.len() as i64);
        self.shared.written.send_replace(end);
        Ok(())
    }

    /// Drops the files wholly older than the window.
    fn trim_window(&self, now: f64) {
        let oldest = now - self.store.window.as_secs_f64();
        loop {
            let drop_one = {
                let st = self.shared.state.locked();
                // The first file goes once the chunk after it is older than the window.
                let second_start = st.files.get(1).map(|f| f.start);
                match second_start {
                    Some(start) => st
                        .chunks
                        .iter()
                        .find(|c| c.offset >= start)
                        .is_some_and(|c| c.unix < oldest),
                    None => false,
                }
            };
            if !drop_one || !self.shared.drop_oldest_file(&self.store.metrics) {
                return;
            }
        }
    }
}

/// (media time, unix time) at stream offset `at`, interpolated within the chunk that holds it.
fn media_at(chunks: &VecDeque<ChunkMark>, at: u64) -> (f64, f64) {
    match chunks.iter().rev().find(|c| c.offset <= at) {
        Some(c) => {
            let f = ((at - c.offset) as f64 / (c.end - c.offset).max(1) as f64).min(1.0);
            (c.media.0 + (c.media.1 - c.media.0) * f, c.unix)
        }
        None => chunks.front().map_or((0.0, 0.0), |c| (c.media.0, c.unix)),
    }
}

/// `<pid>.<start time>` of a running process (from `/proc/<pid>/stat`): the pair names one
/// process, where a pid alone may be reused (pid 1 in every container start).
fn process_tag(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces and parentheses); the start time is
    // field 22 of the line, the 20th after the name.
    let rest = &stat[stat.rfind(')')? + 1..];
    let start = rest.split_whitespace().nth(19)?;
    Some(format!("{pid}.{start}"))
}

/// A directory name for a session's spill: its id and a per-process sequence number.
pub fn spill_name(content_id: &str, sequence: u64) -> String {
    let safe: String = content_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(64)
        .collect();
    format!("{safe}-{sequence}")
}

#[cfg(test)]
mod tests;
