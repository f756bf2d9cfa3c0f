#!/usr/bin/env python3
"""A Sagaflow adapter in Python: the protocol of docs/protocol.md, spoken
with confluent-kafka (librdkafka) and fastavro.

It reads commands from ``<prefix>sagaflow.commands.<service>``, calls
``POST <backend>/<operation>`` with the command's input as JSON and the
``Idempotency-Key`` header, and replies on ``<prefix>sagaflow.replies``.
What it must do, as every adapter must:

* decode the Confluent wire format (magic byte 0, 4-byte big-endian schema
  id, Avro body), fetching the writer schema from the registry by id;
* refuse what it cannot handle to ``<prefix>sagaflow.dead-letter`` with the
  original key, value and headers plus ``sagaflow-dlq-*`` headers, and move
  on;
* reply keyed by the saga id (murmur2 partitioner, as the Java client), with
  the ``sagaflow-saga-id``, ``sagaflow-message-id`` (``<command id>/reply``),
  ``sagaflow-type: Reply`` headers, and the command's ``traceparent`` and
  ``tracestate`` (which also go to the backend as request headers);
* de-duplicate: the ``Idempotency-Key`` is the command id without its
  attempt number; a final outcome (success, business failure) is answered
  again from memory for a redelivered command, without calling the backend;
* commit a command's offset only after its reply (or dead letter) was
  acknowledged by the brokers.

This example keeps its de-duplication store in memory (a restart calls the
backend again, with the same Idempotency-Key); the Rust adapter also keeps
a durable log. Usage: ``python3 sagaflow_adapter.py --help``.
"""

import argparse
import io
import json
import logging
import re
import signal
import struct
import sys
import time
import urllib.error
import urllib.request

import fastavro
from confluent_kafka import Consumer, KafkaException, Producer

LOG = logging.getLogger("sagaflow-adapter-py")

# Header names (crates/bus/src/headers.rs, crates/bus/src/dead_letter.rs).
SAGA_ID = "sagaflow-saga-id"
MESSAGE_ID = "sagaflow-message-id"
MESSAGE_TYPE = "sagaflow-type"
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
DLQ_REASON = "sagaflow-dlq-reason"
DLQ_CODE = "sagaflow-dlq-code"
DLQ_TOPIC = "sagaflow-dlq-source-topic"
DLQ_PARTITION = "sagaflow-dlq-source-partition"
DLQ_OFFSET = "sagaflow-dlq-source-offset"

# The longest tracestate carried, in bytes (W3C: at least 512), and its most
# list members (crates/trace/src/lib.rs, valid_tracestate).
TRACESTATE_MAX_LEN = 512
TRACESTATE_MAX_MEMBERS = 32
TRACESTATE_KEY = re.compile(r"[a-z0-9_\-*/@]+")
TRACESTATE_VALUE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]*")

# HTTP statuses that are worth trying again (as the Rust adapter's defaults).
TRANSIENT_STATUSES = {408, 425, 429}


