//! Channel lists: the M3U sources and inline entries of `acestream.channels`, merged into one
//! list of channels that `/playlist.m3u` serves through the proxy and `/proxy/channels` shows.
//!
//! **Who owns what.** [`Channels`] (one per process) holds the current [`Catalog`], which owns
//! every source's last good list; a reload (SIGHUP) puts a new catalogue in its place that keeps
//! what the unchanged sources hold. A source (an `http://` URL or a file) is loaded when first
//! asked for, then again when a request finds it older than its `refresh`: that request is
//! answered from the list held, and the load runs beside it (one at a time per source). A load that fails (unreachable, not `200`, over
//! `max_source_bytes`, past `fetch_timeout`, or nothing in it that is a list) keeps the last
//! good list and says why in `/proxy/channels` and the log. Merging: inline entries first, then
//! the sources in order; a channel is its id, so a later entry of the same id adds only the
//! attributes the channel lacks (the first name wins).

pub mod epg;
mod fetch;
pub mod liveness;
pub mod m3u;

use crate::config::{ChannelSource, ChannelsConfig};
use crate::engines::ContentKey;
use crate::sync::Lock;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One channel of the merged list.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Channel {
    /// Its name.
    pub name: String,
    /// What it plays (`<hex>` or `infohash:<hex>`).
    #[serde(serialize_with = "as_text")]
    pub key: ContentKey,
    /// Its attributes (`tvg-id`, `tvg-logo`, `group-title`, …), in order.
    #[serde(serialize_with = "as_map")]
    pub attrs: Vec<(String, String)>,
    /// Where it came from: `list` or the source's URL or path.
    pub source: String,
}

impl Channel {
    /// The value of attribute `key`.
    pub fn attr(&self, key: &str) -> Option<&str> {
        m3u::find(&self.attrs, key)
    }
}

fn as_text<S: serde::Serializer>(key: &ContentKey, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(key)
}

fn as_map<S: serde::Serializer>(attrs: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(attrs.iter().map(|(k, v)| (k, v)))
}

/// A source as `/proxy/channels` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SourceView {
    /// Its URL or path.
    pub source: String,
    /// Entries of its last good list.
    pub entries: usize,
    /// Lines of its last good list that were skipped, and why.
    pub skipped: Vec<m3u::Skipped>,
    /// When its last good list was loaded (unix seconds).
    pub loaded_at: Option<u64>,
    /// Why its last load failed (empty once one succeeds).
    pub error: Option<String>,
}

/// What one source holds.
#[derive(Debug, Default, Clone)]
struct SourceState {
    list: Option<Arc<m3u::Parsed>>,
    loaded: Option<(Instant, u64)>,
    /// When the last load (good or not) ended.
    tried: Option<Instant>,
    error: Option<String>,
    loading: bool,
}

/// The channels of the process (see the module docs): the current [`Catalog`], replaced whole
/// by a reload (SIGHUP), and what the channel checker found, which outlives reloads.
#[derive(Debug)]
pub struct Channels {
    current: Mutex<Arc<Catalog>>,
    /// What the channel checker found.
    liveness: Arc<liveness::Liveness>,
    /// Signals a reload (to the checker, whose interval may have changed).
    reloaded: tokio::sync::Notify,
}

impl Channels {
    /// The channels `config` describes; nothing is loaded yet.
    pub fn new(config: ChannelsConfig) -> Arc<Self> {
        Arc::new(Channels {
            current: Mutex::new(Catalog::new(config, None)),
            liveness: Default::default(),
            reloaded: tokio::sync::Notify::new(),
        })
    }

    /// The catalogue requests use now.
    pub fn current(&self) -> Arc<Catalog> {
        self.current.locked().clone()
    }

    /// Takes a new `acestream.channels` (SIGHUP): a source or guide whose URL (and headers) stays
    /// keeps what it holds, and loads again only when its `refresh` says so; new ones load on
    /// the next request; requests being answered finish with the catalogue they started with.
    pub fn reload(&self, config: ChannelsConfig) {
        let mut current = self.current.locked();
        if current.config == config {
            return;
        }
        let next = Catalog::new(config, Some(&current));
        log::info!(
            "channels: {} sources, {} inline entries, {} guides (reloaded)",
            next.config.sources.len(),
            next.config.list.len(),
            next.config.epg.len()
        );
        *current = next;
        drop(current);
        self.reloaded.notify_waiters();
    }

