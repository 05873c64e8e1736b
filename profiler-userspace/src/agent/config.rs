//! Where and how the agent exports, by OpenTelemetry's exporter conventions: the
//! `OTEL_EXPORTER_OTLP_*` variables (the `_PROFILES_` ones first), `OTEL_RESOURCE_ATTRIBUTES`,
//! from the environment and from an optional env file that SIGHUP re-reads. Pure: it is given a
//! lookup function, so it is unit tested without touching the process's environment.

use std::{collections::HashMap, fmt, time::Duration};

/// The profiles path of OTLP/HTTP in the collector's profiles signal (opentelemetry-proto
/// v1.9.0): appended to `OTEL_EXPORTER_OTLP_ENDPOINT`, not to a signal-specific endpoint.
pub const PROFILES_PATH: &str = "v1development/profiles";
/// The gRPC method of the profiles service.
pub const GRPC_PATH: &str =
    "/opentelemetry.proto.collector.profiles.v1development.ProfilesService/Export";
const DEFAULT_HTTP: &str = "http://localhost:4318";
const DEFAULT_GRPC: &str = "http://localhost:4317";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/HTTP with a protobuf body (`http/protobuf`).
    HttpProtobuf,
    /// OTLP/gRPC (`grpc`).
    Grpc,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::HttpProtobuf => "http/protobuf",
            Protocol::Grpc => "grpc",
        })
    }
}

/// Where requests go: a plain-text (`http://`) host, port and path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// Starts with `/`.
    pub path: String,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}:{}{}", self.host, self.port, self.path)
    }
}

/// The exporter's settings, as read from the variables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportConfig {
    pub protocol: Protocol,
    pub endpoint: Endpoint,
    /// Extra request headers (`OTEL_EXPORTER_OTLP_HEADERS`), e.g. an API key.
    pub headers: Vec<(String, String)>,
    /// Gzip the body: the default here (profiles compress about tenfold); `none` turns it off.
    pub gzip: bool,
    /// Longest wait for one export's answer.
    pub timeout: Duration,
    /// `OTEL_RESOURCE_ATTRIBUTES`: added to every process's resource where the process does not
    /// say otherwise.
    pub resource: Vec<(String, String)>,
}

/// What the command line says, over the variables.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    pub endpoint: Option<String>,
    pub protocol: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{var}: protocol {value:?} is not one of grpc, http/protobuf")]
    Protocol { var: String, value: String },
    #[error(
        "{var}: {value:?}: only plain-text http:// endpoints are supported (no TLS): export to a collector on this host or network and let it forward over TLS"
    )]
    Scheme { var: String, value: String },
    #[error("{var}: {value:?} is not an endpoint URL (http://HOST:PORT/PATH)")]
    Url { var: String, value: String },
    #[error("{var}: {value:?} is not a list of key=value pairs separated by commas")]
    Pairs { var: String, value: String },
    #[error("{var}: {value:?} is not gzip or none")]
    Compression { var: String, value: String },
    #[error("{var}: {value:?} is not a timeout in milliseconds")]
    Timeout { var: String, value: String },
    #[error("cannot read {path}: {error}")]
    EnvFile { path: String, error: String },
}

