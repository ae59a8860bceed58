//! What the in-flight set answers, confirm by confirm, return by return.

use super::super::job::Received;
use super::*;
use crate::event::Event;
use lapin::BasicProperties;
use lapin::message::Delivery;
use tokio::sync::oneshot;

type Answer = oneshot::Receiver<Result<(), PublishError>>;

fn job(keys: &[&str]) -> (Job, Answer) {
    let events = keys
        .iter()
        .map(|key| Event {
            body: bytes::Bytes::from_static(b"{}"),
            kind: "message-delivered".into(),
            routing_key: "message-delivered".into(),
            dedup_key: (*key).into(),
            message_id: None,
            time: None,
        })
        .collect();
    let (reply, answer) = oneshot::channel();
    let job = Job {
        events,
        received: Received::now("test"),
        deadline: Instant::now(),
        reply,
    };
    (job, answer)
}

fn returned(key: &str) -> Option<BasicReturnMessage> {
    let mut delivery = Delivery::mock(0, "ex".into(), "t".into(), false, Vec::new());
    delivery.properties = BasicProperties::default().with_message_id(key.into());
    Some(BasicReturnMessage {
        delivery,
        reply_code: 312,
        reply_text: "NO_ROUTE".into(),
    })
}

fn ack(id: u64, returned: Option<BasicReturnMessage>) -> Resolved {
    (id, Ok(Confirmation::Ack(returned)))
}

/// An `InFlight` holding one job per key list, in order: their ids and answers.
fn in_flight(jobs: &[&[&str]]) -> (InFlight, Vec<u64>, Vec<Answer>) {
    let mut in_flight = InFlight::default();
    let (mut ids, mut answers) = (Vec::new(), Vec::new());
    for keys in jobs {
        let (job, answer) = job(keys);
        ids.push(in_flight.add(job, Instant::now()));
        answers.push(answer);
    }
    (in_flight, ids, answers)
}

fn answer(receiver: &mut Answer) -> Option<Result<(), PublishError>> {
    receiver.try_recv().ok()
}

#[test]
fn a_return_carried_by_a_later_jobs_confirm_fails_its_own_job() {
    let (mut in_flight, ids, mut answers) = in_flight(&[&["a"], &["b"]]);
    // One multiple-ack: lapin resolved a's confirm without its return and handed the return
    // to b's; both are read together.
    let round = vec![ack(ids[0], None), ack(ids[1], returned("a"))];
    assert_eq!(in_flight.settle(round, &Metrics::new()), Ok(()));
    assert_eq!(answer(&mut answers[0]), Some(Err(PublishError::Unroutable)));
    assert_eq!(answer(&mut answers[1]), Some(Ok(())));
    assert!(in_flight.is_empty());
}

#[test]
fn a_return_read_before_its_own_confirm_waits_for_it() {
    let metrics = Metrics::new();
    let (mut in_flight, ids, mut answers) = in_flight(&[&["a1", "a2"], &["b"]]);
    let settled = in_flight.settle(vec![ack(ids[1], returned("a2"))], &metrics);
    assert_eq!(settled, Ok(()));
    assert_eq!(answer(&mut answers[1]), Some(Ok(())));
    assert_eq!(answer(&mut answers[0]), None, "a still has confirms out");
    assert_eq!(in_flight.events(), 2);
    let settled = in_flight.settle(vec![ack(ids[0], None), ack(ids[0], None)], &metrics);
    assert_eq!(settled, Ok(()));
    assert_eq!(answer(&mut answers[0]), Some(Err(PublishError::Unroutable)));
    assert_eq!(in_flight.events(), 0);
}

#[test]
fn a_return_of_no_job_in_flight_answers_nothing_and_distrusts_the_channel() {
    let (mut in_flight, ids, mut answers) = in_flight(&[&["a"], &["b"]]);
    let round = vec![ack(ids[0], None), ack(ids[1], returned("stranger"))];
    assert_eq!(
        in_flight.settle(round, &Metrics::new()),
        Err(PublishError::Unroutable)
    );
    assert_eq!(answer(&mut answers[0]), None, "nothing answered 200");
    in_flight.fail_all(PublishError::Unroutable);
    for answer_ in &mut answers {
        assert_eq!(answer(answer_), Some(Err(PublishError::Unroutable)));
    }
    assert!(in_flight.is_empty());
    assert_eq!(in_flight.events(), 0);
}

#[test]
fn nacks_fail_their_job_and_a_channel_error_fails_its_job_and_the_channel() {
    let (mut in_flight, ids, mut answers) = in_flight(&[&["a"], &["b"], &["c"]]);
    let closed = lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed);
    let round = vec![
        (ids[0], Ok(Confirmation::Nack(None))),
        (ids[1], Err(closed.into())),
        ack(ids[2], None),
    ];
    let settled = in_flight.settle(round, &Metrics::new());
    assert!(matches!(settled, Err(PublishError::ChannelClosed(_))));
    assert_eq!(answer(&mut answers[0]), Some(Err(PublishError::Nacked)));
    assert!(matches!(
        answer(&mut answers[1]),
        Some(Err(PublishError::ChannelClosed(_)))
    ));
    assert_eq!(answer(&mut answers[2]), Some(Ok(())), "its confirm came");
}

