use super::*;

const GOOD: &str = r#"
[daemon]
interfaces = ["eth0"]

[snat]
addresses = ["192.0.2.10"]

[[vip]]
name = "im-tcp"
address = "198.51.100.1"
port = 5100

[vip.health_check]
kind = "http"
port = 5001
path = "/health"
headers = { token = "secret" }
interval = "1s"
timeout = "500ms"

[[vip.backend]]
address = "192.0.2.21"

[[vip.backend]]
address = "192.0.2.22"
weight = 50
"#;

fn ok(src: &str) -> Config {
    parse(src, Checks::Offline).expect("valid").config
}

fn errors(src: &str) -> Vec<ConfigError> {
    parse(src, Checks::Offline).expect_err("config should be rejected")
}

fn one_error(src: &str) -> ConfigError {
    let e = errors(src);
    assert_eq!(e.len(), 1, "{e:#?}");
    e.into_iter().next().unwrap()
}

#[test]
fn good_config_with_defaults() {
    let c = ok(GOOD);
    assert_eq!(c.daemon.pin_path, PathBuf::from(schema::defaults::PIN_PATH));
    assert_eq!(c.conntrack.max_flows, 1 << 20);
    assert_eq!(c.conntrack.timeouts.established_ns, 15 * 60 * 1_000_000_000);
    assert_eq!(c.data_path.mss_clamp, MssClamp::Auto);
    assert!(c.data_path.echo_reply);
    let v = &c.vips[0];
    assert_eq!((v.port, v.protocol), (5100, Protocol::Tcp));
    assert_eq!(
        v.backends[0],
        BackendConfig {
            address: "192.0.2.21".parse().unwrap(),
            port: 5100,
            weight: 100
        }
    );
    assert_eq!(v.backends[1].weight, 50);
    let ProbeKind::Http {
        headers,
        expect_status,
        ..
    } = &v.health.kind
    else {
        panic!()
    };
    assert_eq!((headers["token"].as_str(), *expect_status), ("secret", 200));
    assert_eq!(v.health.port, Some(5001));
    // 1M flows over 64,512 ports: 17 SNAT slots in the flow table.
    assert_eq!(c.snat_slots(), 17);
}

#[test]
fn unknown_keys_are_all_reported_with_their_lines_and_the_rest_still_checked() {
    let src = GOOD
        .replace("weight = 50", "weight = 50\nwieght = 3")
        .replace("port = 5001", "port = 5001\nintervall = \"2s\"")
        .replace("timeout = \"500ms\"", "timeout = \"5s\"");
    let e = errors(&src);
    assert_eq!(e.len(), 3, "{e:#?}");
    let w = e
        .iter()
        .find(|e| e.path == "vip[0].backend[1].wieght")
        .unwrap_or_else(|| panic!("{e:#?}"));
    assert!(w.message.contains("unknown key `wieght`"), "{w}");
    assert_eq!(w.line, Some(28));
    assert!(e.iter().any(|e| e.path.ends_with("intervall")), "{e:#?}");
    assert!(
        e.iter()
            .any(|e| e.message.contains("shorter than interval")),
        "validation still ran: {e:#?}"
    );
}

#[test]
fn duplicate_key_is_named() {
    let e = one_error(&GOOD.replace("port = 5100", "port = 5100\nport = 5200"));
    assert!(e.message.contains("`port`"), "{e}");
    assert_eq!(e.line, Some(12), "the second definition");
}

#[test]
fn vip_without_backends() {
    let src = GOOD.split("[[vip.backend]]").next().unwrap();
    let e = one_error(src);
    assert_eq!(e.path, "vip[0].backend");
    assert!(e.message.contains("no backends"), "{e}");
    assert_eq!(e.line, Some(9));
}

#[test]
fn duplicate_vip_tuple() {
    let dup = format!(
        "{GOOD}\n[[vip]]\nname = \"again\"\naddress = \"198.51.100.1\"\nport = 5100\n[[vip.backend]]\naddress = \"192.0.2.30\"\n"
    );
    let e = one_error(&dup);
    assert_eq!(e.path, "vip[1].address");
    assert!(e.message.contains("198.51.100.1:5100/tcp"), "{e}");
}

