//! wklb userspace: configuration, the controller and its data-plane interface, health checks,
//! the daemon with its control socket and metrics, and the CLI.
pub mod announce;
pub mod cli;
pub mod config;
pub mod connlog;
pub mod control;
pub mod controller;
pub mod ctx;
pub mod daemon;
pub mod dataplane;
pub mod health;
pub mod logging;
pub mod metrics;
pub mod report;
pub mod sys;
pub mod systemd;

#[cfg(test)]
mod layout {
    /// Files stay small enough to read whole: one concern each (tests included).
    #[test]
    fn no_source_file_is_over_600_lines() {
        fn walk(dir: &std::path::Path, out: &mut Vec<(usize, String)>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    let n = std::fs::read_to_string(&p).unwrap().lines().count();
                    out.push((n, p.display().to_string()));
                }
            }
        }
        let mut files = Vec::new();
        walk(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut files,
        );
        assert!(files.len() > 30);
        let long: Vec<_> = files.iter().filter(|(n, _)| *n > 600).collect();
        assert!(long.is_empty(), "split these by concern: {long:?}");
    }
}
