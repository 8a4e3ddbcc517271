//! The data a command trains on, by the name `--data` (or a run header's `data_source`)
//! gives: a text file, token shards (a directory, or a `.bin` file), `tinyshakespeare`
//! (downloaded once and cached), or the embedded corpus; text is tokenised by the config's
//! tokenizer.

use std::path::{Path, PathBuf};
use std::time::Duration;

use simplegpt::data::{Dataset, TokenizerKind};
use simplegpt::record::EMBEDDED_DATA;
use simplegpt::{Error, Result};

/// The names `--data` takes that are not files.
pub const NAMED: [&str; 2] = [EMBEDDED_DATA, TINYSHAKESPEARE];

const TINYSHAKESPEARE: &str = "tinyshakespeare";

const TINYSHAKESPEARE_URL: &str =
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt";

/// The file's length in bytes: a download of any other length is not it.
const TINYSHAKESPEARE_LEN: u64 = 1_115_394;

/// The data `source` names: a text file, token shards, `tinyshakespeare`, or the embedded
/// corpus when none or `embedded`; text tokenised by a `tokenizer`.
pub fn load(source: Option<&str>, tokenizer: TokenizerKind) -> Result<Dataset> {
    match source {
        None | Some(EMBEDDED_DATA) => {
            Dataset::from_text_with(&simplegpt::data::default_corpus(), "the embedded corpus", tokenizer)
        }
        Some(TINYSHAKESPEARE) => Dataset::from_file_with(&tinyshakespeare()?, tokenizer),
        Some(path) if simplegpt::shards::is_shards(Path::new(path)) => {
            let tokenizer = match tokenizer {
                TokenizerKind::Char => simplegpt::data::Tokenizer::from_text(""),
                TokenizerKind::Gpt2 => simplegpt::data::Tokenizer::gpt2(),
            };
            Dataset::from_shards(Path::new(path), &tokenizer)
        }
        Some(path) => Dataset::from_file_with(Path::new(path), tokenizer),
    }
}

/// The data a run directory recorded (its header's `data_source`; the embedded corpus for a
/// run that recorded none), for a command given no --data.
pub fn recorded(dir: &Path, source: Option<&str>, tokenizer: TokenizerKind) -> Result<Dataset> {
    load(source, tokenizer).map_err(|e| match source {
        Some(s) if s != EMBEDDED_DATA => Error::Input(format!(
            "{} was trained on --data {s}, which cannot be used now ({e}); pass --data with its new location",
            dir.display()
        )),
        _ => e,
    })
}

/// The tiny Shakespeare file, downloaded on first use into the cache directory.
fn tinyshakespeare() -> Result<PathBuf> {
    let path = cache_dir()?.join("tinyshakespeare.txt");
    let agent = agent(DOWNLOAD_TIMEOUT, ureq::Proxy::try_from_env());
    download_once(&agent, TINYSHAKESPEARE_URL, &path, TINYSHAKESPEARE_LEN)?;
    Ok(path)
}

/// Where downloads are cached: the platform's cache directory (`$XDG_CACHE_HOME`, else
/// `~/.cache`, on Linux; `~/Library/Caches` on macOS; `%LOCALAPPDATA%` on Windows) +
/// `simplegpt`.
fn cache_dir() -> Result<PathBuf> {
    dirs::cache_dir().map(|dir| dir.join("simplegpt")).ok_or_else(|| {
        Error::Input(format!(
            "found no cache directory to download tiny Shakespeare into (set HOME, or LOCALAPPDATA \
             on Windows); download {TINYSHAKESPEARE_URL} yourself and pass --data PATH"
        ))
    })
}

/// How long a download may take to connect, and to finish.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// An HTTP client with the connect timeout and `total` as the limit on a whole download,
/// through `proxy` (for downloads, the environment's ALL_PROXY, HTTPS_PROXY or HTTP_PROXY, and
/// NO_PROXY; tests pass none, so that a proxy set here cannot take their 127.0.0.1).
fn agent(total: Duration, proxy: Option<ureq::Proxy>) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_global(Some(total))
        .proxy(proxy)
        .build()
        .into()
}

