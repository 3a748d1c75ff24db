//! Command-line arguments (with `RMQ_E2E_*` environment fallbacks).

use std::time::Duration;

pub const USAGE: &str = "usage: rmq-sdk-rust <produce|simple-consume> --endpoint HOST:PORT \
--topic T [--group G] [--count N] [--prefix P] [--tag TAG] [--timeout-secs S]";

/// What the driver does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Send `count` messages with bodies `<prefix>-<i>`.
    Produce,
    /// Receive and ack until all `count` bodies were seen, or the timeout.
    SimpleConsume,
}

/// Parsed options.
#[derive(Debug, Clone)]
pub struct Args {
    pub mode: Mode,
    pub endpoint: String,
    pub topic: String,
    pub group: String,
    pub count: usize,
    pub prefix: String,
    pub tag: String,
    pub timeout: Duration,
}

impl Args {
    /// Parses `argv` (without the program name); missing options fall back to
    /// `RMQ_E2E_ENDPOINT`, `RMQ_E2E_TOPIC`, `RMQ_E2E_GROUP`, `RMQ_E2E_COUNT`, ….
    pub fn parse(argv: impl Iterator<Item = String>) -> Result<Self, String> {
        let mut argv = argv.peekable();
        let mode = match argv.next().as_deref() {
            Some("produce") => Mode::Produce,
            Some("simple-consume") => Mode::SimpleConsume,
            Some(other) => return Err(format!("unknown mode {other:?}")),
            None => return Err("missing mode".to_string()),
        };
        let mut opts = std::collections::HashMap::new();
        while let Some(flag) = argv.next() {
            let Some(name) = flag.strip_prefix("--") else {
                return Err(format!("unexpected argument {flag:?}"));
            };
            let value = argv.next().ok_or_else(|| format!("{flag} needs a value"))?;
            opts.insert(name.to_string(), value);
        }
        let get = |name: &str, default: Option<&str>| -> Result<String, String> {
            let env = format!("RMQ_E2E_{}", name.to_uppercase().replace('-', "_"));
            opts.get(name)
                .cloned()
                .or_else(|| std::env::var(&env).ok())
                .or_else(|| default.map(str::to_string))
                .ok_or_else(|| format!("missing --{name} (or {env})"))
        };
        let number = |name: &str, default: &str| -> Result<u64, String> {
            get(name, Some(default))?.parse::<u64>().map_err(|e| format!("--{name}: {e}"))
        };
        Ok(Args {
            mode,
            endpoint: get("endpoint", None)?,
            topic: get("topic", None)?,
            group: get("group", Some("rust-e2e-group"))?,
            count: usize::try_from(number("count", "50")?).map_err(|e| e.to_string())?,
            prefix: get("prefix", Some("rust"))?,
            tag: get("tag", Some("e2e"))?,
            timeout: Duration::from_secs(number("timeout-secs", "60")?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, String> {
        Args::parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses_flags() {
        let a = parse(&["produce", "--endpoint", "127.0.0.1:1", "--topic", "t", "--count", "3"]).unwrap();
        assert_eq!(a.mode, Mode::Produce);
        assert_eq!(a.count, 3);
        assert_eq!(a.endpoint, "127.0.0.1:1");
    }

    #[test]
    fn rejects_unknown_mode() {
        assert!(parse(&["push-consume"]).is_err());
    }
}
