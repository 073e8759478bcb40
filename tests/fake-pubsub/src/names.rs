//! Resource-name validation, following the rules of the real service:
//! `projects/{project}/topics/{topic}` and
//! `projects/{project}/subscriptions/{subscription}`, where the last segment
//! is 3 to 255 characters, starts with a letter, uses only letters, digits
//! and `-_.~+%`, and does not start with `goog`.

use tonic::Status;

/// Validates a full topic name; INVALID_ARGUMENT if it is malformed.
pub(crate) fn check_topic(name: &str) -> Result<(), Status> {
    check(name, "topics")
}

/// Validates a full subscription name; INVALID_ARGUMENT if it is malformed.
pub(crate) fn check_subscription(name: &str) -> Result<(), Status> {
    check(name, "subscriptions")
}

fn check(name: &str, collection: &str) -> Result<(), Status> {
    let invalid = || {
        Status::invalid_argument(format!(
            "Invalid resource name given (name={name}). Refer to \
             https://cloud.google.com/pubsub/docs/pubsub-basics#resource_names for more information."
        ))
    };
    let mut parts = name.split('/');
    let (Some("projects"), Some(project), Some(coll), Some(id), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(invalid());
    };
    if project.is_empty() || coll != collection || !valid_id(id) {
        return Err(invalid());
    }
    Ok(())
}

/// The real service's rule for the last segment of a topic or subscription name.
fn valid_id(id: &str) -> bool {
    (3..=255).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_alphabetic())
        && !id.starts_with("goog")
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.~+%".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_real_names() {
        assert!(check_topic("projects/p/topics/dns-updates").is_ok());
        assert!(check_subscription("projects/my-proj/subscriptions/sub.1~a+b%c").is_ok());
    }

    #[test]
    fn rejects_malformed_names() {
        for bad in [
            "",
            "topics/abc",
            "projects//topics/abc",
            "projects/p/subscriptions/abc",
            "projects/p/topics/ab",
            "projects/p/topics/1abc",
            "projects/p/topics/googabc",
            "projects/p/topics/a b c",
            "projects/p/topics/abc/extra",
        ] {
            let err = check_topic(bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
    }
}
