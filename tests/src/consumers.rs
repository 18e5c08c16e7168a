//! Real PROXY-protocol consumers on a data node, for the PROXY end-to-end scenarios: nginx
//! stream (`listen ... proxy_protocol`, logging `$proxy_protocol_addr:$proxy_protocol_port`) and
//! HAProxy (`accept-proxy`, logging `%ci:%cp`). Each listens on the node's port 5100 and passes
//! the connection, with a PROXY header of its own naming the client it was told of, to the
//! WuKongIM-like server behind it on loopback, so the client's greeting check still covers the
//! whole chain.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::topology::{Proc, TCP_PORT, Topology, backend_addr, command_in, wait_port};

/// The loopback port of the server behind a consumer.
const INNER_PORT: u16 = 5101;

#[derive(Clone, Copy, Debug)]
pub enum Consumer {
    NginxStream,
    Haproxy,
}

/// A consumer running on one data node, with the server behind it.
pub struct Consumed {
    pub kind: Consumer,
    /// One line per connection, written when the connection ends: `ADDR:PORT`, then (HAProxy)
    /// the termination state and the bytes each way.
    pub log: PathBuf,
    _procs: Vec<Proc>,
}

/// Starts `kind` on data node `i` (whose own wk-backend must not be running) in front of a
/// WuKongIM-like server named like the node (`b1`, ...).
pub fn start(t: &Topology, i: usize, kind: Consumer) -> Result<Consumed> {
    let ns = &t.backend_ns[i];
    let name = format!("b{}", i + 1);
    let dir = t.dir.path().join(format!("consumer-{name}"));
    std::fs::create_dir_all(dir.join("logs"))?;
    let mut inner = command_in(ns, crate::topology::workspace_bin("wk-backend"))?;
    inner
        .args(["--name", &name, "--proxy-protocol"])
        .args(["--listen", &format!("127.0.0.1:{INNER_PORT}")])
        .args(["--udp", "127.0.0.1:5301"])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let inner = Proc {
        name: format!("{name}-inner"),
        child: inner.spawn().context("starting wk-backend")?,
    };
    wait_port(ns, std::net::Ipv4Addr::LOCALHOST, INNER_PORT)?;
    let node = backend_addr(i);
    let log = dir.join("logs/proxy.log");
    let (program, conf_name, conf) = match kind {
        Consumer::NginxStream => (
            "nginx",
            "nginx.conf",
            // realip makes the header's address the connection's, which is what nginx's own
            // outgoing header names.
            format!(
                "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\ndaemon off;\nworker_processes 1;\n\
                 pid {d}/nginx.pid;\nerror_log {d}/logs/error.log;\nevents {{ worker_connections 4096; }}\n\
                 stream {{\n  log_format pp '$proxy_protocol_addr:$proxy_protocol_port';\n  server {{\n\
                 \x20   listen {node}:{TCP_PORT} proxy_protocol;\n    set_real_ip_from 0.0.0.0/0;\n\
                 \x20   access_log {log} pp;\n    proxy_pass 127.0.0.1:{INNER_PORT};\n    proxy_protocol on;\n  }}\n}}\n",
                d = dir.display(),
                log = log.display(),
            ),
        ),
        Consumer::Haproxy => (
            "haproxy",
            "haproxy.cfg",
            format!(
                "global\n  maxconn 8000\n  log stdout format raw local0\n\
                 defaults\n  mode tcp\n  log global\n  timeout connect 5s\n  timeout client 120s\n  timeout server 120s\n\
                 frontend im\n  bind {node}:{TCP_PORT} accept-proxy\n  log-format \"%ci:%cp %ts %U %B\"\n  default_backend im\n\
                 backend im\n  server s 127.0.0.1:{INNER_PORT} send-proxy\n"
            ),
        ),
    };
    let conf_path = dir.join(conf_name);
    std::fs::write(&conf_path, conf)?;
    let stderr = std::fs::File::create(dir.join("logs/stderr"))?;
    let mut cmd = command_in(ns, program)?;
    cmd.stdin(Stdio::null()).stderr(stderr);
    match kind {
        Consumer::NginxStream => cmd
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(&dir)
            .stdout(Stdio::null()),
        // HAProxy logs to its standard output.
        Consumer::Haproxy => cmd
            .arg("-f")
            .arg(&conf_path)
            .arg("-db")
            .stdout(std::fs::File::create(&log)?),
    };
    let outer = Proc {
        name: format!("{name}-{kind:?}"),
        child: cmd
            .spawn()
            .with_context(|| format!("starting {program} (`sudo cargo xtask setup`)"))?,
    };
    if let Err(e) = wait_port(ns, node, TCP_PORT) {
        let err = std::fs::read_to_string(dir.join("logs/stderr")).unwrap_or_default();
        bail!("{program} on {name}: {e}\n{err}");
    }
    Ok(Consumed {
        kind,
        log,
        _procs: vec![outer, inner],
    })
}

impl Consumed {
    /// The client addresses logged so far, once at least `want` lines are there (a consumer
    /// logs a connection when it ends), waiting up to 10 s; sorted.
    pub fn logged(&self, want: usize) -> Result<Vec<SocketAddr>> {
        let t = Instant::now();
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            if lines.len() >= want || t.elapsed() > Duration::from_secs(10) {
                let mut out = lines
                    .iter()
                    .map(|l| {
                        l.split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .parse::<SocketAddr>()
                            .with_context(|| format!("{:?} logged {l:?}", self.kind))
                    })
                    .collect::<Result<Vec<_>>>()?;
                out.sort();
                return Ok(out);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The addresses a `wk-client --record` file lists for backend `name`, sorted.
pub fn recorded(path: &std::path::Path, name: &str) -> Result<Vec<SocketAddr>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let mut out = Vec::new();
    for l in text.lines() {
        let (n, a) = l
            .split_once(' ')
            .context("a record line without an address")?;
        if n == name {
            out.push(a.parse()?);
        }
    }
    out.sort();
    Ok(out)
}
