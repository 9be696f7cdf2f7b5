//! The events the shim sends containerd (TaskCreate, TaskExit, ...).
//!
//! containerd's shims publish over ttrpc: a client of containerd's
//! `containerd.services.events.ttrpc.v1.Events` service on the address in
//! the shim's `TTRPC_ADDRESS` environment variable (containerd's socket
//! with `.ttrpc` appended), each event wrapped in an `Envelope` (topic,
//! namespace, timestamp, the event as an `Any` named by its full protobuf
//! name) and sent with `Forward`, the request carrying the namespace in
//! the `containerd-namespace-ttrpc` header as containerd's
//! `namespaces.WithNamespace` puts it (runtime/v2/shim/publisher.go).
//!
//! As containerd's publisher, a failed `Forward` is tried again, up to
//! five times, one more second apart each time, reconnecting when the
//! connection went; unlike it, later events wait for the retried one, so
//! containerd sees a task's events in the order they happened (an exit
//! before its delete).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::MessageDyn;
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_sync::{Client, EventsClient};
use containerd_shim_protos::ttrpc;
use tokio::sync::mpsc;

/// The environment variable containerd gives its shims the ttrpc address in.
pub const TTRPC_ADDRESS: &str = "TTRPC_ADDRESS";
/// The ttrpc metadata key containerd reads a request's namespace from
/// (containerd's namespaces/ttrpc.go).
const NAMESPACE_HEADER: &str = "containerd-namespace-ttrpc";
/// Attempts per event (containerd's publisher: `maxRequeue`).
const ATTEMPTS: u32 = 5;
/// How long one `Forward` may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// An event for containerd: its topic and message.
pub type Event = (&'static str, Box<dyn MessageDyn>);

/// Now, as a protobuf timestamp.
pub fn now() -> Timestamp {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
        ..Default::default()
    }
}

/// Sends the events of `events` to containerd at `address` (a socket
/// path, or a `unix://` address), in order, until the channel closes.
/// Blocks: the shim runs it on a thread of its own.
pub fn forward(address: &str, namespace: &str, mut events: mpsc::UnboundedReceiver<Event>) {
    let address = if address.contains("://") {
        address.to_string()
    } else {
        format!("unix://{address}")
    };
    let mut client: Option<EventsClient> = None;
    while let Some((topic, event)) = events.blocking_recv() {
        let request = match envelope(topic, namespace, event.as_ref()) {
            Ok(r) => r,
            Err(e) => {
                log::error!("encoding {topic} for containerd: {e}");
                continue;
            }
        };
        for attempt in 1..=ATTEMPTS {
            let c = match &client {
                Some(c) => c,
                None => match Client::connect(&address) {
                    Ok(c) => client.insert(EventsClient::new(c)),
                    Err(e) => {
                        log::warn!("connecting to containerd's events service at {address}: {e}");
                        std::thread::sleep(Duration::from_secs(attempt.into()));
                        continue;
                    }
                },
            };
            let mut ctx = ttrpc::context::with_duration(FORWARD_TIMEOUT);
            ctx.add(NAMESPACE_HEADER.to_string(), namespace.to_string());
            match c.forward(ctx, &request) {
                Ok(_) => break,
                Err(e) => {
                    log::warn!("publishing {topic} to containerd (attempt {attempt}): {e}");
                    if matches!(
                        e,
                        ttrpc::Error::RemoteClosed
                            | ttrpc::Error::LocalClosed
                            | ttrpc::Error::Socket(_)
                    ) {
                        client = None;
                    }
                    if attempt == ATTEMPTS {
                        log::error!("dropping {topic} after {ATTEMPTS} attempts");
                    } else {
                        std::thread::sleep(Duration::from_secs(attempt.into()));
                    }
                }
            }
        }
    }
}