#[test]
fn negative_and_all_zero_weights() {
    let e = one_error(&GOOD.replace("weight = 50", "weight = -5"));
    assert_eq!(e.path, "vip[0].backend[1].weight");
    assert!(e.message.contains("-5"), "{e}");
    assert_eq!(e.line, Some(26));
    let zero = GOOD.replace("weight = 50", "weight = 0").replace(
        "address = \"192.0.2.21\"",
        "address = \"192.0.2.21\"\nweight = 0",
    );
    let e = one_error(&zero);
    assert!(e.message.contains("weight 0"), "{e}");
}

#[test]
fn a_backend_needs_a_snat_address_of_its_family() {
    let v6_backend = GOOD.replace("192.0.2.22", "2001:db8::22");
    let e = one_error(&v6_backend);
    assert_eq!(e.path, "vip[0].backend[1].address");
    assert_eq!(e.line, Some(25));
    assert!(
        e.message.contains("IPv6") && e.message.contains("snat.addresses"),
        "{e}"
    );
    // An IPv6 SNAT address alone leaves the IPv4 backends without one.
    let e = errors(&GOOD.replace("\"192.0.2.10\"", "\"2001:db8::10\""));
    let paths: Vec<_> = e.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        ["vip[0].backend[0].address", "vip[0].backend[1].address"]
    );
    // Both families: a VIP may mix IPv4 and IPv6 backends; its SYN cookies are off unless set,
    // and refused when set.
    let dual = v6_backend.replace("\"192.0.2.10\"", "\"192.0.2.10\", \"2001:db8::10\"");
    let c = ok(&dual);
    assert!(c.vips[0].backends[1].address.is_ipv6());
    assert_eq!(c.snat.addresses.len(), 2);
    assert_eq!(c.vips[0].syn_cookies, CookieMode::Off);
    let e = one_error(&dual.replace("port = 5100\n", "port = 5100\nsyn_cookies = \"auto\"\n"));
    assert_eq!(e.path, "vip[0].syn_cookies");
    assert!(e.message.contains("IPv6 backends"), "{e}");
}

#[test]
fn an_ipv6_vip_takes_ipv4_backends_is_announced_and_refuses_what_it_lacks_by_key() {
    let v6 = GOOD.replace("198.51.100.1", "2001:db8:1::1");
    let c = ok(&v6);
    assert!(c.vips[0].address.is_ipv6());
    assert_eq!(
        c.vips[0].syn_cookies,
        CookieMode::Off,
        "cookies off unless set"
    );
    let port = "port = 5100\n";
    for (extra, path) in [
        ("syn_cookies = \"always\"\n", "vip[0].syn_cookies"),
        ("deny = [\"203.0.113.0/24\"]\n", "vip[0].deny"),
        ("source_rate = 10\n", "vip[0].source_rate"),
        ("source_max_conns = 10\n", "vip[0].source_max_conns"),
    ] {
        let e = one_error(&v6.replace(port, &format!("{port}{extra}")));
        assert_eq!(e.path, path, "{e}");
        assert!(e.message.contains("IPv6 VIP"), "{e}");
    }
    // Announced like an IPv4 one (a /128 route), by name or by default.
    let announced = format!("{v6}\n[announce]\nvips = [\"im-tcp\"]\n");
    assert_eq!(ok(&announced).announce.unwrap().vips, ["im-tcp"]);
    let all = format!("{v6}\n[announce]\n");
    assert_eq!(ok(&all).announce.unwrap().vips, ["im-tcp"]);
}

#[test]
fn bad_duration_and_timeout_not_below_interval() {
    let e = one_error(&GOOD.replace("interval = \"1s\"", "interval = \"soon\""));
    assert_eq!(e.path, "vip[0].health_check.interval");
    assert!(e.message.contains("not a duration"), "{e}");
    let e = one_error(&GOOD.replace("timeout = \"500ms\"", "timeout = \"2s\""));
    assert_eq!(e.path, "vip[0].health_check.timeout");
    assert!(e.message.contains("shorter than interval"), "{e}");
}

#[test]
fn several_errors_are_reported_together() {
    let src = GOOD
        .replace("weight = 50", "weight = -1")
        .replace("timeout = \"500ms\"", "timeout = \"5s\"");
    assert_eq!(errors(&src).len(), 2);
}