    /// Resolves at the next reload (from its creation on, polled or not).
    pub fn next_reload(&self) -> tokio::sync::futures::Notified<'_> {
        self.reloaded.notified()
    }

    /// What the channel checker found.
    pub fn liveness(&self) -> &Arc<liveness::Liveness> {
        &self.liveness
    }

    /// The guides (`acestream.channels.epg`) now.
    pub fn guides(&self) -> Arc<epg::Guides> {
        self.current().guides.clone()
    }

    /// Whether any channel is configured.
    pub fn configured(&self) -> bool {
        self.current().configured()
    }

    /// The merged list (see [`Catalog::list`]).
    pub async fn list(&self) -> Vec<Channel> {
        self.current().list().await
    }

    /// Each listed channel's name by its key, from what is held now (nothing is loaded).
    pub fn names_now(&self) -> std::collections::HashMap<String, String> {
        self.current()
            .merged()
            .into_iter()
            .map(|c| (c.key.to_string(), c.name))
            .collect()
    }

    /// The sources as `/proxy/channels` shows them.
    pub fn sources(&self) -> Vec<SourceView> {
        self.current().sources()
    }
}

/// One configuration's channels: its sources' lists and its guides.
#[derive(Debug)]
pub struct Catalog {
    config: ChannelsConfig,
    sources: Vec<Mutex<SourceState>>,
    /// Signals a finished load (to the requests that wait for a first one).
    loaded: tokio::sync::Notify,
    /// The guides (`epg`) of these channels.
    guides: Arc<epg::Guides>,
}

impl Catalog {
    /// The catalogue of `config`, keeping what `before` holds for the sources and guides that
    /// did not change.
    fn new(config: ChannelsConfig, before: Option<&Catalog>) -> Arc<Self> {
        let sources = config
            .sources
            .iter()
            .map(|c| {
                let kept = before.and_then(|b| {
                    let i = b
                        .config
                        .sources
                        .iter()
                        .position(|o| o.location == c.location && o.headers == c.headers)?;
                    let mut st = b.sources[i].locked().clone();
                    st.loading = false;
                    Some(st)
                });
                Mutex::new(kept.unwrap_or_default())
            })
            .collect();
        let guides = match before {
            Some(b)
                if b.config.epg == config.epg
                    && b.config.max_guide_bytes == config.max_guide_bytes
                    && b.config.fetch_timeout == config.fetch_timeout =>
            {
                b.guides.clone()
            }
            _ => epg::Guides::new(&config),
        };
        Arc::new(Catalog {
            guides,
            config,
            sources,
            loaded: tokio::sync::Notify::new(),
        })
    }

    /// Its configuration.
    pub fn config(&self) -> &ChannelsConfig {
        &self.config
    }

    /// Whether any channel is configured.
    pub fn configured(&self) -> bool {
        !self.config.sources.is_empty() || !self.config.list.is_empty()
    }

