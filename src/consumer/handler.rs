//! What `consume` does with one event: write it as a line on stdout, or run a command.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tokio::sync::Mutex;

use crate::event::with_string_flags;

/// One delivery, as the handler sees it.
pub struct Event<'a> {
    pub body: &'a [u8],
    pub kind: &'a str,
    pub message_id: &'a str,
    pub dedup_key: &'a str,
    pub routing_key: &'a str,
    pub attempt: u32,
}

/// Why a handler did not finish an event; the event is retried, then dead-lettered.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error("the command exited with {0}")]
    Exited(ExitStatus),
    #[error("the command ran longer than {0:?} and was killed")]
    TimedOut(Duration),
    #[error("the command could not run: {0}")]
    Spawn(std::io::Error),
    #[error("stdout could not be written: {0}")]
    Stdout(std::io::Error),
}

/// The handler `consume` runs for every event.
pub enum Handler {
    /// Each body as one line on stdout, whitespace outside strings dropped.
    Stdout(Mutex<tokio::io::Stdout>),
    /// `sh -c COMMAND` with the body on stdin, killed (its whole process group) after `timeout`.
    Exec { command: String, timeout: Duration },
}

impl Handler {
    pub fn stdout() -> Self {
        Self::Stdout(Mutex::new(tokio::io::stdout()))
    }

    /// Handles one event; `Ok` means done, to be acknowledged.
    pub async fn run(&self, event: &Event<'_>) -> Result<(), HandlerError> {
        match self {
            Self::Stdout(stdout) => {
                let mut line = compact_json(event.body);
                line.push(b'\n');
                let mut stdout = stdout.lock().await;
                stdout
                    .write_all(&line)
                    .await
                    .map_err(HandlerError::Stdout)?;
                stdout.flush().await.map_err(HandlerError::Stdout)
            }
            Self::Exec { command, timeout } => exec(command, *timeout, event).await,
        }
    }
}

async fn exec(command: &str, timeout: Duration, event: &Event<'_>) -> Result<(), HandlerError> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("BANDWIDTH_EVENT_TYPE", event.kind)
        .env("BANDWIDTH_MESSAGE_ID", event.message_id)
        .env("BANDWIDTH_DEDUP_KEY", event.dedup_key)
        .env("BANDWIDTH_ROUTING_KEY", event.routing_key)
        .env("BANDWIDTH_DELIVERY_ATTEMPT", event.attempt.to_string())
        .stdin(Stdio::piped())
        // Its own process group, so a timeout kills whatever the command started too.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(HandlerError::Spawn)?;
    let stdin = child.stdin.take();
    let body = event.body.to_vec();
    let feed = async move {
        if let Some(mut stdin) = stdin {
            // A command that does not read its input closes the pipe: not a failure.
            let _ = stdin.write_all(&body).await;
        }
    };
    let waited = tokio::time::timeout(timeout, async {
        let (_, status) = tokio::join!(feed, child.wait());
        status
    })
    .await;
    match waited {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(HandlerError::Exited(status)),
        Ok(Err(error)) => Err(HandlerError::Spawn(error)),
        Err(_) => {
            if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = child.wait().await;
            Err(HandlerError::TimedOut(timeout))
        }
    }
}

/// `json` without the whitespace outside strings, so a pretty-printed event is one line.
pub fn compact_json(json: &[u8]) -> Vec<u8> {
    with_string_flags(json)
        .filter(|&(byte, in_string)| in_string || !matches!(byte, b' ' | b'\t' | b'\n' | b'\r'))
        .map(|(byte, _)| byte)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compacting_drops_whitespace_outside_strings_only() {
        let pretty =
            b"{\n  \"type\" : \"message-received\",\n  \"text\": \"two  words \\\" \\n\"\n}";
        assert_eq!(
            compact_json(pretty),
            b"{\"type\":\"message-received\",\"text\":\"two  words \\\" \\n\"}"
        );
        let value: serde_json::Value = serde_json::from_slice(pretty).expect("json");
        let compacted: serde_json::Value =
            serde_json::from_slice(&compact_json(pretty)).expect("json");
        assert_eq!(value, compacted);
    }

    fn event(body: &[u8]) -> Event<'_> {
        Event {
            body,
            kind: "message-delivered",
            message_id: "m1",
            dedup_key: "k1",
            routing_key: "message.delivered",
            attempt: 2,
        }
    }

    #[tokio::test]
    async fn a_command_gets_the_body_on_stdin_and_the_event_in_its_environment() {
        let out = std::env::temp_dir().join(format!("handler-{:x}", fastrand::u64(..)));
        let handler = Handler::Exec {
            command: format!(
                "cat > {0}; echo \"$BANDWIDTH_EVENT_TYPE $BANDWIDTH_MESSAGE_ID $BANDWIDTH_DEDUP_KEY \
                 $BANDWIDTH_ROUTING_KEY $BANDWIDTH_DELIVERY_ATTEMPT\" >> {0}",
                out.display()
            ),
            timeout: Duration::from_secs(5),
        };
        handler.run(&event(b"{\"a\": 1}")).await.expect("exit 0");
        let written = std::fs::read_to_string(&out).expect("output");
        let _ = std::fs::remove_file(&out);
        assert_eq!(
            written,
            "{\"a\": 1}message-delivered m1 k1 message.delivered 2\n"
        );
    }

    #[tokio::test]
    async fn a_failing_or_slow_command_is_an_error_and_a_slow_one_is_killed_with_its_children() {
        let exit3 = Handler::Exec {
            command: "exit 3".into(),
            timeout: Duration::from_secs(5),
        };
        assert!(matches!(
            exit3.run(&event(b"{}")).await,
            Err(HandlerError::Exited(status)) if status.code() == Some(3)
        ));
        let marker = format!("{}.{}", 30 + fastrand::u32(0..100), fastrand::u32(..));
        let slow = Handler::Exec {
            command: format!("sleep {marker} & wait"),
            timeout: Duration::from_millis(200),
        };
        assert!(matches!(
            slow.run(&event(b"{}")).await,
            Err(HandlerError::TimedOut(_))
        ));
        let left = std::process::Command::new("pgrep")
            .args(["-f", &format!("sleep {marker}")])
            .output()
            .expect("pgrep");
        assert!(
            left.stdout.is_empty(),
            "the command's child survived: {:?}",
            String::from_utf8_lossy(&left.stdout)
        );
    }
}