#[test]
fn missing_interface_is_an_error_when_checking_the_host() {
    let e = parse(&GOOD.replace("eth0", "wklb-no-such-if0"), Checks::Host).unwrap_err();
    assert!(
        e.iter()
            .any(|e| e.path == "daemon.interfaces[0]" && e.message.contains("does not exist")),
        "{e:?}"
    );
    // And a SNAT address this host does not have.
    assert!(
        e.iter()
            .any(|e| e.path == "snat.addresses[0]" && e.message.contains("not assigned")),
        "{e:?}"
    );
}

#[test]
fn snat_address_equal_to_a_vip_is_refused() {
    let e = one_error(&GOOD.replace("\"192.0.2.10\"", "\"198.51.100.1\""));
    assert_eq!(e.path, "snat.addresses[0]");
    assert!(e.message.contains("im-tcp"), "{e}");
}

#[test]
fn too_many_backends_in_all() {
    let mut src =
        String::from("[daemon]\ninterfaces = [\"eth0\"]\n[snat]\naddresses = [\"192.0.2.10\"]\n");
    for v in 0..3 {
        src += &format!(
            "[[vip]]\nname = \"v{v}\"\naddress = \"198.51.100.1\"\nport = {}\n",
            5000 + v
        );
        for b in 0..1400 {
            src += &format!(
                "[[vip.backend]]\naddress = \"10.{v}.{}.{}\"\n",
                b / 250,
                b % 250 + 1
            );
        }
    }
    let e = one_error(&src);
    assert!(
        e.message.contains("4200 backends") && e.message.contains("4096"),
        "{e}"
    );
}

#[test]
fn mss_clamp_values() {
    let with = |v: &str| {
        GOOD.replace(
            "[[vip]]",
            &format!("[data_path]\nmss_clamp = {v}\n\n[[vip]]"),
        )
    };
    assert_eq!(ok(&with("\"off\"")).data_path.mss_clamp, MssClamp::Off);
    assert_eq!(ok(&with("1360")).data_path.mss_clamp, MssClamp::Fixed(1360));
    let e = one_error(&with("100"));
    assert_eq!(e.path, "data_path.mss_clamp");
    let e = one_error(&with("\"sometimes\""));
    assert!(e.message.contains("\"auto\""), "{e}");
}

#[test]
fn snat_capacity_below_max_flows_is_a_warning() {
    let l = parse(GOOD, Checks::Offline).unwrap();
    let w = l
        .warnings
        .iter()
        .find(|w| w.path == "snat.addresses")
        .expect("capacity warning");
    assert!(w.message.contains("64512"), "{w}");
    let small = GOOD.replace("[snat]", "[conntrack]\nmax_flows = 50000\n\n[snat]");
    assert!(parse(&small, Checks::Offline).unwrap().warnings.is_empty());
}

#[test]
fn shipped_examples_are_valid() {
    let c = ok(include_str!("../../../examples/wklb.toml"));
    assert_eq!(c.vips.len(), 3);
    assert_eq!(c.vips[1].port, 5200);
    assert!(c.vips[2].address.is_ipv6(), "the dual-stack VIP");
    assert!(c.vips[2].backends[3].address.is_ipv6(), "an IPv6 data node");
    assert!(c.snat.addresses[1].is_ipv6());
    let c = ok(include_str!("../../../examples/cross-region.toml"));
    assert_eq!(c.vips[1].port, 443);
    assert_eq!(c.vips[1].backends[0].port, 5210);
    assert_eq!(
        c.vips[0]
            .groups
            .priority_of("172.16.5.21".parse().unwrap(), 5100),
        1
    );
}

#[test]
fn syntax_error_has_a_line() {
    let e = one_error("[daemon\ninterfaces = []");
    assert_eq!(e.line, Some(1));
}

