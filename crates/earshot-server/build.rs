//! Embeds every file of `web/` into the binary: generates the asset table that
//! `src/http.rs` includes, so adding a file to the web client needs no Rust
//! change and a running server never reads the disk.
//!
//! Text assets are also embedded precompressed (brotli and gzip), each with
//! an ETag made from its content, so a first visit downloads little and a
//! returning one only revalidates. `index.html` gets a `modulepreload` link
//! for every module `app.js` imports, directly or not, so the browser fetches
//! them all at once instead of discovering them one import at a time.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::io::Write as _;
use std::path::Path;

fn content_type(name: &str) -> Option<&'static str> {
    let ext = name.rsplit_once('.')?.1;
    Some(match ext {
        "html" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "svg" => "image/svg+xml",
        "txt" => "text/plain; charset=utf-8",
        "json" => "application/json",
        "png" => "image/png",
        "woff2" => "font/woff2",
        _ => return None,
    })
}

/// Formats already compressed gain nothing from another pass.
fn compressible(name: &str) -> bool {
    !(name.ends_with(".png") || name.ends_with(".woff2"))
}

/// FNV-1a: an ETag needs to change with the content, not to resist anyone.
fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The modules `./x.js` that a module's `import … from './x.js'` lines name.
fn imports(source: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in source.lines() {
        let line = line.trim_start();
        if !(line.starts_with("import ") || line.starts_with("} from ")) {
            continue;
        }
        for quote in ['\'', '"'] {
            let needle = format!("{quote}./");
            if let Some(at) = line.find(&needle) {
                let rest = &line[at + needle.len()..];
                if let Some(end) = rest.find(quote)
                    && rest[..end].ends_with(".js")
                {
                    found.push(rest[..end].to_string());
                }
            }
        }
    }
    found
}

/// Every module reachable from `entry` by static imports.
fn module_graph(web: &Path, entry: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![entry.to_string()];
    while let Some(module) = todo.pop() {
        if !seen.insert(module.clone()) {
            continue;
        }
        let source = std::fs::read_to_string(web.join(&module))
            .unwrap_or_else(|e| panic!("web/{module} is imported but unreadable: {e}"));
        todo.extend(imports(&source));
    }
    seen
}

/// `index.html` with a `modulepreload` link per module, before its script.
fn with_preloads(html: &str, modules: &BTreeSet<String>) -> String {
    let script = "<script type=\"module\" src=\"/app.js\"></script>";
    assert!(
        html.contains(script),
        "index.html loads /app.js as a module"
    );
    let mut links = String::new();
    // app.js itself is the script that follows.
    for m in modules.iter().filter(|m| *m != "app.js") {
        writeln!(links, "<link rel=\"modulepreload\" href=\"/{m}\">").expect("writing to a String");
    }
    html.replacen(script, &format!("{links}{script}"), 1)
}

fn brotli(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let params = brotli::enc::BrotliEncoderParams {
        quality: 11,
        lgwin: 22,
        ..Default::default()
    };
    brotli::BrotliCompress(&mut &bytes[..], &mut out, &params).expect("in-memory brotli");
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(bytes).expect("in-memory gzip");
    e.finish().expect("in-memory gzip")
}

fn main() {
    // Read when it runs, not when it was compiled: a build script compiled
    // in another checkout (a copied target/) must still embed this web/.
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let web = Path::new(&manifest).join("../../web");
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo::rerun-if-changed={}", web.display());
    let mut names: Vec<String> = std::fs::read_dir(&web)
        .expect("web/ exists next to crates/")
        .map(|e| e.expect("readable web/ entry"))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| {
            e.file_name()
                .into_string()
                .expect("UTF-8 file names in web/")
        })
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    let modules = module_graph(&web, "app.js");
    let mut table = String::from("&[\n");
    for name in &names {
        let Some(kind) = content_type(name) else {
            println!("cargo::warning=web/{name}: unknown file type, not embedded");
            continue;
        };
        let mut body = std::fs::read(web.join(name)).expect("readable web/ file");
        if name == "index.html" {
            let html = String::from_utf8(body).expect("UTF-8 index.html");
            body = with_preloads(&html, &modules).into_bytes();
        }
        let stem = out_dir.join(format!("asset-{name}"));
        std::fs::write(&stem, &body).expect("writable OUT_DIR");
        let variant = |suffix: &str, bytes: Option<Vec<u8>>| match bytes {
            // Only worth sending when it is smaller.
            Some(b) if b.len() < body.len() => {
                let path = format!("{}.{suffix}", stem.display());
                std::fs::write(&path, b).expect("writable OUT_DIR");
                format!("Some(include_bytes!({path:?}))")
            }
            _ => "None".to_string(),
        };
        let (br, gz) = if compressible(name) {
            (
                variant("br", Some(brotli(&body))),
                variant("gz", Some(gzip(&body))),
            )
        } else {
            ("None".into(), "None".into())
        };
        writeln!(
            table,
            "    Asset {{ name: {name:?}, content_type: {kind:?}, etag: \"{:016x}\", \
             body: include_bytes!({:?}), br: {br}, gzip: {gz} }},",
            fnv64(&body),
            stem.display().to_string()
        )
        .expect("writing to a String");
    }
    table.push(']');
    std::fs::write(out_dir.join("assets.rs"), table).expect("writable OUT_DIR");
}
