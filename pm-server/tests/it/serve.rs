//! [`pm_server::serve`] on a real socket: answers, then shuts down gracefully.

use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::{raw_get, sqlite_state};

#[tokio::test]
async fn serves_http_and_shuts_down_gracefully() {
    let (_db, state) = sqlite_state().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(pm_server::serve(listener, state, async {
        let _ = stopped.await;
    }));

    let (status, text) = raw_get(addr, "/healthz").await.unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(text.contains(r#"{"status":"ok"}"#), "{text}");
    assert!(text.to_ascii_lowercase().contains("x-request-id:"), "{text}");

    // An idle keep-alive connection must not hold shutdown up.
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    stop.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve returned within 5 s");
    result.expect("serve task did not panic").expect("serve returned Ok");
    assert!(raw_get(addr, "/healthz").await.is_err(), "still accepting after shutdown");
}
