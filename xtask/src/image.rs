//! `cargo xtask image`: ferrolb's images as OCI archives, built from release binaries with umoci — no Docker
//! engine, no registry. The archives go to `target/images/` (under the cache's target dir), each with its full
//! reference in `index.json`, ready for `ctr images import` on a node or `skopeo copy` to a registry.
//!
//! - `ghcr.io/ferrolb/ferrolb:<appVersion>`: controller, speaker and CLI, glibc and CA certificates, user
//!   65532 (what the Dockerfile's default target holds);
//! - `ghcr.io/ferrolb/ferrolb-keepalived:<appVersion>`: the speaker and Debian's keepalived (the Dockerfile's
//!   `keepalived` target);
//! - `ghcr.io/ferrolb/ferrolb-frr:<appVersion>`: BGP mode's FRR container: `ferrolb-frr` and Debian's FRR
//!   (zebra, bgpd, bfdd; the Dockerfile's `frr` target);
//! - `ferrolb.local/lab/pause:<appVersion>` and `ferrolb.local/lab/demo-web:<appVersion>`: what the lab's pods
//!   need besides ferrolb (a sandbox process, a web server naming its pod and node).
//!
//! A binary's shared libraries are found with `ldd` and copied at the paths the binary looks them up at.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{run, toolchain};

/// The user the images run as by default: distroless' `nonroot`, the chart's `runAsUser`.
const NONROOT: u32 = 65532;

/// One image to build.
pub struct ImageSpec {
    /// The archive's file name (`<name>.tar`).
    pub name: &'static str,
    /// The full reference put in `index.json`, e.g. `ghcr.io/ferrolb/ferrolb:0.1.0`.
    pub reference: String,
    /// `(file on this machine, path in the image)`; executables get their libraries too.
    pub files: Vec<(PathBuf, String)>,
    pub entrypoint: String,
    pub user: Option<u32>,
}

pub fn run(tag: Option<String>) -> Result<()> {
    run::step(
        "cargo build --release (controller, speaker, cli, lab programs)",
        run::cargo(&[
            "build",
            "--release",
            "--locked",
            "-p",
            "ferrolb-controller",
            "-p",
            "ferrolb-speaker",
            "-p",
            "ferrolb-cli",
            "-p",
            "lab-programs",
        ]),
    )?;
    let tag = match tag {
        Some(tag) => tag,
        None => toolchain::chart_app_version(&run::workspace_root())?,
    };
    let release = toolchain::cargo_target_dir().join("release");
    let out = toolchain::images_dir();
    fs::create_dir_all(&out)?;
    for spec in specs(&release, &tag)? {
        let archive = out.join(format!("{}.tar", spec.name));
        build(&spec, &archive)?;
        eprintln!("    {} -> {}", spec.reference, archive.display());
    }
    Ok(())
}

