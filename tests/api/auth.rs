//! Basic auth as Bandwidth uses it: challenge first, then credentials.

use bandwidth_forwarder::settings::Secret;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hyper::StatusCode;

use crate::common::{TestApp, fixture, spawn_app, test_settings};

const USER: &str = "bandwidth";
const PASSWORD: &str = "s3cr:et:with:colons";

async fn app_with_auth() -> TestApp {
    let mut settings = test_settings();
    settings.auth.username = USER.into();
    settings.auth.password = Secret::new(PASSWORD);
    spawn_app(settings).await
}

fn basic(credentials: &str) -> String {
    format!("Basic {}", STANDARD.encode(credentials))
}

#[tokio::test]
async fn bandwidths_challenge_flow_publishes_once_credentials_arrive() {
    let app = app_with_auth().await;
    let body = fixture("incoming-single-sms.json");
    let first = app.post_callback(body.clone()).await;
    assert_eq!(first.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        first
            .headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Basic realm=\"bandwidth-forwarder\"")
    );
    assert_eq!(first.error_word(), "unauthorized");
    assert!(app.drain().await.is_empty());

    let authorization = basic(&format!("{USER}:{PASSWORD}"));
    let second = app
        .post_callback_with(body, &[("authorization", authorization.as_str())])
        .await;
    assert_eq!(second.status, StatusCode::OK, "{:?}", second.body);
    assert_eq!(app.drain().await.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn wrong_credentials_get_401_and_publish_nothing() {
    let app = app_with_auth().await;
    let wrong_password = basic(&format!("{USER}:nope"));
    let truncated_password = basic(&format!("{USER}:s3cr"));
    let wrong_user = basic(&format!("other:{PASSWORD}"));
    let bearer = format!("Bearer {}", STANDARD.encode(format!("{USER}:{PASSWORD}")));
    for authorization in [
        wrong_password.as_str(),
        truncated_password.as_str(),
        wrong_user.as_str(),
        bearer.as_str(),
        "Basic %%%garbage%%%",
        "Basic",
        "garbage",
    ] {
        let answer = app
            .post_callback_with(
                fixture("message-sent.json"),
                &[("authorization", authorization)],
            )
            .await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{authorization}");
        assert!(answer.headers.contains_key("www-authenticate"));
        assert_eq!(answer.error_word(), "unauthorized");
    }
    assert!(app.drain().await.is_empty());
    app.stop().await;
}
