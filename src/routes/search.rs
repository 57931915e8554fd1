//! `GET /ace/search?q=<text>&page=<n>&category=<c>`: the engines' public search
//! (spec/engine-api.md §14) through the proxy. A healthy engine (the best by score) is asked
//! `/search`; the answer is kept [`CACHE_FOR`] per (text, category, page), and returned as JSON
//! with each channel's sources, their availability and a URL through this proxy, or with
//! `format=m3u` as a playlist of those URLs (one entry per source, the available ones first).
//! With signed stream URLs, search needs the admin token (its URLs carry tokens).

use super::{write_error, write_json};
use crate::access::Access;
use crate::config::Config;
use crate::engines::EnginePool;
use crate::error::EdgeError;
use crate::sync::Lock;
use pingora::proxy::Session as HttpSession;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an engine's answer is reused. Fixed: a TV app pages through results within seconds,
/// while availability changes over minutes.
pub const CACHE_FOR: Duration = Duration::from_secs(30);

/// Answers kept at most. Fixed: bounds memory against many distinct queries.
const CACHE_ENTRIES: usize = 256;

/// Results per page asked of the engine.
const PAGE_SIZE: u32 = 50;

/// Longest wait for the engine's answer. Fixed: the engine answers from its own index.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(10);

/// What an answer is kept by: (text, lower case; category; page).
type AnswerKey = (String, String, u32);

/// The engines' answers, each with when it came.
#[derive(Debug, Default)]
pub struct SearchCache {
    answers: Mutex<HashMap<AnswerKey, (Instant, Arc<serde_json::Value>)>>,
}

/// One source of a found channel, as the proxy answers it.
#[derive(Debug, serde::Serialize)]
struct SourceView {
    infohash: String,
    /// The engine's status: 2 available, 1 no guarantee.
    status: i64,
    available: bool,
    availability: f64,
    categories: Vec<String>,
    /// Its stream through this proxy.
    url: String,
}

/// One found channel.
#[derive(Debug, serde::Serialize)]
struct ChannelView {
    name: String,
    icon: Option<String>,
    sources: Vec<SourceView>,
}

#[derive(Debug, serde::Serialize)]
struct SearchView {
    query: String,
    page: u32,
    total: u64,
    results: Vec<ChannelView>,
}

/// Answers `/ace/search`. `admin_ok`: the request carries the admin token.
pub async fn serve(
    s: &mut HttpSession,
    (engines, cache): (&EnginePool, &SearchCache),
    access: &Access,
    config: &Config,
    admin_ok: bool,
) -> pingora::Result<()> {
    let query = super::playlist::Query::of(s);
    let param = |name: &str| query.param(name);
    if access.signs_streams() && !admin_ok {
        return write_error(s, &EdgeError::Unauthorized).await;
    }
    let Some(text) = param("q")
        .map(|q| q.trim().to_string())
        .filter(|q| !q.is_empty())
    else {
        return write_error(
            s,
            &EdgeError::BadRequest("q (the text to search for) is missing".into()),
        )
        .await;
    };
    let page = match param("page").map(|p| p.parse::<u32>()) {
        None => 0,
        Some(Ok(p)) if p < 1000 => p,
        Some(_) => {
            return write_error(s, &EdgeError::BadRequest("page must be 0–999".into())).await
        }
    };
    let category = param("category").unwrap_or_default();
    let m3u = match param("format").as_deref() {
        None | Some("json") => false,
        Some("m3u") => true,
        Some(other) => {
            let e = EdgeError::BadRequest(format!("format must be json or m3u, not {other:?}"));
            return write_error(s, &e).await;
        }
    };
    let base = match super::playlist::public_base(s, config) {
        Ok(b) => b,
        Err(e) => return write_error(s, &e).await,
    };
    let answer = match cache.get_or_ask(engines, (&text, &category, page)).await {
        Ok(a) => a,
        Err(e) => return write_error(s, &e).await,
    };
    let view = view_of(&answer, (&text, page), |infohash| {
        let token = access
            .sign_stream(infohash, config.channels.playlist_token_ttl)
            .map_or(String::new(), |t| format!("&token={t}"));
        format!("{base}/ace/getstream?infohash={infohash}{token}")
    });
    if !m3u {
        return match serde_json::to_vec(&view) {
            Ok(body) => write_json(s, 200, body).await,
            Err(e) => write_error(s, &EdgeError::Internal(e.to_string())).await,
        };
    }
    let mut out = String::from("#EXTM3U\n");
    let mut sources: Vec<(&ChannelView, &SourceView)> = view
        .results
        .iter()
        .flat_map(|c| c.sources.iter().map(move |src| (c, src)))
        .collect();
    sources.sort_by_key(|(_, src)| !src.available);
    for (c, src) in sources {
        let logo = c.icon.as_deref().map_or(String::new(), |i| {
            format!(" tvg-logo=\"{}\"", i.replace('"', ""))
        });
        let group = src.categories.first().map_or(String::new(), |g| {
            format!(" group-title=\"{}\"", g.replace('"', ""))
        });
        let _ = writeln!(
            out,
            "#EXTINF:-1{logo}{group},{}",
            c.name.replace(['\n', '\r'], " ")
        );
        let _ = writeln!(out, "{}", src.url);
    }
    super::playlist::write_m3u(s, out).await
}

