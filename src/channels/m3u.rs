//! M3U channel lists as users bring them (spec/engine-api.md §14): `#EXTM3U` with an optional
//! guide URL (`url-tvg=` or `x-tvg-url=`), `#EXTINF:-1 tvg-id="…" tvg-logo="…" group-title="…",Name`
//! and one link per entry, written as `acestream://<40 hex>`, an engine or proxy URL
//! (`…/ace/getstream?id=`, `infohash=`, `content_id=`, `…/ace/manifest.m3u8?id=`, on any host) or
//! a bare id. Every line that cannot be an entry is reported with its number and why.

use crate::engines::{ContentKey, ContentKind};

/// One entry of a list.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The line of its link (1-based).
    pub line: usize,
    /// Its display name (after the `#EXTINF` comma; the id when there is no `#EXTINF`).
    pub name: String,
    /// What it plays.
    pub key: ContentKey,
    /// Its `#EXTINF` attributes, in order (`tvg-id`, `tvg-logo`, `group-title`, …).
    pub attrs: Vec<(String, String)>,
}

/// A line that was not taken, and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Skipped {
    /// Its number (1-based).
    pub line: usize,
    /// Why, in words.
    pub reason: String,
}

/// A parsed list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    /// Its entries, in order.
    pub entries: Vec<Entry>,
    /// What was skipped.
    pub skipped: Vec<Skipped>,
    /// The guide its header names (`url-tvg` or `x-tvg-url`).
    pub guide: Option<String>,
}

/// An `#EXTINF` waiting for its link: (its line, the name, the attributes).
type PendingInfo = (usize, String, Vec<(String, String)>);

/// A skipped line's text is quoted up to this many characters. Fixed: enough to recognise it.
const QUOTED_CHARS: usize = 60;

/// Parses an M3U text.
pub fn parse(text: &str) -> Parsed {
    let mut out = Parsed::default();
    // The `#EXTINF` waiting for its link: (line, name, attributes).
    let mut pending: Option<PendingInfo> = None;
    let mut group: Option<String> = None;
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim().trim_start_matches('\u{feff}');
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("#EXTM3U") {
            let attrs = attributes(rest);
            out.guide = find(&attrs, "url-tvg")
                .or_else(|| find(&attrs, "x-tvg-url"))
                .map(str::to_string);
            continue;
        }
        if let Some(rest) = line.strip_prefix("#EXTINF:") {
            if let Some((at, _, _)) = pending.take() {
                out.skipped.push(Skipped {
                    line: at,
                    reason: "#EXTINF without a link".into(),
                });
            }
            let (head, name) = split_name(rest);
            pending = Some((line_no, name.trim().to_string(), attributes(head)));
            group = None;
            continue;
        }
        if let Some(g) = line.strip_prefix("#EXTGRP:") {
            group = Some(g.trim().to_string());
            continue;
        }
        if line.starts_with('#') {
            continue; // #EXTVLCOPT, #KODIPROP, comments
        }
        let Some(key) = parse_link(line) else {
            out.skipped.push(Skipped {
                line: line_no,
                reason: format!(
                    "not an AceStream link: {:?}",
                    line.chars().take(QUOTED_CHARS).collect::<String>()
                ),
            });
            pending = None;
            continue;
        };
        let (name, mut attrs) = match pending.take() {
            Some((_, name, attrs)) if !name.is_empty() => (name, attrs),
            Some((_, _, attrs)) => (key.value.clone(), attrs),
            None => (key.value.clone(), Vec::new()),
        };
        if let Some(g) = group.take() {
            if find(&attrs, "group-title").is_none() {
                attrs.push(("group-title".into(), g));
            }
        }
        out.entries.push(Entry {
            line: line_no,
            name,
            key,
            attrs,
        });
    }
    if let Some((at, _, _)) = pending {
        out.skipped.push(Skipped {
            line: at,
            reason: "#EXTINF without a link".into(),
        });
    }
    out
}

/// What a link plays: `acestream://<id>`, an URL with `id=`, `content_id=` or `infohash=` whose
/// path has `/ace/`, or a bare id (40 hex characters, any case).
pub fn parse_link(link: &str) -> Option<ContentKey> {
    let link = link.trim().trim_matches('"');
    let hex = |v: &str| {
        (v.len() == 40 && v.bytes().all(|b| b.is_ascii_hexdigit())).then(|| v.to_ascii_lowercase())
    };
    if let Some(rest) = link.strip_prefix("acestream://") {
        let id = rest.split(['/', '?', '#', '&']).next()?;
        return hex(id).map(ContentKey::content_id);
    }
    if let Some(id) = hex(link) {
        return Some(ContentKey::content_id(id));
    }
    let lower = link.to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return None;
    }
    let (path, query) = link.split_once('?')?;
    if !path.contains("/ace/") {
        return None;
    }
    let query = query.split('#').next().unwrap_or("");
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let kind = match &*k {
            "id" | "content_id" => ContentKind::ContentId,
            "infohash" => ContentKind::Infohash,
            _ => continue,
        };
        return hex(&v).map(|value| ContentKey { kind, value });
    }
    None
}

