//! Which URLs an endpoint may have, and which addresses a delivery may connect to (rules §15).
//!
//! An endpoint's URL is https, names a host, carries no credentials, and neither is nor
//! resolves to an address inside a private network: private, carrier-grade NAT, link-local
//! (169.254.0.0/16, where cloud metadata lives), unspecified, multicast, broadcast,
//! documentation or reserved ranges are always refused, and loopback unless the deployment's
//! configuration allows it (the local stack does, and then also allows plain http to loopback
//! and any port). An IPv4 address carried inside an IPv6 one (mapped, translated, NAT64, 6to4,
//! Teredo) is judged as that IPv4 address. Outside the local stack the port is 443 or
//! 1024–65535, so a URL cannot aim a delivery at a well-known service (SSH, SMTP, …) of a host
//! that is otherwise public. A name is checked when the endpoint is made and again at every
//! delivery, where the connection goes only to the addresses the check let through (DNS can
//! change in between).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::error::ApiError;

pub const MAX_URL_LEN: usize = 2048;

/// A URL taken apart for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The URL as the `url` crate writes it back (host lowercased, IDNA, path escaped): what is
    /// stored and sent, so the URL checked is the URL called.
    pub normalized: String,
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// The host as an address, when the URL names one.
    pub literal: Option<IpAddr>,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::rule("invalid_url", message)
}

/// Checks `raw`'s form and, when it names an address, the address.
pub fn parse(raw: &str, allow_loopback: bool) -> Result<Target, ApiError> {
    if raw.len() > MAX_URL_LEN {
        return Err(invalid(format!("`url` may be at most {MAX_URL_LEN} characters.")));
    }
    let u = ::url::Url::parse(raw).map_err(|_| invalid("`url` is not a URL."))?;
    if !u.username().is_empty() || u.password().is_some() {
        return Err(invalid("`url` may not carry credentials."));
    }
    let literal = match u.host() {
        Some(::url::Host::Ipv4(a)) => Some(IpAddr::V4(a)),
        Some(::url::Host::Ipv6(a)) => Some(IpAddr::V6(a)),
        Some(::url::Host::Domain(_)) => None,
        None => return Err(invalid("`url` must name a host.")),
    };
    let host = u.host_str().unwrap_or_default().trim_matches(['[', ']']).to_string();
    if let Some(ip) = literal {
        allowed(ip, allow_loopback).map_err(|why| invalid(format!("`url` points at {why}.")))?;
    }
    let loopback_name = host.eq_ignore_ascii_case("localhost") || host.to_ascii_lowercase().ends_with(".localhost");
    if loopback_name && !allow_loopback {
        return Err(invalid("`url` points at a loopback address."));
    }
    let https = match u.scheme() {
        "https" => true,
        // Plain http only to this machine, where the configuration allows loopback.
        "http" if allow_loopback && (loopback_name || literal.is_some_and(|ip| canonical(ip).is_loopback())) => false,
        _ => return Err(invalid("`url` must be an https URL.")),
    };
    let port = u.port_or_known_default().unwrap_or(if https { 443 } else { 80 });
    // Only the local stack (loopback allowed) calls any port: its receivers listen where
    // they can.
    if !allow_loopback && !port_allowed(port) {
        return Err(invalid("`url`'s port must be 443 or from 1024 to 65535."));
    }
    Ok(Target { normalized: u.as_str().to_string(), https, host, port, literal })
}

/// The ports a delivery may call outside the local stack (rules §15): https's own, and the
/// unprivileged range, never a well-known service's.
pub fn port_allowed(port: u16) -> bool {
    port == 443 || port >= 1024
}

/// An IPv4 address inside an IPv6 one (mapped, translated, NAT64, 6to4 or Teredo) is judged as
/// itself: a relay or tunnel would deliver to it.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = v6.segments();
            // 64:ff9b::/96 (well-known NAT64), 64:ff9b:1::/48 (local-use NAT64) and
            // ::ffff:0:0:0/96 (IPv4-translated): the last 32 bits are the IPv4 address.
            let nat64 = s[0] == 0x64 && s[1] == 0xff9b && (s[2..6] == [0, 0, 0, 0] || s[2] == 1);
            let translated = s[..4] == [0, 0, 0, 0] && s[4] == 0xffff && s[5] == 0;
            if nat64 || translated {
                return IpAddr::V4(from_segments(s[6], s[7]));
            }
            // 2002::/16 (6to4): the IPv4 address is bits 16..48.
            if s[0] == 0x2002 {
                return IpAddr::V4(from_segments(s[1], s[2]));
            }
            // 2001:0::/32 (Teredo): the client's IPv4 address is the last 32 bits, inverted.
            if s[0] == 0x2001 && s[1] == 0 {
                return IpAddr::V4(from_segments(!s[6], !s[7]));
            }
            IpAddr::V6(v6)
        }
        v4 => v4,
    }
}

