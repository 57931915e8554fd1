//! Unit tests of `config/mod.rs`, beside it so the module file reads as the code.

use super::*;

fn paths(text: &str) -> Vec<String> {
    load_str(text)
        .expect_err("config must be rejected")
        .problems
        .into_iter()
        .map(|p| p.path)
        .collect()
}

/// A file with only engines is valid and every other key takes the spec's default.
#[test]
fn minimal_file_takes_spec_defaults() {
    let c = load_str("acestream: {engines: [{host: 127.0.0.1, port: 6878}]}")
        .unwrap()
        .acestream;
    assert_eq!(c.listen, vec!["127.0.0.1:8000".parse().unwrap()]);
    assert_eq!(c.sessions.empty_stream_timeout, Duration::from_secs(30));
    assert_eq!(c.sessions.stream_idle_timeout, Duration::from_secs(300));
    assert_eq!(c.viewers.client_timeout, Duration::from_secs(30));
    assert_eq!(c.buffers.stream_buffer_size, 4_194_304);
    assert_eq!(c.buffers.copy_chunk_size, 65_424); // 65536 rounded down to 348 packets
    assert_eq!(c.pool.max_streams_per_engine, 10);
    assert_eq!(c.probes.engine_cache_ttl, Duration::from_secs(2));
    assert_eq!(c.probes.health_check_interval, Duration::from_secs(5));
    assert_eq!(c.engines[0].port, 6878);
    assert!(!c.engines[0].forwarded);
    assert_eq!(c.admin_token, None);
    assert_eq!(c.sessions.live_lead, Duration::from_secs(2));
    assert_eq!(c.buffers.stream_buffer_seconds, Duration::from_secs(15));
    assert_eq!(c.buffers.stream_buffer_max_bytes, 64 << 20);
}

/// Durations: seconds, fractions, and unit strings.
#[test]
fn durations_accept_seconds_fractions_and_units() {
    let c = load_str(
            "acestream: {stream_idle_timeout: 0.5, client_timeout: \"500ms\", empty_stream_timeout: \"5m\", engine_cache_ttl: \"3\"}",
        )
        .unwrap()
        .acestream;
    assert_eq!(c.sessions.stream_idle_timeout, Duration::from_millis(500));
    assert_eq!(c.viewers.client_timeout, Duration::from_millis(500));
    assert_eq!(c.sessions.empty_stream_timeout, Duration::from_secs(300));
    assert_eq!(c.probes.engine_cache_ttl, Duration::from_secs(3));
}

/// A port out of range is named by its key path.
#[test]
fn port_out_of_range_names_key_path() {
    assert_eq!(
        paths("acestream: {engines: [{host: 127.0.0.1, port: 99999}]}"),
        vec!["acestream.engines[0].port"]
    );
}

/// A typo inside `acestream:` is an error naming the key, never a silent default.
#[test]
fn unknown_key_is_named() {
    assert_eq!(
        paths("acestream: {idle_timeot: 3}"),
        vec!["acestream.idle_timeot"]
    );
    assert_eq!(
        paths("acestream: {engines: [{host: a, port: 1, forwardd: true}]}"),
        vec!["acestream.engines[0].forwardd"]
    );
}

/// Pingora's keys and unknown top-level keys stay Pingora's business.
#[test]
fn pingora_keys_are_left_to_pingora() {
    let c = load_str("version: 1\nthreads: 3\nsomething_else: 1\nacestream: {}\n").unwrap();
    assert_eq!(c.server.threads, 3);
}

/// Negative durations, an empty listen list and wrong types are rejected with paths.
#[test]
fn bad_values_are_rejected_with_paths() {
    assert_eq!(
        paths("acestream: {client_timeout: -1}"),
        vec!["acestream.client_timeout"]
    );
    assert_eq!(paths("acestream: {listen: []}"), vec!["acestream.listen"]);
    assert_eq!(
        paths("acestream: {stream_buffer_size: lots}"),
        vec!["acestream.stream_buffer_size"]
    );
}

/// Floors that used to be silent clamps are reported with their key.
#[test]
fn floors_are_reported_not_clamped() {
    assert_eq!(
        paths("acestream: {engine_cache_ttl: 0.05, health_check_interval: 0.1}"),
        vec![
            "acestream.engine_cache_ttl",
            "acestream.health_check_interval"
        ]
    );
}

/// Validation reports every problem at once.
#[test]
fn all_validation_problems_are_reported_together() {
    let p = paths(
        "acestream: {listen: [\"nope\"], engines: [{host: \"\", port: 0}], copy_chunk_size: 10}",
    );
    assert_eq!(
        p,
        vec![
            "acestream.listen[0]",
            "acestream.engines[0].host",
            "acestream.engines[0].port",
            "acestream.copy_chunk_size"
        ]
    );
}

/// A typo'd key is answered with the key it probably meant, not with every key (issue 27).
#[test]
fn unknown_keys_get_a_suggestion() {
    let e = load_str("acestream:\n  stream_idel_timeout: 3\n  zzzzzzzzzz: 1\n").expect_err("typos");
    let text = e.to_string();
    assert!(text.contains("did you mean stream_idle_timeout?"), "{text}");
    assert!(text.contains("unknown key `zzzzzzzzzz`"), "{text}");
    assert!(!text.contains("expected one of"), "{text}");
    assert!(acestream_keys().len() >= 50);
    assert!(acestream_keys().iter().any(|k| k == "max_buffer_bytes"));
}

/// `headers:` of an engine, the orchestrator and a source: kept in order of name; a bad name, a
/// header the proxy sets itself and a value with a line break are each reported, never echoing
/// the value; `Debug` hides the values.
#[test]
fn extra_headers_are_checked_and_hidden() {
    let c = load_str(
        "acestream:\n  engines: [{host: 127.0.0.1, port: 6878, headers: {Authorization: \"Bearer s3cret\", X-A: b}}]\n  orchestrator: {url: \"http://127.0.0.1:8001\", headers: {X-Key: k}}\n  channels: {sources: [{url: \"https://lists.example/a.m3u\", headers: {X-List: l}}]}\n",
    )
    .unwrap()
    .acestream;
    let pairs = c.engines[0].headers.pairs();
    assert_eq!(pairs[0], ("Authorization".into(), "Bearer s3cret".into()));
    assert_eq!(pairs[1], ("X-A".into(), "b".into()));
    assert_eq!(c.orchestrator.unwrap().headers.pairs()[0].1, "k");
    assert_eq!(c.channels.sources[0].headers.pairs()[0].1, "l");
    let shown = format!("{:?}", c.engines[0]);
    assert!(
        shown.contains("Authorization") && !shown.contains("s3cret"),
        "{shown}"
    );

    let e = load_str(
        "acestream:\n  engines: [{host: 127.0.0.1, port: 6878, headers: {\"Bad Name\": x, Host: y, X-Ok: \"line\\nbreak-s3cret\"}}]\n",
    )
    .expect_err("bad headers")
    .to_string();
    assert!(e.contains("acestream.engines[0].headers.Bad Name"), "{e}");
    assert!(e.contains("acestream.engines[0].headers.Host"), "{e}");
    assert!(e.contains("acestream.engines[0].headers.X-Ok"), "{e}");
    assert!(!e.contains("s3cret"), "{e}");
}
