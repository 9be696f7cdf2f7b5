//! The decoder against CRIU's own source: the image schema it is generated
//! from (`proto/criu/`) is byte for byte the `images/*.proto` of the CRIU
//! source tarball this machine builds CRIU from, every magic of
//! [`KINDS`] is the one of CRIU's `criu/include/magic.h` under the name
//! crit gives it, and every kind decodes with the message crit's handler
//! table (`lib/pycriu/images/images.py`) uses for it.
//!
//! The tarball is looked for where hack/setup finds it
//! (hack/lib/criu-source.sh): `$FERRY_CRIU_TARBALL`, then
//! `../shared/criu/criu_*.orig.tar.xz` beside the repository, then
//! `/var/cache/ferry/criu-src/` (where hack/setup downloads Debian's source
//! package). Without one, the tests fail: run hack/setup.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use protobuf::MessageFull;

use super::kinds::{Layout, IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC, KINDS};
use super::pb;

/// Where the vendored schema lives, relative to this crate.
const VENDORED: &str = "proto/criu";
/// hack/setup's download directory for CRIU's source package.
const SRC_CACHE: &str = "/var/cache/ferry/criu-src";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("criu-rpc is inside the repository")
        .to_path_buf()
}

/// `criu_*.orig.tar.xz` in `dir`, the highest version first.
fn tarballs_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("criu_") && n.ends_with(".orig.tar.xz"))
        })
        .collect();
    // Version order, as `sort -V` in hack/lib/criu-source.sh.
    let key = |p: &PathBuf| -> Vec<u64> {
        let n = p.file_name().unwrap().to_string_lossy();
        n.trim_start_matches("criu_")
            .trim_end_matches(".orig.tar.xz")
            .split(['.', '-', '~', '+'])
            .map(|x| x.parse().unwrap_or(0))
            .collect()
    };
    v.sort_by_key(|p| std::cmp::Reverse(key(p)));
    v
}

fn tarball() -> PathBuf {
    if let Some(t) = std::env::var_os("FERRY_CRIU_TARBALL") {
        let t = PathBuf::from(t);
        assert!(
            t.is_file(),
            "FERRY_CRIU_TARBALL={}: no such file",
            t.display()
        );
        return t;
    }
    let shared = repo().join("../shared/criu");
    let shared = shared.canonicalize().unwrap_or(shared);
    let found = tarballs_in(&shared)
        .into_iter()
        .chain(tarballs_in(Path::new(SRC_CACHE)))
        .next();
    found.unwrap_or_else(|| {
        panic!(
            "CRIU's source tarball is missing (looked in $FERRY_CRIU_TARBALL, {} and {SRC_CACHE}): \
             run hack/setup, which fetches it, or set FERRY_CRIU_TARBALL=/path/to/criu_X.Y.Z.orig.tar.xz",
            shared.display()
        )
    })
}

/// The parts of CRIU's source these tests read, unpacked.
struct CriuSource {
    tarball: PathBuf,
    _dir: tempfile::TempDir,
    top: PathBuf,
}

impl CriuSource {
    fn unpack() -> CriuSource {
        let tarball = tarball();
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("tar")
            .arg("-xJf")
            .arg(&tarball)
            .arg("-C")
            .arg(dir.path())
            .args([
                "--wildcards",
                "--no-wildcards-match-slash",
                "*/images/*",
                "*/criu/include/magic.h",
                "*/lib/pycriu/images/images.py",
                "*/Makefile.versions",
            ])
            .output()
            .unwrap_or_else(|e| panic!("running tar (hack/setup installs it): {e}"));
        assert!(
            out.status.success(),
            "tar -xJf {}: {}",
            tarball.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let top = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.join("images").is_dir())
            .unwrap_or_else(|| panic!("{}: no images/ in it", tarball.display()));
        CriuSource {
            tarball,
            _dir: dir,
            top,
        }
    }

    fn read(&self, rel: &str) -> String {
        let p = self.top.join(rel);
        std::fs::read_to_string(&p).unwrap_or_else(|e| {
            panic!(
                "{} in {}: {e}",
                p.strip_prefix(&self.top).unwrap().display(),
                self.tarball.display()
            )
        })
    }

