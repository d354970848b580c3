//! What a transparent listener's client speaks, told from its first bytes, read with
//! `MSG_PEEK` so they stay in the socket: a blind tunnel then carries them to the origin
//! untouched, and the TLS handshake or HTTP parser reads them as if nothing had looked.
//!
//! - a TLS ClientHello (first byte `0x16`): parsed by rustls' own [`Acceptor`] on a copy of the
//!   peeked bytes, so tollgate has no ClientHello parser of its own; its SNI names the host;
//! - HTTP/1.x (a request line's method) or HTTP/2 with prior knowledge (`PRI * HTTP/2.0`);
//! - anything else, or nothing before the sniff timeout (a server-speaks-first protocol such as
//!   SSH or SMTP), or a ClientHello that never completes: [`Sniffed::Opaque`].

use std::time::Duration;

use rustls::server::Acceptor;
use tokio::net::TcpStream;

/// The most bytes peeked: one full TLS record (a ClientHello fits in one in practice).
pub const MAX_PEEK: usize = 5 + 16 * 1024;

/// How long to wait before peeking again when the bytes so far cannot tell yet (the socket
/// stays readable while unread bytes wait, so readiness alone would spin).
const REPEEK_AFTER: Duration = Duration::from_millis(2);

/// What the first bytes showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniffed {
    /// A complete TLS ClientHello, with its SNI (lower-cased) if it sent one.
    Tls { sni: Option<String> },
    /// An HTTP/1.x request line, or the HTTP/2 prior-knowledge preface.
    Http,
    /// Bytes tollgate cannot read as TLS or HTTP, or none before the sniff timeout.
    Opaque,
    /// The client closed (or reset) the connection before sending anything.
    Closed,
}

/// The verdict on the bytes seen so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classified {
    /// Known.
    Done(Sniffed),
    /// A prefix of something known: more bytes are needed.
    NeedMore,
}

/// Request-line starts tollgate serves as HTTP (with the following space), and the HTTP/2
/// prior-knowledge preface's.
const HTTP_STARTS: &[&[u8]] = &[
    b"GET ",
    b"HEAD ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"TRACE ",
    b"CONNECT ",
    b"PRI * HTTP/2.0",
];

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// Classifies the first bytes of a connection (pure: the unit tests' subject).
pub fn classify(bytes: &[u8]) -> Classified {
    let Some(&first) = bytes.first() else {
        return Classified::NeedMore;
    };
    if first == TLS_HANDSHAKE {
        return client_hello(bytes);
    }
    let mut prefix_of_one = false;
    for start in HTTP_STARTS {
        if bytes.starts_with(start) {
            return Classified::Done(Sniffed::Http);
        }
        prefix_of_one |= start.starts_with(bytes);
    }
    if prefix_of_one {
        Classified::NeedMore
    } else {
        Classified::Done(Sniffed::Opaque)
    }
}

/// Reads a ClientHello from a copy of `bytes` with rustls' parser.
fn client_hello(bytes: &[u8]) -> Classified {
    let mut acceptor = Acceptor::default();
    let mut rest = bytes;
    while !rest.is_empty() {
        match acceptor.read_tls(&mut rest) {
            Ok(0) => break,
            Ok(_) => {}
            // More than rustls buffers before a ClientHello: not one tollgate can read.
            Err(_) => return Classified::Done(Sniffed::Opaque),
        }
    }
    match acceptor.accept() {
        Ok(None) => Classified::NeedMore,
        Ok(Some(accepted)) => Classified::Done(Sniffed::Tls {
            sni: accepted
                .client_hello()
                .server_name()
                .map(str::to_ascii_lowercase),
        }),
        Err(_) => Classified::Done(Sniffed::Opaque),
    }
}

