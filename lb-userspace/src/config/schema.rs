//! What the file may say: the raw TOML schema, spans kept for error lines. Every default is
//! defined once, in `defaults`, and used by the schema, the CLI and the docs test.

use std::{collections::BTreeMap, path::PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;

/// Every default value, in one place.
pub mod defaults {
    pub const XDP_MODE: &str = "auto";
    pub const PIN_PATH: &str = "/sys/fs/bpf/wklb";
    pub const CONTROL_SOCKET: &str = "/run/wklb/wklb.sock";
    pub const METRICS_LISTEN: &str = "127.0.0.1:9330";
    pub const GC_INTERVAL: &str = "5s";
    pub const MAX_FLOWS: i64 = lb_common::DEFAULT_MAX_FLOWS as i64;
    pub const TCP_ESTABLISHED_TIMEOUT: &str = "15m";
    pub const UDP_TIMEOUT: &str = "60s";
    pub const TCP_SYN_TIMEOUT: &str = "30s";
    pub const TCP_CLOSING_TIMEOUT: &str = "60s";
    pub const TCP_CLOSED_TIMEOUT: &str = "10s";
    pub const NON_SYN_POLICY: &str = "drop";
    pub const SNAT_PORT_MIN: i64 = lb_common::DataplaneConfig::DEFAULT_SNAT_PORT_MIN as i64;
    pub const SNAT_PORT_MAX: i64 = lb_common::DataplaneConfig::DEFAULT_SNAT_PORT_MAX as i64;
    pub const MSS_CLAMP: &str = "auto";
    pub const ECHO_REPLY: bool = true;
    pub const LOG_EVENTS: bool = true;
    pub const LOG_LEVEL: &str = "info";
    pub const PROTOCOL: &str = "tcp";
    pub const HC_KIND: &str = "tcp";
    pub const HC_PATH: &str = "/health";
    pub const HC_EXPECT_STATUS: i64 = 200;
    pub const HC_INTERVAL: &str = "1s";
    pub const HC_TIMEOUT: &str = "500ms";
    pub const HC_RISE: i64 = 2;
    pub const HC_FALL: i64 = 2;
    pub const WEIGHT: i64 = 100;
    pub const SYN_COOKIES: &str = "auto";
    pub const PROXY_PROTOCOL: &str = "off";
    pub const COOKIE_ENGAGE_SYN_RATE: i64 = 2000;
    pub const COOKIE_RELEASE_AFTER: &str = "30s";
    pub const ANNOUNCE_TABLE: i64 = 200;
    pub const ANNOUNCE_ALL_DOWN: &str = "keep";
    pub const DRAIN_FILE: &str = "/var/lib/wklb/drained";
    pub const OVERPROVISIONING: f64 = 1.4;
    pub const CONN_LOG_PATH: &str = "/var/log/wklb/conns.jsonl";
    pub const CONN_LOG_MAX_BYTES: i64 = 100 << 20;
    pub const CONN_LOG_KEEP: i64 = 5;
    pub const OVERPROVISIONING_PCT: u32 = 140;
}

/// A default that came from nowhere in the file (no line to report).
fn sp<T>(v: T) -> Spanned<T> {
    Spanned::new(0..0, v)
}

fn s(v: &str) -> Spanned<String> {
    sp(v.to_string())
}

#[derive(Deserialize, Serialize)]
pub struct RawConfig {
    pub daemon: RawDaemon,
    #[serde(default)]
    pub conntrack: RawConntrack,
    pub snat: RawSnat,
    #[serde(default)]
    pub data_path: RawDataPath,
    #[serde(default)]
    pub syn_cookies: RawSynCookies,
    /// Absent: no VIP route is installed (announcing off).
    pub announce: Option<RawAnnounce>,
    pub conn_log: Option<RawConnLog>,
    #[serde(default)]
    pub vip: Vec<RawVip>,
}

/// Which VIP addresses this edge announces (through a kernel routing table a BGP daemon reads).
#[derive(Deserialize, Serialize)]
pub struct RawAnnounce {
    #[serde(default = "d_announce_table")]
    pub table: Spanned<i64>,
    /// VIP names; absent = every VIP.
    pub vips: Option<Spanned<Vec<Spanned<String>>>>,
    /// "keep" (announce while fail-open serves every backend) | "withdraw".
    #[serde(default = "d_announce_all_down")]
    pub when_all_backends_down: Spanned<String>,
    #[serde(default = "d_drain_file")]
    pub drain_file: PathBuf,
}

/// When `auto` cookie mode engages and releases.
#[derive(Deserialize, Serialize)]
pub struct RawSynCookies {
    #[serde(default = "d_engage_syn_rate")]
    pub engage_syn_rate: Spanned<i64>,
    #[serde(default = "d_release_after")]
    pub release_after: Spanned<String>,
}

impl Default for RawSynCookies {
    fn default() -> Self {
        RawSynCookies {
            engage_syn_rate: d_engage_syn_rate(),
            release_after: d_release_after(),
        }
    }
}

#[derive(Deserialize, Serialize)]
pub struct RawDaemon {
    pub interfaces: Spanned<Vec<String>>,
    #[serde(default = "d_xdp_mode")]
    pub xdp_mode: Spanned<String>,
    #[serde(default = "d_pin_path")]
    pub pin_path: PathBuf,
    #[serde(default = "d_control_socket")]
    pub control_socket: PathBuf,
    #[serde(default = "d_metrics_listen")]
    pub metrics_listen: Spanned<String>,
    #[serde(default = "d_gc_interval")]
    pub gc_interval: Spanned<String>,
    #[serde(default = "d_log_events")]
    pub log_data_path_events: bool,
    #[serde(default = "d_log_level")]
    pub log_level: Spanned<String>,
}

#[derive(Deserialize, Serialize)]
pub struct RawConntrack {
    #[serde(default = "d_max_flows")]
    pub max_flows: Spanned<i64>,
    #[serde(default = "d_established")]
    pub tcp_established_timeout: Spanned<String>,
    #[serde(default = "d_udp")]
    pub udp_timeout: Spanned<String>,
    #[serde(default = "d_syn")]
    pub tcp_syn_timeout: Spanned<String>,
    #[serde(default = "d_closing")]
    pub tcp_closing_timeout: Spanned<String>,
    #[serde(default = "d_closed")]
    pub tcp_closed_timeout: Spanned<String>,
    #[serde(default = "d_non_syn")]
    pub non_syn_policy: Spanned<String>,
}

impl Default for RawConntrack {
    fn default() -> Self {
        RawConntrack {
            max_flows: d_max_flows(),
            tcp_established_timeout: d_established(),
            udp_timeout: d_udp(),
            tcp_syn_timeout: d_syn(),
            tcp_closing_timeout: d_closing(),
            tcp_closed_timeout: d_closed(),
            non_syn_policy: d_non_syn(),
        }
    }
}

#[derive(Deserialize, Serialize)]
pub struct RawSnat {
    pub addresses: Spanned<Vec<Spanned<String>>>,
    #[serde(default = "d_port_min")]
    pub port_min: Spanned<i64>,
    #[serde(default = "d_port_max")]
    pub port_max: Spanned<i64>,
}

#[derive(Deserialize, Serialize)]
pub struct RawDataPath {
    /// "auto", "off", or an MSS value.
    #[serde(default = "d_mss")]
    pub mss_clamp: Spanned<toml::Value>,
    #[serde(default = "d_echo")]
    pub echo_reply: bool,
}

impl Default for RawDataPath {
    fn default() -> Self {
        RawDataPath {
            mss_clamp: d_mss(),
            echo_reply: d_echo(),
        }
    }
}

#[derive(Deserialize, Serialize)]
pub struct RawVip {
    pub name: Spanned<String>,
    pub address: Spanned<String>,
    pub port: Spanned<i64>,
    #[serde(default = "d_protocol")]
    pub protocol: Spanned<String>,
    pub health_check: Option<RawHealthCheck>,
    /// "auto", "always" or "off" (TCP VIPs).
    #[serde(default = "d_syn_cookies")]
    pub syn_cookies: Spanned<String>,
    /// "off", "v1" or "v2": a PROXY protocol header in front of each connection's first bytes
    /// toward the data node (TCP VIPs).
    #[serde(default = "d_proxy_protocol")]
    pub proxy_protocol: Spanned<String>,
    /// Source prefixes (CIDR) refused new connections.
    #[serde(default)]
    pub deny: Vec<Spanned<String>>,
    /// Source prefixes always admitted (exceptions to `deny` and to the rate limit).
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
    /// New connections per second per source (IPv4 address); 0 = no limit.
    #[serde(default = "d_source_rate")]
    pub source_rate: Spanned<i64>,
    /// Connections a source may open at once before the rate applies; 0 = `source_rate`.
    #[serde(default = "d_source_burst")]
    pub source_burst: Spanned<i64>,
    /// Concurrent connections per source; 0 = no limit.
    #[serde(default = "d_source_burst")]
    pub source_max_conns: Spanned<i64>,
    /// The VIP's guaranteed share of the connection table and SNAT ports; 0 = an even share.
    #[serde(default = "d_vip_max_flows")]
    pub max_flows: Spanned<i64>,
    #[serde(default)]
    pub backend: Vec<RawBackend>,
    /// Backend groups with priorities (`[[vip.group]]`).
    #[serde(default)]
    pub group: Vec<RawGroup>,
    pub failover: Option<RawFailover>,
    /// Source prefixes pinned to groups (`[[vip.pin]]`).
    #[serde(default)]
    pub pin: Vec<RawPin>,
}

#[derive(Deserialize, Serialize)]
pub struct RawPin {
    pub name: Option<Spanned<String>>,
    pub sources: Spanned<Vec<Spanned<String>>>,
    pub groups: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub spill: bool,
}

/// The connection log.
#[derive(Deserialize, Serialize)]
pub struct RawConnLog {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "d_conn_log_path")]
    pub path: Spanned<String>,
    #[serde(default = "d_conn_log_max_bytes")]
    pub max_bytes: Spanned<i64>,
    #[serde(default = "d_conn_log_keep")]
    pub keep: Spanned<i64>,
}