/// The images, built from the release binaries in `release`.
pub fn specs(release: &Path, tag: &str) -> Result<Vec<ImageSpec>> {
    let bin = |name: &str| (release.join(name), format!("/usr/local/bin/{name}"));
    let system = system_files(&[])?;
    let mut ferrolb_files = vec![bin("ferrolb-controller"), bin("ferrolb-speaker"), bin("ferrolb")];
    ferrolb_files.extend(system.iter().cloned());
    let keepalived = ["/usr/sbin/keepalived", "/sbin/keepalived"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .context("keepalived is not installed (cargo xtask deps installs it)")?;
    let mut keepalived_files = vec![bin("ferrolb-speaker"), (keepalived, "/usr/sbin/keepalived".into())];
    keepalived_files.extend(system);
    let mut frr_files = vec![bin("ferrolb-frr")];
    for daemon in crate::frr_daemons::DAEMONS {
        let path = PathBuf::from("/usr/lib/frr").join(daemon);
        anyhow::ensure!(path.is_file(), "{} is not installed (cargo xtask deps installs FRR)", path.display());
        frr_files.push((path, format!("/usr/lib/frr/{daemon}")));
    }
    // No vtysh: Debian's asks PAM, which the image does not have. The speaker's SpeakerStatus and
    // BGPAnnouncements say what FRR runs.
    // FRR lets only members of its vty group open the vty sockets, and the daemons run as root here.
    frr_files.extend(system_files(&["frrvty:x:85:root"])?);
    Ok(vec![
        ImageSpec {
            name: toolchain::FERROLB_IMAGE.archive,
            reference: toolchain::FERROLB_IMAGE.reference(tag),
            files: ferrolb_files,
            entrypoint: "/usr/local/bin/ferrolb-controller".into(),
            user: Some(NONROOT),
        },
        ImageSpec {
            name: toolchain::KEEPALIVED_IMAGE.archive,
            reference: toolchain::KEEPALIVED_IMAGE.reference(tag),
            files: keepalived_files,
            entrypoint: "/usr/local/bin/ferrolb-speaker".into(),
            user: None,
        },
        ImageSpec {
            name: toolchain::FRR_IMAGE.archive,
            reference: toolchain::FRR_IMAGE.reference(tag),
            files: frr_files,
            entrypoint: "/usr/local/bin/ferrolb-frr".into(),
            user: None,
        },
        ImageSpec {
            name: toolchain::PAUSE_IMAGE.archive,
            reference: toolchain::PAUSE_IMAGE.reference(tag),
            files: vec![(release.join("ferrolb-pause"), "/pause".into())],
            entrypoint: "/pause".into(),
            user: None,
        },
        ImageSpec {
            name: toolchain::DEMO_WEB_IMAGE.archive,
            reference: toolchain::DEMO_WEB_IMAGE.reference(tag),
            files: vec![(release.join("ferrolb-demo-web"), "/demo-web".into())],
            entrypoint: "/demo-web".into(),
            user: Some(NONROOT),
        },
    ])
}

/// What a distroless base brings that ferrolb may use: CA certificates and the users' names (`groups`: more
/// lines of `/etc/group`).
fn system_files(groups: &[&str]) -> Result<Vec<(PathBuf, String)>> {
    let mut files = Vec::new();
    let certificates = Path::new("/etc/ssl/certs/ca-certificates.crt");
    if certificates.is_file() {
        files.push((certificates.to_path_buf(), "/etc/ssl/certs/ca-certificates.crt".into()));
    }
    let dir = std::env::temp_dir().join(format!("ferrolb-image-etc-{}-{}", std::process::id(), groups.len()));
    fs::create_dir_all(&dir)?;
    let passwd = dir.join("passwd");
    fs::write(
        &passwd,
        format!(
            "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:{NONROOT}:{NONROOT}:nonroot:/home/nonroot:/sbin/nologin\n"
        ),
    )?;
    let group = dir.join("group");
    let mut lines = format!("root:x:0:\nnonroot:x:{NONROOT}:\n");
    for line in groups {
        lines.push_str(line);
        lines.push('\n');
    }
    fs::write(&group, lines)?;
    files.push((passwd, "/etc/passwd".into()));
    files.push((group, "/etc/group".into()));
    Ok(files)
}

/// Builds `spec` into the OCI archive `archive`.
pub fn build(spec: &ImageSpec, archive: &Path) -> Result<()> {
    let work = tempdir(&format!("ferrolb-image-{}", spec.name))?;
    let layout = work.join("layout");
    let bundle = work.join("bundle");
    let image = format!("{}:{}", layout.display(), "latest");
    umoci(&["init", "--layout", &layout.to_string_lossy()])?;
    umoci(&["new", "--image", &image])?;
    umoci(&["unpack", "--image", &image, &bundle.to_string_lossy()])?;
    let rootfs = bundle.join("rootfs");
    let mut copied = BTreeSet::new();
    for (source, destination) in &spec.files {
        copy_into(&rootfs, source, destination)?;
        copied.insert(destination.clone());
        for library in shared_libraries(source)? {
            let at = library.to_string_lossy().to_string();
            if copied.insert(at.clone()) {
                copy_into(&rootfs, &library, &at)?;
            }
        }
    }
    // var/tmp/frr: where FRR's daemons keep their crash logs; var/run/frr: their default state directory.
    for dir in ["tmp", "run", "var/tmp/frr", "var/run/frr"] {
        fs::create_dir_all(rootfs.join(dir))?;
    }
    umoci(&["repack", "--image", &image, &bundle.to_string_lossy()])?;
    let mut config = vec!["config".to_string(), "--image".into(), image.clone()];
    config.extend(["--config.entrypoint".into(), spec.entrypoint.clone()]);
    if let Some(user) = spec.user {
        config.extend(["--config.user".into(), format!("{user}:{user}")]);
    }
    let config: Vec<&str> = config.iter().map(String::as_str).collect();
    umoci(&config)?;
    name_in_index(&layout.join("index.json"), &spec.reference)?;
    let mut tar = Command::new("tar");
    tar.arg("-C").arg(&layout).arg("-cf").arg(archive).arg(".");
    run::step(&format!("tar {}", archive.display()), tar)?;
    let _ = fs::remove_dir_all(&work);
    Ok(())
}

/// Sets the image's full reference (`org.opencontainers.image.ref.name`) in the layout's index, where
/// `ctr images import` and `skopeo` read it: umoci writes only the tag.
fn name_in_index(index: &Path, reference: &str) -> Result<()> {
    let mut json: serde_json::Value = serde_json::from_str(&fs::read_to_string(index)?)?;
    let manifests = json["manifests"].as_array_mut().context("index.json has no manifests")?;
    if manifests.len() != 1 {
        bail!("index.json lists {} manifests, expected one", manifests.len());
    }
    manifests[0]["annotations"]["org.opencontainers.image.ref.name"] = serde_json::json!(reference);
    fs::write(index, serde_json::to_string_pretty(&json)?)?;
    Ok(())
}

/// The shared libraries `binary` loads (and its ELF interpreter), as `ldd` resolves them; none for a static
/// binary or a file that is not an executable.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let output = Command::new("ldd").arg(binary).output().context("could not run ldd")?;
    if !output.status.success() {
        return Ok(Vec::new());
    }
    Ok(parse_ldd(&String::from_utf8_lossy(&output.stdout)))
}

