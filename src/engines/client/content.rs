//! What a client asked to play ([`ContentKey`]): a content id or an infohash, kept apart.

/// What a client asked to play: a content id (`id=`) or a torrent infohash (`infohash=`). The
/// engine treats them as different keys (`docs/engine-api.md` §2), so the proxy forwards each as
/// it came and never lets a content id and an infohash share a session.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContentKey {
    /// Which key it is.
    pub kind: ContentKind,
    /// 40 hex characters, lower case.
    pub value: String,
}

/// The kind of a [`ContentKey`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContentKind {
    /// `id=` (the content id; `content_id=` on newer engines).
    ContentId,
    /// `infohash=`.
    Infohash,
}

impl ContentKey {
    /// A content id.
    pub fn content_id(value: impl Into<String>) -> Self {
        ContentKey {
            kind: ContentKind::ContentId,
            value: value.into(),
        }
    }

    /// The key as [`Display`](std::fmt::Display) writes it (`<hex>` or `infohash:<hex>`), if it
    /// is one.
    pub fn parse_key(key: &str) -> Option<Self> {
        let (kind, value) = match key.strip_prefix("infohash:") {
            Some(v) => (ContentKind::Infohash, v),
            None => (ContentKind::ContentId, key),
        };
        (value.len() == 40 && value.bytes().all(|b| b.is_ascii_hexdigit())).then(|| ContentKey {
            kind,
            value: value.to_ascii_lowercase(),
        })
    }

    /// The query parameter the engine is asked with.
    pub fn param(&self) -> &'static str {
        match self.kind {
            ContentKind::ContentId => "id",
            ContentKind::Infohash => "infohash",
        }
    }
}

/// A content id shows as itself, an infohash as `infohash:<hex>` (the registry key and the name in
/// log lines).
impl std::fmt::Display for ContentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            ContentKind::ContentId => f.write_str(&self.value),
            ContentKind::Infohash => write!(f, "infohash:{}", self.value),
        }
    }
}
