//! The control-socket protocol: one JSON request line, one JSON response line.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{Ipv4Addr, SocketAddr},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    VipList,
    BackendList {
        vip: Option<String>,
    },
    BackendAdd {
        vip: String,
        address: Ipv4Addr,
        port: Option<u16>,
        weight: u32,
    },
    BackendRemove {
        vip: String,
        address: Ipv4Addr,
        port: Option<u16>,
    },
    /// Weight 0 drains.
    BackendWeight {
        vip: String,
        address: Ipv4Addr,
        port: Option<u16>,
        weight: u32,
    },
    Stats,
    Conns {
        vip: Option<String>,
        backend: Option<SocketAddr>,
        limit: Option<usize>,
    },
    Lookup {
        client: SocketAddr,
        vip: String,
    },
    Reload,
    Unload,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl Response {
    pub fn ok(data: impl Serialize) -> Self {
        Response {
            ok: true,
            error: None,
            data: serde_json::to_value(data).unwrap_or_default(),
        }
    }
    pub fn err(e: impl std::fmt::Display) -> Self {
        Response {
            ok: false,
            error: Some(e.to_string()),
            data: serde_json::Value::Null,
        }
    }
}

/// Sends one request to the daemon and waits for its answer.
pub fn call(socket: &Path, req: &Request, timeout: Duration) -> Result<Response> {
    let stream = UnixStream::connect(socket).map_err(|e| {
        anyhow!(
            "cannot reach the wklb daemon at {} ({e}): is `wklb daemon` running, and are you root?",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    (&stream)
        .write_all(line.as_bytes())
        .context("sending the request")?;
    let mut reader = BufReader::new(&stream);
    let mut answer = String::new();
    reader
        .read_line(&mut answer)
        .context("reading the daemon's answer")?;
    if answer.is_empty() {
        return Err(anyhow!(
            "the daemon closed the connection without answering"
        ));
    }
    serde_json::from_str(&answer).context("the daemon's answer is not valid JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_tagged_json() {
        let r = Request::BackendWeight {
            vip: "im".into(),
            address: Ipv4Addr::new(10, 0, 0, 1),
            port: None,
            weight: 0,
        };
        let s = serde_json::to_string(&r).unwrap();
        assert!(s.contains("\"cmd\":\"backend_weight\""), "{s}");
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        assert!(serde_json::from_str::<Request>("{\"cmd\":\"nope\"}").is_err());
    }
}