    /// CRIU's version, as its Makefile.versions spells it.
    fn version(&self) -> String {
        let mk = self.read("Makefile.versions");
        let part = |name: &str| -> String {
            mk.lines()
                .find_map(|l| {
                    let rest = l.strip_prefix(&format!("CRIU_VERSION_{name}"))?;
                    let v = rest.trim_start().strip_prefix(":=")?;
                    Some(v.trim().to_string())
                })
                .unwrap_or_default()
        };
        [
            part("MAJOR"),
            part("MINOR"),
            part("SUBLEVEL"),
            part("EXTRA"),
        ]
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(".")
    }

    /// magic.h's `#define NAME_MAGIC 0x...` with a number of their own
    /// (not aliases of another magic, not RAW_IMAGE_MAGIC), by the name
    /// crit gives them (the define without `_MAGIC`, as
    /// scripts/magic-gen.py makes crit's table).
    fn magics(&self) -> BTreeMap<String, u32> {
        self.read("criu/include/magic.h")
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                (w.next()? == "#define").then_some(())?;
                let name = w.next()?.strip_suffix("_MAGIC")?;
                let hex = w.next()?.strip_prefix("0x")?;
                let v = u32::from_str_radix(hex, 16).ok()?;
                (v != 0).then(|| (name.to_string(), v))
            })
            .collect()
    }

    /// crit's handler of each kind: `handlers = { 'NAME': HANDLER, ... }`.
    fn crit_handlers(&self) -> BTreeMap<String, CritHandler> {
        let py = self.read("lib/pycriu/images/images.py");
        let start = py
            .find("handlers = {")
            .expect("images.py has crit's handlers table");
        let body = &py[start..];
        let body = &body[..body.find("\n}").expect("the handlers table ends")];
        let mut out = BTreeMap::new();
        // Entries: 'NAME': handler(args), possibly over two lines.
        let mut rest = body;
        while let Some(q) = rest.find("\n    '") {
            rest = &rest[q + 6..];
            let name_end = rest.find('\'').unwrap();
            let name = rest[..name_end].to_string();
            let after = rest[name_end + 1..].trim_start_matches(':').trim_start();
            let entry = &after[..after.find("\n    '").unwrap_or(after.len())];
            let h = match entry.strip_prefix("entry_handler(pb.") {
                Some(args) => {
                    let end = args
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap();
                    CritHandler::Entries {
                        message: args[..end].to_string(),
                        extra: args[end..].trim_start().starts_with(','),
                    }
                }
                None => CritHandler::Special(entry[..entry.find('(').unwrap()].to_string()),
            };
            out.insert(name, h);
        }
        out
    }

    /// The text of crit's class `name` (a special handler).
    fn crit_class(&self, name: &str) -> String {
        let py = self.read("lib/pycriu/images/images.py");
        let start = py
            .find(&format!("\nclass {name}"))
            .unwrap_or_else(|| panic!("images.py has no class {name}"));
        let body = &py[start + 1..];
        let end = body[1..].find("\nclass ").map_or(body.len(), |e| e + 1);
        body[..end].to_string()
    }
}

#[derive(Debug, PartialEq)]
enum CritHandler {
    /// `entry_handler(pb.MESSAGE[, EXTRA_HANDLER])`.
    Entries { message: String, extra: bool },
    /// A handler class of its own (`pagemap_handler()`, ...).
    Special(String),
}

#[test]
fn the_vendored_schema_is_the_criu_source_s() {
    let src = CriuSource::unpack();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(VENDORED);
    let fix = format!(
        "run hack/sync-criu-protos {} (then fix what no longer builds or agrees)",
        src.tarball.display()
    );
    let mut protos = 0;
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "README.md" {
            continue;
        }
        let ours = std::fs::read(e.path()).unwrap();
        let theirs = std::fs::read(src.top.join("images").join(&name)).unwrap_or_else(|err| {
            panic!(
                "{VENDORED}/{name} is not in {}'s images/ ({err}): {fix}",
                src.tarball.display()
            )
        });
        assert!(
            ours == theirs,
            "{VENDORED}/{name} differs from images/{name} of {}: {fix}",
            src.tarball.display()
        );
        protos += usize::from(name.ends_with(".proto"));
    }
    assert!(protos > 0, "no .proto files in {}: {fix}", dir.display());
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    let version = src.version();
    assert!(
        readme.contains(&format!("\nVersion: {version}\n")),
        "{VENDORED}/README.md does not name CRIU {version}, the version of {}: {fix}",
        src.tarball.display()
    );
}

