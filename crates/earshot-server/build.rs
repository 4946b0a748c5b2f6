//! Embeds every file of `web/` into the binary: generates the asset table that
//! `src/http.rs` includes, so adding a file to the web client needs no Rust
//! change and a running server never reads the disk.

use std::fmt::Write;
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

fn main() {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web");
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
    let mut table = String::from("&[\n");
    for name in &names {
        let Some(kind) = content_type(name) else {
            println!("cargo::warning=web/{name}: unknown file type, not embedded");
            continue;
        };
        let path = web.join(name);
        writeln!(
            table,
            "    Asset {{ name: {name:?}, content_type: {kind:?}, body: include_bytes!({:?}) }},",
            path.display().to_string()
        )
        .expect("writing to a String");
    }
    table.push(']');
    let out = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("assets.rs");
    std::fs::write(out, table).expect("writable OUT_DIR");
}