#[derive(Deserialize, Serialize)]
pub struct RawGroup {
    pub name: Spanned<String>,
    #[serde(default = "d_priority")]
    pub priority: Spanned<i64>,
}

/// How new flows spill from one priority to the next.
#[derive(Deserialize, Serialize)]
pub struct RawFailover {
    #[serde(default = "d_overprovisioning")]
    pub overprovisioning: Spanned<f64>,
}

#[derive(Deserialize, Serialize)]
pub struct RawHealthCheck {
    #[serde(default = "d_hc_kind")]
    pub kind: Spanned<String>,
    pub port: Option<Spanned<i64>>,
    #[serde(default = "d_hc_path")]
    pub path: Spanned<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default = "d_expect_status")]
    pub expect_status: Spanned<i64>,
    #[serde(default = "d_interval")]
    pub interval: Spanned<String>,
    #[serde(default = "d_timeout")]
    pub timeout: Spanned<String>,
    #[serde(default = "d_rise")]
    pub rise: Spanned<i64>,
    #[serde(default = "d_fall")]
    pub fall: Spanned<i64>,
}

#[derive(Deserialize, Serialize)]
pub struct RawBackend {
    pub address: Spanned<String>,
    pub port: Option<Spanned<i64>>,
    /// A `[[vip.group]]` name; absent = `default`.
    pub group: Option<Spanned<String>>,
    #[serde(default = "d_weight")]
    pub weight: Spanned<i64>,
}