fn from_segments(hi: u16, lo: u16) -> Ipv4Addr {
    Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo))
}

/// Whether a delivery may connect to `ip`; if not, what kind of address it is.
pub fn allowed(ip: IpAddr, allow_loopback: bool) -> Result<(), &'static str> {
    match canonical(ip) {
        IpAddr::V4(a) => v4(a, allow_loopback),
        IpAddr::V6(a) => v6(a, allow_loopback),
    }
}

fn v4(a: Ipv4Addr, allow_loopback: bool) -> Result<(), &'static str> {
    let [o0, o1, ..] = a.octets();
    if a.is_loopback() {
        return if allow_loopback { Ok(()) } else { Err("a loopback address") };
    }
    if a.is_unspecified() || o0 == 0 {
        Err("an unspecified address")
    } else if a.is_private() {
        Err("a private address")
    } else if o0 == 100 && (64..128).contains(&o1) {
        Err("a shared (carrier-grade NAT) address")
    } else if a.is_link_local() {
        Err("a link-local address")
    } else if a.is_multicast() || a.is_broadcast() || o0 >= 240 {
        Err("a multicast, broadcast or reserved address")
    } else if o0 == 192 && o1 == 0 && a.octets()[2] == 0 {
        Err("an IETF protocol assignment address")
    } else if o0 == 198 && (o1 == 18 || o1 == 19) {
        Err("a benchmarking address")
    } else if matches!(a.octets(), [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _]) {
        // TEST-NET-1, -2 and -3 (RFC 5737): never a real receiver.
        Err("a documentation address")
    } else {
        Ok(())
    }
}

fn v6(a: Ipv6Addr, allow_loopback: bool) -> Result<(), &'static str> {
    let s0 = a.segments()[0];
    if a.is_loopback() {
        return if allow_loopback { Ok(()) } else { Err("a loopback address") };
    }
    if a.is_unspecified() {
        Err("an unspecified address")
    } else if (s0 & 0xfe00) == 0xfc00 {
        Err("a private (unique local) address")
    } else if (s0 & 0xffc0) == 0xfe80 || (s0 & 0xffc0) == 0xfec0 {
        Err("a link-local address")
    } else if a.is_multicast() {
        Err("a multicast address")
    } else if a.segments()[..2] == [0x2001, 0x0db8] {
        Err("a documentation address")
    } else if a.segments()[..6] == [0, 0, 0, 0, 0, 0] {
        // IPv4-compatible (deprecated): judged as the IPv4 address it carries.
        let o = a.octets();
        v4(Ipv4Addr::new(o[12], o[13], o[14], o[15]), allow_loopback)
    } else {
        Ok(())
    }
}