fn parse_ldd(output: &str) -> Vec<PathBuf> {
    output
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, resolved)) => resolved.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

fn copy_into(rootfs: &Path, source: &Path, destination: &str) -> Result<()> {
    let target = rootfs.join(destination.trim_start_matches('/'));
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent)?;
    }
    // Follows links: the image gets the file itself at the path the binary asks for.
    fs::copy(source, &target).with_context(|| format!("copying {} into the image", source.display()))?;
    Ok(())
}

fn umoci(args: &[&str]) -> Result<()> {
    let output = Command::new("umoci")
        .args(args)
        .output()
        .context("could not run umoci (cargo xtask deps installs it: apt-get install umoci)")?;
    if !output.status.success() {
        bail!("umoci {} failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
    }
    Ok(())
}

fn tempdir(prefix: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ldd_output_gives_the_paths_to_copy() {
        let output = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\
                      \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(output),
            ["/lib/x86_64-linux-gnu/libgcc_s.so.1", "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"]
                .map(PathBuf::from)
        );
    }

    /// A real image from a real binary: its files, libraries, entrypoint, user and reference, read back
    /// from the archive's OCI layout.
    #[test]
    fn an_image_holds_the_binary_its_libraries_and_its_reference() {
        let dir = tempdir("ferrolb-image-test").unwrap();
        let spec = ImageSpec {
            name: "true",
            reference: "ferrolb.local/test/true:1".into(),
            files: vec![(PathBuf::from("/bin/true"), "/bin/true".into())],
            entrypoint: "/bin/true".into(),
            user: Some(NONROOT),
        };
        let archive = dir.join("true.tar");
        build(&spec, &archive).unwrap();
        let layout = dir.join("layout");
        fs::create_dir_all(&layout).unwrap();
        assert!(Command::new("tar").arg("-C").arg(&layout).arg("-xf").arg(&archive).status().unwrap().success());
        let index: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(layout.join("index.json")).unwrap()).unwrap();
        assert_eq!(
            index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
            "ferrolb.local/test/true:1"
        );
        let blob = |digest: &serde_json::Value| {
            let digest = digest.as_str().unwrap().trim_start_matches("sha256:");
            layout.join("blobs/sha256").join(digest)
        };
        let read_json =
            |path: PathBuf| -> serde_json::Value { serde_json::from_slice(&fs::read(path).unwrap()).unwrap() };
        let manifest = read_json(blob(&index["manifests"][0]["digest"]));
        let config = read_json(blob(&manifest["config"]["digest"]));
        assert_eq!(config["config"]["Entrypoint"][0], "/bin/true");
        assert_eq!(config["config"]["User"], format!("{NONROOT}:{NONROOT}"));
        let mut listed = String::new();
        for layer in manifest["layers"].as_array().unwrap() {
            let output = Command::new("tar").arg("-tzf").arg(blob(&layer["digest"])).output().unwrap();
            listed.push_str(&String::from_utf8_lossy(&output.stdout));
        }
        let files: BTreeSet<&str> =
            listed.lines().map(|l| l.trim_start_matches("./").trim_start_matches('/')).collect();
        assert!(files.contains("bin/true"), "{files:?}");
        for library in shared_libraries(Path::new("/bin/true")).unwrap() {
            let library = library.to_string_lossy();
            assert!(files.contains(library.trim_start_matches('/')), "{library} missing from {files:?}");
        }
        let _ = fs::remove_dir_all(&dir);
    }
}