use defaults as d;

fn d_xdp_mode() -> Spanned<String> {
    s(d::XDP_MODE)
}
fn d_pin_path() -> PathBuf {
    PathBuf::from(d::PIN_PATH)
}
fn d_control_socket() -> PathBuf {
    PathBuf::from(d::CONTROL_SOCKET)
}
fn d_metrics_listen() -> Spanned<String> {
    s(d::METRICS_LISTEN)
}
fn d_gc_interval() -> Spanned<String> {
    s(d::GC_INTERVAL)
}
fn d_log_events() -> bool {
    d::LOG_EVENTS
}
fn d_log_level() -> Spanned<String> {
    s(d::LOG_LEVEL)
}
fn d_max_flows() -> Spanned<i64> {
    sp(d::MAX_FLOWS)
}
fn d_established() -> Spanned<String> {
    s(d::TCP_ESTABLISHED_TIMEOUT)
}
fn d_udp() -> Spanned<String> {
    s(d::UDP_TIMEOUT)
}
fn d_syn() -> Spanned<String> {
    s(d::TCP_SYN_TIMEOUT)
}
fn d_closing() -> Spanned<String> {
    s(d::TCP_CLOSING_TIMEOUT)
}
fn d_closed() -> Spanned<String> {
    s(d::TCP_CLOSED_TIMEOUT)
}
fn d_non_syn() -> Spanned<String> {
    s(d::NON_SYN_POLICY)
}
fn d_port_min() -> Spanned<i64> {
    sp(d::SNAT_PORT_MIN)
}
fn d_port_max() -> Spanned<i64> {
    sp(d::SNAT_PORT_MAX)
}
fn d_mss() -> Spanned<toml::Value> {
    sp(toml::Value::String(d::MSS_CLAMP.into()))
}
fn d_echo() -> bool {
    d::ECHO_REPLY
}
fn d_protocol() -> Spanned<String> {
    s(d::PROTOCOL)
}
fn d_hc_kind() -> Spanned<String> {
    s(d::HC_KIND)
}
fn d_hc_path() -> Spanned<String> {
    s(d::HC_PATH)
}
fn d_expect_status() -> Spanned<i64> {
    sp(d::HC_EXPECT_STATUS)
}
fn d_interval() -> Spanned<String> {
    s(d::HC_INTERVAL)
}
fn d_timeout() -> Spanned<String> {
    s(d::HC_TIMEOUT)
}
fn d_rise() -> Spanned<i64> {
    sp(d::HC_RISE)
}
fn d_fall() -> Spanned<i64> {
    sp(d::HC_FALL)
}
fn d_weight() -> Spanned<i64> {
    sp(d::WEIGHT)
}
fn d_syn_cookies() -> Spanned<String> {
    s(d::SYN_COOKIES)
}
fn d_proxy_protocol() -> Spanned<String> {
    s(d::PROXY_PROTOCOL)
}
fn d_engage_syn_rate() -> Spanned<i64> {
    sp(d::COOKIE_ENGAGE_SYN_RATE)
}
fn d_release_after() -> Spanned<String> {
    s(d::COOKIE_RELEASE_AFTER)
}
fn d_source_rate() -> Spanned<i64> {
    sp(0)
}
fn d_source_burst() -> Spanned<i64> {
    sp(0)
}
fn d_vip_max_flows() -> Spanned<i64> {
    sp(0)
}
fn d_announce_table() -> Spanned<i64> {
    sp(d::ANNOUNCE_TABLE)
}
fn d_announce_all_down() -> Spanned<String> {
    s(d::ANNOUNCE_ALL_DOWN)
}
fn d_drain_file() -> PathBuf {
    PathBuf::from(d::DRAIN_FILE)
}
fn d_priority() -> Spanned<i64> {
    sp(0)
}
fn d_overprovisioning() -> Spanned<f64> {
    sp(d::OVERPROVISIONING)
}
fn d_conn_log_path() -> Spanned<String> {
    s(d::CONN_LOG_PATH)
}
fn d_conn_log_max_bytes() -> Spanned<i64> {
    sp(d::CONN_LOG_MAX_BYTES)
}
fn d_conn_log_keep() -> Spanned<i64> {
    sp(d::CONN_LOG_KEEP)
}
