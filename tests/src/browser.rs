//! Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
//! JSON messages separated by NUL on file descriptors 3 and 4), so the browser can run
//! inside a network namespace and no WebSocket client is needed. Debian's `chromium`.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::lab::netns::Netns;

/// Flags for a quiet, reproducible, offline browser: no sandbox (root in CI), no GPU, no
/// background or component traffic, names resolve to nothing but 127.0.0.1.
pub const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--mute-audio",
    "--hide-scrollbars",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--remote-debugging-pipe",
];

const CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Browser {
    child: Child,
    to: ChildStdin,
    from: Receiver<Value>,
    next_id: u64,
    /// Every event received so far (method, params, sessionId).
    pub events: Vec<Value>,
    _profile: tempfile::TempDir,
    log: std::path::PathBuf,
}

/// One tab, attached with a flat session.
pub struct Page {
    pub session: String,
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl Browser {
    /// Start Chromium (inside `ns` when given); its stderr goes to `logdir/chromium.log`.
    pub fn start(ns: Option<&Netns>, logdir: &Path) -> Browser {
        let profile = tempfile::Builder::new()
            .prefix("pathpulse-chromium-")
            .tempdir()
            .expect("profile dir");
        let mut args: Vec<String> = FLAGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        args.push("about:blank".into());
        let cmdline = args.iter().map(|a| shell_quote(a)).collect::<Vec<_>>();
        // The pipe is fds 3 (commands in) and 4 (replies out): moved from stdin/stdout.
        let script = format!(
            "exec chromium {} 3<&0 4>&1 0</dev/null 1>&2",
            cmdline.join(" ")
        );
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns.name, "bash", "-c", &script]);
                c
            }
            None => {
                let mut c = Command::new("bash");
                c.args(["-c", &script]);
                c
            }
        };
        let log = logdir.join("chromium.log");
        let err = std::fs::File::create(&log).expect("chromium log");
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .expect("start chromium");
        let to = child.stdin.take().expect("stdin");
        let mut out = child.stdout.take().expect("stdout");
        let (tx, from) = channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut chunk = vec![0u8; 1 << 16];
            loop {
                let n = match out.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                while let Some(end) = buf.iter().position(|&b| b == 0) {
                    let msg: Vec<u8> = buf.drain(..=end).collect();
                    if let Ok(v) = serde_json::from_slice::<Value>(&msg[..msg.len() - 1])
                        && tx.send(v).is_err()
                    {
                        return;
                    }
                }
            }
        });
        Browser {
            child,
            to,
            from,
            next_id: 0,
            events: Vec::new(),
            _profile: profile,
            log,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Send a command (to a page when `session` is given) and wait for its result.
    pub fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).expect("json");
        bytes.push(0);
        self.to
            .write_all(&bytes)
            .and_then(|()| self.to.flush())
            .unwrap_or_else(|e| panic!("{method}: browser pipe closed: {e}\n{}", self.log()));
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.from.recv_timeout(left) {
                Ok(v) if v.get("id").and_then(Value::as_u64) == Some(id) => {
                    if let Some(e) = v.get("error") {
                        panic!("{method}: {e}");
                    }
                    return v.get("result").cloned().unwrap_or(Value::Null);
                }
                Ok(v) => self.events.push(v),
                Err(RecvTimeoutError::Timeout) => panic!("{method}: no answer in 30 s"),
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("{method}: browser exited\n{}", self.log())
                }
            }
        }
    }

    /// A new tab with the Network, Page and Runtime domains on, at `width` × `height`.
    pub fn page(&mut self, width: u32, height: u32) -> Page {
        let target = self.call(None, "Target.createTarget", json!({ "url": "about:blank" }));
        let id = target["targetId"].as_str().expect("targetId").to_string();
        let att = self.call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": id, "flatten": true }),
        );
        let page = Page {
            session: att["sessionId"].as_str().expect("sessionId").to_string(),
        };
        for domain in ["Network.enable", "Page.enable", "Runtime.enable"] {
            self.call(Some(&page.session), domain, json!({}));
        }
        self.call(
            Some(&page.session),
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
        );
        page
    }

    /// Run `script` in every document the page loads, before the page's own scripts.
    pub fn on_new_document(&mut self, page: &Page, script: &str) {
        self.call(
            Some(&page.session),
            "Page.addScriptToEvaluateOnNewDocument",
            json!({ "source": script }),
        );
    }

    pub fn navigate(&mut self, page: &Page, url: &str) {
        self.call(Some(&page.session), "Page.navigate", json!({ "url": url }));
    }

    /// Evaluate a JS expression (promises awaited); its value as JSON.
    pub fn eval(&mut self, page: &Page, expr: &str) -> Value {
        let r = self.call(
            Some(&page.session),
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
        );
        if let Some(ex) = r.get("exceptionDetails") {
            panic!("evaluating {expr}: {ex}");
        }
        r["result"].get("value").cloned().unwrap_or(Value::Null)
    }

    /// Press and release a key as the user would (`Input.dispatchKeyEvent`, the real
    /// event path: focus, default actions): `Tab`, `Enter`, `Escape`, `Space`, `Home`,
    /// `End`, `PageUp`, `PageDown` or an arrow (`ArrowLeft` ...).
    pub fn key(&mut self, page: &Page, key: &str) {
        let (code, vk, text) = match key {
            "Tab" => ("Tab", 9, ""),
            "Enter" => ("Enter", 13, "\r"),
            "Escape" => ("Escape", 27, ""),
            "Space" => ("Space", 32, " "),
            "PageUp" => ("PageUp", 33, ""),
            "PageDown" => ("PageDown", 34, ""),
            "End" => ("End", 35, ""),
            "Home" => ("Home", 36, ""),
            "ArrowLeft" => ("ArrowLeft", 37, ""),
            "ArrowUp" => ("ArrowUp", 38, ""),
            "ArrowRight" => ("ArrowRight", 39, ""),
            "ArrowDown" => ("ArrowDown", 40, ""),
            other => panic!("key {other:?} is not mapped"),
        };
        let name = if key == "Space" { " " } else { key };
        let down = if text.is_empty() {
            "rawKeyDown"
        } else {
            "keyDown"
        };
        let mut ev = json!({ "type": down, "key": name, "code": code,
            "windowsVirtualKeyCode": vk, "nativeVirtualKeyCode": vk });
        if !text.is_empty() {
            ev["text"] = json!(text);
            ev["unmodifiedText"] = json!(text);
        }
        self.call(Some(&page.session), "Input.dispatchKeyEvent", ev);
        self.call(
            Some(&page.session),
            "Input.dispatchKeyEvent",
            json!({ "type": "keyUp", "key": name, "code": code,
                "windowsVirtualKeyCode": vk, "nativeVirtualKeyCode": vk }),
        );
    }

    /// Emulate `prefers-color-scheme: dark` (or light).
    pub fn color_scheme(&mut self, page: &Page, scheme: &str) {
        self.call(
            Some(&page.session),
            "Emulation.setEmulatedMedia",
            json!({ "features": [{ "name": "prefers-color-scheme", "value": scheme }] }),
        );
    }

    /// A PNG of the whole page.
    pub fn screenshot(&mut self, page: &Page) -> Vec<u8> {
        let r = self.call(
            Some(&page.session),
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": true }),
        );
        base64_decode(r["data"].as_str().expect("screenshot data"))
    }

    /// URLs of every request a page made (from `Network.requestWillBeSent`), after letting
    /// pending messages in.
    pub fn requests(&mut self, page: &Page) -> Vec<String> {
        while let Ok(v) = self.from.recv_timeout(Duration::from_millis(100)) {
            self.events.push(v);
        }
        self.events
            .iter()
            .filter(|e| {
                e["method"] == "Network.requestWillBeSent"
                    && e["sessionId"].as_str() == Some(&page.session)
            })
            .filter_map(|e| e["params"]["request"]["url"].as_str().map(String::from))
            .collect()
    }

    /// Hold the page's requests matching `url_pattern` (`*` wildcards) for
    /// [`fulfill_paused`](Self::fulfill_paused) to answer.
    pub fn intercept(&mut self, page: &Page, url_pattern: &str) {
        self.call(
            Some(&page.session),
            "Fetch.enable",
            json!({ "patterns": [{ "urlPattern": url_pattern }] }),
        );
    }

    pub fn stop_intercepting(&mut self, page: &Page) {
        self.call(Some(&page.session), "Fetch.disable", json!({}));
    }

    /// Answer every request held so far with `status` and a JSON `body`; how many.
    pub fn fulfill_paused(&mut self, page: &Page, status: u16, body: &str) -> usize {
        while let Ok(v) = self.from.recv_timeout(Duration::from_millis(50)) {
            self.events.push(v);
        }
        let is_paused = |e: &Value| {
            e["method"] == "Fetch.requestPaused" && e["sessionId"].as_str() == Some(&page.session)
        };
        let ids: Vec<String> = self
            .events
            .iter()
            .filter(|e| is_paused(e))
            .filter_map(|e| e["params"]["requestId"].as_str().map(String::from))
            .collect();
        self.events.retain(|e| !is_paused(e));
        for id in &ids {
            self.call(
                Some(&page.session),
                "Fetch.fulfillRequest",
                json!({
                    "requestId": id,
                    "responseCode": status,
                    "responseHeaders": [{ "name": "Content-Type", "value": "application/json" }],
                    "body": base64_encode(body.as_bytes()),
                }),
            );
        }
        ids.len()
    }

    /// Messages the page logged as errors or exceptions it threw.
    pub fn page_errors(&self, page: &Page) -> Vec<String> {
        self.events
            .iter()
            .filter(|e| e["sessionId"].as_str() == Some(&page.session))
            .filter(|e| {
                e["method"] == "Runtime.exceptionThrown"
                    || (e["method"] == "Runtime.consoleAPICalled" && e["params"]["type"] == "error")
            })
            .map(|e| e["params"].to_string())
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (bodies handed to the browser).
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64 (the screenshot encoding).
pub fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for v in s.bytes().filter_map(val) {
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_round_trips_known_vectors() {
        assert_eq!(super::base64_decode("TWFu"), b"Man");
        assert_eq!(super::base64_decode("TWE="), b"Ma");
        assert_eq!(super::base64_decode("TQ=="), b"M");
        assert_eq!(super::base64_decode("iVBORw0KGgo="), b"\x89PNG\r\n\x1a\n");
        for s in [
            &b""[..],
            b"M",
            b"Ma",
            b"Man",
            b"\x89PNG\r\n\x1a\n",
            "→ ünï".as_bytes(),
        ] {
            assert_eq!(super::base64_decode(&super::base64_encode(s)), s);
        }
        assert_eq!(super::base64_encode(b"Ma"), "TWE=");
    }
}
