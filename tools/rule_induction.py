"""Induce a scene's rulebook from the facts of objects seen in normal footage.

Every constant here is fixed a priori (never tuned on test labels): a rule's limit is the normal extreme
(a high quantile, robust to a stray detection) plus ``MARGIN``, and never below what footage known to be normal
reached (a rule its own footage breaks would raise alarms on normal footage); zones, directions and sizes need
``MIN_SUPPORT`` observations of ``MIN_OBJECTS`` different objects before a zone-specific rule is written.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from anomalens.facts import named, unit
from anomalens.rules.engine import CATEGORICAL_OPS, RuleIndex, check
from anomalens.tools.coco import coco_class
from anomalens.types import SECTORS, STILL, Predicate, Rule, Rulebook

MARGIN = 0.25  # limits sit 25% beyond the normal extreme
QUANTILE = 0.995  # the "normal extreme" of a per-zone distribution
MIN_SUPPORT = 30  # observations a zone needs before it gets its own speed/size/direction rule
# ... made by at least this many different objects: one flapping tape seen for ten seconds says nothing of what a
# zone holds or how fast things move in it.
MIN_OBJECTS = 2
DIRECTION_SHARE = 0.01  # headings rarer than this in a zone count as never seen there
# Footage that may itself hold anomalies (self-referenced normality): up to this share of the object
# observations is presumed anomalous, so limits sit at its quantile and rarer headings are not normal.
SELF_REFERENCED_CONTAMINATION = 0.05
MIN_DWELL_S = 2.0  # a dwell rule never fires below this, however briskly normal footage moves


def _stats(values: np.ndarray) -> dict[str, float]:
    return {
        "n": float(values.size),
        "median": round(float(np.median(values)), 3),
        "p90": round(float(np.quantile(values, 0.9)), 3),
        "p99.5": round(float(np.quantile(values, QUANTILE)), 3),
        "max": round(float(values.max()), 3),
    }


def induce_rules(
    objects: list[dict],
    zones: list[str],
    *,
    walkable: set[str] = frozenset(),
    scene: str = "",
    sources: list[str] | None = None,
    contamination: float = 0.0,
    fps: float | None = None,
    perspective: bool = False,
) -> Rulebook:
    """Rules that every object in ``objects`` (facts from normal footage) satisfies, with margin.

    Zones nobody entered get an "empty" rule unless they are in ``walkable`` (they look like the ground
    people were seen on, see ``tools.motion.walkable_zones``). ``contamination`` is the share of
    observations that may be anomalous (0 for footage known to be normal, whose extremes every limit then clears).
    ``fps``: the footage's frame rate, kept with the rulebook. ``perspective``: the objects' relative speeds and
    sizes are against a person's height where each stands; speeds and sizes are then bounded for that, per class and
    anywhere in view, not in pixels per zone (a walker near the camera is big and quick in pixels, in a zone the
    normal footage may have seen no one in)."""
    quantile = min(QUANTILE, 1 - contamination)
    direction_share = max(DIRECTION_SHARE, contamination)
    if len(objects) < MIN_SUPPORT:
        raise ValueError(f"only {len(objects)} objects in the normal footage; need at least {MIN_SUPPORT} to induce rules")
    rules: list[Rule] = []
    by_zone: dict[str, list[dict]] = defaultdict(list)
    for obj in objects:
        by_zone[obj["zone"]].append(obj)

    def upper(rule_id: str, fact: str, values: np.ndarray, where: dict, sentence: str) -> None:
        limit = _limit(values, quantile, contamination)
        rules.append(
            Rule(
                id=rule_id,
                sentence=sentence.format(limit=limit, unit=unit(fact)),
                predicate=Predicate(fact=fact, op="<=", value=round(limit, 3), unit=unit(fact), where=where),
                margin=MARGIN,
                stats=_stats(values),
            )
        )

    for zone in zones:  # one rule per empty zone, so that each is validated (and edited) on its own
        if zone not in by_zone and zone not in walkable:
            rules.append(
                Rule(
                    id=f"empty-{zone}",
                    sentence=f"Nothing enters zone {zone}, which does not look like where things move.",
                    predicate=Predicate(fact="zone", op="!=", value=zone),
                    stats={"objects_seen": 0.0},
                )
            )
    fast = "relative_speed" if perspective else "speed"
    said = "{limit:.2f} body heights per second" if perspective else "{limit:.0f} {unit}"
    upper("speed-any", fast, np.array([o[fast] for o in objects]), {}, f"Nothing anywhere moves faster than {said}.")
    for zone in zones:
        members = by_zone.get(zone, [])
        # Support counts established tracks only: a zone that saw nothing but flickering noise blobs would
        # otherwise get limits that the first real passer-by breaks many times over.
        if sum(bool(o.get("established", True)) for o in members) < MIN_SUPPORT or _different(members) < MIN_OBJECTS:
            continue
        if not perspective:
            speed = np.array([o["speed"] for o in members])
            area = np.array([o["area"] for o in members])
            if _moving(members) >= MIN_SUPPORT:  # a zone of parked cars says nothing of how fast things move there
                upper(f"speed-{zone}", "speed", speed, {"zone": zone},
                      f"In zone {zone}, objects move at most {{limit:.0f}} {{unit}}.")  # fmt: skip
            upper(f"size-{zone}", "area", area, {"zone": zone},
                  f"In zone {zone}, objects are at most {{limit:.0f}} {{unit}} in size.")  # fmt: skip
        headings = Counter(o["direction"] for o in members if o["direction"] != STILL)
        moving = sum(headings.values())
        if moving >= MIN_SUPPORT:
            allowed = [s for s in SECTORS if headings[s] / moving >= direction_share]
            if len(allowed) < len(SECTORS):
                rules.append(
                    Rule(
                        id=f"direction-{zone}",
                        sentence=f"In zone {zone}, objects move only {', '.join(allowed)} (or stand still).",
                        predicate=Predicate(fact="direction", op="in", value=[*allowed, STILL], where={"zone": zone}),
                        stats={f"share_{s}": round(headings[s] / moving, 4) for s in SECTORS} | {"n": float(moving)},
                    )
                )
    if any(o.get("class") is not None for o in objects):
        rules += _class_rules(objects, quantile, direction_share, contamination, perspective)
    counts = np.array([o["count"] for o in objects])
    occupancy = np.array([o["occupancy"] for o in objects])
    dwell = np.array([o["dwell"] for o in objects])
    upper("count", "count", counts, {}, "At most {limit:.0f} separate objects are in view at once.")
    if not perspective:  # with people's sizes known, crowding is counted in objects, not in pixels near the camera
        upper("occupancy", "occupancy", occupancy, {}, "Objects cover at most {limit:.1%} of the view.")
    dwell_limit = max(_limit(dwell, quantile, contamination), MIN_DWELL_S)
    rules.append(
        Rule(
            id="dwell",
            sentence=f"Nothing stays in one place for more than {dwell_limit:.1f} s.",
            predicate=Predicate(fact="dwell", op="<=", value=round(dwell_limit, 3), unit="s"),
            margin=MARGIN,
            stats=_stats(dwell),
        )
    )
    return Rulebook(scene=scene, induced_from=sources or [], fps=fps, rules=rules)


def _moving(objects: list[dict]) -> int:
    """How many of ``objects`` were moving (had a heading)."""
    return sum(o["direction"] != STILL for o in objects)


def _different(observations: list[dict]) -> int:
    """How many different objects ``observations`` are of (by their ``track``; without one, each is its own)."""
    return len({o.get("track", k) for k, o in enumerate(observations)})


def _limit(values: np.ndarray, quantile: float, contamination: float) -> float:
    """The normal extreme (``quantile``) plus ``MARGIN``; for footage known to be normal (no ``contamination``),
    never below its own maximum."""
    limit = float(np.quantile(values, quantile)) * (1 + MARGIN)
    return max(limit, float(values.max())) if contamination == 0 else limit


def _class_rules(objects: list[dict], quantile: float, class_share: float, contamination: float,
                 perspective: bool) -> list[Rule]:  # fmt: skip
    """Rules that name what the objects are (facts set by ``tools.objects``): the classes seen (each in at least
    ``class_share`` of the named established objects; a moving thing nothing named has no class, and no class
    rule applies to it), the zones where only some of them move ("no car in zone r2c1"; zones with
    ``MIN_SUPPORT`` named objects), and for each class seen moving ``MIN_SUPPORT`` times on ``MIN_OBJECTS`` objects, how
    fast it moves for its size (body heights per second; over every object, as speed limits are, since every object
    is checked against them) and, with a ``perspective``, how big it is for where it stands."""
    rules = []
    established = [o for o in objects if o.get("established", True)]
    seen = _classes_seen(established, class_share)
    if seen is not None:
        allowed, stats = seen
        rules.append(
            Rule(
                id="classes",
                sentence=f"Every object the detector names is {' or '.join(named(c) for c in allowed)}.",
                predicate=Predicate(fact="class", op="in", value=allowed),
                stats=stats,
            )
        )
        by_zone: dict[str, list[dict]] = defaultdict(list)
        for obj in established:
            by_zone[obj["zone"]].append(obj)
        for zone, members in sorted(by_zone.items()):
            here = _classes_seen(members, class_share) if _different(members) >= MIN_OBJECTS else None
            if here is None or not (absent := [c for c in allowed if c not in here[0]]):
                continue  # too few named objects, or every class of the scene moves here too
            rules.append(
                Rule(
                    id=f"classes-{zone}",
                    sentence=f"No {' or '.join(absent)} in zone {zone}: only "
                    f"{' or '.join(named(c) for c in here[0])} is named there.",
                    predicate=Predicate(fact="class", op="in", value=here[0], where={"zone": zone}),
                    stats=here[1],
                )
            )
    by_class: dict[str, list[dict]] = defaultdict(list)
    for obj in objects:
        if obj.get("class") is not None:
            by_class[obj["class"]].append(obj)
    for name, members in sorted(by_class.items()):
        if _moving(members) < MIN_SUPPORT or _different(members) < MIN_OBJECTS:
            continue  # a class only ever seen standing (parked cars), or on one or two objects, has no pace to keep
        bounds = [(relative_speed_id(name), "relative_speed", "{who} moves at most {limit:.2f} body heights per second.")]
        if perspective:
            bounds.append((f"relative-size-{name.replace(' ', '-')}", "relative_size",
                           "{who} is at most {limit:.2f} square body heights in size for where it stands."))  # fmt: skip
        for rule_id, fact, sentence in bounds:
            values = np.array([o[fact] for o in members])
            limit = _limit(values, quantile, contamination)
            rules.append(
                Rule(
                    id=rule_id,
                    sentence=sentence.format(who=named(name).capitalize(), limit=limit),
                    predicate=Predicate(fact=fact, op="<=", value=round(limit, 3), unit=unit(fact), where={"class": name}),
                    margin=MARGIN,
                    stats=_stats(values),
                )
            )
    return rules


def _classes_seen(objects: list[dict], class_share: float) -> tuple[list[str], dict[str, float]] | None:
    """The classes named in at least ``class_share`` of ``objects`` (unnamed ones left out) and each class's
    share, or None below ``MIN_SUPPORT`` named objects."""
    classes = Counter(o["class"] for o in objects if o.get("class") is not None)
    total = sum(classes.values())
    if total < MIN_SUPPORT:
        return None
    allowed = sorted(c for c, n in classes.items() if n / total >= class_share)
    return allowed, {f"share_{c}": round(n / total, 4) for c, n in sorted(classes.items())} | {"n": float(total)}


def relative_speed_id(name: str) -> str:
    """The id of the rule that bounds how fast objects of class ``name`` move for their size."""
    return f"relative-speed-{name.replace(' ', '-')}"


MAX_HELD_OUT_RATE = 0.005  # a categorical rule that held-out normal footage breaks more often is dropped


def held_out_rates(rulebook: Rulebook, objects: list[dict]) -> dict[str, float]:
    """Share of ``objects`` (normal footage the rules were not induced from) breaking each rule."""
    index = RuleIndex(rulebook)
    broken: Counter = Counter()
    checked: Counter = Counter()
    for obj in objects:
        for result in check(index.object_rules(obj) + index.frame_rules, obj):
            checked[result.rule.id] += 1
            broken[result.rule.id] += result.violated
    return {rule.id: broken[rule.id] / checked[rule.id] if checked[rule.id] else 0.0 for rule in rulebook.rules}


def induce_validated(
    folds: tuple[list[dict], list[dict]],
    zones: list[str],
    *,
    walkable: set[str] = frozenset(),
    contamination: float = 0.0,
    **meta,
) -> Rulebook:
    """Induce from both folds together, keeping only categorical rules that generalise across them.

    Rules induced on each fold are checked on the other; a categorical rule (empty zones, directions)
    broken by more than ``MAX_HELD_OUT_RATE`` of held-out normal objects describes noise, not
    the scene, and is dropped. Numeric limits carry their margin; their held-out rate is recorded in
    ``stats["held_out_rate"]`` for every rule kept.
    """
    first, second = folds
    rates: dict[str, float] = {}
    for train, held_out in ((first, second), (second, first)):
        induced = induce_rules(train, zones, walkable=walkable, contamination=contamination,
                               perspective=meta.get("perspective", False))  # fmt: skip
        for rule_id, rate in held_out_rates(induced, held_out).items():
            rates[rule_id] = max(rates.get(rule_id, 0.0), rate)
    rulebook = induce_rules(first + second, zones, walkable=walkable, contamination=contamination, **meta)
    max_rate = max(MAX_HELD_OUT_RATE, contamination)  # contaminated folds break good rules that often
    kept = []
    for rule in rulebook.rules:
        rate = rates.get(rule.id)  # None: the rule exists only with both folds' support
        categorical = rule.predicate.op in CATEGORICAL_OPS
        if categorical and (rate is None or rate > max_rate):
            continue
        kept.append(rule.model_copy(update={"stats": rule.stats | {"held_out_rate": round(rate or 0.0, 5)}}))
    return rulebook.model_copy(update={"rules": kept})


RUN_OVER_WALK = 2.0  # a jog (2.8 m/s and up) is twice a walk (1.4 m/s): faster than that is running
ASSUMED = "(an everyday anomaly, assumed with no normal footage to say otherwise)"


def everyday_priors(anomalies: Rulebook, walking: float | None = None) -> list[Rule]:
    """What the everyday anomaly rules (``rules.captions.everyday_anomalies``) say of objects, as object rules for
    a scene with no normal footage:

    - the COCO classes they name ("Riding a bicycle, scooter, skateboard or motorcycle" -> bicycle, skateboard,
      motorcycle) as one rule that none of them moves in view. People are what most such rules are about
      ("people fleeing"), never anomalous for being people: ``person`` is left out;
    - when they name running and the footage's walking pace is known (``walking``: a brisk walker's relative
      speed there, heights/s), that no person moves faster than ``RUN_OVER_WALK`` times it. Relative to the
      footage's own walkers, so that it holds at any camera angle: a cyclist the detector names only by its
      rider still breaks it."""
    phrases = [p for rule in anomalies.rules if rule.kind == "anomaly" and rule.enabled for p in rule.predicate.value]
    priors = []
    classes = sorted({name for p in phrases if (name := coco_class(p)) not in (None, "person")})
    if classes:
        priors.append(Rule(
            id="everyday-classes", origin="everyday",
            sentence=f"No {', '.join(classes[:-1])}{' or ' if len(classes) > 1 else ''}{classes[-1]} moves here "
            f"{ASSUMED}.",
            predicate=Predicate(fact="class", op="not_in", value=classes),
        ))  # fmt: skip
    if walking and any("running" in p.lower() for p in phrases):
        limit = round(RUN_OVER_WALK * walking, 3)
        priors.append(Rule(
            id="everyday-speed", origin="everyday",
            sentence=f"No one runs: a person moves at most {limit:.2f} body heights per second, {RUN_OVER_WALK:g} "
            f"times a brisk walker here {ASSUMED}.",
            predicate=Predicate(fact="relative_speed", op="<=", value=limit, unit="heights/s",
                                where={"class": "person"}),
        ))  # fmt: skip
    return priors
