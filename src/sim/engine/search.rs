//! The engine's public search (spec/engine-api.md §14): `GET /search?query=&category=&page=&page_size=`
//! over a small built-in catalogue, answered in the engine's `result`/`error` envelope: `total`
//! and `results[]`, each a channel (`name`, `icons[]`, `items[]`, one per source, with its
//! `infohash`, `status`, `availability` and categories). Its infohashes play like any id here.

use super::{respond_json, RequestHead};
use std::io;
use tokio::net::TcpStream;

/// The catalogue: (name, category, sources). Fixed: enough for paging and filtering in tests.
const CATALOGUE: &[(&str, &str, u32)] = &[
    ("Sport One", "sport", 2),
    ("Sport Two", "sport", 1),
    ("Sport Extra HD", "sport", 3),
    ("Football Live", "sport", 2),
    ("Tennis Channel", "sport", 1),
    ("News 24", "news", 1),
    ("World News", "news", 2),
    ("Movie Classics", "movies", 1),
    ("Movie Premiere", "movies", 2),
    ("Kids Fun", "kids", 1),
    ("Music Hits", "music", 1),
    ("Documentary One", "documentaries", 1),
];

/// The infohash of source `item` of catalogue entry `n` (40 hex characters).
pub fn catalogue_infohash(n: usize, item: u32) -> String {
    format!("{:08x}{:08x}c0ffee0123456789abcdef01", n + 1, item)
}

/// Page size when none is asked; the engine's cap.
const PAGE_SIZE: usize = 10;
const MAX_PAGE_SIZE: usize = 200;

pub(super) async fn search(sock: &mut TcpStream, req: &RequestHead) -> io::Result<()> {
    let query = req.query_param("query").unwrap_or_default().to_lowercase();
    let category = req.query_param("category").map(|c| c.to_lowercase());
    let page: usize = req
        .query_param("page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let page_size: usize = req
        .query_param("page_size")
        .and_then(|p| p.parse().ok())
        .unwrap_or(PAGE_SIZE)
        .clamp(1, MAX_PAGE_SIZE);
    let matches: Vec<(usize, &(&str, &str, u32))> = CATALOGUE
        .iter()
        .enumerate()
        .filter(|(_, (name, cat, _))| {
            name.to_lowercase().contains(&query) && category.as_deref().is_none_or(|c| c == *cat)
        })
        .collect();
    let results: Vec<serde_json::Value> = matches
        .iter()
        .skip(page * page_size)
        .take(page_size)
        .map(|(n, (name, cat, sources))| {
            let items: Vec<serde_json::Value> = (0..*sources)
                .map(|i| {
                    // The first source of each channel is available; later ones are "no
                    // guarantee", with less availability.
                    let (status, availability) = if i == 0 { (2, 1.0) } else { (1, 0.4) };
                    serde_json::json!({
                        "infohash": catalogue_infohash(*n, i),
                        "channel_id": n + 1,
                        "status": status,
                        "availability": availability,
                        "availability_updated_at": 1_764_000_000u64,
                        "categories": [cat],
                        "languages": ["eng"],
                        "countries": ["gb"],
                        "name": name,
                    })
                })
                .collect();
            serde_json::json!({
                "name": name,
                "icons": [{"url": format!("http://logos.example/{}.png", n + 1), "type": 0}],
                "items": items,
            })
        })
        .collect();
    respond_json(
        sock,
        serde_json::json!({"result": {"total": matches.len(), "results": results}, "error": null}),
    )
    .await
}
