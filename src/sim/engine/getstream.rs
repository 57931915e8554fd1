//! The simulated playback: `/ace/getstream` and `/ace/manifest.m3u8` sessions, their burst, pauses
//! and inactivity timer, as `spec/engine-api.md` describes a real engine's.

use super::*;

pub(super) async fn getstream(
    shared: &Arc<Shared>,
    sock: &mut TcpStream,
    req: &RequestHead,
    host: &str,
) -> io::Result<()> {
    let asked = ["content_id", "id", "infohash", "url", "magnet"]
        .iter()
        .find_map(|k| req.query_param(k).map(|v| (*k, v)));
    let knobs = lock(&shared.knobs).clone();
    {
        let mut st = lock(&shared.state);
        st.stats.getstream_total += 1;
        if let Some((param, id)) = &asked {
            *st.stats
                .getstream_calls
                .entry(id.to_ascii_lowercase())
                .or_default() += 1;
            *st.stats
                .getstream_params
                .entry(param.to_string())
                .or_default() += 1;
        }
    }
    // A content id and an infohash are different keys to the engine, even with the same hex.
    let key_kind = match asked.as_ref().map(|a| a.0) {
        Some("infohash") => "infohash:",
        _ => "",
    };
    let content = asked.map(|a| a.1);
    let Some(content) = content else {
        return respond(
            sock,
            500,
            "text/plain",
            b"Internal Server Error, missing content id",
        )
        .await;
    };
    if knobs.http_500 {
        return respond(
            sock,
            500,
            "text/plain",
            b"Internal Server Error, couldn't find resource",
        )
        .await;
    }
    let json = req.query_param("format").as_deref() == Some("json");
    if let Some(err) = knobs.start_error {
        tokio::time::sleep(knobs.json_latency).await;
        return respond_json(sock, serde_json::json!({"response": null, "error": err})).await;
    }
    if !is_content_id(&content) {
        tokio::time::sleep(knobs.unknown_latency).await;
        return respond_json(
            sock,
            serde_json::json!({"response": null, "error": "failed to load content"}),
        )
        .await;
    }
    tokio::time::sleep(knobs.json_latency).await;
    let content = content.to_ascii_lowercase();
    if knobs.unavailable_ids.contains(&content) {
        return respond_json(
            sock,
            serde_json::json!({"response": null, "error": "failed to load content"}),
        )
        .await;
    }
    let infohash = infohash_for(&content);
    let token = random_hex(32);
    let playback_session_id = random_hex(40);
    let (ended, _) = watch::channel(false);
    {
        let mut st = lock(&shared.state);
        // The newest start for the same content wins: the previous session ends.
        let start_key = format!("{key_kind}{content}");
        if let Some(old) = st.by_content.get(&start_key).cloned() {
            st.end_session(&old);
        }
        st.by_content.insert(start_key.clone(), token.clone());
        st.sessions.insert(
            token.clone(),
            SimSession {
                start_key,
                content_id: content.clone(),
                infohash: infohash.clone(),
                playback_session_id: playback_session_id.clone(),
                readers: 0,
                bytes_sent: 0,
                ended,
                reader_epoch: 0,
                content_paths: Vec::new(),
                started: std::time::Instant::now(),
            },
        );
        st.stats.sessions_started += 1;
        st.stats.sessions_active += 1;
        st.stats.max_sessions_active = st.stats.max_sessions_active.max(st.stats.sessions_active);
    }
    spawn_inactivity_timer(shared.clone(), token.clone(), 0, knobs.inactivity_timeout);
    let manifest = req.path == "/ace/manifest.m3u8";
    let playback_url = if manifest {
        format!("http://{host}/ace/m/{infohash}/{token}.m3u8")
    } else {
        format!("http://{host}/ace/r/{infohash}/{token}")
    };
    if !json {
        let head = format!(
            "HTTP/1.1 302 Found\r\nLocation: {playback_url}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        sock.write_all(head.as_bytes()).await?;
        return sock.shutdown().await;
    }
    let mut response = serde_json::json!({
        "playback_url": playback_url,
        "stat_url": format!("http://{host}/ace/stat/{infohash}/{token}"),
        "command_url": format!("http://{host}/ace/cmd/{infohash}/{token}"),
        "infohash": infohash,
        "playback_session_id": playback_session_id,
        "is_live": 1,
        "is_encrypted": 0,
        "client_session_id": -1,
    });
    if req.query_param("use_api_events").as_deref() == Some("1") {
        response["event_url"] = format!("http://{host}/ace/event/{infohash}/{token}").into();
    }
    respond_json(
        sock,
        serde_json::json!({"response": response, "error": null}),
    )
    .await
}

/// Ends a session that has had no reader since `epoch` for `timeout`.
pub(in crate::sim) fn spawn_inactivity_timer(
    shared: Arc<Shared>,
    token: String,
    epoch: u64,
    timeout: Duration,
) {
    tokio::spawn(async move {
        tokio::time::sleep(timeout).await;
        let mut st = lock(&shared.state);
        let expired =
            matches!(st.sessions.get(&token), Some(s) if s.readers == 0 && s.reader_epoch == epoch);
        if expired && st.end_session(&token).is_some() {
            st.stats.sessions_expired += 1;
        }
    });
}

/// `/ace/<kind>/<infohash>/<token>`: the token, if the path has that shape.
pub(in crate::sim) fn token_of(path: &str) -> Option<String> {
    let mut parts = path.trim_start_matches('/').split('/');
    let _ace = parts.next()?;
    let _kind = parts.next()?;
    let _infohash = parts.next()?;
    let token = parts.next()?;
    Some(token.trim_end_matches(".m3u8").to_string())
}
