//! OTLP/HTTP's one request: `POST` a protobuf `ExportProfilesServiceRequest` (gzipped unless
//! configured otherwise) and read the answer, over a plain TCP connection per export (one every
//! interval: nothing to gain from keeping it open, nothing to lose when the collector restarts).
//! A hand-written HTTP/1.1 client of some hundred lines, so the agent needs no HTTP stack.
//! Classifies failures as OTLP says: no connection, a timeout, 429, 502, 503 and 504 are worth a
//! retry; any other refusal is not.

use std::{
    io::{Read, Write},
    net::{TcpStream, ToSocketAddrs},
    time::{Duration, Instant},
};

use flate2::{Compression, write::GzEncoder};
use prost::Message as _;

use super::config::{Endpoint, ExportConfig};
use crate::output::otlp::proto::ExportProfilesServiceResponse;

/// The most of an answer read: a collector's answers are a few bytes to a short message.
const MAX_RESPONSE: u64 = 1 << 20;

/// Why an export failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Try again later: the collector is down, slow or asks for it.
    #[error("{0}")]
    Retryable(String),
    /// The collector refused this request; sending it again would not help.
    #[error("{0}")]
    Permanent(String),
}

/// What the collector said of a request it took.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// Profiles it rejected (OTLP's partial success), and why.
    pub rejected_profiles: i64,
    pub message: String,
}

/// Gzips `body` when configured: the body the request carries.
pub fn encode_body(config: &ExportConfig, body: &[u8]) -> Vec<u8> {
    if !config.gzip {
        return body.to_vec();
    }
    let mut gz = GzEncoder::new(Vec::with_capacity(body.len() / 4), Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = gz.write_all(body);
    gz.finish().unwrap_or_default()
}

/// Sends one request (`body` as `encode_body` made it) and reads the answer, within the
/// configured timeout.
pub fn post(config: &ExportConfig, body: &[u8]) -> Result<Accepted, SendError> {
    let deadline = Instant::now() + config.timeout;
    let mut stream = connect(&config.endpoint, config.timeout)?;
    let io = |what: &str, e: std::io::Error| {
        SendError::Retryable(format!("{what} {}: {e}", config.endpoint))
    };
    stream
        .set_write_timeout(Some(config.timeout))
        .and_then(|()| stream.set_nodelay(true))
        .map_err(|e| io("configuring the connection to", e))?;
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: prof-bpf/{}\r\n\
         Content-Type: application/x-protobuf\r\nContent-Length: {}\r\nConnection: close\r\n",
        config.endpoint.path,
        host_header(&config.endpoint),
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    if config.gzip {
        head.push_str("Content-Encoding: gzip\r\n");
    }
    for (k, v) in &config.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body))
        .and_then(|()| stream.flush())
        .map_err(|e| io("sending to", e))?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(SendError::Retryable(format!(
                "no answer from {} within {:?}",
                config.endpoint, config.timeout
            )));
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| io("reading from", e))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.len() as u64 > MAX_RESPONSE {
                    break;
                }
                if response_complete(&answer) {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io("reading the answer of", e)),
        }
    }
    interpret(&answer, &config.endpoint)
}

fn host_header(e: &Endpoint) -> String {
    if e.host.contains(':') {
        format!("[{}]:{}", e.host, e.port)
    } else {
        format!("{}:{}", e.host, e.port)
    }
}

fn connect(endpoint: &Endpoint, timeout: Duration) -> Result<TcpStream, SendError> {
    let addrs = (endpoint.host.as_str(), endpoint.port)
        .to_socket_addrs()
        .map_err(|e| SendError::Retryable(format!("resolving {}: {e}", endpoint.host)))?;
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(format!("connecting to {endpoint} ({addr}): {e}")),
        }
    }
    Err(SendError::Retryable(last.unwrap_or_else(|| {
        format!("{} resolves to no address", endpoint.host)
    })))
}

/// The status line, headers and body of an HTTP/1.1 answer.
struct Response<'a> {
    status: u16,
    headers: Vec<(&'a str, &'a str)>,
    body: Vec<u8>,
}

fn header<'a>(headers: &[(&'a str, &'a str)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

/// Whether `raw` holds a whole answer already (by its Content-Length or its last chunk), so
/// the client need not wait for the server to close.
fn response_complete(raw: &[u8]) -> bool {
    parse(raw).is_some_and(|r| r.body_complete)
}

struct Parsed<'a> {
    response: Response<'a>,
    body_complete: bool,
}

fn parse(raw: &[u8]) -> Option<Parsed<'_>> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(&str, &str)> = lines.filter_map(|l| l.split_once(':')).collect();
    let rest = &raw[end + 4..];
    let (body, complete) = if header(&headers, "transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        dechunk(rest)
    } else if let Some(len) =
        header(&headers, "content-length").and_then(|v| v.parse::<usize>().ok())
    {
        (rest[..rest.len().min(len)].to_vec(), rest.len() >= len)
    } else {
        (rest.to_vec(), false)
    };
    Some(Parsed {
        response: Response {
            status,
            headers,
            body,
        },
        body_complete: complete,
    })
}

/// A chunked body, and whether its last chunk came.
fn dechunk(mut raw: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else {
            return (out, false);
        };
        let size = std::str::from_utf8(&raw[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok());
        let Some(size) = size else {
            return (out, false);
        };
        if size == 0 {
            return (out, true);
        }
        let data = &raw[eol + 2..];
        if data.len() < size + 2 {
            out.extend_from_slice(&data[..data.len().min(size)]);
            return (out, false);
        }
        out.extend_from_slice(&data[..size]);
        raw = &data[size + 2..];
    }
}

