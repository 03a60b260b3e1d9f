//! Dataset sources: every layout of the same images gives the same samples; hostile and broken input is
//! refused or counted; index sidecars are reused, and rebuilt whenever they cannot be trusted.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use imgloader::{
    Error, IndexPolicy, Layout, OpenOptions, OpenReport, Source, open, open_with_report,
};
use tar::{EntryType, Header};

// ---------------------------------------------------------------------------------------------------------
// Building test data

/// One image of the test dataset: its class, its path inside the class folder, and unique fake bytes.
#[derive(Debug, Clone)]
struct Img {
    class: String,
    rel: String,
    bytes: Vec<u8>,
}

impl Img {
    fn base(&self) -> &str {
        self.rel.rsplit('/').next().unwrap()
    }
    fn stem(&self) -> &str {
        self.base().split('.').next().unwrap()
    }
    fn ext(&self) -> &str {
        self.base().rsplit('.').next().unwrap()
    }
}

fn fake_jpeg(name: &str) -> Vec<u8> {
    let mut b = vec![0xff, 0xd8, 0xff, 0xe0];
    b.extend_from_slice(format!("fake image {name}").as_bytes());
    b.extend_from_slice(&[0xff, 0xd9]);
    b
}

/// Classes in sorted order, and the images in the order every source must list them: by class, then
/// folder, then file name. Names follow ImageNet val (`ILSVRC2012_val_%08d`) so that the flat layouts and
/// their label files can describe the same images. The devkit ids of the classes are deliberately not in
/// sorted order, as in the real devkit.
fn dataset() -> (Vec<String>, Vec<Img>) {
    let classes = vec![
        "n01440764".to_string(),
        "n01443537".to_string(),
        "n09999999".to_string(),
    ];
    // (class index, val number, extension, sub-folder)
    let spec: &[(usize, u32, &str, &str)] = &[
        (0, 3, "JPEG", ""),
        (0, 5, "jpg", ""),
        (0, 9, "JPEG", "extra/"),
        (1, 1, "JPEG", ""),
        (1, 2, "png", ""),
        (1, 8, "JPEG", ""),
        (2, 4, "JPEG", ""),
        (2, 6, "JPEG", ""),
        (2, 7, "jpeg", ""),
    ];
    let imgs = spec
        .iter()
        .map(|&(c, n, ext, sub)| {
            let rel = format!("{sub}ILSVRC2012_val_{n:08}.{ext}");
            Img {
                class: classes[c].clone(),
                bytes: fake_jpeg(&rel),
                rel,
            }
        })
        .collect();
    (classes, imgs)
}

/// Devkit ids: n09999999 is 1, n01440764 is 2, n01443537 is 3.
const MAP_CLSLOC: &str = "n09999999 1 zebra\nn01440764 2 tench\nn01443537 3 goldfish\n";

fn devkit_id(class: &str) -> u32 {
    match class {
        "n09999999" => 1,
        "n01440764" => 2,
        "n01443537" => 3,
        _ => unreachable!(),
    }
}

struct TarWriter {
    b: tar::Builder<Vec<u8>>,
}

impl Default for TarWriter {
    fn default() -> Self {
        TarWriter {
            b: tar::Builder::new(Vec::new()),
        }
    }
}

impl TarWriter {
    fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        let mut h = Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(EntryType::Regular);
        self.b.append_data(&mut h, path, data).unwrap();
        self
    }
    fn dir(&mut self, path: &str) -> &mut Self {
        let mut h = Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o755);
        h.set_entry_type(EntryType::Directory);
        self.b.append_data(&mut h, path, &[][..]).unwrap();
        self
    }
    /// A header written as given, with `name` put in the name field byte for byte (no path checks).
    fn raw(&mut self, name: &[u8], kind: EntryType, data: &[u8], link: Option<&str>) -> &mut Self {
        let mut h = Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(kind);
        if let Some(link) = link {
            h.set_link_name(link).unwrap();
        }
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }
    /// A pax extended header giving `path`, then the member itself under a short stand-in name.
    fn pax_file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        let body = format!(" path={path}\n");
        let mut len = body.len() + 1;
        while format!("{len}{body}").len() != len {
            len += 1;
        }
        let record = format!("{len}{body}");
        let mut h = Header::new_ustar();
        h.set_path("PaxHeaders/x").unwrap();
        h.set_size(record.len() as u64);
        h.set_entry_type(EntryType::XHeader);
        h.set_cksum();
        self.b.append(&h, record.as_bytes()).unwrap();
        let mut h = Header::new_ustar();
        h.set_path("stand-in-name.jpg").unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(EntryType::Regular);
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }
    fn bytes(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }
    fn write(self, path: &Path) -> PathBuf {
        fs::write(path, self.bytes()).unwrap();
        path.to_owned()
    }
}

fn write_folder(root: &Path, imgs: &[Img]) -> PathBuf {
    for img in imgs {
        let p = root.join(&img.class).join(&img.rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, &img.bytes).unwrap();
    }
    root.to_owned()
}

/// A tar of class folders under `prefix` (`""`, `"./"`, `"train/"`), images in reverse order and with
/// directory entries, as `tar` would write them in some other walk order.
fn write_class_tar(path: &Path, imgs: &[Img], prefix: &str) -> PathBuf {
    let mut t = TarWriter::default();
    if !prefix.is_empty() {
        t.dir(prefix);
    }
    for img in imgs.iter().rev() {
        t.dir(&format!("{prefix}{}/", img.class));
        t.file(&format!("{prefix}{}/{}", img.class, img.rel), &img.bytes);
    }
    t.write(path)
}

fn write_tar_of_tars(path: &Path, classes: &[String], imgs: &[Img]) -> PathBuf {
    let mut outer = TarWriter::default();
    for class in classes.iter().rev() {
        let mut inner = TarWriter::default();
        for img in imgs.iter().filter(|i| &i.class == class).rev() {
            inner.file(&img.rel, &img.bytes);
        }
        outer.file(&format!("{class}.tar"), &inner.bytes());
    }
    outer.write(path)
}

/// ImageNet val as shipped: every image at the top, in val-number order.
fn write_flat_tar(path: &Path, imgs: &[Img]) -> PathBuf {
    let mut sorted: Vec<&Img> = imgs.iter().collect();
    sorted.sort_by_key(|i| i.base().to_string());
    let mut t = TarWriter::default();
    for img in sorted {
        t.file(img.base(), &img.bytes);
    }
    t.write(path)
}

/// Webdataset shards, samples spread over `n` shards out of order: `<class>/<rel stem>.<ext>` + `.cls`.
fn write_shards(dir: &Path, imgs: &[Img], classes: &[String], n: usize) -> Vec<PathBuf> {
    fs::create_dir_all(dir).unwrap();
    let mut shards: Vec<TarWriter> = (0..n).map(|_| TarWriter::default()).collect();
    for (i, img) in imgs.iter().enumerate().rev() {
        let rel_dir = img
            .rel
            .rsplit_once('/')
            .map(|(d, _)| format!("{d}/"))
            .unwrap_or_default();
        let key = format!("{}/{rel_dir}{}", img.class, img.stem());
        let label = classes.iter().position(|c| c == &img.class).unwrap();
        let shard = &mut shards[i % n];
        shard.file(&format!("{key}.{}", img.ext()), &img.bytes);
        shard.file(&format!("{key}.cls"), format!("{label}\n").as_bytes());
        shard.file(&format!("{key}.json"), b"{}");
    }
    shards
        .into_iter()
        .enumerate()
        .map(|(i, s)| s.write(&dir.join(format!("shard-{i:06}.tar"))))
        .collect()
}

fn opts(cache: &Path) -> OpenOptions {
    OpenOptions {
        cache_dir: Some(cache.to_owned()),
        ..OpenOptions::default()
    }
}

fn with_labels(cache: &Path, labels: &Path, synsets: Option<&Path>) -> OpenOptions {
    OpenOptions {
        labels: Some(labels.to_owned()),
        synsets: synsets.map(Path::to_owned),
        ..opts(cache)
    }
}

