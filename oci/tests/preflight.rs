//! Pre-flight against the real host and CRIU: this host accepts its own
//! CPU and a container that fits; a corrupt CPU description is refused.

use criu_rpc::Criu;
use ferry_oci::migrate::preflight::{self, HostFacts, Needs, Problem};

#[test]
fn this_host_accepts_what_fits_and_its_own_cpu() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "pre-flight tests need root (CRIU)"
    );
    let criu = Criu::new();
    let d = tempfile::tempdir().unwrap();
    let facts = HostFacts::gather(&criu, d.path()).unwrap();
    assert!(facts.disk_free > 0 && facts.mem_available > 0);
    assert_eq!(facts.arch, std::env::consts::ARCH);
    let needs = Needs {
        container_id: "c1".into(),
        memory: 1 << 20,
        disk: 1 << 20,
        lower_layers: vec![],
        arch: std::env::consts::ARCH.into(),
        kernel: facts.kernel.clone(),
        postcopy: true,
        precopy_uffd: false,
        terminal: false,
        address: None,
        docker: None,
    };
    assert_eq!(preflight::judge(&facts, &needs, false, |_| None), []);
    let too_big = Needs {
        memory: facts.mem_available * 2,
        ..needs
    };
    let problems = preflight::judge(&facts, &too_big, false, |_| None);
    assert!(
        matches!(problems[..], [Problem::NotEnoughMemory { .. }]),
        "{problems:?}"
    );

    let src = tempfile::tempdir().unwrap();
    let img = preflight::cpuinfo(&criu, src.path()).unwrap();
    let dst = tempfile::tempdir().unwrap();
    assert_eq!(
        preflight::check_cpuinfo(&criu, &img, dst.path()).unwrap(),
        None
    );

    let bad = tempfile::tempdir().unwrap();
    let verdict = preflight::check_cpuinfo(&criu, b"garbage", bad.path()).unwrap();
    assert!(
        matches!(verdict, Some(Problem::CpuIncompatible { .. })),
        "{verdict:?}"
    );
}
