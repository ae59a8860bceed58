//! The routing key template (`amqp.routing_key`): which fields of an event make its routing
//! key, e.g. `{message.applicationId}.{type}` for accounts with several applications. Pure.

use std::fmt;
use std::str::FromStr;

use serde_json::Value;

use crate::event::{UNKNOWN_ROUTING_KEY, routing_key};

/// Longest value a field placeholder puts into a key; a longer one becomes `unknown`.
const MAX_FIELD_BYTES: usize = 64;
/// Longest routing key AMQP accepts.
const MAX_KEY_BYTES: usize = 255;

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    /// `{type}`: the event type with `-` as `.`, as without a template.
    Type,
    /// `{a.b}`: the string at that path, if it is `[A-Za-z0-9-]{1,64}`.
    Field(String),
}

/// A parsed template; every key it renders is at most 255 bytes and holds no `*` or `#`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingTemplate {
    source: String,
    parts: Vec<Part>,
}

impl Default for RoutingTemplate {
    fn default() -> Self {
        Self {
            source: "{type}".into(),
            parts: vec![Part::Type],
        }
    }
}

impl fmt::Display for RoutingTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl FromStr for RoutingTemplate {
    type Err = String;

    fn from_str(template: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = template;
        let mut longest = 0;
        while !rest.is_empty() {
            let (literal, after) = rest.split_at(rest.find('{').unwrap_or(rest.len()));
            if !literal.is_empty() {
                if let Some(bad) = literal.chars().find(|c| !is_literal_char(*c)) {
                    return Err(format!(
                        "`{bad}` is not allowed outside a placeholder (use letters, digits, `.`, `-`, `_`)"
                    ));
                }
                longest += literal.len();
                parts.push(Part::Literal(literal.to_owned()));
            }
            if after.is_empty() {
                break;
            }
            let close = after
                .find('}')
                .ok_or_else(|| "a `{` is never closed".to_owned())?;
            let name = &after[1..close];
            let valid = !name.is_empty()
                && name.split('.').all(|segment| {
                    !segment.is_empty()
                        && segment
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_')
                });
            if !valid {
                return Err(format!(
                    "`{{{name}}}` is not a field placeholder such as `{{type}}` or `{{message.applicationId}}`"
                ));
            }
            longest += MAX_FIELD_BYTES;
            parts.push(match name {
                "type" => Part::Type,
                path => Part::Field(path.to_owned()),
            });
            rest = &after[close + 1..];
        }
        if parts.is_empty() {
            return Err("the template is empty".into());
        }
        if longest > MAX_KEY_BYTES {
            return Err(format!(
                "a key could be {longest} bytes (each placeholder counts {MAX_FIELD_BYTES}); AMQP allows {MAX_KEY_BYTES}"
            ));
        }
        Ok(Self {
            source: template.to_owned(),
            parts,
        })
    }
}

impl RoutingTemplate {
    /// The routing key of an event of type `kind` whose JSON is `event`.
    pub fn render(&self, kind: &str, event: &str) -> String {
        let needs_fields = self.parts.iter().any(|p| matches!(p, Part::Field(_)));
        let fields = needs_fields
            .then(|| serde_json::from_str::<Value>(event).ok())
            .flatten();
        let mut key = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => key.push_str(text),
                Part::Type => key.push_str(&routing_key(kind)),
                Part::Field(path) => key.push_str(field_value(fields.as_ref(), path)),
            }
        }
        key
    }
}

/// The string at a dotted `path`, when it is a safe word for a key; `unknown` otherwise, so
/// no `.`, `*` or `#` can be smuggled into a key.
fn field_value<'a>(fields: Option<&'a Value>, path: &str) -> &'a str {
    let value = fields
        .and_then(|fields| {
            path.split('.')
                .try_fold(fields, |value, segment| value.get(segment))
        })
        .and_then(Value::as_str);
    match value {
        Some(word)
            if (1..=MAX_FIELD_BYTES).contains(&word.len())
                && word.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
        {
            word
        }
        _ => UNKNOWN_ROUTING_KEY,
    }
}

fn is_literal_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(text: &str) -> RoutingTemplate {
        text.parse().expect("valid template")
    }

    #[test]
    fn the_default_is_todays_key() {
        let default = RoutingTemplate::default();
        assert_eq!(default, template("{type}"));
        assert_eq!(
            default.render("message-delivered", "{}"),
            "message.delivered"
        );
        assert_eq!(default.render("Weird Type!", "{}"), "unknown");
    }

    #[test]
    fn fields_fill_their_placeholders() {
        let event = r#"{"type":"message-delivered","message":{"applicationId":"93de2206-9669-4e07-948d-329f4b722ee2","direction":"out"}}"#;
        assert_eq!(
            template("{message.applicationId}.{type}").render("message-delivered", event),
            "93de2206-9669-4e07-948d-329f4b722ee2.message.delivered"
        );
        assert_eq!(
            template("bw.{message.direction}.{type}").render("message-delivered", event),
            "bw.out.message.delivered"
        );
    }

    #[test]
    fn hostile_or_missing_values_become_unknown() {
        let tpl = template("{message.applicationId}.{type}");
        let long = "a".repeat(300);
        for value in [
            r#""a.b""#,
            r##""#""##,
            r#""*""#,
            r#""""#,
            &format!(r#""{long}""#),
            "7",
            "null",
            r#"{"x":1}"#,
            r#""with space""#,
        ] {
            let event =
                format!(r#"{{"type":"message-sent","message":{{"applicationId":{value}}}}}"#);
            assert_eq!(
                tpl.render("message-sent", &event),
                "unknown.message.sent",
                "{value}"
            );
        }
        assert_eq!(tpl.render("message-sent", "{}"), "unknown.message.sent");
        assert_eq!(
            tpl.render("message-sent", "not json"),
            "unknown.message.sent"
        );
    }

    #[test]
    fn invalid_templates_say_why() {
        for bad in [
            "",
            "{",
            "{}",
            "{type",
            "a*{type}",
            "#.{type}",
            "{type} x",
            "{message..id}",
            "{message.id-x}",
            "{a}.{b}.{c}.{d}",
        ] {
            assert!(bad.parse::<RoutingTemplate>().is_err(), "{bad:?} accepted");
        }
        assert!("{a}.{b}.{c}".parse::<RoutingTemplate>().is_ok());
    }
}