/// Downloads `url` to `path`, unless a file of `len` bytes is there already; true when it
/// downloaded. A response of any other length (an error page, a captive portal, a cut
/// connection) is refused. The file is written whole or not at all (a temp file renamed), so
/// a failed or interrupted download leaves no file under `path`, and the next run tries again.
fn download_once(agent: &ureq::Agent, url: &str, path: &Path, len: u64) -> Result<bool> {
    let cached = std::fs::metadata(path).ok().filter(|m| m.is_file());
    if cached.as_ref().is_some_and(|m| m.len() == len) {
        return Ok(false);
    }
    let failed = |why: String| {
        Error::Input(format!(
            "could not download {url} ({why}); check the connection, or download it yourself and \
             pass --data PATH"
        ))
    };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| failed(format!("cannot create {}: {e}", dir.display())))?;
    match cached {
        Some(m) => {
            eprintln!("downloading {url} to {} again: the file there has {} bytes, not {len}", path.display(), m.len())
        }
        None => eprintln!("downloading {url} to {}", path.display()),
    }
    let bytes = agent
        .get(url)
        .call()
        .and_then(|mut response| response.body_mut().with_config().limit(len).read_to_vec())
        .map_err(|e| failed(describe(e, len)))?;
    if bytes.len() as u64 != len {
        return Err(failed(format!("got {} bytes, expected {len}", bytes.len())));
    }
    simplegpt::files::write_atomic(path, &bytes)?;
    Ok(true)
}

