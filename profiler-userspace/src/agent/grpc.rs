//! OTLP/gRPC's one call: `ProfilesService/Export` over HTTP/2 without TLS (h2c, prior
//! knowledge), the request as one length-prefixed message (gzipped and flagged so unless
//! configured otherwise), the answer's `grpc-status` from the trailers (or from the headers of a
//! trailers-only answer). HTTP/2 itself is the `h2` crate, driven by a current-thread tokio
//! runtime made for each export inside the export thread (one call per interval: nothing runs
//! between exports). Failures are classified as OTLP says: no connection, a timeout, and the
//! codes CANCELLED, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, OUT_OF_RANGE, UNAVAILABLE and
//! DATA_LOSS are worth a retry; any other code is not.

use std::io::{Read as _, Write as _};

use bytes::Bytes;
use flate2::{Compression, read::GzDecoder, write::GzEncoder};
use prost::Message as _;

use super::{
    config::ExportConfig,
    http::{Accepted, SendError},
};
use crate::output::otlp::proto::ExportProfilesServiceResponse;

/// Sends one request (`message`, the encoded protobuf) and reads the answer, within the
/// configured timeout.
pub fn export(config: &ExportConfig, message: &[u8]) -> Result<Accepted, SendError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| SendError::Retryable(format!("starting the gRPC client: {e}")))?;
    runtime.block_on(async {
        tokio::time::timeout(config.timeout, call(config, message))
            .await
            .unwrap_or_else(|_| {
                Err(SendError::Retryable(format!(
                    "no answer from {} within {:?}",
                    where_to(config),
                    config.timeout
                )))
            })
    })
}

fn where_to(config: &ExportConfig) -> String {
    format!("{}:{} (gRPC)", config.endpoint.host, config.endpoint.port)
}

async fn call(config: &ExportConfig, message: &[u8]) -> Result<Accepted, SendError> {
    let to = where_to(config);
    let retry =
        |what: &str, e: &dyn std::fmt::Display| SendError::Retryable(format!("{what} {to}: {e}"));
    let tcp = tokio::net::TcpStream::connect((config.endpoint.host.as_str(), config.endpoint.port))
        .await
        .map_err(|e| retry("connecting to", &e))?;
    let _ = tcp.set_nodelay(true);
    let (client, connection) = h2::client::handshake(tcp)
        .await
        .map_err(|e| retry("HTTP/2 handshake with", &e))?;
    // The connection is driven while the call runs; it ends with the runtime.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client
        .ready()
        .await
        .map_err(|e| retry("connection to", &e))?;
    let authority = if config.endpoint.host.contains(':') {
        format!("[{}]:{}", config.endpoint.host, config.endpoint.port)
    } else {
        format!("{}:{}", config.endpoint.host, config.endpoint.port)
    };
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{authority}{}", config.endpoint.path))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header(
            "user-agent",
            concat!("prof-bpf/", env!("CARGO_PKG_VERSION")),
        );
    if config.gzip {
        request = request.header("grpc-encoding", "gzip");
    }
    for (k, v) in &config.headers {
        request = request.header(k.to_ascii_lowercase(), v);
    }
    let request = request
        .body(())
        .map_err(|e| SendError::Permanent(format!("a header cannot be sent: {e}")))?;
    let (response, mut stream) = client
        .send_request(request, false)
        .map_err(|e| retry("sending to", &e))?;
    stream
        .send_data(Bytes::from(frame(message, config.gzip)), true)
        .map_err(|e| retry("sending to", &e))?;
    let response = response.await.map_err(|e| retry("the answer of", &e))?;
    let (parts, mut body) = response.into_parts();
    if parts.status != http::StatusCode::OK {
        let why = format!("{to} answered HTTP {}", parts.status);
        return Err(match parts.status.as_u16() {
            429 | 502 | 503 | 504 => SendError::Retryable(why),
            _ => SendError::Permanent(why),
        });
    }
    // A trailers-only answer has the status in its headers.
    if let Some(code) = parts.headers.get("grpc-status") {
        return status(code.as_bytes(), parts.headers.get("grpc-message"), &[], &to);
    }
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| retry("reading the answer of", &e))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = body
        .trailers()
        .await
        .map_err(|e| retry("reading the trailers of", &e))?
        .unwrap_or_default();
    let code = trailers
        .get("grpc-status")
        .map(|v| v.as_bytes().to_vec())
        .unwrap_or_else(|| b"2".to_vec()); // no status: UNKNOWN
    status(&code, trailers.get("grpc-message"), &data, &to)
}