/// The `#EXTINF` text split at the comma before the name (the first one outside quotes).
fn split_name(rest: &str) -> (&str, &str) {
    let mut quoted = false;
    for (i, c) in rest.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => return (&rest[..i], &rest[i + 1..]),
            _ => {}
        }
    }
    (rest, "")
}

/// `key="value"` (or `key=value`) pairs of a header or `#EXTINF` line.
fn attributes(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq]
            .rsplit(|c: char| c.is_whitespace())
            .next()
            .unwrap_or("")
            .trim();
        let after = &rest[eq + 1..];
        let (value, next) = match after.strip_prefix('"') {
            Some(q) => match q.find('"') {
                Some(end) => (&q[..end], &q[end + 1..]),
                None => (q, ""),
            },
            None => {
                let end = after.find(char::is_whitespace).unwrap_or(after.len());
                (&after[..end], &after[end..])
            }
        };
        if !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            out.push((key.to_ascii_lowercase(), value.to_string()));
        }
        rest = next;
    }
    out
}

/// The value of attribute `key`.
pub fn find<'a>(attrs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn every_link_form() {
        let id = |v: &str| Some(ContentKey::content_id(v));
        assert_eq!(parse_link(&format!("acestream://{ID}")), id(ID));
        assert_eq!(
            parse_link(&format!("acestream://{}", ID.to_uppercase())),
            id(ID)
        );
        assert_eq!(parse_link(&format!("acestream://{ID}/")), id(ID));
        assert_eq!(parse_link(ID), id(ID));
        assert_eq!(
            parse_link(&format!("http://10.0.0.5:6878/ace/getstream?id={ID}")),
            id(ID)
        );
        assert_eq!(
            parse_link(&format!(
                "https://tv.example/ace/getstream?pid=1&content_id={ID}"
            )),
            id(ID)
        );
        assert_eq!(
            parse_link(&format!("http://h/ace/manifest.m3u8?id={ID}&x=1")),
            id(ID)
        );
        assert_eq!(
            parse_link(&format!("http://h:6878/ace/getstream?infohash={ID}")),
            Some(ContentKey {
                kind: ContentKind::Infohash,
                value: ID.into()
            })
        );
        assert_eq!(parse_link("acestream://abc"), None);
        assert_eq!(parse_link(&format!("http://h/other?id={ID}")), None);
        assert_eq!(parse_link(&format!("rtmp://h/ace/getstream?id={ID}")), None);
        assert_eq!(parse_link("http://h/ace/getstream?id=xyz"), None);
    }

    #[test]
    fn entries_attributes_guide_and_skips() {
        let text = format!(
            "#EXTM3U url-tvg=\"http://g/epg.xml.gz\"\n\
             #EXTINF:-1 tvg-id=\"one.tv\" tvg-logo=\"http://l/1.png\" group-title=\"Sport, HD\",One, the first\n\
             acestream://{ID}\n\
             \n\
             #EXTINF:-1,Two\n\
             #EXTGRP:News\n\
             http://x:6878/ace/getstream?infohash={ID}\n\
             not a link\n\
             #EXTINF:-1,Orphan\n\
             #EXTINF:-1 tvg-id=three,\n\
             {ID}\n\
             #EXTINF:-1,Last without link\n"
        );
        let p = parse(&text);
        assert_eq!(p.guide.as_deref(), Some("http://g/epg.xml.gz"));
        assert_eq!(p.entries.len(), 3);
        let one = &p.entries[0];
        assert_eq!((one.line, one.name.as_str()), (3, "One, the first"));
        assert_eq!(find(&one.attrs, "group-title"), Some("Sport, HD"));
        assert_eq!(find(&one.attrs, "tvg-logo"), Some("http://l/1.png"));
        assert_eq!(find(&p.entries[1].attrs, "group-title"), Some("News"));
        assert_eq!(p.entries[1].key.kind, ContentKind::Infohash);
        assert_eq!(p.entries[2].name, ID, "an empty name is the id");
        assert_eq!(find(&p.entries[2].attrs, "tvg-id"), Some("three"));
        let skipped: Vec<usize> = p.skipped.iter().map(|s| s.line).collect();
        assert_eq!(skipped, vec![8, 9, 12], "{:?}", p.skipped);
        assert!(p.skipped[0].reason.contains("not an AceStream link"));
        assert!(p.skipped[1].reason.contains("without a link"));
    }
}
