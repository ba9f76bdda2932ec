import numpy as np
import pytest
import yaml

from anomalens.errors import ConfigError
from anomalens.rules.engine import (
    CATEGORICAL_SEVERITY,
    MAX_SEVERITY,
    RuleIndex,
    applies,
    check,
    severity,
)
from anomalens.rules.io import load_rulebook, save_rulebook
from anomalens.tools.rule_induction import (
    MARGIN,
    QUANTILE,
    induce_rules,
    induce_validated,
)
from anomalens.types import Predicate, Rule, Rulebook


def book() -> Rulebook:
    return Rulebook(
        scene="unit",
        rules=[
            Rule(id="speed-r1c1", sentence="In zone r1c1, objects move at most 2 px/frame.",
                 predicate=Predicate(fact="speed", op="<=", value=2.0, unit="px/frame", where={"zone": "r1c1"})),
            Rule(id="direction-r1c1", sentence="In zone r1c1, objects move only E.",
                 predicate=Predicate(fact="direction", op="in", value=["E", "still"], where={"zone": "r1c1"})),
            Rule(id="empty-r0c0", sentence="Nothing enters zone r0c0.", predicate=Predicate(fact="zone", op="!=", value="r0c0")),
            Rule(id="count", sentence="At most 5 objects.", predicate=Predicate(fact="count", op="<=", value=5.0)),
        ],
    )


def test_yaml_round_trip_is_readable_and_exact(tmp_path):
    path = save_rulebook(book(), tmp_path / "rules.yaml")
    text = path.read_text()
    assert text.startswith("# anomalens rulebook") and "sentence: In zone r1c1, objects move at most 2 px/frame." in text
    assert load_rulebook(path) == book()


