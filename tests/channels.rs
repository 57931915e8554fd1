//! Channel lists (issue 29): an M3U source in every link form of spec §14, served over HTTP by
//! this test, merged with inline entries, refreshed, kept when its source fails; `/playlist.m3u`
//! through the proxy, played by mpv and ffmpeg; signed playlists.

mod common;

use acestream_edge::http1::GetOptions;
use acestream_edge::sim::Knobs;
use common::*;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the test's list server answers: (status, body).
type Served = Arc<Mutex<(u16, String)>>;

/// Serves `served` at every path until the test ends.
async fn serve_list(served: Served) -> SocketAddr {
    SourceServer::start(move |_| {
        let (status, body) = served.lock().unwrap().clone();
        (status, body.into_bytes())
    })
    .await
    .addr
}

/// The link of entry `i` for `id`, in one of the six forms of spec §14 by `i`.
fn link(i: usize, id: &str) -> String {
    match i % 6 {
        0 => format!("acestream://{id}"),
        1 => format!("http://10.0.0.9:6878/ace/getstream?id={id}"),
        2 => format!("http://tv.example/ace/getstream?pid=7&content_id={id}"),
        3 => format!("http://10.0.0.9:6878/ace/getstream?infohash={id}"),
        4 => format!("http://10.0.0.9:6878/ace/manifest.m3u8?id={id}"),
        _ => id.to_uppercase(),
    }
}

/// The fixture: 200 channels (ids 4000…4199) with tvg-id, logo and group; 10 duplicates of the
/// first ten (another name, one more attribute); 10 broken lines (5 links that are not
/// AceStream's, 5 `#EXTINF`s without a link). Returns the text and the broken lines' numbers.
fn fixture() -> (String, Vec<usize>) {
    let mut lines = vec!["#EXTM3U url-tvg=\"http://guide.example/epg.xml.gz\"".to_string()];
    let mut broken = Vec::new();
    for i in 0..200 {
        let id = content_id(4000 + i as u32);
        lines.push(format!(
            "#EXTINF:-1 tvg-id=\"ch{i}.tv\" tvg-logo=\"http://logo.example/{i}.png\" group-title=\"G{}\",Channel {i}",
            i % 5
        ));
        lines.push(link(i, &id));
        if i % 40 == 10 {
            lines.push("#EXTINF:-1,Not ours".into());
            lines.push(format!("http://tv.example/live/{i}.ts"));
            broken.push(lines.len());
            lines.push(format!("#EXTINF:-1 tvg-id=\"lost{i}\",Lost {i}"));
            broken.push(lines.len());
        }
    }
    for i in 0..10 {
        let id = content_id(4000 + i as u32);
        lines.push(format!(
            "#EXTINF:-1 tvg-id=\"other.tv\" tvg-name=\"dup {i}\",Duplicate {i}"
        ));
        lines.push(link(i, &id));
    }
    (lines.join("\n") + "\n", broken)
}

/// The `acestream:` lines of a proxy with the test's list as a source (refreshed after 1 s) and
/// one inline channel, and `more`.
fn config_with(list: SocketAddr, more: &str) -> String {
    let inline = content_id(3999);
    format!(
        "channels: {{check_interval: 0, sources: [{{url: \"http://{list}/list.m3u\", refresh: 1}}], list: [{{name: Inline, id: {inline}, group: Mine, tvg_id: inline.tv}}]}}\n{more}"
    )
}

/// `(name, attrs, url)` of each entry of an M3U playlist, checking its shape.
fn entries(text: &str) -> Vec<(String, String, String)> {
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("#EXTM3U"), "{text}");
    let mut out = Vec::new();
    while let Some(inf) = lines.next() {
        let inf = inf.strip_prefix("#EXTINF:-1").expect("an #EXTINF line");
        let (attrs, name) = inf.rsplit_once(',').unwrap();
        let url = lines.next().expect("a URL after #EXTINF");
        out.push((name.to_string(), attrs.to_string(), url.to_string()));
    }
    out
}

async fn text_of(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut r = get(addr, path).await;
    let body = r.read_to_end(16 << 20).await.unwrap();
    (r.status, String::from_utf8(body).unwrap())
}