/// (base name, label, bytes) of every sample, in index order.
fn samples(src: &dyn Source) -> Vec<(String, u32, Vec<u8>)> {
    let mut scratch = Vec::new();
    (0..src.len())
        .map(|i| {
            let name = src.name(i);
            let base = name.rsplit(['/', ' ']).next().unwrap().to_string();
            (
                base,
                src.label(i),
                src.bytes(i, &mut scratch).unwrap().to_vec(),
            )
        })
        .collect()
}

fn expected(classes: &[String], imgs: &[Img]) -> Vec<(String, u32, Vec<u8>)> {
    imgs.iter()
        .map(|i| {
            (
                i.base().to_string(),
                classes.iter().position(|c| c == &i.class).unwrap() as u32,
                i.bytes.clone(),
            )
        })
        .collect()
}

fn open_ok(path: &Path, o: &OpenOptions) -> (Arc<dyn Source>, OpenReport) {
    open_with_report(path, o).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------------------
// The same images through every layout

#[test]
fn every_layout_lists_the_same_samples_in_the_same_order() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let cache = t.join("cache");
    let (classes, imgs) = dataset();
    let want = expected(&classes, &imgs);

    let folder = write_folder(&t.join("folder"), &imgs);
    let plain_tar = write_class_tar(&t.join("plain.tar"), &imgs, "");
    let dot_tar = write_class_tar(&t.join("dot.tar"), &imgs, "./");
    let top_tar = write_class_tar(&t.join("top.tar"), &imgs, "train/");
    let tot = write_tar_of_tars(&t.join("ILSVRC2012_img_train.tar"), &classes, &imgs);
    let val_tar = write_flat_tar(&t.join("val.tar"), &imgs);
    let flat_dir = t.join("flat");
    fs::create_dir_all(&flat_dir).unwrap();
    for img in &imgs {
        fs::write(flat_dir.join(img.base()), &img.bytes).unwrap();
    }

    // The label files, each listing the images in its own order.
    let mut by_number: Vec<&Img> = imgs.iter().collect();
    by_number.sort_by_key(|i| i.stem().to_string());
    let ground_truth = t.join("ILSVRC2012_validation_ground_truth.txt");
    let gt: String = by_number
        .iter()
        .map(|i| format!("{}\n", devkit_id(&i.class)))
        .collect();
    fs::write(&ground_truth, gt).unwrap();
    let map_clsloc = t.join("map_clsloc.txt");
    fs::write(&map_clsloc, MAP_CLSLOC).unwrap();
    let loc_csv = t.join("LOC_val_solution.csv");
    let mut csv = String::from("ImageId,PredictionString\r\n");
    for img in imgs.iter().rev() {
        csv += &format!(
            "{},{} 10 20 30 40 {} 1 2 3 4\r\n",
            img.stem(),
            img.class,
            img.class
        );
    }
    fs::write(&loc_csv, csv).unwrap();
    let pairs = t.join("val_labels.txt");
    let p: String = imgs
        .iter()
        .map(|i| format!("{}\t{}\n", i.base(), i.class))
        .collect();
    fs::write(&pairs, p).unwrap();
    let loc_synsets = t.join("LOC_synset_mapping.txt");
    fs::write(
        &loc_synsets,
        "n01440764 tench, Tinca tinca\nn01443537 goldfish\nn09999999 zebra\n",
    )
    .unwrap();

    let shard_dir = t.join("shards");
    let shard_files = write_shards(&shard_dir, &imgs, &classes, 2);
    fs::write(shard_dir.join("classes.txt"), classes.join("\n") + "\n").unwrap();
    let one_shard_dir = t.join("one-shard");
    let one_shard = write_shards(&one_shard_dir, &imgs, &classes, 1).remove(0);
    fs::write(
        one_shard_dir.join("manifest.json"),
        format!("{{\"classes\": {classes:?}}}"),
    )
    .unwrap();

    let cases: Vec<(&str, PathBuf, OpenOptions, Layout)> = vec![
        (
            "class folders",
            folder.clone(),
            opts(&cache),
            Layout::ClassFolders,
        ),
        (
            "tar of class folders",
            plain_tar,
            opts(&cache),
            Layout::TarClassFolders,
        ),
        (
            "tar with ./",
            dot_tar,
            opts(&cache),
            Layout::TarClassFolders,
        ),
        (
            "tar with train/",
            top_tar,
            opts(&cache),
            Layout::TarClassFolders,
        ),
        ("tar of tars", tot.clone(), opts(&cache), Layout::TarOfTars),
        (
            "val tar + ground truth",
            val_tar.clone(),
            with_labels(&cache, &ground_truth, Some(&map_clsloc)),
            Layout::FlatTar,
        ),
        (
            "val tar + LOC csv",
            val_tar.clone(),
            with_labels(&cache, &loc_csv, None),
            Layout::FlatTar,
        ),
        (
            "val tar + pairs",
            val_tar.clone(),
            with_labels(&cache, &pairs, None),
            Layout::FlatTar,
        ),
        (
            "val tar + pairs + LOC synsets",
            val_tar.clone(),
            with_labels(&cache, &pairs, Some(&loc_synsets)),
            Layout::FlatTar,
        ),
        (
            "flat folder + ground truth",
            flat_dir.clone(),
            with_labels(&cache, &ground_truth, Some(&map_clsloc)),
            Layout::FlatFolder,
        ),
        (
            "shard folder",
            shard_dir.clone(),
            opts(&cache),
            Layout::Shards,
        ),
        ("one shard", one_shard, opts(&cache), Layout::Shards),
    ];
    for (what, path, o, layout) in cases {
        let (src, report) = open_ok(&path, &o);
        assert_eq!(report.layout, layout, "{what}");
        assert_eq!(src.classes(), &classes[..], "{what}");
        assert_eq!(samples(&*src), want, "{what}");
        assert_eq!(report.images, imgs.len(), "{what}");
        let bytes: u64 = imgs.iter().map(|i| i.bytes.len() as u64).sum();
        assert_eq!(report.image_bytes, bytes, "{what}");
    }
    assert_eq!(shard_files.len(), 2);

    // Human names say where each sample is.
    let src = open(&tot, &opts(&cache)).unwrap();
    assert_eq!(
        src.name(0),
        format!(
            "{} › n01440764.tar › ILSVRC2012_val_00000003.JPEG",
            tot.display()
        )
    );
    let src = open(&folder, &opts(&cache)).unwrap();
    assert_eq!(
        PathBuf::from(src.name(0)),
        folder.join("n01440764/ILSVRC2012_val_00000003.JPEG")
    );
}

#[test]
fn folders_follow_torchvision_walk_order_hidden_files_and_symlinks() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    // `sorted(os.walk())` lists folder `a` before `a-b` before `a/c`: not depth-first in name order.
    for rel in [
        "c/z.jpg",
        "c/a/y.jpg",
        "c/a-b/x.jpg",
        "c/a/c/w.JPG",
        "c/m.PNG",
        "d/1.jpeg",
    ] {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, rel).unwrap();
    }
    fs::write(root.join("c/notes.txt"), "x").unwrap();
    fs::write(root.join("c/pic.bmp"), "x").unwrap();
    fs::write(root.join("c/._z.jpg"), "x").unwrap();
    fs::create_dir_all(root.join(".hidden-class")).unwrap();
    fs::create_dir_all(root.join("d/.git")).unwrap();
    fs::write(root.join("d/.git/q.jpg"), "x").unwrap();
    fs::write(root.join("readme.jpg"), "x").unwrap();
    std::os::unix::fs::symlink(root.join("c"), root.join("c/a/loop")).unwrap();
    std::os::unix::fs::symlink(root.join("nowhere.jpg"), root.join("d/broken.jpg")).unwrap();
    std::os::unix::fs::symlink(root.join("c/z.jpg"), root.join("d/linked.jpg")).unwrap();

    let (src, report) = open_ok(&root, &OpenOptions::default());
    let names: Vec<String> = (0..src.len())
        .map(|i| {
            src.name(i)
                .strip_prefix(&format!("{}/", root.display()))
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        names,
        [
            "c/m.PNG",
            "c/z.jpg",
            "c/a/y.jpg",
            "c/a-b/x.jpg",
            "c/a/c/w.JPG",
            "d/1.jpeg",
            "d/linked.jpg"
        ]
    );
    assert_eq!(src.classes(), ["c", "d"]);
    let s = report.skipped;
    assert_eq!(
        (
            s.hidden,
            s.non_image,
            s.unsupported_image,
            s.outside_class,
            s.links
        ),
        (3, 1, 1, 1, 2),
        "{s:?}"
    );
    let mut scratch = Vec::new();
    assert_eq!(src.bytes(6, &mut scratch).unwrap(), b"c/z.jpg");

    python_check_imagefolder_order(&root, &names, &[0, 0, 0, 0, 0, 1, 1]);
}

