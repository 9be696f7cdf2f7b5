//! Network namespaces and veth links, for real (as root): two namespaces
//! joined by a veth pair can talk TCP; removal leaves nothing behind.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;

use ferry_oci::network::{self, Cidr, Endpoint, Netns, VethPair};

struct Dir(tempfile::TempDir);

fn scratch() -> Dir {
    assert!(nix::unistd::geteuid().is_root(), "network tests need root");
    Dir(tempfile::tempdir().unwrap())
}

fn path(d: &Dir, name: &str) -> PathBuf {
    d.0.path().join(name)
}

#[test]
fn two_namespaces_talk_tcp_over_a_veth_pair() {
    let d = scratch();
    let a = Netns::create(&path(&d, "a")).unwrap();
    let b = Netns::create(&path(&d, "b")).unwrap();
    assert_ne!(a.inode().unwrap(), b.inode().unwrap());
    network::connect(&VethPair {
        outer: Endpoint {
            netns: Some(&a),
            name: "vA".into(),
            address: Some("10.77.0.1/24".parse().unwrap()),
        },
        inner: Endpoint {
            netns: Some(&b),
            name: "eth0".into(),
            address: Some("10.77.0.2/24".parse().unwrap()),
        },
        inner_gateway: Some("10.77.0.1".parse().unwrap()),
    })
    .unwrap();
    let addrs = network::addresses(Some(&b)).unwrap();
    assert!(
        addrs.contains(&("eth0".to_string(), "10.77.0.2/24".parse::<Cidr>().unwrap())),
        "{addrs:?}"
    );
    // Nothing leaked into the caller's namespace.
    let here = network::addresses(None).unwrap();
    assert!(!here
        .iter()
        .any(|(_, c)| c.to_string().starts_with("10.77.0.")));

    let listener = b
        .run(|| TcpListener::bind("10.77.0.2:7777").unwrap())
        .unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).unwrap();
        s.write_all(b"pong").unwrap();
        (buf, peer.ip().to_string())
    });
    let reply = a
        .run(|| {
            let mut c = TcpStream::connect("10.77.0.2:7777").unwrap();
            c.write_all(b"ping").unwrap();
            let mut buf = [0u8; 4];
            c.read_exact(&mut buf).unwrap();
            buf
        })
        .unwrap();
    let (got, peer) = server.join().unwrap();
    assert_eq!((&got, &reply), (b"ping", b"pong"));
    assert_eq!(peer, "10.77.0.1");

    network::delete_link(Some(&a), "vA").unwrap();
    assert!(network::addresses(Some(&b))
        .unwrap()
        .iter()
        .all(|(n, _)| n == "lo"));
    let (pa, pb) = (a.path().to_path_buf(), b.path().to_path_buf());
    a.remove().unwrap();
    b.remove().unwrap();
    assert!(!pa.exists() && !pb.exists());
}

#[test]
fn creating_an_existing_namespace_is_refused() {
    let d = scratch();
    let p = path(&d, "x");
    let ns = Netns::create(&p).unwrap();
    let err = Netns::create(&p).unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    ns.remove().unwrap();
}

#[test]
fn routes_and_sysctls_apply_inside_the_namespace() {
    let d = scratch();
    let a = Netns::create(&path(&d, "a")).unwrap();
    let b = Netns::create(&path(&d, "b")).unwrap();
    network::connect(&VethPair {
        outer: Endpoint {
            netns: Some(&a),
            name: "vB".into(),
            address: Some("10.78.0.1/32".parse().unwrap()),
        },
        inner: Endpoint {
            netns: Some(&b),
            name: "eth0".into(),
            address: Some("10.78.5.5/32".parse().unwrap()),
        },
        inner_gateway: None,
    })
    .unwrap();
    // Host-route style (as for a container keeping its /32 across hosts).
    network::add_route(Some(&a), "10.78.5.5/32".parse().unwrap(), "vB").unwrap();
    network::add_route(Some(&b), "10.78.0.1/32".parse().unwrap(), "eth0").unwrap();
    network::set_sysctl(Some(&a), "net.ipv4.ip_forward", "1").unwrap();
    let fwd = a
        .run(|| std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap())
        .unwrap();
    assert_eq!(fwd.trim(), "1");
    let host = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let listener = b
        .run(|| TcpListener::bind("10.78.5.5:7000").unwrap())
        .unwrap();
    let t = std::thread::spawn(move || listener.accept().map(|_| ()).unwrap());
    a.run(|| TcpStream::connect("10.78.5.5:7000").unwrap())
        .unwrap();
    t.join().unwrap();
    a.remove().unwrap();
    b.remove().unwrap();
    // The sysctl was the namespace's, not the host's.
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        host
    );
}
