//! `GET /playlist.m3u` (or `/playlist.m3u8`): every channel of `acestream.channels` as an M3U a
//! TV app or player opens, each entry an absolute URL through this proxy (built from
//! `public_url`, else the request's `Host`), with the list's own attributes (`tvg-id`,
//! `tvg-logo`, `group-title`, …). `?format=hls` gives HLS playlist URLs instead of TS ones;
//! `?group=<name>` keeps one group, `?alive=1` the channels the checker last found playing. With signed stream URLs, each entry carries a token for its
//! own id (`playlist_token_ttl`), and the playlist itself needs the admin token or a token signed
//! for the id `playlist`. With DVR on, entries carry the catch-up attributes TV apps read
//! (`catchup="append"`, `catchup-source="&start={utc}"`). `GET /proxy/channels` (admin) shows the
//! merged list and each source's state, skipped lines included.

use super::{write_error, write_json};
use crate::access::Access;
use crate::channels::{Channel, Channels};
use crate::config::Config;
use crate::engines::ContentKind;
use crate::error::EdgeError;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session as HttpSession;
use std::fmt::Write as _;
use std::sync::Arc;

/// The id a playlist token is signed for.
pub const PLAYLIST_TOKEN_ID: &str = "playlist";

/// What kind of URL each entry gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// `/ace/getstream` (MPEG-TS).
    Ts,
    /// `/ace/manifest.m3u8` (HLS).
    Hls,
}

/// Answers `/playlist.m3u`. `admin_ok`: the request carries the admin token.
pub async fn serve(
    s: &mut HttpSession,
    channels: &Arc<Channels>,
    access: &Access,
    config: &Config,
    admin_ok: bool,
) -> pingora::Result<()> {
    let query = Query::of(s);
    let param = |name: &str| query.param(name);
    if access.signs_streams() && !admin_ok {
        if let Err(e) = access.check_stream_token(PLAYLIST_TOKEN_ID, query.text()) {
            return write_error(s, &e).await;
        }
    }
    let format = match param("format").as_deref() {
        None | Some("ts") => Format::Ts,
        Some("hls") => Format::Hls,
        Some(other) => {
            let e = EdgeError::BadRequest(format!("format must be ts or hls, not {other:?}"));
            return write_error(s, &e).await;
        }
    };
    let alive_only = param("alive").is_some_and(|v| v != "0");
    // The channel settings of now (a SIGHUP may have changed them).
    let catalog = channels.current();
    let settings = catalog.config();
    if alive_only && settings.check_interval.is_zero() {
        let e = EdgeError::BadRequest(
            "alive=1 needs the channel checker, which is off (acestream.channels.check_interval: 0)"
                .into(),
        );
        return write_error(s, &e).await;
    }
    if !channels.configured() {
        let e = EdgeError::NotFound("no channels are configured (acestream.channels)".into());
        return write_error(s, &e).await;
    }
    let base = match public_base(s, config) {
        Ok(b) => b,
        Err(e) => return write_error(s, &e).await,
    };
    let group = param("group");
    let list = channels.list().await;
    let liveness = channels.liveness();
    let listed = list.iter().filter(|c| {
        group
            .as_deref()
            .is_none_or(|g| c.attr("group-title") == Some(g))
            && (!alive_only || liveness.of(&c.key).is_some_and(|h| h.alive))
    });
    let catchup = (!config.dvr.dvr_window.is_zero()).then(|| {
        let days = config.dvr.dvr_window.as_secs().div_ceil(86_400).max(1);
        format!(" catchup=\"append\" catchup-source=\"&start={{utc}}\" catchup-days=\"{days}\"")
    });
    let ttl = settings.playlist_token_ttl;
    let mut out = String::from("#EXTM3U");
    if !settings.epg.is_empty() {
        // The guide needs what this playlist needed: its own token, or a fresh one for an admin.
        let token = match (access.signs_streams(), admin_ok) {
            (false, _) => None,
            (true, false) => query.param("token"),
            (true, true) => access.sign_stream(PLAYLIST_TOKEN_ID, ttl),
        }
        .map_or(String::new(), |t| format!("?token={t}"));
        let _ = write!(
            out,
            " url-tvg=\"{base}/epg.xml{token}\" x-tvg-url=\"{base}/epg.xml{token}\""
        );
    }
    out.push('\n');
    for c in listed {
        let token = access
            .sign_stream(&c.key.value, ttl)
            .map_or(String::new(), |t| format!("&token={t}"));
        let _ = writeln!(
            out,
            "#EXTINF:-1{}{},{}",
            attributes(c),
            catchup.as_deref().unwrap_or(""),
            c.name.replace(['\n', '\r'], " ")
        );
        let _ = writeln!(out, "{}", entry_url(&base, c, format, &token));
    }
    write_m3u(s, out).await
}