/// What an answer means for the request.
fn interpret(raw: &[u8], endpoint: &Endpoint) -> Result<Accepted, SendError> {
    let Some(Parsed { response, .. }) = parse(raw) else {
        return Err(SendError::Retryable(format!(
            "{endpoint} closed the connection without a whole HTTP answer ({} bytes)",
            raw.len()
        )));
    };
    let status = response.status;
    if (200..300).contains(&status) {
        let answer = ExportProfilesServiceResponse::decode(response.body.as_slice())
            .unwrap_or_default()
            .partial_success
            .unwrap_or_default();
        return Ok(Accepted {
            rejected_profiles: answer.rejected_profiles,
            message: answer.error_message,
        });
    }
    let text = body_text(&response);
    let why = format!("{endpoint} answered {status}{text}");
    match status {
        429 | 502 | 503 | 504 => Err(SendError::Retryable(why)),
        _ => Err(SendError::Permanent(why)),
    }
}

/// A short account of an error body: a google.rpc.Status's message, or text.
fn body_text(response: &Response<'_>) -> String {
    #[derive(Clone, PartialEq, prost::Message)]
    struct Status {
        #[prost(int32, tag = "1")]
        code: i32,
        #[prost(string, tag = "2")]
        message: String,
    }
    let protobuf =
        header(&response.headers, "content-type").is_some_and(|t| t.contains("protobuf"));
    let text = if protobuf {
        Status::decode(response.body.as_slice())
            .map(|s| s.message)
            .unwrap_or_default()
    } else {
        String::from_utf8_lossy(&response.body).into_owned()
    };
    let text: String = text.trim().chars().take(200).collect();
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}

#[cfg(test)]
mod tests {
    use std::{net::TcpListener, thread};

    use super::*;
    use crate::agent::config::Protocol;

    fn endpoint() -> Endpoint {
        Endpoint {
            host: "127.0.0.1".into(),
            port: 4318,
            path: "/v1development/profiles".into(),
        }
    }

    #[test]
    fn answers_are_classified_as_otlp_says() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 2\r\n\r\n\x0a\x00";
        assert_eq!(interpret(ok, &endpoint()), Ok(Accepted::default()));
        let partial = ExportProfilesServiceResponse {
            partial_success: Some(crate::output::otlp::proto::ExportProfilesPartialSuccess {
                rejected_profiles: 2,
                error_message: "too old".into(),
            }),
        }
        .encode_to_vec();
        let mut raw = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
            partial.len()
        )
        .into_bytes();
        raw.extend(&partial);
        raw.extend(b"\r\n0\r\n\r\n");
        assert!(response_complete(&raw));
        assert_eq!(interpret(&raw, &endpoint()).unwrap().rejected_profiles, 2);
        let busy = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n";
        assert!(matches!(
            interpret(busy, &endpoint()),
            Err(SendError::Retryable(_))
        ));
        let bad = b"HTTP/1.1 415 Unsupported Media Type\r\nContent-Type: text/plain\r\nContent-Length: 22\r\n\r\nunsupported media type";
        let e = interpret(bad, &endpoint()).unwrap_err();
        assert!(
            matches!(&e, SendError::Permanent(m) if m.contains("415: unsupported media type")),
            "{e:?}"
        );
        assert!(matches!(
            interpret(b"HTTP/1.1 2", &endpoint()),
            Err(SendError::Retryable(_))
        ));
        assert!(!response_complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab"
        ));
    }

    /// The body of a whole request in `raw`, by its Content-Length.
    fn request_body(raw: &[u8]) -> Option<&[u8]> {
        let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = std::str::from_utf8(&raw[..end]).ok()?;
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))?
            .parse()
            .ok()?;
        raw.get(end + 4..end + 4 + len)
    }

    /// A real socket: the request as a server reads it, gzipped, with the configured headers;
    /// and a refused connection is worth a retry.
    #[test]
    fn posts_over_a_socket_and_retries_a_refused_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            // Until the head and as many body bytes as its Content-Length says.
            loop {
                let n = s.read(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
                if n == 0 || request_body(&got).is_some() {
                    break;
                }
            }
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n\x0a\x00")
                .unwrap();
            got
        });
        let config = ExportConfig {
            protocol: Protocol::HttpProtobuf,
            endpoint: Endpoint { port, ..endpoint() },
            headers: vec![("api-key".into(), "secret".into())],
            gzip: true,
            timeout: Duration::from_secs(5),
            resource: Vec::new(),
        };
        let body = encode_body(&config, b"hello hello hello hello");
        assert_eq!(post(&config, &body), Ok(Accepted::default()));
        let got = server.join().unwrap();
        let sent = request_body(&got).expect("a whole request");
        let text = String::from_utf8_lossy(&got[..got.len() - sent.len()]).into_owned();
        assert!(
            text.starts_with("POST /v1development/profiles HTTP/1.1\r\n"),
            "{text}"
        );
        assert!(
            text.contains("Content-Encoding: gzip\r\n") && text.contains("api-key: secret\r\n")
        );
        let mut plain = String::new();
        flate2::read::GzDecoder::new(sent)
            .read_to_string(&mut plain)
            .unwrap();
        assert_eq!(plain, "hello hello hello hello");

        // Nobody listens on the port any more.
        let e = post(&config, &body).unwrap_err();
        assert!(matches!(e, SendError::Retryable(_)), "{e:?}");
    }
}