/// Issue item 11: a class folder linking to `/` walked the whole filesystem. Links to the dataset folder
/// or above it are cycles: refused as a class folder, skipped and counted deeper down; and the walk is
/// bounded in depth.
#[test]
fn issue_11_links_to_the_root_or_above_never_walk_the_disk() {
    use std::os::unix::fs::symlink;
    use std::time::{Duration, Instant};
    let tmp = tempfile::tempdir().unwrap();
    let quick = |root: &Path| {
        let start = Instant::now();
        let got = open_with_report(root, &OpenOptions::default());
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{}: took {:?}",
            root.display(),
            start.elapsed()
        );
        got
    };
    for (name, target) in [("to-root", None), ("to-slash", Some(Path::new("/")))] {
        let root = tmp.path().join(name);
        fs::create_dir_all(root.join("a")).unwrap();
        fs::write(root.join("a/x.jpg"), b"x").unwrap();
        let target = target.map_or(root.clone(), Path::to_owned);
        symlink(&target, root.join("b")).unwrap();
        match quick(&root) {
            Err(e @ Error::LinkCycle { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(&root.join("b").display().to_string())
                        && msg.contains("symlink")
                        && msg.contains("loop"),
                    "{msg}"
                );
                let Error::LinkCycle { target: t, .. } = e else {
                    unreachable!()
                };
                assert_eq!(t, fs::canonicalize(&target).unwrap());
            }
            other => panic!("{name}: {other:?}"),
        }
    }

    // Deeper down, the same links are skipped and counted, in class folders and flat folders alike.
    let root = tmp.path().join("inside");
    fs::create_dir_all(root.join("a/sub")).unwrap();
    fs::write(root.join("a/x.jpg"), b"x").unwrap();
    symlink("/", root.join("a/slash")).unwrap();
    symlink(&root, root.join("a/sub/dataset")).unwrap();
    symlink(tmp.path(), root.join("a/sub/above")).unwrap();
    let (src, report) = quick(&root).unwrap();
    assert_eq!(src.len(), 1);
    assert_eq!(report.skipped.links, 3, "{:?}", report.skipped);
    let labels = tmp.path().join("labels.txt");
    fs::write(&labels, "x.jpg n01\n").unwrap();
    let start = Instant::now();
    let (src, report) = open_ok(&root.join("a"), &with_labels(tmp.path(), &labels, None));
    assert!(start.elapsed() < Duration::from_secs(1));
    assert_eq!((src.len(), report.skipped.links), (1, 3));

    // Depth is bounded: ImageNet's images are 1 level down, the walk stops past 32.
    let root = tmp.path().join("deep");
    let mut dir = root.join("c");
    for i in 0..33 {
        dir = dir.join(format!("d{i}"));
    }
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("x.jpg"), b"x").unwrap();
    match quick(&root) {
        Err(e @ Error::WalkLimit { limit: 32, .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("more than 32 folder levels")
                    && msg.contains(&root.display().to_string()),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }
}

/// Cross-check with torchvision's `ImageFolder` when the reference interpreter is there. Our hidden-file
/// and symlink-loop rules differ from torchvision's, so it runs on a copy without those.
fn python_check_imagefolder_order(root: &Path, names: &[String], labels: &[u32]) {
    let Some(python) = crate::support::ref_python() else {
        return;
    };
    let clean = root.with_file_name("clean");
    for n in names {
        let p = clean.join(n);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::copy(root.join(n), p).unwrap();
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sources_imagefolder.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(&clean)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: Vec<(String, u32)> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (p, l) = l.split_once('\t').unwrap();
            (p.to_string(), l.parse().unwrap())
        })
        .collect();
    let ours: Vec<(String, u32)> = names.iter().cloned().zip(labels.iter().copied()).collect();
    assert_eq!(ours, theirs);
    let (src, _) = open_ok(&clean, &OpenOptions::default());
    assert_eq!(src.len(), theirs.len());
}

#[test]
fn folder_errors_like_imagefolder() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    fs::create_dir_all(root.join("a")).unwrap();
    fs::create_dir_all(root.join("b")).unwrap();
    fs::create_dir_all(root.join("c")).unwrap();
    fs::write(root.join("a/1.jpg"), "x").unwrap();
    fs::write(root.join("c/1.txt"), "x").unwrap();
    match open(&root, &OpenOptions::default()) {
        Err(Error::EmptyClasses { classes, .. }) => assert_eq!(classes, ["b", "c"]),
        other => panic!("{other:?}"),
    }
    let flat = tmp.path().join("flat");
    fs::create_dir_all(&flat).unwrap();
    fs::write(flat.join("x.jpg"), "x").unwrap();
    let err = open(&flat, &OpenOptions::default()).unwrap_err();
    assert!(matches!(err, Error::NeedsLabels { .. }), "{err}");
    assert!(err.to_string().contains("class folder"), "{err}");
}

// ---------------------------------------------------------------------------------------------------------
// Tar details

#[test]
fn gnu_long_names_and_pax_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let long = format!("cls/{}/{}.jpg", "d".repeat(120), "f".repeat(150));
    let pax = format!("cls/{}.JPEG", "p".repeat(200));
    let mut t = TarWriter::default();
    t.file(&long, b"long")
        .pax_file(&pax, b"pax")
        .file("cls/short.jpg", b"short");
    let path = t.write(&tmp.path().join("long.tar"));
    let (src, report) = open_ok(&path, &opts(tmp.path()));
    assert_eq!(report.layout, Layout::TarClassFolders);
    let got: Vec<(String, Vec<u8>)> = (0..src.len())
        .map(|i| (src.name(i), src.bytes(i, &mut Vec::new()).unwrap().to_vec()))
        .collect();
    let name = |m: &str| format!("{} › {m}", path.display());
    // Folder of the class first, then its sub-folder.
    assert_eq!(
        got,
        [
            (name(&pax), b"pax".to_vec()),
            (name("cls/short.jpg"), b"short".to_vec()),
            (name(&long), b"long".to_vec())
        ]
    );
}

#[test]
fn hostile_members_are_rejected_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = TarWriter::default();
    t.dir("cls/")
        .file("cls/good.jpg", b"good")
        .raw(
            b"cls/link.jpg",
            EntryType::Symlink,
            b"",
            Some("/etc/passwd"),
        )
        .raw(b"cls/hard.jpg", EntryType::Link, b"", Some("cls/good.jpg"))
        .raw(b"../evil.jpg", EntryType::Regular, b"evil", None)
        .raw(b"cls/../../evil2.jpg", EntryType::Regular, b"evil", None)
        .raw(b"/abs.jpg", EntryType::Regular, b"abs", None)
        .raw(b"cls/tty.jpg", EntryType::Char, b"", None)
        .raw(b"cls/disk.jpg", EntryType::Block, b"", None)
        .raw(b"cls/pipe.jpg", EntryType::Fifo, b"", None)
        .file("cls/._good.jpg", b"appledouble")
        .file("cls/readme.txt", b"hi")
        .file("cls/pic.webp", b"webp")
        .file("top.jpg", b"outside");
    let path = t.write(&tmp.path().join("hostile.tar"));
    let (src, report) = open_ok(&path, &opts(tmp.path()));
    assert_eq!(src.len(), 1);
    assert_eq!(src.bytes(0, &mut Vec::new()).unwrap(), b"good");
    let s = report.skipped;
    assert_eq!(s.links, 2, "{s:?}");
    assert_eq!(s.dotdot, 2, "{s:?}");
    assert_eq!(s.absolute, 1, "{s:?}");
    assert_eq!(s.devices, 3, "{s:?}");
    assert_eq!(s.hidden, 1, "{s:?}");
    assert_eq!(s.non_image, 1, "{s:?}");
    assert_eq!(s.unsupported_image, 1, "{s:?}");
    assert_eq!(s.outside_class, 1, "{s:?}");
    assert_eq!(s.directories, 1, "{s:?}");
    assert_eq!(report.members, 14);
    // The counts survive in the index: a second open reports the same.
    let (_, again) = open_ok(&path, &opts(tmp.path()));
    assert_eq!(again.indexes_loaded, 1);
    assert_eq!(again.skipped, s);
}

