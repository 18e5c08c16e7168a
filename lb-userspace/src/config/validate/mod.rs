//! From raw TOML to a checked `Config`: every problem collected with its key path and line.
//!
//! Pure checks of the file, by section (`sections`, `vips`, `groups`, `cross`), never read the
//! host; `host` holds the checks against this machine (interfaces, addresses, sysctls), run only
//! for `Checks::Host`.

mod cross;
mod groups;
mod host;
mod sections;
mod vips;

use std::{net::IpAddr, time::Duration};

use toml::Spanned;

use super::{Checks, Config, ConfigError, Loaded, schema::RawConfig};

/// Every problem found so far, with the source text their lines are counted in.
pub(super) struct Collector<'a> {
    src: &'a str,
    pub(super) errors: Vec<ConfigError>,
    pub(super) warnings: Vec<ConfigError>,
}

impl Collector<'_> {
    pub(super) fn line_of(&self, span: std::ops::Range<usize>) -> Option<usize> {
        if span.start == 0 && span.end == 0 {
            return None; // a default, not from the file
        }
        Some(line_at(self.src, span.start))
    }

    pub(super) fn err<T>(
        &mut self,
        path: impl Into<String>,
        at: &Spanned<T>,
        message: impl Into<String>,
    ) {
        let line = self.line_of(at.span());
        self.errors.push(ConfigError {
            path: path.into(),
            line,
            message: message.into(),
        });
    }

    pub(super) fn warn<T>(
        &mut self,
        path: impl Into<String>,
        at: &Spanned<T>,
        message: impl Into<String>,
    ) {
        let line = self.line_of(at.span());
        self.warnings.push(ConfigError {
            path: path.into(),
            line,
            message: message.into(),
        });
    }

    pub(super) fn duration(&mut self, path: &str, v: &Spanned<String>) -> Duration {
        match humantime::parse_duration(v.get_ref()) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.err(path, v, "must be longer than 0");
                Duration::from_secs(1)
            }
            Err(e) => {
                self.err(
                    path,
                    v,
                    format!(
                        "{:?} is not a duration like \"500ms\", \"2s\", \"15m\": {e}",
                        v.get_ref()
                    ),
                );
                Duration::from_secs(1)
            }
        }
    }

    pub(super) fn ranged(
        &mut self,
        path: &str,
        v: &Spanned<i64>,
        lo: i64,
        hi: i64,
        what: &str,
    ) -> i64 {
        let n = *v.get_ref();
        if n < lo || n > hi {
            self.err(
                path,
                v,
                format!("{what} must be between {lo} and {hi}, got {n}"),
            );
            return lo;
        }
        n
    }

    /// An address of either family.
    pub(super) fn ip_any(&mut self, path: &str, v: &Spanned<String>, role: &str) -> IpAddr {
        match v.get_ref().parse::<IpAddr>() {
            Ok(a) => a,
            Err(_) => {
                self.err(
                    path,
                    v,
                    format!("{role} {:?} is not an IP address", v.get_ref()),
                );
                IpAddr::from([0, 0, 0, 0])
            }
        }
    }
}

fn line_at(src: &str, offset: usize) -> usize {
    src[..offset.min(src.len())].matches('\n').count() + 1
}

/// Parses, collecting unknown keys instead of stopping at the first, then validates.
pub fn parse(src: &str, checks: Checks) -> Result<Loaded, Vec<ConfigError>> {
    let de = toml::Deserializer::parse(src).map_err(|e| vec![toml_error(src, "(syntax)", &e)])?;
    let mut unknown = Vec::new();
    let mut note_unknown = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
    let raw: Result<RawConfig, _> =
        serde_path_to_error::deserialize(serde_ignored::Deserializer::new(de, &mut note_unknown));
    let mut c = Collector {
        src,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    for path in unknown.iter().map(|p| bracketed(p.as_str())) {
        c.errors.push(ConfigError {
            line: key_line(src, &path),
            message: format!("unknown key `{}`", path.rsplit('.').next().unwrap_or(&path)),
            path,
        });
    }
    let raw = match raw {
        Ok(r) => r,
        Err(e) => {
            let path = e.path().to_string();
            c.errors.push(toml_error(src, &path, e.inner()));
            return Err(c.errors);
        }
    };
    let cfg = validate(&mut c, raw, checks);
    if c.errors.is_empty() {
        Ok(Loaded {
            config: cfg,
            warnings: c.warnings,
        })
    } else {
        Err(c.errors)
    }
}

/// `vip.0.backend.1.x` as `vip[0].backend[1].x`, like every other key path we report.
fn bracketed(path: &str) -> String {
    let mut out = String::new();
    for seg in path.split('.') {
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(seg);
        }
    }
    out
}

/// The line of the last segment of an unknown key path (`vip[0].backend[1].wieght`): the first
/// line at or after its table's header that starts with the key.
fn key_line(src: &str, path: &str) -> Option<usize> {
    let key = path.rsplit('.').next()?;
    let key = key.split('[').next()?;
    src.lines()
        .position(|l| {
            let t = l.trim_start();
            t.starts_with(key) && t[key.len()..].trim_start().starts_with(['=', '.'])
        })
        .map(|i| i + 1)
}

fn toml_error(src: &str, path: &str, e: &toml::de::Error) -> ConfigError {
    let line = e.span().map(|s| line_at(src, s.start));
    let path = if path.is_empty() || path == "." {
        "(top level)".to_string()
    } else {
        path.to_string()
    };
    let mut message = e.message().trim().to_string();
    // The span of a duplicate key is the key: name it when the message does not.
    if message.contains("duplicate key")
        && let Some(s) = e.span()
    {
        let key = src.get(s).unwrap_or("").trim();
        if !key.is_empty() && !message.contains(key) {
            message = format!("{message} `{key}`");
        }
    }
    ConfigError {
        path,
        line,
        message,
    }
}

fn validate(c: &mut Collector, raw: RawConfig, checks: Checks) -> Config {
    let daemon = sections::daemon(c, &raw);
    let conntrack = sections::conntrack(c, &raw);
    let snat = sections::snat(c, &raw);
    let data_path = sections::data_path(c, &raw);
    let syn_cookies = sections::syn_cookies(c, &raw);
    let vips = vips::vips(c, &raw.vip);
    let announce = raw
        .announce
        .as_ref()
        .map(|a| sections::announce(c, a, &vips));
    let conn_log = raw.conn_log.as_ref().and_then(|l| sections::conn_log(c, l));
    let cfg = Config {
        daemon,
        conntrack,
        snat,
        data_path,
        syn_cookies,
        announce,
        conn_log,
        vips,
    };
    cross::checks(c, &raw, &cfg);
    if checks == Checks::Host {
        host::checks(c, &raw, &cfg);
    }
    cfg
}