    /// The merged list: loads what was never loaded (waiting for it, within `fetch_timeout`), and
    /// starts a refresh of each source past its `refresh` (answering from what is held).
    pub async fn list(self: &Arc<Self>) -> Vec<Channel> {
        let deadline = tokio::time::Instant::now() + self.config.fetch_timeout;
        loop {
            let notified = self.loaded.notified();
            let mut waiting = false;
            for i in 0..self.sources.len() {
                let (due, first) = {
                    let mut st = self.sources[i].locked();
                    let refresh = self.config.sources[i].refresh;
                    let stale = st.tried.is_none_or(|t| t.elapsed() >= refresh);
                    let due = stale && !st.loading;
                    if due {
                        st.loading = true;
                    }
                    (due, st.list.is_none() && st.tried.is_none())
                };
                if due {
                    let me = self.clone();
                    tokio::spawn(async move { me.load(i).await });
                }
                waiting |= first;
            }
            if !waiting || tokio::time::Instant::now() >= deadline {
                return self.merged();
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    /// The merged list of what is held now.
    fn merged(&self) -> Vec<Channel> {
        let mut out: Vec<Channel> = Vec::new();
        let mut index: std::collections::HashMap<String, usize> = Default::default();
        let mut add = |entry: Channel| match index.get(&entry.key.to_string()) {
            Some(&i) => {
                let have = &mut out[i];
                for (k, v) in entry.attrs {
                    if m3u::find(&have.attrs, &k).is_none() {
                        have.attrs.push((k, v));
                    }
                }
            }
            None => {
                index.insert(entry.key.to_string(), out.len());
                out.push(entry);
            }
        };
        for e in &self.config.list {
            add(Channel {
                name: e.name.clone(),
                key: e.key.clone(),
                attrs: e.attrs.clone(),
                source: "list".into(),
            });
        }
        for (i, source) in self.config.sources.iter().enumerate() {
            let list = self.sources[i].locked().list.clone();
            for e in list.iter().flat_map(|l| l.entries.iter()) {
                add(Channel {
                    name: e.name.clone(),
                    key: e.key.clone(),
                    attrs: e.attrs.clone(),
                    source: source.location.clone(),
                });
            }
        }
        out
    }

    /// The sources as `/proxy/channels` shows them.
    pub fn sources(&self) -> Vec<SourceView> {
        self.config
            .sources
            .iter()
            .zip(&self.sources)
            .map(|(c, st)| {
                let st = st.locked();
                SourceView {
                    source: c.location.clone(),
                    entries: st.list.as_ref().map_or(0, |l| l.entries.len()),
                    skipped: st.list.as_ref().map_or(Vec::new(), |l| l.skipped.clone()),
                    loaded_at: st.loaded.map(|(_, unix)| unix),
                    error: st.error.clone(),
                }
            })
            .collect()
    }

    /// Loads source `i` and keeps its list if it is good.
    async fn load(&self, i: usize) {
        let source = &self.config.sources[i];
        let fetched = tokio::time::timeout(self.config.fetch_timeout, self.fetch(source))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.config.fetch_timeout)));
        let parsed = fetched.and_then(|text| {
            let p = m3u::parse(&text);
            if p.entries.is_empty() {
                Err(format!(
                    "no channel in it ({} lines skipped)",
                    p.skipped.len()
                ))
            } else {
                Ok(p)
            }
        });
        let mut st = self.sources[i].locked();
        st.loading = false;
        st.tried = Some(Instant::now());
        match parsed {
            Ok(p) => {
                if !p.skipped.is_empty() {
                    log::warn!(
                        "channel source {}: {} lines skipped (see /proxy/channels), the first at line {}: {}",
                        source.location,
                        p.skipped.len(),
                        p.skipped[0].line,
                        p.skipped[0].reason
                    );
                }
                log::info!(
                    "channel source {}: {} channels",
                    source.location,
                    p.entries.len()
                );
                let unix = unix_seconds(SystemTime::now());
                st.list = Some(Arc::new(p));
                st.loaded = Some((Instant::now(), unix));
                st.error = None;
            }
            Err(e) => {
                log::warn!(
                    "channel source {}: {e}; {}",
                    source.location,
                    if st.list.is_some() {
                        "keeping its last good list"
                    } else {
                        "no list from it yet"
                    }
                );
                st.error = Some(e);
            }
        }
        drop(st);
        self.loaded.notify_waiters();
    }

    /// The text of a source, within `max_source_bytes`.
    async fn fetch(&self, source: &ChannelSource) -> Result<String, String> {
        let limit = self.config.max_source_bytes;
        let bytes = match fetch::is_url(&source.location) {
            true => {
                let timeout = self.config.fetch_timeout;
                fetch_http(&source.location, limit, timeout, &source.headers).await?
            }
            false => {
                let path = source.location.clone();
                tokio::task::spawn_blocking(move || read_file(&path, limit))
                    .await
                    .map_err(|e| e.to_string())??
            }
        };
        String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())
    }
}

/// `GET <url>` (`http://` or `https://`), refusing a body over `limit` bytes.
async fn fetch_http(
    url: &str,
    limit: u64,
    timeout: Duration,
    headers: &crate::config::Headers,
) -> Result<Vec<u8>, String> {
    let mut r = fetch::open(url, timeout, headers).await?;
    if r.header("content-length")
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > limit)
    {
        return Err(format!("larger than max_source_bytes ({limit})"));
    }
    r.read_to_end(limit as usize)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => format!("larger than max_source_bytes ({limit})"),
            _ => e.to_string(),
        })
}

/// `t` in seconds since the Unix epoch.
pub(crate) fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A file's bytes, refusing one over `limit`.
fn read_file(path: &str, limit: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
    let mut out = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("{path}: {e}"))?;
    if out.len() as u64 > limit {
        return Err(format!("larger than max_source_bytes ({limit})"));
    }
    Ok(out)
}
