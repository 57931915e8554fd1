//! msd_lite beside the floor and the proxy (`MSD_LITE_BIN=<path>`): the C fan-out server the
//! issue measured (it writes the stream once into a ring in a temp file and serves every client
//! with `sendfile` from it). It reads multicast UDP, so the bench feeds it the simulator's stream
//! on loopback: one reader of the simulator in this process sends each chunk as datagrams of 7
//! packets (1316 bytes, as IPTV multicast does) to a group routed to `lo`. Its CPU and memory are
//! read from its own `/proc/PID`, like every row's; the feeder's cost is this process's.
//!
//! Multicast on loopback needs `lo` to allow it and a route for 239.0.0.0/8 (`ip link set lo
//! multicast on`, `ip route replace 239.0.0.0/8 dev lo`): set here when missing, which needs
//! root; without it the row is left out with a message.

use super::procs::{free_port, wait_listening, Proc};
use std::net::SocketAddr;
use std::process::{Command, Stdio};

/// The multicast group the feeder sends to (administratively scoped, never leaves the host).
const GROUP: &str = "239.255.42.1";

/// Datagram size: seven TS packets, as IPTV multicast sends.
const DATAGRAM: usize = 7 * 188;

/// A running msd_lite and its feeder; both stop when dropped.
pub struct MsdLite {
    /// The server's process (its `addr` is where viewers connect).
    pub proc_: Proc,
    /// What viewers ask for: `/udp/<group>:<port>` without the prefix.
    pub source: String,
    feeder: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for MsdLite {
    fn drop(&mut self) {
        self.feeder.abort();
    }
}

/// Routes multicast to `lo` (idempotent). `Err` with what failed.
fn route_multicast_to_loopback() -> Result<(), String> {
    for args in [
        &["link", "set", "lo", "multicast", "on"][..],
        &["route", "replace", "239.0.0.0/8", "dev", "lo"][..],
    ] {
        let ok = Command::new("ip")
            .args(args)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err(format!("`ip {}` failed (root needed)", args.join(" ")));
        }
    }
    Ok(())
}

/// The config: its example's (`conf/msd_lite.conf`: one thread, 1 MiB ring, 4 MiB precache)
/// with one HTTP listener on `port`, the source joined on `lo`, and no congestion-control
/// override. Laid out one element per line as the example is: its XML reader missed elements
/// that shared a line, and with two threads it answered `500` (`EINVAL` from its thread pool).
fn config(port: u16) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<msd>
	<log>
		<level>6</level>
	</log>
	<threadPool>
		<threadsCountMax>1</threadsCountMax>
		<fBindToCPU>yes</fBindToCPU>
	</threadPool>
	<HTTP>
		<bindList>
			<bind><address>127.0.0.1:{port}</address><fAcceptFilter>y</fAcceptFilter></bind>
		</bindList>
		<hostnameList>
			<hostname>*</hostname>
		</hostnameList>
	</HTTP>
	<hubProfileList>
		<hubProfile>
			<fDropSlowClients>no</fDropSlowClients>
			<fSocketHalfClosed>no</fSocketHalfClosed>
			<fSocketTCPNoDelay>yes</fSocketTCPNoDelay>
			<fSocketTCPNoPush>yes</fSocketTCPNoPush>
			<precache>4096</precache>
			<ringBufSize>1024</ringBufSize>
			<skt>
				<sndBuf>512</sndBuf>
				<sndLoWatermark>64</sndLoWatermark>
			</skt>
			<headersList>
				<header>Content-Type: video/mp2t</header>
			</headersList>
		</hubProfile>
	</hubProfileList>
	<sourceProfileList>
		<sourceProfile>
			<skt>
				<rcvBuf>512</rcvBuf>
				<rcvLoWatermark>48</rcvLoWatermark>
				<rcvTimeout>2</rcvTimeout>
			</skt>
			<multicast>
				<ifName>lo</ifName>
				<rejoinTime>0</rejoinTime>
			</multicast>
		</sourceProfile>
	</sourceProfileList>
</msd>
"#
    )
}

/// Starts msd_lite (`bin`) fed with the simulator's stream at `sim`; `None` with a message when
/// multicast cannot be routed to `lo` here.
pub fn start(bin: &str, sim: SocketAddr) -> Option<MsdLite> {
    if let Err(e) = route_multicast_to_loopback() {
        eprintln!("msd_lite row left out: {e}");
        return None;
    }
    let port = free_port();
    let group: SocketAddr = format!("{GROUP}:{}", free_port()).parse().unwrap();
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = dir.path().join("msd_lite.conf");
    std::fs::write(&conf, config(port)).expect("write msd_lite.conf");
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start msd_lite");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_listening(addr);
    let feeder = tokio::spawn(feed(sim, group));
    Some(MsdLite {
        proc_: Proc::new(child, addr),
        source: group.to_string(),
        feeder,
        _dir: dir,
    })
}

/// Reads the simulator's stream and sends it to `group` in datagrams of [`DATAGRAM`] bytes.
async fn feed(sim: SocketAddr, group: SocketAddr) {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("udp socket");
    let Ok(mut r) = super::load::open(
        super::load::Target::Direct,
        sim,
        &super::procs::content_id(1),
    )
    .await
    else {
        eprintln!("msd_lite feeder: the simulator did not answer");
        return;
    };
    let mut pending: Vec<u8> = Vec::with_capacity(DATAGRAM * 64);
    while let Ok(Some(chunk)) = r.next_chunk().await {
        pending.extend_from_slice(&chunk);
        let whole = pending.len() / DATAGRAM * DATAGRAM;
        for d in pending[..whole].chunks(DATAGRAM) {
            if sock.send_to(d, group).await.is_err() {
                return;
            }
        }
        pending.drain(..whole);
    }
}