class Refused(Exception):
    """A record that can never be handled: it goes to the dead-letter topic."""

    def __init__(self, code, reason):
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class Registry:
    """Just enough of the Confluent schema registry API."""

    def __init__(self, url):
        self.url = url.rstrip("/")
        self.by_id = {}

    def _call(self, method, path, body=None):
        """One registry call. An unreachable registry (or a 5xx) is retried
        with backoff until it answers: it is no reason to dead-letter."""
        data = None if body is None else json.dumps(body).encode()
        delay = 0.1
        while True:
            req = urllib.request.Request(
                self.url + path,
                data=data,
                method=method,
                headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
            )
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    return json.load(resp)
            except urllib.error.HTTPError as e:
                if e.code < 500:
                    raise
                LOG.warning("schema registry answered %d; retrying in %.1fs", e.code, delay)
            except (urllib.error.URLError, OSError) as e:
                LOG.warning("schema registry unreachable (%s); retrying in %.1fs", e, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def writer_schema(self, schema_id):
        if schema_id not in self.by_id:
            try:
                text = self._call("GET", f"/schemas/ids/{schema_id}")["schema"]
            except urllib.error.HTTPError as e:
                raise Refused("SF-CODEC-003", f"unknown schema id {schema_id} (registry: HTTP {e.code})")
            self.by_id[schema_id] = fastavro.parse_schema(json.loads(text))
        return self.by_id[schema_id]

    def register(self, subject, schema):
        return self._call(
            "POST", f"/subjects/{subject}/versions", {"schema": json.dumps(schema)}
        )["id"]


def decode(registry, value, reader):
    """A Confluent-framed Avro value as a dict, read with `reader`."""
    if value is None or len(value) < 5:
        raise Refused("SF-CODEC-001", f"payload too short: {len(value or b'')} bytes")
    if value[0] != 0:
        raise Refused("SF-CODEC-002", f"wrong magic byte {value[0]:#04x}, expected 0x00")
    (schema_id,) = struct.unpack(">I", value[1:5])
    writer = registry.writer_schema(schema_id)
    try:
        return fastavro.schemaless_reader(io.BytesIO(value[5:]), writer, reader)
    except Exception as e:  # fastavro raises several types for bad bodies
        raise Refused("SF-CODEC-005", f"body does not match schema {schema_id}: {e}")


def encode(schema_id, schema, record):
    out = io.BytesIO()
    out.write(b"\x00" + struct.pack(">I", schema_id))
    fastavro.schemaless_writer(out, schema, record)
    return out.getvalue()


def idempotency_key(command_id):
    """The command id without its attempt number (`<saga>/<step>/3` -> `<saga>/<step>`)."""
    head, _, last = command_id.rpartition("/")
    return head if head and last.isdigit() else command_id


def valid_tracestate(header):
    """The W3C ``tracestate`` worth carrying, trimmed and otherwise unchanged,
    or None: at most 512 bytes, a comma-separated list of at most 32
    ``key=value`` members (empty members allowed). A bad one is dropped,
    never an error, and never cut (as the Rust adapter does)."""
    if header is None:
        return None
    header = header.strip(" \t")
    if not header or len(header.encode()) > TRACESTATE_MAX_LEN:
        return None
    members = 0
    for member in header.split(","):
        member = member.strip(" \t")
        if not member:
            continue
        key, eq, value = member.partition("=")
        if (
            not eq
            or not TRACESTATE_KEY.fullmatch(key)
            or not value
            or not TRACESTATE_VALUE.fullmatch(value)
        ):
            return None
        members += 1
    return header if 1 <= members <= TRACESTATE_MAX_MEMBERS else None


def trace_headers(command, kafka_headers):
    """The trace context a command hands on to its backend call and its
    reply: its ``traceparent`` (the command's ``trace_parent`` field, else
    its header) and, only with one, its ``tracestate`` header unchanged."""
    found = {}
    for name, value in kafka_headers or []:
        if name in (TRACEPARENT, TRACESTATE) and value is not None:
            found[name] = value.decode("utf-8", "replace")
    out = {}
    parent = command.get("trace_parent") or found.get(TRACEPARENT)
    if parent:
        out[TRACEPARENT] = parent
        state = valid_tracestate(found.get(TRACESTATE))
        if state:
            out[TRACESTATE] = state
    return out


def call_backend(backend, command, timeout_s, trace=None):
    """Calls the backend; returns (outcome, data, error, http status)."""
    url = f"{backend.rstrip('/')}/{command['operation']}"
    headers = {
        "Content-Type": "application/json",
        "Idempotency-Key": idempotency_key(command["command_id"]),
    }
    headers.update(trace or {})
    req = urllib.request.Request(
        url, data=command["input_json"].encode(), method="POST", headers=headers
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    except (urllib.error.URLError, OSError) as e:
        return "TRANSIENT_FAILURE", None, {"code": "connect_error", "message": str(e)}, None
    try:
        data = json.loads(body) if body.strip() else None
    except ValueError:
        if 200 <= status < 300:
            return "TRANSIENT_FAILURE", None, {
                "code": "invalid_response",
                "message": f"HTTP {status} body is not JSON",
            }, status
        data = None
    if 200 <= status < 300:
        return "SUCCESS", data, None, status
    error = {"code": f"http_{status}", "message": f"backend answered HTTP {status}"}
    if status in TRANSIENT_STATUSES or status >= 500:
        return "TRANSIENT_FAILURE", data, error, status
    return "BUSINESS_FAILURE", data, error, status


class Adapter:
    def __init__(self, args):
        self.args = args
        self.service = args.service
        self.commands_topic = f"{args.prefix}sagaflow.commands.{args.service}"
        self.replies_topic = f"{args.prefix}sagaflow.replies"
        self.dead_letter_topic = f"{args.prefix}sagaflow.dead-letter"
        self.registry = Registry(args.registry)
        with open(f"{args.schemas}/sagaflow/Command.avsc") as f:
            self.command_schema = fastavro.parse_schema(json.load(f))
        with open(f"{args.schemas}/sagaflow/Reply.avsc") as f:
            self.reply_raw = json.load(f)
        self.reply_schema = fastavro.parse_schema(self.reply_raw)
        subject = args.reply_subject or f"{self.replies_topic}-value"
        self.reply_schema_id = self.registry.register(subject, self.reply_raw)
        props = dict(kv.split("=", 1) for kv in args.property)
        self.consumer = Consumer(
            {
                "bootstrap.servers": args.bootstrap_servers,
                "group.id": args.group_id or f"sagaflow-adapter-{args.service}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                **props,
            }
        )
        self.producer = Producer(
            {
                "bootstrap.servers": args.bootstrap_servers,
                "acks": "all",
                "enable.idempotence": True,
                # Replies must land on the partition of their saga: the
                # orchestrator's partitioner is the Java client's murmur2.
                "partitioner": "murmur2_random",
                **{k: v for k, v in props.items() if not k.startswith("group.")},
            }
        )
        # Idempotency-Key -> final reply fields (success, business failure).
        self.done = {}
        self.running = True

    def produce(self, topic, key, value, headers):
        """Produces and waits for the brokers' acknowledgement."""
        result = {}

        def delivered(err, _msg):
            result["err"] = err

        while True:
            self.producer.produce(topic, key=key, value=value, headers=headers, on_delivery=delivered)
            self.producer.flush(30)
            err = result.get("err")
            if err is None and "err" in result:
                return
            if err is not None and not err.retriable():
                raise KafkaException(err)
            LOG.warning("produce to %s failed (%s); retrying", topic, err)
            time.sleep(0.5)
            result.clear()

    def dead_letter(self, msg, code, reason):
        headers = list(msg.headers() or []) + [
            (DLQ_REASON, reason.encode()),
            (DLQ_CODE, code.encode()),
            (DLQ_TOPIC, msg.topic().encode()),
            (DLQ_PARTITION, str(msg.partition()).encode()),
            (DLQ_OFFSET, str(msg.offset()).encode()),
        ]
        LOG.warning("dead-lettering %s/%d@%d: %s %s", msg.topic(), msg.partition(), msg.offset(), code, reason)
        self.produce(self.dead_letter_topic, msg.key(), msg.value(), headers)

    def reply(self, command, outcome, data, error, status, trace=None):
        record = {
            "command_id": command["command_id"],
            "saga_id": command["saga_id"],
            "step": command["step"],
            "attempt": command["attempt"],
            "service": command["service"],
            "operation": command["operation"],
            "outcome": outcome,
            "data_json": json.dumps(data),
            "error": error,
            "completed_at": int(time.time() * 1000),
            "backend_status": status,
        }
        headers = [
            (SAGA_ID, command["saga_id"].encode()),
            (MESSAGE_ID, f"{command['command_id']}/reply".encode()),
            (MESSAGE_TYPE, b"Reply"),
        ]
        for name, value in (trace or {}).items():
            headers.append((name, value.encode()))
        value = encode(self.reply_schema_id, self.reply_schema, record)
        self.produce(self.replies_topic, command["saga_id"].encode(), value, headers)

    def handle(self, msg):
        try:
            command = decode(self.registry, msg.value(), self.command_schema)
            if command["service"] != self.service:
                raise Refused(
                    "SF-ADAPTER-020",
                    f"command for service `{command['service']}` on the topic of `{self.service}`",
                )
        except Refused as r:
            self.dead_letter(msg, r.code, r.reason)
            return
        trace = trace_headers(command, msg.headers())
        key = idempotency_key(command["command_id"])
        if key in self.done:
            LOG.info("%s: answered from the idempotency store", command["command_id"])
            outcome, data, error, status = self.done[key]
        else:
            timeout_s = max(1.0, min(command["timeout_ms"] or 30000, 30000) / 1000)
            outcome, data, error, status = call_backend(self.args.backend, command, timeout_s, trace)
            if outcome != "TRANSIENT_FAILURE":
                self.done[key] = (outcome, data, error, status)
        LOG.info("%s -> %s", command["command_id"], outcome)
        self.reply(command, outcome, data, error, status, trace)

    def run(self):
        self.consumer.subscribe([self.commands_topic])
        LOG.info("consuming %s", self.commands_topic)
        while self.running:
            msg = self.consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                LOG.warning("consumer: %s", msg.error())
                continue
            self.handle(msg)
            # Done: the reply (or dead letter) is acknowledged.
            self.consumer.store_offsets(msg)
            self.consumer.commit(asynchronous=False)
        self.consumer.close()
        self.producer.flush(10)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bootstrap-servers", required=True)
    p.add_argument("--registry", required=True, help="schema registry URL")
    p.add_argument("--service", required=True)
    p.add_argument("--backend", required=True, help="base URL; POST <backend>/<operation>")
    p.add_argument("--prefix", default="", help="topic prefix, e.g. `staging.`")
    p.add_argument("--group-id", default=None)
    p.add_argument("--schemas", default="schemas", help="the schemas/ directory")
    p.add_argument("--reply-subject", default=None, help="default: <replies topic>-value")
    p.add_argument("-X", dest="property", action="append", default=[], metavar="KEY=VALUE",
                   help="a librdkafka property (repeatable)")
    args = p.parse_args(argv)
    if not re.fullmatch(r"[A-Za-z0-9._-]+", args.service):
        p.error("--service must be letters, digits, `.`, `_` or `-`")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    adapter = Adapter(args)

    def stop(*_):
        adapter.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    adapter.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
