//! The guide (issue 29): a gzip XMLTV source of more than 5 MB, served by this test, merged into
//! `/epg.xml` kept to the channels' `tvg-id`s (checked by a real XML parser), gzip both ways,
//! `ETag`/`304`, a broken refresh that keeps the last good guide, and sources past their size
//! limits refused without the proxy's memory growing with them.

mod common;

use acestream_edge::http1::GetOptions;
use common::*;
use flate2::{read::MultiGzDecoder, write::GzEncoder, Compression};
use quick_xml::events::Event;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the test's source server answers: (status, body).
type Served = Arc<Mutex<(u16, Arc<Vec<u8>>)>>;

/// Serves `served` at every path until the test ends (with `Content-Length`).
async fn serve_bytes(served: Served) -> SocketAddr {
    SourceServer::start(move |_| {
        let (status, body) = served.lock().unwrap().clone();
        (status, body.to_vec())
    })
    .await
    .addr
}

/// Serves, at every path, `total` bytes made by repeating `piece` after `head`, without a
/// `Content-Length` (the reader cannot know the size before it has read it).
async fn serve_endless(head: &'static str, piece: &'static str, total: usize) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let _ = sock
                    .write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                    .await;
                let _ = sock.write_all(head.as_bytes()).await;
                let block = piece.repeat(64 * 1024 / piece.len() + 1);
                let mut sent = head.len();
                while sent < total {
                    if sock.write_all(block.as_bytes()).await.is_err() {
                        return; // the reader stopped
                    }
                    sent += block.len();
                }
            });
        }
    });
    addr
}

/// An XMLTV guide of `channels` channels (`gch<i>.tv`), each with `per` programmes whose
/// descriptions are pseudo-random words (so it compresses like a real guide, not like zeros).
fn guide_text(channels: usize, per: usize) -> String {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut word = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let len = 3 + (seed % 7) as usize;
        (0..len)
            .map(|k| (b'a' + ((seed >> (k * 5)) % 26) as u8) as char)
            .collect::<String>()
    };
    let mut out = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<tv source-info-name=\"test &amp; co\">\n",
    );
    for c in 0..channels {
        out.push_str(&format!(
            "  <channel id=\"gch{c}.tv\"><display-name lang=\"en\">Channel {c} &lt;HD&gt;</display-name><icon src=\"http://logo.example/{c}.png\"/></channel>\n"
        ));
    }
    for c in 0..channels {
        for p in 0..per {
            let desc: Vec<String> = (0..70).map(|_| word()).collect();
            out.push_str(&format!(
                "  <programme start=\"20261202{:02}0000 +0000\" stop=\"20261202{:02}3000 +0000\" channel=\"gch{c}.tv\"><title>Show {p}</title><desc>{}</desc></programme>\n",
                p % 24,
                p % 24,
                desc.join(" ")
            ));
        }
    }
    out.push_str("</tv>\n");
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    MultiGzDecoder::new(bytes).read_to_end(&mut out).unwrap();
    out
}

/// What a real XML parser finds in a guide: the channel ids, and the programmes per channel.
/// Panics on anything that is not well-formed XMLTV.
fn parse_guide(xml: &[u8]) -> (BTreeSet<String>, BTreeMap<String, usize>) {
    let mut reader = quick_xml::Reader::from_reader(xml);
    let mut buf = Vec::new();
    let mut channels = BTreeSet::new();
    let mut programmes = BTreeMap::new();
    let mut root = None;
    loop {
        let ev = reader
            .read_event_into(&mut buf)
            .unwrap_or_else(|e| panic!("not well-formed at {}: {e}", reader.buffer_position()));
        match ev {
            Event::Eof => break,
            Event::Start(e) | Event::Empty(e) => {
                let name = String::from_utf8(e.name().as_ref().to_vec()).unwrap();
                let attr = |n: &str| {
                    let a = e.try_get_attribute(n).unwrap().expect(n);
                    String::from_utf8(a.value.to_vec()).unwrap()
                };
                root.get_or_insert(name.clone());
                match name.as_str() {
                    "channel" => assert!(channels.insert(attr("id")), "a channel twice"),
                    "programme" => *programmes.entry(attr("channel")).or_default() += 1,
                    _ => {}
                }
            }
            _ => {}
        }
        buf.clear();
    }
    assert_eq!(root.as_deref(), Some("tv"));
    (channels, programmes)
}

