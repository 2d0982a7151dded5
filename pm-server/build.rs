//! Build script:
//! - rebuild when migrations change (`sqlx::migrate!` embeds them at compile time);
//! - embed the built web app (`web/dist`, committed) by generating `$OUT_DIR/web_assets.rs`, a
//!   table of `(path, include_bytes!, etag)` that `src/web.rs` serves. Generated here rather than
//!   with an embedding crate: no extra dependencies, and debug and release builds embed alike.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    let dist = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"))
        .join("web")
        .join("dist");
    // A directory: cargo re-runs when any file below it changes.
    println!("cargo:rerun-if-changed={}", dist.display());
    let mut files = Vec::new();
    if dist.is_dir() {
        collect(&dist, &dist, &mut files);
    }
    files.sort();
    let mut out = String::from(
        "/// The files of `web/dist`: path relative to it (`/`-separated), contents, ETag.\n\
         pub static FILES: &[(&str, &[u8], &str)] = &[\n",
    );
    for (rel, abs) in &files {
        let bytes = std::fs::read(abs).expect("read web/dist file");
        let etag = format!("\"{:016x}\"", fnv1a(&bytes));
        writeln!(out, "    ({rel:?}, include_bytes!({:?}), {etag:?}),", abs.display().to_string())
            .expect("write to string");
    }
    out.push_str("];\n");
    let target =
        PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it")).join("web_assets.rs");
    std::fs::write(target, out).expect("write web_assets.rs");
}

fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) {
    let entries = std::fs::read_dir(dir).expect("read web/dist");
    for entry in entries {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            collect(root, &path, files);
        } else {
            let rel = path.strip_prefix(root).expect("below root");
            let rel = rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>();
            files.push((rel.join("/"), path));
        }
    }
}

/// FNV-1a, 64 bit: a content fingerprint for ETags (not a security boundary).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}