def test_a_rule_says_where_it_came_from_and_its_id_decides_nothing(tmp_path):
    prior = Rule(id="no-carts", origin="everyday", sentence="No cart moves here.",
                 predicate=Predicate(fact="class", op="not_in", value=["cart"]))  # fmt: skip
    named_so = Rule(id="everyday-walkers", origin="induced", sentence="People walk.",
                    predicate=Predicate(fact="speed", op="<=", value=3.0))  # fmt: skip
    path = save_rulebook(Rulebook(scene="unit", rules=[prior, named_so]), tmp_path / "rules.yaml")
    assert [r.origin for r in load_rulebook(path).rules] == ["everyday", "induced"]
    # A rulebook written before rules had an origin said it in the id: read so.
    older = yaml.safe_load(path.read_text())
    older["rules"] = [{k: v for k, v in rule.items() if k != "origin"} | {"id": rule_id}
                      for rule, rule_id in zip(older["rules"], ("everyday-classes", "keep-out-lawn"))]  # fmt: skip
    path.write_text(yaml.safe_dump(older))
    assert [r.origin for r in load_rulebook(path).rules] == ["everyday", "zone"]


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - id: a\n    sentence: [unclosed\n")
    with pytest.raises(ConfigError, match=r"rules.yaml:4: invalid YAML"):
        load_rulebook(path)


def test_bad_field_names_file_line_and_field(tmp_path):
    path = save_rulebook(book(), tmp_path / "rules.yaml")
    text = path.read_text().replace("op: <=\n    value: 2.0", "op: about\n    value: 2.0", 1)
    path.write_text(text)
    line = next(i for i, l in enumerate(text.splitlines(), 1) if "op: about" in l)
    with pytest.raises(ConfigError) as info:
        load_rulebook(path)
    assert str(info.value).startswith(f"{path}:{line}: rules.0.predicate.op:")
    path.write_text("- just a list\n")
    with pytest.raises(ConfigError, match="a rulebook is a mapping"):
        load_rulebook(path)
    with pytest.raises(ConfigError, match="rulebook not found"):
        load_rulebook(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    "op, bound, value, expected",
    [
        ("<=", 2.0, 3.0, 1.5),
        ("<=", 2.0, 1.0, 0.5),
        (">=", 4.0, 2.0, 2.0),
        ("between", [2.0, 4.0], 8.0, 2.0),
        ("between", [2.0, 4.0], 1.0, 2.0),
        ("between", [2.0, 4.0], 3.0, 0.75),
        ("in", ["E", "still"], "W", CATEGORICAL_SEVERITY),
        ("in", ["E", "still"], "E", 0.0),
        ("not_in", ["r0c0"], "r0c0", CATEGORICAL_SEVERITY),
        ("!=", "r0c0", "r1c1", 0.0),
    ],
)
def test_severity_grades_each_operator(op, bound, value, expected):
    fact = "direction" if isinstance(value, str) else "speed"
    assert severity(Predicate(fact=fact, op=op, value=bound), value) == pytest.approx(expected)


def test_a_limit_of_zero_broken_reads_as_far_past_it_not_as_a_hundred_billion_times_it():
    idle = Rule(id="idle", sentence="Nothing moves.", predicate=Predicate(fact="speed", op="<=", value=0.0))
    (result,) = check([idle], {"speed": 3.0})
    assert result.violated and result.severity == MAX_SEVERITY


def test_where_limits_rules_and_categorical_rules_wait_for_established_tracks():
    rules = book()
    index = RuleIndex(rules)
    fast_west = {"zone": "r1c1", "speed": 3.0, "direction": "W", "count": 7.0, "established": True}
    results = {c.rule.id: c for c in check(index.object_rules(fast_west), fast_west)}
    assert set(results) == {"speed-r1c1", "direction-r1c1", "empty-r0c0"}
    assert results["speed-r1c1"].violated and results["direction-r1c1"].violated and not results["empty-r0c0"].violated
    assert [c.rule.id for c in check(index.frame_rules, fast_west)] == ["count"]
    young = fast_west | {"established": False}
    assert {c.rule.id for c in check(index.object_rules(young), young)} == {"speed-r1c1"}
    elsewhere = {"zone": "r2c2", "speed": 9.0}
    assert not applies(rules.get("speed-r1c1").predicate, elsewhere)
    disabled = Rulebook(rules=[r.model_copy(update={"enabled": False}) for r in rules.rules])
    assert check(disabled.rules, fast_west) == []


def objects(n, rng, zone="r1c1", direction="E", speed=(1.0, 2.0)):
    return [
        {"zone": zone, "speed": float(s), "area": 100.0 + float(s), "direction": direction, "count": 3.0,
         "occupancy": 0.01, "dwell": 0.5, "established": True}
        for s in rng.uniform(*speed, n)
    ]


def test_induced_limits_follow_the_normal_extreme_plus_margin():
    rng = np.random.default_rng(0)
    normal = objects(200, rng) + objects(50, rng, zone="r2c2", direction="W")
    rules = induce_rules(normal, ["r0c0", "r1c1", "r2c2"])
    speeds = np.array([o["speed"] for o in normal if o["zone"] == "r1c1"])
    assert rules.get("speed-r1c1").predicate.value == pytest.approx(np.quantile(speeds, QUANTILE) * (1 + MARGIN), abs=1e-3)
    assert rules.get("direction-r1c1").predicate.value == ["E", "still"]
    assert rules.get("direction-r2c2").predicate.value == ["W", "still"]
    assert rules.get("empty-r0c0").predicate.value == "r0c0"
    assert rules.get("dwell").predicate.value == 2.0  # the floor: normal objects dwell 0.5 s
    with pytest.raises(ValueError, match="need at least 30"):
        induce_rules(normal[:5], ["r1c1"])


def test_zone_and_class_rules_need_moving_objects_and_several_of_them():
    """Parked cars say nothing of how fast things move (flow noise on them must not become a limit), and one
    flapping tape seen for ten seconds says nothing of what its zone holds."""
    rng = np.random.default_rng(3)
    walkers = [o | {"class": "person", "relative_speed": 0.5, "track": k % 10} for k, o in enumerate(objects(100, rng))]
    parked = [o | {"zone": "r2c2", "direction": "still", "class": "car", "relative_speed": 0.01, "track": 100 + k % 10}
              for k, o in enumerate(objects(100, rng, zone="r2c2"))]  # fmt: skip
    tape = [o | {"class": "sports ball", "relative_speed": 2.0, "track": 200}
            for o in objects(100, rng, zone="r0c0", direction="W")]  # fmt: skip
    rules = induce_rules(walkers + parked + tape, ["r0c0", "r1c1", "r2c2"])
    assert rules.find("speed-r1c1") is not None and rules.find("speed-r2c2") is None
    assert rules.find("relative-speed-person") is not None and rules.find("relative-speed-car") is None
    assert rules.find("relative-speed-sports-ball") is None
    assert not [r.id for r in rules.rules if r.id.endswith("r0c0")]  # nor size, direction, classes


def test_with_a_perspective_speeds_and_sizes_are_bounded_for_where_each_object_stands_not_per_zone():
    """Normal walkers were all seen far away (zone r0c0); one walking near the camera is big and quick in pixels
    but a walker for where it stands; a "walker" the size of a car there is not."""
    rng = np.random.default_rng(4)
    far = [o | {"zone": "r0c0", "class": "person", "relative_speed": float(v), "relative_size": 0.3, "track": k % 10}
           for k, (o, v) in enumerate(zip(objects(200, rng, zone="r0c0"), rng.uniform(0.5, 0.9, 200)))]  # fmt: skip
    rules = induce_rules(far, ["r0c0", "r2c2"], perspective=True)
    assert rules.get("speed-any").predicate.fact == "relative_speed"
    assert not [r.id for r in rules.rules if r.id.startswith(("size-", "speed-r", "occupancy"))]
    near = far[0] | {"zone": "r2c2", "speed": 40.0, "area": 5000.0, "relative_speed": 0.8, "relative_size": 0.3}
    index = RuleIndex(rules)
    assert not [c.rule.id for c in check(index.object_rules(near), near) if c.violated and c.rule.id != "empty-r2c2"]
    car = near | {"relative_size": 1.5}
    assert [c.rule.id for c in check(index.object_rules(car), car) if c.violated and c.rule.id != "empty-r2c2"] == [
        "relative-size-person"]


def test_validation_drops_categorical_rules_that_held_out_footage_breaks():
    rng = np.random.default_rng(1)
    # Zone r2c2: fold A sees only E, fold B only W -> its direction rule does not generalise.
    first = objects(100, rng) + objects(40, rng, zone="r2c2", direction="E")
    second = objects(100, rng) + objects(40, rng, zone="r2c2", direction="W")
    rules = induce_validated((first, second), ["r0c0", "r1c1", "r2c2"])
    ids = {r.id for r in rules.rules}
    assert "direction-r1c1" in ids and "empty-r0c0" in ids
    assert "direction-r2c2" not in ids
    assert all("held_out_rate" in r.stats for r in rules.rules)
    yaml.safe_dump(rules.model_dump(mode="json"))  # stays plain data


def test_unvisited_zones_that_look_like_walked_ground_get_no_empty_rule():
    from anomalens.tools.motion import SceneGeometry, ground_mask, walkable_zones

    rng = np.random.default_rng(0)
    background = np.full((80, 80), 150.0) + rng.normal(0, 2, (80, 80))  # paving everywhere...
    background[:, 40:] = 60.0 + rng.normal(0, 15, (80, 40))  # ...but a dark, rough lawn on the right
    geometry = SceneGeometry(80, 80, rows=2, cols=2)
    feet = np.column_stack([rng.uniform(5, 35, 200), rng.uniform(5, 38, 200)])  # people seen top-left only
    walkable = walkable_zones(ground_mask(background, feet), geometry)
    assert walkable == {"r0c0", "r1c0"}  # r1c0 was never entered but is paved like r0c0
    normal = objects(40, rng, zone="r0c0")
    ids = {r.id for r in induce_rules(normal, geometry.zones, walkable=walkable).rules}
    assert {"empty-r0c1", "empty-r1c1"} <= ids and "empty-r1c0" not in ids