impl SearchCache {
    /// The engine's answer to (text, category, page): kept, or asked now.
    async fn get_or_ask(
        &self,
        engines: &EnginePool,
        (text, category, page): (&str, &str, u32),
    ) -> Result<Arc<serde_json::Value>, EdgeError> {
        let key = (text.to_lowercase(), category.to_string(), page);
        if let Some((at, v)) = self.answers.locked().get(&key) {
            if at.elapsed() < CACHE_FOR {
                return Ok(v.clone());
            }
        }
        let engine = engines.best().await?;
        let mut path = format!(
            "/search?query={}&page={page}&page_size={PAGE_SIZE}",
            form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>()
        );
        if !category.is_empty() {
            let c: String = form_urlencoded::byte_serialize(category.as_bytes()).collect();
            path.push_str(&format!("&category={c}"));
        }
        let unreachable = |reason: String| EdgeError::EngineUnreachable {
            engine: engine.addr.to_string(),
            reason,
        };
        let body = tokio::time::timeout(ENGINE_TIMEOUT, async {
            let opts = crate::http1::GetOptions::with_headers(&engine.endpoint.headers);
            let mut r = crate::http1::get_opts(engine.addr, &path, ENGINE_TIMEOUT, &opts)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            if r.status != 200 {
                return Err(unreachable(format!("search answered HTTP {}", r.status)));
            }
            r.read_to_end(4 << 20)
                .await
                .map_err(|e| unreachable(e.to_string()))
        })
        .await
        .map_err(|_| unreachable(format!("no search answer within {ENGINE_TIMEOUT:?}")))??;
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| unreachable(format!("search answer is not JSON: {e}")))?;
        if let Some(err) = v["error"].as_str() {
            return Err(EdgeError::EngineRefused {
                engine: engine.addr.to_string(),
                reason: err.to_string(),
            });
        }
        let v = Arc::new(v["result"].clone());
        let mut answers = self.answers.locked();
        if answers.len() >= CACHE_ENTRIES {
            answers.retain(|_, (at, _)| at.elapsed() < CACHE_FOR);
            if answers.len() >= CACHE_ENTRIES {
                answers.clear();
            }
        }
        answers.insert(key, (Instant::now(), v.clone()));
        Ok(v)
    }
}

/// The proxy's view of an engine's search result; `url` makes a source's stream URL.
fn view_of(
    result: &serde_json::Value,
    (text, page): (&str, u32),
    url: impl Fn(&str) -> String,
) -> SearchView {
    let results = result["results"]
        .as_array()
        .map(|r| r.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|c| ChannelView {
            name: c["name"].as_str().unwrap_or("").to_string(),
            icon: c["icons"][0]["url"].as_str().map(str::to_string),
            sources: c["items"]
                .as_array()
                .map(|r| r.as_slice())
                .unwrap_or_default()
                .iter()
                .filter_map(|item| {
                    let infohash = item["infohash"].as_str()?.to_ascii_lowercase();
                    let valid =
                        infohash.len() == 40 && infohash.bytes().all(|b| b.is_ascii_hexdigit());
                    let status = item["status"].as_i64().unwrap_or(0);
                    valid.then(|| SourceView {
                        url: url(&infohash),
                        infohash,
                        status,
                        available: status == 2,
                        availability: item["availability"].as_f64().unwrap_or(0.0),
                        categories: item["categories"]
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .filter_map(|c| c.as_str().map(str::to_string))
                                    .collect()
                            })
                            .unwrap_or_default(),
                    })
                })
                .collect(),
        })
        .collect();
    SearchView {
        query: text.to_string(),
        page,
        total: result["total"].as_u64().unwrap_or(0),
        results,
    }
}
