//! The container images `tools/image/build.sh` writes without a container
//! engine: OCI image archives (oci-layout, index.json, blobs/sha256/...)
//! that `ctr -n k8s.io images import` takes. Builds the fast ones (pause,
//! busybox) twice into two scratch directories and checks each layout
//! (descriptors against the blobs' digests and sizes, the config's
//! platform, process and diff_ids, the layer's files and owners) and that
//! both builds are byte for byte the same. The trellis image needs the musl
//! build (`make image`), so it is not built here.
//!
//! With root, a throwaway containerd (its own root, state and socket in a
//! scratch directory) imports the archives and runs a container of each.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;

const PAUSE: &str = "registry.k8s.io/pause:3.10.1";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ has a parent")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8(run(cmd).stdout).expect("UTF-8 output")
}

fn sha256_hex(file: &Path) -> String {
    let out = stdout(Command::new("sha256sum").arg(file));
    out.split_whitespace().next().expect("a digest").to_string()
}

/// One image as build.sh printed it: name, manifest digest, archive.
#[derive(Debug, Clone, PartialEq)]
struct Built {
    name: String,
    digest: String,
    archive: PathBuf,
}

/// Runs `tools/image/build.sh IMAGES...` with TRELLIS_IMAGE_OUT=`out`.
fn build(out: &Path, images: &[&str]) -> Vec<Built> {
    let text = stdout(
        Command::new(repo().join("tools/image/build.sh"))
            .args(images)
            .env("TRELLIS_IMAGE_OUT", out)
            .env_remove("SOURCE_DATE_EPOCH")
            .current_dir(repo()),
    );
    text.lines()
        .map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            assert_eq!(f.len(), 3, "NAME DIGEST ARCHIVE, not {line:?}");
            Built {
                name: f[0].to_string(),
                digest: f[1].to_string(),
                archive: PathBuf::from(f[2]),
            }
        })
        .collect()
}

fn find<'a>(images: &'a [Built], name_prefix: &str) -> &'a Built {
    images
        .iter()
        .find(|b| b.name.starts_with(name_prefix))
        .unwrap_or_else(|| panic!("no {name_prefix} image in {images:?}"))
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// An unpacked archive.
struct Layout {
    dir: TempDir,
}

impl Layout {
    fn unpack(archive: &Path) -> Layout {
        let dir = TempDir::new().unwrap();
        run(Command::new("tar")
            .arg("-xf")
            .arg(archive)
            .arg("-C")
            .arg(dir.path()));
        Layout { dir }
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest
            .strip_prefix("sha256:")
            .unwrap_or_else(|| panic!("not a sha256 digest: {digest}"));
        self.dir.path().join("blobs/sha256").join(hex)
    }

    /// The blob of `descriptor`, checked against its digest and size.
    fn blob(&self, descriptor: &Value) -> PathBuf {
        let digest = descriptor["digest"].as_str().expect("a digest");
        let path = self.blob_path(digest);
        let size = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("blob {digest}: {e}"))
            .len();
        assert_eq!(Some(size), descriptor["size"].as_u64(), "size of {digest}");
        assert_eq!(
            format!("sha256:{}", sha256_hex(&path)),
            digest,
            "the blob's content"
        );
        path
    }
}

/// What a checked layout holds.
struct Image {
    // Holds the unpacked files `layer` points into.
    _layout: Layout,
    manifest_digest: String,
    config: Value,
    layer: PathBuf,
}