#[test]
fn syn_cookie_modes_and_thresholds() {
    let c = ok(GOOD);
    assert_eq!(c.vips[0].syn_cookies, CookieMode::Auto);
    assert_eq!(c.syn_cookies.engage_syn_rate, 2000);
    assert_eq!(c.syn_cookies.release_after, Duration::from_secs(30));
    let always = GOOD.replace("port = 5100\n", "port = 5100\nsyn_cookies = \"always\"\n");
    assert_eq!(ok(&always).vips[0].syn_cookies, CookieMode::Always);
    let tuned = format!("{GOOD}\n[syn_cookies]\nengage_syn_rate = 500\nrelease_after = \"2m\"\n");
    let c = ok(&tuned);
    assert_eq!(c.syn_cookies.engage_syn_rate, 500);
    assert_eq!(c.syn_cookies.release_after, Duration::from_secs(120));

    let bad = GOOD.replace(
        "port = 5100\n",
        "port = 5100\nsyn_cookies = \"sometimes\"\n",
    );
    let e = one_error(&bad);
    assert_eq!((e.path.as_str(), e.line), ("vip[0].syn_cookies", Some(12)));
    assert!(e.message.contains("auto, always, off"), "{e}");
    let zero = format!("{GOOD}\n[syn_cookies]\nengage_syn_rate = 0\n");
    assert_eq!(one_error(&zero).path, "syn_cookies.engage_syn_rate");
    // UDP has no handshake: cookies are off, and asking for them is an error.
    let udp = GOOD.replace("port = 5100\n", "port = 5100\nprotocol = \"udp\"\n");
    assert_eq!(ok(&udp).vips[0].syn_cookies, CookieMode::Off);
    let udp_always = GOOD.replace(
        "port = 5100\n",
        "port = 5100\nprotocol = \"udp\"\nsyn_cookies = \"always\"\n",
    );
    let e = one_error(&udp_always);
    assert_eq!(e.path, "vip[0].syn_cookies");
    assert!(e.message.contains("TCP VIPs only"), "{e}");
}

#[test]
fn source_lists_and_rates() {
    let with = |extra: &str| GOOD.replace("port = 5100\n", &format!("port = 5100\n{extra}"));
    let c = ok(&with(
        "deny = [\"203.0.113.0/24\", \"198.51.100.7\"]\nallow = [\"203.0.113.9/32\"]\nsource_rate = 20\n",
    ));
    let s = &c.vips[0].sources;
    assert_eq!(s.deny.len(), 2);
    assert!(
        s.deny.contains(&"198.51.100.7/32".parse().unwrap()),
        "a bare address is a /32"
    );
    assert_eq!(
        (s.rate, s.burst),
        (20, 20),
        "the burst defaults to the rate"
    );
    assert_eq!(ok(GOOD).vips[0].sources, SourcePolicy::default());

    let e = one_error(&with("deny = [\"203.0.113.1/24\"]\n"));
    assert_eq!(e.path, "vip[0].deny[0]");
    assert!(
        e.message.contains("host bits") && e.message.contains("203.0.113.0/24"),
        "{e}"
    );
    let e = one_error(&with("allow = [\"banana\"]\n"));
    assert_eq!(e.path, "vip[0].allow[0]");
    let e = one_error(&with("deny = [\"10.0.0.0/8\", \"10.0.0.0/8\"]\n"));
    assert!(e.message.contains("twice"), "{e}");
    let e = one_error(&with("deny = [\"10.0.0.0/8\"]\nallow = [\"10.0.0.0/8\"]\n"));
    assert!(
        e.message.contains("both the deny and the allow list"),
        "{e}"
    );
    let e = one_error(&with("source_rate = -1\n"));
    assert_eq!(e.path, "vip[0].source_rate");
    assert_eq!(
        ok(&with("source_max_conns = 20\n")).vips[0]
            .sources
            .max_conns,
        20
    );
    let e = one_error(&with("source_max_conns = -2\n"));
    assert_eq!(e.path, "vip[0].source_max_conns");
}

#[test]
fn announce_defaults_and_values() {
    assert_eq!(ok(GOOD).announce, None, "no section: announcing is off");
    let c = ok(&format!("{GOOD}\n[announce]\n"));
    let a = c.announce.expect("announce");
    assert_eq!(a.table, 200);
    assert_eq!(a.vips, ["im-tcp"], "every VIP by default");
    assert_eq!(a.when_all_down, WhenAllDown::Keep);
    assert_eq!(a.drain_file, PathBuf::from("/var/lib/wklb/drained"));
    let c = ok(&format!(
        "{GOOD}\n[announce]\ntable = 1000\nvips = [\"im-tcp\"]\nwhen_all_backends_down = \"withdraw\"\ndrain_file = \"/tmp/x\"\n"
    ));
    let a = c.announce.expect("announce");
    assert_eq!((a.table, a.when_all_down), (1000, WhenAllDown::Withdraw));
}

