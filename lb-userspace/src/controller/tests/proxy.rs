//! PROXY protocol VIPs are programmed only once this build's entry program is attached (an
//! older entry would send their flows' bytes without the header), or at once when the pins
//! show the attached entry already sends it (a restart).

use super::*;

fn proxied(version: &str) -> Config {
    let src = format!(
        "[daemon]\ninterfaces = [\"eth0\"]\n[snat]\naddresses = [\"10.2.0.100\"]\n\
         [[vip]]\nname = \"im\"\naddress = \"10.100.0.1\"\nport = 5100\nproxy_protocol = \"{version}\"\n\
         [[vip.backend]]\naddress = \"10.2.0.11\"\n"
    );
    parse(&src, Checks::Offline).expect("test config").config
}

fn flags(maps: &FakeMaps) -> u32 {
    maps.image().vips.values().next().expect("a VIP").flags
}

#[test]
fn proxy_vips_are_programmed_once_the_entry_program_is_attached() {
    let maps = FakeMaps::default();
    let (mut c, _) = Controller::new(maps.clone(), proxied("v2"), eth0(), 4).expect("start");
    assert_eq!(flags(&maps) & (VipMeta::PROXY_V1 | VipMeta::PROXY_V2), 0);
    assert_eq!(c.state().vips[0].spec.proxy_protocol.name(), "v2");
    c.entry_attached().unwrap();
    assert_eq!(
        flags(&maps) & (VipMeta::PROXY_V1 | VipMeta::PROXY_V2),
        VipMeta::PROXY_V2
    );
    // A reload to v1 and to off changes the VIP's flag (new connections only).
    let lines = c.apply(proxied("v1")).unwrap();
    assert!(
        lines.iter().any(|l| l.contains("proxy_protocol v2 -> v1")),
        "{lines:?}"
    );
    assert_eq!(
        flags(&maps) & (VipMeta::PROXY_V1 | VipMeta::PROXY_V2),
        VipMeta::PROXY_V1
    );
    c.apply(proxied("off")).unwrap();
    assert_eq!(flags(&maps) & (VipMeta::PROXY_V1 | VipMeta::PROXY_V2), 0);
}

#[test]
fn a_restart_adopting_proxy_vips_keeps_them_programmed_before_its_entry_is_attached() {
    let maps = FakeMaps::default();
    let (mut c, _) = Controller::new(maps.clone(), proxied("v2"), eth0(), 4).expect("start");
    c.entry_attached().unwrap();
    drop(c);
    // The next daemon adopts the pins: the entry still attached sends the header, so new
    // flows must keep getting it until this daemon attaches its own.
    let again = FakeMaps::holding(maps.image());
    let (c, _) = Controller::new(again.clone(), proxied("v2"), eth0(), 4).expect("restart");
    assert!(c.state().entry_attached);
    assert_eq!(
        flags(&again) & (VipMeta::PROXY_V1 | VipMeta::PROXY_V2),
        VipMeta::PROXY_V2
    );
    // Pins of a daemon that never attached (or of a build without PROXY protocol): none.
    let (c, _) = Controller::new(FakeMaps::default(), proxied("v2"), eth0(), 4).expect("start");
    assert!(!c.state().entry_attached);
}
