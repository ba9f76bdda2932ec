"""``watch --mqtt`` against a real broker (Debian's mosquitto) that the tests start on a loopback port: every
record on its topics, Home Assistant's discovery, and no record lost when the broker restarts mid-watch."""

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from anomalens.errors import AnomalensError
from anomalens.files import slug
from anomalens.pipelines.watch import watch
from tests.helpers.environment import absent
from tests.helpers.network import free_port

paho = pytest.importorskip("paho.mqtt.client", reason="the MQTT client: pip install 'anomalens[mqtt]'")


class Mosquitto:
    """A mosquitto broker on 127.0.0.1 that keeps its sessions across a restart (persistence on)."""

    def __init__(self, folder: Path):
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).is_file():
            absent("Debian's mosquitto is not installed (apt-get install mosquitto)", in_ci="; .ci/run installs it")
        self.binary, self.port = binary, free_port()
        self.config = folder / "mosquitto.conf"
        self.config.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                               f"persistence_location {folder}/\n")  # fmt: skip
        self.process = None

    def start(self) -> None:
        self.process = subprocess.Popen([self.binary, "-c", str(self.config)], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # listening once a client can connect
            probe = paho.Client(paho.CallbackAPIVersion.VERSION2)
            try:
                probe.connect("127.0.0.1", self.port)
                probe.disconnect()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


class Listener:
    """A subscriber to every topic whose session the broker keeps (QoS 1): what it missed while away comes later."""

    def __init__(self, port: int):
        self.received: list[tuple[str, str, bool]] = []
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="listener", clean_session=False)
        self.client.on_connect = lambda client, *_: client.subscribe("#", qos=1)
        self.client.on_message = lambda _, __, m: self.received.append((m.topic, m.payload.decode(), m.retain))
        self.client.reconnect_delay_set(min_delay=0.1, max_delay=0.2)  # back before the publisher (1 s at least)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def on(self, topic: str) -> list[str]:
        return [payload for name, payload, _ in self.received if name == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker(tmp_path):
    server = Mosquitto(tmp_path)
    server.start()
    listener = Listener(server.port)
    time.sleep(0.3)  # subscribed
    yield server, listener
    listener.close()
    server.stop()


def _events(records: list[dict]) -> list[str]:
    return [json.dumps(r) for r in records if r["type"] == "event"]


def test_every_record_is_on_its_topic_and_home_assistant_discovers_the_sensor(scene_and_video, broker):
    scene, test, _ = scene_and_video
    server, listener = broker
    records = []
    watch([str(test.video)], scene, explainer="deterministic", emit=records.append,
          mqtt=f"mqtt://127.0.0.1:{server.port}/yard", progress=False)  # fmt: skip
    name = slug(str(test.video))
    time.sleep(0.5)
    assert records and listener.on(f"yard/{name}/events") == _events(records)  # every one, in order
    states = listener.on(f"yard/{name}/anomaly")
    assert states[0] == "OFF" and states.count("ON") == len([r for r in records if r.get("state") == "started"])
    assert states[-1] == "OFF"
    (config,) = listener.on(f"homeassistant/binary_sensor/yard_{name}/anomaly/config")
    config = json.loads(config)
    assert config["state_topic"] == f"yard/{name}/anomaly" and config["availability_topic"] == "yard/available"
    assert config["device_class"] == "problem" and config["device"]["name"] == str(test.video)
    assert listener.on("yard/available") == ["online", "offline"]


def test_a_broker_that_restarts_mid_watch_loses_no_record(scene_and_video, broker):
    scene, test, _ = scene_and_video
    server, listener = broker
    records = []

    def emit(record):  # the broker goes away as the first record goes out, and is back two records later
        records.append(record)
        if len(records) == 1:
            server.stop()
        elif len(records) == 3:
            server.start()  # on the same address, its sessions kept
            deadline = time.monotonic() + 10
            while not listener.client.is_connected() and time.monotonic() < deadline:
                time.sleep(0.02)

    watch([str(test.video)], scene, explainer="deterministic", emit=emit, mqtt=f"mqtt://127.0.0.1:{server.port}",
          progress=False)  # fmt: skip
    assert len(records) >= 4, "records before, during and after the broker's absence"
    name = slug(str(test.video))
    deadline = time.monotonic() + 20
    while listener.on(f"anomalens/{name}/events") != _events(records) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert listener.on(f"anomalens/{name}/events") == _events(records)


@pytest.mark.parametrize(
    "url, shown",
    [
        ("http://127.0.0.1:1883", None),
        ("mqtt://", None),
        ("mqtt://me:secret@broker:99999", "mqtt://me:***@broker:99999"),
    ],
)
def test_a_broker_address_that_is_not_one_is_one_line_without_its_password(url, shown):
    from anomalens.mqtt import MqttPublisher

    with pytest.raises(AnomalensError) as raised:
        MqttPublisher(url)
    said = str(raised.value)
    assert said.startswith(f"{shown or url}: ") and "\n" not in said and "secret" not in said


def test_an_audit_publishes_its_events_and_explanations_on_the_same_topics(scene_and_video, broker, tmp_path):
    from anomalens.mqtt import publish_report
    from anomalens.pipelines import audit

    scene, test, _ = scene_and_video
    server, listener = broker
    result = audit(test.video, scene, out=tmp_path / "out", explainer="deterministic", progress=False)
    publish_report(result.report, f"mqtt://127.0.0.1:{server.port}")
    name = slug(str(test.video))
    time.sleep(0.5)
    events = [json.loads(m) for m in listener.on(f"anomalens/{name}/events")]
    said = [json.loads(m) for m in listener.on(f"anomalens/{name}/explanations")]
    assert [e["event"]["id"] for e in events] == [e.id for e in result.events] and result.events
    assert {e["state"] for e in events} == {"closed"}
    assert [(s["event_id"], s["headline"]) for s in said] == [
        (e.id, result.report.explained(e).headline) for e in result.events if result.report.explained(e)
    ]
    assert listener.on(f"anomalens/{name}/anomaly") == ["OFF"] * (len(events) + 1)
