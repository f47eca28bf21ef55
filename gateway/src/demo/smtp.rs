//! A minimal SMTP sink for the demo: accepts every message on loopback and hands its
//! recipients and subject to the live view. Not a mail server: no relaying, no storage.

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// One message received.
#[derive(Debug, Clone)]
pub struct Mail {
    pub to: Vec<String>,
    pub subject: String,
}

/// Starts the sink on a free loopback port; messages arrive on the returned channel.
pub async fn start() -> std::io::Result<(SocketAddr, mpsc::Receiver<Mail>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = session(stream, tx).await;
            });
        }
    });
    Ok((addr, rx))
}

async fn session(stream: tokio::net::TcpStream, tx: mpsc::Sender<Mail>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    write.write_all(b"220 rxgate-demo-sink ESMTP\r\n").await?;
    let mut to = Vec::new();
    while let Some(line) = lines.next_line().await? {
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            b"250 rxgate-demo-sink\r\n"
        } else if upper.starts_with("MAIL FROM")
            || upper.starts_with("RSET")
            || upper.starts_with("NOOP")
        {
            b"250 OK\r\n"
        } else if upper.starts_with("RCPT TO") {
            to.push(
                line[8..]
                    .trim()
                    .trim_matches(['<', '>', ':', ' '])
                    .to_owned(),
            );
            b"250 OK\r\n"
        } else if upper.starts_with("DATA") {
            write
                .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                .await?;
            let mut subject: Option<String> = None;
            let mut in_subject = false;
            let mut in_headers = true;
            while let Some(data) = lines.next_line().await? {
                if data == "." {
                    break;
                }
                if data.is_empty() {
                    in_headers = false;
                }
                if !in_headers {
                    continue;
                }
                if in_subject && data.starts_with([' ', '\t']) {
                    if let Some(s) = subject.as_mut() {
                        // Unfolding (RFC 5322 2.2.3) removes the line break, not the space after it.
                        s.push_str(&data);
                    }
                    continue;
                }
                in_subject = false;
                if subject.is_none()
                    && let Some(s) = data.strip_prefix("Subject: ")
                {
                    subject = Some(s.to_owned());
                    in_subject = true;
                }
            }
            let subject = decode_words(&subject.unwrap_or_default());
            let _ = tx
                .send(Mail {
                    to: std::mem::take(&mut to),
                    subject,
                })
                .await;
            b"250 OK\r\n"
        } else if upper.starts_with("QUIT") {
            write.write_all(b"221 Bye\r\n").await?;
            return Ok(());
        } else {
            b"502 Command not implemented\r\n"
        };
        write.write_all(reply).await?;
    }
    Ok(())
}

/// Decodes RFC 2047 encoded words (`=?utf-8?b?...?=`, `=?utf-8?q?...?=`) in a header; the
/// whitespace between two encoded words is dropped, as the RFC says.
fn decode_words(header: &str) -> String {
    let mut out = String::new();
    let mut rest = header;
    let mut after_word = false;
    while let Some(start) = rest.find("=?") {
        let (text, candidate) = rest.split_at(start);
        let end = candidate[2..].find("?=").map(|e| e + 4);
        let decoded = end.and_then(|end| decode_word(&candidate[2..end - 2]).map(|d| (d, end)));
        match decoded {
            Some((word, end)) => {
                if !(after_word && text.trim().is_empty()) {
                    out.push_str(text);
                }
                out.push_str(&word);
                rest = &candidate[end..];
                after_word = true;
            }
            None => {
                out.push_str(text);
                out.push_str("=?");
                rest = &candidate[2..];
                after_word = false;
            }
        }
    }
    out.push_str(rest);
    out
}

fn decode_word(word: &str) -> Option<String> {
    use base64::Engine;
    let mut parts = word.splitn(3, '?');
    let (_charset, encoding, text) = (parts.next()?, parts.next()?, parts.next()?);
    let bytes = match encoding {
        "b" | "B" => base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()?,
        "q" | "Q" => {
            let mut bytes = Vec::new();
            let mut chars = text.bytes();
            while let Some(c) = chars.next() {
                match c {
                    b'_' => bytes.push(b' '),
                    b'=' => {
                        let hex = [chars.next()?, chars.next()?];
                        bytes.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
                    }
                    c => bytes.push(c),
                }
            }
            bytes
        }
        _ => return None,
    };
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn encoded_words_are_decoded() {
        assert_eq!(super::decode_words("=?utf-8?b?OCDCsEM=?="), "8 °C");
        assert_eq!(super::decode_words("plain subject"), "plain subject");
        assert_eq!(super::decode_words("=?utf-8?q?a_b=C2=B0?="), "a b°");
        assert_eq!(
            super::decode_words("above 8.0 =?utf-8?b?wrBD?= (9.1 =?utf-8?b?wrBD?=)"),
            "above 8.0 °C (9.1 °C)"
        );
        assert_eq!(
            super::decode_words("=?utf-8?b?YQ==?= =?utf-8?b?Yg==?="),
            "ab"
        );
    }
}
