//! Web path resolution: `RequestPath` (decode once, refuse dot segments, backslashes, NUL and
//! drive letters) and the web server's answer for a real directory tree.
//!
//! Invariants: no panic; a parsed path joins under the root as plain components only, one
//! per segment; its URL form parses back to the same segments; and over a real tree (a
//! public file, a hidden file, a symlink out of the root, a secret beside the root) no request
//! ever gets the hidden or the secret content.
#![no_main]

use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use http_body_util::BodyExt as _;
use hyper::{Request, StatusCode};
use libfuzzer_sys::fuzz_target;
use websockify::fuzzing::web_path;
use websockify::web::WebRoot;

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
}

const SECRET: &[u8] = b"SECRET-OUTSIDE-THE-ROOT";
const HIDDEN: &[u8] = b"HIDDEN-DOT-FILE";

/// A web root with a public file and directory, a hidden file, a hidden directory and a
/// symlink leading out; a secret beside the root. Made once per process.
fn tree() -> &'static (PathBuf, WebRoot) {
    static TREE: OnceLock<(PathBuf, WebRoot)> = OnceLock::new();
    TREE.get_or_init(|| {
        let base = std::env::temp_dir().join(format!("websockify-fuzz-web-{}", std::process::id()));
        let root = base.join("root");
        let make = || -> std::io::Result<()> {
            std::fs::create_dir_all(root.join("pub/sub"))?;
            std::fs::create_dir_all(root.join(".git"))?;
            std::fs::write(base.join("secret.txt"), SECRET)?;
            std::fs::write(root.join("pub/file.txt"), b"public")?;
            std::fs::write(root.join("pub/sub/index.html"), b"<p>index</p>")?;
            std::fs::write(root.join(".hidden"), HIDDEN)?;
            std::fs::write(root.join(".git/config"), HIDDEN)?;
            std::fs::write(root.join("pub/.env"), HIDDEN)?;
            let _ = std::os::unix::fs::symlink(base.join("secret.txt"), root.join("out.txt"));
            let _ = std::os::unix::fs::symlink(&base, root.join("up"));
            Ok(())
        };
        make().expect("the web tree");
        let web = WebRoot::new(&root, false).expect("the web root");
        (web.dir().to_path_buf(), web)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let root = Path::new("/srv/www");
    if let Ok(path) = web_path(raw, root) {
        let inside = path
            .joined
            .strip_prefix(root)
            .expect("joined under the root");
        let parts: Vec<Component> = inside.components().collect();
        assert_eq!(
            parts.len(),
            path.segments.len(),
            "{raw:?} -> {:?}",
            path.joined
        );
        assert!(parts.iter().all(|c| matches!(c, Component::Normal(_))));
        for segment in &path.segments {
            assert!(!segment.is_empty() && !segment.starts_with(b"."));
            assert!(!segment.contains(&b'/') && !segment.contains(&b'\\') && !segment.contains(&0));
        }
        let again = web_path(&path.url_dir, root).expect("the URL form parses");
        assert_eq!(again.segments, path.segments, "URL form {:?}", path.url_dir);
        assert!(again.trailing_slash);
        assert!(path.display_dir.starts_with('/') && path.display_dir.ends_with('/'));
    }

    // The whole answer, over a real tree, for the URIs hyper would hand over.
    let Ok(uri) = raw.parse::<hyper::Uri>() else {
        return;
    };
    let (real_root, web) = tree();
    let Ok(request) = Request::get(uri).body(()) else {
        return;
    };
    RUNTIME.with(|rt| {
        rt.block_on(async {
            let response = web.serve(&request).await;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .expect("the body reads")
                .to_bytes();
            let leaked = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
            assert!(
                !leaked(SECRET),
                "{raw:?} served the secret outside the root"
            );
            assert!(!leaked(HIDDEN), "{raw:?} served a hidden file");
            if status == StatusCode::OK {
                assert!(real_root.exists());
            }
        });
    });
});