/// Reads the exporter configuration. `var` looks a variable up (the env file first, then the
/// process's environment).
pub fn from_vars(
    var: impl Fn(&str) -> Option<String>,
    overrides: &Overrides,
) -> Result<ExportConfig, ConfigError> {
    // The signal's own variable, then the general one; empty is unset.
    let pick = |suffix: &str| -> Option<(String, String)> {
        [
            format!("OTEL_EXPORTER_OTLP_PROFILES_{suffix}"),
            format!("OTEL_EXPORTER_OTLP_{suffix}"),
        ]
        .into_iter()
        .find_map(|name| {
            var(&name)
                .filter(|v| !v.trim().is_empty())
                .map(|v| (name, v))
        })
    };
    let protocol = match overrides
        .protocol
        .clone()
        .map(|p| ("--protocol".to_string(), p))
        .or_else(|| pick("PROTOCOL"))
    {
        None => Protocol::HttpProtobuf,
        Some((var, value)) => match value.trim() {
            "http/protobuf" => Protocol::HttpProtobuf,
            "grpc" => Protocol::Grpc,
            _ => return Err(ConfigError::Protocol { var, value }),
        },
    };
    let (var_name, url, signal_specific) = match (&overrides.endpoint, pick("ENDPOINT")) {
        (Some(e), _) => ("--endpoint".to_string(), e.clone(), false),
        (None, Some((name, value))) => {
            let specific = name.contains("_PROFILES_");
            (name, value, specific)
        }
        (None, None) => (
            "default".to_string(),
            match protocol {
                Protocol::HttpProtobuf => DEFAULT_HTTP,
                Protocol::Grpc => DEFAULT_GRPC,
            }
            .to_string(),
            false,
        ),
    };
    let mut endpoint = parse_url(&var_name, url.trim())?;
    endpoint.path = match protocol {
        Protocol::Grpc => GRPC_PATH.to_string(),
        // A signal-specific URL is used as it is; a base URL gets the signal's path.
        Protocol::HttpProtobuf if signal_specific => endpoint.path,
        Protocol::HttpProtobuf => {
            format!("{}/{PROFILES_PATH}", endpoint.path.trim_end_matches('/'))
        }
    };
    let mut headers = Vec::new();
    for suffix in ["HEADERS"] {
        for name in [
            format!("OTEL_EXPORTER_OTLP_{suffix}"),
            format!("OTEL_EXPORTER_OTLP_PROFILES_{suffix}"),
        ] {
            if let Some(value) = var(&name) {
                let pairs = parse_pairs(&value).ok_or(ConfigError::Pairs {
                    var: name.clone(),
                    value: value.clone(),
                })?;
                for (k, v) in pairs {
                    // The signal's own value wins over the general one.
                    headers.retain(|(hk, _): &(String, String)| !hk.eq_ignore_ascii_case(&k));
                    headers.push((k, v));
                }
            }
        }
    }
    let gzip = match pick("COMPRESSION") {
        None => true,
        Some((var, value)) => match value.trim() {
            "gzip" => true,
            "none" => false,
            _ => return Err(ConfigError::Compression { var, value }),
        },
    };
    let timeout = match pick("TIMEOUT") {
        None => DEFAULT_TIMEOUT,
        Some((var, value)) => match value.trim().parse::<u64>() {
            Ok(ms) if ms > 0 => Duration::from_millis(ms),
            _ => return Err(ConfigError::Timeout { var, value }),
        },
    };
    let resource = match var("OTEL_RESOURCE_ATTRIBUTES") {
        None => Vec::new(),
        Some(value) => parse_pairs(&value).ok_or(ConfigError::Pairs {
            var: "OTEL_RESOURCE_ATTRIBUTES".into(),
            value,
        })?,
    };
    Ok(ExportConfig {
        protocol,
        endpoint,
        headers,
        gzip,
        timeout,
        resource,
    })
}

