//! A checkpoint as one file: `ferry checkpoint --export FILE` and
//! `ferry restore --import FILE`. The archive is a tar stream (zstd
//! compressed when asked, recognised by its magic on reading) of:
//!
//! - `ferry-export.json`: what it is (format, container id, creation time);
//! - `images/`: CRIU's image directory, descriptors.json and the dump log
//!   included;
//! - `bundle/config.json`: the container's config, its root at `rootfs`;
//! - `bundle/rootfs/`: the container's root filesystem as the dump left it.
//!
//! `ferry inspect` also reads the checkpoint archives Kubernetes' CRI
//! writes (containerd 2.x's and CRI-O's `CheckpointContainer`, the layout
//! checkpointctl reads): CRIU's images under `checkpoint/`, beside
//! `config.dump`, `spec.dump`, `status.dump` and `rootfs-diff.tar`.
//!
//! Modes, ownership, symlinks, hard links and device nodes are kept (the
//! same tar handling as [`crate::migrate::tarball`]); extraction refuses
//! paths that escape the destination.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{io, Error, Result};

pub const MANIFEST: &str = "ferry-export.json";
pub const IMAGES: &str = "images";
pub const BUNDLE: &str = "bundle";
const FORMAT: u32 = 1;
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// How the archive is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Zstd,
}

impl Compression {
    /// zstd for a `.zst` file name, none otherwise.
    pub fn for_path(p: &Path) -> Compression {
        match p.extension().and_then(|e| e.to_str()) {
            Some("zst") | Some("zstd") => Compression::Zstd,
            _ => Compression::None,
        }
    }
}

/// What goes into an export.
#[derive(Debug, Clone, Copy)]
pub struct ExportSource<'a> {
    pub id: &'a str,
    pub images: &'a Path,
    /// The container's config.json.
    pub config: &'a Path,
    pub rootfs: &'a Path,
}

/// Where an import put things.
#[derive(Debug, Clone)]
pub struct Imported {
    pub bundle: PathBuf,
    pub images: PathBuf,
    pub manifest: serde_json::Value,
}

fn archive_io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        op: "writing the archive",
        path: path.to_path_buf(),
        source,
    }
}

fn append_bytes<W: Write>(b: &mut tar::Builder<W>, name: &str, data: &[u8]) -> std::io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o600);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    );
    h.set_cksum();
    b.append_data(&mut h, name, data)
}

/// What an archive holds: a bundle (`ferry checkpoint --export`) or a
/// dockerd's container (`--docker`).
#[derive(Debug, Clone, Copy)]
pub enum Contents<'a> {
    Bundle(&'a ExportSource<'a>),
    Docker(&'a DockerExport<'a>),
}

/// A dockerd's container, checkpointed: its description (to recreate it
/// on a dockerd), CRIU's images and its overlay2 writable layer, which
/// moves as a diff (`layer.tar`, [`crate::overlay::pack_diff`]): the image
/// layers are on the restoring dockerd already.
#[derive(Debug, Clone, Copy)]
pub struct DockerExport<'a> {
    pub needs: &'a crate::migrate::docker::DockerNeeds,
    pub images: &'a Path,
    pub upper: &'a Path,
}

/// The writable layer's diff in a docker archive.
pub const LAYER: &str = "layer.tar";

fn write_tar<W: Write>(w: W, contents: &Contents<'_>, file: &Path) -> Result<W> {
    match contents {
        Contents::Bundle(src) => write_bundle_tar(w, src, file),
        Contents::Docker(d) => write_docker_tar(w, d, file),
    }
}

fn write_docker_tar<W: Write>(w: W, d: &DockerExport<'_>, file: &Path) -> Result<W> {
    let err = archive_io(file);
    let manifest = serde_json::json!({
        "format": FORMAT,
        "kind": "docker",
        "id": d.needs.container.id,
        "name": d.needs.container.name,
        "created": crate::runtime::container::now_rfc3339(),
        "images": IMAGES,
        "layer": LAYER,
        "docker": d.needs,
    });
    // The diff is packed beside the archive first: a tar entry's size
    // comes before its bytes.
    let layer = tempfile_beside(file, "layer");
    let packed = (|| {
        let mut f = BufWriter::new(File::create(&layer).map_err(io("creating", &layer))?);
        crate::overlay::pack_diff(d.upper, &mut f)?;
        f.flush().map_err(io("writing", &layer))
    })();
    let result = packed.and_then(|_| {
        let mut b = tar::Builder::new(w);
        b.follow_symlinks(false);
        let json = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
        append_bytes(&mut b, MANIFEST, &json).map_err(&err)?;
        b.append_dir_all(IMAGES, d.images).map_err(&err)?;
        b.append_path_with_name(&layer, LAYER).map_err(&err)?;
        b.into_inner().map_err(&err)
    });
    let _ = fs::remove_file(&layer);
    result
}