/// gRPC's length-prefixed message: a compressed flag, the length (big-endian), the bytes.
fn frame(message: &[u8], gzip: bool) -> Vec<u8> {
    let payload = if gzip {
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        let _ = gz.write_all(message);
        gz.finish().unwrap_or_default()
    } else {
        message.to_vec()
    };
    let mut out = Vec::with_capacity(payload.len() + 5);
    out.push(u8::from(gzip));
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

/// The message in a length-prefixed frame, decompressed.
fn unframe(data: &[u8]) -> Option<Vec<u8>> {
    let (&flag, rest) = data.split_first()?;
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let payload = rest.get(4..4 + len)?;
    if flag == 0 {
        return Some(payload.to_vec());
    }
    let mut out = Vec::new();
    GzDecoder::new(payload).read_to_end(&mut out).ok()?;
    Some(out)
}

fn status(
    code: &[u8],
    message: Option<&http::HeaderValue>,
    data: &[u8],
    to: &str,
) -> Result<Accepted, SendError> {
    let code: u32 = std::str::from_utf8(code)
        .ok()
        .and_then(|c| c.trim().parse().ok())
        .unwrap_or(2);
    if code == 0 {
        let answer = unframe(data)
            .and_then(|m| ExportProfilesServiceResponse::decode(m.as_slice()).ok())
            .unwrap_or_default()
            .partial_success
            .unwrap_or_default();
        return Ok(Accepted {
            rejected_profiles: answer.rejected_profiles,
            message: answer.error_message,
        });
    }
    let text = message
        .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
        .unwrap_or_default();
    let why = format!("{to} answered gRPC status {code}: {text}");
    match code {
        1 | 4 | 8 | 10 | 11 | 14 | 15 => Err(SendError::Retryable(why)),
        _ => Err(SendError::Permanent(why)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_plain_and_gzipped() {
        let m = b"an export request, an export request".to_vec();
        for gzip in [false, true] {
            let f = frame(&m, gzip);
            assert_eq!(f[0], u8::from(gzip));
            assert_eq!(
                u32::from_be_bytes(f[1..5].try_into().unwrap()) as usize,
                f.len() - 5
            );
            assert_eq!(unframe(&f), Some(m.clone()));
        }
        assert_eq!(unframe(&[0, 0, 0, 0, 9, 1]), None, "short");
    }

    #[test]
    fn statuses_are_classified_as_otlp_says() {
        let ok = frame(
            &ExportProfilesServiceResponse::default().encode_to_vec(),
            false,
        );
        assert_eq!(status(b"0", None, &ok, "c"), Ok(Accepted::default()));
        assert!(matches!(
            status(b"14", None, &[], "c"),
            Err(SendError::Retryable(_))
        ));
        assert!(matches!(
            status(b"4", None, &[], "c"),
            Err(SendError::Retryable(_))
        ));
        let bad = http::HeaderValue::from_static("proto: illegal wireType 7");
        let e = status(b"3", Some(&bad), &[], "c").unwrap_err();
        assert!(
            matches!(&e, SendError::Permanent(m) if m.contains("status 3: proto")),
            "{e:?}"
        );
        assert!(matches!(
            status(b"x", None, &[], "c"),
            Err(SendError::Permanent(_))
        ));
    }

    #[test]
    fn a_refused_connection_is_worth_a_retry() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = ExportConfig {
            protocol: super::super::config::Protocol::Grpc,
            endpoint: super::super::config::Endpoint {
                host: "127.0.0.1".into(),
                port,
                path: super::super::config::GRPC_PATH.into(),
            },
            headers: Vec::new(),
            gzip: true,
            timeout: std::time::Duration::from_secs(2),
            resource: Vec::new(),
        };
        let e = export(&config, b"x").unwrap_err();
        assert!(
            matches!(&e, SendError::Retryable(m) if m.contains("connecting")),
            "{e:?}"
        );
    }
}