/// The `Forward` request for one event.
fn envelope(
    topic: &str,
    namespace: &str,
    event: &dyn MessageDyn,
) -> Result<ForwardRequest, containerd_shim_protos::protobuf::Error> {
    let any = Any {
        // containerd's typeurl names a protobuf message by its full name
        // (`containerd.events.TaskExit`).
        type_url: event.descriptor_dyn().full_name().to_string(),
        value: event.write_to_bytes_dyn()?,
        ..Default::default()
    };
    let envelope = Envelope {
        timestamp: Some(now()).into(),
        namespace: namespace.to_string(),
        topic: topic.to_string(),
        event: Some(any).into(),
        ..Default::default()
    };
    Ok(ForwardRequest {
        envelope: Some(envelope).into(),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    use containerd_shim_protos::api::Empty;
    use containerd_shim_protos::events::task::{TaskDelete, TaskExit};
    use containerd_shim_protos::protobuf::Message;
    use containerd_shim_protos::shim_sync::{create_events, Events};
    use containerd_shim_protos::ttrpc::{Server, TtrpcContext};

    #[test]
    fn envelope_names_the_event() {
        let exit = TaskExit {
            container_id: "c1".into(),
            exit_status: 7,
            ..Default::default()
        };
        let r = envelope("/tasks/exit", "k8s.io", &exit).unwrap();
        let e = r.envelope.as_ref().unwrap();
        assert_eq!(e.topic, "/tasks/exit");
        assert_eq!(e.namespace, "k8s.io");
        let any = e.event.as_ref().unwrap();
        assert_eq!(any.type_url, "containerd.events.TaskExit");
        let back = TaskExit::parse_from_bytes(&any.value).unwrap();
        assert_eq!(back, exit);
    }

    /// containerd's side of `Forward`: what arrived, with the request's
    /// namespace header.
    #[derive(Default)]
    struct Containerd {
        got: Mutex<Vec<(Option<String>, Envelope)>>,
    }

    impl Events for Containerd {
        fn forward(&self, ctx: &TtrpcContext, req: ForwardRequest) -> ttrpc::Result<Empty> {
            let ns = ctx
                .metadata
                .get(NAMESPACE_HEADER)
                .and_then(|v| v.first().cloned());
            self.got
                .lock()
                .unwrap()
                .push((ns, req.envelope.unwrap_or_default()));
            Ok(Empty::new())
        }
    }

    #[test]
    fn events_reach_containerd_in_order_with_the_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("containerd.sock.ttrpc");
        let containerd = Arc::new(Containerd::default());
        let mut server = Server::new()
            .bind(&format!("unix://{}", socket.display()))
            .unwrap()
            .register_service(create_events(containerd.clone()));
        server.start().unwrap();

        let (tx, rx) = mpsc::unbounded_channel::<Event>();
        // A bare path, as containerd sets TTRPC_ADDRESS.
        let address = socket.display().to_string();
        let (done, ended) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            forward(&address, "ns1", rx);
            let _ = done.send(());
        });
        for status in 0..3 {
            let exit = TaskExit {
                container_id: "c1".into(),
                exit_status: status,
                ..Default::default()
            };
            tx.send(("/tasks/exit", Box::new(exit))).unwrap();
        }
        let delete = TaskDelete {
            container_id: "c1".into(),
            ..Default::default()
        };
        tx.send(("/tasks/delete", Box::new(delete))).unwrap();
        drop(tx);
        ended
            .recv_timeout(Duration::from_secs(10))
            .expect("the publisher ends when the channel closes");

        let got = containerd.got.lock().unwrap().clone();
        assert_eq!(got.len(), 4, "{got:?}");
        for (ns, e) in &got {
            assert_eq!(ns.as_deref(), Some("ns1"), "the namespace header");
            assert_eq!(e.namespace, "ns1");
            assert!(e.timestamp.seconds > 0);
        }
        let statuses: Vec<u32> = got[..3]
            .iter()
            .map(|(_, e)| {
                assert_eq!(e.topic, "/tasks/exit");
                TaskExit::parse_from_bytes(&e.event.value)
                    .unwrap()
                    .exit_status
            })
            .collect();
        assert_eq!(statuses, [0, 1, 2]);
        assert_eq!(got[3].1.topic, "/tasks/delete");
        assert_eq!(got[3].1.event.type_url, "containerd.events.TaskDelete");
        server.shutdown();
    }
}
