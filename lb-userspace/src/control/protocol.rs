//! The control-socket protocol: one JSON request line, one JSON response line. Every command's
//! answer has the same shape, `{"ok": true, "data": ...}` or `{"ok": false, "error": "..."}`,
//! and the CLI's `--json` prints exactly that.

use std::{
    io::{BufRead as _, BufReader, ErrorKind, Write as _},
    net::{IpAddr, SocketAddr},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow};
use serde::{Deserialize, Serialize};

use crate::config::SourceList;

/// A backend as the CLI names it: an address, and its port when the VIP has several backends
/// on one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub address: IpAddr,
    pub port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    VipList,
    BackendList {
        vip: Option<String>,
    },
    BackendAdd {
        vip: String,
        backend: Endpoint,
        weight: u32,
        /// Its backend group (None: `default`).
        #[serde(default)]
        group: Option<String>,
    },
    BackendRemove {
        vip: String,
        backend: Endpoint,
    },
    /// Weight 0 drains.
    BackendWeight {
        vip: String,
        backend: Endpoint,
        weight: u32,
    },
    Stats,
    Conns {
        vip: Option<String>,
        backend: Option<Endpoint>,
        client: Option<Endpoint>,
        snat: Option<Endpoint>,
        limit: Option<usize>,
    },
    Lookup {
        client: SocketAddr,
        vip: String,
    },
    /// Add or remove a prefix on a VIP's deny or allow list.
    SourceEdit {
        vip: String,
        list: SourceList,
        prefix: String,
        add: bool,
    },
    /// Every VIP's (or one VIP's) entries of one list.
    SourceList {
        list: SourceList,
        vip: Option<String>,
    },
    Reload,
    Unload,
    /// What this edge announces, and why.
    EdgeStatus,
    /// Withdraw every VIP route and keep serving existing flows.
    EdgeDrain,
    /// Announce again (each address once it can serve).
    EdgeUndrain,
}

/// The answer of `edge drain` / `edge undrain`: what changed and the edge's state after it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EdgeChange {
    pub changes: Vec<String>,
    pub edge: crate::report::EdgeReport,
}

/// The answer of a command that changes something: what happened, line by line.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Changes {
    pub changes: Vec<String>,
    /// A note that applies to the whole change (e.g. that the config file is unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
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
            "cannot reach the wklb daemon at {} ({e}): is `wklb daemon` running, and are you root? (`--socket` or WKLB_SOCKET name another socket)",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    let timed_out = |e: std::io::Error| {
        if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
            anyhow!(
                "the daemon at {} did not answer within {} s",
                socket.display(),
                timeout.as_secs()
            )
        } else {
            anyhow!(e)
        }
    };
    (&stream)
        .write_all(line.as_bytes())
        .map_err(timed_out)
        .context("sending the request")?;
    let mut reader = BufReader::new(&stream);
    let mut answer = String::new();
    reader
        .read_line(&mut answer)
        .map_err(timed_out)
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
            backend: Endpoint {
                address: "10.0.0.1".parse().unwrap(),
                port: None,
            },
            weight: 0,
        };
        let s = serde_json::to_string(&r).unwrap();
        assert!(s.contains("\"cmd\":\"backend_weight\""), "{s}");
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        assert!(serde_json::from_str::<Request>("{\"cmd\":\"nope\"}").is_err());
    }

    #[test]
    fn every_answer_has_one_shape() {
        let ok = serde_json::to_value(Response::ok(Changes::default())).unwrap();
        assert_eq!(ok["ok"], true);
        assert!(ok.get("error").is_none());
        let err = serde_json::to_value(Response::err("no VIP named \"x\"")).unwrap();
        assert_eq!(
            err,
            serde_json::json!({"ok": false, "error": "no VIP named \"x\""})
        );
    }

    #[test]
    fn a_silent_daemon_is_reported_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let _l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let e = call(&path, &Request::Stats, Duration::from_millis(200)).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("did not answer within"), "{msg}");
        assert!(!msg.contains("temporarily unavailable"), "{msg}");
    }
}