#[test]
fn duplicate_keys_in_flight_fail_every_holder_of_a_returned_key() {
    let (mut in_flight, ids, mut answers) = in_flight(&[&["k"], &["k"], &["other"]]);
    let round = vec![
        ack(ids[0], None),
        ack(ids[1], returned("k")),
        ack(ids[2], None),
    ];
    assert_eq!(in_flight.settle(round, &Metrics::new()), Ok(()));
    assert_eq!(answer(&mut answers[0]), Some(Err(PublishError::Unroutable)));
    assert_eq!(answer(&mut answers[1]), Some(Err(PublishError::Unroutable)));
    assert_eq!(answer(&mut answers[2]), Some(Ok(())));
}

#[test]
fn only_confirmed_jobs_count_towards_published_events() {
    let metrics = Metrics::new();
    let mut in_flight = InFlight::default();
    let (mut a, _a) = job(&["a1", "a2"]);
    a.events[1].kind = "message-failed".into();
    let (b, _b) = job(&["b"]);
    let now = Instant::now();
    let (a, b) = (in_flight.add(a, now), in_flight.add(b, now));
    let round = vec![
        ack(a, None),
        ack(a, None),
        (b, Ok(Confirmation::Nack(None))),
    ];
    assert_eq!(in_flight.settle(round, &metrics), Ok(()));
    let exposition = metrics.render();
    // b was nacked: one delivered (a1) and one failed (a2), nothing of b.
    for kind in ["message-delivered", "message-failed"] {
        let series = format!("bandwidth_forwarder_events_published_total{{type=\"{kind}\"}} 1");
        assert!(exposition.contains(&series), "{series} in {exposition}");
    }
}

#[test]
fn a_type_met_again_later_in_a_callback_is_counted_in_full() {
    let metrics = Metrics::new();
    let mut in_flight = InFlight::default();
    let (mut job, _answer) = job(&["a1", "a2", "a3"]);
    job.events[1].kind = "message-failed".into();
    let id = in_flight.add(job, Instant::now());
    let round = vec![ack(id, None), ack(id, None), ack(id, None)];
    assert_eq!(in_flight.settle(round, &metrics), Ok(()));
    let exposition = metrics.render();
    for series in [
        "bandwidth_forwarder_events_published_total{type=\"message-delivered\"} 2",
        "bandwidth_forwarder_events_published_total{type=\"message-failed\"} 1",
    ] {
        assert!(exposition.contains(series), "{series} in {exposition}");
    }
}

#[test]
fn jobs_answered_out_of_order_keep_their_ids_and_new_ones_get_fresh_ids() {
    let metrics = Metrics::new();
    let (mut in_flight, ids, mut answers) = in_flight(&[&["a"], &["b"], &["c"]]);
    // The middle job is answered first, then the last: the first still holds the ring's start.
    assert_eq!(in_flight.settle(vec![ack(ids[1], None)], &metrics), Ok(()));
    assert_eq!(in_flight.settle(vec![ack(ids[2], None)], &metrics), Ok(()));
    assert_eq!(answer(&mut answers[1]), Some(Ok(())));
    assert_eq!(answer(&mut answers[2]), Some(Ok(())));
    assert_eq!(answer(&mut answers[0]), None);
    let (late, mut late_answer) = job(&["d"]);
    let late = in_flight.add(late, Instant::now());
    assert!(!ids.contains(&late), "{late} reuses an id in {ids:?}");
    // A second confirm for an answered job touches nothing.
    assert_eq!(in_flight.settle(vec![ack(ids[1], None)], &metrics), Ok(()));
    assert_eq!(answer(&mut late_answer), None);
    assert_eq!(answer(&mut answers[0]), None);
    assert_eq!(in_flight.settle(vec![ack(ids[0], None)], &metrics), Ok(()));
    assert_eq!(answer(&mut answers[0]), Some(Ok(())));
    assert_eq!(in_flight.settle(vec![ack(late, None)], &metrics), Ok(()));
    assert_eq!(answer(&mut late_answer), Some(Ok(())));
    assert!(in_flight.is_empty());
}

#[test]
fn after_every_job_failed_a_stale_confirm_touches_no_new_job() {
    let (mut in_flight, ids, mut answers) = in_flight(&[&["a"], &["b"]]);
    in_flight.fail_all(PublishError::Timeout);
    assert_eq!(answer(&mut answers[0]), Some(Err(PublishError::Timeout)));
    assert_eq!(answer(&mut answers[1]), Some(Err(PublishError::Timeout)));
    assert!(in_flight.is_empty());
    let (next, mut next_answer) = job(&["c"]);
    let next = in_flight.add(next, Instant::now());
    assert!(!ids.contains(&next), "{next} reuses an id in {ids:?}");
    assert_eq!(in_flight.events(), 1);
    assert_eq!(
        in_flight.settle(vec![ack(ids[0], None), ack(ids[1], None)], &Metrics::new()),
        Ok(())
    );
    assert_eq!(answer(&mut next_answer), None);
}