fn tempfile_beside(file: &Path, tag: &str) -> PathBuf {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    file.with_file_name(format!(".{name}.{tag}.{}", std::process::id()))
}

fn write_bundle_tar<W: Write>(w: W, src: &ExportSource<'_>, file: &Path) -> Result<W> {
    let err = archive_io(file);
    // The config as the archive's bundle has it: the root is ./rootfs.
    // Untyped on purpose (not oci-spec's Spec, as every other read is):
    // the rewrite must carry fields oci-spec does not know (a newer
    // runtime-spec's, vendors') into the archive unchanged.
    let text = fs::read(src.config).map_err(io("reading", src.config))?;
    let mut config: serde_json::Value =
        serde_json::from_slice(&text).map_err(|source| Error::Json {
            path: src.config.to_path_buf(),
            source,
        })?;
    config["root"]["path"] = "rootfs".into();
    let manifest = serde_json::json!({
        "format": FORMAT,
        "id": src.id,
        "created": crate::runtime::container::now_rfc3339(),
        "images": IMAGES,
        "bundle": BUNDLE,
    });
    let mut b = tar::Builder::new(w);
    b.follow_symlinks(false);
    let json = |v: &serde_json::Value| serde_json::to_vec_pretty(v).unwrap_or_default();
    append_bytes(&mut b, MANIFEST, &json(&manifest)).map_err(&err)?;
    b.append_dir_all(IMAGES, src.images).map_err(&err)?;
    append_bytes(&mut b, &format!("{BUNDLE}/config.json"), &json(&config)).map_err(&err)?;
    b.append_dir_all(format!("{BUNDLE}/rootfs"), src.rootfs)
        .map_err(&err)?;
    b.into_inner().map_err(&err)
}

/// Writes the archive of `src` to `file` (replaced atomically: a failed
/// export leaves no half file); returns its size.
pub fn export(src: &ExportSource<'_>, file: &Path, compression: Compression) -> Result<u64> {
    export_contents(&Contents::Bundle(src), file, compression)
}

