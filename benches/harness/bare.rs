//! (h): a bare hyper server answering the same requests, publishing nothing.

use std::time::Duration;

use crate::cell::Cell;
use crate::load::post_load;

/// (h): the same clients against a bare hyper server in this process, on a single-threaded
/// runtime of its own, that reads each single-event callback and answers as the forwarder does
/// after `confirm_time` (raw lapin's median at this concurrency) but publishes nothing: what the
/// HTTP exchange alone costs on this machine at about the rate the broker allows.
pub async fn http_floor(concurrency: usize, seconds: u64, confirm_time: Duration) -> Cell {
    // The forwarder's accept queue is `http.max_connections` (1024) long; so is this one.
    let listener = tokio::net::TcpSocket::new_v4().expect("socket");
    listener
        .bind("127.0.0.1:0".parse().expect("address"))
        .expect("bind");
    let addr = listener.local_addr().expect("address").to_string();
    let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::Builder::new()
        .name("http-floor".into())
        .spawn(move || bare_server(listener, confirm_time, stopped))
        .expect("server thread");
    let server_task = (0..1000)
        .find_map(|_| {
            let tid = thread_id("http-floor");
            if tid.is_none() {
                std::thread::sleep(Duration::from_millis(1));
            }
            tid
        })
        .map(|tid| format!("self/task/{tid}"))
        .expect("the bare server's thread started");
    let pids = [Some(server_task), None, Some("self".to_owned())];
    let load = post_load(&addr, concurrency, 1, seconds, &pids).await;
    let _ = stop_server.send(());
    server.join().expect("server thread");
    Cell {
        mode: "(h) HTTP only: bare hyper server, no broker".into(),
        concurrency,
        requests: load.latencies_us.len() as u64,
        events: load.latencies_us.len() as u64,
        seconds: load.seconds,
        latencies_us: load.latencies_us,
        peak_rss_kb: None,
        cpu_seconds: load.cpu[0],
        broker_cpu_seconds: None,
        // This process minus the server thread: the clients alone.
        load_generator_cpu_seconds: load.cpu[2]
            .zip(load.cpu[0])
            .map(|(all, server)| all - server),
    }
}

pub fn bare_server(
    listener: tokio::net::TcpSocket,
    confirm_time: Duration,
    stopped: tokio::sync::oneshot::Receiver<()>,
) {
    use http_body_util::{BodyExt, Full};
    use hyper::body::{Bytes, Incoming};
    use hyper::{Request, Response};

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let listener = listener.listen(1024).expect("listen");
        let accept = async {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |request: Request<Incoming>| async move {
                            request.into_body().collect().await?;
                            tokio::time::sleep(confirm_time).await;
                            let answer =
                                Bytes::from_static(br#"{"status":"published","events":1}"#);
                            Ok::<_, hyper::Error>(Response::new(Full::new(answer)))
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        };
        tokio::select! {
            _ = accept => {}
            _ = stopped => {}
        }
    });
}

/// The id of this process's thread called `name`.
pub fn thread_id(name: &str) -> Option<String> {
    std::fs::read_dir("/proc/self/task")
        .ok()?
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .find(|tid| {
            std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
                .is_ok_and(|comm| comm.trim() == name)
        })
}