/// Peeks at `stream` until its first bytes tell what it speaks, or `timeout` passes.
pub async fn sniff(stream: &TcpStream, timeout: Duration) -> Sniffed {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = vec![0u8; MAX_PEEK];
    let mut seen = 0;
    loop {
        let peeked = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Err(_) => return Sniffed::Opaque,
            Ok(Err(_)) | Ok(Ok(0)) => return Sniffed::Closed,
            Ok(Ok(n)) => n,
        };
        let Some(bytes) = buf.get(..peeked) else {
            return Sniffed::Opaque;
        };
        match classify(bytes) {
            Classified::Done(sniffed) => return sniffed,
            Classified::NeedMore if peeked >= MAX_PEEK => return Sniffed::Opaque,
            Classified::NeedMore => {
                if peeked == seen {
                    let next = (tokio::time::Instant::now() + REPEEK_AFTER).min(deadline);
                    tokio::time::sleep_until(next).await;
                    if tokio::time::Instant::now() >= deadline {
                        return Sniffed::Opaque;
                    }
                }
                seen = peeked;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A real ClientHello from rustls' client, for `sni`.
    fn client_hello_bytes(sni: &str) -> Vec<u8> {
        let roots = rustls::RootCertStore::empty();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        client.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn reads_the_sni_of_a_client_hello_and_waits_for_the_rest_of_one() {
        let hello = client_hello_bytes("API.Example.test");
        assert_eq!(
            classify(&hello),
            Classified::Done(Sniffed::Tls {
                sni: Some("api.example.test".into())
            })
        );
        for cut in [1, 5, hello.len() / 2, hello.len() - 1] {
            assert_eq!(classify(&hello[..cut]), Classified::NeedMore, "{cut}");
        }
        let no_sni = client_hello_bytes("192.0.2.2");
        assert_eq!(
            classify(&no_sni),
            Classified::Done(Sniffed::Tls { sni: None }),
            "rustls sends no SNI for an IP address"
        );
    }

    #[test]
    fn tells_http_from_its_request_line_and_waits_on_a_prefix() {
        for start in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /x HTTP/1.0\r\n",
            b"DELETE ",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert_eq!(
                classify(start),
                Classified::Done(Sniffed::Http),
                "{start:?}"
            );
        }
        for prefix in [&b""[..], b"G", b"GE", b"GET", b"OPTIO", b"PRI * H"] {
            assert_eq!(classify(prefix), Classified::NeedMore, "{prefix:?}");
        }
    }

    #[test]
    fn anything_else_is_opaque() {
        for other in [
            &b"SSH-2.0-OpenSSH_9.6\r\n"[..],
            b"get / HTTP/1.1\r\n",
            b"GETX / HTTP/1.1",
            b"\x00\x01\x02",
            // A TLS record that is not a handshake a server can accept.
            b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00",
        ] {
            assert_eq!(
                classify(other),
                Classified::Done(Sniffed::Opaque),
                "{other:?}"
            );
        }
    }

    #[tokio::test]
    async fn peeks_without_consuming_and_times_out_on_silence() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();

        // A request split in two writes: the first is only a prefix of a method.
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        client.write_all(b"GE").await.unwrap();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            client.write_all(b"T / HTTP/1.1\r\n\r\n").await.unwrap();
            client
        });
        let sniffed = sniff(&server, Duration::from_secs(5)).await;
        assert_eq!(sniffed, Sniffed::Http);
        let _client = writer.await.unwrap();
        let mut server = server;
        let mut head = [0u8; 18];
        server.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"GET / HTTP/1.1\r\n\r\n", "nothing was consumed");

        // A client that waits for the server to speak first: opaque after the timeout.
        let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let started = std::time::Instant::now();
        let sniffed = sniff(&server, Duration::from_millis(100)).await;
        assert_eq!(sniffed, Sniffed::Opaque);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(100) && waited < Duration::from_secs(2),
            "{waited:?}"
        );

        // A client that closes at once.
        let closing = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        drop(closing);
        assert_eq!(
            sniff(&server, Duration::from_secs(5)).await,
            Sniffed::Closed
        );
    }
}