/// The source: 200 channels plus the inline one; the duplicates merged (first name, attributes
/// added); the 10 broken lines reported with their numbers; an added entry appears after a
/// refresh; a source that then answers 500, or garbage, keeps the last good list.
#[tokio::test(flavor = "multi_thread")]
async fn a_source_is_parsed_merged_refreshed_and_kept() {
    let e = sim(Knobs::default()).await;
    let (text, broken) = fixture();
    let served: Served = Arc::new(Mutex::new((200, text.clone())));
    let list = serve_list(served.clone()).await;
    let server = start_proxy(proxy_config(&[&e], &config_with(list, "")));
    let (_, v) = get_json(server.addr, "/proxy/channels").await;
    assert_eq!(v["count"], 201, "{}", v["sources"]);
    let channels = v["channels"].as_array().unwrap();
    assert_eq!(channels[0]["name"], "Inline");
    assert_eq!(channels[0]["attrs"]["group-title"], "Mine");
    let first = &channels[1];
    assert_eq!(first["name"], "Channel 0", "the first name wins");
    assert_eq!(first["attrs"]["tvg-id"], "ch0.tv");
    assert_eq!(
        first["attrs"]["tvg-name"], "dup 0",
        "a later entry adds what is missing"
    );
    assert_eq!(first["attrs"]["tvg-logo"], "http://logo.example/0.png");
    let infohash = &channels[4];
    assert_eq!(
        infohash["key"],
        format!("infohash:{}", content_id(4003)),
        "{infohash}"
    );
    let source = &v["sources"][0];
    let skipped: Vec<u64> = source["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["line"].as_u64().unwrap())
        .collect();
    assert_eq!(
        skipped,
        broken.iter().map(|n| *n as u64).collect::<Vec<_>>(),
        "{source}"
    );
    assert_eq!(skipped.len(), 10);

    // An added entry appears once the list is older than its refresh (1 s).
    served.lock().unwrap().1 =
        format!("{text}#EXTINF:-1,Added\nacestream://{}\n", content_id(4500));
    assert!(
        wait_until(Duration::from_secs(10), || async {
            get_json(server.addr, "/proxy/channels").await.1["count"] == 202
        })
        .await,
        "the added entry appeared"
    );
    // A source that fails keeps its last good list.
    for (status, body, says) in [
        (500, "oops".to_string(), "HTTP 500"),
        (200, "<html>not a list</html>\n".to_string(), "no channel"),
    ] {
        *served.lock().unwrap() = (status, body);
        assert!(
            wait_until(Duration::from_secs(10), || async {
                let (_, v) = get_json(server.addr, "/proxy/channels").await;
                v["sources"][0]["error"]
                    .as_str()
                    .is_some_and(|e| e.contains(says))
            })
            .await,
            "the failure ({says}) is reported"
        );
        let (_, v) = get_json(server.addr, "/proxy/channels").await;
        assert_eq!(v["count"], 202, "the last good list stays");
    }
}

/// `/playlist.m3u`: every channel with its tvg-id, logo and group and an absolute URL through
/// the proxy; `group=` filters, `format=hls` gives HLS URLs; mpv plays the first entry and ffmpeg
/// decodes 10 s of the third.
#[tokio::test(flavor = "multi_thread")]
async fn the_playlist_goes_through_the_proxy_and_plays() {
    let e = sim(Knobs::default()).await;
    let (text, _) = fixture();
    let list = serve_list(Arc::new(Mutex::new((200, text)))).await;
    let server = start_proxy(proxy_config(&[&e], &config_with(list, "")));
    let (status, body) = text_of(server.addr, "/playlist.m3u").await;
    assert_eq!(status, 200);
    let all = entries(&body);
    assert_eq!(all.len(), 201);
    let base = format!("http://{}/ace/getstream?", server.addr);
    assert!(
        all.iter().all(|(_, _, url)| url.starts_with(&base)),
        "{body}"
    );
    let (name, attrs, url) = &all[1];
    assert_eq!(name, "Channel 0");
    for want in [
        "tvg-id=\"ch0.tv\"",
        "tvg-logo=\"http://logo.example/0.png\"",
        "group-title=\"G0\"",
    ] {
        assert!(attrs.contains(want), "{attrs}");
    }
    assert_eq!(url, &format!("{base}id={}", content_id(4000)));
    assert!(all[4].2.contains(&format!("infohash={}", content_id(4003))));
    for (i, (_, attrs, _)) in all.iter().enumerate().skip(1) {
        assert!(
            attrs.contains(&format!("tvg-id=\"ch{}.tv\"", i - 1)),
            "{attrs}"
        );
    }
    let (_, hls) = text_of(server.addr, "/playlist.m3u8?format=hls&group=G1").await;
    let hls = entries(&hls);
    assert_eq!(hls.len(), 40);
    assert!(hls.iter().all(|(_, a, u)| a.contains("group-title=\"G1\"")
        && u.starts_with(&format!("http://{}/ace/manifest.m3u8?", server.addr))));
    let (status, _) = text_of(server.addr, "/playlist.m3u?alive=1").await;
    assert_eq!(status, 400, "alive=1 with the checker off");

    // mpv plays the first entry (the inline one: the `Mine` group holds only it).
    let playlist_url = format!("http://{}/playlist.m3u?group=Mine", server.addr);
    let mpv = tokio::task::spawn_blocking(move || {
        std::process::Command::new("mpv")
            .args([
                "--no-config",
                "--vo=null",
                "--ao=null",
                "--length=5",
                "--really-quiet",
            ])
            .arg(format!("--playlist={playlist_url}"))
            .output()
    });
    let third = all[2].2.clone();
    let (ok, errors) = ffmpeg_play(third, 10).await;
    assert!(ok && errors.trim().is_empty(), "ffmpeg: {errors}");
    match mpv.await.unwrap() {
        Ok(out) => assert!(
            out.status.success(),
            "mpv: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => eprintln!("SKIPPED mpv: not installed (apt-get install mpv)"),
    }
    let stats = sim_stats(&e).await;
    assert!(stats.getstream_total >= 1);
}

/// Signed stream URLs: the playlist needs the admin token or its own token; each entry's token
/// opens its own id and no other.
#[tokio::test(flavor = "multi_thread")]
async fn a_signed_playlist_gives_each_entry_its_own_token() {
    let e = sim(Knobs::default()).await;
    let (text, _) = fixture();
    let list = serve_list(Arc::new(Mutex::new((200, text)))).await;
    let server = start_proxy(proxy_config(
        &[&e],
        &config_with(list, "stream_token_secret: s3cret\nadmin_token: adm"),
    ));
    let (status, _) = text_of(server.addr, "/playlist.m3u").await;
    assert!(matches!(status, 401 | 403), "{status}");
    let opts = GetOptions {
        headers: vec![("Authorization".into(), "Bearer adm".into())],
        ..Default::default()
    };
    let mut r = get_with(server.addr, "/playlist.m3u", opts).await;
    assert_eq!(r.status, 200);
    let body = String::from_utf8(r.read_to_end(16 << 20).await.unwrap()).unwrap();
    let all = entries(&body);
    let path_of = |url: &str| {
        url.split_once(&server.addr.to_string())
            .unwrap()
            .1
            .to_string()
    };
    let (first, second) = (path_of(&all[1].2), path_of(&all[2].2));
    assert!(first.contains("&token="), "{first}");
    let mut ok = get(server.addr, &first).await;
    assert_eq!(ok.status, 200, "its own token opens it");
    assert!(ok.next_chunk().await.unwrap().is_some());
    drop(ok);
    // The first entry's token on the second entry's id.
    let token = first.split("&token=").nth(1).unwrap();
    let id2 = second
        .split("id=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    let (status, _) = text_of(
        server.addr,
        &format!("/ace/getstream?id={id2}&token={token}"),
    )
    .await;
    assert!(matches!(status, 401 | 403), "another id's token: {status}");
}

/// Search (issue 29): `/ace/search?q=` asks an engine's public `/search` (the simulator's
/// catalogue) and answers its matches with each source's availability and a URL through the
/// proxy; `category` filters; `q` is required; `format=m3u` lists the sources, the available
/// ones first, and its first entry plays through the proxy.
#[tokio::test(flavor = "multi_thread")]
async fn search_goes_through_the_proxy_and_plays() {
    let e = sim(Knobs::default()).await;
    let server = start_proxy(proxy_config(&[&e], ""));
    let (status, v) = get_json(server.addr, "/ace/search?q=sport").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["total"], 3, "{v}");
    let first = &v["results"][0];
    assert_eq!(first["name"], "Sport One");
    let sources = first["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 2);
    assert_eq!(sources[0]["available"], true);
    assert_eq!(sources[0]["availability"], 1.0);
    assert_eq!(sources[1]["available"], false);
    let base = format!("http://{}/ace/getstream?infohash=", server.addr);
    assert!(
        sources
            .iter()
            .all(|s| s["url"].as_str().unwrap().starts_with(&base)),
        "{v}"
    );
    // The same search again is answered from the cache: the engine was asked once.
    let (status, again) = get_json(server.addr, "/ace/search?q=sport").await;
    assert_eq!((status, &again), (200, &v));
    assert_eq!(sim_stats(&e).await.search_calls, 1);
    let (_, news) = get_json(server.addr, "/ace/search?q=o&category=news").await;
    assert_eq!(
        sim_stats(&e).await.search_calls,
        2,
        "another search asks the engine"
    );
    assert_eq!(news["total"], 1, "{news}");
    assert_eq!(news["results"][0]["name"], "World News");
    let (status, _) = get_json(server.addr, "/ace/search?q=").await;
    assert_eq!(status, 400);

    let (status, text) = text_of(server.addr, "/ace/search?q=movie&format=m3u").await;
    assert_eq!(status, 200);
    let all = entries(&text);
    assert_eq!(all.len(), 3, "{text}");
    assert!(all
        .iter()
        .all(|(_, a, u)| a.contains("group-title=\"movies\"") && u.starts_with(&base)));
    let (ok, errors) = ffmpeg_play(all[0].2.clone(), 5).await;
    assert!(ok && errors.trim().is_empty(), "ffmpeg: {errors}");
}