#[test]
fn compressed_archives_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let tar = {
        let mut t = TarWriter::default();
        t.file("c/x.jpg", b"x");
        t.bytes()
    };
    for (magic, kind) in [
        (&[0x1f, 0x8b, 8, 0][..], "gzip"),
        (&[0x28, 0xb5, 0x2f, 0xfd], "zstd"),
        (b"BZh9", "bzip2"),
    ] {
        let path = tmp.path().join(format!("train.tar.{kind}"));
        let mut bytes = magic.to_vec();
        bytes.extend_from_slice(&tar);
        fs::write(&path, bytes).unwrap();
        match open(&path, &opts(tmp.path())) {
            Err(e @ Error::Compressed { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(kind)
                        && msg.contains("decompress")
                        && msg.contains(&*path.to_string_lossy()),
                    "{msg}"
                );
            }
            other => panic!("{kind}: {other:?}"),
        }
    }
    // An inner tar of a tar of tars, too.
    let mut inner = vec![0x1f, 0x8b, 8, 0];
    inner.extend_from_slice(&tar);
    let mut t = TarWriter::default();
    t.file("n01.tar", &inner);
    let path = t.write(&tmp.path().join("tot.tar"));
    match open(&path, &opts(tmp.path())) {
        Err(Error::Compressed {
            member,
            kind: "gzip",
            ..
        }) => assert_eq!(member.as_deref(), Some("n01.tar")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn truncated_archives_name_archive_and_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = TarWriter::default();
    t.file("c/a.jpg", &[1; 700]).file("c/b.jpg", &[2; 3000]);
    let full = t.bytes();
    // Second member: header at 1536, data at 2048..5048. Cut inside its data.
    let path = tmp.path().join("cut-data.tar");
    fs::write(&path, &full[..3000]).unwrap();
    match open(&path, &opts(tmp.path())) {
        Err(e @ Error::Archive { .. }) => {
            let Error::Archive {
                archive, offset, ..
            } = &e
            else {
                unreachable!()
            };
            assert_eq!((archive.as_path(), *offset), (path.as_path(), 1536));
            let msg = e.to_string();
            assert!(
                msg.contains("cut-data.tar") && msg.contains("1536") && msg.contains("truncated"),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Cut inside the second header.
    let path = tmp.path().join("cut-header.tar");
    fs::write(&path, &full[..1536 + 100]).unwrap();
    match open(&path, &opts(tmp.path())) {
        Err(Error::Archive {
            archive, offset, ..
        }) => assert_eq!((archive, offset), (path, 1536)),
        other => panic!("{other:?}"),
    }
    // Cut inside an inner tar of a tar of tars: the offset is in the outer file.
    let mut outer = TarWriter::default();
    outer.file("n01.tar", &full[..3000]);
    let path = outer.write(&tmp.path().join("tot.tar"));
    match open(&path, &opts(tmp.path())) {
        Err(e @ Error::Archive { .. }) => {
            let Error::Archive { offset, reason, .. } = &e else {
                unreachable!()
            };
            assert_eq!(*offset, 512 + 1536);
            assert!(reason.contains("n01.tar"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn empty_and_foreign_files() {
    let tmp = tempfile::tempdir().unwrap();
    let empty_tar = TarWriter::default().write(&tmp.path().join("empty.tar"));
    assert!(matches!(
        open(&empty_tar, &opts(tmp.path())),
        Err(Error::EmptyDataset { .. })
    ));
    let zero = tmp.path().join("zero.tar");
    fs::write(&zero, b"").unwrap();
    assert!(matches!(
        open(&zero, &opts(tmp.path())),
        Err(Error::EmptyDataset { .. })
    ));
    let text = tmp.path().join("text.tar");
    fs::write(&text, "this is not a tar archive at all\n".repeat(40)).unwrap();
    match open(&text, &opts(tmp.path())) {
        Err(Error::Archive {
            offset: 0, reason, ..
        }) => assert!(reason.contains("not a tar"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let mut t = TarWriter::default();
    t.file("c/readme.txt", b"no images here");
    let no_images = t.write(&tmp.path().join("noimg.tar"));
    assert!(matches!(
        open(&no_images, &opts(tmp.path())),
        Err(Error::EmptyDataset { .. })
    ));
}

#[test]
fn flat_tar_without_labels_asks_for_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, imgs) = dataset();
    let val = write_flat_tar(&tmp.path().join("val.tar"), &imgs);
    let err = open(&val, &opts(tmp.path())).unwrap_err();
    assert!(
        matches!(err, Error::NeedsLabels { .. }) && err.to_string().contains("labels"),
        "{err}"
    );
}

#[test]
fn tar_of_tars_with_an_empty_class_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = TarWriter::default();
    a.file("x.JPEG", b"x");
    let mut b = TarWriter::default();
    b.file("notes.txt", b"x");
    let mut outer = TarWriter::default();
    outer
        .file("n01.tar", &a.bytes())
        .file("n02.tar", &b.bytes())
        .file("n03.tar", &TarWriter::default().bytes());
    let path = outer.write(&tmp.path().join("train.tar"));
    match open(&path, &opts(tmp.path())) {
        Err(Error::EmptyClasses { classes, .. }) => assert_eq!(classes, ["n02", "n03"]),
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------------------
// Labels

#[test]
fn labels_missing_and_unknown_are_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (_, imgs) = dataset();
    let val = write_flat_tar(&t.join("val.tar"), &imgs);
    let synsets = t.join("map_clsloc.txt");
    fs::write(&synsets, MAP_CLSLOC).unwrap();
    // Two images unlisted, one labelled with a synset the list does not have.
    let labels = t.join("labels.txt");
    let mut text: String = imgs[2..]
        .iter()
        .map(|i| format!("{} {}\n", i.base(), i.class))
        .collect();
    text += "ILSVRC2012_val_00000099.JPEG n04000000\n";
    fs::write(&labels, text).unwrap();
    match open(&val, &with_labels(t, &labels, Some(&synsets))) {
        Err(e @ Error::Labels { .. }) => {
            let msg = e.to_string();
            let Error::Labels {
                missing,
                missing_count,
                unknown,
                unknown_count,
                ..
            } = e
            else {
                unreachable!()
            };
            let mut want_missing = vec![imgs[0].base().to_string(), imgs[1].base().to_string()];
            want_missing.sort();
            assert_eq!((missing, missing_count), (want_missing, 2));
            assert_eq!(
                (unknown, unknown_count),
                (vec!["ILSVRC2012_val_00000099: n04000000".to_string()], 1)
            );
            assert!(msg.contains("2 image(s) have no label"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
    // Ground truth: an id the synset list lacks is unknown.
    let gt = t.join("gt.txt");
    fs::write(&gt, "1\n2\n3\n1\n2\n3\n1\n2\n7\n").unwrap();
    match open(&val, &with_labels(t, &gt, Some(&synsets))) {
        Err(Error::Labels {
            unknown,
            missing_count: 1,
            ..
        }) => {
            assert_eq!(unknown, ["ILSVRC2012_val_00000009: id 7"])
        }
        other => panic!("{other:?}"),
    }
    // Ground truth needs the synset list, and one in devkit order.
    let err = open(&val, &with_labels(t, &gt, None)).unwrap_err();
    assert!(
        matches!(err, Error::LabelsFile { .. }) && err.to_string().contains("synset list"),
        "{err}"
    );
    let sorted = t.join("LOC_synset_mapping.txt");
    fs::write(
        &sorted,
        "n01440764 tench\nn01443537 goldfish\nn09999999 zebra\n",
    )
    .unwrap();
    let err = open(&val, &with_labels(t, &gt, Some(&sorted))).unwrap_err();
    assert!(err.to_string().contains("sorted order"), "{err}");
    // Malformed lines name the line.
    fs::write(&labels, "a.jpg n01\nb.jpg\n").unwrap();
    match open(&val, &with_labels(t, &labels, None)) {
        Err(Error::LabelsFile { line: 2, .. }) => {}
        other => panic!("{other:?}"),
    }
    // Long lists are cut at 20 names, with the full count.
    let mut w = TarWriter::default();
    for i in 0..25 {
        w.file(&format!("img{i:02}.jpg"), b"x");
    }
    let many = w.write(&t.join("many.tar"));
    fs::write(&labels, "other.jpg n01\n").unwrap();
    match open(&many, &with_labels(t, &labels, None)) {
        Err(e @ Error::Labels { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("25 image(s) have no label") && msg.contains("and 5 more"),
                "{msg}"
            );
            assert!(!msg.contains("unknown"), "{msg}");
            let Error::Labels {
                missing,
                missing_count,
                unknown_count,
                ..
            } = e
            else {
                unreachable!()
            };
            assert_eq!((missing.len(), missing_count, unknown_count), (20, 25, 0));
        }
        other => panic!("{other:?}"),
    }
    // Contradicting entries for one image.
    fs::write(&labels, "a.jpg n01\na.JPEG n02\n").unwrap();
    match open(&val, &with_labels(t, &labels, None)) {
        Err(Error::LabelsFile {
            line: 2, reason, ..
        }) => assert!(reason.contains("n01"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

/// Issue item 9: rows of `LOC_val_solution.csv` for images the tar lacks made classes of their own (4
/// classes for 3 present, so the labels no longer matched the train set's), and a byte order mark at the
/// start of a labels file made it unreadable.
#[test]
fn issue_9_rows_for_absent_images_make_no_class_and_a_bom_is_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (classes, imgs) = dataset();
    let want = expected(&classes, &imgs);
    let val = write_flat_tar(&t.join("val.tar"), &imgs);
    let flat_dir = t.join("flat");
    fs::create_dir_all(&flat_dir).unwrap();
    for img in &imgs {
        fs::write(flat_dir.join(img.base()), &img.bytes).unwrap();
    }

    // The full-val CSV: rows for every image here, plus two images (one of a class nothing here has, one
    // sorting before every class) that this subset does not hold.
    let csv = t.join("LOC_val_solution.csv");
    let mut text = String::from("\u{feff}ImageId,PredictionString\r\n");
    text += "ILSVRC2012_val_00049999,n00000001 1 2 3 4\r\n";
    for img in &imgs {
        text += &format!("{},{} 1 2 3 4\r\n", img.stem(), img.class);
    }
    text += "ILSVRC2012_val_00050000,n04000000 1 2 3 4\r\n";
    fs::write(&csv, text).unwrap();
    for dir in [&val, &flat_dir] {
        let (src, report) = open_ok(dir, &with_labels(t, &csv, None));
        assert_eq!(src.classes(), &classes[..], "{}", dir.display());
        assert_eq!(samples(&*src), want, "{}", dir.display());
        assert_eq!(report.unused_labels, 2, "{}", dir.display());
        assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
        let w = &report.warnings[0];
        assert!(
            w.contains("LOC_val_solution.csv")
                && w.contains("2 row(s)")
                && w.contains("ILSVRC2012_val_00049999, ILSVRC2012_val_00050000"),
            "{w}"
        );
    }

    // Every format read from a labels or synset file takes a BOM: pairs, ground truth, synset lists.
    let bom = |name: &str, text: String| {
        let p = t.join(name);
        fs::write(&p, format!("\u{feff}{text}")).unwrap();
        p
    };
    let pairs = bom(
        "pairs.txt",
        imgs.iter()
            .map(|i| format!("{} {}\n", i.base(), i.class))
            .collect(),
    );
    let mut by_number: Vec<&Img> = imgs.iter().collect();
    by_number.sort_by_key(|i| i.stem().to_string());
    let gt = bom(
        "gt.txt",
        by_number
            .iter()
            .map(|i| format!("{}\n", devkit_id(&i.class)))
            .collect(),
    );
    let map = bom("map_clsloc.txt", MAP_CLSLOC.to_string());
    for (labels, synsets) in [(&pairs, None), (&pairs, Some(&map)), (&gt, Some(&map))] {
        let (src, report) = open_ok(&val, &with_labels(t, labels, synsets.map(|p| p.as_path())));
        assert_eq!(src.classes(), &classes[..], "{}", labels.display());
        assert_eq!(samples(&*src), want, "{}", labels.display());
        assert_eq!(report.unused_labels, 0);
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    }
}

#[test]
fn shard_labels_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shards");
    fs::create_dir_all(&dir).unwrap();
    let mut t = TarWriter::default();
    t.file("a.jpg", b"a")
        .file("a.cls", b"0")
        .file("b.jpg", b"b");
    t.write(&dir.join("s0.tar"));
    match open(&dir, &opts(tmp.path())) {
        Err(Error::Labels { missing, .. }) => assert_eq!(missing, ["b.jpg"]),
        other => panic!("{other:?}"),
    }
    let mut t = TarWriter::default();
    t.file("a.jpg", b"a")
        .file("a.cls", b"0")
        .file("b.jpg", b"b")
        .file("b.cls", b"5");
    t.write(&dir.join("s0.tar"));
    fs::write(dir.join("classes.txt"), "cat\ndog\n").unwrap();
    match open(&dir, &opts(tmp.path())) {
        Err(Error::Labels { unknown, .. }) => assert_eq!(unknown.len(), 1),
        other => panic!("{other:?}"),
    }
    fs::remove_file(dir.join("classes.txt")).unwrap();
    let (src, _) = open_ok(&dir, &opts(tmp.path()));
    assert_eq!(src.classes(), ["0", "1", "2", "3", "4", "5"]);
    assert_eq!((src.label(0), src.label(1)), (0, 5));
    let mut t = TarWriter::default();
    t.file("a.jpg", b"a").file("a.cls", b"cat");
    t.write(&dir.join("s0.tar"));
    match open(&dir, &opts(tmp.path())) {
        Err(Error::Archive { reason, .. }) => assert!(reason.contains("a.cls"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------------------
// The index sidecar

fn small_tar(path: &Path, n: usize) -> PathBuf {
    let mut t = TarWriter::default();
    for i in 0..n {
        t.file(
            &format!("c{}/img{i:03}.jpg", i % 3),
            format!("image {i}").as_bytes(),
        );
    }
    t.write(path)
}

fn idx(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.idx", path.display()))
}

/// Where an index's records start (format v3: after the 176-byte header).
const RECORDS_AT: usize = 176;

/// Rewrites the checksum of an index file after a hand edit (format v3: crc32 of bytes 0..172 and 176..,
/// stored little-endian at 172).
fn fix_checksum(bytes: &mut [u8]) {
    let mut h = crc32fast::Hasher::new();
    h.update(&bytes[..172]);
    h.update(&bytes[176..]);
    let crc = h.finalize();
    bytes[172..176].copy_from_slice(&crc.to_le_bytes());
}

fn assert_rebuilt(report: &OpenReport, why: &str) {
    assert_eq!(
        (report.indexes_loaded, report.indexes_built),
        (0, 1),
        "{report:?}"
    );
    assert!(report.members_scanned > 0);
    assert!(
        report.notes.iter().any(|n| n.contains(why)),
        "no note with {why:?}: {:?}",
        report.notes
    );
}

#[test]
fn index_is_created_reused_and_rebuilt_when_stale() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let tar = small_tar(&tmp.path().join("train.tar"), 9);
    let (src, first) = open_ok(&tar, &opts(&cache));
    assert_eq!(
        (
            first.indexes_loaded,
            first.indexes_built,
            first.members_scanned
        ),
        (0, 1, 9)
    );
    assert_eq!(first.index_files, [idx(&tar)]);
    assert!(idx(&tar).is_file());
    let before = samples(&*src);

    let (src, second) = open_ok(&tar, &opts(&cache));
    assert_eq!(
        (
            second.indexes_loaded,
            second.indexes_built,
            second.members_scanned
        ),
        (1, 0, 0)
    );
    assert_eq!(second.members, 9);
    assert_eq!(samples(&*src), before);

    // Touching the tar makes the index stale.
    let f = fs::File::options().write(true).open(&tar).unwrap();
    f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3600))
        .unwrap();
    drop(f);
    let (_, touched) = open_ok(&tar, &opts(&cache));
    assert_rebuilt(&touched, "stale");
    let (_, again) = open_ok(&tar, &opts(&cache));
    assert_eq!(again.indexes_loaded, 1);

    // A rewritten tar: new content is seen, not the old offsets.
    small_tar(&tar, 12);
    let (src, changed) = open_ok(&tar, &opts(&cache));
    assert_rebuilt(&changed, "stale");
    assert_eq!(src.len(), 12);

    // Rebuild policy rebuilds a valid index.
    let (_, rebuilt) = open_ok(
        &tar,
        &OpenOptions {
            index: IndexPolicy::Rebuild,
            ..opts(&cache)
        },
    );
    assert_eq!((rebuilt.indexes_loaded, rebuilt.indexes_built), (0, 1));
}

#[test]
fn damaged_indexes_are_detected_and_never_trusted() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let tar = small_tar(&tmp.path().join("train.tar"), 9);
    let (src, _) = open_ok(&tar, &opts(&cache));
    let want = samples(&*src);
    drop(src);
    let good = fs::read(idx(&tar)).unwrap();
    let tar_len = fs::metadata(&tar).unwrap().len();

    let check = |bytes: &[u8], why: &str| {
        fs::write(idx(&tar), bytes).unwrap();
        // Read-only: not used, built in memory, sidecar left alone.
        let (src, report) = open_ok(
            &tar,
            &OpenOptions {
                index: IndexPolicy::ReadOnly,
                ..opts(&cache)
            },
        );
        assert_rebuilt(&report, why);
        assert!(
            report.notes.iter().any(|n| n.contains("read-only")),
            "{:?}",
            report.notes
        );
        assert_eq!(
            fs::read(idx(&tar)).unwrap(),
            bytes,
            "read-only policy wrote the sidecar"
        );
        assert_eq!(samples(&*src), want);
        // Use: rebuilt and saved.
        let (src, report) = open_ok(&tar, &opts(&cache));
        assert_rebuilt(&report, why);
        assert_eq!(samples(&*src), want);
        assert_eq!(fs::read(idx(&tar)).unwrap(), good);
    };
    // One corrupt byte in a record.
    let mut b = good.clone();
    b[RECORDS_AT + 5] ^= 0x40;
    check(&b, "checksum");
    // Truncated, in the records and in the header.
    check(&good[..good.len() - 7], "truncated");
    check(&good[..100], "truncated");
    // A record pointing past the end of the tar, with a valid checksum.
    let mut b = good.clone();
    b[RECORDS_AT..RECORDS_AT + 8].copy_from_slice(&(tar_len - 3).to_le_bytes());
    fix_checksum(&mut b);
    check(&b, "past the end");
    // A label outside the class table, with a valid checksum.
    let mut b = good.clone();
    b[RECORDS_AT + 16..RECORDS_AT + 20].copy_from_slice(&7u32.to_le_bytes());
    fix_checksum(&mut b);
    check(&b, "out of range");
    // An older format version (v1 trusted size and mtime alone), and a newer one.
    let mut b = good.clone();
    b[8..12].copy_from_slice(&1u32.to_le_bytes());
    fix_checksum(&mut b);
    check(&b, "format version 1, older");
    b[8..12].copy_from_slice(&4u32.to_le_bytes());
    fix_checksum(&mut b);
    check(&b, "format version 4, newer");
    // The content fingerprints (first and last 64 KiB, sampled headers) no longer matching.
    for at in [164, 168] {
        let mut b = good.clone();
        b[at] ^= 1;
        fix_checksum(&mut b);
        check(&b, "another tar");
    }
    // Not an index at all.
    check(b"hello", "truncated");
}

#[test]
fn index_falls_back_to_the_cache_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let tar = small_tar(&tmp.path().join("train.tar"), 4);
    // The sidecar's place is taken by a folder: it can be neither read nor written.
    fs::create_dir_all(idx(&tar)).unwrap();
    let (_, first) = open_ok(&tar, &opts(&cache));
    assert_eq!(first.indexes_built, 1);
    assert_eq!(first.index_files.len(), 1);
    assert!(
        first.index_files[0].starts_with(&cache),
        "{:?}",
        first.index_files
    );
    assert!(
        first.notes.iter().any(|n| n.contains("cannot write")),
        "{:?}",
        first.notes
    );
    let (_, second) = open_ok(&tar, &opts(&cache));
    assert_eq!((second.indexes_loaded, second.members_scanned), (1, 0));
    assert_eq!(second.index_files, first.index_files);
    // Neither place writable: the index stays in memory, and opening still works.
    fs::remove_dir_all(&cache).unwrap();
    fs::write(&cache, b"a file where the cache folder should be").unwrap();
    let (src, third) = open_ok(&tar, &opts(&cache));
    assert_eq!(src.len(), 4);
    assert!(
        third.notes.iter().any(|n| n.contains("memory")),
        "{:?}",
        third.notes
    );
}

/// Indexing speed: `cargo test --release -p imgloader --test tests -- --ignored --nocapture index_speed`.
#[test]
#[ignore]
fn index_speed() {
    let tmp = tempfile::tempdir().unwrap();
    let n = 100_000;
    let path = tmp.path().join("many.tar");
    {
        let file = std::io::BufWriter::new(fs::File::create(&path).unwrap());
        let mut b = tar::Builder::new(file);
        for i in 0..n {
            let mut h = Header::new_gnu();
            h.set_size(16);
            h.set_mode(0o644);
            b.append_data(
                &mut h,
                format!("n{:08}/n{:08}_{i}.JPEG", i % 1000, i % 1000),
                &[7u8; 16][..],
            )
            .unwrap();
        }
        b.into_inner().unwrap().flush().unwrap();
    }
    let o = OpenOptions {
        index: IndexPolicy::ReadOnly,
        ..opts(tmp.path())
    };
    let _ = open_ok(&path, &o); // warm the page cache
    let start = std::time::Instant::now();
    let (src, report) = open_ok(&path, &o);
    let build = start.elapsed();
    assert_eq!((src.len(), report.members_scanned), (n, n as u64));
    let (_, _) = open_ok(&path, &opts(tmp.path()));
    let start = std::time::Instant::now();
    let (src, report) = open_ok(&path, &opts(tmp.path()));
    let load = start.elapsed();
    assert_eq!((src.len(), report.indexes_loaded), (n, 1));
    eprintln!(
        "indexed {n} members in {:.1} ms = {:.0} members/s; loading the index took {:.1} ms",
        build.as_secs_f64() * 1e3,
        n as f64 / build.as_secs_f64(),
        load.as_secs_f64() * 1e3
    );
}

// ---------------------------------------------------------------------------------------------------------
// Regression tests of the tar-robustness issue (items 2-6): a tar that changes under us, a foreign index,
// absurd class ids and header sizes, and files that are not regular files. Each must end in an error that
// names the culprit, promptly: never a crash, a hang, an abort or wrong bytes.

/// Runs `f` on a thread of its own and waits at most `secs` for it: a regression that hangs fails here
/// instead of hanging the test run (the stuck thread is left behind).
fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("{what}: no answer within {secs} s (hangs?)"))
}

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

/// Issue item 2: a tar truncated while a source has it open. Members before the cut still read; those past
/// it are an error naming the archive, the member and its offset. Reading them through a memory map
/// killed the process with SIGBUS.
#[test]
fn issue_tar_truncated_while_open_is_an_error_not_sigbus() {
    let tmp = tempfile::tempdir().unwrap();
    let tar = small_tar(&tmp.path().join("train.tar"), 40);
    let (src, _) = open_ok(&tar, &opts(tmp.path()));
    // Each member takes 1024 bytes (header + one block); cut on a page boundary, so that a map would lose
    // whole pages.
    let cut = 8192;
    fs::File::options()
        .write(true)
        .open(&tar)
        .unwrap()
        .set_len(cut)
        .unwrap();
    let mut scratch = Vec::new();
    let (mut read, mut refused) = (0, 0);
    for i in 0..src.len() {
        let name = src.name(i);
        let n: usize = name[name.len() - 7..name.len() - 4].parse().unwrap();
        match src.bytes(i, &mut scratch) {
            Ok(b) => {
                assert_eq!(b, format!("image {n}").as_bytes(), "{name}");
                read += 1;
            }
            Err(e) => {
                let msg = imgloader::error::chain(&e);
                let member = name.rsplit(" › ").next().unwrap();
                assert!(
                    msg.contains(&*tar.to_string_lossy()) && msg.contains(member),
                    "{msg}"
                );
                // Member n: header at n * 1024, data right after it.
                let offset = n as u64 * 1024 + 512;
                assert!(msg.contains(&format!("byte {offset}")), "{msg}");
                assert!(
                    offset + 9 > cut,
                    "{name} at {offset} should have been readable"
                );
                refused += 1;
            }
        }
    }
    assert_eq!((read, refused), (8, 32));
    // Reopened, the index is stale and the rebuild finds the cut.
    let err = open(&tar, &opts(tmp.path())).unwrap_err();
    let msg = imgloader::error::chain(&err);
    assert!(
        msg.contains("truncated") && msg.contains("train.tar"),
        "{msg}"
    );
}

/// `n` members `c<i%3>/img<i>.jpg` of different sizes, written in `order`: the same members in another
/// order make a tar of the same size whose members lie at other offsets.
fn sized_tar(path: &Path, n: usize, order: impl Fn(usize) -> usize) -> PathBuf {
    let mut t = TarWriter::default();
    for k in 0..n {
        let i = order(k);
        let len = 1 + (i * 379) % 1500;
        t.file(&format!("c{}/img{i:03}.jpg", i % 3), &vec![i as u8; len]);
    }
    t.write(path)
}

fn set_mtime(path: &Path, t: std::time::SystemTime) {
    let f = fs::File::options().write(true).open(path).unwrap();
    f.set_modified(t).unwrap();
}

/// Issue item 3: an index sidecar copied from another tar of the same size and mtime is detected (by the
/// tar's first and last 64 KiB, and by sampled member headers) and rebuilt; the samples are right.
#[test]
fn issue_foreign_index_with_same_size_and_mtime_is_rebuilt() {
    let tmp = tempfile::tempdir().unwrap();
    let when = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    let check = |n: usize, reversed: &dyn Fn(usize) -> usize, why: &str| {
        let a = sized_tar(&tmp.path().join("a.tar"), n, |i| i);
        let b = sized_tar(&tmp.path().join("b.tar"), n, reversed);
        assert_eq!(
            fs::metadata(&a).unwrap().len(),
            fs::metadata(&b).unwrap().len()
        );
        set_mtime(&a, when);
        set_mtime(&b, when);
        let (_, built) = open_ok(&a, &opts(tmp.path()));
        assert_eq!(built.indexes_built, 1);
        fs::copy(idx(&a), idx(&b)).unwrap();
        let (src, report) = open_ok(&b, &opts(tmp.path()));
        assert_rebuilt(&report, why);
        let mut scratch = Vec::new();
        for i in 0..src.len() {
            let name = src.name(i);
            let k: usize = name[name.len() - 7..name.len() - 4].parse().unwrap();
            let bytes = src.bytes(i, &mut scratch).unwrap();
            assert_eq!(bytes, vec![k as u8; 1 + (k * 379) % 1500], "{name}");
        }
        // The rebuilt sidecar is b's own and is used as it is from now on.
        let (_, again) = open_ok(&b, &opts(tmp.path()));
        assert_eq!(again.indexes_loaded, 1, "{again:?}");
    };
    // Small tars, the other in reverse order: the first and last 64 KiB differ.
    check(30, &|k| 29 - k, "another tar");
    // Large tars that agree in their first and last 64 KiB, middle members in reverse order: the sampled
    // member headers differ.
    let n = 400;
    check(
        n,
        &|k| {
            if (80..n - 80).contains(&k) {
                n - 1 - k
            } else {
                k
            }
        },
        "another tar",
    );
}

/// Issue item 4: a `.cls` of 4294967294 made the loader allocate four billion class names and abort.
/// Class ids are capped; the error names the shard and the member.
#[test]
fn issue_absurd_class_ids_are_refused_naming_shard_and_member() {
    let tmp = tempfile::tempdir().unwrap();
    for (value, manifest) in [
        ("4294967294", false),
        ("4294967294", true),
        ("16777216", false),
        ("2000000", false),
    ] {
        let dir = tmp.path().join(format!("shards-{value}-{manifest}"));
        fs::create_dir_all(&dir).unwrap();
        let mut t = TarWriter::default();
        t.file("a.jpg", b"a")
            .file("a.cls", b"0")
            .file("b.jpg", b"b")
            .file("b.cls", value.as_bytes());
        let shard = t.write(&dir.join("s0.tar"));
        if manifest {
            fs::write(dir.join("classes.txt"), "cat\ndog\n").unwrap();
        }
        let err = within(20, "opening absurd shards", move || {
            open(&dir, &OpenOptions::default())
                .map(|s| s.classes().len())
                .map_err(|e| imgloader::error::chain(&e))
        })
        .unwrap_err();
        assert!(
            err.contains(&*shard.to_string_lossy()) && err.contains("b.cls") && err.contains(value),
            "{value}: {err}"
        );
    }
}

/// A tar whose first member is an extension header of type `kind` claiming `claim` bytes; the file is made
/// that long (sparse), so that a reader that believes the claim has that much to read.
fn claiming_tar(path: &Path, kind: EntryType, claim: u64) -> PathBuf {
    let mut h = Header::new_ustar();
    h.set_path("././@LongLink").unwrap();
    h.set_size(claim);
    h.set_entry_type(kind);
    h.set_cksum();
    let mut f = fs::File::create(path).unwrap();
    f.write_all(h.as_bytes()).unwrap();
    let mut t = TarWriter::default();
    t.file("c/x.jpg", b"x");
    let after = 512 + claim.div_ceil(512) * 512;
    f.set_len(after).unwrap();
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(after)).unwrap();
    f.write_all(&t.bytes()).unwrap();
    path.to_owned()
}

/// Issue item 5: long-name and pax headers claiming hundreds of MB were read into memory. Their payload
/// is capped; the archive is refused at once with its name and the header's offset.
#[test]
fn issue_huge_long_name_and_pax_headers_are_refused_promptly() {
    let tmp = tempfile::tempdir().unwrap();
    for (kind, what) in [
        (EntryType::GNULongName, "long-name"),
        (EntryType::XHeader, "pax"),
        (EntryType::XGlobalHeader, "pax"),
    ] {
        let path = claiming_tar(
            &tmp.path()
                .join(format!("{what}-{}.tar", kind.as_byte() as char)),
            kind,
            300_000_000,
        );
        let cache = tmp.path().to_owned();
        let start = std::time::Instant::now();
        let err = within(20, what, move || {
            open(&path, &opts(&cache))
                .map(|s| s.len())
                .map_err(|e| (imgloader::error::chain(&e), path))
        })
        .unwrap_err();
        let (msg, path) = err;
        assert!(
            msg.contains(&*path.to_string_lossy())
                && msg.contains("at byte 0")
                && msg.contains(what)
                && msg.contains("300000000")
                && msg.contains("65536"),
            "{msg}"
        );
        assert!(start.elapsed().as_secs_f64() < 2.0, "{:?}", start.elapsed());
    }
}

/// Issue item 6: a FIFO named like a tar hung `open` (opening a FIFO for reading waits for a writer). The
/// type is checked first; a FIFO image inside a class folder is skipped at open and refused at read, and
/// a FIFO labels file is refused too.
#[test]
fn issue_fifos_are_refused_without_hanging() {
    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("train.tar");
    mkfifo(&fifo);
    let cache = tmp.path().to_owned();
    let msg = within(10, "opening a FIFO tar", {
        let (fifo, cache) = (fifo.clone(), cache.clone());
        move || imgloader::error::chain(&open(&fifo, &opts(&cache)).unwrap_err())
    });
    assert!(
        msg.contains(&*fifo.to_string_lossy()) && msg.contains("FIFO"),
        "{msg}"
    );

    // A FIFO labels file for a flat tar.
    let (_, imgs) = dataset();
    let val = write_flat_tar(&tmp.path().join("val.tar"), &imgs);
    let labels = tmp.path().join("labels.txt");
    mkfifo(&labels);
    let msg = within(10, "a FIFO labels file", {
        let (val, labels, cache) = (val.clone(), labels.clone(), cache.clone());
        move || {
            imgloader::error::chain(&open(&val, &with_labels(&cache, &labels, None)).unwrap_err())
        }
    });
    assert!(
        msg.contains(&*labels.to_string_lossy()) && msg.contains("FIFO"),
        "{msg}"
    );

    // A FIFO among the images of a class folder: skipped (and counted) when the folder is listed.
    let root = tmp.path().join("folder");
    fs::create_dir_all(root.join("c1")).unwrap();
    fs::write(root.join("c1/a.jpg"), b"a").unwrap();
    fs::write(root.join("c1/b.jpg"), b"b").unwrap();
    mkfifo(&root.join("c1/pipe.jpg"));
    let (src, report) = within(10, "a FIFO in a class folder", {
        let root = root.clone();
        move || open_with_report(&root, &OpenOptions::default()).map_err(|e| e.to_string())
    })
    .unwrap();
    assert_eq!((src.len(), report.skipped.devices), (2, 1));
    // An image replaced by a FIFO after the listing: reading it is an error, not a wait.
    fs::remove_file(root.join("c1/b.jpg")).unwrap();
    mkfifo(&root.join("c1/b.jpg"));
    let msg = within(10, "reading a FIFO image", move || {
        imgloader::error::chain(&src.bytes(1, &mut Vec::new()).unwrap_err())
    });
    assert!(msg.contains("b.jpg") && msg.contains("FIFO"), "{msg}");
}

/// `LOC_val_solution.csv` for `imgs`, rows in reverse order (the real file is not sorted either).
fn loc_csv(imgs: &[Img]) -> String {
    let mut text = String::from("ImageId,PredictionString\n");
    for i in imgs.iter().rev() {
        text += &format!("{},{} 1 2 3 4 {} 5 6 7 8\n", i.stem(), i.class, i.class);
    }
    text
}

#[test]
fn issue_16_labels_are_kept_in_the_index_and_a_changed_file_makes_them_stale() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (classes, imgs) = dataset();
    let val = write_flat_tar(&t.join("val.tar"), &imgs);
    let csv = t.join("LOC_val_solution.csv");
    fs::write(&csv, loc_csv(&imgs)).unwrap();
    let want = expected(&classes, &imgs);

    // Labelled once: the index keeps the labels and the file they came from.
    let (src, first) = open_ok(&val, &with_labels(t, &csv, None));
    assert_eq!(samples(&*src), want);
    assert!(!first.labels_from_index);
    let (src, again) = open_ok(&val, &opts(t));
    assert_eq!(samples(&*src), want);
    assert_eq!(src.classes(), classes);
    assert_eq!(
        (again.layout, again.labels_from_index),
        (Layout::FlatTar, true)
    );
    assert_eq!(again.labels_file.as_deref(), Some(csv.as_path()));
    assert_eq!((again.indexes_loaded, again.members_scanned), (1, 0));
    // The same contents under another name are the same labels.
    let copy = t.join("copy.csv");
    fs::copy(&csv, &copy).unwrap();
    let (_, r) = open_ok(&val, &with_labels(t, &copy, None));
    assert!(r.labels_from_index, "{r:?}");

    // The recorded file changed: the stored labels are stale, read again, and stored anew.
    let mut moved = imgs.clone();
    moved[0].class = classes[2].clone();
    fs::write(&csv, loc_csv(&moved)).unwrap();
    let (src, r) = open_ok(&val, &opts(t));
    assert!(!r.labels_from_index, "{r:?}");
    assert!(r.notes.iter().any(|n| n.contains("read again")), "{r:?}");
    assert_eq!(r.members_scanned, 0, "relabelling rescanned the tar");
    let moved_want = {
        let mut m = moved.clone();
        m.sort_by_key(|i| (classes.iter().position(|c| c == &i.class), i.rel.clone()));
        expected(&classes, &m)
    };
    assert_eq!(samples(&*src), moved_want);
    let (_, r) = open_ok(&val, &opts(t));
    assert!(r.labels_from_index, "{r:?}");
    // A given file that differs from the stored labels wins over them.
    let (src, r) = open_ok(&val, &with_labels(t, &copy, None));
    assert!(!r.labels_from_index);
    assert_eq!(samples(&*src), want);

    // A broken recorded file is an error naming it and the line, never the old labels.
    fs::write(&copy, "ImageId,PredictionString\nILSVRC2012_val_00000001\n").unwrap();
    fs::remove_file(&csv).unwrap();
    let err = open(&val, &opts(t)).unwrap_err().to_string();
    assert!(
        err.contains("copy.csv:2") && err.contains("ImageId,PredictionString"),
        "{err}"
    );
    // A recorded file that is gone leaves the stored labels in force.
    fs::remove_file(&copy).unwrap();
    let (src, r) = open_ok(&val, &opts(t));
    assert!(
        r.labels_from_index && r.notes.iter().any(|n| n.contains("is gone")),
        "{r:?}"
    );
    assert_eq!(samples(&*src), want);
}

#[test]
fn issue_16_damaged_label_sections_are_never_trusted() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (classes, imgs) = dataset();
    let val = write_flat_tar(&t.join("val.tar"), &imgs);
    let csv = t.join("LOC_val_solution.csv");
    fs::write(&csv, loc_csv(&imgs)).unwrap();
    let want = expected(&classes, &imgs);
    open_ok(&val, &with_labels(t, &csv, None));
    let good = fs::read(idx(&val)).unwrap();
    let sources_len = u64::from_le_bytes(good[144..152].try_into().unwrap()) as usize;
    assert!(sources_len > 16, "no label sources section");
    let sources_at = good.len() - sources_len;

    let check = |bytes: &[u8], why: &str| {
        fs::write(idx(&val), bytes).unwrap();
        // Without a labels file: refused, never opened with wrong labels.
        let err = open(
            &val,
            &OpenOptions {
                index: IndexPolicy::ReadOnly,
                ..opts(t)
            },
        )
        .unwrap_err();
        assert!(matches!(err, Error::NeedsLabels { .. }), "{why}: {err}");
        // With one: rebuilt, with the right labels.
        let (src, report) = open_ok(&val, &with_labels(t, &csv, None));
        assert_rebuilt(&report, why);
        assert_eq!(samples(&*src), want);
        assert_eq!(fs::read(idx(&val)).unwrap(), good);
    };
    // A label outside the class table.
    let mut b = good.clone();
    b[RECORDS_AT + 16..RECORDS_AT + 20].copy_from_slice(&3u32.to_le_bytes());
    fix_checksum(&mut b);
    check(&b, "out of range");
    // The labelled flag on a section-less index, and a section without the flag.
    let mut b = good.clone();
    b[160..164].copy_from_slice(&0u32.to_le_bytes());
    fix_checksum(&mut b);
    check(&b, "disagree");
    let mut b = good.clone();
    b[160..164].copy_from_slice(&3u32.to_le_bytes());
    fix_checksum(&mut b);
    check(&b, "unknown flags");
    // A path length running past the section, and a huge one.
    for len in [sources_len as u32, u32::MAX] {
        let mut b = good.clone();
        b[sources_at + 12..sources_at + 16].copy_from_slice(&len.to_le_bytes());
        fix_checksum(&mut b);
        check(&b, "label source");
    }
    // A section length that disagrees with the file's.
    let mut b = good.clone();
    b[144..152].copy_from_slice(&(sources_len as u64 + 1).to_le_bytes());
    fix_checksum(&mut b);
    check(&b, "truncated or corrupt");
    // A corrupt byte anywhere in the section.
    let mut b = good.clone();
    b[sources_at + 20] ^= 0x20;
    check(&b, "checksum");
    // A version 2 index (no labels section) of the same tar.
    let mut b = good.clone();
    b[8..12].copy_from_slice(&2u32.to_le_bytes());
    fix_checksum(&mut b);
    check(&b, "format version 2, older");
}
