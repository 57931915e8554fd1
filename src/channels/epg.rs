//! XMLTV guides: the `acestream.channels.epg` sources, merged into the one guide `/epg.xml`
//! serves, kept to the channels' `tvg-id`s (or whole).
//!
//! **Who owns what.** [`Guides`] (one per process, beside [`super::Channels`]) owns each source's
//! last good guide, kept gzip-compressed (a 50 MB guide holds ~5 MB), and the guides it last
//! built for a request. A source is loaded like a channel list: by the first request that
//! needs it, then again by a request that finds it older than its `refresh`, answered from what
//! is held meanwhile. A load streams: the bytes go from the socket or file through the gzip
//! decoder (when the source is gzip) and the XML parser into the compressed copy, so a guide is
//! never held unpacked, and one past `max_guide_bytes` (fetched or unpacked) is refused as soon
//! as it passes it. A load that fails (unreachable, not `200`, too large, a piece slower than
//! `fetch_timeout`, not XMLTV) keeps the last good guide. A built guide (channels first, then
//! programmes, each `<channel>` id once, first source first) is kept until a source or the set
//! of `tvg-id`s changes.

use crate::config::{ChannelSource, ChannelsConfig};
use crate::sync::Lock;
use bytes::Bytes;
use flate2::{bufread::MultiGzDecoder, write::GzEncoder, Compression};
use quick_xml::events::Event;
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// One guide as served: the XML, its gzip, and its validators.
#[derive(Debug)]
pub struct Guide {
    /// The XMLTV document.
    pub xml: Bytes,
    /// The same, gzip-compressed.
    pub gz: Bytes,
    /// Its strong `ETag` (quoted).
    pub etag: String,
    /// When the newest guide in it was loaded.
    pub modified: SystemTime,
    /// `<channel>` and `<programme>` elements in it.
    pub counts: (usize, usize),
}

/// A guide source as `/proxy/channels` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GuideSourceView {
    /// Its URL or path.
    pub source: String,
    /// `<channel>` elements of its last good guide.
    pub channels: usize,
    /// `<programme>` elements of its last good guide.
    pub programmes: usize,
    /// Bytes its last good guide takes here (gzip).
    pub held_bytes: usize,
    /// When its last good guide was loaded (unix seconds).
    pub loaded_at: Option<u64>,
    /// Why its last load failed (empty once one succeeds).
    pub error: Option<String>,
}

/// What one source holds.
#[derive(Debug, Default)]
struct SourceState {
    held: Option<Arc<Ingested>>,
    loaded_at: Option<SystemTime>,
    tried: Option<Instant>,
    error: Option<String>,
    loading: bool,
}

/// A source's last good guide.
#[derive(Debug)]
struct Ingested {
    /// The document, gzip-compressed.
    gz: Vec<u8>,
    channels: usize,
    programmes: usize,
}

/// What a built guide was built from: the sources' load times and the `tvg-id`s (`None`: all).
#[derive(Debug, Clone, PartialEq)]
struct BuildKey {
    loads: Vec<Option<SystemTime>>,
    ids: Option<Vec<String>>,
}

/// Why no guide can be served.
#[derive(Debug, thiserror::Error)]
pub enum GuideError {
    /// No `epg` source is configured.
    #[error("no guide is configured (acestream.channels.epg)")]
    NotConfigured,
    /// Every source failed and none was ever loaded.
    #[error("no guide could be loaded: {0}")]
    Unavailable(String),
}

/// The guides of the process (see the module docs).
#[derive(Debug)]
pub struct Guides {
    sources: Vec<ChannelSource>,
    max_bytes: u64,
    piece_timeout: Duration,
    state: Vec<Mutex<SourceState>>,
    built: Mutex<Vec<(BuildKey, Arc<Guide>)>>,
    loaded: tokio::sync::Notify,
}

impl Guides {
    /// The guides `config` names; nothing is loaded yet.
    pub fn new(config: &ChannelsConfig) -> Arc<Self> {
        Arc::new(Guides {
            sources: config.epg.clone(),
            max_bytes: config.max_guide_bytes,
            piece_timeout: config.fetch_timeout,
            state: config.epg.iter().map(|_| Mutex::default()).collect(),
            built: Mutex::new(Vec::new()),
            loaded: tokio::sync::Notify::new(),
        })
    }

    /// Whether any guide is configured.
    pub fn configured(&self) -> bool {
        !self.sources.is_empty()
    }

