"""Objects: the unit of perception, and one home for everything an object has.

- ``sources``: where objects come from: detector boxes (where and when needed, carried by the flow between
  detections), and moving regions no box covers (objects nothing named);
- ``tracks``: each object over time (``TrackState``), linked by ByteTrack on the objects' real confidences;
- ``describers``: what each object is, where, how fast for its size, where it heads, how long it stays, how it
  looks and, for a person tall enough, its pose: the facts of ``anomalens.facts``;
- ``follow``: one video's objects, frame by frame (``ObjectFollower`` -> ``FrameObjects``);
- ``perspective``: a person's height at each height of the view;
- ``density``: how unusual each object is, from the normal footage's objects;
- ``appearance``: the normal objects' look.
"""
