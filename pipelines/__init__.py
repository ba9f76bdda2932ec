"""The one place each flow is assembled, and the documented Python API:

    from anomalens import learn_scene, audit, explain, chat

- ``learn_scene(normal, out=)``: a scene (background, motion model, editable ``rules.yaml``) from normal footage;
- ``audit(video, scene, out=)``: events, evidence, verified explanations and a report;
- ``explain(inputs, out=)``: the same with no scene model (images, or a video that learns its own normality);
- ``chat(video)``: a conversation whose answers are verified claims.
- ``batch.audit_batch(inputs, scene, out=)``: ``audit`` on many videos, on Ray (the ``ray`` extra);
- ``history.index_reports(paths, store)``, ``history.review(store, event)``, ``history.accept(...)``: the event
  store that ``anomalens serve`` shows, and a reviewed false alarm turned into a rule change.

Layers point one way: kernel (``anomalens``) <- ``rules`` <- ``tools`` <- ``agents`` <- ``pipelines``; the CLI
and the eval runners call pipelines.
"""

from anomalens.pipelines.audit import audit
from anomalens.pipelines.chat import chat
from anomalens.pipelines.explain import explain
from anomalens.pipelines.scene import learn_scene

__all__ = ["audit", "chat", "explain", "learn_scene"]