    /// The guide kept to `ids` (lower-cased `tvg-id`s; `None`: everything), loading sources
    /// never loaded (waiting for them) and refreshing stale ones beside the answer.
    pub async fn guide(
        self: &Arc<Self>,
        ids: Option<HashSet<String>>,
    ) -> Result<Arc<Guide>, GuideError> {
        if !self.configured() {
            return Err(GuideError::NotConfigured);
        }
        self.refresh_and_wait().await;
        let held: Vec<Option<Arc<Ingested>>> =
            self.state.iter().map(|s| s.locked().held.clone()).collect();
        if held.iter().all(Option::is_none) {
            let why: Vec<String> = self
                .sources
                .iter()
                .zip(&self.state)
                .map(|(c, s)| {
                    let e = s
                        .locked()
                        .error
                        .clone()
                        .unwrap_or_else(|| "not loaded".into());
                    format!("{}: {e}", c.location)
                })
                .collect();
            return Err(GuideError::Unavailable(why.join("; ")));
        }
        let mut sorted: Option<Vec<String>> = ids.as_ref().map(|s| s.iter().cloned().collect());
        if let Some(v) = &mut sorted {
            v.sort();
        }
        let key = BuildKey {
            loads: self.state.iter().map(|s| s.locked().loaded_at).collect(),
            ids: sorted,
        };
        if let Some((_, g)) = self.built.locked().iter().find(|(k, _)| *k == key) {
            return Ok(g.clone());
        }
        let modified = key.loads.iter().flatten().max().copied();
        let built = tokio::task::spawn_blocking(move || {
            let docs: Vec<&[u8]> = held.iter().flatten().map(|h| h.gz.as_slice()).collect();
            build(&docs, ids.as_ref())
        })
        .await
        .map_err(|e| GuideError::Unavailable(e.to_string()))?
        .map_err(GuideError::Unavailable)?;
        let guide = Arc::new(Guide {
            etag: etag(&built.xml),
            xml: built.xml.into(),
            gz: built.gz.into(),
            modified: modified.unwrap_or(SystemTime::UNIX_EPOCH),
            counts: built.counts,
        });
        let mut cache = self.built.locked();
        // One filtered and one whole guide are what requests ask for; older builds go.
        cache.retain(|(k, _)| k.ids.is_some() != key.ids.is_some() && k.loads == key.loads);
        cache.push((key, guide.clone()));
        Ok(guide)
    }

    /// The sources as `/proxy/channels` shows them.
    pub fn sources(&self) -> Vec<GuideSourceView> {
        self.sources
            .iter()
            .zip(&self.state)
            .map(|(c, s)| {
                let s = s.locked();
                GuideSourceView {
                    source: c.location.clone(),
                    channels: s.held.as_ref().map_or(0, |h| h.channels),
                    programmes: s.held.as_ref().map_or(0, |h| h.programmes),
                    held_bytes: s.held.as_ref().map_or(0, |h| h.gz.len()),
                    loaded_at: s.loaded_at.map(super::unix_seconds),
                    error: s.error.clone(),
                }
            })
            .collect()
    }

