"""The MQTT intake's read buffer, on a real socket pair: paho's reads come out byte for byte as from the socket."""

from __future__ import annotations

import socket

import pytest

from edge.mqtt_intake import _ReadBuffered


class CountingSocket:
    """A socket that counts its reads."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reads = 0

    def recv(self, size: int) -> bytes:
        self.reads += 1
        return self.sock.recv(size)

    def __getattr__(self, name: str) -> object:
        return getattr(self.sock, name)


@pytest.fixture
def pair():  # type: ignore[no-untyped-def]
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    yield _ReadBuffered(CountingSocket(ours)), theirs  # type: ignore[arg-type]
    ours.close()
    theirs.close()


def test_reads_as_paho_makes_them_come_from_one_system_read(pair) -> None:  # type: ignore[no-untyped-def]
    buffered, peer = pair
    packets = [b"\x30\x05" + b"a/b" + b"xy", b"\x30\x03" + b"c/d"]
    peer.sendall(b"".join(packets))
    for packet in packets:
        assert buffered.recv(1) == packet[:1]
        assert buffered.recv(1) == packet[1:2]
        assert buffered.recv(packet[1]) == packet[2:]
    assert buffered.pending() == 0
    assert buffered.sock.reads == 1
    with pytest.raises(BlockingIOError):  # nothing buffered, nothing on the socket: as the socket says
        buffered.recv(1)


def test_pending_counts_what_is_buffered_and_a_read_past_it_is_short(pair) -> None:  # type: ignore[no-untyped-def]
    buffered, peer = pair
    peer.sendall(b"0123456789")
    assert buffered.recv(4) == b"0123"
    assert buffered.pending() == 6  # paho then reads on without sleeping in select()
    assert buffered.recv(100) == b"456789"  # a short read, as a socket's may be; paho asks again
    assert buffered.pending() == 0
    peer.sendall(b"abc")
    assert buffered.recv(100) == b"abc"


def test_a_read_larger_than_the_buffer_size_is_one_read(pair) -> None:  # type: ignore[no-untyped-def]
    buffered, peer = pair
    peer.setblocking(True)
    big = bytes(range(256)) * 400  # 100 KiB, more than one 64 KiB buffer
    peer.sendall(big[:70_000])
    got = buffered.recv(len(big))
    assert big.startswith(got) and len(got) > 0


def test_the_peer_closing_reads_as_an_empty_result_and_the_rest_is_the_socket(pair) -> None:  # type: ignore[no-untyped-def]
    buffered, peer = pair
    assert buffered.fileno() == buffered.sock.fileno()  # select() and close() go to the socket
    peer.close()
    assert buffered.recv(1) == b""  # paho's sign that the connection is lost
