"""The emulator's Pub/Sub API driven the way forcedotcom/pub-sub-api's Python examples drive
Salesforce: grpcio stubs generated from the proto, metadata auth, a Subscribe request generator
paced by a semaphore, schemas fetched with GetSchema and payloads decoded with Apache Avro.

Environment: SF_EMULATOR_URL (REST base URL), SF_PUBSUB_ADDR (host:port of the gRPC server),
PUBSUB_STUBS (directory holding pubsub_api_pb2*.py), SF_EMULATOR_CA (optional: the emulator's
generated CA; then REST is HTTPS and gRPC uses a TLS channel trusting it).
"""

import io
import json
import os
import signal
import ssl
import sys
import threading
import urllib.parse
import urllib.request

import avro.io
import avro.schema
import grpc

sys.path.insert(0, os.environ["PUBSUB_STUBS"])
import pubsub_api_pb2 as pb2  # noqa: E402
import pubsub_api_pb2_grpc as pb2_grpc  # noqa: E402

BASE = os.environ["SF_EMULATOR_URL"]
ADDR = os.environ["SF_PUBSUB_ADDR"]
TOPIC = "/data/OrderChangeEvent"
CLIENT = "pyclient"
CA = os.environ.get("SF_EMULATOR_CA")
TLS = ssl.create_default_context(cafile=CA) if CA else None


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def http(method, path, body=None, token=None, headers=None):
    data = None
    h = dict(headers or {})
    if body is not None:
        data = json.dumps(body).encode()
        h["Content-Type"] = "application/json"
    if token:
        h["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(BASE + path, data=data, method=method, headers=h)
    with urllib.request.urlopen(req, timeout=20, context=TLS) as r:
        raw = r.read()
        return r.status, (json.loads(raw) if raw else None)


def login():
    form = urllib.parse.urlencode(
        {
            "grant_type": "password",
            "client_id": "orderbridge-dev-client-id",
            "client_secret": "orderbridge-dev-client-secret",
            "username": "integration@orderbridge.dev",
            "password": "orderbridge-dev-passwordorderbridgedevtoken",
        }
    ).encode()
    req = urllib.request.Request(BASE + "/services/oauth2/token", data=form, method="POST")
    with urllib.request.urlopen(req, timeout=20, context=TLS) as r:
        reply = json.loads(r.read())
    # The identity URL ends in /id/<org id>/<user id>, as the examples read the tenant id.
    org_id = reply["id"].rstrip("/").split("/")[-2]
    return reply["access_token"], reply["instance_url"], org_id


def changed_field_names(bitmaps, schema):
    """ChangeEventHeaderUtility's algorithm: bit i of the hex number is top-level field i."""
    names = []
    fields = schema.fields
    for bitmap in bitmaps:
        if "-" in bitmap:
            continue  # nested (compound) fields: none in this schema
        value = int(bitmap[2:], 16)
        i = 0
        while value:
            if value & 1:
                names.append(fields[i].name)
            value >>= 1
            i += 1
    return names


def main():
    signal.alarm(120)
    token, instance_url, org_id = login()
    metadata = (("accesstoken", token), ("instanceurl", instance_url), ("tenantid", org_id))
    if CA:
        with open(CA, "rb") as f:
            channel = grpc.secure_channel(ADDR, grpc.ssl_channel_credentials(root_certificates=f.read()))
    else:
        channel = grpc.insecure_channel(ADDR)
    stub = pb2_grpc.PubSubStub(channel)

    # A wrong token: UNAUTHENTICATED with Salesforce's error-code trailer.
    try:
        stub.GetTopic(
            pb2.TopicRequest(topic_name=TOPIC),
            metadata=(("accesstoken", "bogus"), ("instanceurl", instance_url), ("tenantid", org_id)),
        )
        fail("GetTopic with a bogus token succeeded")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.UNAUTHENTICATED, f"bogus token: {e.code()}")
        trailers = dict(e.trailing_metadata() or ())
        check(
            trailers.get("error-code") == "sfdc.platform.eventbus.grpc.service.auth.error",
            f"trailers: {trailers}",
        )

    topic = stub.GetTopic(pb2.TopicRequest(topic_name=TOPIC), metadata=metadata)
    check(topic.can_subscribe and topic.schema_id, f"topic: {topic}")

    _, acc = http("POST", "/services/data/v62.0/sobjects/Account", {"Name": "Py"}, token)
    _, order = http(
        "POST",
        "/services/data/v62.0/sobjects/Order",
        {"AccountId": acc["id"], "EffectiveDate": "2026-12-03", "Status": "Draft"},
        token,
    )
    order_id = order["id"]

    semaphore = threading.Semaphore(1)
    latest_replay = {"id": None}

    def fetch_requests():
        first = True
        while True:
            semaphore.acquire()
            if first:
                first = False
                yield pb2.FetchRequest(
                    topic_name=TOPIC, replay_preset=pb2.ReplayPreset.LATEST, num_requested=1
                )
            else:
                yield pb2.FetchRequest(num_requested=1)

    schemas = {}
    updated = False
    stream = stub.Subscribe(fetch_requests(), metadata=metadata)
    for response in stream:
        latest_replay["id"] = response.latest_replay_id
        if not response.events:
            # A keepalive: the subscription is live, so make the change now.
            check(len(response.latest_replay_id) > 0, "keepalive without latest_replay_id")
            if not updated:
                updated = True
                status, _ = http(
                    "PATCH",
                    f"/services/data/v62.0/sobjects/Order/{order_id}",
                    {"Status": "Activated"},
                    token,
                    {"Sforce-Call-Options": f"client={CLIENT}"},
                )
                check(status == 204, f"PATCH answered {status}")
            continue
        check(len(response.events) == 1, f"asked for 1, got {len(response.events)}")
        event = response.events[0].event
        if event.schema_id not in schemas:
            info = stub.GetSchema(pb2.SchemaRequest(schema_id=event.schema_id), metadata=metadata)
            schemas[event.schema_id] = avro.schema.parse(info.schema_json)
        schema = schemas[event.schema_id]
        decoder = avro.io.BinaryDecoder(io.BytesIO(event.payload))
        record = avro.io.DatumReader(schema).read(decoder)
        header = record["ChangeEventHeader"]
        check(header["entityName"] == "Order", f"header: {header}")
        check(header["changeType"] == "UPDATE", f"header: {header}")
        check(header["recordIds"] == [order_id], f"header: {header}")
        check(
            header["changeOrigin"] == f"com/salesforce/api/rest/62.0;client={CLIENT}",
            f"changeOrigin: {header['changeOrigin']}",
        )
        changed = changed_field_names(header["changedFields"], schema)
        check("Status" in changed, f"changedFields {header['changedFields']} -> {changed}")
        check(set(changed) <= {"Status", "LastModifiedDate"}, f"changed: {changed}")
        check(record["Status"] == "Activated", f"Status: {record['Status']}")
        check(record["Name"] is None, "unchanged fields are null")
        check(response.latest_replay_id == response.events[0].replay_id, "latest_replay_id")
        print("pubsub python client: OK")
        channel.close()
        return


if __name__ == "__main__":
    main()
