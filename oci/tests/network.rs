//! Network namespaces and veth links, for real (as root): two namespaces
//! joined by a veth pair can talk TCP; removal leaves nothing behind.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;

use ferry_oci::network::{self, Cidr, ContainerNet, DefaultRoute, Endpoint, Netns, VethPair};

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
        inner_route: DefaultRoute::Gateway("10.77.0.1".parse().unwrap()),
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
        inner_route: DefaultRoute::None,
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

/// The hosts of hack/hosts, under a name of this test's own.
struct Hosts {
    name: String,
}

impl Hosts {
    fn up(name: &str, subnet: &str) -> Hosts {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../hack/hosts");
        let st = std::process::Command::new("bash")
            .args([script, "up"])
            .env("FERRY_HOSTS", name)
            .env("FERRY_HOSTS_SUBNET", subnet)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        // Built before the check, so a half-made topology is torn down.
        let hosts = Hosts { name: name.into() };
        assert!(st.success(), "hack/hosts up failed");
        hosts
    }

    fn ns(&self, h: &str) -> Netns {
        Netns::at(&PathBuf::from(format!("/run/netns/{}-{h}", self.name))).unwrap()
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../hack/hosts");
        let _ = std::process::Command::new("bash")
            .args([script, "down"])
            .env("FERRY_HOSTS", &self.name)
            .status();
    }
}

fn serve_once(ns: &Netns, addr: &'static str, reply: &'static [u8]) -> std::thread::JoinHandle<()> {
    let l = ns.run(move || TcpListener::bind(addr).unwrap()).unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.write_all(reply).unwrap();
    })
}

fn fetch(ns: &Netns, addr: &'static str) -> Vec<u8> {
    ns.run(move || {
        let mut c =
            TcpStream::connect_timeout(&addr.parse().unwrap(), std::time::Duration::from_secs(5))
                .unwrap();
        let mut buf = Vec::new();
        c.read_to_end(&mut buf).unwrap();
        buf
    })
    .unwrap()
}

/// A container address moves from host A to host B: the client reaches it
/// on A, then on B once B took the route and announced the address.
#[test]
fn a_container_address_moves_between_hosts() {
    let d = scratch();
    let hosts = Hosts::up(&format!("nt{}", std::process::id() % 100000), "10.67.0");
    let (a, b, client) = (hosts.ns("a"), hosts.ns("b"), hosts.ns("client"));
    let addr: Cidr = "10.67.0.50/32".parse().unwrap();

    let c1 = path(&d, "c-on-a");
    let net_a = a
        .run(move || ContainerNet::attach(&c1, "fyc1", addr).unwrap())
        .unwrap();
    let on_a = Netns::at(&net_a.netns).unwrap();
    let server = serve_once(&on_a, "10.67.0.50:8080", b"from A");
    assert_eq!(fetch(&client, "10.67.0.50:8080"), b"from A");
    server.join().unwrap();

    // Move: tear down on A, recreate on B with the same address, announce.
    let n = net_a.clone();
    a.run(move || n.detach().unwrap()).unwrap();
    assert!(!net_a.netns.exists());
    let c2 = path(&d, "c-on-b");
    let net_b = b
        .run(move || ContainerNet::attach(&c2, "fyc1", addr).unwrap())
        .unwrap();
    b.run(|| network::announce(None, "eth0", "10.67.0.50".parse().unwrap(), 2).unwrap())
        .unwrap();
    let on_b = Netns::at(&net_b.netns).unwrap();
    let server = serve_once(&on_b, "10.67.0.50:8080", b"from B");
    assert_eq!(fetch(&client, "10.67.0.50:8080"), b"from B");
    server.join().unwrap();
    b.run(move || net_b.detach().unwrap()).unwrap();
}