/// Writes `contents` to `file` (through a temporary file renamed into
/// place, so a failed export leaves no half archive); returns its size.
pub fn export_contents(
    contents: &Contents<'_>,
    file: &Path,
    compression: Compression,
) -> Result<u64> {
    let err = archive_io(file);
    let tmp = file.with_file_name(format!(
        ".{}.partial",
        file.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    // 0600 and exclusive: the archive holds the container's memory, and
    // an existing file (or a symlink planted there) is never written
    // through.
    // A partial file a crashed export left (or a symlink planted in its
    // place) goes first; remove_file never follows a symlink.
    let _ = fs::remove_file(&tmp);
    let out = {
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("creating", &tmp))?
    };
    let result = (|| -> Result<()> {
        let w = BufWriter::new(out);
        let mut w = match compression {
            Compression::None => write_tar(w, contents, file)?,
            Compression::Zstd => {
                let z = zstd::Encoder::new(w, 3).map_err(&err)?;
                write_tar(z, contents, file)?.finish().map_err(&err)?
            }
        };
        w.flush().map_err(&err)?;
        w.get_ref().sync_all().map_err(&err)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, file).map_err(io("renaming into place", file))?;
    Ok(fs::metadata(file).map_err(io("reading", file))?.len())
}

/// The archive's tar stream, decompressed if it is zstd.
fn reader(file: &Path) -> Result<Box<dyn Read>> {
    let mut f = BufReader::new(File::open(file).map_err(io("opening", file))?);
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic).map_err(io("reading", file))?;
    let head = std::io::Cursor::new(magic[..n].to_vec());
    let r = head.chain(f);
    if n == 4 && magic == ZSTD_MAGIC {
        Ok(Box::new(
            zstd::Decoder::new(r).map_err(io("decompressing", file))?,
        ))
    } else {
        Ok(Box::new(r))
    }
}

fn not_an_export(file: &Path, why: &'static str) -> Error {
    Error::NotAnExport {
        path: file.to_path_buf(),
        why,
    }
}

/// Extracts the entries of `file` under `prefix` (`images`, `bundle`, or
/// both when `None`) into `dest` (which must exist), without the prefix's
/// top directory when `strip`. Returns the manifest.
fn extract(file: &Path, dest: &Path, only: Option<&str>) -> Result<serde_json::Value> {
    let rd = |source| Error::Io {
        op: "extracting",
        path: file.to_path_buf(),
        source,
    };
    let mut a = tar::Archive::new(reader(file)?);
    a.set_preserve_permissions(true);
    a.set_preserve_ownerships(true);
    a.set_unpack_xattrs(true);
    a.set_overwrite(true);
    let mut manifest = None;
    for e in a.entries().map_err(rd)? {
        let mut e = e.map_err(rd)?;
        let path = e.path().map_err(rd)?.into_owned();
        if path == Path::new(MANIFEST) {
            let mut text = Vec::new();
            e.read_to_end(&mut text).map_err(rd)?;
            manifest = Some(
                serde_json::from_slice(&text)
                    .map_err(|_| not_an_export(file, "its ferry-export.json is not JSON"))?,
            );
            if only == Some(MANIFEST) {
                // It comes first: the rest need not be read.
                break;
            }
            continue;
        }
        let Some(top) = path.components().next() else {
            continue;
        };
        let top = top.as_os_str();
        if top != IMAGES && top != BUNDLE && top != LAYER {
            continue;
        }
        if only.is_some_and(|o| top != o) {
            continue;
        }
        // unpack_in refuses `..` and absolute paths.
        e.unpack_in(dest).map_err(rd)?;
    }
    let manifest: serde_json::Value = manifest.ok_or_else(|| {
        not_an_export(
            file,
            "it has no ferry-export.json (make one with `ferry checkpoint --export`), nor is it a CRI checkpoint archive (checkpoint/ and config.dump)",
        )
    })?;
    if manifest["format"].as_u64() != Some(FORMAT as u64) {
        return Err(not_an_export(
            file,
            "its format is not one this Ferry reads",
        ));
    }
    Ok(manifest)
}

/// Extracts a whole export into `dest` (created; it must be empty or
/// absent): the bundle at `dest/bundle`, the images at `dest/images`.
/// A docker archive's container, its images and writable layer's diff
/// extracted into `dest` (`dest/images`, `dest/layer.tar`).
pub fn import_docker(file: &Path, dest: &Path) -> Result<crate::migrate::docker::DockerNeeds> {
    let needs = docker_needs(file)?;
    extract(file, dest, None)?;
    if !dest.join(IMAGES).is_dir() || !dest.join(LAYER).is_file() {
        return Err(not_an_export(file, "it lacks images/ or layer.tar"));
    }
    Ok(needs)
}

/// What a docker archive says of its container (its manifest only).
pub fn docker_needs(file: &Path) -> Result<crate::migrate::docker::DockerNeeds> {
    let manifest = read_manifest(file)?;
    if manifest["kind"] != "docker" {
        return Err(not_an_export(
            file,
            "it holds a bundle, not a dockerd's container: restore it with `ferry restore --import` (without --docker)",
        ));
    }
    serde_json::from_value(manifest["docker"].clone())
        .map_err(|_| not_an_export(file, "its docker description does not parse"))
}

/// The archive's manifest, read without extracting anything else.
pub fn read_manifest(file: &Path) -> Result<serde_json::Value> {
    extract(file, Path::new("/nonexistent"), Some(MANIFEST))
}

pub fn import(file: &Path, dest: &Path) -> Result<Imported> {
    if read_manifest(file)?["kind"] == "docker" {
        return Err(not_an_export(
            file,
            "it holds a dockerd's container: restore it with `ferry restore --docker --import FILE`",
        ));
    }
    if fs::read_dir(dest).is_ok_and(|mut d| d.next().is_some()) {
        return Err(Error::ImportDestNotEmpty {
            path: dest.to_path_buf(),
        });
    }
    fs::create_dir_all(dest).map_err(io("creating", dest))?;
    let manifest = extract(file, dest, None)?;
    let (bundle, images) = (dest.join(BUNDLE), dest.join(IMAGES));
    if !bundle.join("config.json").is_file() || !images.is_dir() {
        return Err(not_an_export(
            file,
            "it lacks bundle/config.json or images/",
        ));
    }
    Ok(Imported {
        bundle,
        images,
        manifest,
    })
}

/// Extracts only the images of an export into `dest` (which must exist);
/// returns where they are (`dest/images`).
pub fn extract_images(file: &Path, dest: &Path) -> Result<PathBuf> {
    match extract(file, dest, Some(IMAGES)) {
        Ok(_) => Ok(dest.join(IMAGES)),
        // Not an export: maybe CRI's archive (nothing was unpacked, it has
        // neither images/ nor bundle/).
        Err(Error::NotAnExport { .. }) if is_cri_archive(file)? => extract_cri_images(file, dest),
        Err(e) => Err(e),
    }
}

/// The directory of CRIU's images in a CRI checkpoint archive.
pub const CRI_IMAGES: &str = "checkpoint";
/// The container's description in a CRI checkpoint archive (checkpointctl's
/// `config.dump`: id, name, base image, runtime, checkpoint time).
pub const CRI_CONFIG: &str = "config.dump";

/// Whether `file` is a CRI checkpoint archive: `config.dump` and
/// `checkpoint/` at its top.
pub fn is_cri_archive(file: &Path) -> Result<bool> {
    let rd = |source| Error::Io {
        op: "reading",
        path: file.to_path_buf(),
        source,
    };
    let mut a = tar::Archive::new(reader(file)?);
    let (mut config, mut images) = (false, false);
    for e in a.entries().map_err(rd)? {
        let e = e.map_err(rd)?;
        let path = e.path().map_err(rd)?;
        let path = path.strip_prefix(".").unwrap_or(&path);
        config |= path == Path::new(CRI_CONFIG);
        images |= path.starts_with(CRI_IMAGES) && path != Path::new(CRI_IMAGES);
        if config && images {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Extracts the CRIU images of a CRI checkpoint archive into
/// `dest/checkpoint`, and returns that directory.
fn extract_cri_images(file: &Path, dest: &Path) -> Result<PathBuf> {
    let rd = |source| Error::Io {
        op: "extracting",
        path: file.to_path_buf(),
        source,
    };
    let mut a = tar::Archive::new(reader(file)?);
    for e in a.entries().map_err(rd)? {
        let mut e = e.map_err(rd)?;
        let path = e.path().map_err(rd)?.into_owned();
        let path = path.strip_prefix(".").unwrap_or(&path);
        if path.starts_with(CRI_IMAGES) {
            // unpack_in refuses `..` and absolute paths.
            e.unpack_in(dest).map_err(rd)?;
        }
    }
    Ok(dest.join(CRI_IMAGES))
}

/// Whether `p` looks like an export archive rather than a directory.
pub fn is_archive(p: &Path) -> bool {
    p.is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(d: &Path) -> (PathBuf, PathBuf, PathBuf) {
        let (images, bundle) = (d.join("img"), d.join("b"));
        fs::create_dir_all(&images).unwrap();
        fs::create_dir_all(bundle.join("somewhere/rootfs/out")).unwrap();
        fs::write(images.join("inventory.img"), b"inv").unwrap();
        fs::write(bundle.join("somewhere/rootfs/out/count"), b"1\n2\n").unwrap();
        std::os::unix::fs::symlink("count", bundle.join("somewhere/rootfs/out/link")).unwrap();
        let config = bundle.join("config.json");
        fs::write(
            &config,
            br#"{"root":{"path":"/abs/somewhere/rootfs"},"x":1}"#,
        )
        .unwrap();
        (images, config, bundle.join("somewhere/rootfs"))
    }

    #[test]
    fn an_export_never_writes_through_a_planted_symlink() {
        let d = tempfile::tempdir().unwrap();
        let (images, config, rootfs) = source(d.path());
        let victim = d.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        let file = d.path().join("c.tar");
        std::os::unix::fs::symlink(&victim, d.path().join(".c.tar.partial")).unwrap();
        let src = ExportSource {
            id: "c1",
            images: &images,
            config: &config,
            rootfs: &rootfs,
        };
        export(&src, &file, Compression::None).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        assert!(fs::symlink_metadata(&file).unwrap().is_file());
    }

    #[test]
    fn export_then_import_round_trips_plain_and_zstd() {
        for name in ["c.tar", "c.tar.zst"] {
            let d = tempfile::tempdir().unwrap();
            let (images, config, rootfs) = source(d.path());
            let file = d.path().join(name);
            let src = ExportSource {
                id: "c1",
                images: &images,
                config: &config,
                rootfs: &rootfs,
            };
            export(&src, &file, Compression::for_path(&file)).unwrap();
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = fs::metadata(&file).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{name}: the archive holds memory");
            }
            let mut head = [0u8; 4];
            File::open(&file).unwrap().read_exact(&mut head).unwrap();
            assert_eq!(head == ZSTD_MAGIC, name.ends_with(".zst"));

            let dest = d.path().join("imported");
            let imp = import(&file, &dest).unwrap();
            assert_eq!(imp.manifest["id"], "c1");
            assert_eq!(fs::read(imp.images.join("inventory.img")).unwrap(), b"inv");
            let rootfs = imp.bundle.join("rootfs");
            assert_eq!(fs::read(rootfs.join("out/count")).unwrap(), b"1\n2\n");
            assert_eq!(
                fs::read_link(rootfs.join("out/link")).unwrap(),
                Path::new("count")
            );
            let cfg: serde_json::Value =
                serde_json::from_slice(&fs::read(imp.bundle.join("config.json")).unwrap()).unwrap();
            assert_eq!(cfg["root"]["path"], "rootfs");
            assert_eq!(cfg["x"], 1);

            // Into a non-empty directory: refused.
            let err = import(&file, &dest).unwrap_err().to_string();
            assert!(err.contains("not empty"), "{err}");
            // Only the images.
            let only = d.path().join("only");
            fs::create_dir(&only).unwrap();
            let p = extract_images(&file, &only).unwrap();
            assert!(p.join("inventory.img").is_file());
            assert!(!only.join(BUNDLE).exists());
        }
    }

    #[test]
    fn other_files_are_not_exports() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("x.tar");
        fs::write(&f, b"this is not a tar file at all").unwrap();
        assert!(import(&f, &d.path().join("dest")).is_err());
        // A tar without the manifest.
        let mut b = tar::Builder::new(Vec::new());
        append_bytes(&mut b, "images/inventory.img", b"x").unwrap();
        fs::write(&f, b.into_inner().unwrap()).unwrap();
        let err = import(&f, &d.path().join("dest2")).unwrap_err().to_string();
        assert!(err.contains("ferry-export.json"), "{err}");
    }

    /// Kubernetes' CRI archive (containerd's CheckpointContainer): its
    /// images are read from `checkpoint/`; an archive with neither layout
    /// is refused naming both.
    #[test]
    fn a_cri_checkpoint_archive_gives_its_images() {
        let d = tempfile::tempdir().unwrap();
        let tar_of = |name: &str, files: &[(&str, &[u8])]| {
            let mut b = tar::Builder::new(Vec::new());
            for (path, data) in files {
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(0o600);
                h.set_cksum();
                b.append_data(&mut h, path, *data).unwrap();
            }
            let f = d.path().join(name);
            fs::write(&f, b.into_inner().unwrap()).unwrap();
            f
        };
        let cri = tar_of(
            "cri.tar",
            &[
                ("checkpoint/inventory.img", b"inv"),
                ("config.dump", b"{}"),
                ("spec.dump", b"{}"),
                ("rootfs-diff.tar", b""),
            ],
        );
        assert!(is_cri_archive(&cri).unwrap());
        let dest = d.path().join("out");
        fs::create_dir(&dest).unwrap();
        let images = extract_images(&cri, &dest).unwrap();
        assert_eq!(images, dest.join(CRI_IMAGES));
        assert_eq!(fs::read(images.join("inventory.img")).unwrap(), b"inv");
        assert!(
            !dest.join("config.dump").exists(),
            "more than the images came out"
        );

        let neither = tar_of("neither.tar", &[("checkpoint/inventory.img", b"inv")]);
        assert!(!is_cri_archive(&neither).unwrap());
        let err = extract_images(&neither, &dest).unwrap_err().to_string();
        assert!(
            err.contains("ferry-export.json") && err.contains("CRI"),
            "{err}"
        );
    }
}
