"""Events out to an MQTT broker, where home and NVR set-ups listen (Frigate publishes there; Home Assistant
discovers entities from it), with the maintained Eclipse Paho client.

Topics, under a prefix (``anomalens`` unless the URL's path gives one), per source (its name as ``files.slug``):

- ``<prefix>/available``: ``online`` while connected, ``offline`` (retained; the broker says it for us when the
  connection is lost, as the last will).
- ``<prefix>/<source>/events``: each event record (JSON, as ``watch`` prints it): ``"state": "started"``, then
  ``"closed"`` with its headline.
- ``<prefix>/<source>/explanations``: each explanation record (JSON).
- ``<prefix>/<source>/anomaly``: ``ON`` from an event's start to its close, else ``OFF`` (retained).
- ``homeassistant/binary_sensor/<prefix>_<source>/anomaly/config``: Home Assistant's discovery of that state as
  a binary sensor of class ``problem`` (retained).

Every record goes at QoS 1 and waits in the client while the broker is away (a restart loses nothing); closing
waits, a while, for what is still on its way.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from urllib.parse import unquote, urlsplit

from anomalens.errors import AnomalensError, MissingExtra
from anomalens.files import slug
from anomalens.progress import say
from anomalens.records import event_record, explanation_record
from anomalens.report import Report

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
DISCOVERY_PREFIX = "homeassistant"
FLUSH_SECONDS = 10.0  # how long closing waits for records still on their way to the broker
RECONNECT_MAX_S = 4  # the longest wait between tries while the broker is away: well inside the flush at closing


class MqttPublisher:
    """Publishes ``watch`` records to the broker at ``url``: ``mqtt://host``, or
    ``mqtt://user:password@host:port/prefix`` (``mqtts://`` for TLS)."""

    def __init__(self, url: str):
        try:
            import paho.mqtt.client as paho
        except ImportError:
            raise MissingExtra("--mqtt needs the Paho MQTT client: pip install 'anomalens[mqtt]'") from None
        parts = urlsplit(url)
        shown = url.replace(f":{parts.password}@", ":***@") if parts.password else url  # never a password in a log
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            raise AnomalensError(f"{shown}: an MQTT broker is mqtt://HOST, or mqtt://HOST:PORT/PREFIX (mqtts://: TLS)")
        try:
            port = parts.port or DEFAULT_PORTS[parts.scheme]
        except ValueError as error:
            raise AnomalensError(f"{shown}: {error}") from None
        self.url, self.prefix = shown, slug(parts.path.strip("/")) or "anomalens"
        self.available = f"{self.prefix}/available"
        # Message ids sent and not yet acknowledged; acknowledged ones until matched (the loop thread adds them).
        self.pending: set[int] = set()
        self.acked: set[int] = set()
        self.lock = threading.Lock()
        # A broker drops a client when another connects under its id: each publisher has its own.
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"{self.prefix}-{uuid.uuid4().hex[:12]}")
        if parts.username:
            self.client.username_pw_set(unquote(parts.username), unquote(parts.password or ""))
        if parts.scheme == "mqtts":
            self.client.tls_set()
        self.client.will_set(self.available, "offline", qos=1, retain=True)
        self.client.reconnect_delay_set(min_delay=1, max_delay=RECONNECT_MAX_S)
        self.client.max_queued_messages_set(0)  # no limit: records wait while the broker is away
        self.client.on_connect = self._connected
        self.client.on_disconnect = self._disconnected
        self.client.on_publish = lambda client, userdata, mid, reason, properties: self.acked.add(mid)
        self.client.connect_async(parts.hostname, port, keepalive=30)
        self.client.loop_start()

    def _connected(self, client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            say(f"mqtt {self.url}: refused ({reason}); trying again")
            return
        self._publish(self.available, "online", retain=True)

    def _disconnected(self, client, userdata, flags, reason, properties) -> None:
        say(f"mqtt {self.url}: connection lost ({reason}); records wait until it is back")

    def _settle(self) -> int:
        """Forget the records the broker acknowledged (before their ids are used again); how many are left."""
        with self.lock:
            done = self.pending & self.acked
            self.pending -= done
            self.acked -= done
            return len(self.pending)

    def _publish(self, topic: str, payload: str, retain: bool = False) -> None:
        self._settle()
        # Sent now, or kept by the client and sent once the broker is back (its "no connection" is not a failure).
        sent = self.client.publish(topic, payload, qos=1, retain=retain)
        with self.lock:
            self.pending.add(sent.mid)

    def announce(self, source: str) -> None:
        """Tell Home Assistant about ``source``'s anomaly sensor (and that nothing is anomalous yet)."""
        name = slug(source)
        unique = f"{self.prefix}_{name}"
        config = {
            "name": "Anomaly",
            "unique_id": f"{unique}_anomaly",
            "device_class": "problem",
            "state_topic": f"{self.prefix}/{name}/anomaly",
            "availability_topic": self.available,
            "json_attributes_topic": f"{self.prefix}/{name}/events",
            "device": {"identifiers": [unique], "name": source, "manufacturer": "anomalens"},
        }
        self._publish(f"{DISCOVERY_PREFIX}/binary_sensor/{unique}/anomaly/config", json.dumps(config), retain=True)
        self._publish(f"{self.prefix}/{name}/anomaly", "OFF", retain=True)

    def __call__(self, record: dict) -> None:
        """Publish one ``watch`` record on its source's topics."""
        name = slug(record["source"])
        kind = "events" if record["type"] == "event" else "explanations"
        self._publish(f"{self.prefix}/{name}/{kind}", json.dumps(record))
        if record["type"] == "event":
            self._publish(f"{self.prefix}/{name}/anomaly", "ON" if record["state"] == "started" else "OFF", retain=True)

    def close(self) -> None:
        """Say ``offline``, wait a while for what is on its way, then disconnect."""
        self._publish(self.available, "offline", retain=True)
        deadline = time.monotonic() + FLUSH_SECONDS
        while (lost := self._settle()) and time.monotonic() < deadline:
            time.sleep(0.05)
        if lost:
            say(f"mqtt {self.url}: {lost} record(s) not delivered: the broker did not answer in {FLUSH_SECONDS:g} s")
        self.client.disconnect()
        self.client.loop_stop()


def publish_report(report: Report, url: str) -> None:
    """An audit's events (closed, with their headlines) and explanations, on the topics ``watch`` uses."""
    broker = MqttPublisher(url)
    try:
        broker.announce(report.input)
        for event in report.events:
            explanation = report.explained(event)
            headline = explanation.headline if explanation is not None else ""
            broker(event_record(report.input, event, "closed", headline=headline))
            if explanation is not None:
                broker(explanation_record(report.input, event.id, explanation))
    finally:
        broker.close()
