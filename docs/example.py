"""anomalens from Python: learn a scene from normal footage, audit a video against it, explain a video with no
scene model at all, and ask about it.

    python docs/example.py NORMAL_VIDEO TEST_VIDEO OUT_DIR
"""

import sys
from pathlib import Path

from anomalens import audit, chat, explain, learn_scene

normal, video, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])

# What is normal here: background, motion, what the moving objects are and how they look, and an editable
# rulebook (out/scene/rules.yaml).
scene = learn_scene([normal], out=out / "scene")
print(f"{len(scene.rulebook.rules)} rules learned")

# Events with their evidence and explanations; out/audit/report.html shows them.
audited = audit(video, scene, out=out / "audit")
for event in audited.events:
    print(f"{event.id} {event.start_s:.1f}-{event.end_s:.1f} s, rules {event.rule_ids}: {audited.report.why(event)}")

# No scene model: the video's own dominant behaviour is taken as normal.
unseen = explain([video], out=out / "explain")
print(f"{len(unseen.events)} events found with no scene model")

# Questions answered with verified claims; the session can be resumed by its id.
session = chat(video, scene=out / "scene")
answer = session.ask("How many objects are in view at frame 40?")
print(f"session {session.session}: {answer.prose or 'no verified answer'}")
session.close()