/// Sends an M3U playlist (not cached: it changes with its sources).
pub(super) async fn write_m3u(s: &mut HttpSession, text: String) -> pingora::Result<()> {
    let mut h = ResponseHeader::build(200, Some(4))?;
    h.insert_header("Content-Type", "audio/x-mpegurl; charset=utf-8")?;
    h.insert_header("Content-Length", text.len().to_string())?;
    h.insert_header("Cache-Control", "no-cache")?;
    h.insert_header("Access-Control-Allow-Origin", "*")?;
    let head_only = s.req_header().method == http::Method::HEAD;
    s.write_response_header(Box::new(h), head_only).await?;
    if head_only {
        return Ok(());
    }
    s.write_response_body(Some(Bytes::from(text)), true).await
}

/// The request's query, and its parameters by name.
pub(super) struct Query(Option<String>);

impl Query {
    /// The query of `s`.
    pub(super) fn of(s: &HttpSession) -> Self {
        Query(s.req_header().uri.query().map(str::to_string))
    }

    /// The whole query.
    pub(super) fn text(&self) -> Option<&str> {
        self.0.as_deref()
    }

    /// Parameter `name`, decoded.
    pub(super) fn param(&self, name: &str) -> Option<String> {
        self.0
            .as_deref()
            .and_then(|q| super::getstream::query_param(q, name))
    }
}

/// Where the absolute URLs of a playlist or a search answer start: `public_url`, else `http://`
/// and the request's `Host`.
pub(super) fn public_base(s: &HttpSession, config: &Config) -> Result<String, EdgeError> {
    config
        .public_url
        .clone()
        .or_else(|| super::admin::request_host(s).map(|h| format!("http://{h}")))
        .ok_or_else(|| {
            EdgeError::BadRequest(
                "no Host header to build URLs from (set acestream.public_url)".into(),
            )
        })
}

/// A channel's `#EXTINF` attributes, as ` key="value"` pairs (quotes in values dropped).
fn attributes(c: &Channel) -> String {
    let mut out = String::new();
    for (k, v) in &c.attrs {
        let _ = write!(out, " {k}=\"{}\"", v.replace('"', ""));
    }
    out
}

/// A channel's URL through the proxy.
fn entry_url(base: &str, c: &Channel, format: Format, token: &str) -> String {
    let path = match format {
        Format::Ts => "/ace/getstream",
        Format::Hls => "/ace/manifest.m3u8",
    };
    let param = match c.key.kind {
        ContentKind::ContentId => "id",
        ContentKind::Infohash => "infohash",
    };
    format!("{base}{path}?{param}={}{token}", c.key.value)
}

/// `/proxy/channels`: the merged list and the sources.
#[derive(serde::Serialize)]
struct ChannelsView {
    count: usize,
    /// Channel-checker passes finished.
    check_passes: u64,
    channels: Vec<ChannelView>,
    sources: Vec<crate::channels::SourceView>,
    guides: Vec<crate::channels::epg::GuideSourceView>,
}

/// One channel with what the checker found.
#[derive(serde::Serialize)]
struct ChannelView {
    #[serde(flatten)]
    channel: Channel,
    /// The checker's last finding (`null` before it checked the channel).
    health: Option<crate::channels::liveness::ChannelHealth>,
}

/// Answers `/proxy/channels` (after the admin check).
pub async fn channels_json(s: &mut HttpSession, channels: &Arc<Channels>) -> pingora::Result<()> {
    let list = channels.list().await;
    let liveness = channels.liveness();
    let view = ChannelsView {
        count: list.len(),
        check_passes: liveness.passes(),
        channels: list
            .into_iter()
            .map(|c| ChannelView {
                health: liveness.of(&c.key),
                channel: c,
            })
            .collect(),
        sources: channels.sources(),
        guides: channels.guides().sources(),
    };
    match serde_json::to_vec(&view) {
        Ok(body) => write_json(s, 200, body).await,
        Err(e) => write_error(s, &EdgeError::Internal(e.to_string())).await,
    }
}