#[test]
fn announce_errors_name_the_key_and_line() {
    let src = format!("{GOOD}\n[announce]\ntable = 254\n");
    let e = one_error(&src);
    assert_eq!(e.path, "announce.table");
    assert!(e.message.contains("main"), "{e}");
    assert_eq!(e.line, Some(src.lines().count()));
    let e = one_error(&format!("{GOOD}\n[announce]\nvips = [\"im-tpc\"]\n"));
    assert_eq!(e.path, "announce.vips[0]");
    assert!(e.message.contains("im-tpc"), "{e}");
    let e = one_error(&format!("{GOOD}\n[announce]\nvips = []\n"));
    assert_eq!(e.path, "announce.vips");
    let e = one_error(&format!(
        "{GOOD}\n[announce]\nwhen_all_backends_down = \"panic\"\n"
    ));
    assert_eq!(e.path, "announce.when_all_backends_down");
    let e = one_error(&format!("{GOOD}\n[announce]\ntable = 0\n"));
    assert_eq!(e.path, "announce.table");
    let e = one_error(&format!("{GOOD}\n[announce]\ntabel = 5\n"));
    assert!(e.message.contains("unknown key"), "{e}");
}

const GROUPED: &str = r#"
[daemon]
interfaces = ["eth0"]

[snat]
addresses = ["192.0.2.10"]

[[vip]]
name = "im"
address = "198.51.100.1"
port = 5100

[[vip.group]]
name = "direct"
priority = 0

[[vip.group]]
name = "via-relay"
priority = 1

[vip.failover]
overprovisioning = 1.2

[[vip.backend]]
address = "10.0.1.11"
group = "direct"

[[vip.backend]]
address = "10.0.2.11"
group = "via-relay"
"#;

#[test]
fn backend_groups_and_failover() {
    let c = ok(GROUPED);
    let g = &c.vips[0].groups;
    assert_eq!(g.overprovisioning_pct, 120);
    assert_eq!(
        g.groups
            .iter()
            .map(|g| (g.name.as_str(), g.priority))
            .collect::<Vec<_>>(),
        [("direct", 0), ("via-relay", 1)],
        "no backend is in `default`, so there is none"
    );
    assert_eq!(g.group_of("10.0.2.11".parse().unwrap(), 5100), "via-relay");
    assert_eq!(g.priority_of("10.0.2.11".parse().unwrap(), 5100), 1);
    // Without groups: everything in `default`, overprovisioning 1.4.
    let c = ok(GOOD);
    let g = &c.vips[0].groups;
    assert_eq!((g.groups.len(), g.overprovisioning_pct), (1, 140));
    assert_eq!(g.group_of("192.0.2.21".parse().unwrap(), 5100), "default");
    // A backend without a group next to declared groups lands in `default`, priority 0.
    let c = ok(&GROUPED.replace("group = \"via-relay\"\n", ""));
    assert!(c.vips[0].groups.get("default").is_some());
}

#[test]
fn group_errors_name_the_key_and_line() {
    let src = GROUPED.replace("group = \"via-relay\"", "group = \"via-realy\"");
    let e = one_error(&src);
    assert_eq!(e.path, "vip[0].backend[1].group");
    assert!(
        e.message.contains("via-realy") && e.message.contains("direct, via-relay"),
        "{e}"
    );
    assert_eq!(
        e.line,
        Some(src.lines().position(|l| l.contains("via-realy")).unwrap() + 1)
    );
    let e = errors(&GROUPED.replace("name = \"via-relay\"", "name = \"direct\""));
    assert!(e[0].message.contains("declared twice"), "{e:?}");
    assert_eq!(e[0].path, "vip[0].group[1].name");
    let e = one_error(&GROUPED.replace("overprovisioning = 1.2", "overprovisioning = 0.5"));
    assert_eq!(e.path, "vip[0].failover.overprovisioning");
    let e = one_error(&GROUPED.replace("priority = 1", "priority = -1"));
    assert_eq!(e.path, "vip[0].group[1].priority");
    // A declared group without backends is a warning, not an error.
    let l = parse(
        &GROUPED.replace("group = \"via-relay\"", "group = \"direct\""),
        Checks::Offline,
    )
    .expect("valid");
    assert!(
        l.warnings.iter().any(|w| w.path == "vip[0].group[1]"),
        "{:?}",
        l.warnings
    );
}

