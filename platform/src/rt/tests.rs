use std::io::{Read as _, Write as _};
use std::time::Duration;

use smol::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;

#[test]
fn a_spawned_task_runs_and_gives_its_output() {
    let task = spawn(async { 6 * 7 });
    assert_eq!(smol::block_on(task), 42);
}

#[test]
fn a_task_woken_from_another_thread_runs_while_the_executor_sleeps() {
    // The executor has nothing to do and waits on epoll; the wake-up comes from a plain thread.
    let (sender, receiver) = smol::channel::bounded::<u32>(1);
    let task = spawn(async move { receiver.recv().await.expect("sent") + 1 });
    std::thread::sleep(Duration::from_millis(50));
    std::thread::spawn(move || sender.send_blocking(9).expect("receiver alive"));
    assert_eq!(smol::block_on(task), 10);
}

#[test]
fn a_timer_on_async_io_wakes_a_task_of_this_executor() {
    let started = std::time::Instant::now();
    smol::block_on(spawn(async {
        smol::Timer::after(Duration::from_millis(30)).await;
    }));
    assert!(started.elapsed() >= Duration::from_millis(30));
}

#[test]
fn a_panicking_task_is_re_raised_where_awaited_and_the_executor_goes_on() {
    let task = spawn(async {
        panic!("on purpose");
    });
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| smol::block_on(task)));
    assert!(caught.is_err(), "the panic reaches the awaiting side");
    assert_eq!(smol::block_on(spawn(async { "still running" })), "still running");
}

#[test]
fn ten_thousand_tasks_all_run() {
    let tasks: Vec<Task<usize>> = (0..10_000).map(|i| spawn(async move { i })).collect();
    let sum: usize = smol::block_on(async {
        let mut sum = 0;
        for task in tasks {
            sum += task.await;
        }
        sum
    });
    assert_eq!(sum, (0..10_000).sum::<usize>());
}

/// An echo server on the reactor, a blocking client sending one message and waiting for its
/// echo each time (the pattern where a lost edge would hang).
#[test]
fn a_socket_echoes_one_message_at_a_time_without_losing_a_wake_up() {
    let listener = TcpListener::bind("127.0.0.1:0".parse().expect("address")).expect("bind");
    let addr = listener.local_addr().expect("address");
    let server = spawn(async move {
        let (stream, _) = listener.accept().await.expect("accepted");
        let socket = TcpSocket::new(stream).expect("registered");
        let mut buf = [0u8; 64];
        let mut echoed = 0usize;
        loop {
            let n = (&socket).read(&mut buf).await.expect("read");
            if n == 0 {
                return echoed;
            }
            (&socket).write_all(&buf[..n]).await.expect("written");
            echoed += n;
        }
    });
    let mut client = std::net::TcpStream::connect(addr).expect("connected");
    client.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    for i in 0..2_000u32 {
        let message = i.to_be_bytes();
        client.write_all(&message).expect("sent");
        let mut back = [0u8; 4];
        client.read_exact(&mut back).expect("echoed within the timeout");
        assert_eq!(back, message);
    }
    client.shutdown(std::net::Shutdown::Write).expect("shut down");
    assert_eq!(smol::block_on(server), 8_000);
}

/// A write larger than the socket buffers: the writer waits for the reader's progress (the
/// write direction's edges).
#[test]
fn a_large_write_waits_for_room_and_arrives_whole() {
    let listener = TcpListener::bind("127.0.0.1:0".parse().expect("address")).expect("bind");
    let addr = listener.local_addr().expect("address");
    let payload: Vec<u8> = (0..8 * 1024 * 1024).map(|i: u32| (i % 251) as u8).collect();
    let expected = payload.clone();
    let server = spawn(async move {
        let (stream, _) = listener.accept().await.expect("accepted");
        let socket = TcpSocket::new(stream).expect("registered");
        (&socket).write_all(&payload).await.expect("written");
        (&socket).close().await.expect("closed");
    });
    let mut client = std::net::TcpStream::connect(addr).expect("connected");
    let mut received = Vec::new();
    std::thread::sleep(Duration::from_millis(100));
    client.read_to_end(&mut received).expect("read");
    smol::block_on(server);
    assert!(received == expected, "{} bytes of {}", received.len(), expected.len());
}

/// A peer that sends its last bytes and closes at once: the short read that takes the bytes
/// must not hide the end that follows (no edge comes after a hang-up).
#[test]
fn the_end_of_a_stream_is_seen_after_a_short_read_of_its_last_bytes() {
    let listener = TcpListener::bind("127.0.0.1:0".parse().expect("address")).expect("bind");
    let addr = listener.local_addr().expect("address");
    for _ in 0..200 {
        let mut client = std::net::TcpStream::connect(addr).expect("connected");
        let (stream, _) = smol::block_on(listener.accept()).expect("accepted");
        client.write_all(b"last words").expect("sent");
        drop(client);
        std::thread::sleep(Duration::from_millis(1));
        let socket = TcpSocket::new(stream).expect("registered");
        let read = spawn(async move {
            let mut all = Vec::new();
            let mut buf = [0u8; 64];
            loop {
                let n = (&socket).read(&mut buf).await.expect("read");
                if n == 0 {
                    return all;
                }
                all.extend_from_slice(&buf[..n]);
            }
        });
        let all = smol::block_on(smol::future::or(read, async {
            smol::Timer::after(Duration::from_secs(5)).await;
            panic!("the end of the stream was not seen within 5 s");
        }));
        assert_eq!(all, b"last words");
    }
}

#[test]
fn the_clock_is_read_once_per_turn_on_the_executor_and_directly_elsewhere() {
    let before = read_unix_ms();
    let (first, second, later) = smol::block_on(spawn(async {
        let first = now_unix_ms();
        // Busy for longer than a millisecond without yielding: still the same turn.
        let busy = std::time::Instant::now();
        while busy.elapsed() < Duration::from_millis(5) {
            std::hint::spin_loop();
        }
        let second = now_unix_ms();
        // After a wait on the reactor: a new turn, a new reading.
        smol::Timer::after(Duration::from_millis(20)).await;
        (first, second, now_unix_ms())
    }));
    let after = read_unix_ms();
    assert_eq!(first, second, "one reading per turn");
    assert!(before <= first && later <= after, "{before} <= {first} <= {later} <= {after}");
    assert!(later >= first + 20, "the turn after the timer read the clock again: {first} then {later}");
    // Not the executor thread: the clock itself, moving with it.
    let here = now_unix_ms();
    std::thread::sleep(Duration::from_millis(5));
    assert!(now_unix_ms() >= here + 5);
}
