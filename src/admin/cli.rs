//! `rmq-gateway admin …`: a command-line client of the admin HTTP API. Today `admin message
//! get|trace|find` (the message trace lookup); the subcommand tree leaves room for more
//! (topics, groups). Talks plain HTTP/1.1 (hyper) to `--server` (or `RMQ_GATEWAY_ADMIN_URL`;
//! else the admin port of `--config`/`RMQ_GATEWAY_CONFIG`; else `http://127.0.0.1:8080`) and
//! prints readable tables, or the API's JSON with `--json`.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Uri, header};
use clap::{Args, Subcommand};
use serde_json::Value;

/// How long one admin call may take, connection included.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Most response bytes read.
const MAX_RESPONSE_BYTES: usize = 64 << 20;

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The gateway's admin HTTP address. Default: from `--config` (`server.bindAddress`,
    /// `server.httpServerPort`), else `http://127.0.0.1:8080`.
    #[arg(long, global = true, env = "RMQ_GATEWAY_ADMIN_URL")]
    pub server: Option<String>,
    /// The gateway's configuration file, to find its admin port.
    #[arg(short, long, global = true, env = "RMQ_GATEWAY_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Messages: find by id or key, show a lifecycle.
    Message {
        #[command(subcommand)]
        command: MessageCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum MessageCommand {
    /// A message by id: headers, properties, body preview, where it is stored.
    Get { id: String },
    /// A message's lifecycle: stored, deliveries, acks, DLQ… and each group's status.
    Trace {
        id: String,
        /// Most consumer-journal records to scan.
        #[arg(long)]
        max_journal_records: Option<usize>,
    },
    /// Messages of a topic by key.
    Find {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        key: String,
        /// The topic's namespace (when `--topic` is the plain name).
        #[arg(long)]
        namespace: Option<String>,
    },
}

/// Percent-encodes a path segment or query value.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `GET server + path`: status and body.
async fn get(server: &str, path: &str) -> Result<(u16, String), String> {
    let uri: Uri = format!("{}{path}", server.trim_end_matches('/'))
        .parse()
        .map_err(|e| format!("bad --server `{server}`: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("--server `{server}` must be an http:// URL"));
    }
    let host = uri.host().ok_or_else(|| format!("--server `{server}` has no host"))?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let authority = uri.authority().map(|a| a.to_string()).unwrap_or_else(|| host.clone());
    let stream = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake with {authority} failed: {e}"))?;
    tokio::spawn(connection);
    let target = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let request = Request::get(target)
        .header(header::HOST, authority.as_str())
        .header(header::ACCEPT, "application/json")
        .body(Body::empty())
        .map_err(|e| e.to_string())?;
    let response = sender.send_request(request).await.map_err(|e| format!("GET {uri} failed: {e}"))?;
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(Body::new(response.into_body()), MAX_RESPONSE_BYTES)
        .await
        .map_err(|e| format!("reading the answer of GET {uri} failed: {e}"))?;
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Rows as a left-aligned table with a header.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
    out
}

/// The header block of a message.
pub fn format_message(m: &Value) -> String {
    let mut out = String::new();
    let keys: Vec<String> = m["keys"].as_array().map(|a| a.iter().map(text).collect()).unwrap_or_default();
    let _ = writeln!(out, "Message   {}", text(&m["messageId"]));
    let _ = writeln!(
        out,
        "Topic     {}   type {}   tag {}   keys {}",
        text(&m["topic"]),
        text(&m["type"]),
        text(&m["tag"]),
        if keys.is_empty() { "-".into() } else { keys.join(",") }
    );
    let _ = writeln!(out, "Born      {}   host {}", text(&m["bornTime"]), text(&m["bornHost"]));
    let body = &m["body"];
    let _ = writeln!(
        out,
        "Body      {} bytes ({}{}): {}",
        text(&body["size"]),
        text(&body["encoding"]),
        if body["truncated"] == Value::Bool(true) { ", truncated" } else { "" },
        text(&body["data"]).chars().take(200).collect::<String>()
    );
    let stored: Vec<Vec<String>> = m["stored"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    vec![
                        text(&s["role"]),
                        text(&s["topic"]),
                        text(&s["queueId"]),
                        text(&s["queueOffset"]),
                        text(&s["storeTime"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    out.push('\n');
    out.push_str(&table(&["STORED AS", "TOPIC", "QUEUE", "OFFSET", "STORE TIME"], &stored));
    out
}

/// `message get`: the header block and the properties.
pub fn format_get(m: &Value) -> String {
    let mut out = format_message(m);
    let props: Vec<Vec<String>> = m["properties"]
        .as_object()
        .map(|o| o.iter().map(|(k, v)| vec![k.clone(), text(v)]).collect())
        .unwrap_or_default();
    out.push('\n');
    out.push_str(&table(&["PROPERTY", "VALUE"], &props));
    out
}

/// `message trace`: the header block, the events and the groups.
pub fn format_trace(t: &Value) -> String {
    let mut out = format_message(&t["message"]);
    let events: Vec<Vec<String>> = t["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    let detail = match e["type"].as_str() {
                        Some("STORED" | "TIMER_FIRED" | "COMMITTED") => {
                            format!("{} queue {} offset {}", text(&e["topic"]), text(&e["queueId"]), text(&e["offset"]))
                        }
                        Some("DELIVERED" | "INVISIBILITY_CHANGED") => {
                            format!("invisible until {}", text(&e["invisibleUntilIso"]))
                        }
                        Some("DLQ") => format!("to {} offset {}", text(&e["dlqTopic"]), text(&e["offset"])),
                        Some("ACKED") if e["deadLettered"] == Value::Bool(true) => {
                            "by the gateway, after the DLQ move".into()
                        }
                        Some("OFFSET_RESET") => format!("to offset {}", text(&e["offset"])),
                        Some("SCHEDULED") => format!("due {}", text(&e["deliverAt"])),
                        _ => String::new(),
                    };
                    vec![
                        text(&e["timeIso"]),
                        text(&e["type"]),
                        text(&e["group"]),
                        text(&e["client"]),
                        text(&e["attempt"]),
                        detail,
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    out.push('\n');
    out.push_str(&table(&["TIME", "EVENT", "GROUP", "CLIENT", "ATTEMPT", "DETAIL"], &events));
    let groups: Vec<Vec<String>> = t["groups"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|g| {
                    vec![
                        text(&g["group"]),
                        text(&g["status"]),
                        text(&g["deliveries"]),
                        text(&g["lastAttempt"]),
                        text(&g["consumerOffset"]),
                        text(&g["dlqTopic"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    out.push('\n');
    out.push_str(&table(&["GROUP", "STATUS", "DELIVERIES", "LAST ATTEMPT", "CONSUMER OFFSET", "DLQ"], &groups));
    if t["truncated"] == Value::Bool(true) {
        let _ = writeln!(
            out,
            "\n(journal scan stopped after {} records: later events may be missing)",
            text(&t["journalScanned"])
        );
    }
    out
}

/// `message find`: one line per message.
pub fn format_find(list: &Value) -> String {
    let rows: Vec<Vec<String>> = list
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| {
                    let first = &m["stored"][0];
                    vec![
                        text(&m["messageId"]),
                        text(&m["topic"]),
                        text(&m["tag"]),
                        text(&first["queueId"]),
                        text(&first["queueOffset"]),
                        text(&first["storeTime"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(&["MESSAGE ID", "TOPIC", "TAG", "QUEUE", "OFFSET", "STORE TIME"], &rows)
}

/// `--server`, else the admin address of `--config` (a wildcard bind address means this
/// host), else the default port on this host.
fn server_url(args: &AdminArgs) -> Result<String, String> {
    if let Some(s) = &args.server {
        return Ok(s.clone());
    }
    let Some(path) = &args.config else { return Ok("http://127.0.0.1:8080".into()) };
    let c = crate::config::Config::load(Some(path), std::env::vars()).map_err(|e| e.to_string())?;
    let host = match c.server.bind_address.as_str() {
        "" | "0.0.0.0" | "::" | "[::]" => "127.0.0.1".to_string(),
        h if h.contains(':') && !h.starts_with('[') => format!("[{h}]"),
        h => h.to_string(),
    };
    Ok(format!("http://{host}:{}", c.server.http_server_port))
}

/// Runs an admin command; exit code 0 on success, 1 when the API refused, 2 when it could not
/// be reached.
pub fn run(args: AdminArgs) -> ExitCode {
    let server = match server_url(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rmq-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rmq-gateway: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (path, format): (String, fn(&Value) -> String) = match &args.command {
        AdminCommand::Message { command } => match command {
            MessageCommand::Get { id } => (format!("/api/v1/messages/{}", encode(id)), format_get),
            MessageCommand::Trace { id, max_journal_records } => {
                let mut path = format!("/api/v1/messages/{}/trace", encode(id));
                if let Some(n) = max_journal_records {
                    let _ = write!(path, "?maxJournalRecords={n}");
                }
                (path, format_trace)
            }
            MessageCommand::Find { topic, key, namespace } => {
                let mut path = format!("/api/v1/messages?topic={}&key={}", encode(topic), encode(key));
                if let Some(ns) = namespace {
                    let _ = write!(path, "&namespace={}", encode(ns));
                }
                (path, format_find)
            }
        },
    };
    let answer = runtime.block_on(async { tokio::time::timeout(CALL_TIMEOUT, get(&server, &path)).await });
    let (status, body) = match answer {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => {
            eprintln!("rmq-gateway: {e}");
            return ExitCode::from(2);
        }
        Err(_) => {
            eprintln!("rmq-gateway: no answer from {server} within {CALL_TIMEOUT:?}");
            return ExitCode::from(2);
        }
    };
    let json: Option<Value> = serde_json::from_str(&body).ok();
    if !(200..300).contains(&status) {
        let reason = json.as_ref().and_then(|v| v["error"].as_str().map(str::to_string)).unwrap_or(body);
        eprintln!("rmq-gateway: HTTP {status}: {reason}");
        return ExitCode::FAILURE;
    }
    match json {
        Some(v) if args.json => match serde_json::to_string_pretty(&v) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("rmq-gateway: {e}");
                return ExitCode::FAILURE;
            }
        },
        Some(v) => print!("{}", format(&v)),
        None => {
            eprintln!("rmq-gateway: the answer is not JSON: {body}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn trace_table() {
        let t = json!({
            "message": {"messageId": "ID1", "topic": "T", "type": "NORMAL", "tag": "a", "keys": ["k"],
                "body": {"size": 5, "encoding": "utf-8", "data": "hello", "truncated": false},
                "stored": [{"role": "MESSAGE", "topic": "T", "queueId": 0, "queueOffset": 7, "storeTime": "2026-01-01T00:00:00.000Z"}]},
            "events": [
                {"timeIso": "2026-01-01T00:00:00.000Z", "type": "STORED", "topic": "T", "queueId": 0, "offset": 7},
                {"timeIso": "2026-01-01T00:00:01.000Z", "type": "DELIVERED", "group": "G", "client": "c1", "attempt": 1, "invisibleUntilIso": "x"},
                {"timeIso": "2026-01-01T00:00:02.000Z", "type": "DLQ", "group": "G", "dlqTopic": "%DLQ%G", "offset": 0}
            ],
            "groups": [{"group": "G", "status": "DLQ", "deliveries": 1, "lastAttempt": 1, "consumerOffset": 8, "dlqTopic": "%DLQ%G"}],
            "truncated": false
        });
        let s = format_trace(&t);
        assert!(s.contains("Message   ID1"), "{s}");
        assert!(s.lines().any(|l| l.contains("DELIVERED") && l.contains(" G ") && l.contains("c1")), "{s}");
        assert!(s.contains("to %DLQ%G offset 0"), "{s}");
        assert!(s.lines().any(|l| l.starts_with("G ") && l.contains("DLQ")), "{s}");
    }

    #[test]
    fn server_from_flag_config_or_default() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gateway.yaml");
        std::fs::write(&file, "server:\n  bindAddress: 0.0.0.0\n  httpServerPort: 9123\n").unwrap();
        let args = |server: Option<&str>, config: Option<&std::path::Path>| AdminArgs {
            server: server.map(str::to_string),
            config: config.map(|p| p.to_path_buf()),
            json: false,
            command: AdminCommand::Message { command: MessageCommand::Get { id: "x".into() } },
        };
        assert_eq!(server_url(&args(Some("http://h:1"), Some(&file))).unwrap(), "http://h:1");
        assert_eq!(server_url(&args(None, Some(&file))).unwrap(), "http://127.0.0.1:9123");
        assert_eq!(server_url(&args(None, None)).unwrap(), "http://127.0.0.1:8080");
    }

    #[test]
    fn encodes_path_segments() {
        assert_eq!(encode("a b/%c"), "a%20b%2F%25c");
    }
}