/// Checks the archive of the image `name` as an OCI image layout.
fn check_layout(archive: &Path, name: &str) -> Image {
    let layout = Layout::unpack(archive);
    let root = layout.dir.path();
    let mut top: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    top.sort();
    assert_eq!(top, ["blobs", "index.json", "oci-layout"]);
    assert_eq!(
        read_json(&root.join("oci-layout")),
        json!({"imageLayoutVersion": "1.0.0"})
    );

    let index = read_json(&root.join("index.json"));
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let manifests = index["manifests"].as_array().expect("manifests");
    assert_eq!(manifests.len(), 1, "one manifest: {index}");
    let desc = &manifests[0];
    assert_eq!(
        desc["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        desc["platform"],
        json!({"architecture": "amd64", "os": "linux"})
    );
    let tag = name.rsplit_once(':').expect("NAME:TAG").1;
    assert_eq!(desc["annotations"]["io.containerd.image.name"], name);
    assert_eq!(
        desc["annotations"]["org.opencontainers.image.ref.name"],
        tag
    );

    let manifest = read_json(&layout.blob(desc));
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    let config_path = layout.blob(&manifest["config"]);
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1, "one layer: {manifest}");
    assert_eq!(
        layers[0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let layer = layout.blob(&layers[0]);

    // No blob that nothing refers to.
    let mut blobs: Vec<String> = std::fs::read_dir(root.join("blobs/sha256"))
        .unwrap()
        .map(|e| format!("sha256:{}", e.unwrap().file_name().into_string().unwrap()))
        .collect();
    blobs.sort();
    let mut referenced = vec![
        desc["digest"].as_str().unwrap().to_string(),
        manifest["config"]["digest"].as_str().unwrap().to_string(),
        layers[0]["digest"].as_str().unwrap().to_string(),
    ];
    referenced.sort();
    assert_eq!(blobs, referenced);

    let config = read_json(&config_path);
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["os"], "linux");
    assert_eq!(config["rootfs"]["type"], "layers");
    let diff_id = format!(
        "sha256:{}",
        stdout(Command::new("sh").arg("-c").arg(format!(
            "gzip -dc '{}' | sha256sum | cut -d' ' -f1",
            layer.display()
        )))
        .trim()
    );
    assert_eq!(config["rootfs"]["diff_ids"], json!([diff_id]));
    let created = config["created"].as_str().expect("created");
    assert_eq!(config["history"][0]["created"], created);
    assert!(
        config["config"]["Env"]
            .as_array()
            .expect("Env")
            .iter()
            .any(|e| e.as_str().is_some_and(|e| e.starts_with("PATH=/"))),
        "PATH in {config}"
    );

    Image {
        manifest_digest: desc["digest"].as_str().unwrap().to_string(),
        _layout: layout,
        config,
        layer,
    }
}

/// The layer's members as `tar -tv` lists them: (mode, owner, path, link).
fn members(layer: &Path) -> Vec<(String, String, String, String)> {
    stdout(
        Command::new("tar")
            .args(["--numeric-owner", "-tvzf"])
            .arg(layer),
    )
    .lines()
    .map(|line| {
        // -rwxr-xr-x 0/0   34448 2026-12-01 21:51 pause
        // lrwxrwxrwx 0/0       0 2026-12-01 21:51 bin/sh -> busybox
        let f: Vec<&str> = line.split_whitespace().collect();
        assert!(f.len() >= 6, "a tar listing line: {line:?}");
        let rest = f[5..].join(" ");
        let (path, link) = rest
            .split_once(" -> ")
            .map_or((rest.clone(), String::new()), |(p, l)| {
                (p.to_string(), l.to_string())
            });
        (f[0].to_string(), f[1].to_string(), path, link)
    })
    .collect()
}

fn unpack_layer(layer: &Path) -> TempDir {
    let dir = TempDir::new().unwrap();
    run(Command::new("tar")
        .arg("-xzf")
        .arg(layer)
        .arg("-C")
        .arg(dir.path()));
    dir
}

#[test]
fn pause_and_busybox_are_valid_and_reproducible() {
    let dirs = [TempDir::new().unwrap(), TempDir::new().unwrap()];
    let first = build(dirs[0].path(), &["pause", "busybox"]);
    let second = build(dirs[1].path(), &["pause", "busybox"]);
    assert_eq!(first.len(), 2, "{first:?}");
    for (one, two) in first.iter().zip(&second) {
        assert_eq!(one.name, two.name);
        assert_eq!(
            one.digest, two.digest,
            "{}: two builds, two manifest digests",
            one.name
        );
        assert_eq!(
            sha256_hex(&one.archive),
            sha256_hex(&two.archive),
            "{}: the archives differ",
            one.name
        );
    }
    check_pause(find(&first, "registry.k8s.io/pause:"));
    check_busybox(find(&first, "trellis.dev/lab/busybox:"));
}

/// Upstream's pause.c, static, run as 65535:65535.
fn check_pause(built: &Built) {
    assert_eq!(built.name, PAUSE);
    let image = check_layout(&built.archive, &built.name);
    assert_eq!(image.manifest_digest, built.digest);
    let process = &image.config["config"];
    assert_eq!(process["Entrypoint"], json!(["/pause"]));
    assert_eq!(process["User"], "65535:65535");
    let files = members(&image.layer);
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(
        files[0],
        (
            "-rwxr-xr-x".into(),
            "0/0".into(),
            "pause".into(),
            String::new()
        )
    );
    let root = unpack_layer(&image.layer);
    let version = stdout(Command::new(root.path().join("pause")).arg("-v"));
    assert_eq!(version.trim(), "pause.c v3.10.1-v1.34.4");
    let elf = stdout(
        Command::new("readelf")
            .arg("-lW")
            .arg(root.path().join("pause")),
    );
    assert!(!elf.contains("program interpreter"), "pause is static");
}

/// Debian's busybox-static with its applets linked in /bin.
fn check_busybox(built: &Built) {
    let image = check_layout(&built.archive, &built.name);
    assert_eq!(image.manifest_digest, built.digest);
    assert_eq!(image.config["config"]["Cmd"], json!(["sh"]));
    assert!(image.config["config"]["Labels"]["dev.trellis.debian.busybox-static"].is_string());
    let files = members(&image.layer);
    assert!(
        files.iter().all(|f| f.1 == "0/0"),
        "owned by 0:0: {files:?}"
    );
    let find = |path: &str| {
        files
            .iter()
            .find(|f| f.2 == path)
            .unwrap_or_else(|| panic!("no {path} in the layer"))
    };
    assert_eq!(find("bin/busybox").0, "-rwxr-xr-x");
    assert_eq!(find("tmp/").0, "drwxrwxrwt");
    for applet in ["sh", "ping", "wget", "nc", "ip", "sleep", "cat", "ls"] {
        let f = find(&format!("bin/{applet}"));
        assert_eq!((f.0.as_str(), f.3.as_str()), ("lrwxrwxrwx", "busybox"));
    }
    let root = unpack_layer(&image.layer);
    let out = stdout(
        Command::new(root.path().join("bin/busybox"))
            .args(["sh", "-c", "echo applets work"])
            .env("PATH", root.path().join("bin")),
    );
    assert_eq!(out.trim(), "applets work");
}

#[test]
fn unknown_image_is_refused() {
    let dir = TempDir::new().unwrap();
    let out = Command::new(repo().join("tools/image/build.sh"))
        .arg("nginx")
        .env("TRELLIS_IMAGE_OUT", dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("[image] error: unknown image 'nginx'"),
        "{err}"
    );
}

/// A containerd of its own: root, state, sockets and config in `dir`.
struct Containerd {
    dir: TempDir,
    child: Child,
}

impl Containerd {
    fn start() -> Containerd {
        let dir = TempDir::new().unwrap();
        let d = dir.path();
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             [debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n",
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = d.join("sock").display(),
        );
        std::fs::File::create(d.join("config.toml"))
            .and_then(|mut f| f.write_all(config.as_bytes()))
            .unwrap();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("containerd (apt-get install containerd runc)");
        let ctrd = Containerd { dir, child };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ctrd
            .ctr_command(&["version"])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            assert!(
                Instant::now() < deadline,
                "containerd did not answer: {}",
                std::fs::read_to_string(ctrd.dir.path().join("containerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        ctrd
    }

    fn ctr_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(self.dir.path().join("sock"))
            .args(["-n", "k8s.io"])
            .args(args);
        cmd
    }

    fn ctr(&self, args: &[&str]) -> String {
        stdout(&mut self.ctr_command(args))
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
#[ignore = "needs root"]
fn containerd_imports_and_runs_the_archives() {
    let out = TempDir::new().unwrap();
    let images = build(out.path(), &["pause", "busybox"]);
    let ctrd = Containerd::start();
    for b in &images {
        let out = ctrd.ctr(&["images", "import", b.archive.to_str().unwrap()]);
        assert!(out.contains(&b.name), "import of {}: {out}", b.name);
    }
    let listed = ctrd.ctr(&["images", "ls"]);
    for b in &images {
        assert!(
            listed
                .lines()
                .any(|l| l.starts_with(&format!("{} ", b.name)) && l.contains(&b.digest)),
            "{} {} in:\n{listed}",
            b.name,
            b.digest
        );
    }
    let version = ctrd.ctr(&["run", "--rm", PAUSE, "image-test-pause", "/pause", "-v"]);
    assert_eq!(version.trim(), "pause.c v3.10.1-v1.34.4");
    let busybox = &find(&images, "trellis.dev/lab/busybox:").name;
    let out = ctrd.ctr(&[
        "run",
        "--rm",
        busybox,
        "image-test-busybox",
        "sh",
        "-c",
        "id -u; ping -c1 -W2 127.0.0.1 >/dev/null && echo ping ok",
    ]);
    assert_eq!(out.trim(), "0\nping ok");
}
