//! A keep-alive HTTPS load client that can go through a forward proxy's `CONNECT`: what
//! `benches/transparent_load.sh` uses to compare intercepted TLS through tollgate's forward
//! listener (CONNECT, then TLS to the leaf tollgate mints) with intercepted TLS through its
//! transparent listener (TLS straight to the origin's name, redirected by the kernel). wrk
//! cannot send CONNECT, and one client for both paths keeps the comparison fair.
//! `benches/load.sh` uses it too (targets `tollgate-intercept` and `tollgate-intercept-new`).
//!
//! ```text
//! connect_load --url https://api.test/hello --cacert CA.pem [--proxy 127.0.0.1:15002]
//!              [-c 64] [-d 10] [--new-connections]
//! ```
//!
//! Opens `-c` connections (each: TCP, `CONNECT host:port` when `--proxy` is given, a TLS
//! handshake with SNI `host` verified against `--cacert`, HTTP/1.1 keep-alive), sends
//! `GET path` on each, one request at a time, for `-d` seconds, and prints one line:
//! `requests=N errors=N seconds=S rps=R p50_ms=X p99_ms=Y`. A connection that fails is counted
//! as one error and not reopened; any non-200 answer is an error. Every wait is bounded by the
//! run's deadline plus 10 s.
//!
//! `--new-connections` measures what a new connection costs instead of a request: each of the
//! `-c` tasks opens a connection (TCP, `CONNECT`, TLS), sends one `GET` with
//! `Connection: close`, reads the answer, closes, and starts over until the deadline. Then
//! `requests` counts completed connections (one request each) and the latencies are whole
//! connections, from the TCP connect to the end of the response.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Largest response head or body this client reads.
const MAX_RESPONSE: usize = 1 << 20;

/// The command line.
struct Args {
    host: String,
    port: u16,
    path: String,
    cacert: String,
    proxy: Option<SocketAddr>,
    connections: usize,
    duration: Duration,
    /// One request per connection (`--new-connections`) rather than keep-alive.
    new_connections: bool,
}

fn parse_args() -> Result<Args> {
    let mut url = None;
    let mut cacert = None;
    let mut proxy = None;
    let mut connections = 64;
    let mut duration = Duration::from_secs(10);
    let mut new_connections = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| anyhow!("{arg} needs a value"));
        match arg.as_str() {
            "--url" => url = Some(value()?),
            "--cacert" => cacert = Some(value()?),
            "--proxy" => proxy = Some(value()?.parse().context("--proxy IP:PORT")?),
            "-c" => connections = value()?.parse().context("-c N")?,
            "-d" => duration = Duration::from_secs(value()?.parse().context("-d SECONDS")?),
            "--new-connections" => new_connections = true,
            other => bail!("unknown argument {other}"),
        }
    }
    let url = url.ok_or_else(|| anyhow!("--url is required"))?;
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| anyhow!("--url must be https://HOST[:PORT]/PATH"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (host.to_string(), port.parse().context("the URL's port")?),
        None => (authority.to_string(), 443),
    };
    Ok(Args {
        host,
        port,
        path: if path.is_empty() {
            "/".into()
        } else {
            path.into()
        },
        cacert: cacert.ok_or_else(|| anyhow!("--cacert is required"))?,
        proxy,
        connections,
        duration,
        new_connections,
    })
}