/// A header of a response.
fn header(r: &acestream_edge::http1::Response, name: &str) -> Option<String> {
    r.header(name).map(str::to_string)
}

async fn fetch(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<u8>, acestream_edge::http1::Response) {
    let opts = GetOptions {
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };
    let mut r = get_with(addr, path, opts).await;
    let body = if r.status == 304 {
        Vec::new()
    } else {
        r.read_to_end(64 << 20).await.unwrap()
    };
    (r.status, body, r)
}

/// The guide: a 5+ MB gzip source of 600 channels; 30 listed channels (one with its `tvg-id` in
/// other case, one not in the guide); `/epg.xml` keeps exactly the listed ones, well-formed, with
/// their programmes; gzip encoded and as a file are the same document; `ETag`/`304`;
/// `?all=1` is whole; the playlist points at it; a refresh that brings garbage keeps it.
#[tokio::test(flavor = "multi_thread")]
async fn the_guide_is_filtered_to_the_list_and_kept() {
    let text = guide_text(600, 40);
    let gz = gzip(text.as_bytes());
    eprintln!(
        "guide source: {} bytes of XML, {} bytes gzip",
        text.len(),
        gz.len()
    );
    assert!(gz.len() >= 5 << 20, "the source is at least 5 MB of gzip");
    let served: Served = Arc::new(Mutex::new((200, Arc::new(gz))));
    let source = serve_bytes(served.clone()).await;
    let mut list = String::new();
    let mut listed = BTreeSet::new();
    for i in 0..29u32 {
        let tvg = if i == 3 {
            "GCh3.TV".to_string()
        } else {
            format!("gch{}.tv", i * 20)
        };
        listed.insert(if i == 3 {
            "gch3.tv".into()
        } else {
            tvg.clone()
        });
        list.push_str(&format!(
            "{{name: \"C{i}\", id: {}, tvg_id: \"{tvg}\"}}, ",
            content_id(5000 + i)
        ));
    }
    list.push_str(&format!(
        "{{name: Unguided, id: {}, tvg_id: nowhere.tv}}",
        content_id(5099)
    ));
    let server = start_proxy(proxy_config(
        &[],
        &format!(
            "channels: {{check_interval: 0, list: [{list}], epg: [{{url: \"http://{source}/guide.xml.gz\", refresh: 1}}]}}"
        ),
    ));
    let addr = server.addr;

    let (status, xml, r) = fetch(addr, "/epg.xml", &[]).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&xml));
    assert_eq!(
        header(&r, "content-type").as_deref(),
        Some("application/xml; charset=utf-8")
    );
    assert!(header(&r, "content-encoding").is_none());
    let etag = header(&r, "etag").expect("an ETag");
    assert!(header(&r, "last-modified").is_some());
    let (channels, programmes) = parse_guide(&xml);
    assert_eq!(
        channels, listed,
        "exactly the listed channels that the guide has"
    );
    assert_eq!(programmes.keys().cloned().collect::<BTreeSet<_>>(), listed);
    assert!(programmes.values().all(|n| *n == 40), "{programmes:?}");
    let xml_text = String::from_utf8(xml.clone()).unwrap();
    assert!(xml_text.contains("Channel 20 &lt;HD&gt;"), "escapes kept");
    eprintln!(
        "filtered guide: {} channels, {} programmes, {} bytes",
        channels.len(),
        programmes.values().sum::<usize>(),
        xml.len()
    );

    // gzip: encoded for a client that accepts it, and as a file.
    let (status, body, r) = fetch(addr, "/epg.xml", &[("Accept-Encoding", "gzip")]).await;
    assert_eq!(status, 200);
    assert_eq!(header(&r, "content-encoding").as_deref(), Some("gzip"));
    let gz_tag = header(&r, "etag").expect("an ETag");
    assert_ne!(gz_tag, etag, "another representation, another tag");
    assert_eq!(gunzip(&body), xml);
    let (status, body, r) = fetch(addr, "/epg.xml.gz", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(
        header(&r, "content-type").as_deref(),
        Some("application/gzip")
    );
    assert_eq!(gunzip(&body), xml);

    // Validators.
    let (status, body, r) = fetch(addr, "/epg.xml", &[("If-None-Match", &etag)]).await;
    assert_eq!((status, body.len()), (304, 0));
    assert_eq!(header(&r, "etag").as_deref(), Some(etag.as_str()));
    let (status, _, _) = fetch(addr, "/epg.xml.gz", &[("If-None-Match", &gz_tag)]).await;
    assert_eq!(status, 304);
    let (status, _, _) = fetch(addr, "/epg.xml", &[("If-None-Match", "\"other\"")]).await;
    assert_eq!(status, 200);
    let modified = header(&r, "last-modified").unwrap();
    let (status, _, _) = fetch(addr, "/epg.xml", &[("If-Modified-Since", &modified)]).await;
    assert_eq!(status, 304);

    // Whole.
    let (status, all, _) = fetch(addr, "/epg.xml?all=1", &[]).await;
    assert_eq!(status, 200);
    let (channels, programmes) = parse_guide(&all);
    assert_eq!(channels.len(), 600);
    assert_eq!(programmes.values().sum::<usize>(), 600 * 40);

    // The playlist names it.
    let mut r = get(addr, "/playlist.m3u").await;
    let playlist = String::from_utf8(r.read_to_end(1 << 20).await.unwrap()).unwrap();
    assert!(
        playlist.starts_with(&format!("#EXTM3U url-tvg=\"http://{addr}/epg.xml\"")),
        "{playlist}"
    );

    // A refresh that brings garbage (after `refresh`, 1 s) keeps the last good guide.
    *served.lock().unwrap() = (200, Arc::new(b"<html><body>oops</body></html>".to_vec()));
    let failed = wait_until(Duration::from_secs(20), || async {
        let _ = fetch(addr, "/epg.xml", &[]).await;
        let (_, v) = get_json(addr, "/proxy/channels").await;
        v["guides"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("not <tv>"))
    })
    .await;
    assert!(failed, "the broken refresh is reported");
    let (status, again, r) = fetch(addr, "/epg.xml", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(header(&r, "etag").as_deref(), Some(etag.as_str()));
    assert_eq!(again, xml);
    let (_, v) = get_json(addr, "/proxy/channels").await;
    assert_eq!(v["guides"][0]["channels"], 600, "{v}");
    assert_eq!(v["guides"][0]["programmes"], 600 * 40, "{v}");
}

/// Peak resident memory of process `pid`, KiB.
fn peak_kib_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A 50 MB M3U and a 200 MB guide, both sent without a length, are refused at their limits
/// (`max_source_bytes` 16 MiB, `max_guide_bytes` 100 MiB, the defaults) and the proxy's peak
/// memory grows by less than 64 MiB: the list is read up to its limit, the guide streamed.
#[tokio::test(flavor = "multi_thread")]
async fn oversized_sources_are_refused_within_bounded_memory() {
    const ENTRY: &str =
        "#EXTINF:-1 tvg-id=\"x\",X\nacestream://0123456789abcdef0123456789abcdef01234567\n";
    const PROGRAMME: &str = "<programme start=\"20261202200000 +0000\" channel=\"x\"><title>Again and again</title></programme>\n";
    let list = serve_endless("#EXTM3U\n", ENTRY, 50 << 20).await;
    let guide = serve_endless("<tv>\n", PROGRAMME, 200 << 20).await;
    let dir = tempfile::tempdir().unwrap();
    let (conf, addr) = edge_conf(
        dir.path(),
        &format!(
            "  engines: [{{host: 127.0.0.1, port: 9}}]\n  dvr_window: 0\n  channels:\n    sources: [\"http://{list}/big.m3u\"]\n    list: [{{name: One, id: {}, tvg_id: x}}]\n    epg: [\"http://{guide}/big.xml\"]\n    fetch_timeout: 30\n    check_interval: 0\n",
            content_id(5100)
        ),
    );
    let proxy = spawn_edge_listening(&conf, &[], std::process::Stdio::null(), addr).await;
    let (status, _) = get_json(addr, "/proxy/status").await;
    assert_eq!(status, 200);
    let before = peak_kib_of(proxy.id());
    let (status, body, _) = fetch(addr, "/playlist.m3u", &[]).await;
    assert_eq!(status, 200, "the inline channel is still served");
    assert!(String::from_utf8_lossy(&body).contains(",One\n"));
    let (status, body, _) = fetch(addr, "/epg.xml", &[]).await;
    let body = String::from_utf8_lossy(&body).to_string();
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("larger than max_guide_bytes (104857600)"),
        "{body}"
    );
    let (_, v) = get_json(addr, "/proxy/channels").await;
    let list_error = v["sources"][0]["error"].as_str().unwrap_or("").to_string();
    assert!(
        list_error.contains("larger than max_source_bytes (16777216)"),
        "{v}"
    );
    let after = peak_kib_of(proxy.id());
    eprintln!(
        "peak RSS before {} MiB, after a 50 MB list and a 200 MB guide {} MiB",
        before / 1024,
        after / 1024
    );
    assert!(
        after.saturating_sub(before) < 64 * 1024,
        "peak grew by {} MiB",
        after.saturating_sub(before) / 1024
    );
}