/// `http://host[:port][/path]`; the port defaults to 80.
fn parse_url(var: &str, url: &str) -> Result<Endpoint, ConfigError> {
    let err = || ConfigError::Url {
        var: var.into(),
        value: url.into(),
    };
    let rest = match url.split_once("://") {
        Some(("http", rest)) => rest,
        Some(("https", _)) => {
            return Err(ConfigError::Scheme {
                var: var.into(),
                value: url.into(),
            });
        }
        _ => return Err(err()),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        // [::1]:4318
        Some((h, p)) if !p.contains(']') => (h, p.parse::<u16>().map_err(|_| err())?),
        _ => (authority, 80),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains(['@', ' ', '\r', '\n']) || path.contains(['\r', '\n', ' '])
    {
        return Err(err());
    }
    Ok(Endpoint {
        host: host.into(),
        port,
        path: path.into(),
    })
}

/// `k1=v1,k2=v2` with percent-encoded values (W3C baggage style, as OTel's variables are);
/// None if malformed or a header-unsafe character remains.
pub fn parse_pairs(text: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (k, v) = item.split_once('=')?;
        let (k, v) = (percent_decode(k.trim())?, percent_decode(v.trim())?);
        if k.is_empty() || k.contains(['\r', '\n', ':']) || v.contains(['\r', '\n']) {
            return None;
        }
        out.push((k, v));
    }
    Some(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// An env file: `NAME=value` lines (`export ` and quotes allowed, `#` comments), as systemd's
/// `EnvironmentFile=` reads them.
pub fn parse_env_file(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let l = l.strip_prefix("export ").unwrap_or(l);
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_string(), v.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(vars: &[(&str, &str)]) -> Result<ExportConfig, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        from_vars(|k| vars.get(k).cloned(), &Overrides::default())
    }

    #[test]
    fn defaults_are_otlp_http_on_localhost_with_gzip() {
        let c = read(&[]).unwrap();
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        assert_eq!(
            c.endpoint.to_string(),
            "http://localhost:4318/v1development/profiles"
        );
        assert!(c.gzip && c.headers.is_empty() && c.resource.is_empty());
        assert_eq!(c.timeout, Duration::from_secs(10));
        let g = read(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).unwrap();
        assert_eq!(
            (g.endpoint.host.as_str(), g.endpoint.port),
            ("localhost", 4317)
        );
        assert_eq!(g.endpoint.path, GRPC_PATH);
    }

    #[test]
    fn base_endpoints_get_the_signal_path_and_specific_ones_are_used_as_given() {
        let c = read(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9999/")]).unwrap();
        assert_eq!(
            c.endpoint.to_string(),
            "http://127.0.0.1:9999/v1development/profiles"
        );
        let c = read(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/otlp")]).unwrap();
        assert_eq!(c.endpoint.path, "/otlp/v1development/profiles");
        let c = read(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:1"),
            ("OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT", "http://b:2/custom"),
        ])
        .unwrap();
        assert_eq!(c.endpoint.to_string(), "http://b:2/custom");
        let c = read(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://[::1]:4318")]).unwrap();
        assert_eq!((c.endpoint.host.as_str(), c.endpoint.port), ("::1", 4318));
    }

    #[test]
    fn headers_resource_attributes_compression_and_timeout() {
        let c = read(&[
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "api-key=s%3Dcret, x-team = a b",
            ),
            ("OTEL_EXPORTER_OTLP_PROFILES_HEADERS", "X-Team=profiling"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=prod,team=%F0%9F%90%8D",
            ),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
            ("OTEL_EXPORTER_OTLP_PROFILES_TIMEOUT", "2500"),
        ])
        .unwrap();
        assert_eq!(
            c.headers,
            [
                ("api-key".into(), "s=cret".into()),
                ("X-Team".into(), "profiling".into())
            ]
        );
        assert_eq!(
            c.resource,
            [
                ("deployment.environment".into(), "prod".into()),
                ("team".into(), "🐍".into())
            ]
        );
        assert!(!c.gzip);
        assert_eq!(c.timeout, Duration::from_millis(2500));
    }

    #[test]
    fn mistakes_name_the_variable() {
        let e = |vars: &[(&str, &str)]| read(vars).unwrap_err().to_string();
        assert!(
            e(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")])
                .contains("OTEL_EXPORTER_OTLP_PROTOCOL")
        );
        assert!(e(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://x:4318")]).contains("no TLS"));
        assert!(e(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "x:4318")]).contains("not an endpoint"));
        assert!(
            e(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:99999")]).contains("not an endpoint")
        );
        assert!(
            e(&[("OTEL_EXPORTER_OTLP_HEADERS", "novalue")]).contains("OTEL_EXPORTER_OTLP_HEADERS")
        );
        assert!(e(&[("OTEL_EXPORTER_OTLP_HEADERS", "a=%0d%0aevil: 1")]).contains("HEADERS"));
        assert!(e(&[("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")]).contains("gzip or none"));
        assert!(e(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "0")]).contains("milliseconds"));
    }

    #[test]
    fn overrides_beat_variables() {
        let c = from_vars(
            |k| (k == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://a:1".to_string()),
            &Overrides {
                endpoint: Some("http://127.0.0.1:5/".into()),
                protocol: Some("http/protobuf".into()),
            },
        )
        .unwrap();
        assert_eq!(
            c.endpoint.to_string(),
            "http://127.0.0.1:5/v1development/profiles"
        );
    }

    #[test]
    fn env_files_read_like_systemd() {
        let vars = parse_env_file(
            "# comment\nOTEL_EXPORTER_OTLP_ENDPOINT=http://c:4318\nexport A=\"x y\"\nB='z'\n\nbad\n",
        );
        assert_eq!(vars["OTEL_EXPORTER_OTLP_ENDPOINT"], "http://c:4318");
        assert_eq!((vars["A"].as_str(), vars["B"].as_str()), ("x y", "z"));
        assert_eq!(vars.len(), 3);
    }
}
