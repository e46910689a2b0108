//! A client of monitord's API on its Unix socket (HTTP/1.1, one connection per request), for
//! monitorctl, the tests and the benchmark.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, body::Bytes};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

use crate::ErrorReply;

/// Where monitord listens unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/run/monitor/monitord.sock";

/// `--socket`, else `$MONITOR_SOCKET`, else [`DEFAULT_SOCKET`].
pub fn socket_path(given: Option<&Path>) -> PathBuf {
    given
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("MONITOR_SOCKET").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

pub struct Reply {
    pub status: u16,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).context("the daemon's reply is not JSON")
    }

    /// The reply as the API's type for it.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "the daemon's reply is not a {}: {}",
                std::any::type_name::<T>()
                    .rsplit("::")
                    .next()
                    .unwrap_or("reply"),
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The daemon's error message, when the reply is one.
    pub fn error_message(&self) -> String {
        self.parse::<ErrorReply>()
            .map(|e| e.error.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&self.body).into_owned())
    }
}

/// Why no client could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no daemon answers at {socket} (start monitord, or pass --socket)")]
    NoDaemon { socket: String },
    #[error(
        "monitord's socket {socket} refuses this user (permission denied): the socket's group \
         (`monitor`) may connect; ask an administrator to add you, or run as root"
    )]
    PermissionDenied { socket: String },
    #[error("connecting to monitord at {socket}: {source}")]
    Other {
        socket: String,
        source: std::io::Error,
    },
}

impl ConnectError {
    /// Whether nothing listens there (as opposed to a daemon that refuses us).
    pub fn no_daemon(&self) -> bool {
        matches!(self, ConnectError::NoDaemon { .. })
    }
}

/// `text` as one path segment of a request's URL: an id that holds `/`, `?`, `%` or a space
/// stays one segment and means itself.
pub fn segment(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

impl Client {
    /// A client of the daemon on `socket`, if one answers there and lets us in.
    pub async fn connect(socket: &Path) -> Result<Client, ConnectError> {
        let shown = socket.display().to_string();
        match UnixStream::connect(socket).await {
            Ok(_) => Ok(Client {
                socket: socket.to_path_buf(),
            }),
            Err(e) => Err(match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    ConnectError::NoDaemon { socket: shown }
                }
                std::io::ErrorKind::PermissionDenied => {
                    ConnectError::PermissionDenied { socket: shown }
                }
                _ => ConnectError::Other {
                    socket: shown,
                    source: e,
                },
            }),
        }
    }

    pub async fn get(&self, path: &str) -> Result<Reply> {
        self.request(Method::GET, path, None).await
    }

    pub async fn post_json(&self, path: &str, body: &impl serde::Serialize) -> Result<Reply> {
        self.request(Method::POST, path, Some(serde_json::to_vec(body)?))
            .await
    }

    /// A PUT of `body` as it is (a YAML document).
    pub async fn put(&self, path: &str, body: Vec<u8>) -> Result<Reply> {
        self.request(Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<Reply> {
        self.request(Method::DELETE, path, None).await
    }

    /// Follows the server-sent events at `path`, calling `each` with every event's data
    /// until it returns `false` or the stream ends.
    pub async fn follow(&self, path: &str, mut each: impl FnMut(&str) -> bool) -> Result<()> {
        let response = self.send(Method::GET, path, None).await?;
        if !response.status().is_success() {
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            let reply = Reply {
                status: status.as_u16(),
                body,
            };
            bail!("{}", reply.error_message());
        }
        let mut body = response.into_body();
        let mut pending = String::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.context("reading the daemon's stream")?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            pending.push_str(&String::from_utf8_lossy(data));
            // Events end with a blank line; their `data:` lines carry the payload.
            while let Some(end) = pending.find("\n\n") {
                let event: String = pending.drain(..end + 2).collect();
                let data: Vec<&str> = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                if !data.is_empty() && !each(&data.join("\n")) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    async fn request(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<Reply> {
        let response = self.send(method, path, body).await?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .context("reading the daemon's reply")?
            .to_bytes();
        if status >= 500 {
            bail!("the daemon failed: {}", String::from_utf8_lossy(&body));
        }
        Ok(Reply { status, body })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .with_context(|| format!("connecting to {}", self.socket.display()))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("talking HTTP to the daemon")?;
        tokio::spawn(connection);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "monitord")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        sender
            .send_request(request)
            .await
            .context("sending the request to the daemon")
    }
}