/// A download's error, in words for someone who has to decide what to do about it.
fn describe(e: ureq::Error, len: u64) -> String {
    match e {
        ureq::Error::StatusCode(code) => format!("the server answered HTTP {code}"),
        ureq::Error::HostNotFound => "host not found; offline?".to_string(),
        ureq::Error::Timeout(ureq::Timeout::Connect) => {
            format!("no connection within {} s; offline?", CONNECT_TIMEOUT.as_secs())
        }
        ureq::Error::Timeout(_) => "timed out".to_string(),
        ureq::Error::BodyExceedsLimit(_) => format!("more than the expected {len} bytes"),
        ureq::Error::Io(e) => e.to_string(), // without ureq's "io: " before it
        e => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    const TEXT: &str = "First Citizen:\nBefore we proceed any further, hear me speak.\n";

    /// An empty directory of its own for a test.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("simplegpt-data-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The names in `dir`, sorted.
    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = match std::fs::read_dir(dir) {
            Ok(entries) => entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
    }

    /// A plain-HTTP server on 127.0.0.1 that answers every request with `respond` (given
    /// the connection, after the request is read); its URL and how many requests it got.
    fn serve(respond: impl Fn(&mut TcpStream) + Send + 'static) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/input.txt", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut request = Vec::new();
                let mut byte = [0u8];
                while !request.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                    request.push(byte[0]);
                }
                counted.fetch_add(1, Ordering::SeqCst);
                respond(&mut stream);
            }
        });
        (url, requests)
    }

    /// A server whose every answer is `status` with `body`, and a `Content-Length` of
    /// `length` (the body's own when None).
    fn serve_body(status: &'static str, body: impl Into<Vec<u8>>, length: Option<usize>) -> (String, Arc<AtomicUsize>) {
        let body = body.into();
        serve(move |stream| {
            let length = length.unwrap_or(body.len());
            let head = format!("HTTP/1.1 {status}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n");
            let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(&body));
        })
    }

    fn test_agent() -> ureq::Agent {
        agent(Duration::from_secs(20), None)
    }

    #[test]
    fn downloads_once_into_the_cache() {
        let dir = scratch("once");
        let path = dir.join("cache/simplegpt/tinyshakespeare.txt");
        let (url, requests) = serve_body("200 OK", TEXT, None);
        let agent = test_agent();
        assert!(download_once(&agent, &url, &path, TEXT.len() as u64).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), TEXT);
        // The temp file is gone: the directory holds the file and nothing else.
        assert_eq!(listing(path.parent().unwrap()), ["tinyshakespeare.txt"]);
        // A second call finds it and asks the server for nothing.
        assert!(!download_once(&agent, &url, &path, TEXT.len() as u64).unwrap());
        assert_eq!(requests.load(Ordering::SeqCst), 1);
        // The cached file is data that loads.
        let data = Dataset::from_file(&path).unwrap();
        assert!(data.tokenizer.vocab_size() > 10);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn replaces_a_cached_file_of_the_wrong_length() {
        let dir = scratch("replace");
        let path = dir.join("tinyshakespeare.txt");
        std::fs::write(&path, "<html>captive portal</html>").unwrap();
        let (url, requests) = serve_body("200 OK", TEXT, None);
        assert!(download_once(&test_agent(), &url, &path, TEXT.len() as u64).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), TEXT);
        assert_eq!(requests.load(Ordering::SeqCst), 1);
        assert_eq!(listing(&dir), ["tinyshakespeare.txt"]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Downloads from `url` into a fresh directory, expecting a failure: its message, after
    /// checking that it names the URL and the way out, and that no file was left behind.
    fn fails(name: &str, agent: &ureq::Agent, url: &str) -> String {
        let dir = scratch(name);
        let path = dir.join("tinyshakespeare.txt");
        let e = download_once(agent, url, &path, TEXT.len() as u64).unwrap_err().to_string();
        assert!(e.contains(url) && e.contains("--data PATH") && !e.contains('\n'), "{e}");
        assert!(listing(&dir).is_empty(), "{name} left {:?}", listing(&dir));
        std::fs::remove_dir_all(dir).unwrap();
        e
    }

    #[test]
    fn a_failed_download_leaves_no_file() {
        let agent = test_agent();
        let (url, _) = serve_body("404 Not Found", "404: Not Found", None);
        assert!(fails("404", &agent, &url).contains("HTTP 404"));
        let (url, _) = serve_body("200 OK", "<html>log in to the wifi</html>", None);
        assert!(fails("short", &agent, &url).contains(&format!("expected {}", TEXT.len())));
        let (url, _) = serve_body("200 OK", TEXT.repeat(2), None);
        assert!(fails("long", &agent, &url).contains("more than the expected"));
        // The connection cut halfway through the promised length.
        let (url, _) = serve_body("200 OK", &TEXT[..20], Some(TEXT.len()));
        fails("cut", &agent, &url);
        // Nothing listening: offline, as far as the client can tell.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        fails("refused", &agent, &format!("http://127.0.0.1:{port}/input.txt"));
    }

    #[test]
    fn a_stalled_download_times_out() {
        // Answers the headers, then sends nothing more and keeps the connection open.
        let (url, _) = serve(|stream| {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{}", TEXT.len(), &TEXT[..10]);
            let _ = stream.write_all(head.as_bytes());
            std::thread::sleep(Duration::from_secs(30));
        });
        let start = std::time::Instant::now();
        let e = fails("stalled", &agent(Duration::from_secs(1), None), &url);
        assert!(e.contains("timed out"), "{e}");
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    /// On Linux the cache is `$XDG_CACHE_HOME/simplegpt` when that is an absolute path, else
    /// `$HOME/.cache/simplegpt`. Checked in child processes of this test binary, each given
    /// its environment from the start (setting variables in a running, threaded test binary
    /// is a data race).
    #[cfg(target_os = "linux")]
    #[test]
    fn the_cache_dir_follows_xdg_cache_home() {
        const EXPECT: &str = "SIMPLEGPT_TEST_EXPECT_CACHE_DIR";
        if let Some(expected) = std::env::var_os(EXPECT) {
            assert_eq!(cache_dir().unwrap(), PathBuf::from(expected));
            return;
        }
        let check = |xdg: Option<&str>, expected: &str| {
            let mut child = std::process::Command::new(std::env::current_exe().unwrap());
            child.args(["--exact", "data::tests::the_cache_dir_follows_xdg_cache_home", "--test-threads=1"]);
            child.env("HOME", "/home/someone").env(EXPECT, expected);
            match xdg {
                Some(xdg) => child.env("XDG_CACHE_HOME", xdg),
                None => child.env_remove("XDG_CACHE_HOME"),
            };
            let out = child.output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success() && stdout.contains("1 passed"), "XDG_CACHE_HOME={xdg:?}: {stdout}");
        };
        check(Some("/elsewhere/cache"), "/elsewhere/cache/simplegpt");
        check(None, "/home/someone/.cache/simplegpt");
        // The XDG spec says a relative path is to be ignored.
        check(Some("relative/cache"), "/home/someone/.cache/simplegpt");
    }
}
