"""The Python binding against a real gateway: connect, send, receive, reconnect.

Run by client-ffi/tests/bindings.rs with the generated module on PETREL_PY and the
gateway's endpoints and two users' tokens in the environment.
"""
import os
import sys
import time

sys.path.insert(0, os.environ["PETREL_PY"])
import petrel_client_ffi as petrel  # noqa: E402


def options(token, device):
    return petrel.Options(
        quic_address=os.environ["PETREL_QUIC"],
        websocket_url=os.environ["PETREL_WS"],
        cert_sha256=os.environ["PETREL_CERT"],
        server_name="localhost",
        token=token,
        device=device,
        state_path=None,
    )


def wait_for(client, want, what, seconds=20):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        event = client.next_event(500)
        if event is not None and want(event):
            return event
    sys.exit(f"timed out waiting for {what}")


def connected(e):
    return isinstance(e, petrel.ClientEvent.CONNECTED)


def message(e):
    return isinstance(e, petrel.ClientEvent.MESSAGE)


bob = petrel.PetrelClient(options(os.environ["BOB_TOKEN"], "py-phone"))
alice = petrel.PetrelClient(options(os.environ["ALICE_TOKEN"], "py-laptop"))
first = wait_for(bob, connected, "bob to connect")
wait_for(alice, connected, "alice to connect")
print(f"bob connected over {first.transport} to gateway {first.gateway_id}")

got = []
for round_ in range(2):
    if round_ == 1:
        bob.reconnect()
        wait_for(bob, connected, "bob to reconnect")
    for i in range(3):
        mid = f"py{round_}-{i}"
        outcome = alice.send("bob", False, mid, f"hello {mid}", 10_000)
        assert outcome.status == "stored", outcome
        e = wait_for(bob, message, f"message {mid}")
        assert e.message.id == mid, (e.message.id, mid)
        assert bytes(e.message.content) == f"hello {mid}".encode()
        got.append(e.message.id)

bad = alice.send("bob", False, "not an id!", "x", 5_000)
assert bad.status == "rejected" and bad.code == "INVALID_ID", bad

alice.close()
bob.close()
print(f"python binding: {len(got)} messages once each, in order, across a reconnect; bad id refused")
