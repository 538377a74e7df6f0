"""The bridge through python-socketio, the other official client family."""

import json
import queue
import re
import time

import pytest
import socketio

ISO_MS = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$"


def client_for(stack, role, user_id, transports=("websocket",)):
    client = socketio.Client(reconnection=False)
    received = queue.Queue()
    for event in ("offlineNotifications", "notification", "unreadCount", "appError",
                  "userIsOffline", "userIsOnline", "notificationUpdated"):
        client.on(event, (lambda name: lambda data: received.put((name, data)))(event),
                  namespace="/notification")
    client.connect(stack.url, namespaces=["/notification"], transports=list(transports),
                   auth={"token": stack.token(role, user_id)}, wait_timeout=10)
    return client, received


def next_event(received, name, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            event, data = received.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        if event == name:
            return data
    pytest.fail(f"no {name} within {timeout} s")


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
        assert next_event(received, "unreadCount")["data"] == {"count": 1}

        live = stack.grpc("CreateNotification", {
            "vendorId": 5, "type": "order:paid", "content": {"orderId": 881}})
        notification = next_event(received, "notification")
        assert notification["id"] == live["id"]
        assert notification["status"] == "SENT" and notification["channel"] == "PUSH"
        assert re.match(ISO_MS, notification["createdAt"])
        assert next_event(received, "unreadCount")["data"] == {"count": 2}

        answer = client.call("markAsRead", {"ids": [first["id"], live["id"]]},
                             namespace="/notification", timeout=10)
        assert answer == {"error": False, "statusCode": 200, "message": None, "data": {"updated": 2}}
        assert next_event(received, "unreadCount")["data"] == {"count": 0}

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
            assert next_event(received, "unreadCount")["data"] == {"count": 1}
        answer = polling.call("markAsRead", {"ids": [created["id"]]},
                              namespace="/notification", timeout=10)
        assert answer["data"] == {"updated": 1}
        for received in (ws_received, polling_received):
            update = next_event(received, "notificationUpdated")
            assert update["statusCode"] == 200 and update["error"] is False
            assert update["data"]["ids"] == [created["id"]]
            assert update["data"]["status"] == "READ"
            assert re.match(ISO_MS, update["data"]["updatedAt"])
            assert next_event(received, "unreadCount")["data"] == {"count": 0}
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