    /// Starts the loads that are due and waits (within a load's time) for sources never tried.
    async fn refresh_and_wait(self: &Arc<Self>) {
        // A first load may stream a whole guide: it gets a minute before the request goes on
        // without it (and is answered from what other sources hold, or 503).
        let deadline =
            tokio::time::Instant::now() + self.piece_timeout.max(Duration::from_secs(60));
        loop {
            let notified = self.loaded.notified();
            let mut waiting = false;
            for i in 0..self.sources.len() {
                let (due, first) = {
                    let mut st = self.state[i].locked();
                    let stale = st
                        .tried
                        .is_none_or(|t| t.elapsed() >= self.sources[i].refresh);
                    let due = stale && !st.loading;
                    if due {
                        st.loading = true;
                    }
                    (due, st.tried.is_none())
                };
                if due {
                    let me = self.clone();
                    tokio::spawn(async move { me.load(i).await });
                }
                waiting |= first;
            }
            if !waiting || tokio::time::Instant::now() >= deadline {
                return;
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    /// Loads source `i` and keeps its guide if it is good.
    async fn load(&self, i: usize) {
        let source = &self.sources[i];
        let result = self.fetch(source).await;
        let mut st = self.state[i].locked();
        st.loading = false;
        st.tried = Some(Instant::now());
        match result {
            Ok(g) => {
                log::info!(
                    "guide {}: {} channels, {} programmes ({} bytes held)",
                    source.location,
                    g.channels,
                    g.programmes,
                    g.gz.len()
                );
                st.held = Some(Arc::new(g));
                st.loaded_at = Some(SystemTime::now());
                st.error = None;
            }
            Err(e) => {
                log::warn!(
                    "guide {}: {e}; {}",
                    source.location,
                    if st.held.is_some() {
                        "keeping its last good guide"
                    } else {
                        "no guide from it yet"
                    }
                );
                st.error = Some(e);
            }
        }
        drop(st);
        self.loaded.notify_waiters();
    }

    /// Streams a source through [`ingest`].
    async fn fetch(&self, source: &ChannelSource) -> Result<Ingested, String> {
        let limit = self.max_bytes;
        if !super::fetch::is_url(&source.location) {
            let path = source.location.clone();
            return tokio::task::spawn_blocking(move || {
                let file = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
                if file.metadata().is_ok_and(|m| m.len() > limit) {
                    return Err(too_large(limit));
                }
                ingest(file, limit)
            })
            .await
            .map_err(|e| e.to_string())?;
        };
        let timeout = self.piece_timeout;
        let mut response = super::fetch::open(&source.location, timeout, &source.headers).await?;
        if response
            .header("content-length")
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > limit)
        {
            return Err(too_large(limit));
        }
        // The parser runs on a blocking thread and reads what the socket gives through a
        // channel of a few pieces: the socket is read only as fast as the guide is parsed.
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let parser = tokio::task::spawn_blocking(move || {
            ingest(
                Pieces {
                    rx,
                    piece: Bytes::new(),
                },
                limit,
            )
        });
        loop {
            let piece = match tokio::time::timeout(self.piece_timeout, response.next_chunk()).await
            {
                Err(_) => {
                    drop(tx);
                    let _ = parser.await;
                    return Err(format!(
                        "nothing came for {:?} (fetch_timeout)",
                        self.piece_timeout
                    ));
                }
                Ok(Err(e)) => {
                    drop(tx);
                    let _ = parser.await;
                    return Err(e.to_string());
                }
                Ok(Ok(None)) => break,
                Ok(Ok(Some(p))) => p,
            };
            if tx.send(piece).await.is_err() {
                // The parser stopped (an error it reports below).
                break;
            }
        }
        drop(tx);
        parser.await.map_err(|e| e.to_string())?
    }
}

/// The bytes a socket gave, as a `Read` for the parser's thread.
struct Pieces {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    piece: Bytes,
}

impl Read for Pieces {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.piece.is_empty() {
            match self.rx.blocking_recv() {
                Some(p) => self.piece = p,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.piece.len());
        buf[..n].copy_from_slice(&self.piece[..n]);
        let _ = self.piece.split_to(n);
        Ok(n)
    }
}

/// A reader that fails once more than `left` bytes passed.
struct Limited<R> {
    inner: R,
    left: u64,
    limit: u64,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                too_large(self.limit),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn limited<R: Read>(inner: R, limit: u64) -> Limited<R> {
    Limited {
        inner,
        left: limit,
        limit,
    }
}

fn too_large(limit: u64) -> String {
    format!("larger than max_guide_bytes ({limit})")
}

/// A reader that also writes what it reads into `copy`.
struct Tee<R, W> {
    inner: R,
    copy: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// The XML of a source (gzip or not, within `limit` bytes both ways), checked to be XMLTV as it
/// passes, kept gzip-compressed.
fn ingest(source: impl Read, limit: u64) -> Result<Ingested, String> {
    let mut input = BufReader::new(limited(source, limit));
    let gzip = input
        .fill_buf()
        .map_err(|e| e.to_string())?
        .starts_with(&[0x1f, 0x8b]);
    let xml: Box<dyn Read> = if gzip {
        Box::new(limited(MultiGzDecoder::new(input), limit))
    } else {
        Box::new(input)
    };
    let mut tee = Tee {
        inner: xml,
        copy: GzEncoder::new(Vec::new(), Compression::fast()),
    };
    let mut counts = (0, 0);
    walk(BufReader::new(&mut tee), |top, _| {
        match top {
            Top::Channel(_) => counts.0 += 1,
            Top::Programme(_) => counts.1 += 1,
            Top::Other => {}
        }
        false
    })?;
    let gz = tee.copy.finish().map_err(|e| e.to_string())?;
    Ok(Ingested {
        gz,
        channels: counts.0,
        programmes: counts.1,
    })
}

/// A child of `<tv>`, as [`walk`] shows it.
enum Top {
    /// `<channel id=…>`.
    Channel(String),
    /// `<programme channel=…>`.
    Programme(String),
    /// Anything else.
    Other,
}

/// Parses an XMLTV document, calling `visit` for each child of `<tv>` with its events; the
/// element's events go to `out` when `visit` says to keep it. Fails on anything that is not
/// well-formed XML with a `<tv>` root.
fn walk(
    input: impl BufRead,
    mut visit: impl FnMut(&Top, &mut Vec<Event<'static>>) -> bool,
) -> Result<(), String> {
    let mut reader = quick_xml::Reader::from_reader(input);
    let mut buf = Vec::new();
    let mut depth = 0usize;
    let mut root = false;
    let mut element: Vec<Event<'static>> = Vec::new();
    let mut current = Top::Other;
    let at = |r: &quick_xml::Reader<_>| r.buffer_position();
    loop {
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|e| format!("not well-formed XML at byte {}: {e}", at(&reader)))?;
        match &event {
            Event::Eof => {
                if !root {
                    return Err("no <tv> element: not an XMLTV guide".into());
                }
                if depth != 0 {
                    return Err("the document ends inside an element".into());
                }
                return Ok(());
            }
            Event::Start(e) | Event::Empty(e) if depth == 0 => {
                if e.name().as_ref() != b"tv" || root {
                    return Err(format!(
                        "the root element is <{}>, not <tv>: not an XMLTV guide",
                        String::from_utf8_lossy(e.name().as_ref())
                    ));
                }
                root = true;
                if matches!(event, Event::Start(_)) {
                    depth = 1;
                }
            }
            Event::Start(e) | Event::Empty(e) if depth == 1 => {
                let attr = |name: &str| {
                    e.try_get_attribute(name)
                        .ok()
                        .flatten()
                        .and_then(|a| a.normalized_value(quick_xml::XmlVersion::Implicit1_0).ok())
                        .map(|v| v.into_owned())
                        .unwrap_or_default()
                };
                current = match e.name().as_ref() {
                    b"channel" => Top::Channel(attr("id")),
                    b"programme" => Top::Programme(attr("channel")),
                    _ => Top::Other,
                };
                element.clear();
                element.push(event.clone().into_owned());
                if matches!(event, Event::Start(_)) {
                    depth = 2;
                } else {
                    visit(&current, &mut element);
                }
            }
            Event::Start(_) => {
                depth += 1;
                element.push(event.into_owned());
            }
            Event::End(_) => {
                depth = depth.saturating_sub(1);
                if depth >= 1 {
                    element.push(event.into_owned());
                }
                if depth == 1 {
                    visit(&current, &mut element);
                }
            }
            _ if depth >= 2 => element.push(event.into_owned()),
            _ => {}
        }
        buf.clear();
    }
}

/// A guide built from sources.
struct Built {
    xml: Vec<u8>,
    gz: Vec<u8>,
    counts: (usize, usize),
}

/// Merges the sources (gzip documents): every `<channel>` (each id once) and then every
/// `<programme>`, kept to `ids` (lower-cased) when given.
fn build(docs: &[&[u8]], ids: Option<&HashSet<String>>) -> Result<Built, String> {
    let keeps = |id: &str| ids.is_none_or(|ids| ids.contains(&id.to_lowercase()));
    let mut writer = quick_xml::Writer::new(Vec::new());
    writer
        .get_mut()
        .extend_from_slice(b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!DOCTYPE tv SYSTEM \"xmltv.dtd\">\n<tv generator-info-name=\"acestream-edge\">\n");
    let mut counts = (0, 0);
    let mut seen: HashSet<String> = HashSet::new();
    let mut error = None;
    for pass in [Pass::Channels, Pass::Programmes] {
        for doc in docs {
            walk(BufReader::new(MultiGzDecoder::new(*doc)), |top, events| {
                let keep = match (pass, top) {
                    (Pass::Channels, Top::Channel(id)) => keeps(id) && seen.insert(id.clone()),
                    (Pass::Programmes, Top::Programme(id)) => keeps(id),
                    _ => false,
                };
                if keep {
                    match pass {
                        Pass::Channels => counts.0 += 1,
                        Pass::Programmes => counts.1 += 1,
                    }
                    for e in events.drain(..) {
                        if let Err(e) = writer.write_event(e) {
                            error = Some(e.to_string());
                        }
                    }
                    writer.get_mut().push(b'\n');
                }
                keep
            })?;
        }
    }
    if let Some(e) = error {
        return Err(e);
    }
    writer.get_mut().extend_from_slice(b"</tv>\n");
    let xml = writer.into_inner();
    let mut gz = GzEncoder::new(Vec::with_capacity(xml.len() / 8), Compression::default());
    gz.write_all(&xml).map_err(|e| e.to_string())?;
    let gz = gz.finish().map_err(|e| e.to_string())?;
    Ok(Built { xml, gz, counts })
}

/// Which elements a pass of [`build`] takes.
#[derive(Debug, Clone, Copy)]
enum Pass {
    Channels,
    Programmes,
}

/// A strong `ETag` for `body`: the first 16 bytes of its SHA-256, hex, quoted.
fn etag(body: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(body);
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<tv source-info-name="test">
  <channel id="One.tv"><display-name>One &amp; Co</display-name></channel>
  <channel id="two.tv"><display-name>Two</display-name><icon src="http://l/2.png"/></channel>
  <programme start="20261202200000 +0000" stop="20261202210000 +0000" channel="One.tv"><title>A &lt;b&gt;</title></programme>
  <programme start="20261202200000 +0000" stop="20261202210000 +0000" channel="two.tv"><title><![CDATA[B]]></title></programme>
  <programme start="20261202210000 +0000" stop="20261202220000 +0000" channel="three.tv"><title>C</title></programme>
</tv>
"#;

    fn gz(text: &str) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(text.as_bytes()).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn ingest_counts_and_keeps_a_plain_or_gzip_source() {
        for input in [SOURCE.as_bytes().to_vec(), gz(SOURCE)] {
            let g = ingest(input.as_slice(), 1 << 20).unwrap();
            assert_eq!((g.channels, g.programmes), (2, 3));
            let mut back = String::new();
            MultiGzDecoder::new(g.gz.as_slice())
                .read_to_string(&mut back)
                .unwrap();
            assert_eq!(back, SOURCE);
        }
    }

    #[test]
    fn ingest_refuses_what_is_not_xmltv_or_too_large() {
        let e = |text: &[u8], limit| ingest(text, limit).err().unwrap();
        assert!(
            e(b"<rss></rss>", 1024).contains("not <tv>"),
            "{}",
            e(b"<rss></rss>", 1024)
        );
        assert!(e(b"<tv><channel></tv>", 1024).contains("not well-formed"));
        assert!(e(b"#EXTM3U\n", 1024).contains("no <tv>"));
        assert!(e(SOURCE.as_bytes(), 100).contains("max_guide_bytes"));
        // A small gzip that unpacks past the limit.
        let bomb = gz(&format!("<tv>{}</tv>", " ".repeat(1 << 20)));
        assert!(bomb.len() < 32 * 1024, "{}", bomb.len());
        assert!(e(&bomb, 64 * 1024).contains("max_guide_bytes"));
    }

    #[test]
    fn build_merges_filters_and_keeps_escapes() {
        let a = gz(SOURCE);
        let b = gz(
            r#"<tv><channel id="two.tv"><display-name>Two again</display-name></channel>
<channel id="four.tv"><display-name>Four</display-name></channel>
<programme start="20261202200000 +0000" channel="four.tv"><title>D</title></programme></tv>"#,
        );
        let all = build(&[&a, &b], None).unwrap();
        let text = String::from_utf8(all.xml.clone()).unwrap();
        assert_eq!(all.counts, (3, 4), "{text}");
        assert!(
            text.contains("One &amp; Co") && text.contains("A &lt;b&gt;"),
            "{text}"
        );
        assert!(
            text.contains("<![CDATA[B]]>") && !text.contains("Two again"),
            "{text}"
        );
        // Every channel comes before the first programme.
        assert!(text.rfind("<channel").unwrap() < text.find("<programme").unwrap());
        let ids: HashSet<String> = ["one.tv", "four.tv"].map(String::from).into();
        let kept = build(&[&a, &b], Some(&ids)).unwrap();
        let text = String::from_utf8(kept.xml.clone()).unwrap();
        assert_eq!(kept.counts, (2, 2), "{text}");
        assert!(
            !text.contains("two.tv") && !text.contains("three.tv"),
            "{text}"
        );
        // The built guide is itself XMLTV, and its gzip is the same document.
        let again = ingest(kept.gz.as_slice(), 1 << 20).unwrap();
        assert_eq!((again.channels, again.programmes), (2, 2));
        assert_ne!(etag(&all.xml), etag(&kept.xml));
    }
}
