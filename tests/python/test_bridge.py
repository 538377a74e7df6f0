"""The bridge through python-socketio, the other official client family."""

import base64
import hashlib
import hmac
import json
import queue
import subprocess
import re
import time

import pytest
import socketio

ISO_MS = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$"


def client_for(stack, role, user_id, transports=("websocket",), token=None, url=None):
    client = socketio.Client(reconnection=False)
    received = queue.Queue()
    for event in ("offlineNotifications", "notification", "unreadCount", "appError",
                  "userIsOffline", "userIsOnline", "notificationUpdated"):
        client.on(event, (lambda name: lambda data: received.put((name, data)))(event),
                  namespace="/notification")
    client.connect(url or stack.url, namespaces=["/notification"], transports=list(transports),
                   auth={"token": token or stack.token(role, user_id)}, wait_timeout=10)
    return client, received


def next_event(received, name, timeout=10, where=lambda data: True):
    """The next `name` event that `where` accepts; the events before it are dropped."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            event, data = received.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        if event == name and where(data):
            return data
    pytest.fail(f"no {name} within {timeout} s")


def is_read(update):
    """A status change to READ (a delivery receipt of the first page may come first)."""
    return update["data"].get("status") == "READ"


@pytest.mark.parametrize("transport", ["websocket", "polling"])
def test_offline_live_and_mark_as_read(stack, transport):
    first = stack.grpc("CreateNotification", {
        "vendorId": 5, "type": "product:upload", "channel": "PUSH", "priority": 1,
        "content": {"message": "Product has been uploaded successfully", "data": {"id": 63}},
    })
    client, received = client_for(stack, "vendor", 5, transports=(transport,))
    try:
        offline = next_event(received, "offlineNotifications")
        assert offline["statusCode"] == 200 and offline["error"] is False
        assert offline["message"] is None
        [item] = offline["data"]["items"]
        assert item["id"] == first["id"]
        assert item["vendorId"] == 5 and item["customerId"] is None
        assert item["content"] == {"message": "Product has been uploaded successfully", "data": {"id": 63}}
        assert isinstance(item["content"]["data"]["id"], int)
        assert offline["data"]["pagination"]["totalRecords"] == 1
        assert next_event(received, "unreadCount")["data"] == {"count": 1, "byCategory": {"product": 1}}

        live = stack.grpc("CreateNotification", {
            "vendorId": 5, "type": "order:paid", "content": {"orderId": 881}})
        notification = next_event(received, "notification")
        assert notification["id"] == live["id"]
        assert notification["status"] == "SENT" and notification["channel"] == "PUSH"
        assert re.match(ISO_MS, notification["createdAt"])
        assert next_event(received, "unreadCount")["data"] == {"count": 2, "byCategory": {"order": 1, "product": 1}}

        answer = client.call("markAsRead", {"ids": [first["id"], live["id"]]},
                             namespace="/notification", timeout=10)
        assert answer == {"error": False, "statusCode": 200, "message": None, "data": {"updated": 2}}
        assert next_event(received, "unreadCount")["data"] == {"count": 0, "byCategory": {}}

        page = client.call("offlineNotifications", {"page": 1, "limit": 20},
                           namespace="/notification", timeout=10)
        assert page["data"]["items"] == []
        assert page["data"]["pagination"]["totalRecords"] == 0
    finally:
        client.disconnect()


def test_a_read_in_one_tab_reaches_the_other(stack):
    created = stack.grpc("CreateNotification", {
        "vendorId": 6, "type": "order:shipped", "content": {"orderId": 77}})
    websocket, ws_received = client_for(stack, "vendor", 6, transports=("websocket",))
    polling, polling_received = client_for(stack, "vendor", 6, transports=("polling",))
    try:
        for received in (ws_received, polling_received):
            assert next_event(received, "unreadCount")["data"] == {"count": 1, "byCategory": {"order": 1}}
        answer = polling.call("markAsRead", {"ids": [created["id"]]},
                              namespace="/notification", timeout=10)
        assert answer["data"] == {"updated": 1}
        for received in (ws_received, polling_received):
            update = next_event(received, "notificationUpdated", where=is_read)
            assert update["statusCode"] == 200 and update["error"] is False
            assert update["data"]["ids"] == [created["id"]]
            assert update["data"]["status"] == "READ"
            assert re.match(ISO_MS, update["data"]["updatedAt"])
            assert next_event(received, "unreadCount")["data"] == {"count": 0, "byCategory": {}}
    finally:
        websocket.disconnect()
        polling.disconnect()


def test_bad_payload_answers_400_and_keeps_the_socket(stack):
    client, received = client_for(stack, "customer", 12)
    try:
        next_event(received, "unreadCount")
        answer = client.call("offlineNotifications", {"page": "x"}, namespace="/notification", timeout=10)
        assert answer["error"] is True and answer["statusCode"] == 400
        assert next_event(received, "appError")["statusCode"] == 400
        assert client.connected
        page = client.call("offlineNotifications", {"page": 1}, namespace="/notification", timeout=10)
        assert page["statusCode"] == 200
    finally:
        client.disconnect()


def test_refused_without_a_valid_token(stack):
    client = socketio.Client(reconnection=False)
    errors = []
    client.on("connect_error", errors.append, namespace="/notification")
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect(stack.url, namespaces=["/notification"], transports=["websocket"],
                       auth={"token": "forged"}, wait_timeout=10)
    [error] = errors
    envelope = json.loads(error["message"])
    assert envelope["error"] is True and envelope["statusCode"] == 401
    assert "invalid token" in envelope["message"]


def openssl(*args, data=None):
    return subprocess.run(["openssl", *args], input=data, capture_output=True, check=True).stdout


def b64url(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize("transport", ["websocket", "polling"])
def test_a_token_from_the_identity_provider_opens_the_inbox(stack, tmp_path, transport):
    """An EdDSA key made here with openssl: its tokens open the user's inbox
    on a bridge with --jwt-public-key; another key's, and the public key
    used as an HS256 secret, are refused."""
    key, other = tmp_path / "key.pem", tmp_path / "other.pem"
    for path in (key, other):
        openssl("genpkey", "-algorithm", "ed25519", "-out", str(path))
    public = tmp_path / "public.pem"
    openssl("pkey", "-in", str(key), "-pubout", "-out", str(public))
    url = stack.another_bridge(["--jwt-public-key", str(public), "--jwt-issuer", "https://id.example"])

    def token(header, signer):
        claims = {"sub": "8101", "role": "customer", "exp": int(time.time()) + 600,
                  "iss": "https://id.example"}
        body = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        return f"{body}.{b64url(signer(body.encode()))}"

    def ed25519(path):
        def sign(body):
            # Ed25519 signs the whole message at once: from a file, not a pipe.
            message = tmp_path / "message"
            message.write_bytes(body)
            return openssl("pkeyutl", "-sign", "-rawin", "-inkey", str(path), "-in", str(message))
        return sign

    created = stack.grpc("CreateNotification", {"customerId": 8101, "type": "order:shipped",
                                                 "channel": "PUSH", "content": {"order": 1}})
    good = token({"alg": "EdDSA", "typ": "JWT"}, ed25519(key))
    client, received = client_for(stack, "customer", 8101, (transport,), token=good, url=url)
    try:
        offline = next_event(received, "offlineNotifications")
        assert [item["id"] for item in offline["data"]["items"]] == [created["id"]]
    finally:
        client.disconnect()

    confused = token({"alg": "HS256", "typ": "JWT"},
                     lambda body: hmac.new(public.read_bytes(), body, hashlib.sha256).digest())
    for forged, says in [(token({"alg": "EdDSA", "typ": "JWT"}, ed25519(other)), "bad signature"),
                         (confused, "HS256 tokens are not accepted")]:
        refused = socketio.Client(reconnection=False)
        errors = []
        refused.on("connect_error", errors.append, namespace="/notification")
        with pytest.raises(socketio.exceptions.ConnectionError):
            refused.connect(url, namespaces=["/notification"], transports=[transport],
                            auth={"token": forged}, wait_timeout=10)
        [error] = errors
        assert says in json.loads(error["message"])["message"]


def test_archive_and_mark_all_reach_both_tabs_with_counts_by_category(stack):
    ids = [stack.grpc("CreateNotification", {
        "vendorId": 8, "type": kind, "content": {"n": n}})["id"]
        for n, kind in enumerate(["order:placed", "order:packed", "product:upload"])]
    websocket, ws_received = client_for(stack, "vendor", 8, transports=("websocket",))
    polling, polling_received = client_for(stack, "vendor", 8, transports=("polling",))
    tabs = (ws_received, polling_received)
    try:
        for received in tabs:
            assert next_event(received, "unreadCount")["data"] == {
                "count": 3, "byCategory": {"order": 2, "product": 1}}
        answer = websocket.call("archive", {"ids": [ids[2]]}, namespace="/notification", timeout=10)
        assert answer["data"] == {"updated": 1}
        for received in tabs:
            update = next_event(received, "notificationUpdated",
                                where=lambda u: "archived" in u["data"])
            assert update["data"]["ids"] == [ids[2]] and update["data"]["archived"] is True
            assert "status" not in update["data"]
            assert next_event(received, "unreadCount")["data"] == {
                "count": 2, "byCategory": {"order": 2}}
        shelf = polling.call("offlineNotifications", {"view": "ARCHIVED"},
                             namespace="/notification", timeout=10)
        assert [n["id"] for n in shelf["data"]["items"]] == [ids[2]]
        answer = polling.call("markAllAsRead", {"category": "order"},
                              namespace="/notification", timeout=10)
        assert answer["data"] == {"updated": 2}
        for received in tabs:
            update = next_event(received, "notificationUpdated", where=is_read)
            assert sorted(update["data"]["ids"]) == sorted(ids[:2])
            assert update["data"]["status"] == "READ"
            assert next_event(received, "unreadCount")["data"] == {"count": 0, "byCategory": {}}
        bad = websocket.call("markAllAsRead", {"upToSeq": -1}, namespace="/notification", timeout=10)
        assert bad["error"] is True and bad["statusCode"] == 400 and "upToSeq" in bad["message"]
        assert next_event(ws_received, "appError")["statusCode"] == 400
    finally:
        websocket.disconnect()
        polling.disconnect()


def test_collapsed_updates_and_an_action_reach_both_tabs(stack):
    def update(status, **extra):
        return stack.grpc("CreateNotification", {
            "customerId": 9, "type": f"order:{status}", "content": {"order": 77},
            "collapseKey": "order-77", **extra})
    placed = update("placed")
    websocket, ws_received = client_for(stack, "customer", 9, transports=("websocket",))
    polling, polling_received = client_for(stack, "customer", 9, transports=("polling",))
    tabs = (ws_received, polling_received)
    try:
        for received in tabs:
            assert next_event(received, "unreadCount")["data"]["count"] == 1
        packed = update("packed", actions=[{"id": "cancel", "label": "Cancel order"}])
        assert packed["replaces"] == placed["id"]
        for received in tabs:
            live = next_event(received, "notification")
            assert live["id"] == packed["id"] and live["replaces"] == placed["id"]
            assert live["actions"] == [{"id": "cancel", "label": "Cancel order"}]
            gone = next_event(received, "notificationUpdated",
                              where=lambda u: "replacedBy" in u["data"])
            assert gone["data"]["ids"] == [placed["id"]]
            assert gone["data"]["replacedBy"] == packed["id"]
        answer = polling.call("completeAction", {"id": packed["id"], "actionId": "cancel"},
                              namespace="/notification", timeout=10)
        assert answer["error"] is False
        assert answer["data"]["status"] == "READ"
        assert answer["data"]["actionTaken"]["id"] == "cancel"
        for received in tabs:
            taken = next_event(received, "notificationUpdated",
                               where=lambda u: "actionTaken" in u["data"])
            assert taken["data"]["ids"] == [packed["id"]]
            assert taken["data"]["status"] == "READ"
            assert next_event(received, "unreadCount")["data"] == {"count": 0, "byCategory": {}}
        again = websocket.call("completeAction", {"id": packed["id"], "actionId": "cancel"},
                               namespace="/notification", timeout=10)
        assert again["error"] is True and again["statusCode"] == 400
        assert next_event(ws_received, "appError")["statusCode"] == 400
    finally:
        websocket.disconnect()
        polling.disconnect()


def test_preferences_set_on_one_tab_suppress_creates_for_both(stack):
    """setPreferences through python-socketio's ack; getPreferences in a
    second tab reads it; a create of that pair is suppressed (grpcurl),
    another channel is delivered to both tabs."""
    first, first_events = client_for(stack, "vendor", 8201)
    second, second_events = client_for(stack, "vendor", 8201, ("polling",))
    try:
        answer = first.call("setPreferences",
                            {"rules": [{"category": "review", "channel": "PUSH", "enabled": False}]},
                            namespace="/notification", timeout=10)
        assert answer["statusCode"] == 200
        assert answer["data"]["rules"] == [{"category": "review", "channel": "PUSH", "enabled": False}]
        read = second.call("getPreferences", None, namespace="/notification", timeout=10)
        assert read["data"] == answer["data"]
        bad = second.call("setPreferences", {"rules": [{"category": "review", "channel": "PUSH"}]},
                          namespace="/notification", timeout=10)
        assert bad["statusCode"] == 400 and "rules[0].enabled" in bad["message"]

        body = {"vendorId": 8201, "type": "review:new", "channel": "PUSH", "content": {"stars": 5}}
        assert stack.grpc("CreateNotification", body)["suppressed"] is True
        delivered = stack.grpc("CreateNotification", {**body, "channel": "IN_APP"})
        for events in (first_events, second_events):
            live = next_event(events, "notification")
            assert live["id"] == delivered["id"], "the suppressed one never arrives"
    finally:
        first.disconnect()
        second.disconnect()


def test_a_scheduled_notification_arrives_when_due(stack):
    """sendAt through grpcurl: PENDING, absent from the first page, then
    live on the python-socketio client with its seq once due."""
    from datetime import datetime, timedelta, timezone
    client, received = client_for(stack, "customer", 8301)
    try:
        first = next_event(received, "offlineNotifications")
        assert first["data"]["items"] == []
        send_at = (datetime.now(timezone.utc) + timedelta(seconds=1)).isoformat(timespec="milliseconds")
        send_at = send_at.replace("+00:00", "Z")
        pending = stack.grpc("CreateNotification", {"customerId": 8301, "type": "order:reminder",
                                                     "content": {"order": 9}, "sendAt": send_at})
        assert pending["status"] == "PENDING" and pending["sendAt"] == send_at
        live = next_event(received, "notification", timeout=15)
        assert live["id"] == pending["id"] and live["status"] == "SENT"
        assert stack.grpc("GetNotification", {"id": pending["id"]})["seq"] == "1"
    finally:
        client.disconnect()