/// Makes a CA and a certificate for 127.0.0.1 signed by it with the `openssl` command, in `dir`:
/// returns the paths of the CA certificate, the server's certificate and its key.
fn make_certificates(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs (apt-get install openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

/// An HTTPS source: where it listens, and how many requests it answered.
struct HttpsSource {
    addr: SocketAddr,
    hits: Arc<std::sync::atomic::AtomicUsize>,
}

/// Serves `body` over HTTPS at every path with the given certificate; counts the requests.
async fn serve_https(cert: &std::path::Path, key: &std::path::Path, body: Vec<u8>) -> HttpsSource {
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let served = count.clone();
    let body = Arc::new(body);
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let (acceptor, body, served) = (acceptor.clone(), body.clone(), served.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(sock).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let _ = tls.read(&mut buf).await;
                served.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = tls.write_all(head.as_bytes()).await;
                let _ = tls.write_all(&body).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    HttpsSource { addr, hits: count }
}

/// `https://` sources (a list and a gzip guide) load over TLS, checked against the CA that
/// `SSL_CERT_FILE` names; a proxy that does not trust that CA refuses them and says why.
#[tokio::test(flavor = "multi_thread")]
async fn https_sources_load_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certificates(dir.path());
    let m3u = format!(
        "#EXTM3U\n#EXTINF:-1 tvg-id=\"gch1.tv\",Secure\nacestream://{}\n",
        content_id(5200)
    );
    let list = serve_https(&cert, &key, m3u.into_bytes()).await;
    let guide = serve_https(&cert, &key, gzip(guide_text(3, 2).as_bytes()))
        .await
        .addr;
    let start = |trust: std::path::PathBuf, name: &str| {
        let port = free_port();
        let conf = dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &conf,
            format!(
                "acestream:\n  listen: [\"127.0.0.1:{port}\"]\n  engines: [{{host: 127.0.0.1, port: 9}}]\n  dvr_window: 0\n  channels:\n    sources: [\"https://{}/list.m3u\"]\n    epg: [\"https://{guide}/guide.xml.gz\"]\n    check_interval: 0\n",
                list.addr
            ),
        )
        .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        async move {
            let trust = trust.display().to_string();
            let env = [("SSL_CERT_FILE", trust.as_str())];
            let child = spawn_edge_listening(&conf, &env, std::process::Stdio::null(), addr).await;
            (child, addr)
        }
    };
    let (trusting, addr) = start(ca, "trusting").await;
    let (status, body, _) = fetch(addr, "/playlist.m3u", &[]).await;
    let text = String::from_utf8_lossy(&body).to_string();
    assert_eq!(status, 200, "{text}");
    assert!(text.contains(",Secure\n"), "{text}");
    assert_eq!(list.hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    let (status, xml, _) = fetch(addr, "/epg.xml", &[]).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&xml));
    let (channels, programmes) = parse_guide(&xml);
    assert_eq!(channels, BTreeSet::from(["gch1.tv".to_string()]));
    assert_eq!(programmes.values().sum::<usize>(), 2);
    drop(trusting);

    // Trusting another CA (the server's own certificate is no CA): refused, and said why.
    let (_refusing, addr) = start(cert.clone(), "refusing").await;
    let _ = fetch(addr, "/playlist.m3u", &[]).await;
    let (_, v) = get_json(addr, "/proxy/channels").await;
    let error = v["sources"][0]["error"].as_str().unwrap_or("").to_string();
    assert!(error.contains("TLS"), "{v}");
    let (status, body, _) = fetch(addr, "/epg.xml", &[]).await;
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
}