/// Checks every address `target`'s host resolves to now. A name that does not resolve (yet)
/// is accepted: every delivery resolves and checks again before it connects.
pub async fn check_resolved(target: &Target, allow_loopback: bool) -> Result<(), ApiError> {
    if target.literal.is_some() {
        return Ok(());
    }
    // A slow resolver must not hold the request past its own timeout: unanswered counts as
    // not resolving (yet).
    let lookup = tokio::net::lookup_host((target.host.as_str(), target.port));
    let Ok(Ok(addrs)) = tokio::time::timeout(std::time::Duration::from_secs(3), lookup).await else {
        return Ok(());
    };
    for addr in addrs {
        allowed(addr.ip(), allow_loopback)
            .map_err(|why| invalid(format!("`url`'s host resolves to {why} ({}).", addr.ip())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_link_local_and_unspecified_are_always_refused_loopback_by_configuration() {
        for bad in [
            "https://10.0.0.1/h",
            "https://172.16.5.4/h",
            "https://192.168.1.1/h",
            "https://169.254.169.254/latest/meta-data",
            "https://0.0.0.0/h",
            "https://[::]/h",
            "https://[fd00::1]/h",
            "https://[fe80::1]/h",
            "https://[::ffff:10.0.0.1]/h",
            "https://[::ffff:169.254.169.254]/h",
            "https://[64:ff9b::a9fe:a9fe]/h",
            "https://[64:ff9b:1::a00:1]/h",
            "https://[::ffff:0:a00:1]/h",
            "https://100.64.0.1/h",
            "https://224.0.0.1/h",
            "https://255.255.255.255/h",
        ] {
            for allow in [false, true] {
                let e = parse(bad, allow).expect_err(bad);
                assert_eq!(e.code(), "invalid_url", "{bad}");
            }
        }
        for lo in ["https://127.0.0.1:8443/h", "https://[::1]/h", "https://localhost/h", "http://127.0.0.1:9/h"] {
            assert_eq!(parse(lo, false).map_err(|e| e.code().to_string()), Err("invalid_url".into()), "{lo}");
            assert!(parse(lo, true).is_ok(), "{lo}");
        }
    }

    #[test]
    fn documentation_reserved_and_tunnelled_private_addresses_are_refused() {
        for bad in [
            "https://192.0.2.1/h",
            "https://198.51.100.7/h",
            "https://203.0.113.9/h",
            "https://240.0.0.1/h",
            "https://[2001:db8::1]/h",
            "https://[2001:db8:ffff::5]/h",
            // 6to4 carrying 10.0.0.1, 169.254.169.254 and 192.168.1.1.
            "https://[2002:a00:1::1]/h",
            "https://[2002:a9fe:a9fe::]/h",
            "https://[2002:c0a8:101:1::1]/h",
            // Teredo whose client is 10.0.0.1, 169.254.169.254 and 203.0.113.9 (inverted bits).
            "https://[2001:0:4136:e378:8000:63bf:f5ff:fffe]/h",
            "https://[2001:0:4136:e378:8000:63bf:5601:5601]/h",
            "https://[2001:0:4136:e378:8000:63bf:34ff:8ef6]/h",
        ] {
            for allow in [false, true] {
                assert_eq!(parse(bad, allow).map_err(|e| e.code().to_string()), Err("invalid_url".into()), "{bad}");
            }
        }
        // 6to4 and Teredo carrying 127.0.0.1: loopback, so only where loopback is allowed.
        for lo in ["https://[2002:7f00:1::1]/h", "https://[2001:0:4136:e378:8000:63bf:80ff:fffe]/h"] {
            assert!(parse(lo, false).is_err() && parse(lo, true).is_ok(), "{lo}");
        }
        // Carrying a public address (8.8.8.8), they are judged as it.
        for ok in ["https://[2002:808:808::1]/h", "https://[2001:0:4136:e378:8000:63bf:f7f7:f7f7]/h"] {
            assert!(parse(ok, false).is_ok(), "{ok}");
        }
        for resolved in ["2002:a00:1::1", "2001:0:4136:e378:8000:63bf:f5ff:fffe", "2001:db8::1", "192.0.2.1"] {
            assert!(allowed(resolved.parse().unwrap(), true).is_err(), "a resolved {resolved}");
        }
    }

    #[test]
    fn outside_the_local_stack_the_port_is_443_or_unprivileged() {
        for bad in [
            "https://example.com:80/h",
            "https://example.com:22/h",
            "https://8.8.8.8:25/h",
            "https://example.com:1023/h",
        ] {
            assert_eq!(parse(bad, false).map_err(|e| e.code().to_string()), Err("invalid_url".into()), "{bad}");
            assert!(parse(bad, true).is_ok(), "the local stack calls any port: {bad}");
        }
        for ok in [
            "https://example.com/h",
            "https://example.com:443/h",
            "https://example.com:1024/h",
            "https://example.com:8443/h",
            "https://example.com:65535/h",
        ] {
            assert!(parse(ok, false).is_ok(), "{ok}");
        }
    }

    #[test]
    fn only_https_with_a_host_and_no_credentials() {
        assert!(parse("https://hooks.example.com/topup", false).is_ok());
        assert!(parse("https://8.8.8.8/topup", false).is_ok());
        for bad in [
            "http://hooks.example.com/h",
            "ftp://hooks.example.com/h",
            "https://user:pw@hooks.example.com/h",
            "not a url",
            "https://",
            "http://10.0.0.1/h",
        ] {
            assert_eq!(parse(bad, true).map_err(|e| e.code().to_string()), Err("invalid_url".into()), "{bad}");
        }
        let t = parse("https://Hooks.Example.com/a b", false).expect("ok");
        assert_eq!((t.https, t.port, t.host.as_str()), (true, 443, "hooks.example.com"));
        assert_eq!(t.normalized, "https://hooks.example.com/a%20b", "what is stored is what is sent");
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert!(parse(&long, false).is_err());
    }
}
