//! A large redrive from the web console survives `kill -9` at any moment: the `keybus` binary
//! on its durable store dead-letters N messages, the console redrives all of them, the process
//! is killed (SIGKILL) a few milliseconds into the request, and after a restart every message
//! is in exactly one place (the queue or its dead-letter queue), once. Repeated with several
//! delays, so the kill lands before, during and after the store batch.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use keybus_client::{Connection, Endpoint, Message, Outcome, Properties, ReceiverOptions, Value};

const N: usize = 2000;
const T: Duration = Duration::from_secs(20);
const CONFIG: &str = r#"
[[sas_policies]]
name = "root"
key = "root-key"
rights = ["Manage", "Send", "Listen"]

[[queues]]
name = "crash-q"
"#;

/// A running `keybus serve` and what it printed.
struct Keybus {
    child: Child,
    amqp: u16,
    http: u16,
    console: String,
}

impl Keybus {
    fn start(dir: &Path) -> Keybus {
        let config = dir.join("keybus.toml");
        std::fs::write(&config, CONFIG).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_keybus"))
            .args(["serve", "--data-dir"])
            .arg(dir.join("data"))
            .args([
                "--amqp-port",
                "0",
                "--http-port",
                "0",
                "--bind",
                "127.0.0.1",
            ])
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        // Drain stdout for the process's lifetime (a full pipe would block it).
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (mut amqp, mut http, mut console) = (0, 0, String::new());
        while console.is_empty() {
            let line = rx.recv_timeout(T).expect("keybus printed its console line");
            let port = |l: &str| l.rsplit(':').next().unwrap().trim().parse::<u16>().unwrap();
            if line.starts_with("keybus: amqp listening on ") {
                amqp = port(&line);
            } else if line.starts_with("keybus: http listening on ") {
                http = port(&line);
            } else if let Some(url) = line.strip_prefix("keybus: console: ") {
                console = url.trim().to_string();
            }
        }
        Keybus {
            child,
            amqp,
            http,
            console,
        }
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::parse(&format!(
            "Endpoint=sb://127.0.0.1:{};SharedAccessKeyName=root;SharedAccessKey=root-key",
            self.amqp
        ))
        .unwrap()
    }

    async fn client(&self) -> Connection {
        let mut c = Connection::connect(&self.endpoint(), T).await.unwrap();
        for e in ["crash-q", "crash-q/$DeadLetterQueue"] {
            c.put_token(e, T).await.unwrap();
        }
        c
    }

    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// One HTTP/1.1 request; the status and the whole answer.
fn http(port: u16, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    (status, out)
}

/// Sign in with the printed one-time token: the cookie and the CSRF token.
fn sign_in(k: &Keybus) -> (String, String) {
    let path = &k.console[k.console.find("/console/").unwrap()..];
    let (status, answer) = http(
        k.http,
        &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(status, 200, "{answer}");
    let cookie = answer
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let (_, page) = http(
        k.http,
        &format!(
            "GET /console/ HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
        ),
    );
    let at = page.find("name=\"keybus-csrf\" content=\"").unwrap() + 28;
    (cookie, page[at..at + 64].to_string())
}

/// Every message id in `entity`, with how often it is there.
async fn ids(c: &mut Connection, entity: &str, into: &mut BTreeMap<String, usize>) -> usize {
    let mut from = 0;
    let mut n = 0;
    loop {
        let page = c.peek(entity, from, 500, T).await.unwrap();
        let Some(last) = page.last() else { return n };
        from = last
            .message_annotations
            .as_ref()
            .and_then(|a| keybus_client::Value::as_i64(map_get(a, "x-opt-sequence-number")?))
            .unwrap()
            + 1;
        for m in &page {
            let id = m
                .properties
                .as_ref()
                .and_then(|p| p.message_id.as_ref())
                .and_then(Value::as_str)
                .unwrap()
                .to_string();
            *into.entry(id).or_default() += 1;
            n += 1;
        }
    }
}

fn map_get<'a>(map: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    map.iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

/// Move every active message of the queue to its dead-letter queue.
async fn dead_letter_all(c: &mut Connection) {
    let rcv = c
        .create_receiver("crash-q", &ReceiverOptions::default(), T)
        .await
        .unwrap();
    loop {
        let got = c
            .receive(rcv, 500, Duration::from_millis(500))
            .await
            .unwrap();
        let (Some(first), Some(last)) = (got.first(), got.last()) else {
            return;
        };
        let outcome = Outcome::DeadLetter {
            reason: Some("Crash".into()),
            description: None,
        };
        c.settle_range(rcv, first, last, outcome, T).await.unwrap();
    }
}

/// Where every message is: (in the queue, in the dead-letter queue), each id exactly once.
async fn census(k: &Keybus) -> (usize, usize) {
    let mut c = k.client().await;
    let mut seen = BTreeMap::new();
    let main = ids(&mut c, "crash-q", &mut seen).await;
    let dlq = ids(&mut c, "crash-q/$DeadLetterQueue", &mut seen).await;
    assert_eq!(seen.len(), N, "every message is somewhere");
    assert!(
        seen.values().all(|n| *n == 1),
        "no message is in two places"
    );
    (main, dlq)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_redrive_leaves_every_message_in_exactly_one_place() {
    let dir: PathBuf = std::env::temp_dir().join(format!(
        "keybus-redrive-crash-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut k = Keybus::start(&dir);
    {
        let mut c = k.client().await;
        let snd = c.create_sender("crash-q", T).await.unwrap();
        for chunk in 0..N / 100 {
            let batch: Vec<Message> = (0..100)
                .map(|i| Message {
                    properties: Some(Properties {
                        message_id: Some(Value::String(format!("m{:05}", chunk * 100 + i))),
                        ..Properties::default()
                    }),
                    body_raw: Message::body_data(b"redrive me"),
                    ..Message::default()
                })
                .collect();
            c.send_batch(snd, &batch, T).await.unwrap();
        }
    }
    let mut outcomes = Vec::new();
    for delay_ms in [0u64, 5, 25, 100, 400] {
        {
            let mut c = k.client().await;
            dead_letter_all(&mut c).await;
        }
        assert_eq!(census(&k).await, (0, N));
        let (cookie, csrf) = sign_in(&k);
        let port = k.http;
        let body = "which=all";
        let request = format!(
            "POST /console/redrive?e=crash-q HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\nX-Keybus-Csrf: {csrf}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let post = std::thread::spawn(move || http(port, &request));
        std::thread::sleep(Duration::from_millis(delay_ms));
        k.kill9();
        let _ = post.join();
        k = Keybus::start(&dir);
        let (main, dlq) = census(&k).await;
        assert!(
            (main, dlq) == (N, 0) || (main, dlq) == (0, N),
            "a redrive is one batch: all or nothing, got {main} + {dlq}"
        );
        outcomes.push((delay_ms, main));
    }
    k.kill9();
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("redrive kill outcomes (delay ms, messages redriven): {outcomes:?}");
}