#[test]
fn every_magic_is_the_one_of_criu_s_magic_h() {
    let src = CriuSource::unpack();
    let magics = src.magics();
    assert_eq!(magics.get("IMG_COMMON"), Some(&IMG_COMMON_MAGIC));
    assert_eq!(magics.get("IMG_SERVICE"), Some(&IMG_SERVICE_MAGIC));
    for k in KINDS {
        assert_eq!(
            magics.get(k.name),
            Some(&k.magic),
            "{}: magic.h of {} has {:x?}",
            k.name,
            src.tarball.display(),
            magics.get(k.name)
        );
    }
    // And the decoder knows every image CRIU writes: an image of a kind
    // it lacks would be refused as an unknown magic.
    let not_images = [
        "IMG_COMMON",
        "IMG_SERVICE",
        // The kerndat cache (/run/criu.kdat), not an image.
        "KDAT",
    ];
    for (name, magic) in &magics {
        if not_images.contains(&name.as_str()) {
            continue;
        }
        assert!(
            KINDS.iter().any(|k| k.magic == *magic),
            "magic.h of {} has {name}_MAGIC ({magic:#x}), which the decoder does not know: add it to image/kinds.rs",
            src.tarball.display()
        );
    }
}

/// Kinds crit's table has no handler for, with the message CRIU reads
/// them with.
const BEYOND_CRIT: &[(&str, &str)] = &[
    // Signal queues of CRIU < 2.x images (now in core): criu/cr-restore.c
    // open_signal_image() reads them as PB_SIGINFO, siginfo_entry (as
    // protobuf-desc.h's generated PB_X <-> x_entry table).
    ("SIGNAL", "siginfo_entry"),
    // criu/filesystems.c: pb_write_one(img, &bme, PB_BINFMT_MISC).
    ("BINFMT_MISC", "binfmt_misc_entry"),
    // criu/pidfd.c: pidfd_cinfo's .pb_type = PB_PIDFD.
    ("PIDFD", "pidfd_entry"),
];

#[test]
fn every_kind_decodes_with_the_message_crit_uses() {
    let src = CriuSource::unpack();
    let crit = src.crit_handlers();
    let name_of = |d: protobuf::reflect::MessageDescriptor| d.name().to_string();
    for k in KINDS {
        let beyond = BEYOND_CRIT.iter().find(|(n, _)| *n == k.name);
        let Some(h) = crit.get(k.name) else {
            let (_, message) = beyond.unwrap_or_else(|| {
                panic!(
                    "crit of {} has no handler for {} and BEYOND_CRIT does not say which message CRIU uses",
                    src.tarball.display(),
                    k.name
                )
            });
            match k.layout {
                Layout::Entries { message: m, .. } => {
                    assert_eq!(name_of(m()), *message, "{}", k.name)
                }
                _ => panic!(
                    "{}: BEYOND_CRIT names a message for a kind without entries",
                    k.name
                ),
            }
            continue;
        };
        assert!(
            beyond.is_none(),
            "crit of {} now has a handler for {} ({h:?}): take it out of BEYOND_CRIT",
            src.tarball.display(),
            k.name
        );
        match (k.layout, h) {
            (
                Layout::Entries { message, extra },
                CritHandler::Entries {
                    message: theirs,
                    extra: x,
                },
            ) => {
                assert_eq!(&name_of(message()), theirs, "{}: the entry message", k.name);
                assert_eq!(
                    extra.is_some(),
                    *x,
                    "{}: whether data follows each entry (crit's extra handler)",
                    k.name
                );
            }
            (Layout::Pagemap, CritHandler::Special(s)) if s == "pagemap_handler" => {
                let class = src.crit_class(s);
                for m in [
                    pb::Pagemap_head::descriptor(),
                    pb::Pagemap_entry::descriptor(),
                ] {
                    let m = name_of(m);
                    assert!(
                        class.contains(&format!("pb.{m}()")),
                        "crit's {s} does not read {m}"
                    );
                }
            }
            (Layout::GhostFile, CritHandler::Special(s)) if s == "ghost_file_handler" => {
                let class = src.crit_class(s);
                for m in [
                    pb::Ghost_file_entry::descriptor(),
                    pb::Ghost_chunk_entry::descriptor(),
                ] {
                    let m = name_of(m);
                    assert!(
                        class.contains(&format!("pb.{m}()")),
                        "crit's {s} does not read {m}"
                    );
                }
            }
            // Kinds Ferry names but does not decode: their magic is all
            // there is to agree on.
            (Layout::Opaque, _) => {}
            (_, h) => panic!("{}: crit decodes it with {h:?}, Ferry otherwise", k.name),
        }
    }
}