fn tls_connector(cacert: &str) -> Result<TlsConnector> {
    let pem = std::fs::read(cacert).with_context(|| format!("read {cacert}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.context("a PEM certificate")?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Reads until `buf` holds a whole response head; returns its length and the status and
/// `Content-Length`.
async fn read_head(
    io: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
) -> Result<(usize, u16, usize)> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(len) = response.parse(buf)? {
            let status = response.code.unwrap_or(0);
            let length = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                .unwrap_or(0);
            return Ok((len, status, length));
        }
        if buf.len() > MAX_RESPONSE {
            bail!("response head too large");
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed mid-response");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads one whole response (head and `Content-Length` body) from `io`; its status.
async fn read_response(io: &mut (impl AsyncRead + Unpin), buf: &mut Vec<u8>) -> Result<u16> {
    let (head, status, length) = read_head(io, buf).await?;
    if length > MAX_RESPONSE {
        bail!("response body too large");
    }
    while buf.len() < head + length {
        let mut chunk = [0u8; 16 * 1024];
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed mid-body");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    buf.drain(..head + length);
    Ok(status)
}

/// TCP to the proxy (then `CONNECT`) or to the origin's name, then TLS.
async fn open(
    args: &Args,
    tls: &TlsConnector,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = match args.proxy {
        Some(proxy) => {
            let mut tcp = TcpStream::connect(proxy).await?;
            let authority = format!("{}:{}", args.host, args.port);
            tcp.write_all(
                format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes(),
            )
            .await?;
            let mut buf = Vec::new();
            let (head, status, _) = read_head(&mut tcp, &mut buf).await?;
            if status != 200 || buf.len() != head {
                bail!("CONNECT answered {status}");
            }
            tcp
        }
        None => TcpStream::connect((args.host.as_str(), args.port)).await?,
    };
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(args.host.clone())?;
    Ok(tls.connect(name, tcp).await?)
}

/// What one connection did: latencies (µs) of its completed requests, and its errors.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
}

impl Tally {
    /// Records one request (or new connection) that began at `start`: its latency if it was
    /// answered 200, else an error. False when the task must stop (after an error).
    fn record(&mut self, outcome: Result<u16>, start: Instant) -> bool {
        match outcome {
            Ok(200) => {
                let us = u32::try_from(start.elapsed().as_micros()).unwrap_or(u32::MAX);
                self.latencies_us.push(us);
                true
            }
            Ok(status) => {
                eprintln!("connect_load: status {status}");
                self.errors += 1;
                false
            }
            Err(e) => {
                eprintln!("connect_load: request failed: {e:#}");
                self.errors += 1;
                false
            }
        }
    }
}

async fn connection(args: Arc<Args>, tls: TlsConnector, until: Instant) -> Tally {
    let mut tally = Tally::default();
    let mut io = match open(&args, &tls).await {
        Ok(io) => io,
        Err(e) => {
            eprintln!("connect_load: connection failed: {e:#}");
            tally.errors += 1;
            return tally;
        }
    };
    let request = format!("GET {} HTTP/1.1\r\nHost: {}\r\n\r\n", args.path, args.host);
    let mut buf = Vec::with_capacity(4096);
    while Instant::now() < until {
        let start = Instant::now();
        let outcome = async {
            io.write_all(request.as_bytes()).await?;
            read_response(&mut io, &mut buf).await
        }
        .await;
        if !tally.record(outcome, start) {
            return tally;
        }
    }
    let _ = io.shutdown().await;
    tally
}

/// `--new-connections`: a new connection per request (TCP, `CONNECT`, TLS, one `GET`, close)
/// until `until`; each latency is a whole connection's. The first failure ends the task, as in
/// [`connection`].
async fn new_connections(args: Arc<Args>, tls: TlsConnector, until: Instant) -> Tally {
    let mut tally = Tally::default();
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        args.path, args.host
    );
    let mut buf = Vec::with_capacity(4096);
    while Instant::now() < until {
        let start = Instant::now();
        let outcome = async {
            let mut io = open(&args, &tls).await?;
            io.write_all(request.as_bytes()).await?;
            buf.clear();
            let status = read_response(&mut io, &mut buf).await?;
            let _ = io.shutdown().await;
            anyhow::Ok(status)
        }
        .await;
        if !tally.record(outcome, start) {
            return tally;
        }
    }
    tally
}

fn percentile_ms(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    // Nearest rank; the index is within the slice by construction.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    f64::from(sorted[rank.clamp(1, sorted.len()) - 1]) / 1000.0
}

async fn run(args: Args) -> Result<()> {
    let tls = tls_connector(&args.cacert)?;
    let args = Arc::new(args);
    let start = Instant::now();
    let until = start + args.duration;
    let tasks: Vec<_> = (0..args.connections)
        .map(|_| {
            if args.new_connections {
                tokio::spawn(new_connections(args.clone(), tls.clone(), until))
            } else {
                tokio::spawn(connection(args.clone(), tls.clone(), until))
            }
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        // A connection stuck past the deadline is abandoned, and counted as an error.
        match tokio::time::timeout_at((until + Duration::from_secs(10)).into(), task).await {
            Ok(Ok(tally)) => {
                latencies.extend(tally.latencies_us);
                errors += tally.errors;
            }
            _ => errors += 1,
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    println!(
        "requests={} errors={errors} seconds={seconds:.2} rps={:.2} p50_ms={:.3} p99_ms={:.3}",
        latencies.len(),
        latencies.len() as f64 / seconds,
        percentile_ms(&latencies, 50.0),
        percentile_ms(&latencies, 99.0),
    );
    Ok(())
}

fn main() -> Result<()> {
    let args = parse_args()?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}