#[test]
fn pins_name_prefixes_and_groups() {
    let pinned = GROUPED.replace(
        "[vip.failover]",
        "[[vip.pin]]\nname = \"eu\"\nsources = [\"203.0.113.0/24\", \"198.51.100.7\"]\ngroups = [\"via-relay\"]\n\n[[vip.pin]]\nsources = [\"192.0.2.0/25\"]\ngroups = [\"direct\"]\nspill = true\n\n[vip.failover]",
    );
    let c = ok(&pinned);
    let p = &c.vips[0].pins;
    assert_eq!(p.len(), 2);
    assert_eq!(
        (p[0].name.as_str(), p[0].sources.len(), p[0].spill),
        ("eu", 2, false)
    );
    assert_eq!((p[1].name.as_str(), p[1].spill), ("pin1", true));
    assert_eq!(p[0].groups, ["via-relay"]);
    let e = one_error(&pinned.replace(
        "groups = [\"via-relay\"]\n\n[[vip.pin]]",
        "groups = [\"relay\"]\n\n[[vip.pin]]",
    ));
    assert_eq!(e.path, "vip[0].pin[0].groups[0]");
    assert!(e.message.contains("direct, via-relay"), "{e}");
    let e = one_error(&pinned.replace("\"192.0.2.0/25\"", "\"203.0.113.0/24\""));
    assert_eq!(e.path, "vip[0].pin[1].sources[0]");
    assert!(e.message.contains("already pinned by pin \"eu\""), "{e}");
    let e = one_error(&pinned.replace("\"192.0.2.0/25\"", "\"192.0.2.1/25\""));
    assert!(e.message.contains("host bits"), "{e}");
    let e = one_error(&pinned.replace("groups = [\"direct\"]", "groups = []"));
    assert_eq!(e.path, "vip[0].pin[1].groups");
}

#[test]
fn proxy_protocol_is_for_ipv4_tcp_vips_and_refused_elsewhere_by_key() {
    let port = "port = 5100\n";
    let with = |src: &str, v: &str| src.replace(port, &format!("{port}proxy_protocol = \"{v}\"\n"));
    assert_eq!(ok(GOOD).vips[0].proxy_protocol, ProxyProtocol::Off);
    assert_eq!(
        ok(&with(GOOD, "v1")).vips[0].proxy_protocol,
        ProxyProtocol::V1
    );
    assert_eq!(
        ok(&with(GOOD, "v2")).vips[0].proxy_protocol,
        ProxyProtocol::V2
    );
    assert_eq!(
        ok(&with(GOOD, "off")).vips[0].proxy_protocol,
        ProxyProtocol::Off
    );
    let e = one_error(&with(GOOD, "v3"));
    assert_eq!(
        (e.path.as_str(), e.line),
        ("vip[0].proxy_protocol", Some(12))
    );
    assert!(
        e.message.contains("\"v3\" is not one of off, v1, v2"),
        "{e}"
    );
    // UDP, an IPv6 VIP, IPv6 data nodes: by key, with what to do.
    let udp = with(GOOD, "v2").replace(port, &format!("{port}protocol = \"udp\"\n"));
    let e = one_error(&udp);
    assert_eq!(e.path, "vip[0].proxy_protocol");
    assert!(e.message.contains("TCP VIPs only"), "{e}");
    let v6 = with(GOOD, "v2").replace("198.51.100.1", "2001:db8:1::1");
    let e = one_error(&v6);
    assert!(e.message.contains("an IPv6 VIP"), "{e}");
    let v6_nodes = with(GOOD, "v1")
        .replace("192.0.2.22", "2001:db8::22")
        .replace("\"192.0.2.10\"", "\"192.0.2.10\", \"2001:db8::10\"");
    let e = one_error(&v6_nodes);
    assert!(e.message.contains("IPv6 backends"), "{e}");
}
